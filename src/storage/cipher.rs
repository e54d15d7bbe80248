//! The token vault: AES-256-GCM for every secret stored in the database.
//!
//! Layout of a stored value: `[1][id_len][key id][12-byte nonce][ciphertext + tag]`. The key id travels
//! with the ciphertext so several keys can decrypt while the first one encrypts (rotation), and the
//! associated data names the table, column and row, so a ciphertext copied to another seller or column
//! fails to decrypt instead of silently handing one seller's token to another.

use std::fmt;

use aes_gcm::aead::{Aead, Generate, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rand::RngCore;
use secrecy::SecretString;

const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;

/// What a ciphertext is bound to: decrypting it anywhere else fails.
#[derive(Clone, Copy, Debug)]
pub struct Aad<'a> {
    pub table: &'a str,
    pub column: &'a str,
    pub row: &'a str,
}

impl Aad<'_> {
    fn bytes(&self, key_id: &str) -> Vec<u8> {
        format!(
            "amocrm-connector/v1|{}|{}|{}|{}",
            self.table, self.column, self.row, key_id
        )
        .into_bytes()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyringError {
    #[error("expected a comma list of KEY_ID:BASE64_OF_32_BYTES")]
    Empty,
    #[error("entry {0} is not KEY_ID:BASE64_OF_32_BYTES")]
    Malformed(usize),
    #[error("key id `{0}` must be 1-32 letters, digits, '-' or '_'")]
    BadId(String),
    #[error("key `{0}` is not valid base64")]
    BadBase64(String),
    #[error("key `{0}` decodes to {1} bytes; AES-256 needs exactly 32")]
    WrongLength(String, usize),
    #[error("key id `{0}` appears twice")]
    Duplicate(String),
}

/// Why a stored secret could not be read. Deliberately vague: no detail helps an attacker.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CipherError {
    #[error("stored secret is malformed")]
    Malformed,
    #[error("stored secret was encrypted with key `{0}`, which is not configured")]
    UnknownKey(String),
    #[error("stored secret failed authentication (wrong key, tampered, or moved)")]
    Authentication,
}

struct Key {
    id: String,
    cipher: Aes256Gcm,
}

/// The configured keys: the first encrypts, all decrypt.
pub struct Keyring {
    keys: Vec<Key>,
}

impl Clone for Keyring {
    fn clone(&self) -> Self {
        Self {
            keys: self
                .keys
                .iter()
                .map(|k| Key {
                    id: k.id.clone(),
                    cipher: k.cipher.clone(),
                })
                .collect(),
        }
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("Keyring").field("key_ids", &ids).finish()
    }
}

impl Keyring {
    /// Parses `TOKEN_ENCRYPTION_KEYS`.
    pub fn parse(raw: &str) -> Result<Self, KeyringError> {
        let mut keys: Vec<Key> = Vec::new();
        for (i, entry) in raw
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .enumerate()
        {
            let (id, b64) = entry
                .split_once(':')
                .ok_or(KeyringError::Malformed(i + 1))?;
            let id = id.trim();
            if id.is_empty()
                || id.len() > 32
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(KeyringError::BadId(id.to_owned()));
            }
            let bytes = B64
                .decode(b64.trim())
                .map_err(|_| KeyringError::BadBase64(id.to_owned()))?;
            if bytes.len() != 32 {
                return Err(KeyringError::WrongLength(id.to_owned(), bytes.len()));
            }
            if keys.iter().any(|k| k.id == id) {
                return Err(KeyringError::Duplicate(id.to_owned()));
            }
            let cipher = Aes256Gcm::new_from_slice(&bytes)
                .map_err(|_| KeyringError::WrongLength(id.to_owned(), bytes.len()))?;
            keys.push(Key {
                id: id.to_owned(),
                cipher,
            });
        }
        if keys.is_empty() {
            return Err(KeyringError::Empty);
        }
        Ok(Self { keys })
    }

    /// A fresh `KEY_ID:BASE64` entry from the OS random generator.
    pub fn generate_entry(id: &str) -> String {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        format!("{id}:{}", B64.encode(bytes))
    }

    /// The id of the key that encrypts.
    pub fn active_id(&self) -> &str {
        &self.keys[0].id
    }

    pub fn encrypt(&self, aad: Aad<'_>, plaintext: &str) -> Vec<u8> {
        let key = &self.keys[0];
        let nonce = Nonce::generate();
        let aad_bytes = aad.bytes(&key.id);
        #[expect(
            clippy::expect_used,
            reason = "AES-GCM encryption only fails for inputs over 64 GiB"
        )]
        let ct = key
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: &aad_bytes,
                },
            )
            .expect("AES-GCM encryption of a token cannot fail");
        let mut out = Vec::with_capacity(2 + key.id.len() + NONCE_LEN + ct.len());
        out.push(VERSION);
        out.push(key.id.len() as u8);
        out.extend_from_slice(key.id.as_bytes());
        out.extend_from_slice(nonce.as_slice());
        out.extend_from_slice(&ct);
        out
    }

    pub fn decrypt(&self, aad: Aad<'_>, blob: &[u8]) -> Result<SecretString, CipherError> {
        let (key_id, nonce, ct) = split(blob)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.id == key_id)
            .ok_or_else(|| CipherError::UnknownKey(key_id.to_owned()))?;
        let nonce = Nonce::try_from(nonce).map_err(|_| CipherError::Malformed)?;
        let aad_bytes = aad.bytes(key_id);
        let pt = key
            .cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: ct,
                    aad: &aad_bytes,
                },
            )
            .map_err(|_| CipherError::Authentication)?;
        let s = String::from_utf8(pt).map_err(|_| CipherError::Malformed)?;
        Ok(SecretString::from(s))
    }

    /// The key id a stored value was encrypted with, for rotation.
    pub fn key_id_of(blob: &[u8]) -> Option<&str> {
        split(blob).ok().map(|(id, _, _)| id)
    }

    /// Whether a stored value needs re-encryption with the active key.
    pub fn needs_rotation(&self, blob: &[u8]) -> bool {
        Self::key_id_of(blob) != Some(self.active_id())
    }
}

fn split(blob: &[u8]) -> Result<(&str, &[u8], &[u8]), CipherError> {
    let (&version, rest) = blob.split_first().ok_or(CipherError::Malformed)?;
    if version != VERSION {
        return Err(CipherError::Malformed);
    }
    let (&id_len, rest) = rest.split_first().ok_or(CipherError::Malformed)?;
    let id_len = id_len as usize;
    if rest.len() < id_len + NONCE_LEN + 16 {
        return Err(CipherError::Malformed);
    }
    let (id, rest) = rest.split_at(id_len);
    let id = std::str::from_utf8(id).map_err(|_| CipherError::Malformed)?;
    let (nonce, ct) = rest.split_at(NONCE_LEN);
    Ok((id, nonce, ct))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn aad(row: &str) -> Aad<'_> {
        Aad {
            table: "amocrm_connections",
            column: "access_token",
            row,
        }
    }

    #[test]
    fn a_secret_round_trips_and_is_not_stored_in_plain_text() {
        let ring = Keyring::parse(&Keyring::generate_entry("k1")).expect("key");
        let blob = ring.encrypt(aad("seller-1"), "very-secret-token");
        assert!(!blob.windows(6).any(|w| w == b"secret"));
        let back = ring.decrypt(aad("seller-1"), &blob).expect("decrypts");
        assert_eq!(back.expose_secret(), "very-secret-token");
    }

    #[test]
    fn the_same_secret_encrypts_differently_each_time() {
        let ring = Keyring::parse(&Keyring::generate_entry("k1")).expect("key");
        assert_ne!(ring.encrypt(aad("s"), "t"), ring.encrypt(aad("s"), "t"));
    }

    #[test]
    fn tampering_with_any_byte_is_detected() {
        let ring = Keyring::parse(&Keyring::generate_entry("k1")).expect("key");
        let blob = ring.encrypt(aad("seller-1"), "token");
        for i in 2 + 2..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 0x01;
            assert!(ring.decrypt(aad("seller-1"), &bad).is_err(), "byte {i}");
        }
    }

    #[test]
    fn a_ciphertext_moved_to_another_row_or_column_fails() {
        let ring = Keyring::parse(&Keyring::generate_entry("k1")).expect("key");
        let blob = ring.encrypt(aad("seller-1"), "token");
        assert_eq!(
            ring.decrypt(aad("seller-2"), &blob).err(),
            Some(CipherError::Authentication)
        );
        let other_column = Aad {
            column: "refresh_token",
            ..aad("seller-1")
        };
        assert_eq!(
            ring.decrypt(other_column, &blob).err(),
            Some(CipherError::Authentication)
        );
    }

    #[test]
    fn the_wrong_key_fails_and_an_unknown_key_id_is_named() {
        let a = Keyring::parse(&Keyring::generate_entry("k1")).expect("key");
        let b = Keyring::parse(&Keyring::generate_entry("k1")).expect("key");
        let blob = a.encrypt(aad("s"), "t");
        assert_eq!(
            b.decrypt(aad("s"), &blob).err(),
            Some(CipherError::Authentication)
        );
        let c = Keyring::parse(&Keyring::generate_entry("k2")).expect("key");
        assert_eq!(
            c.decrypt(aad("s"), &blob).err(),
            Some(CipherError::UnknownKey("k1".into()))
        );
    }

    #[test]
    fn after_rotation_old_ciphertexts_still_decrypt_and_new_ones_use_the_new_key() {
        let old = Keyring::generate_entry("old");
        let ring1 = Keyring::parse(&old).expect("key");
        let blob = ring1.encrypt(aad("s"), "t");
        let ring2 =
            Keyring::parse(&format!("{},{old}", Keyring::generate_entry("new"))).expect("keys");
        assert_eq!(
            ring2
                .decrypt(aad("s"), &blob)
                .expect("old key")
                .expose_secret(),
            "t"
        );
        assert!(ring2.needs_rotation(&blob));
        let fresh = ring2.encrypt(aad("s"), "t");
        assert_eq!(Keyring::key_id_of(&fresh), Some("new"));
        assert!(!ring2.needs_rotation(&fresh));
    }

    #[test]
    fn malformed_keyrings_are_refused_with_a_reason() {
        assert_eq!(Keyring::parse("").err(), Some(KeyringError::Empty));
        assert_eq!(
            Keyring::parse("nocolon").err(),
            Some(KeyringError::Malformed(1))
        );
        assert!(matches!(
            Keyring::parse("k:!!!"),
            Err(KeyringError::BadBase64(_))
        ));
        assert!(matches!(
            Keyring::parse("k:c2hvcnQ="),
            Err(KeyringError::WrongLength(_, 5))
        ));
        let e = Keyring::generate_entry("k");
        assert!(matches!(
            Keyring::parse(&format!("{e},{e}")),
            Err(KeyringError::Duplicate(_))
        ));
    }

    #[test]
    fn debug_shows_key_ids_only() {
        let ring = Keyring::parse(&Keyring::generate_entry("k1")).expect("key");
        assert_eq!(format!("{ring:?}"), "Keyring { key_ids: [\"k1\"] }");
    }
}
