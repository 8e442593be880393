//! Directory identities: users and groups from LDAP or Active Directory (`auth.ldap`).
//!
//! A login of a name that is not in the user file:
//!
//! ```text
//! empty password ─▶ refused, no I/O at all (many servers take a bind with a DN and an
//!   │               empty password for an anonymous bind, and answer success)
//! search user_base for user_filter, {user} escaped (RFC 4515), as the service account
//!   ├─ no entry, or more than one ─▶ refused (never the first of several)
//! groups: the user entry's group attribute (memberOf), or a search of group_base
//! bind as the DN the directory returned, with the password ─ refused ─▶ refused
//!   └─ accepted ─▶ the groups
//! ```
//!
//! Invariants:
//! - User input enters a search only as an escaped assertion value (`filter`) and never
//!   becomes part of a DN: the DN bound with is the one the directory returned.
//! - The service password is read once per snapshot, held in a [`Secret`] whose `Debug`
//!   hides it, sent only in the service bind and never put in an error or a log line.
//! - Connections are pooled and bounded (`pool_size`); a connection after a user bind is
//!   bound as the service account again before it is used for a search.
//! - Every operation has a timeout; a directory that is down, slow or failing gives
//!   [`Unavailable`] (503 for the client, not 401: the password was not judged, and the
//!   throttle does not count it).
//! - Directory answers are parsed in a task of their own: a malformed answer that makes
//!   the LDAP library panic costs that login (503), not the proxy.

pub mod filter;

use crate::config::{self, ConfigError, GroupLookup, LdapTransport, SecretSource};
use crate::metrics::{LdapOp, Metrics};
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Scope, SearchEntry, SearchOptions};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the directory said of a login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// The directory accepted the password; the user's groups.
    Accepted { groups: Vec<String> },
    /// Refused (why, for the debug log only: a client sees 401 either way).
    Refused(&'static str),
}

/// The directory could not answer: unreachable, too slow, the service account refused,
/// or an answer the proxy cannot use. The text is for the log (never a password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the directory is unavailable: {0}")]
pub struct Unavailable(pub String);

/// A user entry as a search found it.
enum Found {
    One(SearchEntry),
    None,
    Several,
    /// One entry, whose `user_attribute` is not the name exactly (the directory matched
    /// it ignoring case or spaces): refused, or one person would be several names here,
    /// each with its own cache, throttle count, audit name — and past the user file.
    Respelled,
}

/// PURE: whether `entry`'s `attribute` (its name compared without case, as LDAP does)
/// holds `name` exactly.
fn spelled_as(entry: &SearchEntry, attribute: &str, name: &str) -> bool {
    entry
        .attrs
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(attribute))
        .any(|(_, values)| values.iter().any(|v| v == name))
}

/// The service account's password: never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Result codes (RFC 4511 A.1) that judge the credentials or the account, not the server.
const RC_REFUSED: [u32; 6] = [
    19, // constraintViolation (AD: password expired or must change)
    32, // noSuchObject (the entry went away between search and bind)
    48, // inappropriateAuthentication
    49, // invalidCredentials (AD: also disabled, locked, expired accounts)
    50, // insufficientAccessRights
    53, // unwillingToPerform
];
const RC_SIZE_LIMIT: u32 = 4;
/// Longest user name looked up in the directory.
pub const MAX_NAME: usize = 256;
/// Groups read for one user, at most (a search past it is cut, with a warning).
const MAX_GROUPS: i32 = 10_000;

/// One directory: its settings, the service password, the TLS settings and the pool.
pub struct Directory {
    cfg: config::Ldap,
    service_password: Secret,
    settings: LdapConnSettings,
    pool: Pool,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("url", &self.cfg.url)
            .field("bind_dn", &self.cfg.bind_dn)
            .field("service_password", &self.service_password)
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("available", &self.slots.available_permits())
            .finish_non_exhaustive()
    }
}

impl Directory {
    /// Reads the service password and the CA bundle; connects to nothing (the pool opens
    /// connections when logins need them). Errors name the key.
    pub fn new(cfg: &config::Ldap, metrics: Arc<Metrics>) -> Result<Directory, ConfigError> {
        let service_password = Secret(read_secret(&cfg.bind_password)?);
        let mut settings = LdapConnSettings::new().set_conn_timeout(cfg.connect_timeout);
        if cfg.transport != LdapTransport::Plaintext {
            let tls = crate::tls::ca_client_config("auth.ldap.ca_file", cfg.ca_file.as_deref())?;
            settings = settings
                .set_config(Arc::new(tls))
                .set_starttls(cfg.transport == LdapTransport::StartTls);
        }
        Ok(Directory {
            cfg: cfg.clone(),
            service_password,
            settings,
            pool: Pool::new(cfg.pool_size),
            metrics,
        })
    }

    /// The directory of a whole configuration's `auth.ldap` (YAML text; relative paths
    /// as they are), for benches and tools outside the crate.
    pub fn from_config_yaml(text: &str, metrics: Arc<Metrics>) -> Result<Directory, String> {
        let cfg = config::Config::from_yaml(text).map_err(|e| e.to_string())?;
        let l = cfg
            .auth
            .and_then(|a| a.ldap)
            .ok_or("the configuration has no auth.ldap")?;
        Directory::new(&l, metrics).map_err(|e| e.to_string())
    }

    /// Whether `cfg` describes this directory exactly (same settings and service
    /// password): a reload keeps this one, its pool and the logins it cached.
    pub fn same_as(&self, cfg: &config::Ldap) -> bool {
        self.cfg == *cfg
            && read_secret(&cfg.bind_password).is_ok_and(|pw| pw == self.service_password.0)
    }

    /// The settings in force.
    pub fn config(&self) -> &config::Ldap {
        &self.cfg
    }

    /// Checks `password` for `user` with the directory and reads the user's groups.
    pub async fn login(self: &Arc<Self>, user: &str, password: &str) -> Result<Login, Unavailable> {
        if password.is_empty() {
            return Ok(Login::Refused("empty password"));
        }
        // The names of the user file's grammar only: no spaces, no controls, nothing a
        // directory would read as the same name as another.
        if user.len() > MAX_NAME || !crate::auth::users::is_valid_name(user) {
            return Ok(Login::Refused("not a valid user name"));
        }
        let (this, user, password) = (self.clone(), user.to_owned(), password.to_owned());
        isolated(async move { this.login_inner(&user, &password).await }).await
    }

    /// The current groups of `user`, looked up with the service account (no password):
    /// `None` when the directory has no such user (or several). For `explain`, and for
    /// checks of an owner that is not logging in (tokens).
    pub async fn groups_of(
        self: &Arc<Self>,
        user: &str,
    ) -> Result<Option<Vec<String>>, Unavailable> {
        if user.len() > MAX_NAME || !crate::auth::users::is_valid_name(user) {
            return Ok(None);
        }
        let (this, user) = (self.clone(), user.to_owned());
        isolated(async move {
            let mut lease = this.lease().await?;
            let entry = match this.find_user(&mut lease, &user).await? {
                Found::One(e) => e,
                Found::None | Found::Several | Found::Respelled => return Ok(None),
            };
            this.groups(&mut lease, &user, &entry).await.map(Some)
        })
        .await
    }

    /// Readiness: a connection bound as the service account that can read `user_base`.
    pub async fn check(self: &Arc<Self>) -> Result<(), Unavailable> {
        let this = self.clone();
        isolated(async move {
            let mut lease = this.lease().await?;
            let base = this.cfg.user_base.clone();
            let r = this
                .op(&mut lease, LdapOp::Search, |ldap, t| {
                    Box::pin(async move {
                        ldap.with_timeout(t)
                            .search(&base, Scope::Base, "(objectClass=*)", vec!["1.1"])
                            .await
                    })
                })
                .await?;
            match r.1.rc {
                0 => Ok(()),
                rc => Err(Unavailable(format!(
                    "reading auth.ldap.user_base answered result code {rc}"
                ))),
            }
        })
        .await
    }

    async fn login_inner(&self, user: &str, password: &str) -> Result<Login, Unavailable> {
        let mut lease = self.lease().await?;
        let entry = match self.find_user(&mut lease, user).await? {
            Found::One(e) => e,
            Found::None => return Ok(Login::Refused("no such user in the directory")),
            Found::Several => return Ok(Login::Refused("more than one directory entry")),
            Found::Respelled => {
                return Ok(Login::Refused(
                    "the directory spells this name otherwise (case or spaces): log in with its spelling",
                ))
            }
        };
        // Read with the service account before the bind, so the connection needs no
        // bind back to it in between; the groups are used only if the bind succeeds.
        let groups = self.groups(&mut lease, user, &entry).await?;
        let dn = entry.dn.clone();
        let password = password.to_owned();
        if let Some(c) = lease.conn.as_mut() {
            c.service_bound = false;
        }
        let r = self
            .op(&mut lease, LdapOp::Bind, |ldap, t| {
                Box::pin(async move { ldap.with_timeout(t).simple_bind(&dn, &password).await })
            })
            .await?;
        match r.rc {
            0 => Ok(Login::Accepted { groups }),
            rc if RC_REFUSED.contains(&rc) => Ok(Login::Refused("the directory refused the bind")),
            rc => {
                lease.broken();
                self.metrics.ldap_error(LdapOp::Bind);
                Err(Unavailable(format!(
                    "the user bind answered result code {rc}"
                )))
            }
        }
    }

    /// The one entry `user_filter` finds for `user` under `user_base`.
    async fn find_user(&self, lease: &mut Lease<'_>, user: &str) -> Result<Found, Unavailable> {
        let filter = filter::fill(&self.cfg.user_filter, user, "");
        let mut attrs = vec![self.cfg.user_attribute.clone()];
        if let GroupLookup::Attribute(a) = &self.cfg.groups {
            attrs.push(a.clone());
        }
        let base = self.cfg.user_base.clone();
        let (entries, result) = self
            .op(lease, LdapOp::Search, |ldap, t| {
                Box::pin(async move {
                    ldap.with_search_options(SearchOptions::new().sizelimit(2))
                        .with_timeout(t)
                        .search(&base, Scope::Subtree, &filter, attrs)
                        .await
                })
            })
            .await
            .map(|r| (r.0, r.1))?;
        if entries.len() > 1 || result.rc == RC_SIZE_LIMIT {
            return Ok(Found::Several);
        }
        if result.rc != 0 {
            self.metrics.ldap_error(LdapOp::Search);
            return Err(Unavailable(format!(
                "the user search under auth.ldap.user_base answered result code {}",
                result.rc
            )));
        }
        Ok(match entries.into_iter().next() {
            Some(e) => {
                let e = SearchEntry::construct(e);
                if spelled_as(&e, &self.cfg.user_attribute, user) {
                    Found::One(e)
                } else {
                    Found::Respelled
                }
            }
            None => Found::None,
        })
    }

    /// The names of the groups of `user` (entry `entry`), sorted, without duplicates.
    async fn groups(
        &self,
        lease: &mut Lease<'_>,
        user: &str,
        entry: &SearchEntry,
    ) -> Result<Vec<String>, Unavailable> {
        let name_attr = &self.cfg.group_name_attribute;
        let mut names: Vec<String> = match &self.cfg.groups {
            GroupLookup::Attribute(a) => values(entry, a)
                .iter()
                .filter_map(|dn| {
                    let n = filter::group_name(dn, name_attr);
                    if n.is_none() {
                        tracing::debug!(group = %crate::log::Escaped(dn), "group DN without a {name_attr}= first: ignored");
                    }
                    n
                })
                .collect(),
            GroupLookup::Search { base, filter: f } => {
                let filter = filter::fill(f, user, &entry.dn);
                let (base, attrs) = (base.clone(), vec![name_attr.clone()]);
                let r = self
                    .op(lease, LdapOp::Search, |ldap, t| {
                        Box::pin(async move {
                            ldap.with_search_options(SearchOptions::new().sizelimit(MAX_GROUPS))
                                .with_timeout(t)
                                .search(&base, Scope::Subtree, &filter, attrs)
                                .await
                        })
                    })
                    .await?;
                match r.1.rc {
                    0 => {}
                    RC_SIZE_LIMIT => tracing::warn!(user = %crate::log::Escaped(user), "more than {MAX_GROUPS} groups: the rest are ignored"),
                    rc => {
                        self.metrics.ldap_error(LdapOp::Search);
                        return Err(Unavailable(format!(
                            "the group search under auth.ldap.group_base answered result code {rc}"
                        )));
                    }
                }
                r.0.into_iter()
                    .filter_map(|e| values(&SearchEntry::construct(e), name_attr).into_iter().next())
                    .collect()
            }
        };
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// A connection bound as the service account, from the pool or new.
    async fn lease(&self) -> Result<Lease<'_>, Unavailable> {
        let permit = tokio::time::timeout(self.cfg.timeout, self.pool.slots.clone().acquire_owned())
            .await
            .map_err(|_| {
                Unavailable(format!(
                    "all {} directory connections (auth.ldap.pool_size) stayed busy for auth.ldap.timeout",
                    self.cfg.pool_size
                ))
            })?
            .map_err(|_| Unavailable("the directory pool is closed".into()))?;
        let idle = self.pool.take_idle();
        let mut lease = Lease {
            pool: &self.pool,
            conn: idle,
            _permit: permit,
        };
        if lease.conn.is_none() {
            lease.conn = Some(Conn {
                ldap: self.connect().await?,
                service_bound: false,
            });
        }
        if lease.conn.as_ref().is_some_and(|c| !c.service_bound) {
            let (dn, pw) = (self.cfg.bind_dn.clone(), self.service_password.0.clone());
            let r = self
                .op(&mut lease, LdapOp::Bind, |ldap, t| {
                    Box::pin(async move { ldap.with_timeout(t).simple_bind(&dn, &pw).await })
                })
                .await?;
            if r.rc != 0 {
                lease.broken();
                self.metrics.ldap_error(LdapOp::Bind);
                // The DN is configuration, not a secret; the password is not in here.
                return Err(Unavailable(format!(
                    "the service account (auth.ldap.bind_dn {:?}) was refused: result code {}",
                    self.cfg.bind_dn, r.rc
                )));
            }
            if let Some(c) = lease.conn.as_mut() {
                c.service_bound = true;
            }
        }
        Ok(lease)
    }

    async fn connect(&self) -> Result<Ldap, Unavailable> {
        let start = Instant::now();
        // conn_timeout bounds the TCP connect; this bounds TLS and StartTLS as well.
        let limit = self.cfg.connect_timeout + self.cfg.timeout;
        let result = tokio::time::timeout(
            limit,
            LdapConnAsync::with_settings(self.settings.clone(), &self.cfg.url),
        )
        .await;
        self.metrics
            .ldap_observe(LdapOp::Connect, start.elapsed().as_secs_f64());
        let (conn, ldap) = match result {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                self.metrics.ldap_error(LdapOp::Connect);
                return Err(Unavailable(format!(
                    "cannot connect to {}: {e}",
                    self.cfg.url
                )));
            }
            Err(_) => {
                self.metrics.ldap_error(LdapOp::Connect);
                return Err(Unavailable(format!(
                    "no connection to {} within {:?}",
                    self.cfg.url, limit
                )));
            }
        };
        tokio::spawn(async move {
            if let Err(e) = conn.drive().await {
                tracing::debug!(error = %e, "directory connection ended");
            }
        });
        Ok(ldap)
    }

    /// Runs one operation on the lease's connection with the operation timeout, timing
    /// it; a failure to get an answer breaks the connection (it is not pooled again).
    async fn op<T>(
        &self,
        lease: &mut Lease<'_>,
        kind: LdapOp,
        f: impl FnOnce(
            &mut Ldap,
            Duration,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = ldap3::result::Result<T>> + Send + '_>,
        >,
    ) -> Result<T, Unavailable> {
        let Some(conn) = lease.conn.as_mut() else {
            return Err(Unavailable("no connection".into()));
        };
        let start = Instant::now();
        let r = f(&mut conn.ldap, self.cfg.timeout).await;
        self.metrics
            .ldap_observe(kind, start.elapsed().as_secs_f64());
        r.map_err(|e| {
            lease.broken();
            self.metrics.ldap_error(kind);
            Unavailable(format!("{} failed: {e}", kind.as_str()))
        })
    }
}

/// Values of attribute `name` of `entry` (attribute names compare without case).
fn values(entry: &SearchEntry, name: &str) -> Vec<String> {
    entry
        .attrs
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| v.iter().cloned())
        .collect()
}

/// Runs `fut` in a task of its own: a panic in the LDAP library's parsing of an answer
/// ends that task, and the login is answered as a directory failure.
async fn isolated<T: Send + 'static>(
    fut: impl std::future::Future<Output = Result<T, Unavailable>> + Send + 'static,
) -> Result<T, Unavailable> {
    tokio::spawn(fut).await.unwrap_or_else(|e| {
        Err(Unavailable(format!(
            "the directory's answer could not be read: {e}"
        )))
    })
}

/// Reads the service password from its file or environment variable. An empty one is
/// refused: the service bind would be an anonymous one.
fn read_secret(src: &SecretSource) -> Result<String, ConfigError> {
    crate::proxy::upstream::read_secret(
        src,
        "auth.ldap",
        ["bind_password_file", "bind_password_env"],
        "the service account's password",
    )
}

struct Conn {
    ldap: Ldap,
    /// Bound as the service account (not as a user since).
    service_bound: bool,
}

/// At most `pool_size` connections, busy or idle.
struct Pool {
    idle: std::sync::Mutex<Vec<Conn>>,
    slots: Arc<tokio::sync::Semaphore>,
}

impl Pool {
    fn new(size: usize) -> Pool {
        Pool {
            idle: std::sync::Mutex::new(Vec::with_capacity(size)),
            slots: Arc::new(tokio::sync::Semaphore::new(size)),
        }
    }

    /// An idle connection that is still open, if any (closed ones are dropped).
    fn take_idle(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(mut c) = idle.pop() {
            if !c.ldap.is_closed() {
                return Some(c);
            }
        }
        None
    }
}

/// A connection in use; back to the pool when dropped, unless broken.
struct Lease<'a> {
    pool: &'a Pool,
    conn: Option<Conn>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Lease<'_> {
    /// The connection failed: it is closed instead of pooled.
    fn broken(&mut self) {
        self.conn = None;
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pw_env: &str) -> config::Ldap {
        config::Ldap {
            url: "ldap://127.0.0.1:9".into(),
            transport: LdapTransport::Plaintext,
            ca_file: None,
            bind_dn: "cn=svc,dc=example,dc=org".into(),
            bind_password: SecretSource::Env(pw_env.into()),
            user_base: "dc=example,dc=org".into(),
            user_filter: "(uid={user})".into(),
            user_attribute: "uid".into(),
            groups: GroupLookup::Attribute("memberOf".into()),
            group_name_attribute: "cn".into(),
            connect_timeout: Duration::from_millis(200),
            timeout: Duration::from_millis(200),
            pool_size: 1,
        }
    }

    #[tokio::test]
    async fn an_empty_password_is_refused_before_any_connection() {
        std::env::set_var("RG_TEST_LDAP_PW_1", "service-secret-1");
        let m = Arc::new(Metrics::default());
        let d = Arc::new(Directory::new(&cfg("RG_TEST_LDAP_PW_1"), m.clone()).unwrap());
        assert_eq!(
            d.login("alice", "").await,
            Ok(Login::Refused("empty password"))
        );
        assert!(
            !m.render().contains("operation=\"connect\"} 1"),
            "no connection was tried"
        );
        // Nothing listens on port 9: a real attempt is unavailable, not refused, and
        // the error names no password.
        let e = d.login("alice", "pw").await.unwrap_err();
        assert!(e.0.contains("127.0.0.1:9"), "{e}");
        assert!(
            !format!("{e} {d:?}").contains("service-secret-1"),
            "{e} {d:?}"
        );
    }

    #[test]
    fn the_service_password_is_read_without_its_newline_and_never_empty() {
        std::env::set_var("RG_TEST_LDAP_PW_2", "s3cret\n");
        assert_eq!(
            read_secret(&SecretSource::Env("RG_TEST_LDAP_PW_2".into())).unwrap(),
            "s3cret"
        );
        std::env::set_var("RG_TEST_LDAP_PW_3", "\n");
        let e = read_secret(&SecretSource::Env("RG_TEST_LDAP_PW_3".into())).unwrap_err();
        assert_eq!(e.key, "auth.ldap");
        let e = read_secret(&SecretSource::Env("RG_TEST_LDAP_UNSET".into())).unwrap_err();
        assert_eq!(e.key, "auth.ldap.bind_password_env");
        let d = Directory::new(&cfg("RG_TEST_LDAP_PW_2"), Arc::default()).unwrap();
        assert!(d.same_as(&cfg("RG_TEST_LDAP_PW_2")));
        std::env::set_var("RG_TEST_LDAP_PW_4", "other");
        assert!(!d.same_as(&cfg("RG_TEST_LDAP_PW_4")), "another password");
    }
}
