//! Helpers shared by `tests/access.rs` and `tests/e2e_access.rs`: curl with the status,
//! headers and body parsed, and external programs run with a time bound.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A response as curl received it.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    /// Headers of the final response, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub elapsed: Duration,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.all(name).into_iter().next()
    }
    pub fn all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.text()))
    }
    /// The single registry error code of a JSON error body.
    pub fn error_code(&self) -> String {
        let v = self.json();
        let errors = v["errors"].as_array().expect("errors array");
        assert_eq!(errors.len(), 1, "{v}");
        errors[0]["code"].as_str().unwrap_or_default().to_owned()
    }
    /// One line for assertion messages.
    pub fn describe(&self) -> String {
        format!("{} {:?} {}", self.status, self.headers, self.text())
    }
    /// Asserts a refusal made by the proxy: `status`, registry JSON `code`, the API
    /// version header, and a challenge exactly when the status is 401.
    pub fn assert_refusal(&self, status: u16, code: &str, what: &str) {
        assert_eq!(self.status, status, "{what}: {}", self.describe());
        assert_eq!(
            self.header("docker-distribution-api-version"),
            Some("registry/2.0"),
            "{what}: {}",
            self.describe()
        );
        assert_eq!(
            self.header("content-type"),
            Some("application/json; charset=utf-8"),
            "{what}: {}",
            self.describe()
        );
        if status == 401 {
            assert_eq!(
                self.all("www-authenticate"),
                ["Basic realm=\"registry-guard\""],
                "{what}: {}",
                self.describe()
            );
        } else {
            assert!(
                self.all("www-authenticate").is_empty(),
                "{what}: a {status} must not carry a challenge: {}",
                self.describe()
            );
        }
        if !self.body.is_empty() {
            assert_eq!(self.error_code(), code, "{what}: {}", self.describe());
            assert!(self.json()["errors"][0]["detail"].is_null(), "{what}");
        }
    }
}

/// A request made with curl.
pub struct Call<'a> {
    base: &'a str,
    ca: Option<&'a Path>,
    method: &'a str,
    path: &'a str,
    auth: Option<(&'a str, &'a str)>,
    args: Vec<String>,
}

/// `curl` to `base` (`https://...` with `ca`, or plain `http://...`).
pub fn call<'a>(base: &'a str, ca: Option<&'a Path>, method: &'a str, path: &'a str) -> Call<'a> {
    Call {
        base,
        ca,
        method,
        path,
        auth: None,
        args: Vec::new(),
    }
}

impl<'a> Call<'a> {
    pub fn user(mut self, name: &'a str, password: &'a str) -> Self {
        self.auth = Some((name, password));
        self
    }
    pub fn auth(mut self, auth: Option<(&'a str, &'a str)>) -> Self {
        self.auth = auth;
        self
    }
    pub fn header(mut self, h: &str) -> Self {
        self.args.push("-H".into());
        self.args.push(h.into());
        self
    }
    /// A body sent as is (`--data-binary`); give a Content-Type header too, or curl
    /// says application/x-www-form-urlencoded.
    ///
    /// Sent over HTTP/1.1: refused before its body was read, an HTTP/2 request gets the
    /// refusal followed by RST_STREAM(NO_ERROR) (RFC 9113 section 8.1), and curl 7.88
    /// often reports that as error 92 instead of the response when the reset arrives
    /// before it sent the body.
    pub fn body(mut self, b: &str) -> Self {
        self.args.push("--http1.1".into());
        self.args.push("--data-binary".into());
        self.args.push(b.into());
        self
    }
    pub fn send(self) -> Resp {
        let dir = tempfile::tempdir().unwrap();
        let (h, b) = (dir.path().join("h"), dir.path().join("b"));
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-g", "--path-as-is", "--max-time", "20", "-D"])
            .arg(&h)
            .arg("-o")
            .arg(&b);
        if let Some(ca) = self.ca {
            cmd.arg("--cacert").arg(ca);
        }
        if self.method == "HEAD" {
            cmd.arg("--head");
        } else {
            cmd.args(["-X", self.method]);
        }
        if let Some((u, p)) = self.auth {
            cmd.arg("-u").arg(format!("{u}:{p}"));
        }
        cmd.args(&self.args)
            .arg(format!("{}{}", self.base, self.path));
        let start = Instant::now();
        let out = cmd.output().expect("run curl");
        let elapsed = start.elapsed();
        let head = std::fs::read_to_string(&h).unwrap_or_default();
        // With interim responses (100 Continue) there are several header blocks.
        let block = head
            .split("\r\n\r\n")
            .filter(|b| !b.trim().is_empty())
            .last()
            .unwrap_or_else(|| {
                panic!(
                    "curl {} {}{}: no response: {}",
                    self.method,
                    self.base,
                    self.path,
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        let mut lines = block.lines();
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .expect("status line");
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let body = if self.method == "HEAD" {
            Vec::new()
        } else {
            std::fs::read(&b).unwrap_or_default()
        };
        Resp {
            status,
            headers,
            body,
            elapsed,
        }
    }
}

/// Runs `cmd` with stdout and stderr captured in files, killing it after `limit`.
/// Returns the output and whether it exited by itself.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> (Output, bool) {
    let dir = tempfile::tempdir().unwrap();
    let (o, e) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&o).unwrap())
        .stderr(std::fs::File::create(&e).unwrap())
        .spawn()
        .expect("spawn");
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if start.elapsed() > limit {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let exited = status.is_some();
    let status = match status {
        Some(s) => s,
        None => {
            let _ = child.kill();
            child.wait().unwrap()
        }
    };
    (
        Output {
            status,
            stdout: std::fs::read(&o).unwrap_or_default(),
            stderr: std::fs::read(&e).unwrap_or_default(),
        },
        exited,
    )
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// One request over HTTP/2 (ALPN h2) to a proxy with a self-signed CA, with header
/// values as raw bytes (curl normalises some; HTTP/2 carries them as given). Returns the
/// status and the body. Bounded by 20 s.
pub fn h2_request(
    addr: std::net::SocketAddr,
    ca: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
    body: &str,
) -> (u16, String) {
    use http_body_util::BodyExt;
    use rustls_pki_types::pem::PemObject;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let mut cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        let exchange = async {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
                .connect(
                    rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap(),
                    tcp,
                )
                .await
                .unwrap();
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
            let (mut sender, conn) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(tls),
            )
            .await
            .unwrap();
            tokio::spawn(conn);
            let mut req = http::Request::builder()
                .method(method)
                .uri(format!("https://{addr}{path}"));
            for (k, v) in headers {
                req = req.header(*k, http::HeaderValue::from_bytes(v).unwrap());
            }
            let req = req
                .body(http_body_util::Full::new(bytes::Bytes::from(
                    body.to_owned(),
                )))
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        };
        tokio::time::timeout(Duration::from_secs(20), exchange)
            .await
            .expect("HTTP/2 exchange within 20 s")
    })
}

/// Content-Type values Go's `mime.ParseMediaType` (and so distribution's `FormValue`)
/// reads as a form: it lowercases with Unicode rules (`İ` U+0130 becomes `i`), trims
/// Unicode white space (NBSP, NEL, EM SPACE, IDEOGRAPHIC SPACE) that HTTP carries as
/// obs-text bytes, and ignores parameters, broken or not.
pub const DISGUISED_FORM_TYPES: &[&[u8]] = &[
    b" application/x-www-form-urlencoded",
    b"\tapplication/x-www-form-urlencoded",
    b"Application/X-WWW-Form-Urlencoded",
    b"APPLICATION/X-WWW-FORM-URLENCODED; charset=utf-8",
    b"application/x-www-form-urlencoded;charset=\"broken",
    b"appl\xc4\xb0cation/x-www-form-urlencoded",
    b"APPL\xc4\xb0CATION/X-WWW-FORM-URLENCODED; charset=utf-8",
    b"\xc2\xa0application/x-www-form-urlencoded",
    b"\xc2\x85application/x-www-form-urlencoded ;charset=utf-8",
    b"application/x-www-form-urlencoded\xe3\x80\x80",
    b"\xe2\x80\x83multipart/form-data; boundary=x",
    b"MULTIPART/FORM-DATA; boundary=x",
];

/// Content-Type values that are not forms to Go but still not what a client sends on an
/// upload start: refused there all the same (only the exact values clients send pass).
pub const ODD_UPLOAD_START_TYPES: &[&[u8]] = &[
    b"text/plain",
    b"application/json; charset=utf-8",
    b"Application/Octet-Stream",
    b"application/octet-stream ",
    b"appl\xc4\xb1cation/x-www-form-urlencoded",
    b"",
];
