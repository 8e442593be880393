//! PURE: the whole access decision for one request, shared by serving (`handler::permit`)
//! and `registry-guard explain`, so the two cannot disagree.
//!
//! [`decide`] looks only at the rules, the identity and the route. What it cannot know
//! without asking the upstream (does a protected tag exist already; does a protected tag
//! need the digest being deleted) it returns as [`Check`]s for the caller to run; the
//! request is forwarded only when every check passes.

use super::Policy;
use crate::auth::Identity;
use crate::registry::{grammar, Actions, Reference, Route, Target};
use http::Method;

/// The decision on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Forwarded, once every check passes.
    Allow(Allowance),
    /// 401 with the challenge: an anonymous request the rules do not allow, so the
    /// client logs in.
    Challenge { reason: String },
    /// 403 `DENIED`: an authenticated identity the rules refuse.
    Deny { reason: String },
}

/// What an allowed request still needs, and how it is forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowance {
    /// Why it is allowed (the granting rules), for logs, audit records and `explain`.
    pub reason: String,
    /// Lookups that must pass before forwarding.
    pub checks: Vec<Check>,
    /// A cross-repository mount without pull on `from`: forwarded as a plain upload
    /// start, `mount` and `from` stripped from the query.
    pub strip_mount: bool,
}

/// A condition only the upstream can answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// A push to a protected tag: refused if the tag already exists.
    TagAbsent { tag: String, protection: String },
    /// A delete by digest (manifest or blob): refused if a protected tag points at it or
    /// its manifest (or a child of its index) references it.
    NotProtected { digest: String },
}

impl Verdict {
    /// The verdict when `check` failed with `reason`: a refusal in the identity's terms.
    pub fn refusal(id: &Identity, reason: String) -> Verdict {
        match id {
            Identity::Anonymous => Verdict::Challenge { reason },
            Identity::User { .. } | Identity::Token { .. } => Verdict::Deny { reason },
        }
    }
}

/// Decides whether `id` may make the request `route` (with its raw `query`). `policy`
/// `None` is `auth.disabled`: everything well-formed is forwarded.
pub fn decide(
    policy: Option<&Policy>,
    id: Option<&Identity>,
    route: &Route,
    query: Option<&str>,
) -> Verdict {
    let (Some(policy), Some(id)) = (policy, id) else {
        return allow("auth disabled".into());
    };
    let Some(repo) = route.repo() else {
        // `/v2/` and the catalog: any authenticated user, as `docker login` needs.
        return match id {
            Identity::Anonymous => Verdict::Challenge {
                reason: "needs an authenticated user".into(),
            },
            Identity::User { .. } | Identity::Token { .. } => {
                allow("any authenticated user".into())
            }
        };
    };
    // The fast path on every request: no explained reason unless it is needed.
    let needed = route.actions();
    if !policy.allows(id, repo, needed) {
        // The same answer whether the repository exists or not: nothing is looked up.
        return Verdict::refusal(
            id,
            format!("requested access to the resource is denied (needs {needed})"),
        );
    }
    let mut allowance = Allowance {
        reason: String::new(),
        checks: Vec::new(),
        strip_mount: false,
    };
    match (&route.method, &route.target) {
        (_, Target::UploadStart { mount: Some(m), .. }) => {
            allowance.strip_mount = !policy.allows(id, &m.from, Actions::PULL);
        }
        (&Method::PUT, Target::Manifest { reference, .. }) => {
            // The tag in the path, and any `?tag=` (OCI 1.1 lets a push by digest tag it).
            let mut tags: Vec<String> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .filter(|(k, _)| k == "tag")
                .map(|(_, v)| v.into_owned())
                .collect();
            if let Reference::Tag(t) = reference {
                tags.push(t.clone());
            }
            for tag in tags {
                let Some(p) = policy.tag_protection(id, repo, &tag) else {
                    continue;
                };
                if !grammar::is_tag(&tag) {
                    return Verdict::refusal(
                        id,
                        format!(
                            "tag {tag:?} is protected ({}): it cannot be overwritten",
                            p.label
                        ),
                    );
                }
                allowance.checks.push(Check::TagAbsent {
                    tag,
                    protection: p.label.clone(),
                });
            }
        }
        (
            &Method::DELETE,
            Target::Manifest {
                reference: Reference::Tag(tag),
                ..
            },
        ) => {
            if let Some(p) = policy.tag_protection(id, repo, tag) {
                return Verdict::refusal(
                    id,
                    format!(
                        "tag {tag:?} is protected ({}): it cannot be deleted",
                        p.label
                    ),
                );
            }
        }
        (
            &Method::DELETE,
            Target::Manifest {
                reference: Reference::Digest(digest),
                ..
            }
            | Target::Blob { digest, .. },
        ) if policy.has_protections(id, repo) => {
            allowance.checks.push(Check::NotProtected {
                digest: digest.clone(),
            });
        }
        _ => {}
    }
    Verdict::Allow(allowance)
}

fn allow(reason: String) -> Verdict {
    Verdict::Allow(Allowance {
        reason,
        checks: Vec::new(),
        strip_mount: false,
    })
}

/// The explained reason of an allowed request (the granting rules): computed only where
/// it is kept or shown, as it allocates.
pub fn explained_reason(policy: &Policy, id: &Identity, route: &Route) -> String {
    match route.repo() {
        Some(repo) => policy.decide(id, repo, route.actions()).reason(),
        None => "any authenticated user".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::{Rule, TagProtection, Who};
    use crate::registry::parse;

    fn policy() -> Policy {
        let rule = |repos: &str, users: &[&str], actions: Actions| Rule {
            label: format!("rule {repos}"),
            repos: vec![crate::acl::glob::Pattern::repo(repos).unwrap()],
            who: Who {
                users: users.iter().map(|s| (*s).to_owned()).collect(),
                groups: vec![],
                anonymous: false,
            },
            actions,
        };
        Policy::new(
            vec![
                rule("alice/**", &["alice"], Actions::ALL),
                rule("public/**", &["*"], Actions::PULL),
            ],
            Who::default(),
            vec![TagProtection {
                label: "p".into(),
                repos: vec![crate::acl::glob::Pattern::repo("**").unwrap()],
                tags: vec![crate::acl::glob::Pattern::tag("latest").unwrap()],
                except: Who::default(),
            }],
        )
    }

    fn user(name: &str) -> Identity {
        Identity::User {
            name: name.into(),
            groups: vec![],
        }
    }

    fn verdict(id: &Identity, method: &str, target: &str) -> Verdict {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let route = parse(&Method::from_bytes(method.as_bytes()).unwrap(), path, query).unwrap();
        decide(Some(&policy()), Some(id), &route, query)
    }

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn the_cases_serving_and_explain_share() {
        let alice = user("alice");
        let bob = user("bob");
        let anon = Identity::Anonymous;
        assert!(matches!(verdict(&alice, "GET", "/v2/"), Verdict::Allow(_)));
        assert!(matches!(
            verdict(&anon, "GET", "/v2/_catalog"),
            Verdict::Challenge { .. }
        ));
        assert!(matches!(
            verdict(&bob, "GET", "/v2/alice/a/tags/list"),
            Verdict::Deny { .. }
        ));
        assert!(matches!(
            verdict(&anon, "GET", "/v2/alice/a/tags/list"),
            Verdict::Challenge { .. }
        ));
        // a protected tag: deleting it is refused, pushing it is checked upstream
        assert!(matches!(
            verdict(&alice, "DELETE", "/v2/alice/a/manifests/latest"),
            Verdict::Deny { .. }
        ));
        let Verdict::Allow(a) = verdict(&alice, "PUT", "/v2/alice/a/manifests/latest") else {
            panic!()
        };
        assert_eq!(
            a.checks,
            [Check::TagAbsent {
                tag: "latest".into(),
                protection: "p".into()
            }]
        );
        let Verdict::Allow(a) = verdict(
            &alice,
            "PUT",
            &format!("/v2/alice/a/manifests/{D}?tag=latest&tag=v1"),
        ) else {
            panic!()
        };
        assert_eq!(a.checks.len(), 1);
        assert!(matches!(
            verdict(&alice, "PUT", &format!("/v2/alice/a/manifests/{D}?tag=lat%65st")),
            Verdict::Allow(Allowance { ref checks, .. }) if checks.len() == 1
        ));
        // deletes by digest, of manifests and blobs, are checked upstream
        for path in [
            format!("/v2/alice/a/manifests/{D}"),
            format!("/v2/alice/a/blobs/{D}"),
        ] {
            let Verdict::Allow(a) = verdict(&alice, "DELETE", &path) else {
                panic!()
            };
            assert_eq!(
                a.checks,
                [Check::NotProtected { digest: D.into() }],
                "{path}"
            );
        }
        // a mount without pull on `from` becomes a plain upload
        let Verdict::Allow(a) = verdict(
            &alice,
            "POST",
            &format!("/v2/alice/a/blobs/uploads/?mount={D}&from=bob/x"),
        ) else {
            panic!()
        };
        assert!(a.strip_mount);
        let Verdict::Allow(a) = verdict(
            &alice,
            "POST",
            &format!("/v2/alice/a/blobs/uploads/?mount={D}&from=public/x"),
        ) else {
            panic!()
        };
        assert!(!a.strip_mount);
        // auth disabled: everything well-formed
        let route = parse(&Method::DELETE, "/v2/x/manifests/latest", None).unwrap();
        assert!(matches!(
            decide(None, None, &route, None),
            Verdict::Allow(_)
        ));
    }
}
