//! The packaging in `deploy/` (issue 11, point 4), each artefact checked by running it
//! where this machine can and by its structure everywhere:
//!
//! - the runtime image, built offline from the test's own binary (`scripts/image-local`,
//!   `deploy/Containerfile.local`: nothing pulled), run with podman as user 65532 on a
//!   read-only root in front of the real registry: skopeo pushes through it, a delete is
//!   audited and the audit verifies;
//! - the systemd unit: `systemd-analyze verify` passes, sandboxing keys are set;
//! - the Kubernetes manifests and the compose file: their structure, and their
//!   registry-guard configuration passes `registry-guard check`.
#[path = "../common/mod.rs"]
mod common;
use common::curl::call;
use common::e2e::{mkimage, push_through};
use common::process::{ok, run, run_bounded};
use common::*;

use serde_yaml::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_file(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every YAML document of a file.
fn docs(rel: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(&read(rel))
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{rel}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

/// `v[a][b]...`, panicking with the path when absent.
fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    let mut cur = v;
    for k in path {
        cur = cur
            .get(*k)
            .unwrap_or_else(|| panic!("no {} in {v:?}", path.join(".")));
    }
    cur
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    at(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{} is not a string", path.join(".")))
}

fn cert_and_key(dir: &Path) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (c, k) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

/// A user file with one user whose password is `password`, in `groups`.
fn users_file(path: &Path, name: &str, password: &str, groups: &[&str]) {
    let hash = common::process::cli_stdin(&["hash-password"], password);
    let hash = ok(&hash, "hash-password");
    std::fs::write(
        path,
        format!(
            "users:\n  - name: {name}\n    hash: \"{}\"\n    groups: [{}]\n",
            hash.trim(),
            groups.join(", ")
        ),
    )
    .unwrap();
}

fn audit_key(path: &Path) {
    let out = run(
        Command::new(bin()).args(["audit", "keygen"]).arg(path),
        Duration::from_secs(10),
    );
    ok(&out, "audit keygen");
}

/// `registry-guard check` of `config` (paths already pointing at real files).
fn check_config(config: &str, dir: &Path, what: &str) {
    let path = dir.join("config.yaml");
    std::fs::write(&path, config).unwrap();
    let out = run(
        Command::new(bin()).arg("check").arg("--config").arg(&path),
        Duration::from_secs(30),
    );
    ok(&out, &format!("registry-guard check of {what}"));
}

// ---- the container image --------------------------------------------------------------

/// podman with its own storage and settings in a temporary folder, the runc runtime and
/// cgroupfs (what this kind of machine can run), no default ulimits (raising them is not
/// permitted in the test's sandbox).
struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    fn new() -> Podman {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{0}/graph\"\nrunroot = \"{0}/run\"\n",
                d.display()
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("containers.conf"),
            "[containers]\ndefault_ulimits = []\n[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"none\"\n",
        )
        .unwrap();
        Podman { dir }
    }

    fn env(&self, c: &mut Command) {
        let d = self.dir.path();
        c.env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"))
            .env("CONTAINERS_CONF", d.join("containers.conf"))
            .env("HOME", d)
            .env("XDG_RUNTIME_DIR", d)
            .env("TMPDIR", d);
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        let mut c = Command::new("podman");
        self.env(&mut c);
        c.args(args);
        let (out, exited) = run_bounded(&mut c, Duration::from_secs(120));
        assert!(exited, "podman {args:?} did not finish in 120 s");
        out
    }
}

/// Removes the container when the test ends, however it ends.
struct Container<'a> {
    podman: &'a Podman,
    name: String,
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self.podman.run(&["rm", "-f", "-t", "2", &self.name]);
    }
}

#[test]
fn the_offline_image_serves_the_real_registry_as_user_65532_on_a_read_only_root() {
    for p in ["podman", "buildah", "runc", "skopeo"] {
        if !have(p) {
            return;
        }
    }
    let Some(reg) = Registry::start() else { return };
    let podman = Podman::new();
    let image = format!("localhost/registry-guard-test:{}", std::process::id());

    let mut build = Command::new(repo_file("scripts/image-local"));
    podman.env(&mut build);
    build.arg(bin()).arg(&image);
    let (out, exited) = run_bounded(&mut build, Duration::from_secs(300));
    assert!(exited, "scripts/image-local did not finish");
    ok(&out, "scripts/image-local");

    // The volumes: configuration (read-only) and the audit folder (written by 65532).
    let host = tempfile::tempdir().unwrap();
    let etc = host.path().join("etc");
    let logs = host.path().join("logs");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::create_dir_all(&logs).unwrap();
    let chown = |p: &Path, mode: &str| {
        let out = run(
            Command::new("chown").arg("65532:65532").arg(p),
            Duration::from_secs(5),
        );
        ok(&out, "chown");
        let out = run(
            Command::new("chmod").arg(mode).arg(p),
            Duration::from_secs(5),
        );
        ok(&out, "chmod");
    };
    users_file(&etc.join("users.yaml"), "alice", "pw-alice", &[]);
    audit_key(&etc.join("audit.key"));
    chown(&etc.join("users.yaml"), "0600");
    chown(&etc.join("audit.key"), "0600");
    chown(&logs, "0700");
    let (port, admin) = (free_port(), free_port());
    std::fs::write(
        etc.join("config.yaml"),
        format!(
            "server:\n  listen: 127.0.0.1:{port}\n  tls:\n    self_signed:\n      ca_out: /var/log/registry-guard/ca.pem\n\
             upstream:\n  url: {}\n\
             auth:\n  users_file: /etc/registry-guard/users.yaml\n\
             access:\n  rules:\n    - repos: ['**']\n      users: ['*']\n      actions: [pull, push, delete]\n\
             audit:\n  file: /var/log/registry-guard/audit.jsonl\n  key_file: /etc/registry-guard/audit.key\n\
             metrics:\n  listen: 127.0.0.1:{admin}\n",
            reg.url
        ),
    )
    .unwrap();

    let name = format!("rg-deploy-test-{}", std::process::id());
    let container = Container {
        podman: &podman,
        name: name.clone(),
    };
    let out = podman.run(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "host",
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "-v",
        &format!("{}:/etc/registry-guard:ro", etc.display()),
        "-v",
        &format!("{}:/var/log/registry-guard", logs.display()),
        &image,
    ]);
    ok(&out, "podman run");
    let admin_addr = format!("127.0.0.1:{admin}").parse().unwrap();
    let ready = wait_for(Duration::from_secs(30), || {
        (http_status(admin_addr, "/readyz") == Some(200)).then_some(())
    });
    if ready.is_none() {
        let logs = podman.run(&["logs", &name]);
        panic!(
            "the container did not get ready: {}{}",
            String::from_utf8_lossy(&logs.stdout),
            String::from_utf8_lossy(&logs.stderr)
        );
    }
    assert_eq!(http_status(admin_addr, "/healthz"), Some(200));

    // Unprivileged, read-only root.
    let out = podman.run(&["top", &name, "user", "huser"]);
    let top = ok(&out, "podman top");
    assert!(
        top.lines()
            .skip(1)
            .all(|l| l.split_whitespace().nth(1) == Some("65532")),
        "{top}"
    );
    let out = podman.run(&[
        "inspect",
        "--format",
        "{{.HostConfig.ReadonlyRootfs}} {{.Config.User}}",
        &name,
    ]);
    assert_eq!(ok(&out, "podman inspect").trim(), "true 65532:65532");

    // Real traffic: a push with skopeo, a delete, its audit.
    let ca_dir = host.path().join("certs.d");
    std::fs::create_dir_all(&ca_dir).unwrap();
    std::fs::copy(logs.join("ca.pem"), ca_dir.join("ca.crt")).unwrap();
    let proxy_like = Proxy::external(
        format!("127.0.0.1:{port}").parse().unwrap(),
        &ca_dir,
        &logs.join("ca.pem"),
    );
    let layout = host.path().join("layout");
    let img = mkimage(&layout, 1, "one", 7);
    push_through(&proxy_like, &img, "alice/app:1", Some("alice:pw-alice"));
    let r = call(
        &proxy_like.base,
        Some(&proxy_like.ca),
        "DELETE",
        &format!("/v2/alice/app/manifests/{}", img.manifest_digest),
    )
    .user("alice", "pw-alice")
    .send();
    assert_eq!(r.status, 202, "{}", r.describe());
    let out = run(
        Command::new(bin())
            .args(["audit", "verify", "--key-file"])
            .arg(etc.join("audit.key"))
            .arg(logs.join("audit.jsonl")),
        Duration::from_secs(30),
    );
    let verified = ok(&out, "audit verify of the container's audit file");
    assert!(verified.contains("chain: intact"), "{verified}");
    assert!(verified.contains("deletes: 1"), "{verified}");
    let audit = std::fs::read_to_string(logs.join("audit.jsonl")).unwrap();
    assert!(audit.contains(&img.manifest_digest), "{audit}");

    drop(container);
    let _ = podman.run(&["rmi", "-f", &image]);
}

#[test]
fn the_production_containerfile_runs_unprivileged_without_a_healthcheck() {
    for f in ["deploy/Containerfile", "deploy/Containerfile.local"] {
        let text = read(f);
        let last_from = text.rfind("\nFROM ").expect(f);
        let runtime = &text[last_from..];
        assert!(runtime.contains("\nUSER 65532:65532\n"), "{f}");
        assert!(!text.contains("\nHEALTHCHECK"), "{f}");
        assert!(
            runtime.contains("ENTRYPOINT [\"/usr/local/bin/registry-guard\"]"),
            "{f}"
        );
        assert!(
            runtime.contains("VOLUME [\"/var/log/registry-guard\"]"),
            "{f}"
        );
    }
    assert!(
        read("deploy/Containerfile").contains(" AS build\n"),
        "multi-stage"
    );
    assert!(read("deploy/Containerfile.local").contains("\nFROM scratch\n"));
}

// ---- systemd ------------------------------------------------------------------------

#[test]
fn the_systemd_unit_verifies_and_is_sandboxed() {
    let unit = read("deploy/systemd/registry-guard.service");
    for line in [
        "ExecStart=/usr/local/bin/registry-guard serve --config /etc/registry-guard/config.yaml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "User=registry-guard",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=",
        "LogsDirectory=registry-guard",
        "LimitNOFILE=65536",
        "PrivateTmp=yes",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks {line:?}");
    }
    if !have("systemd-analyze") {
        return;
    }
    // verify needs the binary to exist: point ExecStart at the one under test.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("registry-guard.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/registry-guard", bin().to_str().unwrap()),
    )
    .unwrap();
    let out = run(
        Command::new("systemd-analyze").arg("verify").arg(&copy),
        Duration::from_secs(60),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {err}");
    assert!(
        !err.contains("registry-guard.service"),
        "systemd-analyze warns about the unit: {err}"
    );
}

// ---- Kubernetes ---------------------------------------------------------------------

fn kind_of<'a>(all: &'a [(String, Value)], kind: &str) -> Vec<&'a Value> {
    all.iter()
        .filter(|(_, v)| v.get("kind").and_then(Value::as_str) == Some(kind))
        .map(|(_, v)| v)
        .collect()
}

#[test]
fn the_kubernetes_manifests_hold_together_and_their_config_checks() {
    let kustomization = docs("deploy/kubernetes/kustomization.yaml").remove(0);
    let files: Vec<String> = at(&kustomization, &["resources"])
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let mut on_disk: Vec<String> = std::fs::read_dir(repo_file("deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    on_disk.sort();
    let mut listed = files.clone();
    listed.sort();
    assert_eq!(listed, on_disk, "kustomization.yaml lists every manifest");
    let all: Vec<(String, Value)> = files
        .iter()
        .flat_map(|f| {
            docs(&format!("deploy/kubernetes/{f}"))
                .into_iter()
                .map(move |d| (f.clone(), d))
        })
        .collect();
    for (f, d) in &all {
        assert!(
            d.get("apiVersion").is_some() && d.get("kind").is_some(),
            "{f}"
        );
        assert!(at(d, &["metadata", "name"]).as_str().is_some(), "{f}");
    }

    let dep = kind_of(&all, "Deployment");
    assert_eq!(dep.len(), 1);
    let dep = dep[0];
    assert!(at(dep, &["spec", "replicas"]).as_u64().unwrap() >= 2);
    let labels = at(dep, &["spec", "selector", "matchLabels"]).clone();
    assert_eq!(
        at(dep, &["spec", "template", "metadata", "labels"]),
        &labels
    );
    let pod = at(dep, &["spec", "template", "spec"]);
    assert_eq!(
        at(pod, &["securityContext", "runAsNonRoot"]).as_bool(),
        Some(true)
    );
    assert_eq!(
        at(pod, &["securityContext", "runAsUser"]).as_u64(),
        Some(65532)
    );
    assert!(pod
        .get("affinity")
        .and_then(|a| a.get("podAntiAffinity"))
        .is_some());
    let grace = at(pod, &["terminationGracePeriodSeconds"])
        .as_u64()
        .unwrap();
    let c = &at(pod, &["containers"]).as_sequence().unwrap()[0];
    let sc = at(c, &["securityContext"]);
    assert_eq!(at(sc, &["readOnlyRootFilesystem"]).as_bool(), Some(true));
    assert_eq!(at(sc, &["allowPrivilegeEscalation"]).as_bool(), Some(false));
    assert_eq!(
        at(sc, &["capabilities", "drop"]).as_sequence().unwrap()[0].as_str(),
        Some("ALL")
    );
    assert!(at(c, &["resources", "limits", "memory"]).as_str().is_some());
    assert!(at(c, &["resources", "requests", "cpu"]).as_str().is_some());
    let ports: Vec<&str> = at(c, &["ports"])
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| str_at(p, &["name"]))
        .collect();
    for (probe, path) in [
        ("livenessProbe", "/healthz"),
        ("startupProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        assert_eq!(str_at(c, &[probe, "httpGet", "path"]), path, "{probe}");
        let port = str_at(c, &[probe, "httpGet", "port"]);
        assert!(
            ports.contains(&port),
            "{probe} probes an unnamed port {port}"
        );
    }
    // Mounted as folders: a subPath mount never sees a ConfigMap or Secret update.
    let volumes = at(pod, &["volumes"]).as_sequence().unwrap();
    for m in at(c, &["volumeMounts"]).as_sequence().unwrap() {
        let name = str_at(m, &["name"]);
        let vol = volumes
            .iter()
            .find(|v| str_at(v, &["name"]) == name)
            .unwrap_or_else(|| panic!("no volume {name}"));
        if vol.get("configMap").is_some() || vol.get("secret").is_some() {
            assert!(m.get("subPath").is_none(), "{name} mounted with subPath");
            assert_eq!(at(m, &["readOnly"]).as_bool(), Some(true), "{name}");
        }
    }
    let args: Vec<&str> = at(c, &["args"])
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let config_path = args[args.iter().position(|a| *a == "--config").unwrap() + 1];

    for kind in ["Service", "PodDisruptionBudget"] {
        let v = kind_of(&all, kind);
        assert_eq!(v.len(), 1, "{kind}");
        let sel = v[0]["spec"]["selector"]
            .get("matchLabels")
            .unwrap_or(&v[0]["spec"]["selector"]);
        assert_eq!(sel, &labels, "{kind} selects the Deployment's pods");
    }
    let np = kind_of(&all, "NetworkPolicy");
    assert_eq!(np.len(), 1);
    let from = &at(np[0], &["spec", "ingress"]).as_sequence().unwrap()[0]["from"][0];
    assert_eq!(
        at(from, &["podSelector", "matchLabels"]),
        &labels,
        "the registry admits only registry-guard"
    );
    assert_eq!(kind_of(&all, "PersistentVolumeClaim").len(), 1);

    // The ConfigMap's configuration, its paths mapped to real files, passes `check`; its
    // shutdown grace fits in the pod's termination grace.
    let cm = kind_of(&all, "ConfigMap");
    let config = str_at(cm[0], &["data", "config.yaml"]);
    assert!(config_path.ends_with("/config.yaml"));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("tls")).unwrap();
    std::fs::create_dir_all(d.join("secret")).unwrap();
    cert_and_key(&d.join("tls"));
    // The groups the ConfigMap's rules name.
    users_file(
        &d.join("secret/users.yaml"),
        "alice",
        "pw",
        &["registry-admins", "release"],
    );
    audit_key(&d.join("secret/audit.key"));
    let mapped = config
        .replace("/etc/registry-guard/", &format!("{}/", d.display()))
        .replace("/var/log/registry-guard/", &format!("{}/", d.display()));
    check_config(&mapped, d, "the ConfigMap's config.yaml");
    let cfg: Value = serde_yaml::from_str(config).unwrap();
    let shutdown = humantime::parse_duration(str_at(&cfg, &["limits", "shutdown_grace"])).unwrap();
    assert!(
        grace > shutdown.as_secs(),
        "terminationGracePeriodSeconds {grace} <= shutdown_grace"
    );
}

// ---- compose ------------------------------------------------------------------------

#[test]
fn the_compose_trial_holds_together_and_its_config_checks() {
    let compose = docs("deploy/compose/compose.yaml").remove(0);
    let reg = at(&compose, &["services", "registry"]);
    assert!(
        reg.get("ports").is_none(),
        "the registry must not be published"
    );
    let rg = at(&compose, &["services", "registry-guard"]);
    assert_eq!(at(rg, &["read_only"]).as_bool(), Some(true));
    assert_eq!(str_at(rg, &["user"]), "65532:65532");
    let dockerfile = str_at(rg, &["build", "dockerfile"]);
    assert!(repo_file(dockerfile).exists(), "{dockerfile}");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = read("deploy/compose/config.yaml")
        .replace(
            "/etc/registry-guard/users.yaml",
            repo_file("deploy/compose/users.yaml").to_str().unwrap(),
        )
        .replace("/var/lib/registry-guard/", &format!("{}/", d.display()));
    check_config(&config, d, "deploy/compose/config.yaml");
}
