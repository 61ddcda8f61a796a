//! The archive output (`--output archive`): the lines the standard output would get, gathered
//! into segments and stored as create-only objects in an S3 bucket, with Object Lock retention
//! when configured. The worker acks a segment's events only after the store confirmed its
//! object; until then they are held, unacknowledged, and kept alive with in-progress acks.
//!
//! `segment` holds the pure rules (when a segment closes, how its key is named); `store` is the
//! S3 client; [`Archive`] joins them for the worker. `listing` is the reading side's: what
//! `verify --archive` learns from the keys alone.

pub mod listing;
pub mod segment;
pub mod store;

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::config::{Args, Compression};
use crate::error::Result;
use crate::format::Format;
use crate::metrics::Metrics;
use segment::{CloseReason, Limits, Naming, Segment, Span};
use store::{PutError, PutOutcome, Store, Upload};

/// How many keys in a row may be found taken by other content before an attempt counts as
/// failed.
const KEY_ATTEMPTS: u32 = 3;

/// A closed segment, encoded and hashed once, kept for every attempt to store it.
struct Prepared {
    span: Span,
    lines: u64,
    body: Bytes,
    checksum_sha256: String,
    reason: CloseReason,
}

/// One attempt to store a segment, detached from the archive so that it can run while the
/// worker goes on keeping the held events alive.
pub struct PendingUpload {
    store: Arc<Store>,
    upload: Upload,
}

impl PendingUpload {
    /// The key this attempt writes.
    pub fn key(&self) -> &str {
        &self.upload.key
    }

    /// The size of the object this attempt writes.
    pub fn bytes(&self) -> u64 {
        self.upload.body.len() as u64
    }

    pub async fn send(self) -> Result<PutOutcome, PutError> {
        self.store.put_once(self.upload).await
    }
}

pub struct Archive {
    store: Arc<Store>,
    segment: Segment,
    naming: Naming,
    limits: Limits,
    format: Format,
    gzip: bool,
    /// The number of this process's next segment.
    number: u64,
    prepared: Option<Prepared>,
    /// Keys in a row found taken by other content.
    keys_taken: u32,
    /// How long the last segment's upload is retried once shutdown begins.
    pub shutdown_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Archive {
    /// Connects to the store and checks the bucket; a bucket that cannot be used is fatal.
    /// `started_unix_nanos` names the run in every key (and is the chain's start).
    pub async fn start(
        args: &Args,
        started_unix_nanos: i128,
        metrics: Arc<Metrics>,
    ) -> Result<Self> {
        let archive = &args.archive;
        let store = Store::connect(archive).await?;
        store.check().await?;
        let gzip = archive.archive_compression == Compression::Gzip;
        let naming = Naming::new(
            &archive.archive_prefix,
            &args.binding.stream,
            &args.binding.consumer,
            &args.integrity.pod_name(),
            started_unix_nanos,
            args.output.format,
            gzip,
        );
        tracing::info!(
            bucket = archive.archive_bucket.as_deref().unwrap_or_default(),
            prefix = %archive.archive_prefix,
            lock = ?archive.archive_lock_mode,
            "archive output: segments go to the bucket"
        );
        Ok(Self {
            store: Arc::new(store),
            segment: Segment::default(),
            naming,
            limits: Limits {
                lines: archive.archive_segment_lines,
                bytes: archive.archive_segment_bytes,
                age: archive.archive_segment_age,
            },
            format: args.output.format,
            gzip,
            number: 1,
            prepared: None,
            keys_taken: 0,
            shutdown_timeout: archive.archive_shutdown_timeout,
            metrics,
        })
    }

    /// Where the renderer appends the next line.
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        self.segment.buffer()
    }

    /// After a line for the event at `stream_sequence` was rendered into [`Self::buffer`].
    pub fn line_added(&mut self, stream_sequence: u64) {
        self.segment
            .line_added(stream_sequence, Instant::now(), unix_nanos());
    }

    /// Whether the open segment must be stored now.
    pub fn close_reason(&self, held_limit: u64) -> Option<CloseReason> {
        self.segment
            .close_reason(&self.limits, Instant::now(), held_limit)
    }

    /// When the open segment reaches its age.
    pub fn deadline(&self) -> Option<Instant> {
        self.segment.deadline(&self.limits)
    }

    /// Closes the open segment, unless one closed earlier is still unstored, and returns the
    /// next attempt to store that one. The attempt runs on its own (it needs nothing of the
    /// archive), while the worker keeps the held events alive; [`Self::upload_finished`]
    /// takes its outcome.
    pub fn upload(&mut self, reason: CloseReason) -> PendingUpload {
        if self.prepared.is_none() {
            self.prepared = Some(self.prepare(reason));
        }
        let prepared = self.prepared.as_ref().expect("prepared above");
        PendingUpload {
            store: self.store.clone(),
            upload: Upload {
                key: self.naming.key(self.number, &prepared.span),
                body: prepared.body.clone(),
                checksum_sha256: prepared.checksum_sha256.clone(),
                content_type: self.content_type(),
                metadata: vec![
                    ("audit-lines", prepared.lines.to_string()),
                    (
                        "audit-first-sequence",
                        prepared.span.lowest_sequence.to_string(),
                    ),
                    (
                        "audit-last-sequence",
                        prepared.span.highest_sequence.to_string(),
                    ),
                    ("audit-closed-by", prepared.reason.label().to_owned()),
                ],
            },
        }
    }

    /// Takes the outcome of an attempt from [`Self::upload`]: `Ok(true)` when the segment is
    /// stored (its events may be acked), `Ok(false)` when its key was taken by other content
    /// and the next attempt uses the next number, `Err` when it failed (retry later).
    pub fn upload_finished(
        &mut self,
        key: &str,
        outcome: Result<PutOutcome, PutError>,
    ) -> Result<bool, PutError> {
        let prepared = self
            .prepared
            .as_ref()
            .ok_or_else(|| PutError::new("no segment awaits storing"))?;
        match outcome {
            Ok(PutOutcome::Stored) => {
                tracing::info!(
                    key,
                    lines = prepared.lines,
                    bytes = prepared.body.len(),
                    closed_by = prepared.reason.label(),
                    "segment stored"
                );
                self.metrics.archive_segment_stored(
                    prepared.reason.label(),
                    prepared.body.len(),
                    unix_nanos(),
                );
                self.prepared = None;
                self.number += 1;
                self.keys_taken = 0;
                Ok(true)
            }
            Ok(PutOutcome::KeyTaken) if self.keys_taken < KEY_ATTEMPTS => {
                tracing::warn!(key, "the key holds other content; using the next number");
                self.keys_taken += 1;
                self.number += 1;
                Ok(false)
            }
            Ok(PutOutcome::KeyTaken) => {
                self.metrics.archive_upload_failed();
                Err(PutError::new(format!(
                    "{KEY_ATTEMPTS} keys in a row were taken by other content, the last {key}: \
                     is another process writing under this prefix with the same pod name?"
                )))
            }
            Err(err) => {
                self.metrics.archive_upload_failed();
                Err(err)
            }
        }
    }

    /// Drops the closed segment after its events were handed back unstored.
    pub fn give_up(&mut self) {
        self.prepared = None;
        self.segment.clear(&self.limits);
    }

    /// Encodes the open segment into the body to store, and opens the next one.
    fn prepare(&mut self, reason: CloseReason) -> Prepared {
        let span = self.segment.span();
        let lines = self.segment.lines();
        // The next segment starts with room for as much as this one held: growing a buffer of
        // tens of MiB by doubling would copy it several times over.
        let room = self.segment.bytes().len();
        let raw = std::mem::replace(self.segment.buffer(), Vec::with_capacity(room));
        self.segment.clear(&self.limits);
        let gzip = self.gzip;
        // Compressing and hashing tens of MiB takes a while: off the runtime's async threads.
        let (body, checksum_sha256) = tokio::task::block_in_place(|| {
            let body = if gzip {
                // Level 1: several times faster than the default for a few per cent more
                // bytes, so compression never becomes the pipeline's slowest step.
                let mut encoder = flate2::write::GzEncoder::new(
                    Vec::with_capacity(raw.len() / 4),
                    flate2::Compression::fast(),
                );
                // Writing into a Vec cannot fail.
                let compressed = encoder.write_all(&raw).and_then(|()| encoder.finish());
                Bytes::from(compressed.expect("gzip into memory"))
            } else {
                Bytes::from(raw)
            };
            let checksum = store::checksum_sha256(&body);
            (body, checksum)
        });
        Prepared {
            span,
            lines,
            body,
            checksum_sha256,
            reason,
        }
    }

    fn content_type(&self) -> &'static str {
        match (self.gzip, self.format) {
            (true, _) => "application/gzip",
            (false, Format::Json) => "application/x-ndjson",
            (false, Format::Text) => "text/plain; charset=utf-8",
        }
    }
}

fn unix_nanos() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as i128)
}
