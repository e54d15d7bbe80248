//! API v4: pipelines, custom fields, leads/complex validation, lead search and paging, patches, webhooks.

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::*;

/// Creates the seller's pipeline; returns (pipeline id, [stage ids]).
async fn make_pipeline(sb: &amocrm_sandbox::SandboxHandle, token: &str) -> (u64, Vec<u64>) {
    let resp = post(
        sb,
        token,
        "leads/pipelines",
        json!([{
            "name": "Marketplace", "is_main": false, "sort": 20, "request_id": "p1",
            "_embedded": {"statuses": [
                {"name": "Kutilmoqda", "sort": 10, "color": "#fffeb2"},
                {"name": "To'lov kutilmoqda", "sort": 20, "color": "#d6eaff"},
                {"name": "To'langan", "sort": 30, "color": "#87f2c0"},
                {"id": 142, "name": "Yakunlangan"},
            ]},
        }]),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let body = json_of(resp).await;
    let p = &body["_embedded"]["pipelines"][0];
    let stages = embedded(p, "statuses")
        .iter()
        .filter(|s| s["type"] == 0 && s["is_editable"] == true)
        .map(|s| s["id"].as_u64().unwrap())
        .collect();
    (p["id"].as_u64().unwrap(), stages)
}

async fn make_field(sb: &amocrm_sandbox::SandboxHandle, token: &str, name: &str, ty: &str) -> u64 {
    let resp = post(
        sb,
        token,
        "leads/custom_fields",
        json!([{"name": name, "type": ty}]),
    )
    .await;
    assert_eq!(resp.status(), 200);
    json_of(resp).await["_embedded"]["custom_fields"][0]["id"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn created_pipelines_get_incoming_won_and_lost_statuses() {
    let (sb, token) = unlimited().await;
    let resp = post(&sb, &token, "leads/pipelines", json!([{
        "name": "Marketplace", "request_id": "p1",
        "_embedded": {"statuses": [{"name": "New", "sort": 10, "color": "#fffeb2"}, {"id": 142, "name": "Done"}]},
    }])).await;
    assert_eq!(resp.headers()["content-type"], "application/hal+json");
    let body = json_of(resp).await;
    assert_eq!(body["_total_items"], 1);
    let p = &body["_embedded"]["pipelines"][0];
    assert_eq!(p["request_id"], "p1");
    let statuses = embedded(p, "statuses");
    let kinds: Vec<(u64, &str, u64)> = statuses
        .iter()
        .map(|s| {
            (
                s["type"].as_u64().unwrap(),
                s["name"].as_str().unwrap(),
                s["id"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(kinds[0].0, 1, "incoming first");
    assert_eq!(kinds[1].1, "New");
    assert_eq!((kinds[2].2, kinds[2].1), (142, "Done"));
    assert_eq!(kinds[3].2, 143);
    let id = p["id"].as_u64().unwrap();
    let one = get_json(&sb, &token, &format!("leads/pipelines/{id}")).await;
    assert_eq!(one["name"], "Marketplace");
    let list = get_json(&sb, &token, "leads/pipelines").await;
    assert_eq!(list["_total_items"], 2);
    assert_eq!(sb.pipelines(HOST).len(), 2);
    // Deletable through the API while it holds no leads.
    let del = delete(&sb, &token, &format!("leads/pipelines/{id}")).await;
    assert_eq!(del.status(), 204);
    assert_eq!(
        get(&sb, &token, &format!("leads/pipelines/{id}"))
            .await
            .status(),
        204
    );
    sb.stop().await;
}

#[tokio::test]
async fn a_status_colour_outside_amocrm_list_is_a_validation_error() {
    let (sb, token) = unlimited().await;
    let resp = post(
        &sb,
        &token,
        "leads/pipelines",
        json!([{
            "name": "P", "_embedded": {"statuses": [{"name": "A", "color": "#123456"}]},
        }]),
    )
    .await;
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body = json_of(resp).await;
    assert_eq!(
        body["validation-errors"][0]["errors"][0]["path"],
        "_embedded.statuses.0.color"
    );
    assert_eq!(
        body["validation-errors"][0]["errors"][0]["code"],
        "NotSupportedChoice"
    );
    assert_eq!(sb.pipelines(HOST).len(), 1);
    sb.stop().await;
}

#[tokio::test]
async fn an_account_holds_at_most_fifty_pipelines() {
    let (sb, token) = unlimited().await;
    let many: Vec<Value> = (0..49).map(|i| json!({"name": format!("P{i}")})).collect();
    assert_eq!(
        post(&sb, &token, "leads/pipelines", Value::Array(many))
            .await
            .status(),
        200
    );
    assert_eq!(sb.pipelines(HOST).len(), 50);
    let one_more = post(&sb, &token, "leads/pipelines", json!([{"name": "P50"}])).await;
    assert_eq!(one_more.status(), 400);
    assert_eq!(
        json_of(one_more).await["validation-errors"][0]["errors"][0]["code"],
        "TooManyPipelines"
    );
    sb.stop().await;
}

#[tokio::test]
async fn custom_fields_are_created_listed_and_deleted() {
    let (sb, token) = unlimited().await;
    assert_eq!(get(&sb, &token, "leads/custom_fields").await.status(), 204);
    let resp = post(&sb, &token, "leads/custom_fields", json!([
        {"name": "Order number", "type": "text", "code": "ORDER_NO", "is_api_only": true, "request_id": "f1"},
        {"name": "Order link", "type": "url"},
    ])).await;
    let body = json_of(resp).await;
    let f = &body["_embedded"]["custom_fields"][0];
    assert_eq!(
        (
            f["type"].as_str(),
            f["entity_type"].as_str(),
            f["request_id"].as_str()
        ),
        (Some("text"), Some("leads"), Some("f1"))
    );
    assert_eq!(f["is_api_only"], true);
    let list = get_json(&sb, &token, "leads/custom_fields?filter[type][]=url").await;
    assert_eq!(embedded(&list, "custom_fields").len(), 1);
    let bad = post(
        &sb,
        &token,
        "leads/custom_fields",
        json!([{"name": "X", "type": "hologram"}]),
    )
    .await;
    assert_eq!(bad.status(), 400);
    let id = f["id"].as_u64().unwrap();
    let del = delete(&sb, &token, &format!("leads/custom_fields/{id}")).await;
    assert_eq!(del.status(), 204);
    assert_eq!(sb.custom_fields(HOST).len(), 1);
    sb.stop().await;
}

/// The fields [`order`] fills: (order number, order link).
async fn order_fields(sb: &amocrm_sandbox::SandboxHandle, token: &str) -> (u64, u64) {
    let number = make_field(sb, token, "Order number", "text").await;
    let link = make_field(sb, token, "Order link", "url").await;
    (number, link)
}

fn order(i: usize, pipeline: u64, status: u64, order_field: u64, link_field: u64) -> Value {
    json!({
        "name": format!("Buyurtma #{}", 1000 + i),
        "price": 150_000 + i,
        "pipeline_id": pipeline,
        "status_id": status,
        "request_id": format!("ord-{i}"),
        "custom_fields_values": [
            {"field_id": order_field, "values": [{"value": format!("{}", 1000 + i)}]},
            {"field_id": link_field, "values": [{"value": format!("https://market.example/orders/{}", 1000 + i)}]},
        ],
        "_embedded": {
            "tags": [{"name": "marketplace"}],
            "contacts": [{"first_name": "Ali", "last_name": format!("Valiyev {i}"), "custom_fields_values": [
                {"field_code": "PHONE", "values": [{"value": format!("+99890{:07}", i), "enum_code": "WORK"}]},
                {"field_code": "EMAIL", "values": [{"value": format!("buyer{i}@example.uz"), "enum_code": "WORK"}]},
            ]}],
            "companies": [{"name": format!("Shop {i}")}],
        },
    })
}

#[tokio::test]
async fn complex_creates_up_to_fifty_leads_with_contacts_and_echoes_request_ids() {
    let (sb, token) = unlimited().await;
    let (pid, stages) = make_pipeline(&sb, &token).await;
    let (of, lf) = order_fields(&sb, &token).await;
    let batch: Vec<Value> = (0..50).map(|i| order(i, pid, stages[0], of, lf)).collect();
    let resp = post(&sb, &token, "leads/complex", Value::Array(batch)).await;
    assert_eq!(resp.status(), 200);
    let out = json_of(resp).await;
    let out = out.as_array().unwrap();
    assert_eq!(out.len(), 50);
    assert_eq!(out[7]["request_id"], json!(["ord-7"]));
    assert_eq!(out[7]["merged"], false);
    assert!(out[7]["contact_id"].is_u64() && out[7]["company_id"].is_u64());
    let leads = sb.leads(HOST);
    assert_eq!(leads.len(), 50);
    let lead = sb.lead(HOST, out[7]["id"].as_u64().unwrap()).unwrap();
    assert_eq!(
        (lead.pipeline_id, lead.status_id, lead.price),
        (pid, stages[0], 150_007)
    );
    assert_eq!(lead.request_id.as_deref(), Some("ord-7"));
    let contact = sb
        .contacts(HOST)
        .into_iter()
        .find(|c| Some(c.id) == out[7]["contact_id"].as_u64())
        .unwrap();
    assert_eq!(contact.values_of("PHONE"), vec!["+998900000007".to_owned()]);
    assert_eq!(
        contact.values_of("EMAIL"),
        vec!["buyer7@example.uz".to_owned()]
    );
    assert_eq!(contact.company_id, out[7]["company_id"].as_u64());
    assert_eq!(sb.counters(HOST).complex_calls, 1);

    let too_many: Vec<Value> = (0..51).map(|i| order(i, pid, stages[0], of, lf)).collect();
    let resp = post(&sb, &token, "leads/complex", Value::Array(too_many)).await;
    assert_eq!(resp.status(), 422);
    assert_eq!(
        post(&sb, &token, "leads/complex", json!([])).await.status(),
        400
    );
    assert_eq!(sb.leads(HOST).len(), 50);
    sb.stop().await;
}

#[tokio::test]
async fn complex_validation_errors_name_the_request_id_and_path_and_create_nothing() {
    let (sb, token) = unlimited().await;
    let (pid, stages) = make_pipeline(&sb, &token).await;
    let (of, lf) = order_fields(&sb, &token).await;
    let main = sb.pipelines(HOST).into_iter().find(|p| p.is_main).unwrap();
    let foreign_status = main
        .statuses
        .iter()
        .find(|s| s.type_ == 0 && s.is_editable)
        .unwrap()
        .id;
    let mut bad_price = order(1, pid, stages[0], of, lf);
    bad_price["price"] = json!("150000");
    let mut wrong_stage = order(2, pid, foreign_status, of, lf);
    wrong_stage["request_id"] = json!("ord-2");
    let mut unknown_field = order(3, pid, stages[0], of, lf);
    unknown_field["custom_fields_values"][0]["field_id"] = json!(1);
    let mut bad_url = order(4, pid, stages[0], of, lf);
    bad_url["custom_fields_values"][1]["values"][0]["value"] = json!("not a url");
    let mut two_contacts = order(5, pid, stages[0], of, lf);
    two_contacts["_embedded"]["contacts"] = json!([{"name": "A"}, {"name": "B"}]);
    let mut bad_phone_kind = order(6, pid, stages[0], of, lf);
    bad_phone_kind["_embedded"]["contacts"][0]["custom_fields_values"][0]["values"][0]["enum_code"] =
        json!("PAGER");
    let good = order(0, pid, stages[0], of, lf);
    let resp = post(
        &sb,
        &token,
        "leads/complex",
        json!([
            good,
            bad_price,
            wrong_stage,
            unknown_field,
            bad_url,
            two_contacts,
            bad_phone_kind
        ]),
    )
    .await;
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body = json_of(resp).await;
    assert_eq!(body["title"], "Bad Request");
    assert_eq!(body["type"], "https://httpstatus.es/400");
    assert_eq!(body["detail"], "Request validation failed");
    let errs = body["validation-errors"].as_array().unwrap();
    let find = |rid: &str| {
        errs.iter()
            .find(|e| e["request_id"] == rid)
            .unwrap_or_else(|| panic!("no errors for {rid}"))["errors"][0]
            .clone()
    };
    assert_eq!(
        (
            find("ord-1")["code"].as_str(),
            find("ord-1")["path"].as_str()
        ),
        (Some("InvalidType"), Some("price"))
    );
    assert_eq!(find("ord-2")["path"], "status_id");
    assert_eq!(find("ord-3")["path"], "custom_fields_values.0.field_id");
    assert_eq!(
        find("ord-4")["path"],
        "custom_fields_values.1.values.0.value"
    );
    assert_eq!(find("ord-5")["path"], "_embedded.contacts");
    assert_eq!(
        find("ord-6")["path"],
        "_embedded.contacts.0.custom_fields_values.0.values.0.enum_code"
    );
    assert_eq!(errs.len(), 6, "the valid lead has no entry");
    assert!(
        sb.leads(HOST).is_empty(),
        "an invalid batch creates nothing"
    );
    assert!(sb.contacts(HOST).is_empty());
    sb.stop().await;
}

#[tokio::test]
async fn leads_are_found_by_filters_and_query_and_paged_with_204_past_the_end() {
    let (sb, token) = unlimited().await;
    let (pid, stages) = make_pipeline(&sb, &token).await;
    let (of, lf) = order_fields(&sb, &token).await;
    let batch: Vec<Value> = (0..30)
        .map(|i| order(i, pid, stages[i % 2], of, lf))
        .collect();
    let out = json_of(post(&sb, &token, "leads/complex", Value::Array(batch)).await).await;
    let id3 = out[3]["id"].as_u64().unwrap();

    let all = get_json(&sb, &token, "leads?limit=250").await;
    assert_eq!(embedded(&all, "leads").len(), 30);
    let page2 = get_json(&sb, &token, "leads?limit=20&page=2").await;
    assert_eq!(page2["_page"], 2);
    assert_eq!(embedded(&page2, "leads").len(), 10);
    assert!(page2["_links"]["next"].is_null());
    let page1 = get_json(&sb, &token, "leads?limit=20&page=1").await;
    assert!(page1["_links"]["next"]["href"].is_string());
    assert_eq!(
        get(&sb, &token, "leads?limit=20&page=3").await.status(),
        204
    );
    assert_eq!(get(&sb, &token, "leads?limit=251").await.status(), 422);

    // `query` is a substring search: order 1003 also matches nothing else, 100 matches many.
    let q = get_json(&sb, &token, "leads?query=1003").await;
    let found: Vec<u64> = embedded(&q, "leads")
        .iter()
        .map(|l| l["id"].as_u64().unwrap())
        .collect();
    assert_eq!(found, vec![id3]);
    assert_eq!(
        get(&sb, &token, "leads?query=no-such-order").await.status(),
        204
    );
    let by_phone = get_json(&sb, &token, "leads?query=%2B998900000003").await;
    assert_eq!(by_phone["_embedded"]["leads"][0]["id"].as_u64(), Some(id3));

    let by_id = get_json(
        &sb,
        &token,
        &format!("leads?filter[id][]={id3}&filter[id][]=1"),
    )
    .await;
    assert_eq!(embedded(&by_id, "leads").len(), 1);
    let by_stage = get_json(&sb, &token, &format!("leads?filter[statuses][0][pipeline_id]={pid}&filter[statuses][0][status_id]={}&limit=250", stages[1])).await;
    assert_eq!(embedded(&by_stage, "leads").len(), 15);
    let by_pipeline = get_json(
        &sb,
        &token,
        &format!("leads?filter[pipeline_id]={pid}&limit=250"),
    )
    .await;
    assert_eq!(embedded(&by_pipeline, "leads").len(), 30);

    let one = get_json(&sb, &token, &format!("leads/{id3}?with=contacts")).await;
    assert_eq!(one["name"], "Buyurtma #1003");
    assert_eq!(one["custom_fields_values"][0]["values"][0]["value"], "1003");
    assert_eq!(one["_embedded"]["contacts"][0]["id"], out[3]["contact_id"]);
    assert_eq!(get(&sb, &token, "leads/1").await.status(), 204);
    sb.stop().await;
}

#[tokio::test]
async fn patching_leads_moves_them_and_validates_the_stage() {
    let (sb, token) = unlimited().await;
    let (pid, stages) = make_pipeline(&sb, &token).await;
    let out = json_of(post(&sb, &token, "leads/complex", json!([{"name": "A", "pipeline_id": pid, "status_id": stages[0]}, {"name": "B", "pipeline_id": pid}])).await).await;
    let (a, b) = (
        out[0]["id"].as_u64().unwrap(),
        out[1]["id"].as_u64().unwrap(),
    );
    assert_eq!(
        sb.lead(HOST, b).unwrap().status_id,
        stages[0],
        "no status: first stage"
    );
    let resp = patch(
        &sb,
        &token,
        "leads",
        json!([
            {"id": a, "status_id": stages[2], "pipeline_id": pid},
            {"id": b, "status_id": 142, "pipeline_id": pid, "price": 5},
        ]),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let body = json_of(resp).await;
    assert_eq!(embedded(&body, "leads").len(), 2);
    assert_eq!(sb.lead(HOST, a).unwrap().status_id, stages[2]);
    let won = sb.lead(HOST, b).unwrap();
    assert_eq!((won.status_id, won.pipeline_id, won.price), (142, pid, 5));
    assert!(won.closed_at.is_some());
    let single = patch(
        &sb,
        &token,
        &format!("leads/{a}"),
        json!({"name": "Renamed"}),
    )
    .await;
    assert_eq!(json_of(single).await["id"].as_u64(), Some(a));
    assert_eq!(sb.lead(HOST, a).unwrap().name, "Renamed");
    let bad = patch(
        &sb,
        &token,
        "leads",
        json!([{"id": a, "status_id": 1, "pipeline_id": pid}]),
    )
    .await;
    assert_eq!(bad.status(), 400);
    sb.stop().await;
}

#[tokio::test]
async fn webhook_subscriptions_are_listed_with_disabled_and_removed_with_204() {
    let (sb, token) = unlimited().await;
    assert_eq!(get(&sb, &token, "webhooks").await.status(), 204);
    let resp = post(
        &sb,
        &token,
        "webhooks",
        json!({
            "destination": "https://connector.example/webhooks/amocrm/tok",
            "settings": ["add_lead", "update_lead", "status_lead", "delete_lead"],
            "sort": 10,
        }),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let hook = json_of(resp).await;
    assert_eq!(hook["disabled"], false);
    assert_eq!(hook["settings"].as_array().unwrap().len(), 4);
    let list = get_json(&sb, &token, "webhooks").await;
    assert_eq!(
        list["_embedded"]["webhooks"][0]["destination"],
        "https://connector.example/webhooks/amocrm/tok"
    );
    assert_eq!(list["_embedded"]["webhooks"][0]["disabled"], false);
    let bad = post(
        &sb,
        &token,
        "webhooks",
        json!({"destination": "https://x.example", "settings": ["sing_a_song"]}),
    )
    .await;
    assert_eq!(bad.status(), 400);
    let del = send_json(
        &sb,
        &token,
        Method::DELETE,
        "webhooks",
        json!({"destination": "https://connector.example/webhooks/amocrm/tok"}),
    )
    .await;
    assert_eq!(del.status(), 204);
    assert!(sb.webhooks(HOST).is_empty());
    sb.stop().await;
}

#[tokio::test]
async fn unknown_accounts_and_routes_answer_404_in_amocrm_shape() {
    let (sb, token) = unlimited().await;
    let resp = api(&sb, "nobody.amocrm.ru", Method::GET, "account", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body = json_of(resp).await;
    assert_eq!(
        (body["title"].as_str(), body["status"].as_u64()),
        (Some("Not Found"), Some(404))
    );
    assert_eq!(get(&sb, &token, "no/such/route").await.status(), 404);
    let log = sb.request_log();
    assert!(
        log.iter()
            .any(|r| r.host.as_deref() == Some("nobody.amocrm.ru") && r.status == 404)
    );
    sb.stop().await;
}
