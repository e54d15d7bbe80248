//! Contacts: search over every field (phones by digits too), 204 when nothing matches, paging, reads with
//! leads, PATCH replacing a field's whole value list, attaching by id in `leads/complex`, contact webhooks.

use amocrm_sandbox::{ContactChange, ContactSeed};
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::*;

fn seed(name: &str, phone: &str, email: &str) -> ContactSeed {
    ContactSeed {
        name: name.to_owned(),
        phones: vec![phone.to_owned()],
        emails: vec![email.to_owned()],
        ..ContactSeed::default()
    }
}

async fn search(sb: &amocrm_sandbox::SandboxHandle, token: &str, q: &str) -> Vec<u64> {
    let resp = api(sb, HOST, Method::GET, "contacts", token)
        .query(&[("query", q), ("limit", "50")])
        .send()
        .await
        .unwrap();
    if resp.status() == 204 {
        assert!(resp.bytes().await.unwrap().is_empty());
        return Vec::new();
    }
    assert_eq!(resp.status(), 200);
    embedded(&json_of(resp).await, "contacts")
        .iter()
        .map(|c| c["id"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn contacts_are_found_by_any_field_and_by_phone_digits_with_204_when_none_match() {
    let (sb, token) = unlimited().await;
    let ali = sb
        .add_contact(
            HOST,
            seed("Ali Valiyev", "+998 (90) 123-45-67", "Ali@Example.uz"),
        )
        .unwrap();
    let bobur = sb
        .add_contact(HOST, seed("Bobur", "998911112233", "bobur@mail.uz"))
        .unwrap();
    assert_eq!(
        search(&sb, &token, "valiyev").await,
        vec![ali],
        "name, case-insensitive"
    );
    assert_eq!(search(&sb, &token, "example.UZ").await, vec![ali], "e-mail");
    assert_eq!(
        search(&sb, &token, "901234567").await,
        vec![ali],
        "phone by its digits"
    );
    assert_eq!(search(&sb, &token, "91111").await, vec![bobur]);
    assert_eq!(search(&sb, &token, ".uz").await, vec![ali, bobur]);
    assert!(
        search(&sb, &token, "nobody").await.is_empty(),
        "204, no body"
    );
    let resp = get(&sb, &token, "contacts?query=ali&limit=251").await;
    assert_eq!(resp.status(), 422);
    assert_eq!(json_of(resp).await["detail"], "Limit 250 per page");

    for i in 0..5 {
        sb.add_contact(
            HOST,
            seed(&format!("Buyer {i}"), &format!("99890000000{i}"), ""),
        )
        .unwrap();
    }
    let first = get_json(&sb, &token, "contacts?page=1&limit=3").await;
    assert_eq!(embedded(&first, "contacts").len(), 3);
    assert!(
        first["_links"]["next"]["href"]
            .as_str()
            .unwrap()
            .contains("page=2")
    );
    let last = get_json(&sb, &token, "contacts?page=3&limit=3").await;
    assert_eq!(embedded(&last, "contacts").len(), 1);
    assert!(last["_links"].get("next").is_none());
    assert_no_content(get(&sb, &token, "contacts?page=4&limit=3").await).await;
    assert_eq!(sb.counters(HOST).endpoints.contacts_search, 7);
    assert_eq!(sb.counters(HOST).endpoints.contacts_read, 3);
    sb.stop().await;
}

#[tokio::test]
async fn a_contact_reads_back_with_its_leads_and_can_be_attached_by_id() {
    let (sb, token) = unlimited().await;
    let (pid, _, stage) = main_stages(&sb);
    let ali = sb
        .add_contact(HOST, seed("Ali", "+998901234567", "ali@example.uz"))
        .unwrap();
    let made = json_of(post(&sb, &token, "leads/complex", json!([
        {"name": "Order 1", "pipeline_id": pid, "status_id": stage, "_embedded": {"contacts": [{"id": ali}], "companies": [{"name": "Ali LLC"}]}},
    ])).await).await;
    let lead = made[0]["id"].as_u64().unwrap();
    assert_eq!(made[0]["contact_id"], ali);
    let company = made[0]["company_id"].as_u64().unwrap();
    let again = json_of(post(&sb, &token, "leads/complex", json!([
        {"name": "Order 2", "_embedded": {"contacts": [{"id": ali}], "companies": [{"id": company}]}},
    ])).await).await;
    assert_eq!(
        (
            again[0]["contact_id"].as_u64(),
            again[0]["company_id"].as_u64()
        ),
        (Some(ali), Some(company))
    );
    assert_eq!(sb.contacts(HOST).len(), 1, "attaching creates no contact");
    assert_eq!(sb.companies(HOST).len(), 1);

    let c = get_json(&sb, &token, &format!("contacts/{ali}?with=leads")).await;
    let leads: Vec<u64> = embedded(&c, "leads")
        .iter()
        .map(|l| l["id"].as_u64().unwrap())
        .collect();
    assert_eq!(leads, vec![lead, again[0]["id"].as_u64().unwrap()]);
    assert_eq!(c["custom_fields_values"][0]["field_code"], "PHONE");
    assert_no_content(get(&sb, &token, "contacts/1").await).await;

    let resp = post(
        &sb,
        &token,
        "leads/complex",
        json!([
            {"name": "Order 3", "request_id": "o3", "_embedded": {"contacts": [{"id": 123}]}},
            {"name": "Order 4", "request_id": "o4", "_embedded": {"companies": [{"id": 456}]}},
        ]),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let body = json_of(resp).await;
    let errs = validation_errors(&body);
    assert!(
        errs.iter()
            .any(|e| e.1 == "_embedded.contacts.0.id" && e.2.contains("123")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.1 == "_embedded.companies.0.id" && e.2.contains("456")),
        "{errs:?}"
    );
    assert_eq!(sb.leads(HOST).len(), 2);

    let company_search = get_json(&sb, &token, "companies?query=ali%20llc").await;
    assert_eq!(company_search["_embedded"]["companies"][0]["id"], company);
    assert_no_content(get(&sb, &token, "companies?query=nothing").await).await;
    assert_eq!(
        get_json(&sb, &token, &format!("companies/{company}")).await["name"],
        "Ali LLC"
    );
    sb.stop().await;
}

#[tokio::test]
async fn a_patch_replaces_the_whole_value_list_of_each_field_it_names() {
    let (sb, token) = unlimited().await;
    let ali = sb
        .add_contact(HOST, seed("Ali", "+998901234567", "ali@example.uz"))
        .unwrap();
    let phones = |sb: &amocrm_sandbox::SandboxHandle| {
        sb.contacts(HOST)
            .into_iter()
            .find(|c| c.id == ali)
            .unwrap()
            .values_of("PHONE")
    };
    let resp = patch(&sb, &token, "contacts", json!([
        {"id": ali, "custom_fields_values": [{"field_code": "PHONE", "values": [{"value": "+998935554433", "enum_code": "MOB"}]}]},
    ]))
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(json_of(resp).await["_embedded"]["contacts"][0]["id"], ali);
    assert_eq!(
        phones(&sb),
        vec!["+998935554433".to_owned()],
        "the old phone is gone"
    );
    let contact = sb.contacts(HOST).into_iter().find(|c| c.id == ali).unwrap();
    assert_eq!(
        contact.values_of("EMAIL"),
        vec!["ali@example.uz".to_owned()],
        "fields not named stay"
    );

    let resp = patch(&sb, &token, "contacts", json!([
        {"id": ali, "custom_fields_values": [{"field_code": "PHONE", "values": [
            {"value": "+998935554433", "enum_code": "MOB"}, {"value": "+998901234567", "enum_code": "WORK"}]}]},
    ]))
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        phones(&sb),
        vec!["+998935554433".to_owned(), "+998901234567".to_owned()]
    );
    let renamed = patch(
        &sb,
        &token,
        &format!("contacts/{ali}"),
        json!({"name": "Ali V."}),
    )
    .await;
    assert_eq!(json_of(renamed).await["name"], "Ali V.");
    assert_eq!(phones(&sb).len(), 2, "a name-only patch keeps the phones");

    let resp = patch(&sb, &token, "contacts", json!([{"id": 1, "name": "x"}])).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(validation_errors(&json_of(resp).await)[0].1, "id");
    let resp = patch(&sb, &token, "contacts", json!([
        {"id": ali, "custom_fields_values": [{"field_code": "PHONE", "values": [{"value": "1", "enum_code": "PAGER"}]}]},
    ]))
    .await;
    assert_eq!(resp.status(), 400);
    let many: Vec<Value> = (0..251).map(|_| json!({"id": ali, "name": "x"})).collect();
    assert_eq!(
        patch(&sb, &token, "contacts", Value::Array(many))
            .await
            .status(),
        422
    );
    let created = json_of(post(&sb, &token, "contacts", json!([
        {"first_name": "Vali", "last_name": "Aliyev", "request_id": "c1",
         "custom_fields_values": [{"field_code": "EMAIL", "values": [{"value": "vali@example.uz", "enum_code": "WORK"}]}]},
    ])).await).await;
    assert_eq!(created["_embedded"]["contacts"][0]["request_id"], "c1");
    let vali = sb
        .contacts(HOST)
        .into_iter()
        .find(|c| c.first_name == "Vali")
        .unwrap();
    assert_eq!(vali.name, "Vali Aliyev");
    let c = sb.counters(HOST).endpoints;
    assert_eq!((c.contacts_patch, c.contacts_create), (6, 1));
    sb.stop().await;
}

/// Keys of a form body with indices and ids normalised, first occurrences only.
fn shapes(body: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (k, _) in form_of(body) {
        let shape = k
            .split('[')
            .map(|part| {
                let inner = part.trim_end_matches(']');
                if part.ends_with(']')
                    && !inner.is_empty()
                    && inner.chars().all(|c| c.is_ascii_digit())
                {
                    "N]".to_owned()
                } else {
                    part.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("[");
        if !out.contains(&shape) {
            out.push(shape);
        }
    }
    out
}

fn assert_carries(ours: &str, real: &str, skip: &[&str]) {
    let ours = shapes(ours);
    let mut last = 0;
    for key in shapes(real)
        .iter()
        .filter(|k| !skip.iter().any(|s| k.contains(s)))
    {
        let pos = ours
            .iter()
            .position(|k| k == key)
            .unwrap_or_else(|| panic!("{key} missing from {ours:?}"));
        assert!(pos >= last, "{key} out of order in {ours:?}");
        last = pos;
    }
}

#[tokio::test]
async fn contact_webhooks_carry_phones_and_emails_like_real_captures() {
    let (sb, token, rx) = subscribed(&["add_contact", "update_contact", "delete_contact"]).await;
    let (pid, _, stage) = main_stages(&sb);
    let made = json_of(post(&sb, &token, "leads/complex", json!([{
        "name": "Order", "pipeline_id": pid, "status_id": stage,
        "_embedded": {
            "contacts": [{"name": "Ali", "custom_fields_values": [
                {"field_code": "PHONE", "values": [{"value": "+998901234567", "enum_code": "WORK"}]},
                {"field_code": "EMAIL", "values": [{"value": "ali@example.uz", "enum_code": "WORK"}]}]}],
            "companies": [{"name": "Ali LLC"}],
        },
    }])).await).await;
    let ali = made[0]["contact_id"].as_u64().unwrap();
    let added = rx.delivered(&sb).await;
    assert_eq!(added.len(), 1);
    assert_carries(
        &added[0].body,
        include_str!("../fixtures/webhook-add-contact-1.txt"),
        &[],
    );
    let hook = parse_hook(&added[0].body);
    let contacts = hook.contacts.unwrap();
    let party = contacts["add"]
        .iter()
        .find(|c| c.kind.as_deref() == Some("contact"))
        .unwrap();
    assert_eq!(
        (party.id.as_str(), party.name.as_deref()),
        (ali.to_string().as_str(), Some("Ali"))
    );
    assert_eq!(party.values_of("PHONE"), vec!["+998901234567".to_owned()]);
    assert_eq!(party.values_of("EMAIL"), vec!["ali@example.uz".to_owned()]);
    assert_eq!(
        party.linked_company_id.as_deref(),
        made[0]["company_id"]
            .as_u64()
            .map(|c| c.to_string())
            .as_deref()
    );
    let lead = made[0]["id"].as_u64().unwrap().to_string();
    assert!(party.linked_leads_id.as_ref().unwrap().contains_key(&lead));

    let resp = patch(&sb, &token, "contacts", json!([
        {"id": ali, "custom_fields_values": [{"field_code": "PHONE", "values": [
            {"value": "+998901234567", "enum_code": "WORK"}, {"value": "+998935554433", "enum_code": "MOB"}]}]},
    ]))
    .await;
    assert_eq!(resp.status(), 200);
    let got = rx.delivered(&sb).await;
    assert_eq!(got.len(), 2);
    // Real contacts also carry tags; these have none.
    assert_carries(
        &got[1].body,
        include_str!("../fixtures/webhook-update-contact-2.txt"),
        &["[tags]"],
    );
    let updated = parse_hook(&got[1].body).contacts.unwrap();
    assert_eq!(updated["update"][0].values_of("PHONE").len(), 2);

    let seeded = sb
        .add_contact(HOST, seed("Bobur", "+998911112233", "b@mail.uz"))
        .unwrap();
    // The same change twice: the second changes nothing.
    for _ in 0..2 {
        sb.update_contact(
            HOST,
            seeded,
            ContactChange {
                emails: Some(vec![]),
                ..ContactChange::default()
            },
        )
        .unwrap();
    }
    sb.delete_contact(HOST, seeded).unwrap();
    let got = rx.delivered(&sb).await;
    assert_eq!(
        got.len(),
        5,
        "add, one update (the second changed nothing), delete"
    );
    assert!(
        parse_hook(&got[3].body).contacts.unwrap()["update"][0]
            .values_of("EMAIL")
            .is_empty()
    );
    let deleted = form_of(&got[4].body);
    assert_eq!(
        deleted[0],
        ("contacts[delete][0][id]".to_owned(), seeded.to_string())
    );
    assert_eq!(
        deleted[1],
        ("contacts[delete][0][type]".to_owned(), "contact".to_owned())
    );
    sb.stop().await;
}
