//! Unsorted ("incoming") requests: web forms and `leads/complex` with metadata wait in the incoming stage,
//! their contacts hidden; accept moves the lead on, decline closes it as lost; webhooks follow.

use reqwest::Method;
use serde_json::{Value, json};

use amocrm_sandbox::SandboxHandle;

use crate::common::*;

fn form(request_id: &str, pipeline_id: u64, buyer: &str) -> Value {
    json!({
        "request_id": request_id,
        "source_name": "Marketplace",
        "source_uid": format!("order-{request_id}"),
        "pipeline_id": pipeline_id,
        "created_at": 1_732_260_000,
        "metadata": {
            "form_id": "checkout", "form_name": "Checkout", "form_page": "https://shop.example/checkout",
            "form_sent_at": 1_732_260_000, "ip": "203.0.113.7",
        },
        "_embedded": {
            "leads": [{"name": format!("Order {request_id}"), "price": 150000}],
            "contacts": [{"name": buyer, "custom_fields_values": [
                {"field_code": "PHONE", "values": [{"value": "+998901234567", "enum_code": "WORK"}]}]}],
        },
    })
}

/// `POST leads/unsorted/forms`.
async fn post_forms(sb: &SandboxHandle, token: &str, forms: Value) -> reqwest::Response {
    post(sb, token, "leads/unsorted/forms", forms).await
}

/// `POST leads/unsorted/{uid}/accept`, with a JSON body when one is given.
async fn accept(
    sb: &SandboxHandle,
    token: &str,
    uid: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let req = api(
        sb,
        HOST,
        Method::POST,
        &format!("leads/unsorted/{uid}/accept"),
        token,
    );
    match body {
        Some(b) => req.json(&b),
        None => req,
    }
    .send()
    .await
    .unwrap()
}

/// `GET contacts?query=…`.
async fn search_contacts(sb: &SandboxHandle, token: &str, query: &str) -> reqwest::Response {
    api(sb, HOST, Method::GET, "contacts", token)
        .query(&[("query", query)])
        .send()
        .await
        .unwrap()
}

fn value_of(pairs: &[(String, String)], key: &str) -> Option<String> {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

/// Asserts that the form body carries each `(key, value)`.
fn assert_values(pairs: &[(String, String)], expected: &[(&str, &str)]) {
    for (key, want) in expected {
        assert_eq!(value_of(pairs, key).as_deref(), Some(*want), "{key}");
    }
}

#[tokio::test]
async fn a_form_request_waits_in_the_incoming_stage_until_accepted() {
    let (sb, token, rx) = subscribed(&[
        "add_unsorted",
        "delete_unsorted",
        "status_lead",
        "add_contact",
    ])
    .await;
    let (pid, incoming, first) = main_stages(&sb);
    let resp = post_forms(&sb, &token, json!([form("u1", pid, "Zarina")])).await;
    assert_eq!(resp.status(), 200);
    let body = json_of(resp).await;
    let item = &body["_embedded"]["unsorted"][0];
    let uid = item["uid"].as_str().unwrap().to_owned();
    assert_eq!(item["request_id"], "u1");
    let lead = item["_embedded"]["leads"][0]["id"].as_u64().unwrap();
    let contact = item["_embedded"]["contacts"][0]["id"].as_u64().unwrap();
    let l = sb.lead(HOST, lead).unwrap();
    assert_eq!(
        (l.pipeline_id, l.status_id, l.price),
        (pid, incoming, 150_000)
    );

    let search = search_contacts(&sb, &token, "Zarina").await;
    assert_no_content(search).await;
    assert_eq!(
        get_json(&sb, &token, &format!("contacts/{contact}")).await["is_unsorted"],
        true
    );
    let listed = get_json(&sb, &token, &format!("leads/unsorted?filter[uid]={uid}")).await;
    assert_eq!(
        listed["_embedded"]["unsorted"][0]["metadata"]["form_name"],
        "Checkout"
    );
    assert_eq!(
        listed["_embedded"]["unsorted"][0]["_embedded"]["leads"][0]["id"],
        lead
    );

    let board = page_text(&sb, "/_sandbox/ui").await;
    assert!(
        board.contains(&format!("value=\"{uid}\"")) && board.contains(">Accept<"),
        "the board offers Accept"
    );
    let moved = patch(
        &sb,
        &token,
        "leads",
        json!([{"id": lead, "status_id": first}]),
    )
    .await;
    assert_eq!(
        moved.status(),
        400,
        "a pending request is accepted, not moved"
    );
    assert!(sb.move_lead(HOST, lead, pid, first).is_err());
    let added = form_of(&rx.delivered(&sb).await[0].body);
    assert_values(
        &added,
        &[
            ("unsorted[add][0][uid]", &uid),
            ("unsorted[add][0][category]", "forms"),
            ("unsorted[add][0][lead_id]", &lead.to_string()),
            ("unsorted[add][0][source_data][form_name]", "Checkout"),
        ],
    );
    assert!(
        added.iter().all(|(k, _)| !k.starts_with("contacts[")),
        "add_contact waits for the acceptance"
    );

    let resp = accept(&sb, &token, &uid, Some(json!({}))).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        json_of(resp).await["_embedded"]["leads"][0]["status_id"],
        first
    );
    assert_eq!(
        sb.lead(HOST, lead).unwrap().status_id,
        first,
        "the pipeline's first stage"
    );
    let search = search_contacts(&sb, &token, "Zarina").await;
    assert_eq!(search.status(), 200, "accepted contacts are found");
    assert_no_content(get(&sb, &token, &format!("leads/unsorted?filter[uid]={uid}")).await).await;
    let again = accept(&sb, &token, &uid, None).await;
    assert_eq!(again.status(), 400);
    assert_eq!(accept(&sb, &token, "nope", None).await.status(), 404);

    let got = rx.delivered(&sb).await;
    assert_eq!(got.len(), 2);
    let accepted = form_of(&got[1].body);
    assert_values(
        &accepted,
        &[
            ("unsorted[delete][0][uid]", &uid),
            ("unsorted[delete][0][action]", "accept"),
            (
                "unsorted[delete][0][accept_result][leads][0]",
                &lead.to_string(),
            ),
            ("contacts[add][0][id]", &contact.to_string()),
            ("leads[status][0][id]", &lead.to_string()),
            ("leads[status][0][old_status_id]", &incoming.to_string()),
            ("leads[status][0][status_id]", &first.to_string()),
        ],
    );
    let c = sb.counters(HOST).endpoints;
    assert_eq!(
        (c.unsorted_create, c.unsorted_accept, c.unsorted_read),
        (1, 3, 2)
    );
    sb.stop().await;
}

#[tokio::test]
async fn declining_closes_the_lead_as_lost_and_the_board_and_handle_do_both() {
    let (sb, token) = unlimited().await;
    let (pid, _, first) = main_stages(&sb);
    let second = sb
        .pipelines(HOST)
        .into_iter()
        .find(|p| p.id == pid)
        .unwrap()
        .statuses
        .iter()
        .filter(|s| s.type_ == 0 && s.id != 142 && s.id != 143 && s.id != first)
        .min_by_key(|s| s.sort)
        .unwrap()
        .id;
    let resp = post_forms(
        &sb,
        &token,
        json!([
            form("d1", pid, "A"),
            form("d2", pid, "B"),
            form("d3", pid, "C"),
            form("d4", pid, "D"),
        ]),
    )
    .await;
    let body = json_of(resp).await;
    let uid = |i: usize| {
        body["_embedded"]["unsorted"][i]["uid"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let lead = |i: usize| {
        body["_embedded"]["unsorted"][i]["_embedded"]["leads"][0]["id"]
            .as_u64()
            .unwrap()
    };

    let resp = delete(&sb, &token, &format!("leads/unsorted/{}/decline", uid(0))).await;
    assert_eq!(resp.status(), 200);
    let declined = sb.lead(HOST, lead(0)).unwrap();
    assert_eq!(declined.status_id, 143);
    assert!(declined.closed_at.is_some());
    let state = sb
        .unsorted(HOST)
        .into_iter()
        .find(|u| u.uid == uid(0))
        .unwrap()
        .state;
    assert_eq!(state, amocrm_sandbox::UnsortedState::Declined);

    let resp = accept(&sb, &token, &uid(1), Some(json!({"status_id": 142}))).await;
    assert_eq!(resp.status(), 400, "won is not a stage to accept into");
    let resp = accept(
        &sb,
        &token,
        &uid(1),
        Some(json!({"status_id": second, "user_id": 1})),
    )
    .await;
    assert_eq!(resp.status(), 400, "unknown user");
    sb.accept_unsorted(HOST, &uid(1), Some(second)).unwrap();
    assert_eq!(sb.lead(HOST, lead(1)).unwrap().status_id, second);
    sb.decline_unsorted(HOST, &uid(2)).unwrap();
    assert_eq!(sb.lead(HOST, lead(2)).unwrap().status_id, 143);
    assert!(sb.decline_unsorted(HOST, &uid(2)).is_err());

    let resp = http()
        .post(format!("{}/_sandbox/ui/unsorted", sb.base_url()))
        .form(&[
            ("host", HOST),
            ("uid", uid(3).as_str()),
            ("decision", "accept"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(sb.lead(HOST, lead(3)).unwrap().status_id, first);
    sb.stop().await;
}

#[tokio::test]
async fn form_requests_are_validated_and_need_incoming_leads_turned_on() {
    let (sb, token) = unlimited().await;
    let (pid, _, _) = main_stages(&sb);
    let mut no_source = form("a", pid, "A");
    no_source.as_object_mut().unwrap().remove("source_name");
    no_source.as_object_mut().unwrap().remove("source_uid");
    let mut no_meta = form("b", pid, "B");
    no_meta["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("form_sent_at");
    let mut no_lead = form("c", pid, "C");
    no_lead["_embedded"]
        .as_object_mut()
        .unwrap()
        .remove("leads");
    let mut bad_price = form("d", pid, "D");
    bad_price["_embedded"]["leads"][0]["price"] = json!("150000");
    let mut bad_phone = form("e", pid, "E");
    bad_phone["_embedded"]["contacts"][0]["custom_fields_values"][0]["values"][0]["enum_code"] =
        json!("PAGER");
    let resp = post_forms(
        &sb,
        &token,
        json!([
            form("ok", pid, "OK"),
            no_source,
            no_meta,
            no_lead,
            bad_price,
            bad_phone,
        ]),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let body = json_of(resp).await;
    let items = body["validation-errors"].as_array().unwrap();
    let paths = |rid: &str| -> Vec<String> {
        items.iter().find(|i| i["request_id"] == rid).unwrap()["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["path"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(paths("a"), vec!["source_name", "source_uid"]);
    assert_eq!(paths("b"), vec!["metadata.form_sent_at"]);
    assert_eq!(paths("c"), vec!["_embedded.leads"]);
    assert_eq!(paths("d"), vec!["_embedded.leads.0.price"]);
    assert_eq!(
        paths("e"),
        vec!["_embedded.contacts.0.custom_fields_values.0.values.0.enum_code"]
    );
    assert_eq!(items.len(), 5);
    assert!(sb.leads(HOST).is_empty() && sb.unsorted(HOST).is_empty());

    let created = json_of(post(&sb, &token, "leads/pipelines", json!([
        {"name": "Shop", "is_unsorted_on": false, "_embedded": {"statuses": [{"name": "New", "sort": 10, "color": "#fffeb2"}]}},
    ])).await).await;
    let shop = created["_embedded"]["pipelines"][0]["id"].as_u64().unwrap();
    let resp = post_forms(&sb, &token, json!([form("f", shop, "F")])).await;
    assert_eq!(resp.status(), 400);
    let errs = validation_errors(&json_of(resp).await);
    assert_eq!(errs[0].1, "pipeline_id");
    let resp = patch(
        &sb,
        &token,
        &format!("leads/pipelines/{shop}"),
        json!({"is_unsorted_on": true}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        post_forms(&sb, &token, json!([form("f", shop, "F")]))
            .await
            .status(),
        200
    );
    let many: Vec<Value> = (0..251).map(|i| form(&i.to_string(), pid, "X")).collect();
    assert_eq!(
        post_forms(&sb, &token, Value::Array(many)).await.status(),
        422
    );
    sb.stop().await;
}

#[tokio::test]
async fn complex_with_forms_metadata_files_the_lead_as_unsorted() {
    let (sb, token) = unlimited().await;
    let (pid, incoming, first) = main_stages(&sb);
    let meta = json!({"category": "forms", "form_id": 7, "form_name": "Checkout",
                      "form_page": "https://shop.example/checkout", "form_sent_at": 1_732_260_000});
    let resp = post(&sb, &token, "leads/complex", json!([{
        "name": "Order 9", "pipeline_id": pid, "status_id": first, "request_id": "o9",
        "_embedded": {"metadata": meta, "source": {"external_id": "order-9"}, "contacts": [{"name": "Kamola"}]},
    }]))
    .await;
    assert_eq!(resp.status(), 200);
    let out = json_of(resp).await;
    let lead = out[0]["id"].as_u64().unwrap();
    assert_eq!(
        sb.lead(HOST, lead).unwrap().status_id,
        incoming,
        "the status sent is ignored"
    );
    let entry = sb.unsorted(HOST).pop().unwrap();
    assert_eq!(
        (
            entry.lead_id,
            entry.source_uid.as_str(),
            entry.category.as_str()
        ),
        (lead, "order-9", "forms")
    );
    assert_eq!(
        entry.contact_ids,
        vec![out[0]["contact_id"].as_u64().unwrap()]
    );
    sb.accept_unsorted(HOST, &entry.uid, None).unwrap();
    assert_eq!(sb.lead(HOST, lead).unwrap().status_id, first);

    let mut sip = meta.clone();
    sip["category"] = json!("sip");
    let resp = post(
        &sb,
        &token,
        "leads/complex",
        json!([{
            "name": "Call", "_embedded": {"metadata": sip},
        }]),
    )
    .await;
    assert_eq!(resp.status(), 400);
    assert_eq!(
        validation_errors(&json_of(resp).await)[0].1,
        "_embedded.metadata.category"
    );
    sb.stop().await;
}
