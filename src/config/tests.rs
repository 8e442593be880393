//! The config's unit tests: defaults, unknown keys, and that every message names its key.

use super::validate::parse_origin;
use super::*;
use std::time::Duration;

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
    assert_eq!(c.limits.max_connections_per_user, 512);
    assert_eq!(c.limits.max_tags, DEFAULT_MAX_TAGS);
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
        (
            format!("{MIN}limits:\n  max_connections_per_user: 0\n"),
            "limits.max_connections_per_user",
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
        (format!("{MIN}limits:\n  max_tags: 0\n"), "limits.max_tags"),
        (
            format!("{MIN}limits:\n  max_tags: 1000001\n"),
            "limits.max_tags",
        ),
        (format!("{MIN}limits:\n  max_tags: -1\n"), "limits.max_tags"),
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

/// `auth.docker_bearer`: auto follows `auth.anonymous`, on and off force it, anything
/// else is named; a token key without tokens is a mistake worth naming.
#[test]
fn docker_bearer_follows_anonymous_unless_forced() {
    let bearer = |extra: &str| {
        Config::from_yaml(&format!("{WITH_USERS}{extra}"))
            .unwrap()
            .auth
            .unwrap()
            .settings
            .docker_bearer
    };
    assert!(!bearer(""));
    assert!(bearer("  anonymous: true\n"));
    assert!(bearer("  anonymous: true\n  docker_bearer: auto\n"));
    assert!(!bearer("  anonymous: true\n  docker_bearer: off\n"));
    assert!(bearer("  docker_bearer: on\n"));
    let a = Config::from_yaml(&format!(
        "{WITH_USERS}  anonymous: true\n  token_key_file: keys/token.key\n"
    ))
    .unwrap()
    .auth
    .unwrap();
    assert_eq!(
        a.token_key_file.as_deref(),
        Some(std::path::Path::new("keys/token.key"))
    );
    let e = err(&format!("{WITH_USERS}  docker_bearer: yes-please\n"));
    assert!(
        e.contains("auth.docker_bearer") && e.contains("yes-please"),
        "{e}"
    );
    let e = err(&format!("{WITH_USERS}  token_key_file: k\n"));
    assert!(
        e.contains("auth.token_key_file") && e.contains("issues no tokens"),
        "{e}"
    );
}

/// `auth.upgrade_hashes`: on unless turned off; a non-boolean is named.
#[test]
fn upgrade_hashes_is_on_unless_turned_off() {
    let upgrade = |extra: &str| {
        Config::from_yaml(&format!("{WITH_USERS}{extra}"))
            .unwrap()
            .auth
            .unwrap()
            .settings
            .upgrade_hashes
    };
    assert!(upgrade(""));
    assert!(upgrade("  upgrade_hashes: true\n"));
    assert!(!upgrade("  upgrade_hashes: false\n"));
    let e = err(&format!("{WITH_USERS}  upgrade_hashes: sometimes\n"));
    assert!(e.contains("upgrade_hashes"), "{e}");
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
    let c = Config::from_yaml(include_str!("../../config/example.yaml")).unwrap();
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

#[test]
fn proxy_protocol_needs_trusted_proxies() {
    let c = Config::from_yaml(MIN).unwrap();
    assert!(!c.server.proxy_protocol);
    let on = MIN.replace(
        "  plaintext: true\n",
        "  plaintext: true\n  proxy_protocol: true\n",
    );
    let e = err(&on);
    assert!(
        e.starts_with("server.proxy_protocol:") && e.contains("trusted_proxies"),
        "{e}"
    );
    let c = Config::from_yaml(&on.replace(
        "  proxy_protocol: true\n",
        "  proxy_protocol: true\n  trusted_proxies: [10.0.0.0/8]\n",
    ))
    .unwrap();
    assert!(c.server.proxy_protocol);
    // audit.trusted_proxies (older configs) counts too.
    let c = Config::from_yaml(&format!(
        "{on}audit:\n  file: a.jsonl\n  key_file: k\n  trusted_proxies: [10.0.0.0/8]\n"
    ))
    .unwrap();
    assert!(c.server.proxy_protocol);
}

#[test]
fn audit_instance_is_a_name_without_colon() {
    let base = format!("{MIN}audit:\n  file: a.jsonl\n  key_file: k\n");
    let c = Config::from_yaml(&base).unwrap();
    assert_eq!(
        c.audit.unwrap().settings.instance,
        None,
        "default: the host name, at start"
    );
    let c = Config::from_yaml(&format!("{base}  instance: rg-a.eu-1\n")).unwrap();
    assert_eq!(
        c.audit.unwrap().settings.instance.as_deref(),
        Some("rg-a.eu-1")
    );
    for bad in ["\"\"", "\"a:b\"", "\"a b\"", &"x".repeat(65)] {
        let e = err(&format!("{base}  instance: {bad}\n"));
        assert!(e.starts_with("audit.instance:"), "{bad}: {e}");
    }
}

/// The access tokens' settings of a valid config.
fn tokens_of(yaml: &str) -> AccessTokens {
    Config::from_yaml(yaml)
        .unwrap()
        .auth
        .and_then(|a| a.tokens)
        .expect("auth.tokens_file")
}

#[test]
fn access_tokens_settings() {
    let c = Config::from_yaml(WITH_USERS).unwrap();
    assert!(c.auth.unwrap().tokens.is_none());
    let with = format!("{WITH_USERS}  tokens_file: tokens.yaml\n");
    let t = Config::from_yaml(&with)
        .unwrap()
        .auth
        .unwrap()
        .tokens
        .unwrap();
    assert_eq!(t.file, std::path::PathBuf::from("tokens.yaml"));
    assert_eq!(
        t.last_used_file,
        std::path::PathBuf::from("tokens.yaml.last-used")
    );
    assert_eq!(t.max_lifetime, None);
    assert_eq!(t.flush_interval, DEFAULT_TOKEN_FLUSH);
    let t = tokens_of(&format!(
        "{with}tokens:\n  max_lifetime: 90d\n  last_used_file: /var/lib/rg/last-used.yaml\n  flush_interval: 5s\n"
    ));
    assert_eq!(t.max_lifetime, Some(Duration::from_secs(90 * 86400)));
    assert_eq!(t.flush_interval, Duration::from_secs(5));
    assert_eq!(
        t.last_used_file,
        std::path::PathBuf::from("/var/lib/rg/last-used.yaml")
    );
    for (yaml, key) in [
        (
            format!("{WITH_USERS}tokens:\n  max_lifetime: 90d\n"),
            "tokens: set, but auth.tokens_file",
        ),
        (
            format!("{with}tokens:\n  max_lifetime: soon\n"),
            "tokens.max_lifetime: \"soon\"",
        ),
        (
            format!("{with}tokens:\n  max_lifetime: 5s\n"),
            "tokens.max_lifetime: must be at least",
        ),
        (
            format!("{with}tokens:\n  flush_interval: 0s\n"),
            "tokens.flush_interval",
        ),
        (
            format!("{with}tokens:\n  maxlifetime: 1d\n"),
            "unknown field `maxlifetime`",
        ),
        (
            format!("{MIN}tokens:\n  max_lifetime: 1d\n"),
            "tokens: access tokens need authentication",
        ),
    ] {
        let e = err(&yaml);
        assert!(e.contains(key), "{e}");
    }
    // Relative paths are the config file's folder's, the default last-use file follows.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, &with).unwrap();
    let t = Config::load(&path).unwrap().auth.unwrap().tokens.unwrap();
    assert_eq!(t.file, dir.path().join("tokens.yaml"));
    assert_eq!(t.last_used_file, dir.path().join("tokens.yaml.last-used"));
}

#[test]
fn the_example_config_is_valid_with_its_token_keys_uncommented() {
    let text = include_str!("../../config/example.yaml")
        .replace("  # tokens_file: ", "  tokens_file: ")
        .replace("\n# tokens:\n", "\ntokens:\n")
        .replace("#   max_lifetime:", "  max_lifetime:")
        .replace("#   last_used_file:", "  last_used_file:")
        .replace("#   flush_interval:", "  flush_interval:");
    let t = tokens_of(&text);
    assert_eq!(t.max_lifetime, Some(Duration::from_secs(90 * 86400)));
    assert_eq!(t.flush_interval, DEFAULT_TOKEN_FLUSH);
}

/// `audit.events` turns on push, pull and login records; deletes always are; an unknown
/// kind is refused naming the key. `audit.queue` and `audit.login_window` are checked.
#[test]
fn audit_events_name_known_kinds_and_deletes_are_always_on() {
    use crate::audit::Kind;
    let base = format!("{MIN}audit:\n  file: a.jsonl\n  key_file: k\n");
    let c = Config::from_yaml(&base).unwrap();
    let a = c.audit.unwrap();
    assert_eq!(a.events.iter().copied().collect::<Vec<_>>(), [Kind::Delete]);
    assert_eq!(
        (a.settings.queue, a.settings.login_window.as_secs()),
        (10_000, 3600)
    );
    let c = Config::from_yaml(&format!(
        "{base}  events: [pull, login]\n  queue: 5\n  login_window: 10m\n"
    ))
    .unwrap();
    let a = c.audit.unwrap();
    assert!(a.records(Kind::Delete) && a.records(Kind::Pull) && a.records(Kind::Login));
    assert!(!a.records(Kind::Push));
    assert_eq!(
        (a.settings.queue, a.settings.login_window.as_secs()),
        (5, 600)
    );
    let e = err(&format!("{base}  events: [pull, blob]\n"));
    assert!(
        e.contains("audit.events") && e.contains("\"blob\" is not an event kind"),
        "{e}"
    );
    let e = err(&format!("{base}  queue: 0\n"));
    assert!(e.contains("audit.queue"), "{e}");
}

/// `audit.max_failed_logins_per_minute`: 600 by default, at least 1, named when wrong.
#[test]
fn audit_failed_login_budget_is_checked_naming_its_key() {
    let base = format!("{MIN}audit:\n  file: a.jsonl\n  key_file: k\n");
    let a = Config::from_yaml(&base).unwrap().audit.unwrap();
    assert_eq!(a.settings.max_failed_logins_per_minute, 600);
    let a = Config::from_yaml(&format!("{base}  max_failed_logins_per_minute: 5\n"))
        .unwrap()
        .audit
        .unwrap();
    assert_eq!(a.settings.max_failed_logins_per_minute, 5);
    for bad in ["0", "2000000", "-1", "lots"] {
        let e = err(&format!("{base}  max_failed_logins_per_minute: {bad}\n"));
        assert!(
            e.contains("audit.max_failed_logins_per_minute"),
            "{bad}: {e}"
        );
    }
}

/// `audit.syslog`: HOST:PORT, a known facility, TLS keys only with `tls: true`.
#[test]
fn audit_syslog_is_checked_naming_its_keys() {
    let base = format!("{MIN}audit:\n  file: a.jsonl\n  key_file: k\n  syslog:\n");
    let c = Config::from_yaml(&format!(
        "{base}    address: logs.example:6514\n    tls: true\n    facility: local3\n"
    ))
    .unwrap();
    let s = c.audit.unwrap().settings.syslog.unwrap();
    assert_eq!(
        (s.address.as_str(), s.tls, s.facility, s.buffer),
        ("logs.example:6514", true, 19, 10_000)
    );
    assert_eq!(s.app_name, "registry-guard");
    for (yaml, key) in [
        ("    address: logs.example\n", "audit.syslog.address"),
        ("    address: logs.example:0\n", "audit.syslog.address"),
        (
            "    address: h:514\n    facility: kern\n",
            "audit.syslog.facility",
        ),
        (
            "    address: h:514\n    ca_file: ca.pem\n",
            "audit.syslog.tls",
        ),
        (
            "    address: h:514\n    app_name: a b\n",
            "audit.syslog.app_name",
        ),
        ("    address: h:514\n    buffer: 0\n", "audit.syslog.buffer"),
        ("    address: h:514\n    port: 1\n", "port"),
    ] {
        let e = err(&format!("{base}{yaml}"));
        assert!(e.contains(key), "{yaml}: {e}");
    }
}
