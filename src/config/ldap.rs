//! `auth.ldap`: raw → checked, and the checked type. Pure like the rest of validation;
//! the service password is read (from its file or environment variable) by
//! `auth::ldap` when the directory is built, never stored here.

use super::raw::RawLdap;
use super::validate::{duration, ranged};
use super::{ConfigError, SecretSource};
use crate::auth::ldap::filter;
use std::path::PathBuf;
use std::time::Duration;

/// The checked `auth.ldap` section.
#[derive(Debug, Clone, PartialEq)]
pub struct Ldap {
    /// `ldaps://host[:port]` or `ldap://host[:port]`, as written.
    pub url: String,
    pub transport: LdapTransport,
    /// CA bundle the directory's certificate is checked against (default: system roots).
    pub ca_file: Option<PathBuf>,
    /// The service account that searches users and groups.
    pub bind_dn: String,
    pub bind_password: SecretSource,
    pub user_base: String,
    /// A filter with `{user}` (escaped per RFC 4515 when filled).
    pub user_filter: String,
    /// The attribute `user_filter` compares `{user}` with (`uid`, `sAMAccountName`): a
    /// login is accepted only under the entry's own spelling of it (the directory's
    /// matching ignores case and spaces; names here are exact).
    pub user_attribute: String,
    pub groups: GroupLookup,
    /// The attribute holding a group's name (`cn`): of the group entry found by a
    /// search, or the type of the first RDN of a `memberOf` DN.
    pub group_name_attribute: String,
    pub connect_timeout: Duration,
    /// Each bind or search, at most.
    pub timeout: Duration,
    /// Connections to the directory held at most (busy and idle).
    pub pool_size: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LdapTransport {
    /// `ldaps://`: TLS from the first byte.
    Ldaps,
    /// `ldap://` upgraded with StartTLS before anything else is sent.
    StartTls,
    /// `ldap://` with `allow_plaintext: true`: passwords cross the network in clear.
    Plaintext,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupLookup {
    /// Group DNs listed on the user's entry (`memberOf`).
    Attribute(String),
    /// Groups found by a search under `base` with `filter` (`{dn}`, `{user}`).
    Search { base: String, filter: String },
}

/// `auth.ldap.pool_size` when the config gives none.
pub const DEFAULT_POOL_SIZE: usize = 8;
/// More connections than this to one directory is a typo.
pub const MAX_POOL_SIZE: usize = 256;

impl TryFrom<RawLdap> for Ldap {
    type Error = ConfigError;

    fn try_from(l: RawLdap) -> Result<Ldap, ConfigError> {
        const K: &str = "auth.ldap";
        let key = |k: &str| format!("{K}.{k}");
        let transport = match parse_url(&l.url) {
            Ok(LdapTransport::Ldaps) if l.allow_plaintext => {
                return Err(ConfigError::new(
                    key("allow_plaintext"),
                    "only applies to an ldap:// url (ldaps:// is always TLS)",
                ))
            }
            Ok(LdapTransport::StartTls) if l.allow_plaintext => LdapTransport::Plaintext,
            Ok(t) => t,
            Err(m) => return Err(ConfigError::new(key("url"), m)),
        };
        if l.ca_file.is_some() && transport == LdapTransport::Plaintext {
            return Err(ConfigError::new(
                key("ca_file"),
                "set, but allow_plaintext: true turns TLS off",
            ));
        }
        let dn = |k: &str, v: &str| {
            if v.trim().is_empty() || v.contains('\0') || v.len() > 1024 {
                Err(ConfigError::new(
                    key(k),
                    "must be a DN of 1 to 1024 characters",
                ))
            } else {
                Ok(())
            }
        };
        dn("bind_dn", &l.bind_dn)?;
        dn("user_base", &l.user_base)?;
        let bind_password = match (l.bind_password_file, l.bind_password_env) {
            (Some(f), None) => SecretSource::File(f),
            (None, Some(e)) if !e.is_empty() => SecretSource::Env(e),
            _ => return Err(ConfigError::new(
                K,
                "give exactly one of bind_password_file or bind_password_env (a password is never written in the config)",
            )),
        };
        let user_filter = l.user_filter.unwrap_or_else(|| "(uid={user})".to_owned());
        filter::check_template(&user_filter, &[filter::USER])
            .map_err(|m| ConfigError::new(key("user_filter"), m))?;
        let user_attribute = match l.user_attribute {
            Some(a) => a,
            None => filter::compared_attribute(&user_filter).ok_or_else(|| {
                ConfigError::new(
                    key("user_attribute"),
                    "needed: user_filter does not compare {user} with one attribute as (ATTR={user})",
                )
            })?,
        };
        if user_attribute.is_empty()
            || !user_attribute
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-')
        {
            return Err(ConfigError::new(
                key("user_attribute"),
                format!("{user_attribute:?} is not an attribute name"),
            ));
        }
        let attribute = |k: &str, v: &str| {
            let ok = !v.is_empty()
                && v.len() <= 128
                && v.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b';');
            if ok {
                Ok(v.to_owned())
            } else {
                Err(ConfigError::new(
                    key(k),
                    format!("{v:?} is not an attribute name (letters, digits, '-')"),
                ))
            }
        };
        let groups = match (l.group_attribute, l.group_base, l.group_filter) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return Err(ConfigError::new(
                    key("group_attribute"),
                    "excludes group_base and group_filter: groups come from an attribute of the user (memberOf) or from a search, not both",
                ))
            }
            (None, None, Some(_)) => {
                return Err(ConfigError::new(
                    key("group_filter"),
                    "needs group_base, where groups are searched",
                ))
            }
            (a, None, None) => {
                GroupLookup::Attribute(attribute("group_attribute", a.as_deref().unwrap_or("memberOf"))?)
            }
            (None, Some(base), f) => {
                dn("group_base", &base)?;
                let f = f.unwrap_or_else(|| "(member={dn})".to_owned());
                filter::check_template(&f, &[filter::USER, filter::DN])
                    .map_err(|m| ConfigError::new(key("group_filter"), m))?;
                GroupLookup::Search { base, filter: f }
            }
        };
        let group_name_attribute = attribute(
            "group_name_attribute",
            l.group_name_attribute.as_deref().unwrap_or("cn"),
        )?;
        Ok(Ldap {
            url: l.url.trim_end_matches('/').to_owned(),
            transport,
            ca_file: l.ca_file,
            bind_dn: l.bind_dn,
            bind_password,
            user_base: l.user_base,
            user_filter,
            user_attribute,
            groups,
            group_name_attribute,
            connect_timeout: duration(
                &key("connect_timeout"),
                l.connect_timeout.as_deref(),
                Duration::from_secs(5),
            )?,
            timeout: duration(
                &key("timeout"),
                l.timeout.as_deref(),
                Duration::from_secs(5),
            )?,
            pool_size: ranged(
                &key("pool_size"),
                l.pool_size,
                DEFAULT_POOL_SIZE,
                1..=MAX_POOL_SIZE,
            )?,
        })
    }
}

/// `ldaps://host[:port][/]` or `ldap://host[:port][/]`: no credentials, DN, query or
/// other scheme (`ldapi://` included: the proxy talks to a directory over the network).
fn parse_url(url: &str) -> Result<LdapTransport, String> {
    let lower = url.to_ascii_lowercase();
    let (transport, rest) = if let Some(r) = lower.strip_prefix("ldaps://") {
        (LdapTransport::Ldaps, r)
    } else if let Some(r) = lower.strip_prefix("ldap://") {
        (LdapTransport::StartTls, r)
    } else {
        return Err(format!("{url:?} must start with ldaps:// or ldap://"));
    };
    let host = rest.strip_suffix('/').unwrap_or(rest);
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    if host.contains(['/', '?', '@', '#', ' ']) {
        return Err(format!(
            "{url:?}: give only ldaps://host[:port] (no credentials, DN or query: they have keys of their own)"
        ));
    }
    let authority: http::uri::Authority = host
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    // After the host (an IPv6 one is in brackets), a port of 1 to 65535 if any.
    let after_host = authority.as_str().rsplit(']').next().unwrap_or_default();
    if let Some((_, port)) = after_host.rsplit_once(':') {
        if !port.parse::<u16>().is_ok_and(|p| p > 0) {
            return Err(format!("{url:?}: the port must be 1 to 65535"));
        }
    }
    Ok(transport)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const BASE: &str = "server:\n  listen: 127.0.0.1:5443\n  plaintext: true\nupstream:\n  url: http://127.0.0.1:5000\naccess:\n  rules:\n    - repos: ['${user}/**']\n      users: ['*']\n      actions: [pull]\nauth:\n  users_file: users.yaml\n  ldap:\n";
    const MIN: &str = "    url: ldaps://ldap.example.org\n    bind_dn: cn=svc,dc=example,dc=org\n    bind_password_env: LDAP_PW\n    user_base: ou=people,dc=example,dc=org\n";

    fn ldap(extra: &str) -> Result<Ldap, String> {
        Config::from_yaml(&format!("{BASE}{MIN}{extra}"))
            .map(|c| c.auth.unwrap().ldap.unwrap())
            .map_err(|e| e.to_string())
    }

    fn without(line: &str, extra: &str) -> String {
        let min = MIN
            .lines()
            .filter(|l| !l.contains(line))
            .map(|l| format!("{l}\n"))
            .collect::<String>();
        Config::from_yaml(&format!("{BASE}{min}{extra}"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    /// The commented `auth.ldap` block of config/example.yaml, uncommented, is valid.
    #[test]
    fn the_example_block_is_valid() {
        let example = include_str!("../../config/example.yaml");
        let mut in_block = false;
        let text: String = example
            .lines()
            .map(|l| {
                if let Some(rest) = l.strip_prefix("  # ldap:") {
                    in_block = true;
                    return format!("  ldap:{rest}\n");
                }
                in_block &= l.starts_with("  #   ");
                match l.strip_prefix("  #   ") {
                    Some(rest) if in_block && !rest.starts_with('#') => format!("    {rest}\n"),
                    _ => format!("{l}\n"),
                }
            })
            .collect();
        assert!(text.contains("\n  ldap:\n    url: ldaps://"), "{text}");
        let l = Config::from_yaml(&text)
            .unwrap()
            .auth
            .unwrap()
            .ldap
            .unwrap();
        assert_eq!(l.groups, GroupLookup::Attribute("memberOf".into()));
        assert_eq!(l.pool_size, 8);
    }

    #[test]
    fn defaults() {
        let l = ldap("").unwrap();
        assert_eq!(l.transport, LdapTransport::Ldaps);
        assert_eq!(l.user_filter, "(uid={user})");
        assert_eq!(l.groups, GroupLookup::Attribute("memberOf".into()));
        assert_eq!(l.group_name_attribute, "cn");
        assert_eq!(l.bind_password, SecretSource::Env("LDAP_PW".into()));
        assert_eq!(
            (l.connect_timeout, l.timeout, l.pool_size),
            (
                Duration::from_secs(5),
                Duration::from_secs(5),
                DEFAULT_POOL_SIZE
            )
        );
    }

    #[test]
    fn ldap_urls_need_tls_unless_plaintext_is_allowed_explicitly() {
        let l = ldap("").unwrap();
        assert_eq!(l.url, "ldaps://ldap.example.org");
        let plain = format!("{BASE}{}", MIN.replace("ldaps://", "ldap://"));
        let c = Config::from_yaml(&plain).unwrap();
        assert_eq!(
            c.auth.unwrap().ldap.unwrap().transport,
            LdapTransport::StartTls
        );
        let c = Config::from_yaml(&format!("{plain}    allow_plaintext: true\n")).unwrap();
        assert_eq!(
            c.auth.unwrap().ldap.unwrap().transport,
            LdapTransport::Plaintext
        );
        let e = ldap("    allow_plaintext: true\n").unwrap_err();
        assert!(e.contains("auth.ldap.allow_plaintext"), "{e}");
        for bad in [
            "http://ldap.example.org",
            "ldapi:///var/run/slapd",
            "ldaps://",
            "ldaps://user:pw@ldap.example.org",
            "ldaps://ldap.example.org/dc=example?uid",
            "ldaps://ldap.example.org:99999",
        ] {
            let e = Config::from_yaml(&format!(
                "{BASE}{}",
                MIN.replace("ldaps://ldap.example.org", bad)
            ))
            .unwrap_err()
            .to_string();
            assert!(e.starts_with("auth.ldap.url: "), "{bad}: {e}");
        }
    }

    #[test]
    fn the_service_password_is_never_in_the_config() {
        let e = without("bind_password_env", "");
        assert!(e.contains("bind_password_file or bind_password_env"), "{e}");
        let e = ldap("    bind_password_file: pw\n").unwrap_err();
        assert!(e.contains("exactly one"), "{e}");
        let e = ldap("    bind_password: hunter2\n").unwrap_err();
        assert!(e.contains("unknown field `bind_password`"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn filters_are_templates_with_placeholders() {
        let l = ldap("    user_filter: '(&(objectClass=user)(sAMAccountName={user}))'\n").unwrap();
        assert_eq!(
            l.user_filter,
            "(&(objectClass=user)(sAMAccountName={user}))"
        );
        for (extra, key) in [
            ("    user_filter: '(uid=alice)'\n", "auth.ldap.user_filter"),
            ("    user_filter: 'uid={user}'\n", "auth.ldap.user_filter"),
            ("    user_filter: '(uid={dn})'\n", "auth.ldap.user_filter"),
            (
                "    group_filter: '(member={dn})'\n",
                "auth.ldap.group_filter",
            ),
            (
                "    group_base: ou=groups,dc=x\n    group_filter: '(member=x)'\n",
                "auth.ldap.group_filter",
            ),
            (
                "    group_attribute: memberOf\n    group_base: ou=groups,dc=x\n",
                "auth.ldap.group_attribute",
            ),
            (
                "    group_attribute: 'member of'\n",
                "auth.ldap.group_attribute",
            ),
            (
                "    group_name_attribute: ''\n",
                "auth.ldap.group_name_attribute",
            ),
            ("    pool_size: 0\n", "auth.ldap.pool_size"),
            ("    timeout: 0s\n", "auth.ldap.timeout"),
            ("    connect_timeout: soon\n", "auth.ldap.connect_timeout"),
        ] {
            let e = ldap(extra).unwrap_err();
            assert!(e.starts_with(&format!("{key}: ")), "{extra}: {e}");
        }
        let l = ldap("    group_base: ou=groups,dc=x\n").unwrap();
        assert_eq!(
            l.groups,
            GroupLookup::Search {
                base: "ou=groups,dc=x".into(),
                filter: "(member={dn})".into()
            }
        );
        let e = without("user_base", "");
        assert!(e.contains("user_base"), "{e}");
    }
}
