//! Authentic events: which broker user may publish the events of each
//! source. An event names its `source` itself, so with one broker identity
//! for every service, one compromised service could confirm orders or mail
//! anyone in another's name. Every publish of ours carries the AMQP
//! `user-id` property, and RabbitMQ refuses a publish whose `user-id` is not
//! the user its connection logged in as; given each service's own broker
//! user, a consumer can then tell who really sent an event.

use std::{collections::HashMap, sync::Arc};

/// `AMQP_SOURCE_USERS`: `source=user` pairs, comma-separated (for example
/// `order-service=order,inventory-service=inventory`). Empty, the default,
/// checks nothing: every service then shares one broker user anyway.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Senders(Arc<HashMap<String, String>>);

impl std::str::FromStr for Senders {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let mut users = HashMap::new();
        for pair in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((source, user)) = pair.split_once('=') else {
                return Err(format!("'{pair}' is not source=user"));
            };
            let (source, user) = (source.trim(), user.trim());
            if source.is_empty() || user.is_empty() {
                return Err(format!("'{pair}' is not source=user"));
            }
            if users.insert(source.to_string(), user.to_string()).is_some() {
                return Err(format!("{source} is named twice"));
            }
        }
        Ok(Senders(Arc::new(users)))
    }
}

impl Senders {
    pub fn is_checking(&self) -> bool {
        !self.0.is_empty()
    }

    /// Why an event claiming `source`, published by broker user `user_id`,
    /// is refused; `None` if it is taken. A consumer's `own_user` is
    /// accepted too: the retries and dead letters it parks come back to it
    /// republished under its own user, and no other service can publish as
    /// that user.
    pub fn refusal(&self, source: &str, user_id: Option<&str>, own_user: &str) -> Option<String> {
        if !self.is_checking() {
            return None;
        }
        let Some(expected) = self.0.get(source) else {
            return Some(format!(
                "event from unknown source '{source}' (not in AMQP_SOURCE_USERS)"
            ));
        };
        match user_id {
            Some(user) if user == expected || user == own_user => None,
            Some(user) => Some(format!(
                "event claims source '{source}' but was published by broker user '{user}', not '{expected}'"
            )),
            None => Some(format!(
                "event claims source '{source}' but carries no user-id (published by an older version or by hand?)"
            )),
        }
    }
}

/// The user the broker address logs in as: its first node's (every node of
/// a cluster shares its users). lapin's default, `guest`, when the URL
/// names none.
pub(crate) fn broker_user(address: &str) -> String {
    super::nodes(address)
        .next()
        .and_then(|url| url.parse::<lapin::uri::AMQPUri>().ok())
        .map_or_else(
            || "guest".to_string(),
            |uri| uri.authority.userinfo.username,
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn senders(value: &str) -> Senders {
        value.parse().unwrap()
    }

    #[test]
    fn pairs_parse_and_nonsense_is_named() {
        let parsed = senders(" order-service=order, inventory-service = inv ,");
        assert_eq!(
            parsed.0.get("inventory-service").map(String::as_str),
            Some("inv")
        );
        assert!(!senders("").is_checking());
        for bad in ["order-service", "=order", "order-service=", "a=x,a=y"] {
            assert!(bad.parse::<Senders>().is_err(), "{bad}");
        }
    }

    #[test]
    fn an_event_is_taken_only_from_its_sources_user_or_back_from_the_consumers_own() {
        let senders = senders("order-service=order,inventory-service=inventory");
        let check = |source, user| senders.refusal(source, user, "notification");
        assert_eq!(check("order-service", Some("order")), None);
        // A retry this consumer parked itself, coming back.
        assert_eq!(check("order-service", Some("notification")), None);
        let forged = check("order-service", Some("inventory")).unwrap();
        assert!(forged.contains("'inventory', not 'order'"), "{forged}");
        assert!(check("order-service", None).unwrap().contains("no user-id"));
        assert!(
            check("shop", Some("order"))
                .unwrap()
                .contains("unknown source")
        );
    }

    #[test]
    fn without_pairs_nothing_is_checked() {
        assert_eq!(Senders::default().refusal("anyone", None, "guest"), None);
    }

    #[test]
    fn the_broker_user_is_the_first_nodes() {
        assert_eq!(
            broker_user("amqp://order:pw@rabbit-0/%2f,amqp://order:pw@rabbit-1/%2f"),
            "order"
        );
        assert_eq!(broker_user("amqp://rabbit/%2f"), "guest");
    }
}
