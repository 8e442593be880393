//! Benchmark: what TLS costs the proxy, in memory (no sockets, no load generator): a
//! rustls `ServerConnection` and `ClientConnection` joined by byte buffers, one thread.
//!
//! 1. Full TLS 1.3 handshakes (no resumption: the client's resumption is disabled and
//!    every handshake is checked to be `Full`), X25519, AES-128-GCM, the server config
//!    the proxy builds (`tls::server_options`, tickets sent as the proxy sends them), for
//!    an RSA-2048 and an ECDSA P-256 leaf (each under an ECDSA P-256 CA, as the
//!    self-signed mode makes them). Server and client time are measured apart: the
//!    server's is what the proxy pays per new client connection. With aws-lc-rs also a
//!    client offering X25519MLKEM768 first, as Go >= 1.24 does (rustls follows the
//!    client's group order, so such clients get the post-quantum hybrid from it).
//! 2. Bulk throughput: 256 MiB server -> client in 16 KiB records (a blob pull) per TLS
//!    1.3 cipher suite: the server's seal (encrypt) and the client's open (decrypt) rates.
//!
//! Built with default features it measures `ring`; with `--features aws-lc-rs` it
//! measures `ring` and `aws-lc-rs` side by side, interleaved run by run so that the
//! load of the shared machine falls on both alike. Best of N runs (the minimum is the
//! cost).
//!
//!     cargo bench --bench tls
//!     cargo bench --bench tls --features aws-lc-rs
//!
//! Env: TLS_BENCH_MIB (256), TLS_BENCH_RUNS (5), TLS_BENCH_HANDSHAKES (200 per run).
//! The RSA-2048 key comes from `openssl genpkey` (ring cannot generate RSA keys).
use registry_guard::tls;
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, ClientConnection, HandshakeKind, RootCertStore, ServerConfig};
use rustls::{ConnectionCommon, SideData};
use rustls::{ServerConnection, SupportedCipherSuite};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io::{Read, Write};
use std::ops::DerefMut;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The providers of this build, each under its name.
fn providers() -> Vec<(&'static str, CryptoProvider)> {
    #[allow(unused_mut)]
    let mut v = vec![("ring", rustls::crypto::ring::default_provider())];
    #[cfg(feature = "aws-lc-rs")]
    v.push(("aws-lc-rs", rustls::crypto::aws_lc_rs::default_provider()));
    v
}

struct Cert {
    name: &'static str,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    ca: CertificateDer<'static>,
}

fn certs() -> Vec<Cert> {
    let names = ["localhost".to_string()];
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .expect("openssl genpkey (package openssl) for the RSA-2048 key");
    assert!(out.status.success(), "openssl genpkey failed");
    let rsa = rcgen::KeyPair::from_pem(std::str::from_utf8(&out.stdout).unwrap()).unwrap();
    let ec = rcgen::KeyPair::generate_for(tls::SELF_SIGNED_ALG).unwrap();
    [("RSA-2048", rsa), ("ECDSA P-256", ec)]
        .into_iter()
        .map(|(name, key)| {
            let made = tls::make_self_signed_with(&names, key).unwrap();
            Cert {
                name,
                ca: made.chain[1].clone(),
                chain: made.chain,
                key: made.key,
            }
        })
        .collect()
}

fn server_config(
    p: &CryptoProvider,
    suite: SupportedCipherSuite,
    cert: &Cert,
) -> Arc<ServerConfig> {
    let mut p = tls::prefer_aes_128(p.clone());
    p.cipher_suites = vec![suite];
    let mut c = ServerConfig::builder_with_provider(Arc::new(p))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(cert.chain.clone(), cert.key.clone_key())
        .unwrap();
    tls::server_options(&mut c);
    Arc::new(c)
}

fn client_config(p: &CryptoProvider, cert: &Cert) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(cert.ca.clone()).unwrap();
    let mut c = ClientConfig::builder_with_provider(Arc::new(p.clone()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.resumption = Resumption::disabled();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

/// Time spent on each side.
#[derive(Default)]
struct Sides {
    server: Duration,
    client: Duration,
}

/// Moves what `from` has to send into `to` and lets `to` process it; the time of each
/// side goes to its account.
fn flow<A, B, DA, DB>(
    from: &mut A,
    to: &mut B,
    wire: &mut Vec<u8>,
    from_t: &mut Duration,
    to_t: &mut Duration,
) where
    A: DerefMut<Target = ConnectionCommon<DA>>,
    B: DerefMut<Target = ConnectionCommon<DB>>,
    DA: SideData,
    DB: SideData,
{
    let t = Instant::now();
    wire.clear();
    while from.wants_write() {
        from.write_tls(wire).unwrap();
    }
    *from_t += t.elapsed();
    if wire.is_empty() {
        return;
    }
    let t = Instant::now();
    let mut rest = &wire[..];
    while !rest.is_empty() {
        to.read_tls(&mut rest).unwrap();
        to.process_new_packets().unwrap();
    }
    *to_t += t.elapsed();
}

/// One full handshake (and the server's tickets read by the client); panics unless it
/// was a full one.
fn handshake(
    sc: &Arc<ServerConfig>,
    cc: &Arc<ClientConfig>,
    s: &mut Sides,
) -> (ServerConnection, ClientConnection) {
    let t = Instant::now();
    let mut client =
        ClientConnection::new(cc.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
    s.client += t.elapsed();
    let t = Instant::now();
    let mut server = ServerConnection::new(sc.clone()).unwrap();
    s.server += t.elapsed();
    let mut wire = Vec::with_capacity(1 << 15);
    loop {
        flow(
            &mut client,
            &mut server,
            &mut wire,
            &mut s.client,
            &mut s.server,
        );
        flow(
            &mut server,
            &mut client,
            &mut wire,
            &mut s.server,
            &mut s.client,
        );
        if !client.is_handshaking()
            && !server.is_handshaking()
            && !client.wants_write()
            && !server.wants_write()
        {
            break;
        }
    }
    assert_eq!(client.handshake_kind(), Some(HandshakeKind::Full));
    assert_eq!(server.handshake_kind(), Some(HandshakeKind::Full));
    (server, client)
}

/// Mean server and client µs per full handshake over `n` handshakes; the key exchange
/// group used.
fn handshakes(sc: &Arc<ServerConfig>, cc: &Arc<ClientConfig>, n: usize) -> (f64, f64, String) {
    let mut s = Sides::default();
    let mut group = String::new();
    for _ in 0..n {
        let (server, _client) = handshake(sc, cc, &mut s);
        group = format!(
            "{:?}",
            server.negotiated_key_exchange_group().unwrap().name()
        );
    }
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    (per(s.server), per(s.client), group)
}

/// `mib` MiB from server to client in 16 KiB writes: server seal and client open, MB/s.
fn bulk(sc: &Arc<ServerConfig>, cc: &Arc<ClientConfig>, mib: usize) -> (f64, f64) {
    let mut s = Sides::default();
    let (mut server, mut client) = handshake(sc, cc, &mut s);
    let mut s = Sides::default();
    let chunk = vec![0x5au8; 16 * 1024];
    let mut sink = vec![0u8; 64 * 1024];
    let mut wire = Vec::with_capacity(1 << 17);
    let total = mib * 1024 * 1024;
    let mut got = 0;
    for _ in 0..total / chunk.len() {
        let t = Instant::now();
        server.writer().write_all(&chunk).unwrap();
        s.server += t.elapsed();
        flow(
            &mut server,
            &mut client,
            &mut wire,
            &mut s.server,
            &mut s.client,
        );
        let t = Instant::now();
        loop {
            match client.reader().read(&mut sink) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        s.client += t.elapsed();
    }
    assert_eq!(got, total);
    let rate = |d: Duration| total as f64 / 1e6 / d.as_secs_f64();
    (rate(s.server), rate(s.client))
}

fn aes128(p: &CryptoProvider) -> SupportedCipherSuite {
    p.cipher_suites
        .iter()
        .copied()
        .find(|s| suite_name(*s) == "AES_128_GCM_SHA256")
        .unwrap()
}

fn suite_name(s: SupportedCipherSuite) -> String {
    format!("{:?}", s.suite()).replace("TLS13_", "")
}

fn main() {
    let mib = env("TLS_BENCH_MIB", 256);
    let runs = env("TLS_BENCH_RUNS", 5);
    let n = env("TLS_BENCH_HANDSHAKES", 200);
    let provs = providers();
    let certs = certs();

    // Handshakes: per (provider, key), the best run's means; runs interleave the cases.
    #[allow(unused_mut)] // pushed to with the aws-lc-rs feature only
    let mut configs: Vec<_> = provs
        .iter()
        .flat_map(|(pname, p)| {
            certs.iter().map(move |c| {
                let sc = server_config(p, aes128(p), c);
                (*pname, c.name, sc, client_config(p, c))
            })
        })
        .collect();
    // What a Go >= 1.24 client gets from the aws-lc-rs build: it offers X25519MLKEM768
    // first, and rustls follows the client's group order (ring has no ML-KEM: X25519).
    #[cfg(feature = "aws-lc-rs")]
    {
        use rustls::crypto::aws_lc_rs::{default_provider, kx_group};
        let p = default_provider();
        let mut go_like = p.clone();
        go_like.kx_groups = vec![kx_group::X25519MLKEM768, kx_group::X25519];
        configs.push((
            "aws-lc-rs",
            certs[1].name,
            server_config(&p, aes128(&p), &certs[1]),
            client_config(&go_like, &certs[1]),
        ));
    }
    let mut best = vec![(f64::INFINITY, f64::INFINITY, String::new()); configs.len()];
    for (_, _, sc, cc) in &configs {
        handshakes(sc, cc, 5); // warm-up
    }
    for _ in 0..runs {
        for (i, (_, _, sc, cc)) in configs.iter().enumerate() {
            let (server, client, group) = handshakes(sc, cc, n);
            let b = &mut best[i];
            *b = (b.0.min(server), b.1.min(client), group);
        }
    }
    println!(
        "TLS 1.3 full handshakes in memory (no resumption, every one checked Full; AES-128-GCM; \
         best of {runs} runs x {n} handshakes)"
    );
    println!(
        "  {:<10} {:<12} {:<15} {:>10} {:>14} {:>10}",
        "provider", "leaf key", "kx", "server µs", "server hs/s/core", "client µs"
    );
    for ((pname, key, _, _), (server, client, group)) in configs.iter().zip(&best) {
        println!(
            "  {:<10} {:<12} {:<15} {:>10.0} {:>14.0} {:>10.0}",
            pname,
            key,
            group,
            server,
            1e6 / server,
            client
        );
    }

    // Bulk: every TLS 1.3 suite of each provider, ECDSA leaf (the key does not matter here).
    let cases: Vec<_> = provs
        .iter()
        .flat_map(|(pname, p)| {
            p.cipher_suites
                .iter()
                .filter(|s| s.tls13().is_some())
                .map(|s| {
                    (
                        *pname,
                        suite_name(*s),
                        server_config(p, *s, &certs[1]),
                        client_config(p, &certs[1]),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let mut rates = vec![(0f64, 0f64); cases.len()];
    for _ in 0..runs.min(3) {
        for (i, (_, _, sc, cc)) in cases.iter().enumerate() {
            let (seal, open) = bulk(sc, cc, mib);
            rates[i].0 = rates[i].0.max(seal);
            rates[i].1 = rates[i].1.max(open);
        }
    }
    println!(
        "TLS 1.3 bulk: {mib} MiB server -> client in 16 KiB records (best of {} runs), MB/s",
        runs.min(3)
    );
    println!(
        "  {:<10} {:<26} {:>12} {:>12}",
        "provider", "suite", "server seal", "client open"
    );
    for ((pname, suite, _, _), (seal, open)) in cases.iter().zip(&rates) {
        println!("  {pname:<10} {suite:<26} {seal:>12.0} {open:>12.0}");
    }
}
