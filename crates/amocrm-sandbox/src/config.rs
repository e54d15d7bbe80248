//! Start-up configuration of a sandbox: integrations, seeded accounts, limits, webhook format, clock.

use std::net::SocketAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Everything a sandbox needs to start. `SandboxConfig::default()` is a working sandbox on a free port
/// with three seeded accounts and no integrations (add them with `SandboxHandle::add_integration`).
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Where to listen; `127.0.0.1:0` (a free port) by default.
    pub listen: SocketAddr,
    /// The registered integrations (client id, secret, redirect URI, optional disconnect hook).
    pub integrations: Vec<Integration>,
    /// Account hosts created at start, e.g. `sellerone.amocrm.ru`.
    pub accounts: Vec<String>,
    /// Requests admitted per account in any sliding 1-second window (amoCRM: 7). 0 disables the limit.
    pub rate_limit_rps: u32,
    /// Shape of outgoing lead webhooks.
    pub webhook_format: WebhookFormat,
    /// Sandbox time at start (it then advances with the real clock). `None`: the real time.
    pub now: Option<DateTime<Utc>>,
    /// A destination is disabled after more than this many failed deliveries within 2 hours, when the
    /// latest one also failed (amoCRM: 100).
    pub webhook_disable_after: u32,
    /// amoCRM's deadline for a webhook answer (2 s).
    pub webhook_timeout: Duration,
    /// Actix worker threads serving HTTP.
    pub workers: usize,
    /// Rules no amoCRM source states; strict by default.
    pub rules: Rules,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            integrations: Vec::new(),
            accounts: DEFAULT_ACCOUNTS.iter().map(|s| (*s).to_owned()).collect(),
            rate_limit_rps: 7,
            webhook_format: WebhookFormat::Full,
            now: None,
            webhook_disable_after: 100,
            webhook_timeout: Duration::from_secs(2),
            workers: 2,
            rules: Rules::default(),
        }
    }
}

/// Rules the sandbox enforces although no amoCRM source states them. Each is on by default: where
/// amoCRM's behaviour is unknown, code tested here should cope with the stricter reading. Turn one off
/// to see whether a client fails only because of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Rules {
    /// A lead `PATCH` carrying `_embedded.contacts` or `_embedded.companies` is refused (400
    /// "Links cannot be changed here."). Off: they are ignored and the links stay as they were.
    pub refuse_lead_patch_links: bool,
    /// Token-endpoint requests count toward the account's per-second limit like API calls.
    /// Off: they are neither counted nor refused with 429.
    pub rate_limit_token_endpoint: bool,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            refuse_lead_patch_links: true,
            rate_limit_token_endpoint: true,
        }
    }
}

/// The accounts every default sandbox starts with.
pub const DEFAULT_ACCOUNTS: [&str; 3] = [
    "sellerone.amocrm.ru",
    "sellertwo.amocrm.ru",
    "sellerthree.amocrm.ru",
];

/// One registered amoCRM integration (what the "Integrations" settings page holds).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Integration {
    /// The integration's client id.
    pub client_id: String,
    /// The integration's client secret.
    pub client_secret: String,
    /// The integration's redirect URI; amoCRM requires it to match exactly.
    pub redirect_uri: String,
    /// The "hook to disable integration" URL; `None`: no uninstall hook is sent.
    #[serde(default)]
    pub disconnect_url: Option<String>,
}

impl Integration {
    /// An integration without an uninstall hook.
    pub fn new(
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
        redirect_uri: impl Into<String>,
    ) -> Self {
        Self {
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            redirect_uri: redirect_uri.into(),
            disconnect_url: None,
        }
    }

    /// Sets the uninstall hook URL.
    pub fn with_disconnect_url(mut self, url: impl Into<String>) -> Self {
        self.disconnect_url = Some(url.into());
        self
    }
}

/// Which body amoCRM sends to webhook destinations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// The account webhook format (`leads[status][0][…]` with every lead field, custom fields, account block).
    #[default]
    Full,
    /// The Digital Pipeline "send webhook" compact format (`id, status_id, pipeline_id, old_status_id,
    /// old_pipeline_id` + `account[id|subdomain]`); only stage changes and new leads are sent.
    DigitalPipeline,
}

/// Fault switches of one account, settable at run time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Added before each admitted request to the account is handled.
    pub latency_ms: u64,
    /// The next N admitted requests are answered 500 (amoCRM's body) without being applied.
    pub fail_next: u32,
    /// The next N admitted requests are applied, then never answered: the connection is held open until
    /// the client gives up (or the sandbox stops).
    pub drop_after_write_next: u32,
    /// The next N requests are answered 429 without being applied (they consume no rate budget).
    pub force_429_next: u32,
    /// The `retry_after` (seconds) those forced 429s carry; 0 means 1.
    pub force_429_retry_after_secs: u64,
    /// This account's clock runs this many seconds ahead (expires codes and tokens).
    pub clock_offset_secs: i64,
    /// The next N links of `POST leads/link` batches are silently not made, although the answer lists
    /// them (amoCRM was seen to link 91 of 100): callers must read the links back.
    pub drop_links_next: u32,
    /// In every `POST leads/link` batch, this percentage of the links (rounded down, spread over the batch)
    /// is silently not made.
    pub drop_links_percent: u32,
}
