//! Access rules end to end: Debian's docker-registry (distribution 2.8) behind
//! registry-guard, driven by skopeo and curl. Pushes, pulls, deletes and mounts follow the
//! rules; the catalog lists what a user may pull; protected tags hold against overwrite
//! and delete (by tag and by digest) except for the exempt group; anonymous pulls work
//! only where a rule allows them. What is stored is checked on the registry directly.

use super::*;
use common::e2e::{mkimage, Image};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

const SKOPEO_LIMIT: Duration = Duration::from_secs(120);
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

const ACCESS: &str = "  admins:
    groups: [registry-admins]
  rules:
    - name: own
      repos: ['${user}/**']
      users: ['*']
      actions: [pull, push, delete]
    - name: public-read
      repos: ['public/**']
      users: ['*']
      anonymous: true
      actions: [pull]
    - name: publishers
      repos: ['public/**']
      groups: [publishers]
      actions: [pull, push]
    - name: release-managers
      repos: ['alice/**']
      groups: [release]
      actions: [pull, push, delete]
  protected_tags:
    - repos: ['**']
      tags: [latest, 'v*']
      except:
        groups: [release]
";

struct Env {
    reg: Registry,
    proxy: Proxy,
    /// HOME for skopeo (its blob-info cache would otherwise be shared between tests).
    home: tempfile::TempDir,
    layout: PathBuf,
}

/// Writes images with `tests/e2e/mkimage.py` (1 MiB layers, one seed each).
fn make_images(dir: &Path, specs: &[(&str, u32)]) -> Vec<Image> {
    specs
        .iter()
        .map(|(tag, seed)| mkimage(dir, 1, tag, *seed))
        .collect()
}

impl Env {
    /// None when docker-registry or skopeo is missing (and not required).
    fn start() -> Option<Env> {
        if !have("skopeo") || !have("python3") {
            return None;
        }
        let reg = Registry::start()?;
        let proxy = Proxy::builder(&reg.url)
            .users(vec![
                user("alice", "pw-alice", &[]),
                user("bob", "pw-bob", &[]),
                user("carol", "pw-carol", &["publishers"]),
                user("rel", "pw-rel", &["release"]),
                user("root", "pw-root", &["registry-admins"]),
            ])
            .auth_yaml("  anonymous: true\n")
            .access_yaml(ACCESS)
            .start();
        let home = tempfile::tempdir().unwrap();
        let layout = home.path().join("layout");
        Some(Env {
            reg,
            proxy,
            home,
            layout,
        })
    }

    fn password(user: &str) -> String {
        format!("pw-{user}")
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.proxy.addr.port())
    }

    fn skopeo(&self, args: &[&str]) -> Output {
        let (out, exited) = run_bounded(
            Command::new("skopeo")
                .env("HOME", self.home.path())
                .env("XDG_RUNTIME_DIR", self.home.path())
                .arg("--insecure-policy")
                .args(args),
            SKOPEO_LIMIT,
        );
        assert!(exited, "skopeo {args:?} did not finish in {SKOPEO_LIMIT:?}");
        out
    }

    /// skopeo copy of `img` from the layout to `repo:tag` through the proxy, as `user`.
    fn push(&self, user: &str, img: &Image, repo_tag: &str) -> Output {
        let creds = format!("{user}:{}", Env::password(user));
        self.skopeo(&[
            "copy",
            "--preserve-digests",
            "--dest-cert-dir",
            self.proxy.cert_dir.to_str().unwrap(),
            "--dest-creds",
            &creds,
            &format!("oci:{}:{}", self.layout.display(), img.tag),
            &format!("docker://{}/{repo_tag}", self.host()),
        ])
    }

    fn push_ok(&self, user: &str, img: &Image, repo_tag: &str) {
        let out = self.push(user, img, repo_tag);
        assert!(
            out.status.success(),
            "{user} pushing {repo_tag}: {}",
            text(&out.stderr)
        );
    }

    /// A push that the proxy refuses: skopeo fails saying denied.
    fn push_denied(&self, user: &str, img: &Image, repo_tag: &str) -> String {
        let out = self.push(user, img, repo_tag);
        let err = text(&out.stderr);
        assert!(
            !out.status.success(),
            "{user} pushing {repo_tag} succeeded: {}",
            text(&out.stdout)
        );
        // A refused PUT or POST carries the registry error (`denied: ...`); a refused
        // HEAD has no body, and skopeo reports its status.
        assert!(
            err.contains("denied: ") || err.contains("403 (Forbidden)"),
            "{user} pushing {repo_tag}: {err}"
        );
        err
    }

    /// skopeo copy of `repo:tag` through the proxy into a fresh layout; returns it.
    fn pull(&self, user: &str, repo_tag: &str) -> (Output, PathBuf) {
        static PULLS: AtomicUsize = AtomicUsize::new(0);
        let out_dir = self
            .home
            .path()
            .join(format!("pulled-{}", PULLS.fetch_add(1, Ordering::SeqCst)));
        let creds = format!("{user}:{}", Env::password(user));
        let out = self.skopeo(&[
            "copy",
            "--preserve-digests",
            "--src-cert-dir",
            self.proxy.cert_dir.to_str().unwrap(),
            "--src-creds",
            &creds,
            &format!("docker://{}/{repo_tag}", self.host()),
            &format!("oci:{}:x", out_dir.display()),
        ]);
        (out, out_dir)
    }

    /// curl through the proxy, as `user` (None: anonymous).
    fn call(&self, user: Option<&str>, method: &str, path: &str) -> Resp {
        let pw = user.map(Env::password);
        let auth = user.zip(pw.as_deref());
        let c = call(&self.proxy.base, Some(&self.proxy.ca), method, path)
            .auth(auth)
            .header(&format!("Accept: {OCI_MANIFEST}"));
        if method == "POST" {
            c.header("Content-Length: 0").send()
        } else {
            c.send()
        }
    }

    /// HEAD on the registry directly (no proxy, no rules).
    fn registry_head(&self, path: &str) -> Resp {
        call(&self.reg.url, None, "HEAD", path)
            .header(&format!("Accept: {OCI_MANIFEST}"))
            .send()
    }

    /// The digest a tag has on the registry, None when it does not exist.
    fn registry_tag(&self, repo: &str, tag: &str) -> Option<String> {
        let r = self.registry_head(&format!("/v2/{repo}/manifests/{tag}"));
        match r.status {
            200 => Some(r.header("docker-content-digest").unwrap().to_owned()),
            404 => None,
            s => panic!("registry HEAD {repo}:{tag}: {s}"),
        }
    }

    fn registry_has_blob(&self, repo: &str, digest: &str) -> bool {
        let r = self.registry_head(&format!("/v2/{repo}/blobs/{digest}"));
        assert!(matches!(r.status, 200 | 404), "{}", r.describe());
        r.status == 200
    }

    fn catalog(&self, user: &str) -> Vec<String> {
        let r = self.call(Some(user), "GET", "/v2/_catalog");
        assert_eq!(r.status, 200, "{user}: {}", r.describe());
        serde_json::from_value(r.json()["repositories"].clone()).unwrap()
    }
}

#[test]
fn e2e_push_pull_delete_mount_and_catalog_follow_the_rules() {
    let Some(env) = Env::start() else { return };
    let imgs = make_images(&env.layout, &[("a", 11), ("b", 21), ("p", 31)]);
    let (a, b, p) = (&imgs[0], &imgs[1], &imgs[2]);

    // Seeding: carol publishes public/base, bob pushes his own repository.
    env.push_ok("carol", p, "public/base:1");
    env.push_ok("bob", b, "bob/app:1");
    assert_eq!(
        env.registry_tag("public/base", "1").as_deref(),
        Some(p.manifest_digest.as_str())
    );

    // alice pushes to her namespace, not to bob's.
    env.push_ok("alice", a, "alice/app:1");
    assert_eq!(
        env.registry_tag("alice/app", "1").as_deref(),
        Some(a.manifest_digest.as_str())
    );
    env.push_denied("alice", a, "bob/app:evil");
    assert_eq!(env.registry_tag("bob/app", "evil"), None);
    assert!(
        !env.registry_has_blob("bob/app", &a.layer_digest),
        "alice's layer reached bob/app"
    );
    let r = env.call(Some("alice"), "POST", "/v2/bob/app/blobs/uploads/");
    r.assert_refusal(403, "DENIED", "alice starts an upload in bob/app");
    // carol may push to public/**, alice may not.
    env.push_denied("alice", a, "public/base:2");
    assert_eq!(env.registry_tag("public/base", "2"), None);

    // alice pulls public/base, not bob/app.
    let (out, pulled) = env.pull("alice", "public/base:1");
    assert!(
        out.status.success(),
        "alice pulling public/base: {}",
        text(&out.stderr)
    );
    let hex = p.layer_digest.strip_prefix("sha256:").unwrap();
    assert!(
        pulled.join("blobs/sha256").join(hex).exists(),
        "the layer was not pulled"
    );
    let (out, _) = env.pull("alice", "bob/app:1");
    assert!(!out.status.success(), "alice pulled bob/app");
    assert!(
        text(&out.stderr).to_ascii_lowercase().contains("denied"),
        "{}",
        text(&out.stderr)
    );
    // The same refusal whether the repository exists or not.
    let real = env.call(Some("alice"), "GET", "/v2/bob/app/tags/list");
    let ghost = env.call(Some("alice"), "GET", "/v2/bob/ghost/tags/list");
    real.assert_refusal(403, "DENIED", "bob/app");
    ghost.assert_refusal(403, "DENIED", "bob/ghost");
    assert_eq!(real.body, ghost.body);
    let real = env.call(
        Some("alice"),
        "GET",
        &format!("/v2/bob/app/manifests/{}", b.manifest_digest),
    );
    let ghost = env.call(
        Some("alice"),
        "GET",
        &format!("/v2/bob/ghost/manifests/{}", b.manifest_digest),
    );
    assert_eq!((real.status, &real.body), (ghost.status, &ghost.body));

    // No delete without delete: alice has only pull on public/base.
    for path in [
        format!("/v2/public/base/manifests/{}", p.manifest_digest),
        format!("/v2/public/base/blobs/{}", p.layer_digest),
    ] {
        let r = env.call(Some("alice"), "DELETE", &path);
        r.assert_refusal(403, "DENIED", &path);
    }
    assert_eq!(
        env.registry_tag("public/base", "1").as_deref(),
        Some(p.manifest_digest.as_str())
    );
    assert!(env.registry_has_blob("public/base", &p.layer_digest));

    // Mounting bob's layer into alice/app: a plain upload start, never bob's bytes.
    let r = env.call(
        Some("alice"),
        "POST",
        &format!(
            "/v2/alice/app/blobs/uploads/?mount={}&from=bob/app",
            b.layer_digest
        ),
    );
    assert_eq!(r.status, 202, "{}", r.describe());
    let location = r.header("location").unwrap().to_owned();
    assert!(
        location.contains("/v2/alice/app/blobs/uploads/"),
        "not an upload session of alice/app: {location}"
    );
    assert!(r.header("docker-upload-uuid").is_some(), "{}", r.describe());
    assert!(
        !env.registry_has_blob("alice/app", &b.layer_digest),
        "bob's layer was mounted into alice/app"
    );
    // Her pull on `from` makes the mount happen.
    let r = env.call(
        Some("alice"),
        "POST",
        &format!(
            "/v2/alice/app/blobs/uploads/?mount={}&from=public/base",
            p.layer_digest
        ),
    );
    assert_eq!(r.status, 201, "{}", r.describe());
    assert!(
        r.header("location")
            .unwrap()
            .ends_with(&format!("/v2/alice/app/blobs/{}", p.layer_digest)),
        "{}",
        r.describe()
    );
    assert_eq!(
        r.header("docker-content-digest"),
        Some(p.layer_digest.as_str())
    );
    assert!(env.registry_has_blob("alice/app", &p.layer_digest));

    // Catalogs: what each may pull; the admin sees everything.
    assert_eq!(env.catalog("alice"), ["alice/app", "public/base"]);
    assert_eq!(env.catalog("bob"), ["bob/app", "public/base"]);
    assert_eq!(env.catalog("rel"), ["alice/app", "public/base"]);
    assert_eq!(env.catalog("root"), ["alice/app", "bob/app", "public/base"]);

    // With delete, alice deletes an unprotected tag's manifest in her repository.
    let r = env.call(
        Some("alice"),
        "DELETE",
        &format!("/v2/alice/app/manifests/{}", a.manifest_digest),
    );
    assert_eq!(r.status, 202, "{}", r.describe());
    assert_eq!(env.registry_tag("alice/app", "1"), None);
}

#[test]
fn e2e_protected_tags_hold_against_overwrite_and_delete_except_for_the_release_group() {
    let Some(env) = Env::start() else { return };
    let imgs = make_images(&env.layout, &[("a", 11), ("a2", 12), ("a3", 13)]);
    let (a, a2, a3) = (&imgs[0], &imgs[1], &imgs[2]);

    // New protected tags can be pushed; unprotected ones too.
    env.push_ok("alice", a, "alice/app:latest");
    env.push_ok("alice", a, "alice/app:v1");
    env.push_ok("alice", a3, "alice/app:dev");
    assert_eq!(
        env.registry_tag("alice/app", "latest").as_deref(),
        Some(a.manifest_digest.as_str())
    );

    // An existing protected tag cannot be overwritten.
    let err = env.push_denied("alice", a2, "alice/app:latest");
    assert!(err.contains("protected"), "{err}");
    assert_eq!(
        env.registry_tag("alice/app", "latest").as_deref(),
        Some(a.manifest_digest.as_str())
    );
    // An unprotected tag can be moved.
    env.push_ok("alice", a2, "alice/app:dev");
    assert_eq!(
        env.registry_tag("alice/app", "dev").as_deref(),
        Some(a2.manifest_digest.as_str())
    );
    env.push_ok("alice", a3, "alice/app:dev");

    // Nor deleted by tag, nor through its digest.
    let r = env.call(Some("alice"), "DELETE", "/v2/alice/app/manifests/latest");
    r.assert_refusal(403, "DENIED", "delete latest by tag");
    assert!(r.text().contains("protected"), "{}", r.describe());
    let r = env.call(
        Some("alice"),
        "DELETE",
        &format!("/v2/alice/app/manifests/{}", a.manifest_digest),
    );
    r.assert_refusal(403, "DENIED", "delete the digest latest points at");
    assert!(
        r.text().contains("latest") || r.text().contains("v1"),
        "{}",
        r.describe()
    );
    assert_eq!(
        env.registry_tag("alice/app", "latest").as_deref(),
        Some(a.manifest_digest.as_str())
    );
    assert_eq!(
        env.registry_tag("alice/app", "v1").as_deref(),
        Some(a.manifest_digest.as_str())
    );
    // The digest of an unprotected tag is deleted.
    let r = env.call(
        Some("alice"),
        "DELETE",
        &format!("/v2/alice/app/manifests/{}", a3.manifest_digest),
    );
    assert_eq!(r.status, 202, "{}", r.describe());
    assert_eq!(env.registry_tag("alice/app", "dev"), None);

    // rel (group release, exempt) overwrites latest and deletes it through its digest.
    env.push_ok("rel", a2, "alice/app:latest");
    assert_eq!(
        env.registry_tag("alice/app", "latest").as_deref(),
        Some(a2.manifest_digest.as_str())
    );
    let r = env.call(
        Some("rel"),
        "DELETE",
        &format!("/v2/alice/app/manifests/{}", a2.manifest_digest),
    );
    assert_eq!(r.status, 202, "{}", r.describe());
    assert_eq!(env.registry_tag("alice/app", "latest"), None);
    // A delete by tag is forwarded for rel: distribution 2.8 itself refuses it (400).
    let r = env.call(Some("rel"), "DELETE", "/v2/alice/app/manifests/v1");
    assert_eq!(r.status, 400, "{}", r.describe());
    assert_eq!(r.error_code(), "DIGEST_INVALID", "{}", r.describe());
    // And deletes v1's digest, which alice could not.
    let r = env.call(
        Some("rel"),
        "DELETE",
        &format!("/v2/alice/app/manifests/{}", a.manifest_digest),
    );
    assert_eq!(r.status, 202, "{}", r.describe());
    assert_eq!(env.registry_tag("alice/app", "v1"), None);
    // alice may still push a new latest now that none exists.
    env.push_ok("alice", a3, "alice/app:latest");
    assert_eq!(
        env.registry_tag("alice/app", "latest").as_deref(),
        Some(a3.manifest_digest.as_str())
    );

    // Nor broken by deleting what it references: its layer and config are refused.
    let manifest: serde_json::Value = serde_json::from_slice(&a3.manifest()).unwrap();
    let config = manifest["config"]["digest"].as_str().unwrap().to_owned();
    for blob in [&a3.layer_digest, &config] {
        let r = env.call(
            Some("alice"),
            "DELETE",
            &format!("/v2/alice/app/blobs/{blob}"),
        );
        r.assert_refusal(403, "DENIED", "delete a blob latest needs");
        assert!(env.registry_has_blob("alice/app", blob), "{blob} deleted");
    }

    // The same when the manifest spells its keys as Go's JSON decoder also accepts them
    // ("Digest": matched without regard to case): stored by the registry, read by skopeo.
    for blob in [&a3.layer_digest, &config] {
        let r = env.call(
            Some("alice"),
            "POST",
            &format!("/v2/alice/crafted/blobs/uploads/?mount={blob}&from=alice/app"),
        );
        assert_eq!(r.status, 201, "mount {blob}: {}", r.describe());
    }
    let crafted = String::from_utf8(a3.manifest())
        .unwrap()
        .replace("\"digest\"", "\"Digest\"");
    assert!(crafted.contains("\"Digest\""));
    let r = call(
        &env.proxy.base,
        Some(&env.proxy.ca),
        "PUT",
        "/v2/alice/crafted/manifests/latest",
    )
    .user("alice", &Env::password("alice"))
    .header(&format!("Content-Type: {OCI_MANIFEST}"))
    .body(&crafted)
    .send();
    assert_eq!(r.status, 201, "{}", r.describe());
    for blob in [&a3.layer_digest, &config] {
        let r = env.call(
            Some("alice"),
            "DELETE",
            &format!("/v2/alice/crafted/blobs/{blob}"),
        );
        r.assert_refusal(403, "DENIED", "delete a blob a crafted latest needs");
        assert!(
            env.registry_has_blob("alice/crafted", blob),
            "{blob} deleted"
        );
    }
}

#[test]
fn e2e_anonymous_pulls_work_only_where_a_rule_allows_them() {
    let Some(env) = Env::start() else { return };
    let imgs = make_images(&env.layout, &[("a", 11), ("p", 31)]);
    let (a, p) = (&imgs[0], &imgs[1]);
    env.push_ok("carol", p, "public/base:1");
    env.push_ok("alice", a, "alice/app:1");

    let r = env.call(None, "GET", "/v2/public/base/tags/list");
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(
        r.json(),
        serde_json::json!({"name": "public/base", "tags": ["1"]})
    );
    let r = env.call(None, "GET", "/v2/public/base/manifests/1");
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(
        r.header("docker-content-digest"),
        Some(p.manifest_digest.as_str())
    );
    let r = env.call(
        None,
        "HEAD",
        &format!("/v2/public/base/blobs/{}", p.layer_digest),
    );
    assert_eq!(r.status, 200, "{}", r.describe());

    for (method, path) in [
        ("GET", "/v2/alice/app/tags/list".to_owned()),
        ("GET", "/v2/alice/app/manifests/1".to_owned()),
        ("GET", "/v2/alice/ghost/tags/list".to_owned()),
        ("GET", "/v2/".to_owned()),
        ("HEAD", "/v2/".to_owned()),
        ("GET", "/v2/_catalog".to_owned()),
        ("POST", "/v2/public/base/blobs/uploads/".to_owned()),
        (
            "DELETE",
            format!("/v2/public/base/manifests/{}", p.manifest_digest),
        ),
    ] {
        let r = env.call(None, method, &path);
        r.assert_refusal(401, "UNAUTHORIZED", &format!("anonymous {method} {path}"));
    }
    assert_eq!(
        env.registry_tag("public/base", "1").as_deref(),
        Some(p.manifest_digest.as_str())
    );
    // With credentials the same user gets in.
    let r = env.call(Some("alice"), "GET", "/v2/alice/app/tags/list");
    assert_eq!(r.status, 200, "{}", r.describe());
}

#[test]
fn e2e_a_mount_smuggled_in_a_form_body_is_refused_however_its_type_is_spelled() {
    let Some(env) = Env::start() else { return };
    let imgs = make_images(&env.layout, &[("b", 21)]);
    let b = &imgs[0];
    env.push_ok("bob", b, "bob/app:1");
    let body = format!("mount={}&from=bob/app", b.layer_digest);

    // The registry itself reads `mount`/`from` from such a body (Go trims Unicode white
    // space around the media type): straight to it, the mount happens.
    let r = call(
        &env.reg.url,
        None,
        "POST",
        "/v2/carol/direct/blobs/uploads/",
    )
    .header("Content-Type: \u{a0}application/x-www-form-urlencoded")
    .body(&body)
    .send();
    assert_eq!(r.status, 201, "{}", r.describe());
    assert!(env.registry_has_blob("carol/direct", &b.layer_digest));
    // ... and with a Turkish dotted capital I, which Go lowercases to `i`, with `mount` in
    // the query and only `from` in the body (the outside review's request).
    let r = call(
        &env.reg.url,
        None,
        "POST",
        &format!("/v2/carol/dotted/blobs/uploads/?mount={}", b.layer_digest),
    )
    .header("Content-Type: appl\u{130}cation/x-www-form-urlencoded")
    .body("from=bob/app")
    .send();
    assert_eq!(r.status, 201, "{}", r.describe());
    assert!(env.registry_has_blob("carol/dotted", &b.layer_digest));

    // Through the proxy: refused, over HTTP/2 and HTTP/1.1, and nothing is mounted,
    // whether the body holds both parameters or only `from`; any other body or odd type
    // on an upload start is refused as well.
    let auth = basic("alice", "pw-alice");
    let only_mount = format!("/v2/alice/app/blobs/uploads/?mount={}", b.layer_digest);
    for ct in DISGUISED_FORM_TYPES
        .iter()
        .chain(ODD_UPLOAD_START_TYPES)
        .copied()
        .chain([
            &b"application/x-www-form-urlencoded"[..],
            b"application/octet-stream",
            b"application/json",
        ])
    {
        let what = String::from_utf8_lossy(ct).into_owned();
        for (path, body) in [
            ("/v2/alice/app/blobs/uploads/", body.as_str()),
            (only_mount.as_str(), "from=bob/app"),
        ] {
            let (status, resp) = h2_request(
                env.proxy.addr,
                &env.proxy.ca,
                "POST",
                path,
                &[("authorization", auth.as_bytes()), ("content-type", ct)],
                body,
            );
            assert_eq!(status, 400, "h2 {what:?} {path}: {resp}");
            assert!(
                !env.registry_has_blob("alice/app", &b.layer_digest),
                "h2 {what:?}: bob's layer was mounted into alice/app"
            );
        }
    }
    // alice is never served bob's bytes through the proxy.
    let r = env.call(
        Some("alice"),
        "GET",
        &format!("/v2/alice/app/blobs/{}", b.layer_digest),
    );
    assert_eq!(r.status, 404, "{}", r.describe());
    for ct in [
        "\u{a0}application/x-www-form-urlencoded",
        "\u{85}application/x-www-form-urlencoded",
        "appl\u{130}cation/x-www-form-urlencoded",
        "application/x-www-form-urlencoded",
        "application/octet-stream",
    ] {
        let r = call(
            &env.proxy.base,
            Some(&env.proxy.ca),
            "POST",
            "/v2/alice/app/blobs/uploads/",
        )
        .user("alice", "pw-alice")
        .header(&format!("Content-Type: {ct}"))
        .body(&body)
        .send();
        r.assert_refusal(400, "UNSUPPORTED", ct);
        assert!(
            !env.registry_has_blob("alice/app", &b.layer_digest),
            "{ct:?}: mounted"
        );
    }
}
