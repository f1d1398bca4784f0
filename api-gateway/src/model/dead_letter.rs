//! A dead letter as `GET /v1/dead-letters` shows it: a message in `<ns>.dead` (a job out of
//! attempts or failed for good, a message no worker could read, an event no gateway could
//! apply), with why it is there.

use serde::Serialize;

/// One message in the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DeadLetter {
    /// The job's id (from a job or event body, else the AMQP `message_id`).
    pub message_id: Option<String>,
    /// The job type (from a job or event body, else the AMQP `type`).
    #[serde(rename = "type")]
    pub job_type: Option<String>,
    /// Why it was dead-lettered: Warren's `x-warren-reason` (e.g. `failed on attempt 3 of 3:
    /// timeout: …`), or the broker's own (`rejected`, `expired`, `delivery_limit`).
    pub reason: Option<String>,
    /// Every attempt's error, oldest first, for a job that failed (`x-warren-errors`).
    #[schema(value_type = Option<Vec<Object>>)]
    pub errors: Option<serde_json::Value>,
    /// The message body: its JSON, or its text when it is not JSON.
    #[schema(value_type = serde_json::Value)]
    pub body: serde_json::Value,
}

/// `GET /v1/dead-letters`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DeadLetterPage {
    /// Messages in the dead-letter queue in all.
    pub total: u32,
    /// The first ones in the queue, up to the `limit` asked for.
    pub dead_letters: Vec<DeadLetter>,
}
