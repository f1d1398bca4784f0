//! The built-in handlers of the `worker` binary: `echo`, `sleep`, `report.generate` and
//! `user.get`. They double as examples of writing handlers.

mod report;

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::{HandlerError, HandlerResult, JobContext, WorkerBuilder};

pub use report::generate_report;

/// Registers every built-in handler on `builder`.
#[must_use]
pub fn register(builder: WorkerBuilder) -> WorkerBuilder {
    builder
        .handler("echo", echo)
        .handler("sleep", sleep)
        .handler("report.generate", generate_report)
        .handler("user.get", get_user)
}

/// `echo`: answers with its payload; a workflow step with dependencies answers
/// `{"payload": …, "parents": {"<step>": <its result>, …}}`.
pub async fn echo(context: JobContext) -> HandlerResult {
    Ok(match context.parents {
        Some(parents) => json!({"payload": context.payload, "parents": parents}),
        None => context.payload,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SleepPayload {
    ms: u64,
}

/// `sleep` (`{"ms": N}`): waits N milliseconds, stopping early if asked to.
pub async fn sleep(context: JobContext) -> HandlerResult {
    let SleepPayload { ms } = context.payload_as()?;
    tokio::select! {
        () = tokio::time::sleep(Duration::from_millis(ms)) => Ok(json!({"slept_ms": ms})),
        () = context.cancelled() => Err(HandlerError::permanent("cancelled", "the sleep was cancelled")),
    }
}

#[derive(Deserialize)]
struct UserQuery {
    id: Value,
}

/// The small built-in user directory `user.get` looks up.
const USERS: [(u64, &str, &str); 5] = [
    (1, "Ada Lovelace", "ada@example.com"),
    (2, "Alan Turing", "alan@example.com"),
    (3, "Grace Hopper", "grace@example.com"),
    (4, "Edsger Dijkstra", "edsger@example.com"),
    (5, "Barbara Liskov", "barbara@example.com"),
];

/// `user.get` (`{"id": N}`): the article's fast lookup. An unknown id is a normal answer, not
/// a failure: the job succeeds with `{"found": false, "id": …}` (a lookup that finds nobody
/// must not fill the dead letters).
pub async fn get_user(context: JobContext) -> HandlerResult {
    let UserQuery { id } = context.payload_as()?;
    let wanted = match &id {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    };
    USERS
        .iter()
        .find(|(user_id, _, _)| Some(*user_id) == wanted)
        .map_or_else(
            || Ok(json!({"found": false, "id": id})),
            |(user_id, name, email)| Ok(json!({"id": user_id, "name": name, "email": email})),
        )
}
