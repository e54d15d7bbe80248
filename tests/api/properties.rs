//! Property tests with generated input: the OAuth callback's parameters and the order body. Each runs a
//! few dozen cases in the suite; `PROPTEST_CASES=5000 cargo test --test api properties::` is the long run.
//! (amoCRM's webhook parser is fuzzed in `crates/amocrm-client/tests/webhook_samples.rs`.)

use proptest::collection::{hash_map, vec};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Value, json};

use crate::hostile::{Answer, Kind, check, raw, request};
use crate::support::{
    HOST, Queue, TestApp, create_session, header, open_page, query_of, spawn_app,
};

/// Cases per property: a few dozen in the suite unless `PROPTEST_CASES` asks for more.
fn config(default_cases: u32) -> Config {
    let mut cfg = Config {
        failure_persistence: None,
        ..Config::default()
    };
    if std::env::var("PROPTEST_CASES").is_err() {
        cfg.cases = default_cases;
    }
    cfg
}

/// The allowed-host rule of CONTRACT §2, written independently of the service's own: exactly one DNS
/// label followed by one of the allowed domains.
fn is_allowed_host(host: &str) -> bool {
    let Some((label, domain)) = host.split_once('.') else {
        return false;
    };
    !label.is_empty()
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && ["amocrm.ru", "kommo.com", "amocrm.com"].contains(&domain)
}

/// Referers an attacker would try: near misses of the allowed domains, other hosts, junk.
fn referer() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(HOST.to_owned()),
        "[a-z0-9-]{1,12}\\.(amocrm\\.ru|kommo\\.com|amocrm\\.com)",
        "[a-z0-9-]{1,12}\\.(amocrm\\.ru|kommo\\.com)\\.[a-z]{2,8}(\\.[a-z]{2,3})?",
        "([a-z]{1,5}\\.){2,3}amocrm\\.ru",
        "[a-z]{1,8}\\.(amocrm\\.ru|kommo\\.com)(:[0-9]{1,5}|/|/\\.\\./x|#|\\?a=b|@evil\\.example)",
        "(evil|127\\.0\\.0\\.1|localhost|\\[::1\\]|169\\.254\\.169\\.254)(:[0-9]{1,5})?",
        "[A-Z]{1,8}\\.AMOCRM\\.RU\\.?",
        "(https?://)?[a-z]{1,8}\\.amocrm\\.ru",
        "[a-z]{1,8}\\.аmocrm\\.ru",
        "[^\\x00]{0,40}",
    ]
}

fn junk() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => Just(String::new()),
        1 => ".{0,60}",
        4 => "[^\\x00]{0,60}",
        4 => "[a-zA-Z0-9_-]{1,200}",
    ]
}

/// One generated callback: which of its parts are real, and the junk for the rest.
#[derive(Debug, Clone)]
struct Callback {
    real_state: bool,
    real_client: bool,
    code: Option<String>,
    referer: Option<String>,
    error: Option<String>,
    from_widget: Option<String>,
    state_junk: String,
    client_junk: String,
    extra: Vec<(String, String)>,
}

prop_compose! {
    fn callback()(
        real_state in proptest::bool::weighted(0.8),
        real_client in proptest::bool::weighted(0.8),
        code in proptest::option::weighted(0.8, junk()),
        referer in proptest::option::of(referer()),
        error in proptest::option::weighted(0.2, prop_oneof![Just("access_denied".to_owned()), junk()]),
        from_widget in proptest::option::weighted(0.1, junk()),
        state_junk in junk(),
        client_junk in junk(),
        extra in vec((".{0,10}", ".{0,10}"), 0..3),
    ) -> Callback {
        Callback {
            real_state, real_client, code, referer, error, from_widget, state_junk, client_junk, extra,
        }
    }
}

/// A real `state` for this browser: a fresh session, its page opened (which sets the browser cookie).
async fn real_state(app: &TestApp, n: usize) -> String {
    let session = create_session(app, &format!("prop-seller-{n}"), json!({})).await;
    let (popup, _) = open_page(&app.http, session["connect_url"].as_str().unwrap()).await;
    query_of(&popup)["state"].clone()
}

/// Sends one generated callback and checks what must hold whatever it carried.
async fn try_callback(
    app: &TestApp,
    client_id: &str,
    cb: &Callback,
    n: usize,
) -> Result<(), TestCaseError> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    let state = if cb.real_state {
        real_state(app, n).await
    } else {
        cb.state_junk.clone()
    };
    pairs.push(("state".into(), state));
    pairs.push((
        "client_id".into(),
        if cb.real_client {
            client_id.to_owned()
        } else {
            cb.client_junk.clone()
        },
    ));
    for (k, v) in [
        ("code", &cb.code),
        ("referer", &cb.referer),
        ("error", &cb.error),
        ("from_widget", &cb.from_widget),
    ] {
        if let Some(v) = v {
            pairs.push((k.into(), v.clone()));
        }
    }
    pairs.extend(cb.extra.iter().cloned());
    let query = serde_urlencoded::to_string(&pairs).unwrap();
    let resp = app
        .http
        .get(app.url(&format!("/oauth/amocrm/callback?{query}")))
        .send()
        .await
        .map_err(|e| TestCaseError::fail(format!("no answer: {e}")))?;
    // A spent state's answer is a redirect to its result page: the page is what the seller reads.
    let resp = crate::support::follow_result(app, resp).await;
    let status = resp.status().as_u16();
    let content_type = header(&resp, "content-type");
    let html = resp.text().await.unwrap_or_default();
    prop_assert!(status < 500, "callback answered {status}: {html}");
    prop_assert!(
        content_type.starts_with("text/html") || content_type.starts_with("text/plain"),
        "a human page, got {content_type}"
    );
    prop_assert!(
        status >= 400,
        "a generated callback cannot succeed: {status}"
    );
    for r in app.sandbox.request_log() {
        if let Some(host) = r.host {
            prop_assert!(
                is_allowed_host(&host),
                "a request (carrying the client secret) went to a disallowed host {host:?}"
            );
        }
    }
    let stored = app
        .db
        .run(|c| amocrm_connector::storage::connections::list(c, None, 0, 1000))
        .await
        .unwrap();
    prop_assert_eq!(stored.1, 0, "nothing is stored");
    Ok(())
}

#[test]
fn generated_oauth_callbacks_never_fail_store_nothing_and_contact_only_allowed_hosts() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = rt.block_on(spawn_app());
    app.sandbox.add_account(HOST);
    let client_id = app.env["AMOCRM_CLIENT_ID"].clone();
    // Hand-picked first, so every run reaches the code exchange (and the referer check before it).
    let near_misses = [
        "evil.example",
        "x.amocrm.ru.evil.example",
        "a.b.amocrm.ru",
        HOST,
        "x.kommo.com",
    ];
    for (i, referer) in near_misses.into_iter().enumerate() {
        let cb = Callback {
            real_state: true,
            real_client: true,
            code: Some("forged-code".into()),
            referer: Some(referer.into()),
            error: None,
            from_widget: None,
            state_junk: String::new(),
            client_junk: String::new(),
            extra: Vec::new(),
        };
        if let Err(e) = rt.block_on(try_callback(&app, &client_id, &cb, 100_000 + i)) {
            panic!("{referer}: {e}");
        }
    }
    let mut runner = TestRunner::new(config(48));
    let counter = std::sync::atomic::AtomicUsize::new(0);
    let result = runner.run(&callback(), |cb| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        rt.block_on(try_callback(&app, &client_id, &cb, n))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let exchanges = app
        .sandbox
        .request_log()
        .iter()
        .filter(|r| r.path.contains("oauth2/access_token"))
        .count();
    assert!(
        exchanges > 0,
        "some generated callbacks got past every check to a (refused) code exchange"
    );
}

/// Any JSON at all, small enough to send.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        ".{0,20}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            hash_map(".{0,12}", inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const ORDER_SELLER: &str = "prop-orders-seller";

/// An order close to valid: each field is usually right and sometimes replaced by anything.
fn order_body() -> impl Strategy<Value = (Value, Vec<String>)> {
    let fields = (
        "[A-Za-z0-9-]{1,20}",
        prop_oneof![
            (0u64..10_000_000).prop_map(Value::from),
            (0u64..100_000_000_000).prop_map(|cents| json!(cents as f64 / 100.0)),
        ],
        prop_oneof![
            Just("pending"),
            Just("paid"),
            Just("awaiting_payment"),
            Just("cancelled")
        ],
        vec(
            (
                "[a-z0-9]{1,10}",
                "[^\\p{C}]{1,30}",
                1u32..100,
                0u32..100_000,
            ),
            1..4,
        ),
        (
            "[^\\p{C}]{1,30}",
            proptest::option::of("\\+998[0-9]{9}"),
            proptest::option::of("[a-z]{1,8}@[a-z]{1,8}\\.uz"),
        ),
    );
    (
        fields,
        vec(
            (
                prop_oneof![
                    Just("seller_id"),
                    Just("order_number"),
                    Just("total_amount"),
                    Just("currency"),
                    Just("status"),
                    Just("items"),
                    Just("customer"),
                    Just("customer_id"),
                    Just("url"),
                    Just("tags"),
                    Just("comment"),
                ],
                proptest::option::of(any_json()),
            ),
            0..3,
        ),
    )
        .prop_map(|((number, amount, status, items, (name, phone, email)), mutations)| {
            let mut body = json!({
                "seller_id": ORDER_SELLER,
                "order_number": number,
                "total_amount": amount,
                "currency": "UZS",
                "status": status,
                "items": items.iter().map(|(id, n, q, p)| json!({"product_id": id, "name": n, "quantity": q, "price": p})).collect::<Vec<_>>(),
                "customer": {"name": name, "phone": phone, "email": email},
            });
            let mut changed = Vec::new();
            for (field, value) in mutations {
                let obj = body.as_object_mut().unwrap();
                match value {
                    Some(v) => {
                        obj.insert(field.to_owned(), v);
                    }
                    None => {
                        obj.remove(field);
                    }
                }
                changed.push(field.to_owned());
            }
            (body, changed)
        })
}

async fn post_order(app: &TestApp, key: &str, body: &[u8]) -> Result<Answer, TestCaseError> {
    let headers: [(&str, &[u8]); 1] = [("Content-Type", b"application/json")];
    raw(
        app.port,
        &request("POST", "/api/v1/sales/orders", Some(key), &headers, body),
    )
    .await
    .map_err(TestCaseError::fail)
}

#[test]
fn generated_order_bodies_are_accepted_once_or_refused_in_the_contract_format() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = rt.block_on(spawn_app());
    app.leaves_queued(
        Queue::Push,
        "accepted orders are checked in the answers only, never pushed",
    );
    let key =
        rt.block_on(app.api_key_with_tier(amocrm_connector::services::api_keys::Tier::Enterprise));
    rt.block_on(crate::support::seed_connection(&app, ORDER_SELLER, HOST));
    let mut runner = TestRunner::new(config(64));
    let accepted = std::cell::Cell::new(0u32);
    let refused = std::cell::Cell::new(0u32);
    let result = runner.run(
        &(order_body(), any_json()),
        |((body, changed), anything)| {
            rt.block_on(async {
                let label = format!("order {body} (changed {changed:?})");
                let bytes = serde_json::to_vec(&body).unwrap();
                let a = post_order(&app, &key, &bytes).await?;
                check(Kind::Api, &label, &a);
                match a.status {
                    200 | 202 => {
                        accepted.set(accepted.get() + 1);
                        let first: Value = serde_json::from_slice(&a.body).unwrap();
                        prop_assert_eq!(&first["data"]["seller_id"], &body["seller_id"]);
                        prop_assert_eq!(&first["data"]["order_number"], &body["order_number"]);
                        // The same body again: the same order, nothing new.
                        let again = post_order(&app, &key, &bytes).await?;
                        prop_assert_eq!(again.status, 200, "a repeat is 200: {}", again.text());
                        let second: Value = serde_json::from_slice(&again.body).unwrap();
                        prop_assert_eq!(&first["data"]["id"], &second["data"]["id"]);
                    }
                    400 | 409 | 422 => refused.set(refused.get() + 1),
                    other => prop_assert!(false, "{label}: unexpected {other}: {}", a.text()),
                }
                // And a body that is any JSON at all.
                let a = post_order(&app, &key, &serde_json::to_vec(&anything).unwrap()).await?;
                check(Kind::Api, &format!("order body {anything}"), &a);
                prop_assert!(
                    a.status >= 400 || anything["seller_id"] == ORDER_SELLER,
                    "random JSON accepted: {anything}"
                );
                Ok(())
            })
        },
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(
        accepted.get() > 0,
        "some generated orders are valid and accepted"
    );
    assert!(refused.get() > 0, "some generated orders are refused");
}
