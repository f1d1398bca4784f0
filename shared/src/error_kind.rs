//! What kind of failure ended an attempt: Warren's own kinds as variants, so code matches on
//! them instead of comparing strings, and any kind a handler names as [`ErrorKind::Other`].
//! On the wire (events, the store, the API) a kind is its string, as it always was.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A job error's kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum ErrorKind {
    /// The attempt ran longer than its `timeout_ms` (`timeout`).
    Timeout,
    /// The handler panicked (`panic`).
    Panic,
    /// The handler's task was aborted (`aborted`).
    Aborted,
    /// Handed out too many times without an outcome: its handler kills workers (`poison`).
    Poison,
    /// Cancelled at the client's request (`cancelled`).
    Cancelled,
    /// The payload does not fit the handler's input (`invalid_payload`).
    InvalidPayload,
    /// The handler's result cannot be kept faithfully (see [`crate::storable`]):
    /// `invalid_result`.
    InvalidResult,
    /// RabbitMQ had no queue for the job's type (`unroutable`).
    Unroutable,
    /// RabbitMQ did not confirm the job's publish (`publish_failed`).
    PublishFailed,
    /// A kind a handler named itself, e.g. `upstream_unavailable`.
    Other(String),
}

/// Warren's own kinds and their strings.
const KNOWN: [(ErrorKind, &str); 9] = [
    (ErrorKind::Timeout, "timeout"),
    (ErrorKind::Panic, "panic"),
    (ErrorKind::Aborted, "aborted"),
    (ErrorKind::Poison, "poison"),
    (ErrorKind::Cancelled, "cancelled"),
    (ErrorKind::InvalidPayload, "invalid_payload"),
    (ErrorKind::InvalidResult, "invalid_result"),
    (ErrorKind::Unroutable, "unroutable"),
    (ErrorKind::PublishFailed, "publish_failed"),
];

impl ErrorKind {
    /// The kind's string, as events and the API carry it.
    #[must_use]
    pub fn as_str(&self) -> &str {
        match self {
            Self::Other(kind) => kind,
            known => KNOWN
                .iter()
                .find(|(kind, _)| kind == known)
                .map_or("", |(_, name)| name),
        }
    }
}

impl From<&str> for ErrorKind {
    fn from(value: &str) -> Self {
        KNOWN
            .iter()
            .find(|(_, name)| *name == value)
            .map_or_else(|| Self::Other(value.to_owned()), |(kind, _)| kind.clone())
    }
}

impl From<String> for ErrorKind {
    fn from(value: String) -> Self {
        Self::from(value.as_str())
    }
}

impl From<ErrorKind> for String {
    fn from(value: ErrorKind) -> Self {
        match value {
            ErrorKind::Other(kind) => kind,
            known => known.as_str().to_owned(),
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_kinds_round_trip_through_their_strings() {
        for (kind, name) in KNOWN {
            assert_eq!(kind.as_str(), name);
            assert_eq!(ErrorKind::from(name), kind);
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("{name:?}"));
            assert_eq!(serde_json::from_str::<ErrorKind>(&json).unwrap(), kind);
        }
    }

    #[test]
    fn a_handlers_own_kind_is_kept_as_written() {
        let kind = ErrorKind::from("upstream_unavailable");
        assert_eq!(kind, ErrorKind::Other("upstream_unavailable".into()));
        assert_eq!(
            serde_json::to_string(&kind).unwrap(),
            "\"upstream_unavailable\""
        );
    }
}
