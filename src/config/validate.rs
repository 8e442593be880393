//! Raw → checked: one `TryFrom` per section, in the order of the YAML, and the one place
//! where ranges and defaults are written. Every error names the key that is wrong.
//!
//! Pure: no file is opened (files the config names are read by the modules that use
//! them). Sections are checked in file order and the first fault is the one reported.
//! Where one section depends on another (access on auth, the audit section's
//! `trusted_proxies` on the server's), [`Config`]'s `TryFrom` joins them.

use super::raw::*;
use super::types::*;
use super::ConfigError;
use crate::acl::glob::Pattern;
use std::fmt;
use std::net::SocketAddr;
use std::ops::{Bound, RangeBounds};
use std::time::Duration;

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Config, ConfigError> {
        let mut server = Server::try_from(raw.server)?;
        let upstream = Upstream::try_from(raw.upstream)?;
        // Auth decides whether access rules may exist at all, so its switch is here.
        let auth = match raw.auth {
            None => return Err(ConfigError::new(
                "auth",
                "missing: give auth.users_file (see config/users.example.yaml), or auth.disabled: true to forward requests without checking credentials",
            )),
            Some(a) if a.disabled => {
                if a.users_file.is_some() || a.anonymous || a.ldap.is_some() {
                    return Err(ConfigError::new(
                        "auth.disabled",
                        "disabled: true excludes users_file, ldap and anonymous",
                    ));
                }
                None
            }
            Some(a) => Some(Auth::try_from(a)?),
        };
        let auth = match (auth, raw.tokens) {
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "tokens",
                    "access tokens need authentication, but auth.disabled is true",
                ))
            }
            (Some(mut a), tokens) => {
                a.tokens = access_tokens(a.tokens.take(), tokens)?;
                Some(a)
            }
            (None, None) => None,
        };
        let access = match (&auth, raw.access) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "access",
                    "rules need authentication, but auth.disabled is true",
                ))
            }
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "access",
                    "missing: access is denied unless a rule allows it; give access.rules (see config/example.yaml)",
                ))
            }
            (Some(a), Some(raw)) => Some(Access::validate(raw, a)?),
        };
        let audit = raw.audit.map(Audit::try_from).transpose()?;
        // `audit.trusted_proxies` (older configs) means the same as `server.trusted_proxies`.
        if let Some(a) = &audit {
            for n in &a.trusted_proxies {
                if !server.trusted_proxies.contains(n) {
                    server.trusted_proxies.push(*n);
                }
            }
        }
        if server.proxy_protocol && server.trusted_proxies.is_empty() {
            return Err(ConfigError::new(
                "server.proxy_protocol",
                "true needs server.trusted_proxies: the load balancers whose PROXY header is believed (from any other peer it is refused)",
            ));
        }
        let metrics_listen = raw.metrics.map(metrics_listen).transpose()?;
        Ok(Config {
            server,
            upstream,
            auth,
            access,
            audit,
            metrics_listen,
            limits: Limits::try_from(raw.limits)?,
            log: Log::try_from(raw.log)?,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Values shared by the sections.

/// A duration like `10s` in (0, 24h], or `default` when the key is absent.
pub(super) fn duration(
    key: &str,
    value: Option<&str>,
    default: Duration,
) -> Result<Duration, ConfigError> {
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

/// A number within `range` (`1..`, `..=10_000`, `1..=MAX`), or `default` when the key is
/// absent. The message states the range as written.
pub(super) fn ranged<T, R>(
    key: &str,
    value: Option<T>,
    default: T,
    range: R,
) -> Result<T, ConfigError>
where
    T: PartialOrd + fmt::Display,
    R: RangeBounds<T>,
{
    let Some(n) = value else { return Ok(default) };
    if range.contains(&n) {
        return Ok(n);
    }
    let message = match (range.start_bound(), range.end_bound()) {
        (Bound::Included(lo), Bound::Included(hi)) => format!("must be between {lo} and {hi}"),
        (Bound::Included(lo), _) => format!("must be at least {lo}"),
        (_, Bound::Included(hi)) => format!("must be at most {hi}"),
        _ => "is out of range".to_owned(),
    };
    Err(ConfigError::new(key, message))
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
pub(super) fn parse_origin(url: &str) -> Result<(UpstreamScheme, String, String), String> {
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

// ---------------------------------------------------------------------------------------
// server

impl TryFrom<RawServer> for Server {
    type Error = ConfigError;

    fn try_from(s: RawServer) -> Result<Server, ConfigError> {
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
            (Some(t), false) => Tls::try_from(t)?,
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
            proxy_protocol: s.proxy_protocol,
        })
    }
}

impl TryFrom<RawTls> for Tls {
    type Error = ConfigError;

    fn try_from(t: RawTls) -> Result<Tls, ConfigError> {
        match (t.cert, t.key, t.self_signed) {
            (Some(cert), Some(key), None) => Ok(Tls::Files { cert, key }),
            (None, None, Some(ss)) => {
                let names = ss
                    .names
                    .unwrap_or_else(|| vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]);
                if names.is_empty() {
                    return Err(ConfigError::new(
                        "server.tls.self_signed.names",
                        "must name at least one host",
                    ));
                }
                for n in &names {
                    let ok = n.parse::<std::net::IpAddr>().is_ok()
                        || (!n.is_empty()
                            && n.len() <= 253
                            && n.bytes()
                                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.'));
                    if !ok {
                        return Err(ConfigError::new(
                            "server.tls.self_signed.names",
                            format!("{n:?} is not a DNS name or IP address"),
                        ));
                    }
                }
                Ok(Tls::SelfSigned {
                    ca_out: ss.ca_out,
                    names,
                })
            }
            (Some(_), None, None) => Err(ConfigError::new(
                "server.tls.key",
                "missing: tls.cert needs tls.key",
            )),
            (None, Some(_), None) => Err(ConfigError::new(
                "server.tls.cert",
                "missing: tls.key needs tls.cert",
            )),
            (None, None, None) => Err(ConfigError::new(
                "server.tls",
                "give tls.cert and tls.key, or tls.self_signed",
            )),
            (_, _, Some(_)) => Err(ConfigError::new(
                "server.tls.self_signed",
                "self_signed excludes tls.cert and tls.key",
            )),
        }
    }
}

// ---------------------------------------------------------------------------------------
// upstream

impl TryFrom<RawUpstream> for Upstream {
    type Error = ConfigError;

    fn try_from(u: RawUpstream) -> Result<Upstream, ConfigError> {
        let (scheme, authority, origin) =
            parse_origin(&u.url).map_err(|m| ConfigError::new("upstream.url", m))?;
        if u.ca_file.is_some() && scheme == UpstreamScheme::Http {
            return Err(ConfigError::new(
                "upstream.ca_file",
                "only applies to an https:// upstream",
            ));
        }
        let credentials = u.credentials.map(Credentials::try_from).transpose()?;
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
}

impl TryFrom<RawCredentials> for Credentials {
    type Error = ConfigError;

    fn try_from(c: RawCredentials) -> Result<Credentials, ConfigError> {
        if c.username.is_empty() || c.username.contains(':') {
            return Err(ConfigError::new(
                "upstream.credentials.username",
                "must be non-empty and hold no ':'",
            ));
        }
        let password = match (c.password_file, c.password_env) {
            (Some(f), None) => SecretSource::File(f),
            (None, Some(e)) if !e.is_empty() => SecretSource::Env(e),
            _ => return Err(ConfigError::new(
                "upstream.credentials",
                "give exactly one of password_file or password_env (a password is never written in the config)",
            )),
        };
        Ok(Credentials {
            username: c.username,
            password,
        })
    }
}

// ---------------------------------------------------------------------------------------
// auth (when not disabled: `disabled: true` is handled where auth and access meet)

impl TryFrom<RawAuth> for Auth {
    type Error = ConfigError;

    fn try_from(a: RawAuth) -> Result<Auth, ConfigError> {
        let Some(users_file) = a.users_file else {
            return Err(ConfigError::new(
                "auth.users_file",
                "missing: the user file of argon2 (or bcrypt) hashes",
            ));
        };
        let realm = a.realm.unwrap_or_else(|| DEFAULT_REALM.to_owned());
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
        let settings = crate::auth::AuthSettings {
            anonymous: a.anonymous,
            cache_ttl: duration(
                "auth.cache_ttl",
                a.cache_ttl.as_deref(),
                Duration::from_secs(300),
            )?,
            cache_max_entries: ranged("auth.cache_max_entries", a.cache_max_entries, 10_000, 1..)?,
            verify_concurrency: ranged(
                "auth.verify_concurrency",
                a.verify_concurrency,
                cores,
                1..,
            )?,
            throttle: crate::auth::throttle::Limits::try_from(a.throttle)?,
            docker_bearer: match a.docker_bearer.as_deref() {
                None | Some("auto") => a.anonymous,
                Some("on") => true,
                Some("off") => false,
                Some(other) => {
                    return Err(ConfigError::new(
                        "auth.docker_bearer",
                        format!("{other:?} is not auto, on or off"),
                    ))
                }
            },
            upgrade_hashes: a.upgrade_hashes.unwrap_or(true),
        };
        if a.token_key_file.is_some() && !settings.docker_bearer {
            return Err(ConfigError::new(
                "auth.token_key_file",
                "set, but the proxy issues no tokens (auth.docker_bearer is off, or auto with auth.anonymous off)",
            ));
        }
        // The tokens file alone for now; `tokens:` is joined in by `access_tokens`.
        let tokens = a.tokens_file.map(|file| AccessTokens {
            last_used_file: crate::auth::access_tokens::default_last_used_file(&file),
            file,
            max_lifetime: None,
            flush_interval: DEFAULT_TOKEN_FLUSH,
        });
        Ok(Auth {
            users_file,
            realm,
            settings,
            tokens,
            token_key_file: a.token_key_file,
            max_unauthenticated_body: a
                .max_unauthenticated_body
                .unwrap_or(DEFAULT_MAX_UNAUTHENTICATED_BODY),
            ldap: a.ldap.map(super::Ldap::try_from).transpose()?,
        })
    }
}

impl TryFrom<RawThrottle> for crate::auth::throttle::Limits {
    type Error = ConfigError;

    fn try_from(t: RawThrottle) -> Result<Self, ConfigError> {
        let max_failures = ranged("auth.throttle.max_failures", t.max_failures, 10, 1..)?;
        let max_failures_per_address = ranged(
            "auth.throttle.max_failures_per_address",
            t.max_failures_per_address,
            max_failures.saturating_mul(10).max(100),
            1..,
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
            max_tracked: ranged("auth.throttle.max_tracked", t.max_tracked, 100_000, 1..)?,
            max_in_flight_per_address: ranged(
                "auth.throttle.max_in_flight_per_address",
                t.max_in_flight_per_address,
                16,
                1..,
            )?,
            max_in_flight_per_user: ranged(
                "auth.throttle.max_in_flight_per_user",
                t.max_in_flight_per_user,
                4,
                1..,
            )?,
        })
    }
}

// ---------------------------------------------------------------------------------------
// tokens

/// `auth.tokens_file` with the `tokens:` section (which needs it).
fn access_tokens(
    file: Option<AccessTokens>,
    raw: Option<RawTokens>,
) -> Result<Option<AccessTokens>, ConfigError> {
    let (mut t, raw) = match (file, raw) {
        (None, None) => return Ok(None),
        (None, Some(_)) => {
            return Err(ConfigError::new(
                "tokens",
                "set, but auth.tokens_file is not: name the tokens file there",
            ))
        }
        (Some(t), raw) => (t, raw.unwrap_or_default()),
    };
    if let Some(v) = &raw.max_lifetime {
        let d = humantime::parse_duration(v.trim()).map_err(|e| {
            ConfigError::new(
                "tokens.max_lifetime",
                format!("{v:?} is not a duration like 90d or 1y: {e}"),
            )
        })?;
        if d < Duration::from_secs(60) {
            return Err(ConfigError::new(
                "tokens.max_lifetime",
                "must be at least 1m",
            ));
        }
        t.max_lifetime = Some(d);
    }
    if let Some(f) = raw.last_used_file {
        if f.as_os_str().is_empty() {
            return Err(ConfigError::new(
                "tokens.last_used_file",
                "must name a file",
            ));
        }
        t.last_used_file = f;
    }
    t.flush_interval = duration(
        "tokens.flush_interval",
        raw.flush_interval.as_deref(),
        DEFAULT_TOKEN_FLUSH,
    )?;
    Ok(Some(t))
}

// ---------------------------------------------------------------------------------------
// access

impl Access {
    /// Not a `TryFrom`: access is checked against the auth section (a rule granting
    /// anonymous access is worth a warning when `auth.anonymous` is off).
    fn validate(raw: RawAccess, auth: &Auth) -> Result<Access, ConfigError> {
        let mut groups_named = Vec::new();
        let mut warnings = Vec::new();
        let admins = who("access.admins", raw.admins, &mut groups_named)?;
        let mut rules = Vec::with_capacity(raw.rules.len());
        for (i, r) in raw.rules.into_iter().enumerate() {
            let key = format!("access.rules[{i}]");
            rules.push(rule(
                key,
                r,
                auth.settings.anonymous,
                &mut groups_named,
                &mut warnings,
            )?);
        }
        let mut protections = Vec::with_capacity(raw.protected_tags.len());
        for (i, p) in raw.protected_tags.into_iter().enumerate() {
            let key = format!("access.protected_tags[{i}]");
            protections.push(protection(key, p, &mut groups_named)?);
        }
        Ok(Access {
            policy: crate::acl::Policy::new(rules, admins, protections),
            groups_named,
            warnings,
        })
    }
}

fn rule(
    key: String,
    r: RawRule,
    anonymous_enabled: bool,
    groups_named: &mut Vec<(String, String)>,
    warnings: &mut Vec<String>,
) -> Result<crate::acl::Rule, ConfigError> {
    use crate::registry::Actions;
    let repos = patterns(&format!("{key}.repos"), &r.repos, Pattern::repo)?;
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
        groups_named,
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
    Ok(crate::acl::Rule {
        label: r.name.unwrap_or(key),
        repos,
        who: w,
        actions,
    })
}

fn protection(
    key: String,
    p: RawProtection,
    groups_named: &mut Vec<(String, String)>,
) -> Result<crate::acl::TagProtection, ConfigError> {
    let repos = patterns(&format!("{key}.repos"), &p.repos, Pattern::repo)?;
    let tags = patterns(&format!("{key}.tags"), &p.tags, Pattern::tag)?;
    if repos.is_empty() || tags.is_empty() {
        return Err(ConfigError::new(key, "needs repos and tags"));
    }
    let except = who(&format!("{key}.except"), p.except, groups_named)?;
    Ok(crate::acl::TagProtection {
        label: key,
        repos,
        tags,
        except,
    })
}

/// Compiles every pattern of one key; the first bad one is named.
fn patterns(
    key: &str,
    sources: &[String],
    compile: fn(&str) -> Result<Pattern, crate::acl::glob::PatternError>,
) -> Result<Vec<Pattern>, ConfigError> {
    sources
        .iter()
        .map(|s| compile(s).map_err(|m| ConfigError::new(key, format!("{s:?}: {m}"))))
        .collect()
}

/// Users and groups of a rule, the admins or a protection's exceptions. Groups can only
/// be checked against the user file: they are noted in `groups_named` for
/// [`Access::check_groups`].
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

// ---------------------------------------------------------------------------------------
// audit

impl TryFrom<RawAudit> for Audit {
    type Error = ConfigError;

    fn try_from(a: RawAudit) -> Result<Audit, ConfigError> {
        let trusted_proxies = parse_nets("audit.trusted_proxies", &a.trusted_proxies)?;
        if let Some(i) = &a.instance {
            check_instance(i).map_err(|m| ConfigError::new("audit.instance", m))?;
        }
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
        let max_denials_per_minute = ranged(
            "audit.max_denials_per_minute",
            a.max_denials_per_minute,
            60,
            1..,
        )
        .map_err(|e| e.because(" (denials over it are summarized, never lost)"))?;
        Ok(Audit {
            settings: crate::audit::AuditSettings {
                file: a.file,
                instance: a.instance,
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
                queue: ranged("audit.queue", a.queue, 10_000, 1..=1_000_000)?,
                login_window: duration(
                    "audit.login_window",
                    a.login_window.as_deref(),
                    Duration::from_secs(3600),
                )?,
                max_failed_logins_per_minute: ranged(
                    "audit.max_failed_logins_per_minute",
                    a.max_failed_logins_per_minute,
                    600,
                    1..=1_000_000,
                )
                .map_err(|e| {
                    e.because(
                        " (failed logins over it are counted in a dropped_summary, never lost)",
                    )
                })?,
                syslog: a.syslog.map(syslog_settings).transpose()?,
            },
            manifest_pushes: a.manifest_pushes,
            max_tags: ranged("audit.max_tags", a.max_tags, 100, ..=10_000)?,
            trusted_proxies,
            events: audit_events(a.events.as_deref().unwrap_or_default())?,
        })
    }
}

/// `audit.syslog`: the collector's `host:port`, plain TCP or TLS, facility, buffer.
fn syslog_settings(
    s: super::raw::RawSyslog,
) -> Result<crate::audit::syslog::SyslogSettings, ConfigError> {
    use crate::audit::syslog::FACILITIES;
    let port_ok = s
        .address
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    if !port_ok {
        return Err(ConfigError::new(
            "audit.syslog.address",
            format!(
                "{:?} is not HOST:PORT (e.g. collector.example:6514)",
                s.address
            ),
        ));
    }
    let facility = match s.facility.as_deref() {
        None => 10,
        Some(f) => FACILITIES
            .iter()
            .find(|(n, _)| *n == f)
            .map(|(_, n)| *n)
            .ok_or_else(|| {
                let names: Vec<&str> = FACILITIES.iter().map(|(n, _)| *n).collect();
                ConfigError::new(
                    "audit.syslog.facility",
                    format!("{f:?} is not one of {}", names.join(", ")),
                )
            })?,
    };
    if !s.tls && (s.ca_file.is_some() || s.server_name.is_some()) {
        return Err(ConfigError::new(
            "audit.syslog.tls",
            "ca_file and server_name are for TLS: set tls: true",
        ));
    }
    let app_name = s.app_name.unwrap_or_else(|| "registry-guard".to_owned());
    if app_name.is_empty() || app_name.len() > 48 || !app_name.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(ConfigError::new(
            "audit.syslog.app_name",
            "1 to 48 printable ASCII characters, no space (RFC 5424 APP-NAME)",
        ));
    }
    Ok(crate::audit::syslog::SyslogSettings {
        address: s.address,
        tls: s.tls,
        ca_file: s.ca_file,
        server_name: s.server_name,
        facility,
        app_name,
        buffer: ranged("audit.syslog.buffer", s.buffer, 10_000, 1..=1_000_000)?,
    })
}

/// `audit.events`: the kinds of records written besides deletes (which always are).
fn audit_events(
    names: &[String],
) -> Result<std::collections::BTreeSet<crate::audit::Kind>, ConfigError> {
    let mut kinds = std::collections::BTreeSet::from([crate::audit::Kind::Delete]);
    for n in names {
        let k = crate::audit::Kind::parse(n).ok_or_else(|| {
            ConfigError::new(
                "audit.events",
                format!("{n:?} is not an event kind: delete, push, pull, login"),
            )
        })?;
        kinds.insert(k);
    }
    Ok(kinds)
}

/// An instance id names a replica in its audit records and in `audit verify`'s report
/// (and may prefix `--start`/`--checkpoint` as `INSTANCE:SEQ:HASH`): a host-name-like
/// word, no colon.
pub(crate) fn check_instance(i: &str) -> Result<(), String> {
    let ok = !i.is_empty()
        && i.len() <= 64
        && i.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{i:?} is not an instance id: 1 to 64 of A-Z a-z 0-9 . - _ (default: the host name)"
        ))
    }
}

// ---------------------------------------------------------------------------------------
// metrics, limits, log

/// The metrics section is one address (a `TryFrom` into `SocketAddr` would read oddly).
fn metrics_listen(m: RawMetrics) -> Result<SocketAddr, ConfigError> {
    m.listen.parse().map_err(|_| {
        ConfigError::new(
            "metrics.listen",
            format!("{:?} is not an address:port like 127.0.0.1:9090", m.listen),
        )
    })
}

impl TryFrom<RawLimits> for Limits {
    type Error = ConfigError;

    fn try_from(l: RawLimits) -> Result<Limits, ConfigError> {
        Ok(Limits {
            header_read_timeout: duration(
                "limits.header_read_timeout",
                l.header_read_timeout.as_deref(),
                Duration::from_secs(10),
            )?,
            idle_timeout: duration(
                "limits.idle_timeout",
                l.idle_timeout.as_deref(),
                Duration::from_secs(120),
            )?,
            max_connections: ranged(
                "limits.max_connections",
                l.max_connections,
                4096,
                1..=MAX_CONNECTIONS,
            )?,
            max_connections_per_address: ranged(
                "limits.max_connections_per_address",
                l.max_connections_per_address,
                128,
                1..=MAX_CONNECTIONS,
            )?,
            max_connections_per_user: ranged(
                "limits.max_connections_per_user",
                l.max_connections_per_user,
                512,
                1..=MAX_CONNECTIONS,
            )?,
            max_header_bytes: ranged(
                "limits.max_header_bytes",
                l.max_header_bytes,
                64 * 1024,
                MIN_HEADER_BYTES..=MAX_HEADER_BYTES,
            )?,
            max_manifest_bytes: ranged(
                "limits.max_manifest_bytes",
                l.max_manifest_bytes,
                MIN_MANIFEST_BYTES,
                MIN_MANIFEST_BYTES..,
            )
            .map_err(|e| e.because(" (4 MiB): registries accept manifests that large"))?,
            shutdown_grace: duration(
                "limits.shutdown_grace",
                l.shutdown_grace.as_deref(),
                Duration::from_secs(30),
            )?,
            catalog_max_n: ranged("limits.catalog_max_n", l.catalog_max_n, 1000, 1..=10_000)?,
            max_tags: ranged(
                "limits.max_tags",
                l.max_tags,
                DEFAULT_MAX_TAGS,
                1..=MAX_MAX_TAGS,
            )?,
        })
    }
}

impl TryFrom<RawLog> for Log {
    type Error = ConfigError;

    fn try_from(l: RawLog) -> Result<Log, ConfigError> {
        let format = match l.format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError::new(
                    "log.format",
                    format!("{other:?} is not text or json"),
                ))
            }
        };
        Ok(Log { format })
    }
}
