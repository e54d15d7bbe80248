//! Outgoing webhooks: real bracket format, async delivery, DP format, disabling a failing destination.

use amocrm_sandbox::{SandboxHandle, WebhookFormat};
use serde_json::json;

use crate::common::*;

/// A pipeline with two stages, an order-number field and one lead in the first stage.
async fn setup(sb: &SandboxHandle, token: &str) -> (u64, u64, u64, u64) {
    let p = json_of(post(sb, token, "leads/pipelines", json!([{
        "name": "Marketplace",
        "_embedded": {"statuses": [{"name": "Pending", "sort": 10, "color": "#fffeb2"}, {"name": "Paid", "sort": 20, "color": "#87f2c0"}]},
    }])).await).await;
    let p = &p["_embedded"]["pipelines"][0];
    let pid = p["id"].as_u64().unwrap();
    let pending = p["_embedded"]["statuses"][1]["id"].as_u64().unwrap();
    let paid = p["_embedded"]["statuses"][2]["id"].as_u64().unwrap();
    let f = json_of(
        post(
            sb,
            token,
            "leads/custom_fields",
            json!([{"name": "Order number", "type": "text"}]),
        )
        .await,
    )
    .await;
    let fid = f["_embedded"]["custom_fields"][0]["id"].as_u64().unwrap();
    let out = json_of(post(sb, token, "leads/complex", json!([{
        "name": "Buyurtma #1042", "price": 150000, "pipeline_id": pid, "status_id": pending,
        "custom_fields_values": [{"field_id": fid, "values": [{"value": "1042"}]}],
        "_embedded": {"tags": [{"name": "marketplace"}], "contacts": [{"name": "Ali", "custom_fields_values": [{"field_code": "PHONE", "values": [{"value": "+998901234567"}]}]}]},
    }])).await).await;
    (pid, pending, paid, out[0]["id"].as_u64().unwrap())
}

#[tokio::test]
async fn a_stage_change_sends_status_and_update_in_amocrm_bracket_format() {
    let (sb, token) = unlimited().await;
    let rx = Receiver::start(200).await;
    subscribe_to(
        &sb,
        &token,
        &format!("{}/hook/abc", rx.url),
        &[
            "add_lead",
            "update_lead",
            "status_lead",
            "delete_lead",
            "add_contact",
        ],
    )
    .await;
    let (pid, pending, paid, lead) = setup(&sb, &token).await;
    let created = rx.delivered(&sb).await;
    assert_eq!(
        created.len(),
        1,
        "one request per operation and destination"
    );
    let add = parse_hook(&created[0].body);
    let added = &add.leads.as_ref().unwrap()["add"][0];
    assert_eq!(added.id, lead.to_string());
    assert_eq!(added.name.as_deref(), Some("Buyurtma #1042"));
    let contact = &add.contacts.as_ref().unwrap()["add"][0];
    assert_eq!(contact.kind.as_deref(), Some("contact"));

    let resp = patch(
        &sb,
        &token,
        "leads",
        json!([{"id": lead, "pipeline_id": pid, "status_id": paid}]),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let got = rx.delivered(&sb).await;
    assert_eq!(got.len(), 2);
    let req = &got[1];
    assert_eq!(req.request_line, "POST /hook/abc HTTP/1.1");
    assert_eq!(
        req.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    assert_eq!(req.headers["user-agent"], "amoCRM-WebHook-client/1.0");
    assert!(
        req.body.contains("leads%5Bstatus%5D%5B0%5D%5Bid%5D="),
        "brackets are percent-encoded on the wire"
    );
    let hook = parse_hook(&req.body);
    let leads = hook.leads.unwrap();
    let status = &leads["status"][0];
    assert_eq!(status.id, lead.to_string());
    assert_eq!(status.status_id.as_deref(), Some(paid.to_string().as_str()));
    assert_eq!(
        status.old_status_id.as_deref(),
        Some(pending.to_string().as_str())
    );
    assert_eq!(
        status.pipeline_id.as_deref(),
        Some(pid.to_string().as_str())
    );
    assert_eq!(status.price.as_deref(), Some("150000"));
    let account_id = sb.account_id(HOST).unwrap().to_string();
    assert_eq!(status.account_id.as_deref(), Some(account_id.as_str()));
    assert!(status.last_modified.is_some());
    let cf = &status.custom_fields.as_ref().unwrap()[0];
    assert_eq!(
        (cf.name.as_str(), cf.values[0]["value"].as_str()),
        ("Order number", "1042")
    );
    assert!(!cf.id.is_empty());
    assert_eq!(leads["update"][0].id, lead.to_string());
    assert_eq!(hook.account.id.as_deref(), Some(account_id.as_str()));
    assert_eq!(hook.account.subdomain, "sellerone");
    assert_eq!(
        hook.account.links.unwrap()["self"],
        "https://sellerone.amocrm.ru"
    );
    sb.stop().await;
}

#[tokio::test]
async fn a_move_in_the_ui_or_control_route_sends_webhooks_without_blocking() {
    let (sb, token, rx) = subscribed(&["status_lead"]).await;
    let (pid, pending, paid, lead) = setup(&sb, &token).await;
    sb.move_lead(HOST, lead, pid, 142).unwrap();
    let moved = post_path(
        &sb,
        &format!("/_sandbox/accounts/{HOST}/leads/{lead}/move"),
        &json!({"pipeline_id": pid, "status_id": paid}),
    )
    .await;
    assert_eq!(moved.status(), 204);
    // The board's form does the same.
    let form = http()
        .post(format!("{}/_sandbox/ui/move", sb.base_url()))
        .form(&[
            ("host", HOST),
            ("lead_id", &lead.to_string()),
            ("target", &format!("{pid}:{pending}")),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 303);
    sb.webhooks_idle().await;
    let statuses: Vec<(String, String)> = rx
        .received()
        .iter()
        .map(|r| {
            let h = parse_hook(&r.body);
            let s = &h.leads.unwrap()["status"][0];
            (
                s.old_status_id.clone().unwrap(),
                s.status_id.clone().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        vec![
            (pending.to_string(), "142".to_owned()),
            ("142".to_owned(), paid.to_string()),
            (paid.to_string(), pending.to_string()),
        ],
        "in order, only status_lead (no add/update subscribed)"
    );
    assert!(sb.move_lead(HOST, lead, pid, 999).is_err());
    let board = page_text(&sb, "/_sandbox/ui").await;
    assert!(board.contains("Buyurtma #1042") && board.contains("Marketplace"));
    sb.stop().await;
}

#[tokio::test]
async fn the_digital_pipeline_format_is_compact() {
    let (sb, token, rx) = subscribed_with(&["status_lead", "update_lead"], |c| {
        c.webhook_format = WebhookFormat::DigitalPipeline;
    })
    .await;
    let (pid, pending, paid, lead) = setup(&sb, &token).await;
    sb.move_lead(HOST, lead, pid, paid).unwrap();
    let got = rx.delivered(&sb).await;
    assert_eq!(got.len(), 1);
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&got[0].body).unwrap();
    let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        vec![
            "leads[status][0][id]",
            "leads[status][0][status_id]",
            "leads[status][0][pipeline_id]",
            "leads[status][0][old_status_id]",
            "leads[status][0][old_pipeline_id]",
            "account[id]",
            "account[subdomain]",
        ]
    );
    let hook = parse_hook(&got[0].body);
    let s = &hook.leads.unwrap()["status"][0];
    assert_eq!(
        s.old_status_id.as_deref(),
        Some(pending.to_string().as_str())
    );
    assert_eq!(s.old_pipeline_id.as_deref(), Some(pid.to_string().as_str()));
    sb.stop().await;
}

#[tokio::test]
async fn deleting_a_lead_sends_delete_lead_with_id_and_type() {
    let (sb, token, rx) = subscribed(&["delete_lead"]).await;
    let (_, _, _, lead) = setup(&sb, &token).await;
    sb.delete_lead(HOST, lead).unwrap();
    let got = rx.delivered(&sb).await;
    assert_eq!(got.len(), 1);
    let hook = parse_hook(&got[0].body);
    let d = &hook.leads.unwrap()["delete"][0];
    assert_eq!(
        (d.id.as_str(), d.kind.as_deref()),
        (lead.to_string().as_str(), Some("lead"))
    );
    assert!(sb.lead(HOST, lead).is_none());
    sb.stop().await;
}

#[tokio::test]
async fn a_destination_that_keeps_failing_is_disabled_and_stops_receiving() {
    let (sb, token) = unlimited_with(|c| c.webhook_disable_after = 2).await;
    let rx = Receiver::start(500).await;
    subscribe_to(&sb, &token, &rx.url, &["status_lead"]).await;
    let (pid, pending, paid, lead) = setup(&sb, &token).await;
    for i in 0..5 {
        let target = if i % 2 == 0 { paid } else { pending };
        sb.move_lead(HOST, lead, pid, target).unwrap();
        sb.webhooks_idle().await;
    }
    assert_eq!(
        rx.received().len(),
        3,
        "disabled after more than 2 failures"
    );
    let hooks = sb.webhooks(HOST);
    assert!(hooks[0].disabled);
    let listed = get_json(&sb, &token, "webhooks").await;
    assert_eq!(listed["_embedded"]["webhooks"][0]["disabled"], true);
    let deliveries = sb.deliveries();
    assert_eq!(
        deliveries
            .iter()
            .filter(|d| !d.ok && d.status == Some(500))
            .count(),
        3
    );
    // Saving the subscription again re-enables it.
    subscribe_to(&sb, &token, &rx.url, &["status_lead"]).await;
    assert!(!sb.webhooks(HOST)[0].disabled);
    sb.stop().await;
}

#[tokio::test]
async fn a_slow_destination_times_out_after_the_deadline() {
    let (sb, token) =
        unlimited_with(|c| c.webhook_timeout = std::time::Duration::from_millis(200)).await;
    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", silent.local_addr().unwrap());
    let held = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = silent.accept().await {
            keep.lock().await.push(sock);
        }
    });
    subscribe_to(&sb, &token, &url, &["add_lead"]).await;
    setup(&sb, &token).await;
    sb.webhooks_idle().await;
    let d = sb.deliveries();
    assert_eq!(d.len(), 1);
    assert_eq!(
        (d[0].ok, d[0].status, d[0].error.as_deref()),
        (false, None, Some("timeout"))
    );
    sb.stop().await;
}

/// Keys of a form body with indices normalised (`leads[status][0][custom_fields][3][id]` → `…[N]…[N]…`).
fn key_shapes(body: &str) -> Vec<String> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(body).unwrap();
    let mut keys: Vec<String> = pairs
        .into_iter()
        .map(|(k, _)| {
            k.split('[')
                .map(|part| {
                    if part
                        .trim_end_matches(']')
                        .chars()
                        .all(|c| c.is_ascii_digit())
                        && part.ends_with(']')
                    {
                        "N]".to_owned()
                    } else {
                        part.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join("[")
        })
        .collect();
    keys.dedup();
    keys
}

#[tokio::test]
async fn bodies_carry_every_key_of_real_amocrm_captures_in_the_same_order() {
    let capture_status = include_str!("../fixtures/webhook-status-lead-1.txt");
    let capture_add = include_str!("../fixtures/webhook-add-lead-1.txt");
    let capture_dp = include_str!("../fixtures/webhook-status-lead-3-dp-format.txt");
    // The captures parse with the same parser.
    parse_hook(capture_status);
    parse_hook(capture_add);

    let (sb, token, rx) = subscribed(&["add_lead", "status_lead"]).await;
    let (pid, _, paid, lead) = setup(&sb, &token).await;
    sb.move_lead(HOST, lead, pid, paid).unwrap();
    let got = rx.delivered(&sb).await;
    for (ours, real) in [(&got[0].body, capture_add), (&got[1].body, capture_status)] {
        let ours = key_shapes(ours);
        let real = key_shapes(real);
        let mut last = 0;
        for key in &real {
            // 2016 captures put old_status_id last; newer bodies place it after status_id.
            let pos = ours
                .iter()
                .position(|k| k == key)
                .unwrap_or_else(|| panic!("{key} missing from {ours:?}"));
            if !key.ends_with("[old_status_id]") {
                assert!(pos >= last, "{key} out of order in {ours:?}");
                last = pos;
            }
        }
    }

    let (dp, token, rx) = subscribed_with(&["status_lead"], |c| {
        c.webhook_format = WebhookFormat::DigitalPipeline;
    })
    .await;
    let (pid, _, paid, lead) = setup(&dp, &token).await;
    dp.move_lead(HOST, lead, pid, paid).unwrap();
    assert_eq!(
        key_shapes(&rx.delivered(&dp).await[0].body),
        key_shapes(capture_dp)
    );
    sb.stop().await;
    dp.stop().await;
}
