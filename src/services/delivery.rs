//! Delivering events to subscribers: the signed POST, what counts as delivered, the retry schedule.
//!
//! The body is exactly the stored payload, signed with `X-Signature: sha256=<hex HMAC-SHA256(secret, body)>`.
//! A 2xx within [`DELIVERY_TIMEOUT`] is delivery; anything else is retried on [`RETRY_SCHEDULE`] (with
//! jitter), then the delivery is `failed` until someone re-drives it.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use chrono::{NaiveDateTime, TimeDelta};
use hmac::{KeyInit, Mac};
use rand::Rng;
use secrecy::ExposeSecret;

use crate::domain::outbound::{self, TargetPolicy};
use crate::storage::deliveries::{AttemptRecord, ClaimedDelivery, NextStep};
use crate::storage::subscriptions::secret_aad;
use crate::storage::{Db, StorageError, cipher::Keyring};

/// How long a subscriber has to answer by default (`DELIVERY_TIMEOUT` overrides it).
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Waits after the 1st, 2nd … failed attempt; after the last one the delivery is `failed`.
pub const RETRY_SCHEDULE: [Duration; 7] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
];
/// Attempts in total before `failed`: the first plus one per schedule entry.
pub const MAX_ATTEMPTS: i32 = RETRY_SCHEDULE.len() as i32 + 1;
/// Jitter applied to each wait: ±10 %.
const JITTER: f64 = 0.10;
/// Most of a subscriber's answer we read (only to keep the connection reusable).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Wakes the delivery worker when events were recorded (it also polls, so a missed wake-up only delays).
pub fn new_event_signal() -> &'static tokio::sync::Notify {
    static SIGNAL: OnceLock<tokio::sync::Notify> = OnceLock::new();
    SIGNAL.get_or_init(tokio::sync::Notify::new)
}

/// `sha256=<lowercase hex HMAC-SHA256(secret, body)>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail; an empty tag would never verify anyway.
    let tag = match <HmacSha256 as KeyInit>::new_from_slice(secret) {
        Ok(mut m) => {
            m.update(body);
            m.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    };
    let mut out = String::with_capacity(7 + tag.len() * 2);
    out.push_str("sha256=");
    for b in tag {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Where a delivery goes after its `attempts_before + 1`-th attempt.
pub fn next_step(attempts_before: i32, delivered: bool, now: NaiveDateTime) -> NextStep {
    if delivered {
        return NextStep::Delivered;
    }
    let index = usize::try_from(attempts_before.max(0)).unwrap_or(usize::MAX);
    match RETRY_SCHEDULE.get(index) {
        Some(wait) => {
            let factor = 1.0 + rand::rng().random_range(-JITTER..=JITTER);
            let millis = (wait.as_millis() as f64 * factor).round() as i64;
            NextStep::RetryAt(now + TimeDelta::milliseconds(millis.max(1000)))
        }
        None => NextStep::Failed,
    }
}

/// How deliveries leave the process: one HTTP client (connection reuse) whose DNS answers pass the target
/// policy, so a subscriber's name that resolves to an internal address is never connected to (checked on
/// every connection, not once at creation, which a DNS rebinding would defeat). Redirects are not followed:
/// a 3xx is a failure.
pub struct Outbound {
    policy: Arc<TargetPolicy>,
    client: reqwest::Client,
}

impl Outbound {
    pub fn new(policy: TargetPolicy) -> Self {
        let policy = Arc::new(policy);
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(GuardedResolver {
                policy: policy.clone(),
            }))
            .user_agent(concat!(
                "amocrm-connector/",
                env!("CARGO_PKG_VERSION"),
                " (events)"
            ))
            .pool_max_idle_per_host(16)
            .build()
            .unwrap_or_default();
        Self { policy, client }
    }

    pub fn policy(&self) -> &TargetPolicy {
        &self.policy
    }
}

/// The system resolver, keeping only addresses the policy allows for the name.
struct GuardedResolver {
    policy: Arc<TargetPolicy>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let allowed: Vec<SocketAddr> = found
                .filter(|a| policy.allows_address(&host, a.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(Box::new(Refused) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A subscriber's host resolved only to addresses the policy refuses.
#[derive(Debug, thiserror::Error)]
#[error("the subscriber's host {}", outbound::NOT_PUBLIC)]
struct Refused;

/// Whether a request failed because the resolver refused every address of the host.
fn refused(e: &reqwest::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<Refused>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// The result of one attempt, before it is stored.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub delivered: bool,
    pub record: AttemptRecord,
}

/// Sends one event body to one URL with the contract's headers.
pub async fn post_signed(
    out: &Outbound,
    timeout: Duration,
    url: &str,
    event_id: &str,
    payload: &str,
    secret: &[u8],
    now: NaiveDateTime,
) -> Attempt {
    let started = Instant::now();
    let body = payload.as_bytes().to_vec();
    let timestamp = crate::storage::from_db(now).timestamp();
    let host = url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default();
    if out.policy.check_host(&host).is_err() {
        // An address literal (no DNS answer to filter), or a policy narrowed since the subscription was made.
        return Attempt {
            delivered: false,
            record: AttemptRecord {
                status_code: None,
                error: Some(format!("not sent: the URL {}", outbound::NOT_PUBLIC)),
                duration_ms: 0,
                attempted_at: now,
            },
        };
    }
    let result = out
        .client
        .post(url)
        .timeout(timeout)
        .header("Content-Type", "application/json")
        .header("X-Webhook-Id", event_id)
        .header("X-Webhook-Timestamp", timestamp.to_string())
        .header("X-Signature", signature(secret, &body))
        .body(body)
        .send()
        .await;
    let (status, error) = answer_of(result).await;
    let delivered = status.is_some_and(|s| (200..300).contains(&s));
    Attempt {
        delivered,
        record: AttemptRecord {
            status_code: status,
            error,
            duration_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
            attempted_at: now,
        },
    }
}

/// The status and error of one attempt's answer.
async fn answer_of(
    result: Result<reqwest::Response, reqwest::Error>,
) -> (Option<i32>, Option<String>) {
    match result {
        Ok(mut resp) => {
            let status = resp.status();
            // Drain a bounded part of the answer so the connection can be reused.
            let mut read = 0usize;
            while read < MAX_RESPONSE_BYTES {
                match resp.chunk().await {
                    Ok(Some(c)) => read += c.len(),
                    _ => break,
                }
            }
            let error = (!status.is_success()).then(|| {
                if status.is_redirection() {
                    format!("HTTP {} (redirects are not followed)", status.as_u16())
                } else {
                    format!("HTTP {}", status.as_u16())
                }
            });
            (Some(i32::from(status.as_u16())), error)
        }
        Err(e) => {
            let reason = if e.is_timeout() {
                format!("no answer within {} s", DELIVERY_TIMEOUT.as_secs())
            } else if refused(&e) {
                format!("not sent: the subscriber's host {}", outbound::NOT_PUBLIC)
            } else if e.is_connect() {
                "could not connect".to_owned()
            } else {
                // Without the URL: it is the subscriber's and may carry its own token.
                e.without_url().to_string()
            };
            (None, Some(reason))
        }
    }
}

/// [`post_signed`] with the subscription's sealed secret (`(subscription id, secret_enc)`), opened here;
/// a secret the configured keys cannot open is a failed attempt that sends nothing.
#[expect(
    clippy::too_many_arguments,
    reason = "the delivery worker and the test event pass the same parts of one attempt"
)]
pub async fn post_sealed(
    out: &Outbound,
    timeout: Duration,
    keys: &Keyring,
    (subscription_id, secret_enc): (&str, &[u8]),
    url: &str,
    event_id: &str,
    payload: &str,
    now: NaiveDateTime,
) -> Attempt {
    match keys.decrypt(secret_aad(subscription_id), secret_enc) {
        Ok(secret) => {
            let secret = secret.expose_secret().as_bytes();
            post_signed(out, timeout, url, event_id, payload, secret, now).await
        }
        Err(_) => Attempt {
            delivered: false,
            record: AttemptRecord {
                status_code: None,
                error: Some(
                    "the subscription's secret cannot be decrypted with the configured keys".into(),
                ),
                duration_ms: 0,
                attempted_at: now,
            },
        },
    }
}

/// What became of one claimed delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    Retrying,
    Failed,
    /// The lease was lost meanwhile; another instance owns the row now.
    LeaseLost,
}

/// One finished attempt, waiting to be recorded.
#[derive(Debug, Clone)]
pub struct Finished {
    pub delivery_id: i64,
    pub subscription_id: String,
    pub attempts_before: i32,
    pub attempt: Attempt,
}

/// Sends one claimed delivery (no database work: the caller records a batch of these at once).
#[tracing::instrument(skip_all, fields(seller_id = %claimed.delivery.seller_id, delivery_id = claimed.delivery.id))]
pub async fn send(
    out: &Outbound,
    timeout: Duration,
    keys: &Keyring,
    claimed: &ClaimedDelivery,
    now: NaiveDateTime,
) -> Finished {
    let sub_id = &claimed.delivery.subscription_id;
    let attempt = post_sealed(
        out,
        timeout,
        keys,
        (sub_id, &claimed.secret_enc),
        &claimed.url,
        &claimed.event_id,
        &claimed.payload,
        now,
    )
    .await;
    Finished {
        delivery_id: claimed.delivery.id,
        subscription_id: sub_id.clone(),
        attempts_before: claimed.delivery.attempts,
        attempt,
    }
}

/// Stores a batch of attempts and their next steps in one transaction.
#[tracing::instrument(skip_all, fields(deliveries = finished.len()))]
pub async fn record(
    db: &Db,
    owner: &str,
    finished: &[Finished],
    now: NaiveDateTime,
) -> Result<Vec<Outcome>, StorageError> {
    if finished.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<(i64, AttemptRecord, NextStep)> = finished
        .iter()
        .map(|f| {
            (
                f.delivery_id,
                f.attempt.record.clone(),
                next_step(f.attempts_before, f.attempt.delivered, now),
            )
        })
        .collect();
    let steps: Vec<NextStep> = rows.iter().map(|r| r.2).collect();
    let kept = db.deliveries().record_attempts(owner, rows).await?;
    Ok(kept
        .into_iter()
        .zip(steps)
        .map(|(kept, next)| {
            let outcome = match (kept, next) {
                (false, _) => Outcome::LeaseLost,
                (true, NextStep::Delivered) => Outcome::Delivered,
                (true, NextStep::RetryAt(_)) => Outcome::Retrying,
                (true, NextStep::Failed) => Outcome::Failed,
            };
            crate::metrics::delivery_outcome(match outcome {
                Outcome::Delivered => "delivered",
                Outcome::Retrying => "retry",
                Outcome::Failed => "failed",
                Outcome::LeaseLost => "lease_lost",
            });
            outcome
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_name_resolving_only_to_internal_addresses_is_never_connected_to() {
        use reqwest::dns::Resolve;
        let strict = GuardedResolver {
            policy: Arc::new(TargetPolicy::default()),
        };
        let name = |n: &str| n.parse::<reqwest::dns::Name>().expect("a name");
        assert!(strict.resolve(name("localhost")).await.is_err());
        let allowed = GuardedResolver {
            policy: Arc::new(TargetPolicy::new(["localhost"])),
        };
        let addrs: Vec<SocketAddr> = allowed
            .resolve(name("localhost"))
            .await
            .expect("allowed")
            .collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()) && !addrs.is_empty());
    }

    #[test]
    fn the_signature_is_lowercase_hex_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn the_schedule_backs_off_then_gives_up_after_eight_attempts() {
        let now = crate::storage::now();
        let NextStep::RetryAt(first) = next_step(0, false, now) else {
            panic!("first failure retries");
        };
        let wait = (first - now).num_milliseconds();
        assert!((4_500..=5_500).contains(&wait), "{wait}");
        let NextStep::RetryAt(last) = next_step(6, false, now) else {
            panic!("seventh failure retries");
        };
        let hours = (last - now).num_minutes() as f64 / 60.0;
        assert!((9.0..=11.0).contains(&hours), "{hours}");
        assert_eq!(next_step(7, false, now), NextStep::Failed);
        assert_eq!(next_step(3, true, now), NextStep::Delivered);
    }
}
