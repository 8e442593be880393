//! PURE: an audit record and how it is chained.
//!
//! One record per line (JSON Lines). Every line carries `seq`, its position in the chain
//! (1 for the first record ever written), and `prev`: the HMAC-SHA-256 (hex), under the
//! key of `audit.key_file`, of the previous line's bytes (without its newline), and ends
//! in `mac`: the HMAC of the line itself without that field ([`Chain::mac`]). Editing a
//! line breaks its own `mac`; removing or reordering lines breaks the chain at the next
//! one; without the key nobody can compute a `mac` or a `prev` that fits: who can write
//! the log but not read the key cannot rewrite it, not even the last line, which no
//! `prev` covers yet. The first record of a rotated file names the last hash of the file
//! before it, so the chain runs across files.
//!
//! Besides the records of requests (intent, outcome, denied; `access` for the events of
//! `audit.events`: pushes, pulls, logins) the writer adds records of its own ([`Event`]):
//! periodic checkpoints, repairs of a torn tail, summaries of denials that the per-user
//! rate limit kept from being written one by one, summaries of access events a full
//! queue dropped, and where the chain was taken up at start when the files and the
//! sidecar disagreed.
//!
//! Files written before the chain was keyed (no `seq`, `prev` a plain SHA-256) are still
//! readable: `audit verify --unkeyed` checks them with [`Chain::Unkeyed`].

use ring::{digest, hmac};
use serde::{Deserialize, Serialize};

/// `prev` of the very first record ever written.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How a line is hashed into the next line's `prev`.
pub enum Chain {
    /// HMAC-SHA-256 under the audit key: what the writer always uses.
    Keyed(hmac::Key),
    /// Plain SHA-256: files from before the keyed chain; anyone can recompute it.
    Unkeyed,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Chain::Keyed(_) => "Chain::Keyed(..)",
            Chain::Unkeyed => "Chain::Unkeyed",
        })
    }
}

impl Chain {
    /// A keyed chain from the raw key bytes.
    pub fn keyed(key: &[u8]) -> Chain {
        Chain::Keyed(hmac::Key::new(hmac::HMAC_SHA256, key))
    }

    /// The hash of a line, lower-case hex.
    pub fn hash(&self, line: &[u8]) -> String {
        match self {
            Chain::Keyed(k) => hex(hmac::sign(k, line).as_ref()),
            Chain::Unkeyed => line_hash(line),
        }
    }

    pub fn is_keyed(&self) -> bool {
        matches!(self, Chain::Keyed(_))
    }

    /// The MAC a keyed line carries of itself: HMAC-SHA-256 of the line without its
    /// `mac` field, in a domain of its own (never equal to a `prev` or a sidecar MAC).
    /// `None` for the unkeyed chain, whose lines carry none.
    pub fn mac(&self, body: &[u8]) -> Option<String> {
        let Chain::Keyed(k) = self else { return None };
        let mut ctx = hmac::Context::with_key(k);
        ctx.update(MAC_DOMAIN);
        ctx.update(body);
        Some(hex(ctx.sign().as_ref()))
    }

    /// Whether a line carries its own valid MAC (always true for the unkeyed chain).
    /// Without it, a line nobody chained onto yet (the last one) could be changed by
    /// whoever can write the file: `prev` only authenticates the line before.
    pub fn check_mac(&self, line: &[u8]) -> Result<(), &'static str> {
        if !self.is_keyed() {
            return Ok(());
        }
        let Some((body, mac)) = split_mac(line) else {
            return Err("no `mac`: the record does not carry its own MAC (edited, or written before records carried one)");
        };
        let want = self.mac(&body).unwrap_or_default();
        if bool::from(subtle::ConstantTimeEq::ct_eq(want.as_bytes(), mac)) {
            Ok(())
        } else {
            Err("the record's own MAC does not match: the line was edited, or written under another key")
        }
    }
}

/// What a line's MAC is computed over, before the line without it.
const MAC_DOMAIN: &[u8] = b"registry-guard audit record\n";
/// How a line's MAC is written: the last field, 64 hex digits.
const MAC_FIELD: &[u8] = b",\"mac\":\"";

/// Splits a line into the line without its `mac` field and the MAC, when it ends in
/// `,"mac":"<64 hex>"}` (byte for byte as the writer puts it: nothing else may follow).
pub fn split_mac(line: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let suffix = MAC_FIELD.len() + 64 + 2;
    let at = line.len().checked_sub(suffix)?;
    let (head, tail) = line.split_at(at);
    let mac = tail.strip_prefix(MAC_FIELD)?.strip_suffix(b"\"}")?;
    if !mac.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut body = head.to_vec();
    body.push(b'}');
    Some((body, mac))
}

/// Lower-case hex of bytes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a record is in the life of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Written and fsync'd before an allowed delete is forwarded.
    Intent,
    /// Written after the upstream answered (or failed).
    Outcome,
    /// A refused request of an authenticated user: the only record it gets.
    Denied,
    /// An access event (`audit.events`: push, pull, login): one record, written after
    /// the fact through a bounded queue, never fail-closed.
    Access,
    /// The writer's: denials of one user that the rate limit did not write one by one.
    DenialsSummary,
    /// The writer's: a torn tail (crash or failed write) was cut off the file.
    Repair,
    /// The writer's: the chain's position, also printed to the log for an outside copy.
    Checkpoint,
    /// The writer's: access events of one kind a full queue dropped.
    DroppedSummary,
    /// The writer's: at start, the end of the files and the sidecar disagreed (or one of
    /// them was missing); says which position the chain continues from, and why.
    ChainHead,
}

impl Phase {
    /// Records of requests ([`Record`]); the others are the writer's own ([`Event`]).
    pub fn is_request(self) -> bool {
        matches!(
            self,
            Phase::Intent | Phase::Outcome | Phase::Denied | Phase::Access
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Intent => "intent",
            Phase::Outcome => "outcome",
            Phase::Denied => "denied",
            Phase::Access => "access",
            Phase::DenialsSummary => "denials_summary",
            Phase::Repair => "repair",
            Phase::Checkpoint => "checkpoint",
            Phase::DroppedSummary => "dropped_summary",
            Phase::ChainHead => "chain_head",
        }
    }
}

/// What a delete (or audited push) removes or writes; what an access event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    ManifestByDigest,
    ManifestByTag,
    Blob,
    ManifestPush,
    /// A manifest GET (by tag or digest): a pull event.
    ManifestPull,
    /// A credential check: a login event.
    Login,
}

/// The kinds of records `audit.events` turns on (`delete` is always on) and `audit
/// show --kind` picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Delete,
    Push,
    Pull,
    Login,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Delete, Kind::Push, Kind::Pull, Kind::Login];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Delete => "delete",
            Kind::Push => "push",
            Kind::Pull => "pull",
            Kind::Login => "login",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl Target {
    /// The kind of record a request record about this target is.
    pub fn kind(self) -> Kind {
        match self {
            Target::ManifestByDigest | Target::ManifestByTag | Target::Blob => Kind::Delete,
            Target::ManifestPush => Kind::Push,
            Target::ManifestPull => Kind::Pull,
            Target::Login => Kind::Login,
        }
    }
}

/// What the proxy decided about the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allowed,
    Denied,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Denied => "denied",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Deleted,
    Pushed,
    /// A manifest GET answered 2xx.
    Pulled,
    /// A credential check that succeeded.
    LoggedIn,
    Denied,
    Failed,
    /// Only in verification: an intent whose outcome was never written (a crash).
    Unknown,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Deleted => "deleted",
            Outcome::Pushed => "pushed",
            Outcome::Pulled => "pulled",
            Outcome::LoggedIn => "logged_in",
            Outcome::Denied => "denied",
            Outcome::Failed => "failed",
            Outcome::Unknown => "unknown",
        }
    }
}

/// One audit record. Field order is the order in the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub time: String,
    /// The replica that wrote it (`audit.instance`, default the host name); absent in
    /// files from before replicas were named. Set by the writer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    pub phase: Phase,
    pub request_id: String,
    /// The user, or the access token's name.
    pub user: String,
    /// An access token's owner; absent for users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// `true` when `user` is an access token; absent for users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<bool>,
    pub client: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    pub method: String,
    pub path: String,
    pub repo: String,
    pub target: Target,
    pub reference: String,
    /// The manifest digest (a delete by tag: what the tag pointed at before).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Push and pull events: the manifest's size in bytes and media type (the request's
    /// `Content-Length`/`Content-Type` for a push, the upstream's answer for a pull).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Tags that pointed at the digest before the delete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// False when the tag search hit its bound: `tags` may miss some.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags_complete: Option<bool>,
    pub decision: Decision,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Position in the chain (0: a file from before the keyed chain).
    #[serde(default)]
    pub seq: u64,
    /// Hash of the previous line (see [`Chain`]).
    #[serde(default)]
    pub prev: String,
    /// The line's own MAC (see [`Chain::mac`]); always the last field.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
}

/// A record the writer makes itself (checkpoint, repair, denials summary).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub time: String,
    /// As [`Record::instance`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    pub phase: Phase,
    /// Denials summary: whose denials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Denials summary: how many were not written one by one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Denials summary: the time of the first and the last of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last: Option<String>,
    /// Repair: the bytes cut off the end of the file, and their SHA-256.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_removed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removed_sha256: Option<String>,
    /// Dropped summary: the kind of access events dropped (`count` says how many).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<Kind>,
    /// Chain head: the file whose end was read, where it ends (`SEQ:HASH`), where the
    /// sidecar said the chain ends, and where it continues from now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_end: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar_end: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continues_from: Option<String>,
    /// What happened, in words.
    pub reason: String,
    #[serde(default)]
    pub seq: u64,
    #[serde(default)]
    pub prev: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
}

impl Event {
    pub fn new(phase: Phase, reason: String) -> Event {
        Event {
            time: now_rfc3339(),
            instance: None,
            phase,
            user: None,
            count: None,
            first: None,
            last: None,
            bytes_removed: None,
            removed_sha256: None,
            kind: None,
            file: None,
            file_end: None,
            sidecar_end: None,
            continues_from: None,
            reason,
            seq: 0,
            prev: String::new(),
            mac: String::new(),
        }
    }
}

/// Any line of an audit file.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Entry {
    Request(Record),
    Event(Event),
}

#[derive(Deserialize)]
struct Head {
    phase: Phase,
}

impl Entry {
    /// Reads a line: its `phase` says which kind of record it must be.
    pub fn parse(line: &[u8]) -> Result<Entry, serde_json::Error> {
        let head: Head = serde_json::from_slice(line)?;
        Ok(if head.phase.is_request() {
            Entry::Request(serde_json::from_slice(line)?)
        } else {
            Entry::Event(serde_json::from_slice(line)?)
        })
    }

    pub fn phase(&self) -> Phase {
        match self {
            Entry::Request(r) => r.phase,
            Entry::Event(e) => e.phase,
        }
    }

    /// The kind of a request record (`None`: the writer's own records).
    pub fn kind(&self) -> Option<Kind> {
        match self {
            Entry::Request(r) => Some(r.target.kind()),
            Entry::Event(_) => None,
        }
    }

    /// The outcome a request record carries, if any.
    pub fn outcome(&self) -> Option<Outcome> {
        match self {
            Entry::Request(r) => r.outcome,
            Entry::Event(_) => None,
        }
    }

    pub fn seq(&self) -> u64 {
        match self {
            Entry::Request(r) => r.seq,
            Entry::Event(e) => e.seq,
        }
    }

    pub fn prev(&self) -> &str {
        match self {
            Entry::Request(r) => &r.prev,
            Entry::Event(e) => &e.prev,
        }
    }

    pub fn time(&self) -> &str {
        match self {
            Entry::Request(r) => &r.time,
            Entry::Event(e) => &e.time,
        }
    }

    /// The replica that wrote it; `None` in files from before replicas were named.
    pub fn instance(&self) -> Option<&str> {
        match self {
            Entry::Request(r) => r.instance.as_deref(),
            Entry::Event(e) => e.instance.as_deref(),
        }
    }

    /// Names the replica writing it (the writer does, for every line).
    pub fn set_instance(&mut self, instance: &str) {
        let slot = match self {
            Entry::Request(r) => &mut r.instance,
            Entry::Event(e) => &mut e.instance,
        };
        *slot = Some(instance.to_owned());
    }

    /// The line for this entry at chain position `seq` after `prev`, ending in its own
    /// MAC (keyed chain); returns the line and its hash.
    pub fn to_line(&self, seq: u64, prev: &str, chain: &Chain) -> (String, String) {
        let mut e = self.clone();
        match &mut e {
            Entry::Request(r) => (r.seq, r.prev, r.mac) = (seq, prev.to_owned(), String::new()),
            Entry::Event(v) => (v.seq, v.prev, v.mac) = (seq, prev.to_owned(), String::new()),
        }
        // Serializing these structs cannot fail (string keys, no maps of other keys).
        let mut line = serde_json::to_string(&e).unwrap_or_default();
        if let Some(mac) = chain.mac(line.as_bytes()) {
            // `mac` is the last field: the line is the body with it appended.
            line.pop();
            line.push_str(&format!(",\"mac\":\"{mac}\"}}"));
        }
        let hash = chain.hash(line.as_bytes());
        (line, hash)
    }
}

/// SHA-256 of a line, lower-case hex (the unkeyed chain of older files; repair records;
/// the digest of a manifest body the upstream did not name).
pub fn line_hash(line: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, line).as_ref())
}

/// A point of the chain: the record at `seq` hashes to `hash`. Written `SEQ:HASH`, as
/// checkpoints are logged and `audit verify` prints where a chain ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub seq: u64,
    pub hash: String,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.seq, self.hash)
    }
}

impl std::str::FromStr for Position {
    type Err = String;
    fn from_str(s: &str) -> Result<Position, String> {
        let bad = || format!("{s:?} is not SEQ:HASH (a record number, a colon, 64 hex digits)");
        let (seq, hash) = s.split_once(':').ok_or_else(bad)?;
        let seq = seq.parse().map_err(|_| bad())?;
        let ok = hash.len() == 64 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !ok {
            return Err(bad());
        }
        Ok(Position {
            seq,
            hash: hash.to_owned(),
        })
    }
}

/// RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.millisecond()
    )
}

/// Turns a `--since` argument (RFC 3339 with any offset and fraction, or a date
/// `YYYY-MM-DD`) into the records' own format (UTC, milliseconds), so that comparing the
/// two strings compares the times.
pub fn normalize_since(since: &str) -> Result<String, String> {
    use time::format_description::well_known::Rfc3339;
    let full = if since.len() == 10 {
        format!("{since}T00:00:00Z")
    } else {
        since.to_owned()
    };
    let t = time::OffsetDateTime::parse(&full, &Rfc3339)
        .map_err(|e| {
            format!(
                "{since:?} is not a time like 2026-11-23T10:00:00Z or a date like 2026-11-23: {e}"
            )
        })?
        .to_offset(time::UtcOffset::UTC);
    Ok(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    ))
}

/// The client address to record: the peer, unless the peer is a trusted proxy, in which
/// case the right-most `X-Forwarded-For` address that is not itself a trusted proxy
/// (the left-most entries are whatever the client chose to send).
pub fn client_address(
    peer: std::net::IpAddr,
    forwarded_for: &[&str],
    trusted: &[ipnet::IpNet],
) -> std::net::IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    // Right to left: each hop was appended by the one after it, and only hops added by
    // trusted proxies are believed. An entry that cannot be read (`unknown`, a name,
    // garbage) ends the walk at the nearest hop known so far: skipping it would let the
    // client's own left-most entries speak.
    let mut nearest = peer;
    for entry in forwarded_for.iter().flat_map(|v| v.split(',')).rev() {
        let Some(ip) = parse_hop(entry.trim()) else {
            return nearest;
        };
        if !is_trusted(&ip) {
            return ip;
        }
        nearest = ip;
    }
    nearest
}

/// One `X-Forwarded-For` entry: an address, with or without a port (`192.0.2.1:5555`,
/// `[2001:db8::1]:5555`, `[2001:db8::1]`), as load balancers write them.
fn parse_hop(entry: &str) -> Option<std::net::IpAddr> {
    let ip = entry
        .parse::<std::net::IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            entry
                .strip_prefix('[')?
                .strip_suffix(']')?
                .parse::<std::net::Ipv6Addr>()
                .ok()
                .map(std::net::IpAddr::V6)
        })?;
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> Record {
        Record {
            time: "2026-11-23T19:00:00.000Z".into(),
            instance: None,
            phase: Phase::Intent,
            request_id: "r1".into(),
            user: "alice".into(),
            owner: None,
            token: None,
            client: "192.0.2.7".into(),
            user_agent: None,
            method: "DELETE".into(),
            path: "/v2/alice/app/manifests/sha256:x".into(),
            repo: "alice/app".into(),
            target: Target::ManifestByDigest,
            reference: "sha256:x".into(),
            digest: Some("sha256:x".into()),
            size: None,
            media_type: None,
            tags: Some(vec!["a".into(), "b".into()]),
            tags_complete: Some(true),
            decision: Decision::Allowed,
            reason: "granted".into(),
            upstream_status: None,
            outcome: None,
            duration_ms: None,
            seq: 0,
            prev: String::new(),
            mac: String::new(),
        }
    }

    #[test]
    fn lines_chain_and_round_trip() {
        let chain = Chain::keyed(b"0123456789abcdef0123456789abcdef");
        let (l1, h1) = Entry::Request(rec()).to_line(1, GENESIS, &chain);
        let (l2, _) = Entry::Request(rec()).to_line(2, &h1, &chain);
        assert_eq!(h1, chain.hash(l1.as_bytes()));
        assert_ne!(
            h1,
            line_hash(l1.as_bytes()),
            "the keyed hash is plain SHA-256"
        );
        assert_ne!(h1, Chain::keyed(b"another key").hash(l1.as_bytes()));
        let Entry::Request(back) = Entry::parse(l2.as_bytes()).unwrap() else {
            panic!("{l2}")
        };
        assert_eq!((back.seq, back.prev.as_str()), (2, h1.as_str()));
        let (l3, _) =
            Entry::Event(Event::new(Phase::Checkpoint, "c".into())).to_line(3, &h1, &chain);
        assert!(
            matches!(Entry::parse(l3.as_bytes()), Ok(Entry::Event(e)) if e.seq == 3),
            "{l3}"
        );
        assert!(
            l1.starts_with(r#"{"time":"2026-11-23T19:00:00.000Z","phase":"intent""#),
            "{l1}"
        );
    }

    #[test]
    fn positions_are_seq_colon_hash() {
        let h = "0123456789abcdef".repeat(4);
        let p: Position = format!("42:{h}").parse().unwrap();
        assert_eq!((p.seq, p.hash.as_str()), (42, h.as_str()));
        assert_eq!(p.to_string(), format!("42:{h}"));
        for bad in [
            "",
            "42",
            ":abc",
            &format!("x:{h}"),
            &format!("1:{}", &h[1..]),
            &format!("1:{}", h.to_uppercase()),
        ] {
            assert!(bad.parse::<Position>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc_millis() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 24, "{t}");
        assert!(
            t.ends_with('Z') && t.as_bytes()[10] == b'T' && t.as_bytes()[19] == b'.',
            "{t}"
        );
    }

    #[test]
    fn since_is_normalised_to_the_record_format() {
        assert_eq!(
            normalize_since("2026-11-23").unwrap(),
            "2026-11-23T00:00:00.000Z"
        );
        assert_eq!(
            normalize_since("2026-11-23T19:36:34Z").unwrap(),
            "2026-11-23T19:36:34.000Z"
        );
        assert_eq!(
            normalize_since("2026-11-23T21:36:34.04+02:00").unwrap(),
            "2026-11-23T19:36:34.040Z"
        );
        assert!(normalize_since("yesterday").is_err());
        // the record written within that second sorts after it
        assert!(
            "2026-11-23T19:36:34.866Z" >= normalize_since("2026-11-23T19:36:34Z").unwrap().as_str()
        );
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: std::net::IpAddr = "10.1.1.1".parse().unwrap();
        let outside: std::net::IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(client_address(outside, &["203.0.113.9"], &trusted), outside);
        assert_eq!(
            client_address(peer, &["1.2.3.4, 203.0.113.9"], &trusted),
            "203.0.113.9".parse::<std::net::IpAddr>().unwrap()
        );
        assert_eq!(
            client_address(peer, &["203.0.113.9, 10.2.2.2"], &trusted),
            "203.0.113.9".parse::<std::net::IpAddr>().unwrap()
        );
        assert_eq!(client_address(peer, &["garbage"], &trusted), peer);
        assert_eq!(client_address(peer, &[], &trusted), peer);
        // Entries with ports, as some balancers write them, are read.
        let v6: std::net::IpAddr = "2001:db8::1".parse().unwrap();
        let client: std::net::IpAddr = "6.6.6.6".parse().unwrap();
        assert_eq!(
            client_address(peer, &["6.6.6.6, 10.1.2.3:5555"], &trusted),
            client
        );
        assert_eq!(
            client_address(peer, &["6.6.6.6, [2001:db8::1]:5555"], &trusted),
            v6
        );
        assert_eq!(
            client_address(peer, &["6.6.6.6, [2001:db8::1]"], &trusted),
            v6
        );
        assert_eq!(
            client_address(peer, &["6.6.6.6, 203.0.113.9:80"], &trusted),
            "203.0.113.9".parse::<std::net::IpAddr>().unwrap()
        );
        // An entry that cannot be read stops the walk: the client's own left-most
        // entries are never reached past it.
        assert_eq!(client_address(peer, &["6.6.6.6, unknown"], &trusted), peer);
        assert_eq!(
            client_address(peer, &["6.6.6.6", "unknown, 10.2.2.2"], &trusted),
            "10.2.2.2".parse::<std::net::IpAddr>().unwrap()
        );
        assert_eq!(client_address(peer, &["6.6.6.6, _hidden"], &trusted), peer);
    }
}
