//! PURE: who may do what where.
//!
//! Rules are allow-only and order-independent: the actions granted on a repository are
//! the union of every rule that matches it and the identity, and anything not granted is
//! denied. Admins may do everything. Protected tags forbid overwriting and deleting tags
//! matching patterns, except for named users or groups.
//!
//! `decide` never does I/O; rules are indexed by their literal namespace (first
//! component) so one decision is a handful of pattern matches, even with thousands of
//! rules.

pub mod diff;
pub mod glob;
pub(crate) mod verdict;

pub use verdict::{decide, Allowance, Check, Verdict};

use crate::auth::Identity;
use crate::registry::Actions;
use glob::Pattern;
use std::collections::{HashMap, HashSet};

/// Who a rule (or an exemption) applies to.
#[derive(Debug, Clone, Default)]
pub struct Who {
    /// User names; `*` is any authenticated user.
    pub users: Vec<String>,
    pub groups: Vec<String>,
    pub anonymous: bool,
}

impl Who {
    /// Whether the rule applies to `id`; a token is included where its owner is.
    pub fn includes(&self, id: &Identity) -> bool {
        match id.principal() {
            None => self.anonymous,
            Some((name, groups)) => {
                self.users.iter().any(|u| u == "*" || u == name)
                    || self.groups.iter().any(|g| groups.contains(g))
            }
        }
    }
}

/// What an access token may do at most: `actions` on the repositories its patterns
/// match (the same patterns as the rules; `${user}` is the token's owner). What a
/// request with a token gets is the intersection of this and what the rules grant the
/// owner now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub repos: Vec<Pattern>,
    pub actions: Actions,
}

impl Scope {
    /// The actions the scope allows on `repo` for a token of `owner`.
    pub fn on(&self, repo: &str, owner: &str) -> Actions {
        if self.repos.iter().any(|p| p.matches(repo, Some(owner))) {
            self.actions
        } else {
            Actions::NONE
        }
    }
}

/// The actions `id`'s scope allows on `repo`: all for users, the scope's for tokens.
fn scope_on(id: &Identity, repo: &str) -> Actions {
    match (id.scope(), id.principal()) {
        (Some(scope), Some((owner, _))) => scope.on(repo, owner),
        _ => Actions::ALL,
    }
}

#[derive(Debug, Clone)]
pub struct Rule {
    /// How the rule is named in messages: `access.rules[3]`, or its `name` if it has one.
    pub label: String,
    pub repos: Vec<Pattern>,
    pub who: Who,
    pub actions: Actions,
}

#[derive(Debug, Clone)]
pub struct TagProtection {
    pub label: String,
    pub repos: Vec<Pattern>,
    pub tags: Vec<Pattern>,
    pub except: Who,
}

/// The compiled rule set.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: Vec<Rule>,
    by_namespace: HashMap<String, Vec<usize>>,
    user_namespace: Vec<usize>,
    general: Vec<usize>,
    admins: Who,
    protections: Vec<TagProtection>,
}

/// The outcome of a decision, with what explains it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub needed: Actions,
    pub granted: Actions,
    /// Labels of the rules that granted something (or "admin").
    pub granted_by: Vec<String>,
    /// A token's scope on the repository, when it cut down what the rules grant
    /// (`granted` is then already the intersection).
    pub scope: Option<Actions>,
}

impl Decision {
    /// A one-line reason for logs and `explain`.
    pub fn reason(&self) -> String {
        let scope = match self.scope {
            Some(s) if !s.contains(self.needed) => format!(
                "; the token's scope allows only {s} here, missing {}",
                s.missing(self.needed)
            ),
            Some(s) => format!(" (within the token's scope: {s})"),
            None => String::new(),
        };
        if self.allowed {
            format!(
                "{} granted by {}{scope}",
                self.needed,
                self.granted_by.join(", ")
            )
        } else if self.granted.is_empty() && self.scope.is_some() {
            format!(
                "the token may not do it here (needs {}){scope}",
                self.needed
            )
        } else if self.granted.is_empty() {
            format!("no rule grants anything here (needs {})", self.needed)
        } else if self.scope.is_some() {
            format!(
                "needs {}, granted only {} ({}); missing {}{scope}",
                self.needed,
                self.granted,
                self.granted_by.join(", "),
                self.granted.missing(self.needed)
            )
        } else {
            format!(
                "needs {}, rules grant only {} ({}); missing {}",
                self.needed,
                self.granted,
                self.granted_by.join(", "),
                self.granted.missing(self.needed)
            )
        }
    }
}

impl Policy {
    pub fn new(rules: Vec<Rule>, admins: Who, protections: Vec<TagProtection>) -> Policy {
        let mut by_namespace: HashMap<String, Vec<usize>> = HashMap::new();
        let mut user_namespace = Vec::new();
        let mut general = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            let mut placed: HashSet<&str> = HashSet::new();
            let mut user = false;
            let mut gen = false;
            for p in &r.repos {
                if let Some(ns) = p.literal_namespace() {
                    placed.insert(ns);
                } else if p.user_namespace() {
                    user = true;
                } else {
                    gen = true;
                }
            }
            for ns in placed {
                by_namespace.entry(ns.to_owned()).or_default().push(i);
            }
            if user {
                user_namespace.push(i);
            }
            if gen {
                general.push(i);
            }
        }
        Policy {
            rules,
            by_namespace,
            user_namespace,
            general,
            admins,
            protections,
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn is_admin(&self, id: &Identity) -> bool {
        !matches!(id, Identity::Anonymous) && self.admins.includes(id)
    }

    /// Calls `f` with every rule that grants something to `id` on `repo` (a rule may
    /// come more than once). No allocation: this runs on every request.
    fn matching<'a>(&'a self, id: &Identity, repo: &str, mut f: impl FnMut(&'a Rule) -> bool) {
        let ns = repo.split('/').next().unwrap_or(repo);
        let user = id.principal().map(|(name, _)| name);
        let candidates = self
            .by_namespace
            .get(ns)
            .into_iter()
            .flatten()
            .chain(self.user_namespace.iter().filter(|_| user == Some(ns)))
            .chain(self.general.iter());
        for &i in candidates {
            let r = &self.rules[i];
            if r.who.includes(id) && r.repos.iter().any(|p| p.matches(repo, user)) && !f(r) {
                return;
            }
        }
    }

    /// The actions `id` has on `repo`, and the rules that grant them.
    /// A token's: only what its scope also allows.
    pub fn granted(&self, id: &Identity, repo: &str) -> (Actions, Vec<&Rule>) {
        let scope = scope_on(id, repo);
        if self.is_admin(id) {
            return (scope, Vec::new());
        }
        let mut granted = Actions::NONE;
        let mut by: Vec<&Rule> = Vec::new();
        self.matching(id, repo, |r| {
            granted = granted.union(r.actions);
            if !by.iter().any(|b| std::ptr::eq(*b, r)) {
                by.push(r);
            }
            true
        });
        (granted.intersection(scope), by)
    }

    /// Whether `id` may do `needed` on `repo`: [`Policy::decide`] without the
    /// explanation, for the request path.
    pub fn allows(&self, id: &Identity, repo: &str, needed: Actions) -> bool {
        // A token's scope first: it is one or two pattern matches, and cuts the rest.
        if !scope_on(id, repo).contains(needed) {
            return false;
        }
        if self.is_admin(id) {
            return true;
        }
        let mut granted = Actions::NONE;
        self.matching(id, repo, |r| {
            granted = granted.union(r.actions);
            !granted.contains(needed)
        });
        granted.contains(needed)
    }

    /// Whether `id` may do `needed` on `repo`.
    pub fn decide(&self, id: &Identity, repo: &str, needed: Actions) -> Decision {
        let scope = id.scope().map(|_| scope_on(id, repo));
        let (granted, granted_by) = if self.is_admin(id) {
            (scope.unwrap_or(Actions::ALL), vec!["admin".into()])
        } else {
            let (granted, by) = self.granted(id, repo);
            (granted, by.into_iter().map(|r| r.label.clone()).collect())
        };
        Decision {
            allowed: granted.contains(needed),
            needed,
            granted,
            granted_by,
            scope,
        }
    }

    /// The protection that forbids `id` to overwrite or delete `tag` in `repo`, if any.
    pub fn tag_protection(&self, id: &Identity, repo: &str, tag: &str) -> Option<&TagProtection> {
        if self.is_admin(id) {
            return None;
        }
        let user = id.principal().map(|(name, _)| name);
        self.protections.iter().find(|p| {
            !p.except.includes(id)
                && p.repos.iter().any(|r| r.matches(repo, user))
                && p.tags.iter().any(|t| t.matches(tag, None))
        })
    }

    /// Whether any protection could apply in `repo` for `id` (to skip tag lookups).
    pub fn has_protections(&self, id: &Identity, repo: &str) -> bool {
        let user = id.principal().map(|(name, _)| name);
        !self.is_admin(id)
            && self
                .protections
                .iter()
                .any(|p| !p.except.includes(id) && p.repos.iter().any(|r| r.matches(repo, user)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, groups: &[&str]) -> Identity {
        Identity::User {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn rule(label: &str, repos: &[&str], who: Who, actions: Actions) -> Rule {
        Rule {
            label: label.into(),
            repos: repos.iter().map(|r| Pattern::repo(r).unwrap()).collect(),
            who,
            actions,
        }
    }

    fn everyone() -> Who {
        Who {
            users: vec!["*".into()],
            ..Who::default()
        }
    }

    fn seed_policy() -> Policy {
        let pp = Actions::PULL.union(Actions::PUSH);
        Policy::new(
            vec![
                rule("own", &["${user}/**"], everyone(), Actions::ALL),
                rule(
                    "public-read",
                    &["public/**"],
                    Who {
                        anonymous: true,
                        ..everyone()
                    },
                    Actions::PULL,
                ),
                rule(
                    "public-team",
                    &["public/**"],
                    Who {
                        groups: vec!["team-a".into()],
                        ..Who::default()
                    },
                    pp,
                ),
                rule(
                    "bob-push",
                    &["shared/*"],
                    Who {
                        users: vec!["bob".into()],
                        ..Who::default()
                    },
                    Actions::PUSH,
                ),
                rule(
                    "bob-pull",
                    &["shared/**"],
                    Who {
                        users: vec!["bob".into()],
                        ..Who::default()
                    },
                    Actions::PULL,
                ),
            ],
            Who {
                groups: vec!["ops".into()],
                ..Who::default()
            },
            vec![TagProtection {
                label: "access.protected_tags[0]".into(),
                repos: vec![Pattern::repo("**").unwrap()],
                tags: vec![Pattern::tag("latest").unwrap(), Pattern::tag("v*").unwrap()],
                except: Who {
                    groups: vec!["release".into()],
                    ..Who::default()
                },
            }],
        )
    }

    #[test]
    fn table() {
        let p = seed_policy();
        let alice = user("alice", &[]);
        let carol = user("carol", &["team-a"]);
        let bob = user("bob", &[]);
        let pull = Actions::PULL;
        let push = Actions::PUSH.union(Actions::PULL);
        let del = Actions::DELETE.union(Actions::PULL);
        let cases = [
            (&alice, "alice/app", push, true),
            (&alice, "alice/a/b/c", del, true),
            (&alice, "bob/app", pull, false),
            (&alice, "public/2048", pull, true),
            (&alice, "public/2048", push, false),
            (&carol, "public/2048", push, true),
            (&carol, "public/2048", del, false),
            (&Identity::Anonymous, "public/2048", pull, true),
            (&Identity::Anonymous, "public/2048", push, false),
            (&Identity::Anonymous, "alice/app", pull, false),
            // union across rules: push from one, pull from another
            (&bob, "shared/x", push, true),
            (&bob, "shared/x/y", push, false),
            (&user("root", &["ops"]), "anything/at/all", del, true),
            (&user("10000460123", &[]), "10000460123/ubuntu", del, true),
        ];
        for (id, repo, needed, want) in cases {
            let d = p.decide(id, repo, needed);
            assert_eq!(
                d.allowed,
                want,
                "{} {repo} {needed}: {}",
                id.name(),
                d.reason()
            );
        }
    }

    #[test]
    fn reasons_name_the_rules() {
        let p = seed_policy();
        let d = p.decide(
            &user("alice", &[]),
            "public/2048",
            Actions::PUSH.union(Actions::PULL),
        );
        assert!(!d.allowed);
        assert!(
            d.reason().contains("public-read") && d.reason().contains("missing push"),
            "{}",
            d.reason()
        );
        let d = p.decide(&user("alice", &[]), "alice/x", Actions::PULL);
        assert_eq!(d.granted_by, ["own"]);
    }

    fn token(owner: &str, groups: &[&str], repos: &[&str], actions: Actions) -> Identity {
        Identity::Token {
            name: format!("ci-{owner}"),
            owner: owner.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            scope: std::sync::Arc::new(Scope {
                repos: repos.iter().map(|r| Pattern::repo(r).unwrap()).collect(),
                actions,
            }),
        }
    }

    #[test]
    fn a_token_gets_the_intersection_of_its_scope_and_its_owners_rules() {
        let p = seed_policy();
        let pull = Actions::PULL;
        let push = Actions::PUSH.union(Actions::PULL);
        let del = Actions::DELETE.union(Actions::PULL);
        let carol_public = token("carol", &["team-a"], &["public/**"], push);
        let carol_own = token("carol", &["team-a"], &["${user}/**"], Actions::ALL);
        let carol_everything = token("carol", &["team-a"], &["**"], Actions::ALL);
        let root_pull = token("root", &["ops"], &["**"], pull);
        let cases = [
            // within the scope, granted to the owner (group team-a)
            (&carol_public, "public/2048", push, true),
            // the owner may (own namespace), the scope does not reach it
            (&carol_public, "carol/app", pull, false),
            // `${user}` in a scope is the owner
            (&carol_own, "carol/app", del, true),
            (&carol_own, "ci-carol/app", pull, false),
            // the scope allows delete, the owner's rules do not
            (&carol_everything, "public/2048", del, false),
            (&carol_everything, "bob/app", pull, false),
            // an admin's token: everything the scope allows, nothing more
            (&root_pull, "anything/at/all", pull, true),
            (&root_pull, "anything/at/all", push, false),
        ];
        for (id, repo, needed, want) in cases {
            let d = p.decide(id, repo, needed);
            assert_eq!(d.allowed, want, "{id:?} {repo} {needed}: {}", d.reason());
            assert_eq!(p.allows(id, repo, needed), want, "{repo} {needed}");
            assert_eq!(p.granted(id, repo).0, d.granted, "{repo}");
        }
        let d = p.decide(&carol_everything, "public/2048", del);
        assert!(
            d.reason().contains("missing delete") && d.reason().contains("public-team"),
            "{}",
            d.reason()
        );
        let d = p.decide(&root_pull, "x/y", push);
        assert!(
            d.reason().contains("token's scope allows only pull"),
            "{}",
            d.reason()
        );
        // Tag protections follow the owner: an admin's token is exempt, like the admin.
        assert!(p.tag_protection(&root_pull, "x/y", "latest").is_none());
        assert!(p
            .tag_protection(&carol_public, "public/x", "latest")
            .is_some());
        // A token is never an anonymous identity, and never more than its owner when
        // the owner's groups change: without team-a, no push on public.
        let carol_now = token("carol", &[], &["public/**"], push);
        assert!(!p.allows(&carol_now, "public/2048", push));
        assert!(p.allows(&carol_now, "public/2048", pull));
    }

    #[test]
    fn protected_tags() {
        let p = seed_policy();
        let alice = user("alice", &[]);
        assert!(p.tag_protection(&alice, "alice/app", "latest").is_some());
        assert!(p.tag_protection(&alice, "alice/app", "v1.2").is_some());
        assert!(p.tag_protection(&alice, "alice/app", "dev").is_none());
        assert!(p
            .tag_protection(&user("rel", &["release"]), "alice/app", "latest")
            .is_none());
        assert!(p
            .tag_protection(&user("root", &["ops"]), "alice/app", "latest")
            .is_none());
        assert!(p.has_protections(&alice, "alice/app"));
    }
}
