//! Configuration: raw serde structs that refuse unknown keys, and a validation step that
//! turns them into typed values and names the key that is wrong.
//!
//! [`Config::from_yaml`] takes a string so tests need no files; [`Config::load`] adds the
//! file name to every message. Validation here is pure (no file is opened): files named by
//! the config (certificates, CA bundles, secrets) are read by the modules that use them,
//! at start-up and by `registry-guard check`, and their errors name the key too.

use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration problem: which file, which key, what is wrong.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: Option<PathBuf>,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

impl ConfigError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            file: None,
            key: key.into(),
            message: message.into(),
        }
    }
    fn in_file(mut self, file: &Path) -> Self {
        self.file = Some(file.to_owned());
        self
    }
}

// ---------------------------------------------------------------------------------------
// Raw: exactly the YAML, nothing checked beyond types and key names.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    upstream: RawUpstream,
    auth: Option<RawAuth>,
    access: Option<RawAccess>,
    audit: Option<RawAudit>,
    metrics: Option<RawMetrics>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    log: RawLog,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: String,
    tls: Option<RawTls>,
    #[serde(default)]
    plaintext: bool,
    public_url: Option<String>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    self_signed: Option<RawSelfSigned>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSelfSigned {
    ca_out: PathBuf,
    names: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    url: String,
    ca_file: Option<PathBuf>,
    connect_timeout: Option<String>,
    response_header_timeout: Option<String>,
    pool_idle_timeout: Option<String>,
    pool_max_idle: Option<usize>,
    credentials: Option<RawCredentials>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredentials {
    username: String,
    password_file: Option<PathBuf>,
    password_env: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    header_read_timeout: Option<String>,
    idle_timeout: Option<String>,
    max_connections: Option<usize>,
    max_connections_per_address: Option<usize>,
    max_header_bytes: Option<usize>,
    max_manifest_bytes: Option<u64>,
    shutdown_grace: Option<String>,
    catalog_max_n: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    users_file: Option<PathBuf>,
    #[serde(default)]
    disabled: bool,
    realm: Option<String>,
    #[serde(default)]
    anonymous: bool,
    cache_ttl: Option<String>,
    cache_max_entries: Option<usize>,
    verify_concurrency: Option<usize>,
    #[serde(default)]
    throttle: RawThrottle,
    max_unauthenticated_body: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawThrottle {
    max_failures: Option<u32>,
    max_failures_per_address: Option<u32>,
    max_in_flight_per_address: Option<u32>,
    max_in_flight_per_user: Option<u32>,
    window: Option<String>,
    max_tracked: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccess {
    #[serde(default)]
    admins: RawWho,
    #[serde(default)]
    rules: Vec<RawRule>,
    #[serde(default)]
    protected_tags: Vec<RawProtection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWho {
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Option<String>,
    repos: Vec<String>,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    anonymous: bool,
    actions: Vec<RawAction>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawAction {
    Pull,
    Push,
    Delete,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProtection {
    repos: Vec<String>,
    tags: Vec<String>,
    #[serde(default)]
    except: RawWho,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    file: PathBuf,
    key_file: Option<PathBuf>,
    checkpoint_every: Option<u64>,
    checkpoint_interval: Option<String>,
    max_denials_per_minute: Option<u32>,
    min_free_bytes: Option<u64>,
    rotate_bytes: Option<u64>,
    #[serde(default)]
    stdout: bool,
    #[serde(default)]
    manifest_pushes: bool,
    max_tags: Option<usize>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Validated.

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: Server,
    pub upstream: Upstream,
    /// `None`: `auth.disabled: true`, no credential check at all.
    pub auth: Option<Auth>,
    /// The access rules (`None` exactly when auth is disabled).
    pub access: Option<Access>,
    /// The delete audit trail, if configured.
    pub audit: Option<Audit>,
    /// Address of the Prometheus metrics listener, if any.
    pub metrics_listen: Option<SocketAddr>,
    pub limits: Limits,
    pub log: Log,
}

#[derive(Debug, Clone)]
pub struct Audit {
    pub settings: crate::audit::AuditSettings,
    /// Also audit manifest pushes (PUT), not only deletes.
    pub manifest_pushes: bool,
    /// Most tags examined to find those pointing at a deleted digest.
    pub max_tags: usize,
    /// Peers whose X-Forwarded-For is believed for the client address.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// Compiled access rules plus what validation could not check without the user file.
#[derive(Debug, Clone)]
pub struct Access {
    pub policy: crate::acl::Policy,
    /// (key, group) for every group a rule names: checked against the user file.
    pub groups_named: Vec<(String, String)>,
    /// Rules that grant push or delete without pull: allowed, but worth a warning.
    pub warnings: Vec<String>,
}

impl Access {
    /// Refuses groups no user has: a typo there would silently grant nothing.
    pub fn check_groups(&self, users: &crate::auth::users::Users) -> Result<(), ConfigError> {
        let known: std::collections::HashSet<&str> = users.groups().collect();
        for (key, g) in &self.groups_named {
            if !known.contains(g.as_str()) {
                return Err(ConfigError::new(
                    key.clone(),
                    format!("unknown group {g:?}: no user in the user file is in it"),
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct Auth {
    pub users_file: PathBuf,
    pub realm: String,
    pub settings: crate::auth::AuthSettings,
    /// A request refused before forwarding whose body was sent without
    /// `Expect: 100-continue` is read and discarded up to this many bytes, so the client
    /// sees the refusal instead of a reset connection.
    pub max_unauthenticated_body: u64,
}

#[derive(Debug, Clone)]
pub struct Server {
    pub listen: SocketAddr,
    pub tls: Tls,
    /// Origin (`https://host[:port]`) clients use; `None`: taken from each request's Host.
    pub public_origin: Option<String>,
    /// Peers whose `X-Forwarded-For` is believed for the client address (load balancers).
    /// The one client address (throttle, logs, audit, forwarded headers) comes from here.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

#[derive(Debug, Clone)]
pub enum Tls {
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
    SelfSigned {
        ca_out: PathBuf,
        names: Vec<String>,
    },
    /// Plain HTTP, only when the config says `plaintext: true` (behind a TLS balancer).
    Plaintext,
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub scheme: UpstreamScheme,
    /// `host[:port]` as written in the URL.
    pub authority: String,
    /// `scheme://authority` with the default port made explicit, lower-cased: what a
    /// `Location` on the upstream's own origin starts with.
    pub origin: String,
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub response_header_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle: usize,
    pub credentials: Option<Credentials>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamScheme {
    Http,
    Https,
}

impl UpstreamScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamScheme::Http => "http",
            UpstreamScheme::Https => "https",
        }
    }
    pub fn default_port(self) -> u16 {
        match self {
            UpstreamScheme::Http => 80,
            UpstreamScheme::Https => 443,
        }
    }
}

/// Where the proxy's own upstream password comes from. The password itself is read at
/// start-up (`proxy::upstream`), never stored in this struct, never logged.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub username: String,
    pub password: SecretSource,
}

#[derive(Debug, Clone)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// Connections from one client address (IPv6 by /64) that have not carried an
    /// authenticated request; a further one is closed right after accept. The default,
    /// 128, leaves room for an office behind one NAT or a CI farm of anonymous pullers
    /// (a few connections per pull each) while one address can take at most 1/32 of the
    /// default `max_connections`. Peers in `server.trusted_proxies` are not capped: a
    /// load balancer carries many clients whose addresses are known only per request.
    pub max_connections_per_address: usize,
    pub max_header_bytes: usize,
    pub max_manifest_bytes: u64,
    pub shutdown_grace: Duration,
    /// Largest catalog page served (CVE-2023-2253 was an unbounded `n`).
    pub catalog_max_n: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct Log {
    pub format: LogFormat,
}

/// Manifests up to this size must always be accepted (checklist I).
pub const MIN_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;
/// hyper's smallest read buffer; the header cap cannot be lower.
pub const MIN_HEADER_BYTES: usize = 8192;
/// A header cap above this is no cap.
pub const MAX_HEADER_BYTES: usize = 1024 * 1024;
/// More connections than this is a typo (and more than a semaphore can count).
pub const MAX_CONNECTIONS: usize = 1 << 20;
/// Longest timeout or period accepted: longer ones are typos, and overflow clocks.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

impl Config {
    /// Reads and validates a config file; every error names the file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new("", format!("cannot read config file: {e}")).in_file(path)
        })?;
        let mut cfg = Config::from_yaml(&text).map_err(|e| e.in_file(path))?;
        cfg.resolve_relative_to(path.parent().unwrap_or(Path::new(".")));
        Ok(cfg)
    }

    /// Parses and validates YAML text.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = serde_yaml::from_str(text).map_err(yaml_error)?;
        validate(raw)
    }

    /// Paths in a config file are relative to the file's folder, like nginx's includes.
    fn resolve_relative_to(&mut self, dir: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        match &mut self.server.tls {
            Tls::Files { cert, key } => {
                fix(cert);
                fix(key);
            }
            Tls::SelfSigned { ca_out, .. } => fix(ca_out),
            Tls::Plaintext => {}
        }
        if let Some(ca) = &mut self.upstream.ca_file {
            fix(ca);
        }
        if let Some(auth) = &mut self.auth {
            fix(&mut auth.users_file);
        }
        if let Some(audit) = &mut self.audit {
            fix(&mut audit.settings.file);
            fix(&mut audit.settings.key_file);
        }
        if let Some(Credentials {
            password: SecretSource::File(f),
            ..
        }) = &mut self.upstream.credentials
        {
            fix(f);
        }
    }
}

/// serde_yaml's message already says "unknown field `x`, expected one of ..." and where;
/// the key path is in the message, so `key` stays empty.
fn yaml_error(e: serde_yaml::Error) -> ConfigError {
    ConfigError::new("", e.to_string())
}

fn duration(key: &str, value: Option<&str>, default: Duration) -> Result<Duration, ConfigError> {
    let Some(v) = value else { return Ok(default) };
    let d = humantime::parse_duration(v.trim()).map_err(|e| {
        ConfigError::new(
            key,
            format!("{v:?} is not a duration like 10s, 500ms or 5m: {e}"),
        )
    })?;
    if d.is_zero() {
        return Err(ConfigError::new(key, "must be greater than zero"));
    }
    if d > MAX_DURATION {
        return Err(ConfigError::new(key, "must be at most 24h"));
    }
    Ok(d)
}

fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let mut server = validate_server(raw.server)?;
    let upstream = validate_upstream(raw.upstream)?;
    let auth = validate_auth(raw.auth)?;
    let access = match (&auth, raw.access) {
        (None, None) => None,
        (None, Some(_)) => {
            return Err(ConfigError::new("access", "rules need authentication, but auth.disabled is true"))
        }
        (Some(_), None) => {
            return Err(ConfigError::new(
                "access",
                "missing: access is denied unless a rule allows it; give access.rules (see config/example.yaml)",
            ))
        }
        (Some(a), Some(raw)) => Some(validate_access(raw, a.settings.anonymous)?),
    };
    let audit = match raw.audit {
        None => None,
        Some(a) => {
            let trusted_proxies = parse_nets("audit.trusted_proxies", &a.trusted_proxies)?;
            if a.file.as_os_str().is_empty() {
                return Err(ConfigError::new("audit.file", "must name a file"));
            }
            // Without a key, whoever can write the file can rewrite the chain: required.
            let key_file = match a.key_file {
                Some(k) if !k.as_os_str().is_empty() => k,
                _ => return Err(ConfigError::new(
                    "audit.key_file",
                    "missing: the audit chain is keyed (HMAC-SHA-256) so that who can write the audit file cannot rewrite it; make a key with `registry-guard audit keygen FILE` and name it here",
                )),
            };
            let max_denials_per_minute = a.max_denials_per_minute.unwrap_or(60);
            if max_denials_per_minute == 0 {
                return Err(ConfigError::new(
                    "audit.max_denials_per_minute",
                    "must be at least 1 (denials over it are summarized, never lost)",
                ));
            }
            Some(Audit {
                settings: crate::audit::AuditSettings {
                    file: a.file,
                    rotate_bytes: a.rotate_bytes.unwrap_or(0),
                    stdout: a.stdout,
                    key_file,
                    checkpoint_every: a.checkpoint_every.unwrap_or(1000),
                    checkpoint_interval: duration(
                        "audit.checkpoint_interval",
                        a.checkpoint_interval.as_deref(),
                        Duration::from_secs(60),
                    )?,
                    max_denials_per_minute,
                    min_free_bytes: a.min_free_bytes.unwrap_or(64 << 20),
                },
                manifest_pushes: a.manifest_pushes,
                max_tags: match a.max_tags {
                    Some(n) if n > 10_000 => {
                        return Err(ConfigError::new("audit.max_tags", "must be at most 10000"))
                    }
                    Some(n) => n,
                    None => 100,
                },
                trusted_proxies,
            })
        }
    };
    // `audit.trusted_proxies` (older configs) means the same as `server.trusted_proxies`.
    if let Some(a) = &audit {
        for n in &a.trusted_proxies {
            if !server.trusted_proxies.contains(n) {
                server.trusted_proxies.push(*n);
            }
        }
    }
    let metrics_listen = match raw.metrics {
        None => None,
        Some(m) => Some(m.listen.parse::<SocketAddr>().map_err(|_| {
            ConfigError::new(
                "metrics.listen",
                format!("{:?} is not an address:port like 127.0.0.1:9090", m.listen),
            )
        })?),
    };
    let l = raw.limits;
    let limits = Limits {
        header_read_timeout: duration(
            "limits.header_read_timeout",
            l.header_read_timeout.as_deref(),
            Duration::from_secs(10),
        )?,
        idle_timeout: duration("limits.idle_timeout", l.idle_timeout.as_deref(), Duration::from_secs(120))?,
        max_connections: match l.max_connections {
            Some(n) if n == 0 || n > MAX_CONNECTIONS => {
                return Err(ConfigError::new(
                    "limits.max_connections",
                    format!("must be between 1 and {MAX_CONNECTIONS}"),
                ))
            }
            Some(n) => n,
            None => 4096,
        },
        max_connections_per_address: match l.max_connections_per_address {
            Some(n) if n == 0 || n > MAX_CONNECTIONS => {
                return Err(ConfigError::new(
                    "limits.max_connections_per_address",
                    format!("must be between 1 and {MAX_CONNECTIONS}"),
                ))
            }
            Some(n) => n,
            None => 128,
        },
        max_header_bytes: match l.max_header_bytes {
            Some(n) if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&n) => {
                return Err(ConfigError::new(
                    "limits.max_header_bytes",
                    format!("must be between {MIN_HEADER_BYTES} and {MAX_HEADER_BYTES}"),
                ))
            }
            Some(n) => n,
            None => 64 * 1024,
        },
        max_manifest_bytes: match l.max_manifest_bytes {
            Some(n) if n < MIN_MANIFEST_BYTES => {
                return Err(ConfigError::new(
                    "limits.max_manifest_bytes",
                    format!("must be at least {MIN_MANIFEST_BYTES} (4 MiB): registries accept manifests that large"),
                ))
            }
            Some(n) => n,
            None => MIN_MANIFEST_BYTES,
        },
        shutdown_grace: duration("limits.shutdown_grace", l.shutdown_grace.as_deref(), Duration::from_secs(30))?,
        catalog_max_n: match l.catalog_max_n {
            Some(n) if n == 0 || n > 10_000 => {
                return Err(ConfigError::new("limits.catalog_max_n", "must be between 1 and 10000"))
            }
            Some(n) => n,
            None => 1000,
        },
    };
    let log = Log {
        format: match raw.log.format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError::new(
                    "log.format",
                    format!("{other:?} is not text or json"),
                ))
            }
        },
    };
    Ok(Config {
        server,
        upstream,
        auth,
        access,
        audit,
        metrics_listen,
        limits,
        log,
    })
}

fn who(
    key: &str,
    raw: RawWho,
    groups_named: &mut Vec<(String, String)>,
) -> Result<crate::acl::Who, ConfigError> {
    for u in &raw.users {
        if u != "*" && !crate::auth::users::is_valid_name(u) {
            return Err(ConfigError::new(
                format!("{key}.users"),
                format!("{u:?} is not a user name or *"),
            ));
        }
    }
    for g in &raw.groups {
        groups_named.push((format!("{key}.groups"), g.clone()));
    }
    Ok(crate::acl::Who {
        users: raw.users,
        groups: raw.groups,
        anonymous: false,
    })
}

fn validate_access(raw: RawAccess, anonymous_enabled: bool) -> Result<Access, ConfigError> {
    use crate::acl::{glob::Pattern, Policy, Rule, TagProtection};
    use crate::registry::Actions;
    let mut groups_named = Vec::new();
    let mut warnings = Vec::new();
    let admins = who("access.admins", raw.admins, &mut groups_named)?;
    let mut rules = Vec::with_capacity(raw.rules.len());
    for (i, r) in raw.rules.into_iter().enumerate() {
        let key = format!("access.rules[{i}]");
        let repos = r
            .repos
            .iter()
            .map(|p| {
                Pattern::repo(p)
                    .map_err(|m| ConfigError::new(format!("{key}.repos"), format!("{p:?}: {m}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if repos.is_empty() {
            return Err(ConfigError::new(
                format!("{key}.repos"),
                "names no repository pattern",
            ));
        }
        let mut w = who(
            &key,
            RawWho {
                users: r.users,
                groups: r.groups,
            },
            &mut groups_named,
        )?;
        w.anonymous = r.anonymous;
        if w.users.is_empty() && w.groups.is_empty() && !w.anonymous {
            return Err(ConfigError::new(
                key,
                "applies to nobody: give users, groups or anonymous: true",
            ));
        }
        if r.anonymous && !anonymous_enabled {
            warnings.push(format!(
                "{key} grants anonymous access, but auth.anonymous is false: it has no effect"
            ));
        }
        let actions = r.actions.iter().fold(Actions::NONE, |a, x| {
            a.union(match x {
                RawAction::Pull => Actions::PULL,
                RawAction::Push => Actions::PUSH,
                RawAction::Delete => Actions::DELETE,
            })
        });
        if actions.is_empty() {
            return Err(ConfigError::new(
                format!("{key}.actions"),
                "grants nothing: list pull, push or delete",
            ));
        }
        if !actions.contains(Actions::PULL) {
            warnings.push(format!(
                "{key} grants {actions} without pull: clients need pull as well, from this or another rule"
            ));
        }
        rules.push(Rule {
            label: r.name.unwrap_or(key),
            repos,
            who: w,
            actions,
        });
    }
    let mut protections = Vec::new();
    for (i, p) in raw.protected_tags.into_iter().enumerate() {
        let key = format!("access.protected_tags[{i}]");
        let repos = p
            .repos
            .iter()
            .map(|r| {
                Pattern::repo(r)
                    .map_err(|m| ConfigError::new(format!("{key}.repos"), format!("{r:?}: {m}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let tags = p
            .tags
            .iter()
            .map(|t| {
                Pattern::tag(t)
                    .map_err(|m| ConfigError::new(format!("{key}.tags"), format!("{t:?}: {m}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if repos.is_empty() || tags.is_empty() {
            return Err(ConfigError::new(key, "needs repos and tags"));
        }
        let except = who(&format!("{key}.except"), p.except, &mut groups_named)?;
        protections.push(TagProtection {
            label: key,
            repos,
            tags,
            except,
        });
    }
    Ok(Access {
        policy: Policy::new(rules, admins, protections),
        groups_named,
        warnings,
    })
}

fn validate_auth(raw: Option<RawAuth>) -> Result<Option<Auth>, ConfigError> {
    let Some(a) = raw else {
        return Err(ConfigError::new(
            "auth",
            "missing: give auth.users_file (see config/users.example.yaml), or auth.disabled: true to forward requests without checking credentials",
        ));
    };
    if a.disabled {
        if a.users_file.is_some() || a.anonymous {
            return Err(ConfigError::new(
                "auth.disabled",
                "disabled: true excludes users_file and anonymous",
            ));
        }
        return Ok(None);
    }
    let Some(users_file) = a.users_file else {
        return Err(ConfigError::new(
            "auth.users_file",
            "missing: the user file of argon2 hashes",
        ));
    };
    let realm = a.realm.unwrap_or_else(|| "registry-guard".to_owned());
    if realm.is_empty()
        || realm.len() > 128
        || realm
            .bytes()
            .any(|c| c == b'"' || c == b'\\' || !(c == b' ' || c.is_ascii_graphic()))
    {
        return Err(ConfigError::new(
            "auth.realm",
            "must be 1 to 128 printable ASCII characters without quotes or backslashes",
        ));
    }
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let positive = |key: &str, v: Option<usize>, default: usize| match v {
        Some(0) => Err(ConfigError::new(key, "must be at least 1")),
        Some(n) => Ok(n),
        None => Ok(default),
    };
    let settings = crate::auth::AuthSettings {
        anonymous: a.anonymous,
        cache_ttl: duration(
            "auth.cache_ttl",
            a.cache_ttl.as_deref(),
            Duration::from_secs(300),
        )?,
        cache_max_entries: positive("auth.cache_max_entries", a.cache_max_entries, 10_000)?,
        verify_concurrency: positive("auth.verify_concurrency", a.verify_concurrency, cores)?,
        throttle: validate_throttle(&a.throttle)?,
    };
    Ok(Some(Auth {
        users_file,
        realm,
        settings,
        max_unauthenticated_body: a.max_unauthenticated_body.unwrap_or(1024 * 1024),
    }))
}

fn validate_throttle(t: &RawThrottle) -> Result<crate::auth::throttle::Limits, ConfigError> {
    let count = |key: &str, v: Option<u32>, default: u32| match v {
        Some(0) => Err(ConfigError::new(key, "must be at least 1")),
        Some(n) => Ok(n),
        None => Ok(default),
    };
    let max_failures = count("auth.throttle.max_failures", t.max_failures, 10)?;
    let max_failures_per_address = count(
        "auth.throttle.max_failures_per_address",
        t.max_failures_per_address,
        max_failures.saturating_mul(10).max(100),
    )?;
    if max_failures_per_address < max_failures {
        return Err(ConfigError::new(
            "auth.throttle.max_failures_per_address",
            format!("must be at least auth.throttle.max_failures ({max_failures}): it counts the failures of every name from one address"),
        ));
    }
    Ok(crate::auth::throttle::Limits {
        max_failures,
        max_failures_per_address,
        window: duration(
            "auth.throttle.window",
            t.window.as_deref(),
            Duration::from_secs(60),
        )?,
        max_tracked: match t.max_tracked {
            Some(0) => {
                return Err(ConfigError::new(
                    "auth.throttle.max_tracked",
                    "must be at least 1",
                ))
            }
            Some(n) => n,
            None => 100_000,
        },
        max_in_flight_per_address: count(
            "auth.throttle.max_in_flight_per_address",
            t.max_in_flight_per_address,
            16,
        )?,
        max_in_flight_per_user: count(
            "auth.throttle.max_in_flight_per_user",
            t.max_in_flight_per_user,
            4,
        )?,
    })
}

fn validate_server(s: RawServer) -> Result<Server, ConfigError> {
    let listen: SocketAddr = s.listen.parse().map_err(|_| {
        ConfigError::new(
            "server.listen",
            format!(
                "{:?} is not an address:port like 0.0.0.0:5443 or [::]:5443",
                s.listen
            ),
        )
    })?;
    let tls = match (s.tls, s.plaintext) {
        (Some(_), true) => {
            return Err(ConfigError::new(
                "server.plaintext",
                "plaintext: true and a tls section exclude each other",
            ))
        }
        (None, false) => {
            return Err(ConfigError::new(
                "server.tls",
                "missing: give tls.cert and tls.key, or tls.self_signed, or set plaintext: true to serve plain HTTP behind a TLS terminator",
            ))
        }
        (None, true) => Tls::Plaintext,
        (Some(t), false) => match (t.cert, t.key, t.self_signed) {
            (Some(cert), Some(key), None) => Tls::Files { cert, key },
            (None, None, Some(ss)) => {
                let names = ss
                    .names
                    .unwrap_or_else(|| vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]);
                if names.is_empty() {
                    return Err(ConfigError::new("server.tls.self_signed.names", "must name at least one host"));
                }
                for n in &names {
                    let ok = n.parse::<std::net::IpAddr>().is_ok()
                        || (!n.is_empty()
                            && n.len() <= 253
                            && n.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.'));
                    if !ok {
                        return Err(ConfigError::new(
                            "server.tls.self_signed.names",
                            format!("{n:?} is not a DNS name or IP address"),
                        ));
                    }
                }
                Tls::SelfSigned { ca_out: ss.ca_out, names }
            }
            (Some(_), None, None) => return Err(ConfigError::new("server.tls.key", "missing: tls.cert needs tls.key")),
            (None, Some(_), None) => return Err(ConfigError::new("server.tls.cert", "missing: tls.key needs tls.cert")),
            (None, None, None) => {
                return Err(ConfigError::new(
                    "server.tls",
                    "give tls.cert and tls.key, or tls.self_signed",
                ))
            }
            (_, _, Some(_)) => {
                return Err(ConfigError::new(
                    "server.tls.self_signed",
                    "self_signed excludes tls.cert and tls.key",
                ))
            }
        },
    };
    let public_origin = match s.public_url {
        None => None,
        Some(u) => {
            let (scheme, authority, _) =
                parse_origin(&u).map_err(|m| ConfigError::new("server.public_url", m))?;
            Some(format!("{}://{authority}", scheme.as_str()))
        }
    };
    let trusted_proxies = parse_nets("server.trusted_proxies", &s.trusted_proxies)?;
    Ok(Server {
        listen,
        tls,
        public_origin,
        trusted_proxies,
    })
}

/// Addresses or CIDR blocks (`10.0.0.0/8`, `192.0.2.7`, `::1`).
fn parse_nets(key: &str, values: &[String]) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    values
        .iter()
        .map(|p| {
            p.parse::<ipnet::IpNet>()
                .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    ConfigError::new(key, format!("{p:?} is not an address or CIDR block"))
                })
        })
        .collect()
}

/// Splits `scheme://host[:port][/]` into (scheme, authority, normalised origin).
/// The origin has a lower-case scheme and host and an explicit port.
fn parse_origin(url: &str) -> Result<(UpstreamScheme, String, String), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let scheme = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
        Some("http") => UpstreamScheme::Http,
        Some("https") => UpstreamScheme::Https,
        _ => return Err(format!("{url:?} must start with http:// or https://")),
    };
    let Some(auth) = uri.authority() else {
        return Err(format!("{url:?} has no host"));
    };
    if auth.as_str().contains('@') {
        return Err(format!(
            "{url:?} holds credentials: put them in upstream.credentials (a file or an environment variable)"
        ));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "{url:?} has a path or query: the registry must be served at the root of its origin"
        ));
    }
    let port = auth.port_u16().unwrap_or(scheme.default_port());
    let origin = format!(
        "{}://{}:{}",
        scheme.as_str(),
        auth.host().to_ascii_lowercase(),
        port
    );
    Ok((scheme, auth.as_str().to_owned(), origin))
}

fn validate_upstream(u: RawUpstream) -> Result<Upstream, ConfigError> {
    let (scheme, authority, origin) =
        parse_origin(&u.url).map_err(|m| ConfigError::new("upstream.url", m))?;
    if u.ca_file.is_some() && scheme == UpstreamScheme::Http {
        return Err(ConfigError::new(
            "upstream.ca_file",
            "only applies to an https:// upstream",
        ));
    }
    let credentials = match u.credentials {
        None => None,
        Some(c) => {
            if c.username.is_empty() || c.username.contains(':') {
                return Err(ConfigError::new(
                    "upstream.credentials.username",
                    "must be non-empty and hold no ':'",
                ));
            }
            let password = match (c.password_file, c.password_env) {
                (Some(f), None) => SecretSource::File(f),
                (None, Some(e)) if !e.is_empty() => SecretSource::Env(e),
                _ => {
                    return Err(ConfigError::new(
                        "upstream.credentials",
                        "give exactly one of password_file or password_env (a password is never written in the config)",
                    ))
                }
            };
            Some(Credentials {
                username: c.username,
                password,
            })
        }
    };
    Ok(Upstream {
        scheme,
        authority,
        origin,
        ca_file: u.ca_file,
        connect_timeout: duration(
            "upstream.connect_timeout",
            u.connect_timeout.as_deref(),
            Duration::from_secs(5),
        )?,
        response_header_timeout: duration(
            "upstream.response_header_timeout",
            u.response_header_timeout.as_deref(),
            Duration::from_secs(60),
        )?,
        pool_idle_timeout: duration(
            "upstream.pool_idle_timeout",
            u.pool_idle_timeout.as_deref(),
            Duration::from_secs(90),
        )?,
        pool_max_idle: u.pool_max_idle.unwrap_or(128),
        credentials,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "server:\n  listen: 127.0.0.1:5443\n  plaintext: true\nupstream:\n  url: http://127.0.0.1:5000\nauth:\n  disabled: true\n";
    const WITH_USERS: &str = "server:\n  listen: 127.0.0.1:5443\n  plaintext: true\nupstream:\n  url: http://127.0.0.1:5000\naccess:\n  rules: []\nauth:\n  users_file: users.yaml\n";

    fn err(yaml: &str) -> String {
        Config::from_yaml(yaml).unwrap_err().to_string()
    }

    #[test]
    fn minimal_config_has_defaults() {
        let c = Config::from_yaml(MIN).unwrap();
        assert!(matches!(c.server.tls, Tls::Plaintext));
        assert_eq!(c.upstream.origin, "http://127.0.0.1:5000");
        assert_eq!(c.limits.max_manifest_bytes, MIN_MANIFEST_BYTES);
        assert_eq!(c.limits.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.limits.max_connections_per_address, 128);
        assert_eq!(c.log.format, LogFormat::Text);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = err(&format!("{MIN}limits:\n  max_conections: 3\n"));
        assert!(e.contains("unknown field `max_conections`"), "{e}");
        let e = err(&format!("{MIN}bogus: 1\n"));
        assert!(e.contains("unknown field `bogus`"), "{e}");
    }

    #[test]
    fn messages_name_the_key() {
        let cases = [
            (MIN.replace("127.0.0.1:5443", "nowhere"), "server.listen"),
            (
                MIN.replace("http://127.0.0.1:5000", "ftp://x"),
                "upstream.url",
            ),
            (
                MIN.replace("http://127.0.0.1:5000", "http://u:p@x:5000"),
                "upstream.url",
            ),
            (
                MIN.replace("http://127.0.0.1:5000", "http://x:5000/sub"),
                "upstream.url",
            ),
            (
                format!("{MIN}limits:\n  idle_timeout: soon\n"),
                "limits.idle_timeout",
            ),
            (
                format!("{MIN}limits:\n  idle_timeout: 0s\n"),
                "limits.idle_timeout",
            ),
            (
                format!("{MIN}limits:\n  max_manifest_bytes: 1000\n"),
                "limits.max_manifest_bytes",
            ),
            (
                format!("{MIN}limits:\n  max_connections: 0\n"),
                "limits.max_connections",
            ),
            (
                format!("{MIN}limits:\n  max_connections_per_address: 0\n"),
                "limits.max_connections_per_address",
            ),
            (format!("{MIN}log:\n  format: xml\n"), "log.format"),
            (MIN.replace("  plaintext: true\n", ""), "server.tls"),
            (
                MIN.replace("  plaintext: true\n", "  tls:\n    cert: a.pem\n"),
                "server.tls.key",
            ),
            (
                MIN.replace(
                    "  plaintext: true\n",
                    "  plaintext: true\n  tls:\n    cert: a\n    key: b\n",
                ),
                "server.plaintext",
            ),
            (
                MIN.replace("5000\n", "5000\n  credentials:\n    username: u\n"),
                "upstream.credentials",
            ),
            (MIN.replace("auth:\n  disabled: true\n", ""), "auth"),
            (
                MIN.replace("  disabled: true\n", "  realm: x\n"),
                "auth.users_file",
            ),
            (
                MIN.replace(
                    "  disabled: true\n",
                    "  disabled: true\n  anonymous: true\n",
                ),
                "auth.disabled",
            ),
            (
                WITH_USERS.replace("users.yaml\n", "users.yaml\n  realm: 'a\"b'\n"),
                "auth.realm",
            ),
            (
                WITH_USERS.replace("users.yaml\n", "users.yaml\n  cache_ttl: forever\n"),
                "auth.cache_ttl",
            ),
            (
                WITH_USERS.replace(
                    "users.yaml\n",
                    "users.yaml\n  throttle:\n    max_failures: 0\n",
                ),
                "auth.throttle.max_failures",
            ),
            (
                WITH_USERS.replace(
                    "users.yaml\n",
                    "users.yaml\n  throttle:\n    max_failures: 20\n    max_failures_per_address: 5\n",
                ),
                "auth.throttle.max_failures_per_address",
            ),
            (
                WITH_USERS.replace(
                    "users.yaml\n",
                    "users.yaml\n  throttle:\n    max_in_flight_per_address: 0\n",
                ),
                "auth.throttle.max_in_flight_per_address",
            ),
            (
                WITH_USERS.replace(
                    "users.yaml\n",
                    "users.yaml\n  throttle:\n    max_in_flight_per_user: 0\n",
                ),
                "auth.throttle.max_in_flight_per_user",
            ),
            (
                format!("{MIN}metrics:\n  listen: nowhere\n"),
                "metrics.listen",
            ),
            (WITH_USERS.replace("access:\n  rules: []\n", ""), "access"),
            (format!("{MIN}access:\n  rules: []\n"), "access"),
            (
                WITH_USERS.replace(
                    "rules: []",
                    "rules:\n    - repos: ['a/**']\n      users: ['*']\n      actions: []",
                ),
                "access.rules[0].actions",
            ),
            (
                WITH_USERS.replace(
                    "rules: []",
                    "rules:\n    - repos: ['a/**']\n      actions: [pull]",
                ),
                "access.rules[0]",
            ),
            (
                WITH_USERS.replace(
                    "rules: []",
                    "rules:\n    - repos: ['a/**b']\n      users: ['*']\n      actions: [pull]",
                ),
                "access.rules[0].repos",
            ),
            (
                WITH_USERS.replace(
                    "rules: []",
                    "rules:\n    - repos: ['a']\n      users: ['a:b']\n      actions: [pull]",
                ),
                "access.rules[0].users",
            ),
            (
                WITH_USERS.replace(
                    "rules: []",
                    "rules: []\n  protected_tags:\n    - repos: ['**']\n      tags: ['a/b']",
                ),
                "access.protected_tags[0].tags",
            ),
            (
                format!("{MIN}limits:\n  catalog_max_n: 0\n"),
                "limits.catalog_max_n",
            ),
            (
                format!("{MIN}limits:\n  max_connections: 18446744073709551615\n"),
                "limits.max_connections",
            ),
            (
                format!("{MIN}limits:\n  header_read_timeout: 500000000000y\n"),
                "limits.header_read_timeout",
            ),
            (
                format!("{MIN}limits:\n  max_header_bytes: 100000000\n"),
                "limits.max_header_bytes",
            ),
        ];
        for (yaml, key) in cases {
            let e = err(&yaml);
            assert!(e.starts_with(&format!("{key}: ")), "{key}: got {e}");
        }
    }

    #[test]
    fn unknown_actions_are_named() {
        let y = WITH_USERS.replace(
            "rules: []",
            "rules:\n    - repos: ['a/**']\n      users: ['*']\n      actions: [pull, puhs]",
        );
        let e = err(&y);
        assert!(
            e.contains("unknown variant `puhs`") && e.contains("`pull`, `push`, `delete`"),
            "{e}"
        );
    }

    #[test]
    fn push_without_pull_is_a_warning() {
        let y = WITH_USERS.replace(
            "rules: []",
            "rules:\n    - repos: ['a/**']\n      users: ['*']\n      actions: [push]",
        );
        let c = Config::from_yaml(&y).unwrap();
        let w = &c.access.unwrap().warnings;
        assert!(
            w[0].contains("access.rules[0] grants push without pull"),
            "{w:?}"
        );
    }

    #[test]
    fn auth_defaults() {
        let c = Config::from_yaml(WITH_USERS).unwrap();
        let a = c.auth.unwrap();
        assert_eq!(a.realm, "registry-guard");
        assert_eq!(a.settings.cache_ttl, Duration::from_secs(300));
        assert_eq!(a.settings.throttle.max_failures, 10);
        assert_eq!(a.settings.throttle.max_failures_per_address, 100);
        assert_eq!(a.settings.throttle.max_in_flight_per_address, 16);
        assert_eq!(a.settings.throttle.max_in_flight_per_user, 4);
        assert!(!a.settings.anonymous);
        assert!(Config::from_yaml(MIN).unwrap().auth.is_none());
    }

    #[test]
    fn self_signed_defaults_its_names() {
        let y = MIN.replace(
            "  plaintext: true\n",
            "  tls:\n    self_signed:\n      ca_out: ca.pem\n",
        );
        let c = Config::from_yaml(&y).unwrap();
        match c.server.tls {
            Tls::SelfSigned { names, .. } => assert_eq!(names, ["localhost", "127.0.0.1", "::1"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_example_config_is_valid() {
        let c = Config::from_yaml(include_str!("../config/example.yaml")).unwrap();
        assert!(matches!(c.server.tls, Tls::Files { .. }));
        assert_eq!(c.limits.max_manifest_bytes, MIN_MANIFEST_BYTES);
    }

    /// The audit chain is keyed: a config without `audit.key_file` is refused, naming it;
    /// the new audit keys have defaults and are checked.
    #[test]
    fn audit_needs_a_key_file_and_checks_its_limits() {
        let e = err(&format!("{MIN}audit:\n  file: a.jsonl\n"));
        assert!(
            e.contains("audit.key_file") && e.contains("audit keygen"),
            "{e}"
        );
        let c = Config::from_yaml(&format!(
            "{MIN}audit:\n  file: a.jsonl\n  key_file: a.key\n"
        ))
        .unwrap();
        let s = &c.audit.unwrap().settings;
        assert_eq!(
            (
                s.checkpoint_every,
                s.checkpoint_interval,
                s.max_denials_per_minute,
                s.min_free_bytes
            ),
            (1000, Duration::from_secs(60), 60, 64 << 20)
        );
        let e = err(&format!(
            "{MIN}audit:\n  file: a.jsonl\n  key_file: a.key\n  max_denials_per_minute: 0\n"
        ));
        assert!(e.contains("audit.max_denials_per_minute"), "{e}");
        let e = err(&format!(
            "{MIN}audit:\n  file: a.jsonl\n  key_file: a.key\n  checkpoint_interval: soon\n"
        ));
        assert!(e.contains("audit.checkpoint_interval"), "{e}");
    }

    #[test]
    fn origins_are_normalised() {
        let (s, a, o) = parse_origin("HTTPS://Registry.Example:443/").unwrap();
        assert_eq!(
            (s, a.as_str(), o.as_str()),
            (
                UpstreamScheme::Https,
                "Registry.Example:443",
                "https://registry.example:443"
            )
        );
        let (_, _, o) = parse_origin("http://[::1]").unwrap();
        assert_eq!(o, "http://[::1]:80");
    }
}
