//! Publishing with confirms (`warren_shared::amqp::publish_confirmed`, which the worker's
//! outcomes, retries and dead letters go through) against the real broker.

use lapin::types::FieldTable;
use warren_shared::amqp::{self, Outgoing, PublishError};

use crate::helpers::{Broker, DEADLINE};

#[tokio::test]
async fn a_mandatory_message_nothing_is_bound_for_is_refused_naming_its_exchange_and_key() {
    let broker = Broker::new().await;
    let exchange = broker.topology.jobs_exchange();
    let outgoing = Outgoing {
        exchange: exchange.clone(),
        routing_key: "no-worker-handles-this".to_owned(),
        body: b"{}",
        message_id: "unroutable".to_owned(),
        kind: "no-worker-handles-this",
        headers: FieldTable::default(),
        mandatory: true,
    };
    let refused = amqp::publish_confirmed(&broker.channel, outgoing, DEADLINE).await;
    match refused {
        Err(PublishError::Unroutable {
            exchange: named,
            routing_key,
        }) => {
            assert_eq!(named, exchange);
            assert_eq!(routing_key, "no-worker-handles-this");
        }
        other => panic!("expected an unroutable refusal, got {other:?}"),
    }
    broker.cleanup().await;
}
