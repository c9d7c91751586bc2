//! Idempotency-Key: replays, reuse with other parameters, in-flight duplicates, a storm of
//! duplicates, saved declines, per-caller scope and the expiry sweep, on both backends.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;

fn payment_body(invoice: &Value, amount: i64) -> Value {
    json!({"invoice": invoice["id"], "amount": amount, "currency": invoice["currency"], "payment_method": "pm_card_visa"})
}

both_backends!(
    replay_returns_the_saved_response_and_moves_no_money,
    |app: TestApp| async move {
        // Goal: the same key and request twice give one payment and the same body, marked replayed.
        let inv = app.open_invoice("usd", 10000).await;
        let key = new_key();
        let first = app
            .admin
            .post("/v1/payments", &payment_body(&inv, 2500), Some(&key))
            .await
            .unwrap();
        assert_eq!(first.status, 200);
        assert!(!first.replayed);
        let second = app
            .admin
            .post("/v1/payments", &payment_body(&inv, 2500), Some(&key))
            .await
            .unwrap();
        assert_eq!(second.status, 200);
        assert!(second.replayed);
        assert_eq!(first.body, second.body);
        assert_eq!(app.count("payments").await, 1);
        // The same parameters in another key order are the same request.
        let reordered = json!({"payment_method": "pm_card_visa", "currency": "usd", "amount": 2500, "invoice": inv["id"]});
        let third = app
            .admin
            .post("/v1/payments", &reordered, Some(&key))
            .await
            .unwrap();
        assert!(third.replayed);
        app.assert_ledger_sound().await;
        app
    }
);

both_backends!(
    same_key_with_another_request_is_refused,
    |app: TestApp| async move {
        // Goal: a key reused with a different body or path is 422 idempotency_key_reused.
        let inv = app.open_invoice("usd", 10000).await;
        let key = new_key();
        assert_eq!(
            app.admin
                .post("/v1/payments", &payment_body(&inv, 1000), Some(&key))
                .await
                .unwrap()
                .status,
            200
        );
        let r = app
            .admin
            .post("/v1/payments", &payment_body(&inv, 1001), Some(&key))
            .await
            .unwrap();
        assert_eq!(r.status, 422);
        assert_eq!(r.body["error"]["type"], "idempotency_error");
        assert_eq!(r.body["error"]["code"], "idempotency_key_reused");
        let r = app
            .admin
            .post(
                "/v1/patients",
                &json!({"name": "X", "date_of_birth": "1990-01-01"}),
                Some(&key),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 422);
        assert_eq!(app.count("payments").await, 1);
        app
    }
);

both_backends!(declines_are_saved_and_replayed, |app: TestApp| async move {
    // Goal: a 402 decline is a final answer: replayed as is, and no second charge attempt.
    let inv = app.open_invoice("usd", 10000).await;
    let key = new_key();
    let body = json!({"invoice": inv["id"], "amount": 1000, "currency": "usd", "payment_method": "pm_card_visa_chargeDeclined"});
    let first = app
        .admin
        .post("/v1/payments", &body, Some(&key))
        .await
        .unwrap();
    assert_eq!(first.status, 402);
    let again = app
        .admin
        .post("/v1/payments", &body, Some(&key))
        .await
        .unwrap();
    assert_eq!(again.status, 402);
    assert!(again.replayed);
    assert_eq!(first.body, again.body);
    assert_eq!(app.count("payments").await, 1);
    assert_eq!(app.count("simulator_charges").await, 1);
    app
});

both_backends!(keys_are_scoped_to_the_caller, |app: TestApp| async move {
    // Goal: two callers using the same key string make two independent requests.
    let inv = app.open_invoice("usd", 10000).await;
    let key = new_key();
    let a = app
        .admin
        .post("/v1/payments", &payment_body(&inv, 1000), Some(&key))
        .await
        .unwrap();
    let b = app
        .as_role("billing_clerk")
        .post("/v1/payments", &payment_body(&inv, 1000), Some(&key))
        .await
        .unwrap();
    assert_eq!((a.status, b.status), (200, 200));
    assert!(!b.replayed);
    assert_ne!(a.body["id"], b.body["id"]);
    app
});

both_backends!(
    duplicate_storm_makes_one_payment,
    |app: TestApp| async move {
        // Goal: 100 concurrent requests with one key produce one payment and 100 identical bodies.
        // A duplicate that arrives while the first is in flight gets 409 idempotency_key_in_use and,
        // like any client following the API's advice, retries until it receives the saved answer.
        let inv = app.open_invoice("usd", 1_000_000).await;
        let key = new_key();
        let body = payment_body(&inv, 4321);
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let (client, key, body) = (app.admin.clone(), key.clone(), body.clone());
            tasks.push(tokio::spawn(async move {
                let mut conflicts = 0u32;
                for attempt in 0..200u64 {
                    let r = client
                        .post("/v1/payments", &body, Some(&key))
                        .await
                        .unwrap();
                    match r.status {
                        200 => return (r.body, conflicts),
                        409 => {
                            assert_eq!(r.body["error"]["code"], "idempotency_key_in_use");
                            conflicts += 1;
                            tokio::time::sleep(std::time::Duration::from_millis(
                                5 + attempt.min(20),
                            ))
                            .await;
                        }
                        other => panic!("unexpected {other}: {}", r.body),
                    }
                }
                panic!("no final answer after 200 attempts");
            }));
        }
        let mut bodies = Vec::new();
        let mut conflicts = 0;
        for t in tasks {
            let (b, c) = t.await.unwrap();
            bodies.push(b);
            conflicts += c;
        }
        assert!(bodies.iter().all(|b| *b == bodies[0]), "bodies differ");
        assert_eq!(app.count("payments").await, 1);
        assert_eq!(app.count("simulator_charges").await, 1);
        let inv_now = app
            .admin
            .get(&format!("/v1/invoices/{}", inv["id"].as_str().unwrap()))
            .await
            .unwrap()
            .body;
        assert_eq!(inv_now["amount_paid"], 4321);
        eprintln!(
            "{:?}: {conflicts} in-flight conflicts answered 409 before the replay",
            app.backend
        );
        app.assert_ledger_sound().await;
        app
    }
);

both_backends!(
    in_flight_key_is_409_and_a_stale_lease_resumes,
    |app: TestApp| async move {
        // Goal: while a key's lease is held a duplicate gets 409; once the lease has run out (a
        // crashed holder), the retry takes over and completes the same payment, not a new one.
        let inv = app.open_invoice("usd", 10000).await;
        let key = new_key();
        let first = app
            .admin
            .post("/v1/payments", &payment_body(&inv, 700), Some(&key))
            .await
            .unwrap();
        assert_eq!(first.status, 200);
        // Rewind the key to "processor called, holder still alive".
        let far = carebill::db::now_us() + 3_600_000_000;
        sqlx::query("UPDATE idempotency_keys SET phase = 'processor_called', response_status = NULL, response_body = NULL, locked_until_us = $1")
        .bind(far)
        .execute(&app.db.pool)
        .await
        .unwrap();
        let r = app
            .admin
            .post("/v1/payments", &payment_body(&inv, 700), Some(&key))
            .await
            .unwrap();
        assert_eq!(r.status, 409);
        assert_eq!(r.body["error"]["code"], "idempotency_key_in_use");
        // The holder "crashed": its lease is over.
        sqlx::query("UPDATE idempotency_keys SET locked_until_us = 0")
            .execute(&app.db.pool)
            .await
            .unwrap();
        let r = app
            .admin
            .post("/v1/payments", &payment_body(&inv, 700), Some(&key))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body["id"], first.body["id"]);
        assert_eq!(app.count("payments").await, 1);
        assert_eq!(
            app.count("journal_entries").await,
            2,
            "finalize + one capture"
        );
        app.assert_ledger_sound().await;
        app
    }
);

both_backends!(
    expired_keys_are_swept_in_bounded_batches,
    |app: TestApp| async move {
        // Goal: finished keys older than the TTL are deleted by the sweep; fresh ones stay.
        let inv = app.open_invoice("usd", 10000).await;
        for _ in 0..3 {
            app.admin
                .post("/v1/payments", &payment_body(&inv, 100), Some(&new_key()))
                .await
                .unwrap();
        }
        let before = app.count("idempotency_keys").await;
        assert_eq!(
            before, 6,
            "three fixture calls (patient, invoice, finalize) and three payments"
        );
        sqlx::query("UPDATE idempotency_keys SET created_at_us = created_at_us - 200000000000 WHERE key IN (SELECT key FROM idempotency_keys LIMIT 2)")
        .execute(&app.db.pool)
        .await
        .unwrap();
        let deleted = carebill::idempotency::sweep(app.state()).await.unwrap();
        assert_eq!(deleted, 2);
        assert_eq!(app.count("idempotency_keys").await, before - 2);
        app
    }
);
