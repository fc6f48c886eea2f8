//! Group commit. The database charges per command far more than per
//! document (`secantusd-rs`: ~200 µs of server CPU for an `insert` of one
//! document, ~20 µs per document in an `insert` of ten), so writes that
//! arrive together should travel together. Callers hand one item each to a
//! [`Batcher`] and wait; its task takes everything queued at that moment,
//! writes it as one batch and answers each caller. A caller alone goes at
//! once (no timer, so no added latency when idle); under load, callers that
//! arrive while a batch is being written share the next one.
//!
//! If a batch fails as a whole, each item is written again on its own, so
//! that one item's trouble (an event handled before, a broken rule, a lost
//! race) stays its own and the rest of the batch still goes through.
//!
//! A write that nobody is in a hurry for can wait a little for company
//! ([`Batcher::start_lingering`]): at low rates no two callers meet
//! otherwise, and each pays a commit of its own.
//!
//! Reads on the hot path batch the same way ([`ReadBatch`]): one query
//! answers everyone who asked while the last one ran.

use std::{future::Future, time::Duration};

use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};
use tokio_util::task::TaskTracker;

use super::StoreError;

/// Writes a batch of items all together or not at all.
pub trait WriteBatch: Send + Sync + 'static {
    type Item: Send + Sync + 'static;

    fn write(&self, batch: &[Self::Item]) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Answers a batch of questions with one read: one answer per item, in order.
pub trait ReadBatch: Send + Sync + 'static {
    type Item: Send + Sync + 'static;
    type Answer: Send + 'static;

    fn read(
        &self,
        batch: &[Self::Item],
    ) -> impl Future<Output = Result<Vec<Self::Answer>, StoreError>> + Send;
}

type Queued<T, A> = (T, oneshot::Sender<Result<A, StoreError>>);

/// The handle callers write (or ask) through. Its task ends once every
/// handle is dropped and the last batch is done, so a service that waits for
/// its task tracker never stops with a write half done.
pub struct Batcher<T, A = ()> {
    queue: mpsc::Sender<Queued<T, A>>,
}

impl<T: Send + Sync + 'static> Batcher<T> {
    /// Starts the writer on `tasks`; batches hold at most `max_batch` items.
    pub fn start<W: WriteBatch<Item = T>>(
        tasks: &TaskTracker,
        max_batch: usize,
        writer: W,
    ) -> Self {
        Self::serve(tasks, max_batch, Duration::ZERO, Writes(writer))
    }

    /// As [`Batcher::start`], but a batch that is not full waits up to
    /// `linger` after its first item for more: each caller waits that much
    /// longer, and shares a commit with those who came meanwhile.
    pub fn start_lingering<W: WriteBatch<Item = T>>(
        tasks: &TaskTracker,
        max_batch: usize,
        linger: Duration,
        writer: W,
    ) -> Self {
        Self::serve(tasks, max_batch, linger, Writes(writer))
    }

    /// Queues `item` for the next batch and waits for its write.
    pub async fn write(&self, item: T) -> Result<(), StoreError> {
        self.ask(item).await
    }
}

impl<T: Send + Sync + 'static, A: Send + 'static> Batcher<T, A> {
    /// Starts the reader on `tasks`; batches hold at most `max_batch` items.
    /// A failed read fails every question in its batch.
    pub fn start_reads<R: ReadBatch<Item = T, Answer = A>>(
        tasks: &TaskTracker,
        max_batch: usize,
        reader: R,
    ) -> Self {
        Self::serve(tasks, max_batch, Duration::ZERO, Reads(reader))
    }

    /// Queues `item` for the next batch and waits for its answer.
    pub async fn ask(&self, item: T) -> Result<A, StoreError> {
        let (reply, result) = oneshot::channel();
        self.queue
            .send((item, reply))
            .await
            .map_err(|_| StoreError::WriterGone)?;
        result.await.map_err(|_| StoreError::WriterGone)?
    }

    /// The task: takes everything queued (and what comes within `linger`,
    /// up to a full batch), has `handle` answer it, replies.
    fn serve(
        tasks: &TaskTracker,
        max_batch: usize,
        linger: Duration,
        handler: impl Handle<T, A>,
    ) -> Self {
        let (queue, mut queued) = mpsc::channel::<Queued<T, A>>(max_batch * 4);
        tasks.spawn(async move {
            let mut batch = Vec::with_capacity(max_batch);
            while queued.recv_many(&mut batch, max_batch).await > 0 {
                let until = Instant::now() + linger;
                while !linger.is_zero() && batch.len() < max_batch {
                    let room = max_batch - batch.len();
                    // Time up, or every handle gone: write what there is.
                    match tokio::time::timeout_at(until, queued.recv_many(&mut batch, room)).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                let (items, replies): (Vec<T>, Vec<_>) = batch.drain(..).unzip();
                let results = handler.handle(&items).await;
                // A caller that gave up waiting is simply not answered.
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
        });
        Batcher { queue }
    }
}

/// What the task does with a batch: one result per item, in order.
trait Handle<T, A>: Send + Sync + 'static {
    fn handle(&self, items: &[T]) -> impl Future<Output = Vec<Result<A, StoreError>>> + Send;
}

struct Writes<W>(W);

impl<W: WriteBatch> Handle<W::Item, ()> for Writes<W> {
    async fn handle(&self, items: &[W::Item]) -> Vec<Result<(), StoreError>> {
        write_or_one_by_one(&self.0, items).await
    }
}

struct Reads<R>(R);

impl<R: ReadBatch> Handle<R::Item, R::Answer> for Reads<R> {
    async fn handle(&self, items: &[R::Item]) -> Vec<Result<R::Answer, StoreError>> {
        match self.0.read(items).await {
            Ok(answers) if answers.len() == items.len() => answers.into_iter().map(Ok).collect(),
            Ok(answers) => {
                let bug = format!("{} answers to {} questions", answers.len(), items.len());
                items
                    .iter()
                    .map(|_| Err(StoreError::Rule(bug.clone())))
                    .collect()
            }
            Err(error) => items.iter().map(|_| Err(error.clone())).collect(),
        }
    }
}

async fn write_or_one_by_one<W: WriteBatch>(
    writer: &W,
    items: &[W::Item],
) -> Vec<Result<(), StoreError>> {
    match writer.write(items).await {
        Ok(()) => items.iter().map(|_| Ok(())).collect(),
        Err(error) if items.len() == 1 => vec![Err(error)],
        Err(error) => {
            tracing::debug!(%error, items = items.len(), "batch failed; writing one by one");
            let mut results = Vec::with_capacity(items.len());
            for one in items.chunks(1) {
                results.push(writer.write(one).await);
            }
            results
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Records each batch it is given; fails any batch holding a 2.
    #[derive(Clone, Default)]
    struct Recorder {
        batches: Arc<Mutex<Vec<Vec<u32>>>>,
        gate: Option<tokio::sync::watch::Receiver<bool>>,
    }

    impl WriteBatch for Recorder {
        type Item = u32;

        async fn write(&self, batch: &[u32]) -> Result<(), StoreError> {
            self.batches.lock().unwrap().push(batch.to_vec());
            if let Some(mut gate) = self.gate.clone() {
                gate.wait_for(|open| *open).await.unwrap();
            }
            if batch.contains(&2) {
                Err(StoreError::Rule("2 is bad".into()))
            } else {
                Ok(())
            }
        }
    }

    #[tokio::test]
    async fn a_lone_caller_is_written_at_once_and_answered() {
        let writer = Recorder::default();
        let batcher = Batcher::start(&TaskTracker::new(), 8, writer.clone());
        batcher.write(4).await.unwrap();
        assert_eq!(*writer.batches.lock().unwrap(), vec![vec![4]]);
    }

    #[tokio::test]
    async fn callers_waiting_together_share_a_batch_capped_at_the_maximum() {
        // The first batch blocks until every caller is queued behind it.
        let (open, gate) = tokio::sync::watch::channel(false);
        let writer = Recorder {
            gate: Some(gate),
            ..Recorder::default()
        };
        let batcher = Arc::new(Batcher::start(&TaskTracker::new(), 4, writer.clone()));
        let callers: Vec<_> = [1, 3, 4, 5, 6, 7, 8]
            .into_iter()
            .map(|i| {
                let batcher = batcher.clone();
                tokio::spawn(async move { batcher.write(i).await })
            })
            .collect();
        let queued = |b: &Batcher<u32>| b.queue.max_capacity() - b.queue.capacity();
        while writer
            .batches
            .lock()
            .unwrap()
            .iter()
            .map(Vec::len)
            .sum::<usize>()
            + queued(&batcher)
            < 7
        {
            tokio::task::yield_now().await;
        }
        open.send(true).unwrap();
        for caller in callers {
            caller.await.unwrap().unwrap();
        }
        let sizes: Vec<usize> = writer
            .batches
            .lock()
            .unwrap()
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(sizes.iter().sum::<usize>(), 7);
        assert!(
            sizes.iter().all(|&n| n <= 4),
            "batches capped at 4: {sizes:?}"
        );
        assert!(
            sizes.len() <= 3,
            "callers were batched, not one by one: {sizes:?}"
        );
    }

    #[tokio::test]
    async fn a_lingering_batch_takes_callers_who_come_while_it_waits_and_goes_when_full() {
        // An hour's linger: the batch can only go because it is full.
        let writer = Recorder::default();
        let batcher = Arc::new(Batcher::start_lingering(
            &TaskTracker::new(),
            3,
            std::time::Duration::from_secs(3600),
            writer.clone(),
        ));
        let write = |i: u32| {
            let batcher = batcher.clone();
            tokio::spawn(async move { batcher.write(i).await })
        };
        let first = write(1);
        // The task has taken 1 and waits for company.
        while batcher.queue.capacity() < batcher.queue.max_capacity() {
            tokio::task::yield_now().await;
        }
        let later = [write(3), write(4)];
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            first.await.unwrap().unwrap();
            for caller in later {
                caller.await.unwrap().unwrap();
            }
        })
        .await
        .expect("a full batch is written without waiting out its linger");
        let mut batches = writer.batches.lock().unwrap().clone();
        batches[0].sort();
        assert_eq!(batches, vec![vec![1, 3, 4]]);
    }

    #[tokio::test]
    async fn a_lingering_batch_that_stays_short_is_written_when_its_linger_is_up() {
        let writer = Recorder::default();
        let batcher = Batcher::start_lingering(
            &TaskTracker::new(),
            8,
            std::time::Duration::from_millis(20),
            writer.clone(),
        );
        tokio::time::timeout(std::time::Duration::from_secs(5), batcher.write(4))
            .await
            .expect("written once the linger was up")
            .unwrap();
        assert_eq!(*writer.batches.lock().unwrap(), vec![vec![4]]);
    }

    #[tokio::test]
    async fn a_failed_batch_is_written_item_by_item_and_only_the_bad_one_fails() {
        let writer = Recorder::default();
        let results = write_or_one_by_one(&writer, &[1, 2, 3]).await;
        assert!(results[0].is_ok() && results[2].is_ok());
        assert!(matches!(&results[1], Err(StoreError::Rule(m)) if m == "2 is bad"));
        assert_eq!(
            *writer.batches.lock().unwrap(),
            vec![vec![1, 2, 3], vec![1], vec![2], vec![3]]
        );
    }

    #[tokio::test]
    async fn the_writer_task_is_tracked_and_ends_when_the_last_handle_goes() {
        let tasks = TaskTracker::new();
        let batcher = Batcher::start(&tasks, 2, Recorder::default());
        batcher.write(1).await.unwrap();
        tasks.close();
        assert!(!tasks.is_empty(), "the writer runs while a handle exists");
        drop(batcher);
        tokio::time::timeout(std::time::Duration::from_secs(5), tasks.wait())
            .await
            .expect("the writer ended");
    }

    /// Answers ten times each number; refuses a batch holding a 2.
    struct Tens;

    impl ReadBatch for Tens {
        type Item = u32;
        type Answer = u32;

        async fn read(&self, batch: &[u32]) -> Result<Vec<u32>, StoreError> {
            if batch.contains(&2) {
                return Err(StoreError::Rule("2 is bad".into()));
            }
            Ok(batch.iter().map(|n| n * 10).collect())
        }
    }

    #[tokio::test]
    async fn each_asker_gets_its_own_answer_and_a_failed_read_fails_its_batch() {
        let batcher = Arc::new(Batcher::start_reads(&TaskTracker::new(), 8, Tens));
        let askers: Vec<_> = [1, 3, 4, 5]
            .into_iter()
            .map(|i| {
                let batcher = batcher.clone();
                tokio::spawn(async move { (i, batcher.ask(i).await) })
            })
            .collect();
        for asker in askers {
            let (i, answer) = asker.await.unwrap();
            assert_eq!(answer.unwrap(), i * 10);
        }
        assert!(matches!(batcher.ask(2).await, Err(StoreError::Rule(m)) if m == "2 is bad"));
    }

    struct Panics;

    impl WriteBatch for Panics {
        type Item = u32;

        async fn write(&self, _batch: &[u32]) -> Result<(), StoreError> {
            panic!("boom")
        }
    }

    #[tokio::test]
    async fn a_writer_that_panics_answers_writer_gone() {
        let batcher = Batcher::start(&TaskTracker::new(), 2, Panics);
        assert!(matches!(
            batcher.write(1).await,
            Err(StoreError::WriterGone)
        ));
    }
}
