//! The API-key use cases behind `/v1/keys`: make a key (its secret shown once), list the keys
//! a caller manages, revoke one. The operator manages every tenant's keys; a tenant's key with
//! the `admin` right manages its own tenant's. What a key is and how its fields are checked is
//! [`crate::model::key`]'s; checking presented keys is [`crate::auth`]'s.

use std::sync::Arc;

use chrono::Utc;
use uuid::Uuid;

use crate::{
    auth::{Authenticator, Caller},
    model::{ApiKey, NewKey, key::BadKeyRequest},
    store::{KeyStore, StoreError},
};

/// Why the service refused or could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// The caller manages another tenant's keys only.
    #[error("this key manages the keys of tenant {0:?} only")]
    OtherTenant(String),
    /// A field of the new key is invalid.
    #[error(transparent)]
    Invalid(#[from] BadKeyRequest),
    /// No key the caller manages has this id.
    #[error("no API key has id {0}")]
    NotFound(Uuid),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Makes, lists and revokes API keys.
#[derive(Clone)]
pub struct KeyService {
    store: Arc<dyn KeyStore>,
    auth: Arc<Authenticator>,
}

impl KeyService {
    /// A service over `store`; `auth` forgets a key revoked here at once.
    #[must_use]
    pub fn new(store: Arc<dyn KeyStore>, auth: Arc<Authenticator>) -> Self {
        Self { store, auth }
    }

    /// Makes a key as `new` says, for a tenant `caller` manages: its record and its secret,
    /// which is never shown again.
    pub async fn create(
        &self,
        caller: &Caller,
        new: NewKey,
    ) -> Result<(ApiKey, String), KeysError> {
        if !caller.sees(&new.tenant) {
            return Err(KeysError::OtherTenant(caller.label().to_owned()));
        }
        let (record, secret) = new.issue(Utc::now())?;
        self.store.insert_api_key(&record).await?;
        tracing::info!(key_id = %record.id, tenant = %record.tenant, rights = ?record.rights, "API key made");
        Ok((record, secret))
    }

    /// Every key `caller` manages, oldest first, revoked ones too.
    pub async fn list(&self, caller: &Caller) -> Result<Vec<ApiKey>, KeysError> {
        let mut keys = self.store.api_keys().await?;
        keys.retain(|key| caller.sees(&key.tenant));
        Ok(keys)
    }

    /// Revokes key `id`: this gateway refuses it at once, every other within the cache's life.
    pub async fn revoke(&self, caller: &Caller, id: Uuid) -> Result<(), KeysError> {
        let key = self
            .store
            .api_key(id)
            .await?
            .filter(|key| caller.sees(&key.tenant));
        if key.is_none() {
            return Err(KeysError::NotFound(id));
        }
        self.store
            .revoke_api_key(id, Utc::now())
            .await?
            .ok_or(KeysError::NotFound(id))?;
        self.auth.forget(id);
        tracing::info!(key_id = %id, "API key revoked");
        Ok(())
    }
}
