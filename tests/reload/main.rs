//! Reloading the whole configuration (issue 11, point 1) against Debian's real
//! docker-registry behind the registry-guard binary: rules and certificates change
//! while a 64 MiB skopeo push runs, by SIGHUP, by an edit in place, and by a rename
//! over plus a Kubernetes-style `..data` symlink swap of the certificate and key; the
//! push succeeds, requests after each reload see the new rules, new handshakes the new
//! certificate; a broken configuration keeps the old one in force and is counted.
//! `check --against` then reads the registry's catalog to say what changed for whom.
#[path = "../common/mod.rs"]
mod common;
use common::curl::call;
use common::e2e::{have_python, mkimage, push_direct};
use common::metrics::scrape;
use common::process::{run_bounded, text};
use common::*;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const ALICE: (&str, &str) = ("alice", "pw-alice");
const BOB: (&str, &str) = ("bob", "pw-bob");

/// alice may do everything everywhere (her push must never be refused); bob pulls team-b.
const RULES_BASE: &str = "  rules:
    - name: alice everywhere
      repos: ['**']
      users: [alice]
      actions: [pull, push, delete]
    - name: bob reads team-b
      repos: ['team-b/**']
      users: [bob]
      actions: [pull]
";
/// The same, and bob pushes to team-b.
const RULES_BOB_PUSHES: &str = "  rules:
    - name: alice everywhere
      repos: ['**']
      users: [alice]
      actions: [pull, push, delete]
    - name: bob publishes team-b
      repos: ['team-b/**']
      users: [bob]
      actions: [pull, push]
";

const RELOAD_OK: &str = "registry_guard_config_reload_total{result=\"ok\"}";
const RELOAD_ERROR: &str = "registry_guard_config_reload_total{result=\"error\"}";
const LAST_SUCCESS: &str = "registry_guard_config_last_reload_success_timestamp_seconds";

/// A CA and leaf certificates for 127.0.0.1 it signs, each with its own key.
struct Pki {
    ca_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.distinguished_name
            .push(DnType::CommonName, "reload test CA");
        let key = KeyPair::generate().unwrap();
        let cert = ca.self_signed(&key).unwrap();
        Pki {
            ca_pem: cert.pem(),
            issuer: rcgen::Issuer::new(ca, key),
        }
    }

    /// (certificate PEM, key PEM, certificate DER) of a new leaf named `cn`.
    fn leaf(&self, cn: &str) -> (String, String, Vec<u8>) {
        use rcgen::{CertificateParams, DnType, KeyPair};
        let mut p =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }
}

/// A Kubernetes Secret mount: `tls.crt` and `tls.key` are symlinks into `..data`, itself
/// a symlink to the folder of the current version; an update writes a new folder and
/// renames a new `..data` over the old one (one atomic step for both files).
struct SecretMount {
    dir: PathBuf,
    version: u32,
}

impl SecretMount {
    fn new(dir: &Path, cert: &str, key: &str) -> SecretMount {
        std::fs::create_dir_all(dir).unwrap();
        let mut m = SecretMount {
            dir: dir.to_owned(),
            version: 0,
        };
        m.update(cert, key);
        for f in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{f}"), dir.join(f)).unwrap();
        }
        m
    }
    fn update(&mut self, cert: &str, key: &str) {
        self.version += 1;
        let v = format!("..v{}", self.version);
        std::fs::create_dir_all(self.dir.join(&v)).unwrap();
        std::fs::write(self.dir.join(&v).join("tls.crt"), cert).unwrap();
        std::fs::write(self.dir.join(&v).join("tls.key"), key).unwrap();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&v, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }
    fn cert(&self) -> PathBuf {
        self.dir.join("tls.crt")
    }
    fn key(&self) -> PathBuf {
        self.dir.join("tls.key")
    }
}

/// The config the harness wrote with its `access:` section replaced by `rules` (the
/// metrics listener stays last) and `limits` added.
fn config_with(base: &str, rules: &str, limits: &str) -> String {
    let (head, tail) = base.split_once("access:\n").expect("an access section");
    let metrics = &tail[tail.find("metrics:").expect("the metrics section")..];
    format!("{head}access:\n{rules}{limits}{metrics}")
}

/// Writes `text` to `path` through a temporary file and a rename (a new inode), as
/// editors and configuration managers do.
fn rename_over(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Waits until the metric `name` reaches `at_least`; returns its value.
fn wait_metric(metrics: SocketAddr, name: &str, at_least: u64, proxy: &Proxy) -> u64 {
    wait_for(Duration::from_secs(15), || {
        let v = scrape(metrics).get(name);
        (v >= at_least).then_some(v)
    })
    .unwrap_or_else(|| panic!("{name} did not reach {at_least} in 15 s:\n{}", proxy.logs()))
}

/// bob's upload start in team-b: 202 when he may push there, 403 when not.
fn bob_upload_start(proxy: &Proxy) -> u16 {
    call(
        &proxy.base,
        Some(&proxy.ca),
        "POST",
        "/v2/team-b/app/blobs/uploads/",
    )
    .user(BOB.0, BOB.1)
    .send()
    .status
}

/// A TCP relay to `to` on a loopback port that passes client bytes on at most `rate`
/// bytes per second per connection (answers at full speed): a push through it lasts long
/// enough for several reloads to happen under it. TLS stays end to end, and the proxy
/// writes its `Location`s for the relay's address (the Host clients send).
fn slow_relay(to: SocketAddr, rate: u64) -> SocketAddr {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    fn pipe(mut from: TcpStream, mut to: TcpStream, rate: Option<u64>) {
        let start = Instant::now();
        let mut sent = 0u64;
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
            sent += n as u64;
            if let Some(rate) = rate {
                let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(to) else {
                continue;
            };
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || pipe(client, server, Some(rate)));
            std::thread::spawn(move || pipe(s2, c2, None));
        }
    });
    addr
}

/// The DER of the certificate a new TLS connection to the proxy is served.
fn served_certificate(proxy: &Proxy) -> Vec<u8> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tls = common::client::tls_connect(proxy, &[b"http/1.1"]).await;
        tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    })
}

#[test]
fn rules_and_certificate_reload_during_a_push_and_a_broken_config_changes_nothing() {
    if !have("skopeo") || !have_python(false) {
        return;
    }
    let Some(reg) = Registry::start() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let (cert1, key1, der1) = pki.leaf("first");
    let (cert2, key2, der2) = pki.leaf("second");
    let mut secret = SecretMount::new(&work.path().join("secret"), &cert1, &key1);
    std::fs::write(work.path().join("ca.pem"), &pki.ca_pem).unwrap();
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let proxy = Proxy::builder(&reg.url)
        .users(vec![user(ALICE.0, ALICE.1, &[]), user(BOB.0, BOB.1, &[])])
        .access_yaml(RULES_BASE)
        .tls(TlsMode::Files {
            cert: secret.cert(),
            key: secret.key(),
            ca: work.path().join("ca.pem"),
        })
        .extra_yaml(&format!("metrics:\n  listen: {metrics}\n"))
        .start();
    let base = std::fs::read_to_string(&proxy.config_path).unwrap();
    let initial = work.path().join("initial.yaml");
    std::fs::write(&initial, &base).unwrap();

    // Before: bob may not push, the first certificate is served.
    assert_eq!(bob_upload_start(&proxy), 403);
    assert_eq!(served_certificate(&proxy), der1);
    let m0 = scrape(metrics);
    assert_eq!(m0.get(RELOAD_OK), 0);
    assert_eq!(m0.get(RELOAD_ERROR), 0);
    assert!(m0.get(LAST_SUCCESS) > 1_700_000_000, "set at start-up");

    let img = mkimage(&work.path().join("layout"), 64, "v1", 7);
    // skopeo pushes through a relay at 6 MiB/s: about 11 s for the 64 MiB layer.
    let relay = slow_relay(proxy.addr, 6 << 20);
    std::thread::scope(|s| {
        let started = Instant::now();
        let (proxy, img) = (&proxy, &img);
        let push = s.spawn(move || {
            let out = common::e2e::skopeo(&[
                "--insecure-policy",
                "copy",
                "--quiet",
                "--preserve-digests",
                "--dest-cert-dir",
                proxy.cert_dir.to_str().unwrap(),
                "--dest-creds",
                &format!("{}:{}", ALICE.0, ALICE.1),
                &img.oci_ref(),
                &format!("docker://{relay}/alice/big:v1"),
            ]);
            (out, started.elapsed())
        });
        let mut during = Vec::new();
        // Let skopeo get going: its first requests are the login and blob checks.
        std::thread::sleep(Duration::from_millis(300));

        // 1. SIGHUP: bob may push (the file is written in place, and the signal makes
        //    the reload happen now rather than at the next poll).
        std::fs::write(&proxy.config_path, config_with(&base, RULES_BOB_PUSHES, "")).unwrap();
        signal(proxy.pid(), "HUP");
        wait_metric(metrics, RELOAD_OK, 1, proxy);
        during.push(!push.is_finished());
        assert_eq!(bob_upload_start(proxy), 202, "after the SIGHUP reload");

        // 2. An edit in place, seen by the poll: bob's push is gone again.
        let ok = scrape(metrics).get(RELOAD_OK);
        std::fs::write(&proxy.config_path, config_with(&base, RULES_BASE, "")).unwrap();
        wait_metric(metrics, RELOAD_OK, ok + 1, proxy);
        // (A poll may have taken the file before the SIGHUP: then the SIGHUP's reload
        // is the one counted, and the edit's follows.)
        wait_for(Duration::from_secs(10), || {
            (bob_upload_start(proxy) == 403).then_some(())
        })
        .unwrap_or_else(|| panic!("bob still pushes after the edit:\n{}", proxy.logs()));
        during.push(!push.is_finished());

        // 3. The config renamed over (a new inode) and the certificate and key replaced
        //    through a `..data` swap: bob pushes again, new handshakes get the second
        //    certificate. idle_timeout changes too: it needs a restart, and says so.
        let ok = scrape(metrics).get(RELOAD_OK);
        rename_over(
            &proxy.config_path,
            &config_with(&base, RULES_BOB_PUSHES, "limits:\n  idle_timeout: 61s\n"),
        );
        secret.update(&cert2, &key2);
        wait_for(Duration::from_secs(15), || {
            (served_certificate(proxy) == der2).then_some(())
        })
        .unwrap_or_else(|| panic!("the second certificate is not served:\n{}", proxy.logs()));
        assert!(scrape(metrics).get(RELOAD_OK) > ok);
        during.push(!push.is_finished());
        assert_eq!(
            bob_upload_start(proxy),
            202,
            "after the rename and the swap"
        );

        let (out, took) = push.join().unwrap();
        assert!(
            out.status.success(),
            "the push through every reload failed: {}\n{}",
            text(&out.stderr),
            proxy.logs()
        );
        eprintln!("push took {took:?}; reloads done while it ran: {during:?}");
        assert_eq!(
            during,
            vec![true; 3],
            "every reload was in force before the push ended ({took:?})"
        );
    });
    let logs = proxy.logs();
    assert!(logs.contains("reason=SIGHUP"), "{logs}");
    assert!(
        logs.contains("needs a restart: limits.idle_timeout"),
        "{logs}"
    );
    assert!(!logs.contains("configuration not reloaded"), "{logs}");

    // The pushed image is whole: pulled back through the proxy with the new certificate.
    let out = run_bounded(
        std::process::Command::new("skopeo").args([
            "inspect",
            "--raw",
            "--cert-dir",
            proxy.cert_dir.to_str().unwrap(),
            "--creds",
            &format!("{}:{}", ALICE.0, ALICE.1),
            &format!("docker://{}/alice/big:v1", proxy.addr),
        ]),
        Duration::from_secs(60),
    );
    assert!(out.0.status.success(), "{}", text(&out.0.stderr));
    assert_eq!(out.0.stdout, img.manifest());

    // 4. A broken config (a bad value): nothing changes, the error is counted and logged
    //    with the file and the key.
    let before = scrape(metrics);
    std::fs::write(
        &proxy.config_path,
        config_with(&base, RULES_BASE, "limits:\n  max_tags: lots\n"),
    )
    .unwrap();
    wait_metric(metrics, RELOAD_ERROR, before.get(RELOAD_ERROR) + 1, &proxy);
    let after = scrape(metrics);
    assert_eq!(after.get(RELOAD_OK), before.get(RELOAD_OK));
    assert_eq!(after.get(LAST_SUCCESS), before.get(LAST_SUCCESS));
    assert_eq!(bob_upload_start(&proxy), 202, "the previous rules stay");
    assert_eq!(served_certificate(&proxy), der2);
    let logs = proxy.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("configuration not reloaded"))
        .unwrap_or_else(|| panic!("{logs}"));
    assert!(
        line.contains(&proxy.config_path.display().to_string()) && line.contains("max_tags"),
        "{line}"
    );

    // `check --against`: what the configuration in force changed since the start, for
    // every user, on every repository of the registry's catalog.
    let small = mkimage(&work.path().join("layout"), 1, "small", 3);
    push_direct(&reg, &small, "team-b/app:1");
    let current = work.path().join("current.yaml");
    std::fs::write(
        &current,
        config_with(&base, RULES_BOB_PUSHES, "limits:\n  idle_timeout: 61s\n"),
    )
    .unwrap();
    let (out, _) = common::process::run_cli_for(
        &[
            "check",
            "--config",
            current.to_str().unwrap(),
            "--against",
            initial.to_str().unwrap(),
        ],
        work.path(),
        Duration::from_secs(60),
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    let changes: Vec<&str> = stdout
        .lines()
        .map(str::trim)
        .filter(|l| l.contains(": +") || l.contains(": -"))
        .collect();
    assert_eq!(changes, vec!["bob: +push team-b/app"], "{stdout}");
    assert!(stdout.contains("on 2 repositories"), "{stdout}");
    assert!(
        stdout.contains("needs a restart: limits.idle_timeout"),
        "{stdout}"
    );
}
