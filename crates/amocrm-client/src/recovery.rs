//! Finding a renamed account (`amocrm-api.md` §1.4, §13.3): after the account's host refuses the refresh
//! (401/404), amoCRM tells where the account lives now, asked at the token's API host with the refresh token.

use reqwest::header::ACCEPT;
use secrecy::{ExposeSecret, SecretString};

use crate::api::{decode, transport_outcome};
use crate::client::AmoClient;
use crate::error::{ApiError, classify_status, classify_transport};
use crate::host::{AccountHost, ApiHost};
use crate::models::AccountDomain;
use crate::observe::CallOutcome;

/// The answer is four short fields; anything much larger is not it.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
const PATH: &str = "oauth2/account/current/subdomain";

impl AmoClient {
    /// `GET https://{api_host}/oauth2/account/current/subdomain` with header `X-Refresh-Token` (no
    /// Authorization, no body): the account's id, subdomain and host now. `account` is the host the account
    /// had: the call waits for that account's turn and rate-limit slot like every other call to it.
    ///
    /// `api_host` is checked against this client's allowed domains again before anything is sent, so the
    /// refresh token only ever travels to `api-*` hosts of this platform.
    #[tracing::instrument(skip_all, fields(api_host = %api_host, host = %account))]
    pub async fn account_subdomain(
        &self,
        api_host: &ApiHost,
        account: &AccountHost,
        refresh_token: &SecretString,
    ) -> Result<AccountDomain, ApiError> {
        let cfg = self.config();
        let target = api_host
            .as_account_host(&cfg.allowed_domains)
            .filter(|_| api_host.allowed_by(&cfg.allowed_domains));
        let Some(target) = target else {
            tracing::warn!("subdomain lookup refused: API host not allowed");
            return Err(ApiError::Request("the API host is not allowed".into()));
        };
        let url = cfg
            .account_url(&target, PATH)
            .map_err(|e| ApiError::Request(format!("bad API host URL: {e}")))?;
        let req = self
            .http()
            .get(url)
            .header("X-Refresh-Token", refresh_token.expose_secret())
            .header("X-Client-UUID", cfg.client_id.as_str())
            .header(ACCEPT, "application/json");
        let slot = self.admit(account).await;
        let started = std::time::Instant::now();
        let sent = req.send().await;
        drop(slot);
        let resp = match sent {
            Ok(resp) => resp,
            Err(e) => {
                self.observe("GET", PATH, transport_outcome(&e), started);
                return Err(classify_transport(&e));
            }
        };
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => {
                self.observe("GET", PATH, transport_outcome(&e), started);
                return Err(classify_transport(&e));
            }
        };
        self.observe("GET", PATH, CallOutcome::Status(status.as_u16()), started);
        if body.len() > MAX_ANSWER_BYTES {
            return Err(ApiError::Decode("subdomain answer too large".into()));
        }
        if !status.is_success() {
            let err = classify_status(status, &headers, &body);
            tracing::warn!(status = status.as_u16(), error = %err, "subdomain lookup refused");
            return Err(err);
        }
        let answer: AccountDomain = decode(&body)?;
        tracing::info!(
            account_id = answer.id,
            "amoCRM named the account's current host"
        );
        Ok(answer)
    }
}
