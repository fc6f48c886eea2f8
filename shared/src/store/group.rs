//! Group commit. The database charges per command far more than per
//! document (`secantusd-rs`: ~200 µs of server CPU for an `insert` of one
//! document, ~20 µs per document in an `insert` of ten), so writes that
//! arrive together should travel together. Callers submit one item each and
//! wait; a single writer task takes everything queued at that moment, writes
//! it as one batch and answers each caller. A caller alone goes at once (no
//! timer, so no added latency when idle); under load, callers that arrive
//! while a batch is being written share the next one.

use std::{
    fmt::Display,
    future::Future,
    sync::{Arc, Weak},
};

use tokio::sync::{mpsc, oneshot};

/// What every writer of ours answers: whether the item's write committed.
pub type Written = Result<(), mongodb::error::Error>;

/// The writer task ended (it panicked), so the item's fate is unknown.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the batch writer stopped")]
pub struct WriterGone;

type Queued<T, R> = (T, oneshot::Sender<R>);

pub struct GroupCommit<T, R> {
    queue: mpsc::Sender<Queued<T, R>>,
}

impl<T: Send + 'static, R: Send + 'static> GroupCommit<T, R> {
    /// Starts the writer. `write` gets up to `max_batch` items and returns
    /// one result per item, in the same order. The task ends when the last
    /// `GroupCommit` handle is dropped, after the batch in hand.
    pub fn spawn<F, Fut>(max_batch: usize, write: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<R>> + Send,
    {
        let (queue, mut queued) = mpsc::channel::<Queued<T, R>>(max_batch * 4);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(max_batch);
            while queued.recv_many(&mut batch, max_batch).await > 0 {
                let (items, replies): (Vec<T>, Vec<_>) = batch.drain(..).unzip();
                let results = write(items).await;
                debug_assert_eq!(results.len(), replies.len(), "one result per item");
                // A caller that gave up waiting is simply not answered.
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
        });
        GroupCommit { queue }
    }

    /// A writer that calls into `owner`, for a store that keeps its writers
    /// in its own fields (built with `Arc::new_cyclic`): the owner lives as
    /// long as anyone can submit, and dropping it ends the writer.
    pub fn spawn_in<S, F, Fut>(owner: &Weak<S>, max_batch: usize, write: F) -> Self
    where
        S: Send + Sync + 'static,
        F: Fn(Arc<S>, Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<R>> + Send,
    {
        let owner = owner.clone();
        Self::spawn(max_batch, move |batch| {
            write(owner.upgrade().expect("the owner holds its writer"), batch)
        })
    }

    /// Queues `item` for the next batch and waits for its result.
    pub async fn submit(&self, item: T) -> Result<R, WriterGone> {
        let (reply, result) = oneshot::channel();
        self.queue
            .send((item, reply))
            .await
            .map_err(|_| WriterGone)?;
        result.await.map_err(|_| WriterGone)
    }
}

impl<T: Send + 'static> GroupCommit<T, Written> {
    /// Queues `item` and waits for its write; a stopped writer is a database
    /// error like any other, so callers treat it as transient.
    pub async fn write(&self, item: T) -> Written {
        self.submit(item)
            .await
            .unwrap_or_else(|gone| Err(mongodb::error::Error::custom(gone)))
    }
}

/// Writes `batch` together; if that fails, writes each item on its own, so
/// that one item's trouble (an event handled before, a broken rule, a lost
/// race) stays its own and the rest of the batch still goes through.
pub async fn one_by_one_on_failure<'a, T, E, F, Fut>(batch: &'a [T], write: F) -> Vec<Result<(), E>>
where
    F: Fn(&'a [T]) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    match write(batch).await {
        Ok(()) => batch.iter().map(|_| Ok(())).collect(),
        Err(error) if batch.len() == 1 => vec![Err(error)],
        Err(error) => {
            tracing::debug!(%error, items = batch.len(), "batch failed; writing one by one");
            let mut results = Vec::with_capacity(batch.len());
            for one in batch.chunks(1) {
                results.push(write(one).await);
            }
            results
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[tokio::test]
    async fn a_lone_caller_is_written_at_once_and_answered() {
        let group = GroupCommit::spawn(8, |items: Vec<u32>| async move {
            items.into_iter().map(|i| i * 10).collect()
        });
        assert_eq!(group.submit(4).await.unwrap(), 40);
    }

    #[tokio::test]
    async fn callers_waiting_together_share_a_batch_and_each_gets_its_own_result() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        // The first batch blocks until every caller is queued behind it.
        let (open, gate) = tokio::sync::watch::channel(false);
        let group = {
            let sizes = sizes.clone();
            Arc::new(GroupCommit::spawn(4, move |items: Vec<u32>| {
                let sizes = sizes.clone();
                let mut gate = gate.clone();
                async move {
                    sizes.lock().unwrap().push(items.len());
                    gate.wait_for(|open| *open).await.unwrap();
                    items.into_iter().map(|i| i + 100).collect()
                }
            }))
        };
        let callers: Vec<_> = (0..7)
            .map(|i| {
                let group = group.clone();
                tokio::spawn(async move { (i, group.submit(i).await.unwrap()) })
            })
            .collect();
        // Let every caller reach the writer or its queue before it goes on.
        let queued =
            |group: &GroupCommit<u32, u32>| group.queue.max_capacity() - group.queue.capacity();
        while sizes.lock().unwrap().iter().sum::<usize>() + queued(&group) < 7 {
            tokio::task::yield_now().await;
        }
        open.send(true).unwrap();
        for caller in callers {
            let (i, result) = caller.await.unwrap();
            assert_eq!(result, i + 100);
        }
        let sizes = sizes.lock().unwrap().clone();
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
    async fn a_failed_batch_is_retried_item_by_item_and_only_the_bad_one_fails() {
        let calls = Mutex::new(Vec::new());
        let results = one_by_one_on_failure(&[1, 2, 3], |items: &[i32]| {
            calls.lock().unwrap().push(items.to_vec());
            let bad = items.contains(&2);
            async move { if bad { Err("2 is bad") } else { Ok(()) } }
        })
        .await;
        assert_eq!(results, vec![Ok(()), Err("2 is bad"), Ok(())]);
        assert_eq!(
            *calls.lock().unwrap(),
            vec![vec![1, 2, 3], vec![1], vec![2], vec![3]]
        );

        let whole = one_by_one_on_failure(&[1, 3], |_: &[i32]| async { Ok::<(), &str>(()) }).await;
        assert_eq!(whole, vec![Ok(()), Ok(())]);
    }

    #[tokio::test]
    async fn a_writer_that_panics_answers_writer_gone() {
        let group = GroupCommit::spawn(2, |_items: Vec<u32>| async move {
            panic!("boom");
            #[allow(unreachable_code)]
            Vec::<u32>::new()
        });
        assert!(group.submit(1).await.is_err());
    }
}
