//! Least privilege on the broker: every service logged in as a user of its
//! own with only what `shared::broker::grants` gives it (made by
//! `rabbitmq/users.sh`, and checked against the code), and taking events
//! only from their sources' users. The saga runs whole under those users;
//! an event not published by its source's user is dead-lettered unhandled;
//! and RabbitMQ itself refuses a service's user whatever lies outside its
//! grant.

use e2e_tests::{Stack, emails_to, eventually, rabbitmq_url};
use lapin::{
    BasicProperties, Connection,
    options::{BasicConsumeOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use serde_json::Value;
use shared::{
    broker::Topology,
    events::{Envelope, OrderCreated, OrderLine},
    registry,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_saga_runs_with_a_broker_user_per_service_and_nothing_else_is_allowed() {
    let stack = Stack::start_with_own_broker_users().await;
    let product = stack.create_product(5, 0, 3.0).await;
    let email = stack.email("least-privilege");

    // The saga, confirmed and rejected, each told by email.
    let mut ids = Vec::new();
    for quantity in [2, 10] {
        let response = stack.place_order(&email, &product, quantity).await;
        assert_eq!(response.status(), 202);
        let order: Value = response.json().await.unwrap();
        ids.push(order["orderId"].as_str().unwrap().to_string());
    }
    assert_eq!(stack.final_order(&ids[0]).await["status"], "CONFIRMED");
    assert_eq!(stack.final_order(&ids[1]).await["status"], "REJECTED");
    eventually("both emails", || async {
        (emails_to(&email).await.len() == 2).then_some(())
    })
    .await;

    // An order.created claiming the order service, published by another
    // user (the tests' administrator, with no user-id): dead-lettered by the
    // inventory with the reason, and nothing reserved.
    let forged = Envelope::new(
        "order-service",
        "corr-forged",
        None,
        OrderCreated {
            order_id: "forged-order".into(),
            customer_id: "c-1".into(),
            customer_email: email.clone(),
            items: vec![OrderLine {
                product_id: product.clone(),
                quantity: 1,
            }],
            attempt: 1,
        },
    );
    stack
        .publish_raw("order.created", &serde_json::to_vec(&forged).unwrap())
        .await;
    let dead = stack.dead_letters(&stack.inventory, "DEAD", 1).await;
    assert!(
        dead[0]["reason"]
            .as_str()
            .unwrap()
            .contains("claims source 'order-service' but carries no user-id"),
        "{dead:?}"
    );
    assert_eq!(stack.product(&product).await["reserved"], 2);

    // rabbitmq/users.sh granted each user what the code says it needs.
    let users = stack.broker_users().unwrap();
    let topology = Topology::new(&stack.name(""));
    for service in registry::all() {
        assert_eq!(
            users.granted(&service.name).await,
            topology.grant(service, users.user(&service.name)),
            "{}",
            service.name
        );
    }

    // What the inventory's user may not do, each refused by RabbitMQ.
    let inventory =
        Connection::connect(&users.url("inventory", &rabbitmq_url()), Default::default())
            .await
            .expect("the inventory's user logs in");
    let order_queue = stack.name("order-service.events");
    let refused = |what: &str, result: Result<(), lapin::Error>| {
        let error = result.expect_err(what).to_string();
        assert!(error.contains("ACCESS_REFUSED"), "{what}: {error}");
    };

    let channel = inventory.create_channel().await.unwrap();
    channel.confirm_select(Default::default()).await.unwrap();
    let published = async {
        channel
            .basic_publish(
                stack.name("e-commerce.events").as_str().into(),
                "order.created".into(),
                BasicPublishOptions::default(),
                b"{}",
                BasicProperties::default(),
            )
            .await?
            .await?;
        Ok(())
    };
    refused("publishing the order service's event", published.await);

    let channel = inventory.create_channel().await.unwrap();
    let consumed = channel
        .basic_consume(
            order_queue.as_str().into(),
            "intruder".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map(drop);
    refused("consuming the order service's queue", consumed);

    let channel = inventory.create_channel().await.unwrap();
    let declared = channel
        .queue_declare(
            stack.name("elsewhere").as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .map(drop);
    refused("declaring a queue of no service", declared);

    // Its own queue bound to an event it does not subscribe to.
    let channel = inventory.create_channel().await.unwrap();
    let bound = channel
        .queue_bind(
            stack.name("inventory-service.events").as_str().into(),
            stack.name("e-commerce.events").as_str().into(),
            "notification.sent".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await;
    refused("binding to an event it does not consume", bound);

    // The refusals were the grant's, not a broken login: the same user
    // still publishes its own events.
    let channel = inventory.create_channel().await.unwrap();
    channel.confirm_select(Default::default()).await.unwrap();
    channel
        .basic_publish(
            stack.name("e-commerce.events").as_str().into(),
            "inventory.updated".into(),
            BasicPublishOptions::default(),
            b"{}",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let _ = inventory.close(200, "done".into()).await;
}
