//! Anonymous pulls (`auth.anonymous: true` and a rule with `anonymous: true`) work for
//! real clients that have no login, while pushes to the same repository still need
//! credentials. skopeo and podman (containers/image) answer the Basic challenge of
//! `/v2/` with `Basic Og==` (empty user, empty password) when they have no login: that is
//! no credentials, not malformed ones. docker's engine cannot answer a Basic challenge
//! without a login at all: it gets a Bearer challenge and the proxy's own tokens
//! (`auth::token`), driven here through a real dockerd of the test's own.

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

/// A docker daemon of the test's own (Debian's docker.io): root, a private socket, vfs
/// storage, no networking, everything under one short temporary folder; stopped by its
/// PID when dropped.
struct Dockerd {
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl Dockerd {
    /// None when docker is missing or this is not root, and real parts are not required.
    fn start() -> Option<Dockerd> {
        if !have("dockerd") || !have("docker") {
            return None;
        }
        let root =
            std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0;
        if !root {
            assert!(
                !required(),
                "dockerd needs root, required (RG_REQUIRE_REAL/CI) but this test runs as another user"
            );
            eprintln!("SKIPPING: dockerd needs root (set RG_REQUIRE_REAL=1 to fail instead)");
            return None;
        }
        // Short: containerd's socket lands under exec-root, and unix socket paths are
        // limited to 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("rgd")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path().display().to_string();
        std::fs::create_dir(dir.path().join("cfg")).unwrap();
        let cfg = serde_json::json!({
            "storage-driver": "vfs",
            "iptables": false,
            "ip6tables": false,
            "bridge": "none",
            "data-root": format!("{d}/data"),
            "exec-root": format!("{d}/x"),
            "pidfile": format!("{d}/docker.pid"),
            "hosts": [format!("unix://{d}/docker.sock")],
        });
        std::fs::write(dir.path().join("daemon.json"), cfg.to_string()).unwrap();
        let log = std::fs::File::create(dir.path().join("dockerd.log")).unwrap();
        let child = Command::new("dockerd")
            .arg("--config-file")
            .arg(dir.path().join("daemon.json"))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        let mut daemon = Dockerd {
            dir,
            child: Some(child),
        };
        let up = wait_for(Duration::from_secs(60), || {
            if let Some(Ok(Some(st))) = daemon.child.as_mut().map(|c| c.try_wait()) {
                panic!("dockerd exited ({st}) at start:\n{}", daemon.log());
            }
            let (out, _) = run_bounded(
                daemon
                    .command()
                    .args(["version", "--format", "{{.Server.Version}}"]),
                Duration::from_secs(10),
            );
            out.status.success().then_some(())
        });
        assert!(
            up.is_some(),
            "dockerd did not answer in 60 s:\n{}",
            daemon.log()
        );
        Some(daemon)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// The docker CLI talking to this daemon only, with its own (empty) login store.
    fn command(&self) -> Command {
        let mut c = Command::new("docker");
        let d = self.dir.path();
        c.env("DOCKER_HOST", format!("unix://{}/docker.sock", d.display()))
            .env("DOCKER_CONFIG", d.join("cfg"))
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH");
        c
    }

    fn docker(&self, args: &[&str]) -> Output {
        self.docker_in(args, std::process::Stdio::null())
    }

    fn docker_in(&self, args: &[&str], stdin: std::process::Stdio) -> Output {
        let (out, exited) = common::process::run_bounded_in(
            self.command().args(args),
            stdin,
            Duration::from_secs(120),
        );
        assert!(
            exited,
            "docker {args:?} did not finish in 120 s\n{}",
            self.log()
        );
        out
    }

    /// `docker login` with `password` on stdin (never on the command line).
    fn login(&self, server: &str, user: &str, password: &str) -> Output {
        let file = self.dir.path().join("password");
        std::fs::write(&file, password).unwrap();
        let stdin = std::fs::File::open(&file).unwrap();
        let out = self.docker_in(
            &["login", "--username", user, "--password-stdin", server],
            stdin.into(),
        );
        std::fs::remove_file(&file).unwrap();
        out
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // TERM lets dockerd stop its containerd; kill only if it hangs.
            signal(c.id(), "TERM");
            if wait_for(Duration::from_secs(20), || c.try_wait().ok().flatten()).is_none() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

/// docker's engine, told Basic by `/v2/` without a login, fails before sending a request;
/// with `auth.anonymous` on it is told Bearer and takes an anonymous token from the proxy,
/// while pushes still need a login (which then goes through the token route too).
#[test]
fn docker_pulls_without_a_login_and_cannot_push_without_one() {
    let Some(daemon) = Dockerd::start() else {
        return;
    };
    let Some((reg, proxy)) = start("", "") else {
        return;
    };
    let layout = daemon.dir.path().join("layout");
    let img = setup(&reg, &proxy, &layout);
    common::e2e::push_through(
        &proxy,
        &img,
        "private/app:1",
        Some(&format!("{}:{}", ALICE.0, ALICE.1)),
    );
    let server = proxy.addr.to_string();
    let name = format!("{server}/public/app:1");

    // Pull without a login: the anonymous token through the Bearer challenge.
    let out = daemon.docker(&["pull", &name]);
    ok(&out, "anonymous docker pull");
    let out = daemon.docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .RepoDigests}}",
        &name,
    ]);
    let digests = ok(&out, "docker image inspect");
    assert!(
        digests.contains(&format!("{server}/public/app@{}", img.manifest_digest)),
        "{digests}"
    );
    let logs = proxy.logs();
    assert!(
        logs.contains("user=anonymous"),
        "the pull was not anonymous:\n{logs}"
    );

    // A repository anonymous may not pull: refused.
    let out = daemon.docker(&["pull", &format!("{server}/private/app:1")]);
    assert!(
        !out.status.success(),
        "an anonymous pull of private/app succeeded"
    );
    assert!(
        stderr(&out).contains("unauthorized") || stderr(&out).contains("denied"),
        "{}",
        stderr(&out)
    );

    // The pulled image pushed back without a login: refused, nothing stored.
    let target = format!("{server}/public/app:docker");
    ok(&daemon.docker(&["tag", &name, &target]), "docker tag");
    let out = daemon.docker(&["push", &target]);
    assert!(!out.status.success(), "an anonymous docker push succeeded");
    let r = call(&reg.url, None, "HEAD", "/v2/public/app/manifests/docker").send();
    assert_eq!(r.status, 404, "an anonymous push reached the registry");

    // A wrong password: docker login fails (the token route refuses it).
    let out = daemon.login(&server, ALICE.0, "not-alices-password");
    assert!(
        !out.status.success(),
        "docker login with a wrong password succeeded"
    );
    assert!(stderr(&out).contains("unauthorized"), "{}", stderr(&out));

    // alice's login, then the push goes through.
    ok(
        &daemon.login(&server, ALICE.0, ALICE.1),
        "docker login as alice",
    );
    ok(&daemon.docker(&["push", &target]), "docker push as alice");
    let r = call(&reg.url, None, "HEAD", "/v2/public/app/manifests/docker")
        .header("Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
        .send();
    assert_eq!(r.status, 200, "{}", r.describe());
    let logs = proxy.logs();
    assert!(logs.contains("user=alice"), "{logs}");
    // No token in any log line.
    assert!(!logs.contains("rgb1."), "a token was logged:\n{logs}");
}
