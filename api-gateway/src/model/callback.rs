//! A job's webhook delivery as records: where its [`Callback`] is, and each attempt to deliver
//! it ([`Delivery`]). How attempts are planned and sent is the webhooks service's.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Where a job's callback is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CallbackState {
    /// Not delivered yet: an attempt is due at `next_attempt_at`.
    Pending,
    /// A receiver answered 2xx.
    Delivered,
    /// Out of attempts, or the receiver answered `410 Gone`.
    GivenUp,
}

impl CallbackState {
    /// The state as its JSON word.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::GivenUp => "given_up",
        }
    }
}

impl std::str::FromStr for CallbackState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(Self::Pending),
            "delivered" => Ok(Self::Delivered),
            "given_up" => Ok(Self::GivenUp),
            other => Err(format!("unknown callback state {other:?}")),
        }
    }
}

/// A finished job's callback: one delivery of the job resource, attempted until it lands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Callback {
    /// Where the delivery is.
    pub state: CallbackState,
    /// The `webhook-id` header: the same on every attempt of this delivery, so a receiver can
    /// drop duplicates (a re-driven job that finishes again gets a new one).
    #[schema(example = "msg_0193a8c2f0d87c3e9a1b2c3d4e5f6a7b")]
    pub webhook_id: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due, while `pending`.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The W3C `traceparent` of the job's outcome: deliveries join the job's trace, and
    /// receivers get a child of it in their `traceparent` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")]
    pub traceparent: Option<String>,
}

impl Callback {
    /// A new delivery for a job that finished at `at`, due at once.
    #[must_use]
    pub fn due_now(at: DateTime<Utc>) -> Self {
        Self {
            state: CallbackState::Pending,
            webhook_id: format!("msg_{}", Uuid::now_v7().simple()),
            attempts: 0,
            next_attempt_at: Some(at),
            traceparent: None,
        }
    }

    /// When an attempt is due, if one is.
    #[must_use]
    pub fn due_at(&self) -> Option<DateTime<Utc>> {
        self.next_attempt_at
            .filter(|_| self.state == CallbackState::Pending)
    }
}

/// One attempt to deliver a callback, as `GET /v1/jobs/{id}/deliveries` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Delivery {
    /// The delivery's `webhook-id`.
    pub webhook_id: String,
    /// Which attempt of that delivery, from 1.
    pub attempt: u32,
    /// When the request was sent.
    pub at: DateTime<Utc>,
    /// How long until the answer (or the failure), in milliseconds.
    pub duration_ms: u64,
    /// The receiver's HTTP status, if it answered.
    pub status_code: Option<u16>,
    /// Why there was no acceptable answer: a timeout, a refused connection, a refused address.
    pub error: Option<String>,
    /// The callback's state after this attempt.
    pub callback_state: CallbackState,
    /// When the next attempt is due, if there is one.
    pub next_attempt_at: Option<DateTime<Utc>>,
}
