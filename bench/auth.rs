//! Benchmark: the cost of a credential check — a first verification (argon2id with the
//! default parameters, m=19456 KiB t=2 p=1) and a cached one (Basic parse + HMAC
//! fingerprint + table lookup). Target: a cached check adds under 50 µs.
//!
//! Then the dummy-hash rule with bcrypt users (htpasswd imports): the failure latency of
//! an unknown name, a known argon2 user and a known bcrypt user, for user files with
//! argon2 only, both kinds (half migrated) and bcrypt only. Each failed check runs the
//! job a verification thread runs (`Users::verification(..).run`), the cases interleaved
//! sample by sample so that the load of the shared machine falls on all alike.
//!
//! And an access token's check (issue 12; target under 5 µs): Basic parse, the token's
//! lookup among 1,000, SHA-256 of the secret and the constant-time compare, the owner's
//! lookup in the user file, the identity, the last-use note; then the same through
//! `Authenticator::identify` (throttle and metrics included).
//!
//!     cargo bench --bench auth
use base64::Engine;
use registry_guard::auth::basic;
use registry_guard::auth::cache::VerifyCache;
use registry_guard::auth::users::{
    hash_password, verify_password, Users, WorkMemory, DEFAULT_M_COST, DEFAULT_P_COST,
    DEFAULT_T_COST,
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
    failure_latencies(pw, &phc);
    access_tokens(&phc);
}

/// Milliseconds of one call of `f`.
fn ms(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64() * 1e3
}

/// Failed checks (wrong password) for an unknown name and each user, per user file.
fn failure_latencies(pw: &str, argon2: &str) {
    const SAMPLES: usize = 21;
    // `htpasswd -B` writes cost 5; cost 10 is a common `-C 10`.
    let bcrypt5 = bcrypt::hash(pw, 5).unwrap().replacen("$2b$", "$2y$", 1);
    let bcrypt10 = bcrypt::hash(pw, 10).unwrap().replacen("$2b$", "$2y$", 1);
    let file = |entries: &[(&str, &str)]| {
        let mut y = String::from("users:\n");
        for (name, hash) in entries {
            y.push_str(&format!("  - name: {name}\n    hash: '{hash}'\n"));
        }
        Users::from_yaml(&y).unwrap()
    };
    let files = [
        ("argon2 only", file(&[("ann", argon2)])),
        (
            "argon2 + bcrypt cost 5",
            file(&[("ann", argon2), ("alice", &bcrypt5)]),
        ),
        (
            "argon2 + bcrypt cost 10",
            file(&[("ann", argon2), ("alice", &bcrypt10)]),
        ),
        ("bcrypt cost 5 only", file(&[("alice", &bcrypt5)])),
    ];
    let mut memory = WorkMemory::default();
    println!("\nfailed check (wrong password), {SAMPLES} samples interleaved: min / median ms");
    for (what, users) in &files {
        let mut cases = vec![("unknown name", users.verification(None))];
        for name in ["ann", "alice"] {
            if let Some(u) = users.get(name) {
                let kind = if u.kind.is_bcrypt() {
                    "known bcrypt user"
                } else {
                    "known argon2 user"
                };
                cases.push((kind, users.verification(Some(u))));
            }
        }
        let mut samples = vec![Vec::with_capacity(SAMPLES); cases.len()];
        for _ in 0..SAMPLES {
            for (i, (_, check)) in cases.iter().enumerate() {
                samples[i].push(ms(|| assert!(!check.run(black_box("wrong"), &mut memory))));
            }
        }
        println!("  {what}");
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let mut unknown = 0.0;
        for (i, (case, _)) in cases.iter().enumerate() {
            let min = samples[i].iter().copied().fold(f64::INFINITY, f64::min);
            let med = median(&mut samples[i]);
            if i == 0 {
                unknown = med;
                println!("    {case:<18} {min:>8.2} / {med:>8.2}");
            } else {
                println!(
                    "    {case:<18} {min:>8.2} / {med:>8.2}   ({:+.1} % vs unknown)",
                    (med / unknown - 1.0) * 100.0
                );
            }
        }
    }
    // What a bcrypt user would cost without the other kind's dummy run (the leak the
    // padding closes in a half-migrated file).
    let alone = best_of(3, 5, || {
        assert!(!verify_password(black_box(&bcrypt5), "wrong"))
    });
    println!("  bcrypt cost 5 alone, no pad: {:.2} ms", alone / 1e6);
}

/// An access token's check, with 1,000 tokens in the file and 1,000 users.
fn access_tokens(phc: &str) {
    use registry_guard::auth::access_tokens::{
        self as at, format_time, hash_secret, TokenEntry, TokenFile, Tokens, Usage,
    };
    use registry_guard::auth::users::Users;
    use registry_guard::auth::{unix_now, AuthSettings, Authenticator};
    let now = unix_now();
    let mut users = String::from("users:\n");
    for i in 0..1000 {
        users.push_str(&format!(
            "  - name: user-{i}\n    hash: '{phc}'\n    groups: [team-a, team-{i}]\n"
        ));
    }
    let secret = at::new_secret();
    let entries = (0..1000)
        .map(|i| TokenEntry {
            name: format!("ci-{i}"),
            owner: format!("user-{i}"),
            hash: if i == 500 {
                hash_secret(&secret)
            } else {
                hash_secret(&at::new_secret())
            },
            repos: vec!["team-a/**".into(), "public/**".into()],
            actions: vec!["pull".into(), "push".into()],
            created: format_time(now),
            expires: Some(format_time(now + 86400)),
            description: None,
            revoked: None,
        })
        .collect();
    let file = TokenFile { tokens: entries };
    let tokens = Tokens::from_file(&file, None).unwrap();
    let users = Users::from_yaml(&users).unwrap();
    let usage = Usage::default();
    let client = std::net::IpAddr::from([192, 0, 2, 1]);
    let header = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("ci-500:{secret}"))
    );
    let check = |secret_ok: bool| {
        let creds = basic::parse(black_box(header.as_bytes())).unwrap();
        let t = tokens.get(&creds.user).unwrap();
        let presented = if secret_ok {
            creds.password.expose()
        } else {
            "rgt_wrong"
        };
        match t.verify(presented, now) {
            Ok(()) => {
                let id = at::identity(t, &users, now).unwrap();
                usage.record(&t.name, now, client);
                black_box(id);
            }
            Err(e) => {
                black_box(e);
            }
        }
    };
    let right = best_of(5, 200_000, || check(true));
    let wrong = best_of(5, 200_000, || check(false));

    // The whole identity stage, as serving runs it.
    let settings = AuthSettings {
        anonymous: false,
        cache_ttl: Duration::from_secs(300),
        cache_max_entries: 10_000,
        verify_concurrency: 1,
        throttle: registry_guard::auth::throttle::Limits {
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
    let auth = Authenticator::new(users, &settings, Default::default()).with_access_tokens(
        Tokens::from_file(&file, None).unwrap(),
        std::env::temp_dir().join("rg-bench-last-used"),
    );
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, header.parse().unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let identify = best_of(5, 200_000, || {
        let id = rt
            .block_on(auth.identify(black_box(&headers), client))
            .unwrap();
        black_box(id);
    });
    println!("access token check (1,000 tokens, 1,000 users; target < 5 us)");
    println!("  right secret (parse + lookup + SHA-256 + compare + owner + identity + last use) {right:>6.0} ns");
    println!("  wrong secret (parse + lookup + SHA-256 + compare)                              {wrong:>6.0} ns");
    println!("  Authenticator::identify, right secret (+ runtime block_on)                     {identify:>6.0} ns");
}
