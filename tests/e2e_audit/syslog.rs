//! The syslog sink (issue 13, point 2) against Debian's rsyslog, started by the test as
//! its own process (`rsyslogd -n -f CONF -i PIDFILE`: imtcp on an ephemeral loopback
//! port, omfile into a temporary folder, the ossl stream driver for TLS), in front of the
//! real registry: the records the file holds arrive byte for byte, over TCP and over
//! TLS; a collector that is down blocks no request, its drops are counted, and once it
//! is up the records that waited arrive.

use super::*;
use common::metrics::scrape;
use std::process::{Child, Stdio};

/// An rsyslogd of the test's own, stopped (by its pid) when dropped.
struct Rsyslog {
    child: Child,
    out: PathBuf,
    port: u16,
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// TLS material for the collector: a CA, and a certificate it signed for `localhost`.
struct CollectorTls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn collector_tls(dir: &Path) -> CollectorTls {
    let p = |n: &str| dir.join(n);
    let openssl = |args: &[&str]| {
        let out = run(Command::new("openssl").current_dir(dir).args(args), STEP);
        ok(&out, &format!("openssl {args:?}"));
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test collector CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "collector.key",
        "-out",
        "collector.csr",
    ]);
    std::fs::write(
        p("ext.cnf"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "collector.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
        "-out",
        "collector.pem",
    ]);
    CollectorTls {
        ca: p("ca.pem"),
        cert: p("collector.pem"),
        key: p("collector.key"),
    }
}

impl Rsyslog {
    /// Listens on `port` (0: a free one) on 127.0.0.1, TLS with `tls`; every message's
    /// MSG part (the record) one line in `dir/received.log`.
    fn start(dir: &Path, port: u16, tls: Option<&CollectorTls>) -> Rsyslog {
        assert!(have("rsyslogd"), "rsyslogd is not installed");
        let port = if port == 0 { free_port() } else { port };
        let work = dir.join(format!("rsyslog-{port}"));
        std::fs::create_dir_all(&work).unwrap();
        let out = dir.join("received.log");
        let (global, module) = match tls {
            None => (String::new(), "module(load=\"imtcp\")".to_owned()),
            Some(t) => (
                format!(
                    " defaultNetstreamDriver=\"ossl\" defaultNetstreamDriverCAFile=\"{a}\" defaultNetstreamDriverCertFile=\"{c}\" defaultNetstreamDriverKeyFile=\"{k}\"",
                    a = t.ca.display(),
                    c = t.cert.display(),
                    k = t.key.display()
                ),
                "module(load=\"imtcp\" streamDriver.name=\"ossl\" streamDriver.mode=\"1\" streamDriver.authMode=\"anon\")".to_owned(),
            ),
        };
        let conf = work.join("rsyslog.conf");
        std::fs::write(
            &conf,
            format!(
                "global(workDirectory=\"{w}\"{global})\n{module}\ninput(type=\"imtcp\" port=\"{port}\" address=\"127.0.0.1\")\ntemplate(name=\"raw\" type=\"string\" string=\"%msg%\\n\")\n*.* action(type=\"omfile\" file=\"{o}\" template=\"raw\")\n",
                w = work.display(),
                o = out.display()
            ),
        )
        .unwrap();
        let child = Command::new("rsyslogd")
            .arg("-n")
            .arg("-f")
            .arg(&conf)
            .arg("-i")
            .arg(work.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rsyslogd");
        let mut r = Rsyslog { child, out, port };
        let up = wait_for(Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        assert!(up.is_some(), "rsyslogd did not listen on {port}");
        assert!(r.child.try_wait().unwrap().is_none(), "rsyslogd exited");
        r
    }

    fn received(&self) -> Vec<String> {
        lines_of(&self.out)
    }
}

/// Waits until the collector has received as many records as `audit` holds, and
/// returns both.
fn arrived(collector: &Rsyslog, audit: &Path, proxy: &Proxy) -> (Vec<String>, Vec<String>) {
    let file = lines_of(audit);
    let got = wait_for(Duration::from_secs(40), || {
        let got = collector.received();
        (got.len() >= file.len()).then_some(got)
    })
    .unwrap_or_else(|| {
        panic!(
            "the collector has {} of {} records; the proxy's log:\n{}",
            collector.received().len(),
            file.len(),
            proxy.logs()
        )
    });
    (file, got)
}

/// Pulls (curl, by tag), a failed login and a delete, through a proxy sending to
/// rsyslog over TCP, then over TLS (the collector's certificate checked against its CA
/// and the name `localhost`): rsyslog writes exactly the records of the file, in order.
#[test]
fn records_reach_rsyslog_over_tcp_and_tls() {
    let Some(reg) = tools() else { return };
    for tls in [false, true] {
        let work = tempfile::tempdir().unwrap();
        let cert = tls.then(|| collector_tls(work.path()));
        let collector = Rsyslog::start(work.path(), 0, cert.as_ref());
        let audit = work.path().join("audit.jsonl");
        let sink = match &cert {
            None => format!("  syslog:\n    address: 127.0.0.1:{}\n", collector.port),
            Some(t) => format!(
                "  syslog:\n    address: 127.0.0.1:{}\n    tls: true\n    ca_file: {}\n    server_name: localhost\n    facility: local3\n",
                collector.port,
                t.ca.display()
            ),
        };
        let proxy = start_proxy(&reg, &audit, &format!("  events: [pull, login]\n{sink}"));
        let img = mkimage(&work.path().join("img"), 0, "one", 1);
        push_direct(&reg, &img, "alice/sys:v1");
        let url = format!("{}/v2/alice/sys/manifests/v1", proxy.base);
        let accept = format!("Accept: {ACCEPT}");
        for _ in 0..3 {
            assert_eq!(
                pcurl(&proxy, &["-u", "alice:pw", "-H", &accept, &url]).status,
                200
            );
        }
        assert_eq!(pcurl(&proxy, &["-u", "alice:nope", &url]).status, 401);
        assert_eq!(
            delete(&proxy, "alice:pw", "alice/sys", &img.manifest_digest).status,
            202
        );
        let (file, got) = arrived(&collector, &audit, &proxy);
        assert_eq!(file.len(), 7, "{file:#?}"); // login, 3 pulls, failed login, intent, outcome
        assert_eq!(got, file, "tls={tls}");
        drop(proxy);
    }
}

/// The collector's port has nobody listening: pulls and deletes answer as ever (the
/// file has every record), the records beyond the buffer (`buffer: 3`) are dropped and
/// counted, and the proxy is not connected. Then rsyslog starts on that port: the
/// sender reconnects (backoff) and the records that waited, and later ones, arrive.
#[test]
fn a_collector_that_is_down_blocks_nothing_and_drops_are_counted() {
    let Some(reg) = tools() else { return };
    let work = tempfile::tempdir().unwrap();
    let audit = work.path().join("audit.jsonl");
    let port = free_port();
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let proxy = proxy_for(
        &reg.url,
        &audit,
        &format!("  events: [pull]\n  syslog:\n    address: 127.0.0.1:{port}\n    buffer: 3\n"),
        &format!("metrics:\n  listen: {metrics}\n"),
    );
    let img = mkimage(&work.path().join("img"), 0, "one", 1);
    push_direct(&reg, &img, "alice/down:v1");
    let digests = put_variants(&reg, &img, "alice/down", 2);
    let url = format!("{}/v2/alice/down/manifests/v1", proxy.base);
    let accept = format!("Accept: {ACCEPT}");
    for _ in 0..10 {
        assert_eq!(
            pcurl(&proxy, &["-u", "alice:pw", "-H", &accept, &url]).status,
            200
        );
    }
    for d in &digests {
        assert_eq!(delete(&proxy, "alice:pw", "alice/down", d).status, 202);
    }
    let written = lines_of(&audit).len() as u64;
    assert_eq!(written, 14);
    let m = scrape(metrics);
    let dropped = m.get("registry_guard_audit_syslog_dropped_total");
    assert!(
        (written - 3..=written).contains(&dropped),
        "{dropped} of {written} dropped with a buffer of 3"
    );
    assert_eq!(m.get("registry_guard_audit_syslog_sent_total"), 0);
    assert_eq!(m.get("registry_guard_audit_syslog_connected"), 0);
    let (code, report) = verify(&[&audit]);
    assert_eq!(code, 0, "{report}");

    // The collector comes up: what waited in the buffer arrives (after the backoff),
    // and so do the records after it.
    let collector = Rsyslog::start(work.path(), port, None);
    let buffered = written - dropped;
    wait_for(Duration::from_secs(40), || {
        (collector.received().len() as u64 == buffered).then_some(())
    })
    .unwrap_or_else(|| panic!("{:?} of {buffered} buffered arrived", collector.received()));
    assert_eq!(
        pcurl(&proxy, &["-u", "alice:pw", "-H", &accept, &url]).status,
        200
    );
    let file = lines_of(&audit);
    let last = file.last().unwrap().clone();
    let got = wait_for(Duration::from_secs(20), || {
        let got = collector.received();
        got.contains(&last).then_some(got)
    })
    .unwrap_or_else(|| panic!("the last record never arrived: {:?}", collector.received()));
    // Every record that arrived is one of the file's, in the file's order.
    let at: Vec<usize> = got
        .iter()
        .map(|l| {
            file.iter()
                .position(|f| f == l)
                .expect("a record not in the file")
        })
        .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{at:?}");
    assert_eq!(got.len() as u64, written + 1 - dropped, "{at:?}");
    let m = scrape(metrics);
    assert_eq!(m.get("registry_guard_audit_syslog_connected"), 1);
    assert_eq!(
        m.get("registry_guard_audit_syslog_sent_total"),
        got.len() as u64
    );
}
