//! A minimal HTTP/1.0 GET for the loopback health and metrics endpoints of the servers and
//! binaries under test (nats-server monitoring, etcd, audit-operator, audit-consumer).

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response: the status code and the body as text.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// `GET http://127.0.0.1:<port><path>`; the connection closes after the response.
pub async fn get(port: u16, path: &str) -> anyhow::Result<Response> {
    get_from(std::net::Ipv4Addr::LOCALHOST, port, path).await
}

/// `GET http://<ip>:<port><path>`, for a server on an address the test environment made
/// (the node's, from 198.18.0.0/15).
pub async fn get_from(ip: std::net::Ipv4Addr, port: u16, path: &str) -> anyhow::Result<Response> {
    let mut stream = TcpStream::connect((ip, port)).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n").as_bytes())
        .await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("not an HTTP response from port {port}: {head:?}"))?;
    Ok(Response {
        status,
        body: body.to_owned(),
    })
}
