//! Brute-force throttling. A login attempt that would run argon2 first takes an
//! [`Attempt`] from [`Throttle::reserve`]; the reservation counts as a failure at once, so
//! parallel and cancelled attempts count like any other:
//!
//! - per (client address, user name): at most `max_failures` attempts within `window`,
//!   then 429 with Retry-After. This is the limit that protects one account from one
//!   place, and the only one a user name takes part in: a name alone never blocks its
//!   owner, who logs in from another address (or from the same shared address, see next).
//! - per client address (IPv6 by /64): at most `max_failures_per_address` attempts, across
//!   every name, within `window`: a guesser spraying many names from one address stops
//!   here. A pair that logged in from that address within [`KNOWN_GOOD_FOR`] ("known
//!   good") is exempt, so one bad client behind an office NAT, a CI farm or a load
//!   balancer never locks out the users who work there. Only a right password makes a
//!   pair known good, so the exemption gives a guesser nothing; a pair still counts its
//!   own failures. Trade-off: a name that has not logged in from an address lately (a new
//!   user, or one back after a day) waits for the window when that address is over its
//!   limit: letting unknown pairs through would let a sprayer through too.
//! - in flight: at most `max_in_flight_per_address` attempts of one address and
//!   `max_in_flight_per_user` of one (address, name) reserved and not yet settled at once;
//!   more get 429 without counting a failure. Never per name alone: attempts queued for
//!   a name from elsewhere must not keep its owner out. Known-good pairs skip the
//!   address's cap (their pair's cap still holds) and are verified first (see
//!   [`Attempt::known_good`]).
//!
//! An [`Attempt`] that ends in [`Attempt::succeeded`] clears its pair's count, marks the
//! pair known good and gives its reservation back to the address (one good password from
//! an address does not excuse the other guesses made from it). Every other end — a wrong
//! password, an unknown name, a request dropped while argon2 runs — leaves the failure
//! counted: the count is in the table before argon2 starts and no `Drop` can take it away.
//!
//! So, for one (address, name), at most `max_failures` argon2 runs per window whatever the
//! concurrency and cancellation. Memory: each table (pairs, addresses, known-good pairs)
//! holds at most `max_tracked` keys; the in-flight gauges hold only keys with an attempt
//! under way. A full failure table first drops ended windows, then the entries with the
//! fewest failures (oldest first), never a window that is blocking; when every entry
//! blocks, a new key is refused until one ends (fail closed). Failures counted without
//! argon2 ([`Throttle::fail_now`]) never evict anything: requests that cost nothing must
//! not be able to flush the state that protects argon2. The known-good table drops its
//! oldest entries; only right passwords add to it.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a pair (address, name) stays known good after its last right password.
pub const KNOWN_GOOD_FOR: Duration = Duration::from_secs(24 * 60 * 60);

/// The limits (from `auth.throttle` in the config).
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_failures: u32,
    pub max_failures_per_address: u32,
    pub window: Duration,
    pub max_tracked: usize,
    pub max_in_flight_per_address: u32,
    /// Per (address, user name), despite the name (it is the config key's).
    pub max_in_flight_per_user: u32,
}

/// Why an attempt may not run argon2 now. Either way: 429 with Retry-After.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The pair or the address reached its failure limit, or the table is full of
    /// blocking windows; retry after this long.
    Throttled(Duration),
    /// Too many attempts of this address or pair are being verified at once.
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

/// Failure windows per key, for one limit (`max` failures per `window`).
#[derive(Debug)]
struct Table<K> {
    map: HashMap<K, Window>,
    max: u32,
}

impl<K: Hash + Eq + Clone> Table<K> {
    fn new(max: u32) -> Self {
        Table {
            map: HashMap::new(),
            max,
        }
    }

    /// When `k`'s window ends, if `k` is at `max` failures in it.
    fn blocked_until(&self, k: &K, window: Duration, now: Instant) -> Option<Instant> {
        let w = self.map.get(k)?;
        let end = w.start + window;
        (now < end && w.failures >= self.max).then_some(end)
    }

    /// Makes room for one more key, or says when the first blocking window ends. Ended
    /// windows go first; then, if `evict`, the entries with the fewest failures, oldest
    /// first, but never one that is blocking: those are what stops a guesser, and a
    /// flood of new keys must not wash them out.
    fn make_room(
        &mut self,
        window: Duration,
        cap: usize,
        now: Instant,
        evict: bool,
    ) -> Result<(), Instant> {
        if self.map.len() < cap {
            return Ok(());
        }
        self.map.retain(|_, w| now < w.start + window);
        if self.map.len() < cap {
            return Ok(());
        }
        let max = self.max;
        let mut open: Vec<(u32, Instant, K)> = self
            .map
            .iter()
            .filter(|(_, w)| w.failures < max)
            .map(|(k, w)| (w.failures, w.start, k.clone()))
            .collect();
        if !evict || open.is_empty() {
            // Full of blocking windows (or a cheap failure that may not evict): the
            // earliest end is when a key can come in.
            let first_end = self.map.values().map(|w| w.start + window).min();
            return Err(first_end.unwrap_or(now));
        }
        // A tenth at once, so a full table is sorted once per cap/10 new keys, not per key.
        open.sort_by_key(|(failures, start, _)| (*failures, *start));
        for (_, _, k) in open.into_iter().take(cap / 10 + 1) {
            self.map.remove(&k);
        }
        Ok(())
    }

    /// Counts one failure of `k` (which is not blocked); returns the start of the window
    /// it was counted in, or when to retry if there is no room for `k`.
    fn fail(
        &mut self,
        k: K,
        window: Duration,
        cap: usize,
        now: Instant,
        evict: bool,
    ) -> Result<Instant, Instant> {
        if !self.map.contains_key(&k) {
            self.make_room(window, cap, now, evict)?;
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
        Ok(w.start)
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

/// Pairs with a right password lately: when, last.
#[derive(Debug)]
struct KnownGood {
    map: HashMap<(IpAddr, String), Instant>,
}

impl KnownGood {
    fn contains(&self, pair: &(IpAddr, String), now: Instant) -> bool {
        self.map
            .get(pair)
            .is_some_and(|&at| now < at + KNOWN_GOOD_FOR)
    }

    fn insert(&mut self, pair: (IpAddr, String), cap: usize, now: Instant) {
        if self.map.len() >= cap && !self.map.contains_key(&pair) {
            self.map.retain(|_, &mut at| now < at + KNOWN_GOOD_FOR);
            if self.map.len() >= cap {
                // Only right passwords get here, so no stranger can push anyone out;
                // the pairs seen longest ago go.
                let mut ats: Vec<(Instant, (IpAddr, String))> =
                    self.map.iter().map(|(k, at)| (*at, k.clone())).collect();
                ats.sort_by_key(|(at, _)| *at);
                for (_, k) in ats.into_iter().take(cap / 10 + 1) {
                    self.map.remove(&k);
                }
            }
        }
        self.map.insert(pair, now);
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
pub(crate) fn addr_key(ip: IpAddr) -> IpAddr {
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
    known_good: KnownGood,
    addrs_in_flight: Gauge<IpAddr>,
    pairs_in_flight: Gauge<(IpAddr, String)>,
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
            state: Mutex::new(State {
                pairs: Table::new(limits.max_failures),
                addrs: Table::new(limits.max_failures_per_address),
                known_good: KnownGood {
                    map: HashMap::new(),
                },
                addrs_in_flight: Gauge::new(),
                pairs_in_flight: Gauge::new(),
            }),
            limits,
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
        let known_good = self.check(&s, &pair, now)?;
        if s.pairs_in_flight.get(&pair) >= l.max_in_flight_per_user
            || (!known_good && s.addrs_in_flight.get(&addr) >= l.max_in_flight_per_address)
        {
            return Err(Refusal::Busy);
        }
        let full = |until: Instant| Refusal::Throttled(until.saturating_duration_since(now));
        let pair_window = s
            .pairs
            .fail(pair.clone(), l.window, l.max_tracked, now, true)
            .map_err(full)?;
        let addr_window = match s.addrs.fail(addr, l.window, l.max_tracked, now, true) {
            Ok(start) => Some(start),
            // A known-good pair is not held by its address's limit, so neither by the
            // address table having no room; its own pair was counted.
            Err(_) if known_good => None,
            Err(until) => {
                s.pairs.give_back(&pair, pair_window);
                return Err(full(until));
            }
        };
        s.addrs_in_flight.up(addr);
        s.pairs_in_flight.up(pair.clone());
        Ok(Attempt {
            throttle: self,
            pair,
            pair_window,
            addr_window,
            known_good,
            reserved_at: now,
        })
    }

    /// Counts a failure that needs no verification (a malformed user name): the same
    /// limits apply and nothing stays in flight. It never evicts: when a table is full,
    /// it is not remembered there (it ran nothing to protect).
    pub fn fail_now(&self, ip: IpAddr, user: &str, now: Instant) -> Result<(), Refusal> {
        let l = &self.limits;
        let addr = addr_key(ip);
        let pair = (addr, user.to_owned());
        let mut s = self.lock();
        self.check(&s, &pair, now)?;
        let _ = s.pairs.fail(pair, l.window, l.max_tracked, now, false);
        let _ = s.addrs.fail(addr, l.window, l.max_tracked, now, false);
        Ok(())
    }

    /// Whether `pair` may try now: not if it or (unless it is known good) its address is
    /// at its failure limit. Ok says whether it is known good.
    fn check(&self, s: &State, pair: &(IpAddr, String), now: Instant) -> Result<bool, Refusal> {
        let window = self.limits.window;
        let known_good = s.known_good.contains(pair, now);
        let mut blocked = s.pairs.blocked_until(pair, window, now);
        if !known_good {
            blocked = blocked.max(s.addrs.blocked_until(&pair.0, window, now));
        }
        match blocked {
            Some(until) => Err(Refusal::Throttled(until - now)),
            None => Ok(known_good),
        }
    }

    /// Keys remembered: (pairs, addresses).
    pub fn tracked(&self) -> (usize, usize) {
        let s = self.lock();
        (s.pairs.map.len(), s.addrs.map.len())
    }

    /// Entries of the bounded tables: (failure windows per pair, per address, pairs
    /// known good), for the metrics.
    pub fn table_sizes(&self) -> (usize, usize, usize) {
        let s = self.lock();
        (s.pairs.map.len(), s.addrs.map.len(), s.known_good.map.len())
    }

    /// Attempts in flight: (addresses, pairs) with at least one.
    pub fn in_flight(&self) -> (usize, usize) {
        let s = self.lock();
        (s.addrs_in_flight.map.len(), s.pairs_in_flight.map.len())
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
    addr_window: Option<Instant>,
    known_good: bool,
    /// When it was reserved: what a success records as the pair's last good login
    /// (argon2 takes well under a second; the table counts in hours).
    reserved_at: Instant,
}

impl Attempt<'_> {
    /// Whether this pair logged in from this address lately: its verification may go
    /// ahead of the others (a flood of strangers' guesses must not starve it).
    pub fn known_good(&self) -> bool {
        self.known_good
    }

    /// The client address as the throttle counts it (IPv6 by /64).
    pub fn address(&self) -> IpAddr {
        self.pair.0
    }

    /// The password was right: the pair's count is cleared and the pair is known good;
    /// the address gets this attempt's reservation back.
    pub fn succeeded(self) {
        let cap = self.throttle.limits.max_tracked;
        let mut s = self.throttle.lock();
        s.pairs.map.remove(&self.pair);
        if let Some(start) = self.addr_window {
            s.addrs.give_back(&self.pair.0, start);
        }
        s.known_good
            .insert(self.pair.clone(), cap, self.reserved_at);
    }

    /// Nothing was verified (the argon2 queue was full): the reservation is given back
    /// to the pair and the address, as if the attempt had never been made.
    pub fn withdrawn(self) {
        let mut s = self.throttle.lock();
        s.pairs.give_back(&self.pair, self.pair_window);
        if let Some(start) = self.addr_window {
            s.addrs.give_back(&self.pair.0, start);
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        let mut s = self.throttle.lock();
        s.addrs_in_flight.down(&self.pair.0);
        s.pairs_in_flight.down(&self.pair);
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
    fn in_flight_caps_are_per_address_and_per_pair_and_refuse_without_counting_a_failure() {
        let t = Throttle::new(Limits {
            max_in_flight_per_address: 3,
            max_in_flight_per_user: 2,
            ..limits(100, 1000)
        });
        let now = Instant::now();
        let a1 = t.reserve(ip(IP), "alice", now).unwrap();
        let a2 = t.reserve(ip(IP), "alice", now).unwrap();
        assert_eq!(t.reserve(ip(IP), "alice", now).unwrap_err(), Refusal::Busy);
        let a3 = t.reserve(ip(IP), "bob", now).unwrap();
        assert_eq!(t.reserve(ip(IP), "carol", now).unwrap_err(), Refusal::Busy);
        drop((a1, a2, a3));
        assert_eq!(t.in_flight(), (0, 0));
        // The refusals counted nothing: the address has exactly its three failures.
        let s = t.lock();
        assert_eq!(s.addrs.map[&ip(IP)].failures, 3);
        assert!(!s.pairs.map.contains_key(&(ip(IP), "carol".to_owned())));
    }

    #[test]
    fn attempts_in_flight_for_a_name_from_elsewhere_never_keep_its_owner_out() {
        // Regression (outside review): four different wrong passwords for alice from two addresses,
        // queued behind a flood, made alice's right password from a third address 429
        // ("too many attempts in flight"): the cap counted the name alone.
        let t = Throttle::new(Limits {
            max_in_flight_per_user: 4,
            ..limits(100, 1000)
        });
        let now = Instant::now();
        let held: Vec<_> = ["192.0.2.1", "192.0.2.2"]
            .iter()
            .flat_map(|a| {
                [
                    t.reserve(ip(a), "alice", now),
                    t.reserve(ip(a), "alice", now),
                ]
            })
            .map(Result::unwrap)
            .collect();
        t.reserve(ip(OTHER), "alice", now)
            .expect("alice from her own address")
            .succeeded();
        drop(held);
    }

    #[test]
    fn a_pair_known_good_at_an_address_is_not_held_by_that_addresses_limit() {
        // Regression (outside review): 110 made-up names from 127.0.0.1 spent the address, and then
        // alice's and bob's right passwords from there got 429.
        let t = Throttle::new(limits(3, 20));
        let t0 = Instant::now();
        t.reserve(ip(IP), "alice", t0).unwrap().succeeded();
        let t1 = t0 + Duration::from_secs(3600);
        for i in 0..30 {
            let _ = t.reserve(ip(IP), &format!("junk{i}"), t1);
        }
        assert!(matches!(
            t.reserve(ip(IP), "junk99", t1),
            Err(Refusal::Throttled(_))
        ));
        // alice logged in from here an hour ago: the sprayer does not hold her back, and
        // she skips the address's in-flight cap too.
        let a = t.reserve(ip(IP), "alice", t1).unwrap();
        assert!(a.known_good());
        a.succeeded();
        // Her own pair still counts: a guesser behind the same NAT gets max_failures.
        for _ in 0..3 {
            drop(t.reserve(ip(IP), "alice", t1).unwrap());
        }
        assert!(matches!(
            t.reserve(ip(IP), "alice", t1),
            Err(Refusal::Throttled(_))
        ));
        // The trade-off: a name that never logged in from here waits for the window.
        assert!(matches!(
            t.reserve(ip(IP), "carol", t1),
            Err(Refusal::Throttled(_))
        ));
        assert!(!t.reserve(ip(OTHER), "carol", t1).unwrap().known_good());
        // Known good lasts KNOWN_GOOD_FOR after the last success (at t1).
        let t2 = t1 + KNOWN_GOOD_FOR + Duration::from_secs(1);
        for i in 0..20 {
            drop(t.reserve(ip(IP), &format!("junk{i}"), t2).unwrap());
        }
        assert!(matches!(
            t.reserve(ip(IP), "alice", t2),
            Err(Refusal::Throttled(_))
        ));
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
    fn free_failures_from_many_addresses_never_flush_a_blocking_window() {
        // Regression (outside review): with max_tracked 300, a user name with a control character
        // from 330 addresses (401, no argon2) pushed the blocked pair out of the table,
        // and the guesser got max_failures more argon2 runs in the same window.
        let t = Throttle::new(Limits {
            max_tracked: 300,
            ..limits(3, 100)
        });
        let now = Instant::now();
        for _ in 0..3 {
            drop(t.reserve(ip(IP), "alice", now).unwrap());
        }
        for i in 0..330u32 {
            let a = IpAddr::from((0x0a00_0000 + i).to_be_bytes());
            t.fail_now(a, "", now + Duration::from_millis(u64::from(i) + 1))
                .unwrap();
        }
        assert!(matches!(
            t.reserve(ip(IP), "alice", now + Duration::from_secs(1)),
            Err(Refusal::Throttled(_))
        ));
        let (p, a) = t.tracked();
        assert!(p <= 300 && a <= 300, "{p} {a}");
    }

    #[test]
    fn a_flood_of_new_keys_evicts_the_fewest_failures_first_and_never_a_blocking_window() {
        let t = Throttle::new(Limits {
            max_tracked: 300,
            ..limits(3, 100)
        });
        let now = Instant::now();
        // One pair blocked, one two failures in.
        for _ in 0..3 {
            drop(t.reserve(ip(IP), "alice", now).unwrap());
        }
        for _ in 0..2 {
            drop(t.reserve(ip(OTHER), "alice", now).unwrap());
        }
        // Each of these costs argon2 and may evict, but only single-failure keys go.
        for i in 0..1000u32 {
            let a = IpAddr::from((0x0a00_0000 + i).to_be_bytes());
            let later = now + Duration::from_millis(u64::from(i) + 1);
            drop(t.reserve(a, &format!("user{i}"), later).unwrap());
            let (p, a) = t.tracked();
            assert!(p <= 300 && a <= 300, "{p} {a}");
        }
        assert!(t.reserve(ip(IP), "alice", now).is_err());
        drop(t.reserve(ip(OTHER), "alice", now).unwrap());
        assert!(t.reserve(ip(OTHER), "alice", now).is_err());
    }

    #[test]
    fn a_table_full_of_blocking_windows_refuses_new_keys_until_one_ends() {
        let t = Throttle::new(Limits {
            max_tracked: 10,
            ..limits(1, 100)
        });
        let t0 = Instant::now();
        for i in 0..10u8 {
            drop(t.reserve(IpAddr::from([10, 0, 0, i]), "x", t0).unwrap());
        }
        // Fail closed: no window is dropped to let a new key in.
        assert_eq!(
            t.reserve(ip(IP), "alice", t0 + Duration::from_secs(10))
                .unwrap_err(),
            Refusal::Throttled(Duration::from_secs(50))
        );
        assert!(t
            .reserve(ip(IP), "alice", t0 + Duration::from_secs(60))
            .is_ok());
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
