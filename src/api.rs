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

use crate::error::ApiError;

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
            return Err(ApiError::invalid(
                "Content-Type",
                "invalid_content_type",
                "Send the request body as application/json.",
            )
            .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|rejection| body_read_error(rejection.status()))?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// The error for a body that could not be read: 413 over [`REQUEST_BODY_BYTES_MAX`], else 400.
pub fn body_read_error(status: StatusCode) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::invalid(
            "body",
            "body_too_large",
            "The request body is larger than the service accepts.",
        )
        .with_status(StatusCode::PAYLOAD_TOO_LARGE)
    } else {
        ApiError::invalid(
            "body",
            "invalid_body",
            "The request body could not be read.",
        )
    }
}

/// Parses a JSON document into `T`, mapping failures to an error naming the parameter.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().clone();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => data_error(&path, &inner.to_string(), "body"),
            _ => ApiError::invalid(
                "body",
                "invalid_json",
                "The request body is not valid JSON.",
            ),
        }
    })?;
    de.end().map_err(|_| {
        ApiError::invalid(
            "body",
            "invalid_json",
            "The request body has trailing characters after the JSON document.",
        )
    })?;
    Ok(value)
}

/// A serde data error as an API error naming the parameter. Serde's own messages quote the
/// value received, so only the "expected …" part of them is kept. `root` names the whole
/// document (`body` or `query`) when no single parameter is at fault.
fn data_error(path: &serde_path_to_error::Path, message: &str, root: &str) -> ApiError {
    let parent = parent_path(path);
    let path = path.to_string();
    // `field` inside the object at `path`; the object itself when the field is not a plain name.
    let name = |path: &str, field: Option<String>| match (path.is_empty() || path == ".", field) {
        (true, Some(field)) => field,
        (false, Some(field)) => format!("{path}.{field}"),
        (true, None) => root.to_owned(),
        (false, None) => path.to_owned(),
    };
    let message = strip_position(message);
    if let Some(field) = backticked(message, "missing field `") {
        return ApiError::invalid(
            name(&path, field),
            "parameter_missing",
            "Missing required parameter.",
        );
    }
    if let Some(field) = backticked(message, "unknown field `") {
        // The path already ends with the unknown key as sent: name it once, sanitized.
        return ApiError::invalid(
            name(&parent, field),
            "parameter_unknown",
            "Received unknown parameter.",
        );
    }
    if let Some(field) = backticked(message, "duplicate field `") {
        return ApiError::invalid(
            name(&path, field),
            "parameter_invalid",
            "Parameter sent more than once.",
        );
    }
    let param = if path.is_empty() || path == "." {
        root.to_owned()
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

/// Drops the " at line L column C" serde_json appends, and only that: the value quoted earlier
/// in the message may itself contain " at line ".
fn strip_position(message: &str) -> &str {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match message.rsplit_once(" at line ") {
        Some((head, tail))
            if tail
                .split_once(" column ")
                .is_some_and(|(line, column)| digits(line) && digits(column)) =>
        {
            head
        }
        _ => message,
    }
}

/// The path without its last segment, formatted as `serde_path_to_error` formats paths.
fn parent_path(path: &serde_path_to_error::Path) -> String {
    let segments = path.iter().len().saturating_sub(1);
    let mut out = String::new();
    for segment in path.iter().take(segments) {
        if !out.is_empty() && !matches!(segment, serde_path_to_error::Segment::Seq { .. }) {
            out.push('.');
        }
        out.push_str(&segment.to_string());
    }
    out
}

/// If `message` starts with `prefix`: the text up to the next backtick if it looks like a field
/// name, else `None` (a client-chosen key is not repeated back).
fn backticked(message: &str, prefix: &str) -> Option<Option<String>> {
    let rest = message.strip_prefix(prefix)?;
    let field = rest.split('`').next().unwrap_or("");
    let safe = !field.is_empty()
        && field.len() <= 64
        && field
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    Some(safe.then(|| field.to_owned()))
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
                let path = e.path().clone();
                data_error(&path, &e.into_inner().to_string(), "query")
            })
    }
}

/// A path parameter. axum's own rejection (e.g. for invalid UTF-8) is plain text; this one is
/// the API's error object naming the parameter.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        use axum::extract::path::{ErrorKind, Path};
        use axum::extract::rejection::PathRejection;
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => {
                let param = match &rejection {
                    PathRejection::FailedToDeserializePathParams(e) => match e.kind() {
                        ErrorKind::InvalidUtf8InPathParam { key }
                        | ErrorKind::ParseErrorAtKey { key, .. }
                        | ErrorKind::DeserializeError { key, .. } => key.clone(),
                        _ => "id".to_owned(),
                    },
                    _ => "id".to_owned(),
                };
                Err(ApiError::invalid(
                    param,
                    "parameter_invalid",
                    "Invalid path parameter.",
                ))
            }
        }
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

/// The `seq` of the row a `starting_after` cursor names, or `default` without a cursor.
/// `table` is one of our table names; `what` names the resource in the 404.
pub async fn cursor_seq(
    state: &crate::AppState,
    table: &'static str,
    what: &str,
    starting_after: Option<&str>,
    default: i64,
) -> Result<i64, ApiError> {
    let Some(id) = starting_after else {
        return Ok(default);
    };
    let row = sqlx::query(&format!("SELECT seq FROM {table} WHERE id = $1"))
        .bind(id)
        .fetch_optional(&state.db.pool)
        .await?
        .ok_or_else(|| ApiError::not_found("starting_after", what))?;
    Ok(sqlx::Row::try_get(&row, "seq")?)
}
