//! Property test: random sequences of billing operations (invoices, adjustments, payments,
//! refunds, voids) driven over HTTP on both backends, against a simple model of what every
//! amount must be, with every ledger invariant re-checked after each step.
//!
//! One server (and database) per backend serves the whole property run; each case creates its
//! own fresh patients, so cases never see each other's invoices or balances. The number of
//! cases is 12 unless `PROPTEST_CASES` says otherwise. Once every case has passed, the ledger
//! they left behind is exported and checked with the accounting tools (`export_check`).
//!
//! `a_generated_ledger_of_thousands_of_entries_exports_cleanly_*` uses the same generator from a
//! fixed seed to build one ledger of at least 2,000 journal entries, and checks its exports.
//!
//! Dual control is part of the model: a refund or write-off above the default threshold (500.00
//! in its currency) must come back `pending_approval`, and is then approved by a second billing
//! manager (the case's `approver`) before the model counts it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
#[path = "common/export_check.rs"]
mod export_check;

use carebill::db::Backend;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::ValueTree;
use proptest::test_runner::{
    Config as ProptestConfig, RngAlgorithm, TestCaseError, TestRng, TestRunner,
};

/// Patients per case: operations pick one of them, so a patient collects several bills.
const PATIENTS: usize = 2;
/// Operations per case.
const OPS: std::ops::RangeInclusive<usize> = 5..=25;
const CURRENCIES: [&str; 4] = ["usd", "eur", "jpy", "kwd"];
const DECLINED: &str = "pm_card_visa_chargeDeclined";

// ---- the operations ----

/// An amount relative to what is due (or refundable) when the operation runs.
#[derive(Debug, Clone, Copy)]
enum Amount {
    /// This percentage of it, at least 1 minor unit.
    Part(u8),
    /// Exactly it.
    Exact,
    /// It plus this much.
    Over(i64),
}

#[derive(Debug, Clone, Copy)]
enum RefundAmount {
    Part(u8),
    /// Everything still refundable, by omitting `amount`.
    Full,
    /// Everything still refundable, named explicitly.
    Exact,
    Over(i64),
}

#[derive(Debug, Clone)]
enum Op {
    /// A draft invoice of these `(quantity, unit_amount)` lines, finalized unless `finalize` is false.
    Invoice {
        patient: Index,
        currency: &'static str,
        lines: Vec<(i64, i64)>,
        finalize: bool,
    },
    Adjust {
        invoice: Index,
        prefer_open: bool,
        kind: &'static str,
        amount: Amount,
    },
    Pay {
        invoice: Index,
        prefer_open: bool,
        amount: Amount,
        declined: bool,
    },
    /// A payment with only `patient`: all of it goes to the patient's credit balance.
    PayOnAccount {
        patient: Index,
        currency: &'static str,
        amount: i64,
        declined: bool,
    },
    Refund {
        payment: Index,
        prefer_refundable: bool,
        amount: RefundAmount,
    },
    Void {
        invoice: Index,
    },
}

fn amount() -> impl Strategy<Value = Amount> {
    prop_oneof![
        5 => (1u8..=99).prop_map(Amount::Part),
        2 => Just(Amount::Exact),
        2 => (1i64..=5_000).prop_map(Amount::Over),
    ]
}

fn refund_amount() -> impl Strategy<Value = RefundAmount> {
    prop_oneof![
        3 => (1u8..=99).prop_map(RefundAmount::Part),
        2 => Just(RefundAmount::Full),
        1 => Just(RefundAmount::Exact),
        2 => (1i64..=5_000).prop_map(RefundAmount::Over),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let currency = || prop::sample::select(CURRENCIES.to_vec());
    let unit = prop_oneof![1i64..=100, 100i64..=50_000];
    let line = (1i64..=3, unit);
    prop_oneof![
        5 => (any::<Index>(), currency(), prop::collection::vec(line, 1..=3), prop::bool::weighted(0.8))
            .prop_map(|(patient, currency, lines, finalize)| Op::Invoice { patient, currency, lines, finalize }),
        3 => (any::<Index>(), prop::bool::weighted(0.85),
              prop::sample::select(vec!["insurance_adjustment", "discount", "write_off"]), amount())
            .prop_map(|(invoice, prefer_open, kind, amount)| Op::Adjust { invoice, prefer_open, kind, amount }),
        6 => (any::<Index>(), prop::bool::weighted(0.85), amount(), prop::bool::weighted(0.1))
            .prop_map(|(invoice, prefer_open, amount, declined)| Op::Pay { invoice, prefer_open, amount, declined }),
        1 => (any::<Index>(), currency(), 1i64..=20_000, prop::bool::weighted(0.1))
            .prop_map(|(patient, currency, amount, declined)| Op::PayOnAccount { patient, currency, amount, declined }),
        5 => (any::<Index>(), prop::bool::weighted(0.85), refund_amount())
            .prop_map(|(payment, prefer_refundable, amount)| Op::Refund { payment, prefer_refundable, amount }),
        1 => any::<Index>().prop_map(|invoice| Op::Void { invoice }),
    ]
}

// ---- the model ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Draft,
    Open,
    PartiallyPaid,
    Paid,
    Void,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Draft => "draft",
            Status::Open => "open",
            Status::PartiallyPaid => "partially_paid",
            Status::Paid => "paid",
            Status::Void => "void",
        }
    }
}

#[derive(Debug, Clone)]
struct InvoiceModel {
    id: String,
    patient: usize,
    currency: &'static str,
    total: i64,
    adjusted: i64,
    paid: i64,
    refunded: i64,
    status: Status,
}

impl InvoiceModel {
    fn due(&self) -> i64 {
        if self.status == Status::Void {
            0
        } else {
            self.total - self.adjusted - self.paid + self.refunded
        }
    }

    /// Open for payments and adjustments.
    fn is_open(&self) -> bool {
        matches!(self.status, Status::Open | Status::PartiallyPaid) && self.due() > 0
    }

    /// The status the amounts imply, as the service recomputes it after a change.
    fn restatus(&mut self) {
        self.status = if self.due() == 0 {
            Status::Paid
        } else if self.paid - self.refunded > 0 {
            Status::PartiallyPaid
        } else {
            Status::Open
        };
    }
}

#[derive(Debug, Clone)]
struct PaymentModel {
    id: String,
    patient: usize,
    invoice: Option<usize>,
    currency: &'static str,
    amount: i64,
    succeeded: bool,
    applied: i64,
    credited: i64,
    refunded_applied: i64,
    refunded_credited: i64,
}

impl PaymentModel {
    fn refunded(&self) -> i64 {
        self.refunded_applied + self.refunded_credited
    }

    fn refundable(&self) -> i64 {
        if self.succeeded {
            self.amount - self.refunded()
        } else {
            0
        }
    }
}

#[derive(Debug, Default)]
struct Model {
    patients: Vec<String>,
    invoices: Vec<InvoiceModel>,
    payments: Vec<PaymentModel>,
    /// A second billing manager, who approves what dual control holds.
    approver: Option<ApiClient>,
}

impl Model {
    /// An invoice index: among the open ones when `prefer_open` and there are any.
    fn pick_invoice(&self, index: &Index, prefer_open: bool) -> Option<usize> {
        let open: Vec<usize> = (0..self.invoices.len())
            .filter(|&i| self.invoices[i].is_open())
            .collect();
        if prefer_open && !open.is_empty() {
            Some(open[index.index(open.len())])
        } else if self.invoices.is_empty() {
            None
        } else {
            Some(index.index(self.invoices.len()))
        }
    }

    fn pick_payment(&self, index: &Index, prefer_refundable: bool) -> Option<usize> {
        let refundable: Vec<usize> = (0..self.payments.len())
            .filter(|&i| self.payments[i].refundable() > 0)
            .collect();
        if prefer_refundable && !refundable.is_empty() {
            Some(refundable[index.index(refundable.len())])
        } else if self.payments.is_empty() {
            None
        } else {
            Some(index.index(self.payments.len()))
        }
    }
}

/// Dual control: a refund or write-off above 500.00 in its own currency (the default threshold)
/// waits for a second billing manager.
fn above_dual_control_threshold(currency: &str, amount: i64) -> bool {
    let exponent = match currency {
        "jpy" => 0,
        "kwd" => 3,
        _ => 2,
    };
    amount > 500 * 10_i64.pow(exponent)
}

/// A billing manager with a key of their own: a different person from `app.admin`.
async fn second_manager(app: &TestApp) -> ApiClient {
    let key = carebill::auth::create_api_key(&app.db, carebill::auth::Role::BillingManager)
        .await
        .unwrap();
    app.admin.with_key(&key.secret)
}

/// Checks that `held` waits for approval, then approves it at `path` as the second manager;
/// the approved object.
async fn approve_held(
    approver: Option<ApiClient>,
    held: &Value,
    path: &str,
) -> Result<Value, TestCaseError> {
    prop_assert_eq!(
        held["status"].as_str(),
        Some("pending_approval"),
        "dual control: {}",
        held
    );
    let approver = approver.ok_or_else(|| fail("the model has no approver"))?;
    let reply = approver
        .post(path, &json!({}), Some(&new_key()))
        .await
        .map_err(fail)?;
    Ok(ok(&reply)?.clone())
}

fn resolve(amount: Amount, base: i64) -> i64 {
    match amount {
        Amount::Part(pct) => (base * i64::from(pct) / 100).max(1),
        Amount::Exact => base.max(1),
        Amount::Over(extra) => base + extra,
    }
}

// ---- talking to the service ----

fn fail(what: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(what.to_string())
}

async fn get(app: &TestApp, path: &str) -> Result<Value, TestCaseError> {
    let reply = app.admin.get(path).await.map_err(fail)?;
    prop_assert_eq!(reply.status, 200, "GET {} answered {}", path, reply.body);
    Ok(reply.body)
}

async fn post(
    app: &TestApp,
    path: &str,
    body: &Value,
) -> Result<carebill::client::Reply, TestCaseError> {
    app.admin
        .post(path, body, Some(&new_key()))
        .await
        .map_err(fail)
}

/// Asserts a refusal: 400 with this error code.
fn refused(reply: &carebill::client::Reply, code: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        reply.status,
        400,
        "expected 400 {}, got {}",
        code,
        reply.body
    );
    prop_assert_eq!(
        reply.body["error"]["code"].as_str(),
        Some(code),
        "{}",
        reply.body
    );
    Ok(())
}

fn ok(reply: &carebill::client::Reply) -> Result<&Value, TestCaseError> {
    prop_assert_eq!(reply.status, 200, "expected 200, got {}", reply.body);
    Ok(&reply.body)
}

fn int(v: &Value, field: &str) -> Result<i64, TestCaseError> {
    v[field]
        .as_i64()
        .ok_or_else(|| fail(format!("no integer `{field}` in {v}")))
}

fn text(v: &Value, field: &str) -> Result<String, TestCaseError> {
    v[field]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| fail(format!("no string `{field}` in {v}")))
}

/// Runs one operation against the service and the model, checking the service's answer.
async fn apply(app: &TestApp, m: &mut Model, op: &Op) -> Result<(), TestCaseError> {
    match op {
        Op::Invoice {
            patient,
            currency,
            lines,
            finalize,
        } => {
            let patient = patient.index(m.patients.len());
            let body = json!({
                "patient": m.patients[patient], "currency": currency, "due_date": "2030-01-31",
                "lines": lines.iter().map(|(quantity, unit)| json!({
                    "service_date": "2026-01-15", "code": "99213", "description": "Office visit",
                    "quantity": quantity, "unit_amount": unit})).collect::<Vec<_>>(),
            });
            let reply = post(app, "/v1/invoices", &body).await?;
            let draft = ok(&reply)?;
            let total: i64 = lines.iter().map(|(q, u)| q * u).sum();
            prop_assert_eq!(int(draft, "total")?, total);
            prop_assert_eq!(draft["status"].as_str(), Some("draft"));
            let id = text(draft, "id")?;
            let mut status = Status::Draft;
            if *finalize {
                let reply = post(app, &format!("/v1/invoices/{id}/finalize"), &json!({})).await?;
                prop_assert_eq!(ok(&reply)?["status"].as_str(), Some("open"));
                status = Status::Open;
            }
            m.invoices.push(InvoiceModel {
                id,
                patient,
                currency,
                total,
                adjusted: 0,
                paid: 0,
                refunded: 0,
                status,
            });
        }
        Op::Adjust {
            invoice,
            prefer_open,
            kind,
            amount,
        } => {
            let Some(i) = m.pick_invoice(invoice, *prefer_open) else {
                return Ok(());
            };
            let inv = &mut m.invoices[i];
            let due = inv.due();
            let amount = resolve(*amount, due);
            let reply = post(
                app,
                &format!("/v1/invoices/{}/adjustments", inv.id),
                &json!({"kind": kind, "amount": amount, "reason": "Property test"}),
            )
            .await?;
            if !inv.is_open() {
                refused(&reply, "invoice_not_open")?;
            } else if amount > due {
                refused(&reply, "amount_exceeds_amount_due")?;
                prop_assert_eq!(reply.body["error"]["param"].as_str(), Some("amount"));
            } else {
                let mut adj = ok(&reply)?.clone();
                if *kind == "write_off" && above_dual_control_threshold(inv.currency, amount) {
                    let path = format!(
                        "/v1/invoices/{}/adjustments/{}/approve",
                        inv.id,
                        text(&adj, "id")?
                    );
                    adj = approve_held(m.approver.clone(), &adj, &path).await?;
                }
                let adj = &adj;
                prop_assert_eq!(adj["status"].as_str(), Some("posted"), "{}", adj);
                prop_assert_eq!(int(adj, "amount")?, amount);
                prop_assert_eq!(adj["kind"].as_str(), Some(*kind));
                inv.adjusted += amount;
                inv.restatus();
            }
        }
        Op::Pay {
            invoice,
            prefer_open,
            amount,
            declined,
        } => {
            let Some(i) = m.pick_invoice(invoice, *prefer_open) else {
                return Ok(());
            };
            let inv = &mut m.invoices[i];
            let due = inv.due();
            let amount = resolve(*amount, due);
            let pm = if *declined { DECLINED } else { "pm_card_visa" };
            let reply = post(app, "/v1/payments", &json!({"invoice": inv.id, "amount": amount, "currency": inv.currency, "payment_method": pm})).await?;
            let mut payment = PaymentModel {
                id: String::new(),
                patient: inv.patient,
                invoice: Some(i),
                currency: inv.currency,
                amount,
                succeeded: false,
                applied: 0,
                credited: 0,
                refunded_applied: 0,
                refunded_credited: 0,
            };
            if !inv.is_open() {
                refused(&reply, "invoice_not_payable")?;
                return Ok(());
            } else if *declined {
                prop_assert_eq!(reply.status, 402, "{}", reply.body);
                prop_assert_eq!(reply.body["error"]["type"].as_str(), Some("card_error"));
                prop_assert_eq!(reply.body["error"]["code"].as_str(), Some("card_declined"));
                payment.id = text(&reply.body["error"]["payment"], "id")?;
            } else {
                let p = ok(&reply)?;
                payment.id = text(p, "id")?;
                payment.succeeded = true;
                payment.applied = amount.min(due);
                payment.credited = amount - payment.applied;
                prop_assert_eq!(int(p, "amount_applied")?, payment.applied);
                prop_assert_eq!(int(p, "amount_credited")?, payment.credited);
                inv.paid += payment.applied;
                inv.restatus();
            }
            m.payments.push(payment);
        }
        Op::PayOnAccount {
            patient,
            currency,
            amount,
            declined,
        } => {
            let patient = patient.index(m.patients.len());
            let pm = if *declined { DECLINED } else { "pm_card_visa" };
            let reply = post(app, "/v1/payments", &json!({"patient": m.patients[patient], "amount": amount, "currency": currency, "payment_method": pm})).await?;
            let mut payment = PaymentModel {
                id: String::new(),
                patient,
                invoice: None,
                currency,
                amount: *amount,
                succeeded: false,
                applied: 0,
                credited: 0,
                refunded_applied: 0,
                refunded_credited: 0,
            };
            if *declined {
                prop_assert_eq!(reply.status, 402, "{}", reply.body);
                prop_assert_eq!(reply.body["error"]["code"].as_str(), Some("card_declined"));
                payment.id = text(&reply.body["error"]["payment"], "id")?;
            } else {
                let p = ok(&reply)?;
                payment.id = text(p, "id")?;
                payment.succeeded = true;
                payment.credited = *amount;
                prop_assert_eq!(int(p, "amount_credited")?, *amount);
            }
            m.payments.push(payment);
        }
        Op::Refund {
            payment,
            prefer_refundable,
            amount,
        } => {
            let Some(pi) = m.pick_payment(payment, *prefer_refundable) else {
                return Ok(());
            };
            let approver = m.approver.clone();
            let p = &mut m.payments[pi];
            let refundable = p.refundable();
            let requested = match amount {
                RefundAmount::Part(pct) => Some(resolve(Amount::Part(*pct), refundable)),
                RefundAmount::Full => None,
                RefundAmount::Exact => Some(refundable.max(1)),
                RefundAmount::Over(extra) => Some(refundable + extra),
            };
            let mut body = json!({"payment": p.id, "reason": "requested_by_patient"});
            if let Some(a) = requested {
                body["amount"] = json!(a);
            }
            let reply = post(app, "/v1/refunds", &body).await?;
            if !p.succeeded {
                refused(&reply, "payment_not_refundable")?;
            } else if requested.is_none() && refundable == 0 {
                refused(&reply, "charge_already_refunded")?;
            } else if requested.is_some_and(|a| a > refundable) {
                refused(&reply, "amount_exceeds_refundable")?;
                prop_assert_eq!(reply.body["error"]["param"].as_str(), Some("amount"));
            } else {
                let mut re = ok(&reply)?.clone();
                let a = requested.unwrap_or(refundable);
                if above_dual_control_threshold(p.currency, a) {
                    let path = format!("/v1/refunds/{}/approve", text(&re, "id")?);
                    re = approve_held(approver, &re, &path).await?;
                }
                let re = &re;
                let from_credit = a.min(p.credited - p.refunded_credited);
                let from_invoice = a - from_credit;
                prop_assert_eq!(re["status"].as_str(), Some("succeeded"));
                prop_assert_eq!(int(re, "amount")?, a);
                prop_assert_eq!(int(re, "amount_from_credit")?, from_credit);
                prop_assert_eq!(int(re, "amount_from_invoice")?, from_invoice);
                p.refunded_credited += from_credit;
                p.refunded_applied += from_invoice;
                prop_assert!(
                    p.refunded() <= p.amount,
                    "model refunded more than the payment"
                );
                let (id, total_refunded) = (p.id.clone(), p.refunded());
                if from_invoice > 0 {
                    let inv = &mut m.invoices[p
                        .invoice
                        .ok_or_else(|| fail("refund from the invoice of a payment on account"))?];
                    inv.refunded += from_invoice;
                    inv.restatus();
                }
                // The refunds on record for the payment add up to what it says was refunded.
                let list = get(app, &format!("/v1/refunds?payment={id}&limit=100")).await?;
                let mut sum = 0;
                for r in list["data"]
                    .as_array()
                    .ok_or_else(|| fail("refund list without data"))?
                {
                    if r["status"] == "succeeded" {
                        sum += int(r, "amount")?;
                    }
                }
                prop_assert_eq!(sum, total_refunded, "succeeded refunds of {}", id);
            }
        }
        Op::Void { invoice } => {
            let Some(i) = m.pick_invoice(invoice, false) else {
                return Ok(());
            };
            let inv = &mut m.invoices[i];
            let reply = post(app, &format!("/v1/invoices/{}/void", inv.id), &json!({})).await?;
            if inv.status == Status::Void {
                refused(&reply, "invoice_already_void")?;
            } else if inv.paid - inv.refunded > 0 {
                refused(&reply, "invoice_has_payments")?;
            } else {
                let v = ok(&reply)?;
                prop_assert_eq!(v["status"].as_str(), Some("void"));
                prop_assert_eq!(int(v, "amount_due")?, 0);
                inv.status = Status::Void;
            }
        }
    }
    Ok(())
}

/// Everything that must hold after every step: the service agrees with the model on every
/// invoice, payment and statement of the case, and the whole ledger verifies.
async fn check(app: &TestApp, m: &Model) -> Result<(), TestCaseError> {
    for (pi, patient) in m.patients.iter().enumerate() {
        let listed = get(app, &format!("/v1/invoices?patient={patient}&limit=100")).await?;
        let listed = listed["data"]
            .as_array()
            .ok_or_else(|| fail("invoice list without data"))?;
        let mine: Vec<&InvoiceModel> = m.invoices.iter().filter(|i| i.patient == pi).collect();
        prop_assert_eq!(listed.len(), mine.len(), "invoices of {}", patient);
        for inv in &mine {
            let api = listed
                .iter()
                .find(|v| v["id"].as_str() == Some(inv.id.as_str()))
                .ok_or_else(|| fail(format!("invoice {} not listed", inv.id)))?;
            let (total, adjusted, paid, refunded, due) = (
                int(api, "total")?,
                int(api, "amount_adjusted")?,
                int(api, "amount_paid")?,
                int(api, "amount_refunded")?,
                int(api, "amount_due")?,
            );
            prop_assert_eq!(
                (total, adjusted, paid, refunded, due),
                (inv.total, inv.adjusted, inv.paid, inv.refunded, inv.due()),
                "invoice {} (total, adjusted, paid, refunded, due) differs from the model {:?}",
                inv.id,
                inv
            );
            prop_assert_eq!(
                api["status"].as_str(),
                Some(inv.status.as_str()),
                "status of {}",
                inv.id
            );
            if inv.status == Status::Void {
                prop_assert_eq!(due, 0);
            } else {
                prop_assert_eq!(
                    due,
                    total - adjusted - paid + refunded,
                    "amount due formula on {}",
                    inv.id
                );
            }
            prop_assert!(
                due >= 0 && refunded <= paid,
                "invoice {} amounts out of range: {}",
                inv.id,
                api
            );
            let mut lines = 0;
            for l in api["lines"]
                .as_array()
                .ok_or_else(|| fail("invoice without lines"))?
            {
                lines += int(l, "amount")?;
            }
            prop_assert_eq!(lines, total, "lines of {}", inv.id);
        }

        let listed = get(app, &format!("/v1/payments?patient={patient}&limit=100")).await?;
        let listed = listed["data"]
            .as_array()
            .ok_or_else(|| fail("payment list without data"))?;
        let mine: Vec<&PaymentModel> = m.payments.iter().filter(|p| p.patient == pi).collect();
        prop_assert_eq!(listed.len(), mine.len(), "payments of {}", patient);
        for p in &mine {
            let api = listed
                .iter()
                .find(|v| v["id"].as_str() == Some(p.id.as_str()))
                .ok_or_else(|| fail(format!("payment {} not listed", p.id)))?;
            let status = if p.succeeded { "succeeded" } else { "failed" };
            prop_assert_eq!(api["status"].as_str(), Some(status), "status of {}", p.id);
            prop_assert_eq!(
                (int(api, "amount")?, int(api, "amount_applied")?, int(api, "amount_credited")?, int(api, "amount_refunded")?, int(api, "amount_refundable")?),
                (p.amount, p.applied, p.credited, p.refunded(), p.refundable()),
                "payment {} (amount, applied, credited, refunded, refundable) differs from the model {:?}",
                p.id,
                p
            );
            prop_assert!(
                int(api, "amount_refunded")? <= int(api, "amount")?,
                "payment {} over-refunded",
                p.id
            );
            prop_assert!(
                p.refunded() <= p.amount
                    && p.refunded_applied <= p.applied
                    && p.refunded_credited <= p.credited
            );
        }

        for currency in CURRENCIES {
            let st = get(
                app,
                &format!("/v1/patients/{patient}/statement?currency={currency}"),
            )
            .await?;
            let open: Vec<&InvoiceModel> = m
                .invoices
                .iter()
                .filter(|i| {
                    i.patient == pi
                        && i.currency == currency
                        && matches!(i.status, Status::Open | Status::PartiallyPaid)
                })
                .collect();
            let balance_due: i64 = open.iter().map(|i| i.due()).sum();
            let credit: i64 = m
                .payments
                .iter()
                .filter(|p| p.patient == pi && p.currency == currency && p.succeeded)
                .map(|p| p.credited - p.refunded_credited)
                .sum();
            prop_assert_eq!(
                int(&st, "balance_due")?,
                balance_due,
                "statement {} {}: {}",
                patient,
                currency,
                st
            );
            prop_assert_eq!(
                int(&st, "credit_balance")?,
                credit,
                "statement {} {}: {}",
                patient,
                currency,
                st
            );
            let mut listed: Vec<String> = Vec::new();
            for i in st["invoices"]
                .as_array()
                .ok_or_else(|| fail("statement without invoices"))?
            {
                listed.push(text(i, "id")?);
            }
            let expected: Vec<String> = open.iter().map(|i| i.id.clone()).collect();
            prop_assert_eq!(
                listed,
                expected,
                "open invoices on the statement of {} in {}",
                patient,
                currency
            );
        }
    }

    let violations = carebill::ledger::invariants::verify(&app.db)
        .await
        .map_err(fail)?;
    prop_assert!(
        violations.is_empty(),
        "ledger invariants violated: {:#?}",
        violations
    );
    Ok(())
}

async fn run_case(app: &TestApp, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut m = Model {
        approver: Some(second_manager(app).await),
        ..Model::default()
    };
    for _ in 0..PATIENTS {
        m.patients.push(app.patient().await);
    }
    for (step, op) in ops.iter().enumerate() {
        let annotate = |e: TestCaseError| fail(format!("step {step} {op:?}: {e}"));
        apply(app, &mut m, op).await.map_err(annotate)?;
        check(app, &m).await.map_err(annotate)?;
    }
    Ok(())
}

/// Runs the property on one backend: one runtime and one server for the whole run.
fn property_on(backend: Backend) {
    let started = std::time::Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let app = rt.block_on(TestApp::spawn(backend));
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    // Each shrink step replays a whole case over HTTP: bound the time spent minimizing.
    let config = ProptestConfig {
        cases,
        max_shrink_iters: 1024,
        max_shrink_time: 60_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&prop::collection::vec(op(), OPS), |ops| {
        rt.block_on(run_case(&app, &ops))
    });
    if let Err(e) = result {
        rt.block_on(app.finish());
        panic!("property failed on {backend:?}: {e}");
    }
    // The ledger every case left behind exports cleanly, and the accounting tools agree.
    let summary = rt.block_on(export_check::exports_agree_with_the_accounting_tools(&app));
    rt.block_on(app.finish());
    eprintln!(
        "property on {backend:?}: {cases} cases in {:.1?}, export checked: {summary:?}",
        started.elapsed()
    );
}

/// Journal entries the generated ledger of [`a_generated_ledger_exports_cleanly`] reaches.
const LEDGER_ENTRIES: i64 = 2_000;
/// Its patients: enough that none has more than the 100 invoices a list page holds.
const LEDGER_PATIENTS: usize = 40;
/// Operations generated at a time, between counts of the journal entries.
const LEDGER_BATCH: usize = 250;

/// A ledger of thousands of entries, made by the property's generator from a fixed seed (the
/// same ledger every run), in every currency it uses, with adjustments, refunds and reversals:
/// every export of it balances, and Beancount and hledger accept it and agree with our balances
/// account by account. The model keeps the operations meaningful; it is compared with the
/// service once, at the end, rather than after every step.
async fn a_generated_ledger_exports_cleanly(backend: Backend) {
    let started = std::time::Instant::now();
    let app = TestApp::spawn(backend).await;
    let config = ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let batch = prop::collection::vec(op(), LEDGER_BATCH);
    let mut m = Model {
        approver: Some(second_manager(&app).await),
        ..Model::default()
    };
    for _ in 0..LEDGER_PATIENTS {
        m.patients.push(app.patient().await);
    }
    let mut step = 0;
    while app.count("journal_entries").await < LEDGER_ENTRIES {
        let ops = batch.new_tree(&mut runner).unwrap().current();
        for op in &ops {
            if let Err(e) = apply(&app, &mut m, op).await {
                panic!("{backend:?}, step {step} {op:?}: {e}");
            }
            step += 1;
        }
    }
    if let Err(e) = check(&app, &m).await {
        panic!("{backend:?}, after {step} steps: {e}");
    }
    app.assert_ledger_sound().await;
    let built = started.elapsed();

    let kinds: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT kind FROM journal_entries ORDER BY kind")
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    for kind in [
        "invoice_adjustment",
        "invoice_finalized",
        "payment_captured",
        "refund_succeeded",
        "reversal",
    ] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "no {kind} entry: {kinds:?}"
        );
    }

    let summary = export_check::exports_agree_with_the_accounting_tools(&app).await;
    assert!(
        summary.entries >= usize::try_from(LEDGER_ENTRIES).unwrap(),
        "{summary:?}"
    );
    let currencies: Vec<&str> = summary.currencies.iter().map(String::as_str).collect();
    let mut expected = CURRENCIES.to_vec();
    expected.sort_unstable();
    assert_eq!(currencies, expected, "{summary:?}");
    for (kind, n) in &summary.kinds {
        assert!(kinds.contains(kind) && *n > 0, "{summary:?}");
    }
    eprintln!(
        "generated ledger on {backend:?}: {step} operations, built in {built:.1?}, \
         exported and checked in {:.1?}: {} entries, {} postings, {} accounts, {:?}, tools {:?}",
        started.elapsed() - built,
        summary.entries,
        summary.postings,
        summary.accounts,
        summary.kinds,
        summary.tools,
    );
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_ledger_of_thousands_of_entries_exports_cleanly_sqlite() {
    // Goal: Beancount and hledger accept the export of a generated ledger of thousands of entries on SQLite, and agree with our balances.
    a_generated_ledger_exports_cleanly(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_ledger_of_thousands_of_entries_exports_cleanly_postgres() {
    // Goal: Beancount and hledger accept the export of a generated ledger of thousands of entries on PostgreSQL, and agree with our balances.
    a_generated_ledger_exports_cleanly(Backend::Postgres).await;
}

#[test]
fn random_operations_keep_amounts_and_ledger_right_sqlite() {
    // Goal: any sequence of billing operations on SQLite keeps every amount equal to the model and every ledger invariant true.
    property_on(Backend::Sqlite);
}

#[test]
fn random_operations_keep_amounts_and_ledger_right_postgres() {
    // Goal: any sequence of billing operations on PostgreSQL keeps every amount equal to the model and every ledger invariant true.
    property_on(Backend::Postgres);
}
