//! API keys: what a key may do, its limits, and its secret, which is shown once at creation
//! and stored only as a SHA-256 digest.
//!
//! A key reads `wrn_<key id, 32 hex>_<32 random bytes, base64url>`. The id in front lets the
//! gateway find the key's record without searching; the digest of the whole key is then
//! compared in constant time. 256 random bits need no slow hash (a password hash guards
//! guessable secrets; these are not).

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

/// The tenant of jobs submitted without a tenant's key (open mode, `WARREN_ADMIN_KEY`), and of
/// every job stored before keys existed.
pub const DEFAULT_TENANT: &str = "default";

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Right {
    /// Submit jobs (and re-drive failed ones, create schedules).
    Submit,
    /// Read jobs, lists, streams, deliveries and schedules.
    Read,
    /// Cancel jobs.
    Cancel,
    /// Create, list and revoke keys.
    Admin,
}

impl Right {
    /// The name used in JSON and in the store.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Submit => "submit",
            Self::Read => "read",
            Self::Cancel => "cancel",
            Self::Admin => "admin",
        }
    }

    /// The right with this name.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Submit, Self::Read, Self::Cancel, Self::Admin]
            .into_iter()
            .find(|right| right.as_str() == name)
    }
}

/// The rights a key gets when its request names none.
pub const DEFAULT_RIGHTS: [Right; 3] = [Right::Submit, Right::Read, Right::Cancel];

/// A key's record, as `GET /v1/keys` shows it (the secret's digest never leaves the store).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ApiKey {
    /// The key's id (also the first part of the secret).
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    /// The tenant it acts for: it sees and submits only this tenant's jobs.
    #[schema(example = "acme")]
    pub tenant: String,
    /// A label for people.
    #[schema(example = "ci")]
    pub name: Option<String>,
    /// What it may do.
    pub rights: Vec<Right>,
    /// Requests per second it may make, on average (none: unlimited).
    pub rate_per_sec: Option<f64>,
    /// Requests it may make at once, above its rate (defaults to the rate, at least 1).
    pub burst: Option<u32>,
    /// Jobs it may have in flight (scheduled, queued, running or retrying) at once.
    pub max_in_flight: Option<u32>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it was revoked; a revoked key is refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<DateTime<Utc>>,
    /// SHA-256 of the secret (never shown).
    #[serde(skip)]
    pub secret_sha256: [u8; 32],
}

impl ApiKey {
    /// Whether the key holds `right`.
    #[must_use]
    pub fn allows(&self, right: Right) -> bool {
        self.rights.contains(&right)
    }

    /// The key's rate limit, if it has one: (requests per second, burst).
    #[must_use]
    pub fn rate_limit(&self) -> Option<(f64, u32)> {
        let rate = self.rate_per_sec?;
        let burst = self.burst.unwrap_or_else(|| default_burst(rate));
        Some((rate, burst))
    }
}

/// The burst of a key that sets only a rate: one second's worth, at least 1.
fn default_burst(rate: f64) -> u32 {
    // Saturating float-to-int cast; the rate is checked to be positive and finite.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let burst = rate.ceil() as u32;
    burst.max(1)
}

/// The body of `POST /v1/keys`. Only `tenant` is required.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// The tenant, `[a-z0-9][a-z0-9._-]{0,62}`.
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,62}$", example = "acme")]
    pub tenant: String,
    /// A label for people, at most 100 characters.
    #[serde(default)]
    #[schema(max_length = 100, example = "ci")]
    pub name: Option<String>,
    /// What the key may do; submit, read and cancel unless given.
    #[serde(default)]
    pub rights: Option<Vec<Right>>,
    /// Requests per second, on average (more than 0, at most 1,000,000).
    #[serde(default)]
    #[schema(exclusive_minimum = 0, maximum = 1_000_000)]
    pub rate_per_sec: Option<f64>,
    /// Requests at once above the rate (needs `rate_per_sec`), 1 to 1,000,000; one second's
    /// worth unless given.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub burst: Option<u32>,
    /// Jobs in flight at once, 1 to 1,000,000,000.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    pub max_in_flight: Option<u32>,
}

/// Why a [`NewKey`] was refused: the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct BadKeyRequest {
    /// The field, as named in the request.
    pub field: &'static str,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl NewKey {
    /// Checks every field and makes the key: its record and the secret to show once.
    pub fn issue(self, now: DateTime<Utc>) -> Result<(ApiKey, String), BadKeyRequest> {
        let bad = |field, message: &str| BadKeyRequest {
            field,
            message: message.to_owned(),
        };
        if !valid_tenant(&self.tenant) {
            return Err(bad(
                "tenant",
                "must be 1 to 63 of a-z, 0-9, '.', '_' and '-', starting with a letter or digit",
            ));
        }
        if self
            .name
            .as_ref()
            .is_some_and(|name| name.chars().count() > 100)
        {
            return Err(bad("name", "must be at most 100 characters"));
        }
        let mut rights = self.rights.unwrap_or_else(|| DEFAULT_RIGHTS.to_vec());
        rights.sort_by_key(|right| *right as u8);
        rights.dedup();
        if rights.is_empty() {
            return Err(bad("rights", "a key needs at least one right"));
        }
        if let Some(rate) = self.rate_per_sec
            && !(rate.is_finite() && rate > 0.0 && rate <= 1_000_000.0)
        {
            return Err(bad(
                "rate_per_sec",
                "must be more than 0 and at most 1000000",
            ));
        }
        match (self.burst, self.rate_per_sec) {
            (Some(0 | 1_000_001..), _) => {
                return Err(bad("burst", "must be from 1 to 1000000"));
            }
            (Some(_), None) => return Err(bad("burst", "needs rate_per_sec")),
            _ => {}
        }
        if matches!(self.max_in_flight, Some(0 | 1_000_000_001..)) {
            return Err(bad("max_in_flight", "must be from 1 to 1000000000"));
        }
        let id = Uuid::now_v7();
        let secret = new_secret(id).map_err(|e| BadKeyRequest {
            field: "key",
            message: format!("the gateway could not draw random bytes: {e}"),
        })?;
        let key = ApiKey {
            id,
            tenant: self.tenant,
            name: self.name,
            rights,
            rate_per_sec: self.rate_per_sec,
            burst: self.burst,
            max_in_flight: self.max_in_flight,
            created_at: now,
            revoked_at: None,
            secret_sha256: digest(&secret),
        };
        Ok((key, secret))
    }
}

/// Whether `tenant` is a valid tenant name.
#[must_use]
pub fn valid_tenant(tenant: &str) -> bool {
    let mut bytes = tenant.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && tenant.len() <= 63
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// A new secret for key `id`.
fn new_secret(id: Uuid) -> Result<String, getrandom::Error> {
    let mut random = [0_u8; 32];
    getrandom::fill(&mut random)?;
    Ok(format!(
        "wrn_{}_{}",
        id.simple(),
        URL_SAFE_NO_PAD.encode(random)
    ))
}

/// The key id a presented secret names, if it has the shape of a Warren key.
#[must_use]
pub fn key_id_of(secret: &str) -> Option<Uuid> {
    let rest = secret.strip_prefix("wrn_")?;
    let (id, tail) = rest.split_at_checked(32)?;
    tail.starts_with('_').then_some(())?;
    Uuid::try_parse(id).ok()
}

/// SHA-256 of a secret, as stored.
#[must_use]
pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Whether `secret` is the one whose digest is `expected`, in time that does not depend on
/// where they differ.
#[must_use]
pub fn matches(secret: &str, expected: &[u8; 32]) -> bool {
    digest(secret).ct_eq(expected).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(tenant: &str) -> NewKey {
        NewKey {
            tenant: tenant.into(),
            name: None,
            rights: None,
            rate_per_sec: None,
            burst: None,
            max_in_flight: None,
        }
    }

    #[test]
    fn a_secret_names_its_key_and_matches_only_its_digest() {
        let (key, secret) = request("acme").issue(Utc::now()).unwrap();
        assert_eq!(key_id_of(&secret), Some(key.id));
        assert!(matches(&secret, &key.secret_sha256));
        let mut other = secret.clone();
        other.pop();
        other.push(if secret.ends_with('A') { 'B' } else { 'A' });
        assert!(!matches(&other, &key.secret_sha256));
        assert_eq!(key.rights, DEFAULT_RIGHTS.to_vec());
        for bad in [
            "",
            "wrn_",
            "wrn_nothex",
            "Bearer x",
            &secret.replacen('_', "-", 2),
        ] {
            assert_eq!(key_id_of(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn bad_requests_name_the_field() {
        let field = |request: NewKey| request.issue(Utc::now()).unwrap_err().field;
        assert_eq!(field(request("Acme")), "tenant");
        assert_eq!(field(request("")), "tenant");
        assert_eq!(field(request(&"a".repeat(64))), "tenant");
        let with = |change: fn(&mut NewKey)| {
            let mut r = request("acme");
            change(&mut r);
            r
        };
        assert_eq!(field(with(|r| r.rights = Some(vec![]))), "rights");
        assert_eq!(field(with(|r| r.rate_per_sec = Some(0.0))), "rate_per_sec");
        assert_eq!(
            field(with(|r| r.rate_per_sec = Some(f64::NAN))),
            "rate_per_sec"
        );
        assert_eq!(field(with(|r| r.burst = Some(5))), "burst");
        assert_eq!(field(with(|r| r.max_in_flight = Some(0))), "max_in_flight");
    }

    #[test]
    fn a_rate_without_burst_gets_a_seconds_worth() {
        let mut r = request("acme");
        r.rate_per_sec = Some(0.5);
        let (key, _) = r.issue(Utc::now()).unwrap();
        assert_eq!(key.rate_limit(), Some((0.5, 1)));
    }
}
