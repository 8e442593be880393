//! Three replicas behind a real HAProxy in front of one docker-registry.

use super::*;
use common::curl::call;
use common::e2e::*;
use common::process::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

/// The balancer connects to the replicas from this address (HAProxy's `source`): the
/// replicas trust it, and it must never show up as a client.
const LB_SOURCE: &str = "127.0.0.3";

/// HAProxy in the foreground (`-db`) with a config of its own, stopped by its PID.
struct HaProxy {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    child: Child,
}

impl HaProxy {
    /// TCP mode, round-robin, PROXY v2 to every replica, health checks on each
    /// replica's `/ready` (metrics listener) every 200 ms, one failure marks it down.
    fn start(replicas: &[(SocketAddr, SocketAddr)]) -> HaProxy {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut cfg = format!(
            "global\n    maxconn 256\n\ndefaults\n    mode tcp\n    timeout connect 2s\n    timeout client 120s\n    timeout server 120s\n    timeout check 1s\n    retries 3\n    option redispatch\n\nfrontend registry\n    bind 127.0.0.1:{port}\n    default_backend replicas\n\nbackend replicas\n    balance roundrobin\n    source {LB_SOURCE}\n    option httpchk GET /ready\n    http-check expect status 200\n"
        );
        for (i, (serve, metrics)) in replicas.iter().enumerate() {
            cfg.push_str(&format!(
                "    server rg-{} {serve} send-proxy-v2 check port {} inter 200ms fall 1 rise 2\n",
                i + 1,
                metrics.port()
            ));
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, &cfg).unwrap();
        let log = std::fs::File::create(dir.path().join("haproxy.log")).unwrap();
        let child = Command::new("haproxy")
            .arg("-f")
            .arg(&path)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start haproxy");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut h = HaProxy { addr, dir, child };
        let up = wait_for(Duration::from_secs(10), || {
            if let Ok(Some(st)) = h.child.try_wait() {
                panic!("haproxy exited ({st}):\n{cfg}\n{}", h.logs());
            }
            std::net::TcpStream::connect(addr).ok().map(|_| ())
        });
        assert!(
            up.is_some(),
            "haproxy does not listen on {addr}:\n{}",
            h.logs()
        );
        h
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(self.child.id(), "TERM");
            if wait_for(Duration::from_secs(5), || {
                self.child.try_wait().ok().flatten()
            })
            .is_none()
            {
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
    }
}

/// One certificate for every replica (127.0.0.1, localhost), self-signed: clients trust
/// it as their CA.
fn shared_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

fn cli(args: &[&str]) -> (i32, String) {
    let out = run(Command::new(bin()).args(args), STEP);
    (
        out.status.code().unwrap_or(-1),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

/// Nanoseconds a process's threads have run (`/proc/PID/task/*/schedstat`).
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// The access lines of `replicas[i]` that match every needle.
fn hits(replica: &Proxy, needles: &[&str]) -> Vec<String> {
    access_lines(replica)
        .into_iter()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .collect()
}

/// Which replicas logged a request matching every needle.
fn served_by(replicas: &[Proxy], needles: &[&str]) -> Vec<usize> {
    (0..replicas.len())
        .filter(|&i| !hits(&replicas[i], needles).is_empty())
        .collect()
}

#[test]
fn three_replicas_behind_haproxy_push_pull_survive_a_kill_and_audit_per_replica() {
    let Some(reg) = Registry::start() else { return };
    if !(have("haproxy") && have("skopeo") && have("curl") && have_python(false)) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (cert, key) = shared_cert(work.path());
    let audit_key = work.path().join("audit.key");
    let (code, out) = cli(&["audit", "keygen", audit_key.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");

    let mut replicas: Vec<Proxy> = Vec::new();
    let mut audits: Vec<PathBuf> = Vec::new();
    let mut backends = Vec::new();
    for i in 1..=3 {
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let audit = work.path().join(format!("audit-{i}.jsonl"));
        let p = Proxy::builder(&reg.url)
            .tls(TlsMode::Files {
                cert: cert.clone(),
                key: key.clone(),
                ca: cert.clone(),
            })
            .users(vec![user("alice", "alice-pw", &[])])
            .access_yaml(
                "  rules:\n    - repos: ['alice/**']\n      users: [alice]\n      actions: [pull, push, delete]\n",
            )
            .server_yaml(&format!(
                "  trusted_proxies: [{LB_SOURCE}/32]\n  proxy_protocol: true\n"
            ))
            .extra_yaml(&format!(
                "metrics:\n  listen: {metrics}\naudit:\n  file: {}\n  key_file: {}\n  instance: rg-{i}\n  manifest_pushes: true\n",
                audit.display(),
                audit_key.display()
            ))
            .start();
        backends.push((p.addr, metrics));
        replicas.push(p);
        audits.push(audit);
    }
    let lb = HaProxy::start(&backends);
    let lb_base = format!("https://{}", lb.addr);
    let ca = replicas[0].ca.clone();
    let cert_dir = replicas[0].cert_dir.clone();

    // Every replica writes audit records of its own: a denied delete, asked directly.
    for p in &replicas {
        let r = call(
            &p.base,
            Some(&ca),
            "DELETE",
            &format!("/v2/bob/app/manifests/sha256:{}", "0".repeat(64)),
        )
        .user("alice", "alice-pw")
        .send();
        assert_eq!(r.status, 403, "{}", r.describe());
    }

    // An upload that starts on one replica and continues on others: each step on a new
    // connection, which round-robin sends to the next replica. The registry holds the
    // session; the replicas hold nothing of it.
    let path_of = |loc: &str| -> String {
        loc.strip_prefix(&lb_base)
            .unwrap_or_else(|| panic!("Location {loc:?} is not on {lb_base}"))
            .to_owned()
    };
    let start = call(
        &lb_base,
        Some(&ca),
        "POST",
        "/v2/alice/moved/blobs/uploads/",
    )
    .user("alice", "alice-pw")
    .send();
    assert_eq!(start.status, 202, "{}", start.describe());
    let loc = path_of(start.header("location").expect("Location"));
    let patched = call(&lb_base, Some(&ca), "PATCH", &loc)
        .user("alice", "alice-pw")
        .header("Content-Type: application/octet-stream")
        .body("hello, ")
        .send();
    assert_eq!(patched.status, 202, "{}", patched.describe());
    let loc = path_of(patched.header("location").expect("Location"));
    let digest = sha256_digest(b"hello, replicas");
    let sep = if loc.contains('?') { '&' } else { '?' };
    let done = call(
        &lb_base,
        Some(&ca),
        "PUT",
        &format!("{loc}{sep}digest={digest}"),
    )
    .user("alice", "alice-pw")
    .header("Content-Type: application/octet-stream")
    .body("replicas")
    .send();
    assert_eq!(done.status, 201, "{}", done.describe());
    let upload = ["/v2/alice/moved/blobs/uploads/"];
    let upload_replicas = wait_for(Duration::from_secs(5), || {
        let s = served_by(&replicas, &upload);
        (s.len() >= 2).then_some(s)
    })
    .unwrap_or_else(|| {
        panic!(
            "the upload's requests all hit one replica: {:?}",
            served_by(&replicas, &upload)
        )
    });
    let got = call(
        &lb_base,
        Some(&ca),
        "GET",
        &format!("/v2/alice/moved/blobs/{digest}"),
    )
    .user("alice", "alice-pw")
    .send();
    assert_eq!((got.status, got.text().as_str()), (200, "hello, replicas"));

    // A 64 MiB push through the balancer; the replica that takes the layer is killed
    // (SIGKILL) in the middle of it, and skopeo's retry completes on the others. skopeo
    // opens connections as it goes, so its upload steps land on different replicas too.
    let layout = work.path().join("layout");
    let img = mkimage(&layout, 64, "v1", 7);
    let dest = format!("docker://{}/alice/big:v1", lb.addr);
    let skopeo_log = work.path().join("skopeo.log");
    let log = std::fs::File::create(&skopeo_log).unwrap();
    let mut push = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--retry-times",
            "5",
            "--preserve-digests",
        ])
        .args(["--dest-cert-dir", cert_dir.to_str().unwrap()])
        .args(["--dest-creds", "alice:alice-pw"])
        .arg(img.oci_ref())
        .arg(&dest)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start skopeo");
    // The replica taking the layer is found by the CPU it burns (TLS and forwarding
    // of 64 MiB; its access line comes only at the request's end): the first to run
    // 8 ms since the push began, against well under that for small requests.
    let cpu0: Vec<u64> = replicas.iter().map(|p| cpu_ns(p.pid())).collect();
    let started = Instant::now();
    let victim = loop {
        if let Some(i) = (0..replicas.len())
            .find(|&i| cpu_ns(replicas[i].pid()).saturating_sub(cpu0[i]) > 8_000_000)
        {
            break i;
        }
        if let Ok(Some(st)) = push.try_wait() {
            panic!(
                "skopeo ended ({st}) before a replica took the layer:\n{}",
                std::fs::read_to_string(&skopeo_log).unwrap_or_default()
            );
        }
        assert!(
            started.elapsed() < STEP,
            "no replica took the layer within {STEP:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    signal(replicas[victim].pid(), "KILL");
    let status = wait_for(Duration::from_secs(240), || push.try_wait().ok().flatten());
    let mut push_log = std::fs::read_to_string(&skopeo_log).unwrap_or_default();
    let Some(status) = status else {
        let _ = push.kill();
        let _ = push.wait();
        panic!("skopeo did not finish within 240 s:\n{push_log}");
    };
    // The kill broke the layer's transfer: the victim never finished a request of it.
    assert!(
        hits(
            &replicas[victim],
            &["/v2/alice/big/blobs/uploads/", "method=PATCH"]
        )
        .is_empty(),
        "replica {victim} was killed after the layer's PATCH, not during it"
    );
    // skopeo 1.9's --retry-times does not take a connection closed in the middle of a
    // PATCH for a retryable error (Go's net.ErrClosed): its run fails, and the client's
    // retry is running it again, as a CI job does; the balancer has taken the dead
    // replica out by then.
    if !status.success() {
        assert!(
            push_log.contains("writing blob") && push_log.contains("Patch"),
            "skopeo copy {dest} failed otherwise than in the layer's PATCH: {status}\n{push_log}"
        );
        let again = skopeo(&[
            "--insecure-policy",
            "copy",
            "--retry-times",
            "5",
            "--preserve-digests",
            "--dest-cert-dir",
            cert_dir.to_str().unwrap(),
            "--dest-creds",
            "alice:alice-pw",
            &img.oci_ref(),
            &dest,
        ]);
        push_log.push_str(&format!(
            "\n-- retry --\n{}{}",
            text(&again.stdout),
            text(&again.stderr)
        ));
        assert!(
            again.status.success(),
            "the retried push failed:\n{push_log}\nhaproxy:\n{}",
            lb.logs()
        );
    }
    // A surviving replica finished the layer's upload.
    let finished_by = served_by(
        &replicas,
        &["/v2/alice/big/blobs/uploads/", "method=PUT", "status=201"],
    );
    assert!(
        finished_by.iter().any(|&i| i != victim),
        "no surviving replica finished an upload of alice/big (victim {victim}, finished by {finished_by:?})\n{push_log}"
    );
    let direct = call(&reg.url, None, "HEAD", "/v2/alice/big/manifests/v1")
        .header(&format!(
            "Accept: {}",
            "application/vnd.oci.image.manifest.v1+json"
        ))
        .send();
    assert_eq!(direct.status, 200, "the registry has no alice/big:v1");

    // A pull through the balancer (two replicas left) gives the same bytes.
    let pulled = work.path().join("pulled");
    let out = skopeo(&[
        "--insecure-policy",
        "copy",
        "--retry-times",
        "3",
        "--preserve-digests",
        "--src-cert-dir",
        cert_dir.to_str().unwrap(),
        "--src-creds",
        "alice:alice-pw",
        &dest,
        &format!("oci:{}:v1", pulled.display()),
    ]);
    ok(&out, "skopeo pull through haproxy");
    assert_eq!(
        sha256_file(&blob_file(&pulled, &img.layer_digest)),
        img.layer_digest
    );

    // Every replica saw the client (127.0.0.1), never the balancer's address.
    for (i, p) in replicas.iter().enumerate() {
        let lines = access_lines(p);
        assert!(!lines.is_empty(), "replica {i} logged nothing");
        for l in &lines {
            assert!(
                l.contains("client=127.0.0.1 ") && !l.contains(LB_SOURCE),
                "replica {i}: {l}"
            );
        }
    }

    // Each replica's audit chain verifies on its own, given together; show merges them.
    for (i, p) in replicas.iter_mut().enumerate() {
        if i != victim {
            assert!(
                p.terminate(Duration::from_secs(15)).is_some(),
                "replica {i} did not stop"
            );
        }
    }
    let files: Vec<&str> = audits.iter().map(|a| a.to_str().unwrap()).collect();
    let mut args = vec!["audit", "verify", "--key-file", audit_key.to_str().unwrap()];
    args.extend(&files);
    let (code, report) = cli(&args);
    assert_eq!(code, 0, "{report}");
    for i in 1..=3 {
        assert!(report.contains(&format!("instance rg-{i} (")), "{report}");
    }
    assert!(
        report.contains("replicas: 3, every chain intact"),
        "{report}"
    );
    let mut args = vec!["audit", "show"];
    args.extend(&files);
    let (code, table) = cli(&args);
    assert_eq!(code, 0, "{table}");
    let mut rows = table.lines();
    let header: Vec<&str> = rows.next().unwrap().split_whitespace().collect();
    assert_eq!(&header[..3], ["TIME", "INSTANCE", "PHASE"], "{table}");
    let rows: Vec<Vec<&str>> = rows.map(|r| r.split_whitespace().collect()).collect();
    let mut times: Vec<&str> = rows.iter().map(|r| r[0]).collect();
    let in_order = times.clone();
    times.sort();
    assert_eq!(times, in_order, "merged by time:\n{table}");
    for i in 1..=3 {
        let name = format!("rg-{i}");
        assert!(
            rows.iter().any(|r| r[1] == name && r[2] == "denied"),
            "no denied record of {name}:\n{table}"
        );
    }
    assert!(
        rows.iter()
            .any(|r| r[2] == "outcome" && r.contains(&"alice/big")),
        "the manifest push is audited:\n{table}"
    );
    eprintln!(
        "upload moved across replicas {upload_replicas:?}; killed replica {victim}; layer finished by {finished_by:?}"
    );
}
