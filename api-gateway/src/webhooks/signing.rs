//! Standard Webhooks 1.0 signatures: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`,
//! keyed with the bytes of a `whsec_<base64>` secret, so any Standard Webhooks library
//! verifies Warren's deliveries unchanged.

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The prefix Standard Webhooks gives secrets.
const PREFIX: &str = "whsec_";

/// A signing secret's bytes. `Debug` never shows them.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// Parses `whsec_` + base64 of 24 to 64 bytes (the spec's advice); the error says which
    /// part is wrong, never the value.
    pub fn parse(value: &str) -> Result<Self, String> {
        let encoded = value.strip_prefix(PREFIX).ok_or_else(|| {
            format!("must start with {PREFIX:?} followed by base64 (e.g. {PREFIX}$(head -c 32 /dev/urandom | base64))")
        })?;
        let bytes = STANDARD
            .decode(encoded)
            .map_err(|error| format!("the part after {PREFIX:?} is not valid base64: {error}"))?;
        if !(24..=64).contains(&bytes.len()) {
            return Err(format!(
                "must encode 24 to 64 random bytes, this one encodes {}",
                bytes.len()
            ));
        }
        Ok(Self(bytes))
    }

    /// The `webhook-signature` header value for a delivery.
    #[must_use]
    pub fn sign(&self, webhook_id: &str, timestamp: i64, body: &[u8]) -> String {
        // HMAC takes keys of any length, so this cannot fail.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.0) else {
            return String::new();
        };
        mac.update(webhook_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example in the Standard Webhooks specification.
    #[test]
    fn signs_the_specifications_example() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let signature = secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn refuses_secrets_that_are_not_whsec_base64_of_enough_bytes() {
        assert!(Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(Secret::parse("whsec_not base64!").is_err());
        assert!(
            Secret::parse("whsec_c2hvcnQ=")
                .unwrap_err()
                .contains("24 to 64")
        );
    }

    #[test]
    fn debug_hides_the_bytes() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(format!("{secret:?}"), "Secret(..)");
    }
}
