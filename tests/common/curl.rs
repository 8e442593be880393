//! curl with its answer parsed into one [`Resp`]: a request builder ([`call`]) for the
//! tests that name a method and a path, and [`curl_with`] for those that pass curl's own
//! arguments. Every run is bounded and killed by its pid past the bound.

use super::process::{ok, run_in, STEP};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A response as curl received it (the last header block: a `100 Continue` is skipped).
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
    pub fn request_id(&self) -> String {
        self.header("x-request-id")
            .unwrap_or_else(|| panic!("no x-request-id: {self:?}"))
            .to_owned()
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
    /// Sends the request; curl's own exit status is not checked (a response is).
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
        let out = run_in(&mut cmd, Stdio::null(), STEP);
        let elapsed = start.elapsed();
        let what = format!("curl {} {}{}", self.method, self.base, self.path);
        let mut resp = parse(&h, &b, &out, &what, elapsed);
        if self.method == "HEAD" {
            resp.body.clear();
        }
        resp
    }
}

/// Runs curl (`-sS`, `--max-time max_time_s`, bounded by [`STEP`], trusting `ca` if
/// given, with `stdin` (a file) on its standard input if given, for `--data-binary @-`),
/// asserts it succeeded and parses its answer. For HEAD use `-I` (the body is then not
/// meaningful).
pub fn curl_with(ca: Option<&Path>, max_time_s: u32, args: &[&str], stdin: Option<&Path>) -> Resp {
    let tmp = tempfile::tempdir().unwrap();
    let (head, body) = (tmp.path().join("head"), tmp.path().join("body"));
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", &max_time_s.to_string()]);
    if let Some(ca) = ca {
        cmd.arg("--cacert").arg(ca);
    }
    cmd.arg("-D").arg(&head).arg("-o").arg(&body).args(args);
    let stdin = match stdin {
        Some(f) => Stdio::from(std::fs::File::open(f).unwrap()),
        None => Stdio::null(),
    };
    let start = Instant::now();
    let out = run_in(&mut cmd, stdin, STEP);
    let elapsed = start.elapsed();
    let what = format!("curl {args:?}");
    ok(&out, &what);
    parse(&head, &body, &out, &what, elapsed)
}

/// The final response of curl's `-D` header file (with interim responses such as
/// `100 Continue` there are several header blocks) and its `-o` body file.
fn parse(head: &Path, body: &Path, out: &Output, what: &str, elapsed: Duration) -> Resp {
    let head = std::fs::read_to_string(head).unwrap_or_default();
    let blocks: Vec<&str> = head
        .split("\r\n\r\n")
        .map(str::trim)
        .filter(|b| b.starts_with("HTTP/"))
        .collect();
    let interim = |b: &&str| b.split(' ').nth(1).unwrap_or("").starts_with('1');
    let block = blocks
        .iter()
        .rfind(|b| !interim(b))
        .or(blocks.last())
        .unwrap_or_else(|| {
            panic!(
                "{what}: no response head in {head:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let mut lines = block.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{what}: bad status line in {block:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Resp {
        status,
        headers,
        body: std::fs::read(body).unwrap_or_default(),
        elapsed,
    }
}
