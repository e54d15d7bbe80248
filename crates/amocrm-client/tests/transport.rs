//! Transport failure classes and the token request's wire shape, against a raw TCP peer on 127.0.0.1:0 that
//! misbehaves on purpose (refuses, hangs up after reading, never answers, redirects). The sandbox covers the
//! well-behaved amoCRM; these are the network's sharp edges it cannot produce on demand.
#![expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use amocrm_client::{
    AccountHost, AllowedDomains, AmoClient, AmoConfig, ApiError, ComplexLead, OAuthError,
};
use amocrm_sandbox::raw_http::read_request;
use secrecy::SecretString;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use url::Url;

const SECRET: &str = "client-secret-do-not-leak";

#[derive(Clone, Copy)]
enum Behaviour {
    /// Read the request, then close without answering.
    HangUpAfterRead,
    /// Read the request, then hold the connection open silently.
    NeverAnswer,
    /// Answer with this status line and body.
    Answer(&'static str, &'static str, &'static str),
}

struct Peer {
    base: String,
    requests: Arc<Mutex<Vec<String>>>,
}

async fn peer(behaviour: Behaviour) -> Peer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut sock, _)) = listener.accept().await {
            let req = read_request(&mut sock).await;
            seen.lock()
                .unwrap()
                .push(req.map(|r| r.text()).unwrap_or_default());
            match behaviour {
                Behaviour::HangUpAfterRead => drop(sock),
                Behaviour::NeverAnswer => held.push(sock),
                Behaviour::Answer(status, headers, body) => {
                    let resp = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                    let _ = sock.shutdown().await;
                }
            }
        }
    });
    Peer { base, requests }
}

fn client(base: &str) -> AmoClient {
    let mut cfg = AmoConfig::new(
        "client-id-1",
        SecretString::from(SECRET),
        Url::parse("https://shop.example/oauth/amocrm/callback").unwrap(),
    );
    cfg.account_url_template = format!("{base}/{{host}}");
    cfg.request_timeout = Duration::from_millis(400);
    cfg.connect_timeout = Duration::from_millis(400);
    AmoClient::new(cfg).unwrap()
}

fn host() -> AccountHost {
    AccountHost::parse("sellerone.amocrm.ru", &AllowedDomains::default()).unwrap()
}

fn lead() -> ComplexLead {
    ComplexLead {
        name: "Buyurtma #1".into(),
        price: 1,
        pipeline_id: 1,
        status_id: 1,
        request_id: "o1".into(),
        custom_fields_values: vec![],
        tags: vec![],
        contact: None,
        company: None,
    }
}

/// Sends one `leads/complex` lead with this access token; the call is expected to fail.
async fn create_lead(c: &AmoClient, token: &str) -> ApiError {
    c.api(&host(), &SecretString::from(token))
        .leads_complex(&[lead()])
        .await
        .unwrap_err()
}

/// A peer that answers every request with this status line, extra headers and body, and a client for it.
async fn answered_by(
    status: &'static str,
    headers: &'static str,
    body: &'static str,
) -> (Peer, AmoClient) {
    let p = peer(Behaviour::Answer(status, headers, body)).await;
    let c = client(&p.base);
    (p, c)
}

#[tokio::test]
async fn a_refused_connection_is_transient_because_nothing_was_sent() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let c = client(&base);
    let err = create_lead(&c, "t").await;
    assert!(
        matches!(err, ApiError::Transient { status: None, .. }),
        "{err:?}"
    );
    assert!(err.is_retryable() && !err.may_have_written());
    let err = c
        .refresh(&host(), &SecretString::from("r"))
        .await
        .unwrap_err();
    assert!(matches!(err, OAuthError::Transient(_)), "{err:?}");
}

#[tokio::test]
async fn a_hang_up_after_the_request_was_read_is_ambiguous() {
    let p = peer(Behaviour::HangUpAfterRead).await;
    let c = client(&p.base);
    let err = create_lead(&c, "t").await;
    assert!(matches!(err, ApiError::Ambiguous(_)), "{err:?}");
    assert!(err.may_have_written() && !err.is_retryable());
    assert!(
        p.requests.lock().unwrap()[0].contains("\"request_id\":\"o1\""),
        "the create reached the peer"
    );
}

#[tokio::test]
async fn a_timeout_after_sending_is_ambiguous_and_names_no_secret() {
    let p = peer(Behaviour::NeverAnswer).await;
    let c = client(&p.base);
    let err = create_lead(&c, "access-token-do-not-leak").await;
    assert!(
        matches!(err, ApiError::Ambiguous(ref m) if m.contains("timeout")),
        "{err:?}"
    );
    assert!(!format!("{err} {err:?}").contains("do-not-leak"));
    let err = c
        .refresh(&host(), &SecretString::from("refresh-do-not-leak"))
        .await
        .unwrap_err();
    assert!(matches!(err, OAuthError::Transient(_)), "{err:?}");
    assert!(!format!("{err} {err:?}").contains("do-not-leak"));
}

#[tokio::test]
async fn refresh_posts_credentials_and_redirect_uri_in_the_form_body() {
    let (p, c) = answered_by(
        "400 Bad Request",
        "Content-Type: application/problem+json\r\n",
        r#"{"hint":"Token has been revoked","title":"Некорректный запрос","type":"https://developers.amocrm.ru/v3/errors/OAuthProblemJson","status":400,"detail":"В запросе отсутствует ряд параметров или параметры невалидны"}"#,
    )
    .await;
    let err = c
        .refresh(&host(), &SecretString::from("def502-refresh"))
        .await
        .unwrap_err();
    let OAuthError::Rejected { status, hint, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(
        (*status, hint.as_deref()),
        (400, Some("Token has been revoked"))
    );
    assert!(!err.to_string().contains(SECRET));
    let req = p.requests.lock().unwrap()[0].clone();
    assert!(
        req.starts_with("POST /sellerone.amocrm.ru/oauth2/access_token HTTP/1.1"),
        "{req}"
    );
    assert!(
        !req.to_ascii_lowercase().contains("authorization: basic"),
        "credentials go in the body"
    );
    let body = req.split("\r\n\r\n").nth(1).unwrap();
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("grant_type"), Some("refresh_token"));
    assert_eq!(get("refresh_token"), Some("def502-refresh"));
    assert_eq!(get("client_id"), Some("client-id-1"));
    assert_eq!(get("client_secret"), Some(SECRET));
    assert_eq!(
        get("redirect_uri"),
        Some("https://shop.example/oauth/amocrm/callback")
    );
}

#[tokio::test]
async fn a_redirect_from_the_token_endpoint_is_not_followed() {
    let (p, c) = answered_by("302 Found", "Location: http://127.0.0.1:1/steal\r\n", "").await;
    let err = c.exchange_code(&host(), "code-1").await.unwrap_err();
    assert!(matches!(err, OAuthError::Other(_)), "{err:?}");
    assert_eq!(
        p.requests.lock().unwrap().len(),
        1,
        "exactly one request, to the account host"
    );
}

#[tokio::test]
async fn a_non_json_429_waits_the_default_second() {
    let (_peer, c) = answered_by(
        "429 Too Many Requests",
        "Content-Type: text/html\r\n",
        "<h1>slow down</h1>",
    )
    .await;
    let token = SecretString::from("t");
    let err = c.api(&host(), &token).pipelines().await.unwrap_err();
    assert!(
        matches!(err, ApiError::RateLimited { retry_after } if retry_after == Duration::from_secs(1)),
        "{err:?}"
    );
    let err = c.exchange_code(&host(), "c").await.unwrap_err();
    assert!(matches!(err, OAuthError::RateLimited { .. }), "{err:?}");
}

#[tokio::test]
async fn a_host_outside_the_configured_domains_gets_no_request() {
    let p = peer(Behaviour::HangUpAfterRead).await;
    let mut cfg = AmoConfig::new(
        "client-id-1",
        SecretString::from(SECRET),
        Url::parse("https://shop.example/cb").unwrap(),
    );
    cfg.account_url_template = format!("{}/{{host}}", p.base);
    cfg.allowed_domains = AllowedDomains::parse("kommo.com").unwrap();
    let c = AmoClient::new(cfg).unwrap();
    let err = c.exchange_code(&host(), "code").await.unwrap_err();
    assert!(matches!(err, OAuthError::HostNotAllowed));
    assert!(p.requests.lock().unwrap().is_empty());
}
