//! Reading a queue without taking from it: its first messages are fetched unacknowledged on a
//! channel of their own, which is then closed, so RabbitMQ returns every one (a quorum queue
//! puts them after the others: a read changes the order, not the content; each one's
//! `x-delivery-count` goes up by one). For queues kept for people and tools to look at: the
//! dead letters, the registry of job types.

use lapin::{
    Connection,
    message::Delivery,
    options::{BasicGetOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, ShortString},
};

/// What a read found.
#[derive(Debug)]
pub struct Peeked {
    /// Messages in the queue in all.
    pub total: u32,
    /// The first of them, up to the limit asked for.
    pub deliveries: Vec<Delivery>,
}

/// Reads up to `limit` of `queue`'s first messages without taking any; `None` when the queue
/// does not exist.
pub async fn peek(
    connection: &Connection,
    queue: &str,
    limit: u32,
) -> lapin::Result<Option<Peeked>> {
    let channel = connection.create_channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    // A missing queue closes the channel.
    let Ok(declared) = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
    else {
        return Ok(None);
    };
    let total = declared.message_count();
    let mut deliveries = Vec::new();
    for _ in 0..limit.min(total) {
        let Some(message) = channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await?
        else {
            break;
        };
        deliveries.push(message.delivery);
    }
    // Unacknowledged, so closing the channel returns them all.
    let _closed = channel.close(200, "read".into()).await;
    Ok(Some(Peeked { total, deliveries }))
}

/// A text header of `delivery`, if present.
#[must_use]
pub fn text_header(delivery: &Delivery, name: &str) -> Option<String> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get(&ShortString::from(name))? {
        AMQPValue::LongString(text) => Some(text.to_string()),
        AMQPValue::ShortString(text) => Some(text.to_string()),
        _ => None,
    }
}
