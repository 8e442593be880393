//! The checked configuration: what the rest of the proxy reads. Every value here has
//! passed `validate.rs` (in range, parsed, defaults filled in), so users need no checks
//! and no defaults of their own.

use super::ConfigError;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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

impl Config {
    /// The realm of `WWW-Authenticate`: `auth.realm`, or the default when auth is disabled.
    pub fn realm(&self) -> &str {
        self.auth.as_ref().map_or(DEFAULT_REALM, |a| &a.realm)
    }

    /// Bytes of a refused request's body read and discarded (see
    /// [`Auth::max_unauthenticated_body`]); the default when auth is disabled.
    pub fn max_unauthenticated_body(&self) -> u64 {
        self.auth
            .as_ref()
            .map_or(DEFAULT_MAX_UNAUTHENTICATED_BODY, |a| {
                a.max_unauthenticated_body
            })
    }
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
    /// The kinds of records written (`audit.events`); `delete` always.
    pub events: std::collections::BTreeSet<crate::audit::Kind>,
}

impl Audit {
    /// Whether records of `kind` are written.
    pub fn records(&self, kind: crate::audit::Kind) -> bool {
        self.events.contains(&kind)
    }
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
    /// Refuses groups no user has: a typo there would silently grant nothing. With a
    /// directory (`auth.ldap`) groups also come from there, so nothing is refused.
    pub fn check_groups(
        &self,
        users: &crate::auth::users::Users,
        directory: bool,
    ) -> Result<(), ConfigError> {
        if directory {
            return Ok(());
        }
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

impl Auth {
    /// How often the tokens' last use is written (`tokens.flush_interval`, or its default
    /// without tokens: a reload may add them).
    pub fn token_flush_interval(&self) -> Duration {
        self.tokens
            .as_ref()
            .map_or(DEFAULT_TOKEN_FLUSH, |t| t.flush_interval)
    }
}

#[derive(Debug, Clone)]
pub struct Auth {
    pub users_file: PathBuf,
    pub realm: String,
    pub settings: crate::auth::AuthSettings,
    /// The key docker's bearer tokens are signed with (`auth.token_key_file`), read at
    /// start; `None`: a random key per process (replicas then refuse each other's tokens).
    pub token_key_file: Option<PathBuf>,
    /// Access tokens (`auth.tokens_file` and the `tokens:` section); `None`: none.
    pub tokens: Option<AccessTokens>,
    /// A request refused before forwarding whose body was sent without
    /// `Expect: 100-continue` is read and discarded up to this many bytes, so the client
    /// sees the refusal instead of a reset connection.
    pub max_unauthenticated_body: u64,
    /// Users and groups from a directory (`auth.ldap`), for names not in the user file.
    pub ldap: Option<super::Ldap>,
}

/// Access tokens: where they are and the rules they live by.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessTokens {
    /// `auth.tokens_file`.
    pub file: PathBuf,
    /// `tokens.max_lifetime`: `token create` refuses longer (and "never"), and a token
    /// in the file is refused from `created + max_lifetime` on whatever it says.
    pub max_lifetime: Option<Duration>,
    /// `tokens.last_used_file` (default `<tokens_file>.last-used`): where the proxy
    /// writes each token's last use.
    pub last_used_file: PathBuf,
    /// `tokens.flush_interval`: at most how often that file is written (default 30 s).
    pub flush_interval: Duration,
}

/// `tokens.flush_interval` when the config gives none.
pub const DEFAULT_TOKEN_FLUSH: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Server {
    pub listen: SocketAddr,
    pub tls: Tls,
    /// Origin (`https://host[:port]`) clients use; `None`: taken from each request's Host.
    pub public_origin: Option<String>,
    /// Peers whose `X-Forwarded-For` is believed for the client address (load balancers).
    /// The one client address (throttle, logs, audit, forwarded headers) comes from here.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Connections from `trusted_proxies` open with a PROXY protocol header (v1 or v2)
    /// naming the client, and must; from any other peer one is refused.
    pub proxy_protocol: bool,
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

#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Connections one user's credentials may hold at once, from any address: an
    /// account (any account, even one no rule grants anything) cannot take every slot.
    /// The default, 512, is an eighth of the default `max_connections`: room for a CI
    /// farm sharing one robot account.
    pub max_connections_per_user: usize,
    pub max_header_bytes: usize,
    pub max_manifest_bytes: u64,
    pub shutdown_grace: Duration,
    /// Largest catalog page served (CVE-2023-2253 was an unbounded `n`).
    pub catalog_max_n: usize,
    /// Most tags the proxy reads of one repository to answer a tag list (sorted and paged
    /// by the proxy); a longer list is refused whole, never served short.
    pub max_tags: usize,
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

/// The manifest cap cannot be lower: registries accept manifests up to 4 MiB, and a proxy
/// that refuses a push the registry would take breaks clients.
pub const MIN_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;
/// `auth.realm` when the config names none.
pub const DEFAULT_REALM: &str = "registry-guard";
/// `auth.max_unauthenticated_body` when the config gives none: 1 MiB.
pub const DEFAULT_MAX_UNAUTHENTICATED_BODY: u64 = 1024 * 1024;
/// hyper's smallest read buffer; the header cap cannot be lower.
pub const MIN_HEADER_BYTES: usize = 8192;
/// A header cap above this is no cap.
pub const MAX_HEADER_BYTES: usize = 1024 * 1024;
/// `limits.max_tags` when the config gives none.
pub const DEFAULT_MAX_TAGS: usize = 100_000;
/// A tag list is held whole in memory to be sorted: past a million tags (over 100 MiB of
/// upstream JSON) a limit is no limit.
pub const MAX_MAX_TAGS: usize = 1_000_000;
/// More connections than this is a typo (and more than a semaphore can count).
pub const MAX_CONNECTIONS: usize = 1 << 20;
/// Longest timeout or period accepted: longer ones are typos, and overflow clocks.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
