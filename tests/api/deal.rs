//! What an order becomes in the seller's amoCRM (docs/CONTRACT.md §9): the lead with the buyer's existing
//! contact (matched by phone in E.164, then email; never overwritten, only completed), one new contact per new
//! buyer however many orders arrive together, the order note, the products linked with their quantities (each
//! SKU made once), the responsible user and the task — exactly once, through faults.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use amocrm_connector::workers::push;
use amocrm_sandbox::{ContactSeed, Faults};
use serde_json::{Value, json};

use crate::support::{
    Queue, Seller, TestApp, connect_seller, env_vars, linked_items, save_settings, skus_made,
    spawn_app_with,
};

const HOST: &str = "sellerone.amocrm.ru";
const AMOCRM_NOTICES: &str =
    "amoCRM's webhooks about the pushed leads are not processed in this suite";

async fn app_with_products() -> TestApp {
    // A dropped answer is noticed when the request times out.
    // Faults come in runs here: a backoff climbing to five minutes would only make the test wait.
    let app = spawn_app_with(env_vars(&[
        ("AMOCRM_REQUEST_TIMEOUT", "1s"),
        ("PUSH_RETRY_MAX", "2s"),
    ]))
    .await;
    app.leaves_queued(Queue::Inbox, AMOCRM_NOTICES);
    app.sandbox.add_account(HOST);
    app.sandbox
        .enable_products(HOST, None)
        .expect("products on");
    app
}

fn order(seller: &str, number: &str, buyer: &Value, items: &[(&str, i64)]) -> Value {
    let items: Vec<Value> = items
        .iter()
        .map(|(sku, qty)| json!({"product_id": sku, "name": format!("Mahsulot {sku}"), "quantity": qty, "price": 12500}))
        .collect();
    json!({
        "seller_id": seller, "order_number": number, "total_amount": 100000,
        "items": items, "customer": buyer, "comment": "Tezroq yetkazing",
        "url": format!("https://market.example/orders/{number}"),
        "delivery": {"method": "Kuryer", "address": "Toshkent"},
        "payment": {"method": "Click"}, "source": "Bozor"
    })
}

async fn post(app: &TestApp, body: &Value) {
    let r = app.api_post("/api/v1/sales/orders", body).await;
    assert_eq!(r.status().as_u16(), 202, "{:?}", r.text().await);
}

async fn drain(app: &TestApp) -> push::Report {
    let (report, drained) = push::drain(&app.state, 5_000).await.expect("push");
    assert!(
        drained,
        "the push (orders and lead steps) did not drain: {report:?}"
    );
    report
}

/// Pushes while `rounds` rounds of faults (500s, answers lost after the write, a 429, dropped links) are
/// injected, each once the one before is used up, so they land on every kind of call (buyer searches, leads,
/// notes, products, links, tasks) and not only on the first batch, whose orders would otherwise climb the
/// whole backoff ladder. Then drains.
async fn push_through_faults(app: &TestApp, rounds: usize, within: Duration) {
    let round = |f: &mut Faults| {
        f.fail_next = 2;
        f.drop_after_write_next = 2;
        f.force_429_next = 1;
        f.drop_links_percent = 10;
    };
    let mut injected = 0;
    let deadline = Instant::now() + within;
    loop {
        let faults = app.sandbox.faults(HOST);
        let used_up = faults.fail_next == 0
            && faults.drop_after_write_next == 0
            && faults.force_429_next == 0;
        if used_up && injected == rounds {
            break;
        }
        if used_up {
            app.set_faults(HOST, round);
            injected += 1;
        }
        assert!(
            Instant::now() < deadline,
            "round {injected} of faults not used up: {faults:?}"
        );
        let r = push::run_once(&app.state).await.expect("push");
        if !r.did_work() {
            let (orders, moves) = amocrm_connector::services::order_push::backlog(&app.state)
                .await
                .expect("backlog");
            if orders == 0 && moves == 0 {
                break;
            }
            // Everything due rests after a 429 or a backoff: wait for that moment, not longer.
            let rest = push::rest_time(&app.state, Duration::from_secs(5)).await;
            tokio::time::sleep(rest.max(Duration::from_millis(5))).await;
        }
    }
    assert!(injected >= 2, "faults landed after the first leads existed");
    drain(app).await;
}

/// Leads of the seller's account by the order number in their name.
fn leads_by_number(app: &TestApp) -> HashMap<String, amocrm_sandbox::Lead> {
    app.sandbox
        .leads(HOST)
        .into_iter()
        .filter_map(|l| Some((l.name.strip_prefix("Buyurtma #")?.to_owned(), l)))
        .collect()
}

async fn order_view(app: &TestApp, seller: &str, number: &str) -> Value {
    let list = app
        .api_json(&format!(
            "/api/v1/sales/orders?seller_id={seller}&per_page=100"
        ))
        .await;
    list["data"]
        .as_array()
        .and_then(|a| a.iter().find(|o| o["order_number"] == number).cloned())
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn orders_of_old_and_new_buyers_become_complete_deals_with_one_contact_per_buyer() {
    let app = app_with_products().await;
    let old = app
        .sandbox
        .add_contact(
            HOST,
            ContactSeed {
                name: "Karimova Aziza (doimiy mijoz)".into(),
                phones: vec!["+998 (90) 123-45-67".into()],
                ..ContactSeed::default()
            },
        )
        .expect("old contact");
    let seller: Seller = connect_seller(&app, "seller-1", HOST).await;
    let buyers = [
        json!({"name": "Aziza", "phone": "998901234567", "email": "Aziza@Example.uz"}),
        json!({"name": "Bobur", "phone": "90 222 33 44"}),
        json!({"name": "Bobur", "phone": "+998 90 222-33-44"}),
        json!({"name": "Dilnoza", "email": "dilnoza@example.uz"}),
    ];
    for i in 0..12usize {
        let items = [("S1", 1 + (i as i64 % 3)), ("S2", 2)];
        post(
            &app,
            &order("seller-1", &format!("D{i:03}"), &buyers[i % 4], &items),
        )
        .await;
    }
    drain(&app).await;

    let leads = leads_by_number(&app);
    assert_eq!(leads.len(), 12, "one lead per order");
    let contacts = app.sandbox.contacts(HOST);
    assert_eq!(
        contacts.len(),
        3,
        "the old contact and one per new buyer: {contacts:?}"
    );
    let old_now = contacts
        .iter()
        .find(|c| c.id == old)
        .expect("old contact kept");
    assert_eq!(
        old_now.name, "Karimova Aziza (doimiy mijoz)",
        "never overwritten"
    );
    assert_eq!(
        old_now.values_of("EMAIL"),
        vec!["aziza@example.uz".to_owned()],
        "email added"
    );
    assert_eq!(
        old_now.values_of("PHONE"),
        vec!["+998 (90) 123-45-67".to_owned()],
        "phone kept as typed"
    );
    for i in [0usize, 4, 8] {
        let lead = &leads[&format!("D{i:03}")];
        assert_eq!(
            lead.contact_ids,
            vec![old],
            "Aziza's orders attach her contact"
        );
        let v = order_view(&app, "seller-1", &format!("D{i:03}")).await;
        assert_eq!(v["sync"]["contact_matched"], "phone", "{v}");
    }
    let bobur: HashSet<u64> = [1usize, 2, 5, 6, 9, 10]
        .iter()
        .flat_map(|i| leads[&format!("D{i:03}")].contact_ids.clone())
        .collect();
    assert_eq!(
        bobur.len(),
        1,
        "two spellings of Bobur's phone are one buyer"
    );
    assert!(
        leads
            .values()
            .all(|l| l.tags.iter().any(|t| t.name == "Bozor")),
        "source as a tag"
    );

    let notes = app.sandbox.notes(HOST);
    assert_eq!(notes.len(), 12, "one note per lead");
    for (number, lead) in &leads {
        let mine: Vec<_> = notes.iter().filter(|n| n.entity_id == lead.id).collect();
        assert_eq!(mine.len(), 1, "{number}");
        let text = &mine[0].text;
        assert!(text.starts_with(&format!("Buyurtma #{number}")), "{text}");
        assert!(
            text.contains("Mahsulot S1") && text.contains("Mahsulot S2"),
            "{text}"
        );
        assert!(
            text.contains("Tezroq yetkazing") && text.contains("Kuryer"),
            "{text}"
        );
    }
    let elements = app.sandbox.elements(HOST);
    assert_eq!(elements.len(), 2, "each SKU made once: {elements:?}");
    let links = app.sandbox.links(HOST);
    for (i, lead) in (0..12usize).map(|i| (i, &leads[&format!("D{i:03}")])) {
        let mine: Vec<_> = links.iter().filter(|l| l.lead_id == lead.id).collect();
        assert_eq!(mine.len(), 2, "both items linked once");
        let want: HashSet<(u64, i64)> = mine
            .iter()
            .map(|l| (l.to_entity_id, l.quantity.unwrap_or(0.0) as i64))
            .collect();
        assert!(
            want.iter().any(|(_, q)| *q == 1 + (i as i64 % 3)),
            "{want:?}"
        );
    }
    let v = order_view(&app, "seller-1", "D001").await;
    assert_eq!(v["sync"]["products_linked"], 2, "{v}");
    assert!(v["sync"]["note_id"].is_i64(), "{v}");
    let _ = seller;
}

#[tokio::test]
async fn through_500s_lost_answers_and_429s_every_step_happens_once() {
    let app = app_with_products().await;
    connect_seller(&app, "seller-1", HOST).await;
    save_settings(
        &app,
        "seller-1",
        json!({"task": {"enabled": true, "text": "Qo'ng'iroq qiling", "due_in_minutes": 30}}),
    )
    .await;
    for i in 0..60usize {
        let buyer = json!({"name": format!("Xaridor {}", i % 20), "phone": format!("+99890{:07}", 1_000_000 + i % 20)});
        let items = [
            ("A1", 1),
            ("B2", 3),
            (if i % 2 == 0 { "C3" } else { "D4" }, 2),
        ];
        post(
            &app,
            &order("seller-1", &format!("F{i:03}"), &buyer, &items),
        )
        .await;
    }
    push_through_faults(&app, 3, Duration::from_secs(120)).await;

    let leads = leads_by_number(&app);
    assert_eq!(leads.len(), 60, "exactly one lead per order");
    let ids: HashSet<u64> = leads.values().map(|l| l.id).collect();
    assert_eq!(
        app.sandbox.contacts(HOST).len(),
        20,
        "one contact per buyer"
    );
    let notes = app.sandbox.notes(HOST);
    assert_eq!(notes.len(), 60, "one note per lead");
    assert_eq!(
        notes.iter().map(|n| n.entity_id).collect::<HashSet<_>>(),
        ids
    );
    let tasks = app.sandbox.tasks(HOST);
    assert_eq!(tasks.len(), 60, "one task per lead");
    assert_eq!(
        skus_made(&app.sandbox, HOST),
        vec!["A1", "B2", "C3", "D4"],
        "no SKU made twice"
    );
    let links = app.sandbox.links(HOST);
    for lead in leads.values() {
        let n = links.iter().filter(|l| l.lead_id == lead.id).count();
        assert_eq!(n, 3, "every item linked once, dropped links repaired");
    }
}

#[tokio::test]
async fn round_robin_gives_each_chosen_user_a_third_across_three_instances() {
    let app = app_with_products().await;
    let users: Vec<u64> = (0..3)
        .map(|i| {
            app.sandbox
                .add_user(
                    HOST,
                    amocrm_sandbox::NewUser {
                        name: format!("Manager {i}"),
                        email: String::new(),
                        is_admin: false,
                    },
                )
                .expect("user")
                .id
        })
        .collect();
    connect_seller(&app, "seller-1", HOST).await;
    save_settings(
        &app,
        "seller-1",
        json!({"responsible": {"mode": "round_robin", "user_ids": users},
               "items": {"note": false, "products": "off"}, "contacts": {"match": "off"}}),
    )
    .await;
    for i in 0..300usize {
        let buyer = json!({"name": "Xaridor", "phone": format!("+99890{:07}", 2_000_000 + i)});
        post(
            &app,
            &order("seller-1", &format!("R{i:03}"), &buyer, &[("A1", 1)]),
        )
        .await;
    }
    let b = app.spawn_peer().await;
    let c = app.spawn_peer().await;
    let (x, y, z) = tokio::join!(
        push::drain(&app.state, 5_000),
        push::drain(&b.state, 5_000),
        push::drain(&c.state, 5_000)
    );
    for r in [x, y, z] {
        assert!(r.expect("push").1, "drained");
    }
    drain(&app).await;
    let leads = app.sandbox.leads(HOST);
    assert_eq!(leads.len(), 300);
    let mut per_user: HashMap<u64, usize> = HashMap::new();
    for l in &leads {
        *per_user.entry(l.responsible_user_id).or_default() += 1;
    }
    for u in &users {
        assert_eq!(per_user.get(u), Some(&100), "{per_user:?}");
    }
}

#[tokio::test]
async fn an_incoming_order_waits_in_unsorted_and_follows_the_managers_accept() {
    let app = app_with_products().await;
    app.leaves_queued(Queue::Inbox, AMOCRM_NOTICES);
    let seller = connect_seller(&app, "seller-1", HOST).await;
    save_settings(&app, "seller-1", json!({"entry": "incoming"})).await;
    post(
        &app,
        &order(
            "seller-1",
            "U001",
            &json!({"name": "Ali", "phone": "+998901112233"}),
            &[("A1", 1)],
        ),
    )
    .await;
    drain(&app).await;
    let pending = app.sandbox.unsorted(HOST);
    assert_eq!(pending.len(), 1, "filed as Unsorted: {pending:?}");
    let uid = pending[0].uid.clone();
    let paid = seller.stages["paid"];
    app.sandbox
        .accept_unsorted(HOST, &uid, Some(paid))
        .expect("accept");
    let lead = leads_by_number(&app)["U001"].clone();
    assert_eq!(lead.status_id, paid);
    assert_eq!(lead.pipeline_id, seller.pipeline_id);
}

/// The buyer's phone as a marketplace might send it: three spellings of one Uzbek mobile number.
fn spelled(b: usize) -> String {
    let n = 1_000_000 + b;
    let (a, rest) = (n / 10_000, n % 10_000);
    match b % 3 {
        0 => format!("+998 90 {:03}-{:02}-{:02}", a, rest / 100, rest % 100),
        1 => format!("99890{n:07}"),
        _ => format!("90 {:03} {:02} {:02}", a, rest / 100, rest % 100),
    }
}

#[tokio::test]
async fn a_thousand_orders_of_three_hundred_buyers_through_faults_give_a_thousand_complete_deals() {
    let app = app_with_products().await;
    // Sixty buyers are already the seller's contacts, their phones typed yet another way; the first under
    // another name and without an email.
    let mut old = Vec::new();
    for b in 0..60usize {
        let n = 1_000_000 + b;
        let seed = ContactSeed {
            name: if b == 0 {
                "Doimiy mijoz Aziza".into()
            } else {
                format!("Xaridor {b}")
            },
            phones: vec![format!(
                "+998 (90) {:03}-{:02}-{:02}",
                n / 10_000,
                (n % 10_000) / 100,
                n % 100
            )],
            emails: if b == 0 {
                vec![]
            } else {
                vec![format!("xaridor{b}@example.uz")]
            },
            ..ContactSeed::default()
        };
        old.push(app.sandbox.add_contact(HOST, seed).expect("old contact"));
    }
    connect_seller(&app, "seller-1", HOST).await;
    let skus = ["K1", "K2", "K3", "K4", "K5", "K6", "K7"];
    let items_of = |i: usize| -> Vec<(&str, i64)> {
        (0..1 + i % 3)
            .map(|k| (skus[(i + k * 3) % skus.len()], 1 + ((i + k) % 4) as i64))
            .collect()
    };
    for i in 0..1000usize {
        let b = i % 300;
        let mut buyer = json!({"name": format!("Xaridor {b}"), "phone": spelled(b)});
        if b == 0 {
            buyer["name"] = json!("Aziza");
            buyer["email"] = json!("aziza@example.uz");
        }
        post(
            &app,
            &order("seller-1", &format!("T{i:04}"), &buyer, &items_of(i)),
        )
        .await;
    }
    push_through_faults(&app, 6, Duration::from_secs(600)).await;

    let leads = leads_by_number(&app);
    assert_eq!(leads.len(), 1000, "exactly one lead per order");
    let contacts = app.sandbox.contacts(HOST);
    assert_eq!(contacts.len(), 300, "60 old contacts and one per new buyer");
    for i in 0..1000usize {
        let lead = &leads[&format!("T{i:04}")];
        assert_eq!(lead.contact_ids.len(), 1, "T{i:04}: one contact");
        if i % 300 < 60 {
            assert_eq!(
                lead.contact_ids[0],
                old[i % 300],
                "T{i:04}: the buyer's existing contact"
            );
        }
    }
    let first = contacts
        .iter()
        .find(|c| c.id == old[0])
        .expect("old contact kept");
    assert_eq!(first.name, "Doimiy mijoz Aziza", "never renamed");
    assert_eq!(
        first.values_of("EMAIL"),
        vec!["aziza@example.uz".to_owned()],
        "email added"
    );

    let notes = app.sandbox.notes(HOST);
    assert_eq!(notes.len(), 1000, "one note per lead");
    assert_eq!(
        skus_made(&app.sandbox, HOST),
        skus.to_vec(),
        "no SKU made twice"
    );
    let mut linked = linked_items(&app.sandbox, HOST);
    for i in 0..1000usize {
        let lead = &leads[&format!("T{i:04}")];
        let note: Vec<_> = notes.iter().filter(|n| n.entity_id == lead.id).collect();
        assert_eq!(note.len(), 1, "T{i:04}: one note");
        let mut want: Vec<(String, i64)> = items_of(i)
            .into_iter()
            .map(|(s, q)| (s.to_owned(), q))
            .collect();
        for (sku, _) in &want {
            assert!(
                note[0].text.contains(&format!("Mahsulot {sku}")),
                "T{i:04}: the note lists {sku}: {}",
                note[0].text
            );
        }
        let got = linked.remove(&lead.id).unwrap_or_default();
        want.sort();
        assert_eq!(
            got, want,
            "T{i:04}: every item linked once with its quantity"
        );
    }
}

#[tokio::test]
async fn more_new_skus_than_one_turn_can_search_are_all_made_once_and_linked() {
    let app = app_with_products().await;
    connect_seller(&app, "seller-1", HOST).await;
    // A turn has about 14 calls; 40 SKUs nobody made yet need several turns of searches.
    let skus: Vec<String> = (0..40).map(|k| format!("NEW-{k:02}")).collect();
    for (n, chunk) in skus.chunks(20).enumerate() {
        let items: Vec<(&str, i64)> = chunk.iter().map(|s| (s.as_str(), 1)).collect();
        let buyer = json!({"name": "Aziza", "phone": "+998901112233"});
        post(&app, &order("seller-1", &format!("S{n}"), &buyer, &items)).await;
    }
    drain(&app).await;
    assert_eq!(skus_made(&app.sandbox, HOST), skus, "every SKU made once");
    let leads = leads_by_number(&app);
    let links = app.sandbox.links(HOST);
    for n in ["S0", "S1"] {
        let lead = leads[n].id;
        assert_eq!(
            links.iter().filter(|l| l.lead_id == lead).count(),
            20,
            "{n}"
        );
    }
}

/// With two calls per turn (1 request a second), a lookup of an earlier send spends one, which leaves none to
/// search the buyers of the new orders: the turn ends, and the next turns search and push them.
#[tokio::test]
async fn a_turn_with_no_call_left_to_search_buyers_ends_and_the_next_turns_push_the_orders() {
    use amocrm_connector::storage::schema::orders as o;
    use diesel::prelude::*;
    let app = spawn_app_with(env_vars(&[("AMOCRM_RATE_LIMIT_RPS", "1")])).await;
    app.leaves_queued(Queue::Inbox, AMOCRM_NOTICES);
    app.sandbox.add_account(HOST);
    connect_seller(&app, "seller-1", HOST).await;
    let buyer = |i: u32| json!({"name": format!("Xaridor {i}"), "phone": format!("+99890{:07}", 2_000_000 + i)});
    // The contact index fill (one page) is finished first, so no scan call ends the turn by itself.
    let buyers = app.state.db.buyers();
    buyers.start_scan("seller-1").await.expect("scan row");
    let deadline = Instant::now() + Duration::from_secs(30);
    while buyers
        .scan_of("seller-1")
        .await
        .expect("scan row")
        .is_some_and(|s| s.finished_at.is_none())
    {
        assert!(Instant::now() < deadline, "the index fill did not finish");
        push::run_once(&app.state).await.expect("push");
    }
    post(&app, &order("seller-1", "L0", &buyer(0), &[("A1", 1)])).await;
    drain(&app).await;
    post(&app, &order("seller-1", "L1", &buyer(1), &[("A1", 1)])).await;
    post(&app, &order("seller-1", "L2", &buyer(2), &[("A1", 1)])).await;
    // L1's earlier send had no known answer: its lead is looked up before anything is sent.
    app.update(
        o::table.filter(o::order_number.eq("L1")),
        (o::needs_lookup.eq(true), o::sync_attempts.eq(1)),
    )
    .await;
    let drained = tokio::time::timeout(Duration::from_secs(60), drain(&app)).await;
    assert!(drained.is_ok(), "the push went round without calling");
    let leads = leads_by_number(&app);
    assert_eq!(leads.len(), 3, "{:?}", leads.keys());
    assert_eq!(app.sandbox.contacts(HOST).len(), 3, "one contact per buyer");
}
