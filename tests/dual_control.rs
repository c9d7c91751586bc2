//! Dual control: a refund or write-off above the threshold (500.00 in its own currency by
//! default), or a refund to another payment method, waits in `pending_approval` and moves no
//! money until a *second* billing manager approves it; the requester never can. An approved
//! refund moves money exactly once, however many approvals race for it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use carebill::auth::{create_api_key, Role};
use common::*;

/// A billing manager of its own (its own API key, so its own `actor_id`), and that id.
async fn manager(app: &TestApp) -> (ApiClient, String) {
    let key = create_api_key(&app.db, Role::BillingManager).await.unwrap();
    (app.admin.with_key(&key.secret), key.id.as_str().to_owned())
}

/// One scalar of a query with a single text parameter.
async fn count_where(app: &TestApp, sql: &str, param: &str) -> i64 {
    let row = sqlx::query(sql)
        .bind(param.to_owned())
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    sqlx::Row::try_get(&row, "n").unwrap()
}

async fn entries_of_refund(app: &TestApp, refund: &str) -> i64 {
    count_where(
        app,
        "SELECT COUNT(*) AS n FROM journal_entries WHERE refund_id = $1",
        refund,
    )
    .await
}

async fn entries_of_adjustment(app: &TestApp, adjustment: &str) -> i64 {
    count_where(
        app,
        "SELECT COUNT(*) AS n FROM journal_entries WHERE adjustment_id = $1",
        adjustment,
    )
    .await
}

async fn get(c: &ApiClient, path: &str) -> Value {
    let r = c.get(path).await.unwrap();
    assert_eq!(r.status, 200, "GET {path}: {}", r.body);
    r.body
}

fn refund_body(payment: &Value, amount: i64) -> Value {
    json!({"payment": payment["id"], "amount": amount, "reason": "billing_error"})
}

fn assert_error(r: &carebill::client::Reply, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.body["error"]["code"], code, "{}", r.body);
}

both_backends!(
    refunds_at_or_below_the_threshold_succeed_at_once,
    |app: TestApp| async move {
        // Goal: a refund of at most 500.00 in its own currency succeeds at once, with nobody's
        // approval; one minor unit more waits — 500.00 USD, 500 JPY and 500.000 KWD alike.
        let (a, a_id) = manager(&app).await;
        for (currency, at_threshold) in [("usd", 50_000), ("jpy", 500), ("kwd", 500_000)] {
            let inv = app.open_invoice(currency, at_threshold * 3).await;
            let pay = app.pay(&inv, at_threshold * 3).await;
            let re = a
                .create("/v1/refunds", &refund_body(&pay, at_threshold))
                .await
                .unwrap();
            assert_eq!(re["status"], "succeeded", "{currency}: {re}");
            assert_eq!(re["requested_by"], a_id.as_str());
            assert_eq!(re["approval_reasons"], json!([]));
            assert_eq!(re["approved_by"], Value::Null);
            assert!(re["journal_entry"].is_string());
            let held = a
                .create("/v1/refunds", &refund_body(&pay, at_threshold + 1))
                .await
                .unwrap();
            assert_eq!(held["status"], "pending_approval", "{currency}: {held}");
            assert_eq!(held["approval_reasons"], json!(["amount_above_threshold"]));
        }
        app.assert_ledger_sound().await;
        app
    }
);

both_backends!(
    a_refund_above_the_threshold_needs_a_second_manager,
    |app: TestApp| async move {
        // Goal: a refund above the threshold is pending_approval and moves no money (no ledger
        // entry, no processor call, the amount reserved on the payment); its requester cannot
        // approve it (403), neither can a clerk; a second manager can, and then the money moves
        // once, with both names on the refund.
        let (a, a_id) = manager(&app).await;
        let (b, b_id) = manager(&app).await;
        let inv = app.open_invoice("usd", 200_000).await;
        let pay = app.pay(&inv, 200_000).await;
        let entries = app.count("journal_entries").await;

        let re = a
            .create("/v1/refunds", &refund_body(&pay, 75_000))
            .await
            .unwrap();
        let id = id_of(&re).unwrap();
        assert_eq!(re["status"], "pending_approval", "{re}");
        assert_eq!(re["requested_by"], a_id.as_str());
        assert_eq!(re["approved_by"], Value::Null);
        assert_eq!(re["journal_entry"], Value::Null);
        assert_eq!(
            app.count("journal_entries").await,
            entries,
            "nothing posted"
        );
        assert_eq!(app.count("simulator_refunds").await, 0, "nothing sent");
        let p = get(&a, &format!("/v1/payments/{}", pay["id"].as_str().unwrap())).await;
        assert_eq!(p["amount_refunded"], 0);
        assert_eq!(
            p["amount_refundable"],
            200_000 - 75_000,
            "reserved at request"
        );
        let i = get(&a, &format!("/v1/invoices/{}", inv["id"].as_str().unwrap())).await;
        assert_eq!(
            (i["amount_refunded"].clone(), i["amount_due"].clone()),
            (json!(0), json!(0))
        );
        let waiting = get(&a, "/v1/refunds?status=pending_approval").await;
        assert_eq!(waiting["data"].as_array().unwrap().len(), 1);
        assert_eq!(waiting["data"][0]["id"], id.as_str());

        let approve = format!("/v1/refunds/{id}/approve");
        // The requester: 403, however often, and nothing changes.
        for _ in 0..2 {
            let r = a
                .post(&approve, &json!({}), Some(&new_key()))
                .await
                .unwrap();
            assert_error(&r, 403, "approval_requires_second_person");
        }
        // A clerk may not approve refunds at all; an approval moves money, so it needs a key.
        let clerk = app.as_role("billing_clerk");
        let r = clerk
            .post(&approve, &json!({}), Some(&new_key()))
            .await
            .unwrap();
        assert_error(&r, 403, "permission_denied");
        let r = b.post(&approve, &json!({}), None).await.unwrap();
        assert_error(&r, 400, "idempotency_key_missing");
        assert_eq!(
            get(&a, &format!("/v1/refunds/{id}")).await["status"],
            "pending_approval"
        );
        assert_eq!(app.count("journal_entries").await, entries);
        assert_eq!(app.count("simulator_refunds").await, 0);

        // The second manager: the refund goes through, once.
        let key = new_key();
        let r = b.post(&approve, &json!({}), Some(&key)).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["status"], "succeeded");
        assert_eq!(r.body["requested_by"], a_id.as_str());
        assert_eq!(r.body["approved_by"], b_id.as_str());
        assert!(r.body["approved_at"].is_string());
        assert!(r.body["journal_entry"].is_string());
        assert_eq!(entries_of_refund(&app, &id).await, 1);
        assert_eq!(app.count("simulator_refunds").await, 1);
        // Both names are in the security event log, with the decision.
        let logged: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT kind, actor, detail FROM security_events WHERE subject = $1 ORDER BY seq",
        )
        .bind(id.as_str())
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
        assert_eq!(logged.len(), 2, "{logged:?}");
        assert_eq!(logged[0].0, "approval_requested");
        assert_eq!(logged[0].1.as_deref(), Some(a_id.as_str()));
        assert_eq!(logged[1].0, "approval_granted");
        assert_eq!(logged[1].1.as_deref(), Some(b_id.as_str()));
        assert_eq!(
            logged[1].2.as_deref(),
            Some(format!("requested_by {a_id}").as_str())
        );
        let p = get(&a, &format!("/v1/payments/{}", pay["id"].as_str().unwrap())).await;
        assert_eq!(p["amount_refunded"], 75_000);
        assert_eq!(p["amount_refundable"], 200_000 - 75_000);
        let i = get(&a, &format!("/v1/invoices/{}", inv["id"].as_str().unwrap())).await;
        assert_eq!(i["amount_refunded"], 75_000);
        assert_eq!(i["amount_due"], 75_000);

        // Again: the same key replays; a new key answers with the refund; nothing moves twice.
        let again = b.post(&approve, &json!({}), Some(&key)).await.unwrap();
        assert!(again.replayed);
        assert_eq!(again.body, r.body);
        let later = b
            .post(&approve, &json!({}), Some(&new_key()))
            .await
            .unwrap();
        assert_eq!(later.status, 200, "{}", later.body);
        assert_eq!(later.body["status"], "succeeded");
        assert_eq!(later.body["approved_by"], b_id.as_str());
        // Nor can the requester approve it after the fact.
        let r = a
            .post(&approve, &json!({}), Some(&new_key()))
            .await
            .unwrap();
        assert_error(&r, 403, "approval_requires_second_person");
        assert_eq!(entries_of_refund(&app, &id).await, 1);
        assert_eq!(app.count("simulator_refunds").await, 1);
        let waiting = get(&a, "/v1/refunds?status=pending_approval").await;
        assert_eq!(waiting["data"], json!([]));

        // A refund that never needed approval cannot be "approved".
        let small = a
            .create("/v1/refunds", &refund_body(&pay, 100))
            .await
            .unwrap();
        let r = b
            .post(
                &format!("/v1/refunds/{}/approve", small["id"].as_str().unwrap()),
                &json!({}),
                Some(&new_key()),
            )
            .await
            .unwrap();
        assert_error(&r, 400, "refund_not_pending_approval");
        let r = b
            .post(
                "/v1/refunds/re_doesnotexist0000000000/approve",
                &json!({}),
                Some(&new_key()),
            )
            .await
            .unwrap();
        assert_error(&r, 404, "resource_missing");

        // The database refuses a self-approval even if the code did not.
        let refused = sqlx::query(
            "UPDATE refunds SET approved_by = requested_by, approved_at_us = 1 WHERE id = $1",
        )
        .bind(id.as_str())
        .execute(&app.db.pool)
        .await;
        assert!(refused.is_err(), "CHECK approved_by <> requested_by");
        app.assert_ledger_sound().await;
        app
    }
);

both_backends!(
    held_refunds_reserve_so_together_they_never_exceed_the_payment,
    |app: TestApp| async move {
        // Goal: a held refund reserves its amount at request, so two held requests cannot
        // together promise more than the payment; rejecting one releases its reservation.
        let (a, _) = manager(&app).await;
        let (b, b_id) = manager(&app).await;
        let inv = app.open_invoice("eur", 100_000).await;
        let pay = app.pay(&inv, 100_000).await;
        let first = a
            .create("/v1/refunds", &refund_body(&pay, 60_000))
            .await
            .unwrap();
        assert_eq!(first["status"], "pending_approval");
        let r = a
            .post("/v1/refunds", &refund_body(&pay, 60_000), Some(&new_key()))
            .await
            .unwrap();
        assert_error(&r, 400, "amount_exceeds_refundable");
        let id = id_of(&first).unwrap();

        // Rejecting needs a reason; then the amount is refundable again and nothing moved.
        let reject = format!("/v1/refunds/{id}/reject");
        let r = b.post(&reject, &json!({}), Some(&new_key())).await.unwrap();
        assert_eq!(r.status, 400, "{}", r.body);
        assert_eq!(r.body["error"]["param"], "reason");
        let r = b
            .post(
                &reject,
                &json!({"reason": "Patient was refunded by cheque"}),
                Some(&new_key()),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["status"], "rejected");
        assert_eq!(r.body["rejected_by"], b_id.as_str());
        assert_eq!(r.body["rejection_reason"], "Patient was refunded by cheque");
        assert_eq!(r.body["approved_by"], Value::Null);
        assert!(r.body["rejected_at"].is_string());
        let p = get(&a, &format!("/v1/payments/{}", pay["id"].as_str().unwrap())).await;
        assert_eq!(p["amount_refundable"], 100_000);
        assert_eq!(p["amount_refunded"], 0);
        assert_eq!(entries_of_refund(&app, &id).await, 0);
        assert_eq!(app.count("simulator_refunds").await, 0);

        // A rejected refund cannot be approved; rejecting it again answers with it.
        let r = b
            .post(
                &format!("/v1/refunds/{id}/approve"),
                &json!({}),
                Some(&new_key()),
            )
            .await
            .unwrap();
        assert_error(&r, 400, "refund_rejected");
        let r = b
            .post(&reject, &json!({"reason": "again"}), Some(&new_key()))
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["rejection_reason"], "Patient was refunded by cheque");

        // The requester may withdraw their own request (it moves no money).
        let second = a
            .create("/v1/refunds", &refund_body(&pay, 60_000))
            .await
            .unwrap();
        assert_eq!(second["status"], "pending_approval");
        let r = a
            .post(
                &format!("/v1/refunds/{}/reject", second["id"].as_str().unwrap()),
                &json!({"reason": "Entered by mistake"}),
                None,
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["rejected_by"], r.body["requested_by"]);
        // A refund that succeeded cannot be rejected.
        let done = a
            .create("/v1/refunds", &refund_body(&pay, 500))
            .await
            .unwrap();
        let r = b
            .post(
                &format!("/v1/refunds/{}/reject", done["id"].as_str().unwrap()),
                &json!({"reason": "too late"}),
                None,
            )
            .await
            .unwrap();
        assert_error(&r, 400, "refund_not_pending_approval");
        let p = get(&a, &format!("/v1/payments/{}", pay["id"].as_str().unwrap())).await;
        assert_eq!(p["amount_refundable"], 100_000 - 500);
        app.assert_ledger_sound().await;
        app
    }
);

both_backends!(
    concurrent_approvals_move_the_money_exactly_once,
    |app: TestApp| async move {
        // Goal: 10 approvals by a second manager and 10 by a third, all at once (the third's
        // under one Idempotency-Key), settle the refund once: one processor refund, one ledger
        // entry; every other approval answers with the approved refund (or 409 for the key in
        // use), none moves money again.
        let (a, _) = manager(&app).await;
        let (b, b_id) = manager(&app).await;
        let (c, c_id) = manager(&app).await;
        let inv = app.open_invoice("usd", 300_000).await;
        let pay = app.pay(&inv, 300_000).await;
        let re = a
            .create("/v1/refunds", &refund_body(&pay, 100_000))
            .await
            .unwrap();
        assert_eq!(re["status"], "pending_approval");
        let id = id_of(&re).unwrap();
        let path = format!("/v1/refunds/{id}/approve");
        let shared = new_key();
        let mut tasks = Vec::new();
        for i in 0..20 {
            let (client, key) = if i % 2 == 0 {
                (b.clone(), new_key())
            } else {
                (c.clone(), shared.clone())
            };
            let path = path.clone();
            tasks.push(tokio::spawn(async move {
                client.post(&path, &json!({}), Some(&key)).await.unwrap()
            }));
        }
        let mut approvers = std::collections::BTreeSet::new();
        for t in tasks {
            let r = t.await.unwrap();
            if r.status == 409 {
                assert_eq!(
                    r.body["error"]["code"], "idempotency_key_in_use",
                    "{}",
                    r.body
                );
                continue;
            }
            assert_eq!(r.status, 200, "{}", r.body);
            assert_eq!(r.body["id"], id.as_str());
            assert!(
                r.body["status"] == "succeeded" || r.body["status"] == "pending",
                "{}",
                r.body
            );
            approvers.insert(r.body["approved_by"].as_str().unwrap().to_owned());
        }
        assert_eq!(approvers.len(), 1, "one approval won: {approvers:?}");
        let winner = approvers.into_iter().next().unwrap();
        assert!(winner == b_id || winner == c_id);
        let done = get(&a, &format!("/v1/refunds/{id}")).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(done["approved_by"], winner.as_str());
        assert_eq!(entries_of_refund(&app, &id).await, 1, "one ledger entry");
        assert_eq!(
            app.count("simulator_refunds").await,
            1,
            "one processor refund"
        );
        let p = get(&a, &format!("/v1/payments/{}", pay["id"].as_str().unwrap())).await;
        assert_eq!(p["amount_refunded"], 100_000);
        assert_eq!(p["amount_refundable"], 200_000);
        app.assert_ledger_sound().await;
        app
    }
);

both_backends!(
    a_refund_to_another_payment_method_waits_whatever_the_amount,
    |app: TestApp| async move {
        // Goal: a refund naming a payment method other than the one paid with is held for a
        // second manager however small; naming the payment's own is no different from naming
        // none; once approved, the destination is kept and the original charge is refunded.
        let (a, a_id) = manager(&app).await;
        let (b, b_id) = manager(&app).await;
        let inv = app.open_invoice("usd", 10_000).await;
        let pay = app.pay(&inv, 10_000).await;
        let charge: String = {
            let row = sqlx::query("SELECT processor_charge_id FROM payments WHERE id = $1")
                .bind(pay["id"].as_str().unwrap())
                .fetch_one(&app.db.pool)
                .await
                .unwrap();
            sqlx::Row::try_get(&row, "processor_charge_id").unwrap()
        };

        let own = a
            .create("/v1/refunds", &json!({"payment": pay["id"], "amount": 100, "reason": "duplicate", "payment_method": "pm_card_visa"}))
            .await
            .unwrap();
        assert_eq!(own["status"], "succeeded", "{own}");
        assert_eq!(own["payment_method"], Value::Null);

        let other = a
            .create("/v1/refunds", &json!({"payment": pay["id"], "amount": 100, "reason": "duplicate", "payment_method": "pm_card_mastercard"}))
            .await
            .unwrap();
        assert_eq!(other["status"], "pending_approval", "{other}");
        assert_eq!(
            other["approval_reasons"],
            json!(["different_payment_method"])
        );
        assert_eq!(other["payment_method"], "pm_card_mastercard");
        assert_eq!(other["requested_by"], a_id.as_str());
        assert_eq!(
            app.count("simulator_refunds").await,
            1,
            "only the first was sent"
        );

        let r = a
            .post("/v1/refunds", &json!({"payment": pay["id"], "amount": 100, "reason": "duplicate", "payment_method": "4242424242424242"}), Some(&new_key()))
            .await
            .unwrap();
        assert_error(&r, 400, "payment_method_invalid");
        assert_eq!(r.body["error"]["param"], "payment_method");
        assert!(!r.body.to_string().contains("4242424242424242"));

        let id = id_of(&other).unwrap();
        let r = a
            .post(
                &format!("/v1/refunds/{id}/approve"),
                &json!({}),
                Some(&new_key()),
            )
            .await
            .unwrap();
        assert_error(&r, 403, "approval_requires_second_person");
        let r = b
            .post(
                &format!("/v1/refunds/{id}/approve"),
                &json!({}),
                Some(&new_key()),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["status"], "succeeded");
        assert_eq!(r.body["approved_by"], b_id.as_str());
        assert_eq!(r.body["payment_method"], "pm_card_mastercard");
        assert_eq!(
            count_where(
                &app,
                "SELECT COUNT(*) AS n FROM simulator_refunds WHERE charge_id = $1",
                &charge
            )
            .await,
            2,
            "the simulator refunds the original charge"
        );
        assert_eq!(entries_of_refund(&app, &id).await, 1);

        // Above the threshold and to another card: both reasons.
        let inv = app.open_invoice("usd", 80_000).await;
        let pay = app.pay(&inv, 80_000).await;
        let both = a
            .create("/v1/refunds", &json!({"payment": pay["id"], "amount": 70_000, "reason": "billing_error", "payment_method": "pm_card_amex"}))
            .await
            .unwrap();
        assert_eq!(
            both["approval_reasons"],
            json!(["amount_above_threshold", "different_payment_method"])
        );
        app.assert_ledger_sound().await;
        app
    }
);

both_backends!(
    a_write_off_above_the_threshold_needs_a_second_manager,
    |app: TestApp| async move {
        // Goal: a write-off above the threshold is pending_approval, posts nothing and leaves
        // the invoice as it was; the requester cannot approve it; a second manager posts it,
        // once, even with approvals racing; smaller write-offs, and discounts of any size, post
        // at once; an approval finds the invoice still owing the amount or is refused; rejected
        // and voided cases leave the books balanced.
        let (a, a_id) = manager(&app).await;
        let (b, b_id) = manager(&app).await;
        let (c, _) = manager(&app).await;
        let inv = app.open_invoice("usd", 300_000).await;
        let inv_id = id_of(&inv).unwrap();
        let adjustments = format!("/v1/invoices/{inv_id}/adjustments");
        let entries = app.count("journal_entries").await;

        let wo = a
            .create(
                &adjustments,
                &json!({"kind": "write_off", "amount": 60_000, "reason": "Hardship"}),
            )
            .await
            .unwrap();
        let wo_id = id_of(&wo).unwrap();
        assert_eq!(wo["status"], "pending_approval", "{wo}");
        assert_eq!(wo["journal_entry"], Value::Null);
        assert_eq!(wo["requested_by"], a_id.as_str());
        assert_eq!(wo["approval_reasons"], json!(["amount_above_threshold"]));
        assert_eq!(
            app.count("journal_entries").await,
            entries,
            "nothing posted"
        );
        let i = get(&a, &format!("/v1/invoices/{inv_id}")).await;
        assert_eq!(
            (i["amount_adjusted"].clone(), i["amount_due"].clone()),
            (json!(0), json!(300_000))
        );
        let listed = get(&a, &adjustments).await;
        assert_eq!(listed["data"][0]["status"], "pending_approval");

        let approve = format!("{adjustments}/{wo_id}/approve");
        let r = a
            .post(&approve, &json!({}), Some(&new_key()))
            .await
            .unwrap();
        assert_error(&r, 403, "approval_requires_second_person");
        let r = app
            .as_role("billing_clerk")
            .post(&approve, &json!({}), Some(&new_key()))
            .await
            .unwrap();
        assert_error(&r, 403, "permission_denied");
        assert_eq!(app.count("journal_entries").await, entries);

        // Ten approvals at once from two other managers: one posting.
        let mut tasks = Vec::new();
        for i in 0..10 {
            let client = if i % 2 == 0 { b.clone() } else { c.clone() };
            let path = approve.clone();
            tasks.push(tokio::spawn(async move {
                client
                    .post(&path, &json!({}), Some(&new_key()))
                    .await
                    .unwrap()
            }));
        }
        for t in tasks {
            let r = t.await.unwrap();
            assert_eq!(r.status, 200, "{}", r.body);
            assert_eq!(r.body["status"], "posted", "{}", r.body);
            assert!(r.body["journal_entry"].is_string());
        }
        assert_eq!(entries_of_adjustment(&app, &wo_id).await, 1, "posted once");
        assert_eq!(app.count("journal_entries").await, entries + 1);
        let posted = get(&a, &adjustments).await["data"][0].clone();
        assert_eq!(posted["requested_by"], a_id.as_str());
        assert_ne!(posted["approved_by"], Value::Null);
        assert_ne!(posted["approved_by"], a_id.as_str());
        let i = get(&a, &format!("/v1/invoices/{inv_id}")).await;
        assert_eq!(
            (i["amount_adjusted"].clone(), i["amount_due"].clone()),
            (json!(60_000), json!(240_000))
        );

        // At the threshold: at once. A discount is not under dual control.
        let small = a
            .create(
                &adjustments,
                &json!({"kind": "write_off", "amount": 50_000, "reason": "Small balance"}),
            )
            .await
            .unwrap();
        assert_eq!(small["status"], "posted");
        let discount = a
            .create(
                &adjustments,
                &json!({"kind": "discount", "amount": 60_000, "reason": "Self-pay discount"}),
            )
            .await
            .unwrap();
        assert_eq!(discount["status"], "posted");
        let r = b
            .post(
                &format!("{adjustments}/{}/approve", small["id"].as_str().unwrap()),
                &json!({}),
                None,
            )
            .await
            .unwrap();
        assert_error(&r, 400, "adjustment_not_pending_approval");

        // Held while a payment comes in: the approval finds it owes less and refuses; reject it.
        let inv2 = app.open_invoice("usd", 100_000).await;
        let inv2_id = id_of(&inv2).unwrap();
        let adjustments2 = format!("/v1/invoices/{inv2_id}/adjustments");
        let held = a
            .create(
                &adjustments2,
                &json!({"kind": "write_off", "amount": 80_000, "reason": "Hardship"}),
            )
            .await
            .unwrap();
        app.pay(&inv2, 30_000).await;
        let held_id = id_of(&held).unwrap();
        let r = b
            .post(
                &format!("{adjustments2}/{held_id}/approve"),
                &json!({}),
                None,
            )
            .await
            .unwrap();
        assert_error(&r, 400, "amount_exceeds_amount_due");
        // The adjustment must belong to the invoice in the path.
        let r = b
            .post(
                &format!("{adjustments}/{held_id}/approve"),
                &json!({}),
                None,
            )
            .await
            .unwrap();
        assert_error(&r, 404, "resource_missing");
        let r = b
            .post(
                &format!("{adjustments2}/{held_id}/reject"),
                &json!({"reason": "Paid in part since"}),
                None,
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["status"], "rejected");
        assert_eq!(r.body["rejected_by"], b_id.as_str());
        assert_eq!(r.body["journal_entry"], Value::Null);
        let r = b
            .post(
                &format!("{adjustments2}/{held_id}/approve"),
                &json!({}),
                None,
            )
            .await
            .unwrap();
        assert_error(&r, 400, "adjustment_rejected");
        assert_eq!(entries_of_adjustment(&app, &held_id).await, 0);
        let i = get(&a, &format!("/v1/invoices/{inv2_id}")).await;
        assert_eq!(
            (i["amount_adjusted"].clone(), i["amount_due"].clone()),
            (json!(0), json!(70_000))
        );

        // A void reverses what was posted and leaves a held write-off unpostable.
        let inv3 = app.open_invoice("usd", 100_000).await;
        let inv3_id = id_of(&inv3).unwrap();
        let adjustments3 = format!("/v1/invoices/{inv3_id}/adjustments");
        let held = a
            .create(
                &adjustments3,
                &json!({"kind": "write_off", "amount": 70_000, "reason": "Hardship"}),
            )
            .await
            .unwrap();
        a.create(
            &adjustments3,
            &json!({"kind": "discount", "amount": 1_000, "reason": "Prompt pay"}),
        )
        .await
        .unwrap();
        let void = a
            .create(&format!("/v1/invoices/{inv3_id}/void"), &json!({}))
            .await
            .unwrap();
        assert_eq!(void["status"], "void");
        let r = b
            .post(
                &format!("{adjustments3}/{}/approve", held["id"].as_str().unwrap()),
                &json!({}),
                None,
            )
            .await
            .unwrap();
        assert_error(&r, 400, "invoice_not_open");

        let refused = sqlx::query(
            "UPDATE adjustments SET approved_by = requested_by, approved_at_us = 1 WHERE id = $1",
        )
        .bind(held_id.as_str())
        .execute(&app.db.pool)
        .await;
        assert!(refused.is_err(), "CHECK approved_by <> requested_by");
        app.assert_ledger_sound().await;
        app
    }
);

/// An approval that dies between the processor call and the commit is finished by the
/// approver's retry with the same key: one processor refund, one entry.
#[cfg(feature = "failpoints")]
mod approval_crash {
    use super::*;
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    struct Server(Child);

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    async fn start_binary(database_url: &str, keyring: &str, failpoints: &str) -> (Server, String) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (log_level, log) = child_logging("warn");
        let child = Server(
            Command::new(env!("CARGO_BIN_EXE_carebill"))
                .args(["serve", "--addr", &format!("127.0.0.1:{port}")])
                .envs(tls_env())
                .env("DATABASE_URL", database_url)
                .env("CAREBILL_KEYRING", keyring)
                .env("CAREBILL_FAILPOINTS", failpoints)
                .env("CAREBILL_IDEMPOTENCY_LEASE_MS", "300")
                .env("RUST_LOG", log_level)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        let base = format!("https://127.0.0.1:{port}");
        for _ in 0..200 {
            if https_client()
                .get(format!("{base}/healthz"))
                .send()
                .await
                .is_ok()
            {
                return (child, base);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("binary did not start");
    }

    both_backends!(
        an_approval_that_crashes_after_the_processor_call_completes_once,
        |app: TestApp| async move {
            // Goal: the approver's process dies after the processor refunded; the refund stays
            // approved (pending), another manager's approval sends nothing, and the approver's
            // retry with the same key settles it: one processor refund, one ledger entry.
            let url = app.state().config.database_url.clone();
            let requester = create_api_key(&app.db, Role::BillingManager).await.unwrap();
            let approver = create_api_key(&app.db, Role::BillingManager).await.unwrap();
            let third = create_api_key(&app.db, Role::BillingManager).await.unwrap();
            let inv = app.open_invoice("usd", 100_000).await;
            let pay = app.pay(&inv, 100_000).await;
            let re = app
                .admin
                .with_key(&requester.secret)
                .create("/v1/refunds", &refund_body(&pay, 90_000))
                .await
                .unwrap();
            assert_eq!(re["status"], "pending_approval");
            let id = id_of(&re).unwrap();
            let path = format!("/v1/refunds/{id}/approve");

            let (mut child, base) =
                start_binary(&url, &app.keyring(), "refund_after_processor").await;
            let key = new_key();
            let r = api_client(&base, &approver.secret)
                .post(&path, &json!({}), Some(&key))
                .await;
            assert!(r.is_err(), "the request dies with the process: {r:?}");
            for _ in 0..200 {
                if child.0.try_wait().unwrap().is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            assert_eq!(app.count("simulator_refunds").await, 1);
            assert_eq!(entries_of_refund(&app, &id).await, 0);
            drop(child);

            let (child, base) = start_binary(&url, &app.keyring(), "").await;
            let r = api_client(&base, &third.secret)
                .post(&path, &json!({}), Some(&new_key()))
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{}", r.body);
            assert_eq!(
                r.body["status"], "pending",
                "approved, not yet settled: {}",
                r.body
            );
            assert_eq!(r.body["approved_by"], approver.id.as_str());
            tokio::time::sleep(Duration::from_millis(400)).await;
            let r = api_client(&base, &approver.secret)
                .post(&path, &json!({}), Some(&key))
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{}", r.body);
            assert_eq!(r.body["status"], "succeeded");
            assert_eq!(r.body["requested_by"], requester.id.as_str());
            assert_eq!(r.body["approved_by"], approver.id.as_str());
            assert_eq!(app.count("simulator_refunds").await, 1, "no second refund");
            assert_eq!(entries_of_refund(&app, &id).await, 1);
            drop(child);
            app.assert_ledger_sound().await;
            app
        }
    );
}
