//! Anonymous pulls (`auth.anonymous: true` and a rule with `anonymous: true`) work for
//! real clients that have no login, while pushes to the same repository still need
//! credentials. skopeo and podman (containers/image) answer the Basic challenge of
//! `/v2/` with `Basic Og==` (empty user, empty password) when they have no login: that is
//! no credentials, not malformed ones.

use super::*;

/// A client environment without any login: its own HOME, runtime dir and podman
/// storage, so no auth file of the machine is read.
struct Client {
    home: tempfile::TempDir,
}

impl Client {
    fn new() -> Client {
        let home = tempfile::tempdir().unwrap();
        std::fs::write(
            home.path().join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{0}/graph\"\nrunroot = \"{0}/run\"\n",
                home.path().display()
            ),
        )
        .unwrap();
        // An empty auth file: podman insists the file it is pointed at exists.
        std::fs::write(home.path().join("auth.json"), "{}").unwrap();
        Client { home }
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        let h = self.home.path();
        c.env("HOME", h)
            .env("XDG_RUNTIME_DIR", h)
            .env("XDG_CONFIG_HOME", h.join("config"))
            .env("REGISTRY_AUTH_FILE", h.join("auth.json"))
            .env("CONTAINERS_STORAGE_CONF", h.join("storage.conf"));
        c
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        let (out, exited) = run_bounded(self.command(program).args(args), Duration::from_secs(120));
        assert!(exited, "{program} {args:?} did not finish in 120 s");
        out
    }

    fn skopeo(&self, args: &[&str]) -> Output {
        let mut all = vec!["--insecure-policy"];
        all.extend_from_slice(args);
        self.run("skopeo", &all)
    }

    fn podman(&self, args: &[&str]) -> Output {
        let graph = self.home.path().join("graph");
        let run = self.home.path().join("run");
        let mut all = vec![
            "--root",
            graph.to_str().unwrap(),
            "--runroot",
            run.to_str().unwrap(),
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "none",
        ];
        all.extend_from_slice(args);
        self.run("podman", &all)
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The image pushed by alice to `public/app:1`, and what the registry holds.
fn setup(reg: &Registry, proxy: &Proxy, layout: &Path) -> Image {
    let img = mkimage(layout, 1, "one", 41);
    common::e2e::push_through(
        proxy,
        &img,
        "public/app:1",
        Some(&format!("{}:{}", ALICE.0, ALICE.1)),
    );
    let r = call(&reg.url, None, "HEAD", "/v2/public/app/manifests/1")
        .header("Accept: application/vnd.oci.image.manifest.v1+json")
        .send();
    assert_eq!(
        r.header("docker-content-digest"),
        Some(img.manifest_digest.as_str())
    );
    img
}

#[test]
fn skopeo_pulls_without_a_login_and_cannot_push_without_one() {
    if !have("skopeo") {
        return;
    }
    let Some((reg, proxy)) = start("", "") else {
        return;
    };
    let client = Client::new();
    let img = setup(&reg, &proxy, &client.home.path().join("layout"));
    let certs = proxy.cert_dir.to_str().unwrap();
    let src = format!("docker://{}/public/app:1", proxy.addr);

    let out = client.skopeo(&["inspect", "--raw", "--cert-dir", certs, &src]);
    let raw = ok(&out, "anonymous skopeo inspect");
    assert_eq!(
        common::e2e::sha256_digest(raw.as_bytes()),
        img.manifest_digest
    );
    let pulled = client.home.path().join("pulled");
    let out = client.skopeo(&[
        "copy",
        "--preserve-digests",
        "--src-cert-dir",
        certs,
        &src,
        &format!("oci:{}:got", pulled.display()),
    ]);
    ok(&out, "anonymous skopeo copy (pull)");
    assert!(
        common::e2e::blob_file(&pulled, &img.layer_digest).exists(),
        "the layer was not pulled"
    );
    assert!(
        proxy.logs().contains("user=anonymous"),
        "the pulls were not anonymous"
    );

    // The same repository, pushed without a login: refused, nothing stored.
    let out = client.skopeo(&[
        "copy",
        "--dest-cert-dir",
        certs,
        &img.oci_ref(),
        &format!("docker://{}/public/app:anon", proxy.addr),
    ]);
    assert!(!out.status.success(), "an anonymous push succeeded");
    assert!(
        stderr(&out).contains("authentication required") || stderr(&out).contains("unauthorized"),
        "{}",
        stderr(&out)
    );
    let r = call(&reg.url, None, "HEAD", "/v2/public/app/manifests/anon").send();
    assert_eq!(r.status, 404, "an anonymous push reached the registry");

    // With a login it goes through.
    let out = client.skopeo(&[
        "copy",
        "--dest-cert-dir",
        certs,
        "--dest-creds",
        &format!("{}:{}", ALICE.0, ALICE.1),
        &img.oci_ref(),
        &format!("docker://{}/public/app:alice", proxy.addr),
    ]);
    ok(&out, "skopeo push with a login");
}

#[test]
fn podman_pulls_without_a_login_and_cannot_push_without_one() {
    if !have("podman") || !have("skopeo") {
        return;
    }
    let Some((reg, proxy)) = start("", "") else {
        return;
    };
    let client = Client::new();
    let img = setup(&reg, &proxy, &client.home.path().join("layout"));
    let certs = proxy.cert_dir.to_str().unwrap();
    let name = format!("{}/public/app:1", proxy.addr);

    let out = client.podman(&["pull", "--cert-dir", certs, &name]);
    ok(&out, "anonymous podman pull");
    let out = client.podman(&["image", "inspect", "--format", "{{.Digest}}", &name]);
    assert_eq!(ok(&out, "podman image inspect").trim(), img.manifest_digest);

    // Pushing the pulled image back without a login: refused, nothing stored.
    let target = format!("{}/public/app:anon", proxy.addr);
    let out = client.podman(&["push", "--cert-dir", certs, &name, &target]);
    assert!(!out.status.success(), "an anonymous podman push succeeded");
    let r = call(&reg.url, None, "HEAD", "/v2/public/app/manifests/anon").send();
    assert_eq!(r.status, 404, "an anonymous push reached the registry");
    // With a login it goes through.
    let out = client.podman(&[
        "push",
        "--cert-dir",
        certs,
        "--creds",
        &format!("{}:{}", ALICE.0, ALICE.1),
        &name,
        &target,
    ]);
    ok(&out, "podman push with a login");
    let r = call(&reg.url, None, "HEAD", "/v2/public/app/manifests/anon")
        .header("Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
        .send();
    assert_eq!(r.status, 200, "{}", r.describe());
}
