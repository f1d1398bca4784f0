//! API keys in `warren_api_keys` (the secret's SHA-256 only).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use uuid::Uuid;

use super::{
    super::{KeyStore, StoreError},
    PostgresStore,
};
use crate::model::{ApiKey, Right};

macro_rules! columns {
    () => {
        "id, tenant, name, rights, rate_per_sec, burst, max_in_flight, secret_sha256, \
         created_at, revoked_at"
    };
}

const INSERT: &str = concat!(
    "INSERT INTO warren_api_keys (",
    columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
);
const SELECT_ONE: &str = concat!("SELECT ", columns!(), " FROM warren_api_keys WHERE id = $1");
const SELECT_ALL: &str = concat!("SELECT ", columns!(), " FROM warren_api_keys ORDER BY id");
const REVOKE: &str = concat!(
    "UPDATE warren_api_keys SET revoked_at = coalesce(revoked_at, $2) WHERE id = $1 RETURNING ",
    columns!()
);
fn from_row(row: &Row) -> Result<ApiKey, StoreError> {
    let corrupt =
        |column: &str| StoreError::Corrupt(format!("unreadable {column} in warren_api_keys"));
    macro_rules! get {
        ($column:literal) => {
            row.try_get($column).map_err(|_| corrupt($column))?
        };
    }
    let rights: Vec<String> = get!("rights");
    let unsigned = |value: Option<i32>, column| {
        value
            .map(|v| u32::try_from(v).map_err(|_| corrupt(column)))
            .transpose()
    };
    let digest: Vec<u8> = get!("secret_sha256");
    Ok(ApiKey {
        id: get!("id"),
        tenant: get!("tenant"),
        name: get!("name"),
        rights: rights
            .iter()
            .map(|name| Right::parse(name).ok_or_else(|| corrupt("rights")))
            .collect::<Result<_, _>>()?,
        rate_per_sec: get!("rate_per_sec"),
        burst: unsigned(get!("burst"), "burst")?,
        max_in_flight: unsigned(get!("max_in_flight"), "max_in_flight")?,
        created_at: get!("created_at"),
        revoked_at: get!("revoked_at"),
        secret_sha256: digest.try_into().map_err(|_| corrupt("secret_sha256"))?,
    })
}

fn signed(value: Option<u32>) -> Option<i32> {
    value.map(|v| i32::try_from(v).unwrap_or(i32::MAX))
}

#[async_trait]
impl KeyStore for PostgresStore {
    async fn insert_api_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(INSERT).await?;
        let rights: Vec<&str> = key.rights.iter().map(|r| r.as_str()).collect();
        client
            .execute(
                &statement,
                &[
                    &key.id,
                    &key.tenant,
                    &key.name,
                    &rights,
                    &key.rate_per_sec,
                    &signed(key.burst),
                    &signed(key.max_in_flight),
                    &key.secret_sha256.as_slice(),
                    &key.created_at,
                    &key.revoked_at,
                ],
            )
            .await?;
        Ok(())
    }

    async fn api_key(&self, id: Uuid) -> Result<Option<ApiKey>, StoreError> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(SELECT_ONE).await?;
        client
            .query_opt(&statement, &[&id])
            .await?
            .as_ref()
            .map(from_row)
            .transpose()
    }

    async fn api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(SELECT_ALL).await?;
        client
            .query(&statement, &[])
            .await?
            .iter()
            .map(from_row)
            .collect()
    }

    async fn revoke_api_key(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<Option<ApiKey>, StoreError> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(REVOKE).await?;
        client
            .query_opt(&statement, &[&id, &at])
            .await?
            .as_ref()
            .map(from_row)
            .transpose()
    }
}
