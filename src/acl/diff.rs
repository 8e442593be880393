//! PURE: what a change of configuration changes for whom (`registry-guard check
//! --config NEW --against OLD`).
//!
//! For every subject (a user, a group, anonymous) and every repository, each action is
//! asked of [`super::decide`] — the decision serving makes — as one representative
//! request on each side, and the answers compared:
//!
//! | action | request asked                              | needs          |
//! |--------|--------------------------------------------|----------------|
//! | pull   | `GET /v2/<repo>/manifests/latest`          | pull           |
//! | push   | `POST /v2/<repo>/blobs/uploads/`           | push + pull    |
//! | delete | `DELETE /v2/<repo>/manifests/sha256:0…0`   | delete + pull  |
//!
//! So "push" means "may push", as serving has it (a rule granting push without pull lets
//! nobody push). Checks only the upstream can answer (protected tags that exist) are not
//! run: they refuse single requests, not an action on a repository.

use super::{decide, Policy, Verdict};
use crate::auth::Identity;
use http::Method;
use std::fmt;

/// Who is compared, as each side identifies them (`None`: cannot be identified on that
/// side — a user not in its user file or disabled there, anonymous without
/// `auth.anonymous`).
#[derive(Debug, Clone)]
pub struct Subject {
    /// `bob`, `group team-a`, `anonymous`.
    pub label: String,
    pub old: Option<Identity>,
    pub new: Option<Identity>,
}

/// One side of the comparison: its rules (`None`: `auth.disabled`, everything allowed).
#[derive(Debug, Clone, Copy)]
pub struct Side<'a> {
    pub policy: Option<&'a Policy>,
}

/// An action gained (`+`) or lost (`-`) by a subject on a repository.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change {
    pub who: String,
    pub repo: String,
    pub action: &'static str,
    pub gained: bool,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.gained { '+' } else { '-' };
        write!(f, "{}: {sign}{} {}", self.who, self.action, self.repo)
    }
}

/// The actions compared, each with its representative request.
pub const ACTIONS: [&str; 3] = ["pull", "push", "delete"];

fn request(action: &str, repo: &str) -> (Method, String) {
    match action {
        "push" => (Method::POST, format!("/v2/{repo}/blobs/uploads/")),
        "delete" => (
            Method::DELETE,
            format!("/v2/{repo}/manifests/sha256:{}", "0".repeat(64)),
        ),
        _ => (Method::GET, format!("/v2/{repo}/manifests/latest")),
    }
}

/// Whether `id` may do `action` in `repo` under `side`; `None` when `repo` is not a
/// repository name the proxy would route.
pub fn may(side: Side<'_>, id: Option<&Identity>, action: &str, repo: &str) -> Option<bool> {
    let (method, path) = request(action, repo);
    let route = crate::registry::parse(&method, &path, None).ok()?;
    Some(match (side.policy, id) {
        // auth.disabled: every well-formed request is forwarded, whoever sends it.
        (None, _) => true,
        (Some(_), None) => false,
        (Some(p), Some(id)) => matches!(decide(Some(p), Some(id), &route, None), Verdict::Allow(_)),
    })
}

/// Every action gained or lost, sorted by subject, repository, action. Repository
/// names that are not valid are returned apart (`Err`), once each.
pub fn diff(
    old: Side<'_>,
    new: Side<'_>,
    subjects: &[Subject],
    repos: &[String],
) -> (Vec<Change>, Vec<String>) {
    let mut changes = Vec::new();
    let mut invalid = Vec::new();
    for repo in repos {
        if crate::registry::parse(&Method::GET, &format!("/v2/{repo}/tags/list"), None).is_err() {
            invalid.push(repo.clone());
            continue;
        }
        for s in subjects {
            for action in ACTIONS {
                let before = may(old, s.old.as_ref(), action, repo).unwrap_or(false);
                let after = may(new, s.new.as_ref(), action, repo).unwrap_or(false);
                if before != after {
                    changes.push(Change {
                        who: s.label.clone(),
                        repo: repo.clone(),
                        action,
                        gained: after,
                    });
                }
            }
        }
    }
    changes.sort_by(|a, b| {
        (&a.who, &a.repo, action_rank(a.action)).cmp(&(&b.who, &b.repo, action_rank(b.action)))
    });
    changes.dedup();
    (changes, invalid)
}

fn action_rank(a: &str) -> usize {
    ACTIONS
        .iter()
        .position(|x| *x == a)
        .unwrap_or(ACTIONS.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn policy(access: &str) -> Policy {
        let yaml = format!(
            "server:\n  listen: 127.0.0.1:0\n  plaintext: true\nupstream:\n  url: http://127.0.0.1:5000\nauth:\n  users_file: u.yaml\n  anonymous: true\naccess:\n{access}"
        );
        Config::from_yaml(&yaml).unwrap().access.unwrap().policy
    }

    fn user(name: &str, groups: &[&str]) -> Option<Identity> {
        Some(Identity::User {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        })
    }

    #[test]
    fn diff_lists_gains_and_losses_per_subject_with_the_serving_decision() {
        let old = policy(
            "  rules:\n    - repos: ['public/**']\n      users: ['*']\n      anonymous: true\n      actions: [pull]\n    - repos: ['team-a/**']\n      groups: [team-a]\n      actions: [pull]\n",
        );
        let new = policy(
            "  rules:\n    - repos: ['public/**']\n      users: ['*']\n      actions: [pull]\n    - repos: ['team-a/**']\n      groups: [team-a]\n      actions: [pull, push]\n    - repos: ['${user}/**']\n      users: ['*']\n      actions: [pull, push, delete]\n    - repos: ['shared/**']\n      users: [carol]\n      actions: [push]\n",
        );
        let subjects = vec![
            Subject {
                label: "bob".into(),
                old: user("bob", &["team-a"]),
                new: user("bob", &["team-a"]),
            },
            Subject {
                label: "carol".into(),
                old: user("carol", &[]),
                new: user("carol", &[]),
            },
            Subject {
                // Removed from the user file: loses everything.
                label: "dave".into(),
                old: user("dave", &[]),
                new: None,
            },
            Subject {
                label: "group team-a".into(),
                old: user("group team-a", &["team-a"]),
                new: user("group team-a", &["team-a"]),
            },
            Subject {
                label: "anonymous".into(),
                old: Some(Identity::Anonymous),
                new: Some(Identity::Anonymous),
            },
        ];
        let repos: Vec<String> = [
            "team-a/app",
            "public/base",
            "bob/tool",
            "shared/x",
            "Bad//name",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (changes, invalid) = diff(
            Side { policy: Some(&old) },
            Side { policy: Some(&new) },
            &subjects,
            &repos,
        );
        let lines: Vec<String> = changes.iter().map(|c| c.to_string()).collect();
        assert_eq!(
            lines,
            vec![
                "anonymous: -pull public/base",
                "bob: +pull bob/tool",
                "bob: +push bob/tool",
                "bob: +delete bob/tool",
                "bob: +push team-a/app",
                "dave: -pull public/base",
                "group team-a: +push team-a/app",
            ],
            "carol's push-without-pull rule lets her push nothing, as serving decides"
        );
        assert_eq!(invalid, vec!["Bad//name".to_owned()]);
        // The same policy on both sides: only dave's removal from the user file.
        let (same, _) = diff(
            Side { policy: Some(&new) },
            Side { policy: Some(&new) },
            &subjects,
            &repos,
        );
        let lines: Vec<String> = same.iter().map(|c| c.to_string()).collect();
        assert_eq!(lines, vec!["dave: -pull public/base"]);
        // auth.disabled on the new side: everyone may do everything.
        let (open, _) = diff(
            Side { policy: Some(&old) },
            Side { policy: None },
            &subjects[4..],
            &repos[1..2],
        );
        let lines: Vec<String> = open.iter().map(|c| c.to_string()).collect();
        assert_eq!(
            lines,
            vec![
                "anonymous: +push public/base",
                "anonymous: +delete public/base"
            ]
        );
    }
}
