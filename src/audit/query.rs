//! PURE: which records `audit show` prints, and what `audit stats` counts.
//!
//! A filter matches a request record when every criterion given matches; the writer's
//! own records (checkpoints, repairs, chain heads, summaries) match only where they can:
//! a denials summary is about a user's denied deletes, a dropped summary about one kind,
//! and the others match no criterion but time.

use super::record::{Entry, Kind, Outcome, Phase};
use std::collections::BTreeMap;

/// What `audit show` and `audit stats` select. Times are in the records' own format
/// (`record::normalize_since`), so comparing strings compares times.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// Any of these kinds (empty: all).
    pub kinds: Vec<Kind>,
    pub user: Option<String>,
    /// The token's owner (`owner`, in records of requests made with an access token).
    pub owner: Option<String>,
    pub repo: Option<String>,
    /// The digest, or the reference when that is a digest.
    pub digest: Option<String>,
    /// The client address, or a network it is in.
    pub address: Option<ipnet::IpNet>,
    /// At or after.
    pub since: Option<String>,
    /// Before.
    pub until: Option<String>,
}

impl Filter {
    /// Whether `entry` is selected. `user` selects a user's own records and those of
    /// the user's access tokens (or one token's, by its name); `owner` only the tokens'.
    pub fn matches(&self, entry: &Entry) -> bool {
        let time = entry.time();
        if self.since.as_deref().is_some_and(|s| time < s)
            || self.until.as_deref().is_some_and(|u| time >= u)
        {
            return false;
        }
        match entry {
            Entry::Request(r) => {
                (self.kinds.is_empty() || self.kinds.contains(&r.target.kind()))
                    && self
                        .user
                        .as_deref()
                        .is_none_or(|u| u == r.user || r.owner.as_deref() == Some(u))
                    && self
                        .owner
                        .as_deref()
                        .is_none_or(|o| r.owner.as_deref() == Some(o))
                    && self.repo.as_deref().is_none_or(|p| p == r.repo)
                    && self
                        .digest
                        .as_deref()
                        .is_none_or(|d| r.digest.as_deref() == Some(d) || r.reference == d)
                    && self.address.is_none_or(|n| {
                        r.client
                            .parse::<std::net::IpAddr>()
                            .is_ok_and(|ip| n.contains(&ip))
                    })
            }
            Entry::Event(e) => {
                let kind = match e.phase {
                    Phase::DenialsSummary => Some(Kind::Delete),
                    Phase::DroppedSummary => e.kind,
                    _ => None,
                };
                let kind_ok =
                    self.kinds.is_empty() || kind.is_some_and(|k| self.kinds.contains(&k));
                let user_ok = self
                    .user
                    .as_deref()
                    .is_none_or(|u| Some(u) == e.user.as_deref());
                kind_ok
                    && user_ok
                    && self.owner.is_none()
                    && self.repo.is_none()
                    && self.digest.is_none()
                    && self.address.is_none()
            }
        }
    }
}

/// Counts of one user's or one repository's records.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub deletes: u64,
    pub pushes: u64,
    pub pulls: u64,
    pub logins: u64,
    pub failed_logins: u64,
    pub denied: u64,
    pub failed: u64,
}

/// `audit stats`: counts by user and by repository.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub users: BTreeMap<String, Counts>,
    pub repos: BTreeMap<String, Counts>,
}

impl Stats {
    /// Counts one record (a delete by its outcome record; intents are not counted twice).
    pub fn add(&mut self, entry: &Entry) {
        let Entry::Request(r) = entry else { return };
        let bump = |c: &mut Counts| match (r.phase, r.target.kind(), r.outcome) {
            (Phase::Intent, _, _) => {}
            (_, _, Some(Outcome::Denied)) => c.denied += 1,
            (_, Kind::Login, Some(Outcome::LoggedIn)) => c.logins += 1,
            (_, Kind::Login, _) => c.failed_logins += 1,
            (_, _, Some(Outcome::Failed)) => c.failed += 1,
            (_, Kind::Delete, Some(Outcome::Deleted)) => c.deletes += 1,
            (_, Kind::Push, Some(Outcome::Pushed)) => c.pushes += 1,
            (_, Kind::Pull, Some(Outcome::Pulled)) => c.pulls += 1,
            _ => {}
        };
        bump(self.users.entry(r.user.clone()).or_default());
        if !r.repo.is_empty() {
            bump(self.repos.entry(r.repo.clone()).or_default());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::{Decision, Event, Record, Target};
    use super::*;

    fn rec(user: &str, repo: &str, target: Target, phase: Phase, outcome: Outcome) -> Entry {
        Entry::Request(Record {
            time: "2026-11-30T10:00:00.000Z".into(),
            instance: None,
            phase,
            request_id: "r".into(),
            user: user.into(),
            owner: None,
            token: None,
            client: "192.0.2.7".into(),
            user_agent: None,
            method: "GET".into(),
            path: "/".into(),
            repo: repo.into(),
            target,
            reference: "v1".into(),
            digest: Some("sha256:aa".into()),
            size: None,
            media_type: None,
            tags: None,
            tags_complete: None,
            decision: Decision::Allowed,
            reason: String::new(),
            upstream_status: None,
            outcome: Some(outcome),
            duration_ms: None,
            seq: 1,
            prev: String::new(),
            mac: String::new(),
        })
    }

    #[test]
    fn filters_combine_and_the_writers_records_match_only_where_they_can() {
        let mut pull = rec(
            "alice",
            "a/app",
            Target::ManifestPull,
            Phase::Access,
            Outcome::Pulled,
        );
        if let Entry::Request(r) = &mut pull {
            r.owner = Some("ci-bot".into());
        }
        let f = |f: Filter| f.matches(&pull);
        assert!(f(Filter::default()));
        assert!(f(Filter {
            kinds: vec![Kind::Pull, Kind::Push],
            ..Default::default()
        }));
        assert!(!f(Filter {
            kinds: vec![Kind::Delete],
            ..Default::default()
        }));
        assert!(f(Filter {
            user: Some("alice".into()),
            repo: Some("a/app".into()),
            ..Default::default()
        }));
        assert!(!f(Filter {
            user: Some("bob".into()),
            ..Default::default()
        }));
        // A user's records include those of the user's tokens.
        assert!(f(Filter {
            user: Some("ci-bot".into()),
            ..Default::default()
        }));
        assert!(f(Filter {
            owner: Some("ci-bot".into()),
            ..Default::default()
        }));
        assert!(!f(Filter {
            owner: Some("other".into()),
            ..Default::default()
        }));
        assert!(f(Filter {
            digest: Some("sha256:aa".into()),
            ..Default::default()
        }));
        assert!(f(Filter {
            address: Some("192.0.2.0/24".parse().unwrap()),
            ..Default::default()
        }));
        assert!(!f(Filter {
            address: Some("198.51.100.1/32".parse().unwrap()),
            ..Default::default()
        }));
        assert!(f(Filter {
            since: Some("2026-11-30T10:00:00.000Z".into()),
            until: Some("2026-11-30T10:00:00.001Z".into()),
            ..Default::default()
        }));
        assert!(!f(Filter {
            until: Some("2026-11-30T10:00:00.000Z".into()),
            ..Default::default()
        }));
        let mut dropped = Event::new(Phase::DroppedSummary, "n".into());
        dropped.kind = Some(Kind::Pull);
        let dropped = Entry::Event(dropped);
        assert!(Filter {
            kinds: vec![Kind::Pull],
            ..Default::default()
        }
        .matches(&dropped));
        assert!(!Filter {
            kinds: vec![Kind::Login],
            ..Default::default()
        }
        .matches(&dropped));
        assert!(!Filter {
            repo: Some("a/app".into()),
            ..Default::default()
        }
        .matches(&dropped));
        let cp = Entry::Event(Event::new(Phase::Checkpoint, String::new()));
        assert!(Filter::default().matches(&cp));
        assert!(!Filter {
            user: Some("alice".into()),
            ..Default::default()
        }
        .matches(&cp));
    }

    #[test]
    fn stats_count_by_user_and_repository() {
        let mut s = Stats::default();
        s.add(&rec(
            "alice",
            "a/app",
            Target::ManifestPull,
            Phase::Access,
            Outcome::Pulled,
        ));
        s.add(&rec(
            "alice",
            "a/app",
            Target::ManifestPull,
            Phase::Access,
            Outcome::Pulled,
        ));
        s.add(&rec(
            "alice",
            "a/app",
            Target::ManifestPush,
            Phase::Access,
            Outcome::Pushed,
        ));
        s.add(&rec(
            "alice",
            "a/app",
            Target::ManifestByDigest,
            Phase::Intent,
            Outcome::Unknown,
        ));
        s.add(&rec(
            "alice",
            "a/app",
            Target::ManifestByDigest,
            Phase::Outcome,
            Outcome::Deleted,
        ));
        s.add(&rec(
            "bob",
            "a/app",
            Target::ManifestPull,
            Phase::Access,
            Outcome::Denied,
        ));
        s.add(&rec(
            "bob",
            "",
            Target::Login,
            Phase::Access,
            Outcome::Failed,
        ));
        s.add(&rec(
            "bob",
            "",
            Target::Login,
            Phase::Access,
            Outcome::LoggedIn,
        ));
        let a = &s.users["alice"];
        assert_eq!((a.pulls, a.pushes, a.deletes, a.denied), (2, 1, 1, 0));
        let b = &s.users["bob"];
        assert_eq!((b.denied, b.logins, b.failed_logins), (1, 1, 1));
        let r = &s.repos["a/app"];
        assert_eq!((r.pulls, r.pushes, r.deletes, r.denied), (2, 1, 1, 1));
        assert_eq!(s.repos.len(), 1, "logins name no repository");
    }
}
