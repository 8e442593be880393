//! Hash upgrades: after a successful login with a bcrypt hash (an imported htpasswd
//! user), the user's entry is rehashed with argon2id and written back to the user file,
//! so a migrated installation converges to argon2 without anyone choosing a new password
//! (`auth.upgrade_hashes`, on by default).
//!
//! Invariants:
//! - Off the request path: the login is answered at once; the job goes to one background
//!   thread through a bounded queue (a full queue drops the job: the user's next
//!   uncached login submits it again). One job at a time, so upgrades never race each other.
//! - Nothing but that one hash changes: the file is read again after argon2 ran, the
//!   entry is replaced only if it still holds the very bcrypt hash the login verified
//!   (a `user passwd`, `del` or hand edit made meanwhile wins): that read and the write
//!   ([`users::save`], as `user passwd` writes it) hold the file's lock
//!   ([`crate::edit`]), which every writer of the user file takes, so no edit made
//!   between them can be undone.
//!   The reload watcher then loads the new file like any edit.
//! - Each bcrypt hash is tried once per process: a file the proxy may not write (a
//!   read-only mount) gives one warning per user, not one per login.
//! - The password is never logged; the log says which user was upgraded.
//! - Bearer tokens (`auth.docker_bearer`) name the hash they were issued under; an
//!   upgrade does not change the password, so [`Upgrader::previous`] lets a token
//!   issued under the bcrypt hash stay good under its argon2 successor.

use super::users::{self, UsersError};
use crate::log::Escaped;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

/// Upgrades waiting for the thread, at most.
const QUEUE_MAX: usize = 256;

/// One upgrade to make.
struct Job {
    path: PathBuf,
    user: String,
    old_hash: String,
    password: String,
    params: (u32, u32, u32),
}

/// The upgrade thread's queue (started at the first job) and what it did.
#[derive(Debug, Default)]
pub struct Upgrader {
    queue: Mutex<Option<SyncSender<Job>>>,
    /// Hashes written by an upgrade → the bcrypt hash each replaced.
    replaced: Arc<Mutex<HashMap<String, String>>>,
}

impl Upgrader {
    /// Queues the upgrade of `user`, whose password was just verified against `old_hash`
    /// (bcrypt) from the user file `path`, to argon2id with `params` (m, t, p).
    pub fn submit(
        &self,
        path: &Path,
        user: &str,
        old_hash: &str,
        password: &str,
        params: (u32, u32, u32),
    ) {
        let job = Job {
            path: path.to_owned(),
            user: user.to_owned(),
            old_hash: old_hash.to_owned(),
            password: password.to_owned(),
            params,
        };
        let mut queue = super::lock(&self.queue);
        if queue.is_none() {
            let (tx, rx) = sync_channel(QUEUE_MAX);
            let replaced = self.replaced.clone();
            let spawned = std::thread::Builder::new()
                .name("hash-upgrade".into())
                .spawn(move || work(&rx, &replaced));
            match spawned {
                Ok(_) => *queue = Some(tx),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the hash upgrade thread");
                    return;
                }
            }
        }
        if let Some(tx) = queue.as_ref() {
            match tx.try_send(job) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => tracing::debug!(
                    user = %Escaped(user),
                    "hash upgrade queue full: tried again at the user's next login"
                ),
                Err(TrySendError::Disconnected(_)) => *queue = None,
            }
        }
    }

    /// The bcrypt hash that `hash` replaced, when an upgrade of this process wrote it.
    pub fn previous(&self, hash: &str) -> Option<String> {
        super::lock(&self.replaced).get(hash).cloned()
    }
}

/// The upgrade thread: one job at a time until every [`Upgrader`] handle is gone.
fn work(jobs: &Receiver<Job>, replaced: &Mutex<HashMap<String, String>>) {
    let mut tried: HashSet<String> = HashSet::new();
    while let Ok(job) = jobs.recv() {
        if !tried.insert(job.old_hash.clone()) {
            continue;
        }
        let user = Escaped(&job.user);
        match upgrade(
            &job.path,
            &job.user,
            &job.old_hash,
            &job.password,
            job.params,
        ) {
            Ok(Some(new)) => {
                super::lock(replaced).insert(new, job.old_hash);
                tracing::info!(%user, file = %job.path.display(), "bcrypt hash upgraded to argon2id");
            }
            Ok(None) => tracing::debug!(
                %user,
                "hash not upgraded: the entry changed since the login"
            ),
            Err(e) => {
                tracing::warn!(%user, error = %e, "cannot upgrade the bcrypt hash to argon2id; the user keeps logging in with bcrypt")
            }
        }
    }
}

/// Replaces `user`'s hash in the user file `path` by an argon2id hash of `password`,
/// if the entry still holds `old_hash`. Returns the new hash, or `None` when the entry
/// changed or left meanwhile (nothing is written then).
pub fn upgrade(
    path: &Path,
    user: &str,
    old_hash: &str,
    password: &str,
    (m, t, p): (u32, u32, u32),
) -> Result<Option<String>, UsersError> {
    if !holds(&read(path)?, user, old_hash) {
        return Ok(None);
    }
    let new = users::hash_password(password, m, t, p).map_err(|e| UsersError {
        file: Some(path.to_owned()),
        user: Some(user.to_owned()),
        message: format!("cannot hash: {e}"),
    })?;
    // Again, under the file's lock (argon2 ran without it): a `user del`, `passwd` or
    // hand edit made while argon2 ran wins, and none can land between this read and the
    // rename.
    let edit = crate::edit::lock(path).map_err(|e| UsersError {
        file: Some(path.to_owned()),
        user: Some(user.to_owned()),
        message: format!("cannot lock the user file: {e}"),
    })?;
    let mut file = read(edit.path())?;
    let Some(entry) = file
        .users
        .iter_mut()
        .find(|u| u.name == user && u.hash == old_hash)
    else {
        return Ok(None);
    };
    entry.hash = new.clone();
    users::save(&edit, &file)?;
    Ok(Some(new))
}

fn holds(file: &users::UserFile, user: &str, hash: &str) -> bool {
    file.users.iter().any(|u| u.name == user && u.hash == hash)
}

fn read(path: &Path) -> Result<users::UserFile, UsersError> {
    let in_file = |mut e: UsersError| {
        e.file = Some(path.to_owned());
        e
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| in_file(UsersError::new(None, format!("cannot read: {e}"))))?;
    users::parse_file(&text).map_err(in_file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use users::{UserEntry, UserFile};

    const CHEAP: (u32, u32, u32) = (8, 1, 1);

    fn entry(name: &str, hash: &str) -> UserEntry {
        UserEntry {
            name: name.into(),
            hash: hash.into(),
            groups: vec!["g".into()],
            disabled: false,
        }
    }

    #[test]
    fn an_upgrade_replaces_only_that_hash_and_only_if_unchanged() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.yaml");
        let old = bcrypt::hash("pw", 4).unwrap();
        let other = users::hash_password("x", 8, 1, 1).unwrap();
        let file = UserFile {
            users: vec![entry("alice", &old), entry("bob", &other)],
        };
        let save = |file: &UserFile| users::save(&crate::edit::lock(&path).unwrap(), file);
        save(&file).unwrap();

        let new = upgrade(&path, "alice", &old, "pw", CHEAP)
            .unwrap()
            .expect("upgraded");
        assert!(new.starts_with("$argon2id$v=19$m=8,t=1,p=1$"), "{new}");
        let back = users::Users::load(&path).unwrap();
        let alice = back.get("alice").unwrap();
        assert_eq!(alice.hash, new);
        assert!(!alice.kind.is_bcrypt());
        assert_eq!(alice.groups, ["g"], "groups kept");
        assert!(users::verify_password(&alice.hash, "pw"));
        assert_eq!(back.get("bob").unwrap().hash, other, "bob untouched");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let written = std::fs::read(&path).unwrap();

        // The same job again (a second login before the reload): nothing to do.
        assert_eq!(upgrade(&path, "alice", &old, "pw", CHEAP).unwrap(), None);
        // A `user passwd` meanwhile: it wins.
        let edited = bcrypt::hash("newer", 4).unwrap();
        save(&UserFile {
            users: vec![entry("alice", &edited), entry("bob", &other)],
        })
        .unwrap();
        assert_eq!(upgrade(&path, "alice", &old, "pw", CHEAP).unwrap(), None);
        assert_eq!(
            users::Users::load(&path)
                .unwrap()
                .get("alice")
                .unwrap()
                .hash,
            edited
        );
        // Removed meanwhile: not put back.
        save(&UserFile {
            users: vec![entry("bob", &other)],
        })
        .unwrap();
        assert_eq!(
            upgrade(&path, "alice", &edited, "newer", CHEAP).unwrap(),
            None
        );
        assert!(users::Users::load(&path).unwrap().get("alice").is_none());
        assert_ne!(std::fs::read(&path).unwrap(), written);
    }

    /// How many open descriptors of this process name `path` (the upgrade thread's lock
    /// file, once it waits for the lock).
    fn open_count(path: &Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|p| p == path)
            .count()
    }

    /// F2: a `user del` made while an upgrade of that user waits for the lock (it read the
    /// file and ran argon2 before) is not undone: the upgrade reads again under the lock.
    #[test]
    fn a_delete_made_while_an_upgrade_waits_is_not_undone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.yaml");
        let old = bcrypt::hash("pw", 4).unwrap();
        let other = users::hash_password("x", 8, 1, 1).unwrap();
        let edit = crate::edit::lock(&path).unwrap();
        users::save(
            &edit,
            &UserFile {
                users: vec![entry("mallory", &old), entry("bob", &other)],
            },
        )
        .unwrap();
        let lock_file = edit.path().with_file_name("users.yaml.lock");
        assert_eq!(open_count(&lock_file), 1);

        let job = {
            let (path, old) = (path.clone(), old.clone());
            std::thread::spawn(move || upgrade(&path, "mallory", &old, "pw", CHEAP))
        };
        // The upgrade read the file (mallory there), hashed, and opened the lock file.
        while open_count(&lock_file) < 2 {
            if job.is_finished() {
                panic!("the upgrade did not wait for the lock: {:?}", job.join());
            }
            std::thread::yield_now();
        }
        // `user del mallory`, as the CLI does it: under the lock.
        let mut file = read(edit.path()).unwrap();
        file.users.retain(|u| u.name != "mallory");
        users::save(&edit, &file).unwrap();
        drop(edit);

        assert_eq!(job.join().unwrap().unwrap(), None);
        let back = users::Users::load(&path).unwrap();
        assert!(back.get("mallory").is_none(), "mallory resurrected");
        assert_eq!(back.get("bob").unwrap().hash, other);
    }

    #[test]
    fn an_unwritable_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.yaml");
        let e = upgrade(&path, "alice", "$2y$04$x", "pw", CHEAP)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("missing.yaml") && e.contains("cannot read"),
            "{e}"
        );
    }
}
