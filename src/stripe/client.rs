//! Stripe's REST API: form-encoded requests, JSON answers, an `Idempotency-Key` on every POST,
//! and bounded retries.
//!
//! A call is retried — same method, same body, same idempotency key, so Stripe answers a
//! retry of a request that did land with the first answer instead of moving money again — when
//! its outcome is unknown or Stripe says to: a timeout, a connection error or dropped
//! connection, `409` (another request with the key is in flight), `429`, or any `5xx`. When
//! Stripe sends `Stripe-Should-Retry`, its word decides. Between attempts the pause doubles from
//! `retry_base_ms` up to `retry_max_ms`, jittered over the upper half of that, so a fleet of
//! retrying clients does not synchronise. At most `max_retries` retries; then the outcome is
//! [`StripeError::Unknown`] and the caller leaves the payment `processing` for the reconciler.
//!
//! Nothing here logs a request body (the vault's card numbers go through the vault's own
//! client, never this one) or the key.

use std::time::Duration;

use rand::Rng;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::StripeSettings;

/// The API version our requests are written against.
pub const STRIPE_VERSION: &str = "2024-06-20";

/// An error Stripe answered (`4xx` with its error object), or an outcome left unknown.
#[derive(Debug, Clone)]
pub enum StripeError {
    /// Stripe refused the request: nothing happened (or, for a card error, a failed attempt was
    /// recorded at Stripe). `error` is Stripe's error object.
    Api { status: u16, error: Value },
    /// No answer we can trust after every retry: the request may or may not have taken effect.
    Unknown(String),
}

impl StripeError {
    pub fn field(&self, name: &str) -> Option<&str> {
        match self {
            StripeError::Api { error, .. } => error.get(name).and_then(Value::as_str),
            StripeError::Unknown(_) => None,
        }
    }
}

impl std::fmt::Display for StripeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // Type and code only: Stripe's messages may quote what was sent.
            StripeError::Api { status, .. } => write!(
                f,
                "stripe answered {status} ({}/{})",
                self.field("type").unwrap_or("?"),
                self.field("code").unwrap_or("?")
            ),
            StripeError::Unknown(why) => write!(f, "stripe outcome unknown: {why}"),
        }
    }
}

#[derive(Clone)]
pub struct StripeClient {
    http: reqwest::Client,
    base: String,
    key: std::sync::Arc<zeroize::Zeroizing<String>>,
    max_retries: u32,
    retry_base_ms: u64,
    retry_max_ms: u64,
}

impl StripeClient {
    pub fn new(
        settings: &StripeSettings,
        key: std::sync::Arc<zeroize::Zeroizing<String>>,
    ) -> anyhow::Result<StripeClient> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.timeout_ms))
            .connect_timeout(Duration::from_millis(settings.timeout_ms))
            .user_agent(concat!("carebill/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(StripeClient {
            http,
            base: settings.api_base.clone(),
            key,
            max_retries: settings.max_retries,
            retry_base_ms: settings.retry_base_ms,
            retry_max_ms: settings.retry_max_ms,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `POST path` with `form`, carrying `idempotency_key`.
    pub async fn post(
        &self,
        path: &str,
        form: &[(&str, String)],
        idempotency_key: &str,
    ) -> Result<Value, StripeError> {
        self.call(Method::POST, path, form, Some(idempotency_key))
            .await
    }

    /// `GET path?query`; `Ok(None)` when Stripe answers 404 (no such object).
    pub async fn get(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Option<Value>, StripeError> {
        match self.call(Method::GET, path, query, None).await {
            Ok(v) => Ok(Some(v)),
            Err(StripeError::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        params: &[(&str, String)],
        idempotency_key: Option<&str>,
    ) -> Result<Value, StripeError> {
        let url = format!("{}{}", self.base, path);
        let encoded = serde_urlencoded::to_string(params)
            .map_err(|e| StripeError::Unknown(format!("encoding the request: {e}")))?;
        let mut attempt: u32 = 0;
        loop {
            let target = if method == Method::GET && !encoded.is_empty() {
                format!("{url}?{encoded}")
            } else {
                url.clone()
            };
            let mut request = self
                .http
                .request(method.clone(), &target)
                .bearer_auth(self.key.as_str())
                .header("Stripe-Version", STRIPE_VERSION);
            if method != Method::GET {
                request = request
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .body(encoded.clone());
            }
            if let Some(key) = idempotency_key {
                request = request.header("Idempotency-Key", key);
            }
            let outcome = Self::attempt(request).await;
            let retry = match &outcome {
                Attempt::Done(_) => false,
                Attempt::Refused { retry, .. } => *retry,
                Attempt::Lost(_) => true,
            };
            if !retry || attempt >= self.max_retries {
                return match outcome {
                    Attempt::Done(v) => Ok(v),
                    Attempt::Refused { status, error, .. }
                        if status < 500 && status != 429 && status != 409 =>
                    {
                        Err(StripeError::Api { status, error })
                    }
                    Attempt::Refused { status, .. } => Err(StripeError::Unknown(format!(
                        "stripe answered {status} after {} attempt(s)",
                        attempt.saturating_add(1)
                    ))),
                    Attempt::Lost(why) => Err(StripeError::Unknown(format!(
                        "{why} after {} attempt(s)",
                        attempt.saturating_add(1)
                    ))),
                };
            }
            tracing::warn!(path, attempt, "stripe call failed, retrying");
            tokio::time::sleep(self.backoff(attempt)).await;
            attempt = attempt.saturating_add(1);
        }
    }

    /// The pause before retry number `attempt + 1`: `base · 2^attempt`, capped, jittered over
    /// its upper half.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .retry_base_ms
            .saturating_mul(1u64.checked_shl(attempt.min(20)).unwrap_or(u64::MAX))
            .min(self.retry_max_ms);
        let low = exp / 2;
        let ms = rand::thread_rng().gen_range(low..=exp.max(low));
        Duration::from_millis(ms)
    }

    async fn attempt(request: reqwest::RequestBuilder) -> Attempt {
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return Attempt::Lost(describe(&e)),
        };
        let status = response.status();
        let should_retry = response
            .headers()
            .get("Stripe-Should-Retry")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.eq_ignore_ascii_case("true"));
        let body = match response.bytes().await {
            Ok(b) => b,
            // The answer was cut off: we cannot know what happened.
            Err(e) => return Attempt::Lost(describe(&e)),
        };
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        if status.is_success() {
            return match json {
                Some(v) if v.is_object() => Attempt::Done(v),
                _ => Attempt::Lost(format!(
                    "stripe answered {status} with a body that is not a JSON object"
                )),
            };
        }
        let retry_by_status = status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::CONFLICT
            || status.is_server_error();
        Attempt::Refused {
            status: status.as_u16(),
            error: json
                .and_then(|mut v| v.get_mut("error").map(Value::take))
                .unwrap_or(Value::Null),
            retry: should_retry.unwrap_or(retry_by_status),
        }
    }
}

enum Attempt {
    Done(Value),
    Refused {
        status: u16,
        error: Value,
        retry: bool,
    },
    Lost(String),
}

/// What went wrong on the wire, without the URL's query or any body.
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "could not connect".to_owned()
    } else if e.is_body() || e.is_decode() {
        "the answer was cut off".to_owned()
    } else {
        "connection lost".to_owned()
    }
}
