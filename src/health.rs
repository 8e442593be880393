//! PURE: readiness decided from what each check saw. `GET /readyz` (and its old name
//! `/ready`) on the metrics listener answers 200 only when every check passes, else 503;
//! both with a JSON body naming every check, and which failed and why.
//!
//! Checks: the upstream answered `GET /v2/` within the probe's timeout (any HTTP status,
//! 401 included: it is up and speaking the API); the audit file opens for writing, its
//! writes succeed and its folder has `audit.min_free_bytes` free (only with an audit
//! log); a user file is loaded (only with auth). Liveness (`/healthz`) checks nothing: it
//! answers while the process serves.

use serde_json::{json, Map, Value};

/// What the upstream probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamCheck {
    /// An HTTP answer, with its status.
    Answered(u16),
    /// No answer: why (refused, timed out, TLS failed).
    Failed(String),
}

/// The audit writer's state, as its gauges and settings have it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditCheck {
    /// Writes (or opening the file for writing) fail.
    pub writer_failing: bool,
    pub disk_low: bool,
    pub free_bytes: u64,
    pub min_free_bytes: u64,
}

/// The user file, when auth is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsersCheck {
    /// `auth.disabled: true`: nothing to load.
    Disabled,
    /// Loaded, with this many users. (The proxy does not start without one, and a
    /// reload that fails keeps the previous one: this check reports, it cannot fail yet.)
    Loaded(usize),
}

/// What the directory probe saw (`auth.ldap`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectoryCheck {
    /// The service account bound and `user_base` was read.
    Answered,
    /// Why not.
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inputs {
    pub upstream: UpstreamCheck,
    /// `None`: no directory configured.
    pub directory: Option<DirectoryCheck>,
    /// `None`: no audit log configured.
    pub audit: Option<AuditCheck>,
    pub users: UsersCheck,
}

/// One check's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
    /// A failure makes the proxy unready (false: reported as degraded only).
    pub required: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub checks: Vec<Check>,
}

impl Readiness {
    pub fn ready(&self) -> bool {
        self.checks.iter().all(|c| c.ok || !c.required)
    }

    /// The required checks that failed, by name.
    pub fn failing(&self) -> Vec<&'static str> {
        self.names(|c| !c.ok && c.required)
    }

    /// The checks that failed without making the proxy unready, by name.
    pub fn degraded(&self) -> Vec<&'static str> {
        self.names(|c| !c.ok && !c.required)
    }

    fn names(&self, which: impl Fn(&Check) -> bool) -> Vec<&'static str> {
        self.checks
            .iter()
            .filter(|c| which(c))
            .map(|c| c.name)
            .collect()
    }

    pub fn status(&self) -> u16 {
        if self.ready() {
            200
        } else {
            503
        }
    }

    /// `{"ready":false,"failing":["upstream"],"checks":{"upstream":{"ok":false,"detail":"..."},...}}`
    pub fn body(&self) -> String {
        let mut checks = Map::new();
        for c in &self.checks {
            checks.insert(c.name.into(), json!({ "ok": c.ok, "detail": c.detail }));
        }
        let body = json!({
            "ready": self.ready(),
            "failing": self.failing(),
            "degraded": self.degraded(),
            "checks": Value::Object(checks),
        });
        format!("{body}\n")
    }
}

/// The one readiness decision.
pub fn decide(inputs: &Inputs) -> Readiness {
    let mut checks = Vec::with_capacity(3);
    checks.push(match &inputs.upstream {
        UpstreamCheck::Answered(status) => Check {
            name: "upstream",
            ok: true,
            detail: format!("GET /v2/ answered {status}"),
            required: true,
        },
        UpstreamCheck::Failed(why) => Check {
            name: "upstream",
            ok: false,
            detail: format!("GET /v2/ got no answer: {why}"),
            required: true,
        },
    });
    if let Some(a) = &inputs.audit {
        let (ok, detail) = if a.writer_failing {
            (
                false,
                "audit writes fail (the file cannot be opened or written; see the log): deletes are refused".to_owned(),
            )
        } else if a.disk_low {
            (
                false,
                format!(
                    "the audit folder has {} bytes free, less than audit.min_free_bytes ({})",
                    a.free_bytes, a.min_free_bytes
                ),
            )
        } else {
            (
                true,
                format!(
                    "writable, {} bytes free (audit.min_free_bytes {})",
                    a.free_bytes, a.min_free_bytes
                ),
            )
        };
        checks.push(Check {
            name: "audit",
            ok,
            detail,
            required: true,
        });
    }
    match inputs.users {
        UsersCheck::Disabled => {}
        UsersCheck::Loaded(n) => checks.push(Check {
            name: "users",
            ok: true,
            detail: format!("{n} users loaded"),
            required: true,
        }),
    }
    match &inputs.directory {
        None => {}
        Some(DirectoryCheck::Answered) => checks.push(Check {
            name: "directory",
            ok: true,
            detail: "the service account bound and auth.ldap.user_base was read".into(),
            required: false,
        }),
        Some(DirectoryCheck::Failed(why)) => checks.push(Check {
            name: "directory",
            ok: false,
            detail: format!(
                "{why} (logins not cached lately get 503; file users and cached logins are served)"
            ),
            required: false,
        }),
    }
    Readiness { checks }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_well() -> Inputs {
        Inputs {
            upstream: UpstreamCheck::Answered(401),
            audit: Some(AuditCheck {
                writer_failing: false,
                disk_low: false,
                free_bytes: 1 << 30,
                min_free_bytes: 64 << 20,
            }),
            users: UsersCheck::Loaded(2),
            directory: Some(DirectoryCheck::Answered),
        }
    }

    #[test]
    fn a_directory_that_fails_is_reported_as_degraded_not_unready() {
        let mut i = all_well();
        assert_eq!(decide(&i).checks.last().unwrap().name, "directory");
        i.directory = Some(DirectoryCheck::Failed("cannot connect to ldaps://x".into()));
        let r = decide(&i);
        assert!(r.ready());
        assert!(r.failing().is_empty());
        assert_eq!(r.degraded(), ["directory"]);
        let body: Value = serde_json::from_str(&r.body()).unwrap();
        assert_eq!(body["degraded"], json!(["directory"]));
        assert_eq!(body["checks"]["directory"]["ok"], false);
        assert!(body["checks"]["directory"]["detail"]
            .as_str()
            .unwrap()
            .contains("cannot connect to ldaps://x"));
    }

    #[test]
    fn ready_when_every_check_passes_and_a_401_counts_as_an_answer() {
        let r = decide(&all_well());
        assert!(r.ready());
        assert_eq!(r.status(), 200);
        assert!(r.failing().is_empty());
        let body: Value = serde_json::from_str(&r.body()).unwrap();
        assert_eq!(body["ready"], true);
        assert_eq!(body["checks"]["upstream"]["ok"], true);
        assert_eq!(
            body["checks"]["upstream"]["detail"],
            "GET /v2/ answered 401"
        );
        assert_eq!(body["checks"]["audit"]["ok"], true);
        assert_eq!(body["checks"]["users"]["detail"], "2 users loaded");
    }

    #[test]
    fn each_failure_is_named_with_its_reason() {
        let mut i = all_well();
        i.upstream = UpstreamCheck::Failed("connection refused".into());
        let r = decide(&i);
        assert_eq!((r.ready(), r.status()), (false, 503));
        assert_eq!(r.failing(), ["upstream"]);
        let body: Value = serde_json::from_str(&r.body()).unwrap();
        assert_eq!(body["failing"], json!(["upstream"]));
        assert!(body["checks"]["upstream"]["detail"]
            .as_str()
            .unwrap()
            .contains("connection refused"));

        let mut i = all_well();
        i.audit = Some(AuditCheck {
            disk_low: true,
            free_bytes: 1000,
            ..i.audit.unwrap()
        });
        let r = decide(&i);
        assert_eq!(r.failing(), ["audit"]);
        assert!(r.checks[1].detail.contains("1000 bytes free"), "{r:?}");

        let mut i = all_well();
        i.audit = Some(AuditCheck {
            writer_failing: true,
            disk_low: true,
            ..i.audit.unwrap()
        });
        let r = decide(&i);
        assert!(r.checks[1].detail.contains("audit writes fail"), "{r:?}");

        let mut i = all_well();
        i.upstream = UpstreamCheck::Failed("timed out after 2s".into());
        i.audit = Some(AuditCheck {
            writer_failing: true,
            ..i.audit.unwrap()
        });
        let r = decide(&i);
        assert_eq!(r.failing(), ["upstream", "audit"]);
    }

    #[test]
    fn checks_that_do_not_apply_are_left_out() {
        let r = decide(&Inputs {
            upstream: UpstreamCheck::Answered(200),
            audit: None,
            users: UsersCheck::Disabled,
            directory: None,
        });
        assert!(r.ready());
        let names: Vec<_> = r.checks.iter().map(|c| c.name).collect();
        assert_eq!(names, ["upstream"]);
    }
}
