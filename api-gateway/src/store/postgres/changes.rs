//! Telling every gateway which jobs changed: `NOTIFY` in the transaction that changes them
//! (PostgreSQL delivers it on commit, never before), `LISTEN` on a connection of each
//! gateway's own. The broker's work per job does not grow with the number of gateways.
//!
//! The channel is named after the schema, so deployments sharing a database in different
//! schemas do not hear each other. A payload is `<origin>:<id>,<id>,…`; a gateway skips its
//! own notifications (it woke its waiters itself when it made the change).

use deadpool_postgres::GenericClient;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;
use warren_shared::JobId;

use super::super::{ChangeFeed, StoreError};

/// Sends one notification per chunk of ids.
pub(super) const NOTIFY: &str = "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p";
/// Ids per notification: a payload must stay under 8000 bytes, and an id takes 37.
const IDS_PER_NOTIFICATION: usize = 200;
/// Changes buffered for a gateway that reads them slowly.
const FEED_BUFFER: usize = 1024;

/// The payloads announcing that `ids` changed, from `origin`.
pub(super) fn payloads(origin: &str, ids: &[JobId]) -> Vec<String> {
    ids.chunks(IDS_PER_NOTIFICATION)
        .map(|chunk| {
            let ids: Vec<String> = chunk.iter().map(ToString::to_string).collect();
            format!("{origin}:{}", ids.join(","))
        })
        .collect()
}

/// Announces, inside `client`'s transaction, that `ids` changed.
pub(super) async fn notify(
    client: &impl GenericClient,
    channel: &str,
    origin: &str,
    ids: &[JobId],
) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    let statement = client.prepare_cached(NOTIFY).await?;
    client
        .execute(&statement, &[&channel, &payloads(origin, ids)])
        .await?;
    Ok(())
}

/// The ids of a payload from another gateway; `None` for our own (or an unreadable one).
fn parse(payload: &str, own_origin: &str) -> Option<Vec<JobId>> {
    let (origin, ids) = payload.split_once(':')?;
    if origin == own_origin {
        return None;
    }
    Some(ids.split(',').filter_map(|id| id.parse().ok()).collect())
}

/// Opens a connection of its own and listens on `channel`. The feed ends when that
/// connection is lost.
pub(super) async fn listen(
    config: &tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    channel: &str,
    origin: &str,
) -> Result<ChangeFeed, StoreError> {
    let (client, mut connection) = config.connect(tls).await?;
    let (sender, feed) = mpsc::channel(FEED_BUFFER);
    let own_origin = origin.to_owned();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        loop {
            let message = tokio::select! {
                () = sender.closed() => return,
                message = messages.next() => message,
            };
            match message {
                Some(Ok(AsyncMessage::Notification(note))) => {
                    if let Some(ids) = parse(note.payload(), &own_origin)
                        && sender.send(ids).await.is_err()
                    {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    tracing::warn!(%error, "lost the store's change feed connection");
                    return;
                }
                None => return,
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN \"{}\"", channel.replace('"', "\"\"")))
        .await?;
    // The client must live as long as the connection it drives.
    tokio::spawn(async move {
        let _ = driver.await;
        drop(client);
    });
    Ok(feed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_fit_a_notification_and_our_own_are_skipped() {
        let ids: Vec<JobId> = (0..450).map(|_| JobId::new()).collect();
        let payloads = payloads("a", &ids);
        assert_eq!(payloads.len(), 3);
        assert!(payloads.iter().all(|p| p.len() < 8000));
        let heard: Vec<JobId> = payloads
            .iter()
            .flat_map(|p| parse(p, "b").unwrap_or_default())
            .collect();
        assert_eq!(heard, ids);
        assert!(parse(&payloads[0], "a").is_none());
    }
}
