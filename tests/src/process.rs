//! Server processes that never outlive their test.
//!
//! Every server is spawned from one long-lived thread with `PR_SET_PDEATHSIG`, so the kernel
//! kills it if the test binary dies for any reason (a panic that aborts, SIGKILL, a timeout in
//! CI). The death signal follows the *thread* that forked the child, which is why spawning
//! happens on a thread that lives as long as the process rather than on a test's thread or a
//! tokio worker. In the ordinary case, [`ServerProcess`]'s `Drop` stops the server first.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

type SpawnRequest = (Command, Sender<io::Result<Child>>);

fn spawner() -> &'static Mutex<Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (requests, incoming) = channel::<SpawnRequest>();
        thread::Builder::new()
            .name("server-spawner".into())
            .spawn(move || {
                for (mut command, reply) in incoming {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("spawning the server-spawner thread");
        Mutex::new(requests)
    })
}

fn spawn_tied_to_test_binary(mut command: Command) -> io::Result<Child> {
    // SAFETY: prctl is async-signal-safe and the closure touches no other state.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (reply, response) = channel();
    spawner()
        .lock()
        .expect("the spawner lock is never held across a panic")
        .send((command, reply))
        .expect("the server-spawner thread lives as long as the process");
    response
        .recv()
        .expect("the server-spawner thread always replies")
}

/// A running server whose standard output and error go to a log file.
#[derive(Debug)]
pub struct ServerProcess {
    name: String,
    child: Option<Child>,
    log_path: PathBuf,
}

impl ServerProcess {
    /// Starts `command`, appending its output to `log_path` (kept across restarts, so a
    /// restarted server's log tail also shows why the previous run ended).
    pub fn spawn(name: &str, mut command: Command, log_path: &Path) -> anyhow::Result<Self> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)?;
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = spawn_tied_to_test_binary(command)
            .map_err(|e| anyhow::anyhow!("cannot start {name}: {e}"))?;
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
            log_path: log_path.to_owned(),
        })
    }

    /// The name it was started under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Fails with the log tail if the process has already exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        let status = match self.child.as_mut() {
            None => anyhow::bail!("{} is stopped", self.name),
            Some(child) => child.try_wait()?,
        };
        match status {
            None => Ok(()),
            Some(status) => anyhow::bail!(
                "{} exited ({status}); last lines of its log:\n{}",
                self.name,
                self.log_tail(40)
            ),
        }
    }

    /// Waits until something accepts connections on `ip:port`, failing with the log tail as
    /// soon as the process exits (e.g. because another process took the port:
    /// [`lost_port_race`](crate::ports::lost_port_race) of the error says so).
    pub async fn wait_listening(
        &mut self,
        ip: std::net::Ipv4Addr,
        port: u16,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.ensure_running()?;
            if tokio::net::TcpStream::connect((ip, port)).await.is_ok() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "{} did not listen on {ip}:{port} within {timeout:?}; last lines of its log:\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last `lines` lines of the server's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path, lines)
    }

    /// Stops the server: SIGTERM, up to five seconds to exit cleanly, then SIGKILL.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: kill(2) on our own child's pid, which cannot have been reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Kills the server at once with SIGKILL, as a crash or a node loss would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `lines` lines of a log file (at most the last 64 KiB are read).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let read = || -> io::Result<String> {
        let mut file = File::open(path)?;
        let length = file.metadata()?.len();
        file.seek(SeekFrom::Start(length.saturating_sub(64 * 1024)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}
