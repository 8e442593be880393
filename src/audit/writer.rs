//! The audit writer: one task owns the file. Requests hand it records and wait for the
//! answer; it appends every record waiting at that moment in one write and one fsync
//! (group commit), then answers them all. An intent is answered only once it is on disk,
//! so a delete is forwarded only after its intent is durable; when the write fails, the
//! caller refuses the delete (503) and forwards nothing.
//!
//! The file is opened for each batch without creating it: a file that is gone, read-only
//! or on a full disk fails the batch instead of silently starting a new chain elsewhere.
//! SIGHUP (logrotate) and size rotation create the next file, whose first record names
//! the last hash of the previous one. The last hash is also kept in `.<name>.last` so a
//! restart after rotation continues the chain.

use super::record::{line_hash, Record, GENESIS};
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, Clone)]
pub struct AuditSettings {
    pub file: PathBuf,
    /// Rotate when the file passes this size (0: never; logrotate + SIGHUP instead).
    pub rotate_bytes: u64,
    /// Also print every line on stdout, for log shippers.
    pub stdout: bool,
}

type Ack = oneshot::Sender<Result<(), String>>;

enum Msg {
    Write(Box<Record>, Ack),
    Reopen,
}

/// Handle to the writer task.
#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

struct Writer {
    settings: AuditSettings,
    last_hash: String,
    create_next: bool,
}

fn sidecar(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.last"))
}

/// The hash of the last complete line of `path`, if it has one.
fn last_line_hash(path: &Path) -> std::io::Result<Option<String>> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let start = len.saturating_sub(1 << 20);
    f.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail)?;
    // Only complete lines count; a torn tail (no newline) is left for `verify` to report.
    let complete = match tail.iter().rposition(|&b| b == b'\n') {
        Some(i) => &tail[..i],
        None => return Ok(None),
    };
    let last = complete.rsplit(|&b| b == b'\n').next().unwrap_or(complete);
    Ok((!last.is_empty()).then(|| line_hash(last)))
}

impl Writer {
    fn open(&self, create: bool) -> std::io::Result<std::fs::File> {
        OpenOptions::new()
            .append(true)
            .create(create)
            .mode(0o600)
            .open(&self.settings.file)
    }

    /// Appends the records in one write and one fsync.
    fn write_batch(&mut self, records: &[Record]) -> Result<(), String> {
        let mut buf = String::new();
        let mut hash = self.last_hash.clone();
        for r in records {
            let (line, h) = r.to_line(&hash);
            buf.push_str(&line);
            buf.push('\n');
            hash = h;
        }
        let file = &self.settings.file;
        let mut f = self
            .open(self.create_next)
            .map_err(|e| format!("cannot open the audit file {}: {e}", file.display()))?;
        f.write_all(buf.as_bytes())
            .and_then(|()| f.sync_data())
            .map_err(|e| format!("cannot write the audit file {}: {e}", file.display()))?;
        self.create_next = false;
        self.last_hash = hash;
        if self.settings.stdout {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(buf.as_bytes());
            let _ = out.flush();
        }
        if self.settings.rotate_bytes > 0
            && f.metadata().map(|m| m.len()).unwrap_or(0) >= self.settings.rotate_bytes
        {
            self.rotate();
        }
        Ok(())
    }

    /// Renames the full file aside; the next batch creates a new one continuing the chain.
    fn rotate(&mut self) {
        let file = &self.settings.file;
        let stamp = super::record::now_rfc3339().replace([':', '-'], "");
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Two rotations can fall in the same millisecond (fast fsync, small rotate_bytes):
        // never rename over an earlier rotated file. `NAME.STAMP` < `NAME.STAMP.001` <
        // `NAME.STAMP.002` < the next millisecond's name, so name order stays time order.
        // Only this thread renames into the folder, so the check cannot race itself.
        let aside = (0..1000u32)
            .map(|n| match n {
                0 => file.with_file_name(format!("{name}.{stamp}")),
                n => file.with_file_name(format!("{name}.{stamp}.{n:03}")),
            })
            .find(|p| std::fs::symlink_metadata(p).is_err());
        let Some(aside) = aside else {
            tracing::error!("audit file not rotated: 1000 rotated files in one millisecond");
            return;
        };
        match std::fs::rename(file, &aside) {
            Ok(()) => {
                tracing::info!(to = %aside.display(), "audit file rotated");
                self.create_next = true;
                self.save_sidecar();
            }
            Err(e) => tracing::error!(error = %e, "audit file not rotated"),
        }
    }

    fn save_sidecar(&self) {
        let _ = std::fs::write(
            sidecar(&self.settings.file),
            format!("{}\n", self.last_hash),
        );
    }
}

impl AuditLog {
    /// Opens (creating it 0600 if needed) the audit file, finds where its chain ends,
    /// and starts the writer task.
    pub fn start(settings: AuditSettings) -> Result<AuditLog, String> {
        let file = settings.file.clone();
        let in_file = last_line_hash(&file)
            .map_err(|e| format!("cannot read the audit file {}: {e}", file.display()))?;
        let last_hash = match in_file {
            Some(h) => h,
            None => std::fs::read_to_string(sidecar(&file))
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| s.len() == 64)
                .unwrap_or_else(|| GENESIS.to_owned()),
        };
        let mut writer = Writer {
            settings,
            last_hash,
            create_next: true,
        };
        // Create it now, so a bad path fails at start-up, not at the first delete.
        writer
            .open(true)
            .map_err(|e| format!("cannot open the audit file {}: {e}", file.display()))?;
        writer.create_next = false;
        let (tx, mut rx) = mpsc::channel::<Msg>(1024);
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    let mut batch: Vec<(Record, Ack)> = Vec::new();
                    let handle = |m: Msg, w: &mut Writer, batch: &mut Vec<(Record, Ack)>| match m {
                        Msg::Write(r, ack) => batch.push((*r, ack)),
                        Msg::Reopen => {
                            w.create_next = true;
                            w.save_sidecar();
                        }
                    };
                    handle(first, &mut writer, &mut batch);
                    while batch.len() < 256 {
                        match rx.try_recv() {
                            Ok(m) => handle(m, &mut writer, &mut batch),
                            Err(_) => break,
                        }
                    }
                    if batch.is_empty() {
                        continue;
                    }
                    let records: Vec<Record> = batch.iter().map(|(r, _)| r.clone()).collect();
                    let result = writer.write_batch(&records);
                    if let Err(e) = &result {
                        tracing::error!(error = %e, records = records.len(), "audit write failed");
                    }
                    for (_, ack) in batch {
                        let _ = ack.send(result.clone());
                    }
                }
                writer.save_sidecar();
            })
            .map_err(|e| format!("cannot start the audit writer: {e}"))?;
        Ok(AuditLog { tx })
    }

    /// Appends a record; returns once it is on disk (fsync'd), or why it is not.
    pub async fn write(&self, record: Record) -> Result<(), String> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Msg::Write(Box::new(record), ack))
            .await
            .map_err(|_| "the audit writer has stopped".to_owned())?;
        done.await
            .map_err(|_| "the audit writer has stopped".to_owned())?
    }

    /// Asks the writer to start a new file on its next write (after logrotate moved it).
    pub async fn reopen(&self) {
        let _ = self.tx.send(Msg::Reopen).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rotations in quick succession (many per millisecond) each keep their own file,
    /// and name order is rotation order.
    #[test]
    fn rotations_never_replace_an_earlier_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("audit.jsonl");
        let mut w = Writer {
            settings: AuditSettings {
                file: file.clone(),
                rotate_bytes: 1,
                stdout: false,
            },
            last_hash: GENESIS.to_owned(),
            create_next: true,
        };
        for i in 0..50 {
            std::fs::write(&file, format!("{i}\n")).unwrap();
            w.rotate();
            assert!(!file.exists());
        }
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("audit.jsonl."))
            .collect();
        names.sort();
        assert_eq!(names.len(), 50, "{names:?}");
        let contents: Vec<String> = names
            .iter()
            .map(|n| std::fs::read_to_string(dir.path().join(n)).unwrap())
            .collect();
        let want: Vec<String> = (0..50).map(|i| format!("{i}\n")).collect();
        assert_eq!(contents, want);
    }
}
