//! The pages that repeat the code, checked against it so they cannot drift:
//! docs/events.md against the event contract, docs/configuration.md against
//! the variables each service's configuration reads, the kinds and states
//! the pages name against the enums, and every relative link of README.md
//! and docs/ against the files and headings it points at.

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
};

use serde_json::Value;
use shared::{
    config::Env,
    events::{
        EVENT_TYPES, Event, InventoryLow, InventoryReleased, InventoryReservationFailed,
        InventoryReserved, InventoryUpdated, NotificationFailed, NotificationKind,
        NotificationSent, OrderCancelled, OrderConfirmed, OrderCreated, OrderFailed, OrderLine,
        OrderRejected, OrderStatus, OrderStatusChanged, PricedLine, ShortLine, ToInventoryService,
        ToNotificationService, ToOrderService,
    },
};

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn page(path: &str) -> String {
    let file = repository().join(path);
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// The rows of the first table in `text` whose header row is `header`, as
/// cells (trimmed, without the outer pipes).
fn table(text: &str, header: &str) -> Vec<Vec<String>> {
    let mut lines = text.lines().skip_while(|line| line.trim() != header);
    assert!(lines.next().is_some(), "no table headed {header:?}");
    lines
        .skip(1) // |---|---|
        .take_while(|line| line.starts_with('|'))
        .map(|line| {
            line.trim()
                .trim_matches('|')
                .split(" | ")
                .map(|cell| cell.trim().to_string())
                .collect()
        })
        .collect()
}

/// Every `backticked` span of a cell.
fn code_spans(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

/// A field list as the events page writes it, `a, b [{c, d}], e`: each
/// top-level name with the names inside its brackets.
fn field_list(text: &str) -> Vec<(String, Vec<String>)> {
    let mut fields = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in text.char_indices().chain([(text.len(), ',')]) {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                let part = text[start..i].trim();
                let (name, nested) = match part.split_once('[') {
                    None => (part, Vec::new()),
                    Some((name, inner)) => (
                        name.trim(),
                        inner
                            .trim_matches(|c| "[]{} ".contains(c))
                            .split(',')
                            .map(|n| n.trim().to_string())
                            .collect(),
                    ),
                };
                fields.push((name.to_string(), nested));
                start = i + 1;
            }
            _ => {}
        }
    }
    fields
}

/// The same shape read from a serialized payload: its keys, and for a list
/// of objects the keys of its first element, each sorted (a JSON object
/// here keeps no order).
fn payload_fields(payload: &Value) -> BTreeMap<String, BTreeSet<String>> {
    let object = payload.as_object().expect("a payload is an object");
    object
        .iter()
        .map(|(name, value)| {
            let nested = match value.as_array().and_then(|items| items.first()) {
                Some(Value::Object(first)) => first.keys().cloned().collect(),
                _ => BTreeSet::new(),
            };
            (name.clone(), nested)
        })
        .collect()
}

/// [`field_list`] in the shape of [`payload_fields`].
fn sorted(fields: Vec<(String, Vec<String>)>) -> BTreeMap<String, BTreeSet<String>> {
    fields
        .into_iter()
        .map(|(name, nested)| (name, nested.into_iter().collect()))
        .collect()
}

/// One payload of `T` as JSON, with its routing key and version.
fn sample<T: Event>(data: T) -> (&'static str, u32, Value) {
    (T::TYPE, T::VERSION, serde_json::to_value(data).unwrap())
}

/// A payload of every event in the contract. Struct literals, so a field
/// added to an event fails to compile here until the page is looked at.
fn every_event() -> Vec<(&'static str, u32, Value)> {
    let id = || "x".to_string();
    let text = id;
    let priced = || {
        vec![PricedLine {
            product_id: id(),
            quantity: 1,
            unit_price_cents: 100,
        }]
    };
    let lines = || {
        vec![OrderLine {
            product_id: id(),
            quantity: 1,
        }]
    };
    vec![
        sample(OrderCreated {
            order_id: id(),
            customer_id: id(),
            customer_email: id(),
            items: lines(),
            attempt: 1,
        }),
        sample(OrderConfirmed {
            order_id: id(),
            customer_id: id(),
            customer_email: id(),
            items: priced(),
            total_cents: 100,
        }),
        sample(OrderRejected {
            order_id: id(),
            customer_id: id(),
            customer_email: id(),
            reason: text(),
        }),
        sample(OrderCancelled {
            order_id: id(),
            customer_id: id(),
            customer_email: id(),
            previous_status: OrderStatus::Pending,
            attempt: 1,
        }),
        sample(OrderFailed {
            order_id: id(),
            customer_id: id(),
            customer_email: id(),
            reason: text(),
            attempt: 1,
        }),
        sample(OrderStatusChanged {
            order_id: id(),
            from: OrderStatus::Pending,
            to: OrderStatus::Confirmed,
            version: 1,
        }),
        sample(InventoryReserved {
            order_id: id(),
            lines: priced(),
            attempt: 1,
        }),
        sample(InventoryReservationFailed {
            order_id: id(),
            reason: text(),
            short_lines: vec![ShortLine {
                product_id: id(),
                requested: 1,
                available: None,
            }],
            attempt: 1,
        }),
        sample(InventoryReleased {
            order_id: id(),
            lines: lines(),
            attempt: 1,
        }),
        sample(InventoryUpdated {
            product_id: id(),
            stock: 1,
            reserved: 0,
        }),
        sample(InventoryLow {
            product_id: id(),
            sku: text(),
            name: text(),
            stock: 1,
            low_stock_threshold: 2,
        }),
        sample(NotificationSent {
            notification_id: id(),
            kind: NotificationKind::Manual,
            recipient: id(),
            order_id: None,
        }),
        sample(NotificationFailed {
            notification_id: id(),
            kind: NotificationKind::Manual,
            recipient: id(),
            order_id: None,
            last_error: text(),
        }),
    ]
}

#[test]
fn the_events_page_has_every_event_with_its_fields_producer_and_consumers() {
    let consumers: [(&str, &[&str]); 3] = [
        ("order", ToOrderService::TYPES),
        ("inventory", ToInventoryService::TYPES),
        ("notification", ToNotificationService::TYPES),
    ];
    let rows = table(
        &page("docs/events.md"),
        "| eventType | emitted by | data | consumed by |",
    );
    let events = every_event();
    let keys: Vec<&str> = events.iter().map(|(key, ..)| *key).collect();
    assert_eq!(
        keys, EVENT_TYPES,
        "every_event() lists the contract's events"
    );
    let documented: Vec<&str> = rows.iter().map(|row| code_spans(&row[0])[0]).collect();
    assert_eq!(
        documented, EVENT_TYPES,
        "docs/events.md: one row per event, in the contract's order"
    );

    for ((key, version, payload), row) in events.iter().zip(&rows) {
        let named_version = match *version {
            1 => String::new(),
            v => format!(" (version {v})"),
        };
        assert_eq!(
            row[0],
            format!("`{key}`{named_version}"),
            "docs/events.md: {key}'s version"
        );
        let producer = key.split('.').next().unwrap();
        assert_eq!(row[1], producer, "docs/events.md: who emits {key}");
        assert_eq!(
            sorted(field_list(code_spans(&row[2])[0])),
            payload_fields(payload),
            "docs/events.md: the data of {key}, as `field, list [{{nested, fields}}]`"
        );
        let consumed_by: Vec<&str> = consumers
            .iter()
            .filter(|(_, types)| types.contains(key))
            .map(|(service, _)| *service)
            .collect();
        let expected = match consumed_by.as_slice() {
            [] => "—".to_string(),
            names => names.join(", "),
        };
        assert_eq!(row[3], expected, "docs/events.md: who consumes {key}");
    }
}

/// Every kind of notification, and every order status: the match fails to
/// compile when one is added, so the pages are checked for it too.
fn every_kind() -> Vec<&'static str> {
    use NotificationKind::*;
    let all = [
        OrderConfirmed,
        OrderRejected,
        OrderCancelled,
        OrderFailed,
        LowStock,
        Manual,
    ];
    for kind in all {
        match kind {
            OrderConfirmed | OrderRejected | OrderCancelled | OrderFailed | LowStock | Manual => {}
        }
    }
    all.map(NotificationKind::as_str).to_vec()
}

fn every_status() -> Vec<&'static str> {
    use OrderStatus::*;
    let all = [
        Pending, Confirmed, Rejected, Shipped, Delivered, Cancelled, Failed,
    ];
    for status in all {
        match status {
            Pending | Confirmed | Rejected | Shipped | Delivered | Cancelled | Failed => {}
        }
    }
    all.map(OrderStatus::as_str).to_vec()
}

#[test]
fn the_pages_name_every_notification_kind_and_order_status() {
    let events = page("docs/events.md");
    let api = page("docs/api.md");
    let sent = events
        .lines()
        .find(|line| line.starts_with("| `notification.sent`"))
        .expect("docs/events.md has notification.sent's row");
    let notification = api
        .lines()
        .find(|line| line.contains("`/api/notifications/{notificationId}`"))
        .expect("docs/api.md has the route of one notification");
    for kind in every_kind() {
        assert!(
            sent.contains(kind),
            "docs/events.md, notification.sent: no {kind}"
        );
        assert!(
            notification.contains(kind),
            "docs/api.md, a notification's kind: no {kind}"
        );
    }
    let states = api
        .split("### Order states")
        .nth(1)
        .expect("docs/api.md has an Order states section");
    let states = states.split("\n#").next().unwrap();
    for status in every_status() {
        assert!(
            states.contains(status),
            "docs/api.md, Order states: no {status}"
        );
    }
}

/// The variables `read` asks for, given `set`.
fn variables_read(
    set: &HashMap<&str, &str>,
    read: impl Fn(&Env<&dyn Fn(&str) -> Option<String>>),
) -> BTreeSet<String> {
    let asked = RefCell::new(BTreeSet::new());
    let lookup = |name: &str| {
        asked.borrow_mut().insert(name.to_string());
        set.get(name).map(|value| value.to_string())
    };
    read(&Env::from_lookup(
        &lookup as &dyn Fn(&str) -> Option<String>,
    ));
    asked.into_inner()
}

#[test]
fn the_configuration_page_has_every_variable_each_service_reads_and_no_other() {
    // Some variables are read only when another is set (the JWT's issuer
    // and audience with a key): the empty environment, then one with those.
    let environments = [
        HashMap::new(),
        HashMap::from([("JWT_SECRET", "a-secret-of-at-least-32-characters!!")]),
    ];
    let mut read: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for set in &environments {
        let services: [(&str, BTreeSet<String>); 3] = [
            (
                "order",
                variables_read(set, |env| drop(order_service::Config::from_lookup(env))),
            ),
            (
                "inventory",
                variables_read(set, |env| drop(inventory_service::Config::from_lookup(env))),
            ),
            (
                "notification",
                variables_read(set, |env| {
                    drop(notification_service::Config::from_lookup(env))
                }),
            ),
        ];
        for (service, names) in services {
            for name in names {
                read.entry(name).or_default().insert(service);
            }
        }
    }

    let rows = table(
        &page("docs/configuration.md"),
        "| variable | services | meaning |",
    );
    let mut documented: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for row in &rows {
        let services: BTreeSet<&str> = match row[1].as_str() {
            "all" => ["order", "inventory", "notification"].into(),
            named => named.split(", ").collect(),
        };
        for name in code_spans(&row[0]) {
            documented.insert(name.to_string(), services.clone());
        }
    }

    // Read by the logging and tracing set-up, from the process environment.
    let telemetry = page("shared/src/telemetry.rs");
    for name in ["RUST_LOG", "LOG_FORMAT", "OTEL_EXPORTER_OTLP_ENDPOINT"] {
        assert!(
            telemetry.contains(name),
            "shared/src/telemetry.rs no longer reads {name}"
        );
        read.insert(
            name.to_string(),
            ["order", "inventory", "notification"].into(),
        );
    }
    let missing: Vec<_> = read
        .iter()
        .filter(|(name, services)| documented.get(*name) != Some(services))
        .map(|(name, services)| format!("{name} (read by {services:?})"))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md lacks or misplaces: {missing:?}"
    );
    let unread: Vec<_> = documented
        .keys()
        .filter(|name| !read.contains_key(*name))
        .collect();
    assert!(
        unread.is_empty(),
        "docs/configuration.md names variables no service reads: {unread:?}"
    );
}

#[test]
fn run_sh_reads_every_knob_the_configuration_page_gives_it() {
    let script = page("scripts/run.sh");
    let rows = table(&page("docs/configuration.md"), "| variable | meaning |");
    assert!(!rows.is_empty());
    for row in rows {
        for name in code_spans(&row[0]) {
            assert!(script.contains(name), "scripts/run.sh does not read {name}");
        }
    }
}

/// The anchor GitHub gives a heading: lower case, spaces to `-`, and every
/// character but letters, digits, `-` and `_` dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown file's headings (outside code blocks), with
/// GitHub's `-1`, `-2` for repeats.
fn anchors(text: &str) -> BTreeSet<String> {
    let (mut seen, mut fenced) = (HashMap::<String, usize>::new(), false);
    let mut anchors = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        }
        let Some(heading) = line.strip_prefix('#').filter(|_| !fenced) else {
            continue;
        };
        let base = anchor(heading.trim_start_matches('#'));
        let count = seen.entry(base.clone()).or_default();
        anchors.insert(match *count {
            0 => base.clone(),
            n => format!("{base}-{n}"),
        });
        *count += 1;
    }
    anchors
}

/// The targets of the inline links `[text](target)` in `text`, outside
/// code blocks and code spans.
fn links(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        }
        if fenced {
            continue;
        }
        let prose: String = line.split('`').step_by(2).collect::<Vec<_>>().join("");
        for (i, _) in prose.match_indices("](") {
            let rest = &prose[i + 2..];
            if let Some(end) = rest.find(')') {
                targets.push(rest[..end].to_string());
            }
        }
    }
    targets
}

#[test]
fn every_relative_link_of_the_readme_and_docs_reaches_a_file_and_heading() {
    let root = repository();
    let mut pages = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    let mut broken = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        for target in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, fragment) = target.split_once('#').unwrap_or((&target, ""));
            let file = match path {
                "" => page.clone(),
                path => page.parent().unwrap().join(path),
            };
            let name = page.strip_prefix(&root).unwrap().display().to_string();
            if !file.exists() {
                broken.push(format!("{name}: {target} (no such file)"));
            } else if !fragment.is_empty() {
                let target_text = std::fs::read_to_string(&file).unwrap_or_default();
                if !anchors(&target_text).contains(fragment) {
                    broken.push(format!("{name}: {target} (no such heading)"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links: {broken:#?}");
}

#[test]
fn the_link_checker_finds_headings_as_github_names_them() {
    let text =
        "# Events\n## How events evolve\n```\n# not a heading\n```\n## `run.sh`\n## Events\n";
    assert_eq!(
        anchors(text),
        ["events", "events-1", "how-events-evolve", "runsh"]
            .map(String::from)
            .into()
    );
    assert_eq!(
        links("see [a](b.md#c) and `[not](a link)` and [d](#e)"),
        ["b.md#c", "#e"]
    );
    assert_eq!(
        field_list("orderId, items [{productId, quantity}], attempt"),
        [
            ("orderId".to_string(), vec![]),
            (
                "items".to_string(),
                vec!["productId".to_string(), "quantity".to_string()]
            ),
            ("attempt".to_string(), vec![]),
        ]
    );
}
