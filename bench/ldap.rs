//! Benchmark: directory logins (`auth.ldap`) against Debian's slapd (started here as in
//! tests/ldap: ldaps, memberof, loopback) — a cached directory login against a cached
//! file login through the same `Authenticator::identify`, and the latency of a login the
//! cache does not have (user search + user bind on a pooled connection, the service
//! account's bind back included), plus a cold one (new TCP + TLS connection first).
//! Target (issue 15): a cached directory login costs what a cached file login costs.
//!
//!     cargo bench --bench ldap
#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;
#[path = "../tests/ldap/slapd.rs"]
#[allow(dead_code)]
mod slapd;

use base64::Engine;
use http::header::{HeaderMap, AUTHORIZATION};
use registry_guard::auth::ldap::{Directory, Login};
use registry_guard::auth::throttle::Limits;
use registry_guard::auth::users::{hash_password, Users};
use registry_guard::auth::{AuthSettings, Authenticator, Identity};
use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn headers(user: &str, pw: &str) -> HeaderMap {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
    let mut h = HeaderMap::new();
    h.insert(AUTHORIZATION, format!("Basic {token}").parse().unwrap());
    h
}

/// Best of `runs` runs of `iters` calls, in ns per call.
fn best_of(
    rt: &tokio::runtime::Runtime,
    runs: usize,
    iters: u32,
    auth: &Authenticator,
    h: &HeaderMap,
) -> f64 {
    let ip: IpAddr = [192, 0, 2, 1].into();
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            rt.block_on(async {
                for _ in 0..iters {
                    let id = auth.identify(black_box(h), ip).await.unwrap();
                    assert!(matches!(id, Identity::User { .. }));
                }
            });
            t.elapsed().as_nanos() as f64 / f64::from(iters)
        })
        .fold(f64::INFINITY, f64::min)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let Some(slapd) = slapd::Slapd::start() else {
        eprintln!("slapd is not installed: run scripts/install-deps");
        return;
    };
    std::env::set_var("LDAP_SVC_PW", slapd::SERVICE_PW);
    let yaml = format!(
        "server:\n  listen: 127.0.0.1:0\n  plaintext: true\nupstream:\n  url: http://127.0.0.1:9\nauth:\n  users_file: unused.yaml\n{}access:\n  rules:\n    - repos: ['**']\n      users: ['*']\n      actions: [pull]\n",
        slapd.auth_yaml("")
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let metrics = Arc::default();
    let dir = Arc::new(Directory::from_config_yaml(&yaml, Arc::clone(&metrics)).unwrap());

    // Cold: the first login of a new directory (connect, TLS, service bind, search, bind).
    let cold: Vec<f64> = (0..5)
        .map(|_| {
            let fresh = Arc::new(Directory::from_config_yaml(&yaml, Arc::default()).unwrap());
            let t = Instant::now();
            let r = rt.block_on(fresh.login("alice", "alice-Dir-pw")).unwrap();
            assert!(matches!(r, Login::Accepted { .. }), "{r:?}");
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    // Warm pool, uncached: service bind back + search + user bind, one after the other.
    rt.block_on(dir.login("alice", "alice-Dir-pw")).unwrap();
    let mut first: Vec<f64> = (0..200)
        .map(|_| {
            let t = Instant::now();
            let r = rt.block_on(dir.login("alice", "alice-Dir-pw")).unwrap();
            assert!(matches!(r, Login::Accepted { .. }));
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    first.sort_by(f64::total_cmp);

    // Cached logins through identify: a file user and a directory user.
    let hash = hash_password("file-pw", 19456, 2, 1).unwrap();
    let users = Users::from_yaml(&format!(
        "users:\n  - name: filebob\n    hash: '{hash}'\n    groups: [g]\n"
    ))
    .unwrap();
    let settings = AuthSettings {
        anonymous: false,
        cache_ttl: Duration::from_secs(3600),
        cache_max_entries: 10_000,
        verify_concurrency: 1,
        throttle: Limits {
            max_failures: 10,
            max_failures_per_address: 100,
            window: Duration::from_secs(60),
            max_tracked: 100_000,
            max_in_flight_per_address: 16,
            max_in_flight_per_user: 4,
        },
        docker_bearer: false,
        upgrade_hashes: false,
    };
    let auth = Authenticator::new(users, &settings, metrics).with_directory(Some(dir));
    let (file_h, dir_h) = (
        headers("filebob", "file-pw"),
        headers("alice", "alice-Dir-pw"),
    );
    best_of(&rt, 1, 1, &auth, &file_h); // fills the caches
    best_of(&rt, 1, 1, &auth, &dir_h);
    let file_cached = best_of(&rt, 5, 100_000, &auth, &file_h);
    let dir_cached = best_of(&rt, 5, 100_000, &auth, &dir_h);

    println!("directory logins (slapd on loopback, ldaps, memberOf; 2 groups)");
    println!(
        "  cold first login (connect+TLS+bind+search+bind) median {:>8.2} ms (5 runs: {})",
        {
            let mut c = cold.clone();
            c.sort_by(f64::total_cmp);
            c[2]
        },
        cold.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  uncached login, pooled connection      p50 {:>8.3} ms  p90 {:>8.3} ms  p99 {:>8.3} ms",
        percentile(&first, 0.5),
        percentile(&first, 0.9),
        percentile(&first, 0.99)
    );
    println!(
        "  cached file login (identify)               {:>8.0} ns",
        file_cached
    );
    println!(
        "  cached directory login (identify)          {:>8.0} ns",
        dir_cached
    );
}
