//! Benchmark helper: the throughput ceiling for audit-consumer, a bare async-nats pull-and-ack
//! loop with the same pull settings and no parsing, formatting or output.
//!
//! Usage: ceiling <nats-url> <stream> <consumer> <count> <batch> <max-bytes>
//! Creates the durable consumer if missing, acks `count` messages, prints events/s.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), async_nats::Error> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, stream_name, consumer_name, count, batch, max_bytes] = args.as_slice() else {
        eprintln!("usage: ceiling <nats-url> <stream> <consumer> <count> <batch> <max-bytes>");
        std::process::exit(2);
    };
    let count: u64 = count.parse()?;
    let started = Instant::now();
    let js = jetstream::new(async_nats::connect(url.as_str()).await?);
    let consumer = js
        .get_stream(stream_name)
        .await?
        .get_or_create_consumer(
            consumer_name,
            pull::Config {
                durable_name: Some(consumer_name.clone()),
                ..Default::default()
            },
        )
        .await?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(batch.parse()?)
        .max_bytes_per_batch(max_bytes.parse()?)
        .expires(Duration::from_secs(30))
        .heartbeat(Duration::from_secs(5))
        .messages()
        .await?;
    let mut acked = 0;
    while acked < count {
        let message = messages.next().await.ok_or("subscription ended")??;
        message.ack().await?;
        acked += 1;
    }
    js.client().flush().await?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "ceiling: {acked} events in {seconds:.2}s = {:.0} events/s",
        acked as f64 / seconds
    );
    Ok(())
}
