//! Request extractors shared by every resource module: JSON bodies and query strings whose
//! errors name the parameter at fault, and list pagination.
//!
//! Error messages are built from the *expected* shape, never from the value received: the
//! value might be a card number or health data.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ErrorType};

/// Largest request body accepted, in bytes. An invoice of [`crate::invoices::LINES_MAX`] lines
/// with long descriptions fits comfortably.
pub const REQUEST_BODY_BYTES_MAX: usize = 256 * 1024;
/// Default and maximum page sizes for list endpoints.
pub const PAGE_SIZE_DEFAULT: i64 = 10;
pub const PAGE_SIZE_MAX: i64 = 100;

/// A JSON body parsed into `T`, with errors that name the parameter.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim() == "application/json")
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::simple(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorType::InvalidRequestError,
                "invalid_content_type",
                "Send the request body as application/json.",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::simple(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    ErrorType::InvalidRequestError,
                    "body_too_large",
                    "The request body is larger than the service accepts.",
                )
            } else {
                ApiError::simple(
                    StatusCode::BAD_REQUEST,
                    ErrorType::InvalidRequestError,
                    "invalid_body",
                    "The request body could not be read.",
                )
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses a JSON document into `T`, mapping failures to an error naming the parameter.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => data_error(&path, &inner.to_string()),
            _ => ApiError::simple(
                StatusCode::BAD_REQUEST,
                ErrorType::InvalidRequestError,
                "invalid_json",
                "The request body is not valid JSON.",
            ),
        }
    })?;
    de.end().map_err(|_| {
        ApiError::simple(
            StatusCode::BAD_REQUEST,
            ErrorType::InvalidRequestError,
            "invalid_json",
            "The request body has trailing characters after the JSON document.",
        )
    })?;
    Ok(value)
}

/// A serde data error as an API error naming the parameter. Serde's own messages quote the
/// value received, so only the "expected …" part of them is kept.
fn data_error(path: &str, message: &str) -> ApiError {
    let join = |field: &str| {
        if path.is_empty() || path == "." {
            field.to_owned()
        } else {
            format!("{path}.{field}")
        }
    };
    // serde_json appends " at line L column C"; drop it.
    let message = message.split(" at line ").next().unwrap_or(message);
    if let Some(field) = backticked(message, "missing field `") {
        return ApiError::invalid(
            join(&field),
            "parameter_missing",
            "Missing required parameter.",
        );
    }
    if let Some(field) = backticked(message, "unknown field `") {
        return ApiError::invalid(
            join(&field),
            "parameter_unknown",
            "Received unknown parameter.",
        );
    }
    let param = if path.is_empty() || path == "." {
        "body".to_owned()
    } else {
        path.to_owned()
    };
    if message.starts_with("invalid type")
        || message.starts_with("invalid value")
        || message.starts_with("invalid length")
    {
        let expected = message
            .rsplit(", expected ")
            .next()
            .unwrap_or("a different value");
        let code = if message.starts_with("invalid type") {
            "parameter_invalid_type"
        } else {
            "parameter_invalid"
        };
        return ApiError::invalid(param, code, format!("Invalid value: expected {expected}."));
    }
    if message.starts_with("unknown variant") {
        let expected = message
            .rsplit("expected ")
            .next()
            .unwrap_or("a documented value");
        return ApiError::invalid(
            param,
            "parameter_invalid",
            format!("Invalid value: expected {expected}."),
        );
    }
    // Our own validation messages (from TryFrom impls) never quote the value.
    ApiError::invalid(param, "parameter_invalid", message.to_owned())
}

/// The identifier-like text between `prefix` and the next backtick, if it looks like a field name.
fn backticked(message: &str, prefix: &str) -> Option<String> {
    let rest = message.strip_prefix(prefix)?;
    let field = rest.split('`').next()?;
    let safe = !field.is_empty()
        && field.len() <= 64
        && field
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    Some(if safe {
        field.to_owned()
    } else {
        "body".to_owned()
    })
}

/// A query string parsed into `T`, with errors that name the parameter.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded::Deserializer::new(form_urlencoded_parse(query));
        serde_path_to_error::deserialize(de)
            .map(ApiQuery)
            .map_err(|e| {
                let path = e.path().to_string();
                data_error(&path, &e.into_inner().to_string())
            })
    }
}

fn form_urlencoded_parse(query: &str) -> form_urlencoded::Parse<'_> {
    form_urlencoded::parse(query.as_bytes())
}

/// `limit` and `starting_after` of every list endpoint. Unknown query parameters are refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    pub limit: Option<String>,
    pub starting_after: Option<String>,
}

impl PageQuery {
    /// The page size, `PAGE_SIZE_DEFAULT` if absent; 1..=PAGE_SIZE_MAX.
    pub fn limit(&self) -> Result<i64, ApiError> {
        parse_limit(self.limit.as_deref())
    }
}

pub fn parse_limit(raw: Option<&str>) -> Result<i64, ApiError> {
    match raw {
        None => Ok(PAGE_SIZE_DEFAULT),
        Some(s) => match s.parse::<i64>() {
            Ok(n) if (1..=PAGE_SIZE_MAX).contains(&n) => Ok(n),
            _ => Err(ApiError::invalid(
                "limit",
                "parameter_invalid",
                format!("limit must be an integer between 1 and {PAGE_SIZE_MAX}."),
            )),
        },
    }
}

/// A page of a list, Stripe style.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct List<T: Serialize> {
    /// Always `"list"`.
    pub object: &'static str,
    pub data: Vec<T>,
    pub has_more: bool,
    pub url: String,
}

impl<T: Serialize> List<T> {
    /// Builds a page from up to `limit + 1` rows: the extra row only says there is more.
    pub fn from_rows(mut rows: Vec<T>, limit: i64, url: &str) -> Self {
        let limit = usize::try_from(limit).unwrap_or(0);
        let has_more = rows.len() > limit;
        rows.truncate(limit);
        List {
            object: "list",
            data: rows,
            has_more,
            url: url.to_owned(),
        }
    }
}

/// Checks a free-text field: trimmed non-empty (unless `allow_empty`), at most `max_chars`
/// characters, no control characters. Returns the trimmed text.
pub fn text_field(param: &str, value: &str, max_chars: usize) -> Result<String, ApiError> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(ApiError::invalid(
            param,
            "parameter_invalid",
            "Must not be empty.",
        ));
    }
    if trimmed.chars().count() > max_chars {
        return Err(ApiError::invalid(
            param,
            "parameter_too_long",
            format!("Must be at most {max_chars} characters."),
        ));
    }
    if trimmed.chars().any(|c| c.is_control() && c != '\n') {
        return Err(ApiError::invalid(
            param,
            "parameter_invalid",
            "Must not contain control characters.",
        ));
    }
    Ok(trimmed.to_owned())
}

/// Parses a calendar date `YYYY-MM-DD`.
pub fn date_field(param: &str, value: &str) -> Result<chrono::NaiveDate, ApiError> {
    if value.len() != 10 {
        return Err(ApiError::invalid(
            param,
            "parameter_invalid",
            "Must be a date in the form YYYY-MM-DD.",
        ));
    }
    chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d").map_err(|_| {
        ApiError::invalid(
            param,
            "parameter_invalid",
            "Must be a date in the form YYYY-MM-DD.",
        )
    })
}

/// Parses an RFC 3339 timestamp (or a date, meaning its midnight UTC) into epoch microseconds.
pub fn timestamp_field(param: &str, value: &str) -> Result<i64, ApiError> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(value) {
        return Ok(t.timestamp_micros());
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d") {
        if let Some(t) = d.and_hms_opt(0, 0, 0) {
            return Ok(t.and_utc().timestamp_micros());
        }
    }
    Err(ApiError::invalid(
        param,
        "parameter_invalid",
        "Must be an RFC 3339 timestamp such as 2026-01-31T23:59:59Z.",
    ))
}

/// The `Location`-free JSON response of a create call: 200 with the object, as Stripe does.
pub fn ok_json<T: Serialize>(value: &T) -> Result<(StatusCode, serde_json::Value), ApiError> {
    let body = serde_json::to_value(value).map_err(|e| ApiError::Internal(e.into()))?;
    Ok((StatusCode::OK, body))
}
