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

use super::record::{Event, Kind, Phase, Record};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The kinds that go through the queue, in the order of [`AccessQueue::dropped`].
const KINDS: [Kind; 3] = [Kind::Push, Kind::Pull, Kind::Login];

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
    /// summary on disk.
    dropped: [AtomicU64; 3],
}

/// What became of an offered event.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    /// Queued; the queue was empty before: the writer must be woken.
    QueuedFirst,
    Queued,
    /// The queue was full: counted as dropped.
    Dropped,
}

impl AccessQueue {
    pub fn new(capacity: usize) -> Self {
        AccessQueue {
            capacity,
            queue: Mutex::new(VecDeque::new()),
            dropped: Default::default(),
        }
    }

    /// Queues an access record, unless the queue is full (then it is counted as dropped).
    pub fn offer(&self, record: Record) -> Offer {
        let kind = record.target.kind();
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

    /// One `dropped_summary` per kind with drops not yet summarized; the counts stay
    /// until [`AccessQueue::settle`] says the summaries are on disk.
    pub fn summaries(&self) -> Vec<Event> {
        KINDS
            .iter()
            .zip(&self.dropped)
            .filter_map(|(kind, n)| {
                let n = n.load(Ordering::Relaxed);
                (n > 0).then(|| {
                    let mut e = Event::new(
                        Phase::DroppedSummary,
                        format!(
                            "{n} {} events not written: the access event queue (audit.queue) was full, or their write failed",
                            kind.as_str()
                        ),
                    );
                    e.kind = Some(*kind);
                    e.count = Some(n);
                    e
                })
            })
            .collect()
    }

    /// The summaries (from [`AccessQueue::summaries`]) are on disk: their counts are done.
    pub fn settle(&self, summaries: &[Event]) {
        for e in summaries {
            if let (Some(kind), Some(n)) = (e.kind, e.count) {
                self.dropped[slot(kind)].fetch_sub(n, Ordering::Relaxed);
            }
        }
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
        let q = AccessQueue::new(2);
        assert_eq!(q.offer(rec(Target::ManifestPull)), Offer::QueuedFirst);
        assert_eq!(q.offer(rec(Target::ManifestPush)), Offer::Queued);
        assert_eq!(q.offer(rec(Target::ManifestPull)), Offer::Dropped);
        assert_eq!(q.offer(rec(Target::ManifestPull)), Offer::Dropped);
        assert_eq!(q.offer(rec(Target::Login)), Offer::Dropped);
        let taken = q.take();
        assert_eq!(taken.len(), 2);
        assert_eq!(q.offer(rec(Target::Login)), Offer::QueuedFirst);
        // A batch that failed: its events count as dropped too.
        q.lost(&[taken[1].target.kind()]);
        let s = q.summaries();
        let counts: Vec<(Option<Kind>, Option<u64>)> =
            s.iter().map(|e| (e.kind, e.count)).collect();
        assert_eq!(
            counts,
            [
                (Some(Kind::Push), Some(1)),
                (Some(Kind::Pull), Some(2)),
                (Some(Kind::Login), Some(1))
            ]
        );
        assert!(s.iter().all(|e| e.phase == Phase::DroppedSummary));
        assert!(
            s[1].reason.starts_with("2 pull events not written"),
            "{}",
            s[1].reason
        );
        // Not on disk yet: the same counts again; then drops after it stay counted.
        assert_eq!(q.summaries().len(), 3);
        assert_eq!(q.offer(rec(Target::ManifestPull)), Offer::Queued);
        assert_eq!(q.offer(rec(Target::ManifestPull)), Offer::Dropped);
        q.settle(&s);
        let left: Vec<_> = q.summaries().iter().map(|e| (e.kind, e.count)).collect();
        assert_eq!(left, [(Some(Kind::Pull), Some(1))]);
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
