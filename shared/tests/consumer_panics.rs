//! A handler that panics does not take its consumer down: against the real
//! RabbitMQ (`RABBITMQ_URL`, default the local one), on a namespace of its
//! own, the consumer keeps handling other events after the panic, and the
//! event whose handling panicked is retried and then dead-lettered as a
//! transient failure rather than lost or retried forever. The same holds on
//! quorum queues (`AMQP_QUEUE_TYPE=quorum`), whose dead-lettering (the
//! way back from a delay queue, and into the DLQ) is set to at least once.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use lapin::{
    Connection,
    types::{AMQPValue, FieldTable, ShortString},
};
use shared::{
    broker::{
        HandleError, Handler,
        consumer::{FAILURE_CLASS_HEADER, REASON_HEADER},
        topology::QueueType,
    },
    events::{RawEnvelope, ToOrderService},
    metrics::{DeadLetterLabels, EventLabels, EventOutcome, EventType},
    retry::RetryPolicy,
};
use uuid::Uuid;

mod common;
use common::{Running, rabbitmq_url, wait_for};

/// Handles every event but one, on which it panics.
struct PanicsOn {
    poison: Uuid,
    handled: Mutex<HashSet<Uuid>>,
    panics: AtomicU32,
}

impl Handler for PanicsOn {
    async fn handle(&self, event: RawEnvelope) -> Result<(), HandleError> {
        if event.event_id == self.poison {
            self.panics.fetch_add(1, Ordering::SeqCst);
            panic!("bug triggered by event {}", event.event_id);
        }
        self.handled.lock().unwrap().insert(event.event_id);
        Ok(())
    }
}

fn header(headers: &FieldTable, key: &str) -> String {
    match headers.inner().get(&ShortString::from(key)) {
        Some(AMQPValue::LongString(text)) => text.to_string(),
        other => panic!("{key}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_panic_is_retried_then_dead_lettered_and_the_consumer_keeps_going() {
    panic_retried_then_dead_lettered(QueueType::Classic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_quorum_queues_a_handler_panic_is_retried_then_dead_lettered_too() {
    panic_retried_then_dead_lettered(QueueType::Quorum).await;
}

async fn panic_retried_then_dead_lettered(queue_type: QueueType) {
    let handler = Arc::new(PanicsOn {
        poison: Uuid::now_v7(),
        handled: Default::default(),
        panics: AtomicU32::new(0),
    });
    let running = Running::start(
        "consumer-panics-test",
        queue_type,
        // Retried for a second after its first failure, then dead.
        RetryPolicy {
            budget: Duration::from_secs(1),
            base: Duration::from_millis(100),
            cap: Duration::from_millis(200),
        },
        4,
        handler.clone(),
    )
    .await;
    let publish = |id| running.publish(id);
    let before = Uuid::now_v7();
    publish(before).await;
    publish(handler.poison).await;
    wait_for("the handler to panic", || {
        (handler.panics.load(Ordering::SeqCst) >= 1).then_some(())
    })
    .await;
    // After the panic the same consumer still takes new events.
    let after = Uuid::now_v7();
    publish(after).await;
    wait_for("both good events handled", || {
        let handled = handler.handled.lock().unwrap();
        (handled.contains(&before) && handled.contains(&after)).then_some(())
    })
    .await;

    // The poison event went through the delay queues, then to the DLQ.
    let dead = running.take_dead_letter().await;
    let dlq = running
        .topology
        .dead_letter_queue(&ToOrderService::SUBSCRIPTION);
    assert_eq!(
        dead.properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string()),
        Some(handler.poison.to_string())
    );
    let headers = dead.properties.headers().clone().unwrap();
    assert_eq!(header(&headers, FAILURE_CLASS_HEADER), "transient");
    let reason = header(&headers, REASON_HEADER);
    assert!(reason.contains("handler panicked"), "{reason}");
    assert!(reason.contains("bug triggered by event"), "{reason}");
    let panics = handler.panics.load(Ordering::SeqCst);
    assert!(panics >= 2, "retried only {panics} times");
    // The metrics saw the same: every retry, one transient dead letter, and
    // the two good events done.
    let event_type = || EventType {
        event_type: "inventory.reserved".into(),
    };
    let count = |outcome| {
        running
            .metrics
            .duration
            .get(&EventLabels {
                event_type: "inventory.reserved".into(),
                outcome,
            })
            .map_or(0, |histogram| histogram.count())
    };
    wait_for("the dead letter counted", || {
        (count(EventOutcome::dead_letter) == 1).then_some(())
    })
    .await;
    assert_eq!(count(EventOutcome::done), 2);
    assert_eq!(count(EventOutcome::retry), u64::from(panics) - 1);
    assert_eq!(
        running.metrics.retries.get(&event_type()).map(|c| c.get()),
        Some(u64::from(panics) - 1)
    );
    let transient = DeadLetterLabels {
        event_type: "inventory.reserved".into(),
        class: "transient",
    };
    assert_eq!(
        running
            .metrics
            .dead_letters
            .get(&transient)
            .map(|c| c.get()),
        Some(1)
    );

    // Nothing left in hand, nothing lost, and the consumer never restarted.
    let snapshot = running.state.snapshot(Instant::now());
    assert!(snapshot.connected);
    assert_eq!(snapshot.in_flight, 0);
    assert!(snapshot.last_ack_age.is_some());
    assert!(!running.task.is_finished());
    // Dead means dead: no more attempts once it is in the DLQ.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(handler.panics.load(Ordering::SeqCst), panics);

    running.shutdown.cancel();
    running.task.await.unwrap();
    running.publisher.close().await;
    declared_as(&dlq, queue_type)
        .await
        .unwrap_or_else(|e| panic!("{dlq} was not declared as a {queue_type:?} queue: {e}"));
}

/// Declares the queue again with the arguments a queue of this type gets.
/// The broker refuses (PRECONDITION_FAILED) unless they are exactly those it
/// was made with, the type among them.
async fn declared_as(queue: &str, queue_type: QueueType) -> Result<(), lapin::Error> {
    let mut args = FieldTable::default();
    args.insert("x-expires".into(), AMQPValue::LongLongInt(900_000));
    if queue_type == QueueType::Quorum {
        for (name, value) in [
            ("x-queue-type", "quorum"),
            ("x-dead-letter-strategy", "at-least-once"),
            ("x-overflow", "reject-publish"),
        ] {
            args.insert(name.into(), AMQPValue::LongString(value.into()));
        }
    }
    let connection = Connection::connect(&rabbitmq_url(), Default::default()).await?;
    let channel = connection.create_channel().await?;
    let declared = channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .map(drop);
    let _ = connection.close(200, "done".into()).await;
    declared
}
