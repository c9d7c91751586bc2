//! Ledger export and accounting reports on both backends: every format balances, the
//! accountants' own tools (`bean-check`, `hledger`) accept the files and agree with our trial
//! balance account by account, incremental pulls are exactly-once while entries are being
//! posted, patients appear only as pseudonyms, and bad input names its parameter.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Command;

struct Export {
    status: u16,
    cursor: Option<String>,
    body: String,
}

async fn export(client: &ApiClient, query: &str) -> Export {
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

/// A ledger with every kind of entry, in three currencies.
async fn build_ledger(app: &TestApp) {
    let c = &app.admin;
    let mgr = app.as_role("billing_manager");
    for (currency, total) in [("usd", 27000), ("eur", 12000), ("jpy", 5000)] {
        let patient = app.patient().await;
        let inv = app.open_invoice_for(&patient, currency, total).await;
        let id = id_of(&inv).unwrap();
        c.create(
            &format!("/v1/invoices/{id}/adjustments"),
            &json!({"kind": "insurance_adjustment", "amount": total / 10, "reason": "Contractual allowance"}),
        )
        .await
        .unwrap();
        let pay = app.pay(&inv, total / 2).await;
        mgr.create(
            "/v1/refunds",
            &json!({"payment": pay["id"], "amount": total / 20, "reason": "billing_error", "note": "lab fee"}),
        )
        .await
        .unwrap();
        // Overpay a second invoice (credit balance), void a third (reversals).
        let inv2 = app.open_invoice_for(&patient, currency, total / 3).await;
        app.pay(&inv2, total / 3 + 100).await;
        let inv3 = app.open_invoice_for(&patient, currency, 700).await;
        c.create(
            &format!("/v1/invoices/{}/void", id_of(&inv3).unwrap()),
            &json!({}),
        )
        .await
        .unwrap();
    }
}

/// Sum of debits and credits per currency from a CSV export (RFC 4180, parsed with the `csv`
/// crate), and the set of entry ids.
fn csv_totals(body: &str) -> (BTreeMap<String, (i128, i128)>, BTreeSet<String>) {
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
    for record in reader.records() {
        let record = record.unwrap();
        let cur = record[currency].to_owned();
        let exponent = if cur == "jpy" { 0 } else { 2 };
        let minor = |s: &str| -> i128 {
            if s.is_empty() {
                return 0;
            }
            let d: rust_decimal::Decimal = s.parse().unwrap();
            assert!(
                d.scale() <= exponent,
                "{s} has more decimals than {cur} allows"
            );
            (d * rust_decimal::Decimal::from(10i64.pow(exponent)))
                .try_into()
                .unwrap()
        };
        let t = totals.entry(cur.clone()).or_default();
        t.0 += minor(&record[debit]);
        t.1 += minor(&record[credit]);
        entries.insert(record[entry].to_owned());
    }
    (totals, entries)
}

fn jsonl_entries(body: &str) -> Vec<Value> {
    body.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .collect()
}

fn tool(name: &str) -> Option<std::path::PathBuf> {
    let candidates = [
        std::env::var_os("CAREBILL_TOOLS_BIN").map(|d| std::path::PathBuf::from(d).join(name)),
        Some(std::path::PathBuf::from("/var/tmp/carebill-venv/bin").join(name)),
        Some(std::path::PathBuf::from("/usr/bin").join(name)),
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

both_backends!(
    every_format_balances_and_the_accounting_tools_agree,
    |app: TestApp| async move {
        build_ledger(&app).await;
        let acct = app.as_role("accountant");
        let admin = &app.admin;

        // CSV: parsed back, debits equal credits per currency; every entry is there.
        let csv_export = export(admin, "format=csv").await;
        assert_eq!(csv_export.status, 200, "{}", csv_export.body);
        let (totals, csv_entries) = csv_totals(&csv_export.body);
        assert_eq!(totals.len(), 3, "{totals:?}");
        for (cur, (d, c)) in &totals {
            assert_eq!(d, c, "{cur} does not balance");
        }
        let entry_count = app.count("journal_entries").await;
        assert_eq!(csv_entries.len(), usize::try_from(entry_count).unwrap());

        // JSON Lines: every line parses and balances.
        let jsonl = export(admin, "format=jsonl").await;
        let lines = jsonl_entries(&jsonl.body);
        assert_eq!(lines.len(), csv_entries.len());
        for e in &lines {
            let mut sums: HashMap<String, i64> = HashMap::new();
            for p in e["postings"].as_array().unwrap() {
                *sums
                    .entry(p["currency"].as_str().unwrap().to_owned())
                    .or_default() += p["amount_minor"].as_i64().unwrap();
            }
            assert!(sums.values().all(|s| *s == 0), "{e}");
        }
        assert_eq!(jsonl.cursor, csv_export.cursor, "same head, same cursor");

        // Our balances per account, from the JSON export, keyed as the tools name accounts.
        let mut ours: BTreeMap<String, rust_decimal::Decimal> = BTreeMap::new();
        for e in &lines {
            for p in e["postings"].as_array().unwrap() {
                let amount: rust_decimal::Decimal = p["amount"].as_str().unwrap().parse().unwrap();
                *ours
                    .entry(p["ledger_account"].as_str().unwrap().to_owned())
                    .or_default() += amount;
            }
        }
        ours.retain(|_, v| !v.is_zero());
        assert!(ours.len() > 10, "{ours:?}");

        // The trial balance agrees with the export, chart account by chart account.
        let tb = acct.get("/v1/ledger/trial-balance").await.unwrap();
        assert_eq!(tb.status, 200, "{}", tb.body);
        for t in tb.body["totals"].as_array().unwrap() {
            assert_eq!(t["debit_minor"], t["credit_minor"], "{t}");
        }
        let mut rolled_up: BTreeMap<String, rust_decimal::Decimal> = BTreeMap::new();
        for (name, v) in &ours {
            let chart: Vec<&str> = name.split(':').take(3).collect();
            *rolled_up.entry(chart.join(":")).or_default() += *v;
        }
        rolled_up.retain(|_, v| !v.is_zero());
        let tb_lines: BTreeMap<String, rust_decimal::Decimal> = tb.body["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                let d: rust_decimal::Decimal = l["debit"].as_str().unwrap().parse().unwrap();
                let c: rust_decimal::Decimal = l["credit"].as_str().unwrap().parse().unwrap();
                (l["ledger_account"].as_str().unwrap().to_owned(), d - c)
            })
            .collect();
        assert_eq!(tb_lines, rolled_up);

        let dir = tempfile::tempdir().unwrap();
        let bean = export(admin, "format=beancount").await;
        assert_eq!(bean.status, 200);
        let bean_file = dir.path().join("ledger.beancount");
        std::fs::write(&bean_file, &bean.body).unwrap();
        if let Some(bean_check) = tool("bean-check") {
            let out = Command::new(&bean_check).arg(&bean_file).output().unwrap();
            assert!(
                out.status.success(),
                "bean-check refused the export: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            // Beancount's own balances, account by account.
            let python = bean_check.with_file_name("python3");
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/bean_balances.py");
            let out = Command::new(python)
                .arg(script)
                .arg(&bean_file)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let theirs: BTreeMap<String, BTreeMap<String, String>> =
                serde_json::from_slice(&out.stdout).unwrap();
            let theirs: BTreeMap<String, rust_decimal::Decimal> = theirs
                .into_iter()
                .flat_map(|(account, by_currency)| {
                    by_currency.into_values().map(move |v| {
                        (account.clone(), v.parse::<rust_decimal::Decimal>().unwrap())
                    })
                })
                .filter(|(_, v)| !v.is_zero())
                .collect();
            assert_eq!(theirs, ours, "Beancount's balances differ from ours");
        }

        let hl = export(admin, "format=hledger").await;
        assert_eq!(hl.status, 200);
        let hl_file = dir.path().join("ledger.journal");
        std::fs::write(&hl_file, &hl.body).unwrap();
        if let Some(hledger) = tool("hledger") {
            let check = Command::new(&hledger)
                .args(["check", "--strict", "-f"])
                .arg(&hl_file)
                .output()
                .unwrap();
            assert!(
                check.status.success(),
                "hledger check refused the export: {}",
                String::from_utf8_lossy(&check.stderr)
            );
            let bal = Command::new(&hledger)
                .args([
                    "balance",
                    "--flat",
                    "--no-total",
                    "--empty",
                    "-O",
                    "csv",
                    "-f",
                ])
                .arg(&hl_file)
                .output()
                .unwrap();
            assert!(
                bal.status.success(),
                "{}",
                String::from_utf8_lossy(&bal.stderr)
            );
            let mut theirs: BTreeMap<String, rust_decimal::Decimal> = BTreeMap::new();
            let mut reader = csv::Reader::from_reader(&bal.stdout[..]);
            for r in reader.records() {
                let r = r.unwrap();
                let number: String = r[1]
                    .chars()
                    .filter(|c| c.is_ascii_digit() || *c == '.' || *c == '-')
                    .collect();
                let v: rust_decimal::Decimal = number.parse().unwrap();
                if !v.is_zero() {
                    theirs.insert(r[0].to_owned(), v);
                }
            }
            assert_eq!(theirs, ours, "hledger's balances differ from ours");
        }
        app
    }
);

both_backends!(
    incremental_pulls_are_exactly_once_while_entries_are_posted,
    |app: TestApp| async move {
        // Goal: pull after pull with the returned cursor, while payments are being posted
        // concurrently: every entry exactly once, in ledger order.
        let inv = app.open_invoice("usd", 1_000_000).await;
        let first = export(&app.admin, "format=jsonl").await;
        let mut seen: Vec<String> = jsonl_entries(&first.body)
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect();
        let mut cursor = first.cursor.unwrap();
        let writer = {
            let admin = app.admin.clone();
            let inv = inv.clone();
            tokio::spawn(async move {
                for _ in 0..40 {
                    let body = json!({"invoice": inv["id"], "amount": 100, "currency": "usd", "payment_method": "pm_card_visa"});
                    admin.create("/v1/payments", &body).await.unwrap();
                }
            })
        };
        let mut pulls = 0;
        loop {
            let done = writer.is_finished();
            let next = export(&app.admin, &format!("format=jsonl&after_cursor={cursor}")).await;
            assert_eq!(next.status, 200, "{}", next.body);
            for e in jsonl_entries(&next.body) {
                seen.push(e["id"].as_str().unwrap().to_owned());
            }
            cursor = next.cursor.unwrap();
            pulls += 1;
            if done {
                break;
            }
        }
        writer.await.unwrap();
        let all: Vec<String> =
            sqlx::query_scalar("SELECT id FROM journal_entries ORDER BY ledger_seq")
                .fetch_all(&app.db.pool)
                .await
                .unwrap();
        assert_eq!(seen, all, "after {pulls} pulls");
        // Nothing new: an empty pull with the same cursor.
        let empty = export(&app.admin, &format!("format=csv&after_cursor={cursor}")).await;
        assert_eq!(
            empty.body.lines().count(),
            1,
            "only the header: {}",
            empty.body
        );
        assert_eq!(empty.cursor.as_deref(), Some(cursor.as_str()));
        app
    }
);

both_backends!(
    exports_name_patients_only_by_pseudonym,
    |app: TestApp| async move {
        let inv = app.open_invoice("usd", 5000).await;
        app.pay(&inv, 5000).await;
        let patient = inv["patient"].as_str().unwrap();
        for format in ["csv", "jsonl", "beancount", "hledger"] {
            let e = export(&app.admin, &format!("format={format}")).await;
            assert_eq!(e.status, 200);
            assert!(!e.body.contains(patient), "{format} names the patient id");
            assert!(
                !e.body.contains("Test Patient"),
                "{format} names the patient"
            );
            assert!(!e.body.contains("4242"), "{format} carries card digits");
            assert!(e.body.contains("ps_"), "{format} has no pseudonym");
        }
        // The same patient, the same pseudonym, pull after pull.
        let a = export(&app.admin, "format=jsonl").await.body;
        let b = export(&app.admin, "format=jsonl").await.body;
        assert_eq!(a, b);

        // Identified exports need the permission; the accountant does not have it.
        let accountant = app.as_role("accountant");
        let denied = export(&accountant, "format=csv&identified=true").await;
        assert_eq!(denied.status, 403, "{}", denied.body);
        let plain = export(&accountant, "format=csv").await;
        assert_eq!(plain.status, 200);
        let manager = app.as_role("billing_manager");
        let named = export(&manager, "format=csv&identified=true").await;
        assert_eq!(named.status, 200, "{}", named.body);
        assert!(named.body.contains("Test Patient"));
        assert!(named.body.contains("visa ••••4242"));
        // Every export is recorded.
        assert!(app.count("export_audit").await >= 8);
        app
    }
);

both_backends!(
    bad_export_input_names_the_parameter,
    |app: TestApp| async move {
        for (query, param) in [
            ("format=xlsx", "format"),
            ("", "format"),
            ("format=csv&from=2026-02-30", "from"),
            ("format=csv&to=yesterday", "to"),
            ("format=csv&from=2026-03-01&to=2026-02-01", "to"),
            ("format=csv&from=2020-01-01&to=2026-01-01", "to"),
            ("format=csv&after_cursor=12", "after_cursor"),
            ("format=csv&after_cursor=lc_OtherDeploy_5", "after_cursor"),
            ("format=csv&identified=yes", "identified"),
            ("format=csv&colour=blue", "colour"),
        ] {
            let e = export(&app.admin, query).await;
            assert_eq!(e.status, 400, "{query}: {}", e.body);
            let body: Value = serde_json::from_str(&e.body).unwrap();
            assert_eq!(body["error"]["param"], param, "{query}: {body}");
        }
        let exports = app.count("export_audit").await;
        assert_eq!(exports, 0, "a refused export was recorded as made");
        app
    }
);

both_backends!(
    trial_balance_statement_and_aging,
    |app: TestApp| async move {
        let acct = app.as_role("accountant");
        let inv = app.open_invoice("usd", 10000).await;
        app.pay(&inv, 4000).await;
        let tb = acct.get("/v1/ledger/trial-balance").await.unwrap().body;
        let line = |code: &str| {
            tb["lines"]
                .as_array()
                .unwrap()
                .iter()
                .find(|l| l["code"] == code)
                .cloned()
                .unwrap()
        };
        assert_eq!(line("1200")["debit_minor"], 6000, "{tb}");
        assert_eq!(line("1010")["debit_minor"], 4000, "{tb}");
        assert_eq!(
            tb["totals"][0]["debit_minor"],
            tb["totals"][0]["credit_minor"]
        );
        // Before anything was posted: nothing.
        let before = acct
            .get("/v1/ledger/trial-balance?as_of=2000-01-01")
            .await
            .unwrap()
            .body;
        assert_eq!(before["lines"].as_array().unwrap().len(), 0, "{before}");

        let patient = inv["patient"].as_str().unwrap();
        let today = chrono::Utc::now().date_naive();
        let st = acct
            .get(&format!(
                "/v1/ledger/accounts/acct_1200_usd_{patient}/statement?from={today}&to={today}"
            ))
            .await
            .unwrap();
        assert_eq!(st.status, 200, "{}", st.body);
        assert_eq!(st.body["opening_balance_minor"], 0);
        assert_eq!(st.body["closing_balance_minor"], 6000);
        assert_eq!(st.body["lines"].as_array().unwrap().len(), 2);

        // Due 2030-01-31: current today, 120+ days late in 2030-07.
        let now = acct.get("/v1/reports/ar-aging").await.unwrap().body;
        let row = &now["rows"][0];
        assert_eq!(row["current_minor"], 6000, "{now}");
        assert!(row["patient"].as_str().unwrap().starts_with("ps_"));
        let late = acct
            .get("/v1/reports/ar-aging?as_of=2030-07-01")
            .await
            .unwrap()
            .body;
        assert_eq!(late["rows"][0]["days_over_120_minor"], 6000, "{late}");
        let bad = acct
            .get("/v1/ledger/trial-balance?as_of=2026-13-01")
            .await
            .unwrap();
        assert_eq!(bad.status, 400);
        assert_eq!(bad.body["error"]["param"], "as_of");
        app
    }
);

both_backends!(
    the_cli_export_is_the_api_export,
    |app: TestApp| async move {
        // Goal: `carebill export` writes what the API streams, and resumes from its cursor.
        build_ledger(&app).await;
        let dir = tempfile::tempdir().unwrap();
        let url = app.state().config.database_url.clone();
        let cli = |args: &[&str]| {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_carebill"))
                .arg("export")
                .args(args)
                .env("DATABASE_URL", &url)
                .env_remove("CAREBILL_CONFIG")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stderr).into_owned()
        };
        for format in ["csv", "jsonl", "beancount", "hledger"] {
            let file = dir.path().join(format!("ledger.{format}"));
            let stderr = cli(&["--format", format, "--out", file.to_str().unwrap()]);
            let api = export(&app.admin, &format!("format={format}")).await;
            assert_eq!(
                std::fs::read_to_string(&file).unwrap(),
                api.body,
                "{format}"
            );
            assert!(stderr.contains(api.cursor.as_deref().unwrap()), "{stderr}");
        }
        let first = export(&app.admin, "format=jsonl").await;
        let inv = app.open_invoice("usd", 900).await;
        app.pay(&inv, 900).await;
        let file = dir.path().join("since.jsonl");
        cli(&[
            "--format",
            "jsonl",
            "--after-cursor",
            first.cursor.as_deref().unwrap(),
            "--out",
            file.to_str().unwrap(),
        ]);
        let since = std::fs::read_to_string(&file).unwrap();
        assert_eq!(
            since.lines().count(),
            2,
            "the finalization and the payment: {since}"
        );
        // Bad input on the command line names the parameter and exits non-zero.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_carebill"))
            .args(["export", "--format", "xlsx"])
            .env("DATABASE_URL", &url)
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("format"));
        app
    }
);
