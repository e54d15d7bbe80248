//! Connecting a seller's amoCRM: connect sessions, the connect page's OAuth `state`, the OAuth callback,
//! revocation (API and amoCRM's uninstall hook), and the connection views of the API.
//!
//! The callback trusts nothing in its query: `state` must be one we minted (stored hashed), unused, less
//! than 30 minutes old and presented by the browser it was minted for (cookie); `client_id` must be ours;
//! `referer` must parse as an allowed account host — all before the code is exchanged, which is the first
//! request that carries the client secret. Tokens are stored encrypted, bound to the seller's row.
//!
//! Steps: [`session`] (the link and its page), [`callback`] (consent to a stored connection), [`result`]
//! (the page the callback redirects to), [`account`]
//! (revocation, the uninstall hook and the connection's views).

mod account;
mod callback;
mod result;
mod session;

pub use account::*;
pub use callback::*;
pub use result::*;
pub use session::*;

use std::time::Duration;

use crate::storage::StorageError;

/// Lifetime of a connect session and of each OAuth state.
pub const SESSION_TTL: Duration = Duration::from_secs(30 * 60);
pub const STATE_TTL: Duration = Duration::from_secs(30 * 60);
/// Name of the cookie that binds OAuth states to the browser that opened the connect page.
pub const BROWSER_COOKIE: &str = "amocrm_connect";

pub use crate::domain::lang::Lang;

/// A field problem of a request, for 422 details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldProblem {
    pub field: &'static str,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid fields")]
    Invalid(Vec<FieldProblem>),
    #[error("no amoCRM connection for this seller")]
    NotFound,
    #[error("amoCRM could not be reached: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

fn invalid(field: &'static str, message: impl Into<String>) -> ConnectError {
    ConnectError::Invalid(vec![FieldProblem {
        field,
        message: message.into(),
    }])
}

fn dur(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browser_tokens_are_reused_only_when_they_look_like_ours() {
        let fresh = browser_token(None);
        assert_eq!(fresh.len(), 32);
        assert_eq!(browser_token(Some(&fresh)), fresh);
        assert_ne!(browser_token(Some("short")), "short");
        assert_ne!(browser_token(Some(&"x;".repeat(16))), "x;".repeat(16));
    }
}
