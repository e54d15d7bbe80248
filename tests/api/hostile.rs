//! Hostile input at every public route: malformed, oversized, deeply nested and wrongly encoded bodies,
//! junk in paths, queries and headers. Never a panic, never a 5xx; `/api` always answers in the
//! contract's error body, the seller-facing and machine routes answer with a short human or JSON body
//! that carries no internal detail. Property tests drive the OAuth callback and the order body with
//! generated input (`PROPTEST_CASES=5000 cargo test --test api proptest_` for a long run).

use amocrm_connector::domain::status::ConnectionStatus;
use std::time::Duration;

use amocrm_connector::services::api_keys::Tier;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{
    HOST, Queue, TestApp, connection, create_session, env_vars, seed_connection, spawn_app_with,
};

pub const REFRESH_SECRET: &str = "hostile-refresh-secret-0123456789";
const SELLER: &str = "seller-hostile";

/// Who reads a route's answers, and so what shape its errors must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `/api/…`: the contract's JSON error body.
    Api,
    /// Seller-facing pages and the dashboard: a human page (HTML or plain text).
    Page,
    /// Called by machines outside `/api` (amoCRM, cron, Prometheus): any short body, never a 5xx.
    Machine,
}

/// Every public route of the service (from `src/web/mod.rs`), with placeholders filled per test:
/// `{seller}` a connected seller, `{token}` its webhook token or a connect-session token, `{id}` an id.
pub const ROUTES: &[(&str, &str, Kind)] = &[
    ("GET", "/health", Kind::Machine),
    ("GET", "/metrics", Kind::Machine),
    ("GET", "/connect/{session}", Kind::Page),
    ("GET", "/oauth/amocrm/callback", Kind::Page),
    ("GET", "/oauth/amocrm/disconnect", Kind::Machine),
    ("GET", "/refresh", Kind::Machine),
    ("POST", "/refresh", Kind::Machine),
    ("POST", "/webhooks/amocrm/{token}", Kind::Machine),
    ("POST", "/api/auth/login", Kind::Api),
    ("POST", "/api/auth/refresh", Kind::Api),
    ("GET", "/dashboard/login", Kind::Page),
    ("POST", "/dashboard/login", Kind::Page),
    ("POST", "/dashboard/logout", Kind::Page),
    ("GET", "/dashboard", Kind::Page),
    ("GET", "/dashboard/connections", Kind::Page),
    ("GET", "/dashboard/orders", Kind::Page),
    ("GET", "/dashboard/events", Kind::Page),
    ("GET", "/dashboard/subscriptions", Kind::Page),
    (
        "POST",
        "/dashboard/connections/{seller}/refresh",
        Kind::Page,
    ),
    ("POST", "/dashboard/orders/{id}/retry", Kind::Page),
    ("POST", "/dashboard/events/{id}/redeliver", Kind::Page),
    ("GET", "/dashboard/orders/{id}", Kind::Page),
    (
        "POST",
        "/dashboard/connections/{seller}/connect-link",
        Kind::Page,
    ),
    ("GET", "/dashboard/subscriptions/{id}", Kind::Page),
    ("POST", "/dashboard/subscriptions/{id}", Kind::Page),
    ("POST", "/dashboard/subscriptions/{id}/test", Kind::Page),
    ("GET", "/api/v1/docs", Kind::Api),
    ("GET", "/api/v1/docs/redoc.standalone.js", Kind::Api),
    ("GET", "/api/v1/docs/docs.js", Kind::Api),
    ("GET", "/api/v1/openapi.json", Kind::Api),
    ("POST", "/api/v1/connect-sessions", Kind::Api),
    ("GET", "/api/v1/connections", Kind::Api),
    ("GET", "/api/v1/connections/{seller}", Kind::Api),
    ("DELETE", "/api/v1/connections/{other}", Kind::Api),
    ("POST", "/api/v1/connections/{other}/refresh", Kind::Api),
    ("GET", "/api/v1/connections/{seller}/pipeline", Kind::Api),
    ("PUT", "/api/v1/connections/{seller}/pipeline", Kind::Api),
    ("POST", "/api/v1/sales/orders", Kind::Api),
    ("GET", "/api/v1/sales/orders", Kind::Api),
    ("GET", "/api/v1/sales/orders/{id}", Kind::Api),
    ("PATCH", "/api/v1/sales/orders/{id}", Kind::Api),
    ("POST", "/api/v1/sales/orders/{id}/retry", Kind::Api),
    ("POST", "/api/v1/webhooks", Kind::Api),
    ("GET", "/api/v1/webhooks", Kind::Api),
    ("GET", "/api/v1/webhooks/{id}", Kind::Api),
    ("PATCH", "/api/v1/webhooks/{id}", Kind::Api),
    ("DELETE", "/api/v1/webhooks/{id}", Kind::Api),
    ("GET", "/api/v1/webhooks/{id}/deliveries", Kind::Api),
    ("GET", "/api/v1/events", Kind::Api),
    ("POST", "/api/v1/events/{id}/redeliver", Kind::Api),
    ("GET", "/api/v1/no-such-route", Kind::Api),
    ("POST", "/api/nothing", Kind::Api),
];

/// Words that must never reach a client: they would mean a panic or internal detail leaked.
const INTERNAL_WORDS: &[&str] = &[
    "panicked",
    "unwrap()",
    "stack backtrace",
    "diesel",
    "sqlite",
    "SQLSTATE",
    "DatabaseError",
    "r2d2",
    "src/",
    "invalid byte sequence",
];

const CODES: &[(&str, u16)] = &[
    ("INVALID_TOKEN", 401),
    ("INSUFFICIENT_PERMISSION", 403),
    ("RESOURCE_NOT_FOUND", 404),
    ("DUPLICATE_RESOURCE", 409),
    ("VALIDATION_ERROR", 422),
    ("BAD_REQUEST", 400),
    ("INVALID_API_VERSION", 400),
    ("RATE_LIMIT_EXCEEDED", 429),
];

/// Extra request headers, as raw bytes.
type Headers = Vec<(&'static str, Vec<u8>)>;

/// A service ready for abuse: a connected seller, an unlimited API key, a refresh secret.
pub struct Target {
    pub app: TestApp,
    pub key: String,
    pub webhook_token: String,
    pub session_token: String,
}

pub async fn target() -> Target {
    let app = spawn_app_with(env_vars(&[("REFRESH_SECRET", REFRESH_SECRET)])).await;
    let key = app.api_key_with_tier(Tier::Enterprise).await;
    let webhook_token = seed_connection(&app, SELLER, HOST).await.webhook_token;
    let session = create_session(&app, "seller-with-session", json!({})).await;
    let session_token = session["token"].as_str().unwrap().to_owned();
    Target {
        app,
        key,
        webhook_token,
        session_token,
    }
}

impl Target {
    pub fn fill(&self, template: &str) -> String {
        template
            .replace("{seller}", SELLER)
            .replace("{other}", "seller-never-connected")
            .replace("{token}", &self.webhook_token)
            .replace("{session}", &self.session_token)
            .replace("{id}", "1")
    }
}

/// One answer, read off the wire.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `request` as raw bytes (paths and headers no HTTP client would produce) and reads the answer.
/// The request must ask for `Connection: close`.
pub async fn raw(port: u16, request: &[u8]) -> Result<Answer, String> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        s.write_all(request)
            .await
            .map_err(|e| format!("write: {e}"))?;
        // Read until the answer is complete (the server may keep the socket open to drain a body it
        // did not read), or until it closes.
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some(a) = complete_answer(&buf) {
                return Ok(a);
            }
            let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return parse_answer(&buf);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .map_err(|_| "no answer within 30 s".to_owned())?
}

/// The answer, if `buf` already holds all of it (by `Content-Length` or the last chunk).
fn complete_answer(buf: &[u8]) -> Option<Answer> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let a = parse_answer(buf).ok()?;
    if let Some(len) = a
        .header("content-length")
        .and_then(|l| l.parse::<usize>().ok())
    {
        return (buf.len() >= end + 4 + len).then(|| Answer {
            body: buf[end + 4..end + 4 + len].to_vec(),
            ..a
        });
    }
    let chunked = a
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    (chunked && buf.ends_with(b"0\r\n\r\n")).then_some(a)
}

fn parse_answer(buf: &[u8]) -> Result<Answer, String> {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no complete head in {} bytes", buf.len()))?;
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let rest = &buf[end + 4..];
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Ok(Answer {
        status,
        headers,
        body,
    })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_text = String::from_utf8_lossy(&rest[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if rest.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// A request as bytes, with the API key when `auth` is set.
pub fn request(
    method: &str,
    target: &str,
    auth: Option<&str>,
    extra_headers: &[(&str, &[u8])],
    body: &[u8],
) -> Vec<u8> {
    let mut r = Vec::new();
    r.extend_from_slice(method.as_bytes());
    r.push(b' ');
    r.extend_from_slice(target.as_bytes());
    r.extend_from_slice(b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    if let Some(key) = auth {
        r.extend_from_slice(format!("Authorization: Bearer {key}\r\n").as_bytes());
    }
    for (k, v) in extra_headers {
        r.extend_from_slice(k.as_bytes());
        r.extend_from_slice(b": ");
        r.extend_from_slice(v);
        r.extend_from_slice(b"\r\n");
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        r.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    r.extend_from_slice(b"\r\n");
    r.extend_from_slice(body);
    r
}

/// The answer with its random tokens (runs of 20 or more letters and digits: request ids, nonces, CSRF
/// tokens) taken out: a random token may spell "r2d2" or "src" by chance, and is not internal detail (a CI run
/// met `req_ycfggdr2d2gmtzg2okxa`). Real leaks stand apart as words, so they survive.
fn without_random_tokens(text: &str) -> String {
    const TOKEN_LEN: usize = 20;
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= TOKEN_LEN {
            out.push_str("<token>");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

#[test]
fn random_tokens_are_taken_out_and_leaks_kept() {
    assert_eq!(
        without_random_tokens(r#"{"request_id":"req_ycfggdr2d2gmtzg2okxa"} r2d2 pool"#),
        r#"{"request_id":"req_<token>"} r2d2 pool"#
    );
    assert_eq!(
        without_random_tokens("at src/main.rs: DatabaseError"),
        "at src/main.rs: DatabaseError"
    );
}

/// The promise every route keeps, whatever it was sent.
pub fn check(kind: Kind, label: &str, a: &Answer) {
    assert!(
        a.status < 500,
        "{label}: answered {} {}",
        a.status,
        a.text()
    );
    if a.status < 400 {
        return;
    }
    let text = without_random_tokens(&a.text()).to_lowercase();
    for word in INTERNAL_WORDS {
        assert!(
            !text.contains(&word.to_lowercase()),
            "{label}: the answer leaks {word:?}: {text}"
        );
    }
    let content_type = a.header("content-type").unwrap_or_default().to_owned();
    match kind {
        Kind::Api => assert_contract_error(label, a),
        Kind::Page => {
            assert!(
                content_type.starts_with("text/html") || content_type.starts_with("text/plain"),
                "{label}: a human page, got {content_type:?}"
            );
            assert!(!a.body.is_empty(), "{label}: an empty page");
        }
        Kind::Machine => {
            // amoCRM, cron services and Prometheus get the contract's JSON where the route is JSON,
            // otherwise a short text; both must be readable.
            if content_type.starts_with("application/json") {
                assert_contract_error(label, a);
            }
        }
    }
}

/// The contract's error body: `{"error":{code,message,details,timestamp,request_id}}`, code matching status.
pub fn assert_contract_error(label: &str, a: &Answer) {
    let body: Value = serde_json::from_slice(&a.body)
        .unwrap_or_else(|e| panic!("{label}: {} is not JSON ({e}): {}", a.status, a.text()));
    let err = &body["error"];
    let code = err["code"].as_str().unwrap_or_default();
    assert!(
        CODES.iter().any(|(c, s)| *c == code
            && (*s == a.status
                || (a.status == 413 && *c == "BAD_REQUEST")
                || (a.status == 410 && *c == "RESOURCE_NOT_FOUND"))),
        "{label}: status {} with code {code:?}: {body}",
        a.status
    );
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{label}: message in {body}"
    );
    assert!(err["details"].is_object(), "{label}: details in {body}");
    let header_id = a.header("x-request-id").unwrap_or_default();
    assert!(!header_id.is_empty(), "{label}: X-Request-Id header");
    assert_eq!(
        err["request_id"].as_str(),
        Some(header_id),
        "{label}: request_id matches the header"
    );
    let ts = err["timestamp"].as_str().unwrap_or_default();
    assert!(
        chrono::DateTime::parse_from_rfc3339(ts).is_ok(),
        "{label}: RFC 3339 timestamp in {body}"
    );
}

/// `n` pieces made by `piece` from their index, joined with `sep`.
fn joined(n: usize, sep: &str, piece: impl Fn(usize) -> String) -> String {
    (0..n).map(piece).collect::<Vec<_>>().join(sep)
}

/// Bodies no well-behaved client sends: (name, content type, bytes).
pub fn hostile_bodies() -> Vec<(String, Option<&'static str>, Vec<u8>)> {
    let json = Some("application/json");
    let mut v: Vec<(String, Option<&'static str>, Vec<u8>)> = vec![
        ("empty".into(), json, vec![]),
        ("whitespace".into(), json, b"  \n\t ".to_vec()),
        ("null".into(), json, b"null".to_vec()),
        ("array".into(), json, b"[]".to_vec()),
        ("array of objects".into(), json, b"[{\"seller_id\":\"x\"}]".to_vec()),
        ("string".into(), json, b"\"hello\"".to_vec()),
        ("number".into(), json, b"42".to_vec()),
        ("truncated".into(), json, b"{\"seller_id\": \"a".to_vec()),
        ("trailing garbage".into(), json, b"{} {}".to_vec()),
        ("single quotes".into(), json, b"{'a': 1}".to_vec()),
        ("comment".into(), json, b"{/* x */}".to_vec()),
        ("invalid utf-8".into(), json, b"{\"seller_id\": \"\xff\xfe\xc0\x80\"}".to_vec()),
        ("utf-16 bom".into(), json, b"\xff\xfe{\x00}\x00".to_vec()),
        ("utf-8 bom".into(), json, b"\xef\xbb\xbf{}".to_vec()),
        ("lone surrogate".into(), json, br#"{"seller_id":"\ud800","url":"\udfff"}"#.to_vec()),
        ("nul in strings".into(), json, br#"{"seller_id":"a\u0000b","order_number":"\u0000","url":"http://x/\u0000","email":"\u0000","password":"\u0000","refresh_token":"\u0000","events":["\u0000"],"secret":"\u0000"}"#.to_vec()),
        ("control characters".into(), json, "{\"seller_id\":\"\u{1b}[31m\u{7}\u{8}\u{202e}\"}".as_bytes().to_vec()),
        ("huge numbers".into(), json, br#"{"seller_id":1e999999,"total_amount":1e400,"page":18446744073709551616,"id":-9223372036854775809}"#.to_vec()),
        ("nan-like strings".into(), json, br#"{"seller_id":"NaN","total_amount":"NaN","quantity":"Infinity","price":"-Infinity","active":"null"}"#.to_vec()),
        ("bare NaN".into(), json, b"{\"total_amount\": NaN, \"x\": Infinity}".to_vec()),
        ("negative zero and exponents".into(), json, br#"{"total_amount":-0.0,"items":[{"quantity":1e-400,"price":-1e308}]}"#.to_vec()),
        ("all nulls".into(), json, br#"{"seller_id":null,"order_number":null,"total_amount":null,"items":null,"customer":null,"status":null,"url":null,"events":null,"secret":null,"active":null,"email":null,"password":null,"refresh_token":null,"pipeline_id":null,"statuses":null,"return_url":null,"lang":null}"#.to_vec()),
        ("arrays instead of values".into(), json, br#"{"seller_id":[],"order_number":[1],"total_amount":[],"items":{},"customer":[],"status":[],"url":[],"events":"*x","secret":[],"active":[],"email":[],"password":{},"statuses":[],"pipeline_id":[]}"#.to_vec()),
        ("objects instead of values".into(), json, br#"{"seller_id":{},"order_number":{},"total_amount":{},"items":[{}],"customer":{"name":{}},"status":{},"url":{},"events":[{}],"secret":{},"active":{},"return_url":{},"lang":{}}"#.to_vec()),
        ("wrong types everywhere".into(), json, br#"{"seller_id":true,"order_number":1.5,"total_amount":"abc","items":[{"product_id":[],"name":1,"quantity":-1,"price":"x"}],"customer":{"name":"","phone":1,"email":false},"status":"paid!","currency":"","tags":"x","url":"javascript:alert(1)","events":["*",1],"active":"yes","secret":1,"statuses":{"paid":"x","pending":-1}}"#.to_vec()),
        ("duplicate keys".into(), json, br#"{"seller_id":"a","seller_id":"b","seller_id":null}"#.to_vec()),
        ("empty key".into(), json, br#"{"":"","\u0000":1}"#.to_vec()),
        ("sql and template injection".into(), json, br#"{"seller_id":"'; DROP TABLE amocrm_connections;--","order_number":"{{7*7}}","url":"http://127.0.0.1:1/${jndi:x}","email":"a@b' OR '1'='1","password":"' OR 1=1 --","return_url":"javascript:alert(1)","lang":"../../etc/passwd"}"#.to_vec()),
        ("form body as json".into(), json, b"seller_id=a&order_number=b".to_vec()),
        ("binary".into(), json, (0u8..=255).cycle().take(4096).collect()),
    ];
    let deep_array = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    v.push(("deeply nested arrays".into(), json, deep_array.into_bytes()));
    let deep_object = format!("{}1{}", "{\"a\":".repeat(50_000), "}".repeat(50_000));
    v.push((
        "deeply nested objects".into(),
        json,
        deep_object.into_bytes(),
    ));
    let deep_unclosed = "[{\"a\":".repeat(20_000);
    v.push(("deep and unclosed".into(), json, deep_unclosed.into_bytes()));
    let long_string = format!("{{\"seller_id\":\"{}\"}}", "a".repeat(200_000));
    v.push((
        "long string under the limit".into(),
        json,
        long_string.into_bytes(),
    ));
    let oversized = format!("{{\"seller_id\":\"{}\"}}", "a".repeat(2 * 1024 * 1024));
    v.push(("oversized".into(), json, oversized.into_bytes()));
    let many_keys = joined(20_000, ",", |i| format!("\"k{i}\":{i}"));
    v.push((
        "many keys".into(),
        json,
        format!("{{{many_keys}}}").into_bytes(),
    ));
    let many_items = joined(5_000, ",", |i| {
        format!("{{\"product_id\":\"p{i}\",\"name\":\"n\",\"quantity\":1,\"price\":1}}")
    });
    v.push((
        "thousands of items".into(),
        json,
        format!(r#"{{"seller_id":"{SELLER}","order_number":"n1","total_amount":1,"items":[{many_items}],"customer":{{"name":"x"}}}}"#)
            .into_bytes(),
    ));
    // The right JSON with the wrong labels.
    let good = br#"{"seller_id":"seller-hostile","order_number":"1","total_amount":1,"items":[{"product_id":"p","name":"n","quantity":1,"price":1}],"customer":{"name":"x"}}"#.to_vec();
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=zzz"),
        Some("application/json; charset=utf-16"),
        Some("application/json; charset=\u{ff}"),
        Some("application/xml"),
        Some(";;;==="),
    ] {
        v.push((format!("right JSON as {ct:?}"), ct, good.clone()));
    }
    // Form bodies, as amoCRM sends, but hostile.
    let form = Some("application/x-www-form-urlencoded");
    v.push(("form: empty".into(), form, vec![]));
    v.push((
        "form: percent garbage".into(),
        form,
        b"a=%&b=%zz&%%%=1&c=%ff%fe&d=%00".to_vec(),
    ));
    v.push(("form: only separators".into(), form, b"&&&===&=&".to_vec()));
    v.push(("form: wrong account".into(), form, b"account[id]=1&account[subdomain]=evil&leads[status][0][id]=1&leads[status][0][status_id]=142&leads[status][0][pipeline_id]=1".to_vec()));
    v.push((
        "form: account as array".into(),
        form,
        b"account[]=1&account[][]=2&leads=x&leads[status]=y".to_vec(),
    ));
    v.push((
        "form: invalid utf-8".into(),
        form,
        b"account[id]=\xff&account[subdomain]=\xc0\x80&leads[add][0][name]=\xfe".to_vec(),
    ));
    v.push(("form: huge ids".into(), form, b"account[id]=99999999999999999999999999&leads[status][0][id]=-1&leads[status][0][status_id]=1e9&leads[status][0][pipeline_id]=NaN".to_vec()));
    let deep_brackets = format!("a{}=1", "[a]".repeat(50_000));
    v.push((
        "form: deeply nested brackets".into(),
        form,
        deep_brackets.into_bytes(),
    ));
    let wide = joined(20_000, "&", |i| format!("leads[status][{i}][id]={i}"));
    v.push((
        "form: twenty thousand entities".into(),
        form,
        wide.into_bytes(),
    ));
    let big_index =
        b"leads[status][99999999999999999999][id]=1&leads[status][4294967296][id]=2".to_vec();
    v.push(("form: huge indexes".into(), form, big_index));
    v
}

/// Query strings no well-behaved client sends.
pub fn hostile_queries() -> Vec<String> {
    let mut q: Vec<String> = [
        "?%",
        "?%zz=%zz",
        "?%ff%fe=%c0%80",
        "?a=%00&seller_id=%00&status=%00&sync_state=%00&event=%00",
        "?page=0",
        "?page=-1",
        "?page=99999999999999999999999",
        "?page=1e3&per_page=1e3",
        "?per_page=0",
        "?per_page=101",
        "?per_page=NaN",
        "?page=%20&per_page=%09",
        "?page[]=1&per_page[x]=2",
        "?seller_id[]=a&seller_id[]=b",
        "?seller_id=a&seller_id=b",
        "?status=revoked%27%20OR%201%3D1--",
        "?status=%E2%80%AE&sync_state=%F0%9F%92%A5",
        "?after=-1&limit=-1",
        "?after=abc&limit=abc",
        "?after=99999999999999999999999&limit=99999999999999999999",
        "?after=evt_%00&limit=1e9",
        "?code=%00&state=%00&referer=%00&client_id=%00",
        "?code=&state=&referer=&client_id=&error=&from_widget=",
        "?state=a&state=b&referer=evil.example&referer=x.amocrm.ru",
        "?referer=127.0.0.1%3A1&state=x&code=y",
        "?referer=x.amocrm.ru%2F..%2F..%2Fevil&state=x&code=y",
        "?error=access_denied&state=%ff",
        "?client_uuid=%00&account_id=-1&signature=zz",
        "?client_uuid=a&account_id=99999999999999999999999&signature=%ff%fe",
        "?secret_key=%00",
        "?secret_key[]=x",
        "?lang=%ff&lang=ru",
        "?lang=../../../etc/passwd",
        "?&&&===&=&",
        "?a[b][c][d][e][f][g][h]=1",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    q.push(format!("?seller_id={}", "x".repeat(60_000)));
    q.push(format!("?state={}", "%41".repeat(10_000)));
    q
}

/// Path segments no well-behaved client sends.
pub fn hostile_segments() -> Vec<String> {
    let mut s: Vec<String> = [
        "%ff%fe",
        "%00",
        "%",
        "%2",
        "%zz",
        "..%2f..%2fetc%2fpasswd",
        "..",
        "%2e%2e",
        "%c0%ae%c0%ae",
        "-1",
        "0",
        "99999999999999999999999",
        "1.5",
        "1e9",
        "NaN",
        "null",
        "%E2%80%AE%F0%9F%92%A5",
        "a%20b",
        "%27%3B%20DROP%20TABLE%20orders%3B--",
        "evt_%00",
        "%5B%5D",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    s.push("x".repeat(8_000));
    s
}

#[tokio::test]
async fn hostile_bodies_at_every_route_get_a_4xx_in_the_routes_own_format() {
    let t = target().await;
    t.app.leaves_queued(
        Queue::Push,
        "a hostile body well-formed enough to be an order is accepted and left queued",
    );
    t.app.leaves_queued(
        Queue::Inbox,
        "hostile form bodies well-formed enough to be stored are left unprocessed",
    );
    let bodies = hostile_bodies();
    for (method, template, kind) in ROUTES {
        let path = t.fill(template);
        for (name, content_type, body) in &bodies {
            let label = format!("{method} {template} with {name}");
            let mut headers: Vec<(&str, &[u8])> = Vec::new();
            if let Some(ct) = content_type {
                headers.push(("Content-Type", ct.as_bytes()));
            }
            let auth = path.starts_with("/api/v1").then_some(t.key.as_str());
            let answer = raw(t.app.port, &request(method, &path, auth, &headers, body)).await;

            match answer {
                Ok(a) => check(*kind, &label, &a),
                // An oversized body may be refused before it is read in full; the server must
                // still be up, which the next request proves.
                Err(e) if body.len() > 1024 * 1024 => {
                    let _ = e;
                }
                Err(e) => panic!("{label}: {e}"),
            }
        }
    }
    assert_still_serving(&t).await;
}

#[tokio::test]
async fn hostile_queries_at_every_route_get_a_4xx_in_the_routes_own_format() {
    let t = target().await;
    for (method, template, kind) in ROUTES {
        let path = t.fill(template);
        for query in hostile_queries() {
            let label = format!("{method} {template}{}", short(&query));
            let auth = path.starts_with("/api/v1").then_some(t.key.as_str());
            let body: &[u8] = if *method == "GET" { b"" } else { b"{}" };
            let headers: [(&str, &[u8]); 1] = [("Content-Type", b"application/json")];
            let a = raw(
                t.app.port,
                &request(method, &format!("{path}{query}"), auth, &headers, body),
            )
            .await
            .unwrap_or_else(|e| panic!("{label}: {e}"));
            check(*kind, &label, &a);
        }
    }
    assert_still_serving(&t).await;
}

#[tokio::test]
async fn hostile_path_segments_at_every_route_get_a_4xx_in_the_routes_own_format() {
    let t = target().await;
    let mut paths: Vec<(String, String, Kind)> = Vec::new();
    for (method, template, kind) in ROUTES {
        for seg in hostile_segments() {
            let junk = template
                .replace("{seller}", &seg)
                .replace("{other}", &seg)
                .replace("{token}", &seg)
                .replace("{session}", &seg)
                .replace("{id}", &seg);
            if junk != *template {
                paths.push(((*method).to_owned(), junk, *kind));
            }
        }
    }
    for (raw_path, kind) in [
        ("/api/v1/%ff", Kind::Api),
        ("/api/%", Kind::Api),
        ("/api/v1/connections/", Kind::Api),
        ("//api//v1//connections", Kind::Page),
        ("/api/v1/connections/../../health", Kind::Api),
        ("/api/v1/sales/orders/1/../../../../health", Kind::Api),
        ("/api/v1/%2e%2e/%2e%2e/health", Kind::Api),
        ("/connect/", Kind::Page),
        ("/connect/a/b/c", Kind::Page),
        ("/webhooks/amocrm/", Kind::Machine),
        ("/webhooks/amocrm/%", Kind::Machine),
        ("/%ff%fe", Kind::Page),
        ("/%00", Kind::Page),
        ("/.env", Kind::Page),
        ("/../../etc/passwd", Kind::Page),
    ] {
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            paths.push((method.to_owned(), raw_path.to_owned(), kind));
        }
    }
    for (method, path, kind) in paths {
        let label = format!("{method} {}", short(&path));
        let auth = path.starts_with("/api/v1").then_some(t.key.as_str());
        let headers: [(&str, &[u8]); 1] = [("Content-Type", b"application/json")];
        let body: &[u8] = if method == "GET" { b"" } else { b"{}" };
        let a = raw(t.app.port, &request(&method, &path, auth, &headers, body))
            .await
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        check(kind, &label, &a);
    }
    assert_still_serving(&t).await;
}

#[tokio::test]
async fn hostile_headers_at_every_route_get_a_4xx_in_the_routes_own_format() {
    let t = target().await;
    let long_bearer = format!("Bearer {}", "k".repeat(6_000));
    let h = |name: &'static str, value: &[u8]| (name, value.to_vec());
    let one = |set: &'static str, name: &'static str, value: &[u8]| (set, vec![h(name, value)]);
    // A body declared JSON under the encoding `encoding`.
    let encoded = |set: &'static str, encoding: &[u8]| {
        let json = h("Content-Type", b"application/json");
        (set, vec![h("Content-Encoding", encoding), json])
    };
    let auth = |set: &'static str, value: &[u8]| one(set, "Authorization", value);
    let header_sets: Vec<(&str, Headers)> = vec![
        auth("invalid utf-8 bearer", b"Bearer \xff\xfe\x80"),
        auth("empty bearer", b"Bearer "),
        auth("bare scheme", b"Bearer"),
        auth("basic auth", b"Basic YTpi"),
        auth("long bearer", long_bearer.as_bytes()),
        (
            "two bearers",
            vec![
                h("Authorization", b"Bearer a"),
                h("Authorization", b"Bearer b"),
            ],
        ),
        auth("control character in a header", b"Bearer a\x01b"),
        one("api version v2", "X-API-Version", b"v2"),
        one("api version junk", "X-API-Version", b"\xff"),
        one("refresh secret junk", "X-Refresh-Secret", b"\xff\xfe"),
        one(
            "accept-language junk",
            "Accept-Language",
            b"\xff;q=abc, ,,;;, zz-ZZZZZZZZ;q=9",
        ),
        one("cookie junk", "Cookie", b"amo_browser=\xff; ===; ;;"),
        encoded("gzip that is not gzip", b"gzip"),
        encoded("unknown encoding", b"zstd, br, x-junk"),
        one(
            "request id injection",
            "X-Request-Id",
            b"\r\nSet-Cookie: x=y",
        ),
        (
            "forwarded junk",
            vec![
                h("X-Forwarded-For", b"\xff, , 999.999.999.999"),
                h("Forwarded", b"for=\"[::1"),
            ],
        ),
    ];
    for (method, template, kind) in ROUTES {
        let path = t.fill(template);
        for (name, set) in &header_sets {
            let label = format!("{method} {template} with {name}");
            let headers: Vec<(&str, &[u8])> = set.iter().map(|(k, v)| (*k, v.as_slice())).collect();
            let has_auth = set.iter().any(|(k, _)| *k == "Authorization");
            let auth = (path.starts_with("/api/v1") && !has_auth).then_some(t.key.as_str());
            let body: &[u8] = if *method == "GET" { b"" } else { b"{\"a\":1}" };
            let a = raw(t.app.port, &request(method, &path, auth, &headers, body))
                .await
                .unwrap_or_else(|e| panic!("{label}: {e}"));
            if name.starts_with("control character") {
                // Not HTTP at all (RFC 9110 §5.5): the HTTP parser refuses it before any route runs.
                assert_eq!(a.status, 400, "{label}");
            } else {
                check(*kind, &label, &a);
            }
        }
    }
    assert_still_serving(&t).await;
}

#[tokio::test]
async fn a_gzip_bomb_is_refused_without_inflating_it_in_memory() {
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use std::io::Write;
    let t = target().await;
    // 64 MiB of spaces compress to about 64 KiB; inflated it would dwarf the 256 KiB JSON limit.
    let mut enc = GzEncoder::new(Vec::new(), Compression::best());
    enc.write_all(b"{\"seller_id\":\"").unwrap();
    let chunk = vec![b' '; 1024 * 1024];
    for _ in 0..64 {
        enc.write_all(&chunk).unwrap();
    }
    enc.write_all(b"\"}").unwrap();
    let bomb = enc.finish().unwrap();
    for (method, template, kind) in ROUTES {
        if *method == "GET" {
            continue;
        }
        let path = t.fill(template);
        let auth = path.starts_with("/api/v1").then_some(t.key.as_str());
        let headers: [(&str, &[u8]); 2] = [
            ("Content-Type", b"application/json"),
            ("Content-Encoding", b"gzip"),
        ];
        let label = format!("{method} {template} with a gzip bomb");
        if let Ok(a) = raw(t.app.port, &request(method, &path, auth, &headers, &bomb)).await {
            check(*kind, &label, &a);
        }
    }
    assert_still_serving(&t).await;
}

/// After the abuse the service still answers and still works: `/health` is 200 and the API lists.
pub async fn assert_still_serving(t: &Target) {
    let health = t.app.get("/health").await;
    assert_eq!(health.status().as_u16(), 200, "still healthy");
    let list = t.app.get_as("/api/v1/connections", &t.key).await;
    assert_eq!(list.status().as_u16(), 200, "the API still works");
    let c = connection(&t.app, SELLER).await.unwrap();
    assert_eq!(
        c.status,
        ConnectionStatus::Active,
        "the abuse changed nothing"
    );
}

fn short(s: &str) -> String {
    if s.len() > 80 {
        format!(
            "{}… ({} bytes)",
            &s[..s.char_indices().nth(80).map(|(i, _)| i).unwrap_or(s.len())],
            s.len()
        )
    } else {
        s.to_owned()
    }
}

#[tokio::test]
async fn a_nul_character_in_a_path_query_or_json_field_is_refused_before_the_database_sees_it() {
    // PostgreSQL cannot store NUL in text: before this check a `%00` seller id was a 500 there.
    let t = target().await;
    for path in [
        "/api/v1/connections/a%00b",
        "/api/v1/connections?status=%00",
        "/api/v1/sales/orders?seller_id=x%00",
    ] {
        let a = raw(t.app.port, &request("GET", path, Some(&t.key), &[], b""))
            .await
            .unwrap();
        assert_eq!(a.status, 400, "{path}");
        assert_contract_error(path, &a);
    }
    let a = raw(
        t.app.port,
        &request("GET", "/connect/a%00b", None, &[], b""),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 400);
    let headers: [(&str, &[u8]); 1] = [("Content-Type", b"application/json")];
    let a = raw(
        t.app.port,
        &request(
            "POST",
            "/api/v1/connect-sessions",
            Some(&t.key),
            &headers,
            br#"{"seller_id":"seller\u0000x","return_url":"https://m.example/ok"}"#,
        ),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 422);
    let body: Value = serde_json::from_slice(&a.body).unwrap();
    assert!(body["error"]["details"]["seller_id"].is_array(), "{body}");
}

#[tokio::test]
async fn hostile_webhooks_naming_the_right_account_are_refused_or_stored_and_processing_survives_them()
 {
    let t = target().await;
    let c = connection(&t.app, SELLER).await.unwrap();
    let acc = format!(
        "account[id]={}&account[subdomain]={}",
        c.account_id, c.subdomain
    );
    let deep = format!("{acc}&leads[status][0]{}=1", "[x]".repeat(2_000));
    let bodies: Vec<String> = vec![
        format!("{acc}"),
        format!("{acc}&leads[status][0][id]=%00&leads[status][0][name]=a%00b&leads[status][0][status_id]=abc&leads[status][0][pipeline_id]=-1"),
        format!("{acc}&leads[status][0][id]=99999999999999999999999&leads[status][0][status_id]=1e999&leads[status][0][pipeline_id]=NaN&leads[status][0][price]=Infinity"),
        format!("{acc}&leads[status][0][id]=1&leads[status][0][status_id]=142&leads[status][0][pipeline_id]=1&leads[status][0][old_status_id]=&leads[status][0][custom_fields][0][values][0][value]=%ff%fe"),
        format!("{acc}&leads[status][]=1&leads[status][][id]=2&leads[add]=x&leads[update][0]=y"),
        format!("{acc}&leads[delete][0][id]=-5&contacts[add][0][id]=abc&unsorted[add][0][uid]=%00"),
        format!("{acc}&account[id]={}&account[id]=1", c.account_id),
        format!("{acc}&leads[status][0][id]={}", "9".repeat(5_000)),
        deep,
        (0..3_000)
            .map(|i| format!("leads[status][{i}][id]={i}&leads[status][{i}][status_id]=142&leads[status][{i}][pipeline_id]=1"))
            .fold(acc.clone(), |a, b| format!("{a}&{b}")),
    ];
    let path = format!("/webhooks/amocrm/{}", t.webhook_token);
    let headers: [(&str, &[u8]); 1] = [("Content-Type", b"application/x-www-form-urlencoded")];
    let mut statuses = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let label = format!("webhook body #{i}");
        let a = raw(
            t.app.port,
            &request("POST", &path, None, &headers, body.as_bytes()),
        )
        .await
        .unwrap_or_else(|e| panic!("{label}: {e}"));
        check(Kind::Machine, &label, &a);
        statuses.push(a.status);
    }
    assert!(
        statuses.contains(&200),
        "some of them are well-formed enough to be stored: {statuses:?}"
    );
    // Whatever was stored, the processor gets through it: no error, no stuck row.
    for _ in 0..3 {
        amocrm_connector::workers::webhook_processor::run_once(&t.app.state)
            .await
            .expect("the processor survives hostile bodies");
    }
    assert_still_serving(&t).await;
}

#[tokio::test]
async fn hostile_queries_forms_and_cookies_on_the_signed_in_dashboard_get_a_page_not_a_failure() {
    use amocrm_connector::services::operators::{self, Role};
    use secrecy::ExposeSecret;
    let t = target().await;
    let (id, _) = operators::create_or_update(
        &t.app.db,
        "hostile@example.com",
        None,
        Role::Admin,
        secrecy::SecretString::from("a-long-enough-password".to_owned()),
    )
    .await
    .unwrap();
    let session = operators::start_session(&t.app.db, id).await.unwrap();
    let cookie = format!("amc_session={}; tz_offset=%ff", session.expose_secret());
    let form: [(&str, &[u8]); 2] = [
        ("Content-Type", b"application/x-www-form-urlencoded"),
        ("Cookie", cookie.as_bytes()),
    ];
    for (method, template, _) in ROUTES.iter().filter(|r| r.1.starts_with("/dashboard")) {
        let path = t.fill(template);
        for query in hostile_queries() {
            let label = format!("signed in: {method} {template}{}", short(&query));
            let body: &[u8] = if *method == "GET" {
                b""
            } else {
                b"csrf=%ff&csrf=&seller_id=%00&x[]=1"
            };
            let a = raw(
                t.app.port,
                &request(method, &format!("{path}{query}"), None, &form, body),
            )
            .await
            .unwrap_or_else(|e| panic!("{label}: {e}"));
            check(Kind::Page, &label, &a);
        }
        for tz in ["-99999999999", "NaN", "%00", "1e308", "-0", "840"] {
            let label = format!("signed in: {method} {template} with tz_offset={tz}");
            let c = format!("amc_session={}; tz_offset={tz}", session.expose_secret());
            let headers: [(&str, &[u8]); 1] = [("Cookie", c.as_bytes())];
            let a = raw(t.app.port, &request(method, &path, None, &headers, b""))
                .await
                .unwrap_or_else(|e| panic!("{label}: {e}"));
            check(Kind::Page, &label, &a);
            // `{id}` is a made-up id: its page is a 404 page, which `check` has read as a page.
            if *method == "GET" && !template.ends_with("login") && !template.contains("{id}") {
                assert_eq!(
                    a.status, 200,
                    "{label}: the session is good, the page renders"
                );
            }
        }
    }
    assert_still_serving(&t).await;
}
