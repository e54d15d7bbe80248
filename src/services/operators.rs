//! Operators of the connector: accounts with Argon2id passwords, sign-in with access and refresh tokens
//! (stored only as SHA-256 hashes), dashboard sessions, and the throttle that slows down password guessing.

use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use chrono::{NaiveDateTime, TimeDelta};
use secrecy::{ExposeSecret, SecretString};

use crate::domain::ids::{random_token, sha256_hex};
use crate::storage::operators::{OperatorRow, Rotation};
use crate::storage::{Db, StorageError};

/// What an operator may do: admins change things, viewers only look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Viewer,
}

impl Role {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Self::Admin),
            "viewer" => Some(Self::Viewer),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Viewer => "viewer",
        }
    }

    pub fn can_write(self) -> bool {
        self == Self::Admin
    }
}

/// A signed-in operator, as the web layer sees one.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Operator {
    pub id: i64,
    pub email: String,
    pub name: String,
    pub role: Role,
}

impl TryFrom<OperatorRow> for Operator {
    type Error = StorageError;

    fn try_from(row: OperatorRow) -> Result<Self, StorageError> {
        let role = Role::parse(&row.role).ok_or_else(|| {
            StorageError::Other(format!("operator {} has role `{}`", row.id, row.role))
        })?;
        Ok(Self {
            id: row.id,
            email: row.email,
            name: row.name,
            role,
        })
    }
}

/// Lifetime of an access token (the contract's `expires_in`).
pub const ACCESS_TTL: Duration = Duration::from_secs(3600);
/// Lifetime of a refresh token.
pub const REFRESH_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Lifetime of a dashboard session cookie.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// Prefixes let the API guard tell an operator token from an API key without a database look-up.
pub const ACCESS_PREFIX: &str = "opa_";
const REFRESH_PREFIX: &str = "opr_";
const SESSION_PREFIX: &str = "ops_";

const KIND_ACCESS: &str = "access";
const KIND_SESSION: &str = "session";

/// Shortest password `users create` accepts.
pub const MIN_PASSWORD_LEN: usize = 10;

/// Failed logins allowed per e-mail before each further failure locks it for a growing time.
const FREE_FAILURES_PER_EMAIL: i32 = 5;
/// Failed logins allowed per client address (it may serve several people) before locks start.
const FREE_FAILURES_PER_IP: i32 = 20;
/// The first lock; it doubles with every further failure.
const FIRST_LOCK_SECS: i64 = 5;
/// No lock is longer than this.
const MAX_LOCK_SECS: i64 = 15 * 60;
/// Failures older than this (with none since) are forgotten.
const FAILURE_WINDOW: TimeDelta = TimeDelta::minutes(30);

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("--email must be an e-mail address")]
    InvalidEmail,
    #[error("--name must be 1 to 100 characters")]
    InvalidName,
    #[error("the password must be at least {MIN_PASSWORD_LEN} characters")]
    WeakPassword,
    #[error("cannot hash the password: {0}")]
    Hashing(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid email or password")]
    InvalidCredentials,
    #[error("invalid or expired refresh token")]
    InvalidRefreshToken,
    #[error("too many failed logins; try again in {retry_after} s")]
    Throttled { retry_after: u64 },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The tokens of a successful login and who signed in. The plaintexts exist only here, on their way to the
/// client.
pub struct LoginGrant {
    pub tokens: AccessGrant,
    pub operator: Operator,
}

/// A fresh access token from a refresh token.
pub struct AccessGrant {
    pub access_token: SecretString,
    /// The refresh token to use next time (the one presented is used up).
    pub refresh_token: SecretString,
    pub expires_in: u64,
}

/// Lower-cased and trimmed, so `Admin@X` and `admin@x` are one account.
pub fn normalize_email(raw: &str) -> String {
    raw.trim().to_lowercase()
}

fn valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
}

async fn hash_password(password: SecretString) -> Result<String, CreateError> {
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.expose_secret().as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| CreateError::Hashing(e.to_string()))
    })
    .await
    .map_err(|e| CreateError::Hashing(e.to_string()))?
}

/// A hash of a random password, verified against when the e-mail is unknown so that an unknown e-mail
/// takes as long to refuse as a wrong password.
fn dummy_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        Argon2::default()
            .hash_password(random_token(24).as_bytes())
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

async fn verify_password(password: SecretString, hash: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| dummy_hash().to_owned());
        let ok = Argon2::default()
            .verify_password(password.expose_secret().as_bytes(), hash.as_str())
            .is_ok();
        ok && known
    })
    .await
    .unwrap_or(false)
}

/// Creates an operator, or replaces the name, role and password of the one with this e-mail (and signs
/// it out everywhere). Returns the id and whether it was created.
pub async fn create_or_update(
    db: &Db,
    email: &str,
    name: Option<&str>,
    role: Role,
    password: SecretString,
) -> Result<(i64, bool), CreateError> {
    let email = normalize_email(email);
    if !valid_email(&email) {
        return Err(CreateError::InvalidEmail);
    }
    let name = name
        .map(|n| n.trim().to_owned())
        .unwrap_or_else(|| email.split('@').next().unwrap_or_default().to_owned());
    if name.is_empty() || name.chars().count() > 100 {
        return Err(CreateError::InvalidName);
    }
    if password.expose_secret().chars().count() < MIN_PASSWORD_LEN {
        return Err(CreateError::WeakPassword);
    }
    let hash = hash_password(password).await?;
    Ok(db
        .operators()
        .upsert(&email, &name, role.as_str(), &hash)
        .await?)
}

pub async fn list(db: &Db) -> Result<Vec<Operator>, StorageError> {
    db.operators()
        .list()
        .await?
        .into_iter()
        .map(Operator::try_from)
        .collect()
}

fn email_key(email: &str) -> String {
    // Hashed: the table never holds the addresses people typed.
    format!("email:{}", sha256_hex(email.as_bytes()))
}

fn ip_key(ip: IpAddr) -> String {
    format!("ip:{ip}")
}

/// How long the `failures`-th failure locks a key with `free` free failures; `None` while under.
fn lock_for(failures: i32, free: i32) -> Option<i64> {
    let over = failures - free;
    if over <= 0 {
        return None;
    }
    let exp = (over - 1).min(20) as u32;
    Some((FIRST_LOCK_SECS.saturating_mul(1i64 << exp)).min(MAX_LOCK_SECS))
}

fn retry_after(until: NaiveDateTime, now: NaiveDateTime) -> u64 {
    let ms = (until - now).num_milliseconds().max(0);
    (ms as u64).div_ceil(1000).max(1)
}

/// Signs in with an e-mail and password and issues an access and a refresh token.
pub async fn login(
    db: &Db,
    email: &str,
    password: SecretString,
    client_ip: Option<IpAddr>,
) -> Result<LoginGrant, AuthError> {
    let operator = check_credentials(db, email, password, client_ip).await?;
    let (access_token, access_hash) = new_token(ACCESS_PREFIX);
    let (refresh_token, refresh_hash) = new_token(REFRESH_PREFIX);
    let id = operator.id;
    let access_until = expiry(ACCESS_TTL);
    let refresh_until = expiry(REFRESH_TTL);
    let family = random_token(24);
    db.operators()
        .insert_token_pair(
            id,
            &family,
            (&access_hash, access_until),
            (&refresh_hash, refresh_until),
        )
        .await?;
    Ok(LoginGrant {
        tokens: AccessGrant {
            access_token,
            refresh_token,
            expires_in: ACCESS_TTL.as_secs(),
        },
        operator,
    })
}

/// Signs in to the dashboard: checks the credentials like [`login`] and starts a session instead of
/// issuing API tokens.
pub async fn login_session(
    db: &Db,
    email: &str,
    password: SecretString,
    client_ip: Option<IpAddr>,
) -> Result<(Operator, SecretString), AuthError> {
    let operator = check_credentials(db, email, password, client_ip).await?;
    let session = start_session(db, operator.id).await?;
    Ok((operator, session))
}

/// Checks an e-mail and password. While the e-mail or the client address is locked by earlier failures,
/// the password is not even checked.
async fn check_credentials(
    db: &Db,
    email: &str,
    password: SecretString,
    client_ip: Option<IpAddr>,
) -> Result<Operator, AuthError> {
    let email = normalize_email(email);
    let mut keys = vec![(email_key(&email), FREE_FAILURES_PER_EMAIL)];
    if let Some(ip) = client_ip {
        keys.push((ip_key(ip), FREE_FAILURES_PER_IP));
    }
    let now = crate::storage::now();
    let names: Vec<String> = keys.iter().map(|(k, _)| k.clone()).collect();
    let rows = db.operators().throttle_rows(&names).await?;
    if let Some(until) = rows
        .iter()
        .filter_map(|r| r.locked_until)
        .filter(|u| *u > now)
        .max()
    {
        crate::metrics::login_outcome("throttled");
        return Err(AuthError::Throttled {
            retry_after: retry_after(until, now),
        });
    }

    let row = db.operators().by_email(&email).await?;
    let ok = verify_password(password, row.as_ref().map(|r| r.password_hash.clone())).await;
    let operator = match (ok, row) {
        (true, Some(row)) => Operator::try_from(row)?,
        _ => {
            crate::metrics::login_outcome("invalid");
            record_failure(db, keys).await?;
            return Err(AuthError::InvalidCredentials);
        }
    };

    db.operators().clear_throttle(&email_key(&email)).await?;
    crate::metrics::login_outcome("ok");
    tracing::info!(operator_id = operator.id, "operator signed in");
    Ok(operator)
}

async fn record_failure(db: &Db, keys: Vec<(String, i32)>) -> Result<(), StorageError> {
    let now = crate::storage::now();
    let window_start = now - FAILURE_WINDOW;
    db.operators()
        .record_failures(&keys, now, window_start, lock_for)
        .await?;
    tracing::warn!("operator login failed");
    Ok(())
}

fn new_token(prefix: &str) -> (SecretString, String) {
    let token = format!("{prefix}{}", random_token(40));
    let hash = sha256_hex(token.as_bytes());
    (SecretString::from(token), hash)
}

fn expiry(ttl: Duration) -> NaiveDateTime {
    crate::storage::now() + TimeDelta::seconds(ttl.as_secs() as i64)
}

/// A new access and refresh token for a live refresh token, which is used up; the access tokens issued
/// before it stop working. A refresh token presented a second time means a copy is in other hands: every
/// token of that sign-in is revoked (OAuth 2.0 Security BCP, refresh token rotation).
pub async fn refresh(db: &Db, refresh_token: &str) -> Result<AccessGrant, AuthError> {
    if !refresh_token.starts_with(REFRESH_PREFIX) || refresh_token.len() > 128 {
        return Err(AuthError::InvalidRefreshToken);
    }
    let hash = sha256_hex(refresh_token.as_bytes());
    let (access_token, access_hash) = new_token(ACCESS_PREFIX);
    let (new_refresh, refresh_hash) = new_token(REFRESH_PREFIX);
    let rotation = db
        .operators()
        .rotate_refresh(
            &hash,
            (&access_hash, expiry(ACCESS_TTL)),
            (&refresh_hash, expiry(REFRESH_TTL)),
        )
        .await?;
    match rotation {
        Rotation::Rotated { .. } => Ok(AccessGrant {
            access_token,
            refresh_token: new_refresh,
            expires_in: ACCESS_TTL.as_secs(),
        }),
        Rotation::Reused => {
            tracing::warn!(
                "a used operator refresh token was presented again; its sign-in is revoked"
            );
            Err(AuthError::InvalidRefreshToken)
        }
        Rotation::Invalid => Err(AuthError::InvalidRefreshToken),
    }
}

/// Whether a bearer token looks like an operator access token (and not an API key).
pub fn is_access_token(token: &str) -> bool {
    token.starts_with(ACCESS_PREFIX)
}

async fn operator_for(
    db: &Db,
    kind: &'static str,
    token: &str,
) -> Result<Option<Operator>, StorageError> {
    if token.len() > 128 {
        return Ok(None);
    }
    let hash = sha256_hex(token.as_bytes());
    let now = crate::storage::now();
    db.operators()
        .by_token(kind, &hash, now)
        .await?
        .map(Operator::try_from)
        .transpose()
}

/// The operator behind a live access token.
pub async fn authenticate_access(db: &Db, token: &str) -> Result<Option<Operator>, StorageError> {
    if !token.starts_with(ACCESS_PREFIX) {
        return Ok(None);
    }
    operator_for(db, KIND_ACCESS, token).await
}

/// Starts a dashboard session for a signed-in operator; the value goes into an HttpOnly cookie.
pub async fn start_session(db: &Db, operator_id: i64) -> Result<SecretString, StorageError> {
    let (token, hash) = new_token(SESSION_PREFIX);
    let until = expiry(SESSION_TTL);
    db.operators()
        .insert_token(operator_id, KIND_SESSION, &hash, until)
        .await?;
    Ok(token)
}

/// The operator behind a live dashboard session cookie.
pub async fn authenticate_session(db: &Db, token: &str) -> Result<Option<Operator>, StorageError> {
    if !token.starts_with(SESSION_PREFIX) {
        return Ok(None);
    }
    operator_for(db, KIND_SESSION, token).await
}

/// The form token of a dashboard session (synchronizer token): derived from the session secret, which
/// only the server and the HttpOnly cookie know, so a page of another site cannot produce it.
pub fn csrf_token(session: &str) -> String {
    sha256_hex(format!("csrf:{session}").as_bytes())
}

/// Ends a session or revokes a token (sign-out).
pub async fn revoke(db: &Db, token: &str) -> Result<bool, StorageError> {
    let hash = sha256_hex(token.as_bytes());
    db.operators().revoke_token(&hash).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_start_after_the_free_failures_and_double_up_to_the_cap() {
        assert_eq!(lock_for(5, 5), None);
        assert_eq!(lock_for(6, 5), Some(5));
        assert_eq!(lock_for(7, 5), Some(10));
        assert_eq!(lock_for(8, 5), Some(20));
        assert_eq!(lock_for(100, 5), Some(MAX_LOCK_SECS));
    }

    #[test]
    fn emails_are_checked_loosely_but_sanely() {
        assert!(valid_email("ops@example.com"));
        assert!(!valid_email("ops@localhost"));
        assert!(!valid_email("no-at.example.com"));
        assert!(!valid_email("a b@example.com"));
    }
}
