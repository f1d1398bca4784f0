//! Who is calling, and what they may do: API keys, tenants and rate limits (DESIGN.md, "API
//! keys and tenants").
//!
//! - **Open mode.** Without `WARREN_ADMIN_KEY` every request acts as the operator: every
//!   right, every tenant's jobs. A warning says so at start.
//! - **Keys on.** Protected routes need `Authorization: Bearer <key>`. `WARREN_ADMIN_KEY` is
//!   the operator's key; the keys it creates ([`crate::keys`]) each act for one tenant, with the
//!   rights, rate limit and in-flight cap they were given.
//! - **Tenancy.** A job records its tenant; a caller that does not see it gets `404`, as if it
//!   did not exist ([`Caller::sees`]).
//! - **Revocation.** Key records are cached for at most [`CACHE_TTL`] per gateway, so a key
//!   revoked on one gateway is refused by every gateway within that time (at once on the
//!   gateway that revoked it).

pub mod rate;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::{
    model::{
        ApiKey, DEFAULT_TENANT, Right,
        key::{self as keys},
    },
    store::{KeyStore, StoreError},
};
use rate::RateLimiter;

/// How long a gateway trusts a key record it read (revocation reaches every gateway within
/// this).
pub const CACHE_TTL: Duration = Duration::from_millis(500);
/// Cached records beyond this many are dropped, so made-up key ids cannot grow the cache
/// without bound.
const MAX_CACHED: usize = 10_000;

/// `WARREN_ADMIN_KEY`, the operator's key (hidden from `Debug` and `--help`).
#[derive(Clone)]
pub struct AdminKey(String);

impl std::fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminKey(hidden)")
    }
}

impl AdminKey {
    /// The shortest admin key accepted: a short key is a guessable one.
    pub const MIN_LEN: usize = 16;

    /// Reads the key, refusing a short one or one with spaces (it travels in a header).
    pub fn parse(value: &str) -> Result<Self, String> {
        if value.len() < Self::MIN_LEN || !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "WARREN_ADMIN_KEY must be at least {} visible ASCII characters without spaces; \
                 make one with: openssl rand -base64 32",
                Self::MIN_LEN
            ));
        }
        Ok(Self(value.to_owned()))
    }

    /// The key itself.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// The caller of a request, once authenticated.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// The key it presented; `None` for the operator (open mode, or `WARREN_ADMIN_KEY`).
    key: Option<Arc<ApiKey>>,
}

impl Caller {
    /// The operator: every right, every tenant.
    #[must_use]
    pub fn operator() -> Self {
        Self { key: None }
    }

    /// A caller with `key`.
    #[must_use]
    pub fn with_key(key: ApiKey) -> Self {
        Self {
            key: Some(Arc::new(key)),
        }
    }

    /// The key presented, unless the caller is the operator.
    #[must_use]
    pub fn key(&self) -> Option<&ApiKey> {
        self.key.as_deref()
    }

    /// The one tenant the caller acts for; `None` for the operator, who sees them all.
    #[must_use]
    pub fn tenant(&self) -> Option<&str> {
        self.key.as_deref().map(|key| key.tenant.as_str())
    }

    /// The tenant of the jobs the caller submits.
    #[must_use]
    pub fn tenant_of_new_jobs(&self) -> &str {
        self.tenant().unwrap_or(DEFAULT_TENANT)
    }

    /// Whether the caller sees what belongs to `tenant`.
    #[must_use]
    pub fn sees(&self, tenant: &str) -> bool {
        self.tenant().is_none_or(|own| own == tenant)
    }

    /// Whether the caller holds `right`.
    #[must_use]
    pub fn allows(&self, right: Right) -> bool {
        self.key.as_deref().is_none_or(|key| key.allows(right))
    }

    /// Who the caller is in logs and metrics: the tenant, or `operator` (never the secret).
    #[must_use]
    pub fn label(&self) -> &str {
        self.tenant().unwrap_or("operator")
    }
}

/// Why a request was not authenticated.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No key, a malformed header, or a key that is unknown or revoked: `401`.
    #[error("{0}")]
    Denied(&'static str),
    /// The key could not be looked up.
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct Cached {
    read_at: Instant,
    key: Option<Arc<ApiKey>>,
}

/// Checks keys against `WARREN_ADMIN_KEY` and the store, and holds this gateway's rate-limit
/// buckets.
pub struct Authenticator {
    /// SHA-256 of `WARREN_ADMIN_KEY`; `None` in open mode.
    admin: Option<[u8; 32]>,
    store: Arc<dyn KeyStore>,
    cache: Mutex<HashMap<Uuid, Cached>>,
    /// Every key's rate-limit bucket in this gateway.
    pub limiter: RateLimiter,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("open", &self.admin.is_none())
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Keys on when `admin_key` is set, open otherwise.
    pub fn new(admin_key: Option<&str>, store: Arc<dyn KeyStore>) -> Self {
        Self {
            admin: admin_key.map(keys::digest),
            store,
            cache: Mutex::default(),
            limiter: RateLimiter::default(),
        }
    }

    /// Whether no key is needed.
    #[must_use]
    pub fn is_open(&self) -> bool {
        self.admin.is_none()
    }

    /// Who presented `secret` (the key from `Authorization: Bearer`, or the dashboard's
    /// cookie); `None` when the request carried none.
    pub async fn identify(&self, secret: Option<&str>) -> Result<Caller, AuthError> {
        let Some(admin) = &self.admin else {
            return Ok(Caller::operator());
        };
        let secret = secret.ok_or(AuthError::Denied(
            "this route needs an API key: send Authorization: Bearer <key>",
        ))?;
        let unknown = || AuthError::Denied("the API key is unknown or revoked");
        if bool::from(keys::digest(secret).ct_eq(admin)) {
            return Ok(Caller::operator());
        }
        let id = keys::key_id_of(secret).ok_or_else(unknown)?;
        let key = self.lookup(id).await?.ok_or_else(unknown)?;
        if key.revoked_at.is_some() || !keys::matches(secret, &key.secret_sha256) {
            return Err(unknown());
        }
        Ok(Caller { key: Some(key) })
    }

    /// Key `id`'s record, from the cache while it is fresh.
    async fn lookup(&self, id: Uuid) -> Result<Option<Arc<ApiKey>>, StoreError> {
        if let Some(cached) = self.cache().get(&id)
            && cached.read_at.elapsed() < CACHE_TTL
        {
            return Ok(cached.key.clone());
        }
        let read_at = Instant::now();
        let key = self.store.api_key(id).await?.map(Arc::new);
        let mut cache = self.cache();
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, cached| cached.read_at.elapsed() < CACHE_TTL);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        let cached = Cached {
            read_at,
            key: key.clone(),
        };
        cache.insert(id, cached);
        Ok(key)
    }

    /// Drops key `id` from this gateway's cache (it was revoked here).
    pub fn forget(&self, id: Uuid) {
        self.cache().remove(&id);
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Cached>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
