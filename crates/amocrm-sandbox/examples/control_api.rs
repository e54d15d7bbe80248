//! The sandbox's control API over HTTP, as a test suite in any language would use it: make an account, get a
//! token, inject faults, then move a lead and receive the webhook amoCRM would send.
//!
//! Runs on its own: the sandbox starts in this process on a free port, and a tiny webhook receiver listens on
//! another one. Every step below is a plain HTTP call, so the same requests work against the
//! `amocrm-sandbox` binary.
//!
//! ```sh
//! cargo run -p amocrm-sandbox --example control_api
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

use amocrm_sandbox::{Integration, Sandbox, SandboxConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};

const CLIENT_ID: &str = "example-integration";
const HOST: &str = "shop.amocrm.ru";

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let sandbox = Sandbox::start(SandboxConfig {
        integrations: vec![Integration::new(
            CLIENT_ID,
            "example-secret",
            "http://127.0.0.1:8080/oauth/amocrm/callback",
        )],
        accounts: vec![],
        ..SandboxConfig::default()
    })
    .await?;
    let base = sandbox.base_url();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    println!("sandbox at {base}");

    // An account of our own (idempotent: posting the same host again answers the same id).
    let account: Value = http
        .post(format!("{base}/_sandbox/accounts"))
        .json(&json!({ "host": HOST }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    println!("account: {account}");

    // A token pair without the consent page, for tests that are not about OAuth.
    let tokens: Value = http
        .post(format!("{base}/_sandbox/tokens"))
        .json(&json!({ "client_id": CLIENT_ID, "host": HOST }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let access = tokens["access_token"]
        .as_str()
        .ok_or("no access_token")?
        .to_owned();
    let api = |path: &str| format!("{base}/{HOST}/api/v4/{path}");

    // README: begin
    // Faults: the next request gets amoCRM's 500 and changes nothing; then a forced 429 with retry_after.
    http.put(format!("{base}/_sandbox/accounts/{HOST}/faults"))
        .json(&json!({ "fail_next": 1 }))
        .send()
        .await?
        .error_for_status()?;
    let failed = http
        .get(api("leads/pipelines"))
        .bearer_auth(&access)
        .send()
        .await?;
    println!(
        "with fail_next = 1: GET leads/pipelines → {}",
        failed.status()
    );
    assert_eq!(failed.status(), StatusCode::INTERNAL_SERVER_ERROR);

    http.put(format!("{base}/_sandbox/accounts/{HOST}/faults"))
        .json(&json!({ "force_429_next": 1, "force_429_retry_after_secs": 2 }))
        .send()
        .await?
        .error_for_status()?;
    let limited = http.get(api("account")).bearer_auth(&access).send().await?;
    let status = limited.status();
    let body: Value = limited.json().await?;
    println!(
        "with force_429_next = 1: GET account → {status}, retry_after {}",
        body["retry_after"]
    );
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);

    let pipelines: Value = http
        .get(api("leads/pipelines"))
        .bearer_auth(&access)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let pipeline = &pipelines["_embedded"]["pipelines"][0];
    let pipeline_id = pipeline["id"].as_u64().ok_or("no pipeline id")?;
    // Working stages have type 0; 142 (won) is the same in every pipeline.
    let stages: Vec<u64> = pipeline["_embedded"]["statuses"]
        .as_array()
        .ok_or("no statuses")?
        .iter()
        .filter(|s| s["type"] == 0 && s["id"] != 142 && s["id"] != 143)
        .filter_map(|s| s["id"].as_u64())
        .collect();
    let [first, second, ..] = stages[..] else {
        return Err("fewer than two working stages".into());
    };
    println!("faults cleared: GET leads/pipelines → 200, pipeline {pipeline_id}");

    // A webhook receiver, subscribed through the real API v4 route as an integration would do it.
    let (receiver_url, received) = start_receiver()?;
    http.post(api("webhooks"))
        .bearer_auth(&access)
        .json(&json!({ "destination": receiver_url, "settings": ["status_lead"] }))
        .send()
        .await?
        .error_for_status()?;

    // A lead made through the control API, then moved the way a manager drags it on the board.
    let lead: Value = http
        .post(format!("{base}/_sandbox/accounts/{HOST}/leads"))
        .json(&json!({ "name": "Order #1001", "price": 150000, "pipeline_id": pipeline_id, "status_id": first }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let lead_id = lead["id"].as_u64().ok_or("no lead id")?;
    let moved = http
        .post(format!(
            "{base}/_sandbox/accounts/{HOST}/leads/{lead_id}/move"
        ))
        .json(&json!({ "pipeline_id": pipeline_id, "status_id": second }))
        .send()
        .await?;
    assert_eq!(moved.status(), StatusCode::NO_CONTENT);

    // Webhooks leave asynchronously; waiting for idleness beats sleeping.
    let idle: Value = http
        .get(format!("{base}/_sandbox/deliveries/idle?timeout_ms=5000"))
        .send()
        .await?
        .json()
        .await?;
    let body = received.recv_timeout(Duration::from_secs(5))?;
    println!("deliveries idle: {idle}");
    let form: Vec<(String, String)> = serde_urlencoded::from_str(&body)?;
    for (k, v) in form
        .iter()
        .filter(|(k, _)| k.starts_with("leads[status][0]["))
    {
        println!("  webhook {k} = {v}");
    }
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(
        field("leads[status][0][id]"),
        Some(lead_id.to_string().as_str())
    );
    assert_eq!(
        field("leads[status][0][old_status_id]"),
        Some(first.to_string().as_str())
    );
    assert_eq!(
        field("leads[status][0][status_id]"),
        Some(second.to_string().as_str())
    );
    // README: end

    let counters: Value = http
        .get(format!("{base}/_sandbox/accounts/{HOST}/counters"))
        .send()
        .await?
        .json()
        .await?;
    println!("counters: {counters}");
    sandbox.stop().await;
    Ok(())
}

/// A one-thread HTTP server on a free port that answers 200 and hands each request body to the channel.
fn start_receiver() -> Result<(String, mpsc::Receiver<String>), Error> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/amocrm/webhook", listener.local_addr()?);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut length = 0;
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let _ = reader
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            if tx
                .send(String::from_utf8_lossy(&body).into_owned())
                .is_err()
            {
                return;
            }
        }
    });
    Ok((url, rx))
}
