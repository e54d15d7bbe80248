//! The `/_sandbox` control routes other processes use.

use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn accounts_log_and_counters_are_reachable_over_http() {
    let sb = start().await;
    let add_account = async |host: &str| {
        json_of(post_path(&sb, "/_sandbox/accounts", &json!({ "host": host })).await).await
    };
    let created = add_account("NewShop.amocrm.ru").await;
    assert_eq!(created["host"], "newshop.amocrm.ru");
    let again = add_account("newshop.amocrm.ru").await;
    assert_eq!(
        again["id"], created["id"],
        "adding an existing account returns it"
    );
    let accounts = json_of(get_path(&sb, "/_sandbox/accounts").await).await;
    assert_eq!(accounts.as_array().unwrap().len(), 4);

    let pair = connect(&sb, "newshop.amocrm.ru").await;
    let resp = get_on(&sb, "newshop.amocrm.ru", &pair.access_token, "account").await;
    assert_eq!(resp.status(), 200);
    let counters =
        json_of(get_path(&sb, "/_sandbox/accounts/newshop.amocrm.ru/counters").await).await;
    assert_eq!(counters["code_exchanges"], 1);
    assert_eq!(counters["requests"], 2);
    let log = json_of(get_path(&sb, "/_sandbox/log?host=newshop.amocrm.ru").await).await;
    let log = log.as_array().unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0]["path"], "/oauth2/access_token");
    assert_eq!(log[0]["grant_type"], "authorization_code");
    assert_eq!(log[1]["path"], "/api/v4/account");
    assert_eq!(log[1]["status"], 200);
    let since = log[0]["seq"].as_u64().unwrap();
    let newer = json_of(get_path(&sb, &format!("/_sandbox/log?since={since}")).await).await;
    assert_eq!(newer.as_array().unwrap().len(), 1);
    let pipelines =
        json_of(get_path(&sb, "/_sandbox/accounts/newshop.amocrm.ru/pipelines").await).await;
    assert_eq!(pipelines[0]["statuses"].as_array().unwrap().len(), 6);
    let idle = json_of(get_path(&sb, "/_sandbox/deliveries/idle?timeout_ms=100").await).await;
    assert_eq!(idle["idle"], true);
    assert_eq!(
        get_path(&sb, "/_sandbox/accounts/nobody.example/leads")
            .await
            .status(),
        404
    );
    let home = get_path(&sb, "/").await;
    assert_eq!(home.status(), 200);
    assert!(home.text().await.unwrap().contains("newshop.amocrm.ru"));
    sb.stop().await;
}

#[tokio::test]
async fn integrations_can_be_added_at_run_time_without_exposing_secrets() {
    let sb = start_with(|c| c.integrations.clear()).await;
    let added = post_path(
        &sb,
        "/_sandbox/integrations",
        &json!({"client_id": CLIENT_ID, "client_secret": SECRET, "redirect_uri": REDIRECT}),
    )
    .await;
    assert_eq!(added.status(), 204);
    let listed = page_text(&sb, "/_sandbox/integrations").await;
    assert!(listed.contains(CLIENT_ID) && !listed.contains(SECRET));
    connect(&sb, HOST).await;
    sb.stop().await;
}

/// A JSON control call under `/_sandbox/accounts/{HOST}`.
async fn control(
    sb: &amocrm_sandbox::SandboxHandle,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> reqwest::Response {
    let url = match path {
        "" => format!("{}/_sandbox/accounts/{HOST}", sb.base_url()),
        p => format!("{}/_sandbox/accounts/{HOST}/{p}", sb.base_url()),
    };
    let mut req = http().request(method, url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.unwrap()
}

/// How many items `GET /_sandbox/accounts/{HOST}/{path}` lists.
async fn control_count(sb: &amocrm_sandbox::SandboxHandle, path: &str) -> usize {
    json_of(control(sb, reqwest::Method::GET, path, None).await)
        .await
        .as_array()
        .unwrap()
        .len()
}

#[tokio::test]
async fn users_contacts_lists_and_fields_are_seeded_and_read_over_http() {
    use reqwest::Method;
    let (sb, token) = unlimited().await;
    let user = json_of(
        control(
            &sb,
            Method::POST,
            "users",
            Some(json!({"name": "Manager", "is_admin": false})),
        )
        .await,
    )
    .await;
    let uid = user["id"].as_u64().unwrap();
    assert_eq!(
        (user["is_admin"].as_bool(), user["is_active"].as_bool()),
        (Some(false), Some(true))
    );
    let off = json_of(
        control(
            &sb,
            Method::PATCH,
            &format!("users/{uid}"),
            Some(json!({"is_active": false})),
        )
        .await,
    )
    .await;
    assert_eq!(off["is_active"], false);
    assert_eq!(
        control(&sb, Method::DELETE, &format!("users/{uid}"), None)
            .await
            .status(),
        204
    );
    assert_eq!(control_count(&sb, "users").await, 1);

    let contact = json_of(
        control(
            &sb,
            Method::POST,
            "contacts",
            Some(json!({
                "name": "Ali", "phones": ["+998 90 123 45 67"], "emails": ["ali@example.uz"],
            })),
        )
        .await,
    )
    .await;
    let cid = contact["id"].as_u64().unwrap();
    let change = control(
        &sb,
        Method::PATCH,
        &format!("contacts/{cid}"),
        Some(json!({"phones": ["+998935554433"]})),
    )
    .await;
    assert_eq!(change.status(), 204);
    let listed = json_of(control(&sb, Method::GET, "contacts", None).await).await;
    let phone = field_by_code(&listed[0], "PHONE");
    assert_eq!(
        phone["values"],
        json!([{"value": "+998935554433", "enum_id": phone["values"][0]["enum_id"], "enum_code": "WORK"}])
    );

    let products = json_of(
        control(
            &sb,
            Method::POST,
            "products",
            Some(json!({"name": "Mahsulotlar"})),
        )
        .await,
    )
    .await;
    assert_eq!(
        (products["type"].as_str(), products["name"].as_str()),
        (Some("products"), Some("Mahsulotlar"))
    );
    let regular = json_of(
        control(
            &sb,
            Method::POST,
            "catalogs",
            Some(json!({"name": "Price list", "type": "regular"})),
        )
        .await,
    )
    .await;
    assert_eq!(regular["type"], "regular");
    assert_eq!(control_count(&sb, "catalogs").await, 2);
    assert_eq!(
        control(
            &sb,
            Method::POST,
            "catalogs",
            Some(json!({"name": "x", "type": "weird"}))
        )
        .await
        .status(),
        400
    );

    let field = json_of(
        control(
            &sb,
            Method::POST,
            "custom_fields",
            Some(json!({
                "name": "Delivery", "type": "select", "enums": ["Courier", "Pickup"],
            })),
        )
        .await,
    )
    .await;
    let fid = field["id"].as_u64().unwrap();
    let pickup = field["enums"][1]["id"].as_u64().unwrap();
    let url = sb.add_lead_field(HOST, "Source", "url", &[]).unwrap();
    assert!(
        sb.add_lead_field(HOST, "Bad", "select", &[]).is_err(),
        "a select needs options"
    );
    let resp = post(
        &sb,
        &token,
        "leads/complex",
        json!([{
            "name": "Order", "custom_fields_values": [
                {"field_id": fid, "values": [{"enum_id": pickup}]},
                {"field_id": url.id, "values": [{"value": "https://shop.example/o/1"}]},
            ],
        }]),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let lead = sb.leads(HOST).pop().unwrap();
    assert_eq!(lead.custom_fields_values[0].values[0].as_text(), "Pickup");
    let resp = post(
        &sb,
        &token,
        "leads/complex",
        json!([{
            "name": "Order", "custom_fields_values": [{"field_id": 1, "values": [{"value": "x"}]}],
        }]),
    )
    .await;
    assert_eq!(resp.status(), 400, "an unknown field id");

    let admin = control(
        &sb,
        Method::PUT,
        "connecting_user",
        Some(json!({"is_admin": false})),
    )
    .await;
    assert_eq!(json_of(admin).await["user"]["is_admin"], false);
    assert_eq!(get(&sb, &token, "users").await.status(), 403);
    for path in ["notes", "tasks", "links", "elements", "unsorted"] {
        let list = json_of(control(&sb, Method::GET, path, None).await).await;
        assert!(list.is_array(), "{path}");
    }
    let summary = json_of(control(&sb, Method::GET, "", None).await).await;
    assert_eq!(summary["catalogs"], 2);
    sb.stop().await;
}

#[tokio::test]
async fn counters_split_api_requests_by_endpoint_family() {
    let (sb, token) = unlimited().await;
    let lead = sb.create_lead(HOST, "A", 1, None).unwrap();
    get(&sb, &token, "contacts?query=ali").await;
    get(&sb, &token, "contacts?query=998").await;
    post(&sb, &token, "leads/complex", json!([{"name": "B"}])).await;
    post(
        &sb,
        &token,
        &format!("leads/{lead}/notes"),
        json!([{"note_type": "common", "params": {"text": "x"}}]),
    )
    .await;
    post(
        &sb,
        &token,
        "tasks",
        json!([{"text": "x", "complete_till": 1}]),
    )
    .await;
    get(&sb, &token, "users").await;
    get(&sb, &token, "no/such/route").await;
    let counters =
        json_of(get_path(&sb, &format!("/_sandbox/accounts/{HOST}/counters")).await).await;
    let e = &counters["endpoints"];
    assert_eq!(
        (
            e["contacts_search"].as_u64(),
            e["complex"].as_u64(),
            e["notes_create"].as_u64()
        ),
        (Some(2), Some(1), Some(1))
    );
    assert_eq!(
        (
            e["tasks_create"].as_u64(),
            e["users"].as_u64(),
            e["other"].as_u64()
        ),
        (Some(1), Some(1), Some(1))
    );
    let c = sb.counters(HOST).endpoints;
    assert_eq!(c.total(), 7);
    assert!(c.families().contains(&("complex", 1)));
    assert_eq!(sb.total_counters().endpoints.complex, 1);
    sb.stop().await;
}
