//! Checks a ledger's exports against each other, against our trial balance, and against the
//! accountants' own tools: `bean-check` and Beancount's balances (`tests/tools/bean_balances.py`,
//! run with the python next to `bean-check`) on the Beancount export, `hledger check --strict`
//! and `hledger balance` on the hledger journal.
//!
//! Included by test files after `mod common;` as
//! `#[path = "common/export_check.rs"] mod export_check;`.
//!
//! The tools are found by [`tool`]: in `$CAREBILL_TOOLS_BIN`, the test venv
//! (`/var/tmp/carebill-venv/bin`) or `/usr/bin`. Missing, a tool's checks are skipped with a
//! note, except in CI (`CI` set), where that fails the test.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;
use rust_decimal::Decimal;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Export {
    pub status: u16,
    pub cursor: Option<String>,
    pub body: String,
}

/// `GET /v1/ledger/export?{query}`: status, cursor header and body.
pub async fn export(client: &ApiClient, query: &str) -> Export {
    let response = client
        .get_raw(&format!("/v1/ledger/export?{query}"))
        .await
        .unwrap();
    let status = response.status().as_u16();
    let cursor = response
        .headers()
        .get("carebill-export-cursor")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.text().await.unwrap();
    Export {
        status,
        cursor,
        body,
    }
}

pub fn jsonl_entries(body: &str) -> Vec<Value> {
    body.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .collect()
}

/// The minor-unit exponent of a lowercase currency code.
fn exponent(currency: &str) -> u32 {
    currency
        .parse::<carebill::money::Currency>()
        .unwrap_or_else(|_| panic!("unknown currency {currency:?}"))
        .exponent()
}

/// Sum of debits and credits (minor units) per currency from a CSV export (RFC 4180, parsed with
/// the `csv` crate), the set of entry ids, and the number of rows (postings).
pub fn csv_totals(body: &str) -> (BTreeMap<String, (i128, i128)>, BTreeSet<String>, usize) {
    let mut reader = csv::ReaderBuilder::new().from_reader(body.as_bytes());
    let headers = reader.headers().unwrap().clone();
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let (debit, credit, currency, entry) = (
        col("debit"),
        col("credit"),
        col("currency"),
        col("entry_id"),
    );
    let mut totals: BTreeMap<String, (i128, i128)> = BTreeMap::new();
    let mut entries = BTreeSet::new();
    let mut rows = 0;
    for record in reader.records() {
        let record = record.unwrap();
        rows += 1;
        let cur = record[currency].to_owned();
        let exponent = exponent(&cur);
        let minor = |s: &str| -> i128 {
            if s.is_empty() {
                return 0;
            }
            let d: Decimal = s.parse().unwrap();
            assert!(
                d.scale() <= exponent,
                "{s} has more decimals than {cur} allows"
            );
            (d * Decimal::from(10i64.pow(exponent))).try_into().unwrap()
        };
        let (d, c) = (minor(&record[debit]), minor(&record[credit]));
        assert!(
            (d == 0) != (c == 0) && d >= 0 && c >= 0,
            "a row is a debit or a credit, positive: {record:?}"
        );
        let t = totals.entry(cur.clone()).or_default();
        t.0 += d;
        t.1 += c;
        entries.insert(record[entry].to_owned());
    }
    (totals, entries, rows)
}

pub fn tool(name: &str) -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("CAREBILL_TOOLS_BIN").map(|d| PathBuf::from(d).join(name)),
        Some(PathBuf::from("/var/tmp/carebill-venv/bin").join(name)),
        Some(PathBuf::from("/usr/bin").join(name)),
    ];
    let found = candidates.into_iter().flatten().find(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var("CI").is_err(),
            "{name} is required in CI (.ci/run installs it)"
        );
        eprintln!("{name} not installed; skipping its check (CI installs it)");
    }
    found
}

/// Balances keyed by (ledger account name, upper-case commodity), zero balances left out.
pub type Balances = BTreeMap<(String, String), Decimal>;

/// What [`exports_agree_with_the_accounting_tools`] checked.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Journal entries exported (each in every format).
    pub entries: usize,
    /// Postings exported.
    pub postings: usize,
    /// Accounts with a non-zero balance, each compared with every tool's balance.
    pub accounts: usize,
    /// Currencies (lowercase codes) the ledger has postings in.
    pub currencies: BTreeSet<String>,
    /// Entries per `kind`, from the JSON Lines export.
    pub kinds: BTreeMap<String, usize>,
    /// The tools that ran (a missing one is skipped outside CI).
    pub tools: Vec<&'static str>,
}

/// Exports `app`'s whole ledger in every format and checks: the CSV parses and balances per
/// currency, with every journal entry in it; every JSON Lines entry balances; the trial balance
/// equals the export rolled up to chart accounts; `bean-check` accepts the Beancount file and
/// Beancount's balances equal ours account by account; `hledger check --strict` accepts the
/// journal and `hledger balance` equals ours account by account.
pub async fn exports_agree_with_the_accounting_tools(app: &TestApp) -> Summary {
    let admin = &app.admin;
    let mut summary = Summary::default();

    // CSV: parsed back, debits equal credits per currency; every entry is there.
    let csv_export = export(admin, "format=csv").await;
    assert_eq!(csv_export.status, 200, "{}", csv_export.body);
    let (totals, csv_entries, csv_rows) = csv_totals(&csv_export.body);
    for (cur, (d, c)) in &totals {
        assert_eq!(d, c, "{cur} does not balance");
    }
    let entry_count = app.count("journal_entries").await;
    assert_eq!(csv_entries.len(), usize::try_from(entry_count).unwrap());
    summary.currencies = totals.keys().cloned().collect();

    // JSON Lines: every line parses and balances.
    let jsonl = export(admin, "format=jsonl").await;
    assert_eq!(jsonl.status, 200, "{}", jsonl.body);
    let lines = jsonl_entries(&jsonl.body);
    assert_eq!(lines.len(), csv_entries.len());
    for e in &lines {
        let mut sums: HashMap<String, i64> = HashMap::new();
        for p in e["postings"].as_array().unwrap() {
            *sums
                .entry(p["currency"].as_str().unwrap().to_owned())
                .or_default() += p["amount_minor"].as_i64().unwrap();
            summary.postings += 1;
        }
        assert!(sums.values().all(|s| *s == 0), "{e}");
        *summary
            .kinds
            .entry(e["kind"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(summary.postings, csv_rows, "one CSV row per posting");
    assert_eq!(jsonl.cursor, csv_export.cursor, "same head, same cursor");
    summary.entries = lines.len();

    // Our balances per account, from the JSON export, keyed as the tools name accounts.
    let mut ours: Balances = BTreeMap::new();
    for e in &lines {
        for p in e["postings"].as_array().unwrap() {
            let amount: Decimal = p["amount"].as_str().unwrap().parse().unwrap();
            let minor = Decimal::new(
                p["amount_minor"].as_i64().unwrap(),
                exponent(p["currency"].as_str().unwrap()),
            );
            assert_eq!(amount, minor, "amount and amount_minor differ: {e}");
            *ours
                .entry((
                    p["ledger_account"].as_str().unwrap().to_owned(),
                    p["currency"].as_str().unwrap().to_ascii_uppercase(),
                ))
                .or_default() += amount;
        }
    }
    ours.retain(|_, v| !v.is_zero());
    summary.accounts = ours.len();

    // The trial balance agrees with the export, chart account by chart account.
    let tb = app
        .as_role("accountant")
        .get("/v1/ledger/trial-balance")
        .await
        .unwrap();
    assert_eq!(tb.status, 200, "{}", tb.body);
    for t in tb.body["totals"].as_array().unwrap() {
        assert_eq!(t["debit_minor"], t["credit_minor"], "{t}");
    }
    let mut rolled_up: BTreeMap<String, Decimal> = BTreeMap::new();
    for ((name, _), v) in &ours {
        let chart: Vec<&str> = name.split(':').take(3).collect();
        *rolled_up.entry(chart.join(":")).or_default() += *v;
    }
    rolled_up.retain(|_, v| !v.is_zero());
    let tb_lines: BTreeMap<String, Decimal> = tb.body["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let d: Decimal = l["debit"].as_str().unwrap().parse().unwrap();
            let c: Decimal = l["credit"].as_str().unwrap().parse().unwrap();
            (l["ledger_account"].as_str().unwrap().to_owned(), d - c)
        })
        .filter(|(_, v)| !v.is_zero())
        .collect();
    assert_eq!(
        tb_lines, rolled_up,
        "the trial balance differs from the export"
    );

    let dir = temp_dir("carebill-export-");
    let bean = export(admin, "format=beancount").await;
    assert_eq!(bean.status, 200, "{}", bean.body);
    let bean_file = dir.path().join("ledger.beancount");
    std::fs::write(&bean_file, &bean.body).unwrap();
    if let Some(bean_check) = tool("bean-check") {
        let theirs = beancount_balances(&bean_check, &bean_file);
        assert_balances_equal(&theirs, &ours, "Beancount");
        summary.tools.push("bean-check");
    }

    let hl = export(admin, "format=hledger").await;
    assert_eq!(hl.status, 200, "{}", hl.body);
    let hl_file = dir.path().join("ledger.journal");
    std::fs::write(&hl_file, &hl.body).unwrap();
    if let Some(hledger) = tool("hledger") {
        let theirs = hledger_balances(&hledger, &hl_file);
        assert_balances_equal(&theirs, &ours, "hledger");
        summary.tools.push("hledger");
    }
    summary
}

/// Runs `bean-check` on `file` (it must accept it), then Beancount's own balances of it.
pub fn beancount_balances(bean_check: &Path, file: &Path) -> Balances {
    let out = Command::new(bean_check).arg(file).output().unwrap();
    assert!(
        out.status.success(),
        "bean-check refused the export: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let python = bean_check.with_file_name("python3");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/bean_balances.py");
    let out = Command::new(python).arg(script).arg(file).output().unwrap();
    assert!(
        out.status.success(),
        "bean_balances.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: BTreeMap<String, BTreeMap<String, String>> =
        serde_json::from_slice(&out.stdout).unwrap();
    theirs
        .into_iter()
        .flat_map(|(account, by_currency)| {
            by_currency.into_iter().map(move |(currency, v)| {
                ((account.clone(), currency), v.parse::<Decimal>().unwrap())
            })
        })
        .filter(|(_, v)| !v.is_zero())
        .collect()
}

/// Runs `hledger check --strict` on `file` (it must accept it), then `hledger balance`.
pub fn hledger_balances(hledger: &Path, file: &Path) -> Balances {
    let check = Command::new(hledger)
        .args(["check", "--strict", "-f"])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "hledger check refused the export: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let bal = Command::new(hledger)
        .args([
            "balance",
            "--flat",
            "--no-total",
            "--empty",
            "-O",
            "csv",
            "-f",
        ])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        bal.status.success(),
        "hledger balance: {}",
        String::from_utf8_lossy(&bal.stderr)
    );
    let mut theirs: Balances = BTreeMap::new();
    let mut reader = csv::Reader::from_reader(&bal.stdout[..]);
    for r in reader.records() {
        let r = r.unwrap();
        // One commodity per account: `-12.34 USD`, or `0` for an account that nets to zero.
        for amount in r[1].split(", ") {
            let mut parts = amount.split_whitespace();
            let number: Decimal = parts
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("hledger balance of {}: {:?}", &r[0], &r[1]));
            let commodity = parts.next().unwrap_or("").to_owned();
            if !number.is_zero() {
                let previous = theirs.insert((r[0].to_owned(), commodity), number);
                assert!(previous.is_none(), "{r:?}");
            }
        }
    }
    theirs
}

/// Asserts a tool's balances equal ours, naming the accounts that differ.
fn assert_balances_equal(theirs: &Balances, ours: &Balances, tool: &str) {
    if theirs == ours {
        return;
    }
    let keys: BTreeSet<&(String, String)> = theirs.keys().chain(ours.keys()).collect();
    let differences: Vec<String> = keys
        .into_iter()
        .filter(|k| theirs.get(*k) != ours.get(*k))
        .map(|(account, currency)| {
            let key = (account.clone(), currency.clone());
            format!(
                "{account} {currency}: {tool} {:?}, ours {:?}",
                theirs.get(&key),
                ours.get(&key)
            )
        })
        .collect();
    panic!(
        "{tool}'s balances differ from ours on {} of {} accounts:\n{}",
        differences.len(),
        ours.len(),
        differences.join("\n")
    );
}
