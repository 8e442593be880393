//! The syslog sink (`audit.syslog`): every record the writer put on disk is also sent to
//! a collector, as an RFC 5424 message over TCP or TLS with octet-counted framing
//! (RFC 6587 3.4.1, the framing RFC 5425 prescribes for TLS): `LEN SP <PRI>1 TIME HOST
//! APP PROCID MSGID - RECORD`, the record being the file's line byte for byte.
//!
//! Invariants:
//! - The file is the source of truth: a record is offered here only once its batch is on
//!   disk, and nothing here can fail or delay a write, a delete or any request. The writer
//!   hands lines to a bounded buffer (`audit.syslog.buffer`) under a short lock and goes
//!   on; past the bound a line is dropped and counted
//!   (`registry_guard_audit_syslog_dropped_total`).
//! - One thread owns the connection. A collector that is down or stalls only fills the
//!   buffer: connects and writes have timeouts, and a lost connection is retried with
//!   exponential backoff (0.5 s doubling up to 30 s). Messages of a write that failed are
//!   sent again after the reconnect (at least once: a collector may see one twice; the
//!   chain's `seq` tells duplicates apart), unless the buffer filled meanwhile.
//! - [`frame`] is pure.

use crate::metrics::Metrics;
use std::collections::VecDeque;
use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Where and how records are sent (validated configuration).
#[derive(Debug, Clone, PartialEq)]
pub struct SyslogSettings {
    /// `host:port` of the collector.
    pub address: String,
    /// TLS (RFC 5425) instead of plain TCP.
    pub tls: bool,
    /// TLS: the collector's CA (`None`: the system's roots).
    pub ca_file: Option<std::path::PathBuf>,
    /// TLS: the name the collector's certificate must carry (`None`: the address's host).
    pub server_name: Option<String>,
    /// The syslog facility number (e.g. 4 auth, 10 authpriv, 16–23 local0–7).
    pub facility: u8,
    pub app_name: String,
    /// Records waiting to be sent at most.
    pub buffer: usize,
}

/// The facility names `audit.syslog.facility` takes, with their numbers.
pub const FACILITIES: &[(&str, u8)] = &[
    ("user", 1),
    ("daemon", 3),
    ("auth", 4),
    ("authpriv", 10),
    ("local0", 16),
    ("local1", 17),
    ("local2", 18),
    ("local3", 19),
    ("local4", 20),
    ("local5", 21),
    ("local6", 22),
    ("local7", 23),
];

/// Syslog severities the records are sent with.
pub const WARNING: u8 = 4;
pub const NOTICE: u8 = 5;
pub const INFO: u8 = 6;

/// What every message of one sender carries in its header.
#[derive(Debug, Clone)]
pub struct Origin {
    pub facility: u8,
    /// HOSTNAME: the replica (`audit.instance`, default the host name).
    pub host: String,
    pub app: String,
    pub procid: u32,
}

/// One message, octet-counted: `LEN SP <PRI>1 TIME HOST APP PROCID MSGID - MSG`. Header
/// fields are cut to RFC 5424's lengths and anything but printable ASCII becomes `_`
/// (an empty one `-`); the message is the record as written.
pub fn frame(origin: &Origin, severity: u8, time: &str, msgid: &str, record: &str) -> String {
    let field = |s: &str, max: usize| -> String {
        let f: String = s
            .chars()
            .take(max)
            .map(|c| if c.is_ascii_graphic() { c } else { '_' })
            .collect();
        if f.is_empty() {
            "-".to_owned()
        } else {
            f
        }
    };
    let pri = u16::from(origin.facility) * 8 + u16::from(severity);
    let msg = format!(
        "<{pri}>1 {} {} {} {} {} - {record}",
        field(time, 64),
        field(&origin.host, 255),
        field(&origin.app, 48),
        origin.procid,
        field(msgid, 32)
    );
    format!("{} {msg}", msg.len())
}

#[derive(Debug)]
struct Shared {
    queue: Mutex<VecDeque<String>>,
    wake: Condvar,
}

/// Handle to the sender thread; dropping every handle stops it.
#[derive(Debug)]
pub struct Syslog {
    shared: Arc<Shared>,
    capacity: usize,
    origin: Origin,
    metrics: Arc<Metrics>,
    _stop: StopOnDrop,
}

#[derive(Debug)]
struct StopOnDrop(Arc<std::sync::atomic::AtomicBool>, Arc<Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        self.1.wake.notify_all();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The connection: plain TCP or TLS over it.
enum Conn {
    Tcp(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Conn {
    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Tcp(s) => s.write_all(bytes).and_then(|()| s.flush()),
            Conn::Tls(s) => s.write_all(bytes).and_then(|()| s.flush()),
        }
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Messages sent in one write at most.
const BATCH: usize = 512;

impl Syslog {
    /// Starts the sender thread (it connects on its own, retrying: a collector that is
    /// down at start delays nothing). `host` names this replica in every message. Fails
    /// only on a TLS setting that cannot work (CA file, server name).
    pub fn start(
        settings: &SyslogSettings,
        host: &str,
        metrics: Arc<Metrics>,
    ) -> Result<Syslog, String> {
        let tls = match settings.tls {
            false => None,
            true => {
                let cfg = crate::tls::ca_client_config(
                    "audit.syslog.ca_file",
                    settings.ca_file.as_deref(),
                )
                .map_err(|e| e.to_string())?;
                let name = settings.server_name.clone().unwrap_or_else(|| {
                    let host = settings
                        .address
                        .rsplit_once(':')
                        .map_or(settings.address.as_str(), |(h, _)| h);
                    host.trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_owned()
                });
                let name = rustls::pki_types::ServerName::try_from(name.clone())
                    .map_err(|e| format!("audit.syslog.server_name: {name:?}: {e}"))?;
                Some((Arc::new(cfg), name))
            }
        };
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            wake: Condvar::new(),
        });
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s2, stop2, m2, address) = (
            shared.clone(),
            stop.clone(),
            metrics.clone(),
            settings.address.clone(),
        );
        let capacity = settings.buffer;
        std::thread::Builder::new()
            .name("audit-syslog".into())
            .spawn(move || send_loop(&s2, &stop2, &m2, &address, tls, capacity))
            .map_err(|e| format!("cannot start the syslog sender: {e}"))?;
        Ok(Syslog {
            shared: shared.clone(),
            capacity,
            origin: Origin {
                facility: settings.facility,
                host: host.to_owned(),
                app: settings.app_name.clone(),
                procid: std::process::id(),
            },
            metrics,
            _stop: StopOnDrop(stop, shared),
        })
    }

    /// Queues records that are on disk: (time, phase, severity, line). Never waits.
    pub fn offer<'a>(&self, records: impl IntoIterator<Item = (&'a str, &'a str, u8, &'a str)>) {
        let mut q = lock(&self.shared.queue);
        let mut dropped = 0;
        for (time, phase, severity, line) in records {
            if q.len() >= self.capacity {
                dropped += 1;
                continue;
            }
            q.push_back(frame(&self.origin, severity, time, phase, line));
        }
        drop(q);
        self.metrics.audit_syslog_dropped.add(dropped);
        self.shared.wake.notify_one();
    }
}

fn connect(
    address: &str,
    tls: &Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
) -> std::io::Result<Conn> {
    let mut last = std::io::Error::other(format!("{address}: no address"));
    for addr in address.to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(s) => {
                s.set_write_timeout(Some(WRITE_TIMEOUT))?;
                s.set_read_timeout(Some(WRITE_TIMEOUT))?;
                let _ = s.set_nodelay(true);
                return Ok(match tls {
                    None => Conn::Tcp(s),
                    Some((cfg, name)) => {
                        let c = rustls::ClientConnection::new(cfg.clone(), name.clone())
                            .map_err(std::io::Error::other)?;
                        let mut t = rustls::StreamOwned::new(c, s);
                        // The handshake now, so a collector that refuses it counts as down.
                        while t.conn.is_handshaking() {
                            t.conn.complete_io(&mut t.sock)?;
                        }
                        Conn::Tls(Box::new(t))
                    }
                });
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn send_loop(
    shared: &Shared,
    stop: &std::sync::atomic::AtomicBool,
    metrics: &Metrics,
    address: &str,
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    capacity: usize,
) {
    use std::sync::atomic::Ordering;
    let mut conn: Option<Conn> = None;
    let mut backoff = FIRST_BACKOFF;
    let mut warned = false;
    loop {
        let batch: Vec<String> = {
            let mut q = lock(&shared.queue);
            while q.is_empty() && !stop.load(Ordering::SeqCst) {
                q = shared
                    .wake
                    .wait_timeout(q, Duration::from_secs(1))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            if q.is_empty() {
                return; // stopped, nothing left
            }
            let n = q.len().min(BATCH);
            q.drain(..n).collect()
        };
        if conn.is_none() {
            match connect(address, &tls) {
                Ok(c) => {
                    tracing::info!(collector = address, "audit syslog: connected");
                    metrics.audit_syslog_connected.set(1);
                    (conn, backoff, warned) = (Some(c), FIRST_BACKOFF, false);
                }
                Err(e) => {
                    if !warned {
                        tracing::warn!(collector = address, error = %e, "audit syslog: cannot connect; records are kept in the buffer (audit.syslog.buffer) and retried");
                        warned = true;
                    }
                    requeue(shared, batch, capacity, metrics);
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    // The whole backoff: records offered meanwhile wait in the buffer.
                    let until = std::time::Instant::now() + backoff;
                    let mut q = lock(&shared.queue);
                    while !stop.load(Ordering::SeqCst) {
                        let left = until.saturating_duration_since(std::time::Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        q = shared
                            .wake
                            .wait_timeout(q, left)
                            .map(|(g, _)| g)
                            .unwrap_or_else(|p| p.into_inner().0);
                    }
                    drop(q);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            }
        }
        let bytes: String = batch.concat();
        let sent = conn.as_mut().map(|c| c.send(bytes.as_bytes()));
        match sent {
            Some(Ok(())) => metrics.audit_syslog_sent.add(batch.len() as u64),
            _ => {
                tracing::warn!(
                    collector = address,
                    "audit syslog: the connection failed; reconnecting"
                );
                metrics.audit_syslog_connected.set(0);
                conn = None;
                requeue(shared, batch, capacity, metrics);
            }
        }
    }
}

/// Puts an unsent batch back at the front, as far as the buffer has room (the rest is
/// dropped and counted).
fn requeue(shared: &Shared, batch: Vec<String>, capacity: usize, metrics: &Metrics) {
    let mut q = lock(&shared.queue);
    let room = capacity.saturating_sub(q.len());
    let n = batch.len();
    for m in batch.into_iter().take(room).rev() {
        q.push_front(m);
    }
    metrics
        .audit_syslog_dropped
        .add(n.saturating_sub(room) as u64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_rfc5424_and_octet_counted() {
        let line = r#"{"time":"2026-11-30T22:43:47.201Z","phase":"access","user":"älice"}"#;
        let origin = Origin {
            facility: 16,
            host: "rg-1".into(),
            app: "registry-guard".into(),
            procid: 42,
        };
        let f = frame(&origin, INFO, "2026-11-30T22:43:47.201Z", "access", line);
        let (len, msg) = f.split_once(' ').unwrap();
        assert_eq!(
            len.parse::<usize>().unwrap(),
            msg.len(),
            "octets, not characters"
        );
        assert_eq!(
            msg,
            format!("<134>1 2026-11-30T22:43:47.201Z rg-1 registry-guard 42 access - {line}")
        );
        // Header fields never carry spaces or control characters; empty ones are `-`.
        let odd = Origin {
            facility: 4,
            host: "a host\n".into(),
            app: String::new(),
            procid: 1,
        };
        let f = frame(&odd, WARNING, "t", "x".repeat(40).as_str(), "{}");
        assert!(
            f.ends_with("<36>1 t a_host_ - 1 xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx - {}"),
            "{f}"
        );
    }
}
