//! Client configuration: the integration's credentials, where amoCRM lives, limits and timeouts.

use std::time::Duration;

use secrecy::SecretString;
use url::Url;

use crate::host::{AccountHost, AllowedDomains};

/// The placeholder in [`AmoConfig::account_url_template`] replaced by the account host.
pub const HOST_PLACEHOLDER: &str = "{host}";

/// Everything the client needs; `Debug` shows no secret (`client_secret` is a [`SecretString`]).
#[derive(Clone, Debug)]
pub struct AmoConfig {
    /// The integration's client id.
    pub client_id: String,
    /// The integration's client secret.
    pub client_secret: SecretString,
    /// The integration's redirect URI; amoCRM requires it to match exactly.
    pub redirect_uri: Url,
    /// The consent page, `https://www.amocrm.ru/oauth` (Kommo: `https://www.kommo.com/oauth`).
    pub authorize_url: Url,
    /// Base URL of an account: `https://{host}` for real amoCRM, `http://127.0.0.1:9090/{host}` for a sandbox.
    pub account_url_template: String,
    /// The domains an account host may end in (`amocrm.ru`, `amocrm.com`, `kommo.com`); anything else is refused before a request is sent.
    pub allowed_domains: AllowedDomains,
    /// Requests per sliding second per account, every kind of call counted (amoCRM allows 7).
    pub rate_limit_rps: u32,
    /// Whole-request deadline; passing it after the request was sent makes a create [`crate::ApiError::Ambiguous`].
    pub request_timeout: Duration,
    /// Deadline for opening a connection; failing it is safe to retry (nothing was sent).
    pub connect_timeout: Duration,
}

impl AmoConfig {
    /// A configuration for real amoCRM (amocrm.ru consent page, `https://{host}`, 7 rps, 30 s / 10 s timeouts).
    pub fn new(
        client_id: impl Into<String>,
        client_secret: SecretString,
        redirect_uri: Url,
    ) -> Self {
        Self {
            client_id: client_id.into(),
            client_secret,
            redirect_uri,
            authorize_url: Url::parse("https://www.amocrm.ru/oauth")
                .unwrap_or_else(|_| unreachable!()),
            account_url_template: "https://{host}".to_owned(),
            allowed_domains: AllowedDomains::default(),
            rate_limit_rps: 7,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// Checks what cannot be expressed in the types: a usable template, a positive rate, non-zero timeouts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.client_id.trim().is_empty() {
            return Err(ConfigError::EmptyClientId);
        }
        if self.rate_limit_rps == 0 {
            return Err(ConfigError::ZeroRateLimit);
        }
        if self.request_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout);
        }
        if !self.account_url_template.contains(HOST_PLACEHOLDER) {
            return Err(ConfigError::Template("it has no {host} placeholder"));
        }
        let probe = AccountHost::parse(
            &format!(
                "probe.{}",
                self.allowed_domains
                    .domains()
                    .first()
                    .map_or("amocrm.ru", |d| d)
            ),
            &self.allowed_domains,
        )
        .map_err(|_| ConfigError::Template("the allowed domains are unusable"))?;
        let url = self
            .account_base_url(&probe)
            .map_err(|_| ConfigError::Template("it does not give a valid URL"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(ConfigError::Template("it must give an http or https URL"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(ConfigError::Template(
                "it must not have a query or fragment",
            ));
        }
        Ok(())
    }

    /// The account's base URL (no trailing slash), e.g. `https://sellerone.amocrm.ru`.
    pub fn account_base_url(&self, host: &AccountHost) -> Result<Url, url::ParseError> {
        let raw = self
            .account_url_template
            .replace(HOST_PLACEHOLDER, host.as_str());
        Url::parse(raw.trim_end_matches('/'))
    }

    /// `{account base}/{path}` with `path` relative (e.g. `api/v4/account`).
    pub(crate) fn account_url(
        &self,
        host: &AccountHost,
        path: &str,
    ) -> Result<Url, url::ParseError> {
        let base = self.account_base_url(host)?;
        let joined = format!(
            "{}/{}",
            base.as_str().trim_end_matches('/'),
            path.trim_start_matches('/')
        );
        Url::parse(&joined)
    }
}

/// How the consent page returns to us ([amoCRM §1.1](https://www.amocrm.ru/developers)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    /// The redirect happens inside the popup, which posts a message to its opener and closes.
    PostMessage,
    /// The popup closes and the opener (main window) is redirected.
    Popup,
}

impl AuthMode {
    /// The value of the `mode` query parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::PostMessage => "post_message",
            AuthMode::Popup => "popup",
        }
    }
}

/// A configuration the client refuses to start with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("amoCRM client id is empty")]
    /// No client id: every token request would be refused.
    EmptyClientId,
    #[error("amoCRM rate limit must be at least 1 request per second")]
    /// A rate of 0 would never admit a request.
    ZeroRateLimit,
    #[error("amoCRM timeouts must be greater than zero")]
    /// A zero timeout fails every request at once.
    ZeroTimeout,
    #[error("amoCRM account URL template is unusable: {0}")]
    /// The account URL template gives no usable URL (the reason is given).
    Template(&'static str),
    #[error("HTTP client could not be built: {0}")]
    /// The HTTP client (TLS, timeouts) could not be built.
    Http(String),
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
    use super::*;

    fn cfg() -> AmoConfig {
        AmoConfig::new(
            "client-1",
            SecretString::from("very-secret-value"),
            Url::parse("https://shop.example/oauth/amocrm/callback").unwrap(),
        )
    }

    #[test]
    fn debug_output_never_shows_the_client_secret() {
        let shown = format!("{:?}", cfg());
        assert!(!shown.contains("very-secret-value"), "{shown}");
        assert!(shown.contains("client-1"));
    }

    #[test]
    fn account_urls_follow_the_template_with_and_without_a_path_prefix() {
        let host = AccountHost::parse("sellerone.amocrm.ru", &AllowedDomains::default()).unwrap();
        let mut c = cfg();
        assert_eq!(
            c.account_url(&host, "api/v4/account").unwrap().as_str(),
            "https://sellerone.amocrm.ru/api/v4/account"
        );
        c.account_url_template = "http://127.0.0.1:9090/{host}/".into();
        c.validate().unwrap();
        assert_eq!(
            c.account_url(&host, "/oauth2/access_token")
                .unwrap()
                .as_str(),
            "http://127.0.0.1:9090/sellerone.amocrm.ru/oauth2/access_token"
        );
    }

    #[test]
    fn unusable_templates_and_limits_are_refused() {
        let mut c = cfg();
        c.account_url_template = "https://example.com".into();
        assert!(c.validate().is_err());
        c.account_url_template = "ftp://{host}".into();
        assert!(c.validate().is_err());
        c.account_url_template = "https://{host}?x=1".into();
        assert!(c.validate().is_err());
        let mut c = cfg();
        c.rate_limit_rps = 0;
        assert_eq!(c.validate(), Err(ConfigError::ZeroRateLimit));
        assert!(cfg().validate().is_ok());
    }
}
