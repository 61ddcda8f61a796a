//! Witnessed checkpoints: a task that publishes the pod's chain heads, signed, to the witness
//! stream (append-only: the stream denies delete and purge), every `--integrity-checkpoint-lines`
//! lines or `--integrity-checkpoint-interval`, whichever comes first, when a chain ends, and at
//! shutdown; with the archive output, at the end of every stored segment instead, so that
//! each object lies between two heads and can be checked on its own.
//!
//! The worker hands over a head only after the write of the lines it covers succeeded, so a
//! head never vouches for a line that is not in the output. Handing over is a lock and a copy;
//! publishing, its ack and its retries happen here, off the pull, write and ack path.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use async_nats::jetstream;
use nkeys::KeyPair;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::chain::Head;
use super::head::{self, Checkpoint, SegmentEnd};
use crate::backoff::Backoff;
use crate::metrics::Metrics;

/// The subjects of the witness stream: every AuditConsumer's heads under one prefix.
pub const SUBJECT_PREFIX: &str = "audit-integrity";

/// The subject a consumer's heads go to unless told otherwise:
/// `audit-integrity.<stream>.<consumer>` (neither name can hold a `.`).
pub fn default_subject(stream: &str, consumer: &str) -> String {
    format!("{SUBJECT_PREFIX}.{stream}.{consumer}")
}

#[derive(Clone, Debug)]
pub struct WitnessConfig {
    pub stream: String,
    pub subject: String,
    pub every_lines: u64,
    pub interval: Duration,
}

/// A head with the time its lines had been written.
#[derive(Clone, Debug)]
struct Written {
    head: Head,
    time_nanos: i128,
    /// The archive object that ends at this head.
    segment: Option<SegmentEnd>,
}

#[derive(Default)]
struct Pending {
    /// The newest head written of the current chain.
    current: Option<Written>,
    /// Heads that must each be published, oldest first: the final heads of chains that ended
    /// (after a failed write), and the heads at which archive segments end.
    queued: Vec<Written>,
    /// `current` is `every_lines` past the head last asked for: publish it now. Decided by
    /// the worker, which counts the lines, so that a head published a few lines late does
    /// not make the next one wait for a second wake.
    lines_reached: bool,
    finishing: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Notify,
}

/// The worker's side: where written heads are handed over.
pub struct Witness {
    shared: Arc<Shared>,
    every_lines: u64,
    /// The position at which the task was last woken for the line count.
    woken_at: u64,
}

/// The publishing task, to be finished at shutdown.
pub struct WitnessTask {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

pub fn start(
    js: jetstream::Context,
    key: KeyPair,
    config: WitnessConfig,
    metrics: Arc<Metrics>,
) -> (Witness, WitnessTask) {
    let shared = Arc::new(Shared {
        pending: Mutex::new(Pending::default()),
        wake: Notify::new(),
    });
    let witness = Witness {
        shared: shared.clone(),
        every_lines: config.every_lines,
        woken_at: 0,
    };
    let publisher = Publisher {
        js,
        signer: key.public_key(),
        key,
        config,
        metrics,
    };
    let task = tokio::spawn(publisher.run(shared.clone()));
    (witness, WitnessTask { shared, task })
}

impl Witness {
    /// The lines up to `head` have been written and flushed.
    pub fn written(&mut self, head: Head) {
        let wake = head.seq.saturating_sub(self.woken_at) >= self.every_lines;
        let mut pending = self.shared.pending();
        pending.lines_reached |= wake;
        pending.current = Some(Written {
            head: head.clone(),
            time_nanos: now_nanos(),
            segment: None,
        });
        drop(pending);
        if wake {
            self.woken_at = head.seq;
            self.shared.wake.notify_one();
        }
    }

    /// An archive segment ending at `head` has been stored: the head is published, whatever
    /// the line count and the interval, and before any later one. The current head is not
    /// moved: with the archive, heads are published at segment ends only.
    pub fn segment_stored(&mut self, head: Head, segment: SegmentEnd) {
        self.woken_at = head.seq;
        self.shared.pending().queued.push(Written {
            head,
            time_nanos: now_nanos(),
            segment: Some(segment),
        });
        self.shared.wake.notify_one();
    }

    /// The current chain ends at its last written head; the next head starts a new chain.
    pub fn chain_ended(&mut self) {
        let mut pending = self.shared.pending();
        if let Some(last) = pending.current.take() {
            pending.queued.push(last);
        }
        drop(pending);
        self.woken_at = 0;
        self.shared.wake.notify_one();
    }
}

impl WitnessTask {
    /// Publishes the last heads and stops, giving up after `timeout` (say, while NATS is
    /// unreachable): the lines after the last published head stay unwitnessed.
    pub async fn finish(self, timeout: Duration) {
        self.shared.pending().finishing = true;
        self.shared.wake.notify_one();
        let abort = self.task.abort_handle();
        if tokio::time::timeout(timeout, self.task).await.is_err() {
            abort.abort();
            tracing::warn!(
                "the final chain head was not published in time; the last lines stay unwitnessed"
            );
        }
    }
}

impl Shared {
    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        // Nothing that holds the lock can panic half-way; a poisoned lock is still consistent.
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

struct Publisher {
    js: jetstream::Context,
    key: KeyPair,
    signer: String,
    config: WitnessConfig,
    metrics: Arc<Metrics>,
}

impl Publisher {
    async fn run(self, shared: Arc<Shared>) {
        let mut published: Option<Head> = None;
        let mut last_publish = Instant::now();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            let (queued, current, lines_reached, finishing) = {
                let mut pending = shared.pending();
                (
                    std::mem::take(&mut pending.queued),
                    pending.current.clone(),
                    std::mem::take(&mut pending.lines_reached),
                    pending.finishing,
                )
            };
            let mut failed = false;
            for (index, head) in queued.iter().enumerate() {
                if !self.publish(head).await {
                    // Kept, in order, before any queued meanwhile.
                    let mut pending = shared.pending();
                    let newer = std::mem::take(&mut pending.queued);
                    pending.queued = queued[index..].iter().cloned().chain(newer).collect();
                    failed = true;
                    break;
                }
                published = Some(head.head.clone());
                last_publish = Instant::now();
            }
            if !failed && let Some(current) = current {
                let behind = match &published {
                    Some(last) if last.chain == current.head.chain => {
                        current.head.seq.saturating_sub(last.seq)
                    }
                    _ => current.head.seq,
                };
                let due = finishing
                    || lines_reached
                    || behind >= self.config.every_lines
                    || last_publish.elapsed() >= self.config.interval;
                if behind > 0 && due {
                    if self.publish(&current).await {
                        published = Some(current.head);
                        last_publish = Instant::now();
                    } else {
                        shared.pending().lines_reached |= lines_reached;
                        failed = true;
                    }
                }
            }
            if failed {
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
            backoff.reset();
            if finishing {
                return;
            }
            if last_publish.elapsed() >= self.config.interval {
                // Nothing new: the next interval starts now.
                last_publish = Instant::now();
            }
            let deadline = tokio::time::Instant::from_std(last_publish + self.config.interval);
            tokio::select! {
                _ = shared.wake.notified() => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Publishes one head and waits for the stream to store it.
    async fn publish(&self, written: &Written) -> bool {
        let checkpoint = Checkpoint {
            segment: written.segment.clone(),
            ..Checkpoint::new(&written.head, written.time_nanos, self.signer.clone())
        };
        let (payload, signature) = match head::sign(&checkpoint, &self.key) {
            Ok(signed) => signed,
            Err(err) => {
                tracing::error!(%err, "cannot sign a chain head");
                self.metrics.checkpoint_failed();
                return false;
            }
        };
        let mut headers = HeaderMap::new();
        headers.insert(head::SIGNATURE_HEADER, signature.as_str());
        // A retried publish whose first attempt was stored is not stored twice.
        headers.insert(
            "Nats-Msg-Id",
            format!("{}:{}", checkpoint.chain, checkpoint.seq).as_str(),
        );
        // Only the witness stream may take it, should another stream capture the subject.
        headers.insert("Nats-Expected-Stream", self.config.stream.as_str());
        let stored = match self
            .js
            .publish_with_headers(self.config.subject.clone(), headers, payload.into())
            .await
        {
            Ok(ack) => ack.await.map(|_| ()).map_err(|err| err.to_string()),
            Err(err) => Err(err.to_string()),
        };
        match stored {
            Ok(()) => {
                tracing::debug!(chain = %checkpoint.chain, seq = checkpoint.seq, "chain head witnessed");
                self.metrics
                    .checkpoint_published((now_nanos() / 1_000_000_000) as i64);
                true
            }
            Err(err) => {
                tracing::warn!(
                    %err,
                    stream = %self.config.stream,
                    subject = %self.config.subject,
                    "cannot publish the chain head to the witness stream; retrying"
                );
                self.metrics.checkpoint_failed();
                false
            }
        }
    }
}

fn now_nanos() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as i128)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(chain: &str, seq: u64) -> Head {
        Head {
            chain: Arc::from(chain),
            seq,
            hash: blake3::hash(&seq.to_le_bytes()),
        }
    }

    fn witness(every_lines: u64) -> Witness {
        Witness {
            shared: Arc::new(Shared {
                pending: Mutex::new(Pending::default()),
                wake: Notify::new(),
            }),
            every_lines,
            woken_at: 0,
        }
    }

    #[test]
    fn the_publisher_is_asked_for_a_head_each_time_the_line_count_is_reached() {
        let mut witness = witness(100);
        let asked = |witness: &Witness| std::mem::take(&mut witness.shared.pending().lines_reached);
        witness.written(head("a", 60));
        assert!(!asked(&witness));
        witness.written(head("a", 110));
        assert!(asked(&witness), "100 lines since the start");
        witness.written(head("a", 200));
        assert!(!asked(&witness), "90 lines since the last ask");
        witness.written(head("a", 210));
        assert!(asked(&witness));
        assert_eq!(
            witness.shared.pending().current.as_ref().unwrap().head,
            head("a", 210)
        );
    }

    #[test]
    fn an_ended_chain_keeps_its_last_written_head_for_the_publisher() {
        let mut witness = witness(100);
        witness.written(head("a", 30));
        witness.chain_ended();
        witness.chain_ended();
        witness.written(head("b", 5));
        let pending = witness.shared.pending();
        let ended: Vec<&Head> = pending.queued.iter().map(|written| &written.head).collect();
        assert_eq!(
            ended,
            [&head("a", 30)],
            "a chain without lines leaves no head"
        );
        assert_eq!(pending.current.as_ref().unwrap().head, head("b", 5));
    }

    #[test]
    fn every_stored_segment_end_is_published_in_order() {
        let mut witness = witness(100_000);
        let end = |key: &str| SegmentEnd {
            key: key.into(),
            bytes: 1,
        };
        witness.segment_stored(head("a", 300), end("one"));
        witness.segment_stored(head("a", 600), end("two"));
        witness.chain_ended();
        let pending = witness.shared.pending();
        let queued: Vec<&Head> = pending.queued.iter().map(|written| &written.head).collect();
        assert_eq!(
            queued,
            [&head("a", 300), &head("a", 600)],
            "each segment's head, however close together, and none twice"
        );
        assert!(pending.current.is_none());
    }
}
