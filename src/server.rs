//! The HTTPS server: the root router (each resource module merges its own), the middleware
//! stack, health checks, and start-up.
//!
//! Every listener speaks TLS only ([`tlskit`]: TLS 1.2 or 1.3, forward-secret AEAD suites, ALPN
//! `h2` and `http/1.1`). The certificate comes from `tls_cert`/`tls_key` and is re-read every
//! `tls_reload_interval_ms` and on SIGHUP; a sound new pair is presented to new handshakes
//! without a restart, an unsound one is refused and logged (`tls_certificate_rejected`). At
//! start-up an expired, not-yet-valid or mismatched pair, or a missing file, is an error naming
//! the file. The optional `http_redirect_addr` listener answers every plain-HTTP request with
//! `308` to its HTTPS twin and serves nothing else. Strict-Transport-Security is on every HTTPS
//! response (see [`security_headers`]).
//!
//! Middleware, outermost first: request id (generated `req_…`, echoed as `Request-Id`, put on
//! the tracing span and in every error body), trace span (method and route template, never
//! the query string or body), panic catcher (opaque 500), whole-request timeout, body size limit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;

use crate::db::{Db, Durability};
use crate::error::{ApiError, ErrorType, REQUEST_ID};
use crate::ids::random_base62;
use crate::processor::simulator::Simulator;
use crate::{config::Config, AppState};

/// How often expired idempotency keys are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Builds the application router over `state`.
pub fn app(state: AppState) -> Router {
    let timeout = Duration::from_millis(state.config.request_timeout_ms);
    Router::new()
        .merge(crate::patients::router())
        .merge(crate::invoices::router())
        .merge(crate::payments::router())
        .merge(crate::refunds::router())
        .merge(crate::ledger::router())
        .merge(crate::export::router())
        .merge(crate::identity::router())
        .merge(crate::audit::router())
        .merge(crate::stripe::webhooks::router())
        .merge(crate::webhooks::router())
        .route("/v1/openapi.json", get(crate::openapi::serve))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(
            crate::api::REQUEST_BODY_BYTES_MAX,
        ))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            timeout,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response()
        }))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            request_context,
        ))
        .with_state(state)
}

/// Gives the request an id, a tracing span and a task-local for error bodies.
async fn request_context(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let request_id = format!("req_{}", random_base62(20));
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    // The audit record of this request: the principal extractor fills in the caller.
    let audited = request.uri().path().starts_with("/v1/") && route != "/v1/openapi.json";
    let slot = crate::audit::AuditSlot::default();
    request.extensions_mut().insert(slot.clone());
    let method = request.method().to_string();
    let resource = crate::audit::resource_of(request.uri().path(), request.uri().query());
    let ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let span = tracing::info_span!("request", request_id = %request_id, method = %request.method(), route = %route);
    let started = std::time::Instant::now();
    let mut response = tracing::Instrument::instrument(
        REQUEST_ID.scope(request_id.clone(), next.run(request)),
        span.clone(),
    )
    .await;
    span.in_scope(|| {
        tracing::info!(
            status = response.status().as_u16(),
            latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "request finished"
        )
    });
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("request-id", value);
    }
    security_headers(response.headers_mut());
    if audited {
        state
            .audit
            .record(crate::audit::Record {
                at_us: crate::db::now_us(),
                actor: slot.actor(),
                action: format!("{method} {route}"),
                resource,
                ip,
                outcome: i64::from(response.status().as_u16()),
                request_id: Some(request_id),
            })
            .await;
    }
    response
}

/// On every response: HTTPS only (HSTS), no framing, no inline or third-party script, no
/// MIME sniffing, no referrer leaking ids in URLs, and no caching of health or payment data.
fn security_headers(h: &mut axum::http::HeaderMap) {
    use axum::http::header;
    for (name, value) in [
        (
            header::STRICT_TRANSPORT_SECURITY,
            "max-age=63072000; includeSubDomains",
        ),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        if !h.contains_key(&name) {
            h.insert(name, HeaderValue::from_static(value));
        }
    }
}

async fn not_found() -> ApiError {
    ApiError::simple(
        StatusCode::NOT_FOUND,
        ErrorType::InvalidRequestError,
        "route_not_found",
        "Unrecognized request URL.",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::simple(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorType::InvalidRequestError,
        "method_not_allowed",
        "This URL does not accept that method.",
    )
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn readyz(State(state): State<AppState>) -> Response {
    match sqlx::query("SELECT 1").execute(&state.db.pool).await {
        Ok(_) => Json(serde_json::json!({"status": "ready", "database": state.db.backend.name()}))
            .into_response(),
        Err(e) => {
            tracing::warn!(error = ?e, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({"status": "unavailable"})),
            )
                .into_response()
        }
    }
}

/// Connects, migrates and builds the state for `config`.
pub async fn prepare(config: Config) -> anyhow::Result<AppState> {
    let db = Db::connect(&config.database_url).await?;
    crate::db::migrate(&db).await?;
    // Before anything else: a wrong or missing keyring refuses to start, rather than serve
    // with data it cannot read.
    let keys = crate::crypto::Keys::open(config.key_source(), &db).await?;
    // The simulator stands for the processor on the other side of the wire: its own small pool,
    // whose commits do not wait for the disk (they survive a process crash, which is what the
    // crash-recovery tests need) and so do not compete with billing commits for fsyncs.
    // With STRIPE_API_KEY set, Stripe is the processor (src/stripe).
    let processor: Arc<dyn crate::processor::PaymentProcessor> =
        match crate::stripe::processor::StripeProcessor::from_config(&config)? {
            Some(stripe) => {
                tracing::info!(api_base = %config.stripe.api_base, "processor: stripe");
                Arc::new(stripe)
            }
            None => {
                let simulator_db =
                    Db::connect_with(&config.database_url, Durability::Relaxed, 8).await?;
                Arc::new(Simulator::new(simulator_db))
            }
        };
    let vault = crate::vault::VaultClient::from_config(&config)?;
    if let Some(v) = &vault {
        tracing::info!(vault = %v.base_url(), "card vault configured");
    }
    let identity = Arc::new(crate::identity::Identity::from_config(&config));
    // The dummy password hash and the common-password list, built before the first sign-in
    // (so the first unknown-user attempt takes no longer than any other).
    tokio::task::spawn_blocking(crate::identity::password::warm_up);
    let audit = crate::audit::AuditSink::start(db.clone(), &config);
    Ok(AppState {
        db,
        config: Arc::new(config),
        processor,
        vault,
        identity,
        audit,
        keys,
    })
}

/// A running server (tests and `carebill up` use it in-process).
pub struct Running {
    /// The HTTPS listener.
    pub addr: SocketAddr,
    /// The plain-HTTP redirect listener, when `http_redirect_addr` is set.
    pub redirect_addr: Option<SocketAddr>,
    pub state: AppState,
    /// The certificate and key in service (reloaded when their files change).
    pub tls: Arc<tlskit::ReloadingCert>,
    /// Ends when the server has shut down (SIGINT/SIGTERM) and drained.
    pub handle: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Aborts a helper task (certificate watcher, redirect listener) when the server task ends or
/// is aborted itself.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves `state` over HTTPS on `listener` (and the redirect listener, if configured) in a
/// background task. Fails, naming the file or setting, when the certificate cannot be served.
pub fn spawn(state: AppState, listener: TcpListener) -> anyhow::Result<Running> {
    let addr = listener.local_addr()?;
    let certs = tlskit::ReloadingCert::load("billing", state.config.tls_paths()?)?;
    let tls = tlskit::server_config(certs.clone(), None)?;
    let redirect = match &state.config.http_redirect_addr {
        Some(redirect_addr) => {
            let std_listener = std::net::TcpListener::bind(redirect_addr.as_str())
                .with_context(|| format!("binding http_redirect_addr {redirect_addr}"))?;
            std_listener.set_nonblocking(true)?;
            Some(TcpListener::from_std(std_listener)?)
        }
        None => None,
    };
    let redirect_addr = redirect.as_ref().map(|l| l.local_addr()).transpose()?;
    let reload_interval = Duration::from_millis(state.config.tls_reload_interval_ms);
    crate::idempotency::spawn_sweeper(state.clone(), SWEEP_INTERVAL);
    let every = state.config.stripe.reconcile_interval_seconds;
    if every > 0 && state.config.stripe.api_key.is_some() {
        crate::stripe::reconcile::spawn_periodic(
            state.db.clone(),
            state.config.clone(),
            std::time::Duration::from_secs(every),
        );
    }
    crate::webhooks::worker::spawn(state.clone())?;
    let router = app(state.clone());
    let watched = certs.clone();
    let handle = tokio::spawn(async move {
        let _watcher = AbortOnDrop(watched.watch(reload_interval));
        let _redirect = redirect.map(|l| {
            AbortOnDrop(tokio::spawn(tlskit::serve_redirect(
                l,
                addr.port(),
                std::future::pending(),
            )))
        });
        // The peer address reaches handlers (sign-in throttling, security events, the audit
        // trail).
        tlskit::serve(
            listener,
            tls,
            router,
            "billing",
            |conn: &tlskit::Connection<'_>| ConnectInfo(conn.remote),
            shutdown_signal(),
        )
        .await;
        Ok(())
    });
    Ok(Running {
        addr,
        redirect_addr,
        state,
        tls: certs,
        handle,
    })
}

/// Binds `config.addr` and serves until SIGINT/SIGTERM.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    // Checked before the database is touched: a server that cannot serve changes nothing.
    tlskit::certs::check_files(&config.tls_paths()?)?;
    let addr = config.addr.clone();
    let state = prepare(config).await?;
    let listener = TcpListener::bind(&addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let running = spawn(state, listener)?;
    tracing::info!(addr = %running.addr, redirect = ?running.redirect_addr, "carebill listening (HTTPS)");
    running.handle.await??;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = terminate => {} }
    tracing::info!("shutting down");
}
