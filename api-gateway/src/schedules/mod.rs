//! Recurring schedules: the use cases behind `/v1/schedules` and the loop that fires them.
//!
//! - [`ScheduleService`]: make, list, show, change and remove schedules. Every field is checked
//!   as a submit would check it ([`JobSpec::validate`], then the callback policy), so a
//!   schedule never fires a job that a submit would have refused. A schedule belongs to the
//!   tenant of the key that made it, as do the jobs it makes.
//! - [`firing`]: the loop in every gateway that fires due schedules.
//!
//! When a schedule is due and what firing it does are pure rules, in
//! [`crate::model::schedule`].

pub mod firing;

use std::sync::Arc;

use chrono::Utc;
use serde::Deserialize;
use serde_json::value::RawValue;
use uuid::Uuid;
use warren_shared::{JobType, Priority};

use crate::{
    auth::Caller,
    jobs::JobService,
    model::{Cadence, JobSpec, RawJson, Schedule, SpecError},
    store::{ScheduleStore, StoreError},
};

/// The body of `POST /v1/schedules`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"cron": "0 6 * * 1", "timezone": "Europe/Paris", "type": "report.generate", "payload": {"period": "weekly"}}))]
pub struct NewSchedule {
    /// A 5-field cron pattern (`0 6 * * 1`), a shortcut (`@hourly`, `@daily`, ...), or 6
    /// fields with seconds first.
    pub cron: String,
    /// The IANA time zone the pattern is read in (default `UTC`).
    #[serde(default)]
    pub timezone: Option<String>,
    /// The type of the jobs it makes.
    #[serde(rename = "type")]
    #[schema(
        pattern = "^[a-z0-9][a-z0-9._-]{0,99}$",
        min_length = 1,
        max_length = 100
    )]
    pub job_type: String,
    /// The payload of the jobs it makes.
    #[serde(default)]
    #[schema(value_type = serde_json::Value)]
    pub payload: Option<Box<RawValue>>,
    /// `max_attempts` of its jobs, 1 to 100.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100)]
    pub max_attempts: Option<u32>,
    /// `timeout_ms` of its jobs, at least 1 and at most `WARREN_MAX_TIMEOUT_MS`.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub timeout_ms: Option<u64>,
    /// `callback_url` of its jobs.
    #[serde(default)]
    #[schema(format = "uri", pattern = "^https?://", max_length = 2048)]
    pub callback_url: Option<String>,
    /// `priority` of its jobs: `high`, `normal` (the default) or `low`.
    #[serde(default)]
    #[schema(value_type = Option<Priority>)]
    pub priority: Option<String>,
    /// Start paused.
    #[serde(default)]
    pub paused: bool,
}

/// The body of `PATCH /v1/schedules/{id}`: the fields to change.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"paused": true}))]
pub struct ScheduleChange {
    /// A new cron pattern.
    #[serde(default)]
    pub cron: Option<String>,
    /// A new time zone.
    #[serde(default)]
    pub timezone: Option<String>,
    /// A new payload.
    #[serde(default)]
    #[schema(value_type = serde_json::Value)]
    pub payload: Option<Box<RawValue>>,
    /// New `max_attempts`, 1 to 100.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100)]
    pub max_attempts: Option<u32>,
    /// New `timeout_ms`, at least 1 and at most `WARREN_MAX_TIMEOUT_MS`.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub timeout_ms: Option<u64>,
    /// New `callback_url`.
    #[serde(default)]
    #[schema(format = "uri", pattern = "^https?://", max_length = 2048)]
    pub callback_url: Option<String>,
    /// New `priority`.
    #[serde(default)]
    #[schema(value_type = Option<Priority>)]
    pub priority: Option<String>,
    /// Pause (`true`) or resume (`false`); a resumed schedule is next due after now.
    #[serde(default)]
    pub paused: Option<bool>,
}

/// Why the service refused or could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum SchedulesError {
    /// A field is invalid.
    #[error(transparent)]
    Invalid(#[from] SpecError),
    /// No schedule the caller sees has this id.
    #[error("no schedule has id {0}")]
    NotFound(Uuid),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The job spec a schedule's jobs are made from.
#[must_use]
pub fn spec_of(schedule: &Schedule) -> JobSpec {
    JobSpec {
        max_attempts: schedule.max_attempts,
        timeout_ms: schedule.timeout_ms,
        callback_url: schedule.callback_url.clone(),
        priority: (!schedule.priority.is_normal()).then(|| schedule.priority.to_string()),
        ..JobSpec::new(schedule.job_type.as_str(), &schedule.payload.to_value())
    }
}

/// A request's `priority`, read as a job submit's is.
fn priority_of(text: Option<&str>) -> Result<Option<Priority>, SpecError> {
    text.map(Priority::parse)
        .transpose()
        .map_err(|message| SpecError {
            field: "priority",
            message,
        })
}

/// Makes, lists, shows, changes and removes schedules, and fires the due ones.
#[derive(Clone)]
pub struct ScheduleService {
    store: Arc<dyn ScheduleStore>,
    jobs: JobService,
}

impl ScheduleService {
    /// A service over `store`, whose fired jobs `jobs` publishes (and whose limits and callback
    /// policy every schedule is checked against).
    #[must_use]
    pub fn new(store: Arc<dyn ScheduleStore>, jobs: JobService) -> Self {
        Self { store, jobs }
    }

    /// Checks a schedule's pattern, zone and job settings, and sets its next due time from now.
    async fn check(&self, schedule: &mut Schedule) -> Result<(), SchedulesError> {
        let cadence = Cadence::parse(&schedule.cron, &schedule.timezone)
            .map_err(|(field, message)| SpecError { field, message })?;
        warren_shared::storable::check(schedule.payload.as_raw().get()).map_err(|message| {
            SpecError {
                field: "payload",
                message,
            }
        })?;
        spec_of(schedule).validate(self.jobs.limits())?;
        self.jobs
            .callback_policy()
            .check(schedule.callback_url.as_deref())
            .await?;
        schedule.next_run_at = if schedule.paused {
            None
        } else {
            cadence.next_after(Utc::now())
        };
        Ok(())
    }

    /// Makes a schedule in `caller`'s tenant.
    pub async fn create(
        &self,
        caller: &Caller,
        new: NewSchedule,
    ) -> Result<Schedule, SchedulesError> {
        let now = Utc::now();
        let job_type = JobType::parse(new.job_type).map_err(|e| SpecError {
            field: "type",
            message: e.to_string(),
        })?;
        let mut schedule = Schedule {
            id: Uuid::now_v7(),
            tenant: caller.tenant_of_new_jobs().to_owned(),
            cron: new.cron,
            timezone: new.timezone.unwrap_or_else(|| "UTC".to_owned()),
            job_type,
            payload: new.payload.map_or_else(
                || RawJson::from_value(&serde_json::json!({})),
                RawJson::from_raw,
            ),
            max_attempts: new.max_attempts,
            timeout_ms: new.timeout_ms,
            callback_url: new.callback_url,
            priority: priority_of(new.priority.as_deref())?.unwrap_or_default(),
            paused: new.paused,
            next_run_at: None,
            last_run_at: None,
            last_job_id: None,
            misfires: 0,
            last_misfire_at: None,
            created_at: now,
            updated_at: now,
        };
        self.check(&mut schedule).await?;
        self.store.insert_schedule(schedule.clone()).await?;
        tracing::info!(schedule_id = %schedule.id, cron = %schedule.cron, "schedule made");
        Ok(schedule)
    }

    /// Every schedule `caller` sees, oldest first.
    pub async fn list(&self, caller: &Caller) -> Result<Vec<Schedule>, SchedulesError> {
        let mut schedules = self.store.list_schedules().await?;
        schedules.retain(|schedule| caller.sees(&schedule.tenant));
        Ok(schedules)
    }

    /// Schedule `id`, if `caller` sees it (another tenant's schedule does not exist for it).
    pub async fn get(&self, caller: &Caller, id: Uuid) -> Result<Schedule, SchedulesError> {
        self.store
            .get_schedule(id)
            .await?
            .filter(|schedule| caller.sees(&schedule.tenant))
            .ok_or(SchedulesError::NotFound(id))
    }

    /// Changes schedule `id` as `change` says; its next due time is computed again from now.
    pub async fn update(
        &self,
        caller: &Caller,
        id: Uuid,
        change: ScheduleChange,
    ) -> Result<Schedule, SchedulesError> {
        let mut changed = self.get(caller, id).await?;
        if let Some(cron) = change.cron {
            changed.cron = cron;
        }
        if let Some(timezone) = change.timezone {
            changed.timezone = timezone;
        }
        if let Some(payload) = change.payload {
            changed.payload = RawJson::from_raw(payload);
        }
        changed.max_attempts = change.max_attempts.or(changed.max_attempts);
        changed.timeout_ms = change.timeout_ms.or(changed.timeout_ms);
        changed.callback_url = change.callback_url.or(changed.callback_url);
        changed.priority = priority_of(change.priority.as_deref())?.unwrap_or(changed.priority);
        changed.paused = change.paused.unwrap_or(changed.paused);
        changed.updated_at = Utc::now();
        self.check(&mut changed).await?;
        let apply = |schedule: &mut Schedule| {
            let (last_run_at, last_job_id, misfires, last_misfire_at) = (
                schedule.last_run_at,
                schedule.last_job_id,
                schedule.misfires,
                schedule.last_misfire_at,
            );
            *schedule = Schedule {
                last_run_at,
                last_job_id,
                misfires,
                last_misfire_at,
                ..changed.clone()
            };
        };
        self.store
            .update_schedule(id, &apply)
            .await?
            .ok_or(SchedulesError::NotFound(id))
    }

    /// Removes schedule `id`; jobs it already made are not touched.
    pub async fn delete(&self, caller: &Caller, id: Uuid) -> Result<(), SchedulesError> {
        self.get(caller, id).await?;
        if self.store.delete_schedule(id).await? {
            Ok(())
        } else {
            Err(SchedulesError::NotFound(id))
        }
    }
}
