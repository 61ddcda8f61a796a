//! Proves the object store of the test environment is real and does what the archive output
//! relies on: a create-only write (If-None-Match: *) is refused when the key exists, a wrong
//! SHA-256 checksum is refused, and an object under compliance-mode Object Lock can be neither
//! deleted nor shortened in retention.

use aws_sdk_s3::primitives::{ByteStream, DateTime};
use aws_sdk_s3::types::{ChecksumAlgorithm, ObjectLockMode};
use base64::Engine as _;
use sha2::Digest as _;

use audit_tests::s3::ObjectStore;

fn sha256_base64(body: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(body))
}

fn in_days(days: i64) -> DateTime {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64;
    DateTime::from_secs(now + days * 86_400)
}

#[tokio::test]
async fn create_only_writes_refuse_an_existing_key_and_a_wrong_checksum() -> anyhow::Result<()> {
    let store = ObjectStore::start().await?;
    store.create_bucket("plain").await?;
    let client = store.client();
    let body = b"line one\nline two\n";
    client
        .put_object()
        .bucket("plain")
        .key("a/segment")
        .if_none_match("*")
        .checksum_algorithm(ChecksumAlgorithm::Sha256)
        .checksum_sha256(sha256_base64(body))
        .body(ByteStream::from_static(body))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("first write: {e:?}"))?;

    let again = client
        .put_object()
        .bucket("plain")
        .key("a/segment")
        .if_none_match("*")
        .body(ByteStream::from_static(b"replaced\n"))
        .send()
        .await;
    let status = again
        .as_ref()
        .err()
        .and_then(|e| e.raw_response())
        .map(|r| r.status().as_u16());
    assert_eq!(
        status,
        Some(412),
        "an existing key must be refused: {again:?}"
    );
    assert_eq!(store.get("plain", "a/segment").await?, body);

    let corrupt = client
        .put_object()
        .bucket("plain")
        .key("b/segment")
        .if_none_match("*")
        .checksum_algorithm(ChecksumAlgorithm::Sha256)
        .checksum_sha256(sha256_base64(b"something else"))
        .body(ByteStream::from_static(body))
        .send()
        .await;
    assert!(corrupt.is_err(), "a wrong checksum must be refused");
    assert_eq!(store.keys("plain", "b/").await?, Vec::<String>::new());
    Ok(())
}

#[tokio::test]
async fn compliance_retention_refuses_deletion_and_shortening() -> anyhow::Result<()> {
    let store = ObjectStore::start().await?;
    store.create_bucket_with_object_lock("locked").await?;
    let client = store.client();
    let body = b"kept for a year\n";
    let put = client
        .put_object()
        .bucket("locked")
        .key("segment")
        .if_none_match("*")
        .checksum_algorithm(ChecksumAlgorithm::Sha256)
        .checksum_sha256(sha256_base64(body))
        .object_lock_mode(ObjectLockMode::Compliance)
        .object_lock_retain_until_date(in_days(365))
        .body(ByteStream::from_static(body))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("locked write: {e:?}"))?;
    let version = put.version_id().map(str::to_owned);

    // HEAD, not GetObjectRetention: versitygw names that answer's XML root differently from
    // AWS, which the SDK refuses; the headers are the same everywhere.
    let head = client
        .head_object()
        .bucket("locked")
        .key("segment")
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("reading retention: {e:?}"))?;
    assert_eq!(head.object_lock_mode(), Some(&ObjectLockMode::Compliance));
    let until = head
        .object_lock_retain_until_date()
        .expect("a retain-until date is set");
    assert!(
        until.secs() > in_days(364).secs(),
        "retained for a year: {until}"
    );

    let deleted = client
        .delete_object()
        .bucket("locked")
        .key("segment")
        .set_version_id(version.clone())
        .send()
        .await;
    assert!(deleted.is_err(), "a locked version must not be deletable");
    let shortened = client
        .put_object_retention()
        .bucket("locked")
        .key("segment")
        .set_version_id(version)
        .retention(
            aws_sdk_s3::types::ObjectLockRetention::builder()
                .mode(aws_sdk_s3::types::ObjectLockRetentionMode::Compliance)
                .retain_until_date(in_days(1))
                .build(),
        )
        .send()
        .await;
    assert!(
        shortened.is_err(),
        "compliance retention must not be shortened"
    );
    assert_eq!(store.get("locked", "segment").await?, body);
    Ok(())
}
