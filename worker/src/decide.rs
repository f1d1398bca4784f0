//! What an attempt's outcome leads to, as one pure function ([`decide`]) tested rule by rule;
//! [`crate::settle`] carries the decision out on the broker.
//!
//! - succeeded → report `succeeded`;
//! - cancelled → report `cancelled`;
//! - failed, retryable, attempts left → retry as the next attempt;
//! - failed otherwise (permanent, or the last attempt) → dead-letter and report `failed`;
//!   a `poison` job is dead-lettered as such.

use serde_json::Value;
use warren_shared::{ErrorKind, JobError};

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    /// The handler returned this result.
    Succeeded(Value),
    /// The attempt failed; `retryable` says whether another attempt could succeed.
    Failed { error: JobError, retryable: bool },
    /// A cancel request stopped (or skipped) the attempt.
    Cancelled,
}

/// Why a job goes to the dead letters (the `reason` label of the metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeadReason {
    /// Out of attempts, or a permanent error.
    Failed,
    /// Its handler kept killing workers.
    Poison,
}

impl DeadReason {
    /// The metric label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Failed => "failed",
            Self::Poison => "poison",
        }
    }
}

/// What to do with a delivery once its attempt is over.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Settlement {
    /// Report `succeeded` with the result, then ack.
    Succeed(Value),
    /// Report `cancelled` with this error, then ack.
    Cancel(JobError),
    /// Publish the job as its next attempt to the retry tier, report `retrying`, then ack.
    Retry(JobError),
    /// Store a copy in the dead letters with `reason`, report `failed`, then ack.
    GiveUp {
        error: JobError,
        reason: String,
        dead: DeadReason,
    },
}

/// The settlement of attempt `attempt` of `max_attempts` that ended with `outcome`.
pub(crate) fn decide(outcome: Outcome, attempt: u32, max_attempts: u32) -> Settlement {
    match outcome {
        Outcome::Succeeded(result) => Settlement::Succeed(result),
        Outcome::Cancelled => Settlement::Cancel(JobError::new(
            ErrorKind::Cancelled,
            "cancelled at the client's request",
        )),
        Outcome::Failed { error, retryable } if retryable && attempt < max_attempts => {
            Settlement::Retry(error)
        }
        Outcome::Failed { error, .. } => Settlement::GiveUp {
            reason: format!(
                "failed on attempt {attempt} of {max_attempts}: {}: {}",
                error.kind, error.message
            ),
            dead: if error.kind == ErrorKind::Poison {
                DeadReason::Poison
            } else {
                DeadReason::Failed
            },
            error,
        },
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn failed(kind: &str, retryable: bool) -> Outcome {
        Outcome::Failed {
            error: JobError::new(kind, "boom"),
            retryable,
        }
    }

    #[test]
    fn success_is_reported_with_its_result() {
        let settled = decide(Outcome::Succeeded(json!({"n": 1})), 1, 3);
        assert_eq!(settled, Settlement::Succeed(json!({"n": 1})));
    }

    #[test]
    fn a_cancel_is_reported_as_cancelled() {
        let Settlement::Cancel(error) = decide(Outcome::Cancelled, 2, 3) else {
            panic!("a cancelled attempt must be reported as cancelled");
        };
        assert_eq!(error.kind, ErrorKind::Cancelled);
    }

    #[test]
    fn a_retryable_failure_with_attempts_left_is_retried() {
        for attempt in [1, 2] {
            let settled = decide(failed("timeout", true), attempt, 3);
            assert!(matches!(settled, Settlement::Retry(e) if e.kind == ErrorKind::Timeout));
        }
    }

    #[test]
    fn the_last_attempt_gives_up_even_when_retryable() {
        let settled = decide(failed("timeout", true), 3, 3);
        let Settlement::GiveUp { reason, dead, .. } = settled else {
            panic!("the last attempt must give up");
        };
        assert_eq!(dead, DeadReason::Failed);
        assert_eq!(reason, "failed on attempt 3 of 3: timeout: boom");
    }

    #[test]
    fn a_permanent_failure_gives_up_at_once() {
        let settled = decide(failed("invalid_payload", false), 1, 5);
        assert!(matches!(
            settled,
            Settlement::GiveUp {
                dead: DeadReason::Failed,
                ..
            }
        ));
    }

    #[test]
    fn poison_is_dead_lettered_as_poison() {
        let settled = decide(failed("poison", false), 1, 3);
        assert!(matches!(
            settled,
            Settlement::GiveUp {
                dead: DeadReason::Poison,
                ..
            }
        ));
    }

    #[test]
    fn a_single_attempt_job_never_retries() {
        assert!(matches!(
            decide(failed("panic", true), 1, 1),
            Settlement::GiveUp { .. }
        ));
    }
}
