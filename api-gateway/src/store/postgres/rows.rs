//! Between [`Job`] records and `warren_jobs` rows: the static SQL (prepared once per
//! connection), reading a row back, and the one column-wise parameter list that both the
//! multi-row insert and the multi-row update bind (`unnest` of one array per column).

use std::sync::LazyLock;

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
/// Locks records by id, in id order, without reading them (before a multi-row update).
pub(super) const LOCK_IDS: &str =
    "SELECT id FROM warren_jobs WHERE id = ANY($1) ORDER BY id FOR UPDATE";
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
/// Every column with its type, in the order of [`columns!`] and of [`Columns::params`]: the
/// write statements below are made from it.
const COLUMNS: [(&str, &str); 31] = [
    ("id", "uuid"),
    ("job_type", "text"),
    ("status", "text"),
    ("attempt", "int4"),
    ("max_attempts", "int4"),
    ("attempt_budget", "int4"),
    ("progress", "jsonb"),
    ("result", "jsonb"),
    ("error", "jsonb"),
    ("payload", "jsonb"),
    ("timeout_ms", "int8"),
    ("callback_url", "text"),
    ("seq", "int8"),
    ("version", "int8"),
    ("created_at", "timestamptz"),
    ("updated_at", "timestamptz"),
    ("next_attempt_at", "timestamptz"),
    ("started_at", "timestamptz"),
    ("finished_at", "timestamptz"),
    ("unconfirmed_since", "timestamptz"),
    ("run_at", "timestamptz"),
    ("callback", "jsonb"),
    ("callback_due", "timestamptz"),
    ("tenant", "text"),
    ("key_id", "uuid"),
    ("errors", "jsonb"),
    ("schedule_id", "uuid"),
    ("workflow_id", "uuid"),
    ("step", "text"),
    ("parents", "jsonb"),
    ("priority", "text"),
];

/// The columns a change can touch, in the order of [`Columns::update_params`] (after the id):
/// the ones it never touches (type, payload, tenant, key, …) are neither sent nor parsed
/// again (the payload's `jsonb` parse was the database's largest cost per written row).
const UPDATED: [&str; 18] = [
    "status",
    "attempt",
    "max_attempts",
    "progress",
    "result",
    "error",
    "seq",
    "version",
    "updated_at",
    "next_attempt_at",
    "started_at",
    "finished_at",
    "unconfirmed_since",
    "run_at",
    "callback",
    "callback_due",
    "errors",
    "parents",
];

/// The type of column `name`.
fn type_of(name: &str) -> &'static str {
    COLUMNS
        .iter()
        .find(|(column, _)| *column == name)
        .map_or("unknown", |(_, sql_type)| sql_type)
}

/// `$n::type[]` for each of `columns`, from `$first` on: one array per column.
fn arrays<'a>(columns: impl Iterator<Item = &'a str>, first: usize) -> Vec<String> {
    columns
        .enumerate()
        .map(|(i, name)| format!("${}::{}[]", first + i, type_of(name)))
        .collect()
}

/// Each of `columns` as the only element of its array parameter, from `$first` on.
fn firsts<'a>(columns: impl Iterator<Item = &'a str>, first: usize) -> Vec<String> {
    arrays(columns, first)
        .into_iter()
        .map(|array| format!("({array})[1]"))
        .collect()
}

fn updated_names() -> impl Iterator<Item = &'static str> {
    std::iter::once("id").chain(UPDATED)
}

/// Inserts many records (one array per column); returns the ids that were new.
pub(super) static INSERT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO warren_jobs ({}) SELECT * FROM unnest({}) ON CONFLICT (id) DO NOTHING RETURNING id",
        columns!(),
        arrays(COLUMNS.iter().map(|(name, _)| *name), 1).join(", ")
    )
});
/// [`INSERT`] for a batch of one: the same parameters, without `unnest`, so PostgreSQL plans
/// it once per connection instead of on every call (a lone submit's latency).
pub(super) static INSERT_ONE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO warren_jobs ({}) VALUES ({}) ON CONFLICT (id) DO NOTHING RETURNING id",
        columns!(),
        firsts(COLUMNS.iter().map(|(name, _)| *name), 1).join(", ")
    )
});
/// Writes back every column a change can touch ([`UPDATED`]), for many locked records.
pub(super) static UPDATE: LazyLock<String> = LazyLock::new(|| update_many(false));
/// [`UPDATE`] for records changed from a copy, not a locked read: each row is written only if
/// it is still at the version the copy was taken at ($20); returns the ids written.
pub(super) static UPDATE_KNOWN: LazyLock<String> = LazyLock::new(|| update_many(true));
/// [`UPDATE`] for one record, planned once per connection (as [`INSERT_ONE`]).
pub(super) static UPDATE_ONE: LazyLock<String> = LazyLock::new(|| update_one(""));
/// [`UPDATE_KNOWN`] for one record.
pub(super) static UPDATE_KNOWN_ONE: LazyLock<String> =
    LazyLock::new(|| update_one(" AND version = ($20::int8[])[1] RETURNING id"));

/// The multi-row update; with `known`, only of rows still at the versions in $20.
fn update_many(known: bool) -> String {
    let set: Vec<String> = UPDATED.iter().map(|c| format!("{c} = u.{c}")).collect();
    let mut sources = arrays(updated_names(), 1);
    let mut names: Vec<&str> = updated_names().collect();
    let mut condition = "";
    if known {
        sources.push("$20::int8[]".to_owned());
        names.push("known");
        condition = " AND j.version = u.known RETURNING j.id";
    }
    format!(
        "UPDATE warren_jobs AS j SET {} FROM unnest({}) AS u({}) WHERE j.id = u.id{condition}",
        set.join(", "),
        sources.join(", "),
        names.join(", ")
    )
}

fn update_one(condition: &str) -> String {
    let values = firsts(updated_names(), 1);
    let set: Vec<String> = UPDATED
        .iter()
        .zip(&values[1..])
        .map(|(c, value)| format!("{c} = {value}"))
        .collect();
    format!(
        "UPDATE warren_jobs SET {} WHERE id = {}{condition}",
        set.join(", "),
        values[0]
    )
}

/// The insert for `rows` records.
pub(super) fn insert_for(rows: usize) -> &'static str {
    if rows == 1 { &INSERT_ONE } else { &INSERT }
}

/// The update of `rows` locked records.
pub(super) fn update_for(rows: usize) -> &'static str {
    if rows == 1 { &UPDATE_ONE } else { &UPDATE }
}

/// The update of `rows` records from copies.
pub(super) fn update_known_for(rows: usize) -> &'static str {
    if rows == 1 {
        &UPDATE_KNOWN_ONE
    } else {
        &UPDATE_KNOWN
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_write_statements_name_every_column_in_order() {
        let names: Vec<&str> = COLUMNS.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            names.join(", "),
            columns!().split_whitespace().collect::<Vec<_>>().join(" ")
        );
        assert!(UPDATED.iter().all(|name| type_of(name) != "unknown"));
        assert!(INSERT_ONE.contains("($31::text[])[1]) ON CONFLICT"));
        assert!(UPDATE.ends_with("WHERE j.id = u.id") && !UPDATE.contains("$20"));
        assert!(UPDATE_KNOWN.contains("$20::int8[]) AS u(id, status,"));
        assert!(UPDATE_ONE.starts_with("UPDATE warren_jobs SET status = ($2::text[])[1], "));
        assert!(
            UPDATE_KNOWN_ONE.ends_with(
                "WHERE id = ($1::uuid[])[1] AND version = ($20::int8[])[1] RETURNING id"
            )
        );
    }
}
