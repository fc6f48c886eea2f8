//! Authentic events (`AMQP_SOURCE_USERS`): a consumer handles an event only
//! from the broker user of the source it claims, and RabbitMQ itself refuses
//! a publish that forges its `user-id`. Against the real RabbitMQ
//! (`RABBITMQ_URL`, default the local one), with two broker users of the
//! test's own, made and deleted with `rabbitmqctl`.

use std::{process::Command, sync::Arc};

use lapin::{
    BasicProperties, Connection,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, ShortString},
};
use shared::broker::{PublishOutcome, Publisher, consumer::REASON_HEADER, topology::QueueType};
use uuid::Uuid;

mod common;
use common::{Recorder, Running, event, quick_retries, rabbitmq_url, wait_for};

/// A broker user with every permission on the default vhost, deleted when
/// dropped.
struct BrokerUser {
    name: String,
}

impl BrokerUser {
    const PASSWORD: &str = "test-password";

    fn add(name: String) -> BrokerUser {
        rabbitmqctl(&["add_user", &name, Self::PASSWORD]);
        rabbitmqctl(&["set_permissions", "-p", "/", &name, ".*", ".*", ".*"]);
        BrokerUser { name }
    }

    /// The broker's address, logged in as this user.
    fn url(&self) -> String {
        let url = rabbitmq_url();
        let host = url.split_once('@').map_or_else(
            || url.trim_start_matches("amqp://").to_string(),
            |(_, host)| host.to_string(),
        );
        format!("amqp://{}:{}@{host}", self.name, Self::PASSWORD)
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        rabbitmqctl(&["delete_user", &self.name]);
    }
}

fn rabbitmqctl(args: &[&str]) {
    let run = |mut command: Command| {
        command
            .args(args)
            .output()
            .is_ok_and(|output| output.status.success())
    };
    let mut sudo = Command::new("sudo");
    sudo.args(["-n", "rabbitmqctl"]);
    assert!(
        run(Command::new("rabbitmqctl")) || run(sudo),
        "rabbitmqctl {args:?} failed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_handled_only_from_the_broker_user_of_its_source() {
    let test = &Uuid::new_v4().simple().to_string()[..8];
    let source_user = BrokerUser::add(format!("t-{test}-source"));
    let intruder = BrokerUser::add(format!("t-{test}-intruder"));
    let handler = Arc::new(Recorder::default());
    // common::event's source is "shared-broker-test".
    let running = Running::start_at(
        &rabbitmq_url(),
        format!("shared-broker-test={}", source_user.name)
            .parse()
            .unwrap(),
        "broker-senders",
        QueueType::Classic,
        quick_retries(),
        4,
        handler.clone(),
    )
    .await;
    let publish_as = |user: &BrokerUser, id: Uuid| {
        let publisher = Publisher::new(&user.url(), "broker-senders", running.topology.clone());
        let mut message = event(id);
        message.routing_key = running.queue.clone();
        async move {
            assert_eq!(
                publisher.publish(message).await.unwrap(),
                PublishOutcome::Confirmed
            );
        }
    };

    let genuine = Uuid::now_v7();
    publish_as(&source_user, genuine).await;
    wait_for("the genuine event handled", || {
        handler.0.lock().unwrap().contains(&genuine).then_some(())
    })
    .await;

    // Another service's user, claiming the same source: dead-lettered at
    // once (a permanent failure), never handled.
    let forged = Uuid::now_v7();
    publish_as(&intruder, forged).await;
    let dead = running.take_dead_letter().await;
    assert_eq!(
        dead.properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string()),
        Some(forged.to_string())
    );
    let headers = dead.properties.headers().clone().unwrap();
    let reason = match headers.inner().get(&ShortString::from(REASON_HEADER)) {
        Some(AMQPValue::LongString(reason)) => reason.to_string(),
        other => panic!("no reason header: {other:?}"),
    };
    assert!(
        reason.contains(&format!("broker user '{}'", intruder.name)),
        "{reason}"
    );
    assert!(!handler.0.lock().unwrap().contains(&forged));

    // Writing the source's user into `user-id` does not help: the broker
    // refuses a user-id that is not the connection's user.
    let connection = Connection::connect(&intruder.url(), Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut message = event(Uuid::now_v7());
    message.routing_key = running.queue.clone();
    let published = async {
        channel
            .basic_publish(
                "".into(),
                message.routing_key.as_str().into(),
                BasicPublishOptions::default(),
                &message.payload,
                BasicProperties::default()
                    .with_user_id(ShortString::from(source_user.name.as_str())),
            )
            .await?
            .await
    }
    .await;
    let error = published.expect_err("the broker took a forged user-id");
    assert!(error.to_string().contains("user_id"), "{error}");

    running.shutdown.cancel();
    running.task.await.unwrap();
}
