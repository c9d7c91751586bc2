//! The vault's two HTTP surfaces, each on its own TLS listener:
//!
//! - [`collect`]: the one a patient's browser posts the card form to. Server TLS, CORS limited
//!   to the portal's origins, per-address and global rate limits, a small body limit. It can
//!   only create tokens.
//! - [`internal`]: billing's, mutual TLS with an allowlist. Masked metadata, the processor
//!   payment method, deletion. No endpoint anywhere returns a card number.

pub mod collect;
pub mod error;
pub mod internal;

use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

/// Requests that take longer than this are answered 503 and their work abandoned.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

fn generated_request_id() -> String {
    format!("req_{}", uuid::Uuid::new_v4().simple())
}

/// A request id from billing is kept (so both services' records of one payment share it) if it
/// looks like one of billing's: `req_` and 1–64 letters, digits, `_` or `-`.
fn accepted_request_id(value: &HeaderValue) -> Option<String> {
    let s = value.to_str().ok()?;
    let rest = s.strip_prefix("req_")?;
    let ok = !rest.is_empty()
        && rest.len() <= 64
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    ok.then(|| s.to_owned())
}

async fn with_request_id(trust_caller: bool, request: Request, next: Next) -> Response {
    let id = trust_caller
        .then(|| {
            request
                .headers()
                .get("x-request-id")
                .and_then(accepted_request_id)
        })
        .flatten()
        .unwrap_or_else(generated_request_id);
    let method = request.method().clone();
    let path = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let started = std::time::Instant::now();
    let mut response = error::REQUEST_ID
        .scope(id.clone(), async move { next.run(request).await })
        .await;
    tracing::info!(
        request_id = %id,
        %method,
        route = %path,
        status = response.status().as_u16(),
        ms = started.elapsed().as_millis(),
        "request"
    );
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&id) {
        headers.insert(HeaderName::from_static("x-request-id"), v);
    }
    // Card data responses are never cached, sniffed or served over plain HTTP.
    headers.insert(
        axum::http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    headers.insert(
        axum::http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        axum::http::header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=63072000; includeSubDomains"),
    );
    response
}

/// Request ids generated here; the caller's ignored (the collect listener).
pub async fn request_id_generated(request: Request, next: Next) -> Response {
    with_request_id(false, request, next).await
}

/// Billing's request id kept when well-formed (the internal listener).
pub async fn request_id_from_billing(request: Request, next: Next) -> Response {
    with_request_id(true, request, next).await
}

/// `GET /healthz` on both listeners.
pub async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "status": "ok" }))
}
