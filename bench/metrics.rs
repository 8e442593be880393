//! Benchmark: what the metrics cost a request — everything `handler`, `log`, `auth` and
//! `proxy::body` do to the metrics for one authenticated, forwarded request (requests
//! counter, in-flight gauge up and down, auth result and cache-hit counters, upstream
//! response histogram, bytes of two body frames, request duration histogram), best of
//! 5 × 200,000. Also a connection's open/close and one scrape. Target: ≤ 5 µs a request.
//!
//!     cargo bench --bench metrics
use http::Method;
use registry_guard::metrics::{AuthResult, LevelGuard, Metrics, Protocol};
use std::hint::black_box;
use std::time::Instant;

/// Best of `runs` runs of `iters` calls, in ns per call: the machine is shared, the
/// minimum is the cost.
fn best_of<F: FnMut(u32)>(runs: usize, iters: u32, mut f: F) -> f64 {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            for i in 0..iters {
                f(i);
            }
            t.elapsed().as_nanos() as f64 / f64::from(iters)
        })
        .fold(f64::INFINITY, f64::min)
}

const ROUTES: [&str; 4] = ["manifest", "blob", "base", "upload"];
const METHODS: [Method; 3] = [Method::GET, Method::HEAD, Method::PUT];
const STATUSES: [u16; 3] = [200, 404, 202];

fn main() {
    let m = Metrics::new();
    let per_request = best_of(5, 200_000, |i| {
        let i = i as usize;
        let (route, method, status) = (
            ROUTES[i % ROUTES.len()],
            &METHODS[i % METHODS.len()],
            STATUSES[i % STATUSES.len()],
        );
        m.requests.inc();
        let in_flight = LevelGuard::new(m.requests_in_flight.clone());
        m.auth_cache_hits.inc();
        m.auth_result(AuthResult::Cached).inc();
        m.observe_upstream(black_box(route), 0.004);
        m.sent_bytes.add(black_box(16_384));
        m.sent_bytes.add(black_box(512));
        m.observe_request(black_box(route), method, black_box(status), 0.005);
        drop(in_flight);
    });
    let per_connection = best_of(5, 200_000, |_| {
        drop(black_box(m.connection_open(Protocol::H2)));
    });
    let scrape = best_of(3, 200, |_| {
        black_box(m.render());
    });
    let series = m.render().lines().filter(|l| !l.starts_with('#')).count();
    println!("metrics cost");
    println!("  per request (10 updates)            {per_request:>10.0} ns");
    println!("  per connection (open + close)       {per_connection:>10.0} ns");
    println!(
        "  one scrape ({series} series)            {:>10.1} µs",
        scrape / 1e3
    );
}
