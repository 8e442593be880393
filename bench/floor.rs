//! The floor under registry-guard's CPU per request: the same stack (tokio multi-thread,
//! tokio-rustls with the same provider and cipher order, hyper 1 HTTP/1.1 server,
//! hyper-util's pooled client to a plain-HTTP upstream) doing nothing but pass each
//! request through: no route, identity, permit, audit, access log or metrics. What this
//! costs per request is what hyper + rustls + tokio + the kernel cost on this machine;
//! registry-guard's own work is the difference (bench/RESULTS.md, issue 14).
//!
//!   cargo build --release --example floor
//!   target/release/examples/floor LISTEN UPSTREAM CERT KEY
//!   e.g. floor 127.0.0.1:5480 http://127.0.0.1:5000 /tmp/bench/tls/cert.pem /tmp/bench/tls/key.pem
//!
//! Serves until killed. Not a product: no limits, no timeouts, no error mapping.
#![forbid(unsafe_code)]

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;

type Body = http_body_util::combinators::BoxBody<bytes::Bytes, hyper::Error>;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, upstream, cert, key] = args.as_slice() else {
        return Err("usage: floor LISTEN UPSTREAM CERT KEY".into());
    };
    let certs = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    // The proxy's provider (the cargo feature's) and cipher order; HTTP/1.1 only.
    let provider = registry_guard::tls::prefer_aes_128(registry_guard::tls::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    tls.ignore_client_order = true;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let upstream: Uri = upstream.parse()?;
    let listen = listen.clone();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let client: Client<_, Body> = Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(128)
                .build_http();
            let listener = tokio::net::TcpListener::bind(&listen).await?;
            loop {
                let (tcp, _) = listener.accept().await?;
                let _ = tcp.set_nodelay(true);
                let (acceptor, client, upstream) =
                    (acceptor.clone(), client.clone(), upstream.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (client, upstream) = (client.clone(), upstream.clone());
                        async move {
                            let (mut parts, body) = req.into_parts();
                            let mut uri = upstream.into_parts();
                            uri.path_and_query = parts.uri.path_and_query().cloned();
                            parts.uri = Uri::from_parts(uri).expect("upstream URI");
                            parts.headers.remove(hyper::header::HOST);
                            let req = Request::from_parts(parts, body.boxed());
                            let res = client.request(req).await?;
                            Ok::<_, hyper_util::client::legacy::Error>(res)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        })
}
