//! The chart of accounts and how ledger account ids are formed.
//!
//! Account ids are deterministic: `acct_<code>_<currency>` for the provider-wide accounts (made
//! by the migration for every currency) and `acct_<code>_<currency>_<patient id>` for the
//! per-patient sub-ledgers (receivables and credit balances), created on first use. Code can
//! therefore name the accounts of a posting without a lookup.

use crate::db::{now_us, Tx};
use crate::error::ApiError;
use crate::ids::{AccountId, PatientId};
use crate::money::Currency;

/// The accounts of the chart (mirrors the `chart_of_accounts` rows of the migration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Bank,
    ProcessorClearing,
    DisputedFunds,
    PatientReceivables,
    PatientCredit,
    RefundsPayable,
    Revenue,
    InsuranceAdjustments,
    Discounts,
    WriteOffs,
    ProcessorFees,
}

impl Code {
    pub const fn as_str(self) -> &'static str {
        match self {
            Code::Bank => "1000",
            Code::ProcessorClearing => "1010",
            Code::DisputedFunds => "1100",
            Code::PatientReceivables => "1200",
            Code::PatientCredit => "2100",
            Code::RefundsPayable => "2200",
            Code::Revenue => "4000",
            Code::InsuranceAdjustments => "4100",
            Code::Discounts => "4200",
            Code::WriteOffs => "5100",
            Code::ProcessorFees => "5200",
        }
    }

    /// Whether the account is kept per patient (a sub-ledger).
    pub const fn per_patient(self) -> bool {
        matches!(self, Code::PatientReceivables | Code::PatientCredit)
    }
}

/// The id of a provider-wide account.
pub fn account_id(code: Code, currency: Currency) -> AccountId {
    debug_assert!(!code.per_patient());
    AccountId::from_db(format!("acct_{}_{}", code.as_str(), currency.code()))
}

/// The id of a patient's sub-ledger account.
pub fn patient_account_id(code: Code, currency: Currency, patient: &PatientId) -> AccountId {
    debug_assert!(code.per_patient());
    AccountId::from_db(format!(
        "acct_{}_{}_{}",
        code.as_str(),
        currency.code(),
        patient
    ))
}

/// Creates the patient's receivable and credit accounts in `currency` if they do not exist.
pub async fn ensure_patient_accounts(
    tx: &mut Tx,
    patient: &PatientId,
    currency: Currency,
) -> Result<(), ApiError> {
    let now = now_us();
    sqlx::query(
        "INSERT INTO accounts (id, code, currency, patient_id, created_at_us) \
         VALUES ($1, $2, $3, $4, $5), ($6, $7, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(patient_account_id(Code::PatientReceivables, currency, patient).as_str())
    .bind(Code::PatientReceivables.as_str())
    .bind(currency.code())
    .bind(patient.as_str())
    .bind(now)
    .bind(patient_account_id(Code::PatientCredit, currency, patient).as_str())
    .bind(Code::PatientCredit.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(())
}
