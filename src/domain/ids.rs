//! Identifiers and random secrets: seller ids, prefixed public ids, unguessable tokens.

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";

/// `len` characters from an unambiguous alphabet, drawn from the OS generator (about 5.8 bits each).
pub fn random_token(len: usize) -> String {
    let mut rng = rand::rng();
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        rng.fill_bytes(&mut buf);
        for b in buf {
            // Rejection sampling keeps the distribution uniform.
            let limit = 256 - (256 % ALPHABET.len());
            if (b as usize) < limit && out.len() < len {
                out.push(ALPHABET[(b as usize) % ALPHABET.len()] as char);
            }
        }
    }
    out
}

/// A public id such as `evt_…` or `ord_…`: a prefix and 24 random characters (~140 bits).
pub fn prefixed_id(prefix: &str) -> String {
    format!("{prefix}_{}", random_token(24))
}

/// Hex SHA-256, used to store high-entropy tokens (API keys, sessions) as look-up hashes.
pub fn sha256_hex(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    let mut s = String::with_capacity(64);
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Equality that takes the same time wherever the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Compare digests so that the length of the expected value does not leak either.
    let da = Sha256::digest(a);
    let db = Sha256::digest(b);
    bool::from(da.as_slice().ct_eq(db.as_slice()))
}

/// A marketplace seller id: the marketplace's own reference, checked so it is safe in URLs, logs and keys.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct SellerId(String);

impl SellerId {
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        let s = raw.trim();
        if s.is_empty() {
            return Err("must not be empty");
        }
        if s.len() > 64 {
            return Err("must be at most 64 characters");
        }
        if !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
        {
            return Err("may contain only letters, digits, '-', '_', '.' and ':'");
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SellerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_tokens_have_the_requested_length_and_differ() {
        let a = random_token(32);
        let b = random_token(32);
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| ALPHABET.contains(&c)));
    }

    #[test]
    fn seller_ids_reject_unsafe_characters() {
        assert!(SellerId::parse("seller-42").is_ok());
        assert!(SellerId::parse("").is_err());
        assert!(SellerId::parse("a/b").is_err());
        assert!(SellerId::parse(&"x".repeat(65)).is_err());
    }

    #[test]
    fn constant_time_eq_compares_contents() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret1"));
    }
}
