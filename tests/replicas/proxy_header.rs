//! Hand-made PROXY headers against one replica: whose address counts, and who may send one.

use super::*;
use common::fake::{FakeUpstream, Reply};

/// The balancer is 127.0.0.1 (trusted); 127.0.0.2 is a client connecting directly.
const LB: &str = "127.0.0.1";
const DIRECT: &str = "127.0.0.2";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

async fn replica(tls: TlsMode) -> (FakeUpstream, Proxy) {
    let upstream = FakeUpstream::start(|_| Reply::new(200)).await;
    let proxy = Proxy::builder(&upstream.url)
        .tls(tls)
        .users(vec![user("alice", "alice-pw", &[])])
        .server_yaml("  trusted_proxies: [127.0.0.1/32]\n  proxy_protocol: true\n")
        .auth_yaml("  throttle:\n    max_failures: 3\n    window: 1m\n")
        .extra_yaml("limits:\n  header_read_timeout: 2s\n")
        .env("RG_TEST_LOG", "info")
        .start();
    (upstream, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_declared_client_is_the_one_logged_and_throttled() {
    let (_up, proxy) = replica(TlsMode::Plaintext).await;
    let client: SocketAddr = "203.0.113.7:40000".parse().unwrap();
    let other: SocketAddr = "203.0.113.8:40000".parse().unwrap();
    let via = |from: SocketAddr, req: Vec<u8>| {
        let mut b = v2_header(from, proxy.addr);
        b.extend(req);
        b
    };
    // Three failures of (203.0.113.7, alice), each on a connection of the balancer's.
    for i in 0..3 {
        let (out, _) =
            exchange_from(ip(LB), proxy.addr, &via(client, get_v2("alice", "guess"))).await;
        assert_eq!(
            status(&out),
            401,
            "failure {i}: {}",
            String::from_utf8_lossy(&out)
        );
    }
    // The right password from the declared client: throttled, keyed on it...
    let (out, _) = exchange_from(
        ip(LB),
        proxy.addr,
        &via(client, get_v2("alice", "alice-pw")),
    )
    .await;
    assert_eq!(status(&out), 429, "{}", String::from_utf8_lossy(&out));
    // ...not on the balancer: another client through the same balancer logs in.
    let (out, _) =
        exchange_from(ip(LB), proxy.addr, &via(other, get_v2("alice", "alice-pw"))).await;
    assert_eq!(status(&out), 200, "{}", String::from_utf8_lossy(&out));
    // A v1 header works the same.
    let v1 = [
        b"PROXY TCP4 198.51.100.9 127.0.0.1 5555 443\r\n".as_slice(),
        &get_v2("alice", "alice-pw"),
    ]
    .concat();
    let (out, _) = exchange_from(ip(LB), proxy.addr, &v1).await;
    assert_eq!(status(&out), 200, "{}", String::from_utf8_lossy(&out));
    // LOCAL (the balancer's health check): the balancer's own address.
    let local = [v2_local(), get_v2("alice", "alice-pw")].concat();
    let (out, _) = exchange_from(ip(LB), proxy.addr, &local).await;
    assert_eq!(status(&out), 200, "{}", String::from_utf8_lossy(&out));

    let lines = wait_for(Duration::from_secs(5), || {
        let l = access_lines(&proxy);
        (l.len() >= 7).then_some(l)
    })
    .unwrap_or_else(|| panic!("access lines:\n{}", proxy.logs()));
    let clients: Vec<&str> = lines
        .iter()
        .map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("client="))
                .unwrap_or("?")
        })
        .collect();
    assert_eq!(
        clients,
        [
            "203.0.113.7",
            "203.0.113.7",
            "203.0.113.7",
            "203.0.113.7",
            "203.0.113.8",
            "198.51.100.9",
            "127.0.0.1"
        ],
        "{}",
        proxy.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_trusted_peers_may_and_must_send_a_header() {
    for tls in [TlsMode::Plaintext, TlsMode::SelfSigned] {
        let (_up, proxy) = replica(tls).await;
        let forged = v2_header("203.0.113.7:1".parse().unwrap(), proxy.addr);
        // From a peer outside trusted_proxies: closed, nothing answered (not even the
        // plain-HTTP-on-the-TLS-port 400), v1 and v2 alike.
        for header in [
            forged.clone(),
            b"PROXY TCP4 203.0.113.7 127.0.0.1 1 443\r\n".to_vec(),
        ] {
            let req = [header, get_v2("alice", "alice-pw")].concat();
            let (out, end) = exchange_from(ip(DIRECT), proxy.addr, &req).await;
            assert!(
                out.is_empty() && closed(&end),
                "{}: {end:?} {}",
                proxy.base,
                String::from_utf8_lossy(&out)
            );
        }
        // From a trusted peer, a header is required: without one, closed.
        let (out, end) = exchange_from(ip(LB), proxy.addr, &get_v2("alice", "alice-pw")).await;
        assert!(
            out.is_empty() && closed(&end),
            "{end:?} {}",
            String::from_utf8_lossy(&out)
        );
        // A direct client without a header is served as before, under its own address.
        if proxy.base.starts_with("http:") {
            let (out, _) =
                exchange_from(ip(DIRECT), proxy.addr, &get_v2("alice", "alice-pw")).await;
            assert_eq!(status(&out), 200, "{}", String::from_utf8_lossy(&out));
            let lines = wait_for(Duration::from_secs(5), || {
                let l = access_lines(&proxy);
                (!l.is_empty()).then_some(l)
            })
            .unwrap();
            assert!(lines[0].contains("client=127.0.0.2"), "{lines:?}");
            assert_eq!(lines.len(), 1, "{lines:?}");
        } else {
            // Plain HTTP on the TLS port still gets its 400.
            let (out, _) =
                exchange_from(ip(DIRECT), proxy.addr, &get_v2("alice", "alice-pw")).await;
            assert_eq!(status(&out), 400, "{}", String::from_utf8_lossy(&out));
        }
    }
}

fn closed(end: &End) -> bool {
    common::client::closed(end)
}
