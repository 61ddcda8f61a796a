//! The text view of a status report (pure): one block per object, every condition message in
//! full (continuation lines indented under their first), numbers next to their limits.

use std::fmt::Write as _;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;

use super::model::{ConsumerReport, PodReport, Ready, StatusReport, StreamReport, WarningEvent};

pub fn render(report: &StatusReport, now: Timestamp, events_window: &str) -> String {
    let mut out = String::new();
    if report.streams.is_empty() && report.consumers.is_empty() {
        out.push_str("No AuditStreams or AuditConsumers found.\n");
    }
    for stream in &report.streams {
        render_stream(&mut out, stream, now, events_window);
        out.push('\n');
    }
    for consumer in &report.consumers {
        render_consumer(&mut out, consumer, now, events_window);
        out.push('\n');
    }
    out
}

fn render_stream(out: &mut String, stream: &StreamReport, now: Timestamp, window: &str) {
    let _ = writeln!(
        out,
        "AuditStream {}/{}: {}",
        stream.namespace,
        stream.name,
        headline(stream.ready.as_ref())
    );
    field(
        out,
        "NATS stream",
        stream.stream_name.as_deref().unwrap_or("-"),
    );
    generation(out, stream.generation, stream.observed_generation);
    conditions(out, &stream.conditions, now);
    let limits = &stream.limits;
    field(
        out,
        "Messages",
        &against_limit(stream.messages, limits.max_messages, |n| n.to_string()),
    );
    field(
        out,
        "Bytes",
        &against_limit(stream.bytes, limits.max_bytes, bytes),
    );
    field(
        out,
        "Max age",
        limits.max_age.as_deref().unwrap_or("unlimited"),
    );
    if let Some(per_subject) = limits.max_messages_per_subject {
        field(out, "Max per subject", &per_subject.to_string());
    }
    field(
        out,
        "When full",
        match limits.discard.as_str() {
            "New" => "refuse new messages (discard New)",
            _ => "drop the oldest messages (discard Old)",
        },
    );
    field(
        out,
        "Sequences",
        &match (stream.first_seq, stream.last_seq) {
            (Some(first), Some(last)) => format!("{first} to {last}"),
            _ => "-".to_owned(),
        },
    );
    field(out, "Consumers", &optional(stream.consumer_count));
    warning_events(out, &stream.warning_events, now, window);
}

fn render_consumer(out: &mut String, consumer: &ConsumerReport, now: Timestamp, window: &str) {
    let _ = writeln!(
        out,
        "AuditConsumer {}/{}: {}",
        consumer.namespace,
        consumer.name,
        headline(consumer.ready.as_ref())
    );
    field(
        out,
        "Reads",
        &format!(
            "AuditStream {} (NATS stream {}, durable consumer {})",
            consumer.stream_ref,
            consumer.stream_name.as_deref().unwrap_or("-"),
            consumer.consumer_name.as_deref().unwrap_or("-")
        ),
    );
    generation(out, consumer.generation, consumer.observed_generation);
    conditions(out, &consumer.conditions, now);
    field(out, "Pending", &optional(consumer.pending));
    field(out, "Ack pending", &optional(consumer.ack_pending));
    field(
        out,
        "Acknowledged",
        &format!(
            "through sequence {}, delivered through {}, last ack {}",
            optional(consumer.ack_floor),
            optional(consumer.delivered),
            consumer
                .last_ack_time
                .as_deref()
                .map_or("-".to_owned(), |t| when(t, now))
        ),
    );
    field(out, "Redelivered", &optional(consumer.redelivered));
    field(out, "Given up", &given_up(consumer));
    pods(out, consumer, now);
    integrity(out, consumer, now);
    archive(out, consumer, now);
    warning_events(out, &consumer.warning_events, now, window);
}

fn headline(ready: Option<&Ready>) -> String {
    match ready {
        Some(r) if r.status == "True" => "Ready".to_owned(),
        Some(r) => format!("not Ready ({})", r.reason),
        None => "no status yet (is the operator running? `kubectl audit check`)".to_owned(),
    }
}

/// A label and a value, the value's continuation lines aligned under its first.
fn field(out: &mut String, label: &str, value: &str) {
    let indent = " ".repeat(2 + 17);
    let mut lines = value.lines();
    let _ = writeln!(out, "  {label:<16} {}", lines.next().unwrap_or(""));
    for line in lines {
        let _ = writeln!(out, "{indent}{line}");
    }
}

fn generation(out: &mut String, generation: Option<i64>, observed: Option<i64>) {
    if let (Some(generation), Some(observed)) = (generation, observed)
        && observed < generation
    {
        field(
            out,
            "Generation",
            &format!(
                "{generation}, but the status describes {observed}: the operator has not caught up"
            ),
        );
    }
}

fn conditions(out: &mut String, conditions: &[Condition], now: Timestamp) {
    if conditions.is_empty() {
        field(out, "Conditions", "none yet");
        return;
    }
    out.push_str("  Conditions:\n");
    for condition in conditions {
        let _ = writeln!(
            out,
            "    {}={} {} (since {})",
            condition.type_,
            condition.status,
            condition.reason,
            when(&condition.last_transition_time.0.to_string(), now)
        );
        for line in condition.message.lines() {
            let _ = writeln!(out, "      {line}");
        }
    }
}

fn given_up(consumer: &ConsumerReport) -> String {
    match consumer.max_deliver {
        None => "never (no maxDeliver)".to_owned(),
        Some(limit) => {
            let mut text = format!(
                "{} event(s) reached maxDeliver {limit}",
                optional(consumer.max_deliveries_reached)
            );
            if let Some(sequence) = consumer.last_max_delivered_sequence {
                let _ = write!(text, ", the last at stream sequence {sequence}");
            }
            text
        }
    }
}

fn pods(out: &mut String, consumer: &ConsumerReport, now: Timestamp) {
    let replicas = &consumer.replicas;
    field(
        out,
        "Pods",
        &format!(
            "{} desired, {} exist, {} ready",
            replicas.desired,
            optional(replicas.current),
            optional(replicas.ready)
        ),
    );
    for pod in &consumer.pods {
        out.push_str(&pod_line(pod, now));
    }
}

fn pod_line(pod: &PodReport, now: Timestamp) -> String {
    let mut line = format!(
        "    {} {}{}, restarts {}",
        pod.name,
        pod.state,
        if pod.ready { ", ready" } else { ", not ready" },
        pod.restarts
    );
    if let Some(reason) = &pod.reason {
        let _ = write!(line, ": {reason}");
    }
    if let Some(node) = &pod.node {
        let _ = write!(line, " (node {node})");
    }
    line.push('\n');
    if let Some(message) = &pod.message {
        for text in message.lines() {
            let _ = writeln!(line, "      {text}");
        }
    }
    if let Some(last) = &pod.last_termination {
        let _ = writeln!(
            line,
            "      previous container: {} exit {}{}",
            last.reason.as_deref().unwrap_or("ended"),
            last.exit_code,
            last.finished_at
                .as_deref()
                .map_or(String::new(), |t| format!(", {}", when(t, now)))
        );
        if let Some(message) = &last.message {
            for text in message.lines() {
                let _ = writeln!(line, "        {text}");
            }
        }
    }
    line
}

fn integrity(out: &mut String, consumer: &ConsumerReport, now: Timestamp) {
    let Some(integrity) = &consumer.integrity else {
        return;
    };
    field(
        out,
        "Integrity",
        &format!(
            "witness stream {}, subject {}\npublic key {}",
            integrity.witness_stream, integrity.subject, integrity.public_key
        ),
    );
    if integrity.checkpoints.is_empty() {
        out.push_str("    no checkpoint witnessed recently\n");
    }
    for checkpoint in &integrity.checkpoints {
        let _ = writeln!(
            out,
            "    {} witnessed line {} of chain {}, {}",
            checkpoint.pod,
            checkpoint.position,
            checkpoint.chain,
            when(&checkpoint.time, now)
        );
    }
    if integrity.rejected_checkpoints > 0 {
        let _ = writeln!(
            out,
            "    {} checkpoint(s) rejected: not signed by this key",
            integrity.rejected_checkpoints
        );
    }
}

fn archive(out: &mut String, consumer: &ConsumerReport, now: Timestamp) {
    let Some(archive) = &consumer.archive else {
        return;
    };
    let verification = match (&archive.verification_schedule, &archive.verification) {
        (None, _) => "no scheduled verification".to_owned(),
        (Some(schedule), None) => format!("scheduled \"{schedule}\", no run finished yet"),
        (Some(schedule), Some(last)) => {
            let mut text = format!(
                "{} {}, scheduled \"{schedule}\"\n{} segment(s), {} of {} chain(s) complete, {} problem(s), verified through {}",
                last.result,
                when(&last.last_run_time, now),
                last.segments,
                last.chains_complete,
                last.chains,
                last.problems,
                last.verified_through.as_deref().unwrap_or("-")
            );
            for finding in &last.findings {
                let _ = write!(text, "\n  {finding}");
            }
            text
        }
    };
    field(out, "Archive", &format!("bucket {}", archive.bucket));
    field(out, "Verification", &verification);
}

fn warning_events(out: &mut String, events: &[WarningEvent], now: Timestamp, window: &str) {
    if events.is_empty() {
        let _ = writeln!(out, "  Warning Events of the last {window}: none");
        return;
    }
    let _ = writeln!(out, "  Warning Events of the last {window}:");
    for event in events {
        let _ = writeln!(
            out,
            "    {} x{} {}",
            event.reason,
            event.count,
            event
                .last_seen
                .as_deref()
                .map_or(String::new(), |t| when(t, now))
        );
        for line in event.message.lines() {
            let _ = writeln!(out, "      {line}");
        }
    }
}

fn optional<T: ToString>(value: Option<T>) -> String {
    value.map_or("-".to_owned(), |v| v.to_string())
}

/// `used`, against `limit` when there is one: `120 of 1000 (12%)`.
fn against_limit(used: Option<u64>, limit: Option<i64>, show: impl Fn(u64) -> String) -> String {
    let used_text = used.map_or("-".to_owned(), &show);
    match (used, limit.and_then(|l| u64::try_from(l).ok())) {
        (Some(used), Some(limit)) if limit > 0 => {
            format!(
                "{used_text} of {} ({}%)",
                show(limit),
                used.saturating_mul(100) / limit
            )
        }
        (None, Some(limit)) => format!("{used_text} of {}", show(limit)),
        _ => format!("{used_text} (no limit)"),
    }
}

/// Bytes in binary units, exact below 1 KiB.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// An RFC 3339 time with how long ago it was.
fn when(time: &str, now: Timestamp) -> String {
    match time.parse::<Timestamp>() {
        Ok(then) => format!(
            "{time} ({} ago)",
            age(now.duration_since(then).as_secs().max(0))
        ),
        Err(_) => time.to_owned(),
    }
}

/// kubectl's way of saying an age: `45s`, `12m`, `3h`, `5d`.
fn age(seconds: i64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_show_the_share_used() {
        assert_eq!(
            against_limit(Some(120), Some(1000), |n| n.to_string()),
            "120 of 1000 (12%)"
        );
        assert_eq!(
            against_limit(Some(5), None, |n| n.to_string()),
            "5 (no limit)"
        );
        assert_eq!(
            against_limit(Some(2048), Some(1 << 20), bytes),
            "2.0 KiB of 1.0 MiB (0%)"
        );
        assert_eq!(bytes(1023), "1023 B");
    }

    #[test]
    fn long_messages_are_kept_whole_and_aligned() {
        let mut out = String::new();
        field(&mut out, "Verification", "first\nsecond");
        assert_eq!(out, "  Verification     first\n                   second\n");
    }

    #[test]
    fn a_status_behind_its_spec_or_missing_says_so() {
        let mut out = String::new();
        generation(&mut out, Some(3), Some(2));
        assert_eq!(
            out,
            "  Generation       3, but the status describes 2: the operator has not caught up\n"
        );
        let mut current = String::new();
        generation(&mut current, Some(2), Some(2));
        assert!(current.is_empty());
        assert!(headline(None).contains("kubectl audit check"));
    }

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(age(59), "59s");
        assert_eq!(age(600), "10m");
        assert_eq!(age(3 * 3600), "3h");
        assert_eq!(age(3 * 86_400), "3d");
    }
}
