//! Brute-force throttling. A login attempt that would run argon2 first takes an
//! [`Attempt`] from [`Throttle::reserve`]; the reservation counts as a failure at once, so
//! parallel and cancelled attempts count like any other:
//!
//! - per (client address, user name): at most `max_failures` attempts within `window`,
//!   then 429 with Retry-After. This is the limit that protects one account from one
//!   place, and the only one a user name takes part in: a name alone never blocks its
//!   owner, who logs in from another address (or from the same shared address, see next).
//! - per client address (IPv6 by /64): at most `max_failures_per_address` attempts, across
//!   every name, within `window`. Much higher than the pair's limit: an office NAT, a CI
//!   farm or a load balancer puts many users behind one address, and one misconfigured
//!   client there must not lock out the others; a guesser spraying many names from one
//!   address still stops here.
//! - in flight: at most `max_in_flight_per_address` and `max_in_flight_per_user` attempts
//!   reserved and not yet settled at once; more get 429 without counting a failure. They
//!   keep one address or one name from filling the argon2 queue.
//!
//! An [`Attempt`] that ends in [`Attempt::succeeded`] clears its pair's count and gives
//! its reservation back to the address (one good password from an address does not excuse
//! the other guesses made from it). Every other end — a wrong password, an unknown name,
//! a request dropped while argon2 runs — leaves the failure counted: the count is in the
//! table before argon2 starts and no `Drop` can take it away.
//!
//! So, for one (address, name), at most `max_failures` argon2 runs per window whatever the
//! concurrency and cancellation. The tables are bounded by `max_tracked` each: under a
//! flood of distinct keys the oldest windows are dropped first.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The limits (from `auth.throttle` in the config).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_failures: u32,
    pub max_failures_per_address: u32,
    pub window: Duration,
    pub max_tracked: usize,
    pub max_in_flight_per_address: u32,
    pub max_in_flight_per_user: u32,
}

/// Why an attempt may not run argon2 now. Either way: 429 with Retry-After.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The pair or the address reached its failure limit; retry after this long.
    Throttled(Duration),
    /// Too many attempts of this address or name are being verified at once.
    Busy,
}

impl Refusal {
    pub fn retry_after(self) -> Duration {
        match self {
            Refusal::Throttled(d) => d,
            Refusal::Busy => Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    failures: u32,
}

#[derive(Debug)]
struct Table<K> {
    map: HashMap<K, Window>,
}

impl<K: Hash + Eq + Clone> Table<K> {
    fn new() -> Self {
        Table {
            map: HashMap::new(),
        }
    }

    /// When `k`'s window ends, if `k` is at `max` failures in it.
    fn blocked_until(&self, k: &K, max: u32, window: Duration, now: Instant) -> Option<Instant> {
        let w = self.map.get(k)?;
        let end = w.start + window;
        (now < end && w.failures >= max).then_some(end)
    }

    /// Counts one failure of `k`; returns the start of the window it was counted in.
    fn fail(&mut self, k: K, window: Duration, cap: usize, now: Instant) -> Instant {
        if self.map.len() >= cap && !self.map.contains_key(&k) {
            self.map.retain(|_, w| now < w.start + window);
            if self.map.len() >= cap {
                // Evict the oldest windows: they are the closest to expiring anyway.
                let mut starts: Vec<(Instant, K)> =
                    self.map.iter().map(|(k, w)| (w.start, k.clone())).collect();
                starts.sort_by_key(|(s, _)| *s);
                for (_, k) in starts.into_iter().take(cap / 10 + 1) {
                    self.map.remove(&k);
                }
            }
        }
        let w = self.map.entry(k).or_insert(Window {
            start: now,
            failures: 0,
        });
        if now >= w.start + window {
            *w = Window {
                start: now,
                failures: 0,
            };
        }
        w.failures = w.failures.saturating_add(1);
        w.start
    }

    /// Takes back one failure of `k` counted in the window that started at `start`.
    fn give_back(&mut self, k: &K, start: Instant) {
        if let Some(w) = self.map.get_mut(k) {
            if w.start == start {
                w.failures = w.failures.saturating_sub(1);
            }
        }
    }
}

/// Attempts being verified, per key; a key leaves the map at zero.
#[derive(Debug)]
struct Gauge<K> {
    map: HashMap<K, u32>,
}

impl<K: Hash + Eq> Gauge<K> {
    fn new() -> Self {
        Gauge {
            map: HashMap::new(),
        }
    }
    fn get(&self, k: &K) -> u32 {
        self.map.get(k).copied().unwrap_or(0)
    }
    fn up(&mut self, k: K) {
        *self.map.entry(k).or_insert(0) += 1;
    }
    fn down(&mut self, k: &K) {
        if let Some(n) = self.map.get_mut(k) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.map.remove(k);
            }
        }
    }
}

/// Address key: IPv4 as is, IPv6 by its /64 (one host usually holds a whole /64).
fn addr_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

#[derive(Debug)]
struct State {
    pairs: Table<(IpAddr, String)>,
    addrs: Table<IpAddr>,
    addrs_in_flight: Gauge<IpAddr>,
    users_in_flight: Gauge<String>,
}

#[derive(Debug)]
pub struct Throttle {
    limits: Limits,
    /// One lock for every table: a reservation checks and counts in one step, so no two
    /// parallel attempts can both see the last free slot.
    state: Mutex<State>,
}

impl Throttle {
    pub fn new(limits: Limits) -> Self {
        let limits = Limits {
            max_failures: limits.max_failures.max(1),
            max_failures_per_address: limits.max_failures_per_address.max(1),
            max_tracked: limits.max_tracked.max(1),
            max_in_flight_per_address: limits.max_in_flight_per_address.max(1),
            max_in_flight_per_user: limits.max_in_flight_per_user.max(1),
            ..limits
        };
        Throttle {
            limits,
            state: Mutex::new(State {
                pairs: Table::new(),
                addrs: Table::new(),
                addrs_in_flight: Gauge::new(),
                users_in_flight: Gauge::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves one attempt of `user` from `ip`, counted as a failure until
    /// [`Attempt::succeeded`] says otherwise; or why not.
    pub fn reserve(&self, ip: IpAddr, user: &str, now: Instant) -> Result<Attempt<'_>, Refusal> {
        let l = &self.limits;
        let addr = addr_key(ip);
        let pair = (addr, user.to_owned());
        let mut s = self.lock();
        let blocked = s
            .pairs
            .blocked_until(&pair, l.max_failures, l.window, now)
            .max(
                s.addrs
                    .blocked_until(&addr, l.max_failures_per_address, l.window, now),
            );
        if let Some(until) = blocked {
            return Err(Refusal::Throttled(until - now));
        }
        if s.addrs_in_flight.get(&addr) >= l.max_in_flight_per_address
            || s.users_in_flight.get(&pair.1) >= l.max_in_flight_per_user
        {
            return Err(Refusal::Busy);
        }
        let pair_window = s.pairs.fail(pair.clone(), l.window, l.max_tracked, now);
        let addr_window = s.addrs.fail(addr, l.window, l.max_tracked, now);
        s.addrs_in_flight.up(addr);
        s.users_in_flight.up(pair.1.clone());
        Ok(Attempt {
            throttle: self,
            pair,
            pair_window,
            addr_window,
        })
    }

    /// Counts a failure that needs no verification (a malformed user name): the same
    /// limits apply, nothing stays in flight.
    pub fn fail_now(&self, ip: IpAddr, user: &str, now: Instant) -> Result<(), Refusal> {
        self.reserve(ip, user, now).map(drop)
    }

    /// Keys remembered: (pairs, addresses).
    pub fn tracked(&self) -> (usize, usize) {
        let s = self.lock();
        (s.pairs.map.len(), s.addrs.map.len())
    }

    /// Attempts in flight: (addresses, names) with at least one.
    pub fn in_flight(&self) -> (usize, usize) {
        let s = self.lock();
        (s.addrs_in_flight.map.len(), s.users_in_flight.map.len())
    }
}

/// One reserved attempt: counted as a failure from the moment it exists. Dropping it
/// (after a wrong password, or with the request that was cancelled) keeps the failure
/// and frees its in-flight slots; only [`Attempt::succeeded`] takes the failure back.
#[derive(Debug)]
#[must_use = "an attempt is settled by succeeded() or by dropping it (a failure)"]
pub struct Attempt<'a> {
    throttle: &'a Throttle,
    pair: (IpAddr, String),
    pair_window: Instant,
    addr_window: Instant,
}

impl Attempt<'_> {
    /// The password was right: the pair's count is cleared, the address gets this
    /// attempt's reservation back.
    pub fn succeeded(self) {
        let mut s = self.throttle.lock();
        s.pairs.map.remove(&self.pair);
        s.addrs.give_back(&self.pair.0, self.addr_window);
    }

    /// Nothing was verified (the argon2 queue was full): the reservation is given back
    /// to the pair and the address, as if the attempt had never been made.
    pub fn withdrawn(self) {
        let mut s = self.throttle.lock();
        s.pairs.give_back(&self.pair, self.pair_window);
        s.addrs.give_back(&self.pair.0, self.addr_window);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        let mut s = self.throttle.lock();
        s.addrs_in_flight.down(&self.pair.0);
        s.users_in_flight.down(&self.pair.1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: &str = "192.0.2.1";
    const OTHER: &str = "198.51.100.9";

    fn limits(max_failures: u32, per_address: u32) -> Limits {
        Limits {
            max_failures,
            max_failures_per_address: per_address,
            window: Duration::from_secs(60),
            max_tracked: 1000,
            max_in_flight_per_address: 1000,
            max_in_flight_per_user: 1000,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_the_pair_after_the_limit_until_the_window_ends() {
        let t = Throttle::new(limits(3, 100));
        let t0 = Instant::now();
        for _ in 0..3 {
            drop(t.reserve(ip(IP), "alice", t0).unwrap());
        }
        let retry = t.reserve(ip(IP), "alice", t0 + Duration::from_secs(10));
        assert_eq!(
            retry.unwrap_err(),
            Refusal::Throttled(Duration::from_secs(50))
        );
        // Neither another name from the address nor the name from elsewhere is blocked.
        assert!(t.reserve(ip(IP), "bob", t0).is_ok());
        assert!(t.reserve(ip(OTHER), "alice", t0).is_ok());
        assert!(t
            .reserve(ip(IP), "alice", t0 + Duration::from_secs(60))
            .is_ok());
    }

    #[test]
    fn a_reservation_counts_before_it_is_settled_so_parallel_attempts_cannot_overrun() {
        let t = Throttle::new(limits(3, 100));
        let now = Instant::now();
        // Forty attempts at once, none settled yet: three get through.
        let held: Vec<_> = (0..40).map(|_| t.reserve(ip(IP), "alice", now)).collect();
        assert_eq!(held.iter().filter(|r| r.is_ok()).count(), 3);
        assert!(held
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| matches!(e, Refusal::Throttled(_))));
    }

    #[test]
    fn a_dropped_attempt_stays_a_failure() {
        // What a cancelled request does: the attempt is dropped, never settled.
        let t = Throttle::new(limits(2, 100));
        let now = Instant::now();
        for _ in 0..2 {
            let a = t.reserve(ip(IP), "alice", now).unwrap();
            drop(a);
        }
        assert!(t.reserve(ip(IP), "alice", now).is_err());
        assert_eq!(t.in_flight(), (0, 0), "in-flight slots leaked");
    }

    #[test]
    fn success_clears_the_pair_and_gives_back_only_its_own_reservation() {
        let t = Throttle::new(limits(3, 4));
        let now = Instant::now();
        drop(t.reserve(ip(IP), "alice", now).unwrap());
        drop(t.reserve(ip(IP), "alice", now).unwrap());
        t.reserve(ip(IP), "alice", now).unwrap().succeeded();
        // The pair starts afresh: three more attempts.
        drop(t.reserve(ip(IP), "alice", now).unwrap());
        // The address holds the two earlier failures plus this one: one left of four.
        drop(t.reserve(ip(IP), "carol", now).unwrap());
        assert!(matches!(
            t.reserve(ip(IP), "dave", now),
            Err(Refusal::Throttled(_))
        ));
    }

    #[test]
    fn a_name_alone_never_blocks_its_owner() {
        let t = Throttle::new(limits(3, 30));
        let now = Instant::now();
        // Wrong passwords for alice from 50 addresses, 3 each.
        for i in 0..50u8 {
            let a = IpAddr::from([203, 0, 113, i]);
            for _ in 0..3 {
                drop(t.reserve(a, "alice", now).unwrap());
            }
        }
        t.reserve(ip(OTHER), "alice", now).unwrap().succeeded();
    }

    #[test]
    fn one_failing_client_does_not_lock_out_others_behind_its_address() {
        let t = Throttle::new(limits(10, 100));
        let now = Instant::now();
        for _ in 0..12 {
            let _ = t.reserve(ip(IP), "ci-bot", now);
        }
        assert!(t.reserve(ip(IP), "ci-bot", now).is_err());
        t.reserve(ip(IP), "alice", now).unwrap().succeeded();
    }

    #[test]
    fn many_names_from_one_address_stop_at_the_address_limit() {
        let t = Throttle::new(limits(3, 20));
        let now = Instant::now();
        let passed = (0..100)
            .filter(|i| t.reserve(ip(IP), &format!("user{i}"), now).is_ok())
            .count();
        assert_eq!(passed, 20);
        assert!(t.reserve(ip(OTHER), "user0", now).is_ok());
    }

    #[test]
    fn in_flight_caps_refuse_without_counting_a_failure() {
        let t = Throttle::new(Limits {
            max_in_flight_per_address: 2,
            max_in_flight_per_user: 3,
            ..limits(100, 1000)
        });
        let now = Instant::now();
        let a1 = t.reserve(ip(IP), "alice", now).unwrap();
        let a2 = t.reserve(ip(IP), "bob", now).unwrap();
        assert_eq!(t.reserve(ip(IP), "carol", now).unwrap_err(), Refusal::Busy);
        let b1 = t.reserve(ip("192.0.2.2"), "alice", now).unwrap();
        let b2 = t.reserve(ip("192.0.2.3"), "alice", now).unwrap();
        assert_eq!(
            t.reserve(ip("192.0.2.4"), "alice", now).unwrap_err(),
            Refusal::Busy
        );
        drop((a1, a2, b1, b2));
        assert_eq!(t.in_flight(), (0, 0));
        // The refusals counted nothing: the address has exactly its two failures.
        let s = t.lock();
        assert_eq!(s.addrs.map[&ip(IP)].failures, 2);
        assert!(!s.addrs.map.contains_key(&ip("192.0.2.4")));
    }

    #[test]
    fn withdrawn_attempts_count_nothing() {
        let t = Throttle::new(limits(1, 1));
        let now = Instant::now();
        t.reserve(ip(IP), "alice", now).unwrap().withdrawn();
        t.reserve(ip(IP), "alice", now).unwrap().withdrawn();
        assert!(t.reserve(ip(IP), "alice", now).is_ok());
    }

    #[test]
    fn ipv6_is_keyed_by_prefix() {
        let t = Throttle::new(limits(1, 1));
        let now = Instant::now();
        drop(t.reserve(ip("2001:db8:1:2::1"), "x", now).unwrap());
        assert!(t.reserve(ip("2001:db8:1:2:ffff::9"), "x", now).is_err());
        assert!(t.reserve(ip("2001:db8:1:2:ffff::9"), "y", now).is_err());
        assert!(t.reserve(ip("2001:db8:1:3::1"), "x", now).is_ok());
    }

    #[test]
    fn memory_stays_bounded_under_a_flood() {
        let t = Throttle::new(Limits {
            max_tracked: 100,
            ..limits(5, 5)
        });
        let now = Instant::now();
        for i in 0..10_000u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            let _ = t.reserve(ip, &format!("user{i}"), now);
            let (p, a) = t.tracked();
            assert!(p <= 100 && a <= 100, "{p} {a}");
        }
        assert_eq!(t.in_flight(), (0, 0));
    }
}
