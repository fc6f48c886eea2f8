//! RabbitMQ: the topology, a publisher with confirms, and the consumer loop
//! with delay-queue retries and dead letters.

pub mod consumer;
pub mod grants;
pub mod publisher;
pub mod senders;
pub mod topology;

pub use consumer::{HandleError, Handler, outcome, run_consumer};
pub use publisher::{Outgoing, PublishOutcome, Publisher};
pub use senders::Senders;
pub use topology::{Subscription, Topology};

use std::time::Duration;

use lapin::{
    Connection,
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

/// The heartbeat the services ask for unless told otherwise: a broker that
/// vanished without closing the socket is noticed within two of these.
pub(crate) const DEFAULT_HEARTBEAT_SECONDS: u16 = 30;

/// `url` asking for an AMQP heartbeat of `seconds`, unless it already names
/// one (`heartbeat=` in its query, which then wins) or `seconds` is 0. lapin
/// takes the heartbeat only from the URL's query. With none asked for, it
/// adopts the broker's proposal (60 s for RabbitMQ); it never turns
/// heartbeats off while the broker proposes them.
pub(crate) fn with_heartbeat(url: &str, seconds: u16) -> Result<String, String> {
    let parsed: lapin::uri::AMQPUri = url.parse()?;
    if seconds == 0 || parsed.query.heartbeat.is_some() {
        return Ok(url.to_string());
    }
    let (base, fragment) = match url.find('#') {
        Some(at) => url.split_at(at),
        None => (url, ""),
    };
    let separator = match base.find('?') {
        None => "?",
        Some(_) if base.ends_with('?') || base.ends_with('&') => "",
        Some(_) => "&",
    };
    Ok(format!("{base}{separator}heartbeat={seconds}{fragment}"))
}

/// The nodes of `address`: one AMQP URL, or a cluster's nodes as several
/// separated by commas.
pub(crate) fn nodes(address: &str) -> impl Iterator<Item = &str> {
    address
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
}

/// A connection to the first node of `address` (see [`nodes`]) that
/// answers within `limit`, tried in the order given. Every instance thus
/// meets on the first live node (where the quorum queues it declares get
/// their leaders), and when that node dies each reconnection moves on to
/// the next. A node that is down usually refuses at once, so trying it
/// first again costs little; one that does not answer at all costs
/// `limit`. The error is the last node's.
pub(crate) async fn connect(
    address: &str,
    name: &str,
    limit: Duration,
) -> Result<Connection, lapin::Error> {
    let mut last = None;
    for url in nodes(address) {
        match limited(
            "connecting",
            limit,
            Connection::connect(url, connection_properties(name)),
        )
        .await
        {
            Ok(connection) => return Ok(connection),
            Err(error) => {
                tracing::debug!(connection = name, %error, "a RabbitMQ node did not answer; trying the next");
                last = Some(error);
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        lapin::Error::from(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "no RabbitMQ URL to connect to",
        ))
    }))
}

/// `operation`, or a timed-out error naming what it was doing once it has
/// taken longer than `limit`.
pub(crate) async fn limited<T>(
    doing: &str,
    limit: Duration,
    operation: impl Future<Output = Result<T, lapin::Error>>,
) -> Result<T, lapin::Error> {
    tokio::time::timeout(limit, operation)
        .await
        .unwrap_or_else(|_| {
            Err(lapin::Error::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{doing} took longer than {} s", limit.as_secs()),
            )))
        })
}

/// The queue as the broker has it now (its ready messages and consumers),
/// without declaring it: an error if it does not exist, and then the
/// broker closes `channel`, so a caller that asks after a queue that may be
/// missing gives it a channel of its own.
pub async fn passive_declare(
    channel: &lapin::Channel,
    queue: &str,
) -> Result<lapin::Queue, lapin::Error> {
    channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
}

/// Properties every connection of ours announces, so the RabbitMQ UI shows
/// which service and role holds it.
pub(crate) fn connection_properties(name: &str) -> lapin::ConnectionProperties {
    lapin::ConnectionProperties::default().with_connection_name(LongString::from(name))
}

pub(crate) fn header_string(headers: &FieldTable, key: &str) -> Option<String> {
    match headers.inner().get(&ShortString::from(key))? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

pub(crate) fn header_u32(headers: &FieldTable, key: &str) -> Option<u32> {
    match headers.inner().get(&ShortString::from(key))? {
        AMQPValue::LongUInt(n) => Some(*n),
        AMQPValue::LongInt(n) => u32::try_from(*n).ok(),
        AMQPValue::LongLongInt(n) => u32::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(u32::from(*n)),
        AMQPValue::ShortShortUInt(n) => Some(u32::from(*n)),
        _ => None,
    }
}

pub(crate) fn set_header(headers: &mut FieldTable, key: &str, value: AMQPValue) {
    headers.insert(ShortString::from(key), value);
}

pub(crate) fn text(value: impl Into<String>) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat_of(url: &str) -> Option<u16> {
        url.parse::<lapin::uri::AMQPUri>().unwrap().query.heartbeat
    }

    #[test]
    fn a_url_without_a_heartbeat_gets_the_one_asked_for() {
        let url = with_heartbeat("amqp://guest:guest@127.0.0.1:5672/%2f", 30).unwrap();
        assert_eq!(url, "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=30");
        assert_eq!(heartbeat_of(&url), Some(30));
    }

    #[test]
    fn a_heartbeat_joins_an_existing_query() {
        let url = with_heartbeat("amqp://h/%2f?frame_max=8192", 15).unwrap();
        assert_eq!(url, "amqp://h/%2f?frame_max=8192&heartbeat=15");
        let parsed: lapin::uri::AMQPUri = url.parse().unwrap();
        assert_eq!(parsed.query.frame_max, Some(8192));
        assert_eq!(parsed.query.heartbeat, Some(15));
        assert_eq!(
            with_heartbeat("amqp://h/%2f?", 15).unwrap(),
            "amqp://h/%2f?heartbeat=15"
        );
    }

    #[test]
    fn a_heartbeat_in_the_url_wins() {
        let url = "amqp://h/%2f?heartbeat=5&channel_max=10";
        assert_eq!(with_heartbeat(url, 30).unwrap(), url);
        // Even 0 there: whoever wrote it meant it.
        assert_eq!(
            with_heartbeat("amqp://h/?heartbeat=0", 30).unwrap(),
            "amqp://h/?heartbeat=0"
        );
    }

    #[test]
    fn zero_leaves_the_url_alone() {
        assert_eq!(with_heartbeat("amqp://h/%2f", 0).unwrap(), "amqp://h/%2f");
    }

    #[test]
    fn a_url_that_does_not_parse_is_an_error() {
        assert!(with_heartbeat("localhost:5672", 30).is_err());
    }
}
