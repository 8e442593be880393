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

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
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
}

impl Metrics {
    fn all(&self) -> [(&'static str, &'static str, &Counter); 8] {
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
        ]
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
        assert_eq!(text.matches("# TYPE ").count(), 8);
    }
}
