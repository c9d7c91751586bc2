//! `POST /v1/cards`: the card form. The only way card data enters carebill.
//!
//! Tokenizing is an oracle: with a card's BIN and last four known, someone who can tokenize at
//! will can try the middle digits until the Luhn check and a returned token tell them the card
//! exists. So every attempt — valid or not — counts against a per-address and a global limit
//! before the body is even read, refusals are audited, and a limited caller is logged as a
//! security event.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use serde_json::{Map, Value};
use tower_http::cors::{AllowOrigin, CorsLayer};
use zeroize::Zeroizing;

use super::error::{current_request_id, VaultError, VaultResult};
use crate::card::{CardError, CardNumber, Cvc, Expiry};
use crate::cards::{self, Actor, CardView, NewCard};
use crate::tls::Peer;
use crate::AppState;

/// A card form is a few hundred bytes; anything past this is refused unread.
pub const COLLECT_BODY_BYTES_MAX: usize = 4 * 1024;
pub const CARDHOLDER_NAME_CHARS_MAX: usize = 200;

/// The collect listener's rate limits.
pub struct RateLimits {
    per_address: RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, DefaultClock>,
    global: RateLimiter<NotKeyed, InMemoryState, DefaultClock>,
    clock: DefaultClock,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RateLimits")
    }
}

/// `n` requests per `window`, all of them usable at once.
fn quota(n: u32, window: Duration) -> Quota {
    let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
    let period = (window / n.get()).max(Duration::from_nanos(1));
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(n)
}

impl RateLimits {
    pub fn new(per_address: u32, global: u32, window: Duration) -> RateLimits {
        RateLimits {
            per_address: RateLimiter::keyed(quota(per_address, window)),
            global: RateLimiter::direct(quota(global, window)),
            clock: DefaultClock::default(),
        }
    }

    /// Takes one request from `ip`'s allowance and the global one.
    fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let now = self.clock.now();
        self.per_address
            .check_key(&ip)
            .map_err(|not_until| not_until.wait_time_from(now))?;
        self.global
            .check()
            .map_err(|not_until| not_until.wait_time_from(now))
    }

    /// Forgets addresses whose allowance is full again (bounded memory).
    pub fn prune(&self) {
        self.per_address.retain_recent();
        self.per_address.shrink_to_fit();
    }
}

pub fn router(state: AppState, origins: &[String]) -> anyhow::Result<Router> {
    let origins = origins
        .iter()
        .map(|o| {
            o.parse::<axum::http::HeaderValue>()
                .map_err(|_| anyhow::anyhow!("CORS origin {o:?} is not a valid header value"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([axum::http::Method::POST])
        .allow_headers([axum::http::header::CONTENT_TYPE])
        .max_age(Duration::from_secs(600));
    Ok(Router::new()
        .route("/v1/cards", post(create_card))
        .route("/healthz", get(super::healthz))
        .with_state(state)
        .layer(cors)
        .layer(axum::middleware::from_fn(super::request_id_generated))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            super::REQUEST_TIMEOUT,
        )))
}

async fn create_card(
    State(state): State<AppState>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Body,
) -> VaultResult<(StatusCode, Json<CardView>)> {
    let ip = peer.addr.ip();
    if let Err(wait) = state.limits.check(ip) {
        tracing::warn!(
            security_event = "tokenize_rate_limited",
            peer = %ip,
            "tokenization rate limit reached"
        );
        return Err(VaultError::RateLimited {
            retry_after_secs: wait.as_secs().saturating_add(1),
        });
    }
    let actor = Actor {
        name: format!("collect:{ip}"),
        request_id: current_request_id(),
    };
    let card = match read_card(&headers, body).await {
        Ok(card) => card,
        Err(error) => {
            cards::audit_refusal(&state, &actor, "tokenize", None, &error).await?;
            return Err(error);
        }
    };
    let (view, created) = cards::tokenize(&state, card, &actor).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view)))
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

async fn read_card(headers: &HeaderMap, body: Body) -> VaultResult<NewCard> {
    if !is_json(headers) {
        return Err(VaultError::Client {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            kind: "invalid_request_error",
            code: "unsupported_content_type",
            message: "Send the card as application/json.",
            param: Some("Content-Type".to_owned()),
        });
    }
    let bytes = axum::body::to_bytes(body, COLLECT_BODY_BYTES_MAX)
        .await
        .map_err(|_| VaultError::Client {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            kind: "invalid_request_error",
            code: "body_too_large",
            message: "The request body is too large.",
            param: Some("body".to_owned()),
        })?;
    let bytes = Zeroizing::new(Vec::from(bytes));
    parse_card(&bytes, chrono::Utc::now().date_naive())
}

const FIELDS: [&str; 5] = ["number", "exp_month", "exp_year", "cvc", "name"];

/// Parses and validates the card form. Errors name the field, never its value.
pub fn parse_card(bytes: &[u8], today: chrono::NaiveDate) -> VaultResult<NewCard> {
    let mut map: Map<String, Value> = serde_json::from_slice(bytes).map_err(|_| {
        VaultError::invalid(
            "body",
            "invalid_json",
            "The request body must be a JSON object.",
        )
    })?;
    if let Some(unknown) = map.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        let safe =
            unknown.len() <= 64 && unknown.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
        return Err(VaultError::invalid(
            if safe {
                unknown.clone()
            } else {
                "body".to_owned()
            },
            "parameter_unknown",
            "Received unknown parameter.",
        ));
    }
    let number = match map.remove("number") {
        Some(Value::String(s)) => Zeroizing::new(s),
        Some(_) => return Err(type_error("number", "The card number must be a string.")),
        None => return Err(missing("number")),
    };
    let number = CardNumber::parse(&number).map_err(card_error)?;
    let exp_month = integer(&mut map, "exp_month")?;
    let exp_year = integer(&mut map, "exp_year")?;
    let expiry = Expiry::parse(exp_month, exp_year, today).map_err(card_error)?;
    let cvc = match map.remove("cvc") {
        Some(Value::String(s)) => Zeroizing::new(s),
        Some(_) => return Err(type_error("cvc", "The security code must be a string.")),
        None => return Err(missing("cvc")),
    };
    let cvc = Cvc::parse(&cvc, number.brand()).map_err(card_error)?;
    let name = match map.remove("name") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            let s = Zeroizing::new(s);
            let trimmed = s.trim();
            if trimmed.chars().count() > CARDHOLDER_NAME_CHARS_MAX
                || trimmed.chars().any(char::is_control)
            {
                return Err(VaultError::invalid(
                    "name",
                    "parameter_invalid",
                    "The cardholder name must be at most 200 printable characters.",
                ));
            }
            (!trimmed.is_empty()).then(|| Zeroizing::new(trimmed.to_owned()))
        }
        Some(_) => return Err(type_error("name", "The cardholder name must be a string.")),
    };
    Ok(NewCard {
        number,
        expiry,
        name,
        cvc,
    })
}

fn missing(param: &'static str) -> VaultError {
    VaultError::invalid(param, "parameter_missing", "Missing required parameter.")
}

fn type_error(param: &'static str, message: &'static str) -> VaultError {
    VaultError::invalid(param, "parameter_invalid_type", message)
}

fn card_error(e: CardError) -> VaultError {
    VaultError::card(e.param(), e.code(), e.message())
}

/// An integer field, sent as a JSON number or a string of digits.
fn integer(map: &mut Map<String, Value>, param: &'static str) -> VaultResult<i64> {
    match map.remove(param) {
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| type_error(param, "Expected a whole number.")),
        Some(Value::String(s))
            if !s.is_empty() && s.len() <= 4 && s.bytes().all(|b| b.is_ascii_digit()) =>
        {
            s.parse::<i64>()
                .map_err(|_| type_error(param, "Expected a whole number."))
        }
        Some(_) => Err(type_error(param, "Expected a whole number.")),
        None => Err(missing(param)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn today() -> chrono::NaiveDate {
        chrono::NaiveDate::from_ymd_opt(2026, 11, 28).unwrap()
    }

    fn param_of(body: &str) -> (String, String) {
        match parse_card(body.as_bytes(), today()) {
            Err(VaultError::Client { param, code, .. }) => {
                (param.unwrap_or_default(), code.to_owned())
            }
            other => panic!("expected a client error, got {other:?}"),
        }
    }

    #[test]
    fn each_bad_field_is_named() {
        let ok = r#""number":"4242424242424242","exp_month":12,"exp_year":2030,"cvc":"123""#;
        assert!(parse_card(format!("{{{ok}}}").as_bytes(), today()).is_ok());
        let cases = [
            (
                r#"{"number":"4242424242424241","exp_month":12,"exp_year":2030,"cvc":"123"}"#,
                "number",
                "invalid_number",
            ),
            (
                r#"{"number":"42424242","exp_month":12,"exp_year":2030,"cvc":"123"}"#,
                "number",
                "invalid_number",
            ),
            (
                r#"{"number":"4242abcd42424242","exp_month":12,"exp_year":2030,"cvc":"123"}"#,
                "number",
                "invalid_number",
            ),
            (
                r#"{"number":4242424242424242,"exp_month":12,"exp_year":2030,"cvc":"123"}"#,
                "number",
                "parameter_invalid_type",
            ),
            (
                r#"{"number":"4242424242424242","exp_month":13,"exp_year":2030,"cvc":"123"}"#,
                "exp_month",
                "invalid_expiry_month",
            ),
            (
                r#"{"number":"4242424242424242","exp_month":1,"exp_year":2020,"cvc":"123"}"#,
                "exp_year",
                "expired_card",
            ),
            (
                r#"{"number":"4242424242424242","exp_month":12,"exp_year":2030,"cvc":"12345"}"#,
                "cvc",
                "invalid_cvc",
            ),
            (
                r#"{"number":"4242424242424242","exp_month":12,"exp_year":2030}"#,
                "cvc",
                "parameter_missing",
            ),
            (
                r#"{"number":"4242424242424242","exp_month":12,"exp_year":2030,"cvc":"123","pin":"1"}"#,
                "pin",
                "parameter_unknown",
            ),
            (
                r#"{"number":"4242424242424242","exp_month":12,"exp_year":2030,"cvc":"123","4242424242424242":1}"#,
                "body",
                "parameter_unknown",
            ),
            (r#"[1,2]"#, "body", "invalid_json"),
        ];
        for (body, param, code) in cases {
            assert_eq!(
                param_of(body),
                (param.to_owned(), code.to_owned()),
                "{body}"
            );
        }
    }
}
