//! What a handler sees and returns.
//!
//! A handler is an async function `JobContext -> Result<Value, HandlerError>`. It reads its
//! input from the context, may report progress, should stop promptly when
//! [`JobContext::cancelled`] fires, and says with its error whether another attempt could help.

use std::{collections::HashMap, future::Future, pin::Pin, sync::Arc};

use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use warren_shared::{ErrorKind, JobId, JobType, Progress};

use crate::events::Reporter;

/// A handler's output: the job's result, or why the attempt failed.
pub type HandlerResult = Result<Value, HandlerError>;

/// A boxed handler future, as the registry stores it.
pub type HandlerFuture = Pin<Box<dyn Future<Output = HandlerResult> + Send + 'static>>;

/// A registered handler.
pub type Handler = Arc<dyn Fn(JobContext) -> HandlerFuture + Send + Sync>;

/// The handlers of one worker, by job type.
pub type Registry = HashMap<JobType, Handler>;

/// Why an attempt failed, and whether another attempt could succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct HandlerError {
    /// A short stable identifier, e.g. `invalid_payload`, `not_found`, `upstream_unavailable`.
    pub kind: ErrorKind,
    /// What went wrong, for humans.
    pub message: String,
    /// Whether trying again later could succeed.
    pub retryable: bool,
}

impl HandlerError {
    /// A failure that another attempt may fix (a timeout talking to something, say).
    pub fn retryable(kind: impl Into<ErrorKind>, message: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            message: message.into(),
            retryable: true,
        }
    }

    /// A failure no retry can fix (bad input, unknown entity).
    pub fn permanent(kind: impl Into<ErrorKind>, message: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            message: message.into(),
            retryable: false,
        }
    }
}

/// Everything a handler knows about the job it runs.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// The job's id.
    pub id: JobId,
    /// The job's type.
    pub job_type: JobType,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// Attempts allowed in all.
    pub max_attempts: u32,
    /// The client's input.
    pub payload: Value,
    /// For a workflow step with dependencies: each dependency's result, by step name (see
    /// [`JobContext::parents`]).
    pub(crate) parents: Option<Value>,
    pub(crate) reporter: Reporter,
    pub(crate) cancel: CancellationToken,
}

impl JobContext {
    /// The payload as `T`; a payload of the wrong shape is a permanent `invalid_payload` error
    /// that says what did not fit.
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T, HandlerError> {
        T::deserialize(&self.payload).map_err(|error| {
            HandlerError::permanent(
                "invalid_payload",
                format!(
                    "the payload of a {} job does not fit: {error}",
                    self.job_type
                ),
            )
        })
    }

    /// For a workflow step that depends on others: their results, as an object keyed by step
    /// name (`{"fetch": <its result>, …}`); `None` for a plain job or a step without
    /// dependencies.
    #[must_use]
    pub fn parents(&self) -> Option<&Value> {
        self.parents.as_ref()
    }

    /// Reports progress (0–100) to everyone watching the job. Best effort: a report that
    /// cannot be published is logged and dropped, the job goes on.
    pub async fn progress(&self, percent: u8, message: impl Into<String>) {
        let progress = Progress {
            percent: percent.min(100),
            message: Some(message.into()),
        };
        self.reporter.progress(progress).await;
    }

    /// Resolves when the worker wants this attempt to stop (shutdown past its grace period,
    /// a timeout, or a cancel request). Long handlers should `select!` on it.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }

    /// Whether the attempt has been asked to stop.
    #[must_use]
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}
