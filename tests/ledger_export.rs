//! Ledger export and accounting reports on both backends: every format balances, the
//! accountants' own tools (`bean-check`, `hledger`) accept the files and agree with our trial
//! balance account by account, incremental pulls are exactly-once while entries are being
//! posted, patients appear only as pseudonyms, and bad input names its parameter.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
#[path = "common/export_check.rs"]
mod export_check;
use export_check::{export, exports_agree_with_the_accounting_tools, jsonl_entries};

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

both_backends!(
    every_format_balances_and_the_accounting_tools_agree,
    |app: TestApp| async move {
        build_ledger(&app).await;
        let summary = exports_agree_with_the_accounting_tools(&app).await;
        let currencies: Vec<&str> = summary.currencies.iter().map(String::as_str).collect();
        assert_eq!(currencies, ["eur", "jpy", "usd"], "{summary:?}");
        assert!(summary.accounts > 10, "{summary:?}");
        for kind in [
            "invoice_finalized",
            "invoice_adjustment",
            "payment_captured",
            "refund_succeeded",
            "reversal",
        ] {
            assert!(summary.kinds.contains_key(kind), "no {kind}: {summary:?}");
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
        let keyring = app.keyring();
        let cli = |args: &[&str]| {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_carebill"))
                .arg("export")
                .args(args)
                .env("DATABASE_URL", &url)
                .env("CAREBILL_KEYRING", &keyring)
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
            .env("CAREBILL_KEYRING", &keyring)
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("format"));
        app
    }
);
