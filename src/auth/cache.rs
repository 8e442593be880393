//! The verification cache: a successful argon2 check is remembered, so the dozens of
//! requests of one `docker push` cost one argon2 run, not dozens.
//!
//! Entries are keyed by HMAC-SHA256 (random per-process key) of user, password and the
//! user's stored hash: the password is never stored, a memory dump yields nothing
//! reusable elsewhere, and a changed hash (new password) or a removed user stops
//! matching at once. Entries expire after the TTL; the table is bounded.
//!
//! An entry may carry a value: a directory login (`auth::ldap`) keeps the groups the
//! directory gave, so a hit answers with the same identity the login had.

use ring::hmac;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub type Fingerprint = [u8; 32];

pub struct VerifyCache<V = ()> {
    key: hmac::Key,
    ttl: Duration,
    max_entries: usize,
    entries: Mutex<HashMap<Fingerprint, (Instant, V)>>,
}

impl<V> std::fmt::Debug for VerifyCache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyCache")
            .field("ttl", &self.ttl)
            .field("max_entries", &self.max_entries)
            .finish_non_exhaustive()
    }
}

impl<V: Clone> VerifyCache<V> {
    /// An empty cache whose entries carry a `V`.
    pub fn with_values(ttl: Duration, max_entries: usize) -> Self {
        let key = crate::auth::random_bytes::<32>();
        VerifyCache {
            key: hmac::Key::new(hmac::HMAC_SHA256, &key),
            ttl,
            max_entries: max_entries.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// HMAC of the three values, each length-prefixed so no two triples collide.
    pub fn fingerprint(&self, user: &str, password: &str, stored_hash: &str) -> Fingerprint {
        let mut ctx = hmac::Context::with_key(&self.key);
        for part in [user, password, stored_hash] {
            ctx.update(&(part.len() as u64).to_le_bytes());
            ctx.update(part.as_bytes());
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// Whether `fp` was verified less than the TTL ago.
    pub fn hit(&self, fp: &Fingerprint, now: Instant) -> bool {
        self.get(fp, now).is_some()
    }

    /// The value stored with `fp`, if it was verified less than the TTL ago.
    pub fn get(&self, fp: &Fingerprint, now: Instant) -> Option<V> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(fp) {
            Some((expires, v)) if now < *expires => Some(v.clone()),
            Some(_) => {
                entries.remove(fp);
                None
            }
            None => None,
        }
    }

    /// Remembers `fp` as verified now, with `value`.
    pub fn insert_value(&self, fp: Fingerprint, now: Instant, value: V) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.max_entries && !entries.contains_key(&fp) {
            entries.retain(|_, (expires, _)| now < *expires);
            if entries.len() >= self.max_entries {
                // Still full of live entries: drop an arbitrary tenth. A dropped entry
                // only costs its user one more argon2 run.
                let drop: Vec<Fingerprint> = entries
                    .keys()
                    .take(self.max_entries / 10 + 1)
                    .copied()
                    .collect();
                for k in drop {
                    entries.remove(&k);
                }
            }
        }
        entries.insert(fp, (now + self.ttl, value));
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (TTL, most entries): a cache of other settings is another cache.
    pub fn settings(&self) -> (Duration, usize) {
        (self.ttl, self.max_entries)
    }
}

impl VerifyCache<()> {
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        VerifyCache::with_values(ttl, max_entries)
    }

    pub fn insert(&self, fp: Fingerprint, now: Instant) {
        self.insert_value(fp, now, ());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_until_the_ttl_and_only_for_the_same_triple() {
        let c = VerifyCache::new(Duration::from_secs(300), 100);
        let t0 = Instant::now();
        let fp = c.fingerprint("alice", "pw", "$argon2id$h1");
        assert!(!c.hit(&fp, t0));
        c.insert(fp, t0);
        assert!(c.hit(&fp, t0 + Duration::from_secs(299)));
        assert!(!c.hit(&fp, t0 + Duration::from_secs(300)));
        // another password, another stored hash (password changed), another user
        assert_ne!(fp, c.fingerprint("alice", "pw2", "$argon2id$h1"));
        assert_ne!(fp, c.fingerprint("alice", "pw", "$argon2id$h2"));
        assert_ne!(fp, c.fingerprint("alicep", "w", "$argon2id$h1"));
    }

    #[test]
    fn keys_differ_between_processes() {
        let a = VerifyCache::new(Duration::from_secs(1), 1);
        let b = VerifyCache::new(Duration::from_secs(1), 1);
        assert_ne!(a.fingerprint("u", "p", "h"), b.fingerprint("u", "p", "h"));
    }

    #[test]
    fn stays_bounded() {
        let c = VerifyCache::new(Duration::from_secs(300), 50);
        let now = Instant::now();
        for i in 0..1000 {
            c.insert(c.fingerprint(&format!("u{i}"), "p", "h"), now);
            assert!(c.len() <= 50);
        }
        let last = c.fingerprint("u999", "p", "h");
        assert!(c.hit(&last, now));
    }
}
