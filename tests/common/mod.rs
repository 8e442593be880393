//! The one test harness of the integration tests (`tests/<topic>/main.rs` include it with
//! `#[path = "../common/mod.rs"] mod common;`): real processes (the registry-guard binary,
//! Debian's docker-registry) on ephemeral loopback ports, each stopped by its PID when its
//! handle is dropped, the fake upstream, and the clients to talk to them.
//!
//! - this file: the processes ([`Proxy`] and its builder, [`Registry`]), users, waiting;
//! - [`fake`]: the fake upstream that records requests and answers from a script;
//! - [`client`]: hyper and raw TLS clients; [`curl`]: curl with its answer parsed;
//! - [`metrics`]: the metrics listener read; [`process`]: bounded external commands;
//! - [`e2e`]: skopeo, images made by `tests/e2e/mkimage.py`, digests.
//!
//! Real parts are required: when `RG_REQUIRE_REAL=1` or `CI=true` (scripts/test and
//! .ci/run set them) a missing docker-registry or skopeo fails the test instead of
//! skipping it.
// Every test binary compiles the whole harness and uses a part of it.
#![allow(dead_code)]

pub mod client;
pub mod curl;
pub mod e2e;
pub mod fake;
pub mod metrics;
pub mod process;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_registry-guard"))
}

fn required() -> bool {
    std::env::var("RG_REQUIRE_REAL").is_ok_and(|v| v == "1")
        || std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Whether an external program is on PATH. When it is missing and real parts are
/// required, this panics; otherwise the caller skips, saying so.
pub fn have(program: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(!required(), "{program} is required (RG_REQUIRE_REAL/CI) but not installed: run scripts/install-deps");
        eprintln!("SKIPPING: {program} is not installed (set RG_REQUIRE_REAL=1 to fail instead)");
    }
    found
}

/// A port that was free a moment ago (for programs that cannot report the port they got).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` every 50 ms until it returns Some or `limit` passes.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Status code of a plain-HTTP GET, or None if nothing answered.
pub fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let line = std::str::from_utf8(&buf[..n]).ok()?;
    line.split(' ').nth(1)?.parse().ok()
}

/// Sends a signal to a PID we started.
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

fn stop_child(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        signal(child.id(), "TERM");
        let gone = wait_for(Duration::from_secs(5), || child.try_wait().ok().flatten());
        if gone.is_none() {
            let _ = child.kill();
        }
    }
    let _ = child.wait();
}

/// Debian's docker-registry (CNCF distribution 2.8), filesystem storage in a temporary
/// folder, deletes enabled, on a free loopback port.
pub struct Registry {
    pub addr: SocketAddr,
    pub url: String,
    pub dir: tempfile::TempDir,
    child: Child,
}

impl Registry {
    /// None when docker-registry is missing and not required.
    pub fn start() -> Option<Registry> {
        Registry::start_with("")
    }

    /// The same with `auth: token` (distribution's token access controller): tokens
    /// from `realm`, for `service`, from `issuer`, signed by a key whose certificate
    /// (chain) verifies against the PEM bundle `root_cert_bundle`. `GET /v2/` then
    /// answers 401 with a Bearer challenge.
    pub fn start_token_auth(
        realm: &str,
        service: &str,
        issuer: &str,
        root_cert_bundle: &std::path::Path,
    ) -> Option<Registry> {
        Registry::start_with(&format!(
            "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n    rootcertbundle: {}\n",
            root_cert_bundle.display()
        ))
    }

    /// `extra`: further top-level YAML of the registry's config (an `auth:` section).
    fn start_with(extra: &str) -> Option<Registry> {
        if !have("docker-registry") {
            return None;
        }
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            let cfg = dir.path().join("config.yml");
            std::fs::write(
                &cfg,
                format!(
                    "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{extra}",
                    dir.path().join("data").display()
                ),
            )
            .unwrap();
            let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(&cfg)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start docker-registry");
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let up = wait_for(Duration::from_secs(15), || {
                if let Ok(Some(_)) = child.try_wait() {
                    return Some(false); // exited: port taken meanwhile, try another
                }
                // 401: up, with authentication (`auth: token`).
                matches!(http_status(addr, "/v2/"), Some(200 | 401)).then_some(true)
            });
            if up == Some(true) {
                return Some(Registry {
                    addr,
                    url: format!("http://{addr}"),
                    dir,
                    child,
                });
            }
            stop_child(&mut child);
        }
        panic!("docker-registry did not start on a free port in 5 tries");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// How the proxy under test terminates TLS.
pub enum TlsMode {
    SelfSigned,
    Plaintext,
    /// `tls.cert` and `tls.key` files (several proxies may share them), and the CA that
    /// signed the certificate, for clients.
    Files {
        cert: PathBuf,
        key: PathBuf,
        ca: PathBuf,
    },
}

/// The registry-guard binary, started with a config written to a temporary folder,
/// listening on 127.0.0.1:0 and reporting its address through `--addr-file`.
pub struct Proxy {
    pub addr: SocketAddr,
    /// `https://127.0.0.1:PORT` (or `http://` in plaintext mode).
    pub base: String,
    /// The self-signed CA to trust (self-signed mode).
    pub ca: PathBuf,
    /// A folder holding `ca.crt`, for skopeo's `--cert-dir`.
    pub cert_dir: PathBuf,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    child: Option<Child>,
}

/// A user of the proxy under test: name, password, groups.
pub struct TestUser {
    pub name: String,
    pub password: String,
    pub groups: Vec<String>,
}

pub fn user(name: &str, password: &str, groups: &[&str]) -> TestUser {
    TestUser {
        name: name.into(),
        password: password.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    }
}

/// `Basic base64(user:password)`.
pub fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// The user file for `users`, with cheap argon2id parameters (the code path is the
/// same; tests stay fast).
pub fn users_yaml(users: &[TestUser]) -> String {
    let mut y = String::from("users:\n");
    for u in users {
        let hash = registry_guard::auth::users::hash_password(&u.password, 1024, 1, 1).unwrap();
        y.push_str(&format!("  - name: {:?}\n    hash: '{hash}'\n", u.name));
        if !u.groups.is_empty() {
            y.push_str(&format!("    groups: {:?}\n", u.groups));
        }
    }
    y
}

pub struct ProxyBuilder {
    users: Vec<TestUser>,
    users_file: Option<String>,
    auth_extra: String,
    access: Option<String>,
    upstream: String,
    tls: TlsMode,
    extra: String,
    server_extra: String,
    upstream_extra: String,
    response_header_timeout: String,
    env: Vec<(String, String)>,
}

impl ProxyBuilder {
    /// Turns authentication on with these users (default: `auth.disabled: true`).
    pub fn users(mut self, users: Vec<TestUser>) -> Self {
        self.users = users;
        self
    }
    /// The user file verbatim (turns authentication on; replaces what `users` would write),
    /// e.g. [`users_yaml`] with a `disabled: true` line added.
    pub fn users_file_yaml(mut self, yaml: &str) -> Self {
        self.users_file = Some(yaml.to_owned());
        self
    }
    /// Extra keys under `auth:` (two-space indented).
    pub fn auth_yaml(mut self, yaml: &str) -> Self {
        self.auth_extra.push_str(yaml);
        self
    }
    /// The body of the `access:` section (two-space indented). Default with users: every
    /// user may do everything (`**`).
    pub fn access_yaml(mut self, yaml: &str) -> Self {
        self.access = Some(yaml.to_owned());
        self
    }
    pub fn tls(mut self, tls: TlsMode) -> Self {
        self.tls = tls;
        self
    }
    /// Extra top-level YAML (e.g. a `limits:` section).
    pub fn extra_yaml(mut self, yaml: &str) -> Self {
        self.extra.push_str(yaml);
        self
    }
    /// Extra keys under `server:`, each line indented by two spaces
    /// (e.g. `"  public_url: https://registry.example\n"`).
    pub fn server_yaml(mut self, yaml: &str) -> Self {
        self.server_extra.push_str(yaml);
        self
    }
    /// Extra keys under `upstream:`, each line indented by two spaces (e.g. a
    /// `credentials:` block). `response_header_timeout` has its own method.
    pub fn upstream_yaml(mut self, yaml: &str) -> Self {
        self.upstream_extra.push_str(yaml);
        self
    }
    /// `upstream.response_header_timeout` (default `5s`).
    pub fn response_header_timeout(mut self, d: &str) -> Self {
        self.response_header_timeout = d.to_owned();
        self
    }
    /// An environment variable for the proxy process.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    pub fn start(self) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let tls = match &self.tls {
            TlsMode::SelfSigned => {
                format!("  tls:\n    self_signed:\n      ca_out: {}\n", ca.display())
            }
            TlsMode::Plaintext => "  plaintext: true\n".to_owned(),
            TlsMode::Files {
                cert,
                key,
                ca: from,
            } => {
                std::fs::copy(from, &ca).unwrap();
                format!(
                    "  tls:\n    cert: {}\n    key: {}\n",
                    cert.display(),
                    key.display()
                )
            }
        };
        let auth = if self.users.is_empty() && self.access.is_none() && self.users_file.is_none() {
            "auth:\n  disabled: true\n".to_owned()
        } else {
            let users_file = dir.path().join("users.yaml");
            let text = match &self.users_file {
                Some(t) => t.clone(),
                None => users_yaml(&self.users),
            };
            std::fs::write(&users_file, text).unwrap();
            let access = self.access.clone().unwrap_or_else(|| {
                "  rules:\n    - repos: ['**']\n      users: ['*']\n      actions: [pull, push, delete]\n".to_owned()
            });
            format!(
                "auth:\n  users_file: {}\n{}access:\n{access}",
                users_file.display(),
                self.auth_extra
            )
        };
        let yaml = format!(
            "server:\n  listen: 127.0.0.1:0\n{tls}{}upstream:\n  url: {}\n  connect_timeout: 2s\n  response_header_timeout: {}\n{}{auth}{}",
            self.server_extra,
            self.upstream,
            self.response_header_timeout,
            self.upstream_extra,
            self.extra
        );
        Proxy::start_config(
            dir,
            &yaml,
            &self.env,
            !matches!(self.tls, TlsMode::Plaintext),
        )
    }
}

impl Proxy {
    pub fn builder(upstream: &str) -> ProxyBuilder {
        ProxyBuilder {
            users: Vec::new(),
            users_file: None,
            auth_extra: String::new(),
            access: None,
            upstream: upstream.to_owned(),
            tls: TlsMode::SelfSigned,
            extra: String::new(),
            server_extra: String::new(),
            upstream_extra: String::new(),
            response_header_timeout: "5s".to_owned(),
            env: Vec::new(),
        }
    }

    /// Self-signed TLS in front of `upstream`, default limits.
    pub fn start(upstream: &str) -> Proxy {
        Proxy::builder(upstream).start()
    }

    fn start_config(
        dir: tempfile::TempDir,
        yaml: &str,
        env: &[(String, String)],
        tls: bool,
    ) -> Proxy {
        let config_path = dir.path().join("registry-guard.yaml");
        std::fs::write(&config_path, yaml).unwrap();
        let addr_file = dir.path().join("addr");
        let log = std::fs::File::create(dir.path().join("proxy.log")).unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .arg("--addr-file")
            .arg(&addr_file)
            .env(
                "RUST_LOG",
                std::env::var("RG_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start registry-guard");
        let addr = wait_for(Duration::from_secs(15), || {
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "registry-guard exited ({st}) at start:\n{}",
                    std::fs::read_to_string(dir.path().join("proxy.log")).unwrap_or_default()
                );
            }
            std::fs::read_to_string(&addr_file)
                .ok()?
                .trim()
                .parse::<SocketAddr>()
                .ok()
        })
        .expect("registry-guard did not report its address within 15 s");
        let ca = dir.path().join("ca.pem");
        let cert_dir = dir.path().join("certs.d");
        if tls {
            std::fs::create_dir_all(&cert_dir).unwrap();
            std::fs::copy(&ca, cert_dir.join("ca.crt")).unwrap();
        }
        Proxy {
            addr,
            base: format!("{}://{addr}", if tls { "https" } else { "http" }),
            ca,
            cert_dir,
            config_path,
            dir,
            child: Some(child),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The user file the proxy reads (with authentication on).
    pub fn users_file(&self) -> PathBuf {
        self.dir.path().join("users.yaml")
    }

    /// Everything the proxy logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("proxy.log")).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit; returns whether it exited by itself in `limit`.
    pub fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        signal(child.id(), "TERM");
        let st = wait_for(limit, || child.try_wait().ok().flatten());
        if st.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.child = None;
        st
    }

    /// `curl` against the proxy, trusting its CA; returns (status code, body).
    pub fn curl(&self, args: &[&str]) -> std::process::Output {
        Command::new("curl")
            .arg("-sS")
            .arg("--max-time")
            .arg("60")
            .arg("--cacert")
            .arg(&self.ca)
            .args(args)
            .output()
            .expect("run curl")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            stop_child(c);
        }
    }
}

/// Kibibytes of a `/proc/<pid>/status` field such as `VmHWM` (peak RSS) or `VmRSS`.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}
