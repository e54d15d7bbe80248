//! Connects one amoCRM account through OAuth and creates a lead with its contact, against `amocrm-sandbox`.
//!
//! Runs on its own: it starts a sandbox in this process on a free port. To talk to a sandbox already running
//! (`amocrm-sandbox --listen 127.0.0.1:9090`), set `AMOCRM_SANDBOX_URL=http://127.0.0.1:9090`: the example
//! registers its integration there through the sandbox's control API.
//!
//! ```sh
//! cargo run -p amocrm-client --example sandbox_oauth_lead
//! ```

use std::time::Duration;

use amocrm_client::{
    AccountHost, AmoClient, AmoConfig, AuthMode, ComplexLead, NewCompany, NewContact, Status,
};
use amocrm_sandbox::{Integration, Sandbox, SandboxConfig, SandboxHandle};
use secrecy::SecretString;
use url::Url;

const CLIENT_ID: &str = "example-integration";
const CLIENT_SECRET: &str = "example-secret";
// amoCRM sends the browser here with `?code=…&referer=…&state=…`; nothing needs to listen, the example reads
// the redirect the sandbox answers with.
const REDIRECT_URI: &str = "http://127.0.0.1:8080/oauth/amocrm/callback";
const ACCOUNT: &str = "sellerone.amocrm.ru";

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Where the sandbox is, and the in-process one kept alive while the example runs.
struct Target {
    base_url: String,
    _in_process: Option<SandboxHandle>,
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let integration = Integration::new(CLIENT_ID, CLIENT_SECRET, REDIRECT_URI);
    let target = match std::env::var("AMOCRM_SANDBOX_URL") {
        Ok(url) => {
            let base_url = url.trim_end_matches('/').to_owned();
            control()
                .post(format!("{base_url}/_sandbox/integrations"))
                .json(&integration)
                .send()
                .await?
                .error_for_status()?;
            Target {
                base_url,
                _in_process: None,
            }
        }
        Err(_) => {
            let sandbox = Sandbox::start(SandboxConfig {
                integrations: vec![integration],
                ..SandboxConfig::default()
            })
            .await?;
            Target {
                base_url: sandbox.base_url(),
                _in_process: Some(sandbox),
            }
        }
    };
    println!("sandbox at {}", target.base_url);

    // README: begin
    // The same configuration as for real amoCRM, with the two URLs pointed at the sandbox.
    let mut config = AmoConfig::new(
        CLIENT_ID,
        SecretString::from(CLIENT_SECRET),
        Url::parse(REDIRECT_URI)?,
    );
    config.authorize_url = Url::parse(&format!("{}/oauth", target.base_url))?;
    config.account_url_template = format!("{}/{{host}}", target.base_url);
    config.request_timeout = Duration::from_secs(10);
    let client = AmoClient::new(config)?;

    // 1. The seller opens the consent page and allows access; the sandbox's scripted consent stands in for
    //    the click and answers with the redirect amoCRM would send the browser to.
    let authorize = client.authorize_url("csrf-state-1", AuthMode::PostMessage);
    let redirect = approve(&target.base_url, &authorize, ACCOUNT).await?;
    let param = |name: &str| {
        redirect
            .query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    assert_eq!(
        param("state").as_deref(),
        Some("csrf-state-1"),
        "state comes back unchanged"
    );
    let code = param("code").ok_or("the redirect carries no code")?;
    // `referer` names the account; only allow-listed amoCRM domains are accepted.
    let referer = param("referer").ok_or("the redirect carries no referer")?;
    let host = AccountHost::parse(&referer, &client.config().allowed_domains)?;

    // 2. The code is exchanged once for a token pair (the sandbox, like amoCRM, refuses it a second time).
    let tokens = client.exchange_code(&host, &code).await?;
    println!(
        "connected {host} (account {:?}), access token valid until {}",
        tokens.claims.account_id, tokens.expires_at
    );

    // 3. API v4 for that account: its pipelines, then a lead with a new contact and company in one call.
    let api = client.api(&host, &tokens.access_token);
    let pipelines = api.pipelines().await?;
    for p in &pipelines {
        let stages: Vec<&str> = p.statuses.iter().map(|s| s.name.as_str()).collect();
        println!("pipeline {} {:?}: {}", p.id, p.name, stages.join(" → "));
    }
    let pipeline = pipelines
        .iter()
        .find(|p| p.is_main)
        .or(pipelines.first())
        .ok_or("no pipeline")?;
    // Stage type 1 is the incoming (unsorted) stage; 142 and 143 are won and lost. Take the first working one.
    let stage = pipeline
        .statuses
        .iter()
        .find(|s| s.type_ == 0 && s.id != Status::WON && s.id != Status::LOST)
        .ok_or("no working stage")?;

    let created = api
        .leads_complex(&[ComplexLead {
            name: "Order #1001".into(),
            price: 150_000,
            pipeline_id: pipeline.id,
            status_id: stage.id,
            request_id: "order-1001".into(),
            custom_fields_values: vec![],
            tags: vec!["marketplace".into()],
            contact: Some(NewContact {
                name: "Aziza Karimova".into(),
                phone: Some("+998901234567".into()),
                email: Some("aziza@example.com".into()),
            }),
            company: Some(NewCompany {
                name: "Karimova LLC".into(),
            }),
        }])
        .await?;
    let lead = created.first().ok_or("leads/complex returned nothing")?;
    println!(
        "lead {} created in stage {:?} (contact {:?}, company {:?}, request_id {:?})",
        lead.id, stage.name, lead.contact_id, lead.company_id, lead.request_id
    );
    // README: end

    let stored = api
        .get_lead(lead.id)
        .await?
        .ok_or("the new lead cannot be read back")?;
    assert_eq!(stored.price, 150_000);
    println!("read back: {:?}, price {}", stored.name, stored.price);
    Ok(())
}

/// An HTTP client for the sandbox's control routes; redirects are not followed, so the consent redirect can be read.
fn control() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default()
}

/// The seller's "Allow" for `host`: `GET /_sandbox/approve` with the consent page's query answers with a 302 to
/// the integration's redirect URI, exactly as a browser would be sent.
async fn approve(base_url: &str, authorize: &Url, host: &str) -> Result<Url, Error> {
    let mut url = Url::parse(&format!("{base_url}/_sandbox/approve"))?;
    url.set_query(authorize.query());
    url.query_pairs_mut()
        .append_pair("account", host)
        .append_pair("decision", "allow");
    let answer = control().get(url).send().await?;
    let location = answer
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| format!("approve answered {} without a redirect", answer.status()))?;
    Ok(Url::parse(location)?)
}
