//! The tamper-evident audit trail (`--integrity`): each pod process's lines form a hash chain
//! (`chain`), whose heads the pod signs and publishes to an append-only JetStream stream
//! (`witness`, in the message format of `head`), and `audit-consumer verify` checks a log
//! against them (`verify`).

pub mod chain;
pub mod head;
pub mod report;
pub mod verify;
pub mod verify_command;
pub mod witness;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use nkeys::KeyPair;

use crate::error::{Error, Result};

use crate::format::Format;
use chain::Chain;
use witness::Witness;

/// What the worker holds with integrity on: the chain its lines are sealed into, and where
/// the heads of written lines go to be witnessed.
pub struct Integrity {
    format: Format,
    consumer: String,
    pod: String,
    chain: Chain,
    witness: Witness,
}

impl Integrity {
    /// The first chain starts at `start_nanos`, the archive's run when archiving.
    pub fn new(
        format: Format,
        consumer: &str,
        pod: &str,
        start_nanos: i128,
        witness: Witness,
    ) -> Self {
        let chain = Chain::new(format, chain::chain_id(consumer, pod, start_nanos));
        tracing::info!(chain = %chain.id(), "integrity on: starting a chain");
        Self {
            format,
            consumer: consumer.to_owned(),
            pod: pod.to_owned(),
            chain,
            witness,
        }
    }

    /// Adds the chain fields to the line just rendered into `out` from `line_start`.
    pub fn seal(&mut self, out: &mut Vec<u8>, line_start: usize) {
        self.chain.seal(out, line_start);
    }

    /// After a successful write and flush of every line sealed so far.
    pub fn written(&mut self) {
        if let Some(head) = self.chain.head() {
            self.witness.written(head);
        }
    }

    /// The head of every line sealed so far, for an output that confirms lines later than
    /// it takes new ones (the archive): [`Self::segment_stored`] once they are stored.
    pub fn head(&self) -> Option<chain::Head> {
        self.chain.head()
    }

    /// After the archive stored a segment whose last line is `head`'s (and maybe none after
    /// it): the head is witnessed as that segment's end.
    pub fn segment_stored(&mut self, head: chain::Head, segment: head::SegmentEnd) {
        self.witness.segment_stored(head, segment);
    }

    /// After a failed write: some of the batch's lines may have reached the output, whole or
    /// torn, and the events come back to be written again. A new chain starts, so that the
    /// retry does not reuse positions; the old chain ends at its last line written in full.
    pub fn write_failed(&mut self) {
        self.witness.chain_ended();
        self.chain = Chain::new(
            self.format,
            chain::chain_id(&self.consumer, &self.pod, now_nanos()),
        );
        tracing::warn!(chain = %self.chain.id(), "after a failed write: starting a new chain");
    }
}

/// The signing key from its mounted file. The seed never appears in an error or a log line.
pub async fn read_key(path: &Path) -> Result<KeyPair> {
    let seed = crate::connect::read_secret("integrity key", path).await?;
    KeyPair::from_seed(seed.trim()).map_err(|_| {
        Error::Config(format!(
            "the integrity key file {} does not hold an NKey seed (`S...`, e.g. from `nk -gen \
             account`)",
            path.display()
        ))
    })
}

pub(crate) fn now_nanos() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as i128)
}
