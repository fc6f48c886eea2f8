//! The services of this shop, read from `services/registry.txt`, the one
//! place that lists them: each service takes its name, default port and
//! database from its line, and the suite checks every other file that
//! names the services (scripts, nginx, the deploy files, the contract's
//! consumers) against the same lines.

use std::sync::LazyLock;

/// One line of the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// The short name: `inventory`.
    pub name: String,
    /// What the service is called everywhere else (crate, binary, log,
    /// event `source`, queue): `inventory-service`.
    pub service: String,
    /// Its HTTP port when run alone, `PORT`'s default.
    pub port: u16,
    /// The database it owns, `MONGODB_DATABASE`'s default.
    pub database: String,
}

/// The registry's text, compiled in: a service never reads it at run time.
pub(crate) const REGISTRY: &str = include_str!("../../services/registry.txt");

static SERVICES: LazyLock<Vec<Service>> = LazyLock::new(|| {
    parse(REGISTRY).unwrap_or_else(|error| panic!("services/registry.txt: {error}"))
});

/// Every service, in the registry's order.
pub fn all() -> &'static [Service] {
    &SERVICES
}

/// The service named `name` (`inventory`). Only names this code base
/// knows are asked for, so a missing one is a broken build, not bad input.
pub fn service(name: &str) -> &'static Service {
    all()
        .iter()
        .find(|service| service.name == name)
        .unwrap_or_else(|| panic!("services/registry.txt has no service {name:?}"))
}

/// The registry's lines: `name port database`, separated by spaces; `#`
/// starts a comment.
pub fn parse(text: &str) -> Result<Vec<Service>, String> {
    let mut services: Vec<Service> = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default();
        let fields: Vec<&str> = line.split_whitespace().collect();
        let at = |what: String| format!("line {}: {what}", number + 1);
        let [name, port, database] = fields[..] else {
            if fields.is_empty() {
                continue;
            }
            return Err(at(format!("{line:?} is not `name port database`")));
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        {
            return Err(at(format!(
                "name {name:?} must be lower-case letters and digits"
            )));
        }
        let port: u16 = port
            .parse()
            .ok()
            .filter(|port| *port > 0)
            .ok_or_else(|| at(format!("port {port:?} is not a number from 1 to 65535")))?;
        let clash = services
            .iter()
            .find(|s| s.name == name || s.port == port || s.database == database);
        if let Some(earlier) = clash {
            return Err(at(format!(
                "{name} repeats the name, port or database of {}",
                earlier.name
            )));
        }
        services.push(Service {
            name: name.to_string(),
            service: format!("{name}-service"),
            port,
            database: database.to_string(),
        });
    }
    match services.is_empty() {
        true => Err("no service".into()),
        false => Ok(services),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_holds_the_shops_services_with_their_ports_and_databases() {
        for (name, full, port, database) in [
            ("order", "order-service", 3001, "order_service"),
            ("inventory", "inventory-service", 3002, "inventory_service"),
            (
                "notification",
                "notification-service",
                3003,
                "notification_service",
            ),
        ] {
            let line = service(name);
            assert_eq!(
                (&*line.service, line.port, &*line.database),
                (full, port, database)
            );
        }
    }

    #[test]
    fn every_service_of_the_registry_has_a_work_queue_and_no_other_does() {
        use crate::events::{SUBSCRIPTIONS, subscription_of};
        let mut queues: Vec<&str> = SUBSCRIPTIONS.iter().map(|s| s.queue).collect();
        // Each service finds its own (subscription_of panics otherwise).
        let mut expected: Vec<&str> = all().iter().map(|s| subscription_of(s).queue).collect();
        queues.sort();
        expected.sort();
        assert_eq!(
            queues, expected,
            "SUBSCRIPTIONS (shared/src/events.rs) against services/registry.txt"
        );
    }

    #[test]
    fn comments_and_blank_lines_are_skipped() {
        let services = parse("# name port database\n\npay 3004 pay_db # the new one\n").unwrap();
        assert_eq!(services[0].service, "pay-service");
        assert_eq!(services[0].database, "pay_db");
    }

    #[test]
    fn a_malformed_line_is_refused_with_its_number() {
        for (text, expected) in [
            (
                "a 3001 a_db\nb 3002",
                "line 2: \"b 3002\" is not `name port database`",
            ),
            (
                "Pay 3004 pay_db",
                "line 1: name \"Pay\" must be lower-case letters and digits",
            ),
            (
                "pay 0 pay_db",
                "line 1: port \"0\" is not a number from 1 to 65535",
            ),
            (
                "a 3001 a_db\nb 3001 b_db",
                "line 2: b repeats the name, port or database of a",
            ),
            ("# nothing\n", "no service"),
        ] {
            assert_eq!(parse(text).unwrap_err(), expected, "{text:?}");
        }
    }
}
