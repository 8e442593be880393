//! One writer per audit file: an exclusive advisory lock (`flock`) held for the process's
//! life. Two processes appending to one file (replicas sharing a volume by mistake, an
//! old process still draining while the new one starts) would interleave their records
//! and break the chain; the second one refuses to start instead.
//!
//! The lock is taken on a file of its own next to the audit file, `.<name>.lock` (like
//! the sidecar `.<name>.last`), not on the audit file:
//! - logrotate renames the audit file (and may create the next one): a lock on its inode
//!   would leave with the renamed file, and a process started after the rotation would
//!   find the new file unlocked. The lock file is never renamed (its name does not start
//!   with the audit file's, so neither logrotate's glob nor [`super::writer`]'s search
//!   for rotated files takes it), so one lock covers the path across every rotation,
//!   SIGHUP or `audit.rotate_bytes`;
//! - the writer opens the audit file for each batch and keeps no descriptor of it, and a
//!   lock lives only as long as its descriptor.
//!
//! Before every batch the writer checks that the lock file at the path is still the one it
//! locked ([`Lock::keep`]): when it was removed or replaced (a clean-up of the folder), the
//! lock is taken on the file that is there now, and when another process holds that one,
//! nothing is written. `flock` locks are advisory and, on NFS, only as good as the
//! server's support: keep each replica's audit file on its own volume or name.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The lock file of `audit_file`: `.<name>.lock` in its folder.
pub fn lock_path(audit_file: &Path) -> PathBuf {
    let name = audit_file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    audit_file.with_file_name(format!(".{name}.lock"))
}

/// The lock held on an audit file (through its lock file) while this value lives.
#[derive(Debug)]
pub struct Lock {
    audit_file: PathBuf,
    path: PathBuf,
    file: File,
}

impl Lock {
    /// Takes the lock of `audit_file`, creating its lock file (0600) if needed; the error
    /// says which file and, when another process holds it, which process.
    pub fn take(audit_file: &Path) -> Result<Lock, String> {
        let path = lock_path(audit_file);
        let shown = path.display();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| format!("cannot open the lock file {shown}: {e}"))?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim().parse::<u32>() {
                    Ok(pid) => format!(" (pid {pid})"),
                    Err(_) => String::new(),
                };
                return Err(format!(
                    "another process{holder} holds the lock {shown} of the audit file {}: another registry-guard is writing it (a second replica on the same volume, or an old process still shutting down). Two writers would break the chain: give each replica its own audit.file, or wait for the other one to exit",
                    audit_file.display()
                ));
            }
            Err(e) => return Err(format!("cannot lock {shown}: {e}")),
        }
        // Who holds it, for the message of the next one that tries (best effort).
        let _ = file
            .set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "{}", std::process::id()));
        Ok(Lock {
            audit_file: audit_file.to_owned(),
            path,
            file,
        })
    }

    /// Whether the lock file at the path is still the file this lock holds.
    fn in_place(&self) -> bool {
        match (std::fs::metadata(&self.path), self.file.metadata()) {
            (Ok(there), Ok(held)) => (there.dev(), there.ino()) == (held.dev(), held.ino()),
            _ => false,
        }
    }

    /// Makes sure the lock still covers the audit file: when its lock file was removed or
    /// replaced, takes the lock on the file that is at the path now (or says why not).
    pub fn keep(&mut self) -> Result<(), String> {
        if self.in_place() {
            return Ok(());
        }
        tracing::warn!(lock = %self.path.display(), "the audit lock file was removed or replaced: taking the lock again");
        *self = Lock::take(&self.audit_file)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_files_and_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let audit = dir.path().join("audit.jsonl");
        let first = Lock::take(&audit).unwrap();
        assert_eq!(first.path, dir.path().join(".audit.jsonl.lock"));
        // Another open file description: refused as another process would be.
        let e = Lock::take(&audit).unwrap_err();
        assert!(
            e.contains(&format!("(pid {})", std::process::id()))
                && e.contains(".audit.jsonl.lock")
                && e.contains(&audit.display().to_string())
                && e.contains("another process"),
            "{e}"
        );
        drop(first);
        let again = Lock::take(&audit);
        assert!(again.is_ok(), "{again:?}");
    }

    #[test]
    fn a_removed_lock_file_is_locked_again_unless_another_holds_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let audit = dir.path().join("audit.jsonl");
        let mut lock = Lock::take(&audit).unwrap();
        assert!(lock.keep().is_ok());
        std::fs::remove_file(lock_path(&audit)).unwrap();
        assert!(lock.keep().is_ok());
        assert!(lock_path(&audit).exists());
        assert!(Lock::take(&audit).is_err(), "the new lock file is held");
        // Removed again, and another takes the new one first: this one must not write.
        std::fs::remove_file(lock_path(&audit)).unwrap();
        let other = Lock::take(&audit).unwrap();
        let e = lock.keep().unwrap_err();
        assert!(e.contains("another process"), "{e}");
        drop(other);
    }
}
