//! Reading and writing the AMQP headers a job delivery carries: text headers (`traceparent`),
//! the broker's delivery count, and the error history `x-warren-errors`.

use chrono::Utc;
use lapin::{
    message::Delivery,
    types::{AMQPValue, FieldTable, ShortString},
};
use serde_json::{Value, json};
use warren_shared::JobError;

/// The header carrying the errors of the attempts so far (JSON array).
pub(crate) const ERRORS_HEADER: &str = "x-warren-errors";

pub(crate) use warren_shared::amqp::text_header as header_text;

/// How many times the broker handed this message out before (quorum queues count it in
/// `x-delivery-count`).
pub(crate) fn previous_deliveries(delivery: &Delivery) -> u64 {
    let Some(headers) = delivery.properties.headers().as_ref() else {
        return 0;
    };
    match headers.inner().get(&ShortString::from("x-delivery-count")) {
        Some(AMQPValue::LongLongInt(n)) => u64::try_from(*n).unwrap_or(0),
        Some(AMQPValue::LongInt(n)) => u64::try_from(*n).unwrap_or(0),
        Some(AMQPValue::LongUInt(n)) => u64::from(*n),
        Some(AMQPValue::ShortInt(n)) => u64::try_from(*n).unwrap_or(0),
        Some(AMQPValue::ShortShortInt(n)) => u64::try_from(*n).unwrap_or(0),
        _ => 0,
    }
}

/// The delivery's error history with this attempt's error appended, as message headers.
pub(crate) fn history_headers(delivery: &Delivery, attempt: u32, error: &JobError) -> FieldTable {
    let mut history: Vec<Value> = header_text(delivery, ERRORS_HEADER)
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    history.push(json!({
        "attempt": attempt, "kind": error.kind, "message": error.message, "at": Utc::now(),
    }));
    let mut headers = FieldTable::default();
    headers.insert(
        ERRORS_HEADER.into(),
        AMQPValue::LongString(Value::Array(history).to_string().as_str().into()),
    );
    headers
}
