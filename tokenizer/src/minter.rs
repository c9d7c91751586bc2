//! Turning a card into the processor's payment method: the one place a card number leaves the
//! vault's memory, and only towards the processor.
//!
//! The simulator (the default, and the billing service's built-in processor) knows Stripe's test
//! PaymentMethod ids; the vault picks one by card number the way Stripe's test mode does, so the
//! test cards decline the way they do there. The Stripe adapter (creating a PaymentMethod from
//! the card through Stripe's API with the vault's own restricted key) joins this enum with the
//! processor work.

use crate::card::{Brand, CardNumber, Cvc, Expiry};

/// The payment method the processor will charge, and how the security code was used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Minted {
    pub payment_method: String,
    /// `provided` when a held CVC went with the card, `unavailable` when none was held.
    pub cvc: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Minter {
    Simulator,
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
