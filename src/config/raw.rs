//! The configuration file exactly as written: serde structs that refuse unknown keys
//! (`deny_unknown_fields`) and check nothing beyond types and key names. An optional key
//! is an `Option`, or defaults to what leaving it out means (false, an empty list), never
//! to a configured value: defaults and ranges live once, in `validate.rs`, which turns
//! these structs into the types of `types.rs`.
//!
//! The struct names appear in serde's messages ("expected struct RawServer"): renaming
//! one changes what a user sees.

use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) server: RawServer,
    pub(super) upstream: RawUpstream,
    pub(super) auth: Option<RawAuth>,
    pub(super) access: Option<RawAccess>,
    pub(super) audit: Option<RawAudit>,
    pub(super) tokens: Option<RawTokens>,
    pub(super) metrics: Option<RawMetrics>,
    #[serde(default)]
    pub(super) limits: RawLimits,
    #[serde(default)]
    pub(super) log: RawLog,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: String,
    pub(super) tls: Option<RawTls>,
    #[serde(default)]
    pub(super) plaintext: bool,
    pub(super) public_url: Option<String>,
    #[serde(default)]
    pub(super) trusted_proxies: Vec<String>,
    #[serde(default)]
    pub(super) proxy_protocol: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) cert: Option<PathBuf>,
    pub(super) key: Option<PathBuf>,
    pub(super) self_signed: Option<RawSelfSigned>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSelfSigned {
    pub(super) ca_out: PathBuf,
    pub(super) names: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub(super) url: String,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) connect_timeout: Option<String>,
    pub(super) response_header_timeout: Option<String>,
    pub(super) pool_idle_timeout: Option<String>,
    pub(super) pool_max_idle: Option<usize>,
    pub(super) credentials: Option<RawCredentials>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCredentials {
    pub(super) username: String,
    pub(super) password_file: Option<PathBuf>,
    pub(super) password_env: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) header_read_timeout: Option<String>,
    pub(super) idle_timeout: Option<String>,
    pub(super) max_connections: Option<usize>,
    pub(super) max_connections_per_address: Option<usize>,
    pub(super) max_connections_per_user: Option<usize>,
    pub(super) max_header_bytes: Option<usize>,
    pub(super) max_manifest_bytes: Option<u64>,
    pub(super) shutdown_grace: Option<String>,
    pub(super) catalog_max_n: Option<usize>,
    pub(super) max_tags: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    pub(super) users_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) disabled: bool,
    pub(super) realm: Option<String>,
    #[serde(default)]
    pub(super) anonymous: bool,
    pub(super) cache_ttl: Option<String>,
    pub(super) cache_max_entries: Option<usize>,
    pub(super) verify_concurrency: Option<usize>,
    #[serde(default)]
    pub(super) throttle: RawThrottle,
    pub(super) max_unauthenticated_body: Option<u64>,
    pub(super) docker_bearer: Option<String>,
    pub(super) token_key_file: Option<PathBuf>,
    pub(super) upgrade_hashes: Option<bool>,
    pub(super) tokens_file: Option<PathBuf>,
    pub(super) ldap: Option<RawLdap>,
}

/// Access tokens' policy (the file itself is `auth.tokens_file`, next to the user file).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTokens {
    pub(super) max_lifetime: Option<String>,
    pub(super) last_used_file: Option<PathBuf>,
    pub(super) flush_interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLdap {
    pub(super) url: String,
    #[serde(default)]
    pub(super) allow_plaintext: bool,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) bind_dn: String,
    pub(super) bind_password_file: Option<PathBuf>,
    pub(super) bind_password_env: Option<String>,
    pub(super) user_base: String,
    pub(super) user_filter: Option<String>,
    pub(super) user_attribute: Option<String>,
    pub(super) group_attribute: Option<String>,
    pub(super) group_base: Option<String>,
    pub(super) group_filter: Option<String>,
    pub(super) group_name_attribute: Option<String>,
    pub(super) connect_timeout: Option<String>,
    pub(super) timeout: Option<String>,
    pub(super) pool_size: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawThrottle {
    pub(super) max_failures: Option<u32>,
    pub(super) max_failures_per_address: Option<u32>,
    pub(super) max_in_flight_per_address: Option<u32>,
    pub(super) max_in_flight_per_user: Option<u32>,
    pub(super) window: Option<String>,
    pub(super) max_tracked: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccess {
    #[serde(default)]
    pub(super) admins: RawWho,
    #[serde(default)]
    pub(super) rules: Vec<RawRule>,
    #[serde(default)]
    pub(super) protected_tags: Vec<RawProtection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWho {
    #[serde(default)]
    pub(super) users: Vec<String>,
    #[serde(default)]
    pub(super) groups: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    pub(super) name: Option<String>,
    pub(super) repos: Vec<String>,
    #[serde(default)]
    pub(super) users: Vec<String>,
    #[serde(default)]
    pub(super) groups: Vec<String>,
    #[serde(default)]
    pub(super) anonymous: bool,
    pub(super) actions: Vec<RawAction>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawAction {
    Pull,
    Push,
    Delete,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProtection {
    pub(super) repos: Vec<String>,
    pub(super) tags: Vec<String>,
    #[serde(default)]
    pub(super) except: RawWho,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    pub(super) file: PathBuf,
    pub(super) instance: Option<String>,
    pub(super) key_file: Option<PathBuf>,
    pub(super) checkpoint_every: Option<u64>,
    pub(super) checkpoint_interval: Option<String>,
    pub(super) max_denials_per_minute: Option<u32>,
    pub(super) min_free_bytes: Option<u64>,
    pub(super) rotate_bytes: Option<u64>,
    #[serde(default)]
    pub(super) stdout: bool,
    #[serde(default)]
    pub(super) manifest_pushes: bool,
    pub(super) max_tags: Option<usize>,
    #[serde(default)]
    pub(super) trusted_proxies: Vec<String>,
    pub(super) events: Option<Vec<String>>,
    pub(super) queue: Option<usize>,
    pub(super) login_window: Option<String>,
    pub(super) max_failed_logins_per_minute: Option<u32>,
    pub(super) syslog: Option<RawSyslog>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSyslog {
    pub(super) address: String,
    #[serde(default)]
    pub(super) tls: bool,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) server_name: Option<String>,
    pub(super) facility: Option<String>,
    pub(super) app_name: Option<String>,
    pub(super) buffer: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub(super) listen: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) format: Option<String>,
}
