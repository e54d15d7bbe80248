//! Crash tests: the real `amocrm-connector serve` binary is killed with SIGKILL at random moments while it
//! refreshes tokens, pushes orders and processes webhooks, then restarted; in the end nothing is lost or
//! doubled. `CRASH_SEED=<n>` replays a run; `CRASH_ROUNDS=<n>` makes it longer; `CRASH_KEEP=1` keeps the logs.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    dead_code,
    reason = "tests fail loudly on unexpected errors"
)]

#[path = "../support/mod.rs"]
mod support;

mod harness;

use amocrm_connector::domain::status::ConnectionStatus;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use harness::{REFRESH_SECRET, Service, World};
use support::{count_sql, linked_items, skus_made, wait_until};

/// The seed of this run (printed so a failure can be replayed).
fn rng() -> StdRng {
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    println!("CRASH_SEED={seed}");
    StdRng::seed_from_u64(seed)
}

fn rounds(default: usize) -> usize {
    std::env::var("CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn seller(i: usize) -> (String, String) {
    (format!("crash-seller-{i}"), format!("crash{i}.amocrm.ru"))
}

/// A seller's amoCRM side, as the load needs it.
#[derive(Debug, Clone)]
struct Side {
    seller: String,
    host: String,
    pipeline: u64,
    pending: u64,
    paid: u64,
    shipping: u64,
    number_field: u64,
}

async fn sides(world: &World) -> Vec<Side> {
    world
        .connections()
        .await
        .into_iter()
        .map(|c| Side {
            seller: c.seller_id,
            host: c.host,
            pipeline: c.pipeline_id.unwrap() as u64,
            pending: c.stage_pending.unwrap() as u64,
            paid: c.stage_paid.unwrap() as u64,
            shipping: c.stage_shipping.unwrap() as u64,
            number_field: c.field_order_number_id.unwrap() as u64,
        })
        .collect()
}

/// What the load did that must be visible in the end.
#[derive(Default)]
struct Expected {
    /// Leads (host, id) a manager moved to paid or a later stage: one `payment.completed` each.
    paid: HashSet<u64>,
    /// Every lead the managers made.
    leads: HashSet<u64>,
    /// The stages each lead was moved to, in order.
    moves: HashMap<u64, Vec<u64>>,
    /// Orders the marketplace sent: number → seller. Every one must end as exactly one lead.
    orders: HashMap<String, String>,
    /// Order bodies whose answer was lost to a crash: the marketplace posts them again (idempotent).
    unconfirmed: Vec<Value>,
}

/// A manager moves `lead` of `side` to stage `to` in amoCRM; a move amoCRM took is expected, and a payment
/// with it for every stage but lost (143).
fn move_lead(world: &World, side: &Side, lead: u64, to: u64, expected: &Mutex<Expected>) {
    if world
        .sandbox
        .move_lead(&side.host, lead, side.pipeline, to)
        .is_ok()
    {
        let mut e = expected.lock().unwrap();
        e.moves.entry(lead).or_default().push(to);
        if to != 143 {
            e.paid.insert(lead);
        }
    }
}

/// Buyers per seller in the load: their orders share one contact each.
const BUYERS: usize = 4;

/// A number's buyer and first item, fixed by the number so a re-posted order is the same order.
fn pick(number: &str) -> (usize, usize) {
    let n: usize = number.bytes().map(usize::from).sum();
    (n % BUYERS, n % 3)
}

/// The marketplace's order of the load: the suites' order without company and tags, from one of
/// [`BUYERS`] buyers, with two items (one of three SKUs, and a SKU every order has).
fn order_body(seller: &str, number: &str) -> Value {
    let mut body = support::order_body(seller, number);
    body["customer"].as_object_mut().unwrap().remove("company");
    body.as_object_mut().unwrap().remove("tags");
    let (buyer, sku) = pick(number);
    body["customer"]["name"] = json!(format!("Xaridor {buyer}"));
    body["customer"]["phone"] = json!(format!("+99890{:07}", 2_000_000 + buyer));
    body["customer"]["email"] = json!(format!("xaridor{buyer}@example.uz"));
    body["items"] = json!([
        {"product_id": format!("sku-{sku}"), "name": format!("Mahsulot {sku}"), "quantity": 1 + sku, "price": 50000},
        {"product_id": "sku-common", "name": "Qadoq", "quantity": 1, "price": 25000},
    ]);
    body["total_amount"] = json!(50000 * (1 + sku) + 25000);
    body
}

/// Posts an order through the balancer; false when the answer was lost (the service died meanwhile).
async fn post_order(world: &World, body: &Value) -> bool {
    match world.api("POST", "/api/v1/sales/orders", Some(body)).await {
        Some((200 | 202, _)) => true,
        Some((502..=504, _)) | None => false,
        Some((status, answer)) => panic!("order {body} refused: {status} {answer}"),
    }
}

/// The marketplace's retries of orders whose answer it never got.
async fn repost_unconfirmed(world: &World, expected: &Mutex<Expected>) -> usize {
    let pending = std::mem::take(&mut expected.lock().unwrap().unconfirmed);
    let mut still = Vec::new();
    for body in pending {
        if !post_order(world, &body).await {
            still.push(body);
        }
    }
    let n = still.len();
    expected.lock().unwrap().unconfirmed.extend(still);
    n
}

/// Background load against the running instances; aborted when they are killed.
struct Load(Vec<JoinHandle<()>>);

impl Load {
    fn start(
        world: &Arc<World>,
        sides: &[Side],
        expected: &Arc<Mutex<Expected>>,
        seed: u64,
    ) -> Self {
        let mut tasks = Vec::new();
        // Refresh from every side: the cron URL, the API, and the schedule of each instance.
        let (http, base, key) = (
            world.http.clone(),
            world.balancer.url(),
            world.api_key.clone(),
        );
        let sellers: Vec<String> = sides.iter().map(|s| s.seller.clone()).collect();
        tasks.push(tokio::spawn(async move {
            for n in 0usize.. {
                let _ = http
                    .get(format!("{base}/refresh?secret_key={REFRESH_SECRET}"))
                    .send()
                    .await;
                let s = &sellers[n % sellers.len()];
                let _ = http
                    .post(format!("{base}/api/v1/connections/{s}/refresh"))
                    .bearer_auth(&key)
                    .send()
                    .await;
            }
        }));
        // The marketplace sends orders; an answer lost to a crash is posted again later.
        let (w, sides_o, exp) = (world.clone(), sides.to_vec(), expected.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
            loop {
                let side = &sides_o[rng.random_range(0..sides_o.len())];
                let number = format!("o{seed:x}-{}", rng.random::<u32>());
                let body = order_body(&side.seller, &number);
                exp.lock()
                    .unwrap()
                    .orders
                    .insert(number.clone(), side.seller.clone());
                // Recorded as unconfirmed first: an abort mid-request leaves it to be posted again.
                exp.lock().unwrap().unconfirmed.push(body.clone());
                if post_order(&w, &body).await {
                    exp.lock()
                        .unwrap()
                        .unconfirmed
                        .retain(|b| b["order_number"] != number.as_str());
                }
                tokio::time::sleep(Duration::from_millis(rng.random_range(5..40))).await;
            }
        }));
        // Managers move the leads our orders became to paid and on.
        let (w, sides_m, exp) = (world.clone(), sides.to_vec(), expected.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ 0xbeef);
            loop {
                for side in &sides_m {
                    let ours: Vec<u64> = w
                        .sandbox
                        .leads(&side.host)
                        .into_iter()
                        .filter(|l| l.status_id == side.pending)
                        .filter(|l| {
                            l.custom_fields_values
                                .iter()
                                .any(|f| f.field_id == side.number_field)
                        })
                        .map(|l| l.id)
                        .collect();
                    for lead in ours {
                        if !rng.random_bool(0.3) {
                            continue;
                        }
                        let to = [side.paid, side.shipping, 142][rng.random_range(0..3)];
                        move_lead(&w, side, lead, to, &exp);
                    }
                }
                tokio::time::sleep(Duration::from_millis(rng.random_range(100..300))).await;
            }
        }));
        // Managers make leads in amoCRM and move them on; amoCRM sends the webhooks.
        let (w, sides, exp) = (world.clone(), sides.to_vec(), expected.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed);
            loop {
                let side = &sides[rng.random_range(0..sides.len())];
                let Ok(lead) = w.sandbox.create_lead(
                    &side.host,
                    "Crash lead",
                    rng.random_range(1..100_000),
                    Some((side.pipeline, side.pending)),
                ) else {
                    continue;
                };
                exp.lock().unwrap().leads.insert(lead);
                // Real paths: paid and onwards (stages may be skipped, never back), or cancelled, or
                // left pending. (A lead at paid for a moment and moved back gets no payment: the
                // processor reads the lead back from amoCRM before it pays.)
                let path: Vec<u64> = match rng.random_range(0..6) {
                    0 => vec![side.paid],
                    1 => vec![side.paid, side.shipping, 142],
                    2 => vec![side.shipping],
                    3 => vec![142],
                    4 => vec![143],
                    _ => vec![],
                };
                for to in path {
                    move_lead(&w, side, lead, to, &exp);
                    tokio::time::sleep(Duration::from_millis(rng.random_range(0..30))).await;
                }
                tokio::time::sleep(Duration::from_millis(rng.random_range(10..60))).await;
            }
        }));
        Self(tasks)
    }

    fn stop(self) {
        for t in self.0 {
            t.abort();
        }
    }
}

/// amoCRM's retries: webhooks the sandbox could not deliver (the service was down or cut the answer)
/// are sent again until they are answered. The sandbox itself sends each once.
#[derive(Default)]
struct AmoRetries {
    answered: Mutex<HashSet<u64>>,
}

impl AmoRetries {
    async fn resend(&self, world: &World) -> usize {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let mut pending = 0;
        for d in world.sandbox.deliveries() {
            if d.ok || self.answered.lock().unwrap().contains(&d.seq) || d.body.is_empty() {
                continue;
            }
            let sent = http
                .post(&d.url)
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(d.body.clone())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().as_u16() < 500 => {
                    self.answered.lock().unwrap().insert(d.seq);
                }
                _ => pending += 1,
            }
        }
        pending
    }
}

/// Payments the receiver got: lead id → distinct event ids.
fn payments(world: &World) -> HashMap<u64, HashSet<String>> {
    let mut out: HashMap<u64, HashSet<String>> = HashMap::new();
    for r in world.receiver.hits() {
        if r.event() == "payment.completed" {
            assert!(r.signature_ok, "a signed delivery");
            let lead = r.json()["data"]["lead_id"].as_u64().unwrap();
            out.entry(lead).or_default().insert(r.id());
        }
    }
    out
}

/// Orders not yet synced (queued, held or failed).
async fn unsynced_orders(world: &World) -> i64 {
    count_sql(
        &world.db,
        "SELECT COUNT(*) AS n FROM orders WHERE sync_state <> 'synced'",
    )
    .await
}

/// Lead steps (contact, note, products, task) not yet done or skipped.
async fn unfinished_steps(world: &World) -> i64 {
    count_sql(
        &world.db,
        "SELECT COUNT(*) AS n FROM order_steps WHERE state NOT IN ('done', 'skipped')",
    )
    .await
}

/// Every order lead of `side` is a complete deal, each part made once though instances died mid-way: one
/// note, one task, both items linked with their quantities, one contact per buyer, each SKU made once.
fn assert_complete_deals(world: &World, side: &Side, leads: &HashMap<String, Vec<u64>>) {
    let notes = world.sandbox.notes(&side.host);
    let tasks = world.sandbox.tasks(&side.host);
    let skus = skus_made(&world.sandbox, &side.host);
    let mut distinct = skus.clone();
    distinct.dedup();
    assert_eq!(
        skus.len(),
        distinct.len(),
        "{}: a SKU made twice: {skus:?}",
        side.host
    );
    let linked = linked_items(&world.sandbox, &side.host);
    let mut buyers = HashSet::new();
    let host_leads = world.sandbox.leads(&side.host);
    for (number, ids) in leads {
        let Some(lead) = host_leads.iter().find(|l| l.id == ids[0]) else {
            continue;
        };
        let (buyer, sku) = pick(number);
        buyers.insert(buyer);
        let n = notes.iter().filter(|n| n.entity_id == lead.id).count();
        assert_eq!(n, 1, "{number}: one note");
        let t = tasks
            .iter()
            .filter(|t| t.entity_id == Some(lead.id))
            .count();
        assert_eq!(t, 1, "{number}: one task");
        let got = linked.get(&lead.id).cloned().unwrap_or_default();
        let mut want = vec![
            (format!("sku-{sku}"), 1 + sku as i64),
            ("sku-common".to_owned(), 1),
        ];
        want.sort();
        assert_eq!(got, want, "{number}: each item linked once");
        assert_eq!(lead.contact_ids.len(), 1, "{number}: the buyer's contact");
    }
    let contacts = world.sandbox.contacts(&side.host);
    assert_eq!(
        contacts.len(),
        buyers.len(),
        "{}: one contact per buyer",
        side.host
    );
}

/// Event deliveries not yet delivered (pending, retrying or failed).
async fn undelivered_events(world: &World) -> i64 {
    count_sql(
        &world.db,
        "SELECT COUNT(*) AS n FROM event_deliveries WHERE state <> 'delivered'",
    )
    .await
}

/// amoCRM webhook bodies not yet processed, with their attempts and last error (pending or failed).
async fn unprocessed_bodies(world: &World) -> Vec<(i64, String, i32, Option<String>)> {
    use amocrm_connector::storage::schema::amocrm_webhook_inbox as i;
    use diesel::prelude::*;
    world
        .db
        .run(|c| {
            i::table
                .filter(i::state.ne("processed"))
                .select((i::id, i::state, i::attempts, i::last_error))
                .load(c)
                .map_err(Into::into)
        })
        .await
        .unwrap()
}

/// Every stored order as (number, seller, sync state, lead id).
async fn order_rows(world: &World) -> Vec<(String, String, String, Option<i64>)> {
    use amocrm_connector::storage::schema::orders as o;
    use diesel::prelude::*;
    world
        .db
        .run(|c| {
            o::table
                .select((o::order_number, o::seller_id, o::sync_state, o::lead_id))
                .load(c)
                .map_err(Into::into)
        })
        .await
        .unwrap()
}

/// Starts `names`, puts them behind the balancer.
async fn start_all(world: &World, names: &[String]) -> Vec<Service> {
    let mut out = Vec::new();
    for n in names {
        out.push(world.start(n).await);
    }
    world
        .balancer
        .set_backends(out.iter().map(|s| s.port).collect());
    out
}

/// The whole run: `instances` processes, `rounds` of load ended by SIGKILL at a random moment, then a
/// settle phase and the checks.
async fn crash_run(instances: usize, sellers: usize, rounds: usize) {
    let mut rng = rng();
    let world = Arc::new(World::new().await);
    let names: Vec<String> = (0..instances).map(|i| format!("crash-{i}")).collect();
    let mut services = start_all(&world, &names).await;
    for i in 0..sellers {
        let (s, h) = seller(i);
        world.sandbox.add_account(&h);
        world
            .sandbox
            .enable_products(&h, None)
            .expect("products on");
        world.connect(&s, &h).await;
        let task =
            json!({"task": {"enabled": true, "text": "Qo'ng'iroq qiling", "due_in_minutes": 30}});
        let path = format!("/api/v1/connections/{s}/settings");
        let (status, body) = world.setup_api("PUT", &path, Some(&task)).await;
        assert_eq!(status, 200, "{s}: {body}");
    }
    world.subscribe_receiver().await;
    let sides = sides(&world).await;

    // No double refresh: every token due at once, every instance's schedule sweeping, and the cron URL
    // called from twenty clients through the balancer: each connection is refreshed exactly once.
    let before = world.sandbox.total_counters();
    world.make_tokens_due().await;
    let hammer: Vec<JoinHandle<()>> = (0..20)
        .map(|_| {
            let (http, url) = (
                world.http.clone(),
                world.url(&format!("/refresh?secret_key={REFRESH_SECRET}")),
            );
            tokio::spawn(async move {
                loop {
                    let _ = http.get(&url).send().await;
                }
            })
        })
        .collect();
    let fresh = wait_until(
        Duration::from_secs(60),
        "every due connection refreshed",
        || async {
            let now = amocrm_connector::storage::now();
            world.connections().await.iter().all(|c| {
                c.token_expires_at
                    .is_some_and(|t| t > now + chrono::Duration::hours(2))
            })
        },
    )
    .await
    .is_ok();
    // A little longer, to catch a late second refresh.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for h in hammer {
        h.abort();
    }
    let after = world.sandbox.total_counters();
    assert!(fresh, "every due connection refreshed");
    assert_eq!(
        (after.refreshes - before.refreshes, after.rejected_refreshes),
        (sellers as u64, 0),
        "each due connection refreshed exactly once, none with a dead token"
    );
    let expected: Arc<Mutex<Expected>> = Arc::default();
    let retries = AmoRetries::default();
    let t0 = Instant::now();
    for round in 0..rounds {
        world.make_tokens_due().await;
        let load = Load::start(&world, &sides, &expected, rng.random());
        let refreshes = world.sandbox.total_counters().refreshes;
        // Run for a random while, then kill one instance (or all, every other round) mid-flight.
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..2500))).await;
        let victims: Vec<usize> = if round % 2 == 1 || instances == 1 {
            (0..instances).collect()
        } else {
            vec![rng.random_range(0..instances)]
        };
        for &v in &victims {
            services[v].kill();
        }
        load.stop();
        println!(
            "round {round} at {:?}: killed {victims:?} after {} refreshes, {} leads",
            t0.elapsed(),
            world.sandbox.total_counters().refreshes - refreshes,
            expected.lock().unwrap().leads.len()
        );
        for &v in &victims {
            services[v] = world.start(&names[v]).await;
        }
        world
            .balancer
            .set_backends(services.iter().map(|s| s.port).collect());
        retries.resend(&world).await;
        let lost = expected.lock().unwrap().unconfirmed.len();
        repost_unconfirmed(&world, &expected).await;
        println!("  {lost} order answers lost to the kill, posted again");
    }
    // Settle: amoCRM keeps retrying what failed; the services finish what the crashes interrupted.
    world.make_tokens_due().await;
    // The load is stopped: what it did is final once every order has been confirmed.
    wait_until(Duration::from_secs(60), "every order accepted", || async {
        repost_unconfirmed(&world, &expected).await == 0
    })
    .await
    .expect("every order was finally accepted");
    let exp = std::mem::take(&mut *expected.lock().unwrap());
    let settled = wait_until(Duration::from_secs(240), "everything settled", || async {
        if retries.resend(&world).await > 0 {
            return false;
        }
        if unsynced_orders(&world).await > 0
            || unfinished_steps(&world).await > 0
            || undelivered_events(&world).await > 0
            || !unprocessed_bodies(&world).await.is_empty()
        {
            return false;
        }
        let got = payments(&world);
        let now = amocrm_connector::storage::now();
        let fresh = world.connections().await.iter().all(|c| {
            c.status == ConnectionStatus::Active
                && c.token_expires_at
                    .is_some_and(|t| t > now + chrono::Duration::hours(2))
        });
        fresh && exp.paid.iter().all(|l| got.contains_key(l))
    })
    .await
    .is_ok();
    println!("settled at {:?}", t0.elapsed());
    if !settled {
        println!("{}", harness::summary(&world).await);
        for body in unprocessed_bodies(&world).await {
            println!("unprocessed amoCRM body {body:?}");
        }
    }
    let got = payments(&world);
    let missing: Vec<&u64> = exp.paid.iter().filter(|l| !got.contains_key(l)).collect();
    for l in &missing {
        println!("lead {l}: moves {:?}", exp.moves.get(l));
    }
    assert!(
        settled && missing.is_empty(),
        "payments missing for leads {missing:?}"
    );
    let doubled: Vec<(&u64, &HashSet<String>)> =
        got.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(
        doubled.is_empty(),
        "payment.completed twice (distinct ids) for {doubled:?}"
    );
    let unpaid: Vec<&u64> = got.keys().filter(|l| !exp.paid.contains(l)).collect();
    assert!(
        unpaid.is_empty(),
        "payments for leads never paid: {unpaid:?}"
    );
    let counters = world.sandbox.total_counters();
    assert_eq!(
        counters.rate_limited, 0,
        "amoCRM never answered 429: every instance called an account only in its turn, within its budget"
    );
    assert_eq!(
        counters.rejected_refreshes, 0,
        "no refresh used a dead token (a lost answer is retried under the grace rule): {counters:?}"
    );
    // Every accepted order is exactly one lead, and its row names that lead.
    let mut leads_by_number: HashMap<String, Vec<u64>> = HashMap::new();
    for side in &sides {
        for lead in world.sandbox.leads(&side.host) {
            if let Some(n) = lead
                .custom_fields_values
                .iter()
                .find(|f| f.field_id == side.number_field)
                .and_then(|f| f.values.first())
            {
                leads_by_number
                    .entry(n.as_text())
                    .or_default()
                    .push(lead.id);
            }
        }
    }
    let doubled: Vec<_> = leads_by_number
        .iter()
        .filter(|(_, l)| l.len() > 1)
        .collect();
    assert!(doubled.is_empty(), "orders with two leads: {doubled:?}");
    for side in &sides {
        let mine: HashMap<String, Vec<u64>> = leads_by_number
            .iter()
            .filter(|(n, _)| exp.orders.get(*n) == Some(&side.seller))
            .map(|(n, l)| (n.clone(), l.clone()))
            .collect();
        assert_complete_deals(&world, side, &mine);
    }
    let stray: Vec<_> = leads_by_number
        .keys()
        .filter(|n| !exp.orders.contains_key(*n))
        .collect();
    assert!(stray.is_empty(), "leads for orders never sent: {stray:?}");
    let rows = order_rows(&world).await;
    assert_eq!(rows.len(), exp.orders.len(), "every order stored once");
    for (number, seller, state, lead) in &rows {
        assert_eq!(exp.orders.get(number), Some(seller), "{number}");
        assert_eq!(state, "synced", "{number}");
        assert_eq!(
            leads_by_number.get(number).map(|l| l[0] as i64),
            *lead,
            "{number}: one lead, the one the order names"
        );
    }
    // Payments for order leads name their order.
    for r in world.receiver.hits() {
        let body = r.json();
        if r.event() == "payment.completed"
            && let Some(n) = body["data"]["order_number"].as_str()
        {
            assert!(exp.orders.contains_key(n), "payment names order {n}");
        }
    }
    // Other events, by their subject: one `order.synced` per order, one `order.created` per manager
    // lead, each under one id however often it was delivered.
    let mut by_subject: HashMap<(String, String), HashSet<String>> = HashMap::new();
    for r in world.receiver.hits() {
        let (event, body) = (r.event(), r.json());
        let subject = match event.as_str() {
            "order.synced" => body["data"]["order_number"].as_str().map(str::to_owned),
            "order.created" => body["data"]["lead_id"].as_u64().map(|l| l.to_string()),
            _ => None,
        };
        if let Some(subject) = subject {
            by_subject
                .entry((event, subject))
                .or_default()
                .insert(r.id());
        }
    }
    let twice: Vec<_> = by_subject.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(twice.is_empty(), "events recorded twice: {twice:?}");
    for number in exp.orders.keys() {
        assert!(
            by_subject.contains_key(&("order.synced".to_owned(), number.clone())),
            "order.synced of {number} delivered"
        );
    }
    for lead in &exp.leads {
        assert!(
            by_subject.contains_key(&("order.created".to_owned(), lead.to_string())),
            "order.created of manager lead {lead} delivered"
        );
    }
    let sweeps = harness::assert_sweeps_never_overlapped(&world);
    assert!(sweeps > 0, "sweeps ran");
    for i in 0..sellers {
        let (s, _) = seller(i);
        world.assert_connection_works(&s).await;
        let (status, body) = world
            .api("POST", &format!("/api/v1/connections/{s}/refresh"), None)
            .await
            .unwrap();
        assert_eq!(status, 200, "{s}: {body}");
        world.assert_connection_works(&s).await;
    }
    // The logs of every process life hold none of the secrets they handled.
    let logs = harness::all_logs(&world);
    let mut secrets: Vec<(String, String)> = vec![
        ("client secret".into(), harness::CLIENT_SECRET.into()),
        ("refresh secret".into(), REFRESH_SECRET.into()),
        (
            "subscription secret".into(),
            harness::RECEIVER_SECRET.into(),
        ),
        ("API key".into(), world.api_key.clone()),
        (
            "encryption key".into(),
            world.key_entry.split_once(':').unwrap().1.to_owned(),
        ),
    ];
    for c in world.connections().await {
        use secrecy::ExposeSecret;
        if let Some(t) = c.access_token(&world.keys).unwrap() {
            secrets.push((
                format!("access token of {}", c.seller_id),
                t.expose_secret().to_owned(),
            ));
        }
        if let Some(t) = c.refresh_token(&world.keys).unwrap() {
            secrets.push((
                format!("refresh token of {}", c.seller_id),
                t.expose_secret().to_owned(),
            ));
        }
        secrets.push((
            format!("webhook token of {}", c.seller_id),
            c.webhook_token.clone(),
        ));
    }
    for (what, value) in &secrets {
        assert!(
            !logs.windows(value.len()).any(|w| w == value.as_bytes()),
            "the {what} is in a log"
        );
    }
    assert!(
        logs.len() > 10_000,
        "the logs were read ({} bytes)",
        logs.len()
    );
    println!(
        "{} orders, {} manager leads, {} paid, {} payments delivered, {} refreshes, {sweeps} sweeps, {} answers 429",
        exp.orders.len(),
        exp.leads.len(),
        exp.paid.len(),
        got.len(),
        counters.refreshes,
        counters.rate_limited
    );
    drop(services);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_at_random_moments_the_service_loses_and_doubles_nothing() {
    crash_run(1, 3, rounds(4)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_on_one_postgresql_database_killed_at_random_lose_and_double_nothing() {
    if std::env::var("TEST_DATABASE_URL").is_ok_and(|u| !u.is_empty()) {
        crash_run(3, 5, rounds(4)).await;
    } else {
        println!(
            "skipped: several instances share PostgreSQL; set TEST_DATABASE_URL (scripts/pg-start.sh)"
        );
    }
}

#[tokio::test]
async fn a_restarted_instance_takes_back_its_own_leases_and_no_one_elses() {
    use amocrm_connector::storage::schema::job_leases as j;
    use diesel::prelude::*;
    let first = support::spawn_app().await;
    let later = amocrm_connector::storage::now() + chrono::Duration::minutes(5);
    let rows = [
        ("sweep-of-node_1", "node_1:Xy12"),
        ("job-of-node_1", "node_1"),
        ("job-of-node_10", "node_10"),
        ("job-of-a-lookalike", "nodeA1:zz"),
        ("job-of-other", "other:node_1"),
    ];
    first
        .sql(move |c| {
            for (name, owner) in rows {
                diesel::insert_into(j::table)
                    .values((
                        j::name.eq(name),
                        j::owner.eq(Some(owner)),
                        j::lease_until.eq(Some(later)),
                    ))
                    .execute(c)?;
            }
            Ok(())
        })
        .await;
    // The same database started again as "node_1" (its previous life was killed); `_` is a LIKE
    // wildcard that must not match "nodeA1".
    let _again = first
        .spawn_peer_with(|env| {
            env.insert("INSTANCE_ID".into(), "node_1".into());
        })
        .await;
    let held: Vec<(String, Option<String>)> = first
        .sql(|c| j::table.select((j::name, j::owner)).order(j::name).load(c))
        .await;
    let owner = |n: &str| held.iter().find(|(k, _)| k == n).unwrap().1.clone();
    assert_eq!(owner("sweep-of-node_1"), None);
    assert_eq!(owner("job-of-node_1"), None);
    assert_eq!(owner("job-of-node_10").as_deref(), Some("node_10"));
    assert_eq!(owner("job-of-a-lookalike").as_deref(), Some("nodeA1:zz"));
    assert_eq!(owner("job-of-other").as_deref(), Some("other:node_1"));
}
