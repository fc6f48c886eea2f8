//! The consumer acks deliveries done together with one `multiple` ack, and
//! never a delivery still in hand: against the real RabbitMQ
//! (`RABBITMQ_URL`, default the local one), on a namespace of its own.
//!
//! Both tests watch the acks through the broker's prefetch window: it sends
//! no more deliveries while `prefetch` are unacked, so a delivery arriving
//! proves the acks before it went out.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use lapin::{
    Connection,
    options::{BasicAckOptions, BasicGetOptions},
};
use shared::{
    broker::{HandleError, Handler, topology::QueueType},
    events::RawEnvelope,
};
use tokio::sync::{Barrier, Notify};
use uuid::Uuid;

mod common;
use common::{Running, quick_retries, rabbitmq_url, wait_for};

/// Finishes deliveries only in groups of `prefetch`, all at once: the way a
/// batch writer's commit settles everything it took.
struct InGroups {
    group: Barrier,
    handled: Mutex<Vec<Uuid>>,
}

impl Handler for InGroups {
    async fn handle(&self, event: RawEnvelope) -> Result<(), HandleError> {
        self.group.wait().await;
        self.handled.lock().unwrap().push(event.event_id);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_done_together_are_acked_together() {
    const PREFETCH: u16 = 8;
    let handler = Arc::new(InGroups {
        group: Barrier::new(PREFETCH.into()),
        handled: Default::default(),
    });
    let running = Running::start(
        "consumer-acks-groups",
        QueueType::Classic,
        quick_retries(),
        PREFETCH,
        handler.clone(),
    )
    .await;
    let sent: Vec<Uuid> = (0..3 * PREFETCH).map(|_| Uuid::now_v7()).collect();
    for id in &sent {
        running.publish(*id).await;
    }
    // The second and third groups come only once the group before is acked.
    wait_for("three groups handled", || {
        (handler.handled.lock().unwrap().len() == sent.len()).then_some(())
    })
    .await;
    let handled: HashSet<Uuid> = handler.handled.lock().unwrap().iter().copied().collect();
    assert_eq!(handled, sent.iter().copied().collect(), "each handled once");

    running.shutdown.cancel();
    running.task.await.unwrap();
    // The last group's ack went out on the way down: nothing comes back.
    assert_eq!(left_in_queue(&running.queue).await, Vec::<Uuid>::new());
    running.publisher.close().await;
}

/// Holds one delivery until released; finishes the others at once.
struct SlowOn {
    slow: Uuid,
    release: Notify,
    handled: Mutex<Vec<Uuid>>,
}

impl Handler for SlowOn {
    async fn handle(&self, event: RawEnvelope) -> Result<(), HandleError> {
        if event.event_id == self.slow {
            self.release.notified().await;
        }
        self.handled.lock().unwrap().push(event.event_id);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_delivery_stalls_no_ack_but_its_own_and_is_never_acked_by_another() {
    let handler = Arc::new(SlowOn {
        slow: Uuid::now_v7(),
        release: Notify::new(),
        handled: Default::default(),
    });
    let running = Running::start(
        "consumer-acks-slow",
        QueueType::Classic,
        quick_retries(),
        2,
        handler.clone(),
    )
    .await;
    running.publish(handler.slow).await;
    let behind: Vec<Uuid> = (0..10).map(|_| Uuid::now_v7()).collect();
    for id in &behind {
        running.publish(*id).await;
    }
    // With a prefetch of 2 and the slow one in hand, each of these arrived
    // only after the one before it was acked, alone.
    wait_for("the ten behind the slow one handled", || {
        (handler.handled.lock().unwrap().len() == behind.len()).then_some(())
    })
    .await;

    // The consumer dies with the slow one in hand: the broker gives back
    // what was not acked. That is the slow one (and perhaps the last one
    // behind it, if its ack was still on its way); never those before.
    running.task.abort();
    let _ = running.task.await;
    running.publisher.close().await;
    let back = wait_for_requeued(&running.queue, handler.slow).await;
    let may_come_back: HashSet<Uuid> = [handler.slow, behind[behind.len() - 1]].into();
    assert!(
        back.iter().all(|id| may_come_back.contains(id)),
        "acked deliveries came back: {back:?}"
    );
}

/// Takes what is left in `queue` (no consumer on it) and returns the ids.
async fn left_in_queue(queue: &str) -> Vec<Uuid> {
    let (connection, channel) = open_channel().await;
    let ids = take_all(&channel, queue).await;
    let _ = connection.close(200, "done".into()).await;
    ids
}

/// Waits until `expected` is back in `queue` (the broker requeues a dead
/// consumer's unacked deliveries together), then takes everything there.
async fn wait_for_requeued(queue: &str, expected: Uuid) -> Vec<Uuid> {
    let (connection, channel) = open_channel().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut back = Vec::new();
    while !back.contains(&expected) {
        assert!(Instant::now() < deadline, "{expected} never came back");
        back.extend(take_all(&channel, queue).await);
        if !back.contains(&expected) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let _ = connection.close(200, "done".into()).await;
    back
}

async fn open_channel() -> (Connection, lapin::Channel) {
    let connection = Connection::connect(&rabbitmq_url(), Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    (connection, channel)
}

/// Gets and acks every message waiting in `queue`; returns their ids.
async fn take_all(channel: &lapin::Channel, queue: &str) -> Vec<Uuid> {
    let mut ids = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions::default())
        .await
        .unwrap()
    {
        message.ack(BasicAckOptions::default()).await.unwrap();
        ids.push(message_id(&message));
    }
    ids
}

fn message_id(message: &lapin::message::BasicGetMessage) -> Uuid {
    message
        .properties
        .message_id()
        .as_ref()
        .and_then(|id| id.as_str().parse().ok())
        .expect("every test message has a UUID message id")
}
