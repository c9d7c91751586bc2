//! The vault's error answers: `{type, code, message, param, request_id}`, the same shape as
//! billing's. Messages are fixed texts chosen here; no client-supplied value is ever repeated,
//! so a card number sent in the wrong field cannot come back in an error or a log line.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

tokio::task_local! {
    /// The id of the request being served, for error bodies and audit records.
    pub static REQUEST_ID: String;
}

pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(|id| id.clone()).ok()
}

#[derive(Debug)]
pub enum VaultError {
    Client {
        status: StatusCode,
        kind: &'static str,
        code: &'static str,
        message: &'static str,
        param: Option<String>,
    },
    RateLimited {
        retry_after_secs: u64,
    },
    Busy,
    Internal(anyhow::Error),
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    param: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<String>,
}

impl VaultError {
    pub fn invalid(param: impl Into<String>, code: &'static str, message: &'static str) -> Self {
        VaultError::Client {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code,
            message,
            param: Some(param.into()),
        }
    }

    pub fn card(param: &'static str, code: &'static str, message: &'static str) -> Self {
        VaultError::Client {
            status: StatusCode::BAD_REQUEST,
            kind: "card_error",
            code,
            message,
            param: Some(param.to_owned()),
        }
    }

    pub fn not_found(param: &'static str) -> Self {
        VaultError::Client {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            code: "resource_missing",
            message: "No such card token.",
            param: Some(param.to_owned()),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            VaultError::Client { status, .. } => *status,
            VaultError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            VaultError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            VaultError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The outcome word for the audit trail.
    pub fn outcome(&self) -> String {
        match self {
            VaultError::Client { code, .. } => format!("refused:{code}"),
            VaultError::RateLimited { .. } => "refused:rate_limited".to_owned(),
            VaultError::Busy => "error:busy".to_owned(),
            VaultError::Internal(_) => "error:internal".to_owned(),
        }
    }
}

impl IntoResponse for VaultError {
    fn into_response(self) -> Response {
        let request_id = current_request_id();
        let (kind, code, message, param) = match &self {
            VaultError::Client {
                kind,
                code,
                message,
                param,
                status,
            } => {
                tracing::info!(code, status = status.as_u16(), "client error");
                (*kind, *code, *message, param.as_deref())
            }
            VaultError::RateLimited { .. } => (
                "rate_limit_error",
                "rate_limited",
                "Too many requests; try again later.",
                None,
            ),
            VaultError::Busy => {
                tracing::warn!("database busy after retries");
                (
                    "api_error",
                    "busy",
                    "The vault is busy; retry the request.",
                    None,
                )
            }
            VaultError::Internal(e) => {
                tracing::error!(error = %e, "internal error");
                (
                    "api_error",
                    "internal_error",
                    "An internal error occurred.",
                    None,
                )
            }
        };
        let mut response = (
            self.status(),
            axum::Json(Body {
                kind,
                code,
                message,
                param,
                request_id,
            }),
        )
            .into_response();
        if let VaultError::RateLimited { retry_after_secs } = self {
            if let Ok(v) = HeaderValue::from_str(&retry_after_secs.max(1).to_string()) {
                response.headers_mut().insert("retry-after", v);
            }
        }
        response
    }
}

impl From<sqlx::Error> for VaultError {
    fn from(e: sqlx::Error) -> Self {
        if dbkit::is_conflict(&e) || dbkit::is_unique_violation(&e) {
            VaultError::Busy
        } else {
            VaultError::Internal(anyhow::Error::new(e))
        }
    }
}

impl From<anyhow::Error> for VaultError {
    fn from(e: anyhow::Error) -> Self {
        VaultError::Internal(e)
    }
}

impl dbkit::RetryableError for VaultError {
    /// A conflict, or two first tokenizations of one card racing (unique index): the retry
    /// finds the card the other transaction stored.
    fn is_retryable(&self) -> bool {
        matches!(self, VaultError::Busy)
    }
}

pub type VaultResult<T> = Result<T, VaultError>;
