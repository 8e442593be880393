//! Access events (`audit.events`: push, pull, login) on their way to the writer.
//!
//! Unlike deletes they are never fail-closed and never make a request wait: a request
//! puts its record into a bounded in-memory queue ([`AccessQueue::offer`], a short lock,
//! no I/O, no await) and goes on; the writer takes everything queued with each batch
//! (group commit: one write and one fsync for all of it, deletes' records included).
//!
//! Invariants:
//! - The queue never holds more than its capacity (`audit.queue`): past it an event is
//!   dropped and counted by kind, in `registry_guard_audit_dropped_total{kind}` and in a
//!   count the writer turns into a `dropped_summary` record with its next batch. Events
//!   of a batch that fails to write are counted the same way. A count is forgotten only
//!   once the summary holding it is on disk.
//! - Deletes never come through here (their records are handed to the writer and
//!   awaited: see `writer`), so they are never dropped.
//! - [`Logins`] decides which credential checks are events: every failure, and the first
//!   success per user and client address within `audit.login_window` — not every request
//!   that a cached verification lets through.
//! - Failed logins, the one kind anybody can cause without an account, have a budget
//!   across all addresses (`audit.max_failed_logins_per_minute`, a token bucket): the
//!   login throttle bounds them per address only, and addresses are cheap (IPv6). Past
//!   the budget they are counted, not queued, and a `dropped_summary` of kind `login`
//!   says how many, so a flood from many addresses cannot fill the audit disk.
//! - Every queued record is bounded ([`bound`]): the fields a client chooses are cut to
//!   a few hundred bytes each, so no access record is more than a few KiB.

use super::record::{Event, Kind, Outcome, Phase, Record, Target};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The kinds that go through the queue, in the order of [`AccessQueue::dropped`].
const KINDS: [Kind; 3] = [Kind::Push, Kind::Pull, Kind::Login];
/// The slot of [`AccessQueue::dropped`] counting failed logins over the budget.
const OVER_BUDGET: usize = KINDS.len();

fn slot(kind: Kind) -> usize {
    KINDS.iter().position(|k| *k == kind).unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The bounded queue between requests and the writer.
#[derive(Debug)]
pub struct AccessQueue {
    capacity: usize,
    queue: Mutex<VecDeque<Record>>,
    /// Per kind: events dropped (queue full, or their batch failed) and not yet in a
    /// summary on disk; then ([`OVER_BUDGET`]) failed logins over the budget.
    dropped: [AtomicU64; 4],
    /// `audit.max_failed_logins_per_minute`, and its bucket.
    failed_logins_per_minute: u32,
    failed_logins: Mutex<Option<PerMinute>>,
}

/// A token bucket of `per_minute` tokens, refilled evenly over a minute: at most
/// `per_minute` takes in a burst, then one every `60 / per_minute` s. Pure: the caller
/// says what time it is.
#[derive(Debug, Clone)]
pub(super) struct PerMinute {
    tokens: f64,
    at: Instant,
}

impl PerMinute {
    /// A full bucket at `now`.
    pub(super) fn full(per_minute: u32, now: Instant) -> Self {
        PerMinute {
            tokens: f64::from(per_minute),
            at: now,
        }
    }

    fn refill(&mut self, per_minute: u32, now: Instant) {
        let cap = f64::from(per_minute);
        let gained = now.saturating_duration_since(self.at).as_secs_f64() * cap / 60.0;
        self.tokens = (self.tokens + gained).min(cap);
        self.at = now;
    }

    /// Takes a token if there is one at `now`.
    pub(super) fn take(&mut self, per_minute: u32, now: Instant) -> bool {
        self.refill(per_minute, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket is full again at `now` (it can be forgotten).
    pub(super) fn is_full(&mut self, per_minute: u32, now: Instant) -> bool {
        self.refill(per_minute, now);
        self.was_full(per_minute)
    }

    /// Whether the bucket was full when last refilled.
    pub(super) fn was_full(&self, per_minute: u32) -> bool {
        self.tokens >= f64::from(per_minute)
    }
}

/// The `dropped_summary` records of [`AccessQueue::summaries`] and the counts they hold.
#[derive(Debug)]
pub struct Summaries {
    pub events: Vec<Event>,
    counts: [u64; 4],
}

/// What became of an offered event.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    /// Queued; the queue was empty before: the writer must be woken.
    QueuedFirst,
    Queued,
    /// The queue was full, or a failed login was over the budget: counted as dropped.
    Dropped,
}

impl AccessQueue {
    /// A queue of `capacity` records, writing at most `failed_logins_per_minute` failed
    /// logins a minute (a burst of as many).
    pub fn new(capacity: usize, failed_logins_per_minute: u32) -> Self {
        AccessQueue {
            capacity,
            queue: Mutex::new(VecDeque::new()),
            dropped: Default::default(),
            failed_logins_per_minute,
            failed_logins: Mutex::new(None),
        }
    }

    /// Queues an access record (bounded: [`bound`]), unless the queue is full or it is a
    /// failed login over the budget at `now` (then it is counted as dropped).
    pub fn offer(&self, mut record: Record, now: Instant) -> Offer {
        let kind = record.target.kind();
        if record.target == Target::Login && record.outcome == Some(Outcome::Failed) {
            let per_minute = self.failed_logins_per_minute;
            let mut bucket = lock(&self.failed_logins);
            let bucket = bucket.get_or_insert_with(|| PerMinute::full(per_minute, now));
            if !bucket.take(per_minute, now) {
                self.dropped[OVER_BUDGET].fetch_add(1, Ordering::Relaxed);
                return Offer::Dropped;
            }
        }
        bound(&mut record);
        let mut q = lock(&self.queue);
        if q.len() >= self.capacity {
            drop(q);
            self.dropped[slot(kind)].fetch_add(1, Ordering::Relaxed);
            return Offer::Dropped;
        }
        let first = q.is_empty();
        q.push_back(record);
        if first {
            Offer::QueuedFirst
        } else {
            Offer::Queued
        }
    }

    /// Everything queued, oldest first.
    pub fn take(&self) -> Vec<Record> {
        lock(&self.queue).drain(..).collect()
    }

    /// Events (their kinds) that were taken but not written (their batch failed):
    /// counted as dropped.
    pub fn lost(&self, kinds: &[Kind]) {
        for k in kinds {
            self.dropped[slot(*k)].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One `dropped_summary` per kind with drops not yet summarized, and one for failed
    /// logins over the budget; the counts stay until [`AccessQueue::settle`] says the
    /// summaries are on disk.
    pub fn summaries(&self) -> Summaries {
        let counts: [u64; 4] = std::array::from_fn(|i| self.dropped[i].load(Ordering::Relaxed));
        let events = counts
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, &n)| {
                let (kind, reason) = match KINDS.get(i) {
                    Some(kind) => (*kind, format!(
                        "{n} {} events not written: the access event queue (audit.queue) was full, or their write failed",
                        kind.as_str()
                    )),
                    None => (Kind::Login, format!(
                        "{n} failed logins not written: over audit.max_failed_logins_per_minute ({}) across all addresses",
                        self.failed_logins_per_minute
                    )),
                };
                let mut e = Event::new(Phase::DroppedSummary, reason);
                e.kind = Some(kind);
                e.count = Some(n);
                e
            })
            .collect();
        Summaries { events, counts }
    }

    /// The summaries (from [`AccessQueue::summaries`]) are on disk: their counts are done.
    pub fn settle(&self, summaries: &Summaries) {
        for (d, n) in self.dropped.iter().zip(summaries.counts) {
            d.fetch_sub(n, Ordering::Relaxed);
        }
    }
}

/// The most bytes kept of a field a client chooses, in an access record: a user name,
/// the user agent, the repository, the reference (a repository name is at most 255
/// bytes, a tag 128, a digest well under this).
const MAX_FIELD: usize = 256;
/// The most bytes kept of the reason (the proxy's words, with an error's text).
const MAX_REASON: usize = 512;
/// The most bytes kept of the path (a route already holds it to 2048; a repository
/// name, 255, and a digest fit well under this).
const MAX_PATH: usize = 1024;

/// Cuts `s` to at most `max` bytes, at a character boundary, marking the cut.
fn cap(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut end = max - '…'.len_utf8();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push('…');
}

/// Bounds every field of an access record that a client's request can fill, so that no
/// record (the JSON line, escaping included) is more than a few KiB whatever was sent.
pub fn bound(r: &mut Record) {
    for f in [&mut r.user, &mut r.reference, &mut r.repo] {
        cap(f, MAX_FIELD);
    }
    cap(&mut r.reason, MAX_REASON);
    cap(&mut r.path, MAX_PATH);
    cap(&mut r.method, 16);
    for f in [
        &mut r.owner,
        &mut r.user_agent,
        &mut r.digest,
        &mut r.media_type,
    ]
    .into_iter()
    .flatten()
    {
        cap(f, MAX_FIELD);
    }
}

/// Which successful credential checks are login events: the first per (user, address)
/// within the window. Bounded: when full, expired pairs are forgotten; a pair that finds
/// no room is recorded every time (more records, never fewer).
#[derive(Debug)]
pub struct Logins {
    window: Duration,
    max: usize,
    seen: Mutex<HashMap<(String, IpAddr), Instant>>,
}

/// Pairs remembered at most.
const MAX_LOGINS: usize = 100_000;

impl Logins {
    pub fn new(window: Duration) -> Self {
        Logins::with_max(window, MAX_LOGINS)
    }

    fn with_max(window: Duration, max: usize) -> Self {
        Logins {
            window,
            max,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `user`'s successful check from `client` at `now` is a login event.
    pub fn first(&self, user: &str, client: IpAddr, now: Instant) -> bool {
        let mut seen = lock(&self.seen);
        let key = (user.to_owned(), client);
        if let Some(at) = seen.get(&key) {
            if now.saturating_duration_since(*at) < self.window {
                return false;
            }
        }
        if seen.len() >= self.max && !seen.contains_key(&key) {
            seen.retain(|_, at| now.saturating_duration_since(*at) < self.window);
            if seen.len() >= self.max {
                return true;
            }
        }
        seen.insert(key, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::{Decision, Target};
    use super::*;

    fn rec(target: Target) -> Record {
        Record {
            time: "t".into(),
            instance: None,
            phase: Phase::Access,
            request_id: "r".into(),
            user: "alice".into(),
            owner: None,
            token: None,
            client: "192.0.2.1".into(),
            user_agent: None,
            method: "GET".into(),
            path: "/v2/a/b/manifests/latest".into(),
            repo: "a/b".into(),
            target,
            reference: "latest".into(),
            digest: None,
            size: None,
            media_type: None,
            tags: None,
            tags_complete: None,
            decision: Decision::Allowed,
            reason: String::new(),
            upstream_status: Some(200),
            outcome: None,
            duration_ms: None,
            seq: 0,
            prev: String::new(),
            mac: String::new(),
        }
    }

    #[test]
    fn a_full_queue_drops_counts_and_summarizes_by_kind() {
        let q = AccessQueue::new(2, 600);
        let now = Instant::now();
        assert_eq!(q.offer(rec(Target::ManifestPull), now), Offer::QueuedFirst);
        assert_eq!(q.offer(rec(Target::ManifestPush), now), Offer::Queued);
        assert_eq!(q.offer(rec(Target::ManifestPull), now), Offer::Dropped);
        assert_eq!(q.offer(rec(Target::ManifestPull), now), Offer::Dropped);
        assert_eq!(q.offer(rec(Target::Login), now), Offer::Dropped);
        let taken = q.take();
        assert_eq!(taken.len(), 2);
        assert_eq!(q.offer(rec(Target::Login), now), Offer::QueuedFirst);
        // A batch that failed: its events count as dropped too.
        q.lost(&[taken[1].target.kind()]);
        let s = q.summaries();
        let counts: Vec<(Option<Kind>, Option<u64>)> =
            s.events.iter().map(|e| (e.kind, e.count)).collect();
        assert_eq!(
            counts,
            [
                (Some(Kind::Push), Some(1)),
                (Some(Kind::Pull), Some(2)),
                (Some(Kind::Login), Some(1))
            ]
        );
        assert!(s.events.iter().all(|e| e.phase == Phase::DroppedSummary));
        assert!(
            s.events[1].reason.starts_with("2 pull events not written"),
            "{}",
            s.events[1].reason
        );
        // Not on disk yet: the same counts again; then drops after it stay counted.
        assert_eq!(q.summaries().events.len(), 3);
        assert_eq!(q.offer(rec(Target::ManifestPull), now), Offer::Queued);
        assert_eq!(q.offer(rec(Target::ManifestPull), now), Offer::Dropped);
        q.settle(&s);
        let left: Vec<_> = q
            .summaries()
            .events
            .iter()
            .map(|e| (e.kind, e.count))
            .collect();
        assert_eq!(left, [(Some(Kind::Pull), Some(1))]);
    }

    fn failed_login(client: &str) -> Record {
        let mut r = rec(Target::Login);
        r.client = client.into();
        r.decision = Decision::Denied;
        r.outcome = Some(Outcome::Failed);
        r
    }

    /// F3: failed logins have one budget across all addresses (a token bucket per
    /// minute); over it they are counted, not queued, and summarized as failed logins
    /// over the budget, apart from the queue's drops. Successful logins and other
    /// events are not held by it.
    #[test]
    fn failed_logins_have_a_budget_across_addresses() {
        let q = AccessQueue::new(100, 3);
        let t0 = Instant::now();
        let offered: Vec<Offer> = (0..5)
            .map(|i| q.offer(failed_login(&format!("2001:db8::{i}")), t0))
            .collect();
        assert_eq!(
            offered,
            [
                Offer::QueuedFirst,
                Offer::Queued,
                Offer::Queued,
                Offer::Dropped,
                Offer::Dropped
            ]
        );
        // Not held by the budget: a successful login, a pull.
        let mut ok = rec(Target::Login);
        ok.outcome = Some(Outcome::LoggedIn);
        assert_eq!(q.offer(ok, t0), Offer::Queued);
        assert_eq!(q.offer(rec(Target::ManifestPull), t0), Offer::Queued);
        // 3 a minute: one more every 20 s.
        assert_eq!(
            q.offer(failed_login("192.0.2.9"), t0 + Duration::from_secs(19)),
            Offer::Dropped
        );
        assert_eq!(
            q.offer(failed_login("192.0.2.9"), t0 + Duration::from_secs(21)),
            Offer::Queued
        );
        assert_eq!(
            q.offer(failed_login("192.0.2.9"), t0 + Duration::from_secs(22)),
            Offer::Dropped
        );
        assert_eq!(q.take().len(), 6);
        let s = q.summaries();
        assert_eq!(s.events.len(), 1, "{:?}", s.events);
        let e = &s.events[0];
        assert_eq!(
            (e.phase, e.kind, e.count),
            (Phase::DroppedSummary, Some(Kind::Login), Some(4))
        );
        assert!(
            e.reason.starts_with(
                "4 failed logins not written: over audit.max_failed_logins_per_minute (3)"
            ),
            "{}",
            e.reason
        );
        // A queue drop of a login is summarized apart; settling one leaves the other.
        q.lost(&[Kind::Login]);
        let both = q.summaries();
        assert_eq!(both.events.len(), 2);
        q.settle(&s);
        let left: Vec<_> = q
            .summaries()
            .events
            .iter()
            .map(|e| (e.kind, e.count, e.reason.contains("audit.queue")))
            .collect();
        assert_eq!(left, [(Some(Kind::Login), Some(1), true)]);
        // After a quiet minute the whole burst is back.
        let t1 = t0 + Duration::from_secs(200);
        assert!((0..3).all(|_| q.offer(failed_login("192.0.2.9"), t1) != Offer::Dropped));
        assert_eq!(q.offer(failed_login("192.0.2.9"), t1), Offer::Dropped);
    }

    /// F3: whatever a client sends, a queued record's line stays a few KiB: every field
    /// it fills is cut (at a character boundary, marked), JSON escaping included.
    #[test]
    fn queued_records_are_bounded_whatever_the_client_sent() {
        let q = AccessQueue::new(10, 10);
        let mut r = failed_login("192.0.2.1");
        // Quotes and backslashes double when escaped; multi-byte characters cut mid-way.
        r.user = "\"\\é".repeat(10_000);
        r.user_agent = Some("\"".repeat(10_000));
        r.path = format!("/v2/{}/manifests/latest", "a/".repeat(1000));
        r.repo = "a/".repeat(1000);
        r.reference = "t".repeat(10_000);
        r.reason = "r".repeat(10_000);
        r.method = "M".repeat(1000);
        r.digest = Some("d".repeat(10_000));
        r.media_type = Some("m".repeat(10_000));
        r.owner = Some("o".repeat(10_000));
        assert_eq!(q.offer(r, Instant::now()), Offer::QueuedFirst);
        let r = q.take().remove(0);
        let chain = super::super::record::Chain::keyed(&[7; 32]);
        let entry = super::super::record::Entry::Request(r.clone());
        let (line, _) = entry.to_line(u64::MAX, &"f".repeat(64), &chain);
        // Every field at its cap, and every byte of them escaped (`"` is `\\"`).
        assert!(line.len() <= 8 << 10, "{} bytes", line.len());
        assert!(
            r.user.len() <= MAX_FIELD && r.user.ends_with('…'),
            "{}",
            r.user
        );
        assert!(r.path.len() <= MAX_PATH && r.path.starts_with("/v2/a/a/"));
        // A short field is kept as it is.
        let mut small = rec(Target::ManifestPull);
        bound(&mut small);
        assert_eq!(
            (small.user.as_str(), small.path.as_str()),
            ("alice", "/v2/a/b/manifests/latest")
        );
    }

    #[test]
    fn a_login_is_the_first_success_per_user_and_address_in_the_window() {
        let l = Logins::with_max(Duration::from_secs(60), 3);
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(l.first("alice", a, t0));
        assert!(!l.first("alice", a, t0 + Duration::from_secs(59)));
        assert!(l.first("alice", b, t0), "another address is another login");
        assert!(l.first("bob", a, t0));
        assert!(
            l.first("alice", a, t0 + Duration::from_secs(60)),
            "after the window"
        );
        // Full (3 pairs, none expired): a new pair is recorded every time.
        assert!(l.first("carol", a, t0 + Duration::from_secs(1)));
        assert!(l.first("carol", a, t0 + Duration::from_secs(2)));
        // Once pairs expire there is room again.
        assert!(l.first("carol", a, t0 + Duration::from_secs(200)));
        assert!(!l.first("carol", a, t0 + Duration::from_secs(201)));
    }
}
