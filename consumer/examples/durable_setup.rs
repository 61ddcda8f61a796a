//! Benchmark helper: creates a durable pull consumer with the `max_ack_pending` the operator
//! gives an archiving AuditConsumer (`replicas` x (2 x `segment.maxLines` + 2 x `batch`)), for
//! `hack/bench-consumer.sh`: with NATS's default of 1000, an archiving pod would close a
//! segment every thousand events rather than hold a full one.
//!
//! Usage: durable_setup <nats-url> <stream> <durable> <max-ack-pending>

use async_nats::jetstream::{self, consumer::AckPolicy, consumer::pull};

#[tokio::main]
async fn main() -> Result<(), async_nats::Error> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, stream, durable, max_ack_pending] = args.as_slice() else {
        eprintln!("usage: durable_setup <nats-url> <stream> <durable> <max-ack-pending>");
        std::process::exit(2);
    };
    let js = jetstream::new(async_nats::connect(url.as_str()).await?);
    js.get_stream(stream)
        .await?
        .create_consumer(pull::Config {
            durable_name: Some(durable.clone()),
            ack_policy: AckPolicy::Explicit,
            max_ack_pending: max_ack_pending.parse()?,
            ..Default::default()
        })
        .await?;
    Ok(())
}
