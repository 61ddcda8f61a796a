//! A TCP relay on 127.0.0.1 between two local processes (a leaf node and its hub), whose link
//! a test can cut and restore: cutting closes every relayed connection and refuses new ones
//! until restored, as a network outage between two clusters does to a leaf node's link.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::ports::free_port;

pub struct TcpProxy {
    port: u16,
    up: Arc<watch::Sender<bool>>,
    task: JoinHandle<()>,
}

impl TcpProxy {
    /// Relays 127.0.0.1:<a free port> to `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let port = free_port();
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let (up, _) = watch::channel(true);
        let up = Arc::new(up);
        let relay_up = up.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if !*relay_up.borrow() {
                    drop(inbound);
                    continue;
                }
                tokio::spawn(relay(inbound, target, relay_up.subscribe()));
            }
        });
        Ok(Self { port, up, task })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Closes every relayed connection and refuses new ones.
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    /// Relays again.
    pub fn restore(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One relayed connection, until either side closes or the link is cut.
async fn relay(mut inbound: TcpStream, target: SocketAddr, mut up: watch::Receiver<bool>) {
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        return;
    };
    tokio::select! {
        _ = copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = up.wait_for(|up| !*up) => {}
    }
}
