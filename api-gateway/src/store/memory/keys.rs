//! The memory store's API keys: kept for the process's life, under the store's one lock.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::MemoryStore;
use crate::{auth::keys::ApiKey, store::StoreError};

impl MemoryStore {
    pub(super) fn insert_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        let mut inner = self.inner();
        if inner.api_keys.contains_key(&key.id) {
            return Err(StoreError::Conflict(std::sync::Arc::new(
                std::io::Error::other(format!("an API key with id {} already exists", key.id)),
            )));
        }
        inner.api_keys.insert(key.id, key.clone());
        Ok(())
    }

    pub(super) fn key(&self, id: Uuid) -> Option<ApiKey> {
        self.inner().api_keys.get(&id).cloned()
    }

    pub(super) fn all_keys(&self) -> Vec<ApiKey> {
        self.inner().api_keys.values().cloned().collect()
    }

    pub(super) fn revoke_key(&self, id: Uuid, at: DateTime<Utc>) -> Option<ApiKey> {
        let mut inner = self.inner();
        let key = inner.api_keys.get_mut(&id)?;
        key.revoked_at.get_or_insert(at);
        Some(key.clone())
    }
}
