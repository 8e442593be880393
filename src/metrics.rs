//! The proxy's metrics: their names in one place, registered once in a
//! `prometheus-client` registry and rendered in the Prometheus text format (0.0.4) by the
//! metrics listener (`metrics.listen`, see `server.rs`).
//!
//! Invariants:
//! - Rendered names never change: dashboards, alerts and the tests read them. The
//!   constants below are the names as rendered; `prometheus-client` appends `_total` to
//!   counters itself, so counters are registered without it ([`counter_name`]).
//! - The request path allocates nothing and takes no lock of a label map: every labelled
//!   series it touches is either made at start (small closed sets: auth results,
//!   protocols, TLS failure reasons) or looked up once and kept in a slot indexed by
//!   small enums ([`Metrics::observe_request`]); a series appears on its first use, so
//!   the output holds only combinations that happened. `bench/metrics.rs` measures it.
//! - Gauges of tables that live elsewhere (verification cache, throttle, argon2 queue)
//!   are sampled when scraped, not kept up to date per request.

use http::Method;
use prometheus_client::encoding::{prometheus_text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter as PromCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge as PromGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::OnceLock;

pub const REQUESTS: &str = "registry_guard_requests_total";
pub const REFUSED: &str = "registry_guard_refused_total";
pub const UPSTREAM_ERRORS: &str = "registry_guard_upstream_errors_total";
pub const AUTH_ARGON2_RUNS: &str = "registry_guard_auth_argon2_runs_total";
pub const AUTH_CACHE_HITS: &str = "registry_guard_auth_cache_hits_total";
pub const AUTH_FAILURES: &str = "registry_guard_auth_failures_total";
pub const AUTH_THROTTLED: &str = "registry_guard_auth_throttled_total";
pub const CONNECTIONS_REFUSED_PER_ADDRESS: &str =
    "registry_guard_connections_refused_per_address_total";
pub const AUDIT_RECORDS: &str = "registry_guard_audit_records_total";
pub const AUDIT_WRITE_FAILURES: &str = "registry_guard_audit_write_failures_total";
pub const AUDIT_DENIALS_SUPPRESSED: &str = "registry_guard_audit_denials_suppressed_total";
pub const AUDIT_DROPPED: &str = "registry_guard_audit_dropped_total";
pub const AUDIT_SYSLOG_SENT: &str = "registry_guard_audit_syslog_sent_total";
pub const AUDIT_SYSLOG_DROPPED: &str = "registry_guard_audit_syslog_dropped_total";
pub const AUDIT_SYSLOG_CONNECTED: &str = "registry_guard_audit_syslog_connected";
pub const AUDIT_DISK_FREE_BYTES: &str = "registry_guard_audit_disk_free_bytes";
pub const AUDIT_DISK_LOW: &str = "registry_guard_audit_disk_low";
pub const AUDIT_WRITER_FAILING: &str = "registry_guard_audit_writer_failing";

pub const REQUEST_DURATION: &str = "registry_guard_request_duration_seconds";
pub const UPSTREAM_RESPONSE: &str = "registry_guard_upstream_response_seconds";
pub const RECEIVED_BYTES: &str = "registry_guard_received_bytes_total";
pub const SENT_BYTES: &str = "registry_guard_sent_bytes_total";
pub const REQUESTS_IN_FLIGHT: &str = "registry_guard_requests_in_flight";
pub const CONNECTIONS_OPEN: &str = "registry_guard_connections_open";
pub const TLS_HANDSHAKE_FAILURES: &str = "registry_guard_tls_handshake_failures_total";
pub const AUTH_RESULTS: &str = "registry_guard_auth_results_total";
pub const AUTH_CACHE_ENTRIES: &str = "registry_guard_auth_cache_entries";
pub const AUTH_THROTTLE_ENTRIES: &str = "registry_guard_auth_throttle_entries";
pub const AUTH_ARGON2_QUEUE: &str = "registry_guard_auth_argon2_queue";
pub const AUDIT_RECORDS_BY_PHASE: &str = "registry_guard_audit_records_by_phase_total";
pub const AUDIT_WRITE_DURATION: &str = "registry_guard_audit_write_seconds";
pub const BUILD_INFO: &str = "registry_guard_build_info";
pub const LDAP_OPERATION_DURATION: &str = "registry_guard_ldap_operation_seconds";
pub const LDAP_ERRORS: &str = "registry_guard_ldap_errors_total";
pub const CONFIG_RELOAD: &str = "registry_guard_config_reload_total";
pub const CONFIG_LAST_RELOAD_SUCCESS: &str =
    "registry_guard_config_last_reload_success_timestamp_seconds";

/// A counter's name as registered: `prometheus-client` appends `_total` when rendering.
fn counter_name(rendered: &'static str) -> &'static str {
    rendered.strip_suffix("_total").unwrap_or(rendered)
}

/// A counter that only goes up; a handle on a registered series (clones share it).
#[derive(Debug, Clone, Default)]
pub struct Counter(PromCounter);

impl Counter {
    pub fn inc(&self) {
        self.0.inc();
    }
    pub fn add(&self, n: u64) {
        self.0.inc_by(n);
    }
    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

/// A value set by its one owner and read by the renderer.
#[derive(Debug, Clone, Default)]
pub struct Gauge(PromGauge<u64, AtomicU64>);

impl Gauge {
    pub fn set(&self, v: u64) {
        self.0.set(v);
    }
    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

/// A value many owners move up and down (requests in flight, open connections).
pub type Level = PromGauge;

/// The route kinds of `Route::kind`, and `none` for a request no route matched.
pub const ROUTES: [&str; 9] = [
    "none",
    "base",
    "catalog",
    "tags",
    "manifest",
    "blob",
    "upload_start",
    "upload",
    "referrers",
];
/// Methods as labelled; every other method is `other` (they get 404 unrouted).
pub const METHODS: [&str; 7] = ["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "other"];
/// Status classes as labelled.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn route_index(kind: &str) -> usize {
    ROUTES.iter().position(|r| *r == kind).unwrap_or(0)
}

fn method_index(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::PUT => 2,
        Method::POST => 3,
        Method::PATCH => 4,
        Method::DELETE => 5,
        _ => 6,
    }
}

fn status_index(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

/// The result of a credential check, as `registry_guard_auth_results_total{result}` has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthResult {
    /// argon2 verified the password.
    Ok,
    /// Answered from the verification cache.
    Cached,
    /// Wrong password of a known, enabled user.
    Wrong,
    /// No such user, or a disabled one: the same answer and cost as a wrong password.
    Unknown,
    /// Refused with 429 by the throttle or a full argon2 queue.
    Throttled,
    /// A user name with a control character.
    Malformed,
    /// An access token accepted (right secret, in force, owner enabled).
    Token,
    /// An access token refused: wrong secret, expired, revoked, owner gone or disabled.
    TokenRefused,
    /// The directory (`auth.ldap`) could not judge the password: 503, not counted by
    /// the throttle.
    Unavailable,
}

impl AuthResult {
    pub const ALL: [AuthResult; 9] = [
        AuthResult::Ok,
        AuthResult::Cached,
        AuthResult::Wrong,
        AuthResult::Unknown,
        AuthResult::Throttled,
        AuthResult::Malformed,
        AuthResult::Token,
        AuthResult::TokenRefused,
        AuthResult::Unavailable,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            AuthResult::Ok => "ok",
            AuthResult::Cached => "cached",
            AuthResult::Wrong => "wrong",
            AuthResult::Unknown => "unknown",
            AuthResult::Throttled => "throttled",
            AuthResult::Malformed => "malformed",
            AuthResult::Token => "token",
            AuthResult::TokenRefused => "token_refused",
            AuthResult::Unavailable => "unavailable",
        }
    }
}

/// An operation on the directory (`auth.ldap`), as the LDAP series label it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LdapOp {
    /// TCP connect and TLS (or StartTLS).
    Connect,
    /// A simple bind: the service account's or a user's.
    Bind,
    /// A user or group search.
    Search,
}

impl LdapOp {
    pub const ALL: [LdapOp; 3] = [LdapOp::Connect, LdapOp::Bind, LdapOp::Search];
    pub fn as_str(self) -> &'static str {
        match self {
            LdapOp::Connect => "connect",
            LdapOp::Bind => "bind",
            LdapOp::Search => "search",
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

/// HTTP version of a client connection, chosen by ALPN (plain TCP is HTTP/1.1 only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    H1,
    H2,
}

/// Why a TLS connection never got to HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    /// rustls refused the handshake (no shared version or cipher, bad SNI, a reset).
    Error,
    /// Not complete within `limits.header_read_timeout`.
    Timeout,
    /// The client spoke plain HTTP on the TLS port (answered 400).
    PlainHttp,
}

impl TlsFailure {
    const ALL: [TlsFailure; 3] = [
        TlsFailure::Error,
        TlsFailure::Timeout,
        TlsFailure::PlainHttp,
    ];
    fn as_str(self) -> &'static str {
        match self {
            TlsFailure::Error => "error",
            TlsFailure::Timeout => "timeout",
            TlsFailure::PlainHttp => "plain_http",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabels {
    protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabels {
    table: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuditLabels {
    phase: &'static str,
    /// `none` for records without one (intents, denials' own phase, the writer's).
    outcome: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Request and upstream durations: 1 ms to 5 min (blob transfers are long).
fn request_buckets() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        300.0,
    ])
}

/// Directory operations: 500 µs to about 16 s (past the longest sensible timeout).
fn ldap_buckets() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0005, 2.0, 16,
    ))
}

/// Audit write + fsync: 100 µs to about 1.6 s.
fn audit_buckets() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 2.0, 15,
    ))
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Counter,
    pub refused: Counter,
    pub upstream_errors: Counter,
    pub auth_argon2_runs: Counter,
    pub auth_cache_hits: Counter,
    pub auth_failures: Counter,
    pub auth_throttled: Counter,
    pub connections_refused_per_address: Counter,
    pub audit_records: Counter,
    pub audit_write_failures: Counter,
    pub audit_denials_suppressed: Counter,
    /// Records sent to the syslog collector, and dropped (its buffer full).
    pub audit_syslog_sent: Counter,
    pub audit_syslog_dropped: Counter,
    /// 1 while connected to the syslog collector.
    pub audit_syslog_connected: Gauge,
    /// Free bytes where the audit file lives (0 without audit).
    pub audit_disk_free_bytes: Gauge,
    /// 1 while that is below `audit.min_free_bytes`: not ready.
    pub audit_disk_low: Gauge,
    /// 1 while audit writes fail (or the file cannot be opened): not ready.
    pub audit_writer_failing: Gauge,
    /// Reloads applied (`result="ok"`) and refused (`result="error"`).
    pub config_reload_ok: Counter,
    pub config_reload_error: Counter,
    /// Unix time of the last configuration put in force (start-up or reload).
    pub config_last_reload_success: Gauge,
    pub received_bytes: Counter,
    pub sent_bytes: Counter,
    pub requests_in_flight: Level,
    /// Sampled at scrape: entries of the verification cache.
    pub auth_cache_entries: Gauge,
    /// Sampled at scrape: failure windows per (address, name), per address, pairs known good.
    pub throttle_pairs: Gauge,
    pub throttle_addresses: Gauge,
    pub throttle_known_good: Gauge,
    /// Sampled at scrape: verifications waiting for an argon2 thread.
    pub auth_argon2_queue: Gauge,
    request_duration: Histograms<RequestLabels>,
    request_slots: Box<[OnceLock<Histogram>]>,
    upstream_response: Histograms<RouteLabels>,
    upstream_slots: Box<[OnceLock<Histogram>]>,
    auth_results: [Counter; AuthResult::ALL.len()],
    connections: [Level; 2],
    tls_failures: [Counter; TlsFailure::ALL.len()],
    audit_by_phase: Family<AuditLabels, PromCounter>,
    /// Access events dropped (queue full, or their write failed), by kind.
    audit_dropped: Family<KindLabels, PromCounter>,
    pub audit_write_duration: Histogram,
    ldap_durations: [Histogram; LdapOp::ALL.len()],
    ldap_errors: [Counter; LdapOp::ALL.len()],
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        let mut counter = |name: &'static str, help: &str| {
            let c = Counter::default();
            r.register(counter_name(name), help, c.0.clone());
            c
        };
        let requests = counter(REQUESTS, "Requests received");
        let refused = counter(REFUSED, "Requests the proxy answered itself with an error");
        let upstream_errors = counter(
            UPSTREAM_ERRORS,
            "Requests that failed because of the upstream (502/504)",
        );
        let auth_argon2_runs = counter(AUTH_ARGON2_RUNS, "argon2 verifications run");
        let auth_cache_hits = counter(
            AUTH_CACHE_HITS,
            "Credential checks answered from the verification cache",
        );
        let auth_failures = counter(
            AUTH_FAILURES,
            "Failed logins (unknown user, disabled user, wrong password)",
        );
        let auth_throttled = counter(
            AUTH_THROTTLED,
            "Logins refused with 429 by the brute-force throttle",
        );
        let connections_refused_per_address = counter(
            CONNECTIONS_REFUSED_PER_ADDRESS,
            "Connections closed at accept: their address held limits.max_connections_per_address unauthenticated ones",
        );
        let audit_records = counter(
            AUDIT_RECORDS,
            "Audit records written (including checkpoints, repairs, summaries)",
        );
        let audit_write_failures = counter(
            AUDIT_WRITE_FAILURES,
            "Audit batches that could not be written (their deletes were refused 503)",
        );
        let audit_denials_suppressed = counter(
            AUDIT_DENIALS_SUPPRESSED,
            "Denied records not written one by one (audit.max_denials_per_minute); summarized",
        );
        let audit_syslog_sent = counter(
            AUDIT_SYSLOG_SENT,
            "Audit records sent to the syslog collector (audit.syslog)",
        );
        let audit_syslog_dropped = counter(
            AUDIT_SYSLOG_DROPPED,
            "Audit records not sent to the syslog collector: its buffer (audit.syslog.buffer) was full; the file has them",
        );
        let received_bytes = counter(
            RECEIVED_BYTES,
            "Request body bytes received from clients and forwarded",
        );
        let sent_bytes = counter(SENT_BYTES, "Response body bytes sent to clients");

        let mut gauge = |name: &'static str, help: &str| {
            let g = Gauge::default();
            r.register(name, help, g.0.clone());
            g
        };
        let audit_disk_free_bytes = gauge(
            AUDIT_DISK_FREE_BYTES,
            "Free bytes in the audit file's folder",
        );
        let audit_disk_low = gauge(
            AUDIT_DISK_LOW,
            "1 while the audit folder has less than audit.min_free_bytes free (not ready)",
        );
        let audit_writer_failing = gauge(
            AUDIT_WRITER_FAILING,
            "1 while audit writes fail (not ready)",
        );
        let audit_syslog_connected = gauge(
            AUDIT_SYSLOG_CONNECTED,
            "1 while connected to the syslog collector (audit.syslog)",
        );
        let auth_cache_entries = gauge(
            AUTH_CACHE_ENTRIES,
            "Verified credentials in the verification cache (auth.cache_max_entries bounds it)",
        );
        let config_last_reload_success = gauge(
            CONFIG_LAST_RELOAD_SUCCESS,
            "Unix time the configuration in force was loaded (start-up or reload)",
        );
        let auth_argon2_queue = gauge(
            AUTH_ARGON2_QUEUE,
            "Credential checks waiting for an argon2 thread",
        );

        let requests_in_flight = Level::default();
        r.register(
            REQUESTS_IN_FLIGHT,
            "Requests received whose response is not done",
            requests_in_flight.clone(),
        );
        // Closed label sets: every series made now (rendered at 0 from the start), and
        // the handles kept, so the request path never looks a label set up.
        let open = Family::<ProtocolLabels, Level>::default();
        let connections =
            ["h1", "h2"].map(|protocol| open.get_or_create_owned(&ProtocolLabels { protocol }));
        r.register(
            CONNECTIONS_OPEN,
            "Client connections open, by protocol (after the TLS handshake)",
            open,
        );
        let tls = Family::<ReasonLabels, PromCounter>::default();
        let tls_failures = TlsFailure::ALL
            .map(|f| Counter(tls.get_or_create_owned(&ReasonLabels { reason: f.as_str() })));
        r.register(
            counter_name(TLS_HANDSHAKE_FAILURES),
            "TLS connections that never got to HTTP, by reason (error, timeout, plain_http)",
            tls,
        );
        let reloads = Family::<ResultLabels, PromCounter>::default();
        let [config_reload_ok, config_reload_error] = ["ok", "error"]
            .map(|result| Counter(reloads.get_or_create_owned(&ResultLabels { result })));
        r.register(
            counter_name(CONFIG_RELOAD),
            "Configuration reloads, applied (ok) or refused with the old configuration kept (error)",
            reloads,
        );
        let results = Family::<ResultLabels, PromCounter>::default();
        let auth_results = AuthResult::ALL
            .map(|a| Counter(results.get_or_create_owned(&ResultLabels { result: a.as_str() })));
        r.register(
            counter_name(AUTH_RESULTS),
            "Credential checks by result (ok, cached, wrong, unknown, throttled, malformed, unavailable; access tokens: token, token_refused)",
            results,
        );
        let throttle = Family::<TableLabels, PromGauge<u64, AtomicU64>>::default();
        let [throttle_pairs, throttle_addresses, throttle_known_good] =
            ["pairs", "addresses", "known_good"]
                .map(|table| Gauge(throttle.get_or_create_owned(&TableLabels { table })));
        r.register(
            AUTH_THROTTLE_ENTRIES,
            "Entries of the login throttle's tables (auth.throttle.max_tracked bounds each)",
            throttle,
        );

        let request_duration: Histograms<RequestLabels> =
            Family::new_with_constructor(request_buckets);
        r.register(
            REQUEST_DURATION,
            "Time from a request's head to the end of its response body, by route kind, method and status class",
            request_duration.clone(),
        );
        let upstream_response: Histograms<RouteLabels> =
            Family::new_with_constructor(request_buckets);
        r.register(
            UPSTREAM_RESPONSE,
            "Time from forwarding a request to the upstream's response head, by route kind",
            upstream_response.clone(),
        );
        let audit_by_phase = Family::<AuditLabels, PromCounter>::default();
        r.register(
            counter_name(AUDIT_RECORDS_BY_PHASE),
            "Audit records written, by phase and outcome",
            audit_by_phase.clone(),
        );
        let audit_dropped = Family::<KindLabels, PromCounter>::default();
        r.register(
            counter_name(AUDIT_DROPPED),
            "Access events (push, pull, login) not written: the queue (audit.queue) was full or their write failed; by kind",
            audit_dropped.clone(),
        );
        let audit_write_duration = audit_buckets();
        r.register(
            AUDIT_WRITE_DURATION,
            "Time to append and fsync one batch of audit records",
            audit_write_duration.clone(),
        );
        let ldap_durations_family: Histograms<OperationLabels> =
            Family::new_with_constructor(ldap_buckets);
        let ldap_durations = LdapOp::ALL.map(|op| {
            ldap_durations_family.get_or_create_owned(&OperationLabels {
                operation: op.as_str(),
            })
        });
        r.register(
            LDAP_OPERATION_DURATION,
            "Time of directory (auth.ldap) operations, by operation (connect, bind, search), failed ones included",
            ldap_durations_family,
        );
        let ldap_errors_family = Family::<OperationLabels, PromCounter>::default();
        let ldap_errors = LdapOp::ALL.map(|op| {
            Counter(ldap_errors_family.get_or_create_owned(&OperationLabels {
                operation: op.as_str(),
            }))
        });
        r.register(
            counter_name(LDAP_ERRORS),
            "Directory (auth.ldap) operations that got no usable answer (unreachable, timeout, unexpected result code), by operation; a refused user password is not one",
            ldap_errors_family,
        );
        r.register(
            BUILD_INFO.strip_suffix("_info").unwrap_or(BUILD_INFO),
            "The running version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let slots = |n: usize| (0..n).map(|_| OnceLock::new()).collect();
        Metrics {
            registry: r,
            requests,
            refused,
            upstream_errors,
            auth_argon2_runs,
            auth_cache_hits,
            auth_failures,
            auth_throttled,
            connections_refused_per_address,
            audit_records,
            audit_write_failures,
            audit_denials_suppressed,
            audit_syslog_sent,
            audit_syslog_dropped,
            audit_syslog_connected,
            audit_disk_free_bytes,
            audit_disk_low,
            audit_writer_failing,
            config_reload_ok,
            config_reload_error,
            config_last_reload_success,
            received_bytes,
            sent_bytes,
            requests_in_flight,
            auth_cache_entries,
            throttle_pairs,
            throttle_addresses,
            throttle_known_good,
            auth_argon2_queue,
            request_duration,
            request_slots: slots(ROUTES.len() * METHODS.len() * STATUS_CLASSES.len()),
            upstream_response,
            upstream_slots: slots(ROUTES.len()),
            auth_results,
            connections,
            tls_failures,
            audit_by_phase,
            audit_dropped,
            audit_write_duration,
            ldap_durations,
            ldap_errors,
        }
    }

    /// A directory operation took `seconds` (answered or not).
    pub fn ldap_observe(&self, op: LdapOp, seconds: f64) {
        self.ldap_durations[op.index()].observe(seconds);
    }

    /// A directory operation got no usable answer.
    pub fn ldap_error(&self, op: LdapOp) {
        self.ldap_errors[op.index()].inc();
    }

    /// Directory operations that got no usable answer so far.
    pub fn ldap_errors(&self, op: LdapOp) -> u64 {
        self.ldap_errors[op.index()].get()
    }

    /// One request done: its route kind (`Route::kind`, `none` unrouted), method, final
    /// status and duration.
    pub fn observe_request(&self, route: &str, method: &Method, status: u16, seconds: f64) {
        let (r, m, s) = (
            route_index(route),
            method_index(method),
            status_index(status),
        );
        let slot = (r * METHODS.len() + m) * STATUS_CLASSES.len() + s;
        let Some(cell) = self.request_slots.get(slot) else {
            return;
        };
        cell.get_or_init(|| {
            self.request_duration.get_or_create_owned(&RequestLabels {
                route: ROUTES[r],
                method: METHODS[m],
                status: STATUS_CLASSES[s],
            })
        })
        .observe(seconds);
    }

    /// The upstream's response head came `seconds` after the request was sent.
    pub fn observe_upstream(&self, route: &str, seconds: f64) {
        let r = route_index(route);
        let Some(cell) = self.upstream_slots.get(r) else {
            return;
        };
        cell.get_or_init(|| {
            self.upstream_response
                .get_or_create_owned(&RouteLabels { route: ROUTES[r] })
        })
        .observe(seconds);
    }

    pub fn auth_result(&self, result: AuthResult) -> &Counter {
        let i = AuthResult::ALL
            .iter()
            .position(|a| *a == result)
            .unwrap_or(0);
        &self.auth_results[i]
    }

    pub fn tls_failure(&self, reason: TlsFailure) {
        let i = TlsFailure::ALL
            .iter()
            .position(|a| *a == reason)
            .unwrap_or(0);
        self.tls_failures[i].inc();
    }

    /// Counts a connection open until the returned guard is dropped.
    pub fn connection_open(&self, protocol: Protocol) -> LevelGuard {
        let level = match protocol {
            Protocol::H1 => &self.connections[0],
            Protocol::H2 => &self.connections[1],
        };
        LevelGuard::new(level.clone())
    }

    /// One access event of `kind` dropped (`registry_guard_audit_dropped_total{kind}`).
    pub fn audit_dropped(&self, kind: crate::audit::Kind) {
        self.audit_dropped
            .get_or_create(&KindLabels {
                kind: kind.as_str(),
            })
            .inc();
    }

    /// One audit record written (`outcome`: `none` when the record has none).
    pub fn audit_record(&self, phase: &'static str, outcome: &'static str) {
        self.audit_by_phase
            .get_or_create(&AuditLabels { phase, outcome })
            .inc();
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// The `Content-Type` of [`Metrics::render`].
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Holds one unit of a [`Level`] (a request in flight, an open connection) until dropped.
#[derive(Debug)]
pub struct LevelGuard(Level);

impl LevelGuard {
    pub fn new(level: Level) -> Self {
        level.inc();
        LevelGuard(level)
    }
}

impl Drop for LevelGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every name a test, dashboard or alert reads, exactly as rendered.
    #[test]
    fn renders_every_name_unchanged() {
        let m = Metrics::default();
        m.auth_cache_hits.inc();
        m.auth_cache_hits.inc();
        m.audit_disk_free_bytes.set(1000);
        let text = m.render();
        assert!(
            text.contains("\nregistry_guard_auth_cache_hits_total 2\n"),
            "{text}"
        );
        assert!(
            text.contains("\nregistry_guard_audit_disk_free_bytes 1000\n"),
            "{text}"
        );
        for name in [
            REQUESTS,
            REFUSED,
            UPSTREAM_ERRORS,
            AUTH_ARGON2_RUNS,
            AUTH_CACHE_HITS,
            AUTH_FAILURES,
            AUTH_THROTTLED,
            CONNECTIONS_REFUSED_PER_ADDRESS,
            AUDIT_RECORDS,
            AUDIT_WRITE_FAILURES,
            AUDIT_DENIALS_SUPPRESSED,
            RECEIVED_BYTES,
            SENT_BYTES,
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} counter\n{name} 0\n"))
                    || text.contains(&format!("# TYPE {name} counter\n{name} 2\n")),
                "{name} in\n{text}"
            );
        }
        for name in [
            AUDIT_DISK_FREE_BYTES,
            AUDIT_DISK_LOW,
            AUDIT_WRITER_FAILING,
            REQUESTS_IN_FLIGHT,
            AUTH_CACHE_ENTRIES,
            AUTH_ARGON2_QUEUE,
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} gauge\n{name} ")),
                "{name} in\n{text}"
            );
        }
        for (name, kind) in [
            (AUTH_RESULTS, "counter"),
            (TLS_HANDSHAKE_FAILURES, "counter"),
            (CONNECTIONS_OPEN, "gauge"),
            (AUTH_THROTTLE_ENTRIES, "gauge"),
            (AUDIT_WRITE_DURATION, "histogram"),
            (BUILD_INFO, "gauge"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name} in\n{text}"
            );
        }
        assert!(text.contains(&format!(
            "{BUILD_INFO}{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )));
        // Closed label sets are there from the start, at zero.
        assert!(text.contains("registry_guard_auth_results_total{result=\"throttled\"} 0\n"));
        assert!(text.contains("registry_guard_connections_open{protocol=\"h2\"} 0\n"));
        assert!(
            text.contains("registry_guard_tls_handshake_failures_total{reason=\"plain_http\"} 0\n")
        );
        assert!(text.contains("registry_guard_auth_throttle_entries{table=\"known_good\"} 0\n"));
        // No request yet, no audit record: no such series (a family renders its series).
        assert!(!text.contains("registry_guard_request_duration_seconds_count"));
        assert!(!text.contains(AUDIT_RECORDS_BY_PHASE));
    }

    #[test]
    fn labelled_series_render_with_their_labels() {
        let m = Metrics::default();
        m.observe_request("manifest", &Method::GET, 200, 0.003);
        m.observe_request("manifest", &Method::GET, 204, 0.2);
        m.observe_request("none", &Method::from_bytes(b"BREW").unwrap(), 404, 0.0001);
        m.observe_request("blob", &Method::DELETE, 0, 0.0001);
        m.observe_upstream("blob", 0.02);
        m.auth_result(AuthResult::Cached).inc();
        m.tls_failure(TlsFailure::Timeout);
        m.audit_record("intent", "none");
        m.audit_record("outcome", "deleted");
        m.audit_write_duration.observe(0.0004);
        let open = m.connection_open(Protocol::H2);
        let text = m.render();
        let has = |s: &str| assert!(text.contains(s), "{s} in\n{text}");
        has("registry_guard_request_duration_seconds_count{route=\"manifest\",method=\"GET\",status=\"2xx\"} 2\n");
        has("registry_guard_request_duration_seconds_bucket{route=\"manifest\",method=\"GET\",status=\"2xx\",le=\"0.005\"} 1\n");
        has("registry_guard_request_duration_seconds_count{route=\"none\",method=\"other\",status=\"4xx\"} 1\n");
        has("registry_guard_request_duration_seconds_count{route=\"blob\",method=\"DELETE\",status=\"1xx\"} 1\n");
        has("registry_guard_upstream_response_seconds_count{route=\"blob\"} 1\n");
        has("registry_guard_auth_results_total{result=\"cached\"} 1\n");
        has("registry_guard_tls_handshake_failures_total{reason=\"timeout\"} 1\n");
        has("registry_guard_audit_records_by_phase_total{phase=\"intent\",outcome=\"none\"} 1\n");
        has("registry_guard_audit_records_by_phase_total{phase=\"outcome\",outcome=\"deleted\"} 1\n");
        has("registry_guard_audit_write_seconds_count 1\n");
        has("# TYPE registry_guard_request_duration_seconds histogram\n");
        has("# TYPE registry_guard_upstream_response_seconds histogram\n");
        has("# TYPE registry_guard_audit_records_by_phase_total counter\n");
        has("registry_guard_connections_open{protocol=\"h2\"} 1\n");
        drop(open);
        assert!(m
            .render()
            .contains("registry_guard_connections_open{protocol=\"h2\"} 0\n"));
    }
}
