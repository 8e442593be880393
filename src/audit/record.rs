//! PURE: an audit record and how it is chained.
//!
//! One record per line (JSON Lines). Every line carries `prev`: the SHA-256 (hex) of the
//! previous line's bytes (without its newline), so editing, removing or reordering a line
//! breaks the chain at the next one. The first record of a rotated file names the last
//! hash of the file before it, so the chain runs across files.

use ring::digest;
use serde::{Deserialize, Serialize};

/// `prev` of the very first record ever written.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What a record is in the life of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Written and fsync'd before an allowed delete is forwarded.
    Intent,
    /// Written after the upstream answered (or failed).
    Outcome,
    /// A refused request: the only record it gets.
    Denied,
}

/// What a delete (or audited push) removes or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    ManifestByDigest,
    ManifestByTag,
    Blob,
    ManifestPush,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Deleted,
    Pushed,
    Denied,
    Failed,
    /// Only in verification: an intent whose outcome was never written (a crash).
    Unknown,
}

/// One audit record. Field order is the order in the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub time: String,
    pub phase: Phase,
    pub request_id: String,
    pub user: String,
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
    /// Tags that pointed at the digest before the delete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// False when the tag search hit its bound: `tags` may miss some.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags_complete: Option<bool>,
    pub decision: String,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// SHA-256 of the previous line.
    #[serde(default)]
    pub prev: String,
}

/// SHA-256 of a line, lower-case hex.
pub fn line_hash(line: &[u8]) -> String {
    let d = digest::digest(&digest::SHA256, line);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

impl Record {
    /// The line for this record, chained to `prev`; returns the line and its hash.
    pub fn to_line(&self, prev: &str) -> (String, String) {
        let mut r = self.clone();
        r.prev = prev.to_owned();
        let line = serde_json::to_string(&r)
            .unwrap_or_else(|e| format!("{{\"serialize_error\":\"{e}\"}}"));
        let hash = line_hash(line.as_bytes());
        (line, hash)
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
    let hops: Vec<std::net::IpAddr> = forwarded_for
        .iter()
        .flat_map(|v| v.split(','))
        .filter_map(|h| h.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| ip.to_canonical())
        .collect();
    hops.into_iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> Record {
        Record {
            time: "2026-11-23T19:00:00.000Z".into(),
            phase: Phase::Intent,
            request_id: "r1".into(),
            user: "alice".into(),
            client: "192.0.2.7".into(),
            user_agent: None,
            method: "DELETE".into(),
            path: "/v2/alice/app/manifests/sha256:x".into(),
            repo: "alice/app".into(),
            target: Target::ManifestByDigest,
            reference: "sha256:x".into(),
            digest: Some("sha256:x".into()),
            tags: Some(vec!["a".into(), "b".into()]),
            tags_complete: Some(true),
            decision: "allowed".into(),
            reason: "granted".into(),
            upstream_status: None,
            outcome: None,
            duration_ms: None,
            prev: String::new(),
        }
    }

    #[test]
    fn lines_chain_and_round_trip() {
        let (l1, h1) = rec().to_line(GENESIS);
        let (l2, _) = rec().to_line(&h1);
        assert_eq!(h1, line_hash(l1.as_bytes()));
        let back: Record = serde_json::from_str(&l2).unwrap();
        assert_eq!(back.prev, h1);
        assert!(
            l1.starts_with(r#"{"time":"2026-11-23T19:00:00.000Z","phase":"intent""#),
            "{l1}"
        );
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
    }
}
