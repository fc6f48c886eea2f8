//! The one way a service changes its data: a [`UnitOfWork`] says what to
//! write (the inbox records of the events it handles, inserts, guarded
//! updates, and the events it emits), and [`Store::commit`] writes all of it
//! in one transaction, retrying collisions in place, then hands the events to
//! the outbox relay. No service opens a transaction of its own.
//!
//! Reads happen before, outside the transaction: a service reads, lets its
//! domain decide, and writes with guards (a version, a status) that fail with
//! [`StoreError::Conflict`] if the documents moved since the read. That keeps
//! transactions short (only writes, a fixed number of round trips) and the
//! decision a plain function of what was read.

use std::time::{Duration, Instant};

use mongodb::{
    ClientSession, Collection, Database,
    bson::{self, Bson, Document, doc},
};
use serde::Serialize;

use super::{
    count_in,
    error::{StoreError, is_duplicate_key},
    inbox::{INBOX, inbox_record},
    outbox::{OUTBOX, Outbox, OutboxRecord},
};
use crate::{
    events::RawEnvelope,
    history::{HISTORY, History, HistoryItem, HistoryStore},
};

/// What an insert that meets a unique index means.
#[derive(Clone, Copy, Debug)]
pub enum OnDuplicate {
    /// The document is the natural key of an effect already made: the event
    /// was handled before ([`StoreError::AlreadyHandled`]).
    AlreadyHandled,
    /// The value belongs to something else ([`StoreError::Taken`]).
    Taken(&'static str),
    /// Someone else made it since our read ([`StoreError::Conflict`]).
    Conflict(&'static str),
}

enum Write {
    Insert {
        collection: &'static str,
        documents: Vec<Document>,
        on_duplicate: OnDuplicate,
    },
    /// Statements that must match `expected` documents between them.
    Update {
        collection: &'static str,
        statements: Vec<Document>,
        expected: u64,
        what: &'static str,
    },
}

/// One atomic change: what to record, write and emit.
#[derive(Default)]
pub struct UnitOfWork {
    handled: Vec<Document>,
    writes: Vec<Write>,
    /// History records, apart from the writes so that recording one
    /// between two updates of a collection never splits their command.
    history: Vec<Document>,
    events: Vec<RawEnvelope>,
}

impl UnitOfWork {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `event` as handled: if it was handled before, the whole unit
    /// fails with [`StoreError::AlreadyHandled`] and writes nothing.
    pub fn handled(&mut self, event: &RawEnvelope) -> &mut Self {
        self.handled.push(inbox_record(event));
        self
    }

    /// Inserts `documents` into `collection`.
    pub fn insert<'a, T: Serialize + 'a>(
        &mut self,
        collection: &'static str,
        documents: impl IntoIterator<Item = &'a T>,
        on_duplicate: OnDuplicate,
    ) -> Result<&mut Self, StoreError> {
        let documents = documents
            .into_iter()
            .map(bson::to_document)
            .collect::<Result<Vec<_>, _>>()?;
        if !documents.is_empty() {
            self.writes.push(Write::Insert {
                collection,
                documents,
                on_duplicate,
            });
        }
        Ok(self)
    }

    /// Applies `update` (operators, or a whole replacement document) to the
    /// one document `filter` matches. If it matches none, because the
    /// document moved past the guard in `filter`, the unit fails with
    /// [`StoreError::Conflict`] naming `what`.
    pub fn update(
        &mut self,
        collection: &'static str,
        what: &'static str,
        filter: Document,
        update: Document,
    ) -> &mut Self {
        self.add_update(collection, what, doc! { "q": filter, "u": update }, 1)
    }

    /// Applies the same `update` to every document whose `_id` is in `ids`,
    /// as one statement: the server charges per statement about three times
    /// what it charges per document. If one of them is missing, the unit
    /// fails with [`StoreError::Conflict`] naming `what`.
    pub fn update_all<I: Into<Bson>>(
        &mut self,
        collection: &'static str,
        what: &'static str,
        ids: impl IntoIterator<Item = I>,
        update: Document,
    ) -> &mut Self {
        let ids: Vec<Bson> = ids.into_iter().map(Into::into).collect();
        if ids.is_empty() {
            return self;
        }
        let expected = ids.len() as u64;
        let statement = doc! { "q": { "_id": { "$in": ids } }, "u": update, "multi": true };
        self.add_update(collection, what, statement, expected)
    }

    fn add_update(
        &mut self,
        collection: &'static str,
        what: &'static str,
        statement: Document,
        matches: u64,
    ) -> &mut Self {
        // Consecutive updates of one collection travel as one command.
        match self.writes.last_mut() {
            Some(Write::Update {
                collection: c,
                statements,
                expected,
                what: w,
            }) if *c == collection && *w == what => {
                statements.push(statement);
                *expected += matches;
            }
            _ => self.writes.push(Write::Update {
                collection,
                statements: vec![statement],
                expected: matches,
                what,
            }),
        }
        self
    }

    /// Replaces the document with `_id` = `id` by `document`, provided its
    /// `version` is still `read_version`.
    pub fn replace_versioned<T: Serialize>(
        &mut self,
        collection: &'static str,
        what: &'static str,
        id: &str,
        read_version: i64,
        document: &T,
    ) -> Result<&mut Self, StoreError> {
        let replacement = bson::to_document(document)?;
        Ok(self.update(
            collection,
            what,
            doc! { "_id": id, "version": read_version },
            replacement,
        ))
    }

    /// Records what the unit does for an order in the order's history
    /// ([`crate::history`]), in the same transaction.
    pub fn record(&mut self, history: History) -> Result<&mut Self, StoreError> {
        self.record_all([history])
    }

    /// [`Self::record`] for several orders, as one insert.
    pub fn record_all(
        &mut self,
        histories: impl IntoIterator<Item = History>,
    ) -> Result<&mut Self, StoreError> {
        for history in histories {
            self.history
                .push(bson::to_document(&history.into_record())?);
        }
        Ok(self)
    }

    /// Emits `events` once the unit commits (through the outbox, in one record
    /// with the unit's other events).
    pub fn emit(&mut self, events: impl IntoIterator<Item = RawEnvelope>) -> &mut Self {
        self.events.extend(events);
        self
    }

    fn is_empty(&self) -> bool {
        self.handled.is_empty()
            && self.writes.is_empty()
            && self.history.is_empty()
            && self.events.is_empty()
    }
}

/// Collisions with another transaction are retried in place this many times…
const MAX_ATTEMPTS: u32 = 20;
/// …and for at most this long, so that with the database gone a request gets
/// its 503 in seconds instead of waiting out every attempt.
const MAX_TRANSACTION_TIME: Duration = Duration::from_secs(4);

/// A service's database and the outbox its events leave through. Cheap to
/// clone.
#[derive(Clone)]
pub struct Store {
    db: Database,
    outbox: Outbox,
    /// Whether units write what they [`UnitOfWork::record`].
    history: bool,
}

impl Store {
    pub fn new(db: Database, outbox: Outbox) -> Self {
        Store {
            db,
            outbox,
            history: true,
        }
    }

    /// With `false`, commits leave out the units' history records
    /// (`HISTORY_RETENTION_DAYS=0`).
    pub(crate) fn recording_history(self, history: bool) -> Self {
        Store { history, ..self }
    }

    /// Adds `history`'s lines to `lines`, those a document the unit writes
    /// anyway keeps of its order's history (an order, a reservation), so
    /// the history costs no document of its own. Nothing while the history
    /// is off.
    pub fn keep_in(&self, lines: &mut Vec<HistoryItem>, history: History) {
        if self.history {
            history.append_to(lines);
        }
    }

    /// Where the service's part of the orders' histories is read.
    pub fn history(&self) -> HistoryStore {
        HistoryStore::new(&self.db)
    }

    /// A collection, for reads and for plain single writes that emit nothing.
    pub fn collection<T: Send + Sync>(&self, name: &str) -> Collection<T> {
        self.db.collection(name)
    }

    /// Writes `unit` atomically and hands its events to the relay.
    pub async fn commit(&self, unit: UnitOfWork) -> Result<(), StoreError> {
        if unit.is_empty() {
            return Ok(());
        }
        let record = self.outbox.record(&unit.events);
        let mut session = self.db.client().start_session().await?;
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            session.start_transaction().await?;
            let written = self.write_all(&mut session, &unit, record.as_ref()).await;
            let outcome = match written {
                Ok(()) => commit_with_retry(&mut session).await,
                Err(error) => {
                    let _ = session.abort_transaction().await;
                    Err(error)
                }
            };
            match outcome {
                Ok(()) => break,
                Err(Failure::Store(error)) => return Err(error),
                Err(Failure::Collided(error)) => {
                    if attempt >= MAX_ATTEMPTS || started.elapsed() >= MAX_TRANSACTION_TIME {
                        return Err(StoreError::Unavailable(error));
                    }
                    backoff_a_little(attempt).await;
                }
            }
        }
        if let Some(record) = record {
            self.outbox.committed(record);
        }
        Ok(())
    }

    /// The unit's writes inside the session's transaction: the inbox first,
    /// so that a duplicate aborts before any other work, then each write in
    /// the order it was added, then the events (one outbox record). One round
    /// trip per step, however many documents.
    async fn write_all(
        &self,
        session: &mut ClientSession,
        unit: &UnitOfWork,
        record: Option<&OutboxRecord>,
    ) -> Result<(), Failure> {
        if !unit.handled.is_empty() {
            self.db
                .collection::<Document>(INBOX)
                .insert_many(&unit.handled)
                .session(&mut *session)
                .await
                .map_err(|e| Failure::on_insert(e, OnDuplicate::AlreadyHandled))?;
        }
        for write in &unit.writes {
            match write {
                Write::Insert {
                    collection,
                    documents,
                    on_duplicate,
                } => {
                    self.db
                        .collection::<Document>(collection)
                        .insert_many(documents)
                        .session(&mut *session)
                        .await
                        .map_err(|e| Failure::on_insert(e, *on_duplicate))?;
                }
                Write::Update {
                    collection,
                    statements,
                    expected,
                    what,
                } => {
                    let matched = update_each(&self.db, session, collection, statements).await?;
                    if matched != *expected {
                        return Err(Failure::Store(StoreError::Conflict(what)));
                    }
                }
            }
        }
        // Every order's history record of the unit in one statement.
        if self.history && !unit.history.is_empty() {
            self.db
                .collection::<Document>(HISTORY)
                .insert_many(&unit.history)
                .session(&mut *session)
                .await
                .map_err(Failure::from)?;
        }
        if let Some(record) = record {
            self.db
                .collection::<OutboxRecord>(OUTBOX)
                .insert_one(record)
                .session(&mut *session)
                .await
                .map_err(Failure::from)?;
        }
        Ok(())
    }
}

/// Why an attempt did not commit.
enum Failure {
    /// Another transaction got in the way: run the whole unit again.
    Collided(mongodb::error::Error),
    /// Final for this unit.
    Store(StoreError),
}

impl From<mongodb::error::Error> for Failure {
    fn from(error: mongodb::error::Error) -> Self {
        if error.contains_label(mongodb::error::TRANSIENT_TRANSACTION_ERROR) {
            Failure::Collided(error)
        } else {
            Failure::Store(error.into())
        }
    }
}

impl Failure {
    fn on_insert(error: mongodb::error::Error, on_duplicate: OnDuplicate) -> Self {
        if !is_duplicate_key(&error) {
            return error.into();
        }
        Failure::Store(match on_duplicate {
            OnDuplicate::AlreadyHandled => StoreError::AlreadyHandled,
            OnDuplicate::Taken(what) => StoreError::Taken(what),
            OnDuplicate::Conflict(what) => StoreError::Conflict(what),
        })
    }
}

/// Commits; a commit whose result is unknown (the connection dropped) is
/// committed again, which the server answers idempotently.
async fn commit_with_retry(session: &mut ClientSession) -> Result<(), Failure> {
    let mut tries = 0;
    loop {
        match session.commit_transaction().await {
            Ok(()) => return Ok(()),
            Err(e)
                if e.contains_label(mongodb::error::UNKNOWN_TRANSACTION_COMMIT_RESULT)
                    && tries < MAX_ATTEMPTS =>
            {
                tries += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Several statements as one `update` command. Returns how many documents
/// matched their filters, so guarded updates can tell one lost its race.
async fn update_each(
    db: &Database,
    session: &mut ClientSession,
    collection: &str,
    statements: &[Document],
) -> Result<u64, Failure> {
    let reply = db
        .run_command(doc! { "update": collection, "updates": statements, "ordered": true })
        .session(session)
        .await?;
    if let Ok(errors) = reply.get_array("writeErrors")
        && !errors.is_empty()
    {
        let duplicate = errors.iter().any(|e| {
            e.as_document()
                .and_then(|e| e.get_i32("code").ok())
                .is_some_and(|code| code == 11000)
        });
        let message = format!("{collection} update refused: {errors:?}");
        return Err(Failure::Store(if duplicate {
            StoreError::Taken("unique value")
        } else {
            StoreError::Rule(message)
        }));
    }
    Ok(count_in(reply.get("n")))
}

/// A short jittered pause so colliding transactions do not collide again.
async fn backoff_a_little(attempt: u32) {
    let ceiling_ms = (2u64 << attempt.min(6)).min(100);
    let pause = Duration::from_millis(rand::random::<u64>() % (ceiling_ms + 1));
    tokio::time::sleep(pause).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_of_one_collection_and_guard_travel_as_one_command() {
        let mut unit = UnitOfWork::new();
        unit.update(
            "orders",
            "order",
            doc! { "_id": 1 },
            doc! { "$set": { "a": 1 } },
        )
        .update(
            "orders",
            "order",
            doc! { "_id": 2 },
            doc! { "$set": { "a": 2 } },
        )
        .update(
            "products",
            "product",
            doc! { "_id": 3 },
            doc! { "$set": { "b": 1 } },
        );
        let sizes: Vec<(&str, usize)> = unit
            .writes
            .iter()
            .map(|w| match w {
                Write::Update {
                    collection,
                    statements,
                    ..
                } => (*collection, statements.len()),
                Write::Insert { collection, .. } => (*collection, 0),
            })
            .collect();
        assert_eq!(sizes, vec![("orders", 2), ("products", 1)]);
    }

    #[test]
    fn an_update_of_several_ids_is_one_statement_expecting_each_of_them() {
        let mut unit = UnitOfWork::new();
        unit.update_all("mail", "mail", ["a", "b", "c"], doc! { "$set": { "s": 1 } })
            .update(
                "mail",
                "mail",
                doc! { "_id": "d" },
                doc! { "$set": { "s": 1 } },
            )
            .update_all("mail", "mail", Vec::<&str>::new(), doc! {});
        let [
            Write::Update {
                statements,
                expected,
                ..
            },
        ] = unit.writes.as_slice()
        else {
            panic!("one command");
        };
        assert_eq!((statements.len(), *expected), (2, 4));
        assert_eq!(
            statements[0].get_document("q").unwrap(),
            &doc! { "_id": { "$in": ["a", "b", "c"] } }
        );
        assert_eq!(statements[0].get_bool("multi"), Ok(true));
    }

    #[test]
    fn history_recorded_between_updates_of_a_collection_leaves_them_one_command() {
        let mut unit = UnitOfWork::new();
        for id in ["a", "b"] {
            unit.update(
                "orders",
                "order",
                doc! { "_id": id },
                doc! { "$set": { "s": 1 } },
            )
            .record(History::of("order-service", id))
            .unwrap();
        }
        let [Write::Update { statements, .. }] = unit.writes.as_slice() else {
            panic!("one command");
        };
        assert_eq!(statements.len(), 2);
        assert_eq!(unit.history.len(), 2);
    }

    #[test]
    fn an_insert_of_nothing_writes_nothing_and_an_empty_unit_is_empty() {
        let mut unit = UnitOfWork::new();
        unit.insert::<Document>("orders", [], OnDuplicate::Taken("x"))
            .unwrap();
        assert!(unit.is_empty());
    }
}
