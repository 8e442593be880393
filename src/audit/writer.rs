//! The audit writer: one thread owns the file. Requests hand it records and wait for the
//! answer; it appends every record waiting at that moment in one write and one fsync
//! (group commit), then answers them all. An intent is answered only once it is on disk,
//! so a delete is forwarded only after its intent is durable; when the write fails, the
//! caller refuses the delete (503) and forwards nothing.
//!
//! Invariants:
//! - A batch is appended whole or not at all: a write or fsync that fails (ENOSPC, EIO)
//!   is cut back to the length the file had before it, so the next batch never glues onto
//!   a partial line. If even the cut fails, the next batch cuts first and records it.
//! - At start, a torn last line (a crash mid-write) is cut off, and the cut is recorded
//!   (a `repair` record: how many bytes, their SHA-256), chained like any record.
//! - The chain is keyed (HMAC-SHA-256, `audit.key_file`) and every line carries its own
//!   MAC. At start, the lines in the file's last `MAX_TAIL` bytes are checked as `audit
//!   verify` checks them, and the file's end against the sidecar: a line that is not the
//!   key's (edited, another key, before the chain was keyed) or a file that ends before
//!   the sidecar's position (cut) is refused, never chained onto: continuing would
//!   authenticate the forgery.
//! - Every `checkpoint_every` records or `checkpoint_interval` (when anything was written
//!   since the last one) a `checkpoint` record is written and its position `SEQ:HASH`
//!   logged, so an outside copy of the log proves that nothing was cut from the end.
//! - Denied records are limited per user (`max_denials_per_minute`, a token bucket). The
//!   first denial over the limit in a window is written, as a `denials_summary` of one,
//!   before it is acknowledged: a crash never hides that denials were suppressed. The
//!   ones after it are counted into one `denials_summary` at the end of the window (a
//!   minute), and the count is kept until that record is on disk.
//! - The free space of the audit folder is checked every few seconds
//!   (`min_free_bytes`): the gauges feed the metrics and `GET /ready`.
//!
//! The file is opened for each batch without creating it: a file that is gone, read-only
//! or on a full disk fails the batch instead of silently starting a new chain elsewhere.
//! SIGHUP (logrotate) and size rotation create the next file, whose first record names
//! the last hash of the previous one. The chain's end (`SEQ HASH`, with a MAC under the
//! key) is also kept in `.<name>.last`, rewritten after every batch, so a restart after
//! a rotation continues the chain from where it really ended.

use super::access::{AccessQueue, Logins, Offer, PerMinute};
use super::key::{self, KeyError};
use super::lock::Lock;
use super::record::{
    line_hash, now_rfc3339, Chain, Entry, Event, Phase, Position, Record, GENESIS,
};
use super::verify::{verify, Options};
use crate::metrics::Metrics;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, Clone)]
pub struct AuditSettings {
    pub file: PathBuf,
    /// The replica's name in every record (`audit.instance`); `None`: the host name.
    pub instance: Option<String>,
    /// Rotate when the file passes this size (0: never; logrotate + SIGHUP instead).
    pub rotate_bytes: u64,
    /// Also print every line on stdout, for log shippers.
    pub stdout: bool,
    /// The key of the chain's HMAC.
    pub key_file: PathBuf,
    /// A checkpoint after this many records (0: only by time).
    pub checkpoint_every: u64,
    /// A checkpoint after this long, when records were written since the last one.
    pub checkpoint_interval: Duration,
    /// Denied records written per user and minute; the rest are summarized.
    pub max_denials_per_minute: u32,
    /// Below this many free bytes in the audit folder, `GET /ready` fails.
    pub min_free_bytes: u64,
    /// Access events waiting for the writer at most (`audit.queue`); past it they are
    /// dropped and counted.
    pub queue: usize,
    /// A successful login of a user from an address is recorded once in this long.
    pub login_window: Duration,
    /// Failed logins recorded per minute across all addresses; the rest are counted
    /// into a `dropped_summary` (`audit.max_failed_logins_per_minute`).
    pub max_failed_logins_per_minute: u32,
    /// Also send every record to this syslog collector (`audit.syslog`).
    pub syslog: Option<super::syslog::SyslogSettings>,
}

/// Why the writer cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("{0}")]
    File(String),
    /// Another process holds the audit file's lock (see `lock`).
    #[error("{0}")]
    Locked(String),
    #[error("{0}")]
    Syslog(String),
}

impl StartError {
    /// The configuration key the error is about.
    pub fn config_key(&self) -> &'static str {
        match self {
            StartError::Key(_) => "audit.key_file",
            StartError::File(_) | StartError::Locked(_) => "audit.file",
            StartError::Syslog(_) => "audit.syslog",
        }
    }
}

/// Why a record was not written. `Clone`: one failed batch answers every record in it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// The file could not be opened, repaired or appended to (ENOSPC, EIO, gone).
    #[error("cannot {what} the audit file {file}: {source}")]
    File {
        what: &'static str,
        file: String,
        #[source]
        source: std::sync::Arc<io::Error>,
    },
    /// The writer thread is gone (shutdown).
    #[error("the audit writer has stopped")]
    Stopped,
}

impl WriteError {
    fn file(what: &'static str, file: &str, source: io::Error) -> Self {
        WriteError::File {
            what,
            file: file.to_owned(),
            source: std::sync::Arc::new(source),
        }
    }
}

type Ack = oneshot::Sender<Result<(), WriteError>>;

enum Msg {
    Write(Box<Entry>, Ack),
    /// A denied record: written unless its user is over the rate limit.
    Denial(Box<Record>, Ack),
    Reopen,
    Tick,
    /// Access events were queued (see `access`): take them.
    Wake,
    /// Shutting down: write pending summaries and a last checkpoint.
    Close(Ack),
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

/// Handle to the writer thread.
#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
    access: Arc<AccessQueue>,
    logins: Arc<Logins>,
    metrics: Arc<Metrics>,
}

/// How often the writer checks the disk, due summaries and checkpoints.
const TICK: Duration = Duration::from_secs(5);
/// Most of the file's end read at start to find the last complete record.
const MAX_TAIL: u64 = 8 << 20;

/// The file the writer appends to; a trait so tests can inject failing writes.
trait AuditFile: Write + Send {
    fn len(&self) -> io::Result<u64>;
    fn truncate(&self, len: u64) -> io::Result<()>;
    fn sync(&self) -> io::Result<()>;
}

impl AuditFile for File {
    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn truncate(&self, len: u64) -> io::Result<()> {
        self.set_len(len)
    }
    fn sync(&self) -> io::Result<()> {
        self.sync_data()
    }
}

type Wrap = Box<dyn Fn(File) -> Box<dyn AuditFile> + Send>;

/// A failed append: the error, and whether the file was cut back to its old length.
struct AppendError {
    error: io::Error,
    undone: bool,
}

/// Appends `buf` and syncs; on failure cuts the file back to the length it had before.
/// Returns the new length.
fn append_whole(f: &mut dyn AuditFile, buf: &[u8]) -> Result<u64, AppendError> {
    let before = f.len().map_err(|error| AppendError {
        error,
        undone: true,
    })?;
    match f.write_all(buf).and_then(|()| f.sync()) {
        Ok(()) => Ok(before + buf.len() as u64),
        Err(error) => {
            let undone = f.truncate(before).and_then(|()| f.sync()).is_ok();
            Err(AppendError { error, undone })
        }
    }
}

struct Writer {
    settings: AuditSettings,
    /// The replica's name, stamped on every line (`audit.instance` or the host name).
    instance: String,
    chain: Chain,
    last_hash: String,
    seq: u64,
    create_next: bool,
    /// The file may end in bytes of a failed write that could not be cut off: the next
    /// batch cuts them first (back to `good_len`, else the last newline).
    torn: bool,
    /// The length of the file after the last batch this writer appended.
    good_len: Option<u64>,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    failing: bool,
    denials: Denials,
    metrics: Arc<Metrics>,
    wrap: Option<Wrap>,
    /// The syslog sink, if configured: records once their batch is on disk.
    syslog: Option<super::syslog::Syslog>,
    /// The audit file's lock, held as long as the writer lives (see `lock`).
    lock: Lock,
}

/// The default instance id: the host name (uname's nodename), as replicas usually run
/// one per host or container; "unknown" when it is empty.
fn host_name() -> String {
    let name = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    if name.is_empty() {
        "unknown".to_owned()
    } else {
        name
    }
}

fn sidecar(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.last"))
}

fn sidecar_mac(chain: &Chain, seq: u64, hash: &str) -> String {
    chain.hash(format!("registry-guard audit sidecar {seq} {hash}").as_bytes())
}

fn folder_of(file: &Path) -> &Path {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Free bytes for unprivileged writers in `dir`'s file system.
fn free_bytes(dir: &Path) -> io::Result<u64> {
    let s = rustix::fs::statvfs(dir)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// The end of a file: where its last complete line ends, and its complete lines within
/// the last `MAX_TAIL` bytes (a line cut by the window's start left out).
struct Tail {
    len: u64,
    /// Length up to and including the last newline.
    complete: u64,
    /// Where `lines` start in the file.
    from: u64,
    /// The complete lines of the window, each with its newline.
    lines: Vec<u8>,
}

fn read_tail(f: &mut File) -> io::Result<Tail> {
    let len = f.metadata()?.len();
    let start = len.saturating_sub(MAX_TAIL);
    f.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail)?;
    let Some(nl) = tail.iter().rposition(|&b| b == b'\n') else {
        if start > 0 {
            return Err(io::Error::other(format!(
                "no complete line in its last {MAX_TAIL} bytes"
            )));
        }
        return Ok(Tail {
            len,
            complete: 0,
            from: 0,
            lines: Vec::new(),
        });
    };
    tail.truncate(nl + 1);
    // A window that starts mid-file starts mid-line: its first line begins after the
    // first newline.
    let skip = match start {
        0 => 0,
        _ => tail.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1),
    };
    Ok(Tail {
        len,
        complete: start + nl as u64 + 1,
        from: start + skip as u64,
        lines: tail.split_off(skip),
    })
}

/// Checks the complete lines at the end of the file (`tail`) as `audit verify` does:
/// each carries its own MAC under the key and continues the line before it; and their
/// end agrees with the sidecar's. Returns where the chain ends (`None`: no line).
///
/// Only the last `MAX_TAIL` bytes are read: the whole file would make a start take as
/// long as the file is big, and the lines before the window carry their own MACs, which
/// `audit verify` checks. What matters at start is never to chain a new record onto a
/// line that is not the key's, nor onto a file whose end was cut.
fn check_tail(
    tail: &Tail,
    shown: &str,
    chain: &Chain,
    sidecar: Option<Position>,
) -> Result<Option<Position>, String> {
    if tail.lines.is_empty() {
        return Ok(None);
    }
    // An empty line is no record either: refused below like any line that is not one.
    let first = tail.lines.split(|&b| b == b'\n').next().unwrap_or_default();
    let entry = Entry::parse(first).map_err(|e| {
        format!("its line at byte {} is not an audit record ({e}): the file was changed by hand; move it aside", tail.from)
    })?;
    if entry.seq() == 0 {
        return Err("it was written before the chain was keyed (no `seq`): move it aside (`audit verify --unkeyed` still checks it) and start again".into());
    }
    // The window's first line vouches for where it continues from; its MAC is checked.
    let start = Position {
        seq: entry.seq() - 1,
        hash: entry.prev().to_owned(),
    };
    let name = match tail.from {
        0 => shown.to_owned(),
        n => format!("{shown} (from byte {n})"),
    };
    let opts = Options {
        chain,
        start: Some(start),
        checkpoints: Vec::new(),
    };
    let report = verify([(name.as_str(), tail.lines.as_slice())], &opts);
    if let Some(b) = report.broken {
        return Err(format!(
            "its records are not all the key's (audit.key_file): {b}: the file was changed, or written under another key; new records are not chained onto it. Move it aside (the next file then continues from the chain's end kept in the sidecar, if there is one) and check it with `audit verify`"
        ));
    }
    let last = tail.lines[..tail.lines.len() - 1]
        .rsplit(|&b| b == b'\n')
        .next()
        .unwrap_or_default();
    let end = Position {
        seq: Entry::parse(last).map_or(0, |e| e.seq()),
        hash: chain.hash(last),
    };
    // The sidecar is rewritten after each batch is on disk, so the file reaches at least
    // as far; a shorter file was cut from the end.
    if let Some(side) = sidecar {
        let fits = match side.seq.cmp(&end.seq) {
            std::cmp::Ordering::Greater => false,
            std::cmp::Ordering::Equal => side.hash == end.hash,
            // A crash between a batch and its sidecar: the record after the sidecar's
            // position must continue it, when the window holds it.
            std::cmp::Ordering::Less => tail
                .lines
                .split(|&b| b == b'\n')
                .filter_map(|l| Entry::parse(l).ok())
                .find(|e| e.seq() == side.seq + 1)
                .is_none_or(|e| e.prev() == side.hash),
        };
        if !fits {
            return Err(format!(
                "it ends at record {end}, but the chain's end kept in the sidecar is {side}: records were cut from the end or replaced. Move the file aside (the next file then continues from the sidecar's position) and check it with `audit verify --checkpoint {side}`"
            ));
        }
    }
    Ok(Some(end))
}

/// Endings of rotated files that the writer cannot read (compressed) or that are no
/// audit file of its own.
const NOT_ROTATED: &[&str] = &[".gz", ".xz", ".bz2", ".zst", ".lz4", ".z", ".tmp"];

/// The end of the newest rotated file next to `path` (`NAME.*` or `NAME-*`: the writer's
/// own `NAME.STAMP`, logrotate's `NAME.1` and `NAME-DATE`; newest by modification time,
/// compressed ones left out): its name and where its last complete record ends. `None`:
/// no such file, or one without records, or one written before the chain was keyed. A
/// file whose records are not the key's is refused, as the current file would be.
fn newest_rotated(path: &Path, chain: &Chain) -> Result<Option<(String, Position)>, String> {
    let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Ok(None);
    };
    let Ok(dir) = std::fs::read_dir(folder_of(path)) else {
        return Ok(None);
    };
    let mut best: Option<(std::time::SystemTime, String, PathBuf)> = None;
    for entry in dir.flatten() {
        let n = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = n.strip_prefix(name.as_str()) else {
            continue;
        };
        if rest.len() < 2
            || !rest.starts_with(['.', '-'])
            || NOT_ROTATED.iter().any(|e| n.ends_with(e))
        {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let mtime = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
        if best.as_ref().is_none_or(|(t, b, _)| (mtime, &n) > (*t, b)) {
            best = Some((mtime, n, entry.path()));
        }
    }
    let Some((_, _, file)) = best else {
        return Ok(None);
    };
    let shown = file.display().to_string();
    let tail = File::open(&file)
        .and_then(|mut f| read_tail(&mut f))
        .map_err(|e| format!("the newest rotated file {shown} cannot be read: {e}"))?;
    let last = tail.lines.strip_suffix(b"\n").unwrap_or_default();
    let last = last.rsplit(|&b| b == b'\n').next().unwrap_or_default();
    if Entry::parse(last).is_ok_and(|e| e.seq() == 0) {
        return Ok(None);
    }
    match check_tail(&tail, &shown, chain, None) {
        Ok(end) => Ok(end.map(|e| (shown, e))),
        Err(e) => Err(format!(
            "the newest rotated file {shown}, whose end the chain would continue: {e}"
        )),
    }
}

/// The syslog severity of a record: warning for refusals, failures and the writer's
/// reports of trouble; notice for deletes; info for the rest.
fn severity(e: &Entry) -> u8 {
    use super::record::Outcome;
    use super::syslog::{INFO, NOTICE, WARNING};
    match e {
        Entry::Request(r) if matches!(r.outcome, Some(Outcome::Denied | Outcome::Failed)) => {
            WARNING
        }
        Entry::Request(r) if matches!(r.phase, Phase::Intent | Phase::Outcome) => NOTICE,
        Entry::Request(_) => INFO,
        Entry::Event(e) if e.phase == Phase::Checkpoint => INFO,
        Entry::Event(_) => WARNING,
    }
}

/// PURE: where the chain continues at start, from the end of the files (`file`: the
/// file read and the position of its last complete record) and the sidecar's position;
/// with the `chain_head` record to write when they disagree or one is missing (never
/// silently: whoever reads the log sees which one was taken, and why).
///
/// The file is the source of truth where it reaches at least as far as the sidecar (a
/// crash between a batch and its sidecar, or an older sidecar put back); a newest
/// rotated file that ends before the sidecar leaves the records after it in a file not
/// found here (compressed, moved) or cut: the chain continues from the sidecar, and
/// `audit verify` shows the gap. (The current file ending before the sidecar is refused
/// before this: see `check_tail`.)
fn choose_head(
    file: Option<(&str, Position)>,
    sidecar: Option<Position>,
) -> (Position, Option<Event>) {
    let genesis = Position {
        seq: 0,
        hash: GENESIS.to_owned(),
    };
    let (name, end, side) = match (file, sidecar) {
        (None, None) => return (genesis, None),
        (None, Some(s)) => return (s, None),
        (Some((_, f)), Some(s)) if f == s => return (f, None),
        (Some((n, f)), s) => (n, f, s),
    };
    let (head, why) = match &side {
        None => (
            end.clone(),
            format!("no sidecar (.<file>.last): the chain continues from the end of {name}"),
        ),
        Some(s) if end.seq > s.seq => (
            end.clone(),
            format!("{name} ends at record {}, after the sidecar's record {} (a crash between a write and its sidecar, or an older sidecar put back): the chain continues from the file", end.seq, s.seq),
        ),
        Some(s) if end.seq == s.seq => (
            end.clone(),
            format!("{name} ends at record {} with another hash than the sidecar's: the chain continues from the file; check both with `audit verify --checkpoint`", end.seq),
        ),
        Some(s) => (
            s.clone(),
            format!("{name} ends at record {}, before the sidecar's record {}: the records after it are in a file not read here (compressed, moved) or were cut; the chain continues from the sidecar", end.seq, s.seq),
        ),
    };
    let mut e = Event::new(Phase::ChainHead, why);
    e.file = Some(name.to_owned());
    e.file_end = Some(end.to_string());
    e.sidecar_end = side.map(|s| s.to_string());
    e.continues_from = Some(head.to_string());
    (head, Some(e))
}

impl Writer {
    /// Opens (creating it 0600 if needed) the audit file, cuts a torn tail off, and finds
    /// where the chain ends: the file's last complete record, else the newest rotated
    /// file's, checked against the sidecar (see [`choose_head`]). Returns the records to
    /// write first: the repair of a torn tail, and a `chain_head` record when the files
    /// and the sidecar disagreed.
    fn open(
        settings: AuditSettings,
        chain: Chain,
        metrics: Arc<Metrics>,
    ) -> Result<(Writer, Vec<Event>), StartError> {
        let path = settings.file.clone();
        let shown = path.display().to_string();
        let err = |what: String| StartError::File(format!("{shown}: {what}"));
        // Before anything is read or cut: another writer may be appending.
        let lock = Lock::take(&path).map_err(StartError::Locked)?;
        let mut f = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| err(format!("cannot open: {e}")))?;
        let tail = read_tail(&mut f).map_err(|e| err(format!("cannot read: {e}")))?;
        let repair = if tail.complete < tail.len {
            Some(
                cut(&mut f, tail.complete, tail.len)
                    .map_err(|e| err(format!("cannot cut its torn last line: {e}")))?,
            )
        } else {
            None
        };
        let side = read_sidecar(&path, &chain)?;
        // The file's own end; when it holds no record yet (new, or emptied by a rotation
        // nobody told the proxy about), the end of the newest rotated file next to it.
        let found = match check_tail(&tail, &shown, &chain, side.clone()).map_err(err)? {
            Some(end) => Some((shown.clone(), end)),
            None => newest_rotated(&path, &chain).map_err(err)?,
        };
        let (head, chain_head) = choose_head(
            found
                .as_ref()
                .map(|(name, end)| (name.as_str(), end.clone())),
            side,
        );
        if let Some(e) = &chain_head {
            tracing::warn!(file = %shown, reason = %e.reason, "audit chain head: the files and the sidecar disagree");
        }
        let (seq, last_hash) = (head.seq, head.hash);
        let instance = settings.instance.clone().unwrap_or_else(host_name);
        let mut writer = Writer {
            settings,
            instance,
            chain,
            last_hash,
            seq,
            create_next: false,
            torn: false,
            good_len: None,
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            failing: false,
            denials: Denials::default(),
            metrics,
            wrap: None,
            syslog: None,
            lock,
        };
        writer.denials.per_minute = writer.settings.max_denials_per_minute;
        writer.check_disk();
        Ok((writer, repair.into_iter().chain(chain_head).collect()))
    }

    fn position(&self) -> Position {
        Position {
            seq: self.seq,
            hash: self.last_hash.clone(),
        }
    }

    fn open_file(&self) -> io::Result<Box<dyn AuditFile>> {
        let f = OpenOptions::new()
            .append(true)
            .create(self.create_next)
            .mode(0o600)
            .open(&self.settings.file)?;
        Ok(match &self.wrap {
            Some(w) => w(f),
            None => Box::new(f),
        })
    }

    /// Cuts what a failed write left at the end of the file; the repair record to
    /// write first, if anything was cut.
    fn cut_torn(&mut self, f: &dyn AuditFile) -> io::Result<Option<Event>> {
        let len = f.len()?;
        let keep = match self.good_len {
            Some(g) if g <= len => g,
            _ => {
                let mut r = File::open(&self.settings.file)?;
                read_tail(&mut r)?.complete
            }
        };
        if keep == len {
            return Ok(None);
        }
        let mut r = File::open(&self.settings.file)?;
        let event = removed_event(&mut r, keep, len)?;
        f.truncate(keep)?;
        f.sync()?;
        Ok(Some(event))
    }

    /// Appends the entries (plus a checkpoint when one is due or `checkpoint` is set) in
    /// one write and one fsync; on failure the file is left as it was.
    fn write_batch(&mut self, mut entries: Vec<Entry>, checkpoint: bool) -> Result<(), WriteError> {
        let file = self.settings.file.display().to_string();
        let fail = |w: &mut Writer, e: WriteError| {
            w.set_failing(true);
            w.metrics.audit_write_failures.inc();
            e
        };
        if let Err(e) = self.lock.keep() {
            return Err(fail(
                self,
                WriteError::file("lock", &file, io::Error::other(e)),
            ));
        }
        let mut f = match self.open_file() {
            Ok(f) => f,
            Err(e) => return Err(fail(self, WriteError::file("open", &file, e))),
        };
        if self.torn {
            match self.cut_torn(&*f) {
                Ok(repair) => {
                    self.torn = false;
                    if let Some(r) = repair {
                        entries.insert(0, Entry::Event(r));
                    }
                }
                Err(e) => {
                    return Err(fail(
                        self,
                        WriteError::file("cut the failed write off", &file, e),
                    ))
                }
            }
        }
        let every = self.settings.checkpoint_every;
        let due = every > 0 && self.since_checkpoint + entries.len() as u64 >= every;
        if due || checkpoint {
            entries.push(Entry::Event(Event::new(
                Phase::Checkpoint,
                "the chain up to here; its position is also in the proxy's log".into(),
            )));
        }
        let mut buf = String::new();
        let (mut seq, mut hash) = (self.seq, self.last_hash.clone());
        for e in &mut entries {
            e.set_instance(&self.instance);
        }
        // Where each line ends in `buf`, for the syslog sink.
        let mut ends = Vec::new();
        for e in &entries {
            seq += 1;
            let (line, h) = e.to_line(seq, &hash, &self.chain);
            buf.push_str(&line);
            ends.push(buf.len());
            buf.push('\n');
            hash = h;
        }
        let started = Instant::now();
        let appended = append_whole(&mut *f, buf.as_bytes());
        self.metrics
            .audit_write_duration
            .observe(started.elapsed().as_secs_f64());
        match appended {
            Ok(len) => self.good_len = Some(len),
            Err(e) => {
                if !e.undone {
                    self.torn = true;
                }
                return Err(fail(self, WriteError::file("write", &file, e.error)));
            }
        }
        drop(f);
        self.create_next = false;
        (self.seq, self.last_hash) = (seq, hash);
        self.set_failing(false);
        self.metrics.audit_records.add(entries.len() as u64);
        for e in &entries {
            self.metrics.audit_record(
                e.phase().as_str(),
                e.outcome().map_or("none", |o| o.as_str()),
            );
        }
        self.since_checkpoint += entries.len() as u64;
        if let Some(sink) = &self.syslog {
            let starts = std::iter::once(0).chain(ends.iter().map(|e| e + 1));
            sink.offer(
                entries
                    .iter()
                    .zip(starts.zip(&ends))
                    .map(|(e, (a, b))| (e.time(), e.phase().as_str(), severity(e), &buf[a..*b])),
            );
        }
        if self.settings.stdout {
            let mut out = io::stdout().lock();
            let _ = out.write_all(buf.as_bytes());
            let _ = out.flush();
        }
        if entries
            .last()
            .is_some_and(|e| e.phase() == Phase::Checkpoint)
        {
            self.since_checkpoint = 0;
            self.last_checkpoint = Instant::now();
            tracing::info!(checkpoint = %self.position(), "audit checkpoint");
        }
        self.save_sidecar();
        if self.settings.rotate_bytes > 0
            && self.good_len.unwrap_or(0) >= self.settings.rotate_bytes
        {
            self.rotate();
        }
        Ok(())
    }

    fn set_failing(&mut self, failing: bool) {
        if failing != self.failing {
            self.failing = failing;
            self.metrics.audit_writer_failing.set(u64::from(failing));
            if !failing {
                tracing::info!("audit writes succeed again");
            }
        }
    }

    fn check_disk(&mut self) {
        // The file each batch opens (never created but after a rotation or SIGHUP): one
        // that is gone or cannot be opened for writing fails the next delete, so
        // readiness says so now, and the tick's probe clears it once it opens again.
        if !self.create_next {
            if let Err(e) = self.open_file() {
                if !self.failing {
                    tracing::warn!(file = %self.settings.file.display(), error = %e, "the audit file cannot be opened for writing: not ready");
                }
                self.set_failing(true);
            }
        }
        match free_bytes(folder_of(&self.settings.file)) {
            Ok(free) => {
                let low = free < self.settings.min_free_bytes;
                let was = self.metrics.audit_disk_low.get() == 1;
                self.metrics.audit_disk_free_bytes.set(free);
                self.metrics.audit_disk_low.set(u64::from(low));
                if low && !was {
                    tracing::warn!(
                        free,
                        min = self.settings.min_free_bytes,
                        "the audit folder is low on space (audit.min_free_bytes): not ready"
                    );
                } else if was && !low {
                    tracing::info!(free, "the audit folder has space again");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot check the free space of the audit folder"),
        }
    }

    /// Every `TICK`: the disk, due denial summaries, a checkpoint by time, and a probe
    /// (a checkpoint) while writes fail, so readiness recovers once they work again.
    fn tick(&mut self) {
        self.check_disk();
        let summaries: Vec<Entry> = self
            .denials
            .due(Instant::now(), false)
            .into_iter()
            .map(Entry::Event)
            .collect();
        let by_time = self.since_checkpoint > 0
            && self.last_checkpoint.elapsed() >= self.settings.checkpoint_interval;
        if summaries.is_empty() && !by_time && !self.failing {
            return;
        }
        let n = summaries.len();
        match self.write_batch(summaries.clone(), by_time || self.failing) {
            Ok(()) => self.denials.settle(&summaries),
            Err(e) => {
                tracing::warn!(error = %e, summaries = n, "audit write failed (checkpoint or denial summaries): the summaries are kept for the next tick");
            }
        }
    }

    /// Pending denial summaries and, if anything was written since the last one, a
    /// checkpoint.
    fn close(&mut self) -> Result<(), WriteError> {
        let last: Vec<Entry> = self
            .denials
            .due(Instant::now(), true)
            .into_iter()
            .map(Entry::Event)
            .collect();
        if last.is_empty() && self.since_checkpoint == 0 {
            return Ok(());
        }
        let n = last.len();
        self.write_batch(last.clone(), true)
            .inspect(|()| self.denials.settle(&last))
            .inspect_err(|e| {
                tracing::error!(error = %e, summaries = n, "audit: last checkpoint and denial summaries not written");
            })
    }

    /// Renames the full file aside; the next batch creates a new one continuing the chain.
    fn rotate(&mut self) {
        let file = &self.settings.file;
        let stamp = now_rfc3339().replace([':', '-'], "");
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
                tracing::info!(to = %aside.display(), end = %self.position(), "audit file rotated");
                self.create_next = true;
                self.good_len = None;
            }
            Err(e) => tracing::error!(error = %e, "audit file not rotated"),
        }
    }

    /// Writes the chain's end with its MAC next to the file (through a temporary file and
    /// a rename: a crash leaves the old or the new one, never half of one).
    fn save_sidecar(&self) {
        let path = sidecar(&self.settings.file);
        let tmp = path.with_extension("tmp");
        let mac = sidecar_mac(&self.chain, self.seq, &self.last_hash);
        let text = format!("{} {} {mac}\n", self.seq, self.last_hash);
        let done = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = done {
            tracing::warn!(error = %e, file = %path.display(), "audit sidecar not written");
        }
    }
}

/// The chain's end kept in the sidecar, if there is one; a sidecar without a valid MAC
/// is refused.
fn read_sidecar(path: &Path, chain: &Chain) -> Result<Option<Position>, StartError> {
    let side = sidecar(path);
    let text = match std::fs::read_to_string(&side) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(StartError::File(format!(
                "{}: cannot read: {e}",
                side.display()
            )))
        }
    };
    let mut parts = text.split_whitespace();
    let (seq, hash, mac) = (parts.next(), parts.next(), parts.next());
    match (seq.and_then(|s| s.parse::<u64>().ok()), hash, mac) {
        (Some(seq), Some(hash), Some(mac)) if mac == sidecar_mac(chain, seq, hash) => {
            Ok(Some(Position {
                seq,
                hash: hash.to_owned(),
            }))
        }
        _ => Err(StartError::File(format!(
            "{}: the end of the chain kept there does not carry a valid MAC under audit.key_file (edited, from before the keyed chain, or another key): remove it to start the next file at genesis",
            side.display()
        ))),
    }
}

/// Cuts `f` back to `keep` bytes; the repair record describing what was removed.
fn cut(f: &mut File, keep: u64, len: u64) -> io::Result<Event> {
    let event = removed_event(f, keep, len)?;
    f.set_len(keep)?;
    f.sync_data()?;
    Ok(event)
}

fn removed_event(r: &mut File, keep: u64, len: u64) -> io::Result<Event> {
    r.seek(SeekFrom::Start(keep))?;
    let mut removed = Vec::new();
    r.take(len - keep).read_to_end(&mut removed)?;
    let mut e = Event::new(
        Phase::Repair,
        format!(
            "{} bytes cut off the end of the file: an incomplete last line (a crash or a failed write)",
            removed.len()
        ),
    );
    e.bytes_removed = Some(removed.len() as u64);
    e.removed_sha256 = Some(line_hash(&removed));
    tracing::warn!(bytes = removed.len(), "audit file: torn tail cut off");
    Ok(e)
}

/// Per-user token buckets for denied records.
#[derive(Default)]
struct Denials {
    per_minute: u32,
    users: HashMap<String, Bucket>,
}

struct Bucket {
    rate: PerMinute,
    /// Denials counted but not yet in any record on disk.
    dropped: u64,
    /// The window's first suppressed denial (the start of the window), and its last.
    first: Option<(Instant, String)>,
    last: Option<(Instant, String)>,
    /// The window's first suppressed denial is on disk (its own summary, count 1).
    announced: bool,
}

/// What becomes of one denial.
#[derive(Debug)]
enum Admit {
    /// Under the limit: its own record.
    Write,
    /// The first one over the limit in its window: written as a summary of one, before
    /// it is acknowledged, so that a crash never leaves the suppression without a trace.
    Announce(Box<Event>),
    /// Counted into the summary at the end of the window.
    Count,
}

/// How long the dropped denials of one user are gathered into one summary.
const SUMMARY_WINDOW: Duration = Duration::from_secs(60);

impl Denials {
    /// What becomes of `user`'s denial at `now` (record time `time`).
    fn admit(&mut self, user: &str, now: Instant, time: &str) -> Admit {
        let per_minute = self.per_minute;
        let mut b = self.users.remove(user).unwrap_or(Bucket {
            rate: PerMinute::full(per_minute, now),
            dropped: 0,
            first: None,
            last: None,
            announced: false,
        });
        let admit = if b.rate.take(per_minute, now) {
            Admit::Write
        } else {
            b.first.get_or_insert_with(|| (now, time.to_owned()));
            b.last = Some((now, time.to_owned()));
            if b.announced {
                b.dropped += 1;
                Admit::Count
            } else {
                b.announced = true;
                let mut e = Event::new(
                    Phase::DenialsSummary,
                    format!(
                        "1 denial of {user} over audit.max_denials_per_minute ({per_minute}): it and the next ones are counted, not recorded one by one, into a summary within {} s",
                        SUMMARY_WINDOW.as_secs()
                    ),
                );
                e.user = Some(user.to_owned());
                e.count = Some(1);
                e.first = Some(time.to_owned());
                e.last = Some(time.to_owned());
                Admit::Announce(Box::new(e))
            }
        };
        self.users.insert(user.to_owned(), b);
        admit
    }

    /// The announcement of `user`'s suppression was not written: the denial is counted
    /// into the window's summary instead, and the next one announces again.
    fn announce_failed(&mut self, user: &str) {
        if let Some(b) = self.users.get_mut(user) {
            b.announced = false;
            b.dropped += 1;
        }
    }

    /// The summaries due at `now` (all of them with `all`), oldest user first. Nothing
    /// is forgotten until [`Denials::settle`] says they are on disk: a summary whose
    /// write fails is due again on the next tick. Forgets users whose bucket is full again.
    fn due(&mut self, now: Instant, all: bool) -> Vec<Event> {
        let mut out = Vec::new();
        let per_minute = self.per_minute;
        let mut users: Vec<String> = self.users.keys().cloned().collect();
        users.sort();
        for user in users {
            let Some(mut b) = self.users.remove(&user) else {
                continue;
            };
            let full = b.rate.is_full(per_minute, now);
            let ripe = b
                .first
                .as_ref()
                .is_some_and(|(t, _)| all || now.saturating_duration_since(*t) >= SUMMARY_WINDOW);
            if ripe && b.dropped == 0 {
                // Only the announcement: nothing left to write; the window ends.
                (b.first, b.last, b.announced) = (None, None, false);
            }
            if let (true, Some((t0, first)), Some((t1, last))) = (ripe, &b.first, &b.last) {
                let secs = t1.saturating_duration_since(*t0).as_secs();
                let mut e = Event::new(
                    Phase::DenialsSummary,
                    format!(
                        "{} more denials of {user} in {secs} s, not recorded one by one (audit.max_denials_per_minute: {per_minute})",
                        b.dropped
                    ),
                );
                e.user = Some(user.clone());
                e.count = Some(b.dropped);
                e.first = Some(first.clone());
                e.last = Some(last.clone());
                out.push(e);
            }
            if b.dropped > 0 || b.first.is_some() || !full {
                self.users.insert(user, b);
            }
        }
        out
    }

    /// `summaries` (from [`Denials::due`]) are on disk: their counts end their windows.
    fn settle(&mut self, summaries: &[Entry]) {
        let per_minute = self.per_minute;
        for s in summaries {
            let Entry::Event(e) = s else { continue };
            let (Some(user), Some(count)) = (&e.user, e.count) else {
                continue;
            };
            let Some(b) = self.users.get_mut(user) else {
                continue;
            };
            b.dropped = b.dropped.saturating_sub(count);
            (b.first, b.last, b.announced) = (None, None, false);
            if b.dropped == 0 && b.rate.was_full(per_minute) {
                self.users.remove(user);
            }
        }
    }
}

impl AuditLog {
    /// Loads the key, opens the audit file (creating it 0600 if needed), repairs a torn
    /// tail, finds where its chain ends, and starts the writer thread.
    pub fn start(settings: AuditSettings, metrics: Arc<Metrics>) -> Result<AuditLog, StartError> {
        let chain = key::load(&settings.key_file)?;
        let (mut writer, first) = Writer::open(settings, chain, metrics)?;
        if let Some(s) = &writer.settings.syslog {
            writer.syslog = Some(
                super::syslog::Syslog::start(s, &writer.instance, writer.metrics.clone())
                    .map_err(StartError::Syslog)?,
            );
        }
        if !first.is_empty() {
            writer
                .write_batch(first.into_iter().map(Entry::Event).collect(), false)
                .map_err(|e| {
                    StartError::File(format!(
                        "the repair of a torn tail or where the chain continues was not recorded: {e}"
                    ))
                })?;
        }
        tracing::info!(file = %writer.settings.file.display(), position = %writer.position(), "audit chain continues from here");
        let (tx, mut rx) = mpsc::channel::<Msg>(1024);
        let weak = tx.downgrade();
        let access = Arc::new(AccessQueue::new(
            writer.settings.queue,
            writer.settings.max_failed_logins_per_minute,
        ));
        let logins = Arc::new(Logins::new(writer.settings.login_window));
        let metrics = writer.metrics.clone();
        let queue = access.clone();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    let mut entries: Vec<Entry> = Vec::new();
                    let mut acks: Vec<Ack> = Vec::new();
                    let mut announced: Vec<String> = Vec::new();
                    let mut tick = false;
                    let mut close = None;
                    let mut handle = |m: Msg, w: &mut Writer| match m {
                        Msg::Write(e, ack) => {
                            entries.push(*e);
                            acks.push(ack);
                        }
                        Msg::Denial(r, ack) => {
                            match w.denials.admit(&r.user, Instant::now(), &r.time) {
                                Admit::Write => entries.push(Entry::Request(*r)),
                                Admit::Announce(e) => {
                                    w.metrics.audit_denials_suppressed.inc();
                                    announced.push(r.user);
                                    entries.push(Entry::Event(*e));
                                }
                                Admit::Count => {
                                    w.metrics.audit_denials_suppressed.inc();
                                    let _ = ack.send(Ok(()));
                                    return;
                                }
                            }
                            acks.push(ack);
                        }
                        Msg::Reopen => w.create_next = true,
                        Msg::Tick => tick = true,
                        Msg::Wake => {}
                        Msg::Close(ack) => close = Some(ack),
                    };
                    handle(first, &mut writer);
                    for _ in 0..255 {
                        match rx.try_recv() {
                            Ok(m) => handle(m, &mut writer),
                            Err(_) => break,
                        }
                    }
                    // Access events ride along in the same write and fsync, after the
                    // records requests wait for; with the summaries of dropped ones.
                    let events = queue.take();
                    let kinds: Vec<_> = events.iter().map(|r| r.target.kind()).collect();
                    let dropped = queue.summaries();
                    entries.extend(events.into_iter().map(Entry::Request));
                    entries.extend(dropped.events.iter().cloned().map(Entry::Event));
                    if !entries.is_empty() {
                        let n = entries.len();
                        let result = writer.write_batch(entries, false);
                        match &result {
                            Ok(()) => queue.settle(&dropped),
                            Err(e) => {
                                tracing::error!(error = %e, records = n, "audit write failed");
                                for user in &announced {
                                    writer.denials.announce_failed(user);
                                }
                                for k in &kinds {
                                    writer.metrics.audit_dropped(*k);
                                }
                                queue.lost(&kinds);
                            }
                        }
                        for ack in acks {
                            let _ = ack.send(result.clone());
                        }
                    }
                    if tick {
                        writer.tick();
                    }
                    if let Some(ack) = close {
                        let _ = ack.send(writer.close());
                    }
                }
                let _ = writer.close();
            })
            .map_err(|e| StartError::File(format!("cannot start the audit writer: {e}")))?;
        std::thread::Builder::new()
            .name("audit-ticker".into())
            .spawn(move || loop {
                std::thread::sleep(TICK);
                // Only a weak handle: the writer stops once every AuditLog is gone.
                let Some(tx) = weak.upgrade() else { break };
                let _ = tx.try_send(Msg::Tick);
            })
            .map_err(|e| StartError::File(format!("cannot start the audit ticker: {e}")))?;
        Ok(AuditLog {
            tx,
            access,
            logins,
            metrics,
        })
    }

    /// Queues an access event (push, pull, login) for the next batch; never waits, never
    /// fails: when the queue is full the event is dropped and counted (see `access`).
    /// Deletes never come here: [`AuditLog::write`].
    pub fn event(&self, record: Record) {
        let kind = record.target.kind();
        match self.access.offer(record, Instant::now()) {
            Offer::QueuedFirst => {
                // A full channel means the writer is busy and takes the queue next anyway.
                let _ = self.tx.try_send(Msg::Wake);
            }
            Offer::Queued => {}
            Offer::Dropped => self.metrics.audit_dropped(kind),
        }
    }

    /// Whether a successful credential check of `user` from `client` is a login event:
    /// the first per pair within `audit.login_window`.
    pub fn first_login(&self, user: &str, client: std::net::IpAddr) -> bool {
        self.logins.first(user, client, Instant::now())
    }

    /// Appends a record; returns once it is on disk (fsync'd), or why it is not.
    pub async fn write(&self, record: Record) -> Result<(), WriteError> {
        self.send(|ack| Msg::Write(Box::new(Entry::Request(record)), ack))
            .await
    }

    /// Appends a denied record unless its user is over `max_denials_per_minute` (then it
    /// is counted into a later summary); returns once it is on disk or dropped.
    pub async fn write_denial(&self, record: Record) -> Result<(), WriteError> {
        self.send(|ack| Msg::Denial(Box::new(record), ack)).await
    }

    async fn send(&self, msg: impl FnOnce(Ack) -> Msg) -> Result<(), WriteError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(msg(ack))
            .await
            .map_err(|_| WriteError::Stopped)?;
        done.await.map_err(|_| WriteError::Stopped)?
    }

    /// At shutdown: writes pending denial summaries and a last checkpoint.
    pub async fn close(&self) {
        let _ = self.send(Msg::Close).await;
    }

    /// [`AuditLog::close`] for a thread outside the runtime (the shutdown watchdog, when
    /// the runtime may be what hangs): waits at most `limit`; whether it was done.
    pub fn close_within(&self, limit: Duration) -> bool {
        let (ack, done) = oneshot::channel();
        if self.tx.try_send(Msg::Close(ack)).is_err() {
            return false;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        // A thread of its own: the writer may be the one that hangs (a stuck fsync).
        let waiter = std::thread::Builder::new()
            .name("audit-close".into())
            .spawn(move || {
                let _ = tx.send(done.blocking_recv());
            });
        waiter.is_ok() && matches!(rx.recv_timeout(limit), Ok(Ok(Ok(()))))
    }

    /// Asks the writer to start a new file on its next write (after logrotate moved it).
    pub async fn reopen(&self) {
        let _ = self.tx.send(Msg::Reopen).await;
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::Target;
    use super::super::verify::{verify, Options, Report};
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn settings(dir: &Path) -> AuditSettings {
        AuditSettings {
            file: dir.join("audit.jsonl"),
            instance: Some("test-1".into()),
            rotate_bytes: 0,
            stdout: false,
            key_file: dir.join("audit.key"),
            checkpoint_every: 0,
            checkpoint_interval: Duration::from_secs(3600),
            max_denials_per_minute: 3,
            min_free_bytes: 0,
            queue: 16,
            login_window: Duration::from_secs(60),
            max_failed_logins_per_minute: 600,
            syslog: None,
        }
    }

    fn record(user: &str, id: &str) -> Entry {
        Entry::Request(Record {
            time: now_rfc3339(),
            instance: None,
            phase: Phase::Denied,
            request_id: id.into(),
            user: user.into(),
            owner: None,
            token: None,
            client: "192.0.2.7".into(),
            user_agent: None,
            method: "DELETE".into(),
            path: "/v2/a/b/manifests/sha256:x".into(),
            repo: "a/b".into(),
            target: Target::ManifestByDigest,
            reference: "sha256:x".into(),
            digest: None,
            size: None,
            media_type: None,
            tags: None,
            tags_complete: None,
            decision: crate::audit::Decision::Denied,
            reason: "denied: no".into(),
            upstream_status: None,
            outcome: Some(super::super::Outcome::Denied),
            duration_ms: Some(0),
            seq: 0,
            prev: String::new(),
            mac: String::new(),
        })
    }

    /// The writer, the repair record it would write first (if any), its metrics.
    fn open(dir: &Path) -> (Writer, Option<Event>, Arc<Metrics>) {
        let (w, first, metrics) = open_all(dir);
        let repair = first.into_iter().find(|e| e.phase == Phase::Repair);
        (w, repair, metrics)
    }

    /// The writer, every record it would write first, its metrics.
    fn open_all(dir: &Path) -> (Writer, Vec<Event>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::default());
        let (w, first) = Writer::open(settings(dir), Chain::keyed(KEY), metrics.clone()).unwrap();
        (w, first, metrics)
    }

    /// F4: one writer per audit file. A second writer of the same file does not start
    /// (naming the lock file and saying another process holds it); a writer whose lock
    /// file was removed and taken by another writes nothing more; the first one's chain
    /// still verifies.
    #[test]
    fn one_writer_per_file() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _, _) = open(dir.path());
        w.write_batch(vec![record("bob", "r1")], false).unwrap();
        let second = Writer::open(
            settings(dir.path()),
            Chain::keyed(KEY),
            Arc::new(Metrics::default()),
        );
        let e = second.err().expect("a second writer started");
        assert!(matches!(e, StartError::Locked(_)), "{e}");
        assert_eq!(e.config_key(), "audit.file");
        let e = e.to_string();
        assert!(
            e.contains(".audit.jsonl.lock") && e.contains("another process"),
            "{e}"
        );
        w.write_batch(vec![record("bob", "r2")], false).unwrap();
        std::fs::remove_file(super::super::lock::lock_path(&w.settings.file)).unwrap();
        let other = Lock::take(&w.settings.file).unwrap();
        let e = w
            .write_batch(vec![record("bob", "r3")], false)
            .expect_err("written without the lock")
            .to_string();
        assert!(e.contains("cannot lock the audit file"), "{e}");
        drop(other);
        // The lock file is free again: the writer takes it and goes on.
        w.write_batch(vec![record("bob", "r4")], false).unwrap();
        let r = check(&w.settings.file);
        assert_eq!((r.records, r.broken), (3, None));
    }

    fn check(path: &Path) -> Report {
        let content = std::fs::read(path).unwrap();
        let chain = Chain::keyed(KEY);
        let opts = Options {
            chain: &chain,
            start: None,
            checkpoints: Vec::new(),
        };
        verify([("audit.jsonl", content.as_slice())], &opts)
    }

    /// A file that takes `budget` bytes, then fails every write with ENOSPC; its
    /// truncation fails too when `cut_fails`.
    struct Faulty {
        inner: File,
        budget: Arc<AtomicUsize>,
        cut_fails: bool,
    }

    impl Write for Faulty {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let left = self.budget.load(Ordering::SeqCst);
            if left == 0 {
                return Err(io::Error::from_raw_os_error(28)); // ENOSPC
            }
            let n = self.inner.write(&buf[..buf.len().min(left)])?;
            self.budget.fetch_sub(n, Ordering::SeqCst);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            self.inner.flush()
        }
    }

    impl AuditFile for Faulty {
        fn len(&self) -> io::Result<u64> {
            self.inner.len()
        }
        fn truncate(&self, len: u64) -> io::Result<()> {
            if self.cut_fails {
                return Err(io::Error::from_raw_os_error(5)); // EIO
            }
            self.inner.set_len(len)
        }
        fn sync(&self) -> io::Result<()> {
            self.inner.sync_data()
        }
    }

    fn faulty(budget: usize, cut_fails: bool) -> Wrap {
        let budget = Arc::new(AtomicUsize::new(budget));
        Box::new(move |f| {
            Box::new(Faulty {
                inner: f,
                budget: budget.clone(),
                cut_fails,
            })
        })
    }

    /// ENOSPC in the middle of a batch: the batch fails (its intents are not
    /// acknowledged), the file is exactly what it was, and the next batch continues the
    /// chain: `verify` passes with only the records that were acknowledged.
    #[test]
    fn a_failed_write_leaves_the_file_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, repair, metrics) = open(dir.path());
        assert!(repair.is_none());
        w.write_batch(vec![record("bob", "r1"), record("bob", "r2")], false)
            .unwrap();
        let before = std::fs::read(&w.settings.file).unwrap();
        w.wrap = Some(faulty(100, false));
        let e = w
            .write_batch(vec![record("bob", "r3"), record("bob", "r4")], false)
            .unwrap_err();
        assert!(e.to_string().contains("No space left on device"), "{e}");
        assert_eq!(std::fs::read(&w.settings.file).unwrap(), before);
        assert_eq!(metrics.audit_writer_failing.get(), 1);
        assert_eq!(metrics.audit_write_failures.get(), 1);
        w.wrap = None;
        w.write_batch(vec![record("bob", "r5")], false).unwrap();
        assert_eq!(metrics.audit_writer_failing.get(), 0);
        let r = check(&w.settings.file);
        assert_eq!(
            (r.broken.as_deref(), r.records, r.repairs),
            (None, 3, 0),
            "{r:?}"
        );
        let text = std::fs::read_to_string(&w.settings.file).unwrap();
        assert!(
            !text.contains("\"r3\"") && text.contains("\"r5\""),
            "{text}"
        );
    }

    /// When even the cut fails, the partial batch stays until the next batch, which cuts
    /// it first and records the repair: the chain is intact again.
    #[test]
    fn a_failed_write_that_cannot_be_cut_is_cut_by_the_next_batch() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _, _) = open(dir.path());
        w.write_batch(vec![record("bob", "r1")], false).unwrap();
        let good = std::fs::metadata(&w.settings.file).unwrap().len();
        w.wrap = Some(faulty(100, true));
        assert!(w
            .write_batch(vec![record("bob", "r2"), record("bob", "r3")], false)
            .is_err());
        assert_eq!(
            std::fs::metadata(&w.settings.file).unwrap().len(),
            good + 100
        );
        w.wrap = None;
        w.write_batch(vec![record("bob", "r4")], false).unwrap();
        let r = check(&w.settings.file);
        assert_eq!(
            (r.broken.as_deref(), r.records, r.repairs),
            (None, 3, 1),
            "{r:?}"
        );
        let lines: Vec<String> = std::fs::read_to_string(&w.settings.file)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        let Ok(Entry::Event(repair)) = Entry::parse(lines[1].as_bytes()) else {
            panic!("{}", lines[1])
        };
        assert_eq!(
            (repair.phase, repair.bytes_removed),
            (Phase::Repair, Some(100))
        );
    }

    /// A crash mid-write leaves a torn last line: the next start cuts it off and records
    /// the repair (bytes and their SHA-256) as the next record of the chain.
    #[test]
    fn a_torn_tail_is_cut_at_start_and_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _, _) = open(dir.path());
        w.write_batch(vec![record("bob", "r1"), record("bob", "r2")], false)
            .unwrap();
        let path = w.settings.file.clone();
        drop(w);
        let torn = b"{\"time\":\"2026-11-23T19:00:00.000Z\",\"phase\":\"int";
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(torn).unwrap();
        drop(f);
        assert!(check(&path).broken.unwrap().contains("torn write"));
        let (mut w, repair, _) = open(dir.path());
        let repair = repair.expect("no repair");
        assert_eq!(repair.bytes_removed, Some(torn.len() as u64));
        assert_eq!(repair.removed_sha256, Some(line_hash(torn)));
        assert_eq!(w.seq, 2);
        w.write_batch(vec![Entry::Event(repair)], false).unwrap();
        w.write_batch(vec![record("bob", "r3")], false).unwrap();
        let r = check(&path);
        assert_eq!(
            (r.broken.as_deref(), r.records, r.repairs),
            (None, 4, 1),
            "{r:?}"
        );
    }

    /// A file written under another key, or before the chain was keyed, is not continued;
    /// neither is a sidecar whose MAC does not fit the key.
    #[test]
    fn another_key_or_an_unkeyed_file_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _, _) = open(dir.path());
        w.write_batch(vec![record("bob", "r1"), record("bob", "r2")], false)
            .unwrap();
        let path = w.settings.file.clone();
        drop(w);
        let other = Writer::open(
            settings(dir.path()),
            Chain::keyed(b"another key, another key, another"),
            Arc::new(Metrics::default()),
        );
        let e = other.err().expect("started under another key").to_string();
        assert!(e.contains("another key"), "{e}");
        // Without the sidecar, the file's own MACs refuse the other key.
        let side = sidecar(&path);
        let kept = std::fs::read(&side).unwrap();
        std::fs::remove_file(&side).unwrap();
        let other = Writer::open(
            settings(dir.path()),
            Chain::keyed(b"another key, another key, another"),
            Arc::new(Metrics::default()),
        );
        let e = other.err().expect("started under another key").to_string();
        assert!(
            e.contains("not all the key's") && e.contains("MAC does not match"),
            "{e}"
        );
        std::fs::write(&side, kept).unwrap();
        // The sidecar alone (the file moved away) must carry the key's MAC.
        std::fs::rename(&path, dir.path().join("old.jsonl")).unwrap();
        let (w, _, _) = open(dir.path());
        assert_eq!(w.seq, 2, "the sidecar's position was not taken");
        drop(w); // its lock: one writer per file
        let side = sidecar(&path);
        let text = std::fs::read_to_string(&side).unwrap();
        std::fs::write(&side, text.replacen("2 ", "1 ", 1)).unwrap();
        let e = Writer::open(
            settings(dir.path()),
            Chain::keyed(KEY),
            Arc::new(Metrics::default()),
        )
        .err()
        .expect("a forged sidecar was taken")
        .to_string();
        assert!(e.contains("does not carry a valid MAC"), "{e}");
        std::fs::remove_file(&side).unwrap();
        std::fs::write(&path, "{\"time\":\"t\",\"phase\":\"denied\",\"request_id\":\"r\",\"user\":\"u\",\"client\":\"c\",\"method\":\"DELETE\",\"path\":\"/\",\"repo\":\"r\",\"target\":\"blob\",\"reference\":\"x\",\"decision\":\"denied\",\"reason\":\"\",\"prev\":\"00\"}\n").unwrap();
        let e = Writer::open(
            settings(dir.path()),
            Chain::keyed(KEY),
            Arc::new(Metrics::default()),
        )
        .err()
        .expect("an unkeyed file was continued")
        .to_string();
        assert!(e.contains("before the chain was keyed"), "{e}");
    }

    /// F4: the last line changed without the key (an outcome turned into `failed`/404,
    /// `seq` and `prev` untouched) is refused at start, with or without the sidecar, and
    /// so is a one-line file: new records are never chained onto a forged line.
    #[test]
    fn an_edited_last_line_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _, _) = open(dir.path());
        let mut outcome = record("alice", "r2");
        if let Entry::Request(r) = &mut outcome {
            (r.phase, r.decision, r.reason) = (
                Phase::Outcome,
                crate::audit::Decision::Allowed,
                "granted".into(),
            );
            (r.outcome, r.upstream_status) = (Some(super::super::Outcome::Deleted), Some(202));
        }
        w.write_batch(vec![record("alice", "r1"), outcome], false)
            .unwrap();
        let path = w.settings.file.clone();
        drop(w);
        let good = std::fs::read_to_string(&path).unwrap();
        let forged = good
            .replace("\"outcome\":\"deleted\"", "\"outcome\":\"failed\"")
            .replace("\"upstream_status\":202", "\"upstream_status\":404");
        assert_ne!(forged, good);
        let start = || {
            Writer::open(
                settings(dir.path()),
                Chain::keyed(KEY),
                Arc::new(Metrics::default()),
            )
            .err()
            .map(|e| e.to_string())
        };
        std::fs::write(&path, &forged).unwrap();
        let e = start().expect("a forged last line was continued");
        assert!(e.contains("audit.jsonl:2: the record's own MAC"), "{e}");
        std::fs::remove_file(sidecar(&path)).unwrap();
        let e = start().expect("a forged last line was continued without the sidecar");
        assert!(e.contains("audit.jsonl:2: the record's own MAC"), "{e}");
        // The only line of a file.
        let one = forged.lines().nth(1).unwrap().to_owned() + "\n";
        std::fs::write(&path, one).unwrap();
        let e = start().expect("a forged one-line file was continued");
        assert!(e.contains("audit.jsonl:1: the record's own MAC"), "{e}");
        // An empty first line does not hide the lines after it.
        std::fs::write(&path, format!("\n{forged}")).unwrap();
        let e = start().expect("a file starting with an empty line was continued");
        assert!(e.contains("not an audit record"), "{e}");
        std::fs::write(&path, &good).unwrap();
        assert_eq!(start(), None);
    }

    /// A file cut from the end while the proxy was down ends before the sidecar's
    /// position: refused at start. Moved aside, the next file continues from the
    /// sidecar, so the cut stays visible to `audit verify` across the two files.
    #[test]
    fn a_tail_cut_before_the_sidecar_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _, _) = open(dir.path());
        w.write_batch(vec![record("bob", "r1"), record("bob", "r2")], false)
            .unwrap();
        w.write_batch(vec![record("bob", "r3")], false).unwrap();
        let path = w.settings.file.clone();
        drop(w);
        let text = std::fs::read_to_string(&path).unwrap();
        let cut: String = text.lines().take(2).map(|l| format!("{l}\n")).collect();
        std::fs::write(&path, &cut).unwrap();
        assert_eq!(
            check(&path).broken,
            None,
            "a cut tail alone is a valid chain"
        );
        let e = Writer::open(
            settings(dir.path()),
            Chain::keyed(KEY),
            Arc::new(Metrics::default()),
        )
        .err()
        .expect("a cut file was continued")
        .to_string();
        assert!(
            e.contains("ends at record 2:") && e.contains("sidecar is 3:"),
            "{e}"
        );
        std::fs::rename(&path, dir.path().join("cut.jsonl")).unwrap();
        let (w, _, _) = open(dir.path());
        assert_eq!(w.seq, 3);
    }

    /// A crash between a batch and its sidecar: the file is ahead of the sidecar and
    /// continues it; that is no cut.
    #[test]
    fn a_file_ahead_of_its_sidecar_is_continued() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _, _) = open(dir.path());
        w.write_batch(vec![record("bob", "r1")], false).unwrap();
        let path = w.settings.file.clone();
        let side = std::fs::read(sidecar(&path)).unwrap();
        w.write_batch(vec![record("bob", "r2")], false).unwrap();
        drop(w);
        std::fs::write(sidecar(&path), side).unwrap();
        let (w, _, _) = open(dir.path());
        assert_eq!(w.seq, 2);
    }

    #[test]
    fn the_chain_head_is_chosen_from_the_files_and_a_disagreement_recorded() {
        let at = |seq: u64, c: char| Position {
            seq,
            hash: c.to_string().repeat(64),
        };
        assert_eq!(
            choose_head(None, None),
            (
                Position {
                    seq: 0,
                    hash: GENESIS.into()
                },
                None
            )
        );
        assert_eq!(choose_head(None, Some(at(4, 'a'))), (at(4, 'a'), None));
        assert_eq!(
            choose_head(Some(("f", at(4, 'a'))), Some(at(4, 'a'))),
            (at(4, 'a'), None)
        );
        let cases = [
            (at(7, 'b'), None, at(7, 'b'), "no sidecar"),
            (
                at(7, 'b'),
                Some(at(4, 'a')),
                at(7, 'b'),
                "after the sidecar's record 4",
            ),
            (at(4, 'b'), Some(at(4, 'a')), at(4, 'b'), "another hash"),
            (
                at(3, 'b'),
                Some(at(4, 'a')),
                at(4, 'a'),
                "before the sidecar's record 4",
            ),
        ];
        for (file, side, want, why) in cases {
            let (head, event) = choose_head(Some(("audit.jsonl.1", file.clone())), side.clone());
            assert_eq!(head, want, "{why}");
            let e = event.expect("a disagreement was not recorded");
            assert_eq!(e.phase, Phase::ChainHead);
            assert!(e.reason.contains(why), "{}", e.reason);
            assert_eq!(e.file.as_deref(), Some("audit.jsonl.1"));
            assert_eq!(e.file_end, Some(file.to_string()));
            assert_eq!(e.sidecar_end, side.map(|s| s.to_string()));
            assert_eq!(e.continues_from, Some(want.to_string()));
        }
    }

    /// logrotate without SIGHUP, then a restart: the file was renamed to `NAME.1` and
    /// an empty one created; the sidecar is an older one (a crash between a batch and
    /// its sidecar, or a restore). The chain continues from the rotated file's last
    /// record, the disagreement is recorded, and the two files verify as one chain.
    #[test]
    fn a_restart_after_logrotate_continues_from_the_newest_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _, _) = open(dir.path());
        let path = w.settings.file.clone();
        w.write_batch(vec![record("bob", "r1")], false).unwrap();
        let stale = std::fs::read(sidecar(&path)).unwrap();
        w.write_batch(vec![record("bob", "r2"), record("bob", "r3")], false)
            .unwrap();
        drop(w);
        let rotated = dir.path().join("audit.jsonl.1");
        std::fs::rename(&path, &rotated).unwrap();
        std::fs::write(&path, "").unwrap();
        // An older rotated file and a compressed newer one are not taken.
        std::fs::write(dir.path().join("audit.jsonl.2"), "").unwrap();
        let old = std::time::SystemTime::now() - Duration::from_secs(3600);
        File::options()
            .write(true)
            .open(dir.path().join("audit.jsonl.2"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        std::fs::write(dir.path().join("audit.jsonl.0.gz"), b"\x1f\x8b").unwrap();
        std::fs::write(sidecar(&path), &stale).unwrap();
        let (mut w, first, _) = open_all(dir.path());
        assert_eq!(w.seq, 3, "continued from the stale sidecar");
        assert_eq!(first.len(), 1, "{first:?}");
        let e = &first[0];
        assert_eq!(e.phase, Phase::ChainHead);
        assert!(
            e.reason
                .contains("ends at record 3, after the sidecar's record 1"),
            "{}",
            e.reason
        );
        assert_eq!(
            e.file.as_deref(),
            Some(rotated.display().to_string().as_str())
        );
        w.write_batch(first.into_iter().map(Entry::Event).collect(), false)
            .unwrap();
        w.write_batch(vec![record("bob", "r4")], false).unwrap();
        let (a, b) = (
            std::fs::read(&rotated).unwrap(),
            std::fs::read(&path).unwrap(),
        );
        let chain = Chain::keyed(KEY);
        let opts = Options {
            chain: &chain,
            start: None,
            checkpoints: Vec::new(),
        };
        let r = verify(
            [
                ("audit.jsonl.1", a.as_slice()),
                ("audit.jsonl", b.as_slice()),
            ],
            &opts,
        );
        assert_eq!(
            (r.broken.as_deref(), r.records, r.chain_heads),
            (None, 5, 1),
            "{r:?}"
        );
        // Now file and sidecar agree: no record at the next start.
        drop(w);
        let (w, first, _) = open_all(dir.path());
        assert!(first.is_empty(), "{first:?}");
        assert_eq!(w.seq, 5);
    }

    /// Without a sidecar (removed, or never written), the rotated file's end is taken,
    /// not genesis; and that is recorded too.
    #[test]
    fn without_a_sidecar_the_rotated_file_is_continued_and_that_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _, _) = open(dir.path());
        let path = w.settings.file.clone();
        w.write_batch(vec![record("bob", "r1"), record("bob", "r2")], false)
            .unwrap();
        drop(w);
        std::fs::rename(&path, dir.path().join("audit.jsonl-20261123")).unwrap();
        std::fs::remove_file(sidecar(&path)).unwrap();
        let (w, first, _) = open_all(dir.path());
        assert_eq!(w.seq, 2);
        assert_eq!(first.len(), 1);
        assert!(
            first[0].reason.starts_with("no sidecar"),
            "{}",
            first[0].reason
        );
        // A rotated file that is not the key's is not continued.
        drop(w);
        std::fs::remove_file(&path).unwrap();
        let rotated = dir.path().join("audit.jsonl-20261123");
        let text = std::fs::read_to_string(&rotated).unwrap();
        std::fs::write(&rotated, text.replace("\"bob\"", "\"eve\"")).unwrap();
        let e = Writer::open(
            settings(dir.path()),
            Chain::keyed(KEY),
            Arc::new(Metrics::default()),
        )
        .err()
        .expect("a forged rotated file was continued")
        .to_string();
        assert!(
            e.contains("the newest rotated file") && e.contains("MAC"),
            "{e}"
        );
    }

    /// The file ahead of its sidecar (the current file) is continued, and recorded.
    #[test]
    fn a_current_file_ahead_of_its_sidecar_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _, _) = open(dir.path());
        w.write_batch(vec![record("bob", "r1")], false).unwrap();
        let path = w.settings.file.clone();
        let side = std::fs::read(sidecar(&path)).unwrap();
        w.write_batch(vec![record("bob", "r2")], false).unwrap();
        drop(w);
        std::fs::write(sidecar(&path), side).unwrap();
        let (_, first, _) = open_all(dir.path());
        assert_eq!(first.len(), 1);
        assert!(
            first[0].reason.contains("after the sidecar's record 1"),
            "{}",
            first[0].reason
        );
    }

    /// Checkpoints by count land in the batch that reaches them; by time, on a tick.
    #[test]
    fn checkpoints_by_count_and_by_time() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _, metrics) = open(dir.path());
        w.settings.checkpoint_every = 3;
        w.write_batch(vec![record("a", "1"), record("a", "2")], false)
            .unwrap();
        w.write_batch(vec![record("a", "3")], false).unwrap();
        let r = check(&w.settings.file);
        assert_eq!((r.records, r.checkpoints), (4, 1), "{r:?}");
        assert_eq!(r.last_checkpoint, r.chain_end);
        w.write_batch(vec![record("a", "4")], false).unwrap();
        w.settings.checkpoint_interval = Duration::from_millis(1);
        std::thread::sleep(Duration::from_millis(5));
        w.tick();
        let r = check(&w.settings.file);
        assert_eq!(
            (r.records, r.checkpoints, r.broken.as_deref()),
            (6, 2, None),
            "{r:?}"
        );
        // Nothing new since: no checkpoint on the next tick.
        w.tick();
        assert_eq!(check(&w.settings.file).records, 6);
        assert_eq!(metrics.audit_records.get(), 6);
        // Every line, the writer's own included, names the replica.
        let text = std::fs::read_to_string(&w.settings.file).unwrap();
        for line in text.lines() {
            let e = Entry::parse(line.as_bytes()).unwrap();
            assert_eq!(e.instance(), Some("test-1"), "{line}");
        }
        // Unset, it is the host name.
        assert!(!host_name().is_empty());
    }

    /// `min_free_bytes` above what the disk has: the gauge says low, not ready.
    #[test]
    fn low_disk_space_shows_in_the_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _, metrics) = open(dir.path());
        assert_eq!(metrics.audit_disk_low.get(), 0);
        assert!(metrics.audit_disk_free_bytes.get() > 0);
        w.settings.min_free_bytes = u64::MAX;
        w.tick();
        assert_eq!(metrics.audit_disk_low.get(), 1);
        assert_eq!(metrics.audit_writer_failing.get(), 0);
    }

    /// A file that is gone (and is not to be created) fails the next delete: the tick
    /// says so before any delete does.
    #[test]
    fn a_file_that_cannot_be_opened_shows_at_the_next_tick() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _, metrics) = open(dir.path());
        w.tick();
        assert_eq!(metrics.audit_writer_failing.get(), 0);
        std::fs::remove_file(&w.settings.file).unwrap();
        w.tick();
        assert_eq!(metrics.audit_writer_failing.get(), 1);
        assert!(metrics.audit_write_failures.get() >= 1);
    }

    #[test]
    fn denials_are_limited_per_user_and_summarized_later() {
        let mut d = Denials {
            per_minute: 3,
            ..Denials::default()
        };
        let t0 = Instant::now();
        let kinds = |d: &mut Denials, user: &str, at: u64, time: &str| match d.admit(
            user,
            t0 + Duration::from_secs(at),
            time,
        ) {
            Admit::Write => "write",
            Admit::Announce(_) => "announce",
            Admit::Count => "count",
        };
        let first: Vec<&str> = (0..5).map(|_| kinds(&mut d, "bob", 0, "T0")).collect();
        assert_eq!(first, ["write", "write", "write", "announce", "count"]);
        assert_eq!(
            kinds(&mut d, "alice", 0, "T0"),
            "write",
            "bob's flood limited alice"
        );
        assert!(d.due(t0 + Duration::from_secs(30), false).is_empty());
        // 20 s give bob one record back.
        assert_eq!(kinds(&mut d, "bob", 20, "T20"), "write");
        assert_eq!(kinds(&mut d, "bob", 21, "T21"), "count");
        let due = d.due(t0 + SUMMARY_WINDOW, false);
        assert_eq!(due.len(), 1, "{due:?}");
        let s = &due[0];
        assert_eq!(
            (
                s.phase,
                s.user.as_deref(),
                s.count,
                s.first.as_deref(),
                s.last.as_deref()
            ),
            (
                Phase::DenialsSummary,
                Some("bob"),
                Some(2),
                Some("T0"),
                Some("T21")
            )
        );
        assert!(
            s.reason.starts_with("2 more denials of bob in 21 s"),
            "{}",
            s.reason
        );
        // Not on disk yet (a failed write): due again, with the same count.
        let again = d.due(t0 + SUMMARY_WINDOW + Duration::from_secs(5), false);
        assert_eq!(again.iter().map(|e| e.count).collect::<Vec<_>>(), [Some(2)]);
        d.settle(&again.into_iter().map(Entry::Event).collect::<Vec<_>>());
        assert!(d.due(t0 + SUMMARY_WINDOW * 2, false).is_empty());
        assert!(
            d.users.is_empty(),
            "full buckets are kept: {:?}",
            d.users.keys().collect::<Vec<_>>()
        );
    }

    /// An announcement that was not written is counted into the window's summary, and
    /// the next suppressed denial announces again.
    #[test]
    fn a_failed_announcement_is_counted_and_repeated() {
        let mut d = Denials {
            per_minute: 1,
            ..Denials::default()
        };
        let t0 = Instant::now();
        assert!(matches!(d.admit("bob", t0, "T0"), Admit::Write));
        assert!(matches!(d.admit("bob", t0, "T0"), Admit::Announce(_)));
        d.announce_failed("bob");
        assert!(matches!(d.admit("bob", t0, "T0"), Admit::Announce(_)));
        assert!(matches!(d.admit("bob", t0, "T0"), Admit::Count));
        let due = d.due(t0 + SUMMARY_WINDOW, false);
        assert_eq!(due.iter().map(|e| e.count).collect::<Vec<_>>(), [Some(2)]);
    }

    /// Through the writer thread: over the limit, the first denial is on disk (a
    /// summary of one) before it is acknowledged, the next ones are acknowledged without
    /// a record, and their summary is written when the log closes. A crash before that
    /// (F8: the file as it is before `close`) still shows that denials were suppressed.
    #[tokio::test]
    async fn the_writer_thread_summarizes_dropped_denials() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path());
        key::generate(&s.key_file).unwrap();
        s.max_denials_per_minute = 2;
        let metrics = Arc::new(Metrics::default());
        let log = AuditLog::start(s.clone(), metrics.clone()).unwrap();
        for i in 0..5 {
            let Entry::Request(r) = record("bob", &i.to_string()) else {
                unreachable!()
            };
            log.write_denial(r).await.unwrap();
        }
        assert_eq!(metrics.audit_denials_suppressed.get(), 3);
        let chain = key::load(&s.key_file).unwrap();
        let report = || {
            let content = std::fs::read(&s.file).unwrap();
            let r = verify(
                [("f", content.as_slice())],
                &Options {
                    chain: &chain,
                    start: None,
                    checkpoints: Vec::new(),
                },
            );
            assert_eq!(r.broken, None, "{r:?}");
            (
                r.records,
                r.denials,
                r.denial_summaries,
                r.summarized_denials,
                r.checkpoints,
            )
        };
        assert_eq!(report(), (3, 3, 1, 1, 0), "before close (a crash here)");
        log.close().await;
        assert_eq!(report(), (5, 5, 2, 3, 1));
    }

    /// Rotations in quick succession (many per millisecond) each keep their own file,
    /// and name order is rotation order.
    #[test]
    fn rotations_never_replace_an_earlier_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _, _) = open(dir.path());
        let file = w.settings.file.clone();
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
