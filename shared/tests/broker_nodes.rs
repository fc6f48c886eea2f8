//! A broker address of several nodes, as a RabbitMQ cluster's is given
//! (`RABBITMQ_URL` with URLs separated by commas): the publisher and the
//! consumer skip a node that does not answer and work through the next.
//! Against the real RabbitMQ (`RABBITMQ_URL`, default the local one), behind
//! a port where nothing listens.

use std::sync::Arc;

use shared::broker::{Publisher, Senders, Topology, topology::QueueType};
use uuid::Uuid;

mod common;
use common::{Recorder, Running, quick_retries, rabbitmq_url, wait_for};

/// A node that refuses connections: a port that was free a moment ago.
fn dead_node() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_first_node_is_skipped_by_the_consumer_and_the_publisher() {
    let address = format!("{},{}", dead_node(), rabbitmq_url());
    let handler = Arc::new(Recorder::default());
    // Waits until the consumer consumes, and publishes with confirms: both
    // connected through the second node.
    let running = Running::start_at(
        &address,
        Senders::default(),
        "broker-nodes",
        QueueType::Classic,
        quick_retries(),
        4,
        handler.clone(),
    )
    .await;
    let id = Uuid::now_v7();
    running.publish(id).await;
    wait_for("the event consumed", || {
        handler.0.lock().unwrap().contains(&id).then_some(())
    })
    .await;
    running.shutdown.cancel();
    running.task.await.unwrap();
}

#[tokio::test]
async fn with_no_node_answering_the_publisher_says_so() {
    let publisher = Publisher::new(
        &format!("{}, {}", dead_node(), dead_node()),
        "broker-nodes-dead",
        Topology::new("t-dead."),
    );
    let error = publisher.check().await.unwrap_err();
    assert!(
        error.to_string().to_lowercase().contains("refused"),
        "{error}"
    );
}
