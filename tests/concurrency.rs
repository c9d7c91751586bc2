//! Races: concurrent partial refunds of one payment and concurrent payments of one invoice,
//! on both backends. No update is lost, no refund exceeds what was captured.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;

both_backends!(
    fifty_concurrent_partial_refunds_never_exceed_the_payment,
    |app: TestApp| async move {
        // Goal: 50 refunds of 300 fired at once at a 10000 payment: exactly 33 fit and succeed, the
        // other 17 are refused with amount_exceeds_refundable, and 9900 is refunded in total.
        let inv = app.open_invoice("usd", 10000).await;
        let pay = app.pay(&inv, 10000).await;
        let mgr = app.as_role("billing_manager");
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (mgr, pay_id) = (mgr.clone(), pay["id"].clone());
            tasks.push(tokio::spawn(async move {
                mgr.post(
                    "/v1/refunds",
                    &json!({"payment": pay_id, "amount": 300, "reason": "requested_by_patient"}),
                    Some(&new_key()),
                )
                .await
                .unwrap()
            }));
        }
        let (mut ok, mut refused) = (0, 0);
        for t in tasks {
            let r = t.await.unwrap();
            match r.status {
                200 => {
                    assert_eq!(r.body["status"], "succeeded");
                    ok += 1;
                }
                400 => {
                    assert_eq!(
                        r.body["error"]["code"], "amount_exceeds_refundable",
                        "{}",
                        r.body
                    );
                    refused += 1;
                }
                other => panic!("unexpected {other}: {}", r.body),
            }
        }
        assert_eq!((ok, refused), (33, 17));
        let p = app
            .admin
            .get(&format!("/v1/payments/{}", pay["id"].as_str().unwrap()))
            .await
            .unwrap()
            .body;
        assert_eq!(p["amount_refunded"], 9900);
        assert_eq!(p["amount_refundable"], 100);
        let inv_now = app
            .admin
            .get(&format!("/v1/invoices/{}", inv["id"].as_str().unwrap()))
            .await
            .unwrap()
            .body;
        assert_eq!(inv_now["amount_due"], 9900);
        assert_eq!(
            app.count("refunds").await,
            33,
            "refused refunds leave no row"
        );
        app.assert_ledger_sound().await;
        app
    }
);

both_backends!(
    concurrent_payments_of_one_invoice_lose_no_update,
    |app: TestApp| async move {
        // Goal: 20 payments of 1000 at once on a 10000 invoice: 10000 is applied, the remaining
        // 10000 becomes credit, and every account balance equals the sum of its postings.
        let inv = app.open_invoice("eur", 10000).await;
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (c, id) = (app.admin.clone(), inv["id"].clone());
            tasks.push(tokio::spawn(async move {
            c.post("/v1/payments", &json!({"invoice": id, "amount": 1000, "currency": "eur", "payment_method": "pm_card_visa"}), Some(&new_key()))
                .await
                .unwrap()
        }));
        }
        let mut applied = 0;
        let mut credited = 0;
        let mut refused = 0;
        for t in tasks {
            let r = t.await.unwrap();
            match r.status {
                200 => {
                    applied += r.body["amount_applied"].as_i64().unwrap();
                    credited += r.body["amount_credited"].as_i64().unwrap();
                }
                // Arrived after the invoice was already paid: refused before any charge.
                400 => {
                    assert_eq!(r.body["error"]["code"], "invoice_not_payable");
                    refused += 1;
                }
                other => panic!("unexpected {other}: {}", r.body),
            }
        }
        assert_eq!(applied, 10000);
        assert_eq!(applied + credited + refused * 1000, 20000);
        let patient = inv["patient"].as_str().unwrap();
        let credit = app
            .admin
            .get(&format!("/v1/ledger/accounts/acct_2100_eur_{patient}"))
            .await
            .unwrap()
            .body;
        assert_eq!(credit["balance"], -credited);
        app.assert_ledger_sound().await;
        app
    }
);
