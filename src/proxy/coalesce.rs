//! Single-flight rounds per key, each joined only by callers that arrived before it
//! started: what lets the audited deletes of one repository share one tag→digest
//! snapshot (`lookup::tag_snapshot`) instead of each listing and HEADing every tag.
//!
//! # The rule
//!
//! A caller of [`Coalescer::join`] gets the answer of a round that **started after it
//! called**, never of one already in flight:
//!
//! - no round in flight for the key: a round starts now, with this caller's job;
//! - a round in flight: the caller joins the *next* round (creating it with its job if it
//!   is the first to queue), which starts when the one in flight ends and as many callers
//!   as it served have queued, or at most as long as that round took (and [`GATHER`])
//!   later (see `gather`).
//!
//! So every caller waits for at most the rest of one round and two rounds' time,
//! and one round answers every caller that queued while the previous one ran or came
//! back right after it (with 8 clients deleting in one repository: 8 deletes per
//! snapshot).
//!
//! # Why that is as true as a lookup of one's own (linearizability)
//!
//! An audited delete records the tags pointing at its digest as seen by reads made after
//! the delete arrived and before it is forwarded. A lookup of its own is exactly that: a
//! sequence of upstream reads (the tag list, then one HEAD per tag) inside the window
//! [arrival, forward], not atomic, interleaved with whatever other clients do meanwhile.
//! A shared round that started after the caller arrived, and that the caller awaits
//! before it forwards, is the same sequence of reads inside the same window: any answer
//! it gives is an answer the caller's own lookup could have given under some
//! interleaving of the other requests. Joining a round that started *before* arrival
//! would not be: its reads may predate the request (a tag moved onto the digest just
//! before the delete arrived could be missed), which is why callers never join the round
//! in flight. The answer is also valid for the caller's whole life up to forwarding, so
//! one request may use it for more than one decision (the protected-tag check and the
//! audit record of the same delete).
//!
//! Deletes of the same digest: those that share a round record the same tags (the tags
//! pointing at the digest when the round read them); the registry then removes the
//! manifest once, one delete's outcome is `deleted` and the others' `failed` with the
//! registry's 404, exactly as when each looked up by itself before any was forwarded.
//! A delete in a later round may see the digest already gone (no tags), as a lookup of
//! its own made after the first delete was forwarded would.
//!
//! # Bounds and failure
//!
//! - A round's job runs in a spawned task that the callers only await: a caller that
//!   goes away (its client disconnected) cancels nothing for the others. A round whose
//!   callers all went away before it started is not run.
//! - The answer (success or error) is cloned to every caller of the round; a job that
//!   panics gives each of them [`Abandoned`], and the next round runs normally.
//! - At most one round in flight and one queued per key; a key's entry is removed under
//!   the same lock as soon as no round is in flight or queued, so the map holds only keys
//!   with callers waiting.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

/// How long, at most, a round waits after the previous one for as many callers as that
/// one served (see `gather`); below it, as long as the previous round took.
pub const GATHER: Duration = Duration::from_millis(100);

type Job<T> = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = T> + Send>> + Send>;

/// A round's answer channel and the job that will produce it.
struct Round<T> {
    answer: watch::Sender<Option<T>>,
    job: Job<T>,
}

/// A key's state; present exactly while a round of it is in flight or gathering.
struct Entry<T> {
    /// The round callers arriving now join: it starts when the one in flight ends.
    next: Option<Round<T>>,
    /// Woken when a caller queues for `next` (the driver gathers callers; see `drive`).
    queued: Arc<Notify>,
}

type Map<K, T> = Arc<Mutex<HashMap<K, Entry<T>>>>;

/// The round a caller joined ended without an answer (its job panicked, or the runtime
/// is shutting down).
#[derive(Debug, Clone, thiserror::Error)]
#[error("the shared lookup ended without an answer")]
pub struct Abandoned;

/// Rounds per key (see the module documentation).
pub struct Coalescer<K, T> {
    map: Map<K, T>,
    /// A fixed gathering window for a test, instead of the last round's time.
    fixed_window: Option<Duration>,
}

impl<K, T> Default for Coalescer<K, T> {
    fn default() -> Self {
        Coalescer {
            map: Arc::default(),
            fixed_window: None,
        }
    }
}

impl<K, T> std::fmt::Debug for Coalescer<K, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalescer")
            .field("keys", &lock(&self.map).len())
            .finish()
    }
}

/// The map's lock; a poisoned lock is taken over (every critical section leaves the map
/// consistent: single inserts, takes and removes).
fn lock<K, T>(map: &Map<K, T>) -> MutexGuard<'_, HashMap<K, Entry<T>>> {
    map.lock().unwrap_or_else(|e| e.into_inner())
}

impl<K, T> Coalescer<K, T>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
{
    /// The answer of a round of `key` that starts after this call: a new one running
    /// `job` when none is in flight, else the queued next one (`job` is used only if
    /// this caller is the first to queue). Must be called inside a tokio runtime.
    pub async fn join<F, Fut>(&self, key: K, job: F) -> Result<T, Abandoned>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        let job: Job<T> = Box::new(move || Box::pin(job()));
        let mut rx = {
            let mut map = lock(&self.map);
            match map.get_mut(&key) {
                None => {
                    let (answer, rx) = watch::channel(None);
                    let queued = Arc::new(Notify::new());
                    map.insert(key.clone(), Entry { next: None, queued });
                    let first = Round { answer, job };
                    tokio::spawn(drive(self.map.clone(), key, first, self.fixed_window));
                    rx
                }
                Some(entry) => {
                    let rx = match &entry.next {
                        Some(round) => round.answer.subscribe(),
                        None => {
                            let (answer, rx) = watch::channel(None);
                            entry.next = Some(Round { answer, job });
                            rx
                        }
                    };
                    entry.queued.notify_one();
                    rx
                }
            }
        };
        let answer = rx.wait_for(Option::is_some).await.map_err(|_| Abandoned)?;
        answer.clone().ok_or(Abandoned)
    }

    /// A coalescer whose rounds gather callers for at most `window`, whatever the
    /// rounds take.
    #[cfg(test)]
    fn with_gather(window: Duration) -> Self {
        Coalescer {
            map: Arc::default(),
            fixed_window: Some(window),
        }
    }

    /// Keys with a round in flight (idle keys are removed).
    #[cfg(test)]
    fn keys(&self) -> usize {
        lock(&self.map).len()
    }

    /// Callers waiting for the queued round of `key`.
    #[cfg(test)]
    fn queued(&self, key: &K) -> usize {
        lock(&self.map)
            .get(key)
            .and_then(|e| e.next.as_ref())
            .map_or(0, |r| r.answer.receiver_count())
    }
}

/// Removes the key's entry if the driver ends without doing so itself (cancelled at
/// runtime shutdown): a stale entry would queue callers for a round nobody runs.
struct Cleanup<K: Eq + Hash, T> {
    map: Map<K, T>,
    key: K,
    armed: bool,
}

impl<K: Eq + Hash, T> Drop for Cleanup<K, T> {
    fn drop(&mut self) {
        if self.armed {
            lock(&self.map).remove(&self.key);
        }
    }
}

/// Runs the key's rounds one after the other until none is queued.
async fn drive<K, T>(map: Map<K, T>, key: K, first: Round<T>, fixed_window: Option<Duration>)
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
{
    let mut cleanup = Cleanup {
        map: map.clone(),
        key: key.clone(),
        armed: true,
    };
    let mut round = first;
    loop {
        // The callers of this round, counted as it starts: how many the next one gathers.
        let served = round.answer.receiver_count();
        let began = Instant::now();
        // A task of its own: a panic in the job reaches no one but this round's
        // callers, who see the sender dropped (`Abandoned`).
        if let Ok(answer) = tokio::spawn((round.job)()).await {
            round.answer.send_replace(Some(answer));
        }
        drop(round.answer);
        let window = fixed_window.unwrap_or_else(|| began.elapsed().min(GATHER));
        match gather(&map, &key, served, window).await {
            Some(next) => round = next,
            None => {
                cleanup.armed = false;
                return;
            }
        }
    }
}

/// The round to run after one that served `served` callers: the queued one, as soon as
/// at least as many callers have queued for it, or `window` after the last round
/// ended, whichever comes first. The callers answered by a round come back together
/// (their next deletes): without gathering, the first of them would start a round alone
/// and the others would queue for the one after, each caller getting one answer per two
/// rounds. Gathering delays no caller while callers keep coming back at the same rate
/// (one caller: its round starts as it queues), and at most `window` otherwise: the
/// time the last round took, up to [`GATHER`], so a late caller waits at most about one
/// round more, whatever rounds cost.
///
/// `None` when nobody waits at the end: the key's entry is removed, under the lock a
/// joiner takes, so no one queues on a removed entry (a round whose callers all went
/// away is not run).
async fn gather<K, T>(map: &Map<K, T>, key: &K, served: usize, window: Duration) -> Option<Round<T>>
where
    K: Eq + Hash,
{
    let deadline = Instant::now() + window;
    loop {
        let queued = {
            let mut entries = lock(map);
            let entry = entries.get_mut(key)?;
            let waiting = entry.next.as_ref().map_or(0, |r| r.answer.receiver_count());
            if waiting >= served.max(1) || Instant::now() >= deadline {
                return match entry.next.take() {
                    Some(next) if waiting > 0 => Some(next),
                    _ => {
                        entries.remove(key);
                        None
                    }
                };
            }
            entry.queued.clone()
        };
        // A caller queueing between the check and here leaves a permit: no lost wake-up.
        let _ = tokio::time::timeout_at(deadline, queued.notified()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::Notify;

    /// A fake lookup: counts rounds, and each round waits for `gate` before answering
    /// its round number, so a test decides when a round ends.
    #[derive(Clone, Default)]
    struct Fake {
        started: Arc<AtomicUsize>,
        gate: Arc<Notify>,
    }

    impl Fake {
        fn job(&self) -> impl FnOnce() -> Pin<Box<dyn Future<Output = usize> + Send>> {
            let (started, gate) = (self.started.clone(), self.gate.clone());
            move || {
                Box::pin(async move {
                    let n = started.fetch_add(1, Ordering::SeqCst) + 1;
                    gate.notified().await;
                    n
                })
            }
        }
        fn started(&self) -> usize {
            self.started.load(Ordering::SeqCst)
        }
    }

    /// A caller of `key` in a task of its own, with the fake's job.
    fn call(
        c: &Arc<Coalescer<&'static str, usize>>,
        key: &'static str,
        fake: &Fake,
    ) -> tokio::task::JoinHandle<Result<usize, Abandoned>> {
        let (c, job) = (c.clone(), fake.job());
        tokio::spawn(async move { c.join(key, job).await })
    }

    /// Lets spawned tasks (and gathering windows) run until `cond` holds: polled every
    /// millisecond, bounded at 10 s.
    async fn until(cond: impl Fn() -> bool) {
        for _ in 0..10_000 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("condition not reached");
    }

    #[tokio::test]
    async fn concurrent_callers_share_rounds_and_late_ones_wait_for_the_next() {
        let c: Arc<Coalescer<&str, usize>> = Arc::default();
        let fake = Fake::default();
        // Eight callers at once: the first starts round 1, the seven others queue for
        // round 2 (they arrived while round 1 was in flight).
        let calls: Vec<_> = (0..8).map(|_| call(&c, "repo", &fake)).collect();
        until(|| fake.started() == 1 && c.queued(&"repo") == 7).await;
        assert_eq!(c.keys(), 1);
        fake.gate.notify_one(); // round 1 ends
        until(|| fake.started() == 2).await;
        // A caller arriving while round 2 is in flight waits for round 3.
        let late = call(&c, "repo", &fake);
        until(|| c.queued(&"repo") == 1).await;
        fake.gate.notify_one(); // round 2 ends
        until(|| fake.started() == 3).await;
        fake.gate.notify_one(); // round 3 ends
        let mut answers = Vec::new();
        for a in calls {
            answers.push(a.await.unwrap().unwrap());
        }
        answers.sort_unstable();
        assert_eq!(answers, [1, 2, 2, 2, 2, 2, 2, 2]);
        assert_eq!(late.await.unwrap().unwrap(), 3);
        assert_eq!(fake.started(), 3, "3 rounds for 9 callers");
        until(|| c.keys() == 0).await;
    }

    #[tokio::test]
    async fn a_caller_never_gets_a_round_that_started_before_it_called() {
        let c: Arc<Coalescer<&str, usize>> = Arc::default();
        let fake = Fake::default();
        let first = call(&c, "repo", &fake);
        until(|| fake.started() == 1).await;
        let second = call(&c, "repo", &fake);
        until(|| c.queued(&"repo") == 1).await;
        fake.gate.notify_one();
        assert_eq!(first.await.unwrap().unwrap(), 1);
        until(|| fake.started() == 2).await;
        assert!(
            !second.is_finished(),
            "round 1's answer is not given to a later caller"
        );
        fake.gate.notify_one();
        assert_eq!(second.await.unwrap().unwrap(), 2);
    }

    #[tokio::test]
    async fn keys_are_independent() {
        let c: Arc<Coalescer<&str, usize>> = Arc::default();
        let fake = Fake::default();
        let a = call(&c, "a", &fake);
        let b = call(&c, "b", &fake);
        until(|| fake.started() == 2).await;
        assert_eq!(c.keys(), 2);
        fake.gate.notify_waiters();
        let mut got = [a.await.unwrap().unwrap(), b.await.unwrap().unwrap()];
        got.sort_unstable();
        assert_eq!(got, [1, 2]);
        until(|| c.keys() == 0).await;
    }

    #[tokio::test]
    async fn errors_reach_every_caller_of_the_round() {
        let c: Arc<Coalescer<&str, Result<u8, String>>> = Arc::default();
        let gate = Arc::new(Notify::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let job = |gate: Arc<Notify>, runs: Arc<AtomicUsize>| {
            move || async move {
                let n = runs.fetch_add(1, Ordering::SeqCst);
                gate.notified().await;
                if n == 1 {
                    Err("upstream answered 500".to_owned())
                } else {
                    Ok(7)
                }
            }
        };
        let first = {
            let (c, j) = (c.clone(), job(gate.clone(), runs.clone()));
            tokio::spawn(async move { c.join("repo", j).await })
        };
        until(|| runs.load(Ordering::SeqCst) == 1).await;
        let mut queued = Vec::new();
        for _ in 0..3 {
            let (c, j) = (c.clone(), job(gate.clone(), runs.clone()));
            queued.push(tokio::spawn(async move { c.join("repo", j).await }));
        }
        until(|| c.queued(&"repo") == 3).await;
        gate.notify_one();
        assert_eq!(first.await.unwrap().unwrap(), Ok(7));
        until(|| runs.load(Ordering::SeqCst) == 2).await;
        gate.notify_one();
        for q in queued {
            assert_eq!(
                q.await.unwrap().unwrap(),
                Err("upstream answered 500".into())
            );
        }
        until(|| c.keys() == 0).await;
    }

    #[tokio::test]
    async fn a_panicking_job_abandons_its_round_only() {
        let c: Arc<Coalescer<&str, u8>> = Arc::default();
        let got = c.join("repo", || async { panic!("a bug in the lookup") });
        assert!(matches!(got.await, Err(Abandoned)));
        until(|| c.keys() == 0).await;
        assert_eq!(c.join("repo", || async { 5 }).await.unwrap(), 5);
    }

    #[tokio::test]
    async fn a_caller_going_away_cancels_nothing_for_the_others() {
        let c: Arc<Coalescer<&str, usize>> = Arc::default();
        let fake = Fake::default();
        // The caller that started round 1 goes away while it runs.
        let starter = call(&c, "repo", &fake);
        until(|| fake.started() == 1).await;
        // Round 2 is queued by a caller that goes away too, with one that stays.
        let gone = call(&c, "repo", &fake);
        let stays = call(&c, "repo", &fake);
        until(|| c.queued(&"repo") == 2).await;
        starter.abort();
        gone.abort();
        assert!(starter.await.unwrap_err().is_cancelled());
        assert!(gone.await.unwrap_err().is_cancelled());
        fake.gate.notify_one(); // round 1 still ends (nobody waits for it now)
        until(|| fake.started() == 2).await; // round 2 runs for the caller that stayed
        fake.gate.notify_one();
        assert_eq!(stays.await.unwrap().unwrap(), 2);
        until(|| c.keys() == 0).await;
    }

    #[tokio::test]
    async fn a_round_whose_callers_all_went_away_is_not_run() {
        let c: Arc<Coalescer<&str, usize>> = Arc::default();
        let fake = Fake::default();
        let first = call(&c, "repo", &fake);
        until(|| fake.started() == 1).await;
        let gone = call(&c, "repo", &fake);
        until(|| c.queued(&"repo") == 1).await;
        gone.abort();
        assert!(gone.await.unwrap_err().is_cancelled());
        assert_eq!(c.queued(&"repo"), 0);
        fake.gate.notify_one();
        assert_eq!(first.await.unwrap().unwrap(), 1);
        until(|| c.keys() == 0).await;
        assert_eq!(fake.started(), 1);
        // Idle again: the next caller starts a round at once.
        let again = call(&c, "repo", &fake);
        until(|| fake.started() == 2).await;
        fake.gate.notify_one();
        assert_eq!(again.await.unwrap().unwrap(), 2);
    }

    #[tokio::test]
    async fn a_round_gathers_as_many_callers_as_the_last_one_served() {
        // A window no test step outlasts: the round starts on the fourth caller.
        let c = Arc::new(Coalescer::with_gather(Duration::from_secs(3600)));
        let fake = Fake::default();
        let first = call(&c, "repo", &fake);
        until(|| fake.started() == 1).await;
        let four: Vec<_> = (0..4).map(|_| call(&c, "repo", &fake)).collect();
        until(|| c.queued(&"repo") == 4).await;
        fake.gate.notify_one(); // round 1 ends; round 2 (4 callers) starts at once
        until(|| fake.started() == 2).await;
        fake.gate.notify_one(); // round 2 ends
        for a in four {
            assert_eq!(a.await.unwrap().unwrap(), 2);
        }
        // Its four callers come back one by one, within the window: round 3 waits for
        // all four instead of starting with the first.
        let mut back = Vec::new();
        for i in 0..3 {
            back.push(call(&c, "repo", &fake));
            until(|| c.queued(&"repo") == i + 1).await;
            assert_eq!(fake.started(), 2, "round 3 waits for the fourth caller");
        }
        back.push(call(&c, "repo", &fake));
        until(|| fake.started() == 3).await;
        assert_eq!(c.queued(&"repo"), 0, "the four are in round 3");
        fake.gate.notify_one();
        for b in back {
            assert_eq!(b.await.unwrap().unwrap(), 3);
        }
        assert_eq!(first.await.unwrap().unwrap(), 1);
    }

    #[tokio::test]
    async fn a_round_starts_after_gather_with_fewer_callers() {
        let window = Duration::from_millis(200);
        let c = Arc::new(Coalescer::with_gather(window));
        let fake = Fake::default();
        let first = call(&c, "repo", &fake);
        until(|| fake.started() == 1).await;
        let three: Vec<_> = (0..3).map(|_| call(&c, "repo", &fake)).collect();
        until(|| c.queued(&"repo") == 3).await;
        fake.gate.notify_one();
        until(|| fake.started() == 2).await;
        let t = Instant::now();
        fake.gate.notify_one();
        // One caller of three comes back: its round starts once the window has passed.
        let alone = call(&c, "repo", &fake);
        until(|| fake.started() == 3).await;
        assert!(t.elapsed() >= window, "waited for the others first");
        fake.gate.notify_one();
        assert_eq!(alone.await.unwrap().unwrap(), 3);
        for a in three {
            assert_eq!(a.await.unwrap().unwrap(), 2);
        }
        assert_eq!(first.await.unwrap().unwrap(), 1);
    }
}
