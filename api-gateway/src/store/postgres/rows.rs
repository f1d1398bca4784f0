//! Between [`Job`] records and `warren_jobs` rows: the static SQL (prepared once per
//! connection), reading a row back, and the one column-wise parameter list that both the
//! multi-row insert and the multi-row update bind (`unnest` of one array per column).

use serde_json::value::RawValue;
use tokio_postgres::{Row, types::Json, types::ToSql};
use uuid::Uuid;
use warren_shared::{JobError, JobId, JobType, Priority, Progress};

use super::super::StoreError;
use crate::model::{AttemptError, Callback, Job, RawJson};

/// The columns of `warren_jobs`, in the order every statement below uses.
macro_rules! columns {
    () => {
        "id, job_type, status, attempt, max_attempts, attempt_budget, progress, result, error, \
         payload, timeout_ms, callback_url, seq, version, created_at, updated_at, \
         next_attempt_at, started_at, finished_at, unconfirmed_since, run_at, callback, callback_due, \
         tenant, key_id, errors, schedule_id, workflow_id, step, parents, priority"
    };
}

/// One record by id.
pub(super) const SELECT_ONE: &str =
    concat!("SELECT ", columns!(), " FROM warren_jobs WHERE id = $1");
/// Records by id.
pub(super) const SELECT_MANY: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM warren_jobs WHERE id = ANY($1)"
);
/// Records by id, locked in id order (so two batches cannot deadlock).
pub(super) const LOCK_MANY: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM warren_jobs WHERE id = ANY($1) ORDER BY id FOR UPDATE"
);
/// The step records a workflow's settle changes: only `waiting` ones, locked, skipping any
/// another transaction holds (see [`super::workflows`]).
pub(super) const LOCK_WAITING: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM warren_jobs WHERE id = ANY($1) AND status = 'waiting'
     ORDER BY id FOR UPDATE SKIP LOCKED"
);
/// A page of the list, newest first.
pub(super) const LIST: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM warren_jobs WHERE ($1::text IS NULL OR status = $1)
       AND ($2::text IS NULL OR job_type = $2) AND ($3::uuid IS NULL OR id < $3)
       AND ($5::text IS NULL OR tenant = $5) AND ($6::uuid IS NULL OR workflow_id = $6)
     ORDER BY id DESC LIMIT $4"
);
/// Claims unconfirmed records for the relay, skipping rows another gateway has locked.
pub(super) const CLAIM_UNCONFIRMED: &str = concat!(
    "UPDATE warren_jobs SET unconfirmed_since = $2 WHERE id IN (
        SELECT id FROM warren_jobs WHERE unconfirmed_since < $1
        ORDER BY unconfirmed_since LIMIT $3 FOR UPDATE SKIP LOCKED)
     RETURNING ",
    columns!()
);
/// Due `scheduled` records, locked, skipping rows another gateway has locked.
pub(super) const LOCK_DUE: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM warren_jobs WHERE status = 'scheduled' AND run_at <= $1
     ORDER BY run_at LIMIT $2 FOR UPDATE SKIP LOCKED"
);
/// Claims records whose callback is due, moving the due time to the lease's end ($2), skipping
/// rows another gateway has locked.
pub(super) const CLAIM_CALLBACKS: &str = concat!(
    "UPDATE warren_jobs SET callback_due = $2,
        callback = jsonb_set(callback, '{next_attempt_at}', to_jsonb($2::timestamptz))
     WHERE id IN (
        SELECT id FROM warren_jobs WHERE callback_due <= $1
        ORDER BY callback_due LIMIT $3 FOR UPDATE SKIP LOCKED)
     RETURNING ",
    columns!()
);
/// Inserts many records; returns the ids that were new.
pub(super) const INSERT: &str = concat!(
    "INSERT INTO warren_jobs (",
    columns!(),
    ") SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int4[], $5::int4[],
        $6::int4[], $7::jsonb[], $8::jsonb[], $9::jsonb[], $10::jsonb[], $11::int8[],
        $12::text[], $13::int8[], $14::int8[], $15::timestamptz[], $16::timestamptz[],
        $17::timestamptz[], $18::timestamptz[], $19::timestamptz[], $20::timestamptz[],
        $21::timestamptz[], $22::jsonb[], $23::timestamptz[], $24::text[], $25::uuid[],
        $26::jsonb[], $27::uuid[], $28::uuid[], $29::text[], $30::jsonb[], $31::text[])
     ON CONFLICT (id) DO NOTHING RETURNING id"
);
/// The `SET … FROM unnest(…)` of the multi-row updates: every column a change can touch, from
/// the parameters [`Columns::update_params`] binds ($1 to $19).
macro_rules! update_from {
    ($extra_types:literal, $extra_names:literal) => {
        concat!(
            "UPDATE warren_jobs AS j SET status = u.status,
        attempt = u.attempt, max_attempts = u.max_attempts, progress = u.progress,
        result = u.result, error = u.error, seq = u.seq, version = u.version,
        updated_at = u.updated_at, next_attempt_at = u.next_attempt_at,
        started_at = u.started_at, finished_at = u.finished_at,
        unconfirmed_since = u.unconfirmed_since, run_at = u.run_at, callback = u.callback,
        callback_due = u.callback_due, errors = u.errors, parents = u.parents
    FROM unnest($1::uuid[], $2::text[], $3::int4[], $4::int4[], $5::jsonb[], $6::jsonb[],
        $7::jsonb[], $8::int8[], $9::int8[], $10::timestamptz[], $11::timestamptz[],
        $12::timestamptz[], $13::timestamptz[], $14::timestamptz[], $15::timestamptz[],
        $16::jsonb[], $17::timestamptz[], $18::jsonb[], $19::jsonb[]",
            $extra_types,
            ")
        AS u(id, status, attempt, max_attempts, progress, result, error, seq, version,
             updated_at, next_attempt_at, started_at, finished_at, unconfirmed_since, run_at,
             callback, callback_due, errors, parents",
            $extra_names,
            ")"
        )
    };
}

/// Writes back every column a change can touch, for many locked records. It binds only those
/// columns ([`Columns::update_params`]): the ones a change never touches (type, payload,
/// tenant, key, …) are neither sent nor parsed again (the payload's `jsonb` parse was the
/// database's largest cost per written row).
pub(super) const UPDATE: &str = concat!(update_from!("", ""), " WHERE j.id = u.id");
/// [`UPDATE`] for records changed from a copy, not a locked read: each row is written only if
/// it is still at the version the copy was taken at ($20); returns the ids written.
pub(super) const UPDATE_KNOWN: &str = concat!(
    update_from!(", $20::int8[]", ", known"),
    " WHERE j.id = u.id AND j.version = u.known RETURNING j.id"
);

fn int<T: TryInto<i64>>(value: T) -> i64 {
    value.try_into().unwrap_or(i64::MAX)
}

fn small<T: TryInto<i32>>(value: T) -> i32 {
    value.try_into().unwrap_or(i32::MAX)
}

type Stamp = Option<chrono::DateTime<chrono::Utc>>;

/// Records laid out column by column, as `unnest` wants them.
pub(super) struct Columns<'a> {
    id: Vec<Uuid>,
    job_type: Vec<&'a str>,
    status: Vec<&'static str>,
    attempt: Vec<i32>,
    max_attempts: Vec<i32>,
    attempt_budget: Vec<i32>,
    progress: Vec<Option<Json<&'a Progress>>>,
    result: Vec<Option<Json<&'a RawValue>>>,
    error: Vec<Option<Json<&'a JobError>>>,
    payload: Vec<Json<&'a RawValue>>,
    timeout_ms: Vec<i64>,
    callback_url: Vec<Option<&'a str>>,
    seq: Vec<i64>,
    version: Vec<i64>,
    created_at: Vec<chrono::DateTime<chrono::Utc>>,
    updated_at: Vec<chrono::DateTime<chrono::Utc>>,
    next_attempt_at: Vec<Stamp>,
    started_at: Vec<Stamp>,
    finished_at: Vec<Stamp>,
    unconfirmed_since: Vec<Stamp>,
    run_at: Vec<Stamp>,
    callback: Vec<Option<Json<&'a Callback>>>,
    callback_due: Vec<Stamp>,
    tenant: Vec<&'a str>,
    key_id: Vec<Option<Uuid>>,
    schedule_id: Vec<Option<Uuid>>,
    errors: Vec<Option<Json<&'a [AttemptError]>>>,
    workflow_id: Vec<Option<Uuid>>,
    step: Vec<Option<&'a str>>,
    parents: Vec<Option<Json<&'a RawValue>>>,
    priority: Vec<&'static str>,
}

impl<'a> Columns<'a> {
    /// The records' columns.
    pub(super) fn of(jobs: impl ExactSizeIterator<Item = &'a Job>) -> Self {
        let n = jobs.len();
        let mut columns = Self {
            id: Vec::with_capacity(n),
            job_type: Vec::with_capacity(n),
            status: Vec::with_capacity(n),
            attempt: Vec::with_capacity(n),
            max_attempts: Vec::with_capacity(n),
            attempt_budget: Vec::with_capacity(n),
            progress: Vec::with_capacity(n),
            result: Vec::with_capacity(n),
            error: Vec::with_capacity(n),
            payload: Vec::with_capacity(n),
            timeout_ms: Vec::with_capacity(n),
            callback_url: Vec::with_capacity(n),
            seq: Vec::with_capacity(n),
            version: Vec::with_capacity(n),
            created_at: Vec::with_capacity(n),
            updated_at: Vec::with_capacity(n),
            next_attempt_at: Vec::with_capacity(n),
            started_at: Vec::with_capacity(n),
            finished_at: Vec::with_capacity(n),
            unconfirmed_since: Vec::with_capacity(n),
            run_at: Vec::with_capacity(n),
            callback: Vec::with_capacity(n),
            callback_due: Vec::with_capacity(n),
            tenant: Vec::with_capacity(n),
            key_id: Vec::with_capacity(n),
            schedule_id: Vec::with_capacity(n),
            errors: Vec::with_capacity(n),
            workflow_id: Vec::with_capacity(n),
            step: Vec::with_capacity(n),
            parents: Vec::with_capacity(n),
            priority: Vec::with_capacity(n),
        };
        for job in jobs {
            columns.id.push(job.id.as_uuid());
            columns.job_type.push(job.job_type.as_str());
            columns.status.push(job.status.as_str());
            columns.attempt.push(small(job.attempt));
            columns.max_attempts.push(small(job.max_attempts));
            columns.attempt_budget.push(small(job.attempt_budget));
            columns.progress.push(job.progress.as_deref().map(Json));
            columns
                .result
                .push(job.result.as_ref().map(|r| Json(r.as_raw())));
            columns.error.push(job.error.as_deref().map(Json));
            columns.payload.push(Json(job.payload.as_raw()));
            columns.timeout_ms.push(int(job.timeout_ms));
            columns.callback_url.push(job.callback_url.as_deref());
            columns.seq.push(int(job.seq));
            columns.version.push(int(job.version));
            columns.created_at.push(job.created_at);
            columns.updated_at.push(job.updated_at);
            columns.next_attempt_at.push(job.next_attempt_at);
            columns.started_at.push(job.started_at);
            columns.finished_at.push(job.finished_at);
            columns.unconfirmed_since.push(job.unconfirmed_since);
            columns.run_at.push(job.run_at);
            columns.callback.push(job.callback.as_deref().map(Json));
            columns
                .callback_due
                .push(job.callback.as_ref().and_then(|c| c.due_at()));
            columns.tenant.push(job.tenant.as_str());
            columns.key_id.push(job.key_id);
            columns.schedule_id.push(job.schedule_id);
            columns
                .errors
                .push((!job.errors.is_empty()).then_some(Json(job.errors.as_slice())));
            columns.workflow_id.push(job.workflow_id);
            columns.step.push(job.step.as_deref());
            columns
                .parents
                .push(job.parents.as_ref().map(|p| Json(p.as_raw())));
            columns.priority.push(job.priority.as_str());
        }
        columns
    }

    /// The parameters of [`UPDATE`]: the id and the columns it writes.
    pub(super) fn update_params(&self) -> [&(dyn ToSql + Sync); 19] {
        [
            &self.id,
            &self.status,
            &self.attempt,
            &self.max_attempts,
            &self.progress,
            &self.result,
            &self.error,
            &self.seq,
            &self.version,
            &self.updated_at,
            &self.next_attempt_at,
            &self.started_at,
            &self.finished_at,
            &self.unconfirmed_since,
            &self.run_at,
            &self.callback,
            &self.callback_due,
            &self.errors,
            &self.parents,
        ]
    }

    /// The parameters of [`INSERT`].
    pub(super) fn params(&self) -> [&(dyn ToSql + Sync); 31] {
        [
            &self.id,
            &self.job_type,
            &self.status,
            &self.attempt,
            &self.max_attempts,
            &self.attempt_budget,
            &self.progress,
            &self.result,
            &self.error,
            &self.payload,
            &self.timeout_ms,
            &self.callback_url,
            &self.seq,
            &self.version,
            &self.created_at,
            &self.updated_at,
            &self.next_attempt_at,
            &self.started_at,
            &self.finished_at,
            &self.unconfirmed_since,
            &self.run_at,
            &self.callback,
            &self.callback_due,
            &self.tenant,
            &self.key_id,
            &self.errors,
            &self.schedule_id,
            &self.workflow_id,
            &self.step,
            &self.parents,
            &self.priority,
        ]
    }
}

/// A row of any statement above, as a record.
pub(super) fn from_row(row: &Row) -> Result<Job, StoreError> {
    let corrupt = |column: &str| StoreError::Corrupt(format!("unreadable {column} in warren_jobs"));
    let unsigned = |column: &str| -> Result<u32, StoreError> {
        let value: i32 = row.try_get(column).map_err(|_| corrupt(column))?;
        u32::try_from(value).map_err(|_| corrupt(column))
    };
    let long = |column: &str| -> Result<u64, StoreError> {
        let value: i64 = row.try_get(column).map_err(|_| corrupt(column))?;
        u64::try_from(value).map_err(|_| corrupt(column))
    };
    let raw = |column: &str| -> Result<Option<RawJson>, StoreError> {
        let value: Option<Json<Box<RawValue>>> =
            row.try_get(column).map_err(|_| corrupt(column))?;
        Ok(value.map(|Json(raw)| RawJson::from_raw(raw)))
    };
    macro_rules! get {
        ($column:literal) => {
            row.try_get($column).map_err(|_| corrupt($column))?
        };
    }
    let progress: Option<Json<Progress>> = get!("progress");
    let error: Option<Json<JobError>> = get!("error");
    let callback: Option<Json<Callback>> = get!("callback");
    let errors: Option<Json<Vec<AttemptError>>> = get!("errors");
    let job_type: String = get!("job_type");
    let status: String = get!("status");
    let priority: String = get!("priority");
    Ok(Job {
        id: JobId::from(row.try_get::<_, Uuid>("id").map_err(|_| corrupt("id"))?),
        job_type: JobType::parse(job_type).map_err(|_| corrupt("job_type"))?,
        status: status.parse().map_err(|_| corrupt("status"))?,
        attempt: unsigned("attempt")?,
        max_attempts: unsigned("max_attempts")?,
        priority: Priority::parse(&priority).map_err(|_| corrupt("priority"))?,
        attempt_budget: unsigned("attempt_budget")?,
        progress: progress.map(|Json(p)| Box::new(p)),
        result: raw("result")?,
        error: error.map(|Json(e)| Box::new(e)),
        payload: raw("payload")?.ok_or_else(|| corrupt("payload"))?,
        timeout_ms: long("timeout_ms")?,
        callback_url: get!("callback_url"),
        seq: long("seq")?,
        version: long("version")?,
        created_at: get!("created_at"),
        updated_at: get!("updated_at"),
        next_attempt_at: get!("next_attempt_at"),
        started_at: get!("started_at"),
        finished_at: get!("finished_at"),
        unconfirmed_since: get!("unconfirmed_since"),
        run_at: get!("run_at"),
        callback: callback.map(|Json(c)| Box::new(c)),
        tenant: get!("tenant"),
        key_id: get!("key_id"),
        schedule_id: get!("schedule_id"),
        workflow_id: get!("workflow_id"),
        step: get!("step"),
        parents: raw("parents")?,
        errors: errors.map(|Json(errors)| errors).unwrap_or_default(),
    })
}
