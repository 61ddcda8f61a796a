//! A witnessed checkpoint as it travels: the chain head as a JSON object, signed.
//!
//! The message payload is `{"chain":…,"seq":…,"hash":…,"time":…,"signer":…}` (`hash` in
//! lowercase hex, `time` when the covered lines had been written, RFC 3339 UTC, `signer` the
//! NKey public key), with `"segment":{"key":…,"bytes":…}` added on a head that ends an
//! archive segment (the object holding the lines up to it). The `Audit-Signature` header holds the Ed25519 signature of the payload
//! bytes exactly as stored, in unpadded URL-safe base64. Verification uses the trusted public
//! keys it is given, never the `signer` field, which only helps an operator rotating keys.

use std::time::Duration;

use async_nats::jetstream::{
    consumer::{DeliverPolicy, pull::OrderedConfig},
    stream::Stream,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::StreamExt;
use nkeys::KeyPair;
use serde::{Deserialize, Serialize};

use super::chain::Head;

pub const SIGNATURE_HEADER: &str = "Audit-Signature";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub chain: String,
    pub seq: u64,
    pub hash: String,
    pub time: String,
    pub signer: String,
    /// The archive object whose last line this head is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<SegmentEnd>,
}

/// The archive object a head ends: signed with the head, so an object's own end is known.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentEnd {
    /// Its key in the bucket.
    pub key: String,
    /// Its size as stored (compressed, when it is).
    pub bytes: u64,
}

impl Checkpoint {
    pub fn new(head: &Head, time_nanos: i128, signer: String) -> Self {
        let mut time = Vec::with_capacity(30);
        crate::format::write_rfc3339(&mut time, time_nanos);
        Self {
            chain: head.chain.to_string(),
            seq: head.seq,
            hash: head.hash.to_hex().to_string(),
            time: String::from_utf8(time).expect("RFC 3339 is ASCII"),
            signer,
            segment: None,
        }
    }
}

/// The payload and its signature header value.
pub fn sign(
    checkpoint: &Checkpoint,
    key: &KeyPair,
) -> Result<(Vec<u8>, String), nkeys::error::Error> {
    let payload = serde_json::to_vec(checkpoint).expect("a checkpoint always serializes");
    let signature = key.sign(&payload)?;
    Ok((payload, URL_SAFE_NO_PAD.encode(signature)))
}

/// Why a stored checkpoint is not taken as a witness.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("no {SIGNATURE_HEADER} header")]
    Unsigned,
    #[error("the signature does not verify with any trusted public key")]
    BadSignature,
    #[error("not a checkpoint: {0}")]
    Malformed(String),
}

/// The checkpoint in `payload` if `signature` (the header value) is a signature of it by one
/// of `trusted`.
pub fn open(
    payload: &[u8],
    signature: Option<&str>,
    trusted: &[KeyPair],
) -> Result<Checkpoint, Rejected> {
    let signature = URL_SAFE_NO_PAD
        .decode(signature.ok_or(Rejected::Unsigned)?)
        .map_err(|_| Rejected::BadSignature)?;
    if !trusted
        .iter()
        .any(|key| key.verify(payload, &signature).is_ok())
    {
        return Err(Rejected::BadSignature);
    }
    let checkpoint: Checkpoint =
        serde_json::from_slice(payload).map_err(|err| Rejected::Malformed(err.to_string()))?;
    if blake3::Hash::from_hex(&checkpoint.hash).is_err() {
        return Err(Rejected::Malformed(format!("hash {:?}", checkpoint.hash)));
    }
    Ok(checkpoint)
}

/// A head as stored in the witness stream, before its signature is checked.
#[derive(Clone, Debug)]
pub struct StoredHead {
    pub stream_sequence: u64,
    pub subject: String,
    /// When the stream stored it, in nanoseconds since the epoch: when it was witnessed.
    pub stored_nanos: i128,
    pub payload: Vec<u8>,
    /// The [`SIGNATURE_HEADER`] value, if any.
    pub signature: Option<String>,
}

/// Reads the heads stored in the witness `stream` on `subject` (every subject when `None`)
/// from `deliver_policy` on, through an ordered consumer, waiting at most `timeout` for each.
/// `audit-consumer verify` and the operator's status read them alike.
pub async fn read_stored<I>(
    stream: &Stream<I>,
    subject: Option<&str>,
    deliver_policy: DeliverPolicy,
    timeout: Duration,
) -> Result<Vec<StoredHead>, String> {
    let mut consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: subject.unwrap_or_default().to_owned(),
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|err| err.to_string())?;
    let mut remaining = consumer
        .info()
        .await
        .map_err(|err| err.to_string())?
        .num_pending;
    let mut heads = Vec::new();
    if remaining == 0 {
        return Ok(heads);
    }
    let mut messages = consumer.messages().await.map_err(|err| err.to_string())?;
    while remaining > 0 {
        let message = match tokio::time::timeout(timeout, messages.next()).await {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(err))) => return Err(err.to_string()),
            Ok(None) => return Err("the subscription ended early".into()),
            Err(_) => return Err(format!("no head within {timeout:?}")),
        };
        let info = message.info().map_err(|err| err.to_string())?;
        remaining = info.pending;
        heads.push(StoredHead {
            stream_sequence: info.stream_sequence,
            subject: message.subject.to_string(),
            stored_nanos: info.published.unix_timestamp_nanos(),
            payload: message.payload.to_vec(),
            signature: message
                .headers
                .as_ref()
                .and_then(|headers| headers.get(SIGNATURE_HEADER))
                .map(|value| value.as_str().to_owned()),
        });
    }
    Ok(heads)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn checkpoint(key: &KeyPair) -> Checkpoint {
        let head = Head {
            chain: Arc::from("c/p/t"),
            seq: 42,
            hash: blake3::hash(b"line"),
        };
        Checkpoint::new(&head, 1_795_000_000_000_000_000, key.public_key())
    }

    #[test]
    fn a_signed_checkpoint_opens_with_the_public_key_only() {
        let key = KeyPair::new_account();
        let public = KeyPair::from_public_key(&key.public_key()).unwrap();
        let (payload, signature) = sign(&checkpoint(&key), &key).unwrap();
        assert_eq!(
            open(&payload, Some(&signature), &[public]).unwrap(),
            checkpoint(&key)
        );
        assert_eq!(
            String::from_utf8(payload).unwrap(),
            format!(
                r#"{{"chain":"c/p/t","seq":42,"hash":"{}","time":"2026-11-18T11:06:40.000000000Z","signer":"{}"}}"#,
                blake3::hash(b"line").to_hex(),
                key.public_key()
            )
        );
    }

    #[test]
    fn a_forged_or_altered_checkpoint_is_rejected() {
        let key = KeyPair::new_account();
        let trusted = [KeyPair::from_public_key(&key.public_key()).unwrap()];
        let forger = KeyPair::new_account();
        // Signed by another key, even one claiming to be the trusted signer.
        let mut claimed = checkpoint(&forger);
        claimed.signer = key.public_key();
        let (payload, signature) = sign(&claimed, &forger).unwrap();
        assert_eq!(
            open(&payload, Some(&signature), &trusted),
            Err(Rejected::BadSignature)
        );
        // Signed by the key, then changed.
        let (payload, signature) = sign(&checkpoint(&key), &key).unwrap();
        let altered = String::from_utf8(payload)
            .unwrap()
            .replace("\"seq\":42", "\"seq\":43");
        assert_eq!(
            open(altered.as_bytes(), Some(&signature), &trusted),
            Err(Rejected::BadSignature)
        );
        assert_eq!(open(b"{}", None, &trusted), Err(Rejected::Unsigned));
    }
}
