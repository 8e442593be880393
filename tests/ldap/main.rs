//! Directory identities (`auth.ldap`) end to end: Debian's slapd (`slapd.rs`: a
//! throw-away database, the memberof overlay, a test CA for ldaps and StartTLS) as the
//! directory, Debian's docker-registry behind the registry-guard binary, skopeo and curl
//! as clients. What the slapd log shows (its `-d stats` lines: every BIND and SRCH with
//! its filter) proves what the proxy did and did not send.
#[path = "../common/mod.rs"]
mod common;
mod slapd;

use common::curl::call;
use common::e2e::*;
use common::metrics::{http_get, scrape};
use common::process::*;
use common::*;
use slapd::*;
use std::net::SocketAddr;
use std::time::Duration;

const RULES: &str = "  rules:\n    - name: own\n      repos: ['${user}/**']\n      users: ['*']\n      actions: [pull, push]\n    - name: team-a\n      repos: ['team-a/**']\n      groups: [team-a]\n      actions: [pull, push]\n";
/// In the user file and in the directory (with another password).
const CAROL_FILE_PW: &str = "carol-File-pw";

struct Setup {
    slapd: Slapd,
    registry: Registry,
    proxy: Proxy,
    metrics: SocketAddr,
}

/// slapd, the registry and the proxy with the directory configured (`ldap_extra`:
/// further `auth.ldap` keys, `auth_extra`: further `auth` keys).
fn setup(ldap_extra: &str, auth_extra: &str, starttls: bool) -> Option<Setup> {
    let slapd = Slapd::start()?;
    let registry = Registry::start()?;
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut ldap = slapd.auth_yaml(ldap_extra);
    if starttls {
        ldap = ldap.replace(
            &format!("ldaps://{}", slapd.ldaps),
            &format!("ldap://{}", slapd.ldap),
        );
    }
    let proxy = Proxy::builder(&registry.url)
        .users(vec![user("carol", CAROL_FILE_PW, &["file-group"])])
        .auth_yaml(&format!("{auth_extra}{ldap}"))
        .access_yaml(RULES)
        .extra_yaml(&format!("metrics:\n  listen: {metrics}\n"))
        .env("LDAP_SVC_PW", SERVICE_PW)
        .start();
    Some(Setup {
        slapd,
        registry,
        proxy,
        metrics,
    })
}

impl Setup {
    fn get(&self, user: &str, pw: &str, path: &str) -> common::curl::Resp {
        call(&self.proxy.base, Some(&self.proxy.ca), "GET", path)
            .user(user, pw)
            .send()
    }
    /// An upload start: 202 with push, 403 without.
    fn upload(&self, user: &str, pw: &str, repo: &str) -> common::curl::Resp {
        call(
            &self.proxy.base,
            Some(&self.proxy.ca),
            "POST",
            &format!("/v2/{repo}/blobs/uploads/"),
        )
        .user(user, pw)
        .send()
    }
}

#[test]
fn directory_users_push_by_their_own_rule_and_by_group_and_every_refusal_is_right() {
    let Some(s) = setup("", "", false) else {
        return;
    };
    if !have("skopeo") || !have_python(false) {
        return;
    }
    // alice pushes into her own namespace (${user}) and into team-a (her group).
    let work = tempfile::tempdir().unwrap();
    let img = mkimage(&work.path().join("layout"), 1, "v1", 7);
    push_through(&s.proxy, &img, "alice/app:v1", Some("alice:alice-Dir-pw"));
    push_through(&s.proxy, &img, "team-a/app:v1", Some("alice:alice-Dir-pw"));
    let tags = s.get("alice", "alice-Dir-pw", "/v2/team-a/app/tags/list");
    assert_eq!(tags.status, 200, "{}", tags.describe());
    assert_eq!(tags.json()["tags"], serde_json::json!(["v1"]));
    // bob is not in team-a: 403; his own namespace: 202.
    s.upload("bob", "bob-Dir-pw", "team-a/app")
        .assert_refusal(403, "DENIED", "bob, not in team-a");
    assert_eq!(s.upload("bob", "bob-Dir-pw", "bob/app").status, 202);
    // A wrong password: 401 (the directory refused the bind).
    s.get("bob", "wrong", "/v2/")
        .assert_refusal(401, "UNAUTHORIZED", "wrong password");
    // The user file wins: carol's directory password is not hers here; her file one is,
    // with the file's groups (not team-a).
    s.get("carol", "carol-Dir-pw", "/v2/").assert_refusal(
        401,
        "UNAUTHORIZED",
        "carol's directory password",
    );
    assert_eq!(s.get("carol", CAROL_FILE_PW, "/v2/").status, 200);
    s.upload("carol", CAROL_FILE_PW, "team-a/app")
        .assert_refusal(403, "DENIED", "carol's file groups");
    assert!(
        wait_for(Duration::from_secs(10), || s
            .proxy
            .logs()
            .contains("in the user file and in the directory")
            .then_some(()))
        .is_some(),
        "the name in both is reported at start:\n{}",
        s.proxy.logs()
    );
    assert!(
        s.slapd.log_lines("BIND dn=\"uid=carol").is_empty(),
        "carol's logins never bind as her directory entry"
    );
    // An empty password: 401 before anything is sent to the directory.
    s.get("dana", "", "/v2/")
        .assert_refusal(401, "UNAUTHORIZED", "empty password");
    assert!(
        s.slapd.log_lines("uid=dana").is_empty(),
        "no search and no bind for an empty password:\n{:?}",
        s.slapd.log_lines("uid=dana")
    );
    // ...while a real login of dana searches and binds once.
    assert_eq!(s.get("dana", "dana-Dir-pw", "/v2/").status, 200);
    assert_eq!(
        s.slapd.log_lines("BIND dn=\"uid=dana,ou=people").len(),
        2,
        "one bind (logged twice by slapd: the request and its mechanism)"
    );
    // Filter characters cannot widen the search: such names are not user names (the
    // user file's grammar) and are refused before any search; the escaping (RFC 4515)
    // behind it is unit-tested and fuzzed (auth::ldap::filter).
    let searches = s.slapd.log_lines("SRCH base=").len();
    for name in [
        "*",
        "al*",
        "*)(uid=*",
        "alice)(|(uid=*",
        "a\\",
        "(",
        "alice ",
        " alice",
    ] {
        s.get(name, "alice-Dir-pw", "/v2/").assert_refusal(
            401,
            "UNAUTHORIZED",
            &format!("name {name:?}"),
        );
    }
    assert_eq!(
        s.slapd.log_lines("SRCH base=").len(),
        searches,
        "no search for a name outside the grammar"
    );
    // The directory matches uid ignoring case; a name here is exact: `ALICE` with
    // alice's password is refused (one person, one name: one cache entry, one throttle
    // count, one audit name), and `Carol` does not get past the user file's carol.
    for name in ["ALICE", "Alice", "Carol"] {
        let pw = if name == "Carol" {
            "carol-Dir-pw"
        } else {
            "alice-Dir-pw"
        };
        s.get(name, pw, "/v2/").assert_refusal(
            401,
            "UNAUTHORIZED",
            &format!("name {name:?}, spelled otherwise in the directory"),
        );
    }
    assert_eq!(
        s.get("alice", "alice-Dir-pw", "/v2/").status,
        200,
        "alice herself still logs in"
    );
    // Two entries for one name: refused, not the first one.
    s.get("dup", "dup-pw", "/v2/")
        .assert_refusal(401, "UNAUTHORIZED", "two entries named dup");
    assert!(
        s.slapd.log_lines("BIND dn=\"uid=dup").is_empty(),
        "dup never bound"
    );
    // The service password is in no log line and no answer.
    let logs = s.proxy.logs();
    assert!(!logs.contains(SERVICE_PW), "{logs}");
    // Metrics: bind and search latencies, no errors.
    let m = scrape(s.metrics);
    for op in ["connect", "bind", "search"] {
        assert!(
            m.get(&format!(
                "registry_guard_ldap_operation_seconds_count{{operation=\"{op}\"}}"
            )) > 0,
            "{op}"
        );
        assert_eq!(
            m.get(&format!(
                "registry_guard_ldap_errors_total{{operation=\"{op}\"}}"
            )),
            0,
            "{op}"
        );
    }
    let (status, body) = http_get(s.metrics, "/readyz");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["checks"]["directory"]["ok"], true, "{body}");
    drop(s.registry);
}

#[test]
fn a_directory_outage_gives_503_to_uncached_logins_and_spares_cached_ones() {
    let Some(mut s) = setup("", "  throttle:\n    max_failures: 3\n", false) else {
        return;
    };
    // alice logs in (cached), then the directory goes away.
    assert_eq!(s.get("alice", "alice-Dir-pw", "/v2/").status, 200);
    s.slapd.stop();
    assert_eq!(
        s.get("alice", "alice-Dir-pw", "/v2/").status,
        200,
        "a cached login needs no directory"
    );
    assert_eq!(
        s.get("carol", CAROL_FILE_PW, "/v2/").status,
        200,
        "file users too"
    );
    // bob was not cached: 503 with a registry error, never 401, and never counted by
    // the throttle (max_failures is 3: the 6th try is still 503, not 429).
    for i in 0..6 {
        let r = s.get("bob", "bob-Dir-pw", "/v2/");
        r.assert_refusal(503, "UNAVAILABLE", &format!("uncached login {i}"));
        assert!(r.text().contains("directory"), "{}", r.text());
        assert!(!r.text().contains(SERVICE_PW));
    }
    let m = scrape(s.metrics);
    assert!(m.get("registry_guard_ldap_errors_total{operation=\"connect\"}") > 0);
    assert_eq!(
        m.get("registry_guard_auth_results_total{result=\"unavailable\"}"),
        6
    );
    // Readiness reports the directory but stays ready (cached and file users work).
    let (status, body) = http_get(s.metrics, "/readyz");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["checks"]["directory"]["ok"], false, "{body}");
    assert_eq!(v["degraded"], serde_json::json!(["directory"]), "{body}");
    let logs = s.proxy.logs();
    assert!(logs.contains("the directory is unavailable"), "{logs}");
    assert!(!logs.contains(SERVICE_PW), "{logs}");
}

#[test]
fn a_user_removed_from_a_group_loses_push_after_the_cache_ttl_and_refusals_are_throttled() {
    let Some(s) = setup(
        "",
        "  cache_ttl: 2s\n  throttle:\n    max_failures: 3\n",
        false,
    ) else {
        return;
    };
    assert_eq!(s.upload("dana", "dana-Dir-pw", "team-a/app").status, 202);
    s.slapd.modify(
        "ldapmodify",
        &format!(
            "dn: cn=team-a,ou=groups,{SUFFIX}\nchangetype: modify\ndelete: member\nmember: uid=dana,ou=people,{SUFFIX}\n"
        ),
    );
    // The next uncached login reads the groups again: once the TTL is over, no push.
    std::thread::sleep(Duration::from_millis(2500));
    s.upload("dana", "dana-Dir-pw", "team-a/app")
        .assert_refusal(403, "DENIED", "dana, removed from team-a");
    assert_eq!(s.upload("dana", "dana-Dir-pw", "dana/app").status, 202);
    assert!(
        s.slapd.log_lines("BIND dn=\"uid=dana,ou=people").len() >= 4,
        "two logins, each with its bind"
    );
    // Directory refusals count toward the throttle like wrong file passwords: the
    // 4th wrong password for bob gets 429, without asking the directory.
    for i in 0..3 {
        s.get("bob", &format!("guess-{i}"), "/v2/").assert_refusal(
            401,
            "UNAUTHORIZED",
            "a wrong directory password",
        );
    }
    let binds = s.slapd.log_lines("BIND dn=\"uid=bob,ou=people").len();
    s.get("bob", "bob-Dir-pw", "/v2/").assert_refusal(
        429,
        "TOOMANYREQUESTS",
        "bob after 3 failures",
    );
    assert_eq!(
        s.slapd.log_lines("BIND dn=\"uid=bob,ou=people").len(),
        binds,
        "a throttled login never reaches the directory"
    );
}

#[test]
fn groups_by_search_over_starttls_and_the_cli_explains_directory_users() {
    let Some(s) = setup(
        &format!("    group_base: ou=groups,{SUFFIX}\n    group_filter: '(&(objectClass=groupOfNames)(member={{dn}}))'\n"),
        "",
        true,
    ) else {
        return;
    };
    assert_eq!(s.upload("alice", "alice-Dir-pw", "team-a/app").status, 202);
    s.upload("bob", "bob-Dir-pw", "team-a/app")
        .assert_refusal(403, "DENIED", "bob, not in team-a");
    let log = s.slapd.log();
    assert!(log.contains("STARTTLS"), "StartTLS was used:\n{log}");
    assert!(
        log.contains("(member=uid=alice,ou=people,dc=example,dc=org)"),
        "the group search with the DN the directory returned:\n{log}"
    );
    // explain resolves a directory user's groups with the service account.
    let cfg = s.proxy.config_path.to_str().unwrap().to_owned();
    let mut cmd = std::process::Command::new(bin());
    cmd.env("LDAP_SVC_PW", SERVICE_PW).args([
        "explain",
        "--config",
        &cfg,
        "--user",
        "alice",
        "POST",
        "/v2/team-a/app/blobs/uploads/",
    ]);
    let out = ok(&run(&mut cmd, Duration::from_secs(60)), "explain");
    assert!(
        out.contains("identity: alice (from the directory, groups: developers, team-a)"),
        "{out}"
    );
    assert!(out.contains("decision: ALLOWED"), "{out}");
    let mut cmd = std::process::Command::new(bin());
    cmd.env("LDAP_SVC_PW", SERVICE_PW).args([
        "explain", "--config", &cfg, "--user", "nobody", "GET", "/v2/",
    ]);
    let out = run(&mut cmd, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(64));
    assert!(
        text(&out.stderr).contains("nor in the directory"),
        "{}",
        text(&out.stderr)
    );
    // user list: where each identity comes from.
    let mut cmd = std::process::Command::new(bin());
    cmd.env("LDAP_SVC_PW", SERVICE_PW)
        .args(["user", "list", "--config", &cfg]);
    let out = ok(&run(&mut cmd, Duration::from_secs(60)), "user list");
    assert!(
        out.contains("carol\tfile-group\tfile (shadows a directory user)"),
        "{out}"
    );
    assert!(
        out.contains("*\t(groups from the directory)\tdirectory ldap://"),
        "{out}"
    );
}

/// `token create --tokens-file`: a token of `owner` on `team-a/**`; returns its secret.
fn team_token(file: &std::path::Path, name: &str, owner: &str) -> String {
    let out = run_cli(
        &[
            "token",
            "create",
            name,
            "--owner",
            owner,
            "--repos",
            "team-a/**",
            "--actions",
            "pull,push",
            "--expires",
            "1d",
            "--tokens-file",
            file.to_str().unwrap(),
        ],
        std::path::Path::new("/"),
    );
    ok(&out, "token create");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Access tokens owned by directory users: the owner's groups come from the directory
/// (cached for auth.cache_ttl like a login), a user removed from a group or from the
/// directory loses what the token had through them once the entry expires, and a
/// directory that cannot answer gives 503 (never 401) for an owner not cached.
#[test]
fn tokens_of_directory_users_follow_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.yaml");
    let dana = team_token(&tokens, "ci-dana", "dana");
    let bob = team_token(&tokens, "ci-bob", "bob");
    let Some(mut s) = setup(
        "",
        &format!("  cache_ttl: 2s\n  tokens_file: {}\n", tokens.display()),
        false,
    ) else {
        return;
    };
    // dana is in team-a in the directory: the token may push there.
    assert_eq!(s.upload("ci-dana", &dana, "team-a/app").status, 202);
    assert_eq!(s.get("ci-dana", &dana, "/v2/").status, 200);
    // bob is not in team-a: his token's scope is cut to what bob may do.
    s.upload("ci-bob", &bob, "team-a/app").assert_refusal(
        403,
        "DENIED",
        "a token never exceeds its owner",
    );
    // dana leaves team-a: after the TTL the token loses push there.
    s.slapd.modify(
        "ldapmodify",
        &format!(
            "dn: cn=team-a,ou=groups,{SUFFIX}\nchangetype: modify\ndelete: member\nmember: uid=dana,ou=people,{SUFFIX}\n"
        ),
    );
    std::thread::sleep(Duration::from_millis(2500));
    s.upload("ci-dana", &dana, "team-a/app").assert_refusal(
        403,
        "DENIED",
        "dana, removed from team-a",
    );
    // dana leaves the directory: the token is refused like a wrong password.
    s.slapd.modify(
        "ldapmodify",
        &format!("dn: uid=dana,ou=people,{SUFFIX}\nchangetype: delete\n"),
    );
    std::thread::sleep(Duration::from_millis(2500));
    s.get("ci-dana", &dana, "/v2/").assert_refusal(
        401,
        "UNAUTHORIZED",
        "dana, gone from the directory",
    );
    // The directory down: bob's owner entry expired, so 503, not 401.
    std::thread::sleep(Duration::from_millis(2500));
    s.slapd.stop();
    let r = s.get("ci-bob", &bob, "/v2/");
    r.assert_refusal(503, "UNAVAILABLE", "owner not judged");
    let logs = s.proxy.logs();
    assert!(
        !logs.contains(&dana) && !logs.contains(&bob),
        "no secret logged"
    );
    assert!(!logs.contains(SERVICE_PW));
}

/// docker's login (auth.docker_bearer) for a directory user: /auth/token issues a bearer
/// token for the name, whose groups are read from the directory at each request; a user
/// who leaves the directory loses it once the cached entry expires.
#[test]
fn docker_bearer_tokens_for_directory_users() {
    let Some(s) = setup(
        "",
        "  anonymous: true\n  docker_bearer: on\n  cache_ttl: 2s\n",
        false,
    ) else {
        return;
    };
    let r = call(
        &s.proxy.base,
        Some(&s.proxy.ca),
        "GET",
        "/auth/token?service=registry-guard&scope=repository:team-a/app:pull,push",
    )
    .user("dana", "dana-Dir-pw")
    .send();
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.json()["token"].as_str().unwrap().to_owned();
    let auth = format!("Authorization: Bearer {token}");
    let upload = |repo: &str| {
        call(
            &s.proxy.base,
            Some(&s.proxy.ca),
            "POST",
            &format!("/v2/{repo}/blobs/uploads/"),
        )
        .header(&auth)
        .send()
    };
    assert_eq!(upload("team-a/app").status, 202, "dana's groups");
    assert_eq!(upload("dana/app").status, 202, "${{user}}");
    upload("bob/app").assert_refusal(403, "DENIED", "another user's namespace");
    s.slapd.modify(
        "ldapmodify",
        &format!("dn: uid=dana,ou=people,{SUFFIX}\nchangetype: delete\n"),
    );
    std::thread::sleep(Duration::from_millis(2500));
    let r = upload("dana/app");
    assert_eq!(r.status, 401, "dana left the directory: {}", r.text());
}
