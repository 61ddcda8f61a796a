//! The pull / render / write / ack loop.
//!
//! A batch is whatever the pull subscription has already delivered, up to `--batch` messages:
//! the worker waits for one message, then takes the rest without waiting. The batch's lines go
//! out in one write, and only when that write has succeeded are its messages acked; if it
//! fails they are naked with a delay, so nothing is acked that was not written. Acks are plain
//! publishes that the client pipelines, which keeps explicit per-message acks cheap. An event
//! naked at its final delivery (see [`DeliveryLimit`]) is counted as terminated: NATS gives up
//! on it.
//!
//! With `--output archive` the lines go into segments instead ([`archiving`]): a segment's
//! events are held, kept alive with in-progress acks, and acked only once the store confirmed
//! the segment's object.
//!
//! Trouble with the subscription (missed heartbeats, a deleted consumer, a lost connection,
//! rejected pull requests) drops it and binds again after a bounded, jittered backoff. A
//! consumer that stays missing for the grace period ends the process with an error, so that
//! Kubernetes restarts it and the problem is visible.

use std::collections::VecDeque;
use std::io::{ErrorKind, Write};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::consumer::pull::{MessagesError, MessagesErrorKind, Stream};
use async_nats::jetstream::message::Acker;
use async_nats::jetstream::{self, AckKind};
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;

mod archiving;

use crate::archive::Archive;
use crate::backoff::Backoff;
use crate::bind::{self, BindError};
use crate::config::{BindingArgs, PullArgs};
use crate::delivery_limit::DeliveryLimit;
use crate::error::{Error, Result};
use crate::event::Kind;
use crate::format::{LineRenderer, Metadata};
use crate::health::Health;
use crate::integrity::Integrity;
use crate::metrics::{Metrics, Outcome};
use crate::sink::Sink;

const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub struct Worker<W> {
    pub js: jetstream::Context,
    pub binding: BindingArgs,
    pub pull: PullArgs,
    pub renderer: LineRenderer,
    /// Standard output; unused with an archive.
    pub sink: Sink<W>,
    /// With `--output archive`: where the lines go instead of `sink`.
    pub archive: Option<Box<Archive>>,
    /// With an archive: when the held events' next in-progress acks are due (none while
    /// nothing is held). One clock for every held event, across segments and subscriptions,
    /// so that none goes longer than the keep-alive interval without one.
    pub keep_alive_due: Option<Instant>,
    /// Messages delivered but not yet rendered: with an archive, those that arrive while the
    /// next segment is full and the last one is still being stored (kept alive like the held
    /// events); at shutdown, what the subscription had delivered beyond the last batch. Naked
    /// only after the subscription is gone, so that the server does not hand them straight
    /// back to this pod's open pull request.
    pub waiting: VecDeque<jetstream::Message>,
    /// With `--integrity`: seals every line into the pod's hash chain.
    pub integrity: Option<Integrity>,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    /// The bound consumer's `max_deliver`; the monitor keeps it current.
    pub delivery_limit: Arc<DeliveryLimit>,
    pub shutdown: watch::Receiver<bool>,
    /// Tells the monitor which consumer to poll.
    pub bound: watch::Sender<Option<PullConsumer>>,
}

/// A message whose line is in the sink buffer, waiting for the write before its ack.
struct InFlight {
    acker: Acker,
    kind: Kind,
    published_nanos: i128,
    stream_sequence: u64,
    delivered: i64,
}

/// Why the worker stopped reading from one pull subscription.
enum StreamEnd {
    Shutdown,
    Failed(MessagesError),
    Closed,
    OutputFailed,
}

impl<W: Write + Send> Worker<W> {
    pub async fn run(mut self) -> Result<()> {
        let mut backoff = Backoff::new(BACKOFF_BASE, BACKOFF_MAX);
        let mut missing_since: Option<Instant> = None;
        // With an archive, also the events held in the segment not yet stored: they outlive
        // a subscription, and are acked when their segment is stored whichever one is bound.
        let mut in_flight = Vec::with_capacity(self.pull.batch as usize);
        let mut hold = archiving::Hold::default();
        while !self.shutting_down() {
            let consumer = match bind::bind(&self.js, &self.binding).await {
                Ok(consumer) => consumer,
                Err(BindError::Missing) => {
                    let since = *missing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= self.binding.missing_consumer_grace {
                        return Err(Error::ConsumerMissing {
                            stream: self.binding.stream.clone(),
                            consumer: self.binding.consumer.clone(),
                            grace: self.binding.missing_consumer_grace,
                        });
                    }
                    tracing::error!(
                        stream = %self.binding.stream,
                        consumer = %self.binding.consumer,
                        "consumer does not exist; waiting for it to be created"
                    );
                    self.pause(backoff.next_delay()).await;
                    continue;
                }
                Err(BindError::Unusable(reason)) => {
                    return Err(Error::ConsumerUnusable {
                        stream: self.binding.stream.clone(),
                        consumer: self.binding.consumer.clone(),
                        reason,
                    });
                }
                Err(BindError::Transient(reason)) => {
                    tracing::warn!(%reason, "cannot bind to the consumer yet; retrying");
                    self.pause(backoff.next_delay()).await;
                    continue;
                }
            };
            missing_since = None;
            let mut subscription = match self.subscribe(&consumer).await {
                Ok(messages) => Some(messages),
                Err(err) => {
                    tracing::warn!(%err, "cannot start pulling; retrying");
                    self.pause(backoff.next_delay()).await;
                    continue;
                }
            };
            tracing::info!(
                stream = %self.binding.stream,
                consumer = %self.binding.consumer,
                "bound to consumer; pulling"
            );
            self.health.set_bound(true);
            self.health.contact();
            self.delivery_limit
                .set(consumer.cached_info().config.max_deliver);
            let (end, progressed) = if self.archive.is_some() {
                hold = archiving::Hold::new(
                    &consumer.cached_info().config,
                    u64::from(self.pull.batch),
                );
                self.bound.send_replace(Some(consumer));
                self.pump_archive(&mut subscription, &mut in_flight, &hold)
                    .await
            } else {
                self.bound.send_replace(Some(consumer));
                let messages = subscription.as_mut().expect("just subscribed");
                self.pump(messages, &mut in_flight).await?
            };
            // Stops pulling: the server delivers nothing more to this pull request.
            drop(subscription);
            self.health.set_bound(false);
            if progressed {
                backoff.reset();
            }
            match end {
                StreamEnd::Shutdown => break,
                StreamEnd::OutputFailed => {}
                StreamEnd::Closed => {
                    self.metrics.pull_error("closed");
                    tracing::warn!("pull subscription closed; binding again");
                }
                StreamEnd::Failed(err) => {
                    let reason = reason_label(err.kind());
                    self.metrics.pull_error(reason);
                    if err.kind() == MessagesErrorKind::ConsumerDeleted {
                        missing_since = Some(Instant::now());
                        tracing::error!(
                            stream = %self.binding.stream,
                            consumer = %self.binding.consumer,
                            grace = %humantime::format_duration(self.binding.missing_consumer_grace),
                            "the consumer was deleted; exiting unless it is back within the grace period"
                        );
                    } else {
                        tracing::warn!(%err, reason, "pull subscription failed; binding again");
                    }
                }
            }
            // Held events are kept alive while no subscription is bound.
            self.pause_holding(backoff.next_delay(), &in_flight, &hold)
                .await;
        }
        // The subscription is gone: nothing handed back from here on comes back to this pod.
        if !in_flight.is_empty() {
            // The last segment, at shutdown (also if it began between two subscriptions).
            let reason = crate::archive::segment::CloseReason::Shutdown;
            self.store_held(&mut in_flight, reason, &hold, &mut None)
                .await;
        }
        self.hand_back_waiting().await;
        Ok(())
    }

    async fn subscribe(&self, consumer: &PullConsumer) -> Result<Stream, String> {
        let limits = &consumer.cached_info().config;
        let mut batch = self.pull.batch as usize;
        if let Ok(max_batch @ 1..) = usize::try_from(limits.max_batch)
            && batch > max_batch
        {
            tracing::warn!(
                batch,
                max_batch,
                "--batch exceeds the consumer's max_batch; using max_batch"
            );
            batch = max_batch;
        }
        let mut max_bytes = self.pull.max_bytes;
        if let Ok(limit @ 1..) = usize::try_from(limits.max_bytes)
            && (max_bytes == 0 || max_bytes > limit)
        {
            tracing::warn!(
                max_bytes,
                limit,
                "--max-bytes exceeds the consumer's max_bytes; using its limit"
            );
            max_bytes = limit;
        }
        let mut expires = self.pull.expires;
        if !limits.max_expires.is_zero() && expires > limits.max_expires {
            tracing::warn!("--expires exceeds the consumer's max_expires; using its limit");
            expires = limits.max_expires;
        }
        let heartbeat = self.pull.heartbeat().min(expires / 2);
        consumer
            .stream()
            .max_messages_per_batch(batch)
            .max_bytes_per_batch(max_bytes)
            .expires(expires)
            .heartbeat(heartbeat)
            .messages()
            .await
            .map_err(|err| err.to_string())
    }

    /// Reads batches until the subscription ends; the flag says whether any event was acked.
    async fn pump(
        &mut self,
        messages: &mut Stream,
        in_flight: &mut Vec<InFlight>,
    ) -> Result<(StreamEnd, bool)> {
        let batch = self.pull.batch as usize;
        let mut progressed = false;
        loop {
            let first = tokio::select! {
                biased;
                _ = self.shutdown.wait_for(|stop| *stop) => None,
                next = messages.next() => Some(next),
            };
            let started = Instant::now();
            let mut end = None;
            match first {
                None => {
                    // In-flight means delivered to us: write and ack what has already arrived,
                    // and leave the rest to the server's redelivery.
                    self.take_ready(messages, in_flight, batch, &mut end);
                    self.commit(in_flight, started).await?;
                    self.park_ready(messages);
                    return Ok((StreamEnd::Shutdown, progressed));
                }
                Some(None) => return Ok((StreamEnd::Closed, progressed)),
                Some(Some(Err(err))) => return Ok((StreamEnd::Failed(err), progressed)),
                Some(Some(Ok(message))) => self.accept(message, in_flight),
            }
            self.take_ready(messages, in_flight, batch, &mut end);
            if !self.commit(in_flight, started).await? {
                // What the subscription already holds would fail the same way; hand it back
                // now rather than leave it to the ack wait.
                self.hand_back_ready(messages, Some(self.pull.nak_delay))
                    .await;
                return Ok((StreamEnd::OutputFailed, progressed));
            }
            progressed = true;
            if let Some(end) = end {
                return Ok((end, progressed));
            }
        }
    }

    /// Adds the messages the subscription already holds, without waiting, until `in_flight`
    /// holds `up_to`.
    fn take_ready(
        &mut self,
        messages: &mut Stream,
        in_flight: &mut Vec<InFlight>,
        up_to: usize,
        end: &mut Option<StreamEnd>,
    ) {
        while in_flight.len() < up_to {
            match messages.next().now_or_never() {
                Some(Some(Ok(message))) => self.accept(message, in_flight),
                Some(Some(Err(err))) => {
                    *end = Some(StreamEnd::Failed(err));
                    return;
                }
                Some(None) => {
                    *end = Some(StreamEnd::Closed);
                    return;
                }
                None => return,
            }
        }
    }

    /// Renders one message into the output's buffer and keeps its acker for the commit.
    fn accept(&mut self, message: jetstream::Message, in_flight: &mut Vec<InFlight>) {
        let info = message.info().ok();
        let meta = Metadata {
            subject: message.subject.as_str(),
            stream: info
                .as_ref()
                .map_or(self.binding.stream.as_str(), |info| info.stream),
            consumer: info
                .as_ref()
                .map_or(self.binding.consumer.as_str(), |info| info.consumer),
            stream_sequence: info.as_ref().map_or(0, |info| info.stream_sequence),
            consumer_sequence: info.as_ref().map_or(0, |info| info.consumer_sequence),
            delivered: info.as_ref().map_or(0, |info| info.delivered),
            pending: info.as_ref().map_or(0, |info| info.pending),
            published_nanos: info
                .as_ref()
                .map_or(0, |info| info.published.unix_timestamp_nanos()),
            headers: message.headers.as_ref(),
        };
        let buffer = match &mut self.archive {
            Some(archive) => archive.buffer(),
            None => self.sink.buffer(),
        };
        let line_start = buffer.len();
        let kind = self.renderer.render(&meta, &message.payload, buffer);
        if let Some(integrity) = &mut self.integrity {
            integrity.seal(buffer, line_start);
        }
        if let Some(archive) = &mut self.archive {
            archive.line_added(meta.stream_sequence);
        }
        if meta.delivered > 1 {
            self.metrics.redelivered();
        }
        let published_nanos = meta.published_nanos;
        let (stream_sequence, delivered) = (meta.stream_sequence, meta.delivered);
        let (_, acker) = message.split();
        in_flight.push(InFlight {
            acker,
            kind,
            published_nanos,
            stream_sequence,
            delivered,
        });
    }

    /// Writes the batch, then acks it; or naks it when the write fails. Returns whether the
    /// write succeeded. A closed standard output is fatal: no later write can succeed.
    async fn commit(&mut self, in_flight: &mut Vec<InFlight>, started: Instant) -> Result<bool> {
        if in_flight.is_empty() {
            return Ok(true);
        }
        // A blocking write: standard output is a pipe whose reader may be slow, and the
        // runtime's other tasks (probes, pings) must keep running meanwhile.
        let written = tokio::task::block_in_place(|| self.sink.flush());
        match written {
            Ok(()) => {
                if let Some(integrity) = &mut self.integrity {
                    integrity.written();
                }
                self.health.set_output_ok(true);
                self.health.contact();
                self.ack_all(in_flight.drain(..)).await;
                self.metrics.batch(started.elapsed().as_secs_f64());
                Ok(true)
            }
            Err(err) => {
                self.metrics.write_error();
                self.health.set_output_ok(false);
                if let Some(integrity) = &mut self.integrity {
                    integrity.write_failed();
                }
                tracing::error!(
                    %err,
                    events = in_flight.len(),
                    "cannot write events to standard output; naking them for redelivery"
                );
                self.nak_all(in_flight.drain(..), Some(self.pull.nak_delay))
                    .await;
                if err.kind() == ErrorKind::BrokenPipe {
                    return Err(Error::OutputClosed(err));
                }
                Ok(false)
            }
        }
    }

    /// Acks events whose lines the output has confirmed.
    async fn ack_all(&mut self, events: impl IntoIterator<Item = InFlight>) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as i128);
        for event in events {
            if let Err(err) = event.acker.ack().await {
                // Written but not acked: the server redelivers it, and the redelivery is what
                // the metrics will count.
                tracing::warn!(%err, "ack not sent; the event will be redelivered");
                continue;
            }
            self.metrics.event(Outcome::Acked, event.kind);
            if event.published_nanos > 0 {
                self.metrics
                    .end_to_end((now - event.published_nanos).max(0) as f64 / 1e9);
            }
        }
    }

    /// Naks events whose lines the output did not take, for redelivery after `delay`.
    async fn nak_all(
        &mut self,
        events: impl IntoIterator<Item = InFlight>,
        delay: Option<Duration>,
    ) {
        for event in events {
            if let Err(err) = event.acker.ack_with(AckKind::Nak(delay)).await {
                tracing::warn!(%err, "nak not sent; the event will be redelivered after ack wait");
            }
            // Naked or left to the ack wait, a final delivery is given up all the same.
            if self.delivery_limit.is_final(event.delivered) {
                self.count_given_up(event.kind, event.stream_sequence, event.delivered);
            } else {
                self.metrics.event(Outcome::Naked, event.kind);
            }
        }
    }

    /// Naks what the subscription has delivered but the worker will not process, so that it
    /// is redelivered after `delay` (to the next instance, on shutdown) instead of after the
    /// ack wait.
    async fn hand_back_ready(&mut self, messages: &mut Stream, delay: Option<Duration>) {
        while let Some(Some(Ok(message))) = messages.next().now_or_never() {
            self.hand_back(message, delay).await;
        }
    }

    /// Moves what the subscription has delivered into `waiting`, without waiting.
    fn park_ready(&mut self, messages: &mut Stream) {
        while let Some(Some(Ok(message))) = messages.next().now_or_never() {
            self.waiting.push_back(message);
        }
    }

    /// Naks the messages never rendered, for redelivery at once (to another pod: called once
    /// this one has stopped pulling).
    async fn hand_back_waiting(&mut self) {
        if !self.waiting.is_empty() {
            tracing::info!(
                events = self.waiting.len(),
                "handing back the events delivered but not written"
            );
        }
        while let Some(message) = self.waiting.pop_front() {
            self.hand_back(message, None).await;
        }
    }

    /// Naks one message never rendered.
    async fn hand_back(&mut self, message: jetstream::Message, delay: Option<Duration>) {
        let info = message.info().ok();
        let stream_sequence = info.as_ref().map_or(0, |info| info.stream_sequence);
        let delivered = info.as_ref().map_or(0, |info| info.delivered);
        let given_up = self.delivery_limit.is_final(delivered);
        if let Err(err) = message.ack_with(AckKind::Nak(delay)).await {
            tracing::debug!(%err, "nak not sent; the event will be redelivered after ack wait");
        }
        // Never rendered, so its kind is looked up for the count.
        let kind = self.renderer.kind(&message.payload);
        if given_up {
            self.count_given_up(kind, stream_sequence, delivered);
        } else {
            self.metrics.event(Outcome::Naked, kind);
        }
    }

    /// Counts an event handed back unwritten at its final delivery, and logs where it stays.
    fn count_given_up(&self, kind: Kind, stream_sequence: u64, delivered: i64) {
        self.metrics.event(Outcome::Terminated, kind);
        tracing::error!(
            stream = %self.binding.stream,
            stream_sequence,
            delivered,
            "event not written at its final delivery (the consumer's max_deliver): NATS will not \
             deliver it again; it stays in the stream for a replay from this sequence"
        );
    }

    fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Sleeps for `delay`, or less if shutdown begins.
    async fn pause(&mut self, delay: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {},
            _ = self.shutdown.wait_for(|stop| *stop) => {},
        }
    }
}

fn reason_label(kind: MessagesErrorKind) -> &'static str {
    match kind {
        MessagesErrorKind::MissingHeartbeat => "missing_heartbeat",
        MessagesErrorKind::ConsumerDeleted => "consumer_deleted",
        MessagesErrorKind::Pull => "pull_request_failed",
        MessagesErrorKind::PushBasedConsumer => "push_consumer",
        MessagesErrorKind::NoResponders => "no_responders",
        MessagesErrorKind::RequestLimitExceeded => "request_limit_exceeded",
        MessagesErrorKind::Other => "other",
    }
}
