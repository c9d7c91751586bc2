//! TLS for both listeners (rustls, TLS 1.2 minimum, 1.3 preferred, ring's modern suites only),
//! and mutual TLS with an allowlist for the internal one.
//!
//! The internal listener's client-certificate check happens in the handshake: the chain must
//! lead to the configured client CA *and* the certificate must name (DNS SAN) one of the
//! allowlisted identities. Anything else never gets an HTTP exchange; the refusal is logged as a
//! security event. The identity that matched is what the audit trail records as the caller.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use hyper_util::rt::TokioIo;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// A TLS handshake that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in {}", path.display());
    Ok(certs)
}

pub fn load_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .with_context(|| format!("parsing {}", path.display()))?
        .with_context(|| format!("no private key in {}", path.display()))
}

fn builder() -> anyhow::Result<rustls::ConfigBuilder<ServerConfig, rustls::WantsVerifier>> {
    Ok(ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?)
}

/// Server-authenticated TLS (the collect listener).
pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let mut config = builder()?
        .with_no_client_auth()
        .with_single_cert(load_certs(cert)?, load_key(key)?)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Mutual TLS: clients must present a certificate from `client_ca` naming one of `allowlist`.
pub fn mtls_config(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
    allowlist: &[String],
) -> anyhow::Result<Arc<ServerConfig>> {
    anyhow::ensure!(!allowlist.is_empty(), "the client allowlist is empty");
    let mut roots = RootCertStore::empty();
    for ca in load_certs(client_ca)? {
        roots.add(ca)?;
    }
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).build()?;
    let allowed = allowlist
        .iter()
        .map(|name| {
            ServerName::try_from(name.clone())
                .map_err(|_| anyhow::anyhow!("allowlist entry {name:?} is not a DNS name"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let verifier = Arc::new(AllowlistVerifier { inner, allowed });
    let mut config = builder()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(cert)?, load_key(key)?)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The allowlisted identity `cert` is valid for, if any.
pub fn identity_of(cert: &CertificateDer<'_>, allowed: &[ServerName<'static>]) -> Option<String> {
    let ee = webpki::EndEntityCert::try_from(cert).ok()?;
    allowed
        .iter()
        .find(|name| ee.verify_is_valid_for_subject_name(name).is_ok())
        .map(|name| name.to_str().into_owned())
}

#[derive(Debug)]
struct AllowlistVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: Vec<ServerName<'static>>,
}

impl ClientCertVerifier for AllowlistVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if identity_of(end_entity, &self.allowed).is_none() {
            return Err(rustls::Error::General(
                "client certificate identity is not on the allowlist".into(),
            ));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Who is on the other end of a connection, as the handlers see it.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The allowlisted identity of the client certificate (internal listener only).
    pub identity: Option<String>,
}

/// Serves `app` over TLS on `listener` until `shutdown` resolves. Each connection's [`Peer`] is
/// put into its requests' extensions.
pub async fn serve(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    allowed: Vec<ServerName<'static>>,
    app: Router,
    listener_name: &'static str,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let acceptor = TlsAcceptor::from(config);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, listener = listener_name, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let allowed = allowed.clone();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::warn!(
                        security_event = "tls_handshake_refused",
                        listener = listener_name,
                        peer = %addr.ip(),
                        reason = %e,
                        "TLS handshake refused"
                    );
                    return;
                }
                Err(_) => {
                    tracing::warn!(
                        security_event = "tls_handshake_timeout",
                        listener = listener_name,
                        peer = %addr.ip(),
                        "TLS handshake timed out"
                    );
                    return;
                }
            };
            let identity = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|cert| identity_of(cert, &allowed));
            let peer = Peer { addr, identity };
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(peer.clone());
                    app.clone().oneshot(req.map(axum::body::Body::new))
                },
            );
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = conn {
                tracing::debug!(error = %e, listener = listener_name, "connection ended with an error");
            }
        });
    }
}

/// Parses allowlist names for [`serve`].
pub fn allowlist_names(allowlist: &[String]) -> anyhow::Result<Vec<ServerName<'static>>> {
    allowlist
        .iter()
        .map(|n| {
            ServerName::try_from(n.clone())
                .map_err(|_| anyhow::anyhow!("allowlist entry {n:?} is not a DNS name"))
        })
        .collect()
}
