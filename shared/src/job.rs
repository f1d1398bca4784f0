//! The job vocabulary: ids, types, statuses, progress and errors.
//!
//! These are parsed types: a [`JobType`] can only hold a name that matches the contract's pattern
//! and a [`JobId`] is always a UUID, so code past the HTTP and AMQP edges never re-validates.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::ErrorKind;
use uuid::Uuid;

/// A job's identity: a UUIDv7, so ids sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(Uuid);

impl JobId {
    /// A fresh, time-ordered id for a job being accepted now.
    #[must_use]
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// The underlying UUID.
    #[must_use]
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl From<Uuid> for JobId {
    fn from(uuid: Uuid) -> Self {
        Self(uuid)
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for JobId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// A job type name such as `report.generate`: `[a-z0-9][a-z0-9._-]{0,99}`.
///
/// The type is the routing key on the jobs exchange and the suffix of its queue's name, so the
/// pattern keeps it safe in both places.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobType(String);

/// Why a string is not a valid [`JobType`]; the message says what the pattern is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "job type {0:?} is invalid: it must be 1 to 100 characters of lowercase letters, digits, \
     '.', '_' or '-', starting with a letter or digit"
)]
pub struct InvalidJobType(pub String);

impl JobType {
    /// The longest type name the contract allows.
    pub const MAX_LEN: usize = 100;

    /// Parses a type name, refusing anything outside the contract's pattern.
    pub fn parse(name: impl Into<String>) -> Result<Self, InvalidJobType> {
        let name = name.into();
        let mut chars = name.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let rest_ok =
            chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-_".contains(c));
        if first_ok && rest_ok && name.len() <= Self::MAX_LEN {
            Ok(Self(name))
        } else {
            Err(InvalidJobType(name))
        }
    }

    /// The name as a string slice.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for JobType {
    type Error = InvalidJobType;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<JobType> for String {
    fn from(value: JobType) -> Self {
        value.0
    }
}

impl FromStr for JobType {
    type Err = InvalidJobType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for JobType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a job is in its lifecycle.
///
/// How soon a job starts under a backlog: each level has its own queue per job type, and a
/// worker with a free slot takes from `high` before `normal` before `low` (see
/// `docs/topology.md`).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Before every `normal` and `low` job waiting.
    High,
    /// The default.
    #[default]
    Normal,
    /// After every `high` and `normal` job waiting.
    Low,
}

impl Priority {
    /// Every level, highest first: the order a worker takes from.
    pub const ALL: [Self; 3] = [Self::High, Self::Normal, Self::Low];

    /// The level's name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::High => "high",
            Self::Normal => "normal",
            Self::Low => "low",
        }
    }

    /// `normal` (for `skip_serializing_if`: messages and records leave the default out).
    #[must_use]
    pub fn is_normal(&self) -> bool {
        *self == Self::Normal
    }

    /// Reads a level's name.
    ///
    /// # Errors
    /// Anything but `high`, `normal` or `low`, with what to write instead.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "high" => Ok(Self::High),
            "normal" => Ok(Self::Normal),
            "low" => Ok(Self::Low),
            other => Err(format!(
                "{other:?} is not a priority: use high, normal or low"
            )),
        }
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `scheduled` (only for jobs due later) → `queued` → `running` → `succeeded` | `failed`, with
/// `retrying` between attempts and `cancelled` from any non-terminal state. Terminal statuses
/// are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// A workflow step whose dependencies have not all succeeded yet; not published until
    /// they have.
    Waiting,
    /// Accepted for later (`run_at`/`delay_ms`); not published until it is due.
    Scheduled,
    /// Accepted and published; no worker has started it yet.
    Queued,
    /// A worker is running an attempt.
    Running,
    /// An attempt failed and another one is scheduled.
    Retrying,
    /// The handler finished and produced a result. Terminal.
    Succeeded,
    /// The job ran out of attempts or failed for good. Terminal.
    Failed,
    /// Cancelled before it finished. Terminal.
    Cancelled,
}

impl JobStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [JobStatus; 8] = [
        Self::Waiting,
        Self::Scheduled,
        Self::Queued,
        Self::Running,
        Self::Retrying,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
    ];

    /// True for statuses a job never leaves.
    #[must_use]
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    /// Position in the lifecycle within one attempt; status never moves to a lower rank
    /// within the same attempt.
    #[must_use]
    pub fn rank(self) -> u8 {
        match self {
            Self::Waiting | Self::Scheduled => 0,
            Self::Queued => 1,
            Self::Running => 2,
            Self::Retrying => 3,
            Self::Succeeded | Self::Failed | Self::Cancelled => 4,
        }
    }

    /// The lowercase name used in JSON, routing keys and metrics.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Scheduled => "scheduled",
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Retrying => "retrying",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a string is not a [`JobStatus`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown job status {0:?}: expected one of waiting, scheduled, queued, running, retrying, succeeded, failed, cancelled"
)]
pub struct UnknownStatus(pub String);

impl FromStr for JobStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// A handler's report of how far it has got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Progress {
    /// 0 to 100.
    pub percent: u8,
    /// What the handler is doing now, for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Why a job failed: a machine-readable kind and a human message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobError {
    /// A short stable identifier such as `timeout`, `panic`, `unroutable`, or a handler's own.
    #[schema(value_type = String, example = "timeout")]
    pub kind: ErrorKind,
    /// What went wrong, for humans.
    pub message: String,
}

impl JobError {
    /// Builds an error from its kind and message.
    pub fn new(kind: impl Into<ErrorKind>, message: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_type_accepts_the_contract_pattern() {
        for ok in ["echo", "report.generate", "a", "0-x_y.z", &"a".repeat(100)] {
            assert!(JobType::parse(ok).is_ok(), "{ok} should be valid");
        }
    }

    #[test]
    fn job_type_refuses_everything_else() {
        for bad in [
            "",
            "Echo",
            ".echo",
            "-x",
            "a b",
            "a/b",
            "é",
            &"a".repeat(101),
            "a*",
        ] {
            assert!(JobType::parse(bad).is_err(), "{bad} should be invalid");
        }
    }

    #[test]
    fn status_round_trips_through_its_name() {
        for status in JobStatus::ALL {
            assert_eq!(status.as_str().parse::<JobStatus>(), Ok(status));
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{status}\""));
        }
        assert!("done".parse::<JobStatus>().is_err());
    }

    #[test]
    fn job_ids_are_v7_and_time_ordered() {
        let a = JobId::new();
        let b = JobId::new();
        assert_eq!(a.as_uuid().get_version_num(), 7);
        assert!(a < b);
    }
}
