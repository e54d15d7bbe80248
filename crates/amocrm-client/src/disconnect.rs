//! The uninstall ("disconnect") hook's signature: `hex(HMAC-SHA256(client_secret, "{client_id}|{account_id}"))`.

use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

/// Checks amoCRM's uninstall hook `?client_uuid&account_id&signature`: first that `client_uuid` is our client id,
/// then the HMAC in constant time. `account_id` is taken in decimal integer form, as amoCRM formats it.
/// Any malformed input gives `false`; nothing here panics.
pub fn verify_disconnect_signature(
    client_id: &str,
    client_secret: &SecretString,
    client_uuid: &str,
    account_id: &str,
    signature_hex: &str,
) -> bool {
    if client_id.is_empty() || client_uuid != client_id {
        return false;
    }
    let Ok(account_id) = account_id.trim().parse::<u64>() else {
        return false;
    };
    let Some(signature) = decode_hex(signature_hex.trim()) else {
        return false;
    };
    let Ok(mut mac) =
        <Hmac<Sha256> as KeyInit>::new_from_slice(client_secret.expose_secret().as_bytes())
    else {
        return false;
    };
    mac.update(format!("{client_id}|{account_id}").as_bytes());
    mac.verify_slice(&signature).is_ok()
}

/// The signature amoCRM would send for this account (for the sandbox and tests).
pub fn disconnect_signature(
    client_id: &str,
    client_secret: &SecretString,
    account_id: u64,
) -> String {
    let Ok(mut mac) =
        <Hmac<Sha256> as KeyInit>::new_from_slice(client_secret.expose_secret().as_bytes())
    else {
        return String::new();
    };
    mac.update(format!("{client_id}|{account_id}").as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    s.as_bytes()
        .chunks_exact(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "01d01160-d7a0-4087-b4af-6a1bb83fcd1d";

    fn secret() -> SecretString {
        SecretString::from("client-secret-value")
    }

    #[test]
    fn a_signature_made_with_our_secret_is_accepted() {
        let sig = disconnect_signature(ID, &secret(), 32_720_107);
        assert_eq!(sig.len(), 64);
        assert!(verify_disconnect_signature(
            ID,
            &secret(),
            ID,
            "32720107",
            &sig
        ));
        assert!(verify_disconnect_signature(
            ID,
            &secret(),
            ID,
            "32720107",
            &sig.to_uppercase()
        ));
    }

    #[test]
    fn known_answer_matches_an_independent_hmac_sha256() {
        // Computed with Python's hmac module: hmac.new(b"client-secret-value", b"{ID}|32720107", sha256).
        assert_eq!(
            disconnect_signature(ID, &secret(), 32_720_107),
            "9bf40adf4f22c9b447155a8008820dffcc922742e1ee7d69ee9cb7d3e60bdb97"
        );
    }

    #[test]
    fn wrong_client_account_secret_or_garbage_is_refused() {
        let sig = disconnect_signature(ID, &secret(), 32_720_107);
        assert!(!verify_disconnect_signature(
            ID,
            &secret(),
            "other-client",
            "32720107",
            &sig
        ));
        assert!(!verify_disconnect_signature(
            ID,
            &secret(),
            ID,
            "32720108",
            &sig
        ));
        assert!(!verify_disconnect_signature(
            ID,
            &SecretString::from("x"),
            ID,
            "32720107",
            &sig
        ));
        let mut almost = sig.clone().into_bytes();
        almost[63] = if almost[63] == b'0' { b'1' } else { b'0' };
        let almost = String::from_utf8(almost).unwrap_or_default();
        assert!(!verify_disconnect_signature(
            ID,
            &secret(),
            ID,
            "32720107",
            &almost
        ));
        for bad in ["", "zz", &sig[..62], &format!("{sig}00"), "я"] {
            assert!(
                !verify_disconnect_signature(ID, &secret(), ID, "32720107", bad),
                "{bad}"
            );
        }
        assert!(!verify_disconnect_signature(ID, &secret(), ID, "abc", &sig));
        assert!(!verify_disconnect_signature("", &secret(), "", "1", &sig));
        // amoCRM formats the account id as an integer, so a leading zero means the same account.
        assert!(verify_disconnect_signature(
            ID,
            &secret(),
            ID,
            "032720107",
            &sig
        ));
    }

    #[test]
    fn the_documented_example_has_the_documented_shape() {
        let doc = include_str!("../tests/fixtures/disconnect-hook-kommo-docs.txt");
        let query = doc
            .split('?')
            .nth(1)
            .and_then(|q| q.split('\'').next())
            .unwrap_or_default();
        let get = |k: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                .unwrap_or_default()
        };
        let (uuid, account, sig) = (get("client_uuid"), get("account_id"), get("signature"));
        assert_eq!(account, "32720107");
        assert!(decode_hex(sig).is_some());
        // The docs' secret is unknown: the example must be refused with ours, and never panic.
        assert!(!verify_disconnect_signature(
            uuid,
            &secret(),
            uuid,
            account,
            sig
        ));
    }
}
