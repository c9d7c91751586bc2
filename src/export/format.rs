//! The four export formats, each written one entry at a time into a small buffer, so an export
//! of any size streams in flat memory.
//!
//! - **CSV** (RFC 4180, CRLF, quoted where needed): one row per posting.
//! - **JSON Lines**: one entry per line, with its postings.
//! - **Beancount**: `open` directives for every account, then one transaction per entry with
//!   our ids as metadata; amounts are decimals at the currency's exponent.
//! - **hledger** journal: `account` declarations, then one transaction per entry.
//!
//! Sign convention: a debit is a positive amount, a credit a negative one — ours, and the one
//! Beancount and hledger use for assets.

use rust_decimal::Decimal;
use serde::Serialize;

use crate::money::Currency;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Csv,
    Jsonl,
    Beancount,
    Hledger,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv; charset=utf-8; header=present",
            Format::Jsonl => "application/jsonl; charset=utf-8",
            Format::Beancount | Format::Hledger => "text/plain; charset=utf-8",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Jsonl => "jsonl",
            Format::Beancount => "beancount",
            Format::Hledger => "journal",
        }
    }

    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "csv" => Some(Format::Csv),
            "jsonl" => Some(Format::Jsonl),
            "beancount" => Some(Format::Beancount),
            "hledger" => Some(Format::Hledger),
            _ => None,
        }
    }
}

/// An account as exported: its patient (if any) already pseudonymized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportAccount {
    /// Our account id with the patient id replaced by the pseudonym.
    pub id: String,
    pub code: String,
    pub name: String,
    /// asset, liability, revenue, contra_revenue, expense.
    pub kind: String,
    pub currency: Currency,
    /// Keyed pseudonym (or, in identified exports, the patient id).
    pub patient: Option<String>,
}

impl ExportAccount {
    /// The Beancount / hledger account name: `Assets:PatientReceivables:USD:P1a2b…`.
    pub fn ledger_name(&self) -> String {
        let root = match self.kind.as_str() {
            "asset" => "Assets",
            "liability" => "Liabilities",
            "revenue" | "contra_revenue" => "Income",
            "expense" => "Expenses",
            _ => "Equity",
        };
        let name: String = self
            .name
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(|w| {
                let mut cs = w.chars();
                match cs.next() {
                    Some(first) => first.to_ascii_uppercase().to_string() + cs.as_str(),
                    None => String::new(),
                }
            })
            .collect();
        let mut out = format!("{root}:{name}:{}", self.currency.upper_code());
        if let Some(p) = &self.patient {
            let clean: String = p.chars().filter(char::is_ascii_alphanumeric).collect();
            out.push_str(":P");
            out.push_str(&clean);
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportPosting {
    pub account: ExportAccount,
    pub amount_minor: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct References {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invoice: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refund: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adjustment: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reverses_entry: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportEntry {
    pub seq: i64,
    pub id: String,
    pub posted_at: String,
    pub effective_date: String,
    pub kind: String,
    pub memo: String,
    /// Pseudonym, or patient id in identified exports.
    pub patient: Option<String>,
    /// Identified exports only.
    pub patient_name: Option<String>,
    /// Identified exports only: `visa ••••4242`.
    pub card: Option<String>,
    pub references: References,
    pub postings: Vec<ExportPosting>,
}

/// `amount_minor` as a decimal at the currency's exponent (`12.34`, `-5`, `1.250`).
pub fn decimal(amount_minor: i64, currency: Currency) -> String {
    Decimal::new(amount_minor, currency.exponent()).to_string()
}

pub const CSV_HEADER: [&str; 18] = [
    "entry_id",
    "entry_seq",
    "posted_at",
    "effective_date",
    "kind",
    "account_id",
    "account_code",
    "account_name",
    "debit",
    "credit",
    "currency",
    "memo",
    "patient",
    "invoice",
    "payment",
    "refund",
    "adjustment",
    "reverses_entry",
];

/// What goes before the first entry.
pub fn preamble(format: Format, identified: bool, out: &mut Vec<u8>) {
    match format {
        Format::Csv => {
            let mut header: Vec<&str> = CSV_HEADER.to_vec();
            if identified {
                header.extend(["patient_name", "card"]);
            }
            csv_row(&header, out);
        }
        Format::Jsonl => {}
        Format::Beancount => {
            out.extend_from_slice(
                b"; carebill ledger export (Beancount)\noption \"title\" \"carebill ledger\"\noption \"operating_currency\" \"USD\"\n\n",
            );
        }
        Format::Hledger => {
            out.extend_from_slice(b"; carebill ledger export (hledger journal)\n\n");
            // Every commodity declared with its minor-unit precision (hledger --strict).
            for c in Currency::ALL {
                // `1000.` / `1000.00` / `1000.000`: a decimal point even with no decimals.
                let zeros = "0".repeat(usize::try_from(c.exponent()).unwrap_or(0));
                out.extend_from_slice(
                    format!("commodity 1000.{zeros} {}\n", c.upper_code()).as_bytes(),
                );
            }
            out.push(b'\n');
        }
    }
}

/// An account declaration (Beancount `open`, hledger `account`); nothing for CSV and JSONL.
pub fn account_declaration(format: Format, account: &ExportAccount, out: &mut Vec<u8>) {
    match format {
        Format::Beancount => out.extend_from_slice(
            format!(
                "1970-01-01 open {} {}\n  carebill_account: \"{}\"\n",
                account.ledger_name(),
                account.currency.upper_code(),
                account.id
            )
            .as_bytes(),
        ),
        Format::Hledger => out.extend_from_slice(
            format!(
                "account {}  ; carebill_account: {}\n",
                account.ledger_name(),
                account.id
            )
            .as_bytes(),
        ),
        Format::Csv | Format::Jsonl => {}
    }
}

/// Between the declarations and the entries.
pub fn declarations_end(format: Format, out: &mut Vec<u8>) {
    if matches!(format, Format::Beancount | Format::Hledger) {
        out.push(b'\n');
    }
}

fn csv_row(fields: &[&str], out: &mut Vec<u8>) {
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if field.contains([',', '"', '\r', '\n']) {
            out.push(b'"');
            out.extend_from_slice(field.replace('"', "\"\"").as_bytes());
            out.push(b'"');
        } else {
            out.extend_from_slice(field.as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// A quoted string for Beancount / hledger (no newlines, quotes escaped).
fn quoted(s: &str) -> String {
    let clean: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!("\"{}\"", clean.replace('\\', "\\\\").replace('"', "\\\""))
}

#[derive(Serialize)]
struct JsonPosting<'a> {
    account: &'a str,
    /// The same account as named in the Beancount and hledger exports.
    ledger_account: String,
    code: &'a str,
    name: &'a str,
    currency: &'a str,
    amount: String,
    amount_minor: i64,
}

#[derive(Serialize)]
struct JsonEntry<'a> {
    id: &'a str,
    seq: i64,
    posted_at: &'a str,
    effective_date: &'a str,
    kind: &'a str,
    memo: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    patient: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patient_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    card: Option<&'a str>,
    references: &'a References,
    postings: Vec<JsonPosting<'a>>,
}

/// One entry in `format`, appended to `out`.
pub fn entry(format: Format, e: &ExportEntry, identified: bool, out: &mut Vec<u8>) {
    match format {
        Format::Csv => {
            let seq = e.seq.to_string();
            for p in &e.postings {
                let amount = decimal(p.amount_minor.abs(), p.account.currency);
                let (debit, credit) = if p.amount_minor > 0 {
                    (amount.as_str(), "")
                } else {
                    ("", amount.as_str())
                };
                let r = &e.references;
                let mut fields = vec![
                    e.id.as_str(),
                    seq.as_str(),
                    e.posted_at.as_str(),
                    e.effective_date.as_str(),
                    e.kind.as_str(),
                    p.account.id.as_str(),
                    p.account.code.as_str(),
                    p.account.name.as_str(),
                    debit,
                    credit,
                    p.account.currency.code(),
                    e.memo.as_str(),
                    e.patient.as_deref().unwrap_or(""),
                    r.invoice.as_deref().unwrap_or(""),
                    r.payment.as_deref().unwrap_or(""),
                    r.refund.as_deref().unwrap_or(""),
                    r.adjustment.as_deref().unwrap_or(""),
                    r.reverses_entry.as_deref().unwrap_or(""),
                ];
                if identified {
                    fields.push(e.patient_name.as_deref().unwrap_or(""));
                    fields.push(e.card.as_deref().unwrap_or(""));
                }
                csv_row(&fields, out);
            }
        }
        Format::Jsonl => {
            let line = JsonEntry {
                id: &e.id,
                seq: e.seq,
                posted_at: &e.posted_at,
                effective_date: &e.effective_date,
                kind: &e.kind,
                memo: &e.memo,
                patient: e.patient.as_deref(),
                patient_name: if identified {
                    e.patient_name.as_deref()
                } else {
                    None
                },
                card: if identified { e.card.as_deref() } else { None },
                references: &e.references,
                postings: e
                    .postings
                    .iter()
                    .map(|p| JsonPosting {
                        account: &p.account.id,
                        ledger_account: p.account.ledger_name(),
                        code: &p.account.code,
                        name: &p.account.name,
                        currency: p.account.currency.code(),
                        amount: decimal(p.amount_minor, p.account.currency),
                        amount_minor: p.amount_minor,
                    })
                    .collect(),
            };
            // Serializing plain strings and numbers cannot fail.
            if serde_json::to_writer(&mut *out, &line).is_ok() {
                out.push(b'\n');
            }
        }
        Format::Beancount => {
            out.extend_from_slice(
                format!(
                    "{} * {}\n  carebill_entry: \"{}\"\n  carebill_seq: \"{}\"\n  carebill_kind: \"{}\"\n",
                    e.effective_date,
                    quoted(&e.memo),
                    e.id,
                    e.seq,
                    e.kind
                )
                .as_bytes(),
            );
            for (key, value) in metadata(e, identified) {
                out.extend_from_slice(format!("  {key}: {}\n", quoted(&value)).as_bytes());
            }
            for p in &e.postings {
                out.extend_from_slice(
                    format!(
                        "  {}  {} {}\n",
                        p.account.ledger_name(),
                        decimal(p.amount_minor, p.account.currency),
                        p.account.currency.upper_code()
                    )
                    .as_bytes(),
                );
            }
            out.push(b'\n');
        }
        Format::Hledger => {
            let mut tags = format!("carebill_entry:{}, carebill_seq:{}", e.id, e.seq);
            for (key, value) in metadata(e, identified) {
                let clean: String = value
                    .chars()
                    .filter(|c| *c != ',' && !c.is_control())
                    .collect();
                tags.push_str(&format!(", {key}:{clean}"));
            }
            let memo: String = e
                .memo
                .chars()
                .filter(|c| !c.is_control() && *c != ';')
                .collect();
            out.extend_from_slice(format!("{} * {memo}  ; {tags}\n", e.effective_date).as_bytes());
            for p in &e.postings {
                out.extend_from_slice(
                    format!(
                        "    {}  {} {}\n",
                        p.account.ledger_name(),
                        decimal(p.amount_minor, p.account.currency),
                        p.account.currency.upper_code()
                    )
                    .as_bytes(),
                );
            }
            out.push(b'\n');
        }
    }
}

/// Our references (and, when identified, the patient's name and card) as metadata pairs.
fn metadata(e: &ExportEntry, identified: bool) -> Vec<(&'static str, String)> {
    let r = &e.references;
    let mut out: Vec<(&'static str, String)> = [
        ("patient", e.patient.clone()),
        ("invoice", r.invoice.clone()),
        ("payment", r.payment.clone()),
        ("refund", r.refund.clone()),
        ("adjustment", r.adjustment.clone()),
        ("reverses_entry", r.reverses_entry.clone()),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k, v)))
    .collect();
    if identified {
        if let Some(name) = &e.patient_name {
            out.push(("patient_name", name.clone()));
        }
        if let Some(card) = &e.card {
            out.push(("card", card.clone()));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn account(kind: &str, name: &str, patient: Option<&str>) -> ExportAccount {
        ExportAccount {
            id: "acct_x".into(),
            code: "1200".into(),
            name: name.into(),
            kind: kind.into(),
            currency: Currency::Usd,
            patient: patient.map(str::to_owned),
        }
    }

    #[test]
    fn ledger_names_are_valid_account_names() {
        assert_eq!(
            account("asset", "Patient receivables", Some("ps_1a2b")).ledger_name(),
            "Assets:PatientReceivables:USD:Pps1a2b"
        );
        assert_eq!(
            account("contra_revenue", "Insurance adjustments", None).ledger_name(),
            "Income:InsuranceAdjustments:USD"
        );
    }

    #[test]
    fn decimals_follow_the_currency_exponent() {
        assert_eq!(decimal(1234, Currency::Usd), "12.34");
        assert_eq!(decimal(-5, Currency::Jpy), "-5");
        assert_eq!(decimal(1250, Currency::Kwd), "1.250");
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let mut out = Vec::new();
        csv_row(&["a", "b,c", "say \"hi\"", "line\nbreak"], &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a,\"b,c\",\"say \"\"hi\"\"\",\"line\nbreak\"\r\n"
        );
    }
}
