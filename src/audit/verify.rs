//! PURE: checking audit files. Each line must be a record that carries its own valid
//! `mac` (keyed chain: so the last line, which no `prev` covers yet, cannot be changed
//! either), whose `prev` is the hash of the line before it (HMAC-SHA-256 under the audit
//! key; plain SHA-256 for files from before the keyed chain) and whose `seq` is one more
//! than the line before it, across files in the order given. The first record must start the chain (genesis) or continue from a
//! position the caller vouches for (`start`, e.g. a checkpoint from the log): a file that
//! begins mid-chain is a cut head, not a new start. Each checkpoint the caller gives
//! (`SEQ:HASH` from the log) must be reached and match: a file that ends before it was
//! cut. Intents are matched to outcomes by request id; an intent left without one is an
//! unknown outcome (a crash between the two). The first broken place is reported by file
//! and line.

use super::record::{Chain, Entry, Outcome, Phase, Position, Target, GENESIS};
use std::collections::HashMap;

/// What the caller knows besides the files.
#[derive(Debug)]
pub struct Options<'a> {
    pub chain: &'a Chain,
    /// The chain position just before the first record given (`--start`); `None`: the
    /// first record must be the very first of the chain.
    pub start: Option<Position>,
    /// Positions known from outside (the log's checkpoints): each must be reached and match.
    pub checkpoints: Vec<Position>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Lines read, of every kind.
    pub records: u64,
    pub deletes: u64,
    pub pushes: u64,
    /// Denied records, plus the denials counted in summaries.
    pub denials: u64,
    /// Summary records of denials not written one by one, and how many they stand for.
    pub denial_summaries: u64,
    pub summarized_denials: u64,
    pub failures: u64,
    pub unknown: u64,
    /// Repairs of a torn tail recorded by the writer.
    pub repairs: u64,
    /// Access events (`audit.events`): manifest pulls, logins that succeeded and failed.
    pub pulls: u64,
    pub logins: u64,
    pub failed_logins: u64,
    /// Access events not written (a full queue, a failed write, failed logins over
    /// their budget), as the writer's summaries count them.
    pub dropped: u64,
    /// Starts at which the files and the sidecar disagreed (`chain_head` records).
    pub chain_heads: u64,
    /// Checkpoint records in the files; the last one.
    pub checkpoints: u64,
    pub last_checkpoint: Option<String>,
    /// Checkpoints given by the caller that were reached and matched.
    pub checkpoints_matched: u64,
    /// `genesis`, or the `SEQ:HASH` the files continue from (`start`).
    pub chain_start: Option<String>,
    /// The last line's position `SEQ:HASH` (the hash alone for unkeyed files): what the
    /// next file must continue from.
    pub chain_end: Option<String>,
    /// Request ids of intents without outcome.
    pub unknown_ids: Vec<String>,
    /// `file:line: what` of the first break, if any.
    pub broken: Option<String>,
}

/// Verifies files in order. `files` is (name, content).
pub fn verify<'a>(files: impl IntoIterator<Item = (&'a str, &'a [u8])>, opts: &Options) -> Report {
    let mut r = Report::default();
    // The previous line's position (seq 0: an unkeyed line without one).
    let mut prev: Option<Position> = None;
    let mut open: HashMap<String, ()> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut last_name = String::new();
    let checks: HashMap<u64, &str> = opts
        .checkpoints
        .iter()
        .map(|c| (c.seq, c.hash.as_str()))
        .collect();
    let keyed = opts.chain.is_keyed();
    'files: for (name, content) in files {
        last_name = name.to_owned();
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
            let entry = match Entry::parse(line) {
                Ok(e) => e,
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
            let seq = entry.seq();
            if keyed && seq == 0 {
                r.broken = Some(format!(
                    "{at}: no `seq`: a record from before the keyed chain (check such files with --unkeyed)"
                ));
                break 'files;
            }
            if let Err(b) = opts.chain.check_mac(line) {
                r.broken = Some(format!("{at}: {b}"));
                break 'files;
            }
            if let Err(b) = check_link(prev.as_ref(), &entry, opts) {
                r.broken = Some(format!("{at}: {b}"));
                break 'files;
            }
            if prev.is_none() {
                r.chain_start = Some(match &opts.start {
                    Some(s) if entry.prev() == s.hash => s.to_string(),
                    _ => "genesis".to_owned(),
                });
            }
            let hash = opts.chain.hash(line);
            if let Some(want) = checks.get(&seq).filter(|_| seq > 0) {
                if *want != hash {
                    r.broken = Some(format!(
                        "{at}: checkpoint {seq}:{} does not match: record {seq} hashes to {} (the file was rewritten)",
                        short(want),
                        short(&hash)
                    ));
                    break 'files;
                }
                r.checkpoints_matched += 1;
            }
            prev = Some(Position { seq, hash });
            r.records += 1;
            count(&mut r, &entry, &mut open, &mut order);
            if entry.phase() == Phase::Checkpoint {
                r.last_checkpoint = prev.as_ref().map(ToString::to_string);
            }
        }
    }
    r.chain_end = prev.as_ref().map(|p| match p.seq {
        0 => p.hash.clone(),
        _ => p.to_string(),
    });
    if r.broken.is_none() {
        r.broken = missed_checkpoint(prev.as_ref(), opts, &last_name);
    }
    r.unknown_ids = order
        .into_iter()
        .filter(|id| open.contains_key(id))
        .collect();
    r.unknown += r.unknown_ids.len() as u64;
    r
}

/// Whether `entry` may follow `prev` (`None`: it is the first record given).
fn check_link(prev: Option<&Position>, entry: &Entry, opts: &Options) -> Result<(), String> {
    let seq = entry.seq();
    let Some(p) = prev else {
        let after = seq.saturating_sub(1);
        if let Some(s) = &opts.start {
            if entry.prev() != s.hash || (seq != 0 && s.seq.checked_add(1) != Some(seq)) {
                return Err(format!(
                    "the chain does not continue from --start {}: this record is {seq} after {}",
                    short_pos(s),
                    short(entry.prev())
                ));
            }
            return Ok(());
        }
        if entry.prev() != GENESIS || seq > 1 {
            return Err(format!(
                "the chain does not start at genesis: it continues from record {after} ({}), which the files given do not hold: earlier records are missing or were cut (give the earlier files first, or --start SEQ:HASH from a checkpoint)",
                short(entry.prev())
            ));
        }
        return Ok(());
    };
    if entry.prev() != p.hash {
        return Err(format!(
            "chain broken: prev is {} but the line before hashes to {} (a line was edited, removed or reordered, or another key was used)",
            short(entry.prev()),
            short(&p.hash)
        ));
    }
    if (seq != 0 || p.seq != 0) && p.seq.checked_add(1) != Some(seq) {
        return Err(format!(
            "chain broken: record {seq} follows record {} (records were removed or inserted)",
            p.seq
        ));
    }
    Ok(())
}

fn count(r: &mut Report, entry: &Entry, open: &mut HashMap<String, ()>, order: &mut Vec<String>) {
    match entry {
        Entry::Request(rec) => match rec.phase {
            Phase::Intent => {
                if open.insert(rec.request_id.clone(), ()).is_none() {
                    order.push(rec.request_id.clone());
                }
            }
            Phase::Denied => r.denials += 1,
            Phase::Access => match (rec.target, rec.outcome) {
                (_, Some(Outcome::Denied)) => r.denials += 1,
                (Target::Login, Some(Outcome::LoggedIn)) => r.logins += 1,
                (Target::Login, _) => r.failed_logins += 1,
                (Target::ManifestPull, Some(Outcome::Pulled)) => r.pulls += 1,
                (_, Some(Outcome::Pushed)) => r.pushes += 1,
                _ => {}
            },
            _ => {
                open.remove(&rec.request_id);
                match rec.outcome {
                    Some(Outcome::Deleted) => r.deletes += 1,
                    Some(Outcome::Pushed) => r.pushes += 1,
                    Some(Outcome::Failed) => r.failures += 1,
                    Some(Outcome::Denied) => r.denials += 1,
                    // Only access records carry these.
                    Some(Outcome::Pulled | Outcome::LoggedIn) => {}
                    Some(Outcome::Unknown) | None => r.unknown += 1,
                }
            }
        },
        Entry::Event(e) => match e.phase {
            Phase::DenialsSummary => {
                let n = e.count.unwrap_or(0);
                r.denial_summaries += 1;
                r.summarized_denials = r.summarized_denials.saturating_add(n);
                r.denials = r.denials.saturating_add(n);
            }
            Phase::Repair => r.repairs += 1,
            Phase::DroppedSummary => r.dropped = r.dropped.saturating_add(e.count.unwrap_or(0)),
            Phase::ChainHead => r.chain_heads += 1,
            _ => r.checkpoints += 1,
        },
    }
}

/// The first checkpoint given that the files never reached (or that lies before them).
fn missed_checkpoint(end: Option<&Position>, opts: &Options, last_name: &str) -> Option<String> {
    let first_seq = opts.start.as_ref().map_or(1, |s| s.seq.saturating_add(1));
    let end_seq = end.map_or(first_seq.saturating_sub(1), |p| p.seq);
    let mut cps: Vec<&Position> = opts.checkpoints.iter().collect();
    cps.sort_by_key(|c| c.seq);
    cps.into_iter().find_map(|c| {
        if c.seq > end_seq {
            Some(format!(
                "{last_name}: the files end at record {end_seq}, before checkpoint {}: records were cut from the end",
                short_pos(c)
            ))
        } else if c.seq < first_seq || c.seq == 0 {
            Some(format!(
                "checkpoint {} lies before the first record given ({first_seq}): give the file that holds it",
                short_pos(c)
            ))
        } else {
            None
        }
    })
}

/// The files of one replica: its instance id (`None`: files from before replicas were
/// named) and its files in the order given.
#[derive(Debug, PartialEq, Eq)]
pub struct Replica<'a> {
    pub instance: Option<String>,
    pub files: Vec<(&'a str, &'a [u8])>,
}

/// Splits files into one chain per replica, by the instance id of each file's first
/// record, keeping the order given within a replica (oldest first) and the order in
/// which replicas first appear. Replicas write independent chains: each is verified on
/// its own. A file without a record joins the replica before it (a rotation that has
/// not written yet); a first line that is not a record keeps its file with the unnamed
/// ones, where verifying reports it.
pub fn by_instance<'a>(files: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Vec<Replica<'a>> {
    let mut out: Vec<Replica<'a>> = Vec::new();
    for (name, content) in files {
        let first = content.split(|&b| b == b'\n').find(|l| !l.is_empty());
        let instance = match first {
            None => match out.last_mut() {
                Some(r) => {
                    r.files.push((name, content));
                    continue;
                }
                None => None,
            },
            Some(line) => Entry::parse(line)
                .ok()
                .and_then(|e| e.instance().map(str::to_owned)),
        };
        match out.iter_mut().find(|r| r.instance == instance) {
            Some(r) => r.files.push((name, content)),
            None => out.push(Replica {
                instance,
                files: vec![(name, content)],
            }),
        }
    }
    out
}

fn short(h: &str) -> &str {
    h.get(..16).unwrap_or(h)
}

fn short_pos(p: &Position) -> String {
    format!("{}:{}", p.seq, short(&p.hash))
}

#[cfg(test)]
mod tests {
    use super::super::record::{Event, Record, Target};
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn rec(phase: Phase, id: &str, outcome: Option<Outcome>) -> Entry {
        Entry::Request(Record {
            time: "2026-11-23T19:00:00.000Z".into(),
            instance: None,
            phase,
            request_id: id.into(),
            user: "alice".into(),
            owner: None,
            token: None,
            client: "127.0.0.1".into(),
            user_agent: None,
            method: "DELETE".into(),
            path: "/v2/a/manifests/sha256:x".into(),
            repo: "a".into(),
            target: Target::ManifestByDigest,
            reference: "sha256:x".into(),
            digest: None,
            size: None,
            media_type: None,
            tags: None,
            tags_complete: None,
            decision: crate::audit::Decision::Allowed,
            reason: String::new(),
            upstream_status: None,
            outcome,
            duration_ms: None,
            seq: 0,
            prev: String::new(),
            mac: String::new(),
        })
    }

    /// The lines of `entries` chained after `start`; the text and where it ends.
    fn file(entries: &[Entry], start: &Position, chain: &Chain) -> (String, Position) {
        let mut at = start.clone();
        let mut out = String::new();
        for e in entries {
            let (line, h) = e.to_line(at.seq + 1, &at.hash, chain);
            out.push_str(&line);
            out.push('\n');
            at = Position {
                seq: at.seq + 1,
                hash: h,
            };
        }
        (out, at)
    }

    fn genesis() -> Position {
        Position {
            seq: 0,
            hash: GENESIS.into(),
        }
    }

    fn sample() -> Vec<Entry> {
        vec![
            rec(Phase::Intent, "r1", None),
            rec(Phase::Outcome, "r1", Some(Outcome::Deleted)),
            rec(Phase::Denied, "r2", Some(Outcome::Denied)),
            rec(Phase::Intent, "r3", None),
            rec(Phase::Outcome, "r3", Some(Outcome::Failed)),
            rec(Phase::Intent, "r4", None),
        ]
    }

    fn opts(chain: &Chain) -> Options<'_> {
        Options {
            chain,
            start: None,
            checkpoints: Vec::new(),
        }
    }

    fn broken(r: &Report) -> &str {
        r.broken
            .as_deref()
            .unwrap_or_else(|| panic!("not broken: {r:?}"))
    }

    #[test]
    fn counts_and_unknown_outcomes() {
        let chain = Chain::keyed(KEY);
        let mut entries = sample();
        let mut summary = Event::new(Phase::DenialsSummary, "5 more".into());
        summary.count = Some(5);
        entries.push(Entry::Event(summary));
        entries.push(Entry::Event(Event::new(Phase::Checkpoint, String::new())));
        let (f, end) = file(&entries, &genesis(), &chain);
        let r = verify([("audit.jsonl", f.as_bytes())], &opts(&chain));
        assert_eq!(r.broken, None);
        assert_eq!(
            (r.records, r.deletes, r.denials, r.failures, r.unknown),
            (8, 1, 6, 1, 1)
        );
        assert_eq!(
            (r.denial_summaries, r.summarized_denials, r.checkpoints),
            (1, 5, 1)
        );
        assert_eq!(r.unknown_ids, ["r4"]);
        assert_eq!(r.chain_start.as_deref(), Some("genesis"));
        assert_eq!(r.chain_end, Some(end.to_string()));
        assert_eq!(r.last_checkpoint, Some(end.to_string()));
    }

    #[test]
    fn the_chain_runs_across_files() {
        let chain = Chain::keyed(KEY);
        let recs = sample();
        let (a, end) = file(&recs[..3], &genesis(), &chain);
        let (b, _) = file(&recs[3..], &end, &chain);
        let r = verify([("a", a.as_bytes()), ("b", b.as_bytes())], &opts(&chain));
        assert_eq!(r.broken, None, "{r:?}");
        let r = verify([("b", b.as_bytes()), ("a", a.as_bytes())], &opts(&chain));
        assert!(
            broken(&r).starts_with("b:1: the chain does not start at genesis"),
            "{r:?}"
        );
        // A file alone that starts mid-chain is a cut head, unless told where it starts.
        let r = verify([("b", b.as_bytes())], &opts(&chain));
        assert!(
            broken(&r).starts_with(
                "b:1: the chain does not start at genesis: it continues from record 3"
            ),
            "{r:?}"
        );
        let mut o = opts(&chain);
        o.start = Some(end.clone());
        let r = verify([("b", b.as_bytes())], &o);
        assert_eq!(r.broken, None, "{r:?}");
        assert_eq!(r.chain_start, Some(end.to_string()));
        o.start = Some(Position {
            seq: 3,
            hash: "ab".repeat(32),
        });
        let r = verify([("b", b.as_bytes())], &o);
        assert!(
            broken(&r).contains("does not continue from --start 3:abab"),
            "{r:?}"
        );
    }

    #[test]
    fn edits_removals_and_reorders_are_found() {
        let chain = Chain::keyed(KEY);
        let (f, _) = file(&sample(), &genesis(), &chain);
        let o = opts(&chain);
        let lines: Vec<&str> = f.lines().collect();
        let join = |l: Vec<&str>| l.join("\n") + "\n";
        let edited = f.replacen("\"user\":\"alice\"", "\"user\":\"mallory\"", 2);
        let r = verify([("f", edited.as_bytes())], &o);
        assert!(
            broken(&r).starts_with("f:1: the record's own MAC does not match"),
            "{r:?}"
        );
        let mut removed = lines.clone();
        removed.remove(2);
        let r = verify([("f", join(removed).as_bytes())], &o);
        assert!(broken(&r).starts_with("f:3: chain broken"), "{r:?}");
        let mut swapped = lines.clone();
        swapped.swap(1, 2);
        let r = verify([("f", join(swapped).as_bytes())], &o);
        assert!(broken(&r).starts_with("f:2: chain broken"), "{r:?}");
        let r = verify([("f", b"{not json}\n".as_slice())], &o);
        assert!(broken(&r).starts_with("f:1: not an audit record"), "{r:?}");
        let torn = &f.as_bytes()[..f.len() - 10];
        let r = verify([("f", torn)], &o);
        assert!(broken(&r).contains("torn write"), "{r:?}");
    }

    /// The forgery of the issue: drop the head of the file, turn bob's delete into
    /// alice's from another address, and recompute every hash, with plain SHA-256 and
    /// with a wrong key. Each fails; so does keeping the head but rewriting with them.
    #[test]
    fn a_rewritten_chain_fails_without_the_key() {
        let chain = Chain::keyed(KEY);
        let mut entries: Vec<Entry> = (0..200)
            .map(|i| rec(Phase::Denied, &format!("r{i}"), Some(Outcome::Denied)))
            .collect();
        if let Entry::Request(r) = &mut entries[170] {
            r.user = "bob".into();
            r.client = "192.0.2.9".into();
        }
        let (f, _) = file(&entries, &genesis(), &chain);
        assert_eq!(verify([("f", f.as_bytes())], &opts(&chain)).broken, None);
        let forged_entries: Vec<Entry> = entries[150..]
            .iter()
            .cloned()
            .map(|mut e| {
                if let Entry::Request(r) = &mut e {
                    if r.user == "bob" {
                        r.user = "alice".into();
                        r.client = "198.51.100.4".into();
                    }
                }
                e
            })
            .collect();
        for forger in [
            Chain::Unkeyed,
            Chain::keyed(b"a guess at the key, 32 bytes..."),
        ] {
            // From genesis, as if the first 150 lines never existed.
            let (forged, _) = file(&forged_entries, &genesis(), &forger);
            let r = verify([("f", forged.as_bytes())], &opts(&chain));
            assert_forged(&r, &forger);
            // Continuing the real record 150, keeping its seq.
            let start = Position {
                seq: 150,
                hash: chain.hash(f.lines().nth(149).unwrap().as_bytes()),
            };
            let (forged, _) = file(&forged_entries, &start, &forger);
            let mut o = opts(&chain);
            o.start = Some(start.clone());
            let r = verify([("f", forged.as_bytes())], &o);
            assert_forged(&r, &forger);
            // Without the head, and told nothing.
            let r = verify([("f", forged.as_bytes())], &opts(&chain));
            assert_forged(&r, &forger);
        }
        // Cutting the head alone (no rewrite) is found too.
        let tail: String = f.lines().skip(150).map(|l| format!("{l}\n")).collect();
        let r = verify([("f", tail.as_bytes())], &opts(&chain));
        assert!(
            broken(&r).starts_with(
                "f:1: the chain does not start at genesis: it continues from record 150"
            ),
            "{r:?}"
        );
    }

    /// A line made without the key fails on its own MAC, on its first line.
    fn assert_forged(r: &Report, forger: &Chain) {
        let want = match forger {
            Chain::Unkeyed => "f:1: no `mac`",
            Chain::Keyed(_) => "f:1: the record's own MAC does not match",
        };
        assert!(broken(r).starts_with(want), "{forger:?}: {r:?}");
    }

    /// The forgery of the review (F4): the last line, which no `prev` covers yet, is
    /// changed without the key (an outcome turned into `failed`/404, `seq` and `prev`
    /// untouched); so is the only line of a file. Each fails on its own MAC, whatever
    /// is done with the `mac` field: kept, dropped, or taken from another line.
    #[test]
    fn the_last_line_cannot_be_edited_without_the_key() {
        let chain = Chain::keyed(KEY);
        let mut entries = sample();
        entries.truncate(2);
        if let Entry::Request(r) = &mut entries[1] {
            r.upstream_status = Some(202);
        }
        let (f, _) = file(&entries, &genesis(), &chain);
        assert_eq!(verify([("f", f.as_bytes())], &opts(&chain)).broken, None);
        let lines: Vec<&str> = f.lines().collect();
        let forged_last = lines[1]
            .replace("\"outcome\":\"deleted\"", "\"outcome\":\"failed\"")
            .replace("\"upstream_status\":202", "\"upstream_status\":404");
        assert_ne!(forged_last, lines[1]);
        let other_mac = &lines[0][lines[0].len() - 66..];
        let without_mac = {
            let (body, _) = super::super::record::split_mac(forged_last.as_bytes()).unwrap();
            String::from_utf8(body).unwrap()
        };
        let borrowed = format!("{}{other_mac}", &forged_last[..forged_last.len() - 66]);
        for last in [&forged_last, &without_mac, &borrowed] {
            let text = format!("{}\n{last}\n", lines[0]);
            let r = verify([("f", text.as_bytes())], &opts(&chain));
            let b = broken(&r);
            assert!(
                b.starts_with("f:2: ") && b.to_lowercase().contains("mac"),
                "{last}: {r:?}"
            );
            // The only line of a file, too.
            let (one, _) = file(&entries[1..], &genesis(), &chain);
            let one = one.replacen("\"outcome\":\"deleted\"", "\"outcome\":\"failed\"", 1);
            let r = verify([("f", one.as_bytes())], &opts(&chain));
            assert!(broken(&r).starts_with("f:1: the record's own MAC"), "{r:?}");
        }
    }

    #[test]
    fn checkpoints_from_outside_find_a_cut_tail_and_a_rewrite() {
        let chain = Chain::keyed(KEY);
        let mut entries = sample();
        entries.push(Entry::Event(Event::new(Phase::Checkpoint, String::new())));
        entries.extend(sample());
        let (f, end) = file(&entries, &genesis(), &chain);
        let lines: Vec<&str> = f.lines().collect();
        let cp = Position {
            seq: 7,
            hash: chain.hash(lines[6].as_bytes()),
        };
        let mut o = opts(&chain);
        o.checkpoints = vec![cp.clone(), end.clone()];
        let r = verify([("f", f.as_bytes())], &o);
        assert_eq!(
            (r.broken.as_deref(), r.checkpoints_matched),
            (None, 2),
            "{r:?}"
        );
        // The last 3 records cut: still a valid chain, but short of the last checkpoint.
        let cut: String = lines[..10].iter().map(|l| format!("{l}\n")).collect();
        let r = verify([("f", cut.as_bytes())], &o);
        assert!(
            broken(&r).starts_with("f: the files end at record 10, before checkpoint 13:"),
            "{r:?}"
        );
        assert_eq!(verify([("f", cut.as_bytes())], &opts(&chain)).broken, None);
        // A checkpoint whose hash does not match the record at its position.
        o.checkpoints = vec![Position {
            seq: 7,
            hash: "0".repeat(64),
        }];
        let r = verify([("f", f.as_bytes())], &o);
        assert!(broken(&r).starts_with("f:7: checkpoint 7:"), "{r:?}");
        // Before the first record given.
        let mut o = opts(&chain);
        o.start = Some(cp.clone());
        o.checkpoints = vec![Position {
            seq: 3,
            hash: "0".repeat(64),
        }];
        let rest: String = lines[7..].iter().map(|l| format!("{l}\n")).collect();
        let r = verify([("f", rest.as_bytes())], &o);
        assert!(
            broken(&r).contains("lies before the first record given (8)"),
            "{r:?}"
        );
    }

    #[test]
    fn unkeyed_files_from_before_the_key_still_verify() {
        let mut prev = GENESIS.to_owned();
        let mut f = String::new();
        for e in sample() {
            let Entry::Request(mut r) = e else {
                unreachable!()
            };
            r.prev = prev.clone();
            let line = serde_json::to_string(&r).unwrap().replace(",\"seq\":0", "");
            prev = super::super::record::line_hash(line.as_bytes());
            f.push_str(&line);
            f.push('\n');
        }
        assert!(!f.contains("\"seq\""));
        let r = verify([("old", f.as_bytes())], &opts(&Chain::Unkeyed));
        assert_eq!(r.broken, None, "{r:?}");
        assert_eq!(
            (r.records, r.chain_end.as_deref()),
            (6, Some(prev.as_str()))
        );
        let r = verify([("old", f.as_bytes())], &opts(&Chain::keyed(KEY)));
        assert!(broken(&r).starts_with("old:1: no `seq`"), "{r:?}");
    }

    #[test]
    fn replicas_are_split_by_instance_and_each_chain_verifies_on_its_own() {
        let chain = Chain::keyed(KEY);
        let named = |who: &str| -> Vec<Entry> {
            sample()
                .into_iter()
                .map(|mut e| {
                    e.set_instance(who);
                    e
                })
                .collect()
        };
        let (a1, a_end) = file(&named("rg-a")[..3], &genesis(), &chain);
        let (a2, _) = file(&named("rg-a")[3..], &a_end, &chain);
        let (b, _) = file(&named("rg-b"), &genesis(), &chain);
        let (old, _) = file(&sample(), &genesis(), &chain);
        let files = [
            ("a1", a1.as_bytes()),
            ("b", b.as_bytes()),
            ("empty", b"".as_slice()),
            ("a2", a2.as_bytes()),
            ("old", old.as_bytes()),
        ];
        let groups = by_instance(files);
        let names: Vec<(Option<&str>, Vec<&str>)> = groups
            .iter()
            .map(|g| {
                (
                    g.instance.as_deref(),
                    g.files.iter().map(|(n, _)| *n).collect(),
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                (Some("rg-a"), vec!["a1", "a2"]),
                (Some("rg-b"), vec!["b", "empty"]),
                (None, vec!["old"]),
            ]
        );
        for g in &groups {
            let r = verify(g.files.iter().copied(), &opts(&chain));
            assert_eq!((r.broken.as_deref(), r.records), (None, 6), "{g:?}");
        }
        // Lines of unnamed files (from before the field) verify as they were written.
        assert!(!old.contains("instance") && a1.contains("\"instance\":\"rg-a\""));
        // One replica's files given as one chain with another's: broken at the seam.
        let r = verify([("a1", a1.as_bytes()), ("b", b.as_bytes())], &opts(&chain));
        assert!(broken(&r).starts_with("b:1: chain broken"), "{r:?}");
    }
}
