//! TLS material: the server's rustls config (from PEM files, or a self-signed CA and leaf
//! made at start for the quick start) and the upstream client's trust roots.
//!
//! TLS 1.2 and 1.3 only, ALPN `h2` and `http/1.1`. The crypto provider is chosen at
//! compile time, in one place ([`default_provider`]): `ring`, or AWS-LC with the
//! `aws-lc-rs` cargo feature. Every failure names the config key and the file: a
//! missing, unreadable, empty or mismatched certificate or key stops start-up.

use crate::config::{ConfigError, Tls};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// The name of the provider this build uses (`ring` or `aws-lc-rs`), for logs and benches.
pub const PROVIDER_NAME: &str = if cfg!(feature = "aws-lc-rs") {
    "aws-lc-rs"
} else {
    "ring"
};

/// The one place the crypto provider is chosen: the server, the upstream client and
/// the syslog client all start from it (the self-signed mode's rcgen follows the same
/// cargo feature).
pub fn default_provider() -> CryptoProvider {
    #[cfg(feature = "aws-lc-rs")]
    {
        rustls::crypto::aws_lc_rs::default_provider()
    }
    #[cfg(not(feature = "aws-lc-rs"))]
    {
        rustls::crypto::ring::default_provider()
    }
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(default_provider())
}

/// The server's provider: AES-128-GCM preferred over AES-256-GCM (as Go's and caddy's
/// servers do on CPUs with AES instructions). Both are strong; AES-128 is about a third
/// cheaper per byte, which is what bounds a single blob stream through the proxy.
fn server_provider() -> Arc<CryptoProvider> {
    Arc::new(prefer_aes_128(default_provider()))
}

/// `p` with its cipher suites in the server's order: TLS 1.3 first, then AES-128-GCM,
/// CHACHA20-POLY1305, AES-256-GCM.
pub fn prefer_aes_128(mut p: CryptoProvider) -> CryptoProvider {
    let rank = |s: &rustls::SupportedCipherSuite| {
        let name = format!("{:?}", s.suite());
        if name.contains("AES_128_GCM") {
            0
        } else if name.contains("CHACHA20") {
            1
        } else {
            2
        }
    };
    // Stable: TLS 1.3 suites stay before TLS 1.2 ones within each rank.
    p.cipher_suites
        .sort_by_key(|s| (s.tls13().is_none(), rank(s)));
    p
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path)
        .map_err(|e| ConfigError::new(key, format!("cannot read {}: {e}", path.display())))
}

/// Every certificate in a PEM file, in order; at least one.
pub fn load_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let pem = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::new(key, format!("{}: not valid PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ConfigError::new(
            key,
            format!("{}: holds no CERTIFICATE block", path.display()),
        ));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(key: &str, path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let pem = read(key, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        ConfigError::new(
            key,
            format!(
                "{}: no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}",
                path.display()
            ),
        )
    })
}

/// What the self-signed mode made: the CA clients are pointed at, and the leaf served.
pub struct SelfSigned {
    pub ca_pem: String,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// Makes a throw-away CA and a leaf for `names`, signed by it. The CA key is dropped at
/// once: nothing else can ever be signed with it.
///
/// Both keys are ECDSA P-256: a full handshake signs once with the leaf key, and with a
/// P-256 leaf the server's whole TLS 1.3 handshake costs about 1/7 of what it costs with
/// an RSA-2048 one (115 vs 788 µs, bench/tls.rs; bench/RESULTS.md "TLS handshakes and
/// providers"). Every registry client (Go, OpenSSL, curl) accepts P-256.
pub fn make_self_signed(names: &[String]) -> Result<SelfSigned, rcgen::Error> {
    make_self_signed_with(names, rcgen::KeyPair::generate_for(SELF_SIGNED_ALG)?)
}

/// The self-signed mode's key type.
pub const SELF_SIGNED_ALG: &rcgen::SignatureAlgorithm = &rcgen::PKCS_ECDSA_P256_SHA256;

/// [`make_self_signed`] with the leaf key given (the benches' RSA leaf).
pub fn make_self_signed_with(
    names: &[String],
    leaf_key: rcgen::KeyPair,
) -> Result<SelfSigned, rcgen::Error> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let now = time_now();
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "registry-guard self-signed CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = now - rcgen_days(1);
    ca.not_after = now + rcgen_days(365);
    let ca_key = KeyPair::generate_for(SELF_SIGNED_ALG)?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let mut leaf = CertificateParams::new(names.to_vec())?;
    leaf.distinguished_name.push(
        DnType::CommonName,
        names.first().map(String::as_str).unwrap_or("localhost"),
    );
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    leaf.not_before = now - rcgen_days(1);
    leaf.not_after = now + rcgen_days(365);
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;
    Ok(SelfSigned {
        ca_pem: ca_cert.pem(),
        chain: vec![leaf_cert.der().clone(), ca_cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
    })
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn rcgen_days(n: i64) -> time::Duration {
    time::Duration::days(n)
}

/// Writes the self-signed CA where clients are pointed at it (temporary file + rename,
/// so a client never reads half a certificate).
fn write_ca(path: &Path, pem: &str) -> Result<(), ConfigError> {
    let key = "server.tls.self_signed.ca_out";
    let err =
        |e: std::io::Error| ConfigError::new(key, format!("cannot write {}: {e}", path.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("pem.tmp");
    std::fs::write(&tmp, pem).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// The server's TLS config, or `None` for plain HTTP. Writes the self-signed CA file.
pub fn server_config(tls: &Tls) -> Result<Option<Arc<ServerConfig>>, ConfigError> {
    let (chain, key) = match tls {
        Tls::Plaintext => return Ok(None),
        Tls::Files { cert, key } => (
            load_certs("server.tls.cert", cert)?,
            load_key("server.tls.key", key)?,
        ),
        Tls::SelfSigned { ca_out, names } => {
            let made = make_self_signed(names).map_err(|e| {
                ConfigError::new(
                    "server.tls.self_signed",
                    format!("cannot make a certificate: {e}"),
                )
            })?;
            write_ca(ca_out, &made.ca_pem)?;
            (made.chain, made.key)
        }
    };
    let mut config = ServerConfig::builder_with_provider(server_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ConfigError::new("server.tls", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            let what = match tls {
                Tls::Files { cert, key } => format!("{} and {}", cert.display(), key.display()),
                _ => "the generated certificate".into(),
            };
            ConfigError::new(
                "server.tls.key",
                format!("{what} do not form a usable certificate and key: {e}"),
            )
        })?;
    server_options(&mut config);
    Ok(Some(Arc::new(config)))
}

/// What the proxy sets on every server config past the provider and the certificate:
/// ALPN and the server's cipher order (the benches build theirs with it too).
pub fn server_options(config: &mut ServerConfig) {
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Our order (server_provider), not the client's: curl and OpenSSL list AES-256 first.
    config.ignore_client_order = true;
}

/// The upstream client's TLS config for an `https://` upstream: the CA file if given,
/// else the system's roots.
pub fn upstream_client_config(ca_file: Option<&Path>) -> Result<ClientConfig, ConfigError> {
    ca_client_config("upstream.ca_file", ca_file)
}

/// A client TLS config trusting the CA file named by the configuration key `key`, else
/// the system's roots (the upstream's, the audit syslog collector's).
pub fn ca_client_config(key: &str, ca_file: Option<&Path>) -> Result<ClientConfig, ConfigError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in load_certs(key, path)? {
                roots.add(cert).map_err(|e| {
                    ConfigError::new(
                        key,
                        format!("{}: unusable CA certificate: {e}", path.display()),
                    )
                })?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(ConfigError::new(
                    key,
                    format!(
                        "no system CA certificates found: install ca-certificates or give {key}"
                    ),
                ));
            }
        }
    }
    client_config(roots)
}

/// A client config trusting `roots` (none at all for an `http://` upstream, where TLS is
/// never used).
pub fn client_config(roots: RootCertStore) -> Result<ClientConfig, ConfigError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ConfigError::new("upstream", e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_prefers_aes_128_gcm_and_tls13() {
        let p = server_provider();
        let names: Vec<String> = p
            .cipher_suites
            .iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        assert_eq!(names[0], "TLS13_AES_128_GCM_SHA256", "{names:?}");
        let first_tls12 = p
            .cipher_suites
            .iter()
            .position(|s| s.tls13().is_none())
            .unwrap();
        assert!(p.cipher_suites[..first_tls12]
            .iter()
            .all(|s| s.tls13().is_some()));
        assert_eq!(
            p.cipher_suites.len(),
            default_provider().cipher_suites.len()
        );
    }

    #[test]
    fn the_self_signed_ca_signs_a_leaf_for_every_name() {
        let made = make_self_signed(&["localhost".into(), "127.0.0.1".into()]).unwrap();
        assert!(made.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(made.chain.len(), 2);
    }

    #[test]
    fn the_self_signed_leaf_key_is_ecdsa_p256() {
        let made = make_self_signed(&["localhost".into()]).unwrap();
        let key = default_provider()
            .key_provider
            .load_private_key(made.key)
            .unwrap();
        assert_eq!(key.algorithm(), rustls::SignatureAlgorithm::ECDSA);
        let scheme = key.choose_scheme(&[
            rustls::SignatureScheme::ECDSA_NISTP384_SHA384,
            rustls::SignatureScheme::ECDSA_NISTP256_SHA256,
        ]);
        assert_eq!(
            scheme.map(|s| s.scheme()),
            Some(rustls::SignatureScheme::ECDSA_NISTP256_SHA256)
        );
    }
}
