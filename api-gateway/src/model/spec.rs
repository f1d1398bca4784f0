//! A job spec (what a client asks to run: the body of `POST /v1/jobs`, a schedule's template, a
//! workflow step) and the one place it is validated: [`JobSpec::validate`] checks type,
//! attempts, time limit and due time against this gateway's [`SpecLimits`] and gives a
//! [`ValidJob`], or a [`SpecError`] naming the field. (`callback_url`'s host is checked against
//! the webhook policy by the job service, which can resolve it.)

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, value::RawValue};
use warren_shared::{JobId, JobStatus, JobType, Priority};

use uuid::Uuid;

use super::{Job, RawJson, key::DEFAULT_TENANT};

/// Attempts a job gets when the request does not say.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// Most attempts a job may ask for.
pub const MAX_MAX_ATTEMPTS: u32 = 100;

/// Limits applied to job specs (from the gateway's configuration).
#[derive(Debug, Clone)]
pub struct SpecLimits {
    /// `timeout_ms` for jobs that do not set one.
    pub default_timeout_ms: u64,
    /// Largest `timeout_ms` accepted.
    pub max_timeout_ms: u64,
    /// How far ahead `run_at`/`delay_ms` may be (`WARREN_MAX_DELAY`).
    pub max_delay: std::time::Duration,
}

/// A job spec, as the body of `POST /v1/jobs` (named `SubmitRequest` in the OpenAPI document).
/// Only `type` is required; unknown fields are refused so a typo does not silently fall back to
/// a default.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[schema(as = SubmitRequest)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// The job type, `[a-z0-9][a-z0-9._-]{0,99}`.
    #[serde(rename = "type")]
    #[schema(
        pattern = "^[a-z0-9][a-z0-9._-]{0,99}$",
        min_length = 1,
        max_length = 100,
        example = "report.generate"
    )]
    pub job_type: String,
    /// The handler's input, any JSON value nested at most 100 deep, without NUL characters,
    /// lone surrogates or numbers beyond PostgreSQL's `numeric` (kept as the client's JSON text,
    /// unparsed, all the way to the job message).
    #[serde(default)]
    #[schema(value_type = serde_json::Value)]
    pub payload: Option<Box<RawValue>>,
    /// Attempts allowed, 1 to 100 (default 3).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100)]
    pub max_attempts: Option<u32>,
    /// Per-attempt time limit in milliseconds, at least 1 and at most `WARREN_MAX_TIMEOUT_MS`
    /// (25 min unless configured otherwise).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub timeout_ms: Option<u64>,
    /// An `http(s)` URL to POST the finished job to, signed as Standard Webhooks says (see
    /// the `callbacks` of this operation); its host must be a public address.
    #[serde(default)]
    #[schema(
        format = "uri",
        pattern = "^https?://",
        max_length = 2048,
        example = "https://example.com/hooks/warren"
    )]
    pub callback_url: Option<String>,
    /// When to run the job: an RFC 3339 date-time with an offset. The job is `scheduled` until
    /// then; a time in the past means now. Not with `delay_ms`.
    #[serde(default)]
    #[schema(format = DateTime, example = "2026-12-01T06:00:00Z")]
    pub run_at: Option<String>,
    /// Run the job this many milliseconds from now instead. Not with `run_at`.
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// How soon it starts under a backlog: `high` before `normal` (the default) before `low`.
    #[serde(default)]
    #[schema(value_type = Option<Priority>)]
    pub priority: Option<String>,
}

impl JobSpec {
    /// A request for a job of `job_type` with `payload` and default settings.
    #[must_use]
    pub fn new(job_type: &str, payload: &Value) -> Self {
        Self {
            job_type: job_type.to_owned(),
            payload: serde_json::value::to_raw_value(payload).ok(),
            max_attempts: None,
            timeout_ms: None,
            callback_url: None,
            run_at: None,
            delay_ms: None,
            priority: None,
        }
    }

    /// When the job is due: `None` for now (no `run_at`/`delay_ms`, or a time already past).
    fn due_at(
        &self,
        now: DateTime<Utc>,
        max_delay: std::time::Duration,
    ) -> Result<Option<DateTime<Utc>>, SpecError> {
        let invalid = |field, message: String| SpecError { field, message };
        let (field, due) = match (&self.run_at, self.delay_ms) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "run_at",
                    "give run_at or delay_ms, not both".into(),
                ));
            }
            (Some(raw), None) => {
                let due = DateTime::parse_from_rfc3339(raw).map_err(|e| {
                    invalid("run_at", format!("{raw:?} is not an RFC 3339 date-time with an offset, such as 2026-12-01T06:00:00Z ({e})"))
                })?;
                ("run_at", Some(due.with_timezone(&Utc)))
            }
            (None, Some(ms)) => {
                let delay = i64::try_from(ms)
                    .ok()
                    .and_then(chrono::Duration::try_milliseconds);
                (
                    "delay_ms",
                    delay.and_then(|delay| now.checked_add_signed(delay)),
                )
            }
            (None, None) => return Ok(None),
        };
        let latest = chrono::Duration::from_std(max_delay)
            .ok()
            .and_then(|max| now.checked_add_signed(max));
        match (due, latest) {
            (Some(due), _) if due <= now => Ok(None),
            (Some(due), Some(latest)) if due <= latest => Ok(Some(due)),
            _ => Err(invalid(
                field,
                format!(
                    "is more than {} days ahead, the most this gateway accepts (WARREN_MAX_DELAY)",
                    max_delay.as_secs() / 86_400
                ),
            )),
        }
    }

    /// Checks every field against `limits` (a due time is read from now): the job to make, or
    /// the first field that is wrong and why.
    pub fn validate(self, limits: &SpecLimits) -> Result<ValidJob, SpecError> {
        let run_at = self.due_at(Utc::now(), limits.max_delay)?;
        let job_type = JobType::parse(self.job_type).map_err(|e| SpecError {
            field: "type",
            message: e.to_string(),
        })?;
        let max_attempts = self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
        if !(1..=MAX_MAX_ATTEMPTS).contains(&max_attempts) {
            return Err(SpecError {
                field: "max_attempts",
                message: format!("must be between 1 and {MAX_MAX_ATTEMPTS}, got {max_attempts}"),
            });
        }
        let timeout_ms = self.timeout_ms.unwrap_or(limits.default_timeout_ms);
        if !(1..=limits.max_timeout_ms).contains(&timeout_ms) {
            return Err(SpecError {
                field: "timeout_ms",
                message: format!(
                    "must be between 1 and {} milliseconds, got {timeout_ms}",
                    limits.max_timeout_ms
                ),
            });
        }
        let priority = match self.priority.as_deref() {
            None => Priority::Normal,
            Some(text) => Priority::parse(text).map_err(|message| SpecError {
                field: "priority",
                message,
            })?,
        };
        if let Some(payload) = &self.payload {
            warren_shared::storable::check(payload.get()).map_err(|message| SpecError {
                field: "payload",
                message,
            })?;
        }
        Ok(ValidJob {
            job_type,
            payload: self.payload.map_or_else(
                || RawJson::from_value(&Value::Object(Default::default())),
                RawJson::from_raw,
            ),
            max_attempts,
            timeout_ms,
            callback_url: self.callback_url,
            run_at,
            priority,
        })
    }

    /// The request as JSON with sorted keys and no spacing, so equal requests read equally
    /// (what an `Idempotency-Key` is checked against).
    #[must_use]
    pub fn canonical(&self) -> String {
        let payload: Option<Value> = self
            .payload
            .as_deref()
            .and_then(|raw| serde_json::from_str(raw.get()).ok());
        let canonical = serde_json::json!({
            "type": self.job_type, "payload": payload, "max_attempts": self.max_attempts,
            "timeout_ms": self.timeout_ms, "callback_url": self.callback_url,
            "run_at": self.run_at, "delay_ms": self.delay_ms,
        });
        // Added only when given, so keys stored before priorities existed still match.
        let mut canonical = canonical;
        if let (Some(priority), Some(fields)) = (&self.priority, canonical.as_object_mut()) {
            fields.insert("priority".into(), Value::String(priority.clone()));
        }
        canonical.to_string()
    }
}

/// Why a [`JobSpec`] was refused: the field, as named in the spec, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// The field.
    pub field: &'static str,
    /// What is wrong and what is allowed.
    pub message: String,
}

/// A spec that passed [`JobSpec::validate`]: every default filled in, every limit checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidJob {
    /// The job type.
    pub job_type: JobType,
    /// The handler's input.
    pub payload: RawJson,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Per-attempt time limit in milliseconds.
    pub timeout_ms: u64,
    /// Where to POST the finished job (its host not yet checked: see the module docs).
    pub callback_url: Option<String>,
    /// When it is due, if later than now.
    pub run_at: Option<DateTime<Utc>>,
    /// Its priority.
    pub priority: Priority,
}

impl ValidJob {
    /// The new job's record, accepted now with a fresh id, in the default tenant and without a
    /// key (the job service sets the submitting caller's): `scheduled` when due later, else
    /// `queued` with its outbox mark set.
    #[must_use]
    pub fn into_job(self) -> Job {
        self.into_job_of(JobId::new(), DEFAULT_TENANT, None)
    }

    /// [`ValidJob::into_job`] with the given id, tenant and submitting key.
    #[must_use]
    pub fn into_job_of(self, id: JobId, tenant: &str, key_id: Option<Uuid>) -> Job {
        // PostgreSQL keeps microseconds: a record read back equals the one written.
        let now = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
        let run_at = self.run_at;
        Job {
            id,
            tenant: tenant.to_owned(),
            key_id,
            schedule_id: None,
            workflow_id: None,
            step: None,
            parents: None,
            job_type: self.job_type,
            status: if run_at.is_some() {
                JobStatus::Scheduled
            } else {
                JobStatus::Queued
            },
            attempt: 1,
            max_attempts: self.max_attempts,
            priority: self.priority,
            progress: None,
            result: None,
            error: None,
            errors: Vec::new(),
            created_at: now,
            updated_at: now,
            next_attempt_at: None,
            started_at: None,
            finished_at: None,
            payload: self.payload,
            timeout_ms: self.timeout_ms,
            callback_url: self.callback_url,
            seq: 0,
            attempt_budget: self.max_attempts,
            version: 0,
            // A scheduled job is published when it is due, not now.
            unconfirmed_since: run_at.is_none().then_some(now),
            run_at,
            callback: None,
        }
    }
}
