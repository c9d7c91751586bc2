//! The authorization matrix: every route the server serves × every kind of caller, against the
//! answer one table says it must get.
//!
//! - The routes are not a hand-kept list: [`inventory`] reads every `src/**/*.rs` file and
//!   extracts each `.route("PATH", get(a).post(b)…)` registration, so a new route is in the
//!   inventory the moment it is written. Registrations the reader does not understand (`nest`,
//!   `route_service`, merging a router that is not some module's `router()`, a path that is not
//!   a literal, a method router other than `get`/`post`/…) fail the test rather than slip by.
//! - Every path and method of the OpenAPI document must be in the inventory, every
//!   `#[utoipa::path]` annotation in the sources must be in the document, and every route in
//!   the inventory must be in the document unless [`UNDOCUMENTED`] lists it with a reason.
//! - [`TABLE`] is the specification: one row per route (a route whose body chooses the action,
//!   such as a write-off or an identified export, has one row per variant), with the expected
//!   class of answer for each caller. It is written out by hand from what the issue and
//!   `auth::allowed` say each role may do; it is deliberately *not* computed from `allowed()`.
//!   A route without a row fails the test, and so does a row whose route no longer exists.
//! - [`authorization_matrix`] then makes every request as every caller, with real ids of
//!   records made first, on both backends, and reports every cell that disagrees.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use carebill::auth::{create_api_key, Role};

const STRONG: &str = "correct horse battery staple 1987";
const OTHER_STRONG: &str = "violet tractor umbrella quartz 2024";
const PATIENT_EMAIL: &str = "matrix-patient@example.org";

// ---- the specification ----

/// What a caller gets back, as far as authorization goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Past authentication and authorization: a 2xx, or a 4xx about the request itself (400
    /// from a minimal body, 402, 409, 422) — never 401, 403, 404, 405, 429 or a 5xx.
    Allow,
    /// 403 `permission_denied`: the caller's role (or key's scopes) does not permit the action.
    Deny403,
    /// 404 `resource_missing` for a record that exists: the record-level rule (someone else's
    /// record answers exactly like one that does not exist).
    Hidden404,
    /// 401: no credential, or not one this route accepts.
    Unauthenticated401,
    /// Only in the `patient_other` column: the route names no patient's record, so there is no
    /// "someone else's" request to make.
    NotApplicable,
}

const A: Class = Class::Allow;
const D: Class = Class::Deny403;
const H: Class = Class::Hidden404;
const U: Class = Class::Unauthenticated401;
const NA: Class = Class::NotApplicable;

/// Who calls, in the table's column order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    /// No credential at all.
    Anonymous,
    /// A signed-in patient (bearer session), addressing their own records.
    Patient,
    /// The same patient, addressing another patient's records.
    PatientOther,
    FrontDesk,
    BillingClerk,
    BillingManager,
    Accountant,
    Auditor,
    Admin,
    /// An accounting system's API key with the single scope `ledger:read`.
    LedgerKey,
}

const CALLERS: [Caller; 10] = [
    Caller::Anonymous,
    Caller::Patient,
    Caller::PatientOther,
    Caller::FrontDesk,
    Caller::BillingClerk,
    Caller::BillingManager,
    Caller::Accountant,
    Caller::Auditor,
    Caller::Admin,
    Caller::LedgerKey,
];

impl Caller {
    fn name(self) -> &'static str {
        match self {
            Caller::Anonymous => "anonymous",
            Caller::Patient => "patient",
            Caller::PatientOther => "patient_other",
            Caller::FrontDesk => "front_desk",
            Caller::BillingClerk => "billing_clerk",
            Caller::BillingManager => "billing_manager",
            Caller::Accountant => "accountant",
            Caller::Auditor => "auditor",
            Caller::Admin => "admin",
            Caller::LedgerKey => "ledger_key",
        }
    }

    /// Whose records the request names: the other patient's for `PatientOther`, otherwise
    /// those of the patient who is signed in (which staff address too).
    fn owner(self) -> Owner {
        if self == Caller::PatientOther {
            Owner::Other
        } else {
            Owner::Own
        }
    }
}

/// One row: a route (and variant) and the expected class for each caller of [`CALLERS`].
struct Rule {
    method: &'static str,
    path: &'static str,
    /// Empty, or what the request body chooses when it changes the action (one row each).
    variant: &'static str,
    expect: [Class; 10],
}

const fn rule(
    method: &'static str,
    path: &'static str,
    variant: &'static str,
    expect: [Class; 10],
) -> Rule {
    Rule {
        method,
        path,
        variant,
        expect,
    }
}

impl Rule {
    fn route(&self) -> String {
        if self.variant.is_empty() {
            format!("{} {}", self.method, self.path)
        } else {
            format!("{} {} [{}]", self.method, self.path, self.variant)
        }
    }
}

/// The authorization matrix. Least privilege, as the issue states it: `admin` manages users and
/// keys and reads no health or payment data; `auditor` reads the ledger and the audit trail and
/// moves no money; `accountant` reads and exports the ledger; `front_desk` works with patients'
/// contact details, bills (without procedure codes) and payments; `billing_clerk` also writes
/// bills and reads refunds; only `billing_manager` refunds, writes off and exports identified
/// data; a patient sees and pays only their own bills, and another patient's records are 404.
#[rustfmt::skip]
const TABLE: &[Rule] = &[
    //    method    path                                                   variant          anon pat  other desk clerk mgr  acct aud  admin ledger
    // Public: health, the API description, sign-in and guest pay take no credential (and ignore one).
    rule("GET",    "/healthz",                                             "",              [A,  A,   NA,   A,   A,    A,   A,   A,   A,    A]),
    rule("GET",    "/readyz",                                              "",              [A,  A,   NA,   A,   A,    A,   A,   A,   A,    A]),
    rule("GET",    "/v1/openapi.json",                                     "",              [A,  A,   NA,   A,   A,    A,   A,   A,   A,    A]),
    rule("POST",   "/v1/sessions",                                         "",              [A,  A,   NA,   A,   A,    A,   A,   A,   A,    A]),
    rule("POST",   "/v1/sessions/guest",                                   "",              [A,  A,   NA,   A,   A,    A,   A,   A,   A,    A]),
    // Stripe's webhooks: no credential; the Stripe-Signature is the credential, so every caller
    // here (none of whom signs) gets the same 400, never a 401/403.
    rule("POST",   "/v1/webhooks/stripe",                                  "",              [A,  A,   NA,   A,   A,    A,   A,   A,   A,    A]),
    // Sign-in steps take a session token in its sign-in stage: API keys are no session (401); a
    // patient's active session gets a 409 (`session_stage_invalid`) or may enrol TOTP.
    rule("POST",   "/v1/sessions/mfa",                                     "",              [U,  A,   NA,   U,   U,    U,   U,   U,   U,    U]),
    rule("POST",   "/v1/sessions/mfa/enrollment",                          "",              [U,  A,   NA,   U,   U,    U,   U,   U,   U,    U]),
    rule("POST",   "/v1/sessions/mfa/enrollment/confirm",                  "",              [U,  A,   NA,   U,   U,    U,   U,   U,   U,    U]),
    // Any authenticated caller (keys get a 400: no session, no user).
    rule("DELETE", "/v1/sessions/current",                                 "",              [U,  A,   NA,   A,   A,    A,   A,   A,   A,    A]),
    rule("POST",   "/v1/sessions/revoke_all",                              "",              [U,  A,   NA,   A,   A,    A,   A,   A,   A,    A]),
    rule("POST",   "/v1/users/me/password",                                "",              [U,  A,   NA,   A,   A,    A,   A,   A,   A,    A]),
    // Users: staff accounts are the admin's; a patient's account is made by staff who see patients.
    rule("POST",   "/v1/users",                                            "staff",         [U,  D,   NA,   D,   D,    D,   D,   D,   A,    D]),
    rule("POST",   "/v1/users",                                            "patient",       [U,  D,   D,    A,   A,    A,   D,   D,   D,    D]),
    rule("GET",    "/v1/users",                                            "",              [U,  D,   NA,   D,   D,    D,   D,   D,   A,    D]),
    rule("POST",   "/v1/users/{id}",                                       "",              [U,  D,   NA,   D,   D,    D,   D,   D,   A,    D]),
    rule("POST",   "/v1/users/{id}/password",                              "",              [U,  D,   NA,   D,   D,    D,   D,   D,   A,    D]),
    rule("POST",   "/v1/users/{id}/require_password_reset",                "",              [U,  D,   NA,   D,   D,    D,   D,   D,   A,    D]),
    rule("POST",   "/v1/patients/{id}/access_code",                        "",              [U,  D,   D,    A,   A,    A,   D,   D,   D,    D]),
    rule("GET",    "/v1/security_events",                                  "",              [U,  D,   NA,   D,   D,    D,   D,   A,   A,    D]),
    rule("GET",    "/v1/audit_events",                                     "",              [U,  D,   NA,   D,   D,    D,   D,   A,   A,    D]),
    rule("POST",   "/v1/facilities",                                       "",              [U,  D,   NA,   D,   D,    D,   D,   D,   A,    D]),
    rule("GET",    "/v1/facilities",                                       "",              [U,  D,   NA,   D,   D,    D,   D,   D,   A,    D]),
    // API keys: the admin's.
    rule("POST",   "/v1/api_keys",                                         "",              [U,  D,   NA,   D,   D,    D,   D,   D,   A,    D]),
    rule("GET",    "/v1/api_keys",                                         "",              [U,  D,   NA,   D,   D,    D,   D,   D,   A,    D]),
    rule("GET",    "/v1/api_keys/{id}",                                    "",              [U,  D,   NA,   D,   D,    D,   D,   D,   A,    D]),
    rule("DELETE", "/v1/api_keys/{id}",                                    "",              [U,  D,   NA,   D,   D,    D,   D,   D,   A,    D]),
    rule("POST",   "/v1/api_keys/{id}/rotate",                             "",              [U,  D,   NA,   D,   D,    D,   D,   D,   A,    D]),
    // Outbound webhooks: the admin's (and keys with the `webhooks:manage` scope, not in this table).
    rule("POST",   "/v1/webhook_endpoints",                                "",              [U,  D,   NA,   D,   D,    D,   D,   D,   A,    D]),
    rule("GET",    "/v1/webhook_endpoints",                                "",              [U,  D,   NA,   D,   D,    D,   D,   D,   A,    D]),
    rule("GET",    "/v1/webhook_endpoints/{id}",                           "",              [U,  D,   NA,   D,   D,    D,   D,   D,   A,    D]),
    rule("POST",   "/v1/webhook_endpoints/{id}",                           "",              [U,  D,   NA,   D,   D,    D,   D,   D,   A,    D]),
    rule("DELETE", "/v1/webhook_endpoints/{id}",                           "",              [U,  D,   NA,   D,   D,    D,   D,   D,   A,    D]),
    rule("POST",   "/v1/webhook_endpoints/{id}/rotate_secret",             "",              [U,  D,   NA,   D,   D,    D,   D,   D,   A,    D]),
    rule("GET",    "/v1/webhook_events",                                   "",              [U,  D,   NA,   D,   D,    D,   D,   D,   A,    D]),
    rule("GET",    "/v1/webhook_events/{id}",                              "",              [U,  D,   NA,   D,   D,    D,   D,   D,   A,    D]),
    rule("POST",   "/v1/webhook_events/{id}/replay",                       "",              [U,  D,   NA,   D,   D,    D,   D,   D,   A,    D]),
    // Patients.
    rule("POST",   "/v1/patients",                                         "",              [U,  D,   NA,   A,   A,    A,   D,   D,   D,    D]),
    rule("GET",    "/v1/patients",                                         "",              [U,  A,   NA,   A,   A,    A,   D,   D,   D,    D]),
    rule("GET",    "/v1/patients/{id}",                                    "",              [U,  A,   H,    A,   A,    A,   D,   D,   D,    D]),
    rule("POST",   "/v1/patients/{id}",                                    "",              [U,  D,   D,    A,   A,    A,   D,   D,   D,    D]),
    rule("GET",    "/v1/patients/{id}/statement",                          "",              [U,  A,   H,    A,   A,    A,   D,   D,   D,    D]),
    // Search by blind index: a patient finds only themselves (the list is filtered).
    rule("POST",   "/v1/patients/search",                                  "",              [U,  A,   NA,   A,   A,    A,   D,   D,   D,    D]),
    // Erasure (crypto-shredding) is irreversible: billing managers only.
    rule("DELETE", "/v1/patients/{id}/personal-data",                      "",              [U,  D,   NA,   D,   D,    A,   D,   D,   D,    D]),
    // Invoices.
    rule("POST",   "/v1/invoices",                                         "",              [U,  D,   D,    D,   A,    A,   D,   D,   D,    D]),
    rule("GET",    "/v1/invoices",                                         "",              [U,  A,   NA,   A,   A,    A,   D,   D,   D,    D]),
    rule("GET",    "/v1/invoices/{id}",                                    "",              [U,  A,   H,    A,   A,    A,   D,   D,   D,    D]),
    rule("POST",   "/v1/invoices/{id}/finalize",                           "",              [U,  D,   D,    D,   A,    A,   D,   D,   D,    D]),
    rule("POST",   "/v1/invoices/{id}/void",                               "",              [U,  D,   D,    D,   A,    A,   D,   D,   D,    D]),
    rule("POST",   "/v1/invoices/{id}/adjustments",                        "discount",      [U,  D,   D,    D,   A,    A,   D,   D,   D,    D]),
    rule("POST",   "/v1/invoices/{id}/adjustments",                        "write_off",     [U,  D,   D,    D,   D,    A,   D,   D,   D,    D]),
    rule("GET",    "/v1/invoices/{id}/adjustments",                        "",              [U,  A,   H,    A,   A,    A,   D,   D,   D,    D]),
    rule("POST",   "/v1/invoices/{id}/adjustments/{adjustment}/approve",   "",              [U,  D,   D,    D,   D,    A,   D,   D,   D,    D]),
    rule("POST",   "/v1/invoices/{id}/adjustments/{adjustment}/reject",    "",              [U,  D,   D,    D,   D,    A,   D,   D,   D,    D]),
    // Payments.
    rule("POST",   "/v1/payments",                                         "",              [U,  A,   H,    A,   A,    A,   D,   D,   D,    D]),
    rule("GET",    "/v1/payments",                                         "",              [U,  A,   NA,   A,   A,    A,   D,   D,   D,    D]),
    rule("GET",    "/v1/payments/{id}",                                    "",              [U,  A,   H,    A,   A,    A,   D,   D,   D,    D]),
    // Refunds: read by the billing office, made, approved and rejected only by a billing manager.
    rule("POST",   "/v1/refunds",                                          "",              [U,  D,   D,    D,   D,    A,   D,   D,   D,    D]),
    rule("GET",    "/v1/refunds",                                          "",              [U,  D,   NA,   D,   A,    A,   D,   D,   D,    D]),
    rule("GET",    "/v1/refunds/{id}",                                     "",              [U,  D,   D,    D,   A,    A,   D,   D,   D,    D]),
    rule("POST",   "/v1/refunds/{id}/approve",                             "",              [U,  D,   D,    D,   D,    A,   D,   D,   D,    D]),
    rule("POST",   "/v1/refunds/{id}/reject",                              "",              [U,  D,   D,    D,   D,    A,   D,   D,   D,    D]),
    // The ledger and its reports: billing manager, accountant, auditor and `ledger:read` keys.
    rule("GET",    "/v1/ledger/accounts",                                  "",              [U,  D,   NA,   D,   D,    A,   A,   A,   D,    A]),
    rule("GET",    "/v1/ledger/accounts/{id}",                             "",              [U,  D,   D,    D,   D,    A,   A,   A,   D,    A]),
    rule("GET",    "/v1/ledger/accounts/{id}/statement",                   "",              [U,  D,   D,    D,   D,    A,   A,   A,   D,    A]),
    rule("GET",    "/v1/ledger/entries",                                   "",              [U,  D,   NA,   D,   D,    A,   A,   A,   D,    A]),
    rule("GET",    "/v1/ledger/entries/{id}",                              "",              [U,  D,   D,    D,   D,    A,   A,   A,   D,    A]),
    rule("GET",    "/v1/ledger/trial-balance",                             "",              [U,  D,   NA,   D,   D,    A,   A,   A,   D,    A]),
    rule("GET",    "/v1/reports/ar-aging",                                 "",              [U,  D,   NA,   D,   D,    A,   A,   A,   D,    A]),
    // Exports: pseudonymous for the billing manager and the accountant; identified only for the
    // billing manager. `ledger:read` is not `exports:read`.
    rule("GET",    "/v1/ledger/export",                                    "pseudonymous",  [U,  D,   NA,   D,   D,    A,   A,   D,   D,    D]),
    rule("GET",    "/v1/ledger/export",                                    "identified",    [U,  D,   NA,   D,   D,    A,   D,   D,   D,    D]),
];

// ---- the route inventory, read from the sources ----

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Str(String),
    Punct(char),
}

/// Rust source as identifiers, string literals and punctuation; comments, whitespace, char
/// literals and lifetimes' quotes are dropped. Enough to read router registrations robustly
/// (whatever rustfmt did to the line breaks) without mistaking a comment for code.
fn tokenize(src: &str) -> Vec<Tok> {
    let c: Vec<char> = src.chars().collect();
    let at = |i: usize| c.get(i).copied();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(ch) = at(i) {
        if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && at(i + 1) == Some('/') {
            while at(i).is_some_and(|x| x != '\n') {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == Some('*') {
            let mut depth = 0usize;
            while let Some(x) = at(i) {
                if x == '/' && at(i + 1) == Some('*') {
                    depth += 1;
                    i += 2;
                } else if x == '*' && at(i + 1) == Some('/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if let Some((text, next)) = raw_string(&c, i) {
            out.push(Tok::Str(text));
            i = next;
        } else if ch == '"' || (ch == 'b' && at(i + 1) == Some('"')) {
            i += if ch == 'b' { 2 } else { 1 };
            let start = i;
            while let Some(x) = at(i) {
                if x == '\\' {
                    i += 2;
                } else if x == '"' {
                    break;
                } else {
                    i += 1;
                }
            }
            out.push(Tok::Str(c[start..i.min(c.len())].iter().collect()));
            i += 1;
        } else if ch == '\'' {
            if at(i + 1) == Some('\\') {
                // An escaped char literal: '\n', '\'', '\u{…}'.
                i += 3;
                while at(i).is_some_and(|x| x != '\'') {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == Some('\'') {
                i += 3; // a char literal
            } else {
                i += 1; // a lifetime's quote
            }
        } else if ch.is_alphanumeric() || ch == '_' {
            let start = i;
            while at(i).is_some_and(|x| x.is_alphanumeric() || x == '_') {
                i += 1;
            }
            out.push(Tok::Ident(c[start..i].iter().collect()));
        } else {
            out.push(Tok::Punct(ch));
            i += 1;
        }
    }
    out
}

/// A raw string literal (`r"…"`, `r#"…"#`, `br"…"`) starting at `i`: its text and where it ends.
fn raw_string(c: &[char], i: usize) -> Option<(String, usize)> {
    let mut j = match (c.get(i), c.get(i + 1)) {
        (Some('r'), _) => i + 1,
        (Some('b'), Some('r')) => i + 2,
        _ => return None,
    };
    if i > 0
        && c.get(i - 1)
            .is_some_and(|x| x.is_alphanumeric() || *x == '_')
    {
        return None;
    }
    let mut hashes = 0;
    while c.get(j) == Some(&'#') {
        hashes += 1;
        j += 1;
    }
    if c.get(j) != Some(&'"') {
        return None;
    }
    let start = j + 1;
    let mut k = start;
    while k < c.len() {
        if c[k] == '"' && (1..=hashes).all(|h| c.get(k + h) == Some(&'#')) {
            return Some((c[start..k].iter().collect(), k + 1 + hashes));
        }
        k += 1;
    }
    Some((c[start..].iter().collect(), c.len()))
}

/// Index of the `)` that closes the `(` at `open`.
fn closing(toks: &[Tok], open: usize) -> Option<usize> {
    let mut depth = 0i64;
    for (k, t) in toks.iter().enumerate().skip(open) {
        match t {
            Tok::Punct('(' | '[' | '{') => depth += 1,
            Tok::Punct(')' | ']' | '}') => {
                depth -= 1;
                if depth == 0 {
                    return Some(k);
                }
            }
            _ => {}
        }
    }
    None
}

/// The functions called at the top level of the expression `toks[from..to]`: for
/// `post(a).get(b::c(d))`, `post` and `get`.
fn top_level_calls(toks: &[Tok], from: usize, to: usize) -> Vec<String> {
    let mut calls = Vec::new();
    let mut depth = 0i64;
    let mut k = from;
    while k < to {
        match &toks[k] {
            Tok::Punct('(' | '[' | '{') => depth += 1,
            Tok::Punct(')' | ']' | '}') => depth -= 1,
            Tok::Ident(name) if depth == 0 && toks.get(k + 1) == Some(&Tok::Punct('(')) => {
                calls.push(name.clone());
            }
            _ => {}
        }
        k += 1;
    }
    calls
}

/// A route the server serves: method, path template, and the file that registers it.
#[derive(Debug, Clone)]
struct Route {
    method: String,
    path: String,
    file: String,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// The sources of the `carebill` crate, as (path relative to the crate, tokens).
fn sources() -> Vec<(String, Vec<Tok>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    assert!(!files.is_empty(), "no sources under {}", root.display());
    files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            let name = f.strip_prefix(root).unwrap_or(f).display().to_string();
            (name, tokenize(&text))
        })
        .collect()
}

/// Every route registered anywhere in `src/`, or what could not be read.
fn inventory() -> (Vec<Route>, Vec<String>) {
    let mut routes = Vec::new();
    let mut problems = Vec::new();
    for (file, toks) in sources() {
        for i in 0..toks.len() {
            let (Tok::Punct('.'), Some(Tok::Ident(name)), Some(Tok::Punct('('))) =
                (&toks[i], toks.get(i + 1), toks.get(i + 2))
            else {
                continue;
            };
            let open = i + 2;
            let Some(close) = closing(&toks, open) else {
                problems.push(format!("{file}: unbalanced `.{name}(`"));
                continue;
            };
            match name.as_str() {
                "route" => {
                    let Some(Tok::Str(path)) = toks.get(open + 1) else {
                        problems.push(format!(
                            "{file}: a `.route(` whose path is not a string literal ({:?}); \
                             the authorization matrix cannot see which route it is",
                            toks.get(open + 1)
                        ));
                        continue;
                    };
                    if toks.get(open + 2) != Some(&Tok::Punct(',')) {
                        problems.push(format!("{file}: cannot read `.route(\"{path}\" …`"));
                        continue;
                    }
                    let calls = top_level_calls(&toks, open + 3, close);
                    let mut methods = 0;
                    for call in calls {
                        let base = call.strip_suffix("_service").unwrap_or(&call);
                        match base {
                            "get" | "post" | "put" | "delete" | "patch" | "head" | "options"
                            | "trace" => {
                                methods += 1;
                                routes.push(Route {
                                    method: base.to_ascii_uppercase(),
                                    path: path.clone(),
                                    file: file.clone(),
                                });
                            }
                            "layer" | "route_layer" | "with_state" => {}
                            other => problems.push(format!(
                                "{file}: route {path} uses the method router `{other}(…)`, which \
                                 the authorization matrix does not understand; teach \
                                 `tests/authz_matrix.rs` which methods it serves"
                            )),
                        }
                    }
                    if methods == 0 {
                        problems.push(format!("{file}: route {path}: no HTTP method found"));
                    }
                }
                "route_service" | "nest" | "nest_service" => problems.push(format!(
                    "{file}: `.{name}(…)` registers routes the authorization matrix cannot \
                     enumerate; register them with `.route(\"PATH\", method(handler))`"
                )),
                "merge" => {
                    let calls = top_level_calls(&toks, open + 1, close);
                    if calls != ["router"] {
                        problems.push(format!(
                            "{file}: `.merge(…)` of something other than a module's `router()` \
                             ({calls:?}): its routes would be invisible to the authorization matrix"
                        ));
                    }
                }
                _ => {}
            }
        }
    }
    let mut seen = BTreeSet::new();
    for r in &routes {
        if !seen.insert((r.method.clone(), r.path.clone())) {
            problems.push(format!("{} {} is registered twice", r.method, r.path));
        }
    }
    (routes, problems)
}

/// `(METHOD, path)` of every `#[utoipa::path(method, path = "…")]` annotation in `src/`.
fn annotated_paths() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (file, toks) in sources() {
        for i in 0..toks.len() {
            let window = [
                Tok::Punct('#'),
                Tok::Punct('['),
                Tok::Ident("utoipa".into()),
                Tok::Punct(':'),
                Tok::Punct(':'),
                Tok::Ident("path".into()),
                Tok::Punct('('),
            ];
            if !toks[i..].starts_with(&window) {
                continue;
            }
            let open = i + window.len() - 1;
            let close = closing(&toks, open).unwrap_or(toks.len());
            let Some(Tok::Ident(method)) = toks.get(open + 1) else {
                continue;
            };
            let mut depth = 0i64;
            for k in open + 1..close {
                match &toks[k] {
                    Tok::Punct('(' | '[' | '{') => depth += 1,
                    Tok::Punct(')' | ']' | '}') => depth -= 1,
                    Tok::Ident(p) if depth == 0 && p == "path" => {
                        if let (Some(Tok::Punct('=')), Some(Tok::Str(path))) =
                            (toks.get(k + 1), toks.get(k + 2))
                        {
                            out.push((method.to_ascii_uppercase(), path.clone(), file.clone()));
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    out
}

/// `(METHOD, path)` of every operation in the OpenAPI document the server serves.
fn documented_paths() -> BTreeSet<(String, String)> {
    use utoipa::OpenApi;
    let doc = serde_json::to_value(carebill::openapi::ApiDoc::openapi()).unwrap();
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"]
        .as_object()
        .expect("paths in the OpenAPI document")
    {
        for method in item.as_object().unwrap().keys() {
            if [
                "get", "post", "put", "delete", "patch", "head", "options", "trace",
            ]
            .contains(&method.as_str())
            {
                out.insert((method.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    out
}

/// Routes served but not (yet) in the OpenAPI document, each with why. Every other served
/// route must be documented: a new route fails [`coverage_problems`] until its handler is
/// annotated and listed in src/openapi.rs. This list may only shrink.
#[rustfmt::skip]
const UNDOCUMENTED: &[(&str, &str, &str)] = &[
    // Probes and the document itself: not part of the API's contract.
    ("GET",    "/healthz",                                 "liveness probe"),
    ("GET",    "/readyz",                                  "readiness probe"),
    ("GET",    "/v1/openapi.json",                         "the document itself"),
    // Identity and administration (src/identity, src/auth.rs, src/audit): not yet annotated.
    ("POST",   "/v1/sessions",                             "identity: not yet annotated"),
    ("POST",   "/v1/sessions/guest",                       "identity: not yet annotated"),
    ("POST",   "/v1/sessions/mfa",                         "identity: not yet annotated"),
    ("POST",   "/v1/sessions/mfa/enrollment",              "identity: not yet annotated"),
    ("POST",   "/v1/sessions/mfa/enrollment/confirm",      "identity: not yet annotated"),
    ("DELETE", "/v1/sessions/current",                     "identity: not yet annotated"),
    ("POST",   "/v1/sessions/revoke_all",                  "identity: not yet annotated"),
    ("POST",   "/v1/users",                                "identity: not yet annotated"),
    ("GET",    "/v1/users",                                "identity: not yet annotated"),
    ("POST",   "/v1/users/{id}",                           "identity: not yet annotated"),
    ("POST",   "/v1/users/me/password",                    "identity: not yet annotated"),
    ("POST",   "/v1/users/{id}/password",                  "identity: not yet annotated"),
    ("POST",   "/v1/users/{id}/require_password_reset",    "identity: not yet annotated"),
    ("POST",   "/v1/patients/{id}/access_code",            "identity: not yet annotated"),
    ("GET",    "/v1/security_events",                      "identity: not yet annotated"),
    ("POST",   "/v1/facilities",                           "identity: not yet annotated"),
    ("GET",    "/v1/facilities",                           "identity: not yet annotated"),
    ("POST",   "/v1/api_keys",                             "identity: not yet annotated"),
    ("GET",    "/v1/api_keys",                             "identity: not yet annotated"),
    ("GET",    "/v1/api_keys/{id}",                        "identity: not yet annotated"),
    ("DELETE", "/v1/api_keys/{id}",                        "identity: not yet annotated"),
    ("POST",   "/v1/api_keys/{id}/rotate",                 "identity: not yet annotated"),
    ("GET",    "/v1/audit_events",                         "audit trail: not yet annotated"),
];

/// Everything that keeps the table and the server from agreeing, before a request is made.
fn coverage_problems() -> Vec<String> {
    let (routes, mut problems) = inventory();
    let served: BTreeMap<(String, String), String> = routes
        .iter()
        .map(|r| ((r.method.clone(), r.path.clone()), r.file.clone()))
        .collect();
    let documented = documented_paths();
    for (method, path) in &documented {
        if !served.contains_key(&(method.clone(), path.clone())) {
            problems.push(format!(
                "{method} {path} is in the OpenAPI document but no `.route(` in src/ serves it"
            ));
        }
    }
    for ((method, path), file) in &served {
        let exempt = UNDOCUMENTED
            .iter()
            .any(|(m, p, _)| *m == method.as_str() && *p == path.as_str());
        let is_documented = documented.contains(&(method.clone(), path.clone()));
        if !exempt && !is_documented {
            problems.push(format!(
                "{method} {path} (registered in {file}) is not in the OpenAPI document: annotate \
                 its handler with #[utoipa::path] and add it to `paths(…)` in src/openapi.rs"
            ));
        }
        if exempt && is_documented {
            problems.push(format!(
                "{method} {path} is documented now: remove it from UNDOCUMENTED in tests/authz_matrix.rs"
            ));
        }
    }
    for (method, path, _) in UNDOCUMENTED {
        if !served.contains_key(&((*method).to_owned(), (*path).to_owned())) {
            problems.push(format!(
                "{method} {path} is in UNDOCUMENTED but no `.route(` serves it: remove it"
            ));
        }
    }
    for (method, path, file) in annotated_paths() {
        if !documented.contains(&(method.clone(), path.clone())) {
            problems.push(format!(
                "{method} {path} ({file}) has a #[utoipa::path] annotation but is not in the \
                 OpenAPI document: add its handler to `paths(…)` in src/openapi.rs"
            ));
        }
    }
    let mut rows = BTreeSet::new();
    for rule in TABLE {
        if !rows.insert((rule.method, rule.path, rule.variant)) {
            problems.push(format!("{} has two rows in the table", rule.route()));
        }
        if !served.contains_key(&(rule.method.to_owned(), rule.path.to_owned())) {
            problems.push(format!(
                "{} has a row in the authorization table but the server has no such route \
                 (removed or renamed?): update the table",
                rule.route()
            ));
        }
        for (k, caller) in CALLERS.iter().enumerate() {
            if rule.expect[k] == NA && *caller != Caller::PatientOther {
                problems.push(format!(
                    "{}: NotApplicable is only for the patient_other column, not {}",
                    rule.route(),
                    caller.name()
                ));
            }
        }
    }
    for ((method, path), file) in &served {
        if !TABLE.iter().any(|r| r.method == method && r.path == path) {
            problems.push(format!(
                "{method} {path} (registered in {file}) has no row in the authorization table \
                 of tests/authz_matrix.rs: add one saying who may call it"
            ));
        }
    }
    problems
}

#[test]
fn every_route_has_a_rule_and_every_rule_a_route() {
    let (routes, _) = inventory();
    let problems = coverage_problems();
    assert!(
        problems.is_empty(),
        "the authorization table does not match the routes:\n  - {}",
        problems.join("\n  - ")
    );
    // The reader found the routes it should: a sanity floor, not a list to maintain.
    assert!(routes.len() >= 50, "only {} routes found", routes.len());
    eprintln!(
        "authorization matrix: {} routes, {} rows, {} documented in OpenAPI",
        routes.len(),
        TABLE.len(),
        documented_paths().len()
    );
}

#[test]
fn the_route_reader_handles_rustfmt_layouts_and_ignores_comments() {
    let src = r#"
        // .route("/commented", get(nope))
        /* .route("/blocked", post(nope)) */
        fn router() -> Router<AppState> {
            Router::new()
                .route("/a", post(create).get(list))
                .route(
                    "/b/{id}",
                    get(crate::x::show).delete(remove),
                )
                .route("/c", axum::routing::put(f(1, g(2))))
                .merge(other::router())
        }
        const S: &str = ".route(\"/in_a_string\", get(x))";
        fn f<'a>(c: char) -> bool { c == '(' || c == '"' }
    "#;
    let toks = tokenize(src);
    let mut found = Vec::new();
    for i in 0..toks.len() {
        if let (Tok::Punct('.'), Some(Tok::Ident(n)), Some(Tok::Punct('('))) =
            (&toks[i], toks.get(i + 1), toks.get(i + 2))
        {
            if n == "route" {
                let close = closing(&toks, i + 2).unwrap();
                let Some(Tok::Str(path)) = toks.get(i + 3) else {
                    panic!()
                };
                found.push((path.clone(), top_level_calls(&toks, i + 5, close)));
            }
        }
    }
    assert_eq!(
        found,
        [
            ("/a".to_owned(), vec!["post".to_owned(), "get".to_owned()]),
            (
                "/b/{id}".to_owned(),
                vec!["get".to_owned(), "delete".to_owned()]
            ),
            ("/c".to_owned(), vec!["put".to_owned()]),
        ]
    );
}

// ---- the records the requests name ----

/// One patient's records, made before the matrix runs.
struct Records {
    patient: String,
    invoice: String,
    payment: String,
    refund: String,
    /// Refunds to another payment method, waiting for a second billing manager.
    refund_to_approve: String,
    refund_to_reject: String,
    /// Write-offs above the dual-control threshold, waiting for a second billing manager.
    write_off_to_approve: String,
    write_off_to_reject: String,
    /// The patient's receivables account.
    account: String,
    /// The journal entry that finalized the invoice.
    entry: String,
}

struct Fixtures {
    /// The signed-in patient's.
    own: Records,
    /// Another patient's.
    other: Records,
    guest_access_code: String,
    guest_date_of_birth: String,
    /// A staff user for the user-management routes to act on.
    staff_user: String,
    /// Throwaway API keys for the key-management routes (rotation and revocation end them).
    key_to_read: String,
    key_to_rotate: String,
    key_to_revoke: String,
    /// A patient whose personal data the erasure route erases.
    patient_to_erase: String,
    /// A webhook endpoint to read, change and rotate; another to delete; an event to replay.
    webhook_endpoint: String,
    webhook_endpoint_to_delete: String,
    webhook_event: String,
}

impl Fixtures {
    fn records(&self, owner: Owner) -> &Records {
        match owner {
            Owner::Own => &self.own,
            Owner::Other => &self.other,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Own,
    Other,
}

/// A refund to another payment method: it waits for a second billing manager.
async fn held_refund(office: &ApiClient, payment: &Value) -> String {
    let r = office
        .create(
            "/v1/refunds",
            &json!({"payment": payment["id"], "amount": 100, "reason": "duplicate", "payment_method": "pm_card_mastercard"}),
        )
        .await
        .unwrap();
    assert_eq!(r["status"], "pending_approval", "{r}");
    id_of(&r).unwrap()
}

/// A write-off above the dual-control threshold: it waits for a second billing manager.
async fn held_write_off(office: &ApiClient, invoice: &str) -> String {
    let a = office
        .create(
            &format!("/v1/invoices/{invoice}/adjustments"),
            &json!({"kind": "write_off", "amount": 60_000, "reason": "Hardship"}),
        )
        .await
        .unwrap();
    assert_eq!(a["status"], "pending_approval", "{a}");
    id_of(&a).unwrap()
}

/// A patient with a finalized invoice, a payment, a refund, two refunds and two write-offs
/// waiting for approval, all made by `office` (a billing manager who is none of the callers,
/// so that the matrix's billing manager is a second person for dual control).
async fn patient_records(office: &ApiClient, name: &str) -> Records {
    let patient = office
        .create(
            "/v1/patients",
            &json!({"name": name, "date_of_birth": "1980-02-29", "email": "p@example.org"}),
        )
        .await
        .unwrap();
    let patient = id_of(&patient).unwrap();
    let draft = office
        .create(
            "/v1/invoices",
            &json!({"patient": patient, "currency": "usd", "due_date": "2030-01-31",
                "lines": [{"service_date": "2026-01-15", "code": "99213", "description": "Office visit", "quantity": 1, "unit_amount": 200_000}]}),
        )
        .await
        .unwrap();
    let invoice = office
        .create(
            &format!("/v1/invoices/{}/finalize", id_of(&draft).unwrap()),
            &json!({}),
        )
        .await
        .unwrap();
    let payment = office
        .create(
            "/v1/payments",
            &json!({"invoice": invoice["id"], "amount": 5000, "currency": "usd", "payment_method": "pm_card_visa"}),
        )
        .await
        .unwrap();
    assert_eq!(payment["status"], "succeeded", "{payment}");
    let refund = office
        .create(
            "/v1/refunds",
            &json!({"payment": payment["id"], "amount": 100, "reason": "duplicate"}),
        )
        .await
        .unwrap();
    let refund_to_approve = held_refund(office, &payment).await;
    let refund_to_reject = held_refund(office, &payment).await;
    let invoice_id = id_of(&invoice).unwrap();
    let write_off_to_approve = held_write_off(office, &invoice_id).await;
    let write_off_to_reject = held_write_off(office, &invoice_id).await;
    let accounts = office
        .get(&format!("/v1/ledger/accounts?patient={patient}"))
        .await
        .unwrap();
    assert_eq!(accounts.status, 200, "{}", accounts.body);
    Records {
        account: accounts.body["data"][0]["id"].as_str().unwrap().to_owned(),
        entry: invoice["finalize_entry"].as_str().unwrap().to_owned(),
        patient,
        invoice: invoice_id,
        payment: id_of(&payment).unwrap(),
        refund: id_of(&refund).unwrap(),
        refund_to_approve,
        refund_to_reject,
        write_off_to_approve,
        write_off_to_reject,
    }
}

async fn make_fixtures(app: &TestApp) -> (Fixtures, String) {
    let office = app.admin.with_key(
        create_api_key(&app.db, Role::BillingManager)
            .await
            .unwrap()
            .secret,
    );
    let admin = app.as_role("admin");
    let (own, other) = tokio::join!(
        patient_records(&office, "Pat Own"),
        patient_records(&office, "Pat Other")
    );
    office
        .create(
            "/v1/users",
            &json!({"email": PATIENT_EMAIL, "role": "patient", "password": STRONG, "patient": own.patient}),
        )
        .await
        .unwrap();
    let guest = office
        .create(
            "/v1/patients",
            &json!({"name": "Guest Payer", "date_of_birth": "1975-06-01"}),
        )
        .await
        .unwrap();
    let code = office
        .create(
            &format!("/v1/patients/{}/access_code", id_of(&guest).unwrap()),
            &json!({}),
        )
        .await
        .unwrap();
    let to_erase = office
        .create(
            "/v1/patients",
            &json!({"name": "Erase Me", "date_of_birth": "1980-02-03"}),
        )
        .await
        .unwrap();
    let staff_user = admin
        .create(
            "/v1/users",
            &json!({"email": "matrix-target@example.org", "role": "billing_clerk", "password": STRONG}),
        )
        .await
        .unwrap();
    let mut keys = Vec::new();
    for name in ["ledger caller", "to read", "to rotate", "to revoke"] {
        let key = admin
            .create(
                "/v1/api_keys",
                &json!({"name": name, "scopes": ["ledger:read"]}),
            )
            .await
            .unwrap();
        keys.push(key);
    }
    let ledger_secret = keys[0]["secret"].as_str().unwrap().to_owned();
    // A public IP literal: registration needs no DNS (deliveries to it simply fail here).
    let mut endpoints = Vec::new();
    for _ in 0..2 {
        let endpoint = admin
            .create(
                "/v1/webhook_endpoints",
                &json!({"url": "https://93.184.216.34/matrix", "enabled_events": ["invoice.voided"]}),
            )
            .await
            .unwrap();
        endpoints.push(id_of(&endpoint).unwrap());
    }
    let events = admin.get("/v1/webhook_events?limit=1").await.unwrap();
    let webhook_event = events.body["data"][0]["id"].as_str().unwrap().to_owned();
    let fixtures = Fixtures {
        own,
        other,
        guest_access_code: code["access_code"].as_str().unwrap().to_owned(),
        guest_date_of_birth: "1975-06-01".to_owned(),
        staff_user: id_of(&staff_user).unwrap(),
        key_to_read: id_of(&keys[1]).unwrap(),
        key_to_rotate: id_of(&keys[2]).unwrap(),
        key_to_revoke: id_of(&keys[3]).unwrap(),
        patient_to_erase: id_of(&to_erase).unwrap(),
        webhook_endpoint: endpoints[0].clone(),
        webhook_endpoint_to_delete: endpoints[1].clone(),
        webhook_event,
    };
    (fixtures, ledger_secret)
}

// ---- the requests ----

struct Call {
    method: reqwest::Method,
    path: String,
    body: Option<Value>,
    /// Sends a fresh `Idempotency-Key`.
    idempotent: bool,
    /// Ends the caller's session (the patient signs in again afterwards).
    ends_session: bool,
}

impl Call {
    fn get(path: impl Into<String>) -> Call {
        Call {
            method: reqwest::Method::GET,
            path: path.into(),
            body: None,
            idempotent: false,
            ends_session: false,
        }
    }

    fn post(path: impl Into<String>, body: Value) -> Call {
        Call {
            method: reqwest::Method::POST,
            body: Some(body),
            ..Call::get(path)
        }
    }

    /// A POST with an `Idempotency-Key` (those that move money require one).
    fn post_once(path: impl Into<String>, body: Value) -> Call {
        Call {
            idempotent: true,
            ..Call::post(path, body)
        }
    }

    fn delete(path: impl Into<String>) -> Call {
        Call {
            method: reqwest::Method::DELETE,
            ..Call::get(path)
        }
    }

    fn ending_session(self) -> Call {
        Call {
            ends_session: true,
            ..self
        }
    }
}

/// The request `rule` makes for a caller addressing `owner`'s records: real ids, a minimal
/// body. `Ok(None)`: there is no "someone else's record" version of this request. `Err`: no
/// request is written for the route yet.
fn call_for(fx: &Fixtures, rule: &Rule, owner: Owner) -> Result<Option<Call>, String> {
    let r = fx.records(owner);
    // For routes that name no patient's record, only the `Own` request exists.
    let own_only = |call: Call| (owner == Owner::Own).then_some(call);
    let unique = || format!("matrix-{}@example.org", uuid::Uuid::new_v4().simple());
    let today = chrono::Utc::now().date_naive();
    let call = match (rule.method, rule.path, rule.variant) {
        ("GET", "/healthz", "") => own_only(Call::get("/healthz")),
        ("GET", "/readyz", "") => own_only(Call::get("/readyz")),
        ("GET", "/v1/openapi.json", "") => own_only(Call::get("/v1/openapi.json")),
        ("POST", "/v1/webhooks/stripe", "") => own_only(Call::post(
            "/v1/webhooks/stripe",
            json!({"id": "evt_matrix", "type": "payout.paid", "created": 0, "data": {"object": {}}}),
        )),
        ("POST", "/v1/sessions", "") => own_only(Call::post(
            "/v1/sessions",
            json!({"email": PATIENT_EMAIL, "password": STRONG}),
        )),
        ("POST", "/v1/sessions/guest", "") => own_only(Call::post(
            "/v1/sessions/guest",
            json!({"access_code": fx.guest_access_code, "date_of_birth": fx.guest_date_of_birth}),
        )),
        ("POST", "/v1/sessions/mfa", "") => own_only(Call::post("/v1/sessions/mfa", json!({}))),
        ("POST", "/v1/sessions/mfa/enrollment", "") => {
            own_only(Call::post("/v1/sessions/mfa/enrollment", json!({})))
        }
        ("POST", "/v1/sessions/mfa/enrollment/confirm", "") => {
            own_only(Call::post("/v1/sessions/mfa/enrollment/confirm", json!({})))
        }
        ("DELETE", "/v1/sessions/current", "") => {
            own_only(Call::delete("/v1/sessions/current").ending_session())
        }
        ("POST", "/v1/sessions/revoke_all", "") => {
            own_only(Call::post("/v1/sessions/revoke_all", json!({})).ending_session())
        }
        // Without `current_password`: a 400 for whoever gets that far, and nothing changes.
        ("POST", "/v1/users/me/password", "") => own_only(Call::post(
            "/v1/users/me/password",
            json!({"password": OTHER_STRONG}),
        )),
        ("POST", "/v1/users", "staff") => own_only(Call::post(
            "/v1/users",
            json!({"email": unique(), "role": "billing_clerk", "password": STRONG}),
        )),
        ("POST", "/v1/users", "patient") => Some(Call::post(
            "/v1/users",
            json!({"email": unique(), "role": "patient", "password": STRONG, "patient": r.patient}),
        )),
        ("GET", "/v1/users", "") => own_only(Call::get("/v1/users")),
        ("POST", "/v1/users/{id}", "") => own_only(Call::post(
            format!("/v1/users/{}", fx.staff_user),
            json!({}),
        )),
        ("POST", "/v1/users/{id}/password", "") => own_only(Call::post(
            format!("/v1/users/{}/password", fx.staff_user),
            json!({"password": OTHER_STRONG}),
        )),
        ("POST", "/v1/users/{id}/require_password_reset", "") => own_only(Call::post(
            format!("/v1/users/{}/require_password_reset", fx.staff_user),
            json!({}),
        )),
        ("POST", "/v1/patients/{id}/access_code", "") => Some(Call::post(
            format!("/v1/patients/{}/access_code", r.patient),
            json!({}),
        )),
        ("GET", "/v1/security_events", "") => own_only(Call::get("/v1/security_events?limit=1")),
        ("GET", "/v1/audit_events", "") => own_only(Call::get("/v1/audit_events?limit=1")),
        ("POST", "/v1/facilities", "") => own_only(Call::post(
            "/v1/facilities",
            json!({"name": "Matrix Clinic"}),
        )),
        ("GET", "/v1/facilities", "") => own_only(Call::get("/v1/facilities")),
        ("POST", "/v1/api_keys", "") => own_only(Call::post(
            "/v1/api_keys",
            json!({"name": "matrix", "scopes": ["ledger:read"]}),
        )),
        ("GET", "/v1/api_keys", "") => own_only(Call::get("/v1/api_keys")),
        ("GET", "/v1/api_keys/{id}", "") => {
            own_only(Call::get(format!("/v1/api_keys/{}", fx.key_to_read)))
        }
        ("DELETE", "/v1/api_keys/{id}", "") => {
            own_only(Call::delete(format!("/v1/api_keys/{}", fx.key_to_revoke)))
        }
        ("POST", "/v1/api_keys/{id}/rotate", "") => own_only(Call::post(
            format!("/v1/api_keys/{}/rotate", fx.key_to_rotate),
            json!({}),
        )),
        ("POST", "/v1/webhook_endpoints", "") => own_only(Call::post(
            "/v1/webhook_endpoints",
            json!({"url": "https://93.184.216.34/matrix", "enabled_events": ["*"]}),
        )),
        ("GET", "/v1/webhook_endpoints", "") => own_only(Call::get("/v1/webhook_endpoints")),
        ("GET", "/v1/webhook_endpoints/{id}", "") => own_only(Call::get(format!(
            "/v1/webhook_endpoints/{}",
            fx.webhook_endpoint
        ))),
        ("POST", "/v1/webhook_endpoints/{id}", "") => own_only(Call::post(
            format!("/v1/webhook_endpoints/{}", fx.webhook_endpoint),
            json!({"description": "matrix"}),
        )),
        ("DELETE", "/v1/webhook_endpoints/{id}", "") => own_only(Call::delete(format!(
            "/v1/webhook_endpoints/{}",
            fx.webhook_endpoint_to_delete
        ))),
        ("POST", "/v1/webhook_endpoints/{id}/rotate_secret", "") => own_only(Call::post(
            format!(
                "/v1/webhook_endpoints/{}/rotate_secret",
                fx.webhook_endpoint
            ),
            json!({}),
        )),
        ("GET", "/v1/webhook_events", "") => own_only(Call::get("/v1/webhook_events?limit=1")),
        ("GET", "/v1/webhook_events/{id}", "") => own_only(Call::get(format!(
            "/v1/webhook_events/{}",
            fx.webhook_event
        ))),
        ("POST", "/v1/webhook_events/{id}/replay", "") => own_only(Call::post(
            format!("/v1/webhook_events/{}/replay", fx.webhook_event),
            json!({"endpoint": fx.webhook_endpoint}),
        )),
        ("POST", "/v1/patients", "") => own_only(Call::post_once(
            "/v1/patients",
            json!({"name": "Matrix Patient", "date_of_birth": "1970-01-01"}),
        )),
        ("GET", "/v1/patients", "") => own_only(Call::get("/v1/patients")),
        ("GET", "/v1/patients/{id}", "") => Some(Call::get(format!("/v1/patients/{}", r.patient))),
        ("POST", "/v1/patients/{id}", "") => Some(Call::post_once(
            format!("/v1/patients/{}", r.patient),
            json!({"phone": "+15555550100"}),
        )),
        ("POST", "/v1/patients/search", "") => own_only(Call::post(
            "/v1/patients/search",
            json!({"email": "nobody@example.org"}),
        )),
        ("DELETE", "/v1/patients/{id}/personal-data", "") => own_only(Call::delete(format!(
            "/v1/patients/{}/personal-data",
            fx.patient_to_erase
        ))),
        ("GET", "/v1/patients/{id}/statement", "") => {
            Some(Call::get(format!("/v1/patients/{}/statement", r.patient)))
        }
        ("POST", "/v1/invoices", "") => Some(Call::post_once(
            "/v1/invoices",
            json!({"patient": r.patient, "currency": "usd", "due_date": "2030-01-31",
                "lines": [{"service_date": "2026-01-15", "code": "99213", "description": "Office visit", "quantity": 1, "unit_amount": 1000}]}),
        )),
        ("GET", "/v1/invoices", "") => own_only(Call::get("/v1/invoices")),
        ("GET", "/v1/invoices/{id}", "") => Some(Call::get(format!("/v1/invoices/{}", r.invoice))),
        // The invoice is open (not a draft) and has payments: a 400 for whoever gets that far.
        ("POST", "/v1/invoices/{id}/finalize", "") => Some(Call::post_once(
            format!("/v1/invoices/{}/finalize", r.invoice),
            json!({}),
        )),
        ("POST", "/v1/invoices/{id}/void", "") => Some(Call::post_once(
            format!("/v1/invoices/{}/void", r.invoice),
            json!({}),
        )),
        ("POST", "/v1/invoices/{id}/adjustments", "discount") => Some(Call::post_once(
            format!("/v1/invoices/{}/adjustments", r.invoice),
            json!({"kind": "discount", "amount": 1, "reason": "Matrix"}),
        )),
        ("POST", "/v1/invoices/{id}/adjustments", "write_off") => Some(Call::post_once(
            format!("/v1/invoices/{}/adjustments", r.invoice),
            json!({"kind": "write_off", "amount": 1, "reason": "Matrix"}),
        )),
        ("GET", "/v1/invoices/{id}/adjustments", "") => {
            Some(Call::get(format!("/v1/invoices/{}/adjustments", r.invoice)))
        }
        ("POST", "/v1/invoices/{id}/adjustments/{adjustment}/approve", "") => {
            Some(Call::post_once(
                format!(
                    "/v1/invoices/{}/adjustments/{}/approve",
                    r.invoice, r.write_off_to_approve
                ),
                json!({}),
            ))
        }
        ("POST", "/v1/invoices/{id}/adjustments/{adjustment}/reject", "") => Some(Call::post_once(
            format!(
                "/v1/invoices/{}/adjustments/{}/reject",
                r.invoice, r.write_off_to_reject
            ),
            json!({"reason": "Matrix"}),
        )),
        ("POST", "/v1/payments", "") => Some(Call::post_once(
            "/v1/payments",
            json!({"invoice": r.invoice, "amount": 100, "currency": "usd", "payment_method": "pm_card_visa"}),
        )),
        ("GET", "/v1/payments", "") => own_only(Call::get("/v1/payments")),
        ("GET", "/v1/payments/{id}", "") => Some(Call::get(format!("/v1/payments/{}", r.payment))),
        ("POST", "/v1/refunds", "") => Some(Call::post_once(
            "/v1/refunds",
            json!({"payment": r.payment, "amount": 100, "reason": "duplicate"}),
        )),
        ("GET", "/v1/refunds", "") => own_only(Call::get("/v1/refunds")),
        ("GET", "/v1/refunds/{id}", "") => Some(Call::get(format!("/v1/refunds/{}", r.refund))),
        ("POST", "/v1/refunds/{id}/approve", "") => Some(Call::post_once(
            format!("/v1/refunds/{}/approve", r.refund_to_approve),
            json!({}),
        )),
        ("POST", "/v1/refunds/{id}/reject", "") => Some(Call::post_once(
            format!("/v1/refunds/{}/reject", r.refund_to_reject),
            json!({"reason": "Matrix"}),
        )),
        ("GET", "/v1/ledger/accounts", "") => own_only(Call::get("/v1/ledger/accounts")),
        ("GET", "/v1/ledger/accounts/{id}", "") => {
            Some(Call::get(format!("/v1/ledger/accounts/{}", r.account)))
        }
        ("GET", "/v1/ledger/accounts/{id}/statement", "") => Some(Call::get(format!(
            "/v1/ledger/accounts/{}/statement?from=2020-01-01&to={today}",
            r.account
        ))),
        ("GET", "/v1/ledger/entries", "") => own_only(Call::get("/v1/ledger/entries")),
        ("GET", "/v1/ledger/entries/{id}", "") => {
            Some(Call::get(format!("/v1/ledger/entries/{}", r.entry)))
        }
        ("GET", "/v1/ledger/trial-balance", "") => own_only(Call::get("/v1/ledger/trial-balance")),
        ("GET", "/v1/reports/ar-aging", "") => own_only(Call::get("/v1/reports/ar-aging")),
        ("GET", "/v1/ledger/export", "pseudonymous") => {
            own_only(Call::get("/v1/ledger/export?format=csv"))
        }
        ("GET", "/v1/ledger/export", "identified") => {
            own_only(Call::get("/v1/ledger/export?format=csv&identified=true"))
        }
        _ => {
            return Err(format!(
                "{}: no request is written for this route: add one to `call_for` in \
                 tests/authz_matrix.rs",
                rule.route()
            ))
        }
    };
    Ok(call)
}

async fn send(app: &TestApp, credential: Option<&str>, call: &Call) -> (u16, Value) {
    let mut request = app
        .admin
        .http
        .request(call.method.clone(), format!("{}{}", app.base, call.path));
    if let Some(c) = credential {
        request = request.bearer_auth(c);
    }
    if let Some(body) = &call.body {
        request = request.json(body);
    }
    if call.idempotent {
        request = request.header("Idempotency-Key", new_key());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    // Read the whole body (exports stream), then keep it if it is JSON.
    let bytes = response.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn answers_as(expected: Class, status: u16, body: &Value) -> bool {
    let code = body["error"]["code"].as_str().unwrap_or("");
    match expected {
        Class::Allow => !matches!(status, 401 | 403 | 404 | 405 | 429) && status < 500,
        Class::Deny403 => status == 403 && code == "permission_denied",
        Class::Hidden404 => status == 404 && code == "resource_missing",
        Class::Unauthenticated401 => status == 401,
        Class::NotApplicable => false,
    }
}

async fn sign_in_patient(app: &TestApp) -> String {
    let r = app
        .admin
        .http
        .post(format!("{}/v1/sessions", app.base))
        .json(&json!({"email": PATIENT_EMAIL, "password": STRONG}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stage"], "active", "{body}");
    body["token"].as_str().unwrap().to_owned()
}

both_backends!(authorization_matrix, |app: TestApp| async move {
    let problems = coverage_problems();
    assert!(
        problems.is_empty(),
        "the authorization table does not match the routes:\n  - {}",
        problems.join("\n  - ")
    );
    let started = std::time::Instant::now();
    let (fx, ledger_secret) = make_fixtures(&app).await;
    let mut patient_token = sign_in_patient(&app).await;
    let fixtures_done = started.elapsed();

    let mut failures = Vec::new();
    let mut requests = 0usize;
    for rule in TABLE {
        for (k, &caller) in CALLERS.iter().enumerate() {
            let expected = rule.expect[k];
            let call = match call_for(&fx, rule, caller.owner()) {
                Ok(call) => call,
                Err(e) => {
                    failures.push(e);
                    break;
                }
            };
            let call = match (call, expected) {
                (None, Class::NotApplicable) => continue,
                (None, _) => {
                    failures.push(format!(
                        "{} as {}: the table expects {expected:?}, but the route names no \
                         patient's record; mark the cell NA",
                        rule.route(),
                        caller.name()
                    ));
                    continue;
                }
                (Some(_), Class::NotApplicable) => {
                    failures.push(format!(
                        "{} as {}: the route names a patient's record; the table must say what \
                         another patient gets (Hidden404 or Deny403), not NA",
                        rule.route(),
                        caller.name()
                    ));
                    continue;
                }
                (Some(call), _) => call,
            };
            let credential = match caller {
                Caller::Anonymous => None,
                Caller::Patient | Caller::PatientOther => Some(patient_token.as_str()),
                Caller::LedgerKey => Some(ledger_secret.as_str()),
                staff => Some(app.keys[staff.name()].as_str()),
            };
            let (status, body) = send(&app, credential, &call).await;
            requests += 1;
            if !answers_as(expected, status, &body) {
                failures.push(format!(
                    "{} as {}: expected {expected:?}, got {status} {}",
                    rule.route(),
                    caller.name(),
                    if body.is_null() {
                        String::new()
                    } else {
                        body.to_string().chars().take(300).collect()
                    }
                ));
            }
            if call.ends_session && matches!(caller, Caller::Patient | Caller::PatientOther) {
                patient_token = sign_in_patient(&app).await;
            }
        }
    }
    eprintln!(
        "authorization matrix on {:?}: {} rows, {requests} requests in {:.1?} (fixtures {:.1?})",
        app.backend,
        TABLE.len(),
        started.elapsed(),
        fixtures_done
    );
    assert!(
        failures.is_empty(),
        "{} of {requests} answers disagree with the authorization table:\n  - {}",
        failures.len(),
        failures.join("\n  - ")
    );
    app
});
