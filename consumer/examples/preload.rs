//! Benchmark helper: publishes N ~200-byte CloudEvents into a stream (created if missing) as
//! fast as JetStream accepts them, for `hack/bench-consumer.sh`.
//!
//! Usage: preload <nats-url> <stream> <subject> <count>

use std::time::Instant;

use async_nats::jetstream::{self, stream};

#[tokio::main]
async fn main() -> Result<(), async_nats::Error> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, stream_name, subject, count] = args.as_slice() else {
        eprintln!("usage: preload <nats-url> <stream> <subject> <count>");
        std::process::exit(2);
    };
    let count: u64 = count.parse()?;
    let js = jetstream::new(async_nats::connect(url.as_str()).await?);
    js.get_or_create_stream(stream::Config {
        name: stream_name.clone(),
        subjects: vec![subject.clone()],
        ..Default::default()
    })
    .await?;
    let started = Instant::now();
    // Bounded window of unacknowledged publishes: fast, without unbounded memory.
    let mut window = std::collections::VecDeque::with_capacity(4096);
    for sequence in 0..count {
        let payload = format!(
            r#"{{"specversion":"1.0","id":"{sequence:012}","source":"/bench/preload","type":"audit.login","time":"2026-11-22T10:00:00Z","data":{{"user":"user-{user}","ip":"10.1.2.3","ok":true}}}}"#,
            user = sequence % 1000
        );
        window.push_back(js.publish(subject.clone(), payload.into()).await?);
        if window.len() == 4096 {
            window.pop_front().expect("window is full").await?;
        }
    }
    for ack in window {
        ack.await?;
    }
    eprintln!(
        "published {count} events in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
