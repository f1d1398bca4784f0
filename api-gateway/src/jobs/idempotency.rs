//! `Idempotency-Key`: the same key and request give the same job.
//!
//! The request is hashed (SHA-256) only when a key is present, over its canonical JSON (keys
//! sorted), so two equal requests hash equally however the client spaced or ordered them.

use sha2::{Digest, Sha256};

use crate::store::KeyClaim;

/// The longest `Idempotency-Key` accepted.
pub const MAX_KEY_LEN: usize = 255;

/// Why a key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters")]
pub struct BadKey;

/// The claim a request with `key` makes; `canonical_request` is the request as JSON with
/// sorted keys.
pub fn claim(key: &str, canonical_request: &str) -> Result<KeyClaim, BadKey> {
    let valid =
        !key.is_empty() && key.len() <= MAX_KEY_LEN && key.bytes().all(|b| b.is_ascii_graphic());
    if !valid {
        return Err(BadKey);
    }
    Ok(KeyClaim {
        key: key.to_owned(),
        request_hash: sha256_hex(canonical_request),
    })
}

/// The claim as the store keeps it: the same key sent by two tenants names two jobs. The
/// `default` tenant's keys are stored as sent (as they were before tenants existed); another
/// tenant's are prefixed with its name and a space, which no key or tenant name contains.
#[must_use]
pub fn scoped(claim: KeyClaim, tenant: &str) -> KeyClaim {
    if tenant == crate::model::key::DEFAULT_TENANT {
        return claim;
    }
    KeyClaim {
        key: format!("{tenant} {}", claim.key),
        ..claim
    }
}

/// SHA-256 in lowercase hex (stored, so it must not change between releases).
fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_hash_is_sha256_and_tells_bodies_apart() {
        assert_eq!(
            sha256_hex(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let a = claim("k", r#"{"type":"echo"}"#).unwrap();
        assert_eq!(a, claim("k", r#"{"type":"echo"}"#).unwrap());
        assert_ne!(
            a.request_hash,
            claim("k", r#"{"type":"echo "}"#).unwrap().request_hash
        );
    }

    #[test]
    fn keys_are_scoped_to_their_tenant() {
        let sent = claim("order-42", "{}").unwrap();
        assert_eq!(scoped(sent.clone(), "default"), sent);
        assert_eq!(scoped(sent.clone(), "acme").key, "acme order-42");
        assert_ne!(scoped(sent.clone(), "acme"), scoped(sent, "globex"));
    }

    #[test]
    fn keys_must_be_short_visible_ascii() {
        assert!(claim("order-42", "{}").is_ok());
        for bad in ["", "has space", "tab\t", &"k".repeat(256)] {
            assert_eq!(claim(bad, "{}"), Err(BadKey), "{bad:?}");
        }
    }
}
