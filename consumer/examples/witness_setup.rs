//! Benchmark helper: creates the witness stream for `--integrity` as the operator does
//! (append-only: deny delete and purge) and writes a fresh NKey seed to sign the heads with,
//! for `hack/bench-consumer.sh`.
//!
//! Usage: witness_setup <nats-url> <witness-stream> <subjects> <seed-file>

use async_nats::jetstream::{self, stream};

#[tokio::main]
async fn main() -> Result<(), async_nats::Error> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, stream_name, subjects, seed_file] = args.as_slice() else {
        eprintln!("usage: witness_setup <nats-url> <witness-stream> <subjects> <seed-file>");
        std::process::exit(2);
    };
    let js = jetstream::new(async_nats::connect(url.as_str()).await?);
    js.get_or_create_stream(stream::Config {
        name: stream_name.clone(),
        subjects: vec![subjects.clone()],
        deny_delete: true,
        deny_purge: true,
        ..Default::default()
    })
    .await?;
    let key = nkeys::KeyPair::new_account();
    std::fs::write(seed_file, key.seed()?)?;
    println!("{}", key.public_key());
    Ok(())
}
