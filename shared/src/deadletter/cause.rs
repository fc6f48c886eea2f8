//! What a dead letter is about and why it died, read at archive time from
//! the message itself: the order its JSON names (so an operator finds an
//! order's dead letters, and an order's history shows them), and a class of
//! its reason (so a hundred dead letters of one cause are seen, replayed or
//! discarded as one group). Pure functions over bytes and strings.

use serde::{Deserialize, Serialize};

/// The reason of a dead letter the archiver recorded when RabbitMQ itself
/// dead-lettered it (`x-death`): `broker: rejected`, `broker: expired`, …
pub(crate) const BROKER_REASON_PREFIX: &str = "broker: ";
/// The reason of a dead letter that came with none.
pub(crate) const UNKNOWN_REASON: &str = "unknown";
/// Longer than any id we issue: a poison message's field this long names no
/// order, and an index key should stay small.
const MAX_ID_LENGTH: usize = 200;

/// Why a message died, in a few words an operator groups by.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, poem_openapi::Enum,
)]
#[serde(rename_all = "snake_case")]
#[oai(rename_all = "snake_case")]
pub enum ReasonClass {
    /// The body is not an event envelope (not JSON, or JSON of another shape).
    NotAnEnvelope,
    /// An event in a version this service does not speak.
    UnknownVersion,
    /// An event whose payload does not match its type's contract.
    BadPayload,
    /// An event type this consumer does not handle.
    NotSubscribed,
    /// A permanent refusal of the domain: a broken rule, a missing or taken record.
    Rule,
    /// A transient failure (an outage) that outlasted the retry budget.
    RetriesExhausted,
    /// Dead-lettered by RabbitMQ itself (rejected, expired, over a delivery limit).
    Broker,
    /// Anything else, and dead letters archived before classes were recorded.
    #[default]
    Other,
}

impl ReasonClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ReasonClass::NotAnEnvelope => "not_an_envelope",
            ReasonClass::UnknownVersion => "unknown_version",
            ReasonClass::BadPayload => "bad_payload",
            ReasonClass::NotSubscribed => "not_subscribed",
            ReasonClass::Rule => "rule",
            ReasonClass::RetriesExhausted => "retries_exhausted",
            ReasonClass::Broker => "broker",
            ReasonClass::Other => "other",
        }
    }

    /// The class of a dead letter's `reason` (the consumer's
    /// `x-dead-letter-reason`, or RabbitMQ's `x-death` one as
    /// `broker: …`), `transient` when its `x-failure-class` says the retry
    /// budget ran out. The contract's refusals are told apart by the words
    /// of [`crate::events::ContractError`] (its tests pin them); any other
    /// permanent refusal comes from the domain (`consumer::outcome`).
    pub fn of(reason: &str, transient: bool) -> ReasonClass {
        if transient {
            ReasonClass::RetriesExhausted
        } else if reason.starts_with(BROKER_REASON_PREFIX) {
            ReasonClass::Broker
        } else if reason.starts_with("message body is not an event envelope") {
            ReasonClass::NotAnEnvelope
        } else if reason.contains(" is too old (this consumer reads ") {
            ReasonClass::UnknownVersion
        } else if reason.contains(" payload does not match the contract") {
            ReasonClass::BadPayload
        } else if reason.contains(" does not handle ") {
            ReasonClass::NotSubscribed
        } else if reason.is_empty() || reason == UNKNOWN_REASON {
            ReasonClass::Other
        } else {
            ReasonClass::Rule
        }
    }
}

/// The order and the request a message body names, as far as its JSON says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OrderReference {
    pub order_id: Option<String>,
    pub correlation_id: Option<String>,
}

/// What `body` names: `data.orderId` (every order event's envelope), else a
/// top-level `orderId` (JSON that is not our envelope), and the top-level
/// `correlationId`. A poison message is read as far as it goes, so one
/// whose payload did not decode is still found by its order; a body that
/// is not a JSON object names nothing.
pub fn order_reference(body: &[u8]) -> OrderReference {
    let Ok(serde_json::Value::Object(json)) = serde_json::from_slice(body) else {
        return OrderReference::default();
    };
    let id = |value: Option<&serde_json::Value>| {
        value
            .and_then(serde_json::Value::as_str)
            .filter(|id| !id.is_empty() && id.len() <= MAX_ID_LENGTH)
            .map(str::to_string)
    };
    OrderReference {
        order_id: id(json.get("data").and_then(|data| data.get("orderId")))
            .or_else(|| id(json.get("orderId"))),
        correlation_id: id(json.get("correlationId")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::events::{
        ContractError, Envelope, OrderCreated, OrderLine, RawEnvelope, ToOrderService,
    };

    fn created(order_id: &str) -> Envelope<OrderCreated> {
        Envelope::new(
            "test",
            "corr-7",
            None,
            OrderCreated {
                order_id: order_id.into(),
                customer_id: "c1".into(),
                customer_email: "c1@example.com".into(),
                items: vec![OrderLine {
                    product_id: "p1".into(),
                    quantity: 1,
                }],
                attempt: 1,
            },
        )
    }

    fn body(value: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&value).unwrap()
    }

    fn named(order: Option<&str>, correlation: Option<&str>) -> OrderReference {
        OrderReference {
            order_id: order.map(str::to_string),
            correlation_id: correlation.map(str::to_string),
        }
    }

    #[test]
    fn a_valid_event_names_the_order_of_its_payload_and_its_correlation_id() {
        let event = serde_json::to_vec(&created("o-1")).unwrap();
        assert_eq!(order_reference(&event), named(Some("o-1"), Some("corr-7")));
    }

    #[test]
    fn an_event_whose_payload_does_not_decode_still_names_its_order() {
        let mut event = serde_json::to_value(created("o-2")).unwrap();
        event["data"]["items"] = json!("not a list");
        let raw = RawEnvelope::parse(&body(event.clone())).unwrap();
        assert!(raw.decode::<OrderCreated>().is_err(), "a bad payload");
        assert_eq!(
            order_reference(&body(event)),
            named(Some("o-2"), Some("corr-7"))
        );
    }

    #[test]
    fn an_event_in_an_unknown_version_still_names_its_order() {
        let mut event = serde_json::to_value(created("o-3")).unwrap();
        event["eventVersion"] = json!(0);
        assert_eq!(
            order_reference(&body(event)),
            named(Some("o-3"), Some("corr-7"))
        );
    }

    #[test]
    fn json_that_is_not_an_envelope_names_the_order_at_its_top_level_or_under_data() {
        let top = body(json!({ "orderId": "o-4", "correlationId": "corr-4", "x": 1 }));
        assert!(RawEnvelope::parse(&top).is_err(), "not an envelope");
        assert_eq!(order_reference(&top), named(Some("o-4"), Some("corr-4")));
        let nested = body(json!({ "data": { "orderId": "o-5" }, "orderId": "o-6" }));
        assert_eq!(order_reference(&nested), named(Some("o-5"), None));
        // No data.orderId: the top-level one.
        let other = body(json!({ "data": { "productId": "p1" }, "orderId": "o-7" }));
        assert_eq!(order_reference(&other), named(Some("o-7"), None));
    }

    #[test]
    fn a_body_that_is_not_a_json_object_or_names_no_order_by_a_string_names_nothing() {
        for nothing in [
            &b"not json"[..],
            b"",
            b"[\"o-1\"]",
            b"\"o-1\"",
            br#"{"orderId": 7, "correlationId": null}"#,
            br#"{"orderId": ""}"#,
            br#"{"data": "o-1"}"#,
        ] {
            assert_eq!(
                order_reference(nothing),
                OrderReference::default(),
                "{}",
                String::from_utf8_lossy(nothing)
            );
        }
        let long = body(json!({ "orderId": "o".repeat(MAX_ID_LENGTH + 1) }));
        assert_eq!(order_reference(&long), OrderReference::default());
    }

    #[test]
    fn the_contracts_refusals_are_classed_by_what_they_refuse() {
        let not_json = RawEnvelope::parse(b"{oops").unwrap_err().to_string();
        let mut wrong = created("o-1").into_raw();
        wrong.event_version = 0;
        let version = wrong.decode::<OrderCreated>().unwrap_err().to_string();
        let mut bad = created("o-1").into_raw();
        bad.data = json!({ "orderId": 7 });
        let payload = bad.decode::<OrderCreated>().unwrap_err().to_string();
        let unsubscribed = ToOrderService::decode(&created("o-1").into_raw())
            .unwrap_err()
            .to_string();
        for (reason, class) in [
            (not_json, ReasonClass::NotAnEnvelope),
            (version, ReasonClass::UnknownVersion),
            (payload, ReasonClass::BadPayload),
            (unsubscribed, ReasonClass::NotSubscribed),
        ] {
            assert_eq!(ReasonClass::of(&reason, false), class, "{reason}");
        }
        // The consumer's own words for a body that is no envelope at all.
        let shape = ContractError::NotAnEnvelope(serde_json::from_str::<u8>("x").unwrap_err());
        assert_eq!(
            ReasonClass::of(&shape.to_string(), false),
            ReasonClass::NotAnEnvelope
        );
    }

    #[test]
    fn a_permanent_refusal_of_the_domain_is_a_rule_and_an_exhausted_retry_is_transient() {
        assert_eq!(
            ReasonClass::of("rule violated: order o-1 is already CANCELLED", false),
            ReasonClass::Rule
        );
        assert_eq!(ReasonClass::of("no product p-9", false), ReasonClass::Rule);
        // Whatever the last error said, the failure class decides.
        assert_eq!(
            ReasonClass::of(
                "gave up after 9 attempts in 180 s: order.created payload does not match the contract",
                true
            ),
            ReasonClass::RetriesExhausted
        );
    }

    #[test]
    fn what_rabbitmq_dead_lettered_is_the_brokers_and_no_reason_is_other() {
        assert_eq!(
            ReasonClass::of(&format!("{BROKER_REASON_PREFIX}rejected"), false),
            ReasonClass::Broker
        );
        assert_eq!(
            ReasonClass::of(&format!("{BROKER_REASON_PREFIX}expired"), false),
            ReasonClass::Broker
        );
        assert_eq!(ReasonClass::of(UNKNOWN_REASON, false), ReasonClass::Other);
        assert_eq!(ReasonClass::of("", false), ReasonClass::Other);
    }

    #[test]
    fn a_class_is_stored_and_named_in_the_api_as_its_snake_case_word() {
        for class in [
            ReasonClass::NotAnEnvelope,
            ReasonClass::UnknownVersion,
            ReasonClass::BadPayload,
            ReasonClass::NotSubscribed,
            ReasonClass::Rule,
            ReasonClass::RetriesExhausted,
            ReasonClass::Broker,
            ReasonClass::Other,
        ] {
            assert_eq!(serde_json::to_value(class).unwrap(), class.as_str());
        }
    }
}
