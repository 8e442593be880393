//! The series a few real requests leave behind, with their labels and counts, and the
//! names of the earlier counters unchanged beside them.
use super::*;
use common::client::tls_connect;
use common::metrics::scrape_async;
use std::io::{Read, Write};

/// Every `<name>_count{...} N` of a histogram, summed.
fn histogram_total(text: &str, name: &str) -> u64 {
    let prefix = format!("{name}_count{{");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn req(route: &str, method: &str, status: &str) -> String {
    format!(
        "registry_guard_request_duration_seconds_count{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}}"
    )
}

#[test]
fn requests_logins_uploads_and_deletes_are_counted_with_their_labels() {
    let Some(s) = start("") else { return };
    let (base, ca) = (s.proxy.base.as_str(), Some(s.proxy.ca.as_path()));
    let as_alice = |method: &'static str, path: &str| {
        call(base, ca, method, path).user(ALICE.0, ALICE.1).send()
    };
    // Logins: argon2 once, then the cache; a wrong password; an unknown user.
    assert_eq!(as_alice("GET", "/v2/").status, 200);
    assert_eq!(as_alice("GET", "/v2/").status, 200);
    let wrong = call(base, ca, "GET", "/v2/").user("alice", "nope").send();
    assert_eq!(wrong.status, 401);
    let unknown = call(base, ca, "GET", "/v2/").user("mallory", "x").send();
    assert_eq!(unknown.status, 401);
    // Forwarded: an unknown manifest (the registry's 404), an upload, an audited delete.
    assert_eq!(
        as_alice("GET", "/v2/alice/app/manifests/latest").status,
        404
    );
    let start = as_alice("POST", "/v2/alice/app/blobs/uploads/");
    assert_eq!(start.status, 202, "{}", start.describe());
    let location = start.header("location").unwrap().to_owned();
    let path = location.strip_prefix(base).unwrap_or(&location).to_owned();
    let blob = "a blob for the metrics\n".repeat(100);
    let digest = common::e2e::sha256_digest(blob.as_bytes());
    let sep = if path.contains('?') { '&' } else { '?' };
    let put = call(base, ca, "PUT", &format!("{path}{sep}digest={digest}"))
        .user(ALICE.0, ALICE.1)
        .header("Content-Type: application/octet-stream")
        .body(&blob)
        .send();
    assert_eq!(put.status, 201, "{}", put.describe());
    let del = as_alice("DELETE", &format!("/v2/alice/app/blobs/{digest}"));
    assert_eq!(del.status, 202, "{}", del.describe());
    // Not a route.
    assert_eq!(as_alice("GET", "/healthz").status, 404);
    // Plain HTTP on the TLS port: a failed handshake.
    let mut tcp = std::net::TcpStream::connect(s.proxy.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = tcp.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    // Connections end (and their requests with them) shortly after curl exits.
    let m = wait_for(Duration::from_secs(10), || {
        let m = scrape(s.metrics);
        (m.get("registry_guard_requests_in_flight") == 0
            && m.get("registry_guard_connections_open{protocol=\"h1\"}") == 0
            && m.get("registry_guard_connections_open{protocol=\"h2\"}") == 0)
            .then_some(m)
    })
    .expect("requests and connections end");
    let text = &m.text;

    assert_eq!(m.get(&req("base", "GET", "2xx")), 2, "{text}");
    assert_eq!(m.get(&req("base", "GET", "4xx")), 2, "{text}");
    assert_eq!(m.get(&req("manifest", "GET", "4xx")), 1, "{text}");
    assert_eq!(m.get(&req("upload_start", "POST", "2xx")), 1, "{text}");
    assert_eq!(m.get(&req("upload", "PUT", "2xx")), 1, "{text}");
    assert_eq!(m.get(&req("blob", "DELETE", "2xx")), 1, "{text}");
    assert_eq!(m.get(&req("none", "GET", "4xx")), 1, "{text}");
    // Every request counted is in the histogram, once.
    assert_eq!(m.get("registry_guard_requests_total"), 9, "{text}");
    assert_eq!(
        histogram_total(text, "registry_guard_request_duration_seconds"),
        9,
        "{text}"
    );
    // Bucket lines carry the same labels plus `le`, the last one +Inf.
    assert!(text.contains(
        "registry_guard_request_duration_seconds_bucket{route=\"manifest\",method=\"GET\",status=\"4xx\",le=\"+Inf\"} 1\n"
    ));

    // `/v2/` with credentials is forwarded (the registry's own answer goes back).
    let upstream = |r: &str| {
        m.get(&format!(
            "registry_guard_upstream_response_seconds_count{{route=\"{r}\"}}"
        ))
    };
    assert_eq!(upstream("base"), 2, "{text}");
    for route in ["manifest", "upload_start", "upload"] {
        assert_eq!(upstream(route), 1, "{text}");
    }
    assert_eq!(upstream("blob"), 1, "{text}");

    let auth = |r: &str| {
        m.get(&format!(
            "registry_guard_auth_results_total{{result=\"{r}\"}}"
        ))
    };
    assert_eq!(auth("ok"), 1, "{text}");
    assert_eq!(auth("cached"), 5, "{text}");
    assert_eq!(auth("wrong"), 1, "{text}");
    assert_eq!(auth("unknown"), 1, "{text}");
    assert_eq!(auth("throttled"), 0, "{text}");
    assert_eq!(auth("malformed"), 0, "{text}");
    // The earlier counters, by their unchanged names.
    assert_eq!(m.get("registry_guard_auth_cache_hits_total"), 5, "{text}");
    assert_eq!(m.get("registry_guard_auth_failures_total"), 2, "{text}");
    assert_eq!(m.get("registry_guard_auth_argon2_runs_total"), 3, "{text}");
    assert_eq!(m.get("registry_guard_refused_total"), 3, "{text}");
    // Sampled when scraped.
    assert_eq!(m.get("registry_guard_auth_cache_entries"), 1, "{text}");
    assert_eq!(m.get("registry_guard_auth_argon2_queue"), 0, "{text}");

    assert_eq!(
        m.get("registry_guard_received_bytes_total"),
        blob.len() as u64,
        "{text}"
    );
    assert!(m.get("registry_guard_sent_bytes_total") > 0, "{text}");
    assert_eq!(
        m.get("registry_guard_tls_handshake_failures_total{reason=\"plain_http\"}"),
        1,
        "{text}"
    );

    assert_eq!(
        m.get("registry_guard_audit_records_by_phase_total{phase=\"intent\",outcome=\"none\"}"),
        1,
        "{text}"
    );
    assert_eq!(
        m.get("registry_guard_audit_records_by_phase_total{phase=\"outcome\",outcome=\"deleted\"}"),
        1,
        "{text}"
    );
    assert!(
        m.get("registry_guard_audit_write_seconds_count") >= 2,
        "{text}"
    );
    assert!(m.get("registry_guard_audit_records_total") >= 2, "{text}");
    assert_eq!(
        m.get(&format!(
            "registry_guard_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        1
    );

    // Every series the shipped dashboard queries is one this proxy renders.
    let dashboard = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/registry-guard.json"),
    )
    .unwrap();
    let mut names: Vec<&str> = dashboard
        .match_indices("registry_guard_")
        .map(|(i, _)| {
            let rest = &dashboard[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    assert!(names.len() >= 20, "{names:?}");
    for name in names {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "the dashboard reads {name}, which is not rendered:\n{text}"
        );
    }
}

/// A connection is counted under the protocol ALPN chose, from its handshake to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_are_counted_by_protocol() {
    let Some(s) = start("") else { return };
    let open = |text: &str, p: &str| {
        common::metrics::Metrics {
            text: text.to_owned(),
        }
        .get(&format!(
            "registry_guard_connections_open{{protocol=\"{p}\"}}"
        ))
    };
    let h2 = tls_connect(&s.proxy, &[b"h2"]).await;
    let h1 = tls_connect(&s.proxy, &[b"http/1.1"]).await;
    let mut seen = (0, 0);
    for _ in 0..50 {
        let m = scrape_async(s.metrics).await;
        seen = (open(&m.text, "h1"), open(&m.text, "h2"));
        if seen == (1, 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, (1, 1));
    drop((h1, h2));
    for _ in 0..50 {
        let m = scrape_async(s.metrics).await;
        seen = (open(&m.text, "h1"), open(&m.text, "h2"));
        if seen == (0, 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, (0, 0));
}
