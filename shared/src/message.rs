//! The two message bodies that cross RabbitMQ: the job (gateway → worker) and the job event
//! (worker → gateways). Both are JSON with `"v": 1`; a body with another version is refused
//! with a message that says so, so a worker never guesses at a format it does not know.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de::DeserializeOwned};
use serde_json::Value;

use crate::job::{JobError, JobId, JobStatus, JobType, Priority, Progress};

/// The schema version marker: serialises as `1`, and refuses any other number when read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct V1;

impl Serialize for V1 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u8(1)
    }
}

impl<'de> Deserialize<'de> for V1 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let version = u64::deserialize(deserializer)?;
        if version == 1 {
            Ok(V1)
        } else {
            Err(serde::de::Error::custom(format!(
                "unsupported schema version {version}: this build reads version 1"
            )))
        }
    }
}

/// A job to run, as published to the jobs exchange.
///
/// Generic over the payload so the gateway can publish a payload it keeps as raw JSON text
/// (`JobMessage<&RawValue>`) without parsing it; workers read the default, a parsed `Value`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobMessage<P = Value> {
    /// Schema version.
    pub v: V1,
    /// The job's id; also the AMQP `message_id`.
    pub id: JobId,
    /// The job's type; also the routing key and the AMQP `type` property.
    #[serde(rename = "type")]
    pub job_type: JobType,
    /// The handler's input, as the client sent it.
    #[serde(default)]
    pub payload: P,
    /// Which attempt this message is, from 1.
    pub attempt: u32,
    /// How many attempts the job may use in all.
    pub max_attempts: u32,
    /// How long one attempt may run.
    pub timeout_ms: u64,
    /// When the gateway accepted the job.
    pub created_at: DateTime<Utc>,
    /// For a workflow step with dependencies: each dependency's result, by step name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parents: Option<P>,
    /// Its priority (left out when `normal`): which of the type's queues it goes to.
    #[serde(default, skip_serializing_if = "Priority::is_normal")]
    pub priority: Priority,
}

/// Something that happened to a job, as published by a worker to the events exchange.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    /// Schema version.
    pub v: V1,
    /// The job this event is about.
    pub id: JobId,
    /// The job's type (the events routing key is `<status>.<type>`).
    #[serde(rename = "type")]
    pub job_type: JobType,
    /// The status the job has after this event.
    pub status: JobStatus,
    /// The attempt the event belongs to.
    pub attempt: u32,
    /// Order of the event within its attempt, from 1; older or repeated events are ignored.
    pub seq: u64,
    /// The handler's latest progress report, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// The handler's result, on `succeeded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Why the attempt failed, on `failed` or `retrying`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    /// When the next attempt is due, on `retrying`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Which worker process sent it.
    pub worker: String,
    /// When it happened, by the worker's clock.
    pub at: DateTime<Utc>,
    /// The trace the event came with (its AMQP `traceparent` header), set by the consumer so
    /// what the event causes (a webhook) joins the job's trace; not part of the body.
    #[serde(skip)]
    pub traceparent: Option<String>,
}

impl JobEvent {
    /// The routing key on the events exchange: `<status>.<type>`.
    #[must_use]
    pub fn routing_key(&self) -> String {
        format!("{}.{}", self.status, self.job_type)
    }
}

/// What a control message asks of the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ControlAction {
    /// Do not start the job; stop it if it is running.
    Cancel,
}

/// A request broadcast to every worker through the control exchange.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlMessage {
    /// Schema version.
    pub v: V1,
    /// What to do.
    pub action: ControlAction,
    /// The job it is about.
    pub id: JobId,
}

/// A message body that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("malformed message body: {0}")]
pub struct MalformedMessage(#[from] serde_json::Error);

/// Reads a message body, refusing bad JSON, missing fields and unknown schema versions.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, MalformedMessage> {
    Ok(serde_json::from_slice(body)?)
}

/// Writes a message body. Serialising these types cannot fail (no maps with non-string keys,
/// no failing `Serialize` impls), so this returns bytes directly.
#[must_use]
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    // serde_json only fails on non-string map keys or failing Serialize impls; the message
    // types have neither, and `Value` payloads always serialise.
    serde_json::to_vec(message).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job_json() -> Value {
        json!({
            "v": 1, "id": "0193a3f0-0000-7000-8000-000000000001", "type": "echo",
            "payload": {"hello": "world"}, "attempt": 1, "max_attempts": 3,
            "timeout_ms": 60000, "created_at": "2026-11-24T10:00:00Z"
        })
    }

    #[test]
    fn job_message_reads_the_contract_shape_and_writes_it_back() {
        let job: JobMessage = decode(job_json().to_string().as_bytes()).unwrap();
        assert_eq!(job.job_type.as_str(), "echo");
        assert_eq!(job.payload, json!({"hello": "world"}));
        let back: Value = serde_json::from_slice(&encode(&job)).unwrap();
        assert_eq!(back, job_json());
    }

    #[test]
    fn unknown_schema_version_is_refused_with_a_reason() {
        let mut body = job_json();
        body["v"] = json!(2);
        let err = decode::<JobMessage>(body.to_string().as_bytes()).unwrap_err();
        assert!(
            err.to_string().contains("unsupported schema version 2"),
            "{err}"
        );
    }

    #[test]
    fn missing_version_bad_type_and_bad_json_are_refused() {
        let mut no_version = job_json();
        no_version.as_object_mut().unwrap().remove("v");
        assert!(decode::<JobMessage>(no_version.to_string().as_bytes()).is_err());

        let mut bad_type = job_json();
        bad_type["type"] = json!("Not A Type");
        let err = decode::<JobMessage>(bad_type.to_string().as_bytes()).unwrap_err();
        assert!(err.to_string().contains("job type"), "{err}");

        assert!(decode::<JobMessage>(b"{not json").is_err());
    }

    #[test]
    fn event_omits_absent_optionals_and_routes_by_status_and_type() {
        let event = JobEvent {
            traceparent: None,
            v: V1,
            id: JobId::new(),
            job_type: JobType::parse("report.generate").unwrap(),
            status: JobStatus::Running,
            attempt: 1,
            seq: 2,
            progress: Some(Progress {
                percent: 40,
                message: Some("aggregating".into()),
            }),
            result: None,
            error: None,
            next_attempt_at: None,
            worker: "w1".into(),
            at: Utc::now(),
        };
        let json: Value = serde_json::from_slice(&encode(&event)).unwrap();
        assert_eq!(json["v"], 1);
        assert_eq!(json["status"], "running");
        assert_eq!(json["progress"]["percent"], 40);
        assert!(json.get("result").is_none() && json.get("error").is_none());
        assert_eq!(event.routing_key(), "running.report.generate");
        let back: JobEvent = decode(&encode(&event)).unwrap();
        assert_eq!(back, event);
    }
}
