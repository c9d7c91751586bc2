//! The billing office's day, end to end over HTTP on both backends: patients, invoices,
//! adjustments, payments (partial, over, declined), refunds, voids, statements, the ledger.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;

both_backends!(
    invoice_paid_in_part_then_refunded_keeps_ledger_balanced,
    |app: TestApp| async move {
        // Goal: a patient's bill moves open -> partially_paid -> paid -> partially_paid, with every
        // amount and the ledger right at each step.
        let c = &app.admin;
        let patient = app.patient().await;
        let draft = c
        .create("/v1/invoices", &json!({"patient": patient, "currency": "usd", "due_date": "2030-01-31", "lines": [
            {"service_date": "2026-01-15", "code": "99213", "description": "Office visit", "quantity": 1, "unit_amount": 15000},
            {"service_date": "2026-01-15", "code": "80053", "description": "Metabolic panel", "quantity": 2, "unit_amount": 2275}]}))
        .await
        .unwrap();
        assert_eq!(draft["status"], "draft");
        assert_eq!(draft["total"], 19550);
        assert_eq!(draft["amount_due"], 19550);
        assert_eq!(draft["lines"].as_array().unwrap().len(), 2);
        let inv = id_of(&draft).unwrap();

        // A payment on a draft is refused.
        let r = c.post("/v1/payments", &json!({"invoice": inv, "amount": 100, "currency": "usd", "payment_method": "pm_card_visa"}), Some(&new_key())).await.unwrap();
        assert_eq!(r.status, 400, "{}", r.body);
        assert_eq!(r.body["error"]["code"], "invoice_not_payable");

        let open = c
            .create(&format!("/v1/invoices/{inv}/finalize"), &json!({}))
            .await
            .unwrap();
        assert_eq!(open["status"], "open");
        assert!(open["finalize_entry"].as_str().unwrap().starts_with("je_"));

        let adj = c.create(&format!("/v1/invoices/{inv}/adjustments"), &json!({"kind": "insurance_adjustment", "amount": 4550, "reason": "Contractual allowance"})).await.unwrap();
        assert!(adj["id"].as_str().unwrap().starts_with("adj_"));
        assert!(adj["journal_entry"].as_str().unwrap().starts_with("je_"));

        let pay1 = app.pay(&open, 10000).await;
        assert_eq!(pay1["amount_applied"], 10000);
        assert_eq!(pay1["card"]["last4"], "4242");
        let inv_now = c.get(&format!("/v1/invoices/{inv}")).await.unwrap().body;
        assert_eq!(inv_now["status"], "partially_paid");
        assert_eq!(inv_now["amount_due"], 19550 - 4550 - 10000);

        // Overpay: 5000 due, 7000 paid -> 2000 to the patient's credit balance.
        let pay2 = app.pay(&open, 7000).await;
        assert_eq!(pay2["amount_applied"], 5000);
        assert_eq!(pay2["amount_credited"], 2000);
        let inv_now = c.get(&format!("/v1/invoices/{inv}")).await.unwrap().body;
        assert_eq!(inv_now["status"], "paid");
        assert_eq!(inv_now["amount_due"], 0);
        let statement = c
            .get(&format!("/v1/patients/{patient}/statement"))
            .await
            .unwrap()
            .body;
        assert_eq!(statement["balance_due"], 0);
        assert_eq!(statement["credit_balance"], 2000);

        // Refund 3000 of the second payment: 2000 comes back from credit, 1000 re-opens the bill.
        let mgr = app.as_role("billing_manager");
        let re = mgr.create("/v1/refunds", &json!({"payment": pay2["id"], "amount": 3000, "reason": "overpayment", "note": "Patient asked"})).await.unwrap();
        assert_eq!(re["status"], "succeeded");
        assert_eq!(re["amount_from_credit"], 2000);
        assert_eq!(re["amount_from_invoice"], 1000);
        let inv_now = c.get(&format!("/v1/invoices/{inv}")).await.unwrap().body;
        assert_eq!(inv_now["status"], "partially_paid");
        assert_eq!(inv_now["amount_due"], 1000);
        assert_eq!(inv_now["amount_refunded"], 1000);
        let statement = c
            .get(&format!("/v1/patients/{patient}/statement"))
            .await
            .unwrap()
            .body;
        assert_eq!(statement["balance_due"], 1000);
        assert_eq!(statement["credit_balance"], 0);

        // Refund the rest by default amount; then nothing is left.
        let re2 = mgr
            .create(
                "/v1/refunds",
                &json!({"payment": pay2["id"], "reason": "requested_by_patient"}),
            )
            .await
            .unwrap();
        assert_eq!(re2["amount"], 4000);
        let r = mgr
            .post(
                "/v1/refunds",
                &json!({"payment": pay2["id"], "amount": 1, "reason": "duplicate"}),
                Some(&new_key()),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 400);
        assert_eq!(r.body["error"]["code"], "amount_exceeds_refundable");
        assert_eq!(r.body["error"]["param"], "amount");
        let p2 = c
            .get(&format!("/v1/payments/{}", pay2["id"].as_str().unwrap()))
            .await
            .unwrap()
            .body;
        assert_eq!(p2["amount_refunded"], 7000);
        assert_eq!(p2["amount_refundable"], 0);

        // The receivable equals what the statement says is due.
        let acct = app
            .as_role("accountant")
            .get(&format!("/v1/ledger/accounts/acct_1200_usd_{patient}"))
            .await
            .unwrap();
        assert_eq!(acct.status, 200, "{}", acct.body);
        assert_eq!(acct.body["balance"], 5000);
        app.assert_ledger_sound().await;
        app
    }
);

both_backends!(
    declined_cards_answer_402_and_record_the_failed_payment,
    |app: TestApp| async move {
        // Goal: each Stripe test decline gives a card_error with its decline code, a failed payment
        // on record, and no ledger entry.
        let inv = app.open_invoice("usd", 5000).await;
        for (pm, code) in [
            ("pm_card_visa_chargeDeclined", "card_declined"),
            (
                "pm_card_visa_chargeDeclinedInsufficientFunds",
                "insufficient_funds",
            ),
            ("pm_card_chargeDeclinedExpiredCard", "expired_card"),
        ] {
            let entries_before = app.count("journal_entries").await;
            let r = app
            .admin
            .post("/v1/payments", &json!({"invoice": inv["id"], "amount": 5000, "currency": "usd", "payment_method": pm}), Some(&new_key()))
            .await
            .unwrap();
            assert_eq!(r.status, 402, "{}", r.body);
            assert_eq!(r.body["error"]["type"], "card_error");
            assert_eq!(r.body["error"]["code"], code);
            assert!(r.body["error"]["request_id"]
                .as_str()
                .unwrap()
                .starts_with("req_"));
            let pay_id = r.body["error"]["payment"]["id"]
                .as_str()
                .unwrap()
                .to_owned();
            let p = app
                .admin
                .get(&format!("/v1/payments/{pay_id}"))
                .await
                .unwrap()
                .body;
            assert_eq!(p["status"], "failed");
            assert_eq!(p["failure_code"], code);
            assert_eq!(app.count("journal_entries").await, entries_before);
        }
        let inv_now = app
            .admin
            .get(&format!("/v1/invoices/{}", inv["id"].as_str().unwrap()))
            .await
            .unwrap()
            .body;
        assert_eq!(inv_now["amount_due"], 5000);
        // Unknown payment method: a 400 naming it.
        let r = app
        .admin
        .post("/v1/payments", &json!({"invoice": inv["id"], "amount": 5000, "currency": "usd", "payment_method": "pm_card_nonexistent"}), Some(&new_key()))
        .await
        .unwrap();
        assert_eq!(r.status, 400);
        assert_eq!(r.body["error"]["param"], "payment_method");
        // Mastercard succeeds.
        let r = app
        .admin
        .post("/v1/payments", &json!({"invoice": inv["id"], "amount": 5000, "currency": "usd", "payment_method": "pm_card_mastercard"}), Some(&new_key()))
        .await
        .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body["card"]["brand"], "mastercard");
        app.assert_ledger_sound().await;
        app
    }
);

both_backends!(
    void_reverses_finalize_and_adjustments,
    |app: TestApp| async move {
        // Goal: voiding posts reversing entries that point at the originals and zero the receivable;
        // an invoice with payments cannot be voided.
        let c = &app.admin;
        let inv = app.open_invoice("eur", 12000).await;
        let id = id_of(&inv).unwrap();
        c.create(
            &format!("/v1/invoices/{id}/adjustments"),
            &json!({"kind": "discount", "amount": 2000, "reason": "Prompt-pay discount"}),
        )
        .await
        .unwrap();
        let void = c
            .create(&format!("/v1/invoices/{id}/void"), &json!({}))
            .await
            .unwrap();
        assert_eq!(void["status"], "void");
        assert_eq!(void["amount_due"], 0);
        let acct = c
            .get(&format!(
                "/v1/ledger/accounts/acct_1200_eur_{}",
                inv["patient"].as_str().unwrap()
            ))
            .await
            .unwrap()
            .body;
        assert_eq!(acct["balance"], 0);
        let entries = c
            .get(&format!(
                "/v1/ledger/entries?account=acct_1200_eur_{}&limit=100",
                inv["patient"].as_str().unwrap()
            ))
            .await
            .unwrap()
            .body;
        let data = entries["data"].as_array().unwrap();
        assert_eq!(
            data.len(),
            4,
            "finalize, adjustment and their two reversals"
        );
        assert_eq!(data.iter().filter(|e| e["kind"] == "reversal").count(), 2);
        for e in data.iter().filter(|e| e["kind"] == "reversal") {
            assert!(e["reverses"].as_str().unwrap().starts_with("je_"));
        }
        let r = c
            .post(&format!("/v1/invoices/{id}/void"), &json!({}), None)
            .await
            .unwrap();
        assert_eq!(r.body["error"]["code"], "invoice_already_void");

        let paid = app.open_invoice("eur", 3000).await;
        app.pay(&paid, 1000).await;
        let r = c
            .post(
                &format!("/v1/invoices/{}/void", paid["id"].as_str().unwrap()),
                &json!({}),
                None,
            )
            .await
            .unwrap();
        assert_eq!(r.status, 400);
        assert_eq!(r.body["error"]["code"], "invoice_has_payments");

        // A draft voids without touching the ledger.
        let patient = app.patient().await;
        let draft = app.draft_invoice_for(&patient, "eur", 500).await;
        let before = app.count("journal_entries").await;
        let v = c
            .create(
                &format!("/v1/invoices/{}/void", draft["id"].as_str().unwrap()),
                &json!({}),
            )
            .await
            .unwrap();
        assert_eq!(v["status"], "void");
        assert_eq!(app.count("journal_entries").await, before);
        app.assert_ledger_sound().await;
        app
    }
);

both_backends!(
    payment_on_account_and_zero_decimal_currencies,
    |app: TestApp| async move {
        // Goal: a payment with only a patient goes wholly to credit; JPY and KWD amounts are whole
        // minor units and show with their own exponents.
        let patient = app.patient().await;
        let p = app
        .admin
        .create("/v1/payments", &json!({"patient": patient, "amount": 5000, "currency": "jpy", "payment_method": "pm_card_visa"}))
        .await
        .unwrap();
        assert_eq!(p["amount_credited"], 5000);
        let acct = app
            .admin
            .get(&format!("/v1/ledger/accounts/acct_2100_jpy_{patient}"))
            .await
            .unwrap()
            .body;
        assert_eq!(acct["balance"], -5000);
        assert_eq!(acct["balance_decimal"], "-5000");
        let kwd = app.open_invoice("kwd", 12345).await;
        app.pay(&kwd, 12345).await;
        let clearing = app
            .admin
            .get("/v1/ledger/accounts/acct_1010_kwd")
            .await
            .unwrap()
            .body;
        assert_eq!(clearing["balance"], 12345);
        assert_eq!(clearing["balance_decimal"], "12.345");
        app.assert_ledger_sound().await;
        app
    }
);

both_backends!(
    point_in_time_balance_reads_the_running_balance,
    |app: TestApp| async move {
        // Goal: GET /v1/ledger/accounts/{id}?as_of= returns the balance as it was at that moment.
        let inv = app.open_invoice("gbp", 10000).await;
        let patient = inv["patient"].as_str().unwrap().to_owned();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let between = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        app.pay(&inv, 4000).await;
        let acct = format!("/v1/ledger/accounts/acct_1200_gbp_{patient}");
        let now = app.admin.get(&acct).await.unwrap().body;
        assert_eq!(now["balance"], 6000);
        let then = app
            .admin
            .get(&format!("{acct}?as_of={}", between.replace('+', "%2B")))
            .await
            .unwrap();
        assert_eq!(then.status, 200, "{}", then.body);
        assert_eq!(then.body["balance"], 10000);
        assert_eq!(then.body["posting_count"], 1);
        let before_all = app
            .admin
            .get(&format!("{acct}?as_of=2000-01-01T00:00:00Z"))
            .await
            .unwrap()
            .body;
        assert_eq!(before_all["balance"], 0);
        let bad = app
            .admin
            .get(&format!("{acct}?as_of=yesterday"))
            .await
            .unwrap();
        assert_eq!(bad.status, 400);
        assert_eq!(bad.body["error"]["param"], "as_of");
        app
    }
);

both_backends!(roles_and_keys_are_enforced, |app: TestApp| async move {
    // Goal: no key is 401; a clerk cannot refund or read the ledger; an accountant cannot pay.
    let anon = https_client()
        .get(format!("{}/v1/patients", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status(), 401);
    let bogus = app
        .admin
        .with_key("cbk_notarealkey")
        .get("/v1/patients")
        .await
        .unwrap();
    assert_eq!(bogus.status, 401);
    assert_eq!(bogus.body["error"]["type"], "authentication_error");
    let inv = app.open_invoice("usd", 1000).await;
    let pay = app.pay(&inv, 1000).await;
    let clerk = app.as_role("billing_clerk");
    let r = clerk
        .post(
            "/v1/refunds",
            &json!({"payment": pay["id"], "reason": "duplicate"}),
            Some(&new_key()),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(r.body["error"]["type"], "permission_error");
    assert_eq!(clerk.get("/v1/ledger/accounts").await.unwrap().status, 403);
    let accountant = app.as_role("accountant");
    assert_eq!(
        accountant.get("/v1/ledger/entries").await.unwrap().status,
        200
    );
    let r = accountant.post("/v1/payments", &json!({"invoice": inv["id"], "amount": 1, "currency": "usd", "payment_method": "pm_card_visa"}), Some(&new_key())).await.unwrap();
    assert_eq!(r.status, 403);
    app
});

both_backends!(lists_paginate_with_cursors, |app: TestApp| async move {
    // Goal: limit/starting_after walk every patient exactly once, newest first.
    let mut created = Vec::new();
    for _ in 0..7 {
        created.push(app.patient().await);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let url = match &cursor {
            Some(c) => format!("/v1/patients?limit=3&starting_after={c}"),
            None => "/v1/patients?limit=3".to_owned(),
        };
        let page = app.admin.get(&url).await.unwrap().body;
        assert_eq!(page["object"], "list");
        let data = page["data"].as_array().unwrap();
        seen.extend(data.iter().map(|p| p["id"].as_str().unwrap().to_owned()));
        if !page["has_more"].as_bool().unwrap() {
            break;
        }
        cursor = data.last().map(|p| p["id"].as_str().unwrap().to_owned());
    }
    created.reverse();
    assert_eq!(seen, created);
    let r = app.admin.get("/v1/patients?limit=0").await.unwrap();
    assert_eq!(r.body["error"]["param"], "limit");
    let r = app.admin.get("/v1/patients?limit=101").await.unwrap();
    assert_eq!(r.status, 400);
    app
});

both_backends!(
    service_documents_and_reports_health,
    |app: TestApp| async move {
        // Goal: /healthz, /readyz and the generated OpenAPI document answer without a key.
        let h = https_client()
            .get(format!("{}/healthz", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(h.status(), 200);
        let r: Value = https_client()
            .get(format!("{}/readyz", app.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["status"], "ready");
        let doc: Value = https_client()
            .get(format!("{}/v1/openapi.json", app.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        for path in [
            "/v1/patients",
            "/v1/invoices/{id}/finalize",
            "/v1/payments",
            "/v1/refunds",
            "/v1/ledger/accounts/{id}",
            "/v1/ledger/entries",
        ] {
            assert!(doc["paths"][path].is_object(), "missing {path} in OpenAPI");
        }
        let r = app.admin.get("/v1/nope").await.unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.body["error"]["code"], "route_not_found");
        app
    }
);
