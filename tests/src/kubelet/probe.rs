//! Container probes as a kubelet runs them: an HTTP GET on the container's (rewritten) port,
//! every `periodSeconds` after `initialDelaySeconds`, with `timeoutSeconds`, and a result that
//! flips only after `successThreshold` successes or `failureThreshold` failures in a row.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::container::ProbeSpec;

/// One probe of one container run; a restarted container gets new probers.
#[derive(Debug)]
pub(super) struct Prober {
    spec: ProbeSpec,
    next: Instant,
    successes: u32,
    failures: u32,
    result: bool,
}

impl Prober {
    /// `initial` is the result before the first probe: a kubelet assumes a container alive
    /// until its liveness probe fails, but neither started nor ready until a probe succeeds.
    pub fn new(spec: ProbeSpec, initial: bool) -> Self {
        Self {
            next: Instant::now() + spec.initial_delay,
            spec,
            successes: 0,
            failures: 0,
            result: initial,
        }
    }

    pub fn result(&self) -> bool {
        self.result
    }

    pub fn failure_threshold_reached(&self) -> bool {
        self.failures >= self.spec.failure_threshold
    }

    /// Probes if it is time to; returns the (possibly unchanged) result.
    pub async fn tick(&mut self) -> bool {
        let now = Instant::now();
        if now < self.next {
            return self.result;
        }
        self.next = now + self.spec.period;
        let ok = tokio::time::timeout(
            self.spec.timeout,
            http_get_ok(self.spec.port, &self.spec.path),
        )
        .await
        .unwrap_or(false);
        if ok {
            self.failures = 0;
            self.successes += 1;
            if self.successes >= self.spec.success_threshold {
                self.result = true;
            }
        } else {
            self.successes = 0;
            self.failures += 1;
            if self.failures >= self.spec.failure_threshold {
                self.result = false;
            }
        }
        self.result
    }

    /// Time until the next probe is due.
    pub fn due_in(&self) -> Duration {
        self.next.saturating_duration_since(Instant::now())
    }
}

/// Whether `GET http://127.0.0.1:<port><path>` answers 2xx or 3xx, which a kubelet's HTTP probe
/// counts as success.
async fn http_get_ok(port: u16, path: &str) -> bool {
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nUser-Agent: kube-probe\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response);
    text.starts_with("HTTP/1.")
        && text
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse::<u16>().ok())
            .is_some_and(|code| (200..400).contains(&code))
}
