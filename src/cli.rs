//! The command line of CONTRACT §1: `serve` (default), `demo`, `migrate`, `api-keys`, `keys`, `refresh`,
//! and `users` for the operators.
//!
//! Every failure ends as one line on stderr and a non-zero exit code, never a stack trace.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::app::Application;
use crate::config::{self, ProcessEnv, Settings};
use crate::services::api_keys::{self, Tier};
use crate::services::operators::{self, MIN_PASSWORD_LEN, Role};
use crate::storage::Db;
use crate::storage::cipher::Keyring;
use secrecy::SecretString;

#[derive(Parser, Debug)]
#[command(
    name = "amocrm-connector",
    version,
    about = "Connects marketplace sellers to their own amoCRM (Kommo) accounts",
    long_about = "Connects marketplace sellers to their own amoCRM (Kommo) accounts: the OAuth connect flow, \
encrypted token storage and refresh, order push as deals, and amoCRM webhooks turned into signed marketplace \
events.\n\nConfiguration comes from the environment and an optional .env file; see .env.example."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Apply pending migrations, serve HTTP and run the background workers (the default).
    Serve,
    /// The whole product on one machine with nothing configured: the service on SQLite plus the bundled
    /// amoCRM sandbox, a demo API key and admin; prints the links to follow.
    Demo {
        /// Where the demo keeps its database and generated secrets.
        #[arg(long, default_value = "data/demo")]
        data_dir: std::path::PathBuf,
        /// The service's port on 127.0.0.1 (another free port if taken; 0 picks one). Default: the port of
        /// `LISTEN_ADDR` when it is set, else 8080. The demo listens on 127.0.0.1 only: it prints its secrets.
        #[arg(long)]
        port: Option<u16>,
        /// The sandbox's port on 127.0.0.1 (another free port if taken).
        #[arg(long, default_value_t = 9090)]
        sandbox_port: u16,
    },
    /// Apply pending migrations and exit.
    Migrate,
    /// Manage the marketplace's API keys (stored only as hashes).
    #[command(subcommand)]
    ApiKeys(ApiKeysCommand),
    /// Manage the token encryption keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Run one token refresh sweep (the same as the schedule and /refresh), print its summary and exit.
    Refresh,
    /// Manage the operators who sign in to the dashboard and the operator API.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Print the API's OpenAPI document (the one `/api/v1/openapi.json` serves) and exit: for client
    /// generators and validators, without a running service or any configuration.
    Openapi,
}

#[derive(Subcommand, Debug)]
pub enum UsersCommand {
    /// Create an operator (or reset an existing one's password, name and role); the password is read
    /// from standard input.
    Create {
        /// The e-mail address the operator signs in with.
        #[arg(long)]
        email: String,
        /// admin (may change things) or viewer (read only).
        #[arg(long, value_parser = ["admin", "viewer"])]
        role: String,
        /// A display name (default: the part of the e-mail before @).
        #[arg(long)]
        name: Option<String>,
    },
    /// List operators.
    List,
}

#[derive(Subcommand, Debug)]
pub enum ApiKeysCommand {
    /// Create a key; the key is printed once, alone on the last line.
    Create {
        /// A name to recognise the key by.
        #[arg(long)]
        name: String,
        /// standard (1000 requests/hour), premium (5000) or enterprise (unlimited).
        #[arg(long, default_value = "standard", value_parser = ["standard", "premium", "enterprise"])]
        tier: String,
        /// full (everything), read (GET only) or orders (orders and connect sessions only).
        #[arg(long, default_value = "full", value_parser = ["full", "read", "orders"])]
        scope: String,
    },
    /// List keys (never the keys themselves).
    List,
    /// Revoke a key by id.
    Revoke {
        /// The key's id, as shown by `api-keys list`.
        id: i64,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Print one fresh TOKEN_ENCRYPTION_KEYS entry (KEY_ID:BASE64_OF_32_BYTES).
    Generate {
        /// The key id to put in front of the key.
        #[arg(long, default_value_t = default_key_id())]
        id: String,
    },
    /// Re-encrypt every stored secret with the first (active) key; safe to interrupt and run again.
    Rotate,
}

/// The password from standard input: its first line, without the line break (so `echo pw |` and a
/// typed line both work). Never echoed back or logged.
fn read_password(mut input: impl std::io::BufRead) -> Result<SecretString, String> {
    let mut line = String::new();
    input
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    if password.is_empty() {
        return Err("no password on stdin (pipe it in: `echo \"$PASSWORD\" | amocrm-connector users create …`)".to_owned());
    }
    Ok(SecretString::from(password))
}

/// `users create | list`: what the command prints, or its one-line error. The password of `create` is the
/// first line of `input` (standard input for the binary).
pub async fn users(
    settings: Settings,
    cmd: UsersCommand,
    input: impl std::io::BufRead,
) -> Result<String, String> {
    let db = Db::connect(&settings.database_url, 1).map_err(one_line)?;
    db.migrate().await.map_err(one_line)?;
    match cmd {
        UsersCommand::Create { email, role, name } => {
            let role = Role::parse(&role).ok_or("--role must be admin or viewer")?;
            let password = read_password(input)?;
            let (id, created) =
                operators::create_or_update(&db, &email, name.as_deref(), role, password)
                    .await
                    .map_err(one_line)?;
            let verb = if created {
                "created"
            } else {
                "updated (signed out everywhere)"
            };
            Ok(format!(
                "{verb} operator {id} ({}, {})\n",
                operators::normalize_email(&email),
                role.as_str()
            ))
        }
        UsersCommand::List => {
            let rows = operators::list(&db).await.map_err(one_line)?;
            let mut out = format!("{:<6} {:<32} {:<24} role\n", "id", "email", "name");
            for r in rows {
                out.push_str(&format!(
                    "{:<6} {:<32} {:<24} {}\n",
                    r.id,
                    r.email,
                    r.name,
                    r.role.as_str()
                ));
            }
            Ok(out)
        }
    }
}

fn default_key_id() -> String {
    format!("k{}", chrono::Utc::now().format("%Y%m%d"))
}

/// Parses arguments and runs the command; the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

fn settings() -> Result<Settings, String> {
    config::load_dotenv().map_err(|e| e.to_string())?;
    Settings::from_env(&ProcessEnv).map_err(|e| e.to_string())
}

/// The demo's port from `LISTEN_ADDR` (8080 without it). Its host is not used: the demo prints an API key and
/// an admin password, so it listens on 127.0.0.1 only, and says so when asked for another address.
fn demo_port(listen_addr: Option<&str>) -> Result<u16, String> {
    let Some(raw) = listen_addr.filter(|s| !s.trim().is_empty()) else {
        return Ok(8080);
    };
    let addr: std::net::SocketAddr = raw
        .trim()
        .parse()
        .map_err(|_| format!("LISTEN_ADDR: `{raw}` is not an address such as 127.0.0.1:8080"))?;
    if !addr.ip().is_loopback() {
        eprintln!(
            "note: the demo listens on 127.0.0.1 only (it prints its secrets); LISTEN_ADDR's port {} is used",
            addr.port()
        );
    }
    Ok(addr.port())
}

fn one_line(e: impl std::fmt::Display) -> String {
    e.to_string().replace('\n', " ")
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let settings = settings()?;
            crate::telemetry::init(settings.log_format);
            settings.require_keys().map_err(one_line)?;
            settings.require_platforms().map_err(one_line)?;
            // What this process runs with, secrets redacted by `Settings`' Debug: the first line to read
            // when an instance behaves unlike its peers. Logged once it started, so a start that fails
            // stays one line.
            let config = format!("{settings:?}");
            let rt = runtime()?;
            let result = rt.block_on(async move {
                let app = Application::build(settings).await.map_err(one_line)?;
                tracing::info!(version = env!("CARGO_PKG_VERSION"), config, "starting");
                tracing::info!(port = app.port(), "serving");
                app.run_until_stopped().await.map_err(one_line)
            });
            // Database work already handed to the blocking pool is not waited for forever.
            rt.shutdown_timeout(std::time::Duration::from_secs(2));
            result
        }
        Command::Demo {
            data_dir,
            port,
            sandbox_port,
        } => {
            // The demo is configured by its own folder only: a `.env` meant for `serve` is not read.
            crate::telemetry::init_with_default(config::LogFormat::Pretty, "warn");
            let port = match port {
                Some(p) => p,
                None => demo_port(std::env::var("LISTEN_ADDR").ok().as_deref())?,
            };
            let rt = runtime()?;
            let result = rt.block_on(crate::demo::run(crate::demo::DemoOptions {
                data_dir,
                port,
                sandbox_port,
            }));
            rt.shutdown_timeout(std::time::Duration::from_secs(2));
            result
        }
        Command::Migrate => {
            let settings = settings()?;
            runtime()?.block_on(async move {
                let db = Db::connect(&settings.database_url, 1).map_err(one_line)?;
                let applied = db.migrate().await.map_err(one_line)?;
                println!("applied {} migration(s)", applied.len());
                for m in applied {
                    println!("  {m}");
                }
                Ok(())
            })
        }
        Command::ApiKeys(cmd) => {
            let settings = settings()?;
            runtime()?.block_on(async move {
                let db = Db::connect(&settings.database_url, 1).map_err(one_line)?;
                db.migrate().await.map_err(one_line)?;
                match cmd {
                    ApiKeysCommand::Create { name, tier, scope } => {
                        let name = name.trim().to_owned();
                        if name.is_empty() || name.len() > 100 {
                            return Err("--name must be 1 to 100 characters".to_owned());
                        }
                        let tier = Tier::parse(&tier).ok_or("unknown tier")?;
                        let scope = api_keys::Scope::parse(&scope).ok_or("unknown scope")?;
                        let (row, key) = api_keys::create_scoped(&db, &name, tier, scope)
                            .await
                            .map_err(one_line)?;
                        println!(
                            "created API key {} ({}, {}, scope {})",
                            row.id, row.name, row.tier, row.scope
                        );
                        println!("store it now; it is not shown again:");
                        println!("{key}");
                        Ok(())
                    }
                    ApiKeysCommand::List => {
                        let rows = db.api_keys().list().await.map_err(one_line)?;
                        println!(
                            "{:<6} {:<24} {:<11} {:<7} {:<12} {:<20} status",
                            "id", "name", "tier", "scope", "prefix", "created"
                        );
                        for r in rows {
                            println!(
                                "{:<6} {:<24} {:<11} {:<7} {:<12} {:<20} {}",
                                r.id,
                                r.name,
                                r.tier,
                                r.scope,
                                format!("{}…", r.key_prefix),
                                r.created_at.format("%Y-%m-%d %H:%M"),
                                if r.revoked_at.is_some() {
                                    "revoked"
                                } else {
                                    "active"
                                }
                            );
                        }
                        Ok(())
                    }
                    ApiKeysCommand::Revoke { id } => {
                        let done = db.api_keys().revoke(id).await.map_err(one_line)?;
                        if done {
                            println!("revoked API key {id}");
                            Ok(())
                        } else {
                            Err(format!("no active API key with id {id}"))
                        }
                    }
                }
            })
        }
        Command::Openapi => {
            println!("{}", crate::web::openapi::document());
            Ok(())
        }
        Command::Refresh => {
            let settings = settings()?;
            crate::telemetry::init(settings.log_format);
            let summary = runtime()?.block_on(refresh_once(settings))?;
            println!("{summary}");
            Ok(())
        }
        Command::Users(cmd) => {
            let settings = settings()?;
            let stdin = std::io::stdin();
            if matches!(cmd, UsersCommand::Create { .. })
                && std::io::IsTerminal::is_terminal(&stdin)
            {
                eprint!("password (input is visible; at least {MIN_PASSWORD_LEN} characters): ");
            }
            let out = runtime()?.block_on(users(settings, cmd, stdin.lock()))?;
            print!("{out}");
            Ok(())
        }
        Command::Keys(KeysCommand::Generate { id }) => {
            Keyring::parse(&format!("{id}:{}", "A".repeat(43) + "="))
                .map_err(|e| format!("--id: {e}"))?;
            println!("{}", Keyring::generate_entry(&id));
            Ok(())
        }
        Command::Keys(KeysCommand::Rotate) => {
            let settings = settings()?;
            let keys = settings.require_keys().map_err(one_line)?.clone();
            runtime()?.block_on(async move {
                let db = Db::connect(&settings.database_url, 2).map_err(one_line)?;
                db.migrate().await.map_err(one_line)?;
                let report = crate::services::keys::rotate(&db, &keys).await.map_err(one_line)?;
                println!(
                    "rotated {} secret(s) to key {}; {} already current, {} changed concurrently (run again), {} unreadable",
                    report.rotated,
                    keys.active_id(),
                    report.already_current,
                    report.skipped_concurrent,
                    report.failed
                );
                if report.failed > 0 {
                    return Err(format!("{} secret(s) could not be decrypted with any configured key", report.failed));
                }
                Ok(())
            })
        }
    }
}

/// `amocrm-connector refresh`: one sweep (joining a running one), its summary line.
pub async fn refresh_once(settings: Settings) -> Result<String, String> {
    use crate::services::refresh::{self, SweepOutcome};
    let keys = settings.require_keys().map_err(one_line)?.clone();
    let platforms = crate::services::platforms::Platforms::build(&settings).map_err(one_line)?;
    let db = Db::connect(&settings.database_url, settings.database_pool_size).map_err(one_line)?;
    db.migrate().await.map_err(one_line)?;
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let state = crate::services::Context::new(
        std::sync::Arc::new(settings),
        db,
        std::sync::Arc::new(keys),
        platforms,
        shutdown,
    );
    let (how, report) = match refresh::sweep(&state, refresh::JOIN_WAIT)
        .await
        .map_err(one_line)?
    {
        SweepOutcome::Ran(r) => ("ran", r),
        SweepOutcome::Joined(r) => ("joined the sweep another instance was running", r),
        SweepOutcome::AlreadyRunning => {
            return Err("a refresh sweep is already running in another instance".to_owned());
        }
    };
    Ok(format!(
        "refresh sweep {how}: due {}, refreshed {}, failed {}, skipped {}",
        report.due, report.refreshed, report.failed, report.skipped
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_is_a_subcommand() {
        let cli = Cli::try_parse_from(["amocrm-connector", "refresh"]);
        assert!(matches!(cli.map(|c| c.command), Ok(Some(Command::Refresh))));
    }

    #[test]
    fn the_demo_takes_its_port_from_listen_addr_and_keeps_to_loopback() {
        assert_eq!(demo_port(None), Ok(8080));
        assert_eq!(demo_port(Some("")), Ok(8080));
        assert_eq!(demo_port(Some("127.0.0.1:18081")), Ok(18081));
        assert_eq!(demo_port(Some("0.0.0.0:18082")), Ok(18082));
        assert!(demo_port(Some("not an address")).is_err());
    }
}
