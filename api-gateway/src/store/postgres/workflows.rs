//! The PostgreSQL store's workflows: the record with its step jobs in one transaction, and the
//! settle.
//!
//! Locks are always taken in one order, jobs before workflows: applying events locks the
//! step's job row, then bumps its workflow's `marks` (in id order, for batches); the settle
//! locks the workflow row, then only `waiting` step rows, with `SKIP LOCKED`, so it never
//! waits on a row whose holder waits on the workflow. A step it skipped leaves the workflow
//! owed a settle, which the next one (or the sweeper) finishes.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio_postgres::{Row, types::Json, types::ToSql};
use uuid::Uuid;
use warren_shared::JobId;

use super::{
    super::{
        KeyClaim, Settled, StepStatuses, StoreError, WorkflowInserted, WorkflowQuery,
        WorkflowStore, transition,
    },
    PostgresStore, caps, changes,
    rows::{self, Columns, from_row},
    saturating_i64,
};
use crate::model::{Callback, Job, RawJson, Step, Workflow, workflow::plan};

/// The columns of `warren_workflows` a record is read from.
macro_rules! workflow_columns {
    () => {
        "id, tenant, key_id, status, steps, callback_url, callback, cancel_requested, version, \
         created_at, updated_at, finished_at, marks"
    };
}

const INSERT_WORKFLOW: &str = "INSERT INTO warren_workflows (id, tenant, key_id, status, steps,
    callback_url, cancel_requested, version, created_at, updated_at)
    VALUES ($1, $2, $3, $4, $5, $6, false, 0, $7, $7)";
const SELECT_WORKFLOW: &str = concat!(
    "SELECT ",
    workflow_columns!(),
    " FROM warren_workflows WHERE id = $1"
);
const LOCK_WORKFLOW: &str = concat!(
    "SELECT ",
    workflow_columns!(),
    " FROM warren_workflows WHERE id = $1 FOR UPDATE"
);
const LIST_WORKFLOWS: &str = concat!(
    "SELECT ",
    workflow_columns!(),
    " FROM warren_workflows WHERE ($1::text IS NULL OR status = $1)
       AND ($2::uuid IS NULL OR id < $2) AND ($3::text IS NULL OR tenant = $3)
     ORDER BY id DESC LIMIT $4"
);
/// Step statuses of many workflows.
const STEP_STATUSES: &str = "SELECT id, status FROM warren_jobs WHERE workflow_id = ANY($1)";
const RESULTS: &str = "SELECT id, result FROM warren_jobs WHERE id = ANY($1)";
const SAVE_SETTLE: &str = "UPDATE warren_workflows SET status = $2, finished_at = $3,
    updated_at = $4, version = $5, settled = CASE WHEN $6 THEN $7 ELSE settled END,
    callback = $8, callback_due = $9
    WHERE id = $1";
/// Claims finished workflows whose callback is due, moving the due time to the lease's end
/// ($2), skipping rows another gateway has locked.
const CLAIM_CALLBACKS: &str = concat!(
    "UPDATE warren_workflows SET callback_due = $2,
        callback = jsonb_set(callback, '{next_attempt_at}', to_jsonb($2::timestamptz))
     WHERE id IN (
        SELECT id FROM warren_workflows WHERE callback_due <= $1
        ORDER BY callback_due LIMIT $3 FOR UPDATE SKIP LOCKED)
     RETURNING ",
    workflow_columns!()
);
const RECORD_CALLBACK: &str =
    "UPDATE warren_workflows SET callback = $2, callback_due = $3 WHERE id = $1";
const REQUEST_CANCEL: &str = concat!(
    "UPDATE warren_workflows SET cancel_requested = true, marks = marks + 1,
        marked_at = now(), version = version + 1, updated_at = now()
     WHERE id = $1 RETURNING ",
    workflow_columns!()
);
/// Workflows owed a settle for more than a moment (the settle right after a step's outcome
/// usually comes first).
const UNSETTLED: &str = "SELECT id FROM warren_workflows
    WHERE marks > settled AND marked_at < now() - interval '2 seconds'
    ORDER BY marked_at LIMIT $1";
/// Bumps `marks` of the workflows of step jobs that just finished, locking them in id order.
pub(super) const MARK: &str = "UPDATE warren_workflows SET marks = marks + 1, marked_at = now()
    WHERE id IN (SELECT id FROM warren_workflows WHERE id = ANY($1) ORDER BY id FOR UPDATE)";

/// The workflows to mark for `changed` step jobs: those of jobs that are finished.
pub(super) fn to_mark<'a>(changed: impl IntoIterator<Item = &'a Job>) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = changed
        .into_iter()
        .filter(|job| job.status.is_terminal())
        .filter_map(|job| job.workflow_id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

fn corrupt(column: &str) -> StoreError {
    StoreError::Corrupt(format!("unreadable {column} in warren_workflows"))
}

/// A `warren_workflows` row as a record, and its `marks`.
fn workflow_from_row(row: &Row) -> Result<(Workflow, i64), StoreError> {
    macro_rules! get {
        ($column:literal) => {
            row.try_get($column).map_err(|_| corrupt($column))?
        };
    }
    let status: String = get!("status");
    let steps: Json<Vec<Step>> = get!("steps");
    let callback: Option<Json<Callback>> = get!("callback");
    let version: i64 = get!("version");
    Ok((
        Workflow {
            id: get!("id"),
            tenant: get!("tenant"),
            key_id: get!("key_id"),
            status: status.parse().map_err(|_| corrupt("status"))?,
            steps: steps.0,
            callback_url: get!("callback_url"),
            callback: callback.map(|Json(c)| c),
            cancel_requested: get!("cancel_requested"),
            version: u64::try_from(version).map_err(|_| corrupt("version"))?,
            created_at: get!("created_at"),
            updated_at: get!("updated_at"),
            finished_at: get!("finished_at"),
        },
        get!("marks"),
    ))
}

/// The statuses of every step of workflows `ids`.
async fn statuses_of(
    client: &impl deadpool_postgres::GenericClient,
    ids: &[Uuid],
) -> Result<StepStatuses, StoreError> {
    let statement = client.prepare_cached(STEP_STATUSES).await?;
    let rows = client.query(&statement, &[&ids]).await?;
    let mut statuses = StepStatuses::with_capacity(rows.len());
    for row in &rows {
        let id: Uuid = row.try_get(0).map_err(|_| corrupt("step id"))?;
        let status: String = row.try_get(1).map_err(|_| corrupt("step status"))?;
        statuses.insert(
            id.into(),
            status.parse().map_err(|_| corrupt("step status"))?,
        );
    }
    Ok(statuses)
}

/// Splits `statuses` (every step of `workflows`) by workflow.
fn split(workflows: &[Workflow], mut all: StepStatuses) -> Vec<StepStatuses> {
    workflows
        .iter()
        .map(|workflow| {
            workflow
                .steps
                .iter()
                .filter_map(|step| all.remove_entry(&step.job_id))
                .collect()
        })
        .collect()
}

#[async_trait]
impl WorkflowStore for PostgresStore {
    async fn insert_workflow(
        &self,
        workflow: &Workflow,
        jobs: Vec<Job>,
        key: Option<KeyClaim>,
        max_in_flight: Option<u32>,
    ) -> Result<WorkflowInserted, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        if let Some(claim) = &key
            && let Some(row) = tx.query_opt(caps::SELECT_CLAIM, &[&claim.key]).await?
        {
            let (hash, earlier): (String, Uuid) = (row.get(0), row.get(1));
            return Ok(if hash == claim.request_hash {
                WorkflowInserted::Replay(earlier)
            } else {
                WorkflowInserted::KeyMismatch
            });
        }
        if let (Some(max), Some(key_id)) = (max_in_flight, workflow.key_id) {
            let in_flight = caps::lock_and_count(&tx, key_id).await?;
            if in_flight + saturating_i64(jobs.len()) > i64::from(max) {
                return Ok(WorkflowInserted::AtCapacity);
            }
        }
        if let Some(claim) = &key {
            let params: [&(dyn ToSql + Sync); 3] = [&claim.key, &claim.request_hash, &workflow.id];
            if tx.execute(caps::INSERT_CLAIM, &params).await? == 0 {
                return Err(StoreError::unavailable(
                    "the idempotency key was claimed by another request meanwhile; try again",
                ));
            }
        }
        let status = workflow.status.as_str();
        let steps = Json(&workflow.steps);
        let params: [&(dyn ToSql + Sync); 7] = [
            &workflow.id,
            &workflow.tenant,
            &workflow.key_id,
            &status,
            &steps,
            &workflow.callback_url,
            &workflow.created_at,
        ];
        tx.execute(INSERT_WORKFLOW, &params).await?;
        let insert = tx.prepare_cached(rows::insert_for(jobs.len())).await?;
        let columns = Columns::of(jobs.iter());
        let inserted = tx.query(&insert, &columns.params()).await?;
        if inserted.len() != jobs.len() {
            return Err(StoreError::Conflict(std::sync::Arc::new(
                std::io::Error::other("a step's job id is already taken"),
            )));
        }
        tx.commit().await?;
        Ok(WorkflowInserted::New)
    }

    async fn get_workflow(&self, id: Uuid) -> Result<Option<(Workflow, StepStatuses)>, StoreError> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(SELECT_WORKFLOW).await?;
        let Some(row) = client.query_opt(&statement, &[&id]).await? else {
            return Ok(None);
        };
        let (workflow, _) = workflow_from_row(&row)?;
        let statuses = statuses_of(&client, &[id]).await?;
        Ok(Some((workflow, statuses)))
    }

    async fn list_workflows(
        &self,
        query: &WorkflowQuery,
    ) -> Result<Vec<(Workflow, StepStatuses)>, StoreError> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(LIST_WORKFLOWS).await?;
        let status = query.status.map(|s| s.as_str());
        let limit = saturating_i64(query.limit);
        let params: [&(dyn ToSql + Sync); 4] =
            [&status, &query.before, &query.tenant.as_deref(), &limit];
        let workflows: Vec<Workflow> = client
            .query(&statement, &params)
            .await?
            .iter()
            .map(|row| workflow_from_row(row).map(|(w, _)| w))
            .collect::<Result<_, _>>()?;
        let ids: Vec<Uuid> = workflows.iter().map(|w| w.id).collect();
        let all = statuses_of(&client, &ids).await?;
        let split = split(&workflows, all);
        Ok(workflows.into_iter().zip(split).collect())
    }

    async fn settle_workflow(&self, id: Uuid) -> Result<Option<Settled>, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let lock = tx.prepare_cached(LOCK_WORKFLOW).await?;
        let Some(row) = tx.query_opt(&lock, &[&id]).await? else {
            return Ok(None);
        };
        let (mut workflow, marks) = workflow_from_row(&row)?;
        let statuses = statuses_of(&tx, &[id]).await?;
        let plan = plan(&workflow, &workflow.step_statuses(&statuses));
        let targets: Vec<Uuid> = plan
            .release
            .iter()
            .chain(&plan.cancel)
            .filter_map(|&i| workflow.steps.get(i))
            .map(|step| step.job_id.as_uuid())
            .collect();
        let mut steps: HashMap<JobId, Job> = HashMap::new();
        let mut results: HashMap<JobId, Option<RawJson>> = HashMap::new();
        if !targets.is_empty() {
            let lock_waiting = tx.prepare_cached(rows::LOCK_WAITING).await?;
            for row in tx.query(&lock_waiting, &[&targets]).await? {
                let job = from_row(&row)?;
                steps.insert(job.id, job);
            }
            let parents = parents_of(&workflow, &plan.release);
            if !parents.is_empty() {
                let select = tx.prepare_cached(RESULTS).await?;
                for row in tx.query(&select, &[&parents]).await? {
                    let id: Uuid = row.try_get(0).map_err(|_| corrupt("result id"))?;
                    let result: Option<Json<Box<serde_json::value::RawValue>>> =
                        row.try_get(1).map_err(|_| corrupt("result"))?;
                    results.insert(id.into(), result.map(|Json(raw)| RawJson::from_raw(raw)));
                }
            }
        }
        let now = Utc::now();
        let outcome = transition::settle(&mut workflow, &plan, &mut steps, &results, now);
        let changed: Vec<&Job> = outcome
            .released
            .iter()
            .chain(&outcome.cancelled)
            .filter_map(|id| steps.get(id))
            .collect();
        if !changed.is_empty() {
            let update = tx.prepare_cached(rows::update_for(changed.len())).await?;
            tx.execute(
                &update,
                &Columns::of(changed.iter().copied()).update_params(),
            )
            .await?;
        }
        let version = saturating_i64(workflow.version);
        let status = workflow.status.as_str();
        let callback = workflow.callback.as_ref().map(Json);
        let callback_due = workflow.callback.as_ref().and_then(Callback::due_at);
        let params: [&(dyn ToSql + Sync); 9] = [
            &id,
            &status,
            &workflow.finished_at,
            &workflow.updated_at,
            &version,
            &outcome.complete,
            &marks,
            &callback,
            &callback_due,
        ];
        let save = tx.prepare_cached(SAVE_SETTLE).await?;
        tx.execute(&save, &params).await?;
        let mut announced: Vec<JobId> = changed.iter().map(|job| job.id).collect();
        announced.push(JobId::from(id));
        changes::notify(&tx, &self.channel, &self.origin, &announced).await?;
        tx.commit().await?;
        let take = |ids: &[JobId], steps: &mut HashMap<JobId, Job>| -> Vec<Job> {
            ids.iter().filter_map(|id| steps.remove(id)).collect()
        };
        let released = take(&outcome.released, &mut steps);
        let cancelled = take(&outcome.cancelled, &mut steps);
        Ok(Some(Settled {
            workflow,
            released,
            cancelled,
            finished: outcome.finished,
        }))
    }

    async fn request_workflow_cancel(&self, id: Uuid) -> Result<Option<Workflow>, StoreError> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(REQUEST_CANCEL).await?;
        let row = client.query_opt(&statement, &[&id]).await?;
        row.map(|row| workflow_from_row(&row).map(|(w, _)| w))
            .transpose()
    }

    async fn claim_workflow_callbacks(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(Workflow, StepStatuses)>, StoreError> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(CLAIM_CALLBACKS).await?;
        let workflows: Vec<Workflow> = client
            .query(&statement, &[&now, &lease_until, &saturating_i64(limit)])
            .await?
            .iter()
            .map(|row| workflow_from_row(row).map(|(w, _)| w))
            .collect::<Result<_, _>>()?;
        if workflows.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Uuid> = workflows.iter().map(|w| w.id).collect();
        let all = statuses_of(&client, &ids).await?;
        let split = split(&workflows, all);
        Ok(workflows.into_iter().zip(split).collect())
    }

    async fn record_workflow_callback(
        &self,
        id: Uuid,
        callback: &Callback,
    ) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(RECORD_CALLBACK).await?;
        let params: [&(dyn ToSql + Sync); 3] = [&id, &Json(callback), &callback.due_at()];
        client.execute(&statement, &params).await?;
        Ok(())
    }

    async fn unsettled(&self, limit: usize) -> Result<Vec<Uuid>, StoreError> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(UNSETTLED).await?;
        let rows = client.query(&statement, &[&saturating_i64(limit)]).await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }
}

/// The job ids whose results the `release`d steps receive.
fn parents_of(workflow: &Workflow, release: &[usize]) -> Vec<Uuid> {
    let by_name: HashMap<&str, JobId> = workflow
        .steps
        .iter()
        .map(|step| (step.name.as_str(), step.job_id))
        .collect();
    let mut ids: Vec<Uuid> = release
        .iter()
        .filter_map(|&i| workflow.steps.get(i))
        .flat_map(|step| &step.depends_on)
        .filter_map(|name| by_name.get(name.as_str()).map(|id| id.as_uuid()))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}
