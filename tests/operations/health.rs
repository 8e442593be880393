//! `/healthz` (the process serves) and `/readyz` (upstream, audit, users), on the metrics
//! listener only.
use super::*;

#[test]
fn healthz_and_readyz_answer_200_when_all_is_well() {
    let Some(s) = start("") else { return };
    let (status, body) = http_get(s.metrics, "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, json) = readyz(s.metrics);
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["ready"], true, "{json}");
    assert_eq!(json["failing"], serde_json::json!([]), "{json}");
    // distribution without auth answers /v2/ with 200.
    assert_eq!(json["checks"]["upstream"]["ok"], true, "{json}");
    assert_eq!(
        json["checks"]["upstream"]["detail"], "GET /v2/ answered 200",
        "{json}"
    );
    assert_eq!(json["checks"]["audit"]["ok"], true, "{json}");
    assert_eq!(
        json["checks"]["users"]["detail"], "1 users loaded",
        "{json}"
    );
    // The earlier name answers the same.
    assert_eq!(http_get(s.metrics, "/ready").0, 200);
}

#[test]
fn readyz_names_the_upstream_once_the_registry_is_gone() {
    let Some(s) = start("") else { return };
    assert_eq!(readyz(s.metrics).0, 200);
    signal(s.reg.pid(), "KILL");
    // The probe's result is reused for 1 s; a refused connection fails at once.
    let (status, json) = readyz_until(s.metrics, 503, Duration::from_secs(10));
    assert_eq!(status, 503, "{json}");
    assert_eq!(json["ready"], false, "{json}");
    assert_eq!(json["failing"], serde_json::json!(["upstream"]), "{json}");
    assert_eq!(json["checks"]["upstream"]["ok"], false, "{json}");
    let detail = json["checks"]["upstream"]["detail"].as_str().unwrap();
    assert!(detail.starts_with("GET /v2/ got no answer"), "{json}");
    // The rest still passes, and liveness does not depend on the upstream.
    assert_eq!(json["checks"]["audit"]["ok"], true, "{json}");
    assert_eq!(http_get(s.metrics, "/healthz").0, 200);
    assert_eq!(http_get(s.metrics, "/ready").0, 503);
}

#[test]
fn readyz_names_the_audit_when_free_space_is_below_the_threshold() {
    let Some(s) = start("  min_free_bytes: 1152921504606846976\n") else {
        return;
    };
    let (status, json) = readyz(s.metrics);
    assert_eq!(status, 503, "{json}");
    assert_eq!(json["failing"], serde_json::json!(["audit"]), "{json}");
    let detail = json["checks"]["audit"]["detail"].as_str().unwrap();
    assert!(
        detail.contains("less than audit.min_free_bytes (1152921504606846976)"),
        "{json}"
    );
    assert_eq!(json["checks"]["upstream"]["ok"], true, "{json}");
    assert_eq!(http_get(s.metrics, "/healthz").0, 200);
}

/// A file the writer cannot open (here: removed; the tests run as root, for whom modes
/// do not deny writes) fails the next delete, so readiness says so within a tick (5 s).
#[test]
fn readyz_names_the_audit_when_its_file_cannot_be_written() {
    let Some(s) = start("") else { return };
    assert_eq!(readyz(s.metrics).0, 200);
    remove(&s.audit_file);
    let (status, json) = readyz_until(s.metrics, 503, Duration::from_secs(15));
    assert_eq!(status, 503, "{json}");
    assert_eq!(json["failing"], serde_json::json!(["audit"]), "{json}");
    let detail = json["checks"]["audit"]["detail"].as_str().unwrap();
    assert!(detail.contains("audit writes fail"), "{json}");
    assert!(
        s.proxy
            .logs()
            .contains("the audit file cannot be opened for writing"),
        "{}",
        s.proxy.logs()
    );
}

/// The client listener answers none of the admin paths: with or without credentials they
/// are not registry routes, so they get the registry's 404 and nothing else (no body
/// of the admin listener, no challenge, nothing forwarded).
#[test]
fn the_client_listener_does_not_answer_health_or_metrics() {
    let Some(s) = start("") else { return };
    for path in ["/healthz", "/readyz", "/ready", "/metrics"] {
        for auth in [None, Some(ALICE)] {
            let r = call(&s.proxy.base, Some(&s.proxy.ca), "GET", path)
                .auth(auth)
                .send();
            r.assert_refusal(404, "NOT_FOUND", path);
            let text = r.text();
            assert!(
                !text.contains("ready") && !text.contains("registry_guard"),
                "{path}: {}",
                r.describe()
            );
        }
    }
}
