//! TLS for both listeners, and mutual TLS with an allowlist for the internal one.
//!
//! The protocol policy (TLS 1.2 minimum, 1.3 preferred, forward-secret AEAD suites only), the
//! certificate that is reloaded when its files change, and the accept loop are
//! [`tlskit`]'s, shared with the billing service. Both listeners present the same certificate
//! (one [`ReloadingCert`], checked every `TOKENIZER_TLS_RELOAD_INTERVAL_MS` and on SIGHUP).
//!
//! The internal listener's client-certificate check happens in the handshake: the chain must
//! lead to the configured client CA *and* the certificate must name (DNS SAN) one of the
//! allowlisted identities. Anything else never gets an HTTP exchange; the refusal is logged as a
//! security event. The identity that matched is what the audit trail records as the caller.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use tlskit::ReloadingCert;
use tokio::net::TcpListener;

/// Server-authenticated TLS (the collect listener).
pub fn server_config(certs: Arc<ReloadingCert>) -> anyhow::Result<Arc<ServerConfig>> {
    Ok(tlskit::server_config(certs, None)?)
}

/// Mutual TLS: clients must present a certificate from `client_ca` naming one of `allowlist`.
pub fn mtls_config(
    certs: Arc<ReloadingCert>,
    client_ca: &Path,
    allowlist: &[String],
) -> anyhow::Result<Arc<ServerConfig>> {
    anyhow::ensure!(!allowlist.is_empty(), "the client allowlist is empty");
    let mut roots = RootCertStore::empty();
    for ca in tlskit::certs::load_certs(client_ca)? {
        roots
            .add(ca)
            .with_context(|| format!("client CA {}", client_ca.display()))?;
    }
    let inner =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), tlskit::provider()).build()?;
    let allowed = allowlist_names(allowlist)?;
    let verifier = Arc::new(AllowlistVerifier { inner, allowed });
    Ok(tlskit::server_config(certs, Some(verifier))?)
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
    let peer = move |conn: &tlskit::Connection<'_>| Peer {
        addr: conn.remote,
        identity: conn
            .peer_certificates
            .and_then(|certs| certs.first())
            .and_then(|cert| identity_of(cert, &allowed)),
    };
    tlskit::serve(listener, config, app, listener_name, peer, shutdown).await;
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
