//! `amocrm-connector demo`: the whole product in one process on a fresh machine — the service on SQLite in
//! `./data/demo/`, the amoCRM sandbox, a demo event receiver, a demo API key and an admin operator — and a
//! printed walk-through (connect link, sandbox page, dashboard login, a ready `curl` that posts an order).
//!
//! Its secrets (encryption key, API key, admin password, integration secret) are generated once and kept in
//! `data/demo/demo-secrets.json`, which `serve` never reads. The sandbox keeps its accounts in memory, so
//! every demo run starts from an empty database as well.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use amocrm_sandbox::{Integration, Sandbox, SandboxConfig};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::app::Application;
use crate::config::Settings;
use crate::domain::ids::{random_token, sha256_hex};
use crate::services::api_keys::KEY_PREFIX;
use crate::services::operators::{self, Role};
use crate::storage::cipher::Keyring;

/// Where and on which ports the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub data_dir: PathBuf,
    pub port: u16,
    pub sandbox_port: u16,
}

/// The demo's own secrets, generated on the first run and reused after.
#[derive(Serialize, Deserialize)]
struct DemoSecrets {
    encryption_keys: String,
    client_secret: String,
    api_key: String,
    admin_password: String,
    receiver_secret: String,
}

const CLIENT_ID: &str = "demo-integration";
const ADMIN_EMAIL: &str = "admin@demo.local";
const SELLER_ID: &str = "demo-seller";

impl DemoSecrets {
    fn generate() -> Self {
        Self {
            encryption_keys: Keyring::generate_entry("demo"),
            client_secret: random_token(32),
            api_key: format!("{KEY_PREFIX}{}", random_token(40)),
            admin_password: random_token(16),
            receiver_secret: random_token(32),
        }
    }

    fn load_or_create(dir: &Path) -> Result<Self, String> {
        let path = dir.join("demo-secrets.json");
        if let Ok(raw) = std::fs::read(&path) {
            return serde_json::from_slice(&raw).map_err(|e| {
                format!(
                    "{} is damaged ({e}); delete it to start over",
                    path.display()
                )
            });
        }
        let secrets = Self::generate();
        let body = serde_json::to_vec_pretty(&secrets).map_err(|e| e.to_string())?;
        write_private(&path, &body).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(secrets)
    }
}

#[cfg(unix)]
fn write_private(path: &Path, body: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(body)
}

#[cfg(not(unix))]
fn write_private(path: &Path, body: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, body)
}

/// Binds the preferred port on 127.0.0.1, or any free one when it is taken.
fn bind(port: u16) -> Result<TcpListener, String> {
    TcpListener::bind(("127.0.0.1", port))
        .or_else(|_| TcpListener::bind(("127.0.0.1", 0)))
        .map_err(|e| format!("cannot listen on 127.0.0.1: {e}"))
}

/// A free port, preferring `port`.
fn free_port(port: u16) -> Result<u16, String> {
    let l = bind(port)?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// The example order the printed `curl` posts.
pub fn example_order(number: &str) -> serde_json::Value {
    json!({
        "seller_id": SELLER_ID,
        "order_number": number,
        "total_amount": 249000,
        "currency": "UZS",
        "status": "pending",
        "items": [
            {"product_id": "sku-1001", "name": "Choynak (tea pot)", "quantity": 1, "price": 149000},
            {"product_id": "sku-2002", "name": "Piyola (bowl)", "quantity": 4, "price": 25000}
        ],
        "customer": {"name": "Aziza Karimova", "phone": "+998901234567", "email": "aziza@example.com"},
        "tags": ["demo"]
    })
}

/// Makes the sandbox accounts look like a shop's: Products turned on (the example order's items become
/// catalog products with its first push) and the example buyer already a contact, her phone typed differently
/// and without the email, so the demo's deal shows the buyer matched, her email added, the note and the
/// products linked.
fn stock_demo_accounts(sandbox: &amocrm_sandbox::SandboxHandle) {
    for account in sandbox.accounts() {
        let host = account.host.as_str();
        if let Err(e) = sandbox.enable_products(host, None) {
            tracing::warn!(host, error = %e, "demo: could not turn Products on");
        }
        let buyer = amocrm_sandbox::ContactSeed {
            name: "Aziza Karimova".to_owned(),
            phones: vec!["+998 (90) 123-45-67".to_owned()],
            ..amocrm_sandbox::ContactSeed::default()
        };
        if let Err(e) = sandbox.add_contact(host, buyer) {
            tracing::warn!(host, error = %e, "demo: could not add the example buyer");
        }
    }
}

/// A started demo: everything the walk-through prints, and the running pieces.
pub struct Demo {
    pub base_url: String,
    pub sandbox: amocrm_sandbox::SandboxHandle,
    pub api_key: String,
    pub admin_email: &'static str,
    pub admin_password: String,
    pub seller_id: &'static str,
    /// The first connect link (single use, 30 minutes).
    pub connect_url: Option<String>,
    /// Where signed events are delivered, when the subscription could be made.
    pub receiver_url: Option<String>,
    pub data_dir: PathBuf,
    pub state: std::sync::Arc<crate::services::Context>,
    pub trigger: crate::app::ShutdownTrigger,
    serving: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Demo {
    /// Waits until the service stops (Ctrl-C, SIGTERM or the trigger).
    pub async fn wait(self) -> Result<(), String> {
        match self.serving.await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(e) => Err(format!("the service stopped unexpectedly: {e}")),
        }
    }
}

/// Runs the demo until Ctrl-C.
pub async fn run(opts: DemoOptions) -> Result<(), String> {
    let demo = start(opts).await?;
    print_banner(&Banner {
        base: &demo.base_url,
        sandbox: &demo.sandbox.base_url(),
        api_key: &demo.api_key,
        admin_password: &demo.admin_password,
        connect_url: demo.connect_url.as_deref(),
        receiver: demo.receiver_url.clone(),
        data_dir: &demo.data_dir,
    });
    demo.wait().await
}

/// Starts the demo: sandbox, receiver, service, demo key, admin, subscription and a first connect link.
pub async fn start(opts: DemoOptions) -> Result<Demo, String> {
    std::fs::create_dir_all(&opts.data_dir)
        .map_err(|e| format!("cannot create {}: {e}", opts.data_dir.display()))?;
    let secrets = DemoSecrets::load_or_create(&opts.data_dir)?;
    let db_path = opts.data_dir.join("demo.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db_path.display()));
    }

    let sandbox_port = free_port(opts.sandbox_port)?;
    let sandbox = Sandbox::start(SandboxConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], sandbox_port)),
        ..SandboxConfig::default()
    })
    .await
    .map_err(|e| format!("the sandbox did not start: {e}"))?;
    let receiver = crate::web::demo_receiver::start(bind(0)?, secrets.receiver_secret.clone())?;
    stock_demo_accounts(&sandbox);

    let listener = bind(opts.port)?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let base = format!("http://127.0.0.1:{port}");
    let env: std::collections::HashMap<String, String> = [
        ("DATABASE_URL", format!("sqlite://{}", db_path.display())),
        ("LISTEN_ADDR", format!("127.0.0.1:{port}")),
        ("PUBLIC_BASE_URL", base.clone()),
        ("AMOCRM_CLIENT_ID", CLIENT_ID.to_owned()),
        ("AMOCRM_CLIENT_SECRET", secrets.client_secret.clone()),
        ("AMOCRM_AUTHORIZE_URL", sandbox.authorize_url()),
        (
            "AMOCRM_ACCOUNT_URL_TEMPLATE",
            sandbox.account_url_template(),
        ),
        ("TOKEN_ENCRYPTION_KEYS", secrets.encryption_keys.clone()),
        ("SANDBOX_PAGE_URL", format!("{}/", sandbox.base_url())),
        ("INSTANCE_ID", "demo".to_owned()),
        // The demo's event receiver listens on this machine.
        ("WEBHOOK_ALLOWED_HOSTS", "127.0.0.1".to_owned()),
        ("RUN_WORKERS", "true".to_owned()),
        ("SHUTDOWN_TIMEOUT", "5s".to_owned()),
        ("LOG_FORMAT", "pretty".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let settings = Settings::from_env(&env).map_err(|e| e.to_string())?;
    sandbox.add_integration(
        Integration::new(
            CLIENT_ID,
            secrets.client_secret.clone(),
            settings.amocrm_redirect_uri.to_string(),
        )
        .with_disconnect_url(format!("{base}/oauth/amocrm/disconnect")),
    );
    let app = Application::build_with_listener(settings, Some(listener))
        .await
        .map_err(|e| e.to_string())?;
    let db = app.state.db.clone();

    // The demo API key and admin: known plaintexts from the demo folder, stored as hashes like any other.
    let key = &secrets.api_key;
    let prefix: String = key.chars().take(KEY_PREFIX.len() + 6).collect();
    db.api_keys()
        .insert(
            "demo",
            &prefix,
            &sha256_hex(key.as_bytes()),
            "enterprise",
            "full",
        )
        .await
        .map_err(|e| e.to_string())?;
    operators::create_or_update(
        &db,
        ADMIN_EMAIL,
        Some("Demo admin"),
        Role::Admin,
        SecretString::from(secrets.admin_password.clone()),
    )
    .await
    .map_err(|e| e.to_string())?;

    let state = app.state.clone();
    let trigger = app.shutdown_trigger();
    let serving = tokio::spawn(app.run_until_stopped());
    let http = reqwest::Client::new();
    let subscribed = http
        .post(format!("{base}/api/v1/webhooks"))
        .bearer_auth(&secrets.api_key)
        .json(&json!({
            "url": format!("http://{receiver}/events"),
            "events": ["*"],
            "secret": secrets.receiver_secret,
            "active": true,
        }))
        .send()
        .await
        .map(|r| r.status().is_success())
        .unwrap_or(false);
    let connect_url = http
        .post(format!("{base}/api/v1/connect-sessions"))
        .bearer_auth(&secrets.api_key)
        .json(&json!({"seller_id": SELLER_ID, "lang": "en"}))
        .send()
        .await
        .ok()
        .filter(|r| r.status().is_success());
    let connect_url = match connect_url {
        Some(r) => r
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|v| v["data"]["connect_url"].as_str().map(str::to_owned)),
        None => None,
    };

    Ok(Demo {
        base_url: base,
        sandbox,
        api_key: secrets.api_key,
        admin_email: ADMIN_EMAIL,
        admin_password: secrets.admin_password,
        seller_id: SELLER_ID,
        connect_url,
        receiver_url: subscribed.then(|| format!("http://{receiver}/events")),
        data_dir: opts.data_dir,
        state,
        trigger,
        serving,
    })
}

struct Banner<'a> {
    base: &'a str,
    sandbox: &'a str,
    api_key: &'a str,
    admin_password: &'a str,
    connect_url: Option<&'a str>,
    receiver: Option<String>,
    data_dir: &'a Path,
}

fn print_banner(b: &Banner<'_>) {
    let order = example_order("DEMO-1001").to_string();
    let connect = b.connect_url.map_or_else(
        || {
            format!(
                "(could not create a connect session; try: curl -X POST {}/api/v1/connect-sessions -H 'Authorization: Bearer {}' -H 'Content-Type: application/json' -d '{{\"seller_id\":\"{SELLER_ID}\"}}')",
                b.base, b.api_key
            )
        },
        str::to_owned,
    );
    println!(
        r#"
amocrm-connector demo is running — press Ctrl-C to stop.
Demo data and secrets: {data} (never used by `serve`).

1. Connect the demo seller "{SELLER_ID}" to a sandbox amoCRM account (opens the sandbox's consent page;
   pick an account and press Allow):
     {connect}

2. Post an order as the marketplace would:
     curl -sS -X POST {base}/api/v1/sales/orders \
       -H 'Authorization: Bearer {key}' \
       -H 'Content-Type: application/json' \
       -d '{order}'

3. Open the sandbox, find the lead in the seller's pipeline and move it to the "paid" stage (To'landi):
     {sandbox}/

4. Watch the lead, the payment.completed event and its delivery in the dashboard:
     {base}/dashboard
     login: {ADMIN_EMAIL}   password: {password}
{receiver}
API reference: {base}/api/v1/docs   ·   metrics: {base}/metrics
"#,
        data = b.data_dir.display(),
        base = b.base,
        key = b.api_key,
        sandbox = b.sandbox,
        password = b.admin_password,
        receiver = b.receiver.as_ref().map_or_else(String::new, |r| format!(
            "\n   Events are also delivered, signed, to a demo receiver at {r}; each arrival is printed here.\n"
        )),
    );
}
