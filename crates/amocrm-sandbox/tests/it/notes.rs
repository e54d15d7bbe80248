//! Notes on leads: batches of up to 250, validation, reads by lead and type, faults, `note_lead`.

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::*;

#[tokio::test]
async fn notes_are_added_in_batches_and_read_back_by_lead_and_type() {
    let (sb, token) = unlimited().await;
    let a = sb.create_lead(HOST, "A", 1, None).unwrap();
    let b = sb.create_lead(HOST, "B", 2, None).unwrap();
    let resp = post(&sb, &token, "leads/notes", json!([
        {"entity_id": a, "note_type": "common", "params": {"text": "Order #1: 2 × Tea = 30 000"}, "request_id": "n1"},
        {"entity_id": b, "note_type": "extended_service_message", "params": {"service": "Shop", "text": "Paid"}},
    ]))
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/hal+json");
    let body = json_of(resp).await;
    let notes = embedded(&body, "notes");
    assert_eq!(
        (
            notes[0]["entity_id"].as_u64(),
            notes[0]["request_id"].as_str()
        ),
        (Some(a), Some("n1"))
    );
    assert!(notes[0]["id"].is_u64());
    assert_eq!(
        notes[1]["request_id"], "1",
        "without request_id the index is echoed"
    );

    let by_path = post(
        &sb,
        &token,
        &format!("leads/{a}/notes"),
        json!([{"note_type": "common", "params": {"text": "second"}}]),
    )
    .await;
    assert_eq!(
        json_of(by_path).await["_embedded"]["notes"][0]["entity_id"],
        a
    );

    let of_a = get_json(
        &sb,
        &token,
        &format!("leads/{a}/notes?filter[note_type]=common"),
    )
    .await;
    let texts: Vec<&str> = embedded(&of_a, "notes")
        .iter()
        .map(|n| n["params"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, vec!["Order #1: 2 × Tea = 30 000", "second"]);
    assert_no_content(
        get(
            &sb,
            &token,
            &format!("leads/{b}/notes?filter[note_type]=common"),
        )
        .await,
    )
    .await;
    let both = get_json(
        &sb,
        &token,
        &format!("leads/notes?filter[entity_id][]={a}&filter[entity_id][]={b}&limit=250"),
    )
    .await;
    assert_eq!(embedded(&both, "notes").len(), 3);
    let common = get_json(&sb, &token, &format!("leads/notes?filter[entity_id][]={a}&filter[entity_id][]={b}&filter[note_type]=common&limit=250"))
    .await;
    assert_eq!(embedded(&common, "notes").len(), 2);
    assert_eq!(sb.notes(HOST).len(), 3);
    let c = sb.counters(HOST).endpoints;
    assert_eq!((c.notes_create, c.notes_read), (2, 4));
    sb.stop().await;
}

#[tokio::test]
async fn note_batches_are_limited_and_validated_as_a_whole() {
    let (sb, token) = unlimited().await;
    let a = sb.create_lead(HOST, "A", 1, None).unwrap();
    let note = |i: usize| json!({"entity_id": a, "note_type": "common", "params": {"text": format!("n{i}")}});
    let too_many: Vec<Value> = (0..251).map(note).collect();
    let resp = post(&sb, &token, "leads/notes", Value::Array(too_many)).await;
    assert_eq!(resp.status(), 422);
    assert_eq!(json_of(resp).await["detail"], "Limit 250 per page");
    let full: Vec<Value> = (0..250).map(note).collect();
    let resp = post(&sb, &token, "leads/notes", Value::Array(full)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(sb.notes(HOST).len(), 250);

    let resp = post(&sb, &token, "leads/notes", json!([
        note(0),
        {"entity_id": 999_999_999u64, "note_type": "common", "params": {"text": "x"}, "request_id": "ghost"},
        {"entity_id": a, "note_type": "common", "params": {}, "request_id": "empty"},
        {"entity_id": a, "note_type": "invoice_paid", "params": {"text": "x"}, "request_id": "type"},
        {"entity_id": a, "note_type": "extended_service_message", "params": {"text": "x"}, "request_id": "service"},
        {"entity_id": a, "note_type": "common", "params": {"text": "я".repeat(10_001)}, "request_id": "long"},
        {"entity_id": a, "note_type": "common", "params": {"text": "x"}, "responsible_user_id": 42, "request_id": "who"},
    ]))
    .await;
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body = json_of(resp).await;
    let errs = validation_errors(&body);
    let at = |path: &str| {
        errs.iter()
            .find(|e| e.1 == path)
            .unwrap_or_else(|| panic!("no error at {path}: {errs:?}"))
    };
    assert_eq!(at("entity_id").0, "NotFound");
    assert!(
        at("entity_id").2.contains("999999999"),
        "the detail names the lead"
    );
    assert_eq!(at("params.text").0, "NotBlank");
    assert_eq!(at("note_type").0, "NotSupportedChoice");
    assert_eq!(at("params.service").0, "NotBlank");
    assert!(errs.iter().any(|e| e.0 == "TooLong"));
    assert!(at("responsible_user_id").2.contains("42"));
    assert_eq!(sb.notes(HOST).len(), 250, "an invalid batch adds nothing");
    sb.stop().await;
}

#[tokio::test]
async fn notes_count_in_the_rate_limit_and_faults_like_any_call() {
    let (sb, token) = signed_in().await;
    let a = sb.create_lead(HOST, "A", 1, None).unwrap();
    let body = json!([{"entity_id": a, "note_type": "common", "params": {"text": "x"}}]);
    sb.set_faults(HOST, faults(|f| f.fail_next = 1));
    let resp = post(&sb, &token, "leads/notes", body.clone()).await;
    assert_eq!(resp.status(), 500);
    assert!(sb.notes(HOST).is_empty(), "a 500 applies nothing");
    sb.set_faults(HOST, faults(|f| f.force_429_next = 1));
    assert_eq!(
        post(&sb, &token, "leads/notes", body.clone())
            .await
            .status(),
        429
    );
    sb.set_faults(HOST, faults(|f| f.drop_after_write_next = 1));
    let lost = api(&sb, HOST, Method::POST, "leads/notes", &token)
        .json(&body)
        .timeout(std::time::Duration::from_millis(300))
        .send()
        .await;
    assert!(lost.is_err(), "applied, never answered");
    assert_eq!(sb.notes(HOST).len(), 1);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let mut codes = Vec::new();
    for _ in 0..8 {
        codes.push(
            post(&sb, &token, "leads/notes", body.clone())
                .await
                .status()
                .as_u16(),
        );
    }
    assert_eq!(codes.iter().filter(|c| **c == 429).count(), 1, "{codes:?}");
    let c = sb.counters(HOST);
    assert_eq!(
        c.endpoints.notes_create, 11,
        "every note request is counted, refused ones too"
    );
    sb.stop().await;
}

#[tokio::test]
async fn a_note_sends_note_lead_in_the_documented_shape() {
    let (sb, token, rx) = subscribed(&["note_lead"]).await;
    let a = sb.create_lead(HOST, "A", 1, None).unwrap();
    let resp = post(
        &sb,
        &token,
        &format!("leads/{a}/notes"),
        json!([{"note_type": "common", "params": {"text": "Order summary"}}]),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let got = rx.delivered(&sb).await;
    assert_eq!(got.len(), 1, "only the note: add_lead is not subscribed");
    let pairs = form_of(&got[0].body);
    let keys: Vec<String> = pairs
        .iter()
        .filter_map(|(k, _)| {
            k.strip_prefix("leads[note][0][note][")
                .map(|k| k.trim_end_matches(']').to_owned())
        })
        .collect();
    // The sample has one key a line; the note's own fields are the ones with string values.
    let documented: Vec<String> =
        include_str!("../fixtures/webhook-note-lead-kommo-docs-decoded.json")
            .lines()
            .filter_map(|l| {
                l.strip_prefix('"')?
                    .split_once("\":\"")
                    .map(|(k, _)| k.to_owned())
            })
            .collect();
    assert_eq!(
        keys, documented,
        "the documented keys in the documented order"
    );
    let value = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(value("leads[note][0][note][element_id]"), a.to_string());
    assert_eq!(value("leads[note][0][note][element_type]"), "2");
    assert_eq!(value("leads[note][0][note][note_type]"), "4");
    assert_eq!(value("leads[note][0][note][text]"), "Order summary");
    let meta: Value = serde_json::from_str(&value("leads[note][0][note][metadata]")).unwrap();
    assert!(
        meta["event_source"]["id"].is_u64(),
        "metadata is a JSON string"
    );
    assert!(
        value("leads[note][0][note][date_create]").len() == 19,
        "YYYY-MM-DD HH:MM:SS"
    );
    assert_eq!(
        value("account[id]"),
        sb.account_id(HOST).unwrap().to_string()
    );
    sb.stop().await;
}
