//! Loopback ports for the servers a test starts, never the same one twice.
//!
//! Binding port 0 and releasing it does not work for this: the kernel picks ephemeral ports
//! at random (not in sequence), so two calls can return the same port, and across a suite's
//! hundreds of servers they did (a NATS node got its own client port as its route port). So
//! ports are handed out here, from one allocator per process, and each is
//!
//! - outside the kernel's ephemeral range (`ip_local_port_range`), so no outgoing
//!   connection takes it as its source port between the choice and the server's bind, and
//!   outside Kubernetes' NodePort range;
//! - never handed out twice in this process;
//! - locked against every other test process on the machine for as long as this one lives:
//!   an exclusive `flock` on a file per port under the temporary directory, which the kernel
//!   releases when the process ends however it ends;
//! - free when chosen: nothing listens on it on any address.
//!
//! What is left is a process outside the tests binding the same port in the moment between
//! the choice and the server's bind. A server start that loses that race says so in its log
//! ([`lost_port_race`]) and the harness starts it again on new ports.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::net::{Ipv4Addr, TcpListener};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

/// Where the ports come from when the kernel's ephemeral range leaves room: below the
/// NodePort range (30000-32767), above the ports well-known servers use.
const PREFERRED_WINDOW: Range<u16> = 20000..30000;

/// A port on 127.0.0.1 (and on every other address) that no other test server in this
/// process or in any other test process on the machine has been or will be given.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `count` distinct ports, chosen together (for a server set whose members name each other's
/// ports in their configuration), with the guarantees of [`free_port`].
pub fn free_ports(count: usize) -> Vec<u16> {
    let mut allocator = allocator()
        .lock()
        .expect("the port allocator never panics while locked");
    (0..count).map(|_| allocator.allocate()).collect()
}

/// Whether a server's log says it could not listen because its port was taken, in the words
/// Go's and Rust's network stacks use (`bind: address already in use`, `Address already in
/// use (os error 98)`).
pub fn lost_port_race(log: &str) -> bool {
    log.to_ascii_lowercase().contains("address already in use")
}

/// How many times a server is started on new ports after losing one to another process.
const PORT_RACE_ATTEMPTS: u32 = 3;

/// Runs `start`, which chooses its ports with [`free_port`] and starts a server (or a set of
/// servers) on them, and runs it again, up to three times in all, when it failed because
/// another process bound one of its ports first ([`lost_port_race`] of the error, which
/// carries the failed server's log tail). Each retry says so on standard error.
pub async fn retry_lost_port_race<T, F, Fut>(server: &str, mut start: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut attempt = 1;
    loop {
        match start().await {
            Ok(started) => return Ok(started),
            Err(error) if attempt < PORT_RACE_ATTEMPTS && lost_port_race(&format!("{error:#}")) => {
                let cause = format!("{error:#}")
                    .lines()
                    .find(|line| lost_port_race(line))
                    .unwrap_or_default()
                    .trim()
                    .to_owned();
                attempt += 1;
                eprintln!(
                    "{server}: another process took a port before the server bound it ({cause}); \
                     starting it again on new ports (attempt {attempt} of {PORT_RACE_ATTEMPTS})"
                );
            }
            Err(error) => return Err(error),
        }
    }
}

fn allocator() -> &'static Mutex<Allocator> {
    static ALLOCATOR: OnceLock<Mutex<Allocator>> = OnceLock::new();
    ALLOCATOR.get_or_init(|| Mutex::new(Allocator::new()))
}

struct Allocator {
    /// The ports this allocator draws from; empty when the ephemeral range covers the
    /// preferred window, and then the kernel's choice of port 0 is used (still never twice,
    /// still locked).
    window: Range<u16>,
    /// Where the next search starts, so that consecutive calls and concurrent processes do
    /// not all probe the same ports first.
    cursor: u32,
    handed_out: HashSet<u16>,
    lock_dir: PathBuf,
    /// The lock files of every port handed out, held open (and so locked) until the process
    /// exits.
    locks: Vec<File>,
}

impl Allocator {
    fn new() -> Self {
        let ephemeral = ephemeral_range().unwrap_or(32768..61000);
        let window = window_outside(PREFERRED_WINDOW, &ephemeral);
        let lock_dir = std::env::temp_dir().join("audit-tests-ports");
        std::fs::create_dir_all(&lock_dir).unwrap_or_else(|e| {
            panic!(
                "cannot create the port lock directory {}: {e}",
                lock_dir.display()
            )
        });
        // Shared by every user's test runs, as /tmp itself is.
        let _ = std::fs::set_permissions(
            &lock_dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o1777),
        );
        let seed = std::process::id().wrapping_mul(2_654_435_761).wrapping_add(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|elapsed| elapsed.subsec_nanos())
                .unwrap_or_default(),
        );
        Self {
            window,
            cursor: seed,
            handed_out: HashSet::new(),
            lock_dir,
            locks: Vec::new(),
        }
    }

    fn allocate(&mut self) -> u16 {
        let width = u32::from(self.window.end - self.window.start);
        let attempts = if width == 0 { 1000 } else { width };
        for _ in 0..attempts {
            let candidate = if width == 0 {
                kernel_chosen_port()
            } else {
                self.cursor = self.cursor.wrapping_add(1);
                self.window.start
                    + u16::try_from(self.cursor % width).expect("the offset is below the width")
            };
            if self.handed_out.contains(&candidate) {
                continue;
            }
            let Some(lock) = self.lock(candidate) else {
                continue;
            };
            if !nothing_listens_on(candidate) {
                continue;
            }
            self.handed_out.insert(candidate);
            self.locks.push(lock);
            return candidate;
        }
        panic!(
            "no free port in {:?} after {attempts} attempts ({} handed out by this process)",
            self.window,
            self.handed_out.len()
        )
    }

    /// The port's lock file, locked, or `None` when another process holds it.
    fn lock(&self, port: u16) -> Option<File> {
        let path = self.lock_dir.join(format!("{port}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("cannot open the port lock {}: {e}", path.display()));
        // SAFETY: flock(2) on a descriptor this function owns.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        locked.then_some(file)
    }
}

/// The kernel's ephemeral port range, from `/proc/sys/net/ipv4/ip_local_port_range`.
fn ephemeral_range() -> Option<Range<u16>> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut bounds = text.split_whitespace().map(str::parse::<u16>);
    let low = bounds.next()?.ok()?;
    let high = bounds.next()?.ok()?;
    Some(low..high.saturating_add(1))
}

/// The longest part of `preferred` that does not overlap `ephemeral`.
fn window_outside(preferred: Range<u16>, ephemeral: &Range<u16>) -> Range<u16> {
    let below = preferred.start..preferred.end.min(ephemeral.start);
    let above = preferred.start.max(ephemeral.end)..preferred.end;
    let width = |range: &Range<u16>| range.end.saturating_sub(range.start);
    let best = if width(&below) >= width(&above) {
        below
    } else {
        above
    };
    if best.start < best.end { best } else { 0..0 }
}

fn kernel_chosen_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("binding 127.0.0.1:0 must succeed on any machine that runs the tests")
}

/// Whether a listener could bind `port` on every address right now.
fn nothing_listens_on(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_is_never_handed_out_twice() {
        let ports: Vec<u16> = (0..300).flat_map(|_| free_ports(3)).collect();
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            ports.len(),
            "a port came back twice: {ports:?}"
        );
    }

    #[test]
    fn ports_come_from_outside_the_ephemeral_range() {
        let ephemeral = ephemeral_range().expect("Linux reports its ephemeral range");
        for port in free_ports(50) {
            assert!(!ephemeral.contains(&port), "{port} is in {ephemeral:?}");
            assert!(!(30000..32768).contains(&port), "{port} is a NodePort");
        }
    }

    #[test]
    fn a_port_something_listens_on_is_skipped() {
        // Occupy what can be of a small range outside the process-wide window (which the
        // other tests draw from meanwhile), then allocate from that range.
        let slice = 19100..19110;
        let occupied: Vec<TcpListener> = slice
            .clone()
            .filter_map(|port| TcpListener::bind((Ipv4Addr::LOCALHOST, port)).ok())
            .collect();
        let mut allocator = Allocator::new();
        allocator.window = slice.clone();
        let free_in_slice = slice.len() - occupied.len();
        let ports: Vec<u16> = (0..free_in_slice).map(|_| allocator.allocate()).collect();
        for listener in &occupied {
            let taken = listener.local_addr().expect("bound").port();
            assert!(
                !ports.contains(&taken),
                "{taken} is in use and was handed out"
            );
        }
    }

    #[test]
    fn a_port_locked_by_another_allocator_is_skipped() {
        let mut first = Allocator::new();
        let mut second = Allocator::new();
        first.window = 19200..19204;
        second.window = 19200..19204;
        let mine: HashSet<u16> = (0..2).map(|_| first.allocate()).collect();
        let theirs: HashSet<u16> = (0..2).map(|_| second.allocate()).collect();
        assert!(mine.is_disjoint(&theirs), "{mine:?} and {theirs:?} overlap");
    }

    #[test]
    fn the_window_avoids_the_ephemeral_range() {
        assert_eq!(window_outside(20000..30000, &(32768..61000)), 20000..30000);
        assert_eq!(window_outside(20000..30000, &(25000..61000)), 20000..25000);
        assert_eq!(window_outside(20000..30000, &(1024..22000)), 22000..30000);
        assert_eq!(window_outside(20000..30000, &(1024..65535)), 0..0);
    }

    #[tokio::test]
    async fn a_start_that_lost_a_port_is_tried_again_and_other_failures_are_not() {
        let mut starts = 0;
        let started = retry_lost_port_race("server", || {
            starts += 1;
            let attempt = starts;
            async move {
                anyhow::ensure!(
                    attempt > 1,
                    "server exited; log:\nbind: address already in use"
                );
                Ok(attempt)
            }
        })
        .await;
        assert_eq!(started.expect("the second start succeeds"), 2);

        let mut starts = 0;
        let failed: anyhow::Result<()> = retry_lost_port_race("server", || {
            starts += 1;
            async { anyhow::bail!("bad configuration") }
        })
        .await;
        assert!(failed.is_err());
        assert_eq!(starts, 1, "a failure for another reason is not retried");

        let mut starts = 0;
        let failed: anyhow::Result<()> = retry_lost_port_race("server", || {
            starts += 1;
            async { anyhow::bail!("address already in use") }
        })
        .await;
        assert!(failed.is_err());
        assert_eq!(starts, PORT_RACE_ATTEMPTS, "the retries end");
    }

    #[test]
    fn a_lost_race_is_recognised_in_go_and_rust_words() {
        assert!(lost_port_race(
            "[ERR] Error listening on router port: 33893 listen tcp 127.0.0.1:33893: bind: address already in use"
        ));
        assert!(lost_port_race(
            "Error: Address already in use (os error 98)"
        ));
        assert!(!lost_port_race("Server is ready"));
    }
}
