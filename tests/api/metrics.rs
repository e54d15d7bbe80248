//! `GET /metrics`: well-formed Prometheus text, the expected families, gauges from the database, route
//! patterns instead of paths, and the optional bearer token.

use std::collections::{BTreeMap, BTreeSet};

use amocrm_connector::metrics::{self, AmoOutcome};
use chrono::TimeDelta;

use crate::support::{Queue, TestApp, env_vars, header, inbox_row, spawn_app, spawn_app_with};

/// One sample line: family name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A strict reader of the Prometheus text exposition format (0.0.4): every line is a `# HELP`, a
/// `# TYPE` (once per family, before its samples) or a sample `name{label="value",…} value` whose name
/// belongs to a declared family. Returns the families with their types and the samples.
fn parse_exposition(text: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
    let mut types = BTreeMap::new();
    let mut samples = Vec::new();
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let kind = parts.next().unwrap();
            let name = parts.next().expect("metric name after HELP/TYPE");
            assert!(valid_name(name), "bad name in {line:?}");
            match kind {
                "HELP" => {}
                "TYPE" => {
                    let t = parts.next().expect("type");
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                        "{line:?}"
                    );
                    assert!(
                        types.insert(name.to_owned(), t.to_owned()).is_none(),
                        "TYPE twice for {name}"
                    );
                }
                _ => panic!("unknown comment {line:?}"),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("labels close with }");
                (name, parse_labels(body, line))
            }
        };
        assert!(valid_name(name), "bad sample name in {line:?}");
        let family = types
            .keys()
            .find(|f| {
                name == f.as_str()
                    || (types[f.as_str()] == "histogram"
                        && [
                            format!("{f}_bucket"),
                            format!("{f}_sum"),
                            format!("{f}_count"),
                        ]
                        .contains(&name.to_owned()))
            })
            .unwrap_or_else(|| panic!("sample before its TYPE: {line:?}"));
        if name.ends_with("_bucket") && types[family.as_str()] == "histogram" {
            assert!(labels.contains_key("le"), "bucket without le: {line:?}");
        }
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    (types, samples)
}

fn parse_labels(body: &str, line: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = body.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        assert!(!key.is_empty(), "empty label name in {line:?}");
        assert_eq!(
            chars.next(),
            Some('"'),
            "label value must be quoted: {line:?}"
        );
        let mut value = String::new();
        loop {
            match chars
                .next()
                .unwrap_or_else(|| panic!("unterminated label in {line:?}"))
            {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c @ ('\\' | '"')) => value.push(c),
                    other => panic!("bad escape {other:?} in {line:?}"),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(key, value);
        match chars.next() {
            None => break,
            Some(',') => {}
            Some(c) => panic!("unexpected {c:?} after a label in {line:?}"),
        }
    }
    labels
}

/// The values label `label` takes in the samples of `family`.
fn label_values<'a>(samples: &'a [Sample], family: &str, label: &str) -> BTreeSet<&'a str> {
    samples
        .iter()
        .filter(|s| s.name == family)
        .filter_map(|s| s.labels.get(label).map(String::as_str))
        .collect()
}

async fn scrape(app: &TestApp) -> String {
    let resp = app.get("/metrics").await;
    assert_eq!(resp.status(), 200);
    let ct = header(&resp, "content-type");
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    resp.text().await.unwrap()
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_list_every_family() {
    let app = spawn_app().await;
    // Exercise the counters other parts of the service bump.
    metrics::amocrm_call("leads_complex", AmoOutcome::Ok);
    metrics::amocrm_call("leads_complex", AmoOutcome::RateLimited);
    metrics::refresh_outcome("ok");
    metrics::push_batch(50);
    metrics::webhook_received();
    metrics::delivery_outcome("delivered");
    app.get("/health").await;

    let text = scrape(&app).await;
    let (types, samples) = parse_exposition(&text);
    for (family, kind) in [
        ("http_requests_total", "counter"),
        ("http_request_duration_seconds", "histogram"),
        ("amocrm_requests_total", "counter"),
        ("amocrm_token_refreshes_total", "counter"),
        ("order_push_batch_size", "histogram"),
        ("amocrm_webhooks_received_total", "counter"),
        ("event_delivery_attempts_total", "counter"),
        ("operator_logins_total", "counter"),
        ("amocrm_connections", "gauge"),
        ("orders", "gauge"),
        ("orders_oldest_queued_age_seconds", "gauge"),
        ("event_deliveries", "gauge"),
        ("event_delivery_backlog", "gauge"),
        ("event_delivery_oldest_pending_age_seconds", "gauge"),
        ("amocrm_webhook_inbox", "gauge"),
        ("amocrm_webhook_inbox_backlog", "gauge"),
        ("amocrm_webhook_processing_lag_seconds", "gauge"),
        ("events_stored", "gauge"),
        ("amocrm_connector_info", "gauge"),
    ] {
        assert_eq!(
            types.get(family).map(String::as_str),
            Some(kind),
            "{family} in\n{text}"
        );
    }
    let health = samples.iter().find(|s| {
        s.name == "http_requests_total"
            && s.labels.get("route").map(String::as_str) == Some("/health")
            && s.labels.get("status").map(String::as_str) == Some("200")
    });
    assert!(health.is_some_and(|s| s.value >= 1.0), "{text}");
    let rate_limited = samples.iter().find(|s| {
        s.name == "amocrm_requests_total"
            && s.labels.get("call").map(String::as_str) == Some("leads_complex")
            && s.labels.get("outcome").map(String::as_str) == Some("429")
    });
    assert!(rate_limited.is_some_and(|s| s.value >= 1.0), "{text}");
    // Each state is present from the start, at zero on an empty database.
    let states = label_values(&samples, "orders", "sync_state");
    assert_eq!(
        states,
        BTreeSet::from(["queued", "synced", "held", "failed"])
    );
    let connections = label_values(&samples, "amocrm_connections", "status");
    assert_eq!(
        connections,
        BTreeSet::from(["active", "suspended", "refresh_failed", "revoked"])
    );
}

#[tokio::test]
async fn every_amocrm_request_is_counted_by_endpoint_and_outcome() {
    let app = spawn_app().await;
    let allowed = amocrm_client::AllowedDomains::parse("amocrm.ru").unwrap();
    let host = amocrm_client::AccountHost::parse("sellerone.amocrm.ru", &allowed).unwrap();
    let token = secrecy::SecretString::from("not-a-valid-token");
    let count = |text: &str| {
        let (_, samples) = parse_exposition(text);
        samples
            .iter()
            .find(|s| {
                s.name == "amocrm_requests_total"
                    && s.labels.get("call").map(String::as_str) == Some("GET /api/v4/account")
                    && s.labels.get("outcome").map(String::as_str) == Some("401")
            })
            .map_or(0.0, |s| s.value)
    };
    let before = count(&scrape(&app).await);
    let result = app.state.amo.api(&host, &token).account().await;
    assert!(
        matches!(result, Err(amocrm_client::ApiError::Unauthorized)),
        "{result:?}"
    );
    let after = count(&scrape(&app).await);
    assert!(after >= before + 1.0, "{before} → {after}");
}

#[tokio::test]
async fn the_webhook_backlog_and_its_lag_come_from_the_database() {
    let app = spawn_app().await;
    app.leaves_queued(
        Queue::Inbox,
        "the pending body is the backlog the gauges report",
    );
    let received = amocrm_connector::storage::now() - TimeDelta::seconds(120);
    app.db
        .run(inbox_row(b"leads[status][0][id]=1", received, None))
        .await
        .unwrap();
    let text = scrape(&app).await;
    let (_, samples) = parse_exposition(&text);
    let value = |name: &str| {
        samples
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.value)
            .unwrap_or_else(|| panic!("{name} in\n{text}"))
    };
    assert_eq!(value("amocrm_webhook_inbox_backlog"), 1.0);
    assert!(value("amocrm_webhook_processing_lag_seconds") >= 120.0);
    assert_eq!(value("event_delivery_backlog"), 0.0);
}

#[tokio::test]
async fn request_metrics_name_route_patterns_never_raw_paths() {
    let app = spawn_app().await;
    let secret = "pathSecretToken9f8e7d6c";
    app.get(&format!("/webhooks/amocrm/{secret}")).await;
    app.get(&format!("/connect/{secret}")).await;
    app.api_get(&format!("/api/v1/connections/{secret}")).await;
    let text = scrape(&app).await;
    assert!(
        !text.contains(secret),
        "a path leaked into the metrics:\n{text}"
    );
}

#[tokio::test]
async fn with_a_metrics_token_only_the_right_bearer_gets_the_metrics() {
    let token = "metrics-token-0123456789";
    let app = spawn_app_with(env_vars(&[("METRICS_TOKEN", token)])).await;
    let resp = app.get("/metrics").await;
    assert_eq!(resp.status(), 401);
    for wrong in ["metrics-token-012345678", "metrics-token-0123456789x", ""] {
        let resp = app.get_as("/metrics", wrong).await;
        assert_eq!(resp.status(), 401, "{wrong:?}");
        assert!(!resp.text().await.unwrap().contains("http_requests_total"));
    }
    let resp = app.get_as("/metrics", token).await;
    assert_eq!(resp.status(), 200);
    let (types, _) = parse_exposition(&resp.text().await.unwrap());
    assert!(types.contains_key("http_requests_total"));
}
