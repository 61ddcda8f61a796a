//! Parse + format cost per event: the consumer's hot path without any I/O; with
//! `/integrity`, the line also sealed into a hash chain as `--integrity` does.

use std::hint::black_box;

use async_nats::HeaderMap;
use audit_consumer::format::{Format, LineRenderer, Metadata};
use audit_consumer::integrity::chain::{Chain, chain_id};
use audit_consumer::redact::RedactKeys;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// A ~200-byte CloudEvent, the size the issue's targets are set for.
const STRUCTURED: &[u8] = br#"{"specversion":"1.0","id":"5f0c6a2e-0d4b-4a43-9a57-1d2c","source":"/iam/login","type":"user.login","time":"2026-11-22T10:00:00Z","data":{"user":"alice","ip":"10.1.2.3","password":"hunter2","ok":true}}"#;
const RAW: &[u8] = b"2026-11-22T10:00:00Z alice logged in from 10.1.2.3 using password authentication; session 8c1e granted for 3600 seconds";

fn bench(c: &mut Criterion) {
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
    let mut group = c.benchmark_group("render");
    for format in [Format::Json, Format::Text] {
        for (name, payload) in [("structured", STRUCTURED), ("raw", RAW)] {
            let mut renderer = LineRenderer::new(
                format,
                RedactKeys::new(["password", "token", "authorization"]),
            );
            let mut out = Vec::with_capacity(4096);
            group.throughput(Throughput::Elements(1));
            group.bench_function(format!("{format:?}/{name}/{}B", payload.len()), |b| {
                b.iter(|| {
                    out.clear();
                    black_box(renderer.render(black_box(&meta), black_box(payload), &mut out));
                })
            });
            let mut chain = Chain::new(
                format,
                chain_id(
                    "audit-logger",
                    "audit-logger-7d9f8c6b5-x2x9k",
                    1_795_000_000_000_000_000,
                ),
            );
            group.bench_function(
                format!("{format:?}/{name}/{}B/integrity", payload.len()),
                |b| {
                    b.iter(|| {
                        out.clear();
                        black_box(renderer.render(black_box(&meta), black_box(payload), &mut out));
                        chain.seal(&mut out, 0);
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
