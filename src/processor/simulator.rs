//! The built-in processor simulator: Stripe test mode, on our own database.
//!
//! It answers for Stripe's test PaymentMethod ids as Stripe does:
//!
//! | payment method | outcome |
//! | --- | --- |
//! | `pm_card_visa`, `pm_card_mastercard`, `pm_card_amex`, `pm_card_discover` | succeeds |
//! | `pm_card_jcb`, `pm_card_diners`, `pm_card_unionpay` | succeeds |
//! | `pm_card_visa_chargeDeclined` | declined, `card_declined` |
//! | `pm_card_visa_chargeDeclinedInsufficientFunds` | declined, `insufficient_funds` |
//! | `pm_card_chargeDeclinedExpiredCard` | declined, `expired_card` |
//! | `pm_card_chargeDeclinedIncorrectCvc` | declined, `incorrect_cvc` |
//! | `pm_card_chargeDeclinedProcessingError` | declined, `processing_error` |
//! | `pm_card_visa_processing` | `processing` (settles later) |
//! | anything else | no such payment method |
//!
//! Every id the card vault's simulator minter hands out for a token is in this table, so a card
//! tokenized by the vault charges here the way its test card does at Stripe.
//!
//! Like Stripe it is idempotent: a repeated idempotency key returns the first outcome, and the
//! same key with other parameters is an error. Its records are written in their own statement,
//! outside the caller's transaction: they stand for the processor's side of the wire and
//! survive a crash of the billing request, which is what lets the crash-recovery test prove
//! that a retry completes the first charge instead of making a second.

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::{
    CardSummary, ChargeOutcome, ChargeRequest, PaymentProcessor, ProcessorError, RefundOutcome,
    RefundRequest,
};
use crate::db::{now_us, Db};
use crate::ids::random_base62;

pub struct Simulator {
    db: Db,
}

impl Simulator {
    pub fn new(db: Db) -> Self {
        Simulator { db }
    }
}

fn card(brand: &str, last4: &str) -> CardSummary {
    CardSummary {
        brand: brand.to_owned(),
        last4: last4.to_owned(),
    }
}

/// The outcome Stripe's test mode gives for a test PaymentMethod id.
fn outcome_for(payment_method: &str, charge_id: String) -> Option<ChargeOutcome> {
    let declined = |code: &str, message: &str, c: CardSummary| ChargeOutcome::Declined {
        charge_id: Some(charge_id.clone()),
        decline_code: code.to_owned(),
        message: message.to_owned(),
        card: Some(c),
    };
    Some(match payment_method {
        "pm_card_visa" => ChargeOutcome::Succeeded {
            charge_id,
            card: card("visa", "4242"),
        },
        "pm_card_mastercard" => ChargeOutcome::Succeeded {
            charge_id,
            card: card("mastercard", "4444"),
        },
        "pm_card_amex" => ChargeOutcome::Succeeded {
            charge_id,
            card: card("amex", "8431"),
        },
        "pm_card_discover" => ChargeOutcome::Succeeded {
            charge_id,
            card: card("discover", "1117"),
        },
        "pm_card_jcb" => ChargeOutcome::Succeeded {
            charge_id,
            card: card("jcb", "0505"),
        },
        "pm_card_diners" => ChargeOutcome::Succeeded {
            charge_id,
            card: card("diners", "0004"),
        },
        "pm_card_unionpay" => ChargeOutcome::Succeeded {
            charge_id,
            card: card("unionpay", "0005"),
        },
        "pm_card_visa_chargeDeclined" => declined(
            "card_declined",
            "Your card was declined.",
            card("visa", "0002"),
        ),
        "pm_card_visa_chargeDeclinedInsufficientFunds" => declined(
            "insufficient_funds",
            "Your card has insufficient funds.",
            card("visa", "9995"),
        ),
        "pm_card_chargeDeclinedExpiredCard" => declined(
            "expired_card",
            "Your card has expired.",
            card("visa", "0069"),
        ),
        "pm_card_chargeDeclinedIncorrectCvc" => declined(
            "incorrect_cvc",
            "Your card's security code is incorrect.",
            card("visa", "0127"),
        ),
        "pm_card_chargeDeclinedProcessingError" => declined(
            "processing_error",
            "An error occurred while processing your card.",
            card("visa", "0119"),
        ),
        "pm_card_visa_processing" => ChargeOutcome::Processing {
            charge_id,
            card: Some(card("visa", "4242")),
        },
        _ => return None,
    })
}

fn request_digest(request: &ChargeRequest) -> String {
    let text = format!(
        "{}|{}|{}",
        request.amount.amount_minor(),
        request.amount.currency(),
        request.payment_method
    );
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn unavailable(e: impl std::fmt::Display) -> ProcessorError {
    ProcessorError::Unavailable(e.to_string())
}

#[async_trait]
impl PaymentProcessor for Simulator {
    fn name(&self) -> &'static str {
        "simulator"
    }

    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, ProcessorError> {
        let digest = request_digest(request);
        let charge_id = format!("ch_sim_{}", random_base62(24));
        let outcome = outcome_for(&request.payment_method, charge_id.clone())
            .ok_or(ProcessorError::InvalidPaymentMethod)?;
        let json = serde_json::to_string(&outcome).map_err(unavailable)?;
        // Insert first: a key seen before (a retry, or a concurrent call that stored first)
        // conflicts, and then the stored outcome is the answer.
        let inserted = sqlx::query(
            "INSERT INTO simulator_charges (idempotency_key, charge_id, amount_minor, request_sha256, outcome_json, created_at_us) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(&request.idempotency_key)
        .bind(&charge_id)
        .bind(request.amount.amount_minor())
        .bind(&digest)
        .bind(&json)
        .bind(now_us())
        .execute(&self.db.pool)
        .await
        .map_err(unavailable)?;
        if inserted.rows_affected() == 1 {
            return Ok(outcome);
        }
        let row = sqlx::query(
            "SELECT request_sha256, outcome_json FROM simulator_charges WHERE idempotency_key = $1",
        )
        .bind(&request.idempotency_key)
        .fetch_one(&self.db.pool)
        .await
        .map_err(unavailable)?;
        let stored: String = row.try_get("request_sha256").map_err(unavailable)?;
        if stored != digest {
            return Err(ProcessorError::IdempotencyMismatch);
        }
        let json: String = row.try_get("outcome_json").map_err(unavailable)?;
        serde_json::from_str(&json).map_err(unavailable)
    }

    async fn refund(&self, request: &RefundRequest) -> Result<RefundOutcome, ProcessorError> {
        if let Some(row) =
            sqlx::query("SELECT outcome_json FROM simulator_refunds WHERE idempotency_key = $1")
                .bind(&request.idempotency_key)
                .fetch_optional(&self.db.pool)
                .await
                .map_err(unavailable)?
        {
            let json: String = row.try_get("outcome_json").map_err(unavailable)?;
            return serde_json::from_str(&json).map_err(unavailable);
        }
        // Like Stripe, refuse to refund more than the charge captured, whatever the caller says.
        let captured = self.captured_minor(&request.charge_id).await?;
        let refunded: i64 = sqlx::query(
            "SELECT CAST(COALESCE(SUM(amount_minor), 0) AS BIGINT) AS s FROM simulator_refunds WHERE charge_id = $1",
        )
        .bind(&request.charge_id)
        .fetch_one(&self.db.pool)
        .await
        .and_then(|r| r.try_get("s"))
        .map_err(unavailable)?;
        let refund_id = format!("re_sim_{}", random_base62(24));
        let fits = refunded
            .checked_add(request.amount.amount_minor())
            .is_some_and(|total| total <= captured);
        let outcome = if fits {
            RefundOutcome::Succeeded {
                refund_id: refund_id.clone(),
            }
        } else {
            RefundOutcome::Failed {
                refund_id: Some(refund_id.clone()),
                failure_code: "charge_already_refunded".to_owned(),
            }
        };
        let json = serde_json::to_string(&outcome).map_err(unavailable)?;
        let stored_amount = if fits {
            request.amount.amount_minor()
        } else {
            0
        };
        sqlx::query(
            "INSERT INTO simulator_refunds (idempotency_key, refund_id, charge_id, amount_minor, outcome_json, created_at_us) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(&request.idempotency_key)
        .bind(&refund_id)
        .bind(&request.charge_id)
        .bind(stored_amount)
        .bind(&json)
        .bind(now_us())
        .execute(&self.db.pool)
        .await
        .map_err(unavailable)?;
        let row =
            sqlx::query("SELECT outcome_json FROM simulator_refunds WHERE idempotency_key = $1")
                .bind(&request.idempotency_key)
                .fetch_one(&self.db.pool)
                .await
                .map_err(unavailable)?;
        let json: String = row.try_get("outcome_json").map_err(unavailable)?;
        serde_json::from_str(&json).map_err(unavailable)
    }

    async fn retrieve_charge(
        &self,
        charge_id: &str,
    ) -> Result<Option<ChargeOutcome>, ProcessorError> {
        let row = sqlx::query("SELECT outcome_json FROM simulator_charges WHERE charge_id = $1")
            .bind(charge_id)
            .fetch_optional(&self.db.pool)
            .await
            .map_err(unavailable)?;
        match row {
            None => Ok(None),
            Some(row) => {
                let json: String = row.try_get("outcome_json").map_err(unavailable)?;
                serde_json::from_str(&json).map(Some).map_err(unavailable)
            }
        }
    }
}

impl Simulator {
    /// What a charge captured: its amount if it succeeded, else nothing.
    async fn captured_minor(&self, charge_id: &str) -> Result<i64, ProcessorError> {
        let row = sqlx::query(
            "SELECT outcome_json, amount_minor FROM simulator_charges WHERE charge_id = $1",
        )
        .bind(charge_id)
        .fetch_optional(&self.db.pool)
        .await
        .map_err(unavailable)?;
        let Some(row) = row else { return Ok(0) };
        let json: String = row.try_get("outcome_json").map_err(unavailable)?;
        let outcome: ChargeOutcome = serde_json::from_str(&json).map_err(unavailable)?;
        if matches!(outcome, ChargeOutcome::Succeeded { .. }) {
            row.try_get("amount_minor").map_err(unavailable)
        } else {
            Ok(0)
        }
    }
}

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn every_payment_method_the_vault_mints_is_known() {
        // The ids the vault's simulator minter (tokenizer/src/minter.rs) hands out for tokens.
        for (pm, brand, last4) in [
            ("pm_card_visa", "visa", "4242"),
            ("pm_card_mastercard", "mastercard", "4444"),
            ("pm_card_amex", "amex", "8431"),
            ("pm_card_discover", "discover", "1117"),
            ("pm_card_jcb", "jcb", "0505"),
            ("pm_card_diners", "diners", "0004"),
            ("pm_card_unionpay", "unionpay", "0005"),
        ] {
            assert_eq!(
                outcome_for(pm, "ch_1".to_owned()),
                Some(ChargeOutcome::Succeeded {
                    charge_id: "ch_1".to_owned(),
                    card: card(brand, last4),
                }),
                "{pm}"
            );
        }
        for (pm, code) in [
            ("pm_card_visa_chargeDeclined", "card_declined"),
            (
                "pm_card_visa_chargeDeclinedInsufficientFunds",
                "insufficient_funds",
            ),
            ("pm_card_chargeDeclinedExpiredCard", "expired_card"),
            ("pm_card_chargeDeclinedIncorrectCvc", "incorrect_cvc"),
            ("pm_card_chargeDeclinedProcessingError", "processing_error"),
        ] {
            match outcome_for(pm, "ch_1".to_owned()) {
                Some(ChargeOutcome::Declined { decline_code, .. }) => {
                    assert_eq!(decline_code, code, "{pm}")
                }
                other => panic!("{pm}: {other:?}"),
            }
        }
        assert_eq!(outcome_for("pm_card_nope", "ch_1".to_owned()), None);
    }
}
