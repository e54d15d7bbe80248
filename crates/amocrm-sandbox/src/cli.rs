//! The `amocrm-sandbox` command line: flags → `SandboxConfig`, then serve until Ctrl-C.

use std::net::SocketAddr;

use anyhow::bail;
use clap::{Parser, ValueEnum};

use crate::config::{DEFAULT_ACCOUNTS, Integration, Rules, SandboxConfig, WebhookFormat};
use crate::handle::Sandbox;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    /// amoCRM's account webhook format (every lead field, custom fields, account block).
    Full,
    /// The Digital Pipeline "send webhook" compact format (stage changes and new leads only).
    Dp,
}

/// A local stand-in for amoCRM (Kommo): OAuth consent and tokens, API v4, webhooks, limits, faults.
#[derive(Debug, Parser)]
#[command(
    name = "amocrm-sandbox",
    version,
    about = "A local stand-in for amoCRM: OAuth, API v4, webhooks, the 7 req/s limit and fault injection",
    long_about = "A local stand-in for amoCRM (Kommo) for tests, demos and offline development.\n\n\
Accounts are addressed by host in the path:\n  \
http://ADDR/{host}/oauth2/access_token   token endpoint (JSON or form)\n  \
http://ADDR/{host}/api/v4/...            API v4 (Bearer token of that account)\n  \
http://ADDR/oauth?client_id=..&state=..  consent page (pick an account, Allow / Deny)\n  \
http://ADDR/_sandbox/ui                  accounts, pipelines and leads; move a lead to send webhooks\n  \
http://ADDR/_sandbox/...                 JSON control routes (faults, tokens, log, counters; see README)\n\n\
Point the connector at it with AMOCRM_ACCOUNT_URL_TEMPLATE=http://ADDR/{host} and\n\
AMOCRM_AUTHORIZE_URL=http://ADDR/oauth.\n\n\
Rules (as amoCRM): codes live 20 min and work once; access tokens live 24 h; each refresh returns a new\n\
pair and the old refresh token works only until the new pair is used; more than 7 requests in any second\n\
to one account -> 429; leads/complex takes 1..50 leads.",
    after_help = "Example:\n  amocrm-sandbox --listen 127.0.0.1:9090 --client-id demo --client-secret s3cret \\\n    --redirect-uri http://127.0.0.1:8080/oauth/amocrm/callback --account sellerone.amocrm.ru"
)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9090", value_name = "ADDR")]
    listen: SocketAddr,
    /// An integration's client id (repeat with --client-secret and --redirect-uri for several integrations).
    #[arg(long = "client-id", value_name = "ID")]
    client_id: Vec<String>,
    /// The integration's client secret (one per --client-id, in the same order).
    #[arg(long = "client-secret", value_name = "SECRET")]
    client_secret: Vec<String>,
    /// The integration's redirect URI (one per --client-id, in the same order).
    #[arg(long = "redirect-uri", value_name = "URI")]
    redirect_uri: Vec<String>,
    /// The integration's uninstall-hook URL (optional; matched to --client-id by position).
    #[arg(long = "disconnect-url", value_name = "URL")]
    disconnect_url: Vec<String>,
    /// An account host to create at start (repeatable). Default: sellerone/sellertwo/sellerthree.amocrm.ru.
    #[arg(long = "account", value_name = "HOST")]
    account: Vec<String>,
    /// Outgoing webhook body format.
    #[arg(long, value_enum, default_value = "full")]
    webhook_format: Format,
    /// Requests per account in any sliding second before 429 (0 disables the limit).
    #[arg(long, default_value_t = 7, value_name = "N")]
    rate_limit_rps: u32,
    /// Failed deliveries within 2 h after which a webhook destination is disabled.
    #[arg(long, default_value_t = 100, value_name = "N")]
    webhook_disable_after: u32,
    /// Ignore `_embedded.contacts`/`companies` in a lead PATCH instead of refusing it with 400
    /// (amoCRM's behaviour is not documented; refusing is the default).
    #[arg(long)]
    accept_lead_patch_links: bool,
    /// Do not count token-endpoint requests toward the per-second limit (amoCRM does not say whether
    /// they count; counting is the default).
    #[arg(long)]
    token_endpoint_unlimited: bool,
}

fn config_from(cli: Cli) -> anyhow::Result<SandboxConfig> {
    let n = cli.client_id.len();
    if cli.client_secret.len() != n || cli.redirect_uri.len() != n {
        bail!(
            "--client-id, --client-secret and --redirect-uri must be given the same number of times ({}, {}, {})",
            n,
            cli.client_secret.len(),
            cli.redirect_uri.len()
        );
    }
    if cli.disconnect_url.len() > n {
        bail!(
            "more --disconnect-url values ({}) than integrations ({n})",
            cli.disconnect_url.len()
        );
    }
    for uri in cli.redirect_uri.iter().chain(&cli.disconnect_url) {
        match url::Url::parse(uri) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => bail!("not an http(s) URL: {uri:?}"),
        }
    }
    let integrations = (0..n)
        .map(|i| Integration {
            client_id: cli.client_id[i].clone(),
            client_secret: cli.client_secret[i].clone(),
            redirect_uri: cli.redirect_uri[i].clone(),
            disconnect_url: cli.disconnect_url.get(i).cloned(),
        })
        .collect();
    let accounts = if cli.account.is_empty() {
        DEFAULT_ACCOUNTS.iter().map(|s| (*s).to_owned()).collect()
    } else {
        cli.account
    };
    Ok(SandboxConfig {
        listen: cli.listen,
        integrations,
        accounts,
        rate_limit_rps: cli.rate_limit_rps,
        webhook_format: match cli.webhook_format {
            Format::Full => WebhookFormat::Full,
            Format::Dp => WebhookFormat::DigitalPipeline,
        },
        webhook_disable_after: cli.webhook_disable_after,
        rules: Rules {
            refuse_lead_patch_links: !cli.accept_lead_patch_links,
            rate_limit_token_endpoint: !cli.token_endpoint_unlimited,
        },
        ..SandboxConfig::default()
    })
}

/// Parses the command line, runs the sandbox and serves until Ctrl-C.
pub async fn run_cli() -> anyhow::Result<()> {
    let cfg = config_from(Cli::parse())?;
    let sandbox = Sandbox::start(cfg).await?;
    println!("amoCRM sandbox listening on {}", sandbox.base_url());
    println!(
        "  consent page:                 {}",
        sandbox.authorize_url()
    );
    println!(
        "  AMOCRM_ACCOUNT_URL_TEMPLATE = {}",
        sandbox.account_url_template()
    );
    println!(
        "  board:                        {}/_sandbox/ui",
        sandbox.base_url()
    );
    for a in sandbox.accounts() {
        println!("  account {} (account_id {})", a.host, a.id);
    }
    tokio::signal::ctrl_c().await?;
    sandbox.stop().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> anyhow::Result<SandboxConfig> {
        let mut all = vec!["amocrm-sandbox"];
        all.extend_from_slice(args);
        config_from(Cli::try_parse_from(all)?)
    }

    #[test]
    fn several_integrations_are_read_as_aligned_triples() -> anyhow::Result<()> {
        let cfg = parse(&[
            "--client-id",
            "a",
            "--client-secret",
            "sa",
            "--redirect-uri",
            "http://x/cb",
            "--client-id",
            "b",
            "--client-secret",
            "sb",
            "--redirect-uri",
            "http://y/cb",
            "--disconnect-url",
            "http://x/hook",
            "--account",
            "one.amocrm.ru",
        ])?;
        assert_eq!(cfg.integrations.len(), 2);
        assert_eq!(cfg.integrations[1].client_secret, "sb");
        assert_eq!(
            cfg.integrations[0].disconnect_url.as_deref(),
            Some("http://x/hook")
        );
        assert_eq!(cfg.integrations[1].disconnect_url, None);
        assert_eq!(cfg.accounts, vec!["one.amocrm.ru".to_owned()]);
        assert_eq!(cfg.listen.port(), 9090);
        assert_eq!(cfg.rules, Rules::default());
        Ok(())
    }

    #[test]
    fn unsourced_rules_are_on_unless_turned_off() -> anyhow::Result<()> {
        let cfg = parse(&["--accept-lead-patch-links", "--token-endpoint-unlimited"])?;
        assert!(!cfg.rules.refuse_lead_patch_links);
        assert!(!cfg.rules.rate_limit_token_endpoint);
        let cfg = parse(&["--token-endpoint-unlimited"])?;
        assert!(cfg.rules.refuse_lead_patch_links);
        Ok(())
    }

    #[test]
    fn an_incomplete_integration_is_refused() {
        assert!(parse(&["--client-id", "a", "--client-secret", "s"]).is_err());
        assert!(
            parse(&[
                "--client-id",
                "a",
                "--client-secret",
                "s",
                "--redirect-uri",
                "nope"
            ])
            .is_err()
        );
    }
}
