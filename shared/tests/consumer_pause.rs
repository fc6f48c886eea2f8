//! An operator's pause, as the consume loop applies it: the deliveries in
//! hand are handled and acked, the AMQP consumer goes away, the rest wait
//! in the queue, and a resume takes them, each once. Against the real
//! RabbitMQ (`RABBITMQ_URL`, default the local one), on a namespace of its
//! own.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use lapin::Connection;
use shared::{
    broker::{
        HandleError, Handler, consumer::ConsumerStatus, passive_declare, topology::QueueType,
    },
    events::RawEnvelope,
};
use tokio::sync::watch;
use uuid::Uuid;

mod common;
use common::{Running, quick_retries, rabbitmq_url, wait_for};

/// Holds every delivery until the gate opens, then records it.
struct Gate {
    open: watch::Sender<bool>,
    handled: Mutex<Vec<Uuid>>,
}

impl Handler for Gate {
    async fn handle(&self, event: RawEnvelope) -> Result<(), HandleError> {
        let _ = self.open.subscribe().wait_for(|open| *open).await;
        self.handled.lock().unwrap().push(event.event_id);
        Ok(())
    }
}

impl Gate {
    fn handled(&self) -> Vec<Uuid> {
        self.handled.lock().unwrap().clone()
    }
}

/// The broker's count of ready messages and of consumers on `queue`.
async fn queue_counts(queue: &str) -> (u32, u32) {
    let connection = Connection::connect(&rabbitmq_url(), Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let declared = passive_declare(&channel, queue).await.unwrap();
    let _ = connection.close(200, "done".into()).await;
    (declared.message_count(), declared.consumer_count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_acks_the_deliveries_in_hand_and_leaves_the_rest_in_the_queue_until_resumed() {
    const PREFETCH: u16 = 4;
    const PUBLISHED: usize = 10;
    let gate = Arc::new(Gate {
        open: watch::Sender::new(false),
        handled: Default::default(),
    });
    let running = Running::start(
        "consumer-pause",
        QueueType::Classic,
        quick_retries(),
        PREFETCH,
        gate.clone(),
    )
    .await;
    let ids: Vec<Uuid> = (0..PUBLISHED).map(|_| Uuid::new_v4()).collect();
    for id in &ids {
        running.publish(*id).await;
    }
    let state = &running.state;
    // The broker sends no more than the prefetch window while none is acked.
    wait_for("a full prefetch window in hand", || {
        (state.snapshot(Instant::now()).in_flight == u64::from(PREFETCH)).then_some(())
    })
    .await;

    state.request_pause(true);
    // Deliveries in hand keep it from pausing until they are settled.
    assert_eq!(state.status(), ConsumerStatus::Consuming);
    gate.open.send_replace(true);
    wait_for("the consumer paused", || {
        (state.status() == ConsumerStatus::Paused).then_some(())
    })
    .await;
    let handled = gate.handled();
    assert_eq!(handled.len(), usize::from(PREFETCH), "{handled:?}");
    assert_eq!(state.snapshot(Instant::now()).in_flight, 0);
    // The rest wait in the queue, ready, with no consumer; the handled ones
    // were acked, or closing the connection would have put them back.
    let mut counts = (0, 0);
    for _ in 0..100 {
        counts = queue_counts(&running.queue).await;
        if counts == ((PUBLISHED - handled.len()) as u32, 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(counts, ((PUBLISHED - handled.len()) as u32, 0));
    // Stays paused: nothing more is handled while the queue holds messages.
    assert_eq!(gate.handled().len(), usize::from(PREFETCH));

    state.request_pause(false);
    let all = wait_for("every message handled after the resume", || {
        let handled = gate.handled();
        (handled.len() >= PUBLISHED).then_some(handled)
    })
    .await;
    let mut all_sorted = all.clone();
    all_sorted.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(all_sorted, expected, "each message handled exactly once");
    assert_eq!(state.status(), ConsumerStatus::Consuming);
    running.shutdown.cancel();
    running.task.await.unwrap();
}
