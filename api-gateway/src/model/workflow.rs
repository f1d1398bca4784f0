//! A workflow: named steps, each a job, that may depend on one another (`POST /v1/workflows`).
//!
//! - [`WorkflowSpec`] is the body; [`WorkflowSpec::validate`] checks it once (names, the
//!   dependency graph, each step as a job spec) and gives a [`ValidWorkflow`], or a
//!   [`WorkflowError`] naming the field (`steps[3].type`) or the cycle.
//! - [`Workflow`] is the stored record; each step's job record carries `workflow_id` and
//!   `step`, and its status is the step's status (a step that waits on others is `waiting`).
//! - [`plan`] is the one rule that moves a workflow on, a pure function both stores apply:
//!   given every step's status, which waiting steps to release (all dependencies succeeded),
//!   which to cancel (a dependency failed or was cancelled, transitively, or the workflow was
//!   cancelled), and the workflow's status once that is done. It looks only at state, never at
//!   which event arrived, so applying it twice changes nothing the second time: that is what
//!   makes a release happen once whoever applies it.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;
use warren_shared::{JobId, JobStatus};

use super::{Job, JobSpec, RawJson, SpecLimits, ValidJob};

/// Most steps a workflow may have.
pub const MAX_STEPS: usize = 1000;

/// The body of `POST /v1/workflows`.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[schema(as = WorkflowRequest)]
#[serde(deny_unknown_fields)]
pub struct WorkflowSpec {
    /// The steps, 1 to 1,000. Steps without `depends_on` start at once, so a list of
    /// independent steps is a batch.
    pub steps: Vec<StepSpec>,
    /// An `http(s)` URL to POST the finished workflow to, signed as a job's webhook is.
    #[serde(default)]
    #[schema(format = "uri", pattern = "^https?://", max_length = 2048)]
    pub callback_url: Option<String>,
}

/// One step of a workflow: a job spec with a name and the steps it waits for.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// The step's name, unique in the workflow: `[a-z0-9][a-z0-9_-]{0,63}`.
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,63}$", example = "fetch")]
    pub name: String,
    /// The job type, as for a job submit.
    #[serde(rename = "type")]
    #[schema(example = "echo")]
    pub job_type: String,
    /// The handler's input, as for a job submit.
    #[serde(default)]
    #[schema(value_type = serde_json::Value)]
    pub payload: Option<Box<RawValue>>,
    /// Names of steps that must succeed before this one starts; their results reach this
    /// step's handler as `parents`.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Attempts allowed, as for a job submit.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100)]
    pub max_attempts: Option<u32>,
    /// Per-attempt time limit, as for a job submit.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub timeout_ms: Option<u64>,
    /// `high`, `normal` (the default) or `low`, as for a job submit.
    #[serde(default)]
    #[schema(value_type = Option<warren_shared::Priority>)]
    pub priority: Option<String>,
}

/// Why a [`WorkflowSpec`] was refused: the field (`steps[3].type`, `steps`, `callback_url`)
/// and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct WorkflowError {
    /// The field, as a path into the body.
    pub field: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl WorkflowError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Whether `name` is a valid step name.
fn is_step_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let allowed = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-';
    matches!(bytes.first(), Some(b) if b.is_ascii_lowercase() || b.is_ascii_digit())
        && bytes.len() <= 64
        && bytes.iter().all(allowed)
}

impl WorkflowSpec {
    /// Checks the whole workflow: the number of steps, each step's name and job fields, then
    /// the dependencies (known, not repeated, no cycle). The first problem found is the error.
    pub fn validate(self, limits: &SpecLimits) -> Result<ValidWorkflow, WorkflowError> {
        if self.steps.is_empty() {
            return Err(WorkflowError::new("steps", "give at least one step"));
        }
        if self.steps.len() > MAX_STEPS {
            return Err(WorkflowError::new(
                "steps",
                format!(
                    "a workflow has at most {MAX_STEPS} steps, this one has {}",
                    self.steps.len()
                ),
            ));
        }
        let mut index: HashMap<&str, usize> = HashMap::with_capacity(self.steps.len());
        for (i, step) in self.steps.iter().enumerate() {
            if !is_step_name(&step.name) {
                return Err(WorkflowError::new(
                    format!("steps[{i}].name"),
                    format!(
                        "{:?} is not a step name: use 1 to 64 of a-z, 0-9, _ and -, starting with a letter or digit",
                        step.name
                    ),
                ));
            }
            if let Some(first) = index.insert(&step.name, i) {
                return Err(WorkflowError::new(
                    format!("steps[{i}].name"),
                    format!("duplicate step name {:?} (also steps[{first}])", step.name),
                ));
            }
        }
        let mut deps: Vec<Vec<usize>> = Vec::with_capacity(self.steps.len());
        for (i, step) in self.steps.iter().enumerate() {
            let mut seen = HashSet::new();
            let mut mine = Vec::with_capacity(step.depends_on.len());
            for name in &step.depends_on {
                let field = format!("steps[{i}].depends_on");
                let Some(&j) = index.get(name.as_str()) else {
                    return Err(WorkflowError::new(
                        field,
                        format!("no step is named {name:?}"),
                    ));
                };
                if !seen.insert(j) {
                    return Err(WorkflowError::new(field, format!("names {name:?} twice")));
                }
                mine.push(j);
            }
            deps.push(mine);
        }
        if let Some(cycle) = find_cycle(&deps) {
            let mut names: Vec<String> = cycle
                .iter()
                .map(|&i| format!("{:?}", self.steps[i].name))
                .collect();
            names.push(names[0].clone());
            return Err(WorkflowError::new(
                "steps",
                format!(
                    "the dependencies form a cycle, so none of its steps could ever start: {} (each depends on the next); remove one of these dependencies",
                    names.join(" → ")
                ),
            ));
        }
        let mut steps = Vec::with_capacity(self.steps.len());
        for (i, step) in self.steps.into_iter().enumerate() {
            let spec = JobSpec {
                job_type: step.job_type,
                payload: step.payload,
                max_attempts: step.max_attempts,
                timeout_ms: step.timeout_ms,
                callback_url: None,
                run_at: None,
                delay_ms: None,
                priority: step.priority,
            };
            let job = spec
                .validate(limits)
                .map_err(|e| WorkflowError::new(format!("steps[{i}].{}", e.field), e.message))?;
            steps.push(ValidStep {
                name: step.name,
                depends_on: step.depends_on,
                job,
            });
        }
        Ok(ValidWorkflow {
            steps,
            callback_url: self.callback_url,
        })
    }

    /// The request as JSON with sorted keys and no spacing (what an `Idempotency-Key` is
    /// checked against).
    #[must_use]
    pub fn canonical(&self) -> String {
        let steps: Vec<serde_json::Value> = self
            .steps
            .iter()
            .map(|step| {
                let payload: Option<serde_json::Value> = step
                    .payload
                    .as_deref()
                    .and_then(|raw| serde_json::from_str(raw.get()).ok());
                serde_json::json!({
                    "name": step.name, "type": step.job_type, "payload": payload,
                    "depends_on": step.depends_on, "max_attempts": step.max_attempts,
                    "timeout_ms": step.timeout_ms, "priority": step.priority,
                })
            })
            .collect();
        serde_json::json!({"steps": steps, "callback_url": self.callback_url}).to_string()
    }
}

/// Kahn's algorithm over `deps` (`deps[i]` = the steps `i` depends on): the steps that can
/// be ordered, each after its dependencies, and for each step how many of its dependencies
/// could not be ordered (non-zero only for steps on a cycle or waiting on one).
fn kahn(deps: &[Vec<usize>]) -> (Vec<usize>, Vec<usize>) {
    let mut unmet: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); deps.len()];
    for (i, mine) in deps.iter().enumerate() {
        for &j in mine {
            dependents[j].push(i);
        }
    }
    let mut ready: Vec<usize> = (0..deps.len()).filter(|&i| unmet[i] == 0).collect();
    let mut order = Vec::with_capacity(deps.len());
    while let Some(j) = ready.pop() {
        order.push(j);
        for &i in &dependents[j] {
            unmet[i] -= 1;
            if unmet[i] == 0 {
                ready.push(i);
            }
        }
    }
    (order, unmet)
}

/// A cycle in the dependency graph (`deps[i]` = the steps `i` depends on), as the steps in it,
/// each depending on the next and the last on the first; `None` when there is none.
fn find_cycle(deps: &[Vec<usize>]) -> Option<Vec<usize>> {
    let (_, unmet) = kahn(deps);
    // Every step left has a dependency left: follow them until one repeats.
    let start = (0..deps.len()).find(|&i| unmet[i] > 0)?;
    let mut path = vec![start];
    let mut on_path: HashMap<usize, usize> = HashMap::from([(start, 0)]);
    let mut at = start;
    loop {
        let next = *deps[at].iter().find(|&&j| unmet[j] > 0)?;
        if let Some(&position) = on_path.get(&next) {
            return Some(path.split_off(position));
        }
        on_path.insert(next, path.len());
        path.push(next);
        at = next;
    }
}

/// A step that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidStep {
    /// Its name.
    pub name: String,
    /// The steps it waits for.
    pub depends_on: Vec<String>,
    /// Its job.
    pub job: ValidJob,
}

/// A workflow spec that passed [`WorkflowSpec::validate`].
#[derive(Debug, Clone, PartialEq)]
pub struct ValidWorkflow {
    /// The steps, in the client's order.
    pub steps: Vec<ValidStep>,
    /// Where to POST the finished workflow (its host not yet checked).
    pub callback_url: Option<String>,
}

impl ValidWorkflow {
    /// The workflow's record and one job record per step, accepted now in `tenant` for
    /// `key_id`: steps without dependencies `queued` with their outbox mark (to publish at
    /// once), the others `waiting`.
    #[must_use]
    pub fn into_records(self, tenant: &str, key_id: Option<Uuid>) -> (Workflow, Vec<Job>) {
        let id = Uuid::now_v7();
        let now = Utc::now();
        let mut steps = Vec::with_capacity(self.steps.len());
        let mut jobs = Vec::with_capacity(self.steps.len());
        for step in self.steps {
            let mut job = step.job.into_job_of(JobId::new(), tenant, key_id);
            job.workflow_id = Some(id);
            job.step = Some(step.name.clone());
            job.created_at = now;
            job.updated_at = now;
            if !step.depends_on.is_empty() {
                job.status = JobStatus::Waiting;
                job.unconfirmed_since = None;
            }
            steps.push(Step {
                name: step.name,
                depends_on: step.depends_on,
                job_id: job.id,
            });
            jobs.push(job);
        }
        let workflow = Workflow {
            id,
            tenant: tenant.to_owned(),
            key_id,
            status: WorkflowStatus::Running,
            created_at: now,
            updated_at: now,
            finished_at: None,
            steps,
            callback_url: self.callback_url,
            callback: None,
            cancel_requested: false,
            version: 0,
        };
        (workflow, jobs)
    }
}

/// Where a workflow is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowStatus {
    /// Some step has not finished.
    Running,
    /// Every step succeeded.
    Succeeded,
    /// A step failed for good; the steps that depended on it were cancelled.
    Failed,
    /// The workflow (or one of its steps) was cancelled and nothing failed.
    Cancelled,
}

impl WorkflowStatus {
    /// The status as its JSON word.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether the workflow has ended.
    #[must_use]
    pub fn is_terminal(self) -> bool {
        self != Self::Running
    }
}

impl std::fmt::Display for WorkflowStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for WorkflowStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "running" => Ok(Self::Running),
            "succeeded" => Ok(Self::Succeeded),
            "failed" => Ok(Self::Failed),
            "cancelled" => Ok(Self::Cancelled),
            other => Err(format!(
                "unknown workflow status {other:?}: expected running, succeeded, failed or cancelled"
            )),
        }
    }
}

/// One step as the workflow's record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Its name.
    pub name: String,
    /// The steps it waits for.
    pub depends_on: Vec<String>,
    /// Its job.
    pub job_id: JobId,
}

/// A workflow's record.
#[derive(Debug, Clone, PartialEq)]
pub struct Workflow {
    /// Its id (UUIDv7).
    pub id: Uuid,
    /// The tenant it (and every step's job) belongs to.
    pub tenant: String,
    /// The API key that submitted it.
    pub key_id: Option<Uuid>,
    /// Where it is, as of the last [`plan`] applied.
    pub status: WorkflowStatus,
    /// When it was accepted.
    pub created_at: DateTime<Utc>,
    /// When the record last changed.
    pub updated_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// The steps, in the client's order.
    pub steps: Vec<Step>,
    /// Where to POST it once it has ended.
    pub callback_url: Option<String>,
    /// The delivery to `callback_url`, armed when it ends.
    pub callback: Option<super::Callback>,
    /// Whether a client asked to cancel it (no step is released after that).
    pub cancel_requested: bool,
    /// How many changes the record has had.
    pub version: u64,
}

impl Workflow {
    /// The job ids of its steps, in step order.
    #[must_use]
    pub fn job_ids(&self) -> Vec<JobId> {
        self.steps.iter().map(|step| step.job_id).collect()
    }

    /// What step `i` receives as `parents`: each dependency's result (from `results`; `null`
    /// when it has none), by step name.
    #[must_use]
    pub fn parents(&self, i: usize, results: &HashMap<JobId, Option<RawJson>>) -> RawJson {
        let index: HashMap<&str, &Step> = self
            .steps
            .iter()
            .map(|step| (step.name.as_str(), step))
            .collect();
        let mut text = String::from("{");
        let depends_on = self
            .steps
            .get(i)
            .map_or(&[][..], |s| s.depends_on.as_slice());
        for (n, name) in depends_on.iter().enumerate() {
            if n > 0 {
                text.push(',');
            }
            // Step names are plain ASCII (validated), but quote them as JSON anyway.
            text.push_str(&serde_json::Value::from(name.as_str()).to_string());
            text.push(':');
            let result = index
                .get(name.as_str())
                .and_then(|step| results.get(&step.job_id))
                .and_then(Option::as_ref);
            text.push_str(result.map_or("null", |raw| raw.as_raw().get()));
        }
        text.push('}');
        // Built from valid JSON texts, so it parses; were it not to, the step gets `null`.
        serde_json::value::RawValue::from_string(text).map_or_else(
            |_| RawJson::from_value(&serde_json::Value::Null),
            RawJson::from_raw,
        )
    }

    /// Each step's status, in step order, from `statuses` (by job id; a step whose job is
    /// missing counts as `cancelled`).
    #[must_use]
    pub fn step_statuses(&self, statuses: &HashMap<JobId, JobStatus>) -> Vec<JobStatus> {
        self.steps
            .iter()
            .map(|step| {
                statuses
                    .get(&step.job_id)
                    .copied()
                    .unwrap_or(JobStatus::Cancelled)
            })
            .collect()
    }

    /// The resource, with each step's status from `statuses` (as [`Workflow::step_statuses`]).
    #[must_use]
    pub fn view(&self, statuses: &HashMap<JobId, JobStatus>) -> WorkflowView {
        WorkflowView {
            id: self.id,
            status: self.status,
            created_at: self.created_at,
            finished_at: self.finished_at,
            steps: self
                .steps
                .iter()
                .zip(self.step_statuses(statuses))
                .map(|(step, status)| StepView {
                    name: step.name.clone(),
                    depends_on: step.depends_on.clone(),
                    status,
                    job_id: step.job_id,
                })
                .collect(),
        }
    }
}

/// A workflow as `GET /v1/workflows/{id}` answers it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct WorkflowView {
    /// Its id.
    pub id: Uuid,
    /// `running` until every step has finished; then `succeeded`, `failed` (a step failed for
    /// good) or `cancelled`.
    pub status: WorkflowStatus,
    /// When it was accepted.
    pub created_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Every step, in the order submitted.
    pub steps: Vec<StepView>,
}

/// One step of a [`WorkflowView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct StepView {
    /// Its name.
    pub name: String,
    /// The steps it waits for.
    pub depends_on: Vec<String>,
    /// Its job's status (`waiting` until its dependencies have succeeded).
    pub status: JobStatus,
    /// Its job (`GET /v1/jobs/{job_id}`).
    #[schema(value_type = String, format = Uuid)]
    pub job_id: JobId,
}

/// What [`plan`] decided for a workflow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Waiting steps whose dependencies have all succeeded: publish them now.
    pub release: Vec<usize>,
    /// Waiting steps that can never run: cancel them.
    pub cancel: Vec<usize>,
    /// The workflow's status once the releases and cancels are applied.
    pub status: WorkflowStatus,
}

/// The rule that moves a workflow on, from every step's status (`statuses[i]` is step `i`'s):
/// see the module docs.
#[must_use]
pub fn plan(workflow: &Workflow, statuses: &[JobStatus]) -> Plan {
    let index: HashMap<&str, usize> = workflow
        .steps
        .iter()
        .enumerate()
        .map(|(i, step)| (step.name.as_str(), i))
        .collect();
    let mut after: Vec<JobStatus> = statuses.to_vec();
    let mut release = Vec::new();
    let mut cancel = Vec::new();
    for i in topological_order(workflow, &index) {
        if after[i] != JobStatus::Waiting {
            continue;
        }
        let deps = workflow.steps[i]
            .depends_on
            .iter()
            .filter_map(|name| index.get(name.as_str()).map(|&j| after[j]));
        let mut all_succeeded = true;
        let mut doomed = workflow.cancel_requested;
        for status in deps {
            all_succeeded &= status == JobStatus::Succeeded;
            doomed |= matches!(status, JobStatus::Failed | JobStatus::Cancelled);
        }
        if doomed {
            after[i] = JobStatus::Cancelled;
            cancel.push(i);
        } else if all_succeeded {
            after[i] = JobStatus::Queued;
            release.push(i);
        }
    }
    let status = if after.iter().any(|status| !status.is_terminal()) {
        WorkflowStatus::Running
    } else if after.contains(&JobStatus::Failed) {
        WorkflowStatus::Failed
    } else if after.contains(&JobStatus::Cancelled) {
        WorkflowStatus::Cancelled
    } else {
        WorkflowStatus::Succeeded
    };
    Plan {
        release,
        cancel,
        status,
    }
}

/// The steps, each after every step it depends on (validation refused cycles; a step on one
/// anyway, from a hand-edited record, is left out and so never released).
fn topological_order(workflow: &Workflow, index: &HashMap<&str, usize>) -> Vec<usize> {
    let deps: Vec<Vec<usize>> = workflow
        .steps
        .iter()
        .map(|step| {
            step.depends_on
                .iter()
                .filter_map(|name| index.get(name.as_str()).copied())
                .collect()
        })
        .collect();
    kahn(&deps).0
}

#[cfg(test)]
mod tests;
