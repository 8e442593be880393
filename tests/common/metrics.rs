//! The proxy's metrics listener read as a client would: plain HTTP/1.0 GETs of
//! `/metrics`, `/ready` and `/healthz`, and the Prometheus text parsed into counters.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A plain HTTP/1.0 GET: status and body (bounded: 2 s to connect, 10 s to read).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

/// One scrape of `/metrics`.
pub struct Metrics {
    pub text: String,
}

impl Metrics {
    /// The value of the series named exactly `name` (labels included, if any).
    pub fn get(&self, name: &str) -> u64 {
        self.text
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{}", self.text))
    }
}

/// Scrapes the metrics listener at `addr`.
pub fn scrape(addr: SocketAddr) -> Metrics {
    let (status, text) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "{text}");
    Metrics { text }
}

/// [`scrape`] from async code (on a blocking thread, so the test's runtime keeps
/// serving its fake upstream meanwhile).
pub async fn scrape_async(addr: SocketAddr) -> Metrics {
    tokio::task::spawn_blocking(move || scrape(addr))
        .await
        .unwrap()
}

/// One counter of the metrics listener at `addr`.
pub async fn metric(addr: SocketAddr, name: &str) -> u64 {
    scrape_async(addr).await.get(name)
}
