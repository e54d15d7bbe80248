//! The rules no amoCRM source states: on by default, each switchable from the config, the handle and
//! `/_sandbox/rules`.

use std::time::{Duration, Instant};

use amocrm_sandbox::Rules;
use serde_json::{Value, json};

use crate::common::*;

/// A lead with a contact, read back with its links: what a client would echo in a PATCH.
async fn lead_with_contact(sb: &amocrm_sandbox::SandboxHandle, token: &str) -> (u64, Value) {
    let out = json_of(
        post(
            sb,
            token,
            "leads/complex",
            json!([{"name": "Echo", "_embedded": {"contacts": [{"name": "Buyer"}]}}]),
        )
        .await,
    )
    .await;
    let id = out[0]["id"].as_u64().unwrap();
    let read = get_json(sb, token, &format!("leads/{id}?with=contacts")).await;
    (id, read["_embedded"].clone())
}

#[tokio::test]
async fn a_lead_patch_echoing_its_links_is_refused_unless_the_rule_is_off() {
    let (sb, token) = unlimited().await;
    assert_eq!(sb.rules(), Rules::default());
    let (id, embedded) = lead_with_contact(&sb, &token).await;
    let contacts = sb.lead(HOST, id).unwrap().contact_ids;
    assert_eq!(contacts.len(), 1);
    let echo = json!({"name": "Renamed", "_embedded": embedded});
    let path = format!("leads/{id}");
    let refused = patch(&sb, &token, &path, echo.clone()).await;
    assert_eq!(refused.status(), 400);
    let errors = validation_errors(&json_of(refused).await);
    assert!(
        errors
            .iter()
            .any(|(_, p, d)| p == "_embedded.contacts" && d == "Links cannot be changed here."),
        "{errors:?}"
    );
    assert_eq!(sb.lead(HOST, id).unwrap().name, "Echo");

    let off: Value = http()
        .put(format!("{}/_sandbox/rules", sb.base_url()))
        .json(&json!({"refuse_lead_patch_links": false}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        off,
        json!({"refuse_lead_patch_links": false, "rate_limit_token_endpoint": true})
    );
    let accepted = patch(&sb, &token, &path, echo).await;
    assert_eq!(accepted.status(), 200);
    let lead = sb.lead(HOST, id).unwrap();
    assert_eq!(
        (lead.name.as_str(), &lead.contact_ids),
        ("Renamed", &contacts)
    );
    sb.stop().await;
}

#[tokio::test]
async fn token_requests_pass_a_full_window_only_when_the_rule_is_off() {
    // One real second matters here: on a loaded machine, try again.
    for _attempt in 0..5 {
        let sb = start_with(|c| {
            c.rate_limit_rps = 1;
            c.rules.rate_limit_token_endpoint = false;
        })
        .await;
        let pair = sb.issue_tokens(CLIENT_ID, HOST);
        let started = Instant::now();
        let api_call = get(&sb, &pair.access_token, "account").await.status();
        let free = refresh(&sb, HOST, &pair.refresh_token).await.status();
        sb.set_rules(Rules::default());
        let counted = refresh(&sb, HOST, &pair.refresh_token).await.status();
        if started.elapsed() >= Duration::from_millis(900) {
            sb.stop().await;
            continue;
        }
        assert_eq!(
            (api_call.as_u16(), free.as_u16(), counted.as_u16()),
            (200, 200, 429)
        );
        sb.stop().await;
        return;
    }
    panic!("the machine never sent 3 requests within one second");
}
