//! Flow settings in `warren_queue_settings`, one row per job type; generations come from one
//! sequence, so they grow across types and gateways. A rate window's refill is claimed with a
//! conditional update, so exactly one gateway refills each window.

use async_trait::async_trait;
use tokio_postgres::Row;
use warren_shared::{JobType, flow::RateLimit};

use super::{
    super::{FlowStore, StoreError},
    PostgresStore,
};
use crate::model::{FlowUpdate, QueueSettings};

macro_rules! columns {
    () => {
        "job_type, paused, max_running, rate_jobs, rate_per_seconds, generation, \
         slots_epoch, slots_generation, refilled_window, updated_at"
    };
}

const SELECT_ALL: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM warren_queue_settings ORDER BY job_type"
);
const LOCK_ONE: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM warren_queue_settings WHERE job_type = $1 FOR UPDATE"
);
const NEXT_GENERATION: &str = "SELECT nextval('warren_flow_generation')";
const UPSERT: &str = "INSERT INTO warren_queue_settings (job_type, paused, max_running,
        rate_jobs, rate_per_seconds, generation, slots_epoch, slots_generation, refilled_window,
        updated_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
    ON CONFLICT (job_type) DO UPDATE SET paused = $2, max_running = $3, rate_jobs = $4,
        rate_per_seconds = $5, generation = $6, slots_epoch = $7, slots_generation = $8,
        refilled_window = $9, updated_at = $10";
const MARK_SLOTS: &str = "UPDATE warren_queue_settings SET slots_generation = $2
    WHERE job_type = $1 AND slots_epoch = $2";
const CLAIM_WINDOW: &str = "UPDATE warren_queue_settings SET refilled_window = $3
    WHERE job_type = $1 AND generation = $2
      AND (refilled_window IS NULL OR refilled_window < $3)";

fn from_row(row: &Row) -> Result<QueueSettings, StoreError> {
    let corrupt =
        |column: &str| StoreError::Corrupt(format!("unreadable {column} in warren_queue_settings"));
    macro_rules! get {
        ($column:literal) => {
            row.try_get($column).map_err(|_| corrupt($column))?
        };
    }
    let job_type: String = get!("job_type");
    let max_running: Option<i32> = get!("max_running");
    let rate_jobs: Option<i32> = get!("rate_jobs");
    let per_seconds: Option<f64> = get!("rate_per_seconds");
    let generation: i64 = get!("generation");
    let epoch: i64 = get!("slots_epoch");
    let slots: Option<i64> = get!("slots_generation");
    let window: Option<i64> = get!("refilled_window");
    let unsigned = |value: i64, column| u64::try_from(value).map_err(|_| corrupt(column));
    Ok(QueueSettings {
        job_type: JobType::parse(job_type).map_err(|_| corrupt("job_type"))?,
        paused: get!("paused"),
        max_running: max_running
            .map(|n| u32::try_from(n).map_err(|_| corrupt("max_running")))
            .transpose()?,
        rate_limit: match (rate_jobs, per_seconds) {
            (Some(jobs), Some(per_seconds)) => Some(RateLimit {
                jobs: u32::try_from(jobs).map_err(|_| corrupt("rate_jobs"))?,
                per_seconds,
            }),
            _ => None,
        },
        generation: unsigned(generation, "generation")?,
        slots_epoch: unsigned(epoch, "slots_epoch")?,
        slots_generation: slots.map(|g| unsigned(g, "slots_generation")).transpose()?,
        refilled_window: window.map(|w| unsigned(w, "refilled_window")).transpose()?,
        updated_at: get!("updated_at"),
    })
}

fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[async_trait]
impl FlowStore for PostgresStore {
    async fn flow_settings(&self) -> Result<Vec<QueueSettings>, StoreError> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(SELECT_ALL).await?;
        client
            .query(&statement, &[])
            .await?
            .iter()
            .map(from_row)
            .collect()
    }

    async fn update_flow(
        &self,
        job_type: &JobType,
        update: &FlowUpdate,
    ) -> Result<QueueSettings, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let lock = tx.prepare_cached(LOCK_ONE).await?;
        let current = match tx.query_opt(&lock, &[&job_type.as_str()]).await? {
            Some(row) => from_row(&row)?,
            None => QueueSettings::unset(job_type.clone()),
        };
        let next = tx.prepare_cached(NEXT_GENERATION).await?;
        let generation: i64 = tx.query_one(&next, &[]).await?.try_get(0)?;
        let updated = current.with(update, u64::try_from(generation).unwrap_or(0));
        let max_running = updated
            .max_running
            .map(|n| i32::try_from(n).unwrap_or(i32::MAX));
        let rate_jobs = updated
            .rate_limit
            .map(|r| i32::try_from(r.jobs).unwrap_or(i32::MAX));
        let per_seconds = updated.rate_limit.map(|r| r.per_seconds);
        let upsert = tx.prepare_cached(UPSERT).await?;
        tx.execute(
            &upsert,
            &[
                &job_type.as_str(),
                &updated.paused,
                &max_running,
                &rate_jobs,
                &per_seconds,
                &generation,
                &signed(updated.slots_epoch),
                &updated.slots_generation.map(signed),
                &updated.refilled_window.map(signed),
                &updated.updated_at,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(updated)
    }

    async fn mark_slots(&self, job_type: &JobType, generation: u64) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(MARK_SLOTS).await?;
        client
            .execute(&statement, &[&job_type.as_str(), &signed(generation)])
            .await?;
        Ok(())
    }

    async fn claim_rate_window(
        &self,
        job_type: &JobType,
        generation: u64,
        window: u64,
    ) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(CLAIM_WINDOW).await?;
        let claimed = client
            .execute(
                &statement,
                &[&job_type.as_str(), &signed(generation), &signed(window)],
            )
            .await?;
        Ok(claimed == 1)
    }
}
