//! Counters, their names in one place, and their Prometheus text rendering for the
//! optional metrics listener (`metrics.listen`). Counters are plain atomics: bumping one
//! on the request path costs one relaxed add.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

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
pub const AUDIT_DISK_FREE_BYTES: &str = "registry_guard_audit_disk_free_bytes";
pub const AUDIT_DISK_LOW: &str = "registry_guard_audit_disk_low";
pub const AUDIT_WRITER_FAILING: &str = "registry_guard_audit_writer_failing";
/// Labelled `result="ok"|"error"`.
pub const CONFIG_RELOAD: &str = "registry_guard_config_reload_total";
pub const CONFIG_LAST_RELOAD_SUCCESS: &str =
    "registry_guard_config_last_reload_success_timestamp_seconds";

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (set by its one owner, read by the renderer).
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
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
    /// Free bytes where the audit file lives (0 without audit).
    pub audit_disk_free_bytes: Gauge,
    /// 1 while that is below `audit.min_free_bytes`: not ready.
    pub audit_disk_low: Gauge,
    /// 1 while audit writes fail: not ready.
    pub audit_writer_failing: Gauge,
    /// Reloads applied (`result="ok"`) and refused (`result="error"`).
    pub config_reload_ok: Counter,
    pub config_reload_error: Counter,
    /// Unix time of the last configuration put in force (start-up or reload).
    pub config_last_reload_success: Gauge,
}

impl Metrics {
    fn all(&self) -> [(&'static str, &'static str, &Counter); 11] {
        [
            (REQUESTS, "Requests received.", &self.requests),
            (
                REFUSED,
                "Requests the proxy answered itself with an error.",
                &self.refused,
            ),
            (
                UPSTREAM_ERRORS,
                "Requests that failed because of the upstream (502/504).",
                &self.upstream_errors,
            ),
            (
                AUTH_ARGON2_RUNS,
                "argon2 verifications run.",
                &self.auth_argon2_runs,
            ),
            (
                AUTH_CACHE_HITS,
                "Credential checks answered from the verification cache.",
                &self.auth_cache_hits,
            ),
            (
                AUTH_FAILURES,
                "Failed logins (unknown user, disabled user, wrong password).",
                &self.auth_failures,
            ),
            (
                AUTH_THROTTLED,
                "Logins refused with 429 by the brute-force throttle.",
                &self.auth_throttled,
            ),
            (
                CONNECTIONS_REFUSED_PER_ADDRESS,
                "Connections closed at accept: their address held limits.max_connections_per_address unauthenticated ones.",
                &self.connections_refused_per_address,
            ),
            (
                AUDIT_RECORDS,
                "Audit records written (including checkpoints, repairs, summaries).",
                &self.audit_records,
            ),
            (
                AUDIT_WRITE_FAILURES,
                "Audit batches that could not be written (their deletes were refused 503).",
                &self.audit_write_failures,
            ),
            (
                AUDIT_DENIALS_SUPPRESSED,
                "Denied records not written one by one (audit.max_denials_per_minute); summarized.",
                &self.audit_denials_suppressed,
            ),
        ]
    }

    fn gauges(&self) -> [(&'static str, &'static str, &Gauge); 4] {
        [
            (
                AUDIT_DISK_FREE_BYTES,
                "Free bytes in the audit file's folder.",
                &self.audit_disk_free_bytes,
            ),
            (
                AUDIT_DISK_LOW,
                "1 while the audit folder has less than audit.min_free_bytes free (not ready).",
                &self.audit_disk_low,
            ),
            (
                AUDIT_WRITER_FAILING,
                "1 while audit writes fail (not ready).",
                &self.audit_writer_failing,
            ),
            (
                CONFIG_LAST_RELOAD_SUCCESS,
                "Unix time the configuration in force was loaded (start-up or reload).",
                &self.config_last_reload_success,
            ),
        ]
    }

    /// Why the proxy should not get traffic now, if it should not (`GET /ready`).
    pub fn not_ready(&self) -> Option<String> {
        if self.audit_writer_failing.get() == 1 {
            return Some("audit writes fail: deletes are refused (see the log)".into());
        }
        if self.audit_disk_low.get() == 1 {
            return Some(format!(
                "the audit folder has {} bytes free, less than audit.min_free_bytes",
                self.audit_disk_free_bytes.get()
            ));
        }
        None
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, help, c) in self.all() {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                c.get()
            );
        }
        for (name, help, g) in self.gauges() {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                g.get()
            );
        }
        let _ = writeln!(
            out,
            "# HELP {CONFIG_RELOAD} Configuration reloads, applied (ok) or refused with the old configuration kept (error).\n# TYPE {CONFIG_RELOAD} counter\n{CONFIG_RELOAD}{{result=\"ok\"}} {}\n{CONFIG_RELOAD}{{result=\"error\"}} {}",
            self.config_reload_ok.get(),
            self.config_reload_error.get()
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_counter() {
        let m = Metrics::default();
        m.auth_cache_hits.inc();
        m.auth_cache_hits.inc();
        let text = m.render();
        assert!(
            text.contains("\nregistry_guard_auth_cache_hits_total 2\n"),
            "{text}"
        );
        assert_eq!(text.matches("# TYPE ").count(), 16);
        assert_eq!(text.matches(" gauge\n").count(), 4);
        m.config_reload_error.inc();
        assert!(m
            .render()
            .contains("\nregistry_guard_config_reload_total{result=\"error\"} 1\n"));
    }

    #[test]
    fn ready_unless_the_audit_disk_is_low_or_writes_fail() {
        let m = Metrics::default();
        assert_eq!(m.not_ready(), None);
        m.audit_disk_free_bytes.set(1000);
        m.audit_disk_low.set(1);
        assert!(m.not_ready().unwrap().contains("1000 bytes free"));
        m.audit_writer_failing.set(1);
        assert!(m.not_ready().unwrap().contains("audit writes fail"));
        m.audit_disk_low.set(0);
        m.audit_writer_failing.set(0);
        assert_eq!(m.not_ready(), None);
        assert!(m
            .render()
            .contains("\nregistry_guard_audit_disk_free_bytes 1000\n"));
    }
}
