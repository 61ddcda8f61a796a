//! Benchmark helper: waits until an audit-consumer's `/metrics` counts `count` acked events.
//!
//! Usage: await_acked <host:port> <count> <pid>
//! Polls every 10 ms from this one process and exits 0 once the count is reached, or 1 when
//! process `pid` (the consumer) is gone first.
//!
//! The benchmark used to poll with `curl | awk` every 20 ms: two processes forked 35 times a
//! second took about a third of one core, which on a two-core machine was taken from the
//! consumer and nats-server under test, and not from the ceiling, which times itself. A poll
//! here is one loopback HTTP request, tens of microseconds.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, address, count, pid] = args.as_slice() else {
        eprintln!("usage: await_acked <host:port> <count> <pid>");
        std::process::exit(2);
    };
    let count: u64 = count.parse().expect("count is a number");
    let process = Path::new("/proc").join(pid);
    let mut response = Vec::with_capacity(16 * 1024);
    loop {
        if !process.exists() {
            eprintln!("await_acked: process {pid} is gone");
            std::process::exit(1);
        }
        response.clear();
        if scrape(address, &mut response).is_ok() && acked(&response) >= count {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn scrape(address: &str, response: &mut Vec<u8>) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(address)?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    stream.read_to_end(response)?;
    Ok(())
}

/// The sum of `audit_consumer_events_total{outcome="acked",...}` over its kinds.
fn acked(response: &[u8]) -> u64 {
    String::from_utf8_lossy(response)
        .lines()
        .filter(|line| line.starts_with(r#"audit_consumer_events_total{outcome="acked""#))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}
