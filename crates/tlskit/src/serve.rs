//! The HTTPS accept loop, and the plain-HTTP listener that only redirects to it.
//!
//! [`serve`] accepts TCP connections (at most [`CONNECTIONS_MAX`] at once), completes the TLS
//! handshake within [`HANDSHAKE_TIMEOUT`] (a refused or slow handshake is logged as a security
//! event and never reaches the application), then serves HTTP/1.1 or HTTP/2 on it. What the
//! application needs to know about the connection (the client's address, its certificate) is
//! put into every request's extensions by the caller's `per_connection` function. On shutdown it
//! stops accepting, lets requests in flight finish (closing idle connections at once), and
//! returns when they have, or after [`GRACEFUL_SHUTDOWN_TIMEOUT`].
//!
//! [`serve_redirect`] answers every request with `308 Permanent Redirect` to the same host, path
//! and query on the HTTPS port, and nothing else: no route of the application is reachable over
//! plain HTTP. (Strict-Transport-Security is sent by the HTTPS side; browsers ignore it over
//! plain HTTP.)

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::pki_types::CertificateDer;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// A TLS handshake that takes longer than this is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A request whose headers take longer than this to arrive is dropped (HTTP/1.1).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once per listener; the next waits in the kernel's backlog.
pub const CONNECTIONS_MAX: usize = 4096;
/// How long shutdown waits for requests in flight.
pub const GRACEFUL_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection whose handshake completed, as `per_connection` sees it.
#[derive(Debug)]
pub struct Connection<'a> {
    pub remote: SocketAddr,
    /// The client's certificate chain, leaf first (mutual TLS only).
    pub peer_certificates: Option<&'a [CertificateDer<'static>]>,
}

/// Serves `app` over TLS on `listener` until `shutdown` resolves, then drains. `name` labels log
/// lines. `per_connection`'s value is put into the extensions of each of the connection's
/// requests.
pub async fn serve<E, F>(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    app: Router,
    name: &'static str,
    per_connection: F,
    shutdown: impl Future<Output = ()> + Send,
) where
    F: Fn(&Connection<'_>) -> E + Send + Sync + 'static,
    E: Clone + Send + Sync + 'static,
{
    let acceptor = TlsAcceptor::from(tls);
    let per_connection = Arc::new(per_connection);
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    while let Some((tcp, remote, permit)) =
        accept_bounded(&listener, &slots, shutdown.as_mut(), name).await
    {
        let acceptor = acceptor.clone();
        let app = app.clone();
        let per_connection = Arc::clone(&per_connection);
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::warn!(
                        security_event = "tls_handshake_refused",
                        listener = name,
                        peer = %remote.ip(),
                        reason = %e,
                        "TLS handshake refused"
                    );
                    return;
                }
                Err(_) => {
                    tracing::warn!(
                        security_event = "tls_handshake_timeout",
                        listener = name,
                        peer = %remote.ip(),
                        "TLS handshake timed out"
                    );
                    return;
                }
            };
            let extension = {
                let (_, session) = stream.get_ref();
                per_connection(&Connection {
                    remote,
                    peer_certificates: session.peer_certificates(),
                })
            };
            let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(extension.clone());
                app.clone().oneshot(req.map(axum::body::Body::new))
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            builder.http2().timer(TokioTimer::new());
            let conn = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(error = %e, listener = name, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(GRACEFUL_SHUTDOWN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = name,
            "requests still in flight after the shutdown grace period; closing"
        );
    }
}

/// The `Location` of the HTTPS twin of a plain-HTTP request: same host (from `Host`, or the
/// request target's authority), path and query, port `https_port` (left out when 443). `None`
/// when the request names no valid host.
pub fn https_location<B>(request: &Request<B>, https_port: u16) -> Option<String> {
    let authority = match request.headers().get(header::HOST) {
        Some(value) => value.to_str().ok()?.parse::<http::uri::Authority>().ok()?,
        None => request.uri().authority()?.clone(),
    };
    let host = authority.host();
    if host.is_empty() {
        return None;
    }
    let path = request
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    Some(if https_port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{https_port}{path}")
    })
}

fn redirect(request: &Request<Incoming>, https_port: u16) -> Response<String> {
    let location = https_location(request, https_port).and_then(|l| HeaderValue::try_from(l).ok());
    let mut response = Response::new(String::new());
    match location {
        Some(location) => {
            *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
            response.headers_mut().insert(header::LOCATION, location);
        }
        None => {
            *response.status_mut() = StatusCode::BAD_REQUEST;
            *response.body_mut() =
                "This port only redirects to HTTPS; the Host header is missing or invalid.\n"
                    .to_owned();
        }
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Waits for a free connection slot, then for the next connection, until `shutdown` resolves
/// (`None`). An accept error (out of file descriptors and the like) is logged and retried after
/// a pause rather than in a spin.
async fn accept_bounded<S: Future<Output = ()>>(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
    mut shutdown: Pin<&mut S>,
    name: &str,
) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    loop {
        let accepted = tokio::select! {
            permit = Arc::clone(slots).acquire_owned() => match permit {
                Ok(permit) => tokio::select! {
                    accepted = listener.accept() => accepted.map(|a| (a, permit)),
                    () = shutdown.as_mut() => return None,
                },
                Err(_) => return None,
            },
            () = shutdown.as_mut() => return None,
        };
        match accepted {
            Ok(((tcp, remote), permit)) => return Some((tcp, remote, permit)),
            Err(e) => {
                tracing::warn!(error = %e, listener = name, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Answers every plain-HTTP request on `listener` with a redirect to HTTPS on `https_port`,
/// until `shutdown` resolves. Request bodies are never read.
pub async fn serve_redirect(
    listener: TcpListener,
    https_port: u16,
    shutdown: impl Future<Output = ()> + Send,
) {
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let mut shutdown = std::pin::pin!(shutdown);
    while let Some((tcp, _, permit)) =
        accept_bounded(&listener, &slots, shutdown.as_mut(), "http_redirect").await
    {
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                std::future::ready(Ok::<_, std::convert::Infallible>(redirect(
                    &request, https_port,
                )))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn request(uri: &str, host: Option<&str>) -> Request<()> {
        let mut builder = Request::builder().uri(uri);
        if let Some(h) = host {
            builder = builder.header(header::HOST, h);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn location_keeps_host_path_and_query_and_swaps_the_port() {
        let r = request("/v1/patients?limit=3", Some("billing.example.org:8080"));
        assert_eq!(
            https_location(&r, 8443).unwrap(),
            "https://billing.example.org:8443/v1/patients?limit=3"
        );
        assert_eq!(
            https_location(&r, 443).unwrap(),
            "https://billing.example.org/v1/patients?limit=3"
        );
        let r = request("/", Some("127.0.0.1"));
        assert_eq!(https_location(&r, 8443).unwrap(), "https://127.0.0.1:8443/");
        assert!(https_location(&request("/", None), 8443).is_none());
        assert!(https_location(&request("/", Some("a b")), 8443).is_none());
        assert!(https_location(&request("/", Some("evil.example/x")), 8443).is_none());
    }
}
