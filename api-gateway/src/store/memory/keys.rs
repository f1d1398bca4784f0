//! The memory store's API keys: kept for the process's life, under the store's one lock.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::MemoryStore;
use crate::{
    model::ApiKey,
    store::{KeyStore, StoreError},
};

#[async_trait]
impl KeyStore for MemoryStore {
    async fn insert_api_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        let mut inner = self.inner();
        if inner.api_keys.contains_key(&key.id) {
            return Err(StoreError::Conflict(std::sync::Arc::new(
                std::io::Error::other(format!("an API key with id {} already exists", key.id)),
            )));
        }
        inner.api_keys.insert(key.id, key.clone());
        Ok(())
    }

    async fn api_key(&self, id: Uuid) -> Result<Option<ApiKey>, StoreError> {
        Ok(self.inner().api_keys.get(&id).cloned())
    }

    async fn api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        Ok(self.inner().api_keys.values().cloned().collect())
    }

    async fn revoke_api_key(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<Option<ApiKey>, StoreError> {
        let mut inner = self.inner();
        let Some(key) = inner.api_keys.get_mut(&id) else {
            return Ok(None);
        };
        key.revoked_at.get_or_insert(at);
        Ok(Some(key.clone()))
    }
}
