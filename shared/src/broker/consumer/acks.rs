//! Acks for one channel, sent as few frames as the order of completion
//! allows. A committed batch settles many deliveries at once (the batch
//! writers commit everything queued as one transaction); instead of a frame
//! each, they share one `basic.ack` with `multiple`, which acks every
//! delivery up to its tag. That is only right for tags whose effect is
//! durable, so it goes no further than the oldest delivery still in hand. A
//! done delivery held back behind a slow one that long is acked alone
//! after [`HOLD_BACK`], so one slow handler does not fill the prefetch
//! window.
//!
//! One task sends every ack of the channel, in order, so no ack can name a
//! tag an earlier one already covered (the broker closes the channel on an
//! unknown tag).

use std::{
    collections::BTreeSet,
    sync::Mutex,
    time::{Duration, Instant},
};

use lapin::{
    Channel,
    message::Delivery,
    options::{BasicAckOptions, BasicNackOptions},
};
use tokio::sync::Notify;

use super::{ConsumerError, STEP_LIMIT, Settled, Step, within};

/// How long a done delivery may wait for an older one to share its ack.
/// Batches commit every few milliseconds under load.
const HOLD_BACK: Duration = Duration::from_millis(20);

/// Which delivery tags may be acked: pure bookkeeping, no I/O.
#[derive(Debug, Default)]
struct AckWindow {
    /// Received and not yet settled either way.
    in_hand: BTreeSet<u64>,
    /// Durable and not yet acked.
    done: BTreeSet<u64>,
    /// Since when the oldest of `done` has waited (roughly: since the last
    /// ack left some behind).
    waiting_since: Option<Instant>,
}

impl AckWindow {
    fn received(&mut self, tag: u64) {
        self.in_hand.insert(tag);
    }

    /// `tag`'s effect is durable: it may be acked.
    fn done(&mut self, tag: u64, now: Instant) {
        self.in_hand.remove(&tag);
        self.done.insert(tag);
        self.waiting_since.get_or_insert(now);
    }

    /// `tag` was handed back with a nack of its own: it must not be acked,
    /// and no longer holds back the tags after it.
    fn requeued(&mut self, tag: u64) {
        self.in_hand.remove(&tag);
    }

    /// The tag to ack with `multiple` now, if any: the highest done tag
    /// below every delivery still in hand. Always a done tag, never a
    /// requeued one, so the broker still knows it.
    fn ackable(&self) -> Option<u64> {
        let oldest_in_hand = self.in_hand.first().copied().unwrap_or(u64::MAX);
        self.done.range(..oldest_in_hand).next_back().copied()
    }

    /// An ack with `multiple` for `upto` went out.
    fn acked(&mut self, upto: u64, now: Instant) {
        self.done = self.done.split_off(&(upto + 1));
        self.waiting_since = (!self.done.is_empty()).then_some(now);
    }

    /// When the done tags held back behind a delivery in hand should be
    /// acked one by one.
    fn hold_back_ends(&self) -> Option<Instant> {
        self.waiting_since.map(|since| since + HOLD_BACK)
    }

    /// Takes the done tags out, to be acked one by one.
    fn take_done(&mut self) -> BTreeSet<u64> {
        self.waiting_since = None;
        std::mem::take(&mut self.done)
    }
}

/// The acks of one consuming channel. [`Acks::send`] runs beside the
/// deliveries and [`Acks::flush`] after them.
pub(crate) struct Acks {
    channel: Channel,
    window: Mutex<AckWindow>,
    wake: Notify,
}

impl Acks {
    pub(crate) fn new(channel: Channel) -> Self {
        Acks {
            channel,
            window: Mutex::default(),
            wake: Notify::new(),
        }
    }

    /// Called for each delivery in the order they arrive, before any of
    /// them is handled: until then a later ack could cover it.
    pub(crate) fn received(&self, delivery: &Delivery) {
        self.lock().received(delivery.delivery_tag);
    }

    /// Acks `delivery`, whose effect is durable: the ack goes out with the
    /// next frame [`Acks::send`] writes, and a failure to write it breaks
    /// the consumer from there. Until then the broker keeps the delivery,
    /// and redelivers it if the channel dies.
    pub(crate) fn ack(&self, delivery: &Delivery) -> Settled {
        self.lock().done(delivery.delivery_tag, Instant::now());
        self.wake.notify_one();
        Settled::Acked
    }

    /// Hands `delivery` back to the queue with a nack of its own.
    pub(crate) async fn requeue(&self, delivery: &Delivery) -> Result<Settled, ConsumerError> {
        within(
            Step::Ack,
            STEP_LIMIT,
            delivery.nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            }),
        )
        .await?;
        // Only now: before the nack went out, an ack with `multiple` past
        // this tag would have taken it.
        self.lock().requeued(delivery.delivery_tag);
        self.wake.notify_one();
        Ok(Settled::Requeued)
    }

    /// Sends the acks until one fails: whenever deliveries are settled, one
    /// frame for everything that became ackable. Deliveries settled
    /// together (one committed batch) are all marked before this runs
    /// again, so they share the frame.
    pub(crate) async fn send(&self) -> Result<(), ConsumerError> {
        loop {
            let hold_back_ends = self.lock().hold_back_ends();
            match hold_back_ends {
                None => self.wake.notified().await,
                Some(ends) => {
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep_until(ends.into()) => {
                            self.ack_ready().await?;
                            self.ack_each_done().await?;
                            continue;
                        }
                    }
                }
            }
            self.ack_ready().await?;
        }
    }

    /// Acks what the deliveries left done once they have all ended (a
    /// shutdown, a broken channel): nothing is in hand any more.
    pub(crate) async fn flush(&self) -> Result<(), ConsumerError> {
        self.ack_ready().await
    }

    async fn ack_ready(&self) -> Result<(), ConsumerError> {
        let Some(upto) = self.lock().ackable() else {
            return Ok(());
        };
        self.basic_ack(upto, true).await?;
        self.lock().acked(upto, Instant::now());
        Ok(())
    }

    /// Acks each done delivery alone: they waited out [`HOLD_BACK`] behind
    /// an older one still in hand.
    async fn ack_each_done(&self) -> Result<(), ConsumerError> {
        let held_back = self.lock().take_done();
        for tag in held_back {
            self.basic_ack(tag, false).await?;
        }
        Ok(())
    }

    /// One `basic.ack` frame for `tag` (and every tag before it with
    /// `multiple`), within the step limit.
    async fn basic_ack(&self, tag: u64, multiple: bool) -> Result<(), ConsumerError> {
        within(
            Step::Ack,
            STEP_LIMIT,
            self.channel.basic_ack(tag, BasicAckOptions { multiple }),
        )
        .await?;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AckWindow> {
        self.window.lock().expect("poisoned")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::{AckWindow, HOLD_BACK};

    fn window(received: impl IntoIterator<Item = u64>) -> AckWindow {
        let mut window = AckWindow::default();
        received.into_iter().for_each(|tag| window.received(tag));
        window
    }

    #[test]
    fn deliveries_done_together_share_one_ack() {
        let (mut window, now) = (window(1..=4), Instant::now());
        for tag in [2, 1, 4, 3] {
            window.done(tag, now);
        }
        assert_eq!(window.ackable(), Some(4));
        window.acked(4, now);
        assert_eq!(window.ackable(), None);
        assert_eq!(window.hold_back_ends(), None, "nothing waits");
    }

    #[test]
    fn a_delivery_in_hand_holds_back_the_acks_after_it() {
        let (mut window, now) = (window(1..=4), Instant::now());
        window.done(1, now);
        window.done(3, now);
        window.done(4, now);
        assert_eq!(window.ackable(), Some(1));
        window.acked(1, now);
        assert_eq!(window.ackable(), None, "2 is still in hand");
        assert_eq!(window.hold_back_ends(), Some(now + HOLD_BACK));
        window.done(2, now);
        assert_eq!(window.ackable(), Some(4));
    }

    #[test]
    fn held_back_deliveries_are_taken_out_to_be_acked_alone() {
        let (mut window, now) = (window(1..=3), Instant::now());
        window.done(2, now);
        window.done(3, now);
        assert_eq!(window.ackable(), None, "1 is in hand");
        assert_eq!(window.take_done().into_iter().collect::<Vec<_>>(), [2, 3]);
        assert_eq!(window.hold_back_ends(), None);
        window.done(1, now);
        assert_eq!(window.ackable(), Some(1), "not 2 or 3 again");
    }

    #[test]
    fn nothing_is_acked_twice_or_before_it_is_done() {
        let (mut window, now) = (window(1..=3), Instant::now());
        window.done(1, now);
        window.acked(1, now);
        window.received(4);
        assert_eq!(window.ackable(), None);
    }

    #[test]
    fn the_ack_names_a_done_tag_never_a_requeued_one() {
        let (mut window, now) = (window(1..=4), Instant::now());
        window.done(1, now);
        window.requeued(2);
        assert_eq!(
            window.ackable(),
            Some(1),
            "not 2: the broker no longer knows it"
        );
        window.acked(1, now);
        assert_eq!(window.ackable(), None, "a requeued tag alone acks nothing");
        window.done(4, now);
        assert_eq!(window.ackable(), None, "3 is in hand");
        window.requeued(3);
        assert_eq!(window.ackable(), Some(4));
    }
}
