//! Dead letters found by order and grouped by cause, on the real services,
//! broker and database: poison events for one order are found on the
//! service that consumed them, groups count them, and a group is replayed
//! or discarded as one.

use std::collections::HashSet;

use e2e_tests::{Stack, eventually, mongodb_uri};
use mongodb::bson::{Document, doc};
use reqwest::Method;
use serde_json::{Value, json};
use shared::{
    CancellationToken,
    deadletter::{DEAD_LETTERS, DeadLetterFilter, DeadLetterStore, ReasonClass},
    events::{Envelope, OrderCreated, OrderLine},
};

/// An `order.created` for `order_id` whose payload breaks the contract
/// (`items` is not a list): it parses as an event, its payload does not.
fn bad_payload(order_id: &str, correlation_id: &str) -> Vec<u8> {
    let mut event = serde_json::to_value(created(order_id, correlation_id)).unwrap();
    event["data"]["items"] = json!("none");
    serde_json::to_vec(&event).unwrap()
}

/// An `order.created` for `order_id` in a version no consumer reads any
/// more (a newer one than it knows would be retried, not dead-lettered).
fn retired_version(order_id: &str) -> Vec<u8> {
    let mut event = serde_json::to_value(created(order_id, "corr-retired")).unwrap();
    event["eventVersion"] = json!(0);
    serde_json::to_vec(&event).unwrap()
}

fn created(order_id: &str, correlation_id: &str) -> Envelope<OrderCreated> {
    Envelope::new(
        "e2e",
        correlation_id,
        None,
        OrderCreated {
            order_id: order_id.into(),
            customer_id: "c-1".into(),
            customer_email: "dlq@example.com".into(),
            items: vec![OrderLine {
                product_id: "p-1".into(),
                quantity: 1,
            }],
            attempt: 1,
        },
    )
}

/// The dead letters `query` finds on the service at `url` (one page).
async fn listed(stack: &Stack, url: &str, query: &str) -> Vec<Value> {
    let (status, page) = stack
        .admin_call(
            Method::GET,
            &format!("{url}/admin/dead-letters?{query}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{query}: {page}");
    page["items"].as_array().unwrap().clone()
}

fn ids(letters: &[Value]) -> HashSet<String> {
    letters
        .iter()
        .map(|d| d["deadLetterId"].as_str().unwrap().to_string())
        .collect()
}

async fn groups(stack: &Stack, url: &str) -> Vec<Value> {
    let (status, body) = stack
        .admin_call(
            Method::GET,
            &format!("{url}/admin/dead-letters/groups"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["groups"].as_array().unwrap().clone()
}

/// The group of `class` and `event_type` (null: not an event), if listed.
fn group<'a>(groups: &'a [Value], class: &str, event_type: Value) -> Option<&'a Value> {
    groups
        .iter()
        .find(|g| g["reasonClass"] == class && g["eventType"] == event_type)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_events_of_an_order_are_found_by_its_order_id_on_the_service_that_consumed_them_and_nowhere_else()
 {
    let stack = Stack::start().await;
    let (order, other) = (format!("o-{}", stack.id), format!("o-other-{}", stack.id));
    let correlation = format!("corr-{}", stack.id);
    // Only the inventory consumes order.created.
    let undecodable = bad_payload(&order, &correlation);
    let not_an_envelope = serde_json::to_vec(&json!({
        "orderId": order,
        "correlationId": format!("{correlation}-hand"),
        "note": "written by hand, not an envelope",
    }))
    .unwrap();
    stack.publish_raw("order.created", &undecodable).await;
    stack.publish_raw("order.created", &not_an_envelope).await;
    stack
        .publish_raw("order.created", &bad_payload(&other, "corr-other"))
        .await;
    stack.publish_raw("order.created", b"not json at all").await;
    stack.dead_letters(&stack.inventory, "DEAD", 4).await;

    let found = listed(&stack, &stack.inventory, &format!("orderId={order}")).await;
    assert_eq!(found.len(), 2, "{found:?}");
    for letter in &found {
        assert_eq!(letter["orderId"], order.as_str(), "{letter}");
    }
    let by_payload = |body: &[u8]| {
        let text = String::from_utf8(body.to_vec()).unwrap();
        found
            .iter()
            .find(|d| d["payload"] == text.as_str())
            .unwrap_or_else(|| panic!("no dead letter with payload {text}: {found:?}"))
            .clone()
    };
    let event = by_payload(&undecodable);
    assert_eq!(event["reasonClass"], "bad_payload", "{event}");
    assert_eq!(event["eventType"], "order.created");
    // Published without the AMQP property: the envelope's own.
    assert_eq!(event["correlationId"], correlation.as_str());
    let hand = by_payload(&not_an_envelope);
    assert_eq!(hand["reasonClass"], "not_an_envelope", "{hand}");
    assert_eq!(hand["eventType"], Value::Null);
    assert_eq!(hand["correlationId"], format!("{correlation}-hand"));

    // The existing filters and paging still apply.
    let narrowed = listed(
        &stack,
        &stack.inventory,
        &format!("orderId={order}&reasonClass=not_an_envelope&status=DEAD"),
    )
    .await;
    assert_eq!(ids(&narrowed), ids(std::slice::from_ref(&hand)));
    let first = stack
        .admin_get_json(&format!(
            "{}/admin/dead-letters?orderId={order}&limit=1",
            stack.inventory
        ))
        .await;
    let cursor = first["nextCursor"].as_str().expect("a second page");
    let second = stack
        .admin_get_json(&format!(
            "{}/admin/dead-letters?orderId={order}&limit=1&cursor={cursor}",
            stack.inventory
        ))
        .await;
    assert_eq!(second["nextCursor"], Value::Null);
    let paged = [first["items"][0].clone(), second["items"][0].clone()];
    assert_eq!(ids(&paged), ids(&found));
    let by_request = listed(
        &stack,
        &stack.inventory,
        &format!("correlationId={correlation}"),
    )
    .await;
    assert_eq!(ids(&by_request), ids(std::slice::from_ref(&event)));

    // The order's history reads the same letters, oldest first.
    let db = mongodb::Client::with_uri_str(mongodb_uri())
        .await
        .unwrap()
        .database(&format!("t_{}_inventory", stack.id));
    let history = DeadLetterStore::new(&db)
        .of_order(&order, 10)
        .await
        .unwrap();
    let oldest_first: Vec<String> = history.into_iter().map(|d| d.id).collect();
    let newest_first: Vec<String> = found
        .iter()
        .rev()
        .map(|d| d["deadLetterId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(oldest_first, newest_first);

    // The other services consumed nothing of it.
    for url in [&stack.order, &stack.notification] {
        assert!(
            listed(&stack, url, &format!("orderId={order}"))
                .await
                .is_empty()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_grouped_by_cause_and_a_group_is_replayed_or_discarded_as_one() {
    let stack = Stack::start().await;
    let base = format!("{}/admin/dead-letters", stack.inventory);
    for order in ["o-x", "o-y"] {
        stack
            .publish_raw("order.created", &bad_payload(order, "corr-group"))
            .await;
    }
    stack
        .publish_raw("order.created", &retired_version("o-z"))
        .await;
    stack.publish_raw("order.created", b"{ not json").await;
    let dead = stack.dead_letters(&stack.inventory, "DEAD", 4).await;
    let queue = dead[0]["queue"].as_str().unwrap().to_string();
    let of_class = |class: &str| -> Vec<Value> {
        dead.iter()
            .filter(|d| d["reasonClass"] == class)
            .cloned()
            .collect()
    };
    let (undecodable, future, unreadable) = (
        of_class("bad_payload"),
        of_class("unknown_version"),
        of_class("not_an_envelope"),
    );

    let found = groups(&stack, &stack.inventory).await;
    assert_eq!(found.len(), 3, "{found:?}");
    let payloads = group(&found, "bad_payload", json!("order.created")).expect("bad_payload");
    assert_eq!(payloads["count"], 2);
    assert_eq!(payloads["queue"], queue.as_str());
    assert!(payloads["oldestDeadAt"].as_str() <= payloads["newestDeadAt"].as_str());
    assert!(
        payloads["sampleReason"]
            .as_str()
            .unwrap()
            .contains("payload does not match the contract"),
        "{payloads}"
    );
    assert_eq!(
        group(&found, "unknown_version", json!("order.created")).unwrap()["count"],
        1
    );
    assert_eq!(
        group(&found, "not_an_envelope", Value::Null).unwrap()["count"],
        1
    );

    // Replaying the group sends back its two and nothing else; the handler
    // refuses them again, so two new dead letters take their place.
    let (status, replayed) = stack
        .admin_call(
            Method::POST,
            &format!("{base}/replay"),
            Some(json!({ "reasonClass": "bad_payload", "eventType": "order.created", "queue": queue })),
        )
        .await;
    assert_eq!(status, 200, "{replayed}");
    assert_eq!(replayed["replayed"], 2);
    let sent: HashSet<String> = replayed["deadLetterIds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_string())
        .collect();
    assert_eq!(sent, ids(&undecodable));
    let again = eventually("the replayed group dead again", || async {
        let dead = listed(
            &stack,
            &stack.inventory,
            "status=DEAD&reasonClass=bad_payload",
        )
        .await;
        (dead.len() == 2).then_some(dead)
    })
    .await;
    assert!(
        ids(&again).is_disjoint(&sent),
        "new dead letters: {again:?}"
    );
    for letter in future.iter().chain(&unreadable) {
        let id = letter["deadLetterId"].as_str().unwrap();
        let (_, now) = stack
            .admin_call(Method::GET, &format!("{base}/{id}"), None)
            .await;
        assert_eq!(
            (&now["status"], &now["replayCount"]),
            (&json!("DEAD"), &json!(0))
        );
    }

    // Discarding the group of bodies that are not events takes that one only.
    let unreadable_group = json!({
        "reasonClass": "not_an_envelope",
        "hasEventType": false,
        "queue": queue,
        "note": "garbage from a test publisher",
    });
    let (status, discarded) = stack
        .admin_call(
            Method::POST,
            &format!("{base}/discard"),
            Some(unreadable_group.clone()),
        )
        .await;
    assert_eq!(status, 200, "{discarded}");
    assert_eq!(discarded["discarded"], 1);
    assert_eq!(
        discarded["deadLetterIds"],
        json!([unreadable[0]["deadLetterId"]])
    );
    let id = unreadable[0]["deadLetterId"].as_str().unwrap();
    let (_, record) = stack
        .admin_call(Method::GET, &format!("{base}/{id}"), None)
        .await;
    assert_eq!(record["status"], "DISCARDED");
    assert_eq!(record["discardNote"], "garbage from a test publisher");
    let left = groups(&stack, &stack.inventory).await;
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(group(&left, "not_an_envelope", Value::Null).is_none());
    assert_eq!(
        group(&left, "bad_payload", json!("order.created")).unwrap()["count"],
        2
    );
    let (status, twice) = stack
        .admin_call(
            Method::POST,
            &format!("{base}/discard"),
            Some(unreadable_group),
        )
        .await;
    assert_eq!((status, &twice["discarded"]), (200, &json!(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_discard_or_replay_that_is_malformed_is_refused_with_a_400_naming_the_problem() {
    let stack = Stack::start().await;
    let base = format!("{}/admin/dead-letters", stack.notification);
    let refused = |path: &'static str, body: Value| {
        let stack = &stack;
        let url = format!("{base}/{path}");
        async move {
            let (status, error) = stack.admin_call(Method::POST, &url, Some(body)).await;
            assert_eq!(status, 400, "{error}");
            error
        }
    };
    let error = refused("discard", json!({ "reasonClass": "rule" })).await;
    assert!(
        error["message"].as_str().unwrap().contains("note"),
        "{error}"
    );
    let error = refused("discard", json!({ "note": "" })).await;
    assert_eq!(error["fields"][0]["field"], "note", "{error}");
    let error = refused("discard", json!({ "note": "x", "colour": "red" })).await;
    assert!(
        error["message"].as_str().unwrap().contains("colour"),
        "{error}"
    );
    // A discard carries its note; a replay has none.
    for (path, note) in [("discard", json!({ "note": "x" })), ("replay", json!({}))] {
        let with = |field: &str, value: &str| {
            let mut body = note.clone();
            body[field] = json!(value);
            body
        };
        let error = refused(path, with("reasonClass", "bogus")).await;
        assert!(
            error["message"].as_str().unwrap().contains("bogus"),
            "{error}"
        );
        let error = refused(path, with("orderId", "")).await;
        assert_eq!(error["fields"][0]["field"], "orderId", "{error}");
    }
    let (status, _) = stack
        .admin_call(Method::GET, &format!("{base}?reasonClass=bogus"), None)
        .await;
    assert_eq!(status, 400);
    let anonymous = stack
        .http
        .post(format!("{base}/discard"))
        .json(&json!({ "note": "x" }))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let anonymous = stack
        .http
        .get(format!("{base}/groups"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

/// A dead letter as the archiver stored it before orders and reason
/// classes were recorded: a bad payload of `order_id`'s, or with none, a
/// body that is not an event.
fn archived_before_classes(order_id: Option<&str>, reason: &str, transient: bool) -> Document {
    let (payload, event_type) = match order_id {
        Some(order_id) => (
            String::from_utf8(bad_payload(order_id, "corr-legacy")).unwrap(),
            Some("order.created"),
        ),
        None => ("garbage".to_string(), None),
    };
    doc! {
        "_id": uuid::Uuid::now_v7().to_string(),
        "dedupeKey": uuid::Uuid::new_v4().to_string(),
        "queue": "legacy.inventory-service.events",
        "routingKey": "order.created",
        "messageId": null,
        "correlationId": null,
        "eventType": event_type,
        "reason": reason,
        "attempts": 1,
        "firstFailureAt": null,
        "lastFailureAt": null,
        "lastError": null,
        "payload": payload,
        "status": "DEAD",
        "deadAt": mongodb::bson::DateTime::now(),
        "replayCount": 0,
        "replayedAt": null,
        "discardedAt": null,
        "discardNote": null,
        "transient": transient,
        "redrives": 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_archived_before_classes_group_as_other_until_the_backfill_gives_them_their_order_and_class()
 {
    let db = mongodb::Client::with_uri_str(mongodb_uri())
        .await
        .unwrap()
        .database(&format!(
            "t_{}_legacy",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ));
    let store = DeadLetterStore::new(&db);
    store.ensure_indexes().await.unwrap();
    let order = "o-legacy";
    db.collection::<Document>(DEAD_LETTERS)
        .insert_many([
            archived_before_classes(
                Some(order),
                "order.created payload does not match the contract: invalid type",
                false,
            ),
            archived_before_classes(Some("o-outage"), "gave up after 9 attempts in 181 s", true),
            archived_before_classes(
                None,
                "message body is not an event envelope: expected value",
                false,
            ),
        ])
        .await
        .unwrap();

    let mut before: Vec<(ReasonClass, Option<String>, u64)> = store
        .dead_groups()
        .await
        .unwrap()
        .into_iter()
        .map(|g| (g.reason_class, g.event_type, g.count))
        .collect();
    before.sort_by(|a, b| (a.0.as_str(), &a.1).cmp(&(b.0.as_str(), &b.1)));
    assert_eq!(
        before,
        [
            (ReasonClass::Other, None, 1),
            (ReasonClass::Other, Some("order.created".into()), 2)
        ]
    );
    assert!(store.of_order(order, 10).await.unwrap().is_empty());
    // The group of bodies that are not events is selected apart from the
    // events of the same class.
    let not_events = DeadLetterFilter {
        reason_class: Some(ReasonClass::Other),
        has_event_type: Some(false),
        queue: Some("legacy.inventory-service.events".into()),
        ..DeadLetterFilter::default()
    };
    let discarded = store
        .discard_matching(&not_events, "garbage")
        .await
        .unwrap();
    assert_eq!(discarded.len(), 1);
    assert_eq!(discarded[0].payload, "garbage");

    // Every record without a class gets one, whatever its status.
    let backfilled = store
        .backfill_causes(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(backfilled, 3);
    let history = store.of_order(order, 10).await.unwrap();
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0].reason_class, ReasonClass::BadPayload);
    assert_eq!(history[0].correlation_id.as_deref(), Some("corr-legacy"));
    let mut after: Vec<(ReasonClass, u64)> = store
        .dead_groups()
        .await
        .unwrap()
        .into_iter()
        .map(|g| (g.reason_class, g.count))
        .collect();
    after.sort_by_key(|(class, _)| class.as_str());
    assert_eq!(
        after,
        [
            (ReasonClass::BadPayload, 1),
            (ReasonClass::RetriesExhausted, 1)
        ]
    );
    // Once is enough: a second start finds nothing to do.
    assert_eq!(
        store
            .backfill_causes(&CancellationToken::new())
            .await
            .unwrap(),
        0
    );
    db.drop().await.unwrap();
}
