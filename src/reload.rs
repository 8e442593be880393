//! Reload: the whole configuration, validated before anything is swapped, applied as one
//! [`Snapshot`] swap.
//!
//! ```text
//! SIGHUP, or a watched file's stamp changed (polled every 2 s)
//!   → Config::load + user file + groups + TLS material + upstream client   (all or nothing)
//!   → state.snapshot.store(new)                                           (one swap)
//!   → "needs a restart: <key>" for every fixed setting that differs
//! ```
//!
//! Invariants:
//! - A configuration that does not load whole changes nothing: the error is logged with
//!   the file and key and counted (`registry_guard_config_reload_total{result="error"}`).
//! - Requests under way keep the snapshot they started with (they hold its `Arc`), so a
//!   reload drops no request and never changes the rules under one.
//! - Throttle counts, verified credentials, argon2 threads and the upstream client (its
//!   pooled connections and tokens) survive a reload when their settings did not change.
//! - Files are watched by the metadata of the path resolved through symlinks, so a
//!   Kubernetes ConfigMap or Secret update (the `..data` symlink swapped to a new folder:
//!   a new inode) is seen like an edit in place.
//!
//! Settings that are fixed at start-up are listed by [`restart_needed`]; the rest reload.

use crate::auth::users::{Users, UsersError};
use crate::auth::Authenticator;
use crate::config::{Config, ConfigError, Tls};
use crate::handler::{PublicOrigin, Snapshot, State};
use crate::metrics::Metrics;
use crate::proxy::upstream::Upstream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How often watched files are looked at.
pub const POLL: Duration = Duration::from_secs(2);
/// Files up to this size are also compared by content (a same-size rewrite within the
/// file system's mtime granularity).
const HASH_MAX: u64 = 1024 * 1024;

/// Why a new configuration was not put in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Users(#[from] UsersError),
    #[error(transparent)]
    Tokens(#[from] crate::auth::access_tokens::TokensError),
}

/// What identifies a file's content cheaply: the stamp of the path resolved through
/// symlinks. `None` for a file that cannot be read (missing during a swap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp {
    pub dev: u64,
    pub ino: u64,
    pub mtime: Option<SystemTime>,
    pub len: u64,
    /// SHA-256 of the content, for files up to 1 MiB.
    pub hash: Option<Vec<u8>>,
}

impl FileStamp {
    pub fn of(path: &Path) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        let hash = (m.len() <= HASH_MAX)
            .then(|| std::fs::read(path).ok())
            .flatten()
            .map(|b| {
                ring::digest::digest(&ring::digest::SHA256, &b)
                    .as_ref()
                    .to_vec()
            });
        Some(FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            mtime: m.modified().ok(),
            len: m.len(),
            hash,
        })
    }
}

/// The files a configuration depends on and their last seen stamps.
#[derive(Debug, Default)]
pub struct Watched {
    files: Vec<(PathBuf, Option<FileStamp>)>,
}

impl Watched {
    /// Watches `paths`, keeping the stamps already known for paths watched before (so a
    /// change made while a reload ran is still seen at the next poll).
    pub fn rewatch(&mut self, paths: Vec<PathBuf>) {
        let old = std::mem::take(&mut self.files);
        for p in paths {
            if self.files.iter().any(|(q, _)| *q == p) {
                continue;
            }
            let stamp = match old.iter().find(|(q, _)| *q == p) {
                Some((_, s)) => s.clone(),
                None => FileStamp::of(&p),
            };
            self.files.push((p, stamp));
        }
    }

    /// Stamps every file now; returns the paths whose stamp changed since the last call.
    pub fn changed(&mut self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for (p, last) in &mut self.files {
            let now = FileStamp::of(p);
            if now != *last {
                out.push(p.clone());
                *last = now;
            }
        }
        out
    }
}

/// Every file a reload reads: the config itself, the user file, the certificate and key,
/// the upstream's CA file and password file.
pub fn watched_files(config: &Path, cfg: &Config) -> Vec<PathBuf> {
    let mut v = vec![config.to_owned()];
    if let Some(a) = &cfg.auth {
        v.push(a.users_file.clone());
        if let Some(k) = &a.token_key_file {
            v.push(k.clone());
        }
        if let Some(t) = &a.tokens {
            v.push(t.file.clone());
        }
        if let Some(l) = &a.ldap {
            v.extend(l.ca_file.clone());
            if let crate::config::SecretSource::File(f) = &l.bind_password {
                v.push(f.clone());
            }
        }
    }
    if let Tls::Files { cert, key } = &cfg.server.tls {
        v.push(cert.clone());
        v.push(key.clone());
    }
    if let Some(ca) = &cfg.upstream.ca_file {
        v.push(ca.clone());
    }
    if let Some(crate::config::Credentials {
        password: crate::config::SecretSource::File(f),
        ..
    }) = &cfg.upstream.credentials
    {
        v.push(f.clone());
    }
    v
}

/// PURE: the settings of `new` that differ from the `running` ones and cannot change
/// without a restart (the listeners, connection handling, the log format, the TLS mode,
/// the audit writer). Everything else reloads.
pub fn restart_needed(running: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut check = |differs: bool, key: &'static str| {
        if differs {
            out.push(key);
        }
    };
    let (a, b) = (&running.server, &new.server);
    check(a.listen != b.listen, "server.listen");
    match (&a.tls, &b.tls) {
        (Tls::Files { .. }, Tls::Files { .. }) | (Tls::Plaintext, Tls::Plaintext) => {}
        (
            Tls::SelfSigned { ca_out, names },
            Tls::SelfSigned {
                ca_out: ca_out2,
                names: names2,
            },
        ) => {
            check(ca_out != ca_out2, "server.tls.self_signed.ca_out");
            check(names != names2, "server.tls.self_signed.names");
        }
        (Tls::Plaintext, _) | (_, Tls::Plaintext) => check(true, "server.plaintext"),
        _ => check(true, "server.tls"),
    }
    check(
        a.trusted_proxies != b.trusted_proxies,
        "server.trusted_proxies",
    );
    check(
        a.proxy_protocol != b.proxy_protocol,
        "server.proxy_protocol",
    );
    check(
        running.metrics_listen != new.metrics_listen,
        "metrics.listen",
    );
    check(running.log.format != new.log.format, "log.format");
    let flush = |c: &Config| c.auth.as_ref().map(|a| a.token_flush_interval());
    check(flush(running) != flush(new), "tokens.flush_interval");
    let (a, b) = (&running.limits, &new.limits);
    check(
        a.header_read_timeout != b.header_read_timeout,
        "limits.header_read_timeout",
    );
    check(a.idle_timeout != b.idle_timeout, "limits.idle_timeout");
    check(
        a.max_connections != b.max_connections,
        "limits.max_connections",
    );
    check(
        a.max_connections_per_address != b.max_connections_per_address,
        "limits.max_connections_per_address",
    );
    check(
        a.max_connections_per_user != b.max_connections_per_user,
        "limits.max_connections_per_user",
    );
    check(
        a.max_header_bytes != b.max_header_bytes,
        "limits.max_header_bytes",
    );
    check(
        a.shutdown_grace != b.shutdown_grace,
        "limits.shutdown_grace",
    );
    match (&running.audit, &new.audit) {
        (None, None) => {}
        (Some(a), Some(b)) => {
            let (a, b) = (&a.settings, &b.settings);
            check(a.file != b.file, "audit.file");
            check(a.key_file != b.key_file, "audit.key_file");
            check(a.rotate_bytes != b.rotate_bytes, "audit.rotate_bytes");
            check(a.instance != b.instance, "audit.instance");
            check(a.stdout != b.stdout, "audit.stdout");
            check(
                a.checkpoint_every != b.checkpoint_every,
                "audit.checkpoint_every",
            );
            check(
                a.checkpoint_interval != b.checkpoint_interval,
                "audit.checkpoint_interval",
            );
            check(
                a.max_denials_per_minute != b.max_denials_per_minute,
                "audit.max_denials_per_minute",
            );
            check(a.min_free_bytes != b.min_free_bytes, "audit.min_free_bytes");
            check(a.queue != b.queue, "audit.queue");
            check(a.login_window != b.login_window, "audit.login_window");
            check(
                a.max_failed_logins_per_minute != b.max_failed_logins_per_minute,
                "audit.max_failed_logins_per_minute",
            );
            check(a.syslog != b.syslog, "audit.syslog");
        }
        _ => check(true, "audit"),
    }
    out
}

/// Builds and validates a whole snapshot from `cfg`: the user file (and the groups the
/// rules name), the TLS material, the upstream client and its secrets. `prev` is the
/// snapshot in force (None at start-up): what did not change is taken over from it.
/// `running` is the configuration the process started with: settings it fixes (the TLS
/// mode, whether there is an audit writer) stay as they are.
pub fn build(
    cfg: &Config,
    running: &Config,
    prev: Option<&Snapshot>,
    metrics: &Arc<Metrics>,
) -> Result<Snapshot, ReloadError> {
    let tls = match (prev, &running.server.tls, &cfg.server.tls) {
        (None, _, _) | (Some(_), Tls::Files { .. }, Tls::Files { .. }) => {
            crate::tls::server_config(&cfg.server.tls)?
        }
        // A self-signed certificate is made once (clients trust its CA); a change of
        // TLS mode needs a restart (restart_needed says so).
        (Some(p), _, _) => p.tls.clone(),
    };
    let upstream = {
        let new = Upstream::new(&cfg.upstream)?;
        match prev {
            Some(p) if p.upstream.same_settings(&new) => p.upstream.clone(),
            _ => Arc::new(new),
        }
    };
    let auth = match &cfg.auth {
        Some(a) => {
            let users = Users::load(&a.users_file)?;
            if let Some(access) = &cfg.access {
                access.check_groups(&users, a.ldap.is_some())?;
            }
            let old = prev.and_then(|p| p.auth.as_ref());
            // The directory in force when `auth.ldap` (and its password) did not change:
            // its pool and cached logins stay.
            let directory = match &a.ldap {
                None => None,
                Some(l) => Some(
                    match old.and_then(|o| o.directory()).filter(|d| d.same_as(l)) {
                        Some(d) => d.clone(),
                        None => Arc::new(crate::auth::ldap::Directory::new(l, metrics.clone())?),
                    },
                ),
            };
            let auth = match old {
                Some(old) => old.reloaded(users, &a.settings),
                None => Authenticator::new(users, &a.settings, metrics.clone()),
            }
            .with_directory(directory);
            let auth = match &a.tokens {
                Some(t) => {
                    let tokens = load_tokens(t, &auth.users(), &a.users_file)?;
                    auth.with_access_tokens(tokens, t.last_used_file.clone())
                }
                None => auth,
            };
            Some(match &a.token_key_file {
                Some(path) => auth.with_token_key(crate::server::token_key(path)?),
                None => auth,
            })
        }
        None => None,
    };
    // The audit writer is started once: with it, the new config's handler settings
    // (or, when the new config drops `audit:`, the ones in force); without it, none.
    let audit = match (&running.audit, prev) {
        (None, _) => None,
        (Some(_), Some(p)) => cfg.audit.clone().or_else(|| p.audit.clone()),
        (Some(a), None) => Some(cfg.audit.clone().unwrap_or_else(|| a.clone())),
    };
    Ok(Snapshot {
        upstream,
        auth,
        policy: cfg.access.as_ref().map(|a| a.policy.clone()),
        audit,
        catalog_max_n: cfg.limits.catalog_max_n,
        max_tags: cfg.limits.max_tags,
        realm: cfg.realm().to_owned(),
        max_unauthenticated_body: cfg.max_unauthenticated_body(),
        public_origin: cfg.server.public_origin.as_deref().map(PublicOrigin::parse),
        max_manifest_bytes: cfg.limits.max_manifest_bytes,
        tls,
    })
}

/// Loads the tokens file: checked whole, no name also one of `users` (of `users_file`),
/// and a warning for tokens `tokens.max_lifetime` cuts short.
pub(crate) fn load_tokens(
    t: &crate::config::AccessTokens,
    users: &Users,
    users_file: &Path,
) -> Result<crate::auth::access_tokens::Tokens, ReloadError> {
    use crate::auth::access_tokens::{check_no_user_names, Tokens};
    let tokens = Tokens::load(&t.file, t.max_lifetime)?;
    check_no_user_names(&tokens, users, users_file)?;
    if !tokens.capped.is_empty() {
        tracing::warn!(file = %t.file.display(), tokens = %tokens.capped.join(", "), "tokens that expire later than tokens.max_lifetime after their creation (or never) are refused from then on");
    }
    Ok(tokens)
}

/// Loads the config file and builds its snapshot; errors name the config file.
fn load(
    path: &Path,
    running: &Config,
    prev: &Snapshot,
    metrics: &Arc<Metrics>,
) -> Result<(Config, Snapshot), ReloadError> {
    let in_file = |mut e: ConfigError| {
        if e.file.is_none() {
            e.file = Some(path.to_owned());
        }
        e
    };
    let cfg = Config::load(path)?;
    let snap = build(&cfg, running, Some(prev), metrics).map_err(|e| match e {
        ReloadError::Config(c) => ReloadError::Config(in_file(c)),
        other => other,
    })?;
    Ok((cfg, snap))
}

/// Seconds since the Unix epoch, for the last-success gauge.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Runs `f` on the watched files on a blocking thread: stamping reads every watched file,
/// and a file whose read never returns (a FIFO put in its place, a hung network mount)
/// must hold one blocking thread, never a worker of the runtime (with both workers stuck
/// the proxy stops serving, and SIGTERM is not even seen). Until such a read returns,
/// this watch waits (no reload, no SIGHUP reopen) and says nothing more.
async fn off_workers<T>(
    files: &mut Watched,
    f: impl FnOnce(&mut Watched) -> T + Send + 'static,
) -> T
where
    T: Default + Send + 'static,
{
    let mut taken = std::mem::take(files);
    match tokio::task::spawn_blocking(move || {
        let out = f(&mut taken);
        (taken, out)
    })
    .await
    {
        Ok((back, out)) => {
            *files = back;
            out
        }
        Err(e) => {
            tracing::error!(error = %e, "stamping the watched files failed: file changes are no longer seen (SIGHUP still reloads)");
            T::default()
        }
    }
}

/// Reloads on SIGHUP and whenever a watched file changes (polled every [`POLL`]). On
/// SIGHUP the audit writer also starts a new file (after logrotate moved it).
pub async fn watch(config: PathBuf, running: Config, state: Arc<State>) {
    use tokio::signal::unix::{signal, SignalKind};
    let running = Arc::new(running);
    let mut files = Watched::default();
    let paths = watched_files(&config, &running);
    off_workers(&mut files, move |f| f.rewatch(paths)).await;
    let mut hup = signal(SignalKind::hangup()).ok();
    loop {
        let forced = tokio::select! {
            _ = tokio::time::sleep(POLL) => false,
            Some(_) = async { match &mut hup { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        if forced {
            if let Some(log) = &state.audit_log {
                log.reopen().await;
                tracing::info!("SIGHUP: the audit log starts a new file at its next record");
            }
        }
        let mut changed = off_workers(&mut files, Watched::changed).await;
        if !forced && changed.is_empty() {
            continue;
        }
        // A writer may still be at it (an editor's second write, a copy under way):
        // wait until the files hold still for a moment, so a half-written file is not
        // reported as a broken configuration.
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let more = off_workers(&mut files, Watched::changed).await;
            if more.is_empty() {
                break;
            }
            changed.extend(more);
        }
        let why = if forced {
            "SIGHUP".to_owned()
        } else {
            let names: Vec<String> = changed.iter().map(|p| p.display().to_string()).collect();
            format!("changed: {}", names.join(", "))
        };
        let (path, run, prev, metrics) = (
            config.clone(),
            running.clone(),
            state.snapshot.load_full(),
            state.metrics.clone(),
        );
        let result = tokio::task::spawn_blocking(move || load(&path, &run, &prev, &metrics)).await;
        match result {
            Ok(Ok((cfg, snap))) => {
                if cfg.auth.is_none() {
                    tracing::warn!("auth.disabled: true: every well-formed request is forwarded without a credential check");
                }
                if let Some(access) = &cfg.access {
                    for w in &access.warnings {
                        tracing::warn!("{w}");
                    }
                }
                let users = snap.auth.as_ref().map_or(0, |a| a.users().len());
                let snap = Arc::new(snap);
                state.snapshot.store(snap.clone());
                tokio::spawn(async move {
                    if let Some(auth) = &snap.auth {
                        auth.report_shadowed_names().await;
                    }
                });
                state.metrics.config_reload_ok.inc();
                state.metrics.config_last_reload_success.set(unix_now());
                tracing::info!(config = %config.display(), reason = %why, users, "configuration reloaded");
                for key in restart_needed(&running, &cfg) {
                    tracing::warn!(config = %config.display(), key, "needs a restart: {key} (the running value stays in force)");
                }
                let paths = watched_files(&config, &cfg);
                off_workers(&mut files, move |f| f.rewatch(paths)).await;
            }
            Ok(Err(e)) => {
                state.metrics.config_reload_error.inc();
                tracing::error!(config = %config.display(), reason = %why, error = %e, "configuration not reloaded; the previous one stays in force");
            }
            Err(e) => {
                state.metrics.config_reload_error.inc();
                tracing::error!(error = %e, "configuration reload failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "server:\n  listen: 127.0.0.1:5443\n  plaintext: true\nupstream:\n  url: http://127.0.0.1:5000\nauth:\n  disabled: true\n";

    fn cfg(extra: &str) -> Config {
        Config::from_yaml(&format!("{BASE}{extra}")).unwrap()
    }

    #[test]
    fn reload_stamps_see_edits_renames_over_and_symlink_swaps() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("a.yaml");
        std::fs::write(&real, "one").unwrap();
        let mut w = Watched::default();
        w.rewatch(vec![real.clone()]);
        assert!(w.changed().is_empty(), "no change yet");
        // An edit in place of the same length: the content hash sees it even within
        // the mtime granularity.
        std::fs::write(&real, "two").unwrap();
        assert_eq!(w.changed(), vec![real.clone()]);
        assert!(w.changed().is_empty(), "seen once");
        // Rename over (editors, `user add`): a new inode.
        let tmp = dir.path().join("a.tmp");
        std::fs::write(&tmp, "two").unwrap();
        std::fs::rename(&tmp, &real).unwrap();
        assert_eq!(w.changed(), vec![real.clone()], "same bytes, new inode");
        // Kubernetes: config.yaml -> ..data/config.yaml, ..data -> ..v1, swapped to ..v2.
        let k = dir.path().join("k8s");
        for (v, text) in [("..v1", "rules: 1"), ("..v2", "rules: 2")] {
            std::fs::create_dir_all(k.join(v)).unwrap();
            std::fs::write(k.join(v).join("config.yaml"), text).unwrap();
        }
        std::os::unix::fs::symlink("..v1", k.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/config.yaml", k.join("config.yaml")).unwrap();
        let watched = k.join("config.yaml");
        w.rewatch(vec![real.clone(), watched.clone()]);
        assert!(w.changed().is_empty());
        std::os::unix::fs::symlink("..v2", k.join("..data_tmp")).unwrap();
        std::fs::rename(k.join("..data_tmp"), k.join("..data")).unwrap();
        assert_eq!(w.changed(), vec![watched.clone()]);
        // A file that disappears is a change too (the reload then fails and says so).
        std::fs::remove_dir_all(k.join("..v2")).unwrap();
        assert_eq!(w.changed(), vec![watched.clone()]);
        assert!(w.changed().is_empty());
        // rewatch keeps the stamps of paths still watched.
        std::fs::write(&real, "three").unwrap();
        w.rewatch(vec![real.clone()]);
        assert_eq!(w.changed(), vec![real]);
    }

    #[test]
    fn reload_lists_fixed_settings_that_need_a_restart() {
        let old = cfg("");
        assert!(restart_needed(&old, &old).is_empty());
        let new = Config::from_yaml(&BASE.replace("5443", "6443")).unwrap();
        assert_eq!(restart_needed(&old, &new), vec!["server.listen"]);
        let new = cfg("metrics:\n  listen: 127.0.0.1:9100\nlimits:\n  idle_timeout: 7s\n  max_tags: 10\n  catalog_max_n: 5\nlog:\n  format: json\n");
        assert_eq!(
            restart_needed(&old, &new),
            vec!["metrics.listen", "log.format", "limits.idle_timeout"],
            "max_tags and catalog_max_n reload"
        );
        let tls = Config::from_yaml(&BASE.replace(
            "  plaintext: true\n",
            "  tls:\n    cert: a.pem\n    key: k.pem\n",
        ))
        .unwrap();
        assert_eq!(restart_needed(&old, &tls), vec!["server.plaintext"]);
        let other_files = Config::from_yaml(&BASE.replace(
            "  plaintext: true\n",
            "  tls:\n    cert: b.pem\n    key: l.pem\n",
        ))
        .unwrap();
        assert!(
            restart_needed(&tls, &other_files).is_empty(),
            "certificate files reload"
        );
        let public = Config::from_yaml(&BASE.replace(
            "  plaintext: true\n",
            "  plaintext: true\n  public_url: https://registry.example\n",
        ))
        .unwrap();
        assert!(
            restart_needed(&old, &public).is_empty(),
            "public_url reloads"
        );
    }
}
