//! Marketplace API keys: creation (shown once), authentication by hash, tiers and their hourly limits.

use chrono::{DurationRound, NaiveDateTime, TimeDelta, Utc};

use crate::domain::ids::{random_token, sha256_hex};
use crate::storage::api_keys::ApiKeyRow;
use crate::storage::{Db, StorageError};

/// A key's tier decides its hourly request budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Standard,
    Premium,
    Enterprise,
}

impl Tier {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "standard" => Some(Self::Standard),
            "premium" => Some(Self::Premium),
            "enterprise" => Some(Self::Enterprise),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standard => "standard",
            Self::Premium => "premium",
            Self::Enterprise => "enterprise",
        }
    }

    /// Requests per hour; `None` is unlimited.
    pub fn hourly_limit(self) -> Option<i64> {
        match self {
            Self::Standard => Some(1000),
            Self::Premium => Some(5000),
            Self::Enterprise => None,
        }
    }
}

/// What a key may do. A leaked integration key that only reads, or only sends orders, cannot redirect
/// every seller's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Everything the API offers.
    Full,
    /// `GET` only.
    Read,
    /// Orders and connect sessions only, any method.
    Orders,
}

impl Scope {
    pub const NAMES: [&'static str; 3] = ["full", "read", "orders"];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "full" => Some(Self::Full),
            "read" => Some(Self::Read),
            "orders" => Some(Self::Orders),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Read => "read",
            Self::Orders => "orders",
        }
    }

    /// Whether a request with this method (`safe`: GET/HEAD/OPTIONS) to this `/api/v1` path is allowed.
    pub fn allows(self, safe: bool, path: &str) -> bool {
        match self {
            Self::Full => true,
            Self::Read => safe,
            Self::Orders => {
                let p = path.trim_start_matches("/api/v1");
                ["/sales/orders", "/connect-sessions"].iter().any(|r| {
                    p.strip_prefix(r)
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
                })
            }
        }
    }
}

/// Keys start with this, so a leaked key is recognisable by secret scanners.
pub const KEY_PREFIX: &str = "amc_";

/// Creates a key of full scope; see [`create_scoped`].
pub async fn create(db: &Db, name: &str, tier: Tier) -> Result<(ApiKeyRow, String), StorageError> {
    create_scoped(db, name, tier, Scope::Full).await
}

/// Creates a key; the plaintext is returned once and only its hash is stored.
pub async fn create_scoped(
    db: &Db,
    name: &str,
    tier: Tier,
    scope: Scope,
) -> Result<(ApiKeyRow, String), StorageError> {
    let key = format!("{KEY_PREFIX}{}", random_token(40));
    let hash = sha256_hex(key.as_bytes());
    let prefix: String = key.chars().take(KEY_PREFIX.len() + 6).collect();
    let row = db
        .api_keys()
        .insert(name, &prefix, &hash, tier.as_str(), scope.as_str())
        .await?;
    Ok((row, key))
}

/// The outcome of counting one request against a key's hourly budget.
#[derive(Debug, Clone, Copy)]
pub struct RateDecision {
    pub limit: i64,
    pub remaining: i64,
    /// Unix seconds when the window resets.
    pub reset: i64,
    pub allowed: bool,
}

/// Authenticates a presented key and counts the request in its tier's current hour window (shared by
/// all instances through the database), in one trip to the blocking pool: this runs on every API request.
/// Keys are high-entropy, so a SHA-256 look-up is safe.
pub async fn authenticate_and_count(
    db: &Db,
    presented: &str,
) -> Result<Option<(ApiKeyRow, Tier, Option<RateDecision>)>, StorageError> {
    if !presented.starts_with(KEY_PREFIX) || presented.len() > 128 {
        return Ok(None);
    }
    let hash = sha256_hex(presented.as_bytes());
    let now = Utc::now();
    let window = now.duration_trunc(TimeDelta::hours(1)).unwrap_or(now);
    let window_start: NaiveDateTime = window.naive_utc();
    let reset = (window + TimeDelta::hours(1)).timestamp();
    let Some((key, used)) = db
        .api_keys()
        .find_active_and_count(&hash, window_start, metered)
        .await?
    else {
        return Ok(None);
    };
    let tier = tier_of(&key.tier);
    let decision = match (tier.hourly_limit(), used) {
        (Some(limit), Some(used)) => Some(RateDecision {
            limit,
            remaining: (limit - used).max(0),
            reset,
            allowed: used <= limit,
        }),
        _ => None,
    };
    Ok(Some((key, tier, decision)))
}

/// A stored scope; an unknown one may only read.
pub fn scope_of(stored: &str) -> Scope {
    Scope::parse(stored).unwrap_or(Scope::Read)
}

/// A stored tier; an unknown one gets the standard budget.
fn tier_of(stored: &str) -> Tier {
    Tier::parse(stored).unwrap_or(Tier::Standard)
}

/// Whether requests of a key with this stored tier are counted (its tier has an hourly limit).
fn metered(stored: &str) -> bool {
    tier_of(stored).hourly_limit().is_some()
}
