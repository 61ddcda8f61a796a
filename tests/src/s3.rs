//! A real S3-compatible object store for the archive output's tests: versitygw (Apache-2.0,
//! pinned in hack/testenv.versions) with its posix backend and versioning, which is what S3
//! Object Lock needs, on 127.0.0.1. A test can stop and restart it on the same port and
//! directory to simulate an outage. Besides the root credentials, its internal IAM holds one
//! plain user, the reader, who has no rights until a bucket policy grants them
//! ([`ObjectStore::grant_read_only`]): what an archive verifier is given.

use std::process::Command;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::types::{
    BucketLocationConstraint, BucketVersioningStatus, CreateBucketConfiguration,
    VersioningConfiguration,
};
use aws_smithy_http_client::tls::Provider;
use aws_smithy_http_client::tls::rustls_provider::CryptoMode;
use tempfile::TempDir;

use crate::ports::{free_port, retry_lost_port_race};
use crate::process::ServerProcess;
use crate::testenv::testenv_bin;

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The region the store answers for; a client must sign for it.
pub const REGION: &str = "eu-central-1";

/// One versitygw process with its root directory and versioning directory in a temp dir.
pub struct ObjectStore {
    ip: std::net::Ipv4Addr,
    port: u16,
    access_key: String,
    secret_key: String,
    reader_access_key: String,
    reader_secret_key: String,
    process: Option<ServerProcess>,
    // Last: removed after the process that writes into it has stopped.
    dir: TempDir,
}

impl ObjectStore {
    /// Starts a store with fresh root credentials (random, so no test shares them).
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_on(std::net::Ipv4Addr::LOCALHOST).await
    }

    /// Starts a store listening on `ip` only: the node's address, for pods to reach.
    pub async fn start_on(ip: std::net::Ipv4Addr) -> anyhow::Result<Self> {
        retry_lost_port_race("versitygw", || async {
            let dir = tempfile::Builder::new().prefix("audit-s3-").tempdir()?;
            std::fs::create_dir_all(dir.path().join("root"))?;
            std::fs::create_dir_all(dir.path().join("versions"))?;
            let mut store = Self {
                ip,
                port: free_port(),
                access_key: format!("AKTEST{:010}", fastrand::u64(..10_000_000_000)),
                secret_key: (0..32).map(|_| fastrand::alphanumeric()).collect(),
                reader_access_key: format!("AKREAD{:010}", fastrand::u64(..10_000_000_000)),
                reader_secret_key: (0..32).map(|_| fastrand::alphanumeric()).collect(),
                process: None,
                dir,
            };
            store.write_iam()?;
            store.start_again().await?;
            Ok(store)
        })
        .await
    }

    /// Starts the store (again) on the same port with the same objects.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.process.is_none(), "versitygw is already running");
        let mut command = Command::new(testenv_bin("versitygw"));
        command
            .arg("--port")
            .arg(format!("{}:{}", self.ip, self.port))
            .arg("--region")
            .arg(REGION)
            .arg("--health")
            .arg("/health")
            .arg("--quiet")
            // The root credentials go through the environment, not the command line, as the
            // gateway's documentation recommends.
            .env("ROOT_ACCESS_KEY_ID", &self.access_key)
            .env("ROOT_SECRET_ACCESS_KEY", &self.secret_key)
            .arg("--iam-dir")
            .arg(self.dir.path().join("iam"))
            .arg("posix")
            .arg("--versioning-dir")
            .arg(self.dir.path().join("versions"))
            .arg(self.dir.path().join("root"));
        let mut process =
            ServerProcess::spawn("versitygw", command, &self.dir.path().join("versitygw.log"))?;
        process
            .wait_listening(self.ip, self.port, READY_TIMEOUT)
            .await?;
        self.process = Some(process);
        crate::wait::until(
            "versitygw to report healthy",
            READY_TIMEOUT,
            Duration::from_millis(50),
            || async {
                Ok(crate::http::get_from(self.ip, self.port, "/health")
                    .await
                    .ok()
                    .filter(|response| response.status == 200)
                    .map(|_| ()))
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}; last lines of its log:\n{}", self.log_tail()))
    }

    /// Stops the store (SIGTERM); objects and port stay for [`start_again`](Self::start_again).
    pub async fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            tokio::task::spawn_blocking(move || process.stop())
                .await
                .expect("stopping a server does not panic");
        }
    }

    /// The internal IAM's accounts file, before the first start: the reader as a plain user
    /// (`role: user`), who may touch only what a bucket policy grants.
    fn write_iam(&self) -> anyhow::Result<()> {
        let dir = self.dir.path().join("iam");
        std::fs::create_dir_all(&dir)?;
        let users = serde_json::json!({
            "accessAccounts": {
                self.reader_access_key.as_str(): {
                    "access": self.reader_access_key,
                    "secret": self.reader_secret_key,
                    "role": "user",
                    "userID": 0,
                    "groupID": 0,
                    "projectID": 0,
                }
            }
        });
        std::fs::write(dir.join("users.json"), serde_json::to_vec(&users)?)?;
        Ok(())
    }

    /// The reader's key pair: a user with no rights of its own.
    pub fn reader_keys(&self) -> (&str, &str) {
        (&self.reader_access_key, &self.reader_secret_key)
    }

    /// A bucket policy that lets the reader list `bucket` and read its objects, and nothing
    /// else: the rights `verify --archive` needs.
    pub async fn grant_read_only(&self, bucket: &str) -> anyhow::Result<()> {
        let policy = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": [self.reader_access_key]},
                    "Action": ["s3:ListBucket"],
                    "Resource": [format!("arn:aws:s3:::{bucket}")],
                },
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": [self.reader_access_key]},
                    "Action": ["s3:GetObject"],
                    "Resource": [format!("arn:aws:s3:::{bucket}/*")],
                }
            ]
        });
        self.client()
            .put_bucket_policy()
            .bucket(bucket)
            .policy(policy.to_string())
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("granting the reader {bucket}: {e:?}"))?;
        Ok(())
    }

    /// A client with the reader's credentials.
    pub fn reader_client(&self) -> Client {
        self.client_with(&self.reader_access_key, &self.reader_secret_key)
    }

    /// `http://<ip>:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}:{}", self.ip, self.port)
    }

    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// Where the posix backend keeps bucket `bucket`'s current objects, to damage them behind
    /// the store's back as an administrator of the storage could.
    pub fn bucket_dir(&self, bucket: &str) -> std::path::PathBuf {
        self.dir.path().join("root").join(bucket)
    }

    /// A client with the root credentials.
    pub fn client(&self) -> Client {
        self.client_with(&self.access_key, &self.secret_key)
    }

    fn client_with(&self, access_key: &str, secret_key: &str) -> Client {
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(self.endpoint())
            .force_path_style(true)
            .http_client(
                aws_smithy_http_client::Builder::new()
                    .tls_provider(Provider::Rustls(CryptoMode::Ring))
                    .build_https(),
            )
            .credentials_provider(Credentials::new(
                access_key,
                secret_key,
                None,
                None,
                "audit-tests",
            ))
            .build();
        Client::from_conf(config)
    }

    /// A bucket with Object Lock enabled (and so versioning), as a compliance archive uses.
    pub async fn create_bucket_with_object_lock(&self, bucket: &str) -> anyhow::Result<()> {
        self.client()
            .create_bucket()
            .bucket(bucket)
            .create_bucket_configuration(location())
            .object_lock_enabled_for_bucket(true)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("creating bucket {bucket}: {e:?}"))?;
        Ok(())
    }

    /// A plain bucket: no versioning, no Object Lock.
    pub async fn create_bucket(&self, bucket: &str) -> anyhow::Result<()> {
        self.client()
            .create_bucket()
            .bucket(bucket)
            .create_bucket_configuration(location())
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("creating bucket {bucket}: {e:?}"))?;
        Ok(())
    }

    /// Turns versioning on for an existing bucket.
    pub async fn enable_versioning(&self, bucket: &str) -> anyhow::Result<()> {
        self.client()
            .put_bucket_versioning()
            .bucket(bucket)
            .versioning_configuration(
                VersioningConfiguration::builder()
                    .status(BucketVersioningStatus::Enabled)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("versioning bucket {bucket}: {e:?}"))?;
        Ok(())
    }

    /// Every key in `bucket` under `prefix`, in key order.
    pub async fn keys(&self, bucket: &str, prefix: &str) -> anyhow::Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut pages = self
            .client()
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| anyhow::anyhow!("listing {bucket}/{prefix}: {e:?}"))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
        }
        keys.sort();
        Ok(keys)
    }

    /// The body of one object.
    pub async fn get(&self, bucket: &str, key: &str) -> anyhow::Result<Vec<u8>> {
        let object = self
            .client()
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("getting {bucket}/{key}: {e:?}"))?;
        Ok(object.body.collect().await?.into_bytes().to_vec())
    }

    /// The last lines of the store's log, for failure messages.
    pub fn log_tail(&self) -> String {
        crate::process::log_tail(&self.dir.path().join("versitygw.log"), 40)
    }
}

fn location() -> CreateBucketConfiguration {
    CreateBucketConfiguration::builder()
        .location_constraint(BucketLocationConstraint::from(REGION))
        .build()
}
