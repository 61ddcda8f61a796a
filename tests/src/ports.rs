//! Free loopback ports for the servers a test starts.

use std::net::{Ipv4Addr, TcpListener};

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// The kernel hands out ephemeral ports in sequence, so a port just released is unlikely to be
/// handed out again before the server binds it; the servers' readiness checks catch the rare
/// collision with a clear message.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("binding 127.0.0.1:0 must succeed on any machine that runs the tests")
}
