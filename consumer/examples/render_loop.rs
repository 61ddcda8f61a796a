//! Renders one event many times, to count the instructions per event with callgrind: a count
//! repeats exactly on a busy machine, where wall-clock benchmarks do not.
//!
//! ```sh
//! cargo build --release -p audit-consumer --example render_loop
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/render_loop text structured 100000
//! ```
//!
//! Arguments: `json` or `text`; `structured`, `raw` (the events of `benches/render.rs`, with
//! the same metadata and redaction keys) or the path of a file holding a payload; how many
//! times to render it; optionally `integrity`, to seal each line into a hash chain as
//! `--integrity` does. The cost of one event is the difference between the totals of a run
//! with that count and a run with 0, divided by the count.

use std::hint::black_box;

use async_nats::HeaderMap;
use audit_consumer::format::{Format, LineRenderer, Metadata};
use audit_consumer::integrity::chain::{Chain, chain_id};
use audit_consumer::redact::RedactKeys;

const STRUCTURED: &[u8] = br#"{"specversion":"1.0","id":"5f0c6a2e-0d4b-4a43-9a57-1d2c","source":"/iam/login","type":"user.login","time":"2026-11-22T10:00:00Z","data":{"user":"alice","ip":"10.1.2.3","password":"hunter2","ok":true}}"#;
const RAW: &[u8] = b"2026-11-22T10:00:00Z alice logged in from 10.1.2.3 using password authentication; session 8c1e granted for 3600 seconds";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (format, payload, count, integrity) = match args.as_slice() {
        [format, payload, count] => (format, payload, count, false),
        [format, payload, count, integrity] if integrity == "integrity" => {
            (format, payload, count, true)
        }
        _ => {
            eprintln!("usage: render_loop json|text structured|raw|FILE COUNT [integrity]");
            std::process::exit(2);
        }
    };
    let format = match format.as_str() {
        "json" => Format::Json,
        "text" => Format::Text,
        other => panic!("unknown format {other:?}"),
    };
    let file;
    let payload = match payload.as_str() {
        "structured" => STRUCTURED,
        "raw" => RAW,
        path => {
            file = std::fs::read(path).expect("a readable payload file");
            &file[..]
        }
    };
    let count: usize = count.parse().expect("a count");

    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", "5f0c6a2e-0d4b-4a43-9a57-1d2c");
    let meta = Metadata {
        subject: "audit.iam.login",
        stream: "AUDIT",
        consumer: "audit-logger",
        stream_sequence: 1_234_567,
        consumer_sequence: 1_234_000,
        delivered: 1,
        pending: 98_765,
        published_nanos: 1_795_000_000_123_456_789,
        headers: Some(&headers),
    };
    let mut renderer = LineRenderer::new(
        format,
        RedactKeys::new(["password", "token", "authorization"]),
    );
    let mut chain = integrity.then(|| {
        Chain::new(
            format,
            chain_id(
                "audit-logger",
                "audit-logger-7d9f8c6b5-x2x9k",
                1_795_000_000_000_000_000,
            ),
        )
    });
    let mut out = Vec::with_capacity(4096);
    for _ in 0..count {
        out.clear();
        black_box(renderer.render(black_box(&meta), black_box(payload), &mut out));
        if let Some(chain) = &mut chain {
            chain.seal(&mut out, 0);
        }
    }
}
