//! OAuth 2.0 with amoCRM through the `oauth2` crate: code exchange, refresh, token claims and error classes.
//!
//! amoCRM's quirks handled here: the token endpoint is per account (`{account}/oauth2/access_token`), credentials go
//! in the body (not HTTP Basic), `redirect_uri` is required on refresh too, and error bodies are not RFC 6749 shaped
//! (`{hint,title,type,status,detail}`), so the raw HTTP status and body are captured by our own HTTP adapter and
//! classified here. Redirects are never followed (the client secret must not travel to another host).

use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use oauth2::basic::BasicClient;
use oauth2::{
    AuthType, AuthorizationCode, ClientId, ClientSecret, RedirectUrl, RefreshToken,
    RequestTokenError, TokenResponse, TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::client::AmoClient;
use crate::error::{
    DEFAULT_RETRY_AFTER, ProblemBody, retry_after_header, transport_reason, truncate,
};
use crate::host::AccountHost;

/// Access-token lifetime assumed when amoCRM omits `expires_in` (it documents 24 h).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(86_400);

/// A fresh token pair. `Debug` shows no token.
#[derive(Clone, Debug)]
pub struct TokenSet {
    /// The access token sent as `Authorization: Bearer`.
    pub access_token: SecretString,
    /// The refresh token (single-use: each refresh returns a new one).
    pub refresh_token: SecretString,
    /// When the access token expires, by our clock (`now + expires_in` at receipt).
    pub expires_at: DateTime<Utc>,
    /// What the access token says about itself (account, API domain, expiry).
    pub claims: TokenClaims,
}

/// Claims read from the access token's JWT payload, without verifying its signature (amoCRM publishes no key;
/// these are hints: confirm the account with `GET /api/v4/account`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct TokenClaims {
    #[serde(default, deserialize_with = "crate::models::de::opt_u64_flex")]
    /// The amoCRM account id.
    pub account_id: Option<u64>,
    #[serde(default)]
    /// The API host to call for this account (`api-b.amocrm.ru`).
    pub api_domain: Option<String>,
    #[serde(default)]
    /// The account's base domain (`amocrm.ru`, `kommo.com`).
    pub base_domain: Option<String>,
    #[serde(default, deserialize_with = "crate::models::de::opt_i64_flex")]
    /// Expiry (Unix seconds).
    pub exp: Option<i64>,
}

impl TokenClaims {
    /// Decodes the payload of a JWT-shaped token; anything unreadable gives empty claims.
    pub fn from_jwt(token: &str) -> Self {
        let mut parts = token.split('.');
        let (Some(_), Some(payload), Some(_)) = (parts.next(), parts.next(), parts.next()) else {
            return Self::default();
        };
        let payload = payload.trim_end_matches('=');
        if payload.len() > 16 * 1024 {
            return Self::default();
        }
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }
}

/// Why a token request failed. No variant ever carries a token or the client secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OAuthError {
    /// Any 4xx but 429: the code or refresh token is dead (revoked, expired, reused) or the integration is
    /// misconfigured. Terminal: do not retry with the same grant.
    #[error("amoCRM refused the token request (HTTP {status}){}", .hint.as_deref().map(|h| format!(": {h}")).unwrap_or_default())]
    Rejected {
        /// HTTP status of the refusal.
        status: u16,
        /// amoCRM's `hint` (`Authorization code has been revoked`, …).
        hint: Option<String>,
        /// amoCRM's `title`.
        title: Option<String>,
        /// amoCRM's `detail`.
        detail: Option<String>,
    },
    /// 429: wait before trying again.
    #[error("amoCRM rate limit hit on the token endpoint, retry after {retry_after:?}")]
    RateLimited {
        /// How long amoCRM asked to wait.
        retry_after: Duration,
    },
    /// 5xx, network error or timeout: retry later with the same grant (amoCRM's grace rule keeps the old refresh
    /// token valid until the new one is used).
    #[error("amoCRM token endpoint temporarily unavailable: {0}")]
    Transient(String),
    /// The host is not under an allowed domain: nothing was sent.
    #[error("account host is not allowed")]
    HostNotAllowed,
    /// Anything else (unexpected status or an unreadable success body).
    #[error("token request failed: {0}")]
    Other(String),
}

impl OAuthError {
    /// Whether retrying the same grant later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::RateLimited { .. } | Self::Transient(_))
    }
}

/// A transport failure inside the oauth2 HTTP adapter (kept apart from HTTP answers).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

/// The last HTTP answer the adapter saw: status, headers, body (for classification only, never logged).
type Captured = StdMutex<Option<(u16, reqwest::header::HeaderMap, Vec<u8>)>>;

enum Grant<'a> {
    Code(&'a str),
    Refresh(&'a SecretString),
}

impl AmoClient {
    /// Exchanges an authorization code at `{account}/oauth2/access_token`. The host is re-checked against the
    /// allowed domains before anything carrying the client secret is sent.
    #[tracing::instrument(skip_all, fields(host = %host))]
    pub async fn exchange_code(
        &self,
        host: &AccountHost,
        code: &str,
    ) -> Result<TokenSet, OAuthError> {
        self.token_request(host, Grant::Code(code)).await
    }

    /// Exchanges a refresh token for a new pair (the old refresh token stays valid until the new one is used).
    #[tracing::instrument(skip_all, fields(host = %host))]
    pub async fn refresh(
        &self,
        host: &AccountHost,
        refresh_token: &SecretString,
    ) -> Result<TokenSet, OAuthError> {
        self.token_request(host, Grant::Refresh(refresh_token))
            .await
    }

    async fn token_request(
        &self,
        host: &AccountHost,
        grant: Grant<'_>,
    ) -> Result<TokenSet, OAuthError> {
        let cfg = self.config();
        if !cfg.allowed_domains.allows(host) {
            tracing::warn!("token request refused: host not allowed");
            return Err(OAuthError::HostNotAllowed);
        }
        let token_url = cfg
            .account_url(host, "oauth2/access_token")
            .map_err(|e| OAuthError::Other(format!("bad token URL: {e}")))?;
        let client = BasicClient::new(ClientId::new(cfg.client_id.clone()))
            .set_client_secret(ClientSecret::new(
                cfg.client_secret.expose_secret().to_owned(),
            ))
            .set_token_uri(TokenUrl::from_url(token_url))
            .set_redirect_uri(RedirectUrl::from_url(cfg.redirect_uri.clone()))
            .set_auth_type(AuthType::RequestBody);

        // Owned captures (no borrowed state) keep the token future `Send` for any lifetime, so callers can
        // spawn refreshes on a multi-threaded runtime.
        let captured: Arc<Captured> = Arc::new(StdMutex::new(None));
        let send = {
            let http = self.http().clone();
            let captured = captured.clone();
            move |req: oauth2::HttpRequest| {
                let http = http.clone();
                let captured = captured.clone();
                async move {
                    let req: reqwest::Request = req
                        .try_into()
                        .map_err(|e: reqwest::Error| TransportError(transport_reason(&e)))?;
                    let resp = http
                        .execute(req)
                        .await
                        .map_err(|e| TransportError(transport_reason(&e)))?;
                    let status = resp.status();
                    let headers = resp.headers().clone();
                    let body = resp
                        .bytes()
                        .await
                        .map_err(|e| TransportError(transport_reason(&e)))?
                        .to_vec();
                    if let Ok(mut slot) = captured.lock() {
                        *slot = Some((status.as_u16(), headers.clone(), body.clone()));
                    }
                    let mut builder = http::Response::builder().status(status);
                    for (name, value) in &headers {
                        builder = builder.header(name, value);
                    }
                    builder
                        .body(body)
                        .map_err(|e| TransportError(format!("bad response: {e}")))
                }
            }
        };

        let slot = self.admit(host).await;
        let started = std::time::Instant::now();
        let kind = match grant {
            Grant::Code(_) => "authorization_code",
            Grant::Refresh(_) => "refresh_token",
        };
        let result = match grant {
            Grant::Code(code) => {
                client
                    .exchange_code(AuthorizationCode::new(code.to_owned()))
                    .request_async(&send)
                    .await
            }
            Grant::Refresh(token) => {
                let refresh = RefreshToken::new(token.expose_secret().to_owned());
                client
                    .exchange_refresh_token(&refresh)
                    .add_extra_param("redirect_uri", cfg.redirect_uri.as_str())
                    .request_async(&send)
                    .await
            }
        };
        // Answered (or given up): the slot counts from now.
        drop(slot);
        let status = captured
            .lock()
            .ok()
            .and_then(|c| c.as_ref().map(|(s, _, _)| *s));
        let outcome = match (status, &result) {
            (Some(s), _) => crate::observe::CallOutcome::Status(s),
            (None, Err(e)) if e.to_string().contains("timeout") => {
                crate::observe::CallOutcome::Timeout
            }
            (None, _) => crate::observe::CallOutcome::Network,
        };
        self.observe("POST", "oauth2/access_token", outcome, started);
        match result {
            Ok(token) => {
                tracing::info!(
                    grant = kind,
                    status = status.unwrap_or(200),
                    "token request succeeded"
                );
                let Some(refresh) = token.refresh_token() else {
                    return Err(OAuthError::Other(
                        "token response has no refresh_token".into(),
                    ));
                };
                let access = token.access_token().secret();
                let lifetime = token.expires_in().unwrap_or(DEFAULT_TOKEN_LIFETIME);
                let lifetime =
                    chrono::Duration::from_std(lifetime).unwrap_or(chrono::Duration::days(1));
                Ok(TokenSet {
                    claims: TokenClaims::from_jwt(access),
                    access_token: SecretString::from(access.as_str()),
                    refresh_token: SecretString::from(refresh.secret().as_str()),
                    expires_at: Utc::now() + lifetime,
                })
            }
            Err(err) => {
                let captured = captured.lock().ok().and_then(|mut c| c.take());
                let error = classify_token_error(err, captured);
                tracing::warn!(grant = kind, status, error = %error, "token request failed");
                Err(error)
            }
        }
    }
}

fn classify_token_error<RE, TE>(
    err: RequestTokenError<RE, TE>,
    captured: Option<(u16, reqwest::header::HeaderMap, Vec<u8>)>,
) -> OAuthError
where
    RE: std::error::Error + 'static,
    TE: oauth2::ErrorResponse + 'static,
{
    if let RequestTokenError::Request(e) = &err {
        return OAuthError::Transient(e.to_string());
    }
    let Some((status, headers, body)) = captured else {
        return OAuthError::Other("no response".into());
    };
    match status {
        429 => OAuthError::RateLimited {
            retry_after: ProblemBody::parse(&body)
                .retry_after()
                .or_else(|| retry_after_header(&headers))
                .unwrap_or(DEFAULT_RETRY_AFTER),
        },
        500..=599 => OAuthError::Transient(format!("HTTP {status}")),
        400..=499 => {
            let p = ProblemBody::parse(&body);
            let short = |s: Option<String>| s.map(|s| truncate(&s, 300));
            OAuthError::Rejected {
                status,
                hint: short(p.hint),
                title: short(p.title),
                detail: short(p.detail),
            }
        }
        200 => match err {
            // The body holds tokens: report where parsing failed, never the body or serde's value echo.
            RequestTokenError::Parse(e, _) => {
                OAuthError::Other(format!("token response unreadable at `{}`", e.path()))
            }
            RequestTokenError::Other(msg) => OAuthError::Other(truncate(&msg, 200)),
            _ => OAuthError::Other("token response unreadable".into()),
        },
        other => OAuthError::Other(format!("unexpected HTTP {other} from the token endpoint")),
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
    use super::*;
    use crate::test_support::fixture;

    #[test]
    fn claims_are_read_from_a_real_amocrm_access_token() {
        let raw = fixture("oauth-token-response-1.json");
        let v: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        let claims = TokenClaims::from_jwt(v["access_token"].as_str().unwrap());
        assert_eq!(claims.account_id, Some(29_931_190));
        assert_eq!(claims.exp, Some(1_698_230_354));
        assert_eq!(claims.base_domain.as_deref(), Some("amocrm.ru"));
        assert_eq!(claims.api_domain, None);
    }

    #[test]
    fn unreadable_tokens_give_empty_claims() {
        for t in [
            "",
            "abc",
            "a.b",
            "a.!!!.c",
            "a.eyJ4Ijp9.c",
            "def50200REDACTED",
            "a.W10.c",
        ] {
            assert_eq!(TokenClaims::from_jwt(t), TokenClaims::default(), "{t}");
        }
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"account_id":"31000001","api_domain":"api-b.amocrm.ru","exp":1}"#);
        let c = TokenClaims::from_jwt(&format!("h.{payload}.s"));
        assert_eq!(c.account_id, Some(31_000_001));
        assert_eq!(c.api_domain.as_deref(), Some("api-b.amocrm.ru"));
    }

    #[test]
    fn token_set_debug_shows_no_token() {
        let t = TokenSet {
            access_token: SecretString::from("access-secret-xyz"),
            refresh_token: SecretString::from("refresh-secret-xyz"),
            expires_at: Utc::now(),
            claims: TokenClaims::default(),
        };
        let shown = format!("{t:?}");
        assert!(!shown.contains("secret-xyz"), "{shown}");
    }

    #[test]
    fn amocrm_error_bodies_become_rejections_with_hint() {
        let body = fixture("oauth-error-cannot-decrypt-code-1.json");
        let err: RequestTokenError<TransportError, oauth2::basic::BasicErrorResponse> =
            RequestTokenError::Other("x".into());
        let e = classify_token_error(err, Some((400, Default::default(), body)));
        let OAuthError::Rejected { status, hint, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(
            (*status, hint.as_deref()),
            (400, Some("Cannot decrypt the authorization code"))
        );
        assert!(!e.is_retryable());
        let err: RequestTokenError<TransportError, oauth2::basic::BasicErrorResponse> =
            RequestTokenError::Other("x".into());
        assert!(matches!(
            classify_token_error(err, Some((502, Default::default(), b"<html>".to_vec()))),
            OAuthError::Transient(_)
        ));
    }
}
