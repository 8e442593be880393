//! Logging: tracing set up from `RUST_LOG` (default `info`) in text or JSON, and the
//! access log line, one per request, emitted when its response body is done (when the
//! request's duration is also observed in the metrics).
//!
//! Nothing here ever sees a header value: credentials cannot reach the log through it.
//!
//! Every field that carries text a client chose (user name, path, error strings) is
//! written through [`Escaped`]: one log event stays one line, whatever the client sent,
//! so no one can forge a log line or a terminal escape sequence.

use crate::config::LogFormat;
use crate::metrics::{LevelGuard, Metrics};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init(format: LogFormat) {
    let spec = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
    let mut filter = EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new("info"));
    // rustls warns once per handshake about clients that send an IP address as SNI
    // (wrk, some scripts): noise that costs CPU per connection. Kept unless asked for.
    if !spec.contains("rustls") {
        if let Ok(d) = "rustls=error".parse() {
            filter = filter.add_directive(d);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(true);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// A field written to the log with its control characters escaped: C0, DEL and C1 as
/// `\u{..}`, the Unicode line and paragraph separators too, and the backslash doubled
/// so that an escape in the log always means an escape. Everything else is as given.
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\\' | '\u{2028}' | '\u{2029}')
}

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(needs_escape) {
            f.write_str(&rest[..i])?;
            let c = rest[i..].chars().next().unwrap_or_default();
            match c {
                '\\' => f.write_str("\\\\")?,
                c => write!(f, "\\u{{{:x}}}", c as u32)?,
            }
            rest = &rest[i + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

/// A user name as logs and audit records show it: escaped like any client text, and a
/// name that is an access token's secret (`rgt_...`: user name and password swapped in a
/// CI variable) never written. No valid user or token name starts with the prefix.
pub struct UserName<'a>(pub &'a str);

/// What [`UserName`] shows of `name`, unescaped (for records that escape on their own).
pub fn shown_user(name: &str) -> std::borrow::Cow<'_, str> {
    use crate::auth::access_tokens::PREFIX;
    if name.starts_with(PREFIX) {
        std::borrow::Cow::Owned(format!(
            "{PREFIX}... (an access token's secret given as the user name: not shown)"
        ))
    } else {
        std::borrow::Cow::Borrowed(name)
    }
}

impl std::fmt::Display for UserName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        Escaped(&shown_user(self.0)).fmt(f)
    }
}

/// Per-connection activity, read by the idle watchdog in `server.rs`.
///
/// Idleness is counted in requests, never in bytes: protocol traffic of a connection with
/// no request open (HTTP/2 PINGs and their ACKs, SETTINGS, WINDOW_UPDATEs) must not keep
/// it alive, or one client could hold a connection slot forever without ever sending a
/// request. A request is open from the moment it reaches the handler until its response
/// body is done ([`InFlight`]).
#[derive(Debug)]
pub struct ConnActivity {
    pub in_flight: AtomicUsize,
    /// Requests seen on the connection so far.
    pub requests: AtomicU64,
    /// Milliseconds since [`process_clock`] when the connection last became idle: its
    /// start, then the end of each request.
    pub idle_since_ms: AtomicU64,
    /// HTTP/1.1: milliseconds since [`process_clock`] when the first byte of the next
    /// request head arrived while no request was open, or [`ConnActivity::NO_HEAD`]. The
    /// watchdog gives the rest of the head `header_read_timeout` from there.
    pub head_started_ms: AtomicU64,
    /// Responses whose head is out and whose body is not done yet.
    pub sending: AtomicUsize,
    /// For each of those, milliseconds since [`process_clock`] when its head or a body
    /// frame last went out: a response the client stops taking (HTTP/2 flow control, a
    /// full TCP window) makes no progress, and the watchdog closes the connection after
    /// `idle_timeout`. Per response, so other streams that move cannot hide a stalled one.
    pub responses: std::sync::Mutex<Vec<Arc<AtomicU64>>>,
}

impl ConnActivity {
    /// `head_started_ms` when no request head is being read.
    pub const NO_HEAD: u64 = u64::MAX;

    /// A connection that starts idle now.
    pub fn new() -> Self {
        ConnActivity {
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(now_ms()),
            head_started_ms: AtomicU64::new(Self::NO_HEAD),
            sending: AtomicUsize::new(0),
            responses: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Called for bytes read from an HTTP/1.1 client: with no request open they begin
    /// the next request head (bytes read while a request is open are its body).
    pub fn bytes_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.head_started_ms.load(Ordering::Relaxed) == Self::NO_HEAD
        {
            self.head_started_ms.store(now_ms(), Ordering::Release);
        }
    }
}

impl Default for ConnActivity {
    fn default() -> Self {
        Self::new()
    }
}

/// A monotonic clock origin shared by all connections.
pub fn process_clock() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

pub fn now_ms() -> u64 {
    process_clock().elapsed().as_millis() as u64
}

/// Marks one request open on a connection, from its complete head reaching the handler
/// until dropped (with the access record, when the response body is done).
#[derive(Debug)]
pub struct InFlight {
    conn: Arc<ConnActivity>,
    /// Once the response head is out: when it last moved (registered in
    /// `ConnActivity::responses`, counted in `sending`).
    sent: Option<Arc<AtomicU64>>,
}

impl InFlight {
    pub fn new(conn: Arc<ConnActivity>) -> Self {
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        conn.requests.fetch_add(1, Ordering::Relaxed);
        // The head is complete: no header deadline while the request is served.
        conn.head_started_ms
            .store(ConnActivity::NO_HEAD, Ordering::Release);
        InFlight { conn, sent: None }
    }

    /// The response head goes out: from now on the response must keep moving.
    pub fn head_sent(&mut self) {
        if self.sent.is_none() {
            let at = Arc::new(AtomicU64::new(now_ms()));
            lock(&self.conn.responses).push(at.clone());
            self.conn.sending.fetch_add(1, Ordering::AcqRel);
            self.sent = Some(at);
        }
    }

    /// A response body frame went out.
    pub fn frame_sent(&self) {
        if let Some(at) = &self.sent {
            at.store(now_ms(), Ordering::Release);
        }
    }
}

impl ConnActivity {
    /// When the response that moved least recently last moved, if one is being sent.
    pub fn oldest_progress_ms(&self) -> Option<u64> {
        lock(&self.responses)
            .iter()
            .map(|at| at.load(Ordering::Acquire))
            .min()
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.conn.idle_since_ms.store(now_ms(), Ordering::Release);
        if let Some(at) = self.sent.take() {
            lock(&self.conn.responses).retain(|r| !Arc::ptr_eq(r, &at));
            self.conn.sending.fetch_sub(1, Ordering::AcqRel);
        }
        self.conn.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the access log says about one request.
#[derive(Debug)]
pub struct AccessRecord {
    pub request_id: String,
    pub method: http::Method,
    /// Path only: queries carry upload state tokens, not worth a log line.
    pub path: String,
    pub client: IpAddr,
    pub route: &'static str,
    pub repo: Option<String>,
    /// The authenticated user, `anonymous`, or none (auth disabled, or refused before);
    /// for an access token, the token's name.
    pub user: Option<String>,
    /// An access token's owner (`user` is then the token); logged with `token=true`.
    pub owner: Option<String>,
    pub status: u16,
    pub upstream_status: Option<u16>,
    pub error: Option<String>,
    pub started: Instant,
    pub in_flight: Option<InFlight>,
    /// Where the request's duration and bytes are counted when it is done.
    pub metrics: Arc<Metrics>,
    /// `registry_guard_requests_in_flight` while the record lives (a request cancelled
    /// before its response leaves the gauge too).
    _counted: LevelGuard,
}

impl AccessRecord {
    pub fn new(
        request_id: String,
        method: http::Method,
        path: &str,
        client: IpAddr,
        metrics: Arc<Metrics>,
    ) -> Self {
        AccessRecord {
            _counted: LevelGuard::new(metrics.requests_in_flight.clone()),
            metrics,
            request_id,
            method,
            path: if path.len() <= 512 {
                path.to_owned()
            } else {
                path.chars().take(512).collect()
            },
            client,
            route: "none",
            repo: None,
            user: None,
            owner: None,
            status: 0,
            upstream_status: None,
            error: None,
            started: Instant::now(),
            in_flight: None,
        }
    }

    /// Writes the access line and observes the request's duration: `complete` is false
    /// when the client or upstream went away before the body ended.
    pub fn emit(&self, bytes: u64, complete: bool) {
        let seconds = self.started.elapsed().as_secs_f64();
        self.metrics
            .observe_request(self.route, &self.method, self.status, seconds);
        let duration_ms = seconds * 1000.0;
        tracing::info!(
            target: "registry_guard::access",
            request_id = %self.request_id,
            client = %self.client,
            method = %Escaped(self.method.as_str()),
            path = %Escaped(&self.path),
            route = self.route,
            repo = %Escaped(self.repo.as_deref().unwrap_or("-")),
            user = %Escaped(self.user.as_deref().unwrap_or("-")),
            owner = self.owner.as_deref().map(Escaped).map(tracing::field::display),
            token = self.owner.is_some().then_some(true),
            status = self.status,
            upstream_status = self.upstream_status,
            bytes,
            complete,
            duration_ms = format_args!("{duration_ms:.2}"),
            error = self.error.as_deref().map(Escaped).map(tracing::field::display),
        );
    }
}

/// Request ids: a per-process random prefix and a counter, unique across restarts in
/// practice and cheap (no syscall per request).
pub fn next_request_id() -> String {
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        h.finish() as u32
    });
    format!(
        "{prefix:08x}-{:012x}",
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_token_secret_given_as_a_user_name_is_not_shown() {
        let secret = "rgt_TtbHaCT6QlgLxZw3YiaJ1hqZucSp-d2UcPEBi44JeO0";
        let shown = UserName(secret).to_string();
        assert!(!shown.contains("TtbHaCT6"), "{shown}");
        assert!(shown.starts_with("rgt_..."), "{shown}");
        assert_eq!(UserName("ali\nce").to_string(), "ali\\u{a}ce");
        assert_eq!(shown_user("alice"), "alice");
    }

    use super::*;

    #[test]
    fn escaped_fields_stay_on_one_line_and_say_what_was_there() {
        for (raw, shown) in [
            ("alice", "alice"),
            ("jos\u{e9}", "jos\u{e9}"),
            ("a\nb", "a\\u{a}b"),
            ("a\r\nINFO forged", "a\\u{d}\\u{a}INFO forged"),
            ("\u{1b}[2J", "\\u{1b}[2J"),
            ("x\u{7f}\u{85}\u{0}", "x\\u{7f}\\u{85}\\u{0}"),
            ("line\u{2028}sep\u{2029}", "line\\u{2028}sep\\u{2029}"),
            ("back\\slash", "back\\\\slash"),
            ("already \\u{a}", "already \\\\u{a}"),
            ("", ""),
        ] {
            assert_eq!(Escaped(raw).to_string(), shown, "{raw:?}");
            assert!(!shown.contains(|c: char| c.is_control()), "{shown:?}");
        }
    }
}
