//! Editing the files registry-guard rewrites itself: the user file (`user ...` commands,
//! hash upgrades), the tokens file (`token create|revoke`) and the tokens' last-use file
//! (the proxy's flush). Every writer goes through [`lock`] and [`Locked::replace`].
//!
//! Invariants:
//! - One writer at a time, across processes: an exclusive `flock` on the sidecar
//!   `<real file>.lock` is held from the read to the rename, so an edit is made to what
//!   is on disk at that moment and no other writer's edit is lost (a `user del` is never
//!   undone by a hash upgrade that read the file before it). The lock file is never
//!   removed: removing it would let two writers lock two different files.
//! - The wait is bounded ([`LOCK_WAIT`]): the proxy's background writers never hang on a
//!   stuck command; the error names the lock file.
//! - Symlinks are followed: the new content is written next to the real file and renamed
//!   onto it, so a link (a Kubernetes-style `..data` link, `link/users.yaml →
//!   real/users.yaml`) stays a link and the real file changes.
//! - An existing file keeps its mode, and its owner and group where the writer may set
//!   them; a new file is 0600.
//! - The temporary file has a random name, made with `create_new` and retried: a file
//!   left behind by a crash (in a container the proxy is always PID 1) never blocks a
//!   later write. The rename is atomic: a reader sees the old file or the new one.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a writer waits for another one to finish before giving up.
pub const LOCK_WAIT: Duration = Duration::from_secs(5);
/// Symlinks followed at most (as the kernel's own limit, ELOOP).
const MAX_LINKS: usize = 40;
/// Pause between two tries of the lock.
const RETRY: Duration = Duration::from_millis(10);

/// The exclusive right to edit one file, until dropped (closing the lock file releases
/// the `flock`).
#[derive(Debug)]
pub struct Locked {
    /// The open lock file: its `flock` is the lock.
    _lock: File,
    /// The file itself, symlinks resolved.
    real: PathBuf,
}

/// Locks `path` for an edit, waiting at most [`LOCK_WAIT`] for another writer.
pub fn lock(path: &Path) -> io::Result<Locked> {
    lock_within(path, LOCK_WAIT)
}

/// [`lock`] with another bound on the wait.
pub fn lock_within(path: &Path, wait: Duration) -> io::Result<Locked> {
    use rustix::fs::{flock, FlockOperation};
    let real = resolve(path)?;
    let lock_path = sidecar(&real, ".lock");
    let file = open_lock_file(&lock_path, &real)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", lock_path.display())))?;
    let start = Instant::now();
    loop {
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(Locked { _lock: file, real }),
            Err(rustix::io::Errno::WOULDBLOCK | rustix::io::Errno::INTR) => {}
            Err(e) => {
                let e = io::Error::from(e);
                return Err(io::Error::new(
                    e.kind(),
                    format!("{}: cannot lock: {e}", lock_path.display()),
                ));
            }
        }
        if start.elapsed() >= wait {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{}: another writer (a `registry-guard user|token` command or the proxy) has held the lock for over {} s; try again",
                    lock_path.display(),
                    wait.as_secs_f32()
                ),
            ));
        }
        std::thread::sleep(RETRY);
    }
}

/// Opens the lock file, making it if needed. `flock` needs no more than reading, so an
/// existing one is opened read-only; a new one gets the file's owner and group (where
/// allowed) and its read bits, so that a `user` command run as root leaves a lock file
/// the proxy, which owns the user file, can still open.
fn open_lock_file(lock_path: &Path, real: &Path) -> io::Result<File> {
    let made = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(lock_path);
    match made {
        Ok(f) => {
            if let Ok(of) = std::fs::metadata(real) {
                let _ = std::os::unix::fs::fchown(&f, Some(of.uid()), Some(of.gid()));
                f.set_permissions(std::fs::Permissions::from_mode(0o600 | (of.mode() & 0o044)))?;
            }
            Ok(f)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => File::open(lock_path),
        Err(e) => Err(e),
    }
}

impl Locked {
    /// The file being edited, symlinks resolved.
    pub fn path(&self) -> &Path {
        &self.real
    }

    /// The file's content as it is now (`NotFound` when there is none yet).
    pub fn read_to_string(&self) -> io::Result<String> {
        std::fs::read_to_string(&self.real)
    }

    /// Replaces the file with `parts`, concatenated: a temporary file in the real file's
    /// folder, fsync'd, renamed over it, the folder fsync'd. An existing file's mode (and
    /// owner and group, where allowed) are kept; a new file is 0600.
    pub fn replace(&self, parts: &[&[u8]]) -> io::Result<()> {
        let old = match std::fs::metadata(&self.real) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let (tmp, mut f) = create_temp(&self.real)?;
        let mut write = || -> io::Result<()> {
            for part in parts {
                f.write_all(part)?;
            }
            if let Some(old) = &old {
                let new = f.metadata()?;
                if (new.uid(), new.gid()) != (old.uid(), old.gid()) {
                    // Only root, or an owner in the file's group, may; otherwise the
                    // writer's ownership stays (the mode below still holds).
                    let _ = std::os::unix::fs::fchown(&f, Some(old.uid()), Some(old.gid()));
                }
                f.set_permissions(std::fs::Permissions::from_mode(old.mode() & 0o7777))?;
            }
            f.sync_all()?;
            std::fs::rename(&tmp, &self.real)?;
            File::open(folder(&self.real))?.sync_all()
        };
        write().inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }
}

/// `path` with its symlinks followed (a link to a file not made yet included), so that
/// the rename replaces the file and not the link.
fn resolve(path: &Path) -> io::Result<PathBuf> {
    let mut at = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                let to = std::fs::read_link(&at)?;
                // A relative target is relative to the link's folder.
                at = folder(&at).join(to);
            }
            Ok(_) => return Ok(at),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(at),
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{}: too many levels of symbolic links", path.display()),
    ))
}

/// A new temporary file next to `real`, mode 0600: `.NAME.RANDOM.tmp`. A name taken
/// (a file left by a crash, by chance) is skipped for another.
fn create_temp(real: &Path) -> io::Result<(PathBuf, File)> {
    let mut tries = 0;
    loop {
        let suffix = format!(
            ".{}.tmp",
            crate::audit::record::hex(&crate::auth::random_bytes::<8>())
        );
        let tmp = hidden_sidecar(real, &suffix);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 8 => tries += 1,
            Err(e) => return Err(e),
        }
    }
}

/// The folder of `path` (`.` for a bare name).
fn folder(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// `NAME<suffix>` next to `path`.
fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// `.NAME<suffix>` next to `path`.
fn hidden_sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(suffix);
    folder(path).join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_new_file_is_0600_and_no_temporary_file_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.yaml");
        lock(&path).unwrap().replace(&[b"a: ", b"1\n"]).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a: 1\n");
        assert_eq!(mode(&path), 0o600);
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["f.yaml", "f.yaml.lock"]);
    }

    #[test]
    fn an_existing_file_keeps_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.yaml");
        std::fs::write(&path, "old\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let edit = lock(&path).unwrap();
        assert_eq!(edit.read_to_string().unwrap(), "old\n");
        edit.replace(&[b"new\n"]).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\n");
        assert_eq!(mode(&path), 0o640);
    }

    /// F6: `link/f.yaml → ../real/f.yaml` (through a chain of two links): the link stays
    /// a link, the real file changes and keeps its mode, the lock is next to the real file.
    #[test]
    fn a_symlinked_file_is_edited_through_the_link() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::fs::create_dir(dir.path().join("link")).unwrap();
        let real = dir.path().join("real/f.yaml");
        std::fs::write(&real, "old\n").unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink("../real/f.yaml", dir.path().join("link/mid")).unwrap();
        let link = dir.path().join("link/f.yaml");
        std::os::unix::fs::symlink("mid", &link).unwrap();

        let edit = lock(&link).unwrap();
        assert_eq!(edit.path(), dir.path().join("link/../real/f.yaml"));
        edit.replace(&[b"new\n"]).unwrap();
        drop(edit);
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read_to_string(&real).unwrap(), "new\n");
        assert_eq!(mode(&real), 0o644);
        assert!(dir.path().join("real/f.yaml.lock").exists());
        assert!(!dir.path().join("link/f.yaml.lock").exists());
    }

    /// The lock file takes the read bits of the file it locks; one made earlier (by
    /// another user, say) is opened read-only, which is all `flock` needs.
    #[test]
    fn the_lock_file_is_readable_as_the_file_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.yaml");
        std::fs::write(&path, "x\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        drop(lock(&path).unwrap());
        let lock_file = dir.path().join("f.yaml.lock");
        assert_eq!(mode(&lock_file), 0o640);
        std::fs::set_permissions(&lock_file, std::fs::Permissions::from_mode(0o400)).unwrap();
        let held = lock(&path).unwrap();
        assert!(lock_within(&path, Duration::from_millis(20)).is_err());
        drop(held);
    }

    /// A link to a file not made yet: the file is made where the link points.
    #[test]
    fn a_dangling_link_makes_the_real_file() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("f.yaml");
        std::os::unix::fs::symlink("g.yaml", &link).unwrap();
        lock(&link).unwrap().replace(&[b"x\n"]).unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("g.yaml")).unwrap(),
            "x\n"
        );
    }

    #[test]
    fn a_link_loop_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::os::unix::fs::symlink("b", &a).unwrap();
        std::os::unix::fs::symlink("a", dir.path().join("b")).unwrap();
        let e = lock(&a).unwrap_err();
        assert!(e.to_string().contains("symbolic links"), "{e}");
    }

    /// F7: temporary files left by a crash (the old PID-based name of this very process,
    /// random-looking ones) do not stop a write.
    #[test]
    fn a_stale_temporary_file_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.yaml");
        std::fs::write(&path, "old\n").unwrap();
        for stale in [
            format!(".users.yaml.{}.tmp", std::process::id()),
            ".users.yaml.0000000000000000.tmp".to_owned(),
        ] {
            std::fs::write(dir.path().join(stale), "half").unwrap();
        }
        lock(&path).unwrap().replace(&[b"new\n"]).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\n");
    }

    /// The wait is bounded and the error names the lock file; once the holder lets go,
    /// the next writer gets it.
    #[test]
    fn the_lock_excludes_and_its_wait_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.yaml");
        let held = lock(&path).unwrap();
        let e = lock_within(&path, Duration::from_millis(50)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let lock_file = dir.path().join("f.yaml.lock");
        assert!(
            e.to_string().contains(&lock_file.display().to_string()),
            "{e}"
        );
        assert!(e.to_string().contains("another writer"), "{e}");
        drop(held);
        lock_within(&path, Duration::from_millis(50)).unwrap();
    }

    /// Writers that each add one line, many at once: every line is there at the end
    /// (without the lock, a writer that read before another's rename drops its line).
    #[test]
    fn concurrent_edits_are_serialised() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        let edit = lock(&path).unwrap();
                        let mut text = match edit.read_to_string() {
                            Ok(t) => t,
                            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
                            Err(e) => panic!("{e}"),
                        };
                        text.push_str(&format!("{t}-{i}\n"));
                        edit.replace(&[text.as_bytes()]).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 100);
        for t in 0..4 {
            for i in 0..25 {
                assert!(text.lines().any(|l| l == format!("{t}-{i}")), "{t}-{i}");
            }
        }
    }
}
