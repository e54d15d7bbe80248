//! Token material: JWT-shaped access tokens, opaque refresh tokens and codes, HMAC signatures.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit, Mac};
use rand::RngCore;
use serde_json::json;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Lower-case hex of `n` random bytes.
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::rng().fill_bytes(&mut bytes);
    hex(&bytes)
}

/// Lower-case hex of the bytes (token and code bodies).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// `hex(HMAC-SHA256(key, message))`.
pub fn hmac_hex(key: &[u8], message: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail; fall back to an empty signature anyway.
    match <HmacSha256 as KeyInit>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(message);
            hex(&mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    }
}

/// The uninstall hook signature: `hex(HMAC-SHA256(client_secret, "{client_id}|{account_id}"))`.
pub fn disconnect_signature(client_id: &str, client_secret: &str, account_id: u64) -> String {
    hmac_hex(
        client_secret.as_bytes(),
        format!("{client_id}|{account_id}").as_bytes(),
    )
}

/// An opaque, league/oauth2-server-looking token (`def50200…`).
pub fn opaque() -> String {
    format!("def50200{}", random_hex(160))
}

/// Claims put into an access token.
pub struct Claims<'a> {
    /// The integration's client id.
    pub client_id: &'a str,
    /// The user the token acts as (`sub`).
    pub user_id: u64,
    /// The amoCRM account id.
    pub account_id: u64,
    /// The account host (`sellerone.amocrm.ru`).
    pub host: &'a str,
    /// The API host the token names (`api-b.amocrm.ru`).
    pub api_domain: &'a str,
    /// Issue time (Unix seconds).
    pub iat: i64,
    /// Expiry (Unix seconds).
    pub exp: i64,
}

/// A JWT-shaped access token (RS256 header; the signature is random, as clients never verify it).
pub fn access_token(c: &Claims<'_>) -> String {
    let jti = random_hex(40);
    let header = json!({"typ": "JWT", "alg": "RS256", "jti": jti});
    let base_domain = c
        .host
        .split_once('.')
        .map(|(_, rest)| rest)
        .unwrap_or(c.host);
    let payload = json!({
        "aud": c.client_id,
        "jti": jti,
        "iat": c.iat,
        "nbf": c.iat,
        "exp": c.exp,
        "sub": c.user_id.to_string(),
        "grant_type": "",
        "account_id": c.account_id,
        "base_domain": base_domain,
        "version": 2,
        "scopes": ["crm", "files", "files_delete", "notifications", "push_notifications"],
        "hash_uuid": random_hex(16),
        "api_domain": c.api_domain,
    });
    let mut sig = vec![0u8; 256];
    rand::rng().fill_bytes(&mut sig);
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload.to_string()),
        URL_SAFE_NO_PAD.encode(&sig)
    )
}

/// Decodes the payload of a JWT-shaped token (for tests and inspection).
pub fn decode_claims(token: &str) -> Option<serde_json::Value> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice(&bytes).ok()
}
