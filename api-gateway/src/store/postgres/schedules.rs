//! Recurring schedules in `warren_schedules`. Firing locks the due rows with `FOR UPDATE SKIP
//! LOCKED`, so each due schedule is fired by one gateway; its job (whose id is derived from the
//! due time, inserted with `ON CONFLICT DO NOTHING`) and its updated row commit together.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use tokio_postgres::{Row, types::Json};
use uuid::Uuid;
use warren_shared::{JobId, JobType};

use super::{
    super::{FireRound, ScheduleStore, StoreError},
    PostgresStore,
    rows::{self, Columns},
};
use crate::model::{Fired, Job, RawJson, Schedule};
use warren_shared::Priority;

macro_rules! columns {
    () => {
        "id, cron, timezone, job_type, payload, max_attempts, timeout_ms, callback_url, paused, \
         next_run_at, last_run_at, last_job_id, misfires, last_misfire_at, created_at, updated_at, \
         tenant, priority"
    };
}

const INSERT: &str = concat!(
    "INSERT INTO warren_schedules (",
    columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)"
);
const SELECT_ONE: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM warren_schedules WHERE id = $1"
);
const LOCK_ONE: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM warren_schedules WHERE id = $1 FOR UPDATE"
);
const SELECT_ALL: &str = concat!("SELECT ", columns!(), " FROM warren_schedules ORDER BY id");
const LOCK_DUE: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM warren_schedules WHERE NOT paused AND next_run_at <= $1
     ORDER BY next_run_at LIMIT 64 FOR UPDATE SKIP LOCKED"
);
const UPDATE: &str = "UPDATE warren_schedules SET cron = $2, timezone = $3, job_type = $4,
    payload = $5, max_attempts = $6, timeout_ms = $7, callback_url = $8, paused = $9,
    next_run_at = $10, last_run_at = $11, last_job_id = $12, misfires = $13,
    last_misfire_at = $14, created_at = $15, updated_at = $16, tenant = $17, priority = $18
    WHERE id = $1";

fn from_row(row: &Row) -> Result<Schedule, StoreError> {
    let corrupt =
        |column: &str| StoreError::Corrupt(format!("unreadable {column} in warren_schedules"));
    macro_rules! get {
        ($column:literal) => {
            row.try_get($column).map_err(|_| corrupt($column))?
        };
    }
    let job_type: String = get!("job_type");
    let payload: Json<Box<serde_json::value::RawValue>> = get!("payload");
    let max_attempts: Option<i32> = get!("max_attempts");
    let timeout_ms: Option<i64> = get!("timeout_ms");
    let misfires: i64 = get!("misfires");
    let last_job_id: Option<Uuid> = get!("last_job_id");
    Ok(Schedule {
        id: get!("id"),
        cron: get!("cron"),
        timezone: get!("timezone"),
        job_type: JobType::parse(job_type).map_err(|_| corrupt("job_type"))?,
        payload: RawJson::from_raw(payload.0),
        max_attempts: max_attempts.and_then(|n| u32::try_from(n).ok()),
        timeout_ms: timeout_ms.and_then(|n| u64::try_from(n).ok()),
        callback_url: get!("callback_url"),
        priority: {
            let priority: String = get!("priority");
            Priority::parse(&priority).map_err(|_| corrupt("priority"))?
        },
        paused: get!("paused"),
        next_run_at: get!("next_run_at"),
        last_run_at: get!("last_run_at"),
        last_job_id: last_job_id.map(JobId::from),
        misfires: u64::try_from(misfires).unwrap_or(0),
        last_misfire_at: get!("last_misfire_at"),
        created_at: get!("created_at"),
        updated_at: get!("updated_at"),
        tenant: get!("tenant"),
    })
}

/// Writes `schedule` with `statement` (insert or update: the same parameters).
async fn write(
    client: &impl GenericClient,
    statement: &str,
    schedule: &Schedule,
) -> Result<u64, StoreError> {
    let statement = client.prepare_cached(statement).await?;
    let max_attempts = schedule.max_attempts.and_then(|n| i32::try_from(n).ok());
    let timeout_ms = schedule.timeout_ms.and_then(|n| i64::try_from(n).ok());
    let misfires = i64::try_from(schedule.misfires).unwrap_or(i64::MAX);
    let last_job_id = schedule.last_job_id.map(|id| id.as_uuid());
    Ok(client
        .execute(
            &statement,
            &[
                &schedule.id,
                &schedule.cron,
                &schedule.timezone,
                &schedule.job_type.as_str(),
                &Json(schedule.payload.as_raw()),
                &max_attempts,
                &timeout_ms,
                &schedule.callback_url,
                &schedule.paused,
                &schedule.next_run_at,
                &schedule.last_run_at,
                &last_job_id,
                &misfires,
                &schedule.last_misfire_at,
                &schedule.created_at,
                &schedule.updated_at,
                &schedule.tenant,
                &schedule.priority.as_str(),
            ],
        )
        .await?)
}

#[async_trait]
impl ScheduleStore for PostgresStore {
    async fn insert_schedule(&self, schedule: Schedule) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        write(&client, INSERT, &schedule).await?;
        Ok(())
    }

    async fn get_schedule(&self, id: Uuid) -> Result<Option<Schedule>, StoreError> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(SELECT_ONE).await?;
        client
            .query_opt(&statement, &[&id])
            .await?
            .map(|row| from_row(&row))
            .transpose()
    }

    async fn list_schedules(&self) -> Result<Vec<Schedule>, StoreError> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(SELECT_ALL).await?;
        client
            .query(&statement, &[])
            .await?
            .iter()
            .map(from_row)
            .collect()
    }

    async fn update_schedule(
        &self,
        id: Uuid,
        change: &(dyn for<'s> Fn(&'s mut Schedule) + Send + Sync),
    ) -> Result<Option<Schedule>, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let statement = tx.prepare_cached(LOCK_ONE).await?;
        let Some(row) = tx.query_opt(&statement, &[&id]).await? else {
            return Ok(None);
        };
        let mut schedule = from_row(&row)?;
        change(&mut schedule);
        write(&tx, UPDATE, &schedule).await?;
        tx.commit().await?;
        Ok(Some(schedule))
    }

    async fn delete_schedule(&self, id: Uuid) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached("DELETE FROM warren_schedules WHERE id = $1")
            .await?;
        Ok(client.execute(&statement, &[&id]).await? == 1)
    }

    async fn fire_due(
        &self,
        now: DateTime<Utc>,
        plan: &(dyn for<'s> Fn(&'s Schedule) -> Fired + Send + Sync),
    ) -> Result<FireRound, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let statement = tx.prepare_cached(LOCK_DUE).await?;
        let mut round = FireRound::default();
        let mut jobs: Vec<Job> = Vec::new();
        for row in tx.query(&statement, &[&now]).await? {
            let fired = plan(&from_row(&row)?);
            round.misfired += fired.misfired;
            write(&tx, UPDATE, &fired.schedule).await?;
            jobs.extend(fired.job);
        }
        if !jobs.is_empty() {
            let statement = tx.prepare_cached(rows::insert_for(jobs.len())).await?;
            let inserted: Vec<Uuid> = tx
                .query(&statement, &Columns::of(jobs.iter()).params())
                .await?
                .iter()
                .map(|row| row.get(0))
                .collect();
            round.jobs = jobs
                .into_iter()
                .filter(|job| inserted.contains(&job.id.as_uuid()))
                .collect();
        }
        tx.commit().await?;
        Ok(round)
    }
}
