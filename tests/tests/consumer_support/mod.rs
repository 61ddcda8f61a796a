//! Shared by the `consumer_*` tests: the real `audit-consumer` binary as a child process, its
//! standard output as lines, its probes over plain HTTP, and helpers to publish events.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use audit_tests::cargo_bin;
use audit_tests::ports::free_port;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

pub const STREAM: &str = "AUDIT";
pub const SUBJECTS: &str = "audit.>";

/// A stream and a durable pull consumer as the operator would create them.
pub async fn create_stream_and_consumer(
    js: &jetstream::Context,
    consumer_name: &str,
    ack_wait: Duration,
) -> anyhow::Result<()> {
    create_stream_and_limited_consumer(js, consumer_name, ack_wait, 0).await
}

/// [`create_stream_and_consumer`] with a `max_deliver` limit (0 for none).
pub async fn create_stream_and_limited_consumer(
    js: &jetstream::Context,
    consumer_name: &str,
    ack_wait: Duration,
    max_deliver: i64,
) -> anyhow::Result<()> {
    let stream = js
        .get_or_create_stream(stream::Config {
            name: STREAM.into(),
            subjects: vec![SUBJECTS.into()],
            ..Default::default()
        })
        .await?;
    stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(consumer_name.into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait,
            max_deliver,
            ..Default::default()
        })
        .await?;
    Ok(())
}

/// Publishes `count` structured events with ids `prefix-<n>`, each with a `Nats-Msg-Id`
/// header; returns the stream sequence of each id.
pub async fn publish_events(
    js: &jetstream::Context,
    prefix: &str,
    count: usize,
) -> anyhow::Result<HashMap<String, u64>> {
    // A bounded window of outstanding publishes: the JetStream context limits acks in flight,
    // and a publisher that never awaits them would wait forever for a free slot.
    let mut window = std::collections::VecDeque::with_capacity(1024);
    let mut sequences = HashMap::with_capacity(count);
    for n in 0..count {
        let id = format!("{prefix}-{n}");
        let payload = serde_json::json!({
            "specversion": "1.0", "id": id, "source": "/tests", "type": "audit.test",
            "data": {"n": n},
        });
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.as_str());
        let ack = js
            .publish_with_headers(
                format!("audit.{}", n % 3),
                headers,
                payload.to_string().into(),
            )
            .await?;
        window.push_back((id, ack));
        if window.len() == 1024 {
            let (id, ack) = window.pop_front().expect("window is full");
            sequences.insert(id, ack.await?.sequence);
        }
    }
    for (id, ack) in window {
        sequences.insert(id, ack.await?.sequence);
    }
    Ok(sequences)
}

/// Waits until the consumer has nothing left to deliver and nothing waiting for an ack.
pub async fn wait_until_drained(
    js: &jetstream::Context,
    consumer_name: &str,
) -> anyhow::Result<()> {
    let stream = js.get_stream(STREAM).await?;
    audit_tests::wait::until(
        "the consumer to have nothing pending",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            let info = stream.consumer_info(consumer_name).await?;
            Ok((info.num_pending == 0 && info.num_ack_pending == 0).then_some(()))
        },
    )
    .await
}

pub struct ConsumerProcess {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    health_port: u16,
    stderr_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl ConsumerProcess {
    /// Starts `audit-consumer` bound to `consumer_name` on [`STREAM`] with a short
    /// missing-consumer grace; `extra` adds or overrides options.
    pub fn start(nats_url: &str, consumer_name: &str, extra: &[&str]) -> anyhow::Result<Self> {
        Self::start_with_stdout(nats_url, consumer_name, extra, Stdio::piped())
    }

    pub fn start_with_stdout(
        nats_url: &str,
        consumer_name: &str,
        extra: &[&str],
        stdout: Stdio,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("audit-consumer-")
            .tempdir()?;
        let stderr_path = dir.path().join("stderr.log");
        let health_port = free_port();
        let mut command = Command::new(cargo_bin("audit-consumer"));
        // The operator's contract is the environment as much as the flags: use both.
        command
            .env("AUDIT_CONSUMER_NATS_URL", nats_url)
            .env("AUDIT_CONSUMER_STREAM", STREAM)
            .args(["--consumer", consumer_name])
            .args(["--health-listen", &format!("127.0.0.1:{health_port}")])
            .args(["--missing-consumer-grace", "2s", "--info-interval", "1s"])
            .args(["--log-level", "audit_consumer=debug,info"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(std::fs::File::create(&stderr_path)?)
            .kill_on_drop(true);
        let mut child = command.spawn()?;
        let (sender, lines) = mpsc::unbounded_channel();
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(async move {
                let mut reader = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    if sender.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Self {
            child,
            lines,
            health_port,
            stderr_path,
            _dir: dir,
        })
    }

    /// Reads lines until `count` have arrived, failing after `timeout`.
    pub async fn read_lines(
        &mut self,
        count: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<String>> {
        let mut lines = Vec::with_capacity(count);
        let deadline = tokio::time::Instant::now() + timeout;
        while lines.len() < count {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => lines.push(line),
                Ok(None) => anyhow::bail!(
                    "standard output closed after {} of {count} lines; stderr:\n{}",
                    lines.len(),
                    self.stderr()
                ),
                Err(_) => anyhow::bail!(
                    "only {} of {count} lines after {timeout:?}; stderr:\n{}",
                    lines.len(),
                    self.stderr()
                ),
            }
        }
        Ok(lines)
    }

    /// Every line still to come, until standard output closes (the process exited).
    pub async fn remaining_lines(&mut self, timeout: Duration) -> anyhow::Result<Vec<String>> {
        let mut lines = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => lines.push(line),
                Ok(None) => return Ok(lines),
                Err(_) => anyhow::bail!("standard output still open after {timeout:?}"),
            }
        }
    }

    /// Lines already printed, without waiting.
    pub fn lines_so_far(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        while let Ok(line) = self.lines.try_recv() {
            lines.push(line);
        }
        lines
    }

    /// Standard error so far, with the exit status if the process has ended.
    pub fn stderr(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let pid = self
            .child
            .id()
            .map_or("exited".to_owned(), |pid| format!("pid {pid}"));
        format!("[{pid}]\n{text}")
    }

    /// `GET path` on the health listener: (status code, body); connection errors as `Err`.
    pub async fn http_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.health_port)).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("malformed response: {response:?}"))?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    }

    /// Waits until `/readyz` answers `want_ready`.
    pub async fn wait_ready(&self, want_ready: bool, timeout: Duration) -> anyhow::Result<()> {
        audit_tests::wait::until(
            &format!("/readyz to report ready={want_ready}"),
            timeout,
            Duration::from_millis(100),
            || async {
                let (status, _) = self.http_get("/readyz").await?;
                Ok(((status == 200) == want_ready).then_some(()))
            },
        )
        .await
        .map_err(|err| anyhow::anyhow!("{err}; stderr:\n{}", self.stderr()))
    }

    /// The value of one sample in `/metrics`, e.g.
    /// `audit_consumer_events_total{outcome="naked",kind="structured"}`.
    pub async fn metric(&self, sample: &str) -> anyhow::Result<f64> {
        let (_, body) = self.http_get("/metrics").await?;
        body.lines()
            .find_map(|line| {
                line.strip_prefix(sample)
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .ok_or_else(|| anyhow::anyhow!("{sample} not in metrics:\n{body}"))
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) -> anyhow::Result<()> {
        self.signal("TERM")
    }

    /// Sends SIGKILL: no shutdown at all, as when a node dies or the OOM killer strikes.
    pub fn kill(&self) -> anyhow::Result<()> {
        self.signal("KILL")
    }

    fn signal(&self, name: &str) -> anyhow::Result<()> {
        let pid = self
            .child
            .id()
            .ok_or_else(|| anyhow::anyhow!("process already reaped"))?;
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -{name} {pid} failed");
        Ok(())
    }

    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => anyhow::bail!(
                "still running after {timeout:?}; stderr:\n{}",
                self.stderr()
            ),
        }
    }
}

/// Parses a JSON-format line, failing with the line itself.
pub fn parse_json_line(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|err| panic!("unparseable line ({err}): {line:?}"))
}

/// The CloudEvent id of a structured JSON-format line.
pub fn event_id(line: &serde_json::Value) -> String {
    line["event"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no event id in {line}"))
        .to_owned()
}
