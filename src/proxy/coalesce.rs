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
//!   is the first to queue), which starts as soon as the one in flight ends.
//!
//! So every caller waits for at most the rest of one round and one whole round, and one
//! round answers every caller that queued while the previous one ran (with 8 clients
//! deleting in one repository: about 8 deletes per snapshot).
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
use tokio::sync::watch;

type Job<T> = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = T> + Send>> + Send>;

/// A round's answer channel and the job that will produce it.
struct Round<T> {
    answer: watch::Sender<Option<T>>,
    job: Job<T>,
}

/// A key's state; present exactly while a round of it is in flight.
struct Entry<T> {
    /// The round callers arriving now join: it starts when the one in flight ends.
    next: Option<Round<T>>,
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
}

impl<K, T> Default for Coalescer<K, T> {
    fn default() -> Self {
        Coalescer {
            map: Arc::default(),
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
    K: Eq + Hash + Clone + Send + 'static,
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
                    map.insert(key.clone(), Entry { next: None });
                    tokio::spawn(drive(self.map.clone(), key, Round { answer, job }));
                    rx
                }
                Some(Entry {
                    next: Some(round), ..
                }) => round.answer.subscribe(),
                Some(entry) => {
                    let (answer, rx) = watch::channel(None);
                    entry.next = Some(Round { answer, job });
                    rx
                }
            }
        };
        let answer = rx.wait_for(Option::is_some).await.map_err(|_| Abandoned)?;
        answer.clone().ok_or(Abandoned)
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
async fn drive<K, T>(map: Map<K, T>, key: K, first: Round<T>)
where
    K: Eq + Hash + Clone + Send + 'static,
    T: Clone + Send + Sync + 'static,
{
    let mut cleanup = Cleanup {
        map: map.clone(),
        key: key.clone(),
        armed: true,
    };
    let mut round = first;
    loop {
        // A task of its own: a panic in the job reaches no one but this round's
        // callers, who see the sender dropped (`Abandoned`).
        if let Ok(answer) = tokio::spawn((round.job)()).await {
            round.answer.send_replace(Some(answer));
        }
        drop(round.answer);
        let mut entries = lock(&map);
        let next = entries.get_mut(&key).and_then(|e| e.next.take());
        match next {
            Some(next) if next.answer.receiver_count() > 0 => round = next,
            // Nothing queued, or every caller of the next round went away: idle. Removed
            // under the lock a joiner takes, so no one queues on a removed entry.
            _ => {
                entries.remove(&key);
                cleanup.armed = false;
                return;
            }
        }
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

    /// Lets spawned tasks run until `cond` holds (no timing: yields, bounded).
    async fn until(cond: impl Fn() -> bool) {
        for _ in 0..10_000 {
            if cond() {
                return;
            }
            tokio::task::yield_now().await;
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
}
