//! Accounting reports: the trial balance as of a date, an account statement with opening and
//! closing balances, and accounts-receivable aging by patient pseudonym.
//!
//! Balances come from the running balance stored on each posting (`balance_after_minor`), so a
//! balance at any point in time is one indexed read per account. "As of" a date means at the
//! end of that day, UTC.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::format::decimal;
use super::Deployment;
use crate::api::{date_field, timestamp_field, ApiPath, ApiQuery};
use crate::auth::{Action, Principal};
use crate::db::us_to_rfc3339;
use crate::error::{ApiError, ApiResult};
use crate::ids::AccountId;
use crate::money::Currency;
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/ledger/trial-balance", get(trial_balance))
        .route("/v1/ledger/accounts/{id}/statement", get(account_statement))
        .route("/v1/reports/ar-aging", get(ar_aging))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AsOfDate {
    pub as_of: Option<String>,
}

/// Microseconds at the end of `as_of` (UTC), default now.
fn end_of(param: &str, as_of: Option<&str>) -> ApiResult<(i64, String)> {
    match as_of {
        None => {
            let now = chrono::Utc::now();
            Ok((now.timestamp_micros(), now.date_naive().to_string()))
        }
        Some(d) => {
            let date = date_field(param, d)?;
            let next = date
                .succ_opt()
                .and_then(|n| n.and_hms_opt(0, 0, 0))
                .ok_or_else(|| {
                    ApiError::invalid(param, "parameter_invalid", "Date out of range.")
                })?;
            Ok((next.and_utc().timestamp_micros(), date.to_string()))
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TrialBalanceLine {
    pub code: String,
    pub name: String,
    /// The account as Beancount and hledger exports name it (patients' accounts summed).
    pub ledger_account: String,
    pub currency: String,
    /// Decimal strings at the currency's exponent; one of the two is "0".
    pub debit: String,
    pub credit: String,
    pub debit_minor: i64,
    pub credit_minor: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TrialBalanceTotal {
    pub currency: String,
    pub debit_minor: i64,
    pub credit_minor: i64,
    pub debit: String,
    pub credit: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TrialBalance {
    /// Always `"trial_balance"`.
    pub object: &'static str,
    pub as_of: String,
    pub lines: Vec<TrialBalanceLine>,
    /// Per currency; debits equal credits in each.
    pub totals: Vec<TrialBalanceTotal>,
}

/// Trial balance at the end of `as_of` (default: now): each chart account's balance per
/// currency (per-patient accounts summed), debits and credits equal per currency.
#[utoipa::path(get, path = "/v1/ledger/trial-balance", tag = "ledger",
    params(("as_of" = Option<String>, Query, description = "YYYY-MM-DD; end of that day, UTC")),
    responses((status = 200, body = TrialBalance)), security(("api_key" = [])))]
pub async fn trial_balance(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(q): ApiQuery<AsOfDate>,
) -> ApiResult<Json<TrialBalance>> {
    principal.authorize(Action::LedgerRead)?;
    let (end_us, as_of) = end_of("as_of", q.as_of.as_deref())?;
    let rows = sqlx::query(
        "SELECT a.code, c.name, c.kind, a.currency, CAST(SUM(COALESCE((SELECT p.balance_after_minor FROM postings p \
            WHERE p.account_id = a.id AND p.posted_at_us < $1 ORDER BY p.account_seq DESC LIMIT 1), 0)) AS BIGINT) \
         FROM accounts a JOIN chart_of_accounts c ON c.code = a.code \
         WHERE a.posting_count > 0 GROUP BY a.code, c.name, c.kind, a.currency ORDER BY a.currency, a.code",
    )
    .bind(end_us)
    .fetch_all(&state.db.pool)
    .await?;
    let mut lines = Vec::new();
    let mut totals: Vec<TrialBalanceTotal> = Vec::new();
    for row in rows {
        let code: String = row.try_get(0)?;
        let name: String = row.try_get(1)?;
        let kind: String = row.try_get(2)?;
        let currency_code: String = row.try_get(3)?;
        let balance: i64 = row.try_get(4)?;
        let currency: Currency = currency_code
            .parse()
            .map_err(|_| ApiError::Internal(anyhow::anyhow!("unknown currency in ledger")))?;
        if balance == 0 {
            continue;
        }
        let (debit, credit) = if balance > 0 {
            (balance, 0)
        } else {
            (0, -balance)
        };
        let total = match totals.iter_mut().find(|t| t.currency == currency_code) {
            Some(t) => t,
            None => {
                totals.push(TrialBalanceTotal {
                    currency: currency_code.clone(),
                    debit_minor: 0,
                    credit_minor: 0,
                    debit: String::new(),
                    credit: String::new(),
                });
                totals
                    .last_mut()
                    .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("totals")))?
            }
        };
        total.debit_minor = total.debit_minor.checked_add(debit).ok_or_else(overflow)?;
        total.credit_minor = total
            .credit_minor
            .checked_add(credit)
            .ok_or_else(overflow)?;
        let ledger_account = super::format::ExportAccount {
            id: String::new(),
            code: code.clone(),
            name: name.clone(),
            kind,
            currency,
            patient: None,
        }
        .ledger_name();
        lines.push(TrialBalanceLine {
            code,
            name,
            ledger_account,
            currency: currency_code,
            debit: decimal(debit, currency),
            credit: decimal(credit, currency),
            debit_minor: debit,
            credit_minor: credit,
        });
    }
    for t in &mut totals {
        // The ledger balances every entry, so this cannot fail unless the data was altered.
        if t.debit_minor != t.credit_minor {
            return Err(ApiError::Internal(anyhow::anyhow!(
                "trial balance does not balance in {}",
                t.currency
            )));
        }
        let currency: Currency = t
            .currency
            .parse()
            .map_err(|_| ApiError::Internal(anyhow::anyhow!("unknown currency in ledger")))?;
        t.debit = decimal(t.debit_minor, currency);
        t.credit = decimal(t.credit_minor, currency);
    }
    Ok(Json(TrialBalance {
        object: "trial_balance",
        as_of,
        lines,
        totals,
    }))
}

fn overflow() -> ApiError {
    ApiError::Internal(anyhow::anyhow!("trial balance overflow"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatementQuery {
    pub from: Option<String>,
    pub to: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StatementLine {
    pub entry: String,
    pub posted_at: String,
    pub amount_minor: i64,
    pub balance_after_minor: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AccountStatement {
    /// Always `"account_statement"`.
    pub object: &'static str,
    pub account: String,
    pub currency: String,
    pub from: String,
    pub to: String,
    pub opening_balance_minor: i64,
    pub closing_balance_minor: i64,
    pub lines: Vec<StatementLine>,
}

/// Lines of an account statement are capped; a longer period is asked for in parts.
const STATEMENT_LINES_MAX: i64 = 10_000;

/// An account's postings between two dates with the opening and closing balances.
#[utoipa::path(get, path = "/v1/ledger/accounts/{id}/statement", tag = "ledger",
    params(("id" = String, Path), ("from" = String, Query, description = "YYYY-MM-DD"),
           ("to" = String, Query, description = "YYYY-MM-DD (inclusive)")),
    responses((status = 200, body = AccountStatement)), security(("api_key" = [])))]
pub async fn account_statement(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<StatementQuery>,
) -> ApiResult<Json<AccountStatement>> {
    principal.authorize(Action::LedgerRead)?;
    let account = AccountId::parse_param(&id, "id")?;
    let from = q.from.as_deref().ok_or_else(|| {
        ApiError::invalid("from", "parameter_missing", "Missing required parameter.")
    })?;
    let to = q.to.as_deref().ok_or_else(|| {
        ApiError::invalid("to", "parameter_missing", "Missing required parameter.")
    })?;
    let from_us = timestamp_field("from", from)?;
    let from_date = date_field("from", from)?;
    let (to_us, to_date) = end_of("to", Some(to))?;
    if to_date < from_date.to_string() {
        return Err(ApiError::invalid(
            "to",
            "range_invalid",
            "`to` is before `from`.",
        ));
    }
    let currency: Option<String> =
        sqlx::query_scalar("SELECT currency FROM accounts WHERE id = $1")
            .bind(account.as_str())
            .fetch_optional(&state.db.pool)
            .await?;
    let currency = currency.ok_or_else(|| ApiError::not_found("id", "ledger account"))?;
    let opening: Option<i64> = sqlx::query_scalar(
        "SELECT balance_after_minor FROM postings WHERE account_id = $1 AND posted_at_us < $2 \
         ORDER BY account_seq DESC LIMIT 1",
    )
    .bind(account.as_str())
    .bind(from_us)
    .fetch_optional(&state.db.pool)
    .await?;
    let opening = opening.unwrap_or(0);
    let rows = sqlx::query(
        "SELECT entry_id, posted_at_us, amount_minor, balance_after_minor FROM postings \
         WHERE account_id = $1 AND posted_at_us >= $2 AND posted_at_us < $3 \
         ORDER BY account_seq LIMIT $4",
    )
    .bind(account.as_str())
    .bind(from_us)
    .bind(to_us)
    .bind(STATEMENT_LINES_MAX + 1)
    .fetch_all(&state.db.pool)
    .await?;
    if i64::try_from(rows.len()).unwrap_or(i64::MAX) > STATEMENT_LINES_MAX {
        return Err(ApiError::invalid(
            "to",
            "range_too_large",
            "More than 10000 postings in this period; ask for a shorter one.",
        ));
    }
    let mut lines = Vec::with_capacity(rows.len());
    for row in rows {
        lines.push(StatementLine {
            entry: row.try_get(0)?,
            posted_at: us_to_rfc3339(row.try_get(1)?),
            amount_minor: row.try_get(2)?,
            balance_after_minor: row.try_get(3)?,
        });
    }
    let closing = lines
        .last()
        .map(|l| l.balance_after_minor)
        .unwrap_or(opening);
    Ok(Json(AccountStatement {
        object: "account_statement",
        account: account.as_str().to_owned(),
        currency,
        from: from_date.to_string(),
        to: to_date,
        opening_balance_minor: opening,
        closing_balance_minor: closing,
        lines,
    }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AgingRow {
    /// The patient's keyed pseudonym.
    pub patient: String,
    pub currency: String,
    pub current_minor: i64,
    pub days_1_30_minor: i64,
    pub days_31_60_minor: i64,
    pub days_61_90_minor: i64,
    pub days_91_120_minor: i64,
    pub days_over_120_minor: i64,
    pub total_minor: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ArAging {
    /// Always `"ar_aging"`.
    pub object: &'static str,
    pub as_of: String,
    pub rows: Vec<AgingRow>,
}

/// Open receivables by patient pseudonym, bucketed by days past the invoice's due date.
#[utoipa::path(get, path = "/v1/reports/ar-aging", tag = "ledger",
    params(("as_of" = Option<String>, Query, description = "YYYY-MM-DD (default today)")),
    responses((status = 200, body = ArAging)), security(("api_key" = [])))]
pub async fn ar_aging(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(q): ApiQuery<AsOfDate>,
) -> ApiResult<Json<ArAging>> {
    principal.authorize(Action::LedgerRead)?;
    let as_of = match q.as_of.as_deref() {
        Some(d) => date_field("as_of", d)?,
        None => chrono::Utc::now().date_naive(),
    };
    let deployment = Deployment::load(&state.db, &state.keys).await?;
    let rows = sqlx::query(
        "SELECT patient_id, currency, due_date, amount_due_minor FROM invoices \
         WHERE status IN ('open', 'partially_paid') AND amount_due_minor > 0 \
         ORDER BY patient_id, currency",
    )
    .fetch_all(&state.db.pool)
    .await?;
    let mut out: Vec<AgingRow> = Vec::new();
    for row in rows {
        let patient: String = row.try_get(0)?;
        let currency: String = row.try_get(1)?;
        let due: String = row.try_get(2)?;
        let amount: i64 = row.try_get(3)?;
        let due = chrono::NaiveDate::parse_from_str(&due, "%Y-%m-%d")
            .map_err(|_| ApiError::Internal(anyhow::anyhow!("invoice due date unreadable")))?;
        let days = (as_of - due).num_days();
        let pseudonym = deployment.pseudonym(&patient);
        // Rows come ordered by patient and currency: a group is always the last row so far.
        let same = out
            .last()
            .is_some_and(|r| r.patient == pseudonym && r.currency == currency);
        let idx = match same {
            true => out.len() - 1,
            false => {
                out.push(AgingRow {
                    patient: pseudonym,
                    currency,
                    current_minor: 0,
                    days_1_30_minor: 0,
                    days_31_60_minor: 0,
                    days_61_90_minor: 0,
                    days_91_120_minor: 0,
                    days_over_120_minor: 0,
                    total_minor: 0,
                });
                out.len() - 1
            }
        };
        let Some(r) = out.get_mut(idx) else { continue };
        let bucket = match days {
            i64::MIN..=0 => &mut r.current_minor,
            1..=30 => &mut r.days_1_30_minor,
            31..=60 => &mut r.days_31_60_minor,
            61..=90 => &mut r.days_61_90_minor,
            91..=120 => &mut r.days_91_120_minor,
            _ => &mut r.days_over_120_minor,
        };
        *bucket = bucket.checked_add(amount).ok_or_else(overflow)?;
        r.total_minor = r.total_minor.checked_add(amount).ok_or_else(overflow)?;
    }
    Ok(Json(ArAging {
        object: "ar_aging",
        as_of: as_of.to_string(),
        rows: out,
    }))
}
