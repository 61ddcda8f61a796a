//! What a node-level log agent (Fluent Bit, Vector, Promtail) sees: the container log files
//! the runtime writes on the node, tailed as they grow, in the CRI format
//! (`<time> <stream> <P|F> <text>`). Unlike following logs through the API, this needs no API
//! server (so it sees through an API server restart) and keeps reading a file that was
//! removed with its pod, from the descriptor it holds.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

/// One line a container wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// When the runtime received it.
    pub time: Timestamp,
    /// The pod directory's name, `<namespace>_<pod>_<uid>`.
    pub pod: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    pub text: String,
}

/// A file being tailed: what was read, and a line begun but not finished.
struct Tailed {
    file: File,
    pod: String,
    unfinished: Vec<u8>,
    /// The text of partial (`P`) records until their final (`F`) one.
    partial: String,
}

/// Tails every container log file of one namespace's pods on the node until dropped.
pub struct NodeLogs {
    lines: Arc<Mutex<Vec<LogLine>>>,
    task: tokio::task::JoinHandle<()>,
}

impl NodeLogs {
    pub(super) fn tail(pod_logs_dir: PathBuf, namespace: &str) -> Self {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let prefix = format!("{namespace}_");
        let collected = lines.clone();
        let task = tokio::spawn(async move {
            let mut tailed: HashMap<PathBuf, Tailed> = HashMap::new();
            loop {
                let new = tail_once(&pod_logs_dir, &prefix, &mut tailed);
                collected
                    .lock()
                    .expect("no panic while holding the lines")
                    .extend(new);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Self { lines, task }
    }

    /// Every line so far, in the order read (per file, the order written).
    pub fn lines(&self) -> Vec<LogLine> {
        self.lines
            .lock()
            .expect("no panic while holding the lines")
            .clone()
    }

    /// The standard output lines so far, in time order.
    pub fn stdout(&self) -> Vec<LogLine> {
        let mut lines: Vec<LogLine> = self
            .lines()
            .into_iter()
            .filter(|line| line.stream == "stdout")
            .collect();
        lines.sort_by_key(|line| line.time);
        lines
    }
}

impl Drop for NodeLogs {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Opens the files that appeared, reads what every open file gained, and closes the files
/// that were removed and read to their end.
fn tail_once(dir: &Path, prefix: &str, tailed: &mut HashMap<PathBuf, Tailed>) -> Vec<LogLine> {
    for pod_dir in read_dir(dir) {
        let Some(pod) = pod_dir
            .file_name()
            .and_then(|name| name.to_str())
            .filter(|name| name.starts_with(prefix))
            .map(str::to_owned)
        else {
            continue;
        };
        for container_dir in read_dir(&pod_dir) {
            for file in read_dir(&container_dir) {
                if file.extension().is_some_and(|e| e == "log")
                    && !tailed.contains_key(&file)
                    && let Ok(opened) = File::open(&file)
                {
                    tailed.insert(
                        file,
                        Tailed {
                            file: opened,
                            pod: pod.clone(),
                            unfinished: Vec::new(),
                            partial: String::new(),
                        },
                    );
                }
            }
        }
    }
    let mut lines = Vec::new();
    tailed.retain(|path, tailed| {
        let mut bytes = Vec::new();
        let read = tailed.file.read_to_end(&mut bytes);
        tailed.unfinished.extend_from_slice(&bytes);
        while let Some(end) = tailed.unfinished.iter().position(|&b| b == b'\n') {
            let record: Vec<u8> = tailed.unfinished.drain(..=end).collect();
            if let Some(line) = parse_record(&record[..end], &tailed.pod, &mut tailed.partial) {
                lines.push(line);
            }
        }
        // Keep a file while it exists or still had something to read.
        read.is_ok() && (path.exists() || !bytes.is_empty())
    });
    lines
}

fn read_dir(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

/// One CRI log record: `<RFC 3339 time> <stdout|stderr> <P|F> <text>`. A `P` record is part of
/// a line that the following records continue; the `F` record ends it.
fn parse_record(record: &[u8], pod: &str, partial: &mut String) -> Option<LogLine> {
    let record = String::from_utf8_lossy(record);
    let mut fields = record.splitn(4, ' ');
    let time: Timestamp = fields.next()?.parse().ok()?;
    let stream = fields.next()?.to_owned();
    let tag = fields.next()?;
    partial.push_str(fields.next().unwrap_or_default());
    if tag == "P" {
        return None;
    }
    Some(LogLine {
        time,
        pod: pod.to_owned(),
        stream,
        text: std::mem::take(partial),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_and_partial_records_make_lines() {
        let mut partial = String::new();
        let line = parse_record(
            b"2026-11-28T08:15:50.438266123Z stdout F {\"kind\":\"raw\"}",
            "ns_pod_uid",
            &mut partial,
        )
        .unwrap();
        assert_eq!(line.stream, "stdout");
        assert_eq!(line.text, "{\"kind\":\"raw\"}");
        assert!(parse_record(b"2026-11-28T08:15:51Z stderr P first ", "p", &mut partial).is_none());
        let joined =
            parse_record(b"2026-11-28T08:15:51Z stderr F half", "p", &mut partial).unwrap();
        assert_eq!(joined.text, "first half");
        assert!(partial.is_empty());
        assert!(parse_record(b"not a record", "p", &mut partial).is_none());
    }
}
