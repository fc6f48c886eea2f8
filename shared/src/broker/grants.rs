//! Least privilege on the broker: what each service's own broker user may
//! touch, derived from the topology and the event contract, so that a new
//! event or queue needs no permission written by hand.
//!
//! RabbitMQ checks three regular expressions per user and vhost against the
//! name of every exchange or queue an operation touches (configure: declare;
//! write: publish, bind a queue, dead-letter to an exchange; read: consume,
//! bind from an exchange), and, on a topic exchange, two more against the
//! routing key (write: publish; read: bind). A service's user gets:
//!
//! - configure, write, read: the two shared exchanges and its own queues
//!   (work, dead-letter, delay);
//! - write on `amq.default` too: the consumer parks a retry in a delay queue
//!   and the console replays a dead letter into the work queue by queue
//!   name, through the default exchange. That permission reaches any queue
//!   by name, which is why consumers also check who published an event
//!   (`AMQP_SOURCE_USERS`, [`super::senders`]);
//! - on the events exchange, publishing only its own events (the contract's
//!   routing keys that start with its short name) and binding only what it
//!   subscribes to.
//!
//! Passive declarations (the backlog gate counting another service's queue)
//! need no permission.

use crate::{events::EVENT_TYPES, registry::Service};

use super::Topology;

/// One service's permissions, as `rabbitmqctl set_permissions` and
/// `set_topic_permissions` (or the management API) take them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The broker user.
    pub user: String,
    pub configure: String,
    pub write: String,
    pub read: String,
    /// The topic exchange the two below apply to.
    pub topic_exchange: String,
    /// Routing keys the user may publish to `topic_exchange`.
    pub topic_write: String,
    /// Routing keys the user may bind its queue to.
    pub topic_read: String,
}

impl Topology {
    /// What `service`'s broker user `user` needs in this topology. Its
    /// queue is the one its contract subscription names.
    pub fn grant(&self, service: &Service, user: &str) -> Grant {
        let subscription = crate::events::subscription_of(service);
        // The work queue, and the dead-letter and delay queues named after it.
        let queues = format!("{}(\\..+)?", escape(&self.work_queue(subscription)));
        let exchanges = format!(
            "{}|{}",
            escape(&self.events_exchange()),
            escape(&self.dead_letter_exchange())
        );
        let own = format!("^({exchanges}|{queues})$");
        let publishes: Vec<&str> = EVENT_TYPES
            .iter()
            .copied()
            .filter(|key| key.split('.').next() == Some(service.name.as_str()))
            .collect();
        Grant {
            user: user.to_string(),
            configure: own.clone(),
            write: format!("^({exchanges}|{queues}|amq\\.default)$"),
            read: own,
            topic_exchange: self.events_exchange(),
            topic_write: any_of(&publishes),
            topic_read: any_of(subscription.routing_keys),
        }
    }
}

/// Where `rabbitmq/grants.tsv` has the namespace: `users.sh` puts the
/// services' `AMQP_NAMESPACE` there (escaped, in the regular expressions),
/// or nothing, so the namespacing is this module's alone.
pub const NAMESPACE_SLOT: &str = "@NS@";

/// `rabbitmq/grants.tsv`, which `rabbitmq/users.sh` applies: every
/// service's grant with [`NAMESPACE_SLOT`] for the namespace, its user
/// named after it (`order`), one tab-separated line each under a header.
pub fn table() -> String {
    let topology = Topology::new(NAMESPACE_SLOT);
    let mut text = format!(
        "# Generated from shared::broker::grants (a unit test there keeps it so); applied by users.sh,\n\
         # which puts the services' namespace (AMQP_NAMESPACE, often empty) at {NAMESPACE_SLOT}.\n\
         # user\tconfigure\twrite\tread\ttopic_exchange\ttopic_write\ttopic_read\n",
    );
    for service in crate::registry::all() {
        let g = topology.grant(service, &service.name);
        text.push_str(
            &[
                g.user,
                g.configure,
                g.write,
                g.read,
                g.topic_exchange,
                g.topic_write,
                g.topic_read,
            ]
            .join("\t"),
        );
        text.push('\n');
    }
    text
}

/// A regular expression matching exactly these names (none, if empty).
fn any_of(names: &[&str]) -> String {
    let names: Vec<String> = names.iter().map(|name| escape(name)).collect();
    format!("^({})$", names.join("|"))
}

/// `name` with every character a regular expression gives a meaning escaped.
fn escape(name: &str) -> String {
    name.chars().fold(String::new(), |mut out, c| {
        if r"\.^$|?*+()[]{}".contains(c) {
            out.push('\\');
        }
        out.push(c);
        out
    })
}

#[cfg(test)]
mod tests {
    use regex::Regex;

    use super::*;
    use crate::{
        events::{SUBSCRIPTIONS, ToInventoryService},
        registry,
        retry::RetryPolicy,
    };

    fn matches(pattern: &str, name: &str) -> bool {
        Regex::new(pattern).unwrap().is_match(name)
    }

    #[test]
    fn a_service_reaches_its_own_queues_and_the_shared_exchanges_only() {
        let topology = Topology::new("t1.");
        let inventory = topology.grant(registry::service("inventory"), "inventory");
        let own = ToInventoryService::SUBSCRIPTION;
        let mut names = vec![
            topology.events_exchange(),
            topology.dead_letter_exchange(),
            topology.work_queue(&own),
            topology.dead_letter_queue(&own),
        ];
        for tier in RetryPolicy::default().tiers() {
            names.push(topology.delay_queue(&own, tier));
        }
        for name in &names {
            for pattern in [&inventory.configure, &inventory.write, &inventory.read] {
                assert!(matches(pattern, name), "{pattern} refuses {name}");
            }
        }
        assert!(matches(&inventory.write, "amq.default"));
        assert!(!matches(&inventory.read, "amq.default"));

        let mut foreign = vec![
            "e-commerce.events".to_string(), // another namespace's
            "t1.e-commerce.eventsX".to_string(),
            "t1.inventory-service.eventsX".to_string(),
            "t1.inventory-service".to_string(),
        ];
        for other in SUBSCRIPTIONS.iter().filter(|s| s.queue != own.queue) {
            foreign.push(topology.work_queue(other));
            foreign.push(topology.dead_letter_queue(other));
        }
        for name in &foreign {
            for pattern in [&inventory.configure, &inventory.write, &inventory.read] {
                assert!(!matches(pattern, name), "{pattern} lets {name} through");
            }
        }
    }

    #[test]
    fn every_event_is_published_by_exactly_one_service_and_bound_by_its_subscribers() {
        let topology = Topology::new("");
        let grants: Vec<Grant> = registry::all()
            .iter()
            .map(|service| topology.grant(service, &service.name))
            .collect();
        for key in EVENT_TYPES {
            let publishers: Vec<&str> = grants
                .iter()
                .filter(|g| matches(&g.topic_write, key))
                .map(|g| g.user.as_str())
                .collect();
            assert_eq!(publishers.len(), 1, "{key} is published by {publishers:?}");
        }
        let inventory = &grants[1];
        assert_eq!(inventory.user, "inventory");
        assert!(matches(&inventory.topic_write, "inventory.reserved"));
        assert!(!matches(&inventory.topic_write, "order.created"));
        assert!(!matches(&inventory.topic_write, "inventory.reservedX"));
        for key in ToInventoryService::TYPES {
            assert!(matches(&inventory.topic_read, key));
        }
        assert!(!matches(&inventory.topic_read, "inventory.low"));
        assert_eq!(inventory.topic_exchange, "e-commerce.events");
    }

    #[test]
    fn the_scripts_table_is_what_the_code_grants() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../rabbitmq/grants.tsv");
        let file = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            file == table(),
            "{} is not what the code grants; it should read:\n{}",
            path.display(),
            table()
        );
    }

    #[test]
    fn the_slot_filled_with_a_namespace_is_that_namespace_s_grant() {
        let inventory = registry::service("inventory");
        let slotted = Topology::new(NAMESPACE_SLOT).grant(inventory, "inventory");
        let namespace = "t1.";
        let fill = |pattern: &str| pattern.replace(NAMESPACE_SLOT, &escape(namespace));
        let filled = Grant {
            user: "inventory".into(),
            configure: fill(&slotted.configure),
            write: fill(&slotted.write),
            read: fill(&slotted.read),
            topic_exchange: slotted.topic_exchange.replace(NAMESPACE_SLOT, namespace),
            ..slotted
        };
        assert_eq!(
            filled,
            Topology::new(namespace).grant(inventory, "inventory")
        );
    }

    #[test]
    fn names_are_escaped() {
        assert_eq!(escape("a.b-c(d)"), r"a\.b-c\(d\)");
        assert_eq!(any_of(&[]), "^()$");
    }
}
