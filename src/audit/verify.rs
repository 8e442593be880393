//! PURE: checking audit files. Each line must be a record whose `prev` is the hash of the
//! line before it, across files in the order given. Intents are matched to outcomes by
//! request id; an intent left without one is an unknown outcome (a crash between the
//! two). The first broken place is reported by file and line.

use super::record::{line_hash, Outcome, Phase, Record, GENESIS};
use std::collections::HashMap;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub records: u64,
    pub deletes: u64,
    pub pushes: u64,
    pub denials: u64,
    pub failures: u64,
    pub unknown: u64,
    /// `prev` of the first record: GENESIS, or the last hash of an earlier file not given.
    pub chain_start: Option<String>,
    /// The last line's hash: what the next file must start from.
    pub chain_end: Option<String>,
    /// Request ids of intents without outcome.
    pub unknown_ids: Vec<String>,
    /// `file:line: what` of the first break, if any.
    pub broken: Option<String>,
}

/// Verifies files in order. `files` is (name, content).
pub fn verify<'a>(files: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Report {
    let mut r = Report::default();
    let mut prev: Option<String> = None;
    let mut open: HashMap<String, ()> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    'files: for (name, content) in files {
        if content.is_empty() {
            continue;
        }
        let ends_cleanly = content.ends_with(b"\n");
        let lines: Vec<&[u8]> = content.split(|&b| b == b'\n').collect();
        let n = lines.len();
        for (i, line) in lines.into_iter().enumerate() {
            let at = format!("{name}:{}", i + 1);
            if line.is_empty() {
                if i + 1 == n && ends_cleanly {
                    break;
                }
                r.broken = Some(format!("{at}: empty line"));
                break 'files;
            }
            let rec: Record = match serde_json::from_slice(line) {
                Ok(rec) => rec,
                Err(e) => {
                    let torn = i + 1 == n && !ends_cleanly;
                    r.broken = Some(if torn {
                        format!("{at}: last line is incomplete (torn write): {e}")
                    } else {
                        format!("{at}: not an audit record: {e}")
                    });
                    break 'files;
                }
            };
            match &prev {
                None => r.chain_start = Some(rec.prev.clone()),
                Some(p) if *p != rec.prev => {
                    r.broken = Some(format!(
                        "{at}: chain broken: prev is {} but the line before hashes to {p} (a line was edited, removed or reordered)",
                        short(&rec.prev)
                    ));
                    break 'files;
                }
                Some(_) => {}
            }
            prev = Some(line_hash(line));
            r.records += 1;
            match rec.phase {
                Phase::Intent => {
                    if open.insert(rec.request_id.clone(), ()).is_none() {
                        order.push(rec.request_id.clone());
                    }
                }
                Phase::Denied => r.denials += 1,
                Phase::Outcome => {
                    open.remove(&rec.request_id);
                    match rec.outcome {
                        Some(Outcome::Deleted) => r.deletes += 1,
                        Some(Outcome::Pushed) => r.pushes += 1,
                        Some(Outcome::Failed) => r.failures += 1,
                        Some(Outcome::Denied) => r.denials += 1,
                        Some(Outcome::Unknown) | None => r.unknown += 1,
                    }
                }
            }
        }
    }
    r.chain_end = prev;
    r.unknown_ids = order
        .into_iter()
        .filter(|id| open.contains_key(id))
        .collect();
    r.unknown += r.unknown_ids.len() as u64;
    if r.chain_start.as_deref() == Some(GENESIS) {
        r.chain_start = Some("genesis".into());
    }
    r
}

fn short(h: &str) -> &str {
    h.get(..16).unwrap_or(h)
}

#[cfg(test)]
mod tests {
    use super::super::record::{Record, Target};
    use super::*;

    fn rec(phase: Phase, id: &str, outcome: Option<Outcome>) -> Record {
        Record {
            time: "2026-11-23T19:00:00.000Z".into(),
            phase,
            request_id: id.into(),
            user: "alice".into(),
            client: "127.0.0.1".into(),
            user_agent: None,
            method: "DELETE".into(),
            path: "/v2/a/manifests/sha256:x".into(),
            repo: "a".into(),
            target: Target::ManifestByDigest,
            reference: "sha256:x".into(),
            digest: None,
            tags: None,
            tags_complete: None,
            decision: "allowed".into(),
            reason: String::new(),
            upstream_status: None,
            outcome,
            duration_ms: None,
            prev: String::new(),
        }
    }

    fn file(records: &[Record], start: &str) -> (String, String) {
        let mut prev = start.to_owned();
        let mut out = String::new();
        for r in records {
            let (line, h) = r.to_line(&prev);
            out.push_str(&line);
            out.push('\n');
            prev = h;
        }
        (out, prev)
    }

    fn sample() -> Vec<Record> {
        vec![
            rec(Phase::Intent, "r1", None),
            rec(Phase::Outcome, "r1", Some(Outcome::Deleted)),
            rec(Phase::Denied, "r2", Some(Outcome::Denied)),
            rec(Phase::Intent, "r3", None),
            rec(Phase::Outcome, "r3", Some(Outcome::Failed)),
            rec(Phase::Intent, "r4", None),
        ]
    }

    #[test]
    fn counts_and_unknown_outcomes() {
        let (f, _) = file(&sample(), GENESIS);
        let r = verify([("audit.jsonl", f.as_bytes())]);
        assert_eq!(r.broken, None);
        assert_eq!(
            (r.records, r.deletes, r.denials, r.failures, r.unknown),
            (6, 1, 1, 1, 1)
        );
        assert_eq!(r.unknown_ids, ["r4"]);
        assert_eq!(r.chain_start.as_deref(), Some("genesis"));
    }

    #[test]
    fn the_chain_runs_across_files() {
        let recs = sample();
        let (a, end) = file(&recs[..3], GENESIS);
        let (b, _) = file(&recs[3..], &end);
        let r = verify([("a", a.as_bytes()), ("b", b.as_bytes())]);
        assert_eq!(r.broken, None, "{r:?}");
        let r = verify([("b", b.as_bytes()), ("a", a.as_bytes())]);
        assert!(r.broken.unwrap().starts_with("a:1: chain broken"));
    }

    #[test]
    fn edits_removals_and_reorders_are_found() {
        let (f, _) = file(&sample(), GENESIS);
        let lines: Vec<&str> = f.lines().collect();
        let join = |l: Vec<&str>| l.join("\n") + "\n";
        let edited = f.replacen("\"user\":\"alice\"", "\"user\":\"mallory\"", 2);
        let r = verify([("f", edited.as_bytes())]);
        assert!(
            r.broken
                .as_deref()
                .unwrap()
                .starts_with("f:2: chain broken"),
            "{r:?}"
        );
        let mut removed = lines.clone();
        removed.remove(2);
        let r = verify([("f", join(removed).as_bytes())]);
        assert!(
            r.broken
                .as_deref()
                .unwrap()
                .starts_with("f:3: chain broken"),
            "{r:?}"
        );
        let mut swapped = lines.clone();
        swapped.swap(1, 2);
        let r = verify([("f", join(swapped).as_bytes())]);
        assert!(
            r.broken
                .as_deref()
                .unwrap()
                .starts_with("f:2: chain broken"),
            "{r:?}"
        );
        let r = verify([("f", b"{not json}\n".as_slice())]);
        assert!(
            r.broken
                .as_deref()
                .unwrap()
                .starts_with("f:1: not an audit record"),
            "{r:?}"
        );
        let torn = &f.as_bytes()[..f.len() - 10];
        let r = verify([("f", torn)]);
        assert!(r.broken.as_deref().unwrap().contains("torn write"), "{r:?}");
    }
}
