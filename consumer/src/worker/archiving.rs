//! The worker's path with `--output archive`.
//!
//! Events are rendered into the open segment and held, unacknowledged, until the store has
//! confirmed the segment's object; then all of them are acked. While held they are kept alive
//! with in-progress acks every half `ack_wait`, so that a segment open for minutes does not
//! make the server redeliver its events. A segment closes at its line count, size or age, and
//! also when the pod holds nearly as many events as the consumer's `max_ack_pending` allows
//! (the server would deliver no more until some are acked). A failed upload is retried with
//! backoff, its events still held; only at shutdown, after `--archive-shutdown-timeout`, are
//! they handed back (naked) for another pod to store.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::Config as ConsumerConfig;
use async_nats::jetstream::consumer::pull::{MessagesError, Stream};
use futures::StreamExt;
use tokio::time::{sleep, sleep_until};

use super::{InFlight, StreamEnd, Worker};
use crate::archive::segment::CloseReason;
use crate::archive::store::PutError;
use crate::backoff::Backoff;
use crate::integrity::head::SegmentEnd;

const UPLOAD_BACKOFF_BASE: Duration = Duration::from_millis(500);
const UPLOAD_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// When nothing is held, the loop only wakes for messages and shutdown.
const IDLE_WAKE: Duration = Duration::from_secs(3600);
/// Without a `max_ack_pending` on the consumer, how many batches may wait for a full segment
/// (beyond that, what the client buffers is not kept alive and may be redelivered).
const WAITING_WITHOUT_LIMIT: usize = 4;

/// How many events a pod may hold, and how often they are kept alive; from the bound
/// consumer's configuration.
pub(super) struct Hold {
    limit: u64,
    /// How many events the pod reads at most (held and waiting): what the server delivers
    /// anyway with a `max_ack_pending`, a few batches beyond the segments without one.
    read_limit: u64,
    keep_alive: Duration,
}

impl Default for Hold {
    fn default() -> Self {
        Self {
            limit: u64::MAX,
            read_limit: u64::MAX,
            keep_alive: Duration::from_secs(15),
        }
    }
}

impl Hold {
    pub(super) fn new(config: &ConsumerConfig, batch: u64) -> Self {
        // Room for one more pull below max_ack_pending: reaching it would stall delivery
        // until the segment closes by age.
        let (limit, read_limit) = match u64::try_from(config.max_ack_pending) {
            Ok(max @ 1..) => (max.saturating_sub(batch).max(1), max),
            _ => (u64::MAX, u64::MAX),
        };
        let ack_wait = if config.ack_wait.is_zero() {
            Duration::from_secs(30)
        } else {
            config.ack_wait
        };
        Self {
            limit,
            read_limit,
            keep_alive: (ack_wait / 2).max(Duration::from_millis(200)),
        }
    }
}

impl<W: std::io::Write + Send> Worker<W> {
    /// Reads from the subscription into the segment until the subscription ends, storing the
    /// segment whenever it closes; the flag says whether any event was acked. At shutdown the
    /// subscription is dropped (the worker stops pulling) before anything is handed back, so
    /// that what is naked goes to another pod; the caller stores the last segment.
    pub(super) async fn pump_archive(
        &mut self,
        subscription: &mut Option<Stream>,
        held: &mut Vec<InFlight>,
        hold: &Hold,
    ) -> (StreamEnd, bool) {
        let batch = self.pull.batch as usize;
        let mut progressed = false;
        loop {
            let wake = self.wake_at(held);
            let Some(messages) = subscription.as_mut() else {
                return (StreamEnd::Shutdown, progressed);
            };
            let next = tokio::select! {
                biased;
                _ = self.shutdown.wait_for(|stop| *stop) => None,
                _ = sleep_until(wake.into()) => Some(None),
                next = messages.next() => Some(Some(next)),
            };
            let mut end = None;
            match next {
                None => {
                    // What has already arrived goes into the last segment, which the worker
                    // stores once it has stopped pulling; the rest waits to be handed back.
                    if self.waiting.is_empty() {
                        let up_to = held.len() + batch;
                        self.take_ready_into_segment(messages, held, hold, up_to, &mut end);
                    }
                    self.park_ready(messages);
                    *subscription = None;
                    return (StreamEnd::Shutdown, progressed);
                }
                Some(None) => {}
                Some(Some(None)) => return (StreamEnd::Closed, progressed),
                Some(Some(Some(Err(err)))) => return (StreamEnd::Failed(err), progressed),
                Some(Some(Some(Ok(message))))
                    if self.waiting.is_empty() && self.close_reason(held, hold).is_none() =>
                {
                    self.accept(message, held);
                    let up_to = held.len() + batch - 1;
                    self.take_ready_into_segment(messages, held, hold, up_to, &mut end);
                }
                // Behind what already waits, in the order delivered.
                Some(Some(Some(Ok(message)))) => self.waiting.push_back(message),
            }
            self.take_waiting(held, hold);
            self.metrics
                .set_archive_held(held.len() + self.waiting.len());
            self.keep_alive(held, hold).await;
            // Events taken while a segment was being stored may already close the next one.
            while let Some(reason) = self.close_reason(held, hold) {
                let (stored, stream_end) = self.store_held(held, reason, hold, subscription).await;
                progressed |= stored;
                end = end.or(stream_end);
                if !stored || end.is_some() {
                    break;
                }
                self.take_waiting(held, hold);
            }
            if self.shutting_down() {
                // Shutdown began while a segment was being stored (which dropped the
                // subscription), or just after: the loop's first branch stops pulling.
                continue;
            }
            if let Some(end) = end {
                return (end, progressed);
            }
        }
    }

    /// Takes what has already arrived into the open segment while it has room, so that a
    /// segment closes at exactly its line count (not up to a batch beyond it); what does not
    /// fit is read into the next segment after this one is stored.
    fn take_ready_into_segment(
        &mut self,
        messages: &mut Stream,
        held: &mut Vec<InFlight>,
        hold: &Hold,
        up_to: usize,
        end: &mut Option<StreamEnd>,
    ) {
        while held.len() < up_to && self.close_reason(held, hold).is_none() {
            let before = held.len();
            self.take_ready(messages, held, before + 1, end);
            if held.len() == before {
                return;
            }
        }
    }

    /// Renders what waits into the open segment, as far as it has room.
    fn take_waiting(&mut self, held: &mut Vec<InFlight>, hold: &Hold) {
        while self.close_reason(held, hold).is_none()
            && let Some(message) = self.waiting.pop_front()
        {
            self.accept(message, held);
        }
        self.metrics
            .set_archive_held(held.len() + self.waiting.len());
    }

    /// Whether more may be read from the subscription now.
    fn may_read(&self, held: &[InFlight], hold: &Hold) -> bool {
        let read = held.len() + self.waiting.len();
        u64::try_from(read).unwrap_or(u64::MAX) < hold.read_limit
            && (hold.read_limit != u64::MAX
                || self.waiting.len() < WAITING_WITHOUT_LIMIT * self.pull.batch as usize)
    }

    /// Whether the open segment must be stored now (it is empty while none is open).
    fn close_reason(&self, held: &[InFlight], hold: &Hold) -> Option<CloseReason> {
        let archive = self.archive.as_ref()?;
        let held_events = u64::try_from(held.len()).unwrap_or(u64::MAX);
        archive.close_reason(hold.limit).or_else(|| {
            (held_events >= hold.limit && archive.deadline().is_some())
                .then_some(CloseReason::AckPending)
        })
    }

    /// The next time the loop must act without a message: the segment's age, or the held
    /// events' next keep-alive.
    fn wake_at(&self, held: &[InFlight]) -> Instant {
        let deadline = self.archive.as_ref().and_then(|archive| archive.deadline());
        let keep_alive = self
            .keep_alive_due
            .filter(|_| !held.is_empty() || !self.waiting.is_empty());
        [deadline, keep_alive]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(|| Instant::now() + IDLE_WAKE)
    }

    /// Sends in-progress acks for the held events when due, and sets when they are due next.
    /// Events held since the last ones were sent are kept alive early with the rest.
    async fn keep_alive(&mut self, held: &[InFlight], hold: &Hold) {
        if held.is_empty() && self.waiting.is_empty() {
            self.keep_alive_due = None;
            return;
        }
        let now = Instant::now();
        let due = *self.keep_alive_due.get_or_insert(now + hold.keep_alive);
        if now < due {
            return;
        }
        let mut failed = 0usize;
        for event in held {
            if event.acker.ack_with(AckKind::Progress).await.is_err() {
                failed += 1;
            }
        }
        for message in &self.waiting {
            if message.ack_with(AckKind::Progress).await.is_err() {
                failed += 1;
            }
        }
        if failed > 0 {
            tracing::warn!(
                failed,
                "in-progress acks not sent; those events may be redelivered (and stored twice)"
            );
        }
        self.keep_alive_due = Some(now + hold.keep_alive);
    }

    /// Waits `delay` (cut short by shutdown) while keeping the held events alive.
    pub(super) async fn pause_holding(&mut self, delay: Duration, held: &[InFlight], hold: &Hold) {
        let until = Instant::now() + delay;
        loop {
            self.keep_alive(held, hold).await;
            let wake = self.wake_at(held).min(until);
            tokio::select! {
                _ = sleep_until(wake.into()) => {}
                _ = self.shutdown.wait_for(|stop| *stop) => return,
            }
            if Instant::now() >= until {
                return;
            }
        }
    }

    /// Stores the closed segment, retrying until the store confirms it, and then acks its
    /// events (the first `held.len()` at the call). While an attempt runs and between
    /// attempts, the held events are kept alive and what the subscription delivers goes into
    /// the next segment, held like the rest, so that nothing waits unseen for its ack wait.
    /// Once shutdown has begun, retries for the shutdown timeout, then hands every held event
    /// back unstored.
    ///
    /// Returns whether the segment was stored, and how the subscription ended if it did
    /// meanwhile.
    pub(super) async fn store_held(
        &mut self,
        held: &mut Vec<InFlight>,
        reason: CloseReason,
        hold: &Hold,
        subscription: &mut Option<Stream>,
    ) -> (bool, Option<StreamEnd>) {
        let Some(shutdown_timeout) = self.archive.as_ref().map(|a| a.shutdown_timeout) else {
            return (false, None);
        };
        if held.is_empty() {
            return (false, None);
        }
        let in_segment = held.len();
        // Every line sealed so far is in this segment; lines taken while it is retried are not,
        // and must not be witnessed before their own segment is stored.
        let segment_head = self
            .integrity
            .as_ref()
            .and_then(|integrity| integrity.head());
        let mut holding = Holding {
            subscription,
            end: None,
            give_up_at: None,
            shutdown_timeout,
        };
        let mut backoff = Backoff::new(UPLOAD_BACKOFF_BASE, UPLOAD_BACKOFF_MAX);
        let mut failures = 0u32;
        loop {
            if self.shutting_down() {
                holding.shutdown_began();
            }
            let Some(archive) = self.archive.as_mut() else {
                return (false, holding.end);
            };
            let upload = archive.upload(reason);
            let (key, bytes) = (upload.key().to_owned(), upload.bytes());
            let mut attempt = tokio::spawn(upload.send());
            let outcome = match self
                .hold_until(&mut attempt, held, hold, &mut holding)
                .await
            {
                Some(Ok(outcome)) => outcome,
                Some(Err(failed)) => {
                    Err(PutError::new(format!("the upload task failed: {failed}")))
                }
                None => {
                    attempt.abort();
                    Err(PutError::new("not stored within the shutdown timeout"))
                }
            };
            let Some(archive) = self.archive.as_mut() else {
                return (false, holding.end);
            };
            match archive.upload_finished(&key, outcome) {
                Ok(true) => {
                    if failures > 0 {
                        tracing::info!(failures, "the archive stored the segment after retries");
                    }
                    if let (Some(integrity), Some(head)) = (&mut self.integrity, segment_head) {
                        integrity.segment_stored(head, SegmentEnd { key, bytes });
                    }
                    self.health.set_output_ok(true);
                    self.health.contact();
                    self.ack_all(held.drain(..in_segment)).await;
                    self.metrics
                        .set_archive_held(held.len() + self.waiting.len());
                    return (true, holding.end);
                }
                // The key was taken: the next attempt, at once, uses the next number.
                Ok(false) => continue,
                Err(err) => {
                    failures += 1;
                    self.health.set_output_ok(false);
                    tracing::error!(
                        %err,
                        key,
                        events = in_segment,
                        attempt = failures,
                        "cannot store the segment in the archive; its events stay held, unacked, \
                         and the upload is retried"
                    );
                }
            }
            if holding.past_give_up() {
                self.hand_back_held(held).await;
                return (false, holding.end);
            }
            let mut pause = Box::pin(sleep(backoff.next_delay()));
            if self
                .hold_until(&mut pause, held, hold, &mut holding)
                .await
                .is_none()
            {
                self.hand_back_held(held).await;
                return (false, holding.end);
            }
        }
    }

    /// Waits for `done` while keeping the held events alive and taking in what the
    /// subscription delivers (as long as the next segment has room). Shutdown starts the
    /// give-up clock, and cuts a pause between attempts short; `None` when the clock runs out
    /// before `done`.
    async fn hold_until<F: Future + Unpin>(
        &mut self,
        done: &mut F,
        held: &mut Vec<InFlight>,
        hold: &Hold,
        holding: &mut Holding<'_>,
    ) -> Option<F::Output> {
        let far = Instant::now() + IDLE_WAKE;
        loop {
            self.keep_alive(held, hold).await;
            let read = holding.end.is_none() && self.may_read(held, hold);
            let waiting_for_shutdown = holding.give_up_at.is_none();
            let give_up_at = holding.give_up_at.unwrap_or(far);
            let keep_alive_at = self.keep_alive_due.unwrap_or(far);
            let wake = tokio::select! {
                biased;
                value = &mut *done => return Some(value),
                _ = self.shutdown.wait_for(|stop| *stop), if waiting_for_shutdown => Wake::Shutdown,
                _ = sleep_until(give_up_at.into()), if !waiting_for_shutdown => return None,
                _ = sleep_until(keep_alive_at.into()) => Wake::KeepAlive,
                next = next_message(holding.subscription), if read => Wake::Message(Box::new(next)),
            };
            match wake {
                Wake::Shutdown => {
                    // Stop pulling before anything is handed back.
                    if let Some(messages) = holding.subscription.as_mut() {
                        self.park_ready(messages);
                    }
                    *holding.subscription = None;
                    holding.shutdown_began();
                }
                Wake::KeepAlive => {}
                Wake::Message(next) => match *next {
                    // Into the next segment while it has room, else kept alive until it has.
                    Some(Ok(message)) => {
                        if self.waiting.is_empty() && self.close_reason(held, hold).is_none() {
                            self.accept(message, held);
                        } else {
                            self.waiting.push_back(message);
                        }
                        self.metrics
                            .set_archive_held(held.len() + self.waiting.len());
                    }
                    Some(Err(err)) => holding.end = Some(StreamEnd::Failed(err)),
                    None => holding.end = Some(StreamEnd::Closed),
                },
            }
        }
    }

    /// At shutdown, with the store still refusing: every held event goes back to the server
    /// for another pod, and the chain of its lines ends at its last stored line.
    async fn hand_back_held(&mut self, held: &mut Vec<InFlight>) {
        tracing::error!(
            events = held.len(),
            "shutting down with the segment unstored; handing its events back for another pod \
             to store"
        );
        if let Some(integrity) = &mut self.integrity {
            integrity.write_failed();
        }
        if let Some(archive) = self.archive.as_mut() {
            archive.give_up();
        }
        self.nak_all(held.drain(..), None).await;
        self.metrics.set_archive_held(self.waiting.len());
    }
}

/// What a store attempt's wait is woken by, besides the attempt itself.
enum Wake {
    Shutdown,
    KeepAlive,
    // Boxed: a message is large, and the other wakes are frequent.
    Message(Box<Option<Result<jetstream::Message, MessagesError>>>),
}

/// The state of one segment's storing that outlives each attempt.
struct Holding<'m> {
    /// Where new events come from meanwhile (none at the very end of the worker, and none
    /// once shutdown began).
    subscription: &'m mut Option<Stream>,
    /// How the subscription ended meanwhile; nothing more is read from it then.
    end: Option<StreamEnd>,
    give_up_at: Option<Instant>,
    shutdown_timeout: Duration,
}

impl Holding<'_> {
    fn shutdown_began(&mut self) {
        self.give_up_at
            .get_or_insert_with(|| Instant::now() + self.shutdown_timeout);
    }

    fn past_give_up(&self) -> bool {
        self.give_up_at.is_some_and(|at| Instant::now() >= at)
    }
}

/// The next message of the subscription, or never when there is none to read from.
async fn next_message(
    subscription: &mut Option<Stream>,
) -> Option<
    Result<async_nats::jetstream::Message, async_nats::jetstream::consumer::pull::MessagesError>,
> {
    match subscription {
        Some(messages) => messages.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_up_to_one_pull_below_max_ack_pending() {
        let config = ConsumerConfig {
            max_ack_pending: 1000,
            ack_wait: Duration::from_secs(30),
            ..Default::default()
        };
        let hold = Hold::new(&config, 100);
        assert_eq!(hold.limit, 900);
        assert_eq!(hold.keep_alive, Duration::from_secs(15));

        let unlimited = ConsumerConfig {
            max_ack_pending: -1,
            ..Default::default()
        };
        assert_eq!(Hold::new(&unlimited, 100).limit, u64::MAX);

        let tiny = ConsumerConfig {
            max_ack_pending: 10,
            ..Default::default()
        };
        assert_eq!(Hold::new(&tiny, 100).limit, 1);
    }
}
