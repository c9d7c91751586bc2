//! TLS for every listener of carebill's two processes (the billing service and the card vault):
//! one rustls policy, certificates that are reloaded from their files when an operator rotates
//! them, the HTTPS serve loop, and the plain-HTTP listener that only redirects.
//!
//! # Policy
//! - TLS 1.3 and TLS 1.2 only (rustls does not implement anything older); a client offering
//!   both gets 1.3.
//! - Only AEAD suites with forward secrecy: TLS 1.3's AES-GCM and ChaCha20-Poly1305 suites, and
//!   TLS 1.2's ECDHE (ECDSA or RSA) with AES-GCM or ChaCha20-Poly1305 ([`CIPHER_SUITES`]). No
//!   CBC, no RSA key exchange, no SHA-1 MACs, no static DH.
//! - ALPN offers `h2` and `http/1.1`; the serve loop speaks both.
//!
//! # Certificates and rotation
//! [`ReloadingCert`] holds the certificate chain and key read from two PEM files and hands them
//! to every new handshake. [`ReloadingCert::watch`] checks the files every interval (and at once
//! on SIGHUP): when their content changed and the new pair is sound — it parses, every
//! certificate in the chain is within its validity period, and the key matches the leaf — new
//! handshakes get it, while connections already open keep theirs. A pair that is not sound is
//! refused with a `tls_certificate_rejected` security event naming the file and the problem, and
//! the previous pair stays in service. At start-up ([`ReloadingCert::load`]) the same problems
//! are an error: the process refuses to start rather than serve a certificate clients reject.
//! Nothing renews a certificate here, so the watcher also warns, once a day, from
//! [`certs::EXPIRY_WARNING`] (30 days) before the chain in service expires.
//!
//! # Layout
//! - [`certs`]: reading, checking and reloading the certificate and key.
//! - [`serve`](mod@serve): the HTTPS accept loop (handshake timeout, graceful shutdown, a bound
//!   on connections) and the redirect listener.

pub mod certs;
pub mod serve;

use std::sync::Arc;

use rustls::crypto::ring::cipher_suite;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::{ServerConfig, SupportedCipherSuite, SupportedProtocolVersion};

pub use certs::{CertError, CertPaths, ReloadingCert};
pub use serve::{serve, serve_redirect, Connection};

/// The protocol versions every listener accepts, preferred first.
pub static PROTOCOL_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The cipher suites every listener accepts, preferred first: AEAD only, forward secret only.
pub static CIPHER_SUITES: &[SupportedCipherSuite] = &[
    cipher_suite::TLS13_AES_256_GCM_SHA384,
    cipher_suite::TLS13_AES_128_GCM_SHA256,
    cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
];

/// ring, restricted to [`CIPHER_SUITES`] (its key-exchange groups are X25519, P-256 and P-384).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: CIPHER_SUITES.to_vec(),
        ..rustls::crypto::ring::default_provider()
    })
}

/// A server configuration with the policy above, presenting `certs`' current pair. With
/// `client_auth`, clients must pass that verifier (mutual TLS); without, none is asked for.
pub fn server_config(
    certs: Arc<ReloadingCert>,
    client_auth: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)?;
    let builder = match client_auth {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_forward_secret_aead_suites() {
        for suite in provider().cipher_suites.iter() {
            let name = format!("{:?}", suite.suite());
            let modern = name.starts_with("TLS13_") || name.starts_with("TLS_ECDHE_");
            let aead = name.contains("_GCM_") || name.contains("CHACHA20_POLY1305");
            assert!(modern && aead, "{name} is not an ECDHE/TLS 1.3 AEAD suite");
        }
        assert_eq!(provider().cipher_suites.len(), CIPHER_SUITES.len());
    }
}
