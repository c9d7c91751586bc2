//! Turning a card into the processor's payment method: the one place a card number leaves the
//! vault's memory, and only towards the processor.
//!
//! The simulator (the default, and the billing service's built-in processor) knows Stripe's test
//! PaymentMethod ids; the vault picks one by card number the way Stripe's test mode does, so the
//! test cards decline the way they do there. The Stripe adapter (creating a PaymentMethod from
//! the card through Stripe's API with the vault's own restricted key) is [`Minter::Stripe`],
//! chosen when `TOKENIZER_STRIPE_API_KEY` is set (`TOKENIZER_STRIPE_API_BASE`: Stripe's base
//! URL, default `https://api.stripe.com`; tests point it at localstripe). That key is the
//! vault's alone, separate from billing's: it may only create PaymentMethods.
//!
//! The Stripe minter sends `POST /v1/payment_methods` with `type=card`, `card[number]`,
//! `card[exp_month]`, `card[exp_year]` and, when one is held, `card[cvc]`, and keeps only the
//! `pm_…` id. The body is never logged, and an error names Stripe's status and code only.

use crate::card::{Brand, CardNumber, Cvc, Expiry};

/// The payment method the processor will charge, and how the security code was used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Minted {
    pub payment_method: String,
    /// `provided` when a held CVC went with the card, `unavailable` when none was held.
    pub cvc: &'static str,
}

#[derive(Debug, Clone)]
pub enum Minter {
    Simulator,
    Stripe(StripeMinter),
}

/// Creates Stripe PaymentMethods with the vault's own key.
#[derive(Clone)]
pub struct StripeMinter {
    http: reqwest::Client,
    base: String,
    key: std::sync::Arc<zeroize::Zeroizing<String>>,
}

impl std::fmt::Debug for StripeMinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeMinter")
            .field("base", &self.base)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl Minter {
    /// The simulator, or Stripe when `TOKENIZER_STRIPE_API_KEY` is set (an empty one is an
    /// error, not a silent fallback).
    pub fn from_env() -> anyhow::Result<Minter> {
        let Some(key) = std::env::var("TOKENIZER_STRIPE_API_KEY").ok() else {
            return Ok(Minter::Simulator);
        };
        anyhow::ensure!(
            !key.trim().is_empty(),
            "TOKENIZER_STRIPE_API_KEY is set but empty"
        );
        let base = std::env::var("TOKENIZER_STRIPE_API_BASE")
            .ok()
            .filter(|b| !b.trim().is_empty())
            .unwrap_or_else(|| "https://api.stripe.com".to_owned());
        anyhow::ensure!(
            base.starts_with("https://") || base.starts_with("http://"),
            "TOKENIZER_STRIPE_API_BASE must be an http(s) URL"
        );
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()?;
        Ok(Minter::Stripe(StripeMinter {
            http,
            base: base.trim_end_matches('/').to_owned(),
            key: std::sync::Arc::new(zeroize::Zeroizing::new(key.trim().to_owned())),
        }))
    }
}

impl StripeMinter {
    async fn create(
        &self,
        card: &CardNumber,
        expiry: Expiry,
        cvc: Option<&Cvc>,
    ) -> anyhow::Result<String> {
        let mut form: Vec<(&str, zeroize::Zeroizing<String>)> = vec![
            ("type", zeroize::Zeroizing::new("card".to_owned())),
            (
                "card[number]",
                zeroize::Zeroizing::new(card.expose_digits().to_owned()),
            ),
            (
                "card[exp_month]",
                zeroize::Zeroizing::new(expiry.month.to_string()),
            ),
            (
                "card[exp_year]",
                zeroize::Zeroizing::new(expiry.year.to_string()),
            ),
        ];
        if let Some(c) = cvc {
            form.push(("card[cvc]", zeroize::Zeroizing::new(c.expose().to_owned())));
        }
        let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let body = zeroize::Zeroizing::new(
            serde_urlencoded::to_string(&pairs)
                .map_err(|_| anyhow::anyhow!("encoding the payment method request"))?,
        );
        let response = self
            .http
            .post(format!("{}/v1/payment_methods", self.base))
            .bearer_auth(self.key.as_str())
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body.as_str().to_owned())
            .send()
            .await
            // reqwest's error may carry the URL, never the body; we keep only its kind.
            .map_err(|e| {
                anyhow::anyhow!(
                    "stripe payment_methods: {}",
                    if e.is_timeout() {
                        "timed out"
                    } else {
                        "connection failed"
                    }
                )
            })?;
        let status = response.status();
        let value: serde_json::Value = response
            .json()
            .await
            .map_err(|_| anyhow::anyhow!("stripe payment_methods: unreadable answer ({status})"))?;
        if !status.is_success() {
            let code = value
                .get("error")
                .and_then(|e| e.get("code"))
                .and_then(|c| c.as_str())
                .unwrap_or("?");
            anyhow::bail!("stripe payment_methods answered {status} ({code})");
        }
        value
            .get("id")
            .and_then(|i| i.as_str())
            .filter(|i| i.starts_with("pm_") || i.starts_with("card_") || i.starts_with("src_"))
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("stripe payment_methods: no id in the answer"))
    }
}

impl Minter {
    pub async fn mint(
        &self,
        card: &CardNumber,
        expiry: Expiry,
        cvc: Option<Cvc>,
        today: chrono::NaiveDate,
    ) -> anyhow::Result<Minted> {
        match self {
            Minter::Simulator => {
                let cvc_use = if cvc.is_some() {
                    "provided"
                } else {
                    "unavailable"
                };
                // The code is dropped (wiped) here: it went with this one use.
                drop(cvc);
                Ok(Minted {
                    payment_method: simulated_payment_method(card, expiry, today).to_owned(),
                    cvc: cvc_use,
                })
            }
            Minter::Stripe(stripe) => {
                let cvc_use = if cvc.is_some() {
                    "provided"
                } else {
                    "unavailable"
                };
                let payment_method = stripe.create(card, expiry, cvc.as_ref()).await;
                drop(cvc);
                Ok(Minted {
                    payment_method: payment_method?,
                    cvc: cvc_use,
                })
            }
        }
    }
}

/// Stripe's test-mode PaymentMethod for a card number (<https://docs.stripe.com/testing>).
pub fn simulated_payment_method(
    card: &CardNumber,
    expiry: Expiry,
    today: chrono::NaiveDate,
) -> &'static str {
    if expiry.has_expired(today) {
        return "pm_card_chargeDeclinedExpiredCard";
    }
    match card.expose_digits() {
        "4000000000000002" => "pm_card_visa_chargeDeclined",
        "4000000000009995" => "pm_card_visa_chargeDeclinedInsufficientFunds",
        "4000000000000069" => "pm_card_chargeDeclinedExpiredCard",
        "4000000000000127" => "pm_card_chargeDeclinedIncorrectCvc",
        "4000000000000119" => "pm_card_chargeDeclinedProcessingError",
        _ => match card.brand() {
            Brand::Mastercard => "pm_card_mastercard",
            Brand::Amex => "pm_card_amex",
            Brand::Discover => "pm_card_discover",
            Brand::Jcb => "pm_card_jcb",
            Brand::Diners => "pm_card_diners",
            Brand::UnionPay => "pm_card_unionpay",
            Brand::Visa | Brand::Unknown => "pm_card_visa",
        },
    }
}
