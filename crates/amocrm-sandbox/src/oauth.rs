//! amoCRM's OAuth rules: consent decisions, the token endpoint's grants, bearer-token validation.

use std::collections::HashMap;

use actix_web::http::StatusCode;

use crate::model::TokenPair;
use crate::state::{
    ACCESS_TTL_SECS, AccessRecord, AuthCode, CODE_TTL_SECS, PairRecord, REFRESH_TTL_SECS,
    RefreshRecord, State, next,
};
use crate::tokens::{self, Claims};

/// The parameters of an authorize URL (`/oauth?client_id&state&mode&redirect_uri`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthorizeParams {
    /// The integration's client id.
    pub client_id: String,
    /// The caller's CSRF state, returned unchanged in the redirect.
    pub state: Option<String>,
    /// `popup` or `post_message`; both answer with the same redirect here.
    pub mode: Option<String>,
    /// The integration's redirect URI; amoCRM requires it to match exactly.
    pub redirect_uri: Option<String>,
}

impl AuthorizeParams {
    /// Reads the parameters from a full authorize URL or from its query string alone.
    pub fn parse(url_or_query: &str) -> Self {
        let query = match url_or_query.split_once('?') {
            Some((_, q)) => q,
            None => url_or_query,
        };
        let query = query.split('#').next().unwrap_or("");
        Self::from_pairs(&form_pairs(query))
    }

    /// Reads the parameters from a decoded query or form.
    pub fn from_pairs(pairs: &HashMap<String, String>) -> Self {
        let get = |k: &str| pairs.get(k).filter(|v| !v.is_empty()).cloned();
        Self {
            client_id: get("client_id").unwrap_or_default(),
            state: get("state"),
            mode: get("mode"),
            redirect_uri: get("redirect_uri"),
        }
    }
}

/// Parses an urlencoded string into a map (last value wins); never fails.
pub fn form_pairs(s: &str) -> HashMap<String, String> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(s)
        .unwrap_or_default()
        .into_iter()
        .collect()
}

/// Why a consent request cannot be honoured (shown on the consent page, returned by `approve`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsentError {
    #[error("unknown client_id {0:?}")]
    /// No integration has this client id.
    UnknownClient(String),
    #[error("redirect_uri does not match the integration's redirect URI")]
    /// The `redirect_uri` sent is not the integration's.
    RedirectMismatch,
    #[error("invalid account host {0:?}")]
    /// The account host is not a valid host.
    BadHost(String),
}

/// The user's decision on the consent page: the redirect URL amoCRM sends the browser to.
pub fn decide(
    st: &mut State,
    params: &AuthorizeParams,
    host: &str,
    allow: bool,
) -> Result<String, ConsentError> {
    let integration = st
        .integrations
        .get(&params.client_id)
        .cloned()
        .ok_or_else(|| ConsentError::UnknownClient(params.client_id.clone()))?;
    if let Some(r) = &params.redirect_uri
        && r != &integration.redirect_uri
    {
        return Err(ConsentError::RedirectMismatch);
    }
    let mut query: Vec<(&str, String)> = Vec::new();
    let host_norm =
        State::normalize_host(host).ok_or_else(|| ConsentError::BadHost(host.to_owned()))?;
    if allow {
        st.ensure_account(&host_norm)
            .ok_or_else(|| ConsentError::BadHost(host.to_owned()))?;
        let code = mint_code(st, &integration.client_id, &host_norm);
        query.push(("code", code));
        if let Some(s) = &params.state {
            query.push(("state", s.clone()));
        }
        query.push(("platform", crate::state::platform_of(&host_norm).to_owned()));
        query.push(("referer", host_norm));
        query.push(("client_id", integration.client_id.clone()));
    } else {
        query.push(("error", "access_denied".to_owned()));
        query.push(("client_id", integration.client_id.clone()));
        if let Some(s) = &params.state {
            query.push(("state", s.clone()));
        }
    }
    let sep = if integration.redirect_uri.contains('?') {
        '&'
    } else {
        '?'
    };
    let qs = serde_urlencoded::to_string(&query).unwrap_or_default();
    Ok(format!("{}{sep}{qs}", integration.redirect_uri))
}

/// Issues an authorization code for `client_id` in the (existing) account `host`.
pub fn mint_code(st: &mut State, client_id: &str, host: &str) -> String {
    let install_id = st.ensure_install(client_id, host);
    let code = tokens::opaque();
    let issued_at = st.now(host);
    st.codes.insert(
        code.clone(),
        AuthCode {
            client_id: client_id.to_owned(),
            host: host.to_owned(),
            install_id,
            issued_at,
            used: false,
        },
    );
    code
}

/// A token-endpoint refusal: HTTP status and amoCRM's `hint`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenError {
    /// HTTP status of the answer.
    pub status: StatusCode,
    /// amoCRM's hint on what to change.
    pub hint: &'static str,
}

fn refuse(hint: &'static str) -> TokenError {
    TokenError {
        status: StatusCode::BAD_REQUEST,
        hint,
    }
}

/// A required parameter of the token request, or the refusal whose `hint` names it.
fn required<'a>(value: &'a Option<String>, hint: &'static str) -> Result<&'a str, TokenError> {
    value.as_deref().ok_or(refuse(hint))
}

/// Fields of a token request (JSON or form).
#[derive(Debug, Default)]
pub struct TokenRequest {
    /// `authorization_code` or `refresh_token`.
    pub grant_type: Option<String>,
    /// The integration's client id.
    pub client_id: Option<String>,
    /// The integration's client secret.
    pub client_secret: Option<String>,
    /// The integration's redirect URI; amoCRM requires it to match exactly.
    pub redirect_uri: Option<String>,
    /// The authorization code (for `authorization_code`).
    pub code: Option<String>,
    /// The refresh token (single-use: each refresh returns a new one).
    pub refresh_token: Option<String>,
}

impl TokenRequest {
    /// Parses a JSON or form body (by content type, falling back to the other).
    pub fn parse(content_type: &str, body: &[u8]) -> Self {
        let from_json = || -> Option<HashMap<String, String>> {
            let v: serde_json::Value = serde_json::from_slice(body).ok()?;
            let obj = v.as_object()?;
            Some(
                obj.iter()
                    .filter_map(|(k, v)| {
                        let s = match v {
                            serde_json::Value::String(s) => s.clone(),
                            serde_json::Value::Number(n) => n.to_string(),
                            _ => return None,
                        };
                        Some((k.clone(), s))
                    })
                    .collect(),
            )
        };
        let from_form = || form_pairs(std::str::from_utf8(body).unwrap_or(""));
        let map = if content_type.starts_with("application/json") {
            from_json().unwrap_or_default()
        } else if content_type.starts_with("application/x-www-form-urlencoded") {
            from_form()
        } else {
            from_json().unwrap_or_else(from_form)
        };
        let get = |k: &str| map.get(k).filter(|v| !v.is_empty()).cloned();
        Self {
            grant_type: get("grant_type"),
            client_id: get("client_id"),
            client_secret: get("client_secret"),
            redirect_uri: get("redirect_uri"),
            code: get("code"),
            refresh_token: get("refresh_token"),
        }
    }
}

/// Which grant a token request was, for counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// `authorization_code`.
    Code,
    /// `refresh_token`.
    Refresh,
    /// Anything else (refused).
    Other,
}

/// Runs the token endpoint for account `host`.
pub fn token_grant(
    st: &mut State,
    host: &str,
    req: &TokenRequest,
) -> (Grant, Result<TokenPair, TokenError>) {
    let grant = match req.grant_type.as_deref() {
        Some("authorization_code") => Grant::Code,
        Some("refresh_token") => Grant::Refresh,
        _ => Grant::Other,
    };
    (grant, run_grant(st, host, req, grant))
}

fn run_grant(
    st: &mut State,
    host: &str,
    req: &TokenRequest,
    grant: Grant,
) -> Result<TokenPair, TokenError> {
    match req.grant_type.as_deref() {
        None => return Err(refuse("Check the `grant_type` parameter")),
        Some(_) if grant == Grant::Other => {
            return Err(refuse(
                "Check that all required parameters have been provided",
            ));
        }
        Some(_) => {}
    }
    let client_id = required(&req.client_id, "Check the `client_id` parameter")?;
    let integration = st
        .integrations
        .get(client_id)
        .cloned()
        .ok_or(refuse("Check the `client_id` parameter"))?;
    let secret = required(&req.client_secret, "Check the `client_secret` parameter")?;
    if !constant_eq(secret.as_bytes(), integration.client_secret.as_bytes()) {
        return Err(refuse("Check the `client_secret` parameter"));
    }
    let redirect = required(&req.redirect_uri, "Check the `redirect_uri` parameter")?;
    if redirect != integration.redirect_uri {
        return Err(refuse("Redirect URI is not associated with client"));
    }
    let now = st.now(host);
    match grant {
        Grant::Code => {
            let code = required(&req.code, "Check the `code` parameter")?;
            let rec = st
                .codes
                .get_mut(code)
                .ok_or(refuse("Cannot decrypt the authorization code"))?;
            if rec.client_id != client_id {
                return Err(refuse("Authorization code was not issued to this client"));
            }
            if rec.host != host {
                return Err(refuse("Invalid account"));
            }
            if now >= rec.issued_at + CODE_TTL_SECS {
                return Err(refuse("Authorization code has expired"));
            }
            if rec.used {
                return Err(refuse("Authorization code has been revoked"));
            }
            rec.used = true;
            let install_id = rec.install_id;
            if !st.install_live(install_id) {
                return Err(refuse("Authorization code has been revoked"));
            }
            Ok(mint_pair(st, install_id, None))
        }
        Grant::Refresh => {
            let token = required(&req.refresh_token, "Check the `refresh_token` parameter")?;
            let rec = st
                .refresh
                .get(token)
                .ok_or(refuse("Cannot decrypt the refresh token"))?;
            if rec.client_id != client_id {
                return Err(refuse("Token is not linked to client"));
            }
            if rec.host != host {
                return Err(refuse("Invalid account"));
            }
            let (pair_id, install_id, exp) = (rec.pair_id, rec.install_id, rec.exp);
            if !st.install_live(install_id) {
                return Err(refuse("Token has been revoked"));
            }
            if st.pairs.get(&pair_id).is_none_or(|p| p.refresh_dead) {
                return Err(refuse("Token has been revoked"));
            }
            if now >= exp {
                return Err(refuse("Token has expired"));
            }
            // Using a refresh token is using its pair: that retires the pair's own parent.
            st.mark_pair_used(pair_id);
            Ok(mint_pair(st, install_id, Some(pair_id)))
        }
        Grant::Other => Err(refuse(
            "Check that all required parameters have been provided",
        )),
    }
}

/// Mints a new access/refresh pair for an installation, chained to `parent` for the grace rule.
pub fn mint_pair(st: &mut State, install_id: u64, parent: Option<u64>) -> TokenPair {
    let (client_id, host) = match st.installs.get(&install_id) {
        Some(i) => (i.client_id.clone(), i.host.clone()),
        None => (String::new(), String::new()),
    };
    let (account_id, user_id, api_domain) = st
        .accounts
        .get(&host)
        .map(|a| (a.id, a.token_user_id, a.api_domain.clone()))
        .unwrap_or_else(|| (0, 0, crate::state::default_api_domain(&host)));
    let now = st.now(&host);
    let pair_id = next(&mut st.ids.pair);
    let access = tokens::access_token(&Claims {
        client_id: &client_id,
        user_id,
        account_id,
        host: &host,
        api_domain: &api_domain,
        iat: now,
        exp: now + ACCESS_TTL_SECS,
    });
    let refresh = tokens::opaque();
    st.pairs.insert(
        pair_id,
        PairRecord {
            install_id,
            parent,
            children: Vec::new(),
            used: false,
            refresh_dead: false,
        },
    );
    if let Some(p) = parent.and_then(|p| st.pairs.get_mut(&p)) {
        p.children.push(pair_id);
    }
    st.access.insert(
        access.clone(),
        AccessRecord {
            pair_id,
            user_id,
            install_id,
            host: host.clone(),
            exp: now + ACCESS_TTL_SECS,
        },
    );
    st.refresh.insert(
        refresh.clone(),
        RefreshRecord {
            pair_id,
            install_id,
            host,
            client_id,
            exp: now + REFRESH_TTL_SECS,
        },
    );
    TokenPair {
        token_type: "Bearer".to_owned(),
        expires_in: ACCESS_TTL_SECS,
        access_token: access,
        refresh_token: refresh,
        server_time: now,
        account_id,
    }
}

/// Checks a bearer token for `host`; marks its pair used. Returns the installation's client id.
pub fn authenticate(st: &mut State, host: &str, token: &str) -> Option<String> {
    let rec = st.access.get(token)?;
    if rec.host != host || st.now(host) >= rec.exp || !st.install_live(rec.install_id) {
        return None;
    }
    let (pair_id, install_id) = (rec.pair_id, rec.install_id);
    st.mark_pair_used(pair_id);
    st.installs.get(&install_id).map(|i| i.client_id.clone())
}

/// The user an access token acts as (its `sub`), whether or not the token is still valid.
pub fn token_user(st: &State, token: &str) -> Option<u64> {
    st.access.get(token).map(|r| r.user_id)
}

/// amoCRM's answer to `GET {api_host}/oauth2/account/current/subdomain` with `X-Refresh-Token: refresh`:
/// where the account of that (still usable) refresh token lives now. `Err` is the HTTP status to answer.
pub fn subdomain_lookup(
    st: &State,
    api_host: &str,
    refresh: &str,
) -> Result<serde_json::Value, StatusCode> {
    let rec = st.refresh.get(refresh).ok_or(StatusCode::UNAUTHORIZED)?;
    let usable = st.install_live(rec.install_id)
        && st.pairs.get(&rec.pair_id).is_some_and(|p| !p.refresh_dead)
        && st.now(&rec.host) < rec.exp;
    if !usable {
        return Err(StatusCode::UNAUTHORIZED);
    }
    let acc = st.accounts.get(&rec.host).ok_or(StatusCode::UNAUTHORIZED)?;
    if acc.api_domain != api_host {
        return Err(StatusCode::NOT_FOUND);
    }
    let tld = acc.host.rsplit('.').next().unwrap_or_default();
    Ok(serde_json::json!({
        "id": acc.id,
        "subdomain": acc.subdomain,
        "domain": acc.host,
        "top_level_domain": tld,
    }))
}

/// Revokes the active installation of `client_id` in `host`; returns whether one existed.
pub fn revoke(st: &mut State, host: &str, client_id: &str) -> bool {
    match st
        .active_installs
        .remove(&(client_id.to_owned(), host.to_owned()))
    {
        Some(id) => {
            if let Some(i) = st.installs.get_mut(&id) {
                i.revoked = true;
            }
            true
        }
        None => false,
    }
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
