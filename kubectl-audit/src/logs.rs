//! `kubectl audit logs NAME`: the lines of an AuditConsumer's pods as one trail, in stream
//! order (`stream_seq`, which audit-consumer writes in every event line, JSON or text), with
//! the previous container of each restarted pod included: its lines are part of the trail too.
//!
//! Lines without a sequence (the consumer's own messages) stay after the event line their pod
//! wrote before them. With `-f`, lines are held for a moment before they are printed, so that
//! lines of several pods arriving close together still come out in order.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use audit_operator::consumer::build::{deployment::CONTAINER_NAME, selector_string};
use audit_operator::crd::AuditConsumer;
use futures::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams, LogParams};
use tokio::sync::mpsc;
use tokio::time::{Instant, interval};

use crate::cli::LogsArgs;
use crate::client::Connection;
use crate::error::{Error, Result};

/// The field audit-consumer writes the stream sequence in (consumer/src/format.rs); a test
/// checks it against the consumer's own line writer.
pub const SEQUENCE_FIELD: &str = "stream_seq";
/// How long `-f` holds a line back for lines of other pods that belong before it.
const FOLLOW_HOLD: Duration = Duration::from_secs(1);

/// The sequence of an event line, JSON (`"stream_seq":42`) or text (`stream_seq=42`).
pub fn stream_sequence(line: &str) -> Option<u64> {
    if line.trim_start().starts_with('{') {
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        return value.get(SEQUENCE_FIELD)?.as_u64();
    }
    line.split_ascii_whitespace()
        .find_map(|pair| pair.strip_prefix(SEQUENCE_FIELD)?.strip_prefix('='))
        .and_then(|n| n.parse().ok())
}

/// Where a line sorts: its sequence (or the one before it in its source), then events before
/// the messages that followed them, then source and position.
type Key = (u64, bool, usize, u64);

/// Orders the lines of several sources.
#[derive(Default)]
struct Merge {
    last_sequence: Vec<u64>,
    positions: Vec<u64>,
    held: BTreeMap<Key, (String, Instant)>,
}

impl Merge {
    fn add(&mut self, source: usize, line: String, now: Instant) {
        if self.last_sequence.len() <= source {
            self.last_sequence.resize(source + 1, 0);
            self.positions.resize(source + 1, 0);
        }
        let sequence = stream_sequence(&line);
        if let Some(sequence) = sequence {
            self.last_sequence[source] = sequence;
        }
        let key = (
            self.last_sequence[source],
            sequence.is_none(),
            source,
            self.positions[source],
        );
        self.positions[source] += 1;
        self.held.insert(key, (line, now));
    }

    /// The held lines that arrived before `cutoff`, in order; every line without one.
    fn release(&mut self, cutoff: Option<Instant>) -> Vec<String> {
        let Some(cutoff) = cutoff else {
            return std::mem::take(&mut self.held)
                .into_values()
                .map(|(l, _)| l)
                .collect();
        };
        let mut out = Vec::new();
        // In key order, up to the first line still too young: what follows it waits with it.
        while let Some(entry) = self.held.first_entry() {
            if entry.get().1 > cutoff {
                break;
            }
            out.push(entry.remove().0);
        }
        out
    }
}

pub async fn run(connection: &Connection, args: &LogsArgs, out: &mut impl Write) -> Result<()> {
    let namespace = connection.namespace.as_str();
    let consumers: Api<AuditConsumer> = Api::namespaced(connection.client.clone(), namespace);
    let consumer = consumers
        .get_opt(&args.name)
        .await
        .map_err(Error::kube(format!(
            "reading AuditConsumer {namespace}/{}",
            args.name
        )))?
        .ok_or_else(|| Error::ConsumerNotFound {
            name: args.name.clone(),
            namespace: namespace.to_owned(),
        })?;
    let pods_api: Api<Pod> = Api::namespaced(connection.client.clone(), namespace);
    let pods = pods_api
        .list(&ListParams::default().labels(&selector_string(&consumer.name_any())))
        .await
        .map_err(Error::kube(format!(
            "listing the pods of AuditConsumer {namespace}/{}",
            args.name
        )))?
        .items;
    let (sender, mut receiver) = mpsc::channel::<(usize, String)>(1024);
    let mut source = 0;
    for pod in &pods {
        for previous in [true, false] {
            if previous && restarts(pod) == 0 {
                continue;
            }
            let params = LogParams {
                container: Some(CONTAINER_NAME.to_owned()),
                previous,
                follow: args.follow && !previous,
                since_seconds: args
                    .since
                    .map(|s| i64::try_from(s.as_secs()).unwrap_or(i64::MAX)),
                ..LogParams::default()
            };
            tokio::spawn(read_lines(
                pods_api.clone(),
                pod.name_any(),
                params,
                source,
                sender.clone(),
            ));
            source += 1;
        }
    }
    drop(sender);
    let mut merge = Merge::default();
    let mut tick = interval(FOLLOW_HOLD / 4);
    loop {
        tokio::select! {
            line = receiver.recv() => match line {
                Some((source, line)) => merge.add(source, line, Instant::now()),
                None => break,
            },
            _ = tick.tick(), if args.follow => {
                write_lines(out, merge.release(Some(Instant::now() - FOLLOW_HOLD)))?;
            }
        }
    }
    write_lines(out, merge.release(None))
}

fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|statuses| statuses.iter().find(|c| c.name == CONTAINER_NAME))
        .map_or(0, |c| c.restart_count)
}

/// Sends one container's lines; a container that cannot be read is named on stderr and
/// skipped (a pod that has not started has no log yet).
async fn read_lines(
    api: Api<Pod>,
    pod: String,
    params: LogParams,
    source: usize,
    lines: mpsc::Sender<(usize, String)>,
) {
    let which = if params.previous {
        "previous container"
    } else {
        "container"
    };
    let stream = match api.log_stream(&pod, &params).await {
        Ok(stream) => stream,
        Err(error) => {
            eprintln!("cannot read the logs of pod {pod} ({which}): {error}");
            return;
        }
    };
    let mut stream = std::pin::pin!(stream.lines());
    while let Some(line) = stream.next().await {
        match line {
            Ok(line) => {
                if lines.send((source, line)).await.is_err() {
                    return;
                }
            }
            Err(error) => {
                eprintln!("the logs of pod {pod} ({which}) broke off: {error}");
                return;
            }
        }
    }
}

fn write_lines(out: &mut impl Write, lines: Vec<String>) -> Result<()> {
    for line in lines {
        writeln!(out, "{line}").map_err(Error::Output)?;
    }
    out.flush().map_err(Error::Output)
}

#[cfg(test)]
mod tests {
    use audit_consumer::format::{Format, LineRenderer, Metadata};

    use super::*;

    fn consumer_line(format: Format, sequence: u64) -> String {
        let mut renderer = LineRenderer::new(format, Default::default());
        let meta = Metadata {
            subject: "audit.login",
            stream: "AUDIT",
            consumer: "logger",
            stream_sequence: sequence,
            consumer_sequence: 1,
            delivered: 1,
            pending: 0,
            published_nanos: 0,
            headers: None,
        };
        let mut out = Vec::new();
        renderer.render(&meta, br#"{"user":"stream_seq=1"}"#, &mut out);
        String::from_utf8(out).unwrap().trim_end().to_owned()
    }

    #[test]
    fn the_sequence_is_read_where_the_consumer_writes_it() {
        assert_eq!(stream_sequence(&consumer_line(Format::Json, 42)), Some(42));
        assert_eq!(stream_sequence(&consumer_line(Format::Text, 42)), Some(42));
        assert_eq!(stream_sequence("consumer started"), None);
    }

    #[test]
    fn lines_of_several_pods_come_out_in_stream_order() {
        let now = Instant::now();
        let mut merge = Merge::default();
        merge.add(0, r#"{"stream_seq":1}"#.into(), now);
        merge.add(0, "a message after 1".into(), now);
        merge.add(0, r#"{"stream_seq":4}"#.into(), now);
        merge.add(1, r#"{"stream_seq":2}"#.into(), now);
        merge.add(1, r#"{"stream_seq":3}"#.into(), now);
        assert_eq!(
            merge.release(None),
            [
                r#"{"stream_seq":1}"#,
                "a message after 1",
                r#"{"stream_seq":2}"#,
                r#"{"stream_seq":3}"#,
                r#"{"stream_seq":4}"#
            ]
        );
    }
}
