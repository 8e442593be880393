//! Access tokens end to end: the `token create|list|revoke` commands, and tokens used as
//! Basic credentials by skopeo and curl through the registry-guard binary in front of
//! Debian's docker-registry: a push token pushes, a pull-only token gets 403 on a push,
//! an expired token gets the wrong password's 401, a revoked token and a token whose
//! owner was disabled stop working after the reload, a token loses what its owner
//! loses; the access log and the audit name the token and its owner; `explain` and
//! `check` read the tokens file.
#[path = "../common/mod.rs"]
mod common;
use common::curl::{call, Resp};
use common::e2e::*;
use common::process::*;
use common::*;

use registry_guard::auth::access_tokens::{self as at, TokenEntry, TokenFile};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a change of a watched file may take to be in force (the reload polls every
/// 2 s and waits for the file to hold still): a bound, not a measurement.
const RELOAD: Duration = Duration::from_secs(20);

const RULES: &str = "  rules:\n    - name: team-a\n      repos: ['team-a/**']\n      groups: [team-a]\n      actions: [pull, push, delete]\n";

/// `registry-guard token ...`; returns (exit code, stdout, stderr).
fn token(args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["token"];
    all.extend_from_slice(args);
    let out = run_cli(&all, Path::new("/"));
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

/// Creates a token with `token create ... --tokens-file FILE`; returns its secret.
fn create(file: &Path, name: &str, owner: &str, repos: &str, actions: &str) -> String {
    let f = file.display().to_string();
    let (code, out, err) = token(&[
        "create",
        name,
        "--owner",
        owner,
        "--repos",
        repos,
        "--actions",
        actions,
        "--expires",
        "1d",
        "--description",
        "test token",
        "--tokens-file",
        &f,
    ]);
    assert_eq!(code, 0, "token create {name}: {err}");
    assert!(err.contains("printed once"), "{err}");
    let secret = out.trim().to_owned();
    assert!(secret.starts_with("rgt_") && secret.len() == 47, "{secret}");
    secret
}

fn get(proxy: &Proxy, path: &str, user: &str, secret: &str) -> Resp {
    call(&proxy.base, Some(&proxy.ca), "GET", path)
        .user(user, secret)
        .send()
}

fn upload_start(proxy: &Proxy, repo: &str, user: &str, secret: &str) -> Resp {
    call(
        &proxy.base,
        Some(&proxy.ca),
        "POST",
        &format!("/v2/{repo}/blobs/uploads/"),
    )
    .user(user, secret)
    .send()
}

/// Waits until `f` holds, at most [`RELOAD`].
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    assert!(
        wait_for(RELOAD, || f().then_some(())).is_some(),
        "{what}: not within {RELOAD:?}"
    );
}

#[test]
fn skopeo_pushes_with_a_push_token_a_pull_only_token_gets_403_and_the_logs_name_the_owner() {
    let Some(reg) = Registry::start() else { return };
    if !have("skopeo") || !have_python(false) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.yaml");
    let push = create(&tokens, "ci-push", "alice", "team-a/**", "pull,push");
    let pull = create(&tokens, "ci-pull", "alice", "team-a/**,public/**", "pull");
    let key = dir.path().join("audit.key");
    let out = run_cli(&["audit", "keygen", key.to_str().unwrap()], dir.path());
    ok(&out, "audit keygen");
    let audit = dir.path().join("audit.jsonl");
    let proxy = Proxy::builder(&reg.url)
        .users(vec![user("alice", "alice-pw", &["team-a"])])
        .auth_yaml(&format!("  tokens_file: {}\n", tokens.display()))
        .access_yaml(RULES)
        .extra_yaml(&format!(
            "tokens:\n  flush_interval: 1s\naudit:\n  file: {}\n  key_file: {}\n  manifest_pushes: true\n",
            audit.display(),
            key.display()
        ))
        .start();

    // skopeo pushes with the push token, digests preserved.
    let img = mkimage(&dir.path().join("layout"), 1, "v1", 1);
    push_through(
        &proxy,
        &img,
        "team-a/app:v1",
        Some(&format!("ci-push:{push}")),
    );
    let m = call(
        &proxy.base,
        Some(&proxy.ca),
        "HEAD",
        "/v2/team-a/app/manifests/v1",
    )
    .user("ci-pull", &pull)
    .header("Accept: application/vnd.oci.image.manifest.v1+json")
    .send();
    assert_eq!(m.status, 200, "{}", m.describe());
    assert_eq!(
        m.header("docker-content-digest"),
        Some(img.manifest_digest.as_str())
    );

    // The pull-only token: pushing is refused with 403 DENIED (skopeo fails), pulling works.
    upload_start(&proxy, "team-a/app", "ci-pull", &pull).assert_refusal(
        403,
        "DENIED",
        "a push with a pull-only token",
    );
    let home = tempfile::tempdir().unwrap();
    let denied = std::process::Command::new("skopeo")
        .env("HOME", home.path())
        .env("REGISTRY_AUTH_FILE", home.path().join("auth.json"))
        .args([
            "--insecure-policy",
            "copy",
            "--retry-times",
            "0",
            "--dest-cert-dir",
            proxy.cert_dir.to_str().unwrap(),
            "--dest-creds",
            &format!("ci-pull:{pull}"),
            &img.oci_ref(),
            &format!("docker://{}/team-a/app:v2", proxy.addr),
        ])
        .output()
        .unwrap();
    assert!(
        !denied.status.success(),
        "skopeo pushed with a pull-only token"
    );
    let pulled = dir.path().join("pulled");
    ok(
        &skopeo(&[
            "--insecure-policy",
            "copy",
            "--src-cert-dir",
            proxy.cert_dir.to_str().unwrap(),
            "--src-creds",
            &format!("ci-pull:{pull}"),
            &format!("docker://{}/team-a/app:v1", proxy.addr),
            &format!("oci:{}:v1", pulled.display()),
        ]),
        "skopeo pull with the pull-only token",
    );
    // The push token's scope ends at team-a/**, whatever its owner may do elsewhere.
    get(&proxy, "/v2/public/x/tags/list", "ci-push", &push).assert_refusal(
        403,
        "DENIED",
        "outside the push token's scope",
    );

    // The access log and the audit name the token and its owner; no secret anywhere.
    eventually("access log lines of the token", || {
        proxy
            .logs()
            .lines()
            .any(|l| l.contains("user=ci-push owner=alice token=true"))
    });
    let logs = proxy.logs();
    assert!(
        !logs.contains(&push) && !logs.contains(&pull),
        "a secret was logged"
    );
    let audit_text = std::fs::read_to_string(&audit).unwrap();
    let pushed = audit_text
        .lines()
        .find(|l| l.contains("\"phase\":\"outcome\"") && l.contains("team-a/app"))
        .unwrap_or_else(|| panic!("no outcome record of the push:\n{audit_text}"));
    assert!(
        pushed.contains("\"user\":\"ci-push\",\"owner\":\"alice\",\"token\":true"),
        "{pushed}"
    );
    ok(
        &run_cli(
            &[
                "audit",
                "verify",
                "--key-file",
                key.to_str().unwrap(),
                audit.to_str().unwrap(),
            ],
            dir.path(),
        ),
        "audit verify",
    );
    let shown = ok(
        &run_cli(
            &["audit", "show", "--user", "alice", audit.to_str().unwrap()],
            dir.path(),
        ),
        "audit show --user alice",
    );
    assert!(
        shown.contains("ci-push") && shown.contains("token-of=alice"),
        "{shown}"
    );

    // Last use, flushed within tokens.flush_interval to the file next to the tokens file.
    let config = proxy.config_path.display().to_string();
    eventually("last use in token list", || {
        let (_, out, _) = token(&["list", "--config", &config]);
        out.lines()
            .any(|l| l.starts_with("ci-pull ") && l.contains("127.0.0.1") && l.ends_with("active"))
    });
    let (code, out, err) = token(&["list", "--config", &config]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("sha256") && !out.contains(&push), "{out}");
    use std::os::unix::fs::PermissionsExt;
    for f in [tokens.clone(), at::default_last_used_file(&tokens)] {
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }
}

/// The tokens file with `entries` written by the library (for tokens `create` would
/// not make: already expired).
fn write_tokens(path: &Path, entries: Vec<TokenEntry>) {
    let edit = registry_guard::edit::lock(path).unwrap();
    let mut file = match edit.read_to_string() {
        Ok(t) => at::parse_file(&t).unwrap(),
        Err(_) => TokenFile::default(),
    };
    file.tokens.extend(entries);
    at::save(&edit, &file).unwrap();
}

#[test]
fn expired_revoked_and_disabled_owners_get_401_and_a_token_loses_what_its_owner_loses() {
    let Some(reg) = Registry::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.yaml");
    let ci = create(&tokens, "ci", "alice", "team-a/**", "pull,push");
    let ci2 = create(&tokens, "ci-2", "alice", "team-a/**", "pull");
    create(&tokens, "bob-1", "bob", "team-a/**", "pull");
    create(&tokens, "bob-2", "bob", "team-a/**", "pull");
    let now = registry_guard::auth::unix_now();
    write_tokens(
        &tokens,
        vec![TokenEntry {
            name: "ci-old".into(),
            owner: "alice".into(),
            hash: at::hash_secret("rgt_old-secret"),
            repos: vec!["team-a/**".into()],
            actions: vec!["pull".into()],
            created: at::format_time(now - 2 * 86400),
            expires: Some(at::format_time(now - 86400)),
            description: None,
            revoked: None,
        }],
    );
    let users = vec![
        user("alice", "alice-pw", &["team-a"]),
        user("bob", "bob-pw", &["team-a"]),
    ];
    let users_text = users_yaml(&users);
    let proxy = Proxy::builder(&reg.url)
        .users(users)
        .auth_yaml(&format!("  tokens_file: {}\n", tokens.display()))
        .access_yaml(RULES)
        .start();
    let config = proxy.config_path.display().to_string();

    // Expired: exactly the wrong password's answer.
    let wrong = get(&proxy, "/v2/", "alice", "not-her-password");
    let expired = get(&proxy, "/v2/", "ci-old", "rgt_old-secret");
    wrong.assert_refusal(401, "UNAUTHORIZED", "a wrong password");
    expired.assert_refusal(401, "UNAUTHORIZED", "an expired token");
    assert_eq!(expired.body, wrong.body);
    assert_eq!(
        expired.header("www-authenticate"),
        wrong.header("www-authenticate")
    );
    get(&proxy, "/v2/", "ci", "rgt_wrong").assert_refusal(401, "UNAUTHORIZED", "a wrong secret");

    // The owner loses push (a rule edited, the config reloads): so does the token.
    assert_eq!(upload_start(&proxy, "team-a/app", "ci", &ci).status, 202);
    let cfg = std::fs::read_to_string(&proxy.config_path).unwrap();
    std::fs::write(
        &proxy.config_path,
        cfg.replace("actions: [pull, push, delete]", "actions: [pull]"),
    )
    .unwrap();
    eventually("the token loses push with its owner", || {
        upload_start(&proxy, "team-a/app", "ci", &ci).status == 403
    });
    assert_eq!(
        get(&proxy, "/v2/", "ci", &ci).status,
        200,
        "still a valid login"
    );

    // Revoked with the CLI: refused once the tokens file is reloaded.
    let (code, _, err) = token(&["revoke", "ci", "--config", &config]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("revoked ci"), "{err}");
    eventually("the revoked token is refused", || {
        get(&proxy, "/v2/", "ci", &ci).status == 401
    });
    let (_, out, _) = token(&["list", "--config", &config]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("ci ") && l.contains("revoked 20")),
        "{out}"
    );

    // Every token of bob at once.
    let (code, _, err) = token(&["revoke", "--owner", "bob", "--config", &config]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("bob-1") && err.contains("bob-2"), "{err}");

    // The owner disabled in the user file: the token is refused at the reload.
    assert_eq!(get(&proxy, "/v2/", "ci-2", &ci2).status, 200);
    let disabled = users_text.replacen(
        "    groups: [\"team-a\"]\n",
        "    groups: [\"team-a\"]\n    disabled: true\n",
        1,
    );
    assert!(disabled.contains("disabled: true"));
    std::fs::write(proxy.users_file(), disabled).unwrap();
    eventually("the disabled owner's token is refused", || {
        get(&proxy, "/v2/", "ci-2", &ci2).status == 401
    });
    // bob's own password still works: only alice was disabled.
    assert_eq!(get(&proxy, "/v2/", "bob", "bob-pw").status, 200);
}

/// A config with users alice (team-a) and dave (disabled), rules for team-a, the tokens
/// file and `extra` top-level YAML; returns (config, tokens file, users file).
fn config_files(dir: &Path, extra: &str) -> (PathBuf, PathBuf, PathBuf) {
    let users = dir.join("users.yaml");
    let text = users_yaml(&[
        user("alice", "alice-pw", &["team-a"]),
        user("dave", "dave-pw", &[]),
    ]);
    std::fs::write(&users, format!("{text}    disabled: true\n")).unwrap();
    let tokens = dir.join("tokens.yaml");
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "server:\n  listen: 127.0.0.1:0\n  plaintext: true\nupstream:\n  url: http://127.0.0.1:9\nauth:\n  users_file: users.yaml\n  tokens_file: tokens.yaml\naccess:\n{RULES}{extra}"
        ),
    )
    .unwrap();
    (config, tokens, users)
}

#[test]
fn create_checks_owner_name_and_lifetime_and_errors_name_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let (config, tokens, users) = config_files(dir.path(), "tokens:\n  max_lifetime: 30d\n");
    let c = config.display().to_string();
    let t = tokens.display().to_string();
    let base = |name: &'static str, owner: &'static str, expires: &'static str| {
        vec![
            "create",
            name,
            "--owner",
            owner,
            "--repos",
            "team-a/**",
            "--actions",
            "pull",
            "--expires",
            expires,
        ]
    };
    let with = |mut v: Vec<&'static str>, c: &str| {
        let mut out: Vec<String> = v.drain(..).map(str::to_owned).collect();
        out.extend(["--config".to_owned(), c.to_owned()]);
        out
    };
    let run = |args: Vec<String>| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        token(&a)
    };
    for (args, words) in [
        (
            with(base("ci", "alice", "90d"), &c),
            vec![
                t.as_str(),
                "token \"ci\"",
                "--expires",
                "tokens.max_lifetime (30days)",
            ],
        ),
        (
            with(base("ci", "alice", "never"), &c),
            vec![t.as_str(), "never is refused"],
        ),
        (
            with(base("ci", "nobody", "1d"), &c),
            vec!["--owner", "no user \"nobody\"", users.to_str().unwrap()],
        ),
        (
            with(base("ci", "dave", "1d"), &c),
            vec!["--owner", "disabled"],
        ),
        (
            with(base("alice", "alice", "1d"), &c),
            vec!["token \"alice\"", "name", "is a user"],
        ),
        (
            with(
                vec![
                    "create",
                    "ci",
                    "--owner",
                    "alice",
                    "--repos",
                    "team-a/**",
                    "--actions",
                    "pull,all",
                    "--expires",
                    "1d",
                ],
                &c,
            ),
            vec!["token \"ci\"", "actions", "\"all\""],
        ),
    ] {
        let (code, out, err) = run(args.clone());
        assert_eq!(code, 64, "{args:?}: {err}");
        assert!(out.is_empty(), "no secret printed on a refusal: {out}");
        for w in words {
            assert!(err.contains(w), "{args:?}: {w:?} not in {err}");
        }
    }
    assert!(!tokens.exists(), "nothing written by refused creates");
    let (code, out, err) = run(with(base("ci", "alice", "30d"), &c));
    assert_eq!(code, 0, "{err}");
    let secret = out.trim().to_owned();
    let (code, _, err) = run(with(base("ci", "alice", "1d"), &c));
    assert_eq!(code, 64);
    assert!(err.contains("exists already"), "{err}");
    let stored = std::fs::read_to_string(&tokens).unwrap();
    assert!(!stored.contains(&secret), "the secret is stored");
    assert!(stored.contains(&at::hash_secret(&secret)), "{stored}");

    // `check` loads the tokens file; a name that is also a user's is refused at load,
    // naming both files; so is a broken entry, naming the token and the field.
    let (code, out, err) = {
        let o = run_cli(&["check", "--config", &c], dir.path());
        (o.status.code(), text(&o.stdout), text(&o.stderr))
    };
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("access tokens: 1 from"), "{out}");
    create(&tokens, "alice", "alice", "team-a/**", "pull");
    let o = run_cli(&["check", "--config", &c], dir.path());
    assert_eq!(o.status.code(), Some(64));
    let err = text(&o.stderr);
    assert!(
        err.contains(&format!(
            "{t}: token \"alice\": name: is also a user in {}",
            users.display()
        )),
        "{err}"
    );
    let (code, _, err) = token(&["revoke", "alice", "--tokens-file", &t]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = token(&["revoke", "nope", "--tokens-file", &t]);
    assert_eq!(code, 64);
    assert!(err.contains("no token \"nope\""), "{err}");
    // A revoked name still clashes with the user (a name is one or the other).
    assert_eq!(
        run_cli(&["check", "--config", &c], dir.path())
            .status
            .code(),
        Some(64)
    );
    let text_now = std::fs::read_to_string(&tokens).unwrap();
    let mut file = at::parse_file(&text_now).unwrap();
    file.tokens.retain(|e| e.name != "alice");
    file.tokens[0].actions = vec!["pull".into(), "pul".into()];
    std::fs::write(&tokens, serde_yaml::to_string(&file).unwrap()).unwrap();
    let o = run_cli(&["check", "--config", &c], dir.path());
    assert_eq!(o.status.code(), Some(64));
    let err = text(&o.stderr);
    assert!(
        err.contains(&format!("{t}: token \"ci\": actions: \"pul\"")),
        "{err}"
    );
    // serve refuses it the same way, with exit code 64.
    let (o, exited) = run_cli_for(
        &["serve", "--config", &c],
        dir.path(),
        Duration::from_secs(20),
    );
    assert!(exited, "serve started with a broken tokens file");
    assert_eq!(o.status.code(), Some(64), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("token \"ci\": actions"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn explain_accepts_a_token_name_and_shows_the_intersection() {
    let dir = tempfile::tempdir().unwrap();
    let (config, tokens, _) = config_files(
        dir.path(),
        "    - name: public-read\n      repos: ['public/**']\n      users: ['*']\n      actions: [pull]\n",
    );
    create(&tokens, "ci", "alice", "team-a/**,public/**", "pull,push");
    create(&tokens, "ci-dave", "dave", "team-a/**", "pull");
    let c = config.display().to_string();
    let explain = |user: &str, method: &str, path: &str| {
        let o = run_cli(
            &["explain", "--config", &c, "--user", user, method, path],
            dir.path(),
        );
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
        text(&o.stdout)
    };
    let out = explain("ci", "PUT", "/v2/team-a/app/manifests/v1");
    assert!(
        out.contains("identity: token ci of alice (owner's groups: team-a; scope: pull+push on team-a/**, public/**)"),
        "{out}"
    );
    assert!(
        out.contains("decision: ALLOWED") && out.contains("team-a"),
        "{out}"
    );
    // The scope allows push on public, the owner's rules do not.
    let out = explain("ci", "PUT", "/v2/public/app/manifests/v1");
    assert!(out.contains("decision: 403 DENIED"), "{out}");
    assert!(out.contains("missing push"), "{out}");
    // The owner could delete in team-a; the token's scope cannot.
    let out = explain("ci", "DELETE", "/v2/team-a/app/manifests/v1");
    assert!(
        out.contains("403 DENIED") && out.contains("token's scope allows only pull+push"),
        "{out}"
    );
    let out = explain("ci-dave", "GET", "/v2/team-a/app/tags/list");
    assert!(
        out.contains("401") && out.contains("owner unknown or disabled"),
        "{out}"
    );
    let o = run_cli(
        &["explain", "--config", &c, "--user", "nobody", "GET", "/v2/"],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(64));
    assert!(
        text(&o.stderr).contains("no token \"nobody\""),
        "{}",
        text(&o.stderr)
    );
}

/// The user commands with --config keep the user file and the tokens file in agreement:
/// a removed user's tokens are revoked (a later user of the name does not get them), a
/// user cannot take a token's name (which would stop every reload), and `token delete`
/// frees a name.
#[test]
fn user_commands_revoke_a_removed_users_tokens_and_never_take_a_tokens_name() {
    let dir = tempfile::tempdir().unwrap();
    let (config, tokens, users) = config_files(dir.path(), "");
    let c = config.display().to_string();
    let t = tokens.display().to_string();
    let user_cmd = |args: &[&str]| {
        let mut all = vec!["user"];
        all.extend_from_slice(args);
        if args[0] == "add" {
            all.extend_from_slice(&["--m-cost", "1024", "--t-cost", "1"]);
        }
        all.extend_from_slice(&["--config", &c]);
        let o = cli_stdin(&all, "pw-of-someone\n");
        (o.status.code().unwrap_or(-1), text(&o.stderr))
    };
    let _ = create(&tokens, "t-alice", "alice", "team-a/**", "pull");
    let _ = create(&tokens, "t-carol", "carol", "team-a/**", "pull");

    // A name of a token, revoked or not, is refused, and nothing is written.
    let before = std::fs::read_to_string(&users).unwrap();
    let (code, err) = user_cmd(&["add", "t-alice"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("t-alice") && err.contains("token delete"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&users).unwrap(), before);

    // carol has a live token from before (made with --tokens-file): a new carol would
    // own it, so adding her is refused until it is revoked.
    let (code, err) = user_cmd(&["add", "carol"]);
    assert_ne!(code, 0);
    assert!(err.contains("t-carol") && err.contains("revoke"), "{err}");
    let (code, _, err) = token(&["revoke", "--owner", "carol", "--tokens-file", &t]);
    assert_eq!(code, 0, "{err}");
    let (code, err) = user_cmd(&["add", "carol"]);
    assert_eq!(code, 0, "{err}");

    // Removing alice revokes t-alice; adding an alice again does not bring it back.
    let (code, err) = user_cmd(&["del", "alice"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("revoked the tokens of \"alice\""), "{err}");
    let file = at::parse_file(&std::fs::read_to_string(&tokens).unwrap()).unwrap();
    let t_alice = file.tokens.iter().find(|e| e.name == "t-alice").unwrap();
    assert!(t_alice.revoked.is_some(), "{t_alice:?}");
    let (code, err) = user_cmd(&["add", "alice", "--groups", "team-a"]);
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = token(&["list", "--config", &c]);
    let line = out.lines().find(|l| l.starts_with("t-alice ")).unwrap();
    assert!(line.contains("revoked"), "{line}");

    // `token delete` frees the name: then a user may take it.
    let (code, _, err) = token(&["delete", "t-alice", "--tokens-file", &t]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = token(&["delete", "t-alice", "--tokens-file", &t]);
    assert_ne!(code, 0);
    assert!(err.contains("no token \"t-alice\""), "{err}");
    let (code, err) = user_cmd(&["add", "t-alice"]);
    assert_eq!(code, 0, "{err}");
    let o = run_cli(&["check", "--config", &c], dir.path());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
}
