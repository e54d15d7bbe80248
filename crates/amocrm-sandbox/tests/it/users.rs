//! Users (admin-only list, rights), responsible users (unknown, deleted, inactive → 400 naming them),
//! the default responsible user, and tasks.

use amocrm_sandbox::{NewUser, SandboxHandle};
use serde_json::{Value, json};

use crate::common::*;

/// Adds an active non-admin user with this name; returns its id.
fn add_user_named(sb: &SandboxHandle, name: &str) -> u64 {
    sb.add_user(
        HOST,
        NewUser {
            name: name.into(),
            ..NewUser::default()
        },
    )
    .unwrap()
    .id
}

#[tokio::test]
async fn only_an_admin_lists_users_and_each_user_has_rights() {
    let (sb, token) = unlimited().await;
    let manager = sb
        .add_user(
            HOST,
            NewUser {
                name: "Dilnoza".into(),
                email: "d@shop.uz".into(),
                is_admin: false,
            },
        )
        .unwrap();
    let resp = get(&sb, &token, "users?with=role,group&limit=250").await;
    assert_eq!(resp.status(), 200);
    let body = json_of(resp).await;
    let users = embedded(&body, "users");
    assert_eq!(users.len(), 2);
    let admin = sb.default_user_id(HOST).unwrap();
    assert_eq!(users[0]["id"], admin);
    assert_eq!(users[0]["rights"]["is_admin"], true);
    assert_eq!(users[0]["rights"]["is_active"], true);
    assert_eq!(users[1]["name"], "Dilnoza");
    assert_eq!(users[1]["email"], "d@shop.uz");
    assert_eq!(users[1]["rights"]["is_admin"], false);
    assert!(
        users[1]["_embedded"]["groups"].is_array() && users[1]["_embedded"]["roles"].is_array()
    );
    assert_eq!(get(&sb, &token, "users?limit=251").await.status(), 422);

    sb.set_user_active(HOST, manager.id, false).unwrap();
    let body = get_json(&sb, &token, "users").await;
    assert_eq!(
        body["_embedded"]["users"][1]["rights"]["is_active"], false,
        "inactive users stay listed"
    );

    sb.set_connecting_user_admin(HOST, false).unwrap();
    let resp = get(&sb, &token, "users?with=role,group&limit=250").await;
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let hook = post(
        &sb,
        &token,
        "webhooks",
        json!({"destination": "https://x.example/h", "settings": ["add_lead"]}),
    )
    .await;
    assert_eq!(hook.status(), 403, "webhooks are admin-only too");
    assert_eq!(
        get(&sb, &token, "leads").await.status(),
        204,
        "ordinary calls still work"
    );
    sb.set_connecting_user_admin(HOST, true).unwrap();
    assert_eq!(
        get(&sb, &token, "users").await.status(),
        200,
        "rights are checked on every call"
    );

    sb.set_user_active(HOST, manager.id, true).unwrap();
    sb.set_connecting_user(HOST, manager.id).unwrap();
    let managers_token = sb.issue_tokens(CLIENT_ID, HOST).access_token;
    let claims = amocrm_sandbox::decode_claims(&managers_token).unwrap();
    assert_eq!(claims["sub"], manager.id.to_string());
    assert_eq!(get(&sb, &token, "users").await.status(), 200);
    assert_eq!(get(&sb, &managers_token, "users").await.status(), 403);
    sb.set_user_active(HOST, manager.id, false).unwrap();
    assert_eq!(
        get(&sb, &managers_token, "leads").await.status(),
        403,
        "a deactivated user loses access"
    );
    assert_eq!(sb.counters(HOST).endpoints.users, 7);
    sb.stop().await;
}

#[tokio::test]
async fn responsible_users_must_exist_and_be_active_and_default_to_the_admin() {
    let (sb, token) = unlimited().await;
    let (pid, _, stage) = main_stages(&sb);
    let admin = sb.default_user_id(HOST).unwrap();
    let active = add_user_named(&sb, "Active");
    let inactive = add_user_named(&sb, "Away");
    sb.set_user_active(HOST, inactive, false).unwrap();
    let gone = add_user_named(&sb, "Gone");
    sb.delete_user(HOST, gone).unwrap();
    assert!(
        sb.delete_user(HOST, admin).is_err(),
        "the default user stays"
    );
    assert_eq!(sb.users(HOST).len(), 3);

    let made = json_of(post(&sb, &token, "leads/complex", json!([
        {"name": "Mine", "pipeline_id": pid, "status_id": stage, "responsible_user_id": active,
         "_embedded": {"contacts": [{"name": "C", "responsible_user_id": active}]}},
        {"name": "Default", "pipeline_id": pid, "status_id": stage, "_embedded": {"contacts": [{"name": "D"}]}},
    ])).await).await;
    let mine = sb.lead(HOST, made[0]["id"].as_u64().unwrap()).unwrap();
    let default = sb.lead(HOST, made[1]["id"].as_u64().unwrap()).unwrap();
    assert_eq!(
        (mine.responsible_user_id, default.responsible_user_id),
        (active, admin)
    );
    let d = sb
        .contacts(HOST)
        .into_iter()
        .find(|c| c.name == "D")
        .unwrap();
    assert_eq!(d.responsible_user_id, admin);

    let resp = post(&sb, &token, "leads/complex", json!([
        {"name": "A", "request_id": "a", "responsible_user_id": inactive},
        {"name": "B", "request_id": "b", "_embedded": {"contacts": [{"name": "X", "responsible_user_id": gone}]}},
        {"name": "C", "request_id": "c", "_embedded": {"companies": [{"name": "Y", "responsible_user_id": 12345}]}},
    ]))
    .await;
    assert_eq!(resp.status(), 400);
    let body = json_of(resp).await;
    let items = body["validation-errors"].as_array().unwrap();
    let err = |rid: &str| {
        let e = &items.iter().find(|i| i["request_id"] == rid).unwrap()["errors"][0];
        (
            e["path"].as_str().unwrap().to_owned(),
            e["detail"].as_str().unwrap().to_owned(),
        )
    };
    let (path, detail) = err("a");
    assert_eq!(path, "responsible_user_id");
    assert!(
        detail.contains(&inactive.to_string()) && detail.contains("not active"),
        "{detail}"
    );
    let (path, detail) = err("b");
    assert_eq!(path, "_embedded.contacts.0.responsible_user_id");
    assert!(detail.contains(&gone.to_string()), "{detail}");
    let (path, detail) = err("c");
    assert_eq!(path, "_embedded.companies.0.responsible_user_id");
    assert!(detail.contains("12345"));
    let resp = patch(
        &sb,
        &token,
        "leads",
        json!([{"id": mine.id, "responsible_user_id": gone}]),
    )
    .await;
    assert_eq!(resp.status(), 400);
    assert_eq!(sb.leads(HOST).len(), 2);
    sb.stop().await;
}

#[tokio::test]
async fn tasks_need_text_and_a_deadline_and_are_read_by_lead() {
    let (sb, token) = unlimited().await;
    let lead = sb.create_lead(HOST, "Order", 1, None).unwrap();
    let other = sb.create_lead(HOST, "Other", 1, None).unwrap();
    let manager = add_user_named(&sb, "M");
    let resp = post(&sb, &token, "tasks", json!([
        {"text": "Call the buyer", "complete_till": 1_900_000_000, "entity_id": lead, "entity_type": "leads",
         "responsible_user_id": manager, "task_type_id": 1, "request_id": "t1"},
    ]))
    .await;
    assert_eq!(resp.status(), 200);
    let body = json_of(resp).await;
    assert_eq!(body["_embedded"]["tasks"][0]["request_id"], "t1");
    let id = body["_embedded"]["tasks"][0]["id"].as_u64().unwrap();

    let resp = post(&sb, &token, "tasks", json!([
        {"complete_till": 1_900_000_000, "entity_id": lead, "entity_type": "leads", "request_id": "no-text"},
        {"text": "x", "entity_id": lead, "entity_type": "leads", "request_id": "no-deadline"},
        {"text": "x", "complete_till": 1, "entity_id": 42, "entity_type": "leads", "request_id": "ghost"},
        {"text": "x", "complete_till": 1, "entity_id": lead, "entity_type": "leads", "task_type_id": 99, "request_id": "type"},
    ]))
    .await;
    assert_eq!(resp.status(), 400);
    let body = json_of(resp).await;
    let items = body["validation-errors"].as_array().unwrap();
    let path = |rid: &str| {
        items.iter().find(|i| i["request_id"] == rid).unwrap()["errors"][0]["path"].clone()
    };
    assert_eq!(path("no-text"), "text");
    assert_eq!(path("no-deadline"), "complete_till");
    assert_eq!(path("ghost"), "entity_id");
    assert_eq!(path("type"), "task_type_id");
    let many: Vec<Value> = (0..251)
        .map(|_| json!({"text": "x", "complete_till": 1}))
        .collect();
    assert_eq!(
        post(&sb, &token, "tasks", Value::Array(many))
            .await
            .status(),
        422
    );

    let read = get_json(
        &sb,
        &token,
        &format!("tasks?filter[entity_type]=leads&filter[entity_id][]={lead}"),
    )
    .await;
    let tasks = embedded(&read, "tasks");
    assert_eq!(tasks.len(), 1);
    assert_eq!(
        (
            tasks[0]["id"].as_u64(),
            tasks[0]["responsible_user_id"].as_u64()
        ),
        (Some(id), Some(manager))
    );
    assert_eq!(tasks[0]["text"], "Call the buyer");
    assert_no_content(
        get(
            &sb,
            &token,
            &format!("tasks?filter[entity_type]=leads&filter[entity_id][]={other}"),
        )
        .await,
    )
    .await;
    assert_eq!(sb.tasks(HOST).len(), 1);
    let c = sb.counters(HOST).endpoints;
    assert_eq!((c.tasks_create, c.tasks_read), (3, 2));
    sb.stop().await;
}
