//! Benchmark helper: how long an event waits between its publish and its line, for
//! `hack/bench-latency.sh` (see docs/benchmarks.md, "Publish-to-line latency").
//!
//! Usage: latency <nats-url> <audit-consumer> <rate> <seconds> <pods> <health-port> [flag...]
//!
//! Publishes `rate` events/s for `seconds` into a fresh stream, each carrying the wall-clock
//! time of its publish, and measures that time's distance to the moment the event comes out
//! at the other end, in two ways back to back on the same server:
//! - bare: `pods` tasks running a bare async-nats pull-and-ack loop (the consumer's pull
//!   settings, no parsing, formatting or output): the floor JetStream itself sets;
//! - audit-consumer: `pods` processes of the real binary (with the extra `flag`s), their
//!   standard output read here line by line; the latency is taken when the line arrives.
//!
//! The first second is warm-up and not counted. Prints one Markdown table row per way:
//! rate, pods, way, events counted, p50, p99, max (milliseconds).

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};

const SUBJECT: &str = "latency.events";
const WARM_UP: Duration = Duration::from_secs(1);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), async_nats::Error> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, binary, rate, seconds, pods, health_port, flags @ ..] = args.as_slice() else {
        eprintln!(
            "usage: latency <nats-url> <audit-consumer> <rate> <seconds> <pods> <health-port> [flag...]"
        );
        std::process::exit(2);
    };
    let rate: u64 = rate.parse()?;
    let duration = Duration::from_secs(seconds.parse()?);
    let pods: u16 = pods.parse()?;
    let health_port: u16 = health_port.parse()?;
    let client = async_nats::connect(url.as_str()).await?;
    let js = jetstream::new(client);

    // The bare loop: the same pull settings as audit-consumer's defaults.
    let samples = fresh_stream(&js, "LATENCY_BARE").await?;
    let mut loops = Vec::new();
    for _ in 0..pods {
        let consumer = js
            .get_stream("LATENCY_BARE")
            .await?
            .get_or_create_consumer(
                "bare",
                pull::Config {
                    durable_name: Some("bare".to_owned()),
                    ..Default::default()
                },
            )
            .await?;
        let samples = samples.clone();
        loops.push(tokio::spawn(async move {
            let mut messages = consumer
                .stream()
                .max_messages_per_batch(256)
                .max_bytes_per_batch(4 * 1024 * 1024)
                .expires(Duration::from_secs(30))
                .heartbeat(Duration::from_secs(5))
                .messages()
                .await?;
            while let Some(message) = messages.next().await {
                let message = message?;
                record(&samples, &message.payload);
                message.ack().await?;
            }
            Ok::<(), async_nats::Error>(())
        }));
    }
    let published_from = publish(&js, "LATENCY_BARE", rate, duration).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for task in loops {
        task.abort();
    }
    print_row(rate, pods, "bare async-nats loop", &samples, published_from);

    // The real binary, its output read here.
    let samples = fresh_stream(&js, "LATENCY_CONSUMER").await?;
    let mut children = Vec::new();
    for pod in 0..pods {
        let mut child = tokio::process::Command::new(binary)
            .args(["--nats-url", url, "--stream", "LATENCY_CONSUMER"])
            .args(["--consumer", "audit", "--log-level", "warn", "--create"])
            .arg(format!("--subjects={SUBJECT}.LATENCY_CONSUMER"))
            .arg(format!("--health-listen=127.0.0.1:{}", health_port + pod))
            .args(flags)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no standard output")?;
        let samples = samples.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                record(&samples, line.as_bytes());
            }
        });
        children.push(child);
    }
    // The pods create the durable consumer; publish once it exists.
    wait_for_consumer(&js, "LATENCY_CONSUMER", "audit").await?;
    let published_from = publish(&js, "LATENCY_CONSUMER", rate, duration).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for child in &mut children {
        child.start_kill()?;
    }
    print_row(rate, pods, "audit-consumer", &samples, published_from);
    Ok(())
}

/// Publish time and latency of every event seen so far, in microseconds.
type Samples = Arc<Mutex<Vec<(u64, u64)>>>;

async fn fresh_stream(js: &jetstream::Context, name: &str) -> Result<Samples, async_nats::Error> {
    let _ = js.delete_stream(name).await;
    js.create_stream(stream::Config {
        name: name.to_owned(),
        subjects: vec![format!("{SUBJECT}.{name}")],
        ..Default::default()
    })
    .await?;
    Ok(Arc::new(Mutex::new(Vec::new())))
}

async fn wait_for_consumer(
    js: &jetstream::Context,
    stream: &str,
    consumer: &str,
) -> Result<(), async_nats::Error> {
    for _ in 0..200 {
        if js
            .get_stream(stream)
            .await?
            .get_consumer::<pull::Config>(consumer)
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err("audit-consumer did not create its durable consumer within 10s".into())
}

/// Publishes `rate` events/s for `duration`, in one tick per millisecond, each stamped with
/// the wall-clock time of its publish. Acks are awaited in a window, not one by one, so the
/// publisher keeps its rate.
async fn publish(
    js: &jetstream::Context,
    stream: &str,
    rate: u64,
    duration: Duration,
) -> Result<u64, async_nats::Error> {
    let subject = format!("{SUBJECT}.{stream}");
    let started = now_micros();
    let ticks = duration.as_millis() as u64;
    let mut interval = tokio::time::interval(Duration::from_millis(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    // Below the JetStream context's limit of acks in flight: past it, a publish waits for a
    // permit that only awaiting an older ack returns, and a larger window deadlocks.
    let mut window = std::collections::VecDeque::with_capacity(1024);
    let mut sequence = 0u64;
    for tick in 0..ticks {
        interval.tick().await;
        // Spread the rate over the ticks without drift: the events due by the end of this one.
        let due = rate * (tick + 1) / 1000;
        while sequence < due {
            let sent = now_micros();
            let payload = format!(
                r#"{{"specversion":"1.0","id":"{sequence:012}","source":"/bench/latency","type":"audit.login","time":"2026-11-28T10:00:00Z","data":{{"user":"user-{user}","ok":true,"sent_us":{sent}}}}}"#,
                user = sequence % 1000
            );
            window.push_back(js.publish(subject.clone(), payload.into()).await?);
            if window.len() == 1024 {
                window.pop_front().expect("the window is full").await?;
            }
            sequence += 1;
        }
    }
    for ack in window {
        ack.await?;
    }
    Ok(started)
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_micros() as u64)
}

/// Takes the publish time out of a payload or a line (`sent_us` followed by digits, whatever
/// quoting or escaping the output format put between) and records it with its distance to
/// now.
fn record(samples: &Samples, text: &[u8]) {
    let now = now_micros();
    let Some(at) = text.windows(7).position(|w| w == b"sent_us") else {
        return;
    };
    let digits: Vec<u8> = text[at + 7..]
        .iter()
        .skip_while(|b| !b.is_ascii_digit())
        .take_while(|b| b.is_ascii_digit())
        .copied()
        .collect();
    let Some(sent) = std::str::from_utf8(&digits)
        .ok()
        .and_then(|d| d.parse::<u64>().ok())
    else {
        return;
    };
    samples
        .lock()
        .expect("no panic while recording")
        .push((sent, now.saturating_sub(sent)));
}

/// Prints the figures of the events published after the warm-up.
fn print_row(rate: u64, pods: u16, way: &str, samples: &Samples, published_from: u64) {
    let counted_from = published_from + WARM_UP.as_micros() as u64;
    let mut latencies: Vec<u64> = samples
        .lock()
        .expect("no panic while recording")
        .iter()
        .filter(|(sent, _)| *sent >= counted_from)
        .map(|(_, latency)| *latency)
        .collect();
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .map_or(f64::NAN, |us| *us as f64 / 1000.0)
    };
    println!(
        "| {rate} | {pods} | {way} | {} | {:.2} | {:.2} | {:.2} |",
        latencies.len(),
        at(0.5),
        at(0.99),
        latencies.last().map_or(f64::NAN, |us| *us as f64 / 1000.0)
    );
}
