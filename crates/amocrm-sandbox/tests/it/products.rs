//! Lists and products: the products list exists only when turned on, elements are searched and created in
//! batches of 250, links carry quantities (relinking updates them), and a fault loses links silently.

use amocrm_sandbox::Faults;
use serde_json::{Value, json};

use crate::common::*;

fn product(i: usize) -> Value {
    json!({
        "name": format!("Tea #{i}"),
        "request_id": format!("p{i}"),
        "custom_fields_values": [
            {"field_code": "SKU", "values": [{"value": format!("SKU-{i:03}")}]},
            {"field_code": "PRICE", "values": [{"value": 15000 + i}]},
            {"field_code": "DESCRIPTION", "values": [{"value": "Green tea, 100 g"}]},
        ],
    })
}

/// A `POST leads/link` item: `quantity` of product `element` (of `catalog`) in `lead`.
fn product_link(lead: u64, element: u64, catalog: u64, quantity: Value) -> Value {
    json!({"entity_id": lead, "to_entity_id": element, "to_entity_type": "catalog_elements",
           "metadata": {"catalog_id": catalog, "quantity": quantity}})
}

/// Turns products on and creates `n` products; returns (catalog id, element ids).
async fn products(sb: &amocrm_sandbox::SandboxHandle, token: &str, n: usize) -> (u64, Vec<u64>) {
    let catalog = sb.enable_products(HOST, None).unwrap().id;
    let list: Vec<Value> = (0..n).map(product).collect();
    let resp = post(
        sb,
        token,
        &format!("catalogs/{catalog}/elements"),
        Value::Array(list),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let body = json_of(resp).await;
    let ids = embedded(&body, "elements")
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    (catalog, ids)
}

#[tokio::test]
async fn the_products_list_exists_once_turned_on_and_is_told_apart_by_type() {
    let (sb, token) = unlimited().await;
    assert_no_content(get(&sb, &token, "catalogs").await).await;
    sb.add_catalog(HOST, "Прайс-лист", "regular").unwrap();
    let products = sb.enable_products(HOST, None).unwrap();
    assert_eq!(
        sb.enable_products(HOST, Some("Other")).unwrap().id,
        products.id,
        "at most one"
    );
    let list = get_json(&sb, &token, "catalogs").await;
    let catalogs = embedded(&list, "catalogs");
    assert_eq!(catalogs.len(), 2);
    assert_eq!(
        catalogs[0]["type"], "regular",
        "the products list is not necessarily first"
    );
    let found = catalogs.iter().find(|c| c["type"] == "products").unwrap();
    assert_eq!(
        (found["id"].as_u64(), found["name"].as_str()),
        (Some(products.id), Some("Товары"))
    );

    let too_many: Vec<Value> = (0..251).map(product).collect();
    let path = format!("catalogs/{}/elements", products.id);
    assert_eq!(
        post(&sb, &token, &path, Value::Array(too_many))
            .await
            .status(),
        422
    );
    let resp = post(&sb, &token, &path, json!([product(1), product(2)])).await;
    let body = json_of(resp).await;
    let made = embedded(&body, "elements");
    assert_eq!(
        (made[0]["name"].as_str(), made[0]["request_id"].as_str()),
        (Some("Tea #1"), Some("p1"))
    );
    let hit = get_json(&sb, &token, &format!("{path}?query=sku-002&limit=50")).await;
    let hits = embedded(&hit, "elements");
    assert_eq!(hits.len(), 1);
    let sku = field_by_code(&hits[0], "SKU");
    assert_eq!(sku["values"][0]["value"], "SKU-002");
    assert_eq!(
        embedded(
            &get_json(&sb, &token, &format!("{path}?query=tea")).await,
            "elements"
        )
        .len(),
        2
    );
    assert_no_content(get(&sb, &token, &format!("{path}?query=coffee")).await).await;
    assert_eq!(get(&sb, &token, "catalogs/1/elements").await.status(), 404);

    let resp = post(&sb, &token, &path, json!([
        {"name": "", "request_id": "nameless"},
        {"name": "Cup", "custom_fields_values": [{"field_code": "COLOR", "values": [{"value": "red"}]}]},
        {"name": "Pot", "custom_fields_values": [{"field_code": "PRICE", "values": [{"value": "cheap"}]}]},
    ]))
    .await;
    assert_eq!(resp.status(), 400);
    let body = json_of(resp).await;
    let errs = validation_errors(&body);
    assert!(errs.iter().any(|e| e.1 == "name"));
    assert!(
        errs.iter()
            .any(|e| e.1 == "custom_fields_values.0.field_code")
    );
    assert!(
        errs.iter()
            .any(|e| e.1 == "custom_fields_values.0.values.0.value")
    );
    assert_eq!(sb.elements(HOST).len(), 2);
    let c = sb.counters(HOST).endpoints;
    assert_eq!(
        (c.catalogs, c.elements_create, c.elements_search),
        (2, 3, 4)
    );
    sb.stop().await;
}

#[tokio::test]
async fn links_carry_quantities_and_linking_again_updates_the_quantity() {
    let (sb, token) = unlimited().await;
    let (catalog, els) = products(&sb, &token, 2).await;
    let lead = sb.create_lead(HOST, "Order", 30_000, None).unwrap();
    let link = |el: u64, qty: Value| product_link(lead, el, catalog, qty);
    let resp = post(
        &sb,
        &token,
        "leads/link",
        json!([link(els[0], json!(2)), link(els[1], json!(1.5))]),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let body = json_of(resp).await;
    let links = embedded(&body, "links");
    assert_eq!(links.len(), 2);
    assert_eq!(
        links[0]["metadata"],
        json!({"quantity": 2, "catalog_id": catalog})
    );
    assert_eq!(links[0]["to_entity_type"], "catalog_elements");

    let again = post(&sb, &token, "leads/link", json!([link(els[0], json!(5))])).await;
    assert_eq!(again.status(), 200);
    let stored = sb.links(HOST);
    assert_eq!(stored.len(), 2, "linking again does not add a second link");
    assert_eq!(
        stored
            .iter()
            .find(|l| l.to_entity_id == els[0])
            .unwrap()
            .quantity,
        Some(5.0)
    );

    let read = get_json(
        &sb,
        &token,
        &format!("leads/{lead}/links?filter[to_entity_type]=catalog_elements"),
    )
    .await;
    let read = embedded(&read, "links");
    assert_eq!(read.len(), 2);
    assert_eq!(read[0]["metadata"]["quantity"], 5);
    assert_eq!(read[1]["metadata"]["quantity"], 1.5);
    let with = get_json(
        &sb,
        &token,
        &format!("leads?filter[id][]={lead}&with=catalog_elements"),
    )
    .await;
    let linked = &embedded(&with, "leads")[0]["_embedded"]["catalog_elements"];
    assert_eq!(
        linked[0],
        json!({"id": els[0], "metadata": {"quantity": 5, "catalog_id": catalog}})
    );
    let one = get_json(&sb, &token, &format!("leads/{lead}?with=catalog_elements")).await;
    assert_eq!(embedded(&one, "catalog_elements").len(), 2);
    let plain = get_json(&sb, &token, &format!("leads/{lead}")).await;
    assert!(
        plain["_embedded"].get("catalog_elements").is_none(),
        "only when asked"
    );

    let mut by_user = link(els[0], json!(1));
    by_user["metadata"]["updated_by"] = json!(0);
    let resp = post(&sb, &token, "leads/link", json!([by_user])).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(
        validation_errors(&json_of(resp).await)[0].1,
        "metadata.updated_by"
    );
    let resp = post(&sb, &token, "leads/link", json!([
        link(999, json!(1)),
        {"entity_id": 1, "to_entity_id": els[0], "to_entity_type": "catalog_elements", "metadata": {"catalog_id": catalog}},
        link(els[1], json!(0)),
    ]))
    .await;
    assert_eq!(resp.status(), 400);
    let paths: Vec<String> = validation_errors(&json_of(resp).await)
        .into_iter()
        .map(|e| e.1)
        .collect();
    assert_eq!(
        paths,
        vec!["to_entity_id", "entity_id", "metadata.quantity"]
    );
    assert_eq!(
        sb.links(HOST)
            .iter()
            .find(|l| l.to_entity_id == els[0])
            .unwrap()
            .quantity,
        Some(5.0),
        "nothing applied"
    );

    let resp = post(&sb, &token, "leads/unlink", json!([link(els[1], json!(1))])).await;
    assert_eq!(resp.status(), 204);
    assert_eq!(sb.links(HOST).len(), 1);
    let c = sb.counters(HOST).endpoints;
    assert_eq!((c.links_create, c.links_read), (5, 1));
    sb.stop().await;
}

#[tokio::test]
async fn the_lost_links_fault_drops_links_while_the_answer_lists_them_all() {
    let (sb, token) = unlimited().await;
    let (catalog, els) = products(&sb, &token, 100).await;
    let lead = sb.create_lead(HOST, "Big order", 1, None).unwrap();
    let batch: Vec<Value> = els
        .iter()
        .map(|e| product_link(lead, *e, catalog, json!(1)))
        .collect();
    sb.set_faults(HOST, faults(|f| f.drop_links_percent = 9));
    let resp = post(&sb, &token, "leads/link", Value::Array(batch.clone())).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        embedded(&json_of(resp).await, "links").len(),
        100,
        "the answer claims all"
    );
    assert_eq!(sb.links(HOST).len(), 91, "100 sent, 91 linked");
    assert_eq!(sb.counters(HOST).links_dropped, 9);
    let read = get_json(&sb, &token, &format!("leads/{lead}/links")).await;
    assert_eq!(
        embedded(&read, "links").len(),
        91,
        "reading back shows the loss"
    );

    sb.set_faults(HOST, Faults::default());
    let resp = post(&sb, &token, "leads/link", Value::Array(batch)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        sb.links(HOST).len(),
        100,
        "sending the batch again repairs it"
    );

    let other = sb.create_lead(HOST, "Small order", 1, None).unwrap();
    let small: Vec<Value> = els[..3]
        .iter()
        .map(|e| product_link(other, *e, catalog, json!(2)))
        .collect();
    sb.set_faults(HOST, faults(|f| f.drop_links_next = 2));
    let resp = post(&sb, &token, "leads/link", Value::Array(small)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(sb.faults(HOST).drop_links_next, 0, "the count is spent");
    assert_eq!(
        sb.links(HOST).iter().filter(|l| l.lead_id == other).count(),
        1
    );
    sb.stop().await;
}

#[tokio::test]
async fn contacts_can_be_linked_to_leads_too() {
    let (sb, token) = unlimited().await;
    let lead = sb.create_lead(HOST, "Order", 1, None).unwrap();
    let c = sb
        .add_contact(
            HOST,
            amocrm_sandbox::ContactSeed {
                name: "Ali".into(),
                ..Default::default()
            },
        )
        .unwrap();
    let resp = post(&sb, &token, "leads/link", json!([
        {"entity_id": lead, "to_entity_id": c, "to_entity_type": "contacts", "metadata": {"main_contact": true}},
    ]))
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(sb.lead(HOST, lead).unwrap().contact_ids, vec![c]);
    let read = get_json(&sb, &token, &format!("leads/{lead}/links")).await;
    assert_eq!(read["_embedded"]["links"][0]["to_entity_type"], "contacts");
    let resp = post(
        &sb,
        &token,
        "leads/link",
        json!([
            {"entity_id": lead, "to_entity_id": 1, "to_entity_type": "customers"},
        ]),
    )
    .await;
    assert_eq!(resp.status(), 400);
    sb.stop().await;
}
