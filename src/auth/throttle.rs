//! Brute-force throttling: after `max_failures` failed logins within `window`, per client
//! address (IPv6 by /64) and per user name, further attempts get 429 with Retry-After
//! without running argon2. A success clears the user's count. Both tables are bounded:
//! under a flood of distinct addresses or names the oldest windows are dropped first.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
    fn blocked_until(&self, k: &K, max: u32, window: Duration, now: Instant) -> Option<Instant> {
        let w = self.map.get(k)?;
        let end = w.start + window;
        (now < end && w.failures >= max).then_some(end)
    }

    fn fail(&mut self, k: K, window: Duration, cap: usize, now: Instant) {
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
pub struct Throttle {
    max_failures: u32,
    window: Duration,
    max_tracked: usize,
    by_addr: Mutex<Table<IpAddr>>,
    by_user: Mutex<Table<String>>,
}

impl Throttle {
    pub fn new(max_failures: u32, window: Duration, max_tracked: usize) -> Self {
        Throttle {
            max_failures: max_failures.max(1),
            window,
            max_tracked: max_tracked.max(1),
            by_addr: Mutex::new(Table {
                map: HashMap::new(),
            }),
            by_user: Mutex::new(Table {
                map: HashMap::new(),
            }),
        }
    }

    /// `Some(retry_after)` when this address or this user name is throttled.
    pub fn check(&self, ip: IpAddr, user: &str, now: Instant) -> Option<Duration> {
        let a =
            lock(&self.by_addr).blocked_until(&addr_key(ip), self.max_failures, self.window, now);
        let u = lock(&self.by_user).blocked_until(
            &user.to_owned(),
            self.max_failures,
            self.window,
            now,
        );
        a.max(u).map(|until| until - now)
    }

    pub fn fail(&self, ip: IpAddr, user: &str, now: Instant) {
        lock(&self.by_addr).fail(addr_key(ip), self.window, self.max_tracked, now);
        lock(&self.by_user).fail(user.to_owned(), self.window, self.max_tracked, now);
    }

    /// A good login clears the user's count (not the address's: one good password from
    /// an address does not excuse the guesses made from it).
    pub fn succeed(&self, user: &str) {
        lock(&self.by_user).map.remove(user);
    }

    pub fn tracked(&self) -> (usize, usize) {
        (lock(&self.by_addr).map.len(), lock(&self.by_user).map.len())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: &str = "192.0.2.1";

    #[test]
    fn blocks_after_the_limit_until_the_window_ends() {
        let t = Throttle::new(3, Duration::from_secs(60), 1000);
        let ip: IpAddr = IP.parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(t.check(ip, "alice", t0), None);
            t.fail(ip, "alice", t0);
        }
        let retry = t.check(ip, "alice", t0 + Duration::from_secs(10)).unwrap();
        assert_eq!(retry, Duration::from_secs(50));
        // another name from the same address is blocked too, and the name from elsewhere
        assert!(t.check(ip, "bob", t0).is_some());
        assert!(t
            .check("198.51.100.9".parse().unwrap(), "alice", t0)
            .is_some());
        assert_eq!(t.check(ip, "alice", t0 + Duration::from_secs(60)), None);
    }

    #[test]
    fn success_clears_the_user_not_the_address() {
        let t = Throttle::new(2, Duration::from_secs(60), 1000);
        let ip: IpAddr = IP.parse().unwrap();
        let other: IpAddr = "198.51.100.9".parse().unwrap();
        let now = Instant::now();
        t.fail(ip, "alice", now);
        t.fail(ip, "alice", now);
        t.succeed("alice");
        assert_eq!(t.check(other, "alice", now), None);
        assert!(t.check(ip, "carol", now).is_some());
    }

    #[test]
    fn ipv6_is_keyed_by_prefix() {
        let t = Throttle::new(1, Duration::from_secs(60), 1000);
        let now = Instant::now();
        t.fail("2001:db8:1:2::1".parse().unwrap(), "x", now);
        assert!(t
            .check("2001:db8:1:2:ffff::9".parse().unwrap(), "y", now)
            .is_some());
        assert!(t
            .check("2001:db8:1:3::1".parse().unwrap(), "y", now)
            .is_none());
    }

    #[test]
    fn memory_stays_bounded_under_a_flood() {
        let t = Throttle::new(5, Duration::from_secs(60), 100);
        let now = Instant::now();
        for i in 0..10_000u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            t.fail(ip, &format!("user{i}"), now);
            let (a, u) = t.tracked();
            assert!(a <= 100 && u <= 100, "{a} {u}");
        }
    }
}
