//! Identity: who is asking. Pure parts (`basic`, the rules of `users`) plus the
//! [`Authenticator`], which holds the current user file snapshot, the verification
//! cache and the throttle, and runs argon2 off the async workers behind a concurrency cap.
//!
//! Invariants:
//! - Unknown users, disabled users and wrong passwords get the same answer after the same
//!   argon2 work (unknown names are checked against a dummy hash of the same parameters).
//! - A password or an Authorization header value is never logged or stored; the cache
//!   holds keyed hashes only.
//! - A throttled client or name costs no argon2 run.

pub mod basic;
pub mod cache;
pub mod throttle;
pub mod users;

use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use cache::VerifyCache;
use http::header::{HeaderMap, AUTHORIZATION};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use throttle::Throttle;
use users::Users;

/// Random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut out = [0u8; N];
    // The system RNG failing is not recoverable; ring only fails where getrandom does.
    if ring::rand::SystemRandom::new().fill(&mut out).is_err() {
        std::process::abort();
    }
    out
}

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    User { name: String, groups: Vec<String> },
    Anonymous,
}

impl Identity {
    pub fn name(&self) -> &str {
        match self {
            Identity::User { name, .. } => name,
            Identity::Anonymous => "anonymous",
        }
    }
}

/// Why no identity was established. `response.rs` renders these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credentials and anonymous access is off: 401 with the challenge.
    #[error("authentication required")]
    Missing,
    /// Credentials that are malformed, unknown, disabled or wrong: 401 with the challenge.
    #[error("authentication failed: {0}")]
    Invalid(&'static str),
    /// More than one Authorization header: 400.
    #[error("more than one Authorization header")]
    Ambiguous,
    /// Too many failures from this address or for this name: 429.
    #[error("too many failed logins; retry in {}s", .0.as_secs().max(1))]
    Throttled(Duration),
}

/// Settings of the identity stage (from `auth:` in the config).
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub anonymous: bool,
    pub cache_ttl: Duration,
    pub cache_max_entries: usize,
    pub verify_concurrency: usize,
    pub max_failures: u32,
    pub failure_window: Duration,
    pub max_tracked: usize,
}

#[derive(Debug)]
pub struct Authenticator {
    users: ArcSwap<Users>,
    cache: VerifyCache,
    throttle: Throttle,
    argon2: Argon2Pool,
    /// One lock per credential being verified: concurrent requests with the same
    /// credentials (64 connections of one client at start) wait for one argon2 run and
    /// then hit the cache, instead of running argon2 64 times.
    in_flight: std::sync::Mutex<HashMap<cache::Fingerprint, Arc<tokio::sync::Mutex<()>>>>,
    anonymous: bool,
    metrics: Arc<Metrics>,
}

impl Authenticator {
    pub fn new(users: Users, settings: &AuthSettings, metrics: Arc<Metrics>) -> Self {
        Authenticator {
            users: ArcSwap::from_pointee(users),
            cache: VerifyCache::new(settings.cache_ttl, settings.cache_max_entries),
            throttle: Throttle::new(
                settings.max_failures,
                settings.failure_window,
                settings.max_tracked,
            ),
            argon2: Argon2Pool::new(settings.verify_concurrency.max(1)),
            in_flight: std::sync::Mutex::new(HashMap::new()),
            anonymous: settings.anonymous,
            metrics,
        }
    }

    /// Swaps in a new user file snapshot; cached verifications of changed or removed
    /// users stop matching because the stored hash is part of their key.
    pub fn replace_users(&self, users: Users) {
        self.users.store(Arc::new(users));
    }

    pub fn users(&self) -> Arc<Users> {
        self.users.load_full()
    }

    /// Establishes the identity of a request from its headers.
    pub async fn identify(
        &self,
        headers: &HeaderMap,
        client: IpAddr,
    ) -> Result<Identity, AuthError> {
        let mut values = headers.get_all(AUTHORIZATION).iter();
        let value = match (values.next(), values.next()) {
            (None, _) if self.anonymous => return Ok(Identity::Anonymous),
            (None, _) => return Err(AuthError::Missing),
            (Some(_), Some(_)) => return Err(AuthError::Ambiguous),
            (Some(v), None) => v,
        };
        let creds = basic::parse(value.as_bytes()).map_err(|e| {
            tracing::debug!(reason = %e, %client, "unusable Authorization header");
            AuthError::Invalid("malformed Basic credentials")
        })?;
        let snapshot = self.users.load_full();
        let user = snapshot.get(&creds.user).cloned();
        let now = Instant::now();
        let fingerprint = user.as_ref().filter(|u| !u.disabled).map(|u| {
            self.cache
                .fingerprint(&u.name, creds.password.expose(), &u.hash)
        });
        if let Some(fp) = &fingerprint {
            if self.cache.hit(fp, now) {
                self.metrics.auth_cache_hits.inc();
                return Ok(identity_of(user.as_deref()));
            }
        }
        if let Some(retry) = self.throttle.check(client, &creds.user, now) {
            self.metrics.auth_throttled.inc();
            tracing::warn!(user = %creds.user, %client, "login throttled");
            return Err(AuthError::Throttled(retry));
        }
        let flight = fingerprint.map(|fp| self.flight(fp));
        let _turn = match &flight {
            Some(f) => Some(f.lock().await),
            None => None,
        };
        if let Some(fp) = &fingerprint {
            // Verified by the request this one waited for.
            if self.cache.hit(fp, Instant::now()) {
                self.metrics.auth_cache_hits.inc();
                drop(_turn);
                self.land(fingerprint.as_ref(), flight);
                return Ok(identity_of(user.as_deref()));
            }
        }
        let hash = user
            .as_ref()
            .map_or_else(|| snapshot.dummy_hash.clone(), |u| u.hash.clone());
        let verified = self.verify(hash, creds.password.expose().to_owned()).await;
        drop(_turn);
        self.land(fingerprint.as_ref(), flight);
        match (verified, fingerprint) {
            (true, Some(fp)) => {
                self.cache.insert(fp, Instant::now());
                self.throttle.succeed(&creds.user);
                Ok(identity_of(user.as_deref()))
            }
            _ => {
                self.metrics.auth_failures.inc();
                self.throttle.fail(client, &creds.user, Instant::now());
                let why = match &user {
                    None => "unknown user",
                    Some(u) if u.disabled => "disabled user",
                    Some(_) => "wrong password",
                };
                // The name is logged, the reason only at debug: the log of a shared
                // system should not confirm which names exist.
                tracing::info!(user = %creds.user, %client, "login failed");
                tracing::debug!(user = %creds.user, reason = why, "login failure reason");
                Err(AuthError::Invalid("invalid username or password"))
            }
        }
    }

    /// The lock of the verification of `fp`, created if none is under way.
    fn flight(&self, fp: cache::Fingerprint) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(fp).or_default().clone()
    }

    /// Forgets the lock of `fp` once no request holds or waits for it.
    fn land(&self, fp: Option<&cache::Fingerprint>, flight: Option<Arc<tokio::sync::Mutex<()>>>) {
        let (Some(fp), Some(flight)) = (fp, flight) else {
            return;
        };
        let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        // Ours and the map's: nobody else is waiting.
        if Arc::strong_count(&flight) <= 2 {
            map.remove(fp);
        }
    }

    /// One argon2 verification on the argon2 threads.
    async fn verify(&self, hash: String, password: String) -> bool {
        self.metrics.auth_argon2_runs.inc();
        self.argon2.verify(hash, password).await
    }
}

/// A fixed set of threads for argon2. A fixed set, not the blocking pool: each thread
/// that ever runs argon2 keeps its allocator arena, and argon2 allocates `m_cost` KiB
/// per run (19 MiB by default), so the memory it holds is bounded by the thread count.
/// The queue in front of them is bounded: a flood of guesses waits there, it does not
/// take the threads that serve requests.
#[derive(Debug)]
struct Argon2Pool {
    jobs: tokio::sync::mpsc::Sender<(String, String, tokio::sync::oneshot::Sender<bool>)>,
}

impl Argon2Pool {
    fn new(threads: usize) -> Self {
        let (jobs, rx) =
            tokio::sync::mpsc::channel::<(String, String, tokio::sync::oneshot::Sender<bool>)>(
                1024,
            );
        let rx = Arc::new(std::sync::Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || loop {
                    let job = rx.lock().unwrap_or_else(|p| p.into_inner()).blocking_recv();
                    let Some((hash, password, done)) = job else {
                        return;
                    };
                    let _ = done.send(users::verify_password(&hash, &password));
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start an argon2 thread");
            }
        }
        Argon2Pool { jobs }
    }

    async fn verify(&self, hash: String, password: String) -> bool {
        let (done, answer) = tokio::sync::oneshot::channel();
        if self.jobs.send((hash, password, done)).await.is_err() {
            return false;
        }
        answer.await.unwrap_or(false)
    }
}

fn identity_of(user: Option<&users::User>) -> Identity {
    match user {
        Some(u) => Identity::User {
            name: u.name.clone(),
            groups: u.groups.clone(),
        },
        None => Identity::Anonymous,
    }
}
