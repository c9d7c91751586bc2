//! The one error type of the HTTP API and how it becomes a response.
//!
//! Every 4xx carries a stable machine-readable `code` and, where one parameter is at fault,
//! `param` naming it. A 5xx says nothing about its cause (the log keeps the cause chain under
//! the same request id). Messages never echo client input: a bad value might be a card number
//! or a diagnosis.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

use crate::db::RetryableError;
use crate::money::MoneyError;

tokio::task_local! {
    /// The id of the request being served, for error bodies; set by the request-id middleware.
    pub static REQUEST_ID: String;
}

/// The current request's id, or an empty string outside a request.
pub fn current_request_id() -> String {
    REQUEST_ID.try_with(|id| id.clone()).unwrap_or_default()
}

/// The `error.type` values of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorType {
    InvalidRequestError,
    CardError,
    IdempotencyError,
    AuthenticationError,
    PermissionError,
    RateLimitError,
    ApiError,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A client error: bad parameter, refused business rule, unknown resource.
    #[error("{code}: {message}")]
    Client {
        status: StatusCode,
        kind: ErrorType,
        code: &'static str,
        message: String,
        param: Option<String>,
        /// An object to attach to the error body (e.g. the failed `payment` of a decline).
        attach: Option<(&'static str, serde_json::Value)>,
    },
    /// The database stayed busy through every retry.
    #[error("database busy")]
    Busy,
    /// Anything else: logged with its cause, answered as an opaque 500.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// 400 `invalid_request_error` naming the parameter at fault.
    pub fn invalid(
        param: impl Into<String>,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        ApiError::Client {
            status: StatusCode::BAD_REQUEST,
            kind: ErrorType::InvalidRequestError,
            code,
            message: message.into(),
            param: Some(param.into()),
            attach: None,
        }
    }

    /// A business-rule refusal (`amount_exceeds_refundable`, `invoice_not_open`, …): 400 with
    /// the parameter whose value the rule refused.
    pub fn refused(param: &str, code: &'static str, message: impl Into<String>) -> Self {
        ApiError::invalid(param, code, message)
    }

    /// 404 for an id that does not exist (or that the caller may not see).
    pub fn not_found(param: &str, what: &str) -> Self {
        ApiError::Client {
            status: StatusCode::NOT_FOUND,
            kind: ErrorType::InvalidRequestError,
            code: "resource_missing",
            message: format!("No such {what}."),
            param: Some(param.to_owned()),
            attach: None,
        }
    }

    pub fn with_status(mut self, new_status: StatusCode) -> Self {
        if let ApiError::Client { status, .. } = &mut self {
            *status = new_status;
        }
        self
    }

    pub fn simple(status: StatusCode, kind: ErrorType, code: &'static str, message: &str) -> Self {
        ApiError::Client {
            status,
            kind,
            code,
            message: message.to_owned(),
            param: None,
            attach: None,
        }
    }

    /// 429 with `Retry-After: secs` (header and body).
    pub fn rate_limited(secs: u64) -> Self {
        ApiError::Client {
            status: StatusCode::TOO_MANY_REQUESTS,
            kind: ErrorType::RateLimitError,
            code: "rate_limited",
            message: "Too many attempts; try again later.".to_owned(),
            param: None,
            attach: Some(("retry_after", serde_json::json!(secs))),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Client { status, .. } => *status,
            ApiError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// One line for a command-line user: `param: message` (internal details stay in the log).
    pub fn client_message(&self) -> String {
        match self {
            ApiError::Client {
                message,
                param: Some(param),
                ..
            } => format!("{param}: {message}"),
            ApiError::Client { message, .. } => message.clone(),
            ApiError::Busy => "the database is busy; try again".to_owned(),
            ApiError::Internal(e) => format!("internal error: {e:#}"),
        }
    }

    /// The JSON body of this error (with the current request id).
    pub fn body(&self) -> serde_json::Value {
        let request_id = current_request_id();
        match self {
            ApiError::Client {
                kind,
                code,
                message,
                param,
                attach,
                ..
            } => {
                let mut err = json!({
                    "type": kind,
                    "code": code,
                    "message": message,
                    "param": param,
                    "request_id": request_id,
                });
                if let (Some((name, value)), Some(map)) = (attach, err.as_object_mut()) {
                    map.insert((*name).to_owned(), value.clone());
                }
                json!({ "error": err })
            }
            ApiError::Busy => json!({"error": {
                "type": ErrorType::ApiError, "code": "database_busy",
                "message": "The service is busy; retry the request with the same Idempotency-Key.",
                "param": null, "request_id": request_id}}),
            ApiError::Internal(_) => json!({"error": {
                "type": ErrorType::ApiError, "code": "internal_error",
                "message": "An internal error occurred. It has been logged under this request id.",
                "param": null, "request_id": request_id}}),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Internal(e) => tracing::error!(error = ?e, "internal error"),
            ApiError::Busy => tracing::warn!("database busy after retries"),
            ApiError::Client { code, status, .. } => {
                tracing::info!(code, status = status.as_u16(), "client error")
            }
        }
        let retry_after = match &self {
            ApiError::Client {
                attach: Some(("retry_after", v)),
                ..
            } => v.as_u64(),
            _ => None,
        };
        let mut response = (self.status(), axum::Json(self.body())).into_response();
        if let Some(secs) = retry_after {
            if let Ok(v) = axum::http::HeaderValue::from_str(&secs.to_string()) {
                response
                    .headers_mut()
                    .insert(axum::http::header::RETRY_AFTER, v);
            }
        }
        response
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if crate::db::is_conflict(&e) {
            ApiError::Busy
        } else {
            ApiError::Internal(anyhow::Error::new(e))
        }
    }
}

impl RetryableError for ApiError {
    fn is_retryable(&self) -> bool {
        matches!(self, ApiError::Busy)
    }
}

impl From<MoneyError> for ApiError {
    /// Money errors that reach here without a parameter are internal: the inputs were
    /// validated at the boundary, so an overflow now is a bug, not bad input.
    fn from(e: MoneyError) -> Self {
        ApiError::Internal(anyhow::Error::new(e))
    }
}
