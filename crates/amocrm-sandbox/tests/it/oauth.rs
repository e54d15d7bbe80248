//! OAuth: consent page, codes, tokens, the refresh grace rule, revocation and the uninstall hook.

use amocrm_sandbox::{Integration, decode_claims, disconnect_signature};
use serde_json::Value;

use crate::common::*;

#[tokio::test]
async fn consent_page_lists_accounts_and_allow_redirects_with_code_state_referer_and_client_id() {
    let sb = start().await;
    let page = http()
        .get(format!("{}?{}", sb.authorize_url(), authorize_query("xyz")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    for host in amocrm_sandbox::DEFAULT_ACCOUNTS {
        assert!(
            html.contains(host),
            "account {host} offered on the consent page"
        );
    }
    assert!(html.contains("value=\"allow\"") && html.contains("value=\"deny\""));

    let resp = http()
        .post(sb.authorize_url())
        .form(&[
            ("client_id", CLIENT_ID),
            ("state", "xyz"),
            ("mode", "post_message"),
            ("account", "sellertwo.amocrm.ru"),
            ("decision", "allow"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(REDIRECT));
    let q = query_of(&location);
    assert!(q["code"].starts_with("def502"));
    assert_eq!(q["state"], "xyz");
    assert_eq!(q["referer"], "sellertwo.amocrm.ru");
    assert_eq!(q["client_id"], CLIENT_ID);
    sb.stop().await;
}

#[tokio::test]
async fn deny_redirects_with_access_denied_and_no_code() {
    let sb = start().await;
    let resp = http()
        .get(format!(
            "{}/_sandbox/approve?{}&account={HOST}&decision=deny",
            sb.base_url(),
            authorize_query("s1")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    let q = query_of(resp.headers()["location"].to_str().unwrap());
    assert_eq!(q["error"], "access_denied");
    assert_eq!(q["state"], "s1");
    assert_eq!(q["client_id"], CLIENT_ID);
    assert!(!q.contains_key("code"));
    let denied = sb.deny(&authorize_query("s2"), HOST).unwrap();
    assert!(denied.contains("error=access_denied"));
    sb.stop().await;
}

#[tokio::test]
async fn an_unknown_client_or_foreign_redirect_uri_gets_no_consent() {
    let sb = start().await;
    let page = http()
        .get(format!("{}?client_id=nobody&state=x", sb.authorize_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 400);
    let err = sb.approve(
        &format!(
            "{}&redirect_uri=http://evil.example/cb",
            authorize_query("x")
        ),
        HOST,
    );
    assert!(err.is_err());
    sb.stop().await;
}

#[tokio::test]
async fn an_authorization_code_works_once_then_is_revoked() {
    let sb = start().await;
    let redirect = sb.approve(&authorize_query("s"), HOST).unwrap();
    let code = query_of(&redirect)["code"].clone();
    let first = exchange_code(&sb, HOST, &code).await;
    assert_eq!(first.status(), 200);
    assert!(
        first.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let second = exchange_code(&sb, HOST, &code).await;
    assert_eq!(second.status(), 400);
    let body = json_of(second).await;
    assert_eq!(body["hint"], "Authorization code has been revoked");
    assert_eq!(body["title"], "Некорректный запрос");
    assert_eq!(
        body["type"],
        "https://developers.amocrm.ru/v3/errors/OAuthProblemJson"
    );
    assert_eq!(body["status"], 400);
    assert_eq!(
        body["detail"],
        "В запросе отсутствует ряд параметров или параметры невалидны"
    );
    let c = sb.counters(HOST);
    assert_eq!((c.code_exchanges, c.rejected_code_exchanges), (1, 1));
    sb.stop().await;
}

#[tokio::test]
async fn an_authorization_code_expires_after_twenty_minutes() {
    let sb = start().await;
    let fresh = query_of(&sb.approve(&authorize_query("a"), HOST).unwrap())["code"].clone();
    let stale = query_of(&sb.approve(&authorize_query("b"), HOST).unwrap())["code"].clone();
    sb.advance_clock(HOST, 19 * 60);
    assert_eq!(exchange_code(&sb, HOST, &fresh).await.status(), 200);
    sb.advance_clock(HOST, 60);
    let resp = exchange_code(&sb, HOST, &stale).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(
        json_of(resp).await["hint"],
        "Authorization code has expired"
    );
    sb.stop().await;
}

#[tokio::test]
async fn the_token_endpoint_checks_client_secret_redirect_uri_and_account() {
    let sb = start().await;
    let code = query_of(&sb.approve(&authorize_query("s"), HOST).unwrap())["code"].clone();
    let handle = &sb;
    let attempt = |client_id: &str, secret: &str, redirect: &str, host: &'static str| {
        let body = serde_json::json!({
            "client_id": client_id, "client_secret": secret, "grant_type": "authorization_code",
            "code": code, "redirect_uri": redirect,
        });
        async move {
            let r = token_request(handle, host, &body).await;
            (
                r.status().as_u16(),
                json_of(r).await["hint"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        }
    };
    assert_eq!(
        attempt("other", SECRET, REDIRECT, HOST).await,
        (400, "Check the `client_id` parameter".to_owned())
    );
    assert_eq!(
        attempt(CLIENT_ID, "wrong", REDIRECT, HOST).await,
        (400, "Check the `client_secret` parameter".to_owned())
    );
    assert_eq!(
        attempt(CLIENT_ID, SECRET, "http://evil.example/cb", HOST).await,
        (400, "Redirect URI is not associated with client".to_owned())
    );
    assert_eq!(
        attempt(CLIENT_ID, SECRET, REDIRECT, "sellertwo.amocrm.ru").await,
        (400, "Invalid account".to_owned())
    );
    let garbage = token_request(
        &sb,
        HOST,
        &serde_json::json!({"client_id": CLIENT_ID, "client_secret": SECRET, "grant_type": "authorization_code", "code": "nonsense", "redirect_uri": REDIRECT}),
    )
    .await;
    assert_eq!(
        json_of(garbage).await["hint"],
        "Cannot decrypt the authorization code"
    );
    // None of the refusals consumed the code.
    assert_eq!(attempt(CLIENT_ID, SECRET, REDIRECT, HOST).await.0, 200);
    sb.stop().await;
}

#[tokio::test]
async fn access_tokens_are_jwts_with_account_claims_living_24_hours() {
    let sb = start().await;
    let pair = connect(&sb, HOST).await;
    assert_eq!(pair.token_type, "Bearer");
    assert_eq!(pair.expires_in, 86_400);
    assert_eq!(pair.access_token.split('.').count(), 3);
    let claims = decode_claims(&pair.access_token).expect("JWT payload");
    let account_id = sb.account_id(HOST).unwrap();
    assert_eq!(claims["account_id"].as_u64(), Some(account_id));
    assert_eq!(claims["aud"], CLIENT_ID);
    assert_eq!(claims["base_domain"], "amocrm.ru");
    assert_eq!(claims["api_domain"], "api-b.amocrm.ru");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        86_400
    );
    for k in ["jti", "nbf", "sub", "scopes"] {
        assert!(!claims[k].is_null(), "claim {k}");
    }
    let account = get(&sb, &pair.access_token, "account").await;
    assert_eq!(account.status(), 200);
    assert_eq!(account.headers()["content-type"], "application/hal+json");
    let account = json_of(account).await;
    assert_eq!(account["id"].as_u64(), Some(account_id));
    assert_eq!(account["subdomain"], "sellerone");

    sb.advance_clock(HOST, 86_400);
    let expired = get(&sb, &pair.access_token, "account").await;
    assert_eq!(expired.status(), 401);
    assert_eq!(
        expired.headers()["content-type"],
        "application/problem+json"
    );
    assert_eq!(json_of(expired).await["status"], 401);
    sb.stop().await;
}

#[tokio::test]
async fn a_token_is_only_good_for_its_own_account() {
    let sb = start().await;
    let pair = connect(&sb, HOST).await;
    let other = get_on(&sb, "sellertwo.amocrm.ru", &pair.access_token, "account").await;
    assert_eq!(other.status(), 401);
    let none = http()
        .get(format!("{}/api/v4/account", sb.account_url(HOST)))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 401);
    sb.stop().await;
}

async fn pair_of(resp: reqwest::Response) -> (String, String) {
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    (
        v["access_token"].as_str().unwrap().to_owned(),
        v["refresh_token"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn an_old_refresh_token_works_until_its_successor_pair_is_used() {
    let sb = start_with(|c| c.rate_limit_rps = 0).await;
    let p0 = connect(&sb, HOST).await;
    // A refresh whose answer was "lost" can be retried with the same refresh token.
    let (_a1, r1) = pair_of(refresh(&sb, HOST, &p0.refresh_token).await).await;
    let (a2, r2) = pair_of(refresh(&sb, HOST, &p0.refresh_token).await).await;
    assert_ne!(r1, r2, "every refresh returns a new pair");
    // Using the new access token retires the old refresh token (and the sibling pair's).
    assert_eq!(get(&sb, &a2, "account").await.status(), 200);
    let old = refresh(&sb, HOST, &p0.refresh_token).await;
    assert_eq!(old.status(), 400);
    assert_eq!(json_of(old).await["hint"], "Token has been revoked");
    let sibling = refresh(&sb, HOST, &r1).await;
    assert_eq!(json_of(sibling).await["hint"], "Token has been revoked");
    // The pair in use keeps working.
    let (_a3, r3) = pair_of(refresh(&sb, HOST, &r2).await).await;
    let c = sb.counters(HOST);
    assert_eq!((c.refreshes, c.rejected_refreshes), (3, 2));
    // Using the NEW refresh token (not the access token) also retires its parent.
    let (_a4, _r4) = pair_of(refresh(&sb, HOST, &r3).await).await;
    let again = refresh(&sb, HOST, &r2).await;
    assert_eq!(json_of(again).await["hint"], "Token has been revoked");
    sb.stop().await;
}

#[tokio::test]
async fn a_refresh_token_is_refused_with_the_wrong_client_or_unknown_value() {
    let sb = start().await;
    let p0 = connect(&sb, HOST).await;
    let unknown = refresh(&sb, HOST, "def50200nonsense").await;
    assert_eq!(unknown.status(), 400);
    let wrong_secret = token_request(
        &sb,
        HOST,
        &serde_json::json!({
            "client_id": CLIENT_ID, "client_secret": "nope", "grant_type": "refresh_token",
            "refresh_token": p0.refresh_token, "redirect_uri": REDIRECT,
        }),
    )
    .await;
    assert_eq!(
        json_of(wrong_secret).await["hint"],
        "Check the `client_secret` parameter"
    );
    // Refusals do not burn the token.
    pair_of(refresh(&sb, HOST, &p0.refresh_token).await).await;
    sb.stop().await;
}

#[tokio::test]
async fn revoking_the_grant_kills_tokens_and_sends_a_signed_uninstall_hook() {
    let sb = start().await;
    let hook = Receiver::start(200).await;
    sb.add_integration(
        Integration::new(CLIENT_ID, SECRET, REDIRECT)
            .with_disconnect_url(format!("{}/amocrm/uninstall", hook.url)),
    );
    let pair = connect(&sb, HOST).await;
    assert!(sb.revoke_grant(HOST, CLIENT_ID));
    assert_eq!(get(&sb, &pair.access_token, "account").await.status(), 401);
    let r = refresh(&sb, HOST, &pair.refresh_token).await;
    assert_eq!(json_of(r).await["hint"], "Token has been revoked");

    let got = hook.delivered(&sb).await;
    assert_eq!(got.len(), 1);
    let line = &got[0].request_line;
    assert!(line.starts_with("GET /amocrm/uninstall?"), "{line}");
    assert_eq!(
        got[0].headers["user-agent"],
        "amoService-oAuth-Code-Sender/1.0"
    );
    let path = line.split(' ').nth(1).unwrap();
    let q = query_of(path);
    let account_id = sb.account_id(HOST).unwrap();
    assert_eq!(q["client_uuid"], CLIENT_ID);
    assert_eq!(q["account_id"], account_id.to_string());
    assert_eq!(
        q["signature"],
        disconnect_signature(CLIENT_ID, SECRET, account_id)
    );
    assert_eq!(q["signature"].len(), 64);

    // Consenting again installs afresh.
    let again = connect(&sb, HOST).await;
    assert_eq!(get(&sb, &again.access_token, "account").await.status(), 200);
    sb.stop().await;
}

#[test]
fn the_uninstall_signature_is_hex_hmac_sha256_of_client_id_bar_account_id() {
    // RFC 4231-style independent check: HMAC-SHA256(key="key", "The quick brown fox jumps over the lazy dog").
    assert_eq!(
        amocrm_sandbox::tokens::hmac_hex(b"key", b"The quick brown fox jumps over the lazy dog"),
        "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
    );
    assert_eq!(
        disconnect_signature("abc", "secret", 42),
        amocrm_sandbox::tokens::hmac_hex(b"secret", b"abc|42")
    );
}

#[tokio::test]
async fn issued_tokens_work_without_consent() {
    let sb = start().await;
    let pair = sb.issue_tokens(CLIENT_ID, "fresh.amocrm.ru");
    assert!(sb.account_id("fresh.amocrm.ru").is_some());
    let resp = get_on(&sb, "fresh.amocrm.ru", &pair.access_token, "account").await;
    assert_eq!(resp.status(), 200);
    let via_http = post_path(
        &sb,
        "/_sandbox/tokens",
        &serde_json::json!({"client_id": CLIENT_ID, "host": HOST}),
    )
    .await;
    let v = json_of(via_http).await;
    assert_eq!(v["account_id"].as_u64(), sb.account_id(HOST));
    pair_of(refresh(&sb, HOST, v["refresh_token"].as_str().unwrap()).await).await;
    sb.stop().await;
}

#[tokio::test]
async fn sandbox_time_starts_at_the_configured_instant() {
    let start_at = chrono::DateTime::parse_from_rfc3339("2030-01-01T00:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let sb = start_with(|c| c.now = Some(start_at)).await;
    let pair = connect(&sb, HOST).await;
    let iat = decode_claims(&pair.access_token).unwrap()["iat"]
        .as_i64()
        .unwrap();
    assert!((iat - start_at.timestamp()).abs() < 60, "iat {iat}");
    assert!((pair.server_time - start_at.timestamp()).abs() < 60);
    assert_eq!(sb.total_counters().code_exchanges, 1);
    sb.stop().await;
}

#[tokio::test]
async fn a_widget_install_sends_a_code_with_from_widget_and_no_state() {
    let sb = start().await;
    let rx = Receiver::start(200).await;
    sb.add_integration(Integration::new(
        CLIENT_ID,
        SECRET,
        format!("{}/oauth/amocrm/callback", rx.url),
    ));
    let url = sb.widget_install(CLIENT_ID, HOST).unwrap();
    let got = rx.delivered(&sb).await;
    assert_eq!(got.len(), 1);
    let path = got[0].request_line.split(' ').nth(1).unwrap().to_owned();
    assert!(url.ends_with(&path));
    let q = query_of(&path);
    assert_eq!(
        (
            q["from_widget"].as_str(),
            q["referer"].as_str(),
            q["client_id"].as_str()
        ),
        ("1", HOST, CLIENT_ID)
    );
    assert!(!q.contains_key("state"));
    let token = token_request(
        &sb,
        HOST,
        &serde_json::json!({"client_id": CLIENT_ID, "client_secret": SECRET, "grant_type": "authorization_code", "code": q["code"], "redirect_uri": format!("{}/oauth/amocrm/callback", rx.url)}),
    )
    .await;
    assert_eq!(token.status(), 200);
    sb.stop().await;
}
