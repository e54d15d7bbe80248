//! What real accounts do to an integration: renamed accounts (the old host refuses, the API host names the
//! new one), unpaid and blocked accounts, and Kommo accounts beside amoCRM ones.

use amocrm_sandbox::{Integration, decode_claims};
use serde_json::Value;

use crate::common::{
    CLIENT_ID, HOST, REDIRECT, connect, get, get_on, http, query_of, refresh, start,
};

async fn subdomain_lookup(
    sb: &amocrm_sandbox::SandboxHandle,
    api_host: &str,
    token: &str,
) -> reqwest::Response {
    http()
        .get(format!(
            "{}/oauth2/account/current/subdomain",
            sb.account_url(api_host)
        ))
        .header("X-Refresh-Token", token)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn tokens_name_the_api_host_of_their_platform() {
    let sb = start().await;
    let pair = connect(&sb, HOST).await;
    let claims = decode_claims(&pair.access_token).unwrap();
    assert_eq!(claims["api_domain"], "api-b.amocrm.ru");
    let kommo = connect(&sb, "shop.kommo.com").await;
    assert_eq!(
        decode_claims(&kommo.access_token).unwrap()["api_domain"],
        "api-c.kommo.com"
    );
    sb.set_api_domain(HOST, "api-x.evil.example").unwrap();
    let pair = connect(&sb, HOST).await;
    assert_eq!(
        decode_claims(&pair.access_token).unwrap()["api_domain"],
        "api-x.evil.example"
    );
}

#[tokio::test]
async fn a_renamed_account_is_found_at_its_api_host_and_served_at_the_new_host() {
    let sb = start().await;
    let id = sb.add_account(HOST);
    let pair = connect(&sb, HOST).await;
    sb.rename_account(HOST, "renamed.amocrm.ru", 401).unwrap();

    // The old host refuses the token endpoint and the API.
    assert_eq!(refresh(&sb, HOST, &pair.refresh_token).await.status(), 401);
    assert_eq!(get(&sb, &pair.access_token, "account").await.status(), 401);

    // The API host names the new one for a valid refresh token, without Authorization.
    let resp = subdomain_lookup(&sb, "api-b.amocrm.ru", &pair.refresh_token).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["id"], id);
    assert_eq!(v["subdomain"], "renamed");
    assert_eq!(v["domain"], "renamed.amocrm.ru");
    assert_eq!(v["top_level_domain"], "ru");
    let bad = subdomain_lookup(&sb, "api-b.amocrm.ru", "def50200nope").await;
    assert_eq!(bad.status(), 401);
    assert_eq!(
        bad.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );

    // The grant moved with the account: the refresh works at the new host, and so does the API.
    let resp = refresh(&sb, "renamed.amocrm.ru", &pair.refresh_token).await;
    assert_eq!(resp.status(), 200);
    let fresh: Value = resp.json().await.unwrap();
    let token = fresh["access_token"].as_str().unwrap();
    let resp = get_on(&sb, "renamed.amocrm.ru", token, "account").await;
    assert_eq!(resp.status(), 200);
    let account: Value = resp.json().await.unwrap();
    assert_eq!(account["subdomain"], "renamed");

    // Every host contacted is in the log.
    let hosts: Vec<_> = sb
        .request_log()
        .into_iter()
        .filter_map(|e| e.host)
        .collect();
    for h in [HOST, "api-b.amocrm.ru", "renamed.amocrm.ru"] {
        assert!(hosts.iter().any(|x| x == h), "{h} in {hosts:?}");
    }
}

#[tokio::test]
async fn the_old_host_may_answer_404_instead() {
    let sb = start().await;
    let pair = connect(&sb, HOST).await;
    sb.rename_account(HOST, "moved.amocrm.ru", 404).unwrap();
    assert_eq!(refresh(&sb, HOST, &pair.refresh_token).await.status(), 404);
    assert_eq!(get(&sb, &pair.access_token, "account").await.status(), 404);
    assert!(
        sb.rename_account("moved.amocrm.ru", "x.amocrm.ru", 500)
            .is_err()
    );
}

#[tokio::test]
async fn unpaid_and_blocked_accounts_refuse_until_cleared() {
    let sb = start().await;
    let pair = connect(&sb, HOST).await;

    sb.require_payment(HOST).unwrap();
    let resp = get(&sb, &pair.access_token, "account").await;
    assert_eq!(resp.status(), 402);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["title"], "Payment Required");
    assert_eq!(body["type"], "https://httpstatus.es/402");
    assert_eq!(body["status"], 402);
    assert_eq!(body["detail"], "Payment required");
    // An unpaid account still issues tokens.
    let resp = refresh(&sb, HOST, &pair.refresh_token).await;
    assert_eq!(resp.status(), 200);
    let fresh: Value = resp.json().await.unwrap();
    let token = fresh["access_token"].as_str().unwrap().to_owned();
    let refresh_token = fresh["refresh_token"].as_str().unwrap().to_owned();

    sb.block(HOST).unwrap();
    assert_eq!(get(&sb, &token, "leads").await.status(), 403);
    assert_eq!(refresh(&sb, HOST, &refresh_token).await.status(), 403);

    sb.clear_block(HOST).unwrap();
    assert_eq!(get(&sb, &token, "account").await.status(), 200);
    assert_eq!(refresh(&sb, HOST, &refresh_token).await.status(), 200);
}

#[tokio::test]
async fn kommo_and_amocrm_integrations_are_served_together_with_the_platform_on_the_redirect() {
    let sb = start().await;
    sb.add_integration(Integration::new("kommo-client", "kommo-secret", REDIRECT));
    let amo = sb
        .approve(
            &format!("client_id={CLIENT_ID}&state=a&mode=popup"),
            "shop.amocrm.ru",
        )
        .unwrap();
    let q = query_of(&amo);
    assert_eq!(q["platform"], "1");
    assert_eq!(q["client_id"], CLIENT_ID);
    let kommo = sb
        .approve(
            "client_id=kommo-client&state=k&mode=popup",
            "shop.kommo.com",
        )
        .unwrap();
    let q = query_of(&kommo);
    assert_eq!(q["platform"], "2");
    assert_eq!(q["client_id"], "kommo-client");
    assert_eq!(q["referer"], "shop.kommo.com");
    let old = sb
        .approve(
            "client_id=kommo-client&state=o&mode=popup",
            "old.amocrm.com",
        )
        .unwrap();
    assert_eq!(query_of(&old)["platform"], "2");

    // Each integration exchanges its own codes with its own secret.
    let resp = http()
        .post(format!(
            "{}/oauth2/access_token",
            sb.account_url("shop.kommo.com")
        ))
        .json(&serde_json::json!({
            "client_id": "kommo-client",
            "client_secret": "kommo-secret",
            "grant_type": "authorization_code",
            "code": q["code"],
            "redirect_uri": REDIRECT,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}
