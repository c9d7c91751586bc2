//! Billing's side of the card vault (`tokenizer`): a mutual-TLS client for its internal API.
//!
//! Card numbers never reach billing. A patient's card is tokenized by the vault's collect
//! listener; billing receives only the token (`tok_…`), and to charge it asks the vault
//! (`POST /v1/cards/{token}/charge-method`) for the processor's payment method (`pm_…`) and the
//! card's brand and last four. Billing stores the token, the brand, the last four and the
//! minted payment-method id (so a resumed payment charges the very same method), nothing else.
//!
//! The client trusts only the configured CA (no built-in roots), speaks HTTPS only, presents
//! billing's client certificate (the vault's allowlist names its identity), and always verifies
//! the vault's certificate: like every outbound client of billing (reqwest with rustls, Mozilla's
//! roots from `webpki-roots` where no CA is configured), it has no switch to accept invalid
//! certificates, and none must be added outside tests. Every call is bounded: connecting (TCP
//! and TLS handshake) by [`CONNECT_TIMEOUT`], the whole call by `vault_timeout_ms`. A vault
//! that is down, slow or answers 5xx becomes [`VaultError::Unavailable`], which the API answers
//! 503 `vault_unavailable` before anything is written.
//!
//! Tokens and payment-method ids are never logged: reqwest's errors carry the request URL (which
//! holds the token), so they are logged [`reqwest::Error::without_url`].

use std::time::Duration;

use axum::http::StatusCode;
use serde::Deserialize;

use crate::config::Config;
use crate::error::{ApiError, ErrorType};
use crate::processor::CardSummary;

/// Time allowed to open the connection to the vault, TLS handshake included.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Random part of a token: exactly this many ASCII letters and digits after `tok_`.
pub const TOKEN_RANDOM_CHARS: usize = 24;
/// A charge-method answer is a few hundred bytes; a longer one is not the vault's.
const RESPONSE_BYTES_MAX: usize = 64 * 1024;
const PAYMENT_METHOD_CHARS_MAX: usize = 100;
const BRAND_CHARS_MAX: usize = 20;

/// Whether `s` has the shape of a vault token: `tok_` and 24 ASCII letters and digits.
pub fn is_token(s: &str) -> bool {
    s.strip_prefix("tok_").is_some_and(|r| {
        r.len() == TOKEN_RANDOM_CHARS && r.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

/// What the vault answers for a token: the payment method to charge and the card behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeMethod {
    /// The processor's payment-method id (`pm_…`).
    pub payment_method: String,
    pub card: CardSummary,
}

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The vault does not know the token (never issued, or the card was deleted).
    #[error("no such card token")]
    NotFound,
    /// The vault refused the token's format (billing checks it first, so this is unexpected).
    #[error("the vault refused the token as malformed")]
    InvalidToken,
    /// The vault could not reach the processor to make the payment method.
    #[error("the vault could not reach the payment processor")]
    ProcessorUnavailable,
    /// No usable answer: not configured, connection refused, timeout, TLS failure, 5xx, or an
    /// answer that is not the vault's.
    #[error("vault unavailable: {0}")]
    Unavailable(String),
}

/// 503 `vault_unavailable`: nothing was charged or written; the same request may be retried.
pub fn unavailable_error(message: &str) -> ApiError {
    ApiError::simple(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorType::ApiError,
        "vault_unavailable",
        message,
    )
}

impl From<VaultError> for ApiError {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::NotFound => ApiError::not_found("payment_method", "card token"),
            VaultError::InvalidToken => ApiError::invalid(
                "payment_method",
                "payment_method_invalid",
                "A card token is `tok_` followed by 24 letters and digits.",
            ),
            VaultError::ProcessorUnavailable => {
                tracing::warn!("vault could not mint a payment method: processor unavailable");
                crate::processor::unavailable_error()
            }
            VaultError::Unavailable(cause) => {
                tracing::warn!(cause = %cause, "card vault unavailable");
                unavailable_error(
                    "The card vault did not answer; nothing was charged or recorded. Retry the request with the same Idempotency-Key.",
                )
            }
        }
    }
}

/// The answer when no vault is configured and a card token is sent.
pub fn not_configured_error() -> ApiError {
    unavailable_error(
        "Card tokens need the card vault, and this server has none configured (CAREBILL_VAULT_URL).",
    )
}

/// The client of the vault's internal listener.
#[derive(Clone)]
pub struct VaultClient {
    base: String,
    timeout: Duration,
    http: reqwest::Client,
}

impl std::fmt::Debug for VaultClient {
    /// The base URL and timeout only: the client holds billing's private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultClient")
            .field("base", &self.base)
            .field("timeout_ms", &self.timeout.as_millis())
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct ChargeMethodBody {
    payment_method: String,
    card: CardBody,
}

#[derive(Deserialize)]
struct CardBody {
    id: String,
    brand: String,
    last4: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    code: Option<String>,
}

/// Describes a transport error and its causes without its URL (which holds the token).
fn describe(e: reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("no answer within {} ms", timeout.as_millis());
    }
    let e = e.without_url();
    let mut text = if e.is_connect() {
        format!("could not connect: {e}")
    } else {
        e.to_string()
    };
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl VaultClient {
    /// A client for the vault at `base_url` (`https://host:port`), trusting only `ca_pem` and
    /// presenting `client_cert_pem` with `client_key_pem`.
    pub fn new(
        base_url: &str,
        ca_pem: &[u8],
        client_cert_pem: &[u8],
        client_key_pem: &[u8],
        timeout: Duration,
    ) -> anyhow::Result<VaultClient> {
        let base = base_url.trim_end_matches('/').to_owned();
        anyhow::ensure!(
            base.starts_with("https://"),
            "the vault URL must start with https://"
        );
        let ca = reqwest::Certificate::from_pem(ca_pem)
            .map_err(|e| anyhow::anyhow!("the vault CA is not a PEM certificate: {e}"))?;
        let mut identity_pem = Vec::with_capacity(client_cert_pem.len() + client_key_pem.len() + 1);
        identity_pem.extend_from_slice(client_cert_pem);
        identity_pem.push(b'\n');
        identity_pem.extend_from_slice(client_key_pem);
        let identity = reqwest::Identity::from_pem(&identity_pem)
            .map_err(|_| anyhow::anyhow!("the vault client certificate or key is not valid PEM"))?;
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .identity(identity)
            .https_only(true)
            .connect_timeout(CONNECT_TIMEOUT.min(timeout))
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| anyhow::anyhow!("building the vault client: {e}"))?;
        Ok(VaultClient {
            base,
            timeout,
            http,
        })
    }

    /// The client `config` describes, reading its certificate files; none without `vault_url`.
    pub fn from_config(config: &Config) -> anyhow::Result<Option<VaultClient>> {
        config.validate_vault()?;
        let Some(url) = &config.vault_url else {
            return Ok(None);
        };
        let read = |path: &Option<std::path::PathBuf>, what: &str| -> anyhow::Result<Vec<u8>> {
            let path = path
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("the vault {what} is not configured"))?;
            std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("reading the vault {what} {}: {e}", path.display()))
        };
        let ca = read(&config.vault_ca, "CA certificate")?;
        let cert = read(&config.vault_client_cert, "client certificate")?;
        let key = read(&config.vault_client_key, "client key")?;
        VaultClient::new(
            url,
            &ca,
            &cert,
            &key,
            Duration::from_millis(config.vault_timeout_ms),
        )
        .map(Some)
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Asks the vault for the processor payment method of `token` (which must be
    /// [`is_token`]-shaped), sending billing's `request_id` so both audit trails correlate.
    pub async fn charge_method(
        &self,
        token: &str,
        request_id: &str,
    ) -> Result<ChargeMethod, VaultError> {
        if !is_token(token) {
            return Err(VaultError::InvalidToken);
        }
        let mut request = self
            .http
            .post(format!("{}/v1/cards/{token}/charge-method", self.base));
        if request_id.starts_with("req_") {
            request = request.header("x-request-id", request_id);
        }
        let response = request
            .send()
            .await
            .map_err(|e| VaultError::Unavailable(describe(e, self.timeout)))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| VaultError::Unavailable(describe(e, self.timeout)))?;
        if bytes.len() > RESPONSE_BYTES_MAX {
            return Err(VaultError::Unavailable(format!(
                "answer of {} bytes is too long",
                bytes.len()
            )));
        }
        let code = || {
            serde_json::from_slice::<ErrorBody>(&bytes)
                .ok()
                .and_then(|b| b.code)
                .unwrap_or_default()
        };
        match status {
            StatusCode::OK => parse_charge_method(&bytes, token),
            StatusCode::NOT_FOUND if code() == "resource_missing" => Err(VaultError::NotFound),
            StatusCode::BAD_REQUEST if code() == "invalid_token" => Err(VaultError::InvalidToken),
            StatusCode::BAD_GATEWAY if code() == "processor_unavailable" => {
                Err(VaultError::ProcessorUnavailable)
            }
            other => {
                let code = code();
                if other.is_client_error() {
                    // 401/403/404 on the route itself: billing's configuration is wrong.
                    tracing::error!(status = other.as_u16(), code = %code, "the vault refused billing's request");
                }
                Err(VaultError::Unavailable(format!(
                    "answered {} {code}",
                    other.as_u16()
                )))
            }
        }
    }
}

/// Checks a 200 answer: the card is the one asked for, the payment method and card summary
/// have the shapes billing stores.
fn parse_charge_method(bytes: &[u8], token: &str) -> Result<ChargeMethod, VaultError> {
    let bad = |what: &str| VaultError::Unavailable(format!("unexpected answer: {what}"));
    let body: ChargeMethodBody =
        serde_json::from_slice(bytes).map_err(|_| bad("not a charge_method object"))?;
    if body.card.id != token {
        return Err(bad("a different card"));
    }
    let pm = &body.payment_method;
    let pm_ok = pm.starts_with("pm_")
        && pm.len() <= PAYMENT_METHOD_CHARS_MAX
        && pm.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !pm_ok {
        return Err(bad("payment_method is not a payment method id"));
    }
    let last4 = &body.card.last4;
    if last4.len() != 4 || !last4.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("last4 is not four digits"));
    }
    let brand = &body.card.brand;
    if brand.is_empty()
        || brand.len() > BRAND_CHARS_MAX
        || !brand
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(bad("brand is not a brand name"));
    }
    Ok(ChargeMethod {
        payment_method: body.payment_method,
        card: CardSummary {
            brand: body.card.brand,
            last4: body.card.last4,
        },
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const TOKEN: &str = "tok_abcdefghijklmnopqrstuvwx";

    #[test]
    fn token_shape() {
        assert!(is_token(TOKEN));
        assert!(!is_token("tok_abcdefghijklmnopqrstuvw"), "23 characters");
        assert!(!is_token("tok_abcdefghijklmnopqrstuvwxy"), "25 characters");
        assert!(!is_token("tok_abcdefghijklmnopqrstuv_x"), "underscore");
        assert!(!is_token("tok_abcdefghijklmnopqrstuvwé"), "non-ASCII");
        assert!(!is_token("pm_card_visa"));
    }

    #[test]
    fn charge_method_answers_are_checked() {
        let ok = format!(
            r#"{{"object":"charge_method","card":{{"id":"{TOKEN}","object":"card","fingerprint":"00","brand":"visa","last4":"4242","exp_month":12,"exp_year":2030}},"payment_method":"pm_card_visa","cvc":"provided"}}"#
        );
        let m = parse_charge_method(ok.as_bytes(), TOKEN).unwrap();
        assert_eq!(m.payment_method, "pm_card_visa");
        assert_eq!(m.card.brand, "visa");
        assert_eq!(m.card.last4, "4242");
        assert!(parse_charge_method(ok.as_bytes(), "tok_zzzzzzzzzzzzzzzzzzzzzzzz").is_err());
        for bad in [
            ok.replace("pm_card_visa", "card_visa"),
            ok.replace("\"4242\"", "\"42x2\""),
            ok.replace("\"visa\"", "\"Visa Card\""),
            "{}".to_owned(),
        ] {
            assert!(matches!(
                parse_charge_method(bad.as_bytes(), TOKEN),
                Err(VaultError::Unavailable(_))
            ));
        }
    }

    #[test]
    fn debug_leaves_the_key_out() {
        let ca = devcerts::Ca::new("t").unwrap();
        let client = ca.client_cert(devcerts::BILLING_CLIENT_NAME).unwrap();
        let v = VaultClient::new(
            "https://127.0.0.1:1/",
            ca.cert_pem().as_bytes(),
            client.cert_pem.as_bytes(),
            client.key_pem.as_bytes(),
            Duration::from_millis(1000),
        )
        .unwrap();
        let text = format!("{v:?}");
        assert!(text.contains("https://127.0.0.1:1"), "{text}");
        assert!(!text.contains("PRIVATE"), "{text}");
        let body = client
            .key_pem
            .lines()
            .nth(1)
            .unwrap()
            .chars()
            .take(20)
            .collect::<String>();
        assert!(!text.contains(&body), "{text}");
        assert!(VaultClient::new(
            "http://127.0.0.1:1",
            ca.cert_pem().as_bytes(),
            client.cert_pem.as_bytes(),
            client.key_pem.as_bytes(),
            Duration::from_millis(1000),
        )
        .is_err());
    }
}
