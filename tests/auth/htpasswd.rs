//! Coming from htpasswd: files made by Debian's `htpasswd -B` (apache2-utils) imported
//! with `registry-guard user import-htpasswd`, their users logging in through the proxy
//! in front of Debian's docker-registry with skopeo and curl, and their hashes upgraded to
//! argon2id afterwards (or left bcrypt with `auth.upgrade_hashes: false`).

use super::*;
use common::e2e::*;
use registry_guard::auth::users::{verify_password, Users};
use std::process::{Command, Output};

/// `htpasswd ARGS` (Debian's apache2-utils), bounded.
fn htpasswd(args: &[&str]) -> Output {
    let out = run(Command::new("htpasswd").args(args), Duration::from_secs(60));
    assert!(
        out.status.success(),
        "htpasswd {args:?}: {}",
        text(&out.stderr)
    );
    out
}

/// `registry-guard user ARGS`.
fn user_cmd(args: &[&str]) -> Output {
    let mut all = vec!["user"];
    all.extend_from_slice(args);
    cli_stdin(&all, "")
}

/// Each user's hash kind in the user file: "bcrypt" or "argon2".
fn kinds(path: &Path) -> Vec<(String, &'static str)> {
    let users = Users::load(path).unwrap();
    let mut v: Vec<_> = users
        .names()
        .map(|n| {
            let kind = if users.get(n).unwrap().kind.is_bcrypt() {
                "bcrypt"
            } else {
                "argon2"
            };
            (n.to_owned(), kind)
        })
        .collect();
    v.sort();
    v
}

fn file_mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn import_htpasswd_adds_bcrypt_users_and_leaves_others_untouched() {
    if !have("htpasswd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.yaml");
    let u = users.to_str().unwrap();
    let ht = dir.path().join("htpasswd");
    let h = ht.to_str().unwrap();
    // An argon2 user already there.
    let out = cli_stdin(
        &[
            "user",
            "add",
            "root",
            "--groups",
            "admins",
            "--m-cost",
            "1024",
            "--t-cost",
            "1",
            "--users-file",
            u,
        ],
        "root-pw\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let root_hash = Users::load(&users)
        .unwrap()
        .get("root")
        .unwrap()
        .hash
        .clone();
    htpasswd(&["-c", "-b", "-B", h, "alice", "alice-pw"]);
    htpasswd(&["-b", "-B", "-C", "4", h, "bob", "bob:pw"]);

    let out = user_cmd(&[
        "import-htpasswd",
        h,
        "--groups",
        "team-a",
        "--users-file",
        u,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("imported 2 user(s)"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(file_mode(&users), 0o600);
    let loaded = Users::load(&users).unwrap();
    assert_eq!(
        loaded.get("root").unwrap().hash,
        root_hash,
        "root untouched"
    );
    assert_eq!(loaded.get("root").unwrap().groups, ["admins"]);
    assert_eq!(loaded.get("alice").unwrap().groups, ["team-a"]);
    assert!(verify_password(
        &loaded.get("alice").unwrap().hash,
        "alice-pw"
    ));
    assert!(verify_password(&loaded.get("bob").unwrap().hash, "bob:pw"));
    assert_eq!(
        kinds(&users),
        [
            ("alice".into(), "bcrypt"),
            ("bob".into(), "bcrypt"),
            ("root".into(), "argon2")
        ]
    );
    // The user file, its lock file and the htpasswd file: no temporary file.
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        3,
        "a temporary file was left behind"
    );

    // Again: the names exist, nothing changes without --replace.
    let before = std::fs::read(&users).unwrap();
    htpasswd(&["-b", "-B", h, "alice", "alice-new"]);
    let out = user_cmd(&["import-htpasswd", h, "--users-file", u]);
    assert_eq!(out.status.code(), Some(64));
    let e = text(&out.stderr);
    assert!(
        e.contains("nothing imported") && e.contains("alice, bob") && e.contains("--replace"),
        "{e}"
    );
    assert_eq!(std::fs::read(&users).unwrap(), before);
    // --replace: the hashes from the file, the groups kept.
    let out = user_cmd(&["import-htpasswd", h, "--replace", "--users-file", u]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let loaded = Users::load(&users).unwrap();
    assert!(verify_password(
        &loaded.get("alice").unwrap().hash,
        "alice-new"
    ));
    assert_eq!(loaded.get("alice").unwrap().groups, ["team-a"]);

    // One MD5 line (`htpasswd -m`) and one SHA-1 line: the whole import is refused,
    // each line named, nothing written.
    htpasswd(&["-b", "-m", h, "carol", "carol-pw"]);
    htpasswd(&["-b", "-s", h, "dave", "dave-pw"]);
    let before = std::fs::read(&users).unwrap();
    let out = user_cmd(&["import-htpasswd", h, "--replace", "--users-file", u]);
    assert_eq!(out.status.code(), Some(64));
    let e = text(&out.stderr);
    assert!(
        e.contains(h)
            && e.contains("nothing imported: 2 line(s) refused")
            && e.contains("line 3: user \"carol\": hash is Apache MD5")
            && e.contains("line 4: user \"dave\": hash is unsalted SHA-1"),
        "{e}"
    );
    assert_eq!(std::fs::read(&users).unwrap(), before);

    // Through --config, into a new file.
    let fresh = dir.path().join("fresh.yaml");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "server:\n  listen: 127.0.0.1:0\n  plaintext: true\nupstream:\n  url: http://127.0.0.1:5000\nauth:\n  users_file: {}\naccess:\n  rules: []\n",
            fresh.display()
        ),
    )
    .unwrap();
    let only_bcrypt = dir.path().join("bcrypt-only");
    htpasswd(&[
        "-c",
        "-b",
        "-B",
        only_bcrypt.to_str().unwrap(),
        "erin",
        "erin-pw",
    ]);
    let out = user_cmd(&[
        "import-htpasswd",
        only_bcrypt.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(kinds(&fresh), [("erin".into(), "bcrypt")]);
    assert_eq!(file_mode(&fresh), 0o600);
}

/// A user file holding a refused htpasswd hash does not load, and says how to reset it;
/// that reset works although the file does not load.
#[test]
fn a_refused_htpasswd_hash_is_named_and_user_passwd_resets_it() {
    if !have("htpasswd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.yaml");
    let u = users.to_str().unwrap();
    let md5 = text(&htpasswd(&["-n", "-b", "-m", "carol", "carol-pw"]).stdout);
    let md5 = md5.trim().strip_prefix("carol:").unwrap().to_owned();
    std::fs::write(
        &users,
        format!("users:\n  - name: carol\n    hash: '{md5}'\n"),
    )
    .unwrap();
    let e = Users::load(&users).unwrap_err().to_string();
    assert!(
        e.contains(u)
            && e.contains("user \"carol\"")
            && e.contains("$apr1$")
            && e.contains("registry-guard user passwd carol"),
        "{e}"
    );
    let out = cli_stdin(
        &[
            "user",
            "passwd",
            "carol",
            "--m-cost",
            "1024",
            "--t-cost",
            "1",
            "--users-file",
            u,
        ],
        "carol-new\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(verify_password(
        &Users::load(&users).unwrap().get("carol").unwrap().hash,
        "carol-new"
    ));
}

/// Waits (bounded) until the proxy logged `what` `n` times.
fn wait_logged(proxy: &Proxy, what: &str, n: usize) {
    let seen = wait_for(Duration::from_secs(30), || {
        (proxy.logs().matches(what).count() >= n).then_some(())
    });
    assert!(
        seen.is_some(),
        "no {n}× {what:?} in the log:\n{}",
        proxy.logs()
    );
}

/// curl `/v2/` through the proxy as `user:password`; the status.
fn v2_status(proxy: &Proxy, creds: &str) -> String {
    let out = proxy.curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-u",
        creds,
        &format!("{}/v2/", proxy.base),
    ]);
    text(&out.stdout)
}

#[test]
fn htpasswd_users_log_in_through_the_proxy_and_end_up_argon2() {
    let Some(registry) = Registry::start() else {
        return;
    };
    if !have("skopeo") || !have("curl") || !have("htpasswd") {
        return;
    }
    const ALICE: &str = "alice:Htpasswd-pw";
    const BOB: &str = "bob:pw:with colon";
    let work = tempfile::tempdir().unwrap();
    let ht = work.path().join("htpasswd");
    let h = ht.to_str().unwrap();
    htpasswd(&["-c", "-b", "-B", h, "alice", "Htpasswd-pw"]);
    htpasswd(&["-b", "-B", h, "bob", "pw:with colon"]);

    // The running proxy's user file holds one argon2 user; the import goes into it
    // through --config and is picked up by the reload.
    let mut proxy = Proxy::builder(&registry.url)
        .users(vec![user("root", "root-pw", &[])])
        .start();
    let users = proxy.users_file();
    let mode = file_mode(&users);
    let out = user_cmd(&[
        "import-htpasswd",
        h,
        "--config",
        proxy.config_path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        kinds(&users),
        [
            ("alice".into(), "bcrypt"),
            ("bob".into(), "bcrypt"),
            ("root".into(), "argon2")
        ]
    );
    wait_logged(&proxy, "configuration reloaded", 1);

    // skopeo pushes as alice, curl logs in as bob; a wrong password is still refused.
    let img = mkimage(&work.path().join("img"), 1, "v1", 7);
    push_through(&proxy, &img, "alice/app:v1", Some(ALICE));
    assert_eq!(v2_status(&proxy, BOB), "200");
    assert_eq!(v2_status(&proxy, "bob:wrong"), "401");

    // Both upgraded in the background, then reloaded; root untouched.
    wait_logged(&proxy, "bcrypt hash upgraded to argon2id", 2);
    assert_eq!(
        kinds(&users),
        [
            ("alice".into(), "argon2"),
            ("bob".into(), "argon2"),
            ("root".into(), "argon2")
        ]
    );
    // The mode the file had (the harness's), kept by the import and the upgrades.
    assert_eq!(file_mode(&users), mode);
    let upgraded = Users::load(&users).unwrap();
    assert!(verify_password(
        &upgraded.get("bob").unwrap().hash,
        "pw:with colon"
    ));
    wait_logged(&proxy, "configuration reloaded", 2);
    // The same passwords work against the argon2 hashes.
    push_through(&proxy, &img, "alice/app:v2", Some(ALICE));
    assert_eq!(v2_status(&proxy, BOB), "200");
    let logs = proxy.logs();
    for secret in ["Htpasswd-pw", "pw:with colon"] {
        assert!(!logs.contains(secret), "a password was logged:\n{logs}");
    }
    proxy.terminate(Duration::from_secs(10));

    // auth.upgrade_hashes: false: logins work, the hashes stay bcrypt.
    let fresh = work.path().join("imported.yaml");
    let out = user_cmd(&[
        "import-htpasswd",
        h,
        "--users-file",
        fresh.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let yaml = std::fs::read_to_string(&fresh).unwrap();
    let proxy = Proxy::builder(&registry.url)
        .users_file_yaml(&yaml)
        .auth_yaml("  upgrade_hashes: false\n")
        .start();
    push_through(&proxy, &img, "alice/app:v3", Some(ALICE));
    assert_eq!(v2_status(&proxy, BOB), "200");
    // Longer than the upgrade and a reload poll take when on (a bound, not a timing).
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(std::fs::read_to_string(proxy.users_file()).unwrap(), yaml);
    assert_eq!(
        kinds(&proxy.users_file()),
        [("alice".into(), "bcrypt"), ("bob".into(), "bcrypt")]
    );
    assert!(!proxy.logs().contains("upgraded"), "{}", proxy.logs());
}
