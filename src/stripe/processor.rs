//! [`StripeProcessor`]: the processor seam on Stripe's PaymentIntents and Refunds.
//!
//! | our call | Stripe | mapping |
//! | --- | --- | --- |
//! | charge | `POST /v1/payment_intents` (`confirm=true`, card only) | `succeeded` → succeeded; `requires_action` → the client secret and next action go back to the caller, the webhook finishes it; `processing` (and any other live state) → processing; `requires_payment_method` or a `402 card_error` → declined with the decline code |
//! | refund | `POST /v1/refunds` (`payment_intent`, `amount`) | `succeeded`, `pending`/`requires_action` → pending, `failed`/`canceled` → failed |
//! | retrieve | `GET /v1/payment_intents/{id}` | as for charge |
//!
//! The idempotency keys are the ones the payment and refund code derive from our own persisted
//! ids (`carebill-pay_…`, `carebill-re_…`): two equal partial refunds are two keys. Our id also
//! travels as metadata (`carebill_payment`, `carebill_refund`), which the webhooks and the
//! reconciler match on.

use async_trait::async_trait;
use serde_json::Value;

use super::client::{StripeClient, StripeError};
use crate::processor::{
    CardSummary, ChargeOutcome, ChargeRequest, PaymentProcessor, ProcessorError, RefundOutcome,
    RefundRequest,
};

pub struct StripeProcessor {
    client: StripeClient,
}

impl StripeProcessor {
    pub fn new(client: StripeClient) -> Self {
        StripeProcessor { client }
    }

    /// Stripe when `STRIPE_API_KEY` is configured, else `None` (the simulator).
    pub fn from_config(config: &crate::config::Config) -> anyhow::Result<Option<StripeProcessor>> {
        match &config.stripe.api_key {
            Some(key) => Ok(Some(StripeProcessor::new(StripeClient::new(
                &config.stripe,
                key.clone(),
            )?))),
            None => Ok(None),
        }
    }

    pub fn client(&self) -> &StripeClient {
        &self.client
    }

    /// Brand and last four of a PaymentMethod (`card.brand`, `card.last4`): inline when the
    /// intent carries the object, else read from Stripe. Best effort: billing may know them
    /// from the vault already.
    async fn card_of(&self, intent: &Value) -> Option<CardSummary> {
        let pm = intent.get("payment_method")?;
        if let Some(card) = card_summary(pm) {
            return Some(card);
        }
        let id = pm.as_str()?;
        if !is_object_id(id) {
            return None;
        }
        let found = self
            .client
            .get(&format!("/v1/payment_methods/{id}"), &[])
            .await
            .ok()??;
        card_summary(&found)
    }

    async fn outcome_of(&self, intent: &Value) -> Result<ChargeOutcome, ProcessorError> {
        let id = str_field(intent, "id").ok_or_else(|| {
            ProcessorError::Unavailable("a PaymentIntent without an id".to_owned())
        })?;
        let card = self.card_of(intent).await;
        Ok(intent_outcome(intent, id, card))
    }
}

/// A Stripe object id: letters, digits and underscores, bounded (it goes into a URL path).
pub fn is_object_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 255 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn str_field<'a>(v: &'a Value, name: &str) -> Option<&'a str> {
    v.get(name).and_then(Value::as_str)
}

fn card_summary(pm: &Value) -> Option<CardSummary> {
    let card = pm.get("card")?;
    Some(CardSummary {
        brand: str_field(card, "brand")?.to_owned(),
        last4: str_field(card, "last4")?.to_owned(),
    })
}

/// What a PaymentIntent's state means for our payment.
pub fn intent_outcome(intent: &Value, id: &str, card: Option<CardSummary>) -> ChargeOutcome {
    let charge_id = id.to_owned();
    match str_field(intent, "status").unwrap_or("") {
        "succeeded" => ChargeOutcome::Succeeded {
            charge_id,
            card: card.unwrap_or_else(|| CardSummary {
                brand: "unknown".to_owned(),
                last4: "????".to_owned(),
            }),
        },
        "requires_action" => ChargeOutcome::RequiresAction {
            charge_id,
            card,
            client_secret: str_field(intent, "client_secret").map(str::to_owned),
            next_action: intent
                .get("next_action")
                .and_then(|n| str_field(n, "type"))
                .unwrap_or("use_stripe_sdk")
                .to_owned(),
        },
        "requires_payment_method" | "canceled" => {
            let error = intent.get("last_payment_error");
            let code = error
                .and_then(|e| str_field(e, "decline_code").or_else(|| str_field(e, "code")))
                .unwrap_or(if str_field(intent, "status") == Some("canceled") {
                    "canceled"
                } else {
                    "card_declined"
                });
            ChargeOutcome::Declined {
                charge_id: Some(charge_id),
                decline_code: code.to_owned(),
                message: decline_message(code).to_owned(),
                card,
            }
        }
        // processing, requires_confirmation, requires_capture: not final; the webhook or the
        // reconciler settles it.
        _ => ChargeOutcome::Processing { charge_id, card },
    }
}

/// Our own words for a decline (Stripe's message is not echoed: it is theirs to change).
fn decline_message(code: &str) -> &'static str {
    match code {
        "insufficient_funds" => "Your card has insufficient funds.",
        "expired_card" => "Your card has expired.",
        "incorrect_cvc" => "Your card's security code is incorrect.",
        "processing_error" => "An error occurred while processing your card.",
        "authentication_required" => "The card requires authentication.",
        "canceled" => "The payment was canceled.",
        _ => "Your card was declined.",
    }
}

fn unknown(e: &StripeError) -> ProcessorError {
    ProcessorError::Unavailable(e.to_string())
}

#[async_trait]
impl PaymentProcessor for StripeProcessor {
    fn name(&self) -> &'static str {
        "stripe"
    }

    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, ProcessorError> {
        let form = [
            ("amount", request.amount.amount_minor().to_string()),
            ("currency", request.amount.currency().code().to_owned()),
            ("payment_method", request.payment_method.clone()),
            ("payment_method_types[0]", "card".to_owned()),
            ("confirm", "true".to_owned()),
            ("metadata[carebill_payment]", request.payment_id.clone()),
        ];
        match self
            .client
            .post("/v1/payment_intents", &form, &request.idempotency_key)
            .await
        {
            Ok(intent) => self.outcome_of(&intent).await,
            Err(e @ StripeError::Api { status, .. }) => {
                let code = e.field("code").unwrap_or("");
                if e.field("type") == Some("card_error") || status == 402 {
                    let decline = e.field("decline_code").unwrap_or(if code.is_empty() {
                        "card_declined"
                    } else {
                        code
                    });
                    let intent = match &e {
                        StripeError::Api { error, .. } => error.get("payment_intent"),
                        StripeError::Unknown(_) => None,
                    };
                    let charge_id = intent.and_then(|i| str_field(i, "id")).map(str::to_owned);
                    let card = match intent {
                        Some(i) => self.card_of(i).await,
                        None => None,
                    };
                    return Ok(ChargeOutcome::Declined {
                        charge_id,
                        decline_code: decline.to_owned(),
                        message: decline_message(decline).to_owned(),
                        card,
                    });
                }
                if code == "idempotency_key_in_use" || e.field("type") == Some("idempotency_error")
                {
                    return Err(ProcessorError::IdempotencyMismatch);
                }
                if code == "resource_missing" || e.field("param") == Some("payment_method") {
                    return Err(ProcessorError::InvalidPaymentMethod);
                }
                // Stripe refused the request for good (nothing was charged): a failed payment.
                Ok(ChargeOutcome::Declined {
                    charge_id: None,
                    decline_code: "processing_error".to_owned(),
                    message: decline_message("processing_error").to_owned(),
                    card: None,
                })
            }
            Err(e) => Err(unknown(&e)),
        }
    }

    async fn refund(&self, request: &RefundRequest) -> Result<RefundOutcome, ProcessorError> {
        let mut form = vec![
            ("payment_intent", request.charge_id.clone()),
            ("amount", request.amount.amount_minor().to_string()),
            ("metadata[carebill_refund]", request.refund_id.clone()),
        ];
        if let Some(dest) = &request.destination_payment_method {
            form.push(("metadata[carebill_destination]", dest.clone()));
        }
        match self
            .client
            .post("/v1/refunds", &form, &request.idempotency_key)
            .await
        {
            Ok(refund) => Ok(refund_outcome(&refund)),
            Err(e @ StripeError::Api { .. }) => {
                if e.field("type") == Some("idempotency_error") {
                    return Err(ProcessorError::IdempotencyMismatch);
                }
                Ok(RefundOutcome::Failed {
                    refund_id: None,
                    failure_code: e.field("code").unwrap_or("refund_refused").to_owned(),
                })
            }
            Err(e) => Err(unknown(&e)),
        }
    }

    async fn retrieve_charge(
        &self,
        charge_id: &str,
    ) -> Result<Option<ChargeOutcome>, ProcessorError> {
        if !is_object_id(charge_id) {
            return Ok(None);
        }
        match self
            .client
            .get(&format!("/v1/payment_intents/{charge_id}"), &[])
            .await
        {
            Ok(Some(intent)) => self.outcome_of(&intent).await.map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(unknown(&e)),
        }
    }

    async fn retrieve_refund(
        &self,
        refund_id: &str,
    ) -> Result<Option<RefundOutcome>, ProcessorError> {
        if !is_object_id(refund_id) {
            return Ok(None);
        }
        match self
            .client
            .get(&format!("/v1/refunds/{refund_id}"), &[])
            .await
        {
            Ok(Some(refund)) => Ok(Some(refund_outcome(&refund))),
            Ok(None) => Ok(None),
            Err(e) => Err(unknown(&e)),
        }
    }
}

/// What a Refund object's state means for our refund.
pub fn refund_outcome(refund: &Value) -> RefundOutcome {
    let id = str_field(refund, "id").map(str::to_owned);
    match (str_field(refund, "status").unwrap_or(""), id) {
        ("succeeded", Some(refund_id)) => RefundOutcome::Succeeded { refund_id },
        ("failed" | "canceled", refund_id) => RefundOutcome::Failed {
            refund_id,
            failure_code: str_field(refund, "failure_reason")
                .unwrap_or(str_field(refund, "status").unwrap_or("failed"))
                .to_owned(),
        },
        (_, Some(refund_id)) => RefundOutcome::Pending { refund_id },
        (_, None) => RefundOutcome::Failed {
            refund_id: None,
            failure_code: "refund_unreadable".to_owned(),
        },
    }
}
