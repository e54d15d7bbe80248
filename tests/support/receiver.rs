//! The marketplace's event receiver: a tiny actix server on 127.0.0.1, port 0, that remembers every
//! delivery, checks its signature as a real receiver would and answers as told.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use hmac::{KeyInit, Mac};
use serde_json::Value;

use super::wait::wait_until;

/// How the receiver answers the n-th request (0-based).
#[derive(Clone, Copy, Debug)]
pub enum Behaviour {
    Ok,
    /// 500 for the first `n` requests, then 200.
    FailFirst(usize),
    /// Never answers.
    Hang,
}

/// One delivery as received.
#[derive(Debug, Clone)]
pub struct Hit {
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    pub signature_ok: bool,
    pub status_sent: u16,
}

impl Hit {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    /// The event id (`X-Webhook-Id`): receivers dedupe by it.
    pub fn id(&self) -> String {
        self.headers
            .get("x-webhook-id")
            .cloned()
            .unwrap_or_default()
    }

    /// The event's name (`event` in the body).
    pub fn event(&self) -> String {
        self.json()["event"].as_str().unwrap_or_default().to_owned()
    }
}

struct ReceiverState {
    secret: String,
    behaviour: Mutex<Behaviour>,
    count: AtomicUsize,
    hits: Mutex<Vec<Hit>>,
}

pub struct Receiver {
    pub url: String,
    state: Arc<ReceiverState>,
    handle: actix_web::dev::ServerHandle,
}

/// Checks `X-Signature` the way a marketplace receiver would: HMAC-SHA256 of the raw body, constant time.
fn verify(secret: &str, body: &[u8], header: Option<&str>) -> bool {
    let Some(hex) = header.and_then(|h| h.strip_prefix("sha256=")) else {
        return false;
    };
    if hex.len() != 64 || hex.chars().any(|c| c.is_ascii_uppercase()) {
        return false;
    }
    let Ok(tag) = (0..32)
        .map(|i| u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
    else {
        return false;
    };
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .expect("any key length");
    mac.update(body);
    mac.verify_slice(&tag).is_ok()
}

async fn receive(req: HttpRequest, body: web::Bytes, st: web::Data<ReceiverState>) -> HttpResponse {
    let n = st.count.fetch_add(1, Ordering::SeqCst);
    let behaviour = *st.behaviour.lock().expect("behaviour");
    let status = match behaviour {
        Behaviour::Ok => 200,
        Behaviour::FailFirst(k) if n < k => 500,
        Behaviour::FailFirst(_) => 200,
        Behaviour::Hang => 0,
    };
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                v.to_str().unwrap_or("").to_owned(),
            )
        })
        .collect::<HashMap<_, _>>();
    let signature_ok = verify(
        &st.secret,
        &body,
        headers.get("x-signature").map(String::as_str),
    );
    st.hits.lock().expect("hits").push(Hit {
        headers,
        body: body.to_vec(),
        signature_ok,
        status_sent: status,
    });
    if status == 0 {
        std::future::pending::<()>().await;
    }
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).expect("a status")).finish()
}

impl Receiver {
    /// Starts a receiver verifying signatures with `secret`.
    pub async fn start(secret: &str, behaviour: Behaviour) -> Self {
        let state = Arc::new(ReceiverState {
            secret: secret.to_owned(),
            behaviour: Mutex::new(behaviour),
            count: AtomicUsize::new(0),
            hits: Mutex::new(Vec::new()),
        });
        let data = web::Data::from(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .default_service(web::to(receive))
        })
        .workers(2)
        .disable_signals()
        .shutdown_timeout(0)
        .bind(("127.0.0.1", 0))
        .expect("the receiver binds");
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Self {
            url: format!("http://127.0.0.1:{port}/hooks/marketplace"),
            state,
            handle,
        }
    }

    /// Every request so far, oldest first.
    pub fn hits(&self) -> Vec<Hit> {
        self.state.hits.lock().expect("hits").clone()
    }

    pub fn set_behaviour(&self, b: Behaviour) {
        *self.state.behaviour.lock().expect("behaviour") = b;
    }

    /// Waits (bounded) until at least `n` requests arrived; what arrived either way.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Hit> {
        let _ = wait_until(within, &format!("{n} deliveries"), || async {
            self.hits().len() >= n
        })
        .await;
        self.hits()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        // The stop command is sent by `stop` itself; its future only awaits the end.
        drop(self.handle.stop(false));
    }
}
