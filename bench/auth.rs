//! Benchmark: the cost of a credential check — a first verification (argon2id with the
//! default parameters, m=19456 KiB t=2 p=1) and a cached one (Basic parse + HMAC
//! fingerprint + table lookup). Target: a cached check adds under 50 µs.
//!
//!     cargo bench --bench auth
use base64::Engine;
use registry_guard::auth::basic;
use registry_guard::auth::cache::VerifyCache;
use registry_guard::auth::users::{
    hash_password, verify_password, DEFAULT_M_COST, DEFAULT_P_COST, DEFAULT_T_COST,
};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Best of `runs` runs of `iters` calls, in ns per call: the machine is shared, the
/// minimum is the cost.
fn best_of<F: FnMut()>(runs: usize, iters: u32, mut f: F) -> f64 {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            t.elapsed().as_nanos() as f64 / f64::from(iters)
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let pw = "correct horse battery staple";
    let phc = hash_password(pw, DEFAULT_M_COST, DEFAULT_T_COST, DEFAULT_P_COST).unwrap();
    let right = best_of(3, 10, || {
        assert!(verify_password(black_box(&phc), black_box(pw)))
    });
    let wrong = best_of(3, 10, || {
        assert!(!verify_password(black_box(&phc), black_box("wrong")))
    });

    let token = base64::engine::general_purpose::STANDARD.encode(format!("alice:{pw}"));
    let header = format!("Basic {token}");
    let parse = best_of(5, 200_000, || {
        black_box(basic::parse(black_box(header.as_bytes())).unwrap());
    });
    let cache = VerifyCache::new(Duration::from_secs(300), 10_000);
    cache.insert(cache.fingerprint("alice", pw, &phc), Instant::now());
    let cached = best_of(5, 200_000, || {
        let creds = basic::parse(black_box(header.as_bytes())).unwrap();
        let fp = cache.fingerprint(&creds.user, creds.password.expose(), black_box(&phc));
        assert!(cache.hit(&fp, Instant::now()));
    });
    println!(
        "credential check cost (argon2id m={DEFAULT_M_COST} t={DEFAULT_T_COST} p={DEFAULT_P_COST})"
    );
    println!(
        "  first verification, right password  {:>10.2} ms",
        right / 1e6
    );
    println!(
        "  first verification, wrong password  {:>10.2} ms",
        wrong / 1e6
    );
    println!("  Basic header parse                  {:>10.0} ns", parse);
    println!("  cached check (parse + HMAC + hit)   {:>10.0} ns", cached);
}
