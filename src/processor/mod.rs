//! The payment-processor seam.
//!
//! carebill never talks to a card network itself: a [`PaymentProcessor`] charges a payment
//! method and refunds a charge. Every call carries an idempotency key derived from our own
//! persisted payment or refund id, so calling again after a crash or a timeout returns the
//! outcome of the first call instead of moving money twice. The built-in [`simulator`] is the
//! default; the Stripe adapter ([`crate::stripe::processor::StripeProcessor`]) implements the
//! same trait and takes over when `STRIPE_API_KEY` is set.

pub mod simulator;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::money::Money;

/// A request to charge `amount` to `payment_method`.
#[derive(Debug, Clone)]
pub struct ChargeRequest {
    /// Derived from our payment id; the same key always names the same charge.
    pub idempotency_key: String,
    pub amount: Money,
    /// The processor's payment-method id (`pm_…`): the one the client sent, or for a card
    /// token the one the vault made for it (stored with the payment, so a resumed payment
    /// sends the same). Never a token or a card number.
    pub payment_method: String,
    /// Our payment id, sent as metadata for reconciliation.
    pub payment_id: String,
}

/// The card a charge was made on, as much as billing may know: brand and last four.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardSummary {
    pub brand: String,
    pub last4: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ChargeOutcome {
    /// Captured: the money is in the processor's clearing balance.
    Succeeded {
        charge_id: String,
        card: CardSummary,
    },
    /// Accepted but not final (e.g. a bank delay); settled later by a webhook or the reconciler.
    Processing {
        charge_id: String,
        card: Option<CardSummary>,
    },
    /// The customer must act (3-D Secure): the caller gets the client secret and the next
    /// action for Stripe.js; the payment stays `processing` until the webhook settles it.
    RequiresAction {
        charge_id: String,
        card: Option<CardSummary>,
        client_secret: Option<String>,
        next_action: String,
    },
    /// Refused by the issuer or the processor, with its decline code.
    Declined {
        charge_id: Option<String>,
        decline_code: String,
        message: String,
        card: Option<CardSummary>,
    },
}

#[derive(Debug, Clone)]
pub struct RefundRequest {
    /// Derived from our refund id: two equal partial refunds are two different refunds.
    pub idempotency_key: String,
    pub charge_id: String,
    pub amount: Money,
    pub refund_id: String,
    /// The payment method the refund was asked to go to, when it is not the one charged (only
    /// ever after a second billing manager approved it), as the request named it: a `pm_…` id
    /// or a card token, which an adapter that can pay out to another card resolves at the vault
    /// first. Passed as metadata: a plain card refund, the simulator's included, returns the
    /// money to the original charge.
    pub destination_payment_method: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RefundOutcome {
    Succeeded {
        refund_id: String,
    },
    Pending {
        refund_id: String,
    },
    Failed {
        refund_id: Option<String>,
        failure_code: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    /// The payment method is unknown to the processor: the client's mistake, a 400.
    #[error("no such payment method")]
    InvalidPaymentMethod,
    /// Same idempotency key with different parameters: a bug on our side.
    #[error("idempotency key reused with different parameters")]
    IdempotencyMismatch,
    /// The outcome is unknown (timeout, connection lost, 5xx after retries). The payment stays
    /// in flight and a retry with the same key, or the reconciler, settles it.
    #[error("processor unavailable: {0}")]
    Unavailable(String),
}

/// The answer when the processor's outcome stays unknown: nothing is written, the key keeps its
/// `processor_called` phase, and the client's retry with the same key settles it.
pub fn unavailable_error() -> crate::error::ApiError {
    crate::error::ApiError::simple(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        crate::error::ErrorType::ApiError,
        "processor_unavailable",
        "The payment processor did not answer; retry with the same Idempotency-Key.",
    )
}

#[async_trait]
pub trait PaymentProcessor: Send + Sync + 'static {
    /// A short name for logs and the payment object (`simulator`, `stripe`).
    fn name(&self) -> &'static str;
    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, ProcessorError>;
    async fn refund(&self, request: &RefundRequest) -> Result<RefundOutcome, ProcessorError>;
    /// The current state of a charge made earlier (for the reconciler and recovery).
    async fn retrieve_charge(
        &self,
        charge_id: &str,
    ) -> Result<Option<ChargeOutcome>, ProcessorError>;
    /// The current state of a refund made earlier (`None`: unknown here). Webhooks re-fetch
    /// with it when an event is older than our state.
    async fn retrieve_refund(
        &self,
        _refund_id: &str,
    ) -> Result<Option<RefundOutcome>, ProcessorError> {
        Ok(None)
    }
}
