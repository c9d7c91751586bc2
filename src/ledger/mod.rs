//! The ledger: double-entry bookkeeping in integer minor units.
//!
//! - [`accounts`]: the chart of accounts and account ids;
//! - [`posting`]: posting and reversing journal entries, the only writers of the ledger;
//! - [`invariants`]: the full-ledger checks the tests (and `carebill ledger verify`) run;
//! - this file: the read API under `/v1/ledger`.
//!
//! Signs: amounts are signed, debits positive and credits negative, on postings and balances.

pub mod accounts;
pub mod invariants;
pub mod posting;

use std::collections::HashMap;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;
use utoipa::ToSchema;

use crate::api::{parse_limit, timestamp_field, ApiPath, ApiQuery, List};
use crate::auth::{Action, Principal};
use crate::db::{placeholders, us_to_rfc3339};
use crate::error::{ApiError, ApiResult};
use crate::ids::{AccountId, EntryId};
use crate::money::{Currency, Money};
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/ledger/accounts", get(list_accounts))
        .route("/v1/ledger/accounts/{id}", get(get_account))
        .route("/v1/ledger/entries", get(list_entries))
        .route("/v1/ledger/entries/{id}", get(get_entry))
}

/// A ledger account with its balance.
#[derive(Debug, Serialize, ToSchema)]
pub struct Account {
    pub id: String,
    /// Always `"ledger_account"`.
    pub object: &'static str,
    /// Chart-of-accounts code, e.g. `1200` for patient receivables.
    pub code: String,
    pub name: String,
    /// asset, liability, revenue, contra_revenue or expense.
    pub kind: String,
    /// debit or credit.
    pub normal_side: String,
    pub currency: String,
    /// The patient of a per-patient sub-ledger account.
    pub patient: Option<String>,
    /// Signed balance in minor units: debits positive, credits negative.
    pub balance: i64,
    /// The balance as an exact decimal string in major units, e.g. "-125.50".
    pub balance_decimal: String,
    pub posting_count: i64,
    /// The point in time of `balance` when `as_of` was asked for.
    pub as_of: Option<String>,
}

const ACCOUNT_COLUMNS: &str =
    "a.id, a.code, c.name, c.kind, c.normal_side, a.currency, a.patient_id, \
     a.balance_minor, a.posting_count, a.seq";

fn account_from_row(row: &AnyRow) -> ApiResult<Account> {
    let currency: String = row.try_get("currency")?;
    let balance: i64 = row.try_get("balance_minor")?;
    let decimal = Money::new(balance, currency.parse::<Currency>()?)
        .to_decimal()
        .to_string();
    Ok(Account {
        id: row.try_get("id")?,
        object: "ledger_account",
        code: row.try_get("code")?,
        name: row.try_get("name")?,
        kind: row.try_get("kind")?,
        normal_side: row.try_get("normal_side")?,
        currency,
        patient: row.try_get("patient_id")?,
        balance,
        balance_decimal: decimal,
        posting_count: row.try_get("posting_count")?,
        as_of: None,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountListQuery {
    limit: Option<String>,
    starting_after: Option<String>,
    currency: Option<String>,
    patient: Option<String>,
}

/// List ledger accounts in chart order.
#[utoipa::path(get, path = "/v1/ledger/accounts", tag = "ledger",
    params(("limit" = Option<i64>, Query), ("starting_after" = Option<String>, Query),
           ("currency" = Option<String>, Query), ("patient" = Option<String>, Query)),
    responses((status = 200, description = "A page of accounts", body = List<Account>)),
    security(("api_key" = [])))]
pub async fn list_accounts(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(q): ApiQuery<AccountListQuery>,
) -> ApiResult<Json<List<Account>>> {
    principal.authorize(Action::LedgerRead)?;
    let limit = parse_limit(q.limit.as_deref())?;
    let currency = q
        .currency
        .as_deref()
        .map(|c| {
            c.parse::<Currency>().map_err(|_| {
                ApiError::invalid("currency", "currency_invalid", "Unsupported currency.")
            })
        })
        .transpose()?;
    let patient = q
        .patient
        .as_deref()
        .map(|p| crate::ids::PatientId::parse_param(p, "patient"))
        .transpose()?;
    let after = AccountId::parse_opt_param(q.starting_after.as_deref(), "starting_after")?;
    let after_seq = crate::api::cursor_seq(
        &state,
        "accounts",
        "ledger account",
        after.as_ref().map(|i| i.as_str()),
        0,
    )
    .await?;
    let rows = sqlx::query(&format!(
        "SELECT {ACCOUNT_COLUMNS} FROM accounts a JOIN chart_of_accounts c ON c.code = a.code \
         WHERE a.seq > $1 AND ($2 = '' OR a.currency = $2) AND ($3 = '' OR a.patient_id = $3) \
         ORDER BY a.seq LIMIT $4"
    ))
    .bind(after_seq)
    .bind(currency.map(|c| c.code()).unwrap_or(""))
    .bind(patient.as_ref().map(|p| p.as_str()).unwrap_or(""))
    .bind(limit.saturating_add(1))
    .fetch_all(&state.db.pool)
    .await?;
    let accounts = rows
        .iter()
        .map(account_from_row)
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(List::from_rows(
        accounts,
        limit,
        "/v1/ledger/accounts",
    )))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AsOfQuery {
    as_of: Option<String>,
}

/// Get an account with its balance, now or at a point in time (`as_of`, RFC 3339).
#[utoipa::path(get, path = "/v1/ledger/accounts/{id}", tag = "ledger",
    params(("id" = String, Path), ("as_of" = Option<String>, Query, description = "RFC 3339 timestamp")),
    responses((status = 200, body = Account), (status = 404, description = "No such account")),
    security(("api_key" = [])))]
pub async fn get_account(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<AsOfQuery>,
) -> ApiResult<Json<Account>> {
    principal.authorize(Action::LedgerRead)?;
    let id = AccountId::parse_param(&id, "id")?;
    let as_of_us = q
        .as_of
        .as_deref()
        .map(|t| timestamp_field("as_of", t))
        .transpose()?;
    let row = sqlx::query(&format!(
        "SELECT {ACCOUNT_COLUMNS} FROM accounts a JOIN chart_of_accounts c ON c.code = a.code WHERE a.id = $1"
    ))
    .bind(id.as_str())
    .fetch_optional(&state.db.pool)
    .await?
    .ok_or_else(|| ApiError::not_found("id", "ledger account"))?;
    let mut account = account_from_row(&row)?;
    if let Some(as_of_us) = as_of_us {
        // One indexed read: the running balance of the last posting at or before `as_of`.
        let row = sqlx::query(
            "SELECT balance_after_minor, account_seq FROM postings WHERE account_id = $1 AND posted_at_us <= $2 \
             ORDER BY posted_at_us DESC, account_seq DESC LIMIT 1",
        )
        .bind(id.as_str())
        .bind(as_of_us)
        .fetch_optional(&state.db.pool)
        .await?;
        let (balance, count) = match row {
            Some(r) => (
                r.try_get::<i64, _>("balance_after_minor")?,
                r.try_get::<i64, _>("account_seq")?,
            ),
            None => (0, 0),
        };
        let currency: Currency = account.currency.parse()?;
        account.balance = balance;
        account.balance_decimal = Money::new(balance, currency).to_decimal().to_string();
        account.posting_count = count;
        account.as_of = Some(us_to_rfc3339(as_of_us));
    }
    Ok(Json(account))
}

/// One posting of an entry.
#[derive(Debug, Serialize, ToSchema)]
pub struct Posting {
    pub account: String,
    /// Signed minor units: debit positive, credit negative.
    pub amount: i64,
    pub currency: String,
    /// The account's running balance after this posting.
    pub balance_after: i64,
}

/// A journal entry with its postings.
#[derive(Debug, Serialize, ToSchema)]
pub struct Entry {
    pub id: String,
    /// Always `"journal_entry"`.
    pub object: &'static str,
    pub kind: String,
    pub memo: String,
    pub posted_at: String,
    pub effective_date: String,
    /// The entry this one reverses, for a reversal.
    pub reverses: Option<String>,
    pub patient: Option<String>,
    pub invoice: Option<String>,
    pub payment: Option<String>,
    pub refund: Option<String>,
    pub adjustment: Option<String>,
    pub postings: Vec<Posting>,
}

const ENTRY_COLUMNS: &str =
    "e.seq, e.id, e.kind, e.memo, e.posted_at_us, e.effective_date, e.reverses_entry_id, \
     e.patient_id, e.invoice_id, e.payment_id, e.refund_id, e.adjustment_id";

/// Loads the postings of the given entries in one query and assembles the entries.
async fn entries_with_postings(state: &AppState, rows: Vec<AnyRow>) -> ApiResult<Vec<Entry>> {
    let mut entries = Vec::with_capacity(rows.len());
    for row in &rows {
        entries.push(Entry {
            id: row.try_get("id")?,
            object: "journal_entry",
            kind: row.try_get("kind")?,
            memo: row.try_get("memo")?,
            posted_at: us_to_rfc3339(row.try_get("posted_at_us")?),
            effective_date: row.try_get("effective_date")?,
            reverses: row.try_get("reverses_entry_id")?,
            patient: row.try_get("patient_id")?,
            invoice: row.try_get("invoice_id")?,
            payment: row.try_get("payment_id")?,
            refund: row.try_get("refund_id")?,
            adjustment: row.try_get("adjustment_id")?,
            postings: Vec::new(),
        });
    }
    if entries.is_empty() {
        return Ok(entries);
    }
    let sql = format!(
        "SELECT entry_id, account_id, amount_minor, currency, balance_after_minor FROM postings \
         WHERE entry_id IN ({}) ORDER BY seq",
        placeholders(1, entries.len())
    );
    let mut query = sqlx::query(&sql);
    for e in &entries {
        query = query.bind(e.id.clone());
    }
    let mut by_entry: HashMap<String, Vec<Posting>> = HashMap::new();
    for row in query.fetch_all(&state.db.pool).await? {
        by_entry
            .entry(row.try_get("entry_id")?)
            .or_default()
            .push(Posting {
                account: row.try_get("account_id")?,
                amount: row.try_get("amount_minor")?,
                currency: row.try_get("currency")?,
                balance_after: row.try_get("balance_after_minor")?,
            });
    }
    for e in &mut entries {
        e.postings = by_entry.remove(&e.id).unwrap_or_default();
    }
    Ok(entries)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryListQuery {
    limit: Option<String>,
    starting_after: Option<String>,
    account: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

/// List journal entries in posting order (oldest first), optionally only those touching
/// `account`, posted in `[from, to)`.
#[utoipa::path(get, path = "/v1/ledger/entries", tag = "ledger",
    params(("limit" = Option<i64>, Query), ("starting_after" = Option<String>, Query),
           ("account" = Option<String>, Query), ("from" = Option<String>, Query, description = "RFC 3339, inclusive"),
           ("to" = Option<String>, Query, description = "RFC 3339, exclusive")),
    responses((status = 200, body = List<Entry>)),
    security(("api_key" = [])))]
pub async fn list_entries(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(q): ApiQuery<EntryListQuery>,
) -> ApiResult<Json<List<Entry>>> {
    principal.authorize(Action::LedgerRead)?;
    let limit = parse_limit(q.limit.as_deref())?;
    let account = AccountId::parse_opt_param(q.account.as_deref(), "account")?;
    let from_us = q
        .from
        .as_deref()
        .map(|t| timestamp_field("from", t))
        .transpose()?;
    let to_us =
        q.to.as_deref()
            .map(|t| timestamp_field("to", t))
            .transpose()?;
    if let (Some(f), Some(t)) = (from_us, to_us) {
        if t < f {
            return Err(ApiError::invalid(
                "to",
                "parameter_invalid",
                "`to` must not be before `from`.",
            ));
        }
    }
    let after = EntryId::parse_opt_param(q.starting_after.as_deref(), "starting_after")?;
    let after_seq = crate::api::cursor_seq(
        &state,
        "journal_entries",
        "journal entry",
        after.as_ref().map(|i| i.as_str()),
        0,
    )
    .await?;
    let rows = sqlx::query(&format!(
        "SELECT {ENTRY_COLUMNS} FROM journal_entries e WHERE e.seq > $1 \
         AND ($2 = '' OR EXISTS (SELECT 1 FROM postings p WHERE p.entry_id = e.id AND p.account_id = $2)) \
         AND e.posted_at_us >= $3 AND e.posted_at_us < $4 ORDER BY e.seq LIMIT $5"
    ))
    .bind(after_seq)
    .bind(account.as_ref().map(|a| a.as_str()).unwrap_or(""))
    .bind(from_us.unwrap_or(i64::MIN))
    .bind(to_us.unwrap_or(i64::MAX))
    .bind(limit.saturating_add(1))
    .fetch_all(&state.db.pool)
    .await?;
    let entries = entries_with_postings(&state, rows).await?;
    Ok(Json(List::from_rows(entries, limit, "/v1/ledger/entries")))
}

/// Get one journal entry with its postings.
#[utoipa::path(get, path = "/v1/ledger/entries/{id}", tag = "ledger",
    params(("id" = String, Path)),
    responses((status = 200, body = Entry), (status = 404, description = "No such entry")),
    security(("api_key" = [])))]
pub async fn get_entry(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Entry>> {
    principal.authorize(Action::LedgerRead)?;
    let id = EntryId::parse_param(&id, "id")?;
    let row = sqlx::query(&format!(
        "SELECT {ENTRY_COLUMNS} FROM journal_entries e WHERE e.id = $1"
    ))
    .bind(id.as_str())
    .fetch_optional(&state.db.pool)
    .await?
    .ok_or_else(|| ApiError::not_found("id", "journal entry"))?;
    let mut entries = entries_with_postings(&state, vec![row]).await?;
    entries
        .pop()
        .map(Json)
        .ok_or_else(|| ApiError::not_found("id", "journal entry"))
}
