//! The S3 side of the archive: one client, a start-up check of the bucket, and the one write
//! the archive makes, a create-only PUT with a checksum the store verifies and, when
//! configured, Object Lock retention.
//!
//! `aws-sdk-s3` because it is the reference implementation of exactly the three things an
//! audit archive depends on: `If-None-Match: *` (a segment is never overwritten, not even by a
//! retry of its own upload), `x-amz-checksum-sha256` (the store refuses a body that differs
//! from what was hashed here), and the Object Lock headers (which AWS only accepts together
//! with such a checksum).

use std::time::{Duration, SystemTime};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, DateTime};
use aws_sdk_s3::types::{ChecksumAlgorithm, ChecksumMode, ObjectLockEnabled, ObjectLockMode};
use aws_smithy_http_client::tls::rustls_provider::CryptoMode;
use aws_smithy_http_client::tls::{Provider, TlsContext, TrustStore};
use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::listing::Listed;
use crate::config::{ArchiveArgs, LockMode, StoreArgs};
use crate::connect::read_secret;
use crate::error::{Error, Result};

/// One object to create: its key, its body and the body's SHA-256 (base64, as S3 wants it).
pub struct Upload {
    pub key: String,
    pub body: bytes::Bytes,
    pub checksum_sha256: String,
    pub content_type: &'static str,
    pub metadata: Vec<(&'static str, String)>,
}

/// The SHA-256 of `body` in the form of `x-amz-checksum-sha256`.
pub fn checksum_sha256(body: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(body))
}

/// How one PUT ended.
#[derive(Debug)]
pub enum PutOutcome {
    /// The store confirmed the object (or already held this very object, from an earlier
    /// attempt whose answer was lost).
    Stored,
    /// The key is taken by different content: the caller picks another key.
    KeyTaken,
}

/// Why a PUT failed; transient or not, the caller retries and never acks.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PutError(String);

impl PutError {
    pub fn new(reason: impl Into<String>) -> Self {
        Self(reason.into())
    }
}

pub struct Store {
    client: Client,
    bucket: String,
    lock: Option<(ObjectLockMode, Duration)>,
}

impl Store {
    /// The archive's store, from the flags.
    pub async fn connect(args: &ArchiveArgs) -> Result<Self> {
        let lock = match (args.archive_lock_mode, args.archive_retention) {
            (LockMode::Governance, Some(period)) => Some((ObjectLockMode::Governance, period)),
            (LockMode::Compliance, Some(period)) => Some((ObjectLockMode::Compliance, period)),
            _ => None,
        };
        Ok(Self {
            client: client(&args.store).await?,
            bucket: args.archive_bucket.clone().unwrap_or_default(),
            lock,
        })
    }

    /// Checks once at start-up that the bucket is there, reachable with these credentials,
    /// and has Object Lock when retention is asked for. A definite refusal is a configuration
    /// error (the pod fails and says why); a store that cannot be reached yet is only logged,
    /// as uploads are retried anyway.
    pub async fn check(&self) -> Result<()> {
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => {}
            Err(err) => match status(&err) {
                Some(status @ (301 | 400 | 403 | 404)) => {
                    return Err(Error::Archive(format!(
                        "the bucket {:?} {} (HTTP {status}); check --archive-bucket, \
                         --archive-region, --archive-endpoint and the credentials",
                        self.bucket,
                        match status {
                            404 => "does not exist",
                            403 => "refuses these credentials",
                            _ => "cannot be used as configured",
                        }
                    )));
                }
                _ => {
                    tracing::warn!(
                        bucket = %self.bucket,
                        err = %describe(&err),
                        "cannot reach the archive yet; segments are kept and retried"
                    );
                    return Ok(());
                }
            },
        }
        if self.lock.is_none() {
            return Ok(());
        }
        let answer = self
            .client
            .get_object_lock_configuration()
            .bucket(&self.bucket)
            .send()
            .await;
        match answer {
            Ok(output) => {
                let enabled = output
                    .object_lock_configuration()
                    .and_then(|config| config.object_lock_enabled());
                if enabled != Some(&ObjectLockEnabled::Enabled) {
                    return Err(self.no_object_lock());
                }
                Ok(())
            }
            Err(err)
                if err.as_service_error().and_then(|e| e.code())
                    == Some("ObjectLockConfigurationNotFoundError") =>
            {
                Err(self.no_object_lock())
            }
            Err(err) => {
                // Some stores answer in a shape the SDK cannot read; the first PUT with
                // retention will say for certain.
                tracing::warn!(
                    bucket = %self.bucket,
                    err = %describe(&err),
                    "cannot read the bucket's Object Lock configuration; relying on the \
                     store to refuse segments it cannot retain"
                );
                Ok(())
            }
        }
    }

    fn no_object_lock(&self) -> Error {
        Error::Archive(format!(
            "the bucket {:?} has no Object Lock, so --archive-lock-mode cannot be applied: \
             create a bucket with Object Lock enabled (it cannot be turned on for most existing \
             buckets), or drop --archive-lock-mode",
            self.bucket
        ))
    }

    /// Stores `upload` under its key unless the key exists. The checksum makes the store
    /// refuse a body damaged on the way; the retention, if any, starts now.
    pub async fn put_once(&self, upload: Upload) -> Result<PutOutcome, PutError> {
        let checksum = upload.checksum_sha256;
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&upload.key)
            .if_none_match("*")
            .content_type(upload.content_type)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .checksum_sha256(&checksum)
            .body(ByteStream::from(upload.body));
        for (name, value) in upload.metadata {
            request = request.metadata(name, value);
        }
        if let Some((mode, period)) = &self.lock {
            let until = SystemTime::now() + *period;
            request = request
                .object_lock_mode(mode.clone())
                .object_lock_retain_until_date(DateTime::from(until));
        }
        match request.send().await {
            Ok(_) => Ok(PutOutcome::Stored),
            // 412: the key exists. 409: another PUT of it is still in progress.
            Err(err) if matches!(status(&err), Some(412 | 409)) => {
                self.existing_matches(&upload.key, &checksum).await
            }
            Err(err) => Err(PutError(describe(&err))),
        }
    }

    /// After a refused create: is what the key holds this very body (our own earlier attempt,
    /// whose answer was lost)? Without a checksum to compare, it counts as taken: a second
    /// copy under another key is a duplicate, never a loss.
    async fn existing_matches(&self, key: &str, checksum: &str) -> Result<PutOutcome, PutError> {
        let head = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
            .map_err(|err| PutError(describe(&err)))?;
        if head.checksum_sha256() == Some(checksum) {
            Ok(PutOutcome::Stored)
        } else {
            Ok(PutOutcome::KeyTaken)
        }
    }
}

/// The archive as `verify --archive` reads it: listing and reading only, so that the
/// verifier's credentials need no write permission at all.
pub struct ArchiveReader {
    client: Client,
    bucket: String,
}

impl ArchiveReader {
    pub async fn connect(args: &StoreArgs, bucket: &str) -> Result<Self> {
        Ok(Self {
            client: client(args).await?,
            bucket: bucket.to_owned(),
        })
    }

    /// Every object under `prefix` with when the store took it, in the store's
    /// (lexicographic) order.
    pub async fn list(&self, prefix: &str) -> Result<Vec<Listed>> {
        let mut listed = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|err| {
                Error::Archive(format!(
                    "cannot list s3://{}/{prefix}: {}",
                    self.bucket,
                    describe(&err)
                ))
            })?;
            listed.extend(page.contents().iter().filter_map(|object| {
                Some(Listed {
                    key: object.key()?.to_owned(),
                    stored: object
                        .last_modified()
                        .and_then(|at| SystemTime::try_from(*at).ok()),
                })
            }));
        }
        Ok(listed)
    }

    /// One object's bytes, as stored.
    pub async fn read(&self, key: &str) -> Result<Vec<u8>> {
        let failed = |reason: String| {
            Error::Archive(format!("cannot read s3://{}/{key}: {reason}", self.bucket))
        };
        let object = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|err| failed(describe(&err)))?;
        let body = object
            .body
            .collect()
            .await
            .map_err(|err| failed(err.to_string()))?;
        Ok(body.into_bytes().to_vec())
    }
}

/// An S3 client from the flags: static credentials from files or the SDK's default chain,
/// the endpoint's CA, path-style addressing, bounded attempts.
pub async fn client(args: &StoreArgs) -> Result<Client> {
    let mut trust = TrustStore::default();
    if let Some(path) = &args.archive_ca_file {
        let pem = tokio::fs::read(path)
            .await
            .map_err(|source| Error::ReadSecret {
                what: "archive CA",
                path: path.clone(),
                source,
            })?;
        trust = TrustStore::empty().with_pem_certificate(pem);
    }
    let tls = TlsContext::builder()
        .with_trust_store(trust)
        .build()
        .map_err(|err| Error::Config(format!("--archive-ca-file: {err}")))?;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .tls_context(tls)
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http);
    if let Some(region) = &args.archive_region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let (Some(id), Some(secret)) = (
        &args.archive_access_key_id_file,
        &args.archive_secret_access_key_file,
    ) {
        let id = read_secret("archive access key id", id).await?;
        let secret = read_secret("archive secret access key", secret).await?;
        loader = loader.credentials_provider(Credentials::new(
            id,
            secret,
            None,
            None,
            "audit-consumer-files",
        ));
    }
    let shared = loader.load().await;
    if shared.region().is_none() {
        return Err(Error::Config(
            "the archive has no region: set --archive-region (or AWS_REGION)".into(),
        ));
    }
    // Bounded attempts: a store that accepts the connection and then hangs must not hold
    // the worker (and its shutdown) forever; the SDK's own retries come on top.
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .operation_attempt_timeout(Duration::from_secs(120))
        .build();
    let mut config = aws_sdk_s3::config::Builder::from(&shared)
        .timeout_config(timeouts)
        .force_path_style(args.archive_path_style);
    if let Some(endpoint) = &args.archive_endpoint {
        config = config.endpoint_url(endpoint);
    }
    Ok(Client::from_conf(config.build()))
}

fn status<E, R>(err: &SdkError<E, R>) -> Option<u16>
where
    R: HasStatus,
{
    err.raw_response().map(HasStatus::status_code)
}

/// The HTTP status of a raw response, whatever the SDK's response type.
trait HasStatus {
    fn status_code(&self) -> u16;
}

impl HasStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

/// An SDK error in one line: the store's code and message when it answered, else the cause
/// (connection refused, timeout, ...). Never includes credentials: the SDK does not put them
/// in errors.
fn describe<E, R>(err: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    if let Some(service) = err.as_service_error() {
        let code = service.code().unwrap_or("unknown");
        let message = service.message().unwrap_or("");
        return format!("{code}: {message}")
            .trim_end_matches(": ")
            .to_owned();
    }
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
