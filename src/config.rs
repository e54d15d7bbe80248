//! Settings read from the environment (and an optional `.env`), validated once at start-up.
//!
//! Every value is checked here so a bad deployment fails fast with a one-line reason instead of failing
//! later in a request. Secrets are `SecretString`/`Keyring` and never appear in `Debug`.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::domain::platform::Platform;
use crate::storage::cipher::Keyring;

pub use crate::storage::DatabaseUrl;

/// Output format of the log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// The stage names the connector gives the pipeline it provisions, keyed by internal status.
#[derive(Clone, Debug)]
pub struct StageNames {
    pub pipeline: String,
    pub pending: String,
    pub awaiting_payment: String,
    pub paid: String,
    pub shipping: String,
    pub completed: String,
    pub cancelled: String,
}

impl Default for StageNames {
    fn default() -> Self {
        // Uzbek by default: the marketplace's sellers work in Uzbek.
        Self {
            pipeline: "Marketplace buyurtmalari".to_owned(),
            pending: "Yangi buyurtma".to_owned(),
            awaiting_payment: "To'lov kutilmoqda".to_owned(),
            paid: "To'landi".to_owned(),
            shipping: "Yetkazilmoqda".to_owned(),
            completed: "Yakunlandi".to_owned(),
            cancelled: "Bekor qilindi".to_owned(),
        }
    }
}

/// Everything the service needs to know about its environment.
#[derive(Clone)]
pub struct Settings {
    pub database_url: DatabaseUrl,
    pub database_pool_size: u32,
    pub listen_addr: SocketAddr,
    pub public_base_url: Url,
    pub amocrm_client_id: Option<String>,
    pub amocrm_client_secret: Option<SecretString>,
    pub amocrm_redirect_uri: Url,
    pub amocrm_authorize_url: Url,
    pub amocrm_allowed_domains: Vec<String>,
    pub amocrm_account_url_template: String,
    pub amocrm_rate_limit_rps: u32,
    pub amocrm_request_timeout: Duration,
    /// The Kommo integration (`KOMMO_*`), when configured; it shares the account URL template, the rate
    /// limit and the timeouts with amoCRM's.
    pub kommo_client_id: Option<String>,
    pub kommo_client_secret: Option<SecretString>,
    pub kommo_authorize_url: Url,
    pub kommo_allowed_domains: Vec<String>,
    /// How often a suspended connection (amoCRM answered 402 or 403) is probed (`SUSPENDED_PROBE_INTERVAL`).
    pub suspended_probe_interval: Duration,
    /// The longest wait between two tries of failed push work (`PUSH_RETRY_MAX`): the backoff after 5xx,
    /// timeouts and lost answers doubles from one second up to it.
    pub push_retry_max: Duration,
    /// Hosts or addresses event subscriptions may target although loopback, private or link-local
    /// (`WEBHOOK_ALLOWED_HOSTS`; see `domain::outbound`).
    pub webhook_allowed_hosts: Vec<String>,
    /// The longest any database call waits for a connection (`DATABASE_TIMEOUT`): while the database is
    /// unreachable, requests answer 503 within it instead of hanging.
    pub database_timeout: Duration,
    pub allow_shared_accounts: bool,
    pub token_keys: Option<Keyring>,
    pub refresh_secret: Option<SecretString>,
    pub refresh_schedule: Option<String>,
    pub refresh_ahead: Duration,
    pub refresh_concurrency: usize,
    pub log_format: LogFormat,
    pub return_url_allowlist: Vec<String>,
    pub stage_names: StageNames,
    pub lead_name_template: String,
    pub event_retention: Duration,
    pub shutdown_timeout: Duration,
    pub metrics_token: Option<SecretString>,
    pub instance_id: String,
    /// Run the background workers in this process (tests turn them off and drive `run_once` themselves).
    pub run_workers: bool,
    /// Take the client address from `Forwarded`/`X-Forwarded-For` (only behind a proxy that sets them);
    /// otherwise the socket peer. Used by the per-address login throttle.
    pub trust_forwarded_for: bool,
    /// A link to the amoCRM sandbox's page, shown in the dashboard (set by `demo`).
    pub sandbox_page_url: Option<Url>,
    /// How long an event subscriber has to answer a delivery (CONTRACT §7: 10 s).
    pub delivery_timeout: Duration,
    /// Largest amoCRM webhook body accepted at the intake.
    pub webhook_max_body: usize,
    /// How long a client may take to send a request's body (`REQUEST_BODY_TIMEOUT`): a body trickled
    /// slower is cut with 408, so slow senders cannot hold the server's connections.
    pub request_body_timeout: Duration,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |s: &Option<SecretString>| if s.is_some() { "***" } else { "unset" };
        f.debug_struct("Settings")
            .field("database_url", &self.database_url.redacted())
            .field("database_pool_size", &self.database_pool_size)
            .field("listen_addr", &self.listen_addr)
            .field("public_base_url", &self.public_base_url.as_str())
            .field("amocrm_client_id", &self.amocrm_client_id)
            .field("amocrm_client_secret", &redact(&self.amocrm_client_secret))
            .field("amocrm_redirect_uri", &self.amocrm_redirect_uri.as_str())
            .field("amocrm_authorize_url", &self.amocrm_authorize_url.as_str())
            .field("amocrm_allowed_domains", &self.amocrm_allowed_domains)
            .field(
                "amocrm_account_url_template",
                &self.amocrm_account_url_template,
            )
            .field("amocrm_rate_limit_rps", &self.amocrm_rate_limit_rps)
            .field("kommo_client_id", &self.kommo_client_id)
            .field("kommo_client_secret", &redact(&self.kommo_client_secret))
            .field("kommo_authorize_url", &self.kommo_authorize_url.as_str())
            .field("kommo_allowed_domains", &self.kommo_allowed_domains)
            .field("suspended_probe_interval", &self.suspended_probe_interval)
            .field("push_retry_max", &self.push_retry_max)
            .field("webhook_allowed_hosts", &self.webhook_allowed_hosts)
            .field("database_timeout", &self.database_timeout)
            .field("token_keys", &self.token_keys)
            .field("refresh_secret", &redact(&self.refresh_secret))
            .field("refresh_schedule", &self.refresh_schedule)
            .field("refresh_ahead", &self.refresh_ahead)
            .field("log_format", &self.log_format)
            .field("metrics_token", &redact(&self.metrics_token))
            .field("instance_id", &self.instance_id)
            .field("run_workers", &self.run_workers)
            .field("trust_forwarded_for", &self.trust_forwarded_for)
            .finish_non_exhaustive()
    }
}

/// A configuration problem, printed as one line: `VARIABLE: reason`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration error: {variable}: {reason}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub reason: String,
}

impl ConfigError {
    pub fn new(variable: &'static str, reason: impl Into<String>) -> Self {
        Self {
            variable,
            reason: reason.into(),
        }
    }
}

/// A source of variables: the process environment, or a map in tests.
pub trait Env {
    fn get(&self, key: &str) -> Option<String>;
}

/// The real process environment (after `.env` has been loaded into it).
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl Env for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned()
    }
}

impl Env for HashMap<&str, &str> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).map(|v| (*v).to_owned())
    }
}

/// Loads `.env` from the working directory if present; real environment variables win.
pub fn load_dotenv() -> Result<(), ConfigError> {
    match dotenvy::dotenv() {
        Ok(_) => Ok(()),
        Err(e) if e.not_found() => Ok(()),
        Err(e) => Err(ConfigError::new(".env", e.to_string())),
    }
}

fn non_empty(env: &dyn Env, key: &str) -> Option<String> {
    env.get(key)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

fn parse_url(key: &'static str, raw: &str) -> Result<Url, ConfigError> {
    let url =
        Url::parse(raw).map_err(|e| ConfigError::new(key, format!("not a valid URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ConfigError::new(key, "must be an http(s) URL with a host"));
    }
    Ok(url)
}

fn parse_duration(key: &'static str, raw: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(raw)
        .map_err(|e| ConfigError::new(key, format!("not a duration like 1h or 30m ({e})")))
}

fn parse_bool(key: &'static str, raw: &str) -> Result<bool, ConfigError> {
    match raw.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::new(key, "expected true or false")),
    }
}

/// `key` as a duration, or `default` when it is unset or blank.
fn duration_var(
    env: &dyn Env,
    key: &'static str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    non_empty(env, key).map_or(Ok(default), |v| parse_duration(key, &v))
}

/// [`duration_var`], refused with `message` outside `range`.
fn duration_within(
    env: &dyn Env,
    key: &'static str,
    default: Duration,
    range: std::ops::RangeInclusive<Duration>,
    message: &'static str,
) -> Result<Duration, ConfigError> {
    let d = duration_var(env, key, default)?;
    if range.contains(&d) {
        Ok(d)
    } else {
        Err(ConfigError::new(key, message))
    }
}

/// `key` as a flag, or `default` when it is unset or blank.
fn bool_var(env: &dyn Env, key: &'static str, default: bool) -> Result<bool, ConfigError> {
    non_empty(env, key).map_or(Ok(default), |v| parse_bool(key, &v))
}

/// `key` as a URL, or `default` when it is unset or blank.
fn url_var(env: &dyn Env, key: &'static str, default: &str) -> Result<Url, ConfigError> {
    parse_url(
        key,
        &non_empty(env, key).unwrap_or_else(|| default.to_owned()),
    )
}

/// `key` as a domain list, or `default` when it is unset or blank.
fn domains_var(
    env: &dyn Env,
    key: &'static str,
    default: &str,
) -> Result<Vec<String>, ConfigError> {
    parse_domains(
        key,
        &non_empty(env, key).unwrap_or_else(|| default.to_owned()),
    )
}

/// `key` as a whole number of at least `min`, or `default` when it is unset or blank.
fn number_var<T>(env: &dyn Env, key: &'static str, min: T, default: T) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
{
    non_empty(env, key).map_or(Ok(default), |v| parse_number(key, &v, min))
}

fn parse_number<T>(key: &'static str, raw: &str, min: T) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
{
    let v: T = raw
        .parse()
        .map_err(|_| ConfigError::new(key, "expected a whole number"))?;
    if v < min {
        return Err(ConfigError::new(key, format!("must be at least {min}")));
    }
    Ok(v)
}

/// A comma list of host names or IP addresses (IPv6 in brackets or not); empty when unset.
fn parse_hosts(key: &'static str, raw: Option<&str>) -> Result<Vec<String>, ConfigError> {
    let mut out = Vec::new();
    for h in raw
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
    {
        let bare = h.trim_start_matches('[').trim_end_matches(']');
        let name_ok = bare
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        if bare.parse::<std::net::IpAddr>().is_err() && !name_ok {
            return Err(ConfigError::new(
                key,
                format!("`{h}` is not a host name or an IP address"),
            ));
        }
        out.push(bare.to_ascii_lowercase());
    }
    Ok(out)
}

/// A comma list of plain domains such as `amocrm.ru,kommo.com`, lowercased; at least one.
fn parse_domains(key: &'static str, raw: &str) -> Result<Vec<String>, ConfigError> {
    let domains: Vec<String> = raw
        .split(',')
        .map(|d| d.trim().to_ascii_lowercase())
        .filter(|d| !d.is_empty())
        .collect();
    if domains.is_empty() {
        return Err(ConfigError::new(key, "needs at least one domain"));
    }
    for d in &domains {
        let ok = d.split('.').count() >= 2
            && d.split('.')
                .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        if !ok {
            return Err(ConfigError::new(
                key,
                format!("`{d}` is not a domain like amocrm.ru"),
            ));
        }
    }
    Ok(domains)
}

/// The variable names of one platform's settings, for one-line errors.
struct PlatformVars {
    client_id: &'static str,
    client_secret: &'static str,
    allowed_domains: &'static str,
    all: &'static str,
}

impl PlatformVars {
    fn of(p: Platform) -> Self {
        match p {
            Platform::Amocrm => Self {
                client_id: "AMOCRM_CLIENT_ID",
                client_secret: "AMOCRM_CLIENT_SECRET",
                allowed_domains: "AMOCRM_ALLOWED_DOMAINS",
                all: "AMOCRM_*",
            },
            Platform::Kommo => Self {
                client_id: "KOMMO_CLIENT_ID",
                client_secret: "KOMMO_CLIENT_SECRET",
                allowed_domains: "KOMMO_ALLOWED_DOMAINS",
                all: "KOMMO_*",
            },
        }
    }
}

/// Validates a six-field (seconds first) cron expression the way the scheduler will read it.
pub fn validate_cron(expr: &str) -> Result<(), String> {
    if expr.split_whitespace().count() != 6 {
        return Err("expected 6 fields with seconds first, e.g. `0 */10 * * * *`".to_owned());
    }
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .build()
        .parse(expr)
        .map(|_| ())
        .map_err(|e| format!("invalid cron expression ({e})"))
}

impl Settings {
    /// Reads and validates every variable. Required-ness of the amoCRM credentials and keys is checked by
    /// the commands that need them (`require_*`), so `migrate` or `api-keys` run without them.
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let database_url = DatabaseUrl::parse(
            &non_empty(env, "DATABASE_URL")
                .unwrap_or_else(|| "sqlite://data/amocrm-connector.db".to_owned()),
        )
        .map_err(|reason| ConfigError::new("DATABASE_URL", reason))?;
        let pool_default = if database_url.is_sqlite() { 4 } else { 8 };
        let database_pool_size = number_var(env, "DATABASE_POOL_SIZE", 1u32, pool_default)?;
        let listen_raw =
            non_empty(env, "LISTEN_ADDR").unwrap_or_else(|| "127.0.0.1:8080".to_owned());
        let listen_addr: SocketAddr = listen_raw.parse().map_err(|_| {
            ConfigError::new("LISTEN_ADDR", format!("`{listen_raw}` is not HOST:PORT"))
        })?;
        let public_base_url = url_var(env, "PUBLIC_BASE_URL", "http://127.0.0.1:8080")?;
        let base = public_base_url.as_str().trim_end_matches('/').to_owned();
        let amocrm_redirect_uri = match non_empty(env, "AMOCRM_REDIRECT_URI") {
            Some(v) => parse_url("AMOCRM_REDIRECT_URI", &v)?,
            None => parse_url(
                "AMOCRM_REDIRECT_URI",
                &format!("{base}/oauth/amocrm/callback"),
            )?,
        };
        let amocrm_authorize_url =
            url_var(env, "AMOCRM_AUTHORIZE_URL", "https://www.amocrm.ru/oauth")?;
        let kommo_client_id = non_empty(env, "KOMMO_CLIENT_ID");
        // With Kommo configured beside amoCRM, each platform's hosts must be told apart: amoCRM's integration
        // then defaults to amocrm.ru alone (alone, it keeps serving all three domains as before).
        let amocrm_default_domains = if kommo_client_id.is_some() {
            "amocrm.ru"
        } else {
            "amocrm.ru,kommo.com,amocrm.com"
        };
        let amocrm_allowed_domains =
            domains_var(env, "AMOCRM_ALLOWED_DOMAINS", amocrm_default_domains)?;
        let kommo_authorize_url =
            url_var(env, "KOMMO_AUTHORIZE_URL", "https://www.kommo.com/oauth")?;
        let kommo_allowed_domains =
            domains_var(env, "KOMMO_ALLOWED_DOMAINS", "kommo.com,amocrm.com")?;
        let suspended_probe_interval = duration_within(
            env,
            "SUSPENDED_PROBE_INTERVAL",
            Duration::from_secs(3600),
            Duration::from_nanos(1)..=Duration::MAX,
            "must be more than 0",
        )?;
        let push_retry_max = duration_within(
            env,
            "PUSH_RETRY_MAX",
            Duration::from_secs(300),
            Duration::from_secs(1)..=Duration::from_secs(86_400),
            "must be between 1s and 24h",
        )?;
        let webhook_allowed_hosts = parse_hosts(
            "WEBHOOK_ALLOWED_HOSTS",
            non_empty(env, "WEBHOOK_ALLOWED_HOSTS").as_deref(),
        )?;
        let database_timeout = duration_within(
            env,
            "DATABASE_TIMEOUT",
            Duration::from_secs(5),
            Duration::from_millis(100)..=Duration::from_secs(60),
            "must be between 100ms and 60s",
        )?;
        let amocrm_account_url_template = non_empty(env, "AMOCRM_ACCOUNT_URL_TEMPLATE")
            .unwrap_or_else(|| "https://{host}".to_owned());
        if !amocrm_account_url_template.contains("{host}") {
            return Err(ConfigError::new(
                "AMOCRM_ACCOUNT_URL_TEMPLATE",
                "must contain {host}",
            ));
        }
        parse_url(
            "AMOCRM_ACCOUNT_URL_TEMPLATE",
            &amocrm_account_url_template.replace("{host}", "example.amocrm.ru"),
        )?;
        let amocrm_rate_limit_rps = number_var(env, "AMOCRM_RATE_LIMIT_RPS", 1u32, 7)?;
        let amocrm_request_timeout =
            duration_var(env, "AMOCRM_REQUEST_TIMEOUT", Duration::from_secs(20))?;
        let token_keys = match non_empty(env, "TOKEN_ENCRYPTION_KEYS") {
            Some(v) => Some(
                Keyring::parse(&v)
                    .map_err(|e| ConfigError::new("TOKEN_ENCRYPTION_KEYS", e.to_string()))?,
            ),
            None => None,
        };
        let refresh_schedule = match env.get("REFRESH_SCHEDULE") {
            None => Some("0 */10 * * * *".to_owned()),
            Some(v) if v.trim().is_empty() => None,
            Some(v) => {
                let v = v.trim().to_owned();
                validate_cron(&v).map_err(|e| ConfigError::new("REFRESH_SCHEDULE", e))?;
                Some(v)
            }
        };
        let refresh_ahead = duration_var(env, "REFRESH_AHEAD", Duration::from_secs(3600))?;
        // A refresh mostly waits on amoCRM (two calls: the exchange and the subscription check), so the
        // sweep's rate is this over amoCRM's answer time: at 50 ms, 64 gave 376 refreshes/s, 256 gave
        // 1,400 (`cargo bench --bench refresh_sweep -- --concurrency 256`).
        let refresh_concurrency = number_var(env, "REFRESH_CONCURRENCY", 1usize, 256)?;
        let log_format = match non_empty(env, "LOG_FORMAT").as_deref() {
            Some("json") => LogFormat::Json,
            Some("pretty") => LogFormat::Pretty,
            Some(other) => {
                return Err(ConfigError::new(
                    "LOG_FORMAT",
                    format!("`{other}` is not pretty or json"),
                ));
            }
            None if std::io::IsTerminal::is_terminal(&std::io::stderr()) => LogFormat::Pretty,
            None => LogFormat::Json,
        };
        let return_url_allowlist = non_empty(env, "CONNECT_RETURN_URL_ALLOWLIST")
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        for prefix in &return_url_allowlist {
            parse_url("CONNECT_RETURN_URL_ALLOWLIST", prefix)?;
        }
        let mut stage_names = StageNames::default();
        for (key, slot) in [
            ("PIPELINE_NAME", &mut stage_names.pipeline),
            ("STAGE_NAME_PENDING", &mut stage_names.pending),
            (
                "STAGE_NAME_AWAITING_PAYMENT",
                &mut stage_names.awaiting_payment,
            ),
            ("STAGE_NAME_PAID", &mut stage_names.paid),
            ("STAGE_NAME_SHIPPING", &mut stage_names.shipping),
            ("STAGE_NAME_COMPLETED", &mut stage_names.completed),
            ("STAGE_NAME_CANCELLED", &mut stage_names.cancelled),
        ] {
            if let Some(v) = non_empty(env, key) {
                if v.chars().count() > 255 {
                    return Err(ConfigError::new(
                        "STAGE_NAME_*",
                        format!("{key} is longer than 255 characters"),
                    ));
                }
                *slot = v;
            }
        }
        let lead_name_template = non_empty(env, "LEAD_NAME_TEMPLATE")
            .unwrap_or_else(|| "Buyurtma #{order_number}".to_owned());
        let event_retention =
            duration_var(env, "EVENT_RETENTION", Duration::from_secs(90 * 24 * 3600))?;
        let shutdown_timeout = duration_var(env, "SHUTDOWN_TIMEOUT", Duration::from_secs(30))?;
        let allow_shared_accounts = bool_var(env, "ALLOW_SHARED_ACCOUNTS", false)?;
        let secret =
            |key: &'static str, min_len: usize| -> Result<Option<SecretString>, ConfigError> {
                match non_empty(env, key) {
                    Some(v) if v.len() < min_len => Err(ConfigError::new(
                        key,
                        format!("must be at least {min_len} characters"),
                    )),
                    Some(v) => Ok(Some(SecretString::from(v))),
                    None => Ok(None),
                }
            };
        let instance_id = non_empty(env, "INSTANCE_ID").unwrap_or_else(|| {
            format!(
                "{}-{}",
                std::process::id(),
                crate::domain::ids::random_token(6)
            )
        });
        let run_workers = bool_var(env, "RUN_WORKERS", true)?;
        let trust_forwarded_for = bool_var(env, "TRUST_FORWARDED_FOR", false)?;
        let sandbox_page_url = match non_empty(env, "SANDBOX_PAGE_URL") {
            Some(v) => Some(parse_url("SANDBOX_PAGE_URL", &v)?),
            None => None,
        };
        let delivery_timeout = duration_within(
            env,
            "DELIVERY_TIMEOUT",
            Duration::from_secs(10),
            Duration::from_nanos(1)..=Duration::from_secs(60),
            "must be more than 0 and at most 60s",
        )?;
        let request_body_timeout = duration_within(
            env,
            "REQUEST_BODY_TIMEOUT",
            Duration::from_secs(10),
            Duration::from_millis(100)..=Duration::from_secs(300),
            "must be between 100ms and 5m",
        )?;
        let webhook_max_body = number_var(env, "WEBHOOK_MAX_BODY_KIB", 1usize, 256)? * 1024;
        Ok(Self {
            delivery_timeout,
            webhook_max_body,
            request_body_timeout,
            run_workers,
            trust_forwarded_for,
            sandbox_page_url,
            database_url,
            database_pool_size,
            listen_addr,
            public_base_url,
            amocrm_client_id: non_empty(env, "AMOCRM_CLIENT_ID"),
            amocrm_client_secret: secret("AMOCRM_CLIENT_SECRET", 1)?,
            amocrm_redirect_uri,
            amocrm_authorize_url,
            amocrm_allowed_domains,
            amocrm_account_url_template,
            amocrm_rate_limit_rps,
            amocrm_request_timeout,
            kommo_client_id,
            kommo_client_secret: secret("KOMMO_CLIENT_SECRET", 1)?,
            kommo_authorize_url,
            kommo_allowed_domains,
            suspended_probe_interval,
            push_retry_max,
            webhook_allowed_hosts,
            database_timeout,
            allow_shared_accounts,
            token_keys,
            refresh_secret: secret("REFRESH_SECRET", 16)?,
            refresh_schedule,
            refresh_ahead,
            refresh_concurrency,
            log_format,
            return_url_allowlist,
            stage_names,
            lead_name_template,
            event_retention,
            shutdown_timeout,
            metrics_token: secret("METRICS_TOKEN", 16)?,
            instance_id,
        })
    }

    /// The keyring, or the one-line error `serve` and `keys rotate` exit with.
    pub fn require_keys(&self) -> Result<&Keyring, ConfigError> {
        self.token_keys.as_ref().ok_or_else(|| {
            ConfigError::new(
                "TOKEN_ENCRYPTION_KEYS",
                "required: generate one with `amocrm-connector keys generate`",
            )
        })
    }

    /// The platforms `serve` runs with: each one whose client id is set (its secret is then required), at
    /// least one of them.
    pub fn require_platforms(&self) -> Result<Vec<Platform>, ConfigError> {
        let mut platforms = Vec::new();
        for p in Platform::ALL.iter().copied() {
            let vars = PlatformVars::of(p);
            let (id, secret) = self.credentials(p);
            match (id, secret) {
                (Some(_), Some(_)) => platforms.push(p),
                (Some(_), None) => {
                    return Err(ConfigError::new(
                        vars.client_secret,
                        "required with its client id",
                    ));
                }
                (None, _) => {}
            }
        }
        if platforms.is_empty() {
            let reason = if self.amocrm_client_secret.is_some() {
                "required by serve"
            } else {
                "required by serve (or KOMMO_CLIENT_ID and KOMMO_CLIENT_SECRET for Kommo)"
            };
            return Err(ConfigError::new("AMOCRM_CLIENT_ID", reason));
        }
        Ok(platforms)
    }

    fn credentials(&self, p: Platform) -> (Option<&str>, Option<&SecretString>) {
        match p {
            Platform::Amocrm => (
                self.amocrm_client_id.as_deref(),
                self.amocrm_client_secret.as_ref(),
            ),
            Platform::Kommo => (
                self.kommo_client_id.as_deref(),
                self.kommo_client_secret.as_ref(),
            ),
        }
    }

    /// The platform connect sessions use when they name none: the only one configured, else amoCRM.
    pub fn default_platform(&self) -> Platform {
        match self.require_platforms().as_deref() {
            Ok([only]) => *only,
            _ => Platform::Amocrm,
        }
    }

    /// The client configuration of platform `p` (its credentials must be set). Both platforms share the
    /// redirect URI, the account URL template, the rate limit and the timeouts.
    pub fn platform_config(&self, p: Platform) -> Result<amocrm_client::AmoConfig, ConfigError> {
        let vars = PlatformVars::of(p);
        let (Some(client_id), Some(secret)) = self.credentials(p) else {
            return Err(ConfigError::new(vars.client_id, "required by serve"));
        };
        let (authorize_url, domains) = match p {
            Platform::Amocrm => (&self.amocrm_authorize_url, &self.amocrm_allowed_domains),
            Platform::Kommo => (&self.kommo_authorize_url, &self.kommo_allowed_domains),
        };
        let allowed = amocrm_client::AllowedDomains::parse(&domains.join(","))
            .map_err(|e| ConfigError::new(vars.allowed_domains, e.to_string()))?;
        let mut cfg = amocrm_client::AmoConfig::new(
            client_id,
            secret.clone(),
            self.amocrm_redirect_uri.clone(),
        );
        cfg.authorize_url = authorize_url.clone();
        cfg.account_url_template = self.amocrm_account_url_template.clone();
        cfg.allowed_domains = allowed;
        cfg.rate_limit_rps = self.amocrm_rate_limit_rps;
        cfg.request_timeout = self.amocrm_request_timeout;
        cfg.validate()
            .map_err(|e| ConfigError::new(vars.all, e.to_string()))?;
        Ok(cfg)
    }

    /// `PUBLIC_BASE_URL` without a trailing slash, for building links.
    pub fn base_url(&self) -> String {
        self.public_base_url
            .as_str()
            .trim_end_matches('/')
            .to_owned()
    }

    /// Constant-time check of the refresh secret; `None` when `/refresh` is disabled.
    pub fn refresh_secret_matches(&self, presented: &str) -> Option<bool> {
        let expected = self.refresh_secret.as_ref()?;
        Some(crate::domain::ids::constant_time_eq(
            expected.expose_secret().as_bytes(),
            presented.as_bytes(),
        ))
    }
}
