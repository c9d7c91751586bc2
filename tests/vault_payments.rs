//! Payments with card vault tokens: a real vault process (`tokenizer serve`) tokenizes test
//! cards on its collect listener, and billing exchanges the tokens for the processor's payment
//! method over mutual TLS. Covers the happy path (billing keeps the token, brand and last four,
//! never a card number), declines, unknown/deleted and malformed tokens, a vault that is down,
//! one that never answers, and no vault at all (each: a clear error and nothing written),
//! idempotent replays, and the same card tokenized twice. On both backends.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use std::time::{Duration, Instant};

use common::*;

const VISA: &str = "4242424242424242";

fn pay_body(invoice: &Value, amount: i64, payment_method: &str) -> Value {
    json!({"invoice": invoice["id"], "amount": amount, "currency": invoice["currency"], "payment_method": payment_method})
}

/// Rows in the tables a payment attempt writes to.
async fn counts(app: &TestApp) -> [(&'static str, i64); 4] {
    let mut out = [
        ("payments", 0),
        ("idempotency_keys", 0),
        ("simulator_charges", 0),
        ("journal_entries", 0),
    ];
    for (table, n) in &mut out {
        *n = app.count(table).await;
    }
    out
}

/// What billing stored for a payment: payment_method, processor_payment_method, brand, last4.
async fn stored(app: &TestApp, payment_id: &str) -> (String, String, String, String) {
    let row = sqlx::query(
        "SELECT payment_method, processor_payment_method, card_brand, card_last4 FROM payments WHERE id = $1",
    )
    .bind(payment_id)
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    use sqlx::Row;
    (
        row.try_get("payment_method").unwrap(),
        row.try_get("processor_payment_method").unwrap(),
        row.try_get("card_brand").unwrap(),
        row.try_get("card_last4").unwrap(),
    )
}

/// Asserts `card_number` appears nowhere in what billing stored about payments (and, on SQLite,
/// nowhere in the database files at all).
async fn assert_no_card_number(app: &TestApp, card_number: &str) {
    use sqlx::Row;
    for (sql, columns) in [
        (
            "SELECT id, patient_id, invoice_id, currency, status, payment_method, processor_payment_method, \
             processor_idempotency_key, processor_charge_id, card_brand, card_last4, failure_code, failure_message \
             FROM payments",
            13,
        ),
        ("SELECT response_body FROM idempotency_keys", 1),
        ("SELECT outcome_json FROM simulator_charges", 1),
    ] {
        let rows = sqlx::query(sql).fetch_all(&app.db.pool).await.unwrap();
        assert!(!rows.is_empty(), "{sql}: no rows to check");
        for row in &rows {
            for i in 0..columns {
                let text: Option<String> = row.try_get(i).unwrap();
                assert!(
                    !text.unwrap_or_default().contains(card_number),
                    "a card number is stored ({sql}, column {i})"
                );
            }
        }
    }
    let url = &app.state().config.database_url;
    if let Some(path) = url.strip_prefix("sqlite://") {
        let path = path.split('?').next().unwrap();
        let mut scanned = 0;
        for file in [path.to_owned(), format!("{path}-wal")] {
            if let Ok(bytes) = std::fs::read(&file) {
                scanned += bytes.len();
                assert!(
                    !bytes
                        .windows(card_number.len())
                        .any(|w| w == card_number.as_bytes()),
                    "the card number is in {file}"
                );
            }
        }
        assert!(scanned > 0, "no SQLite file scanned at {path}");
    }
}

both_backends!(
    a_token_pays_and_billing_keeps_only_token_brand_and_last4,
    spawn = TestApp::spawn_with_vault,
    |app: TestApp| async move {
        // Goal: a card tokenized on the vault's collect listener pays an invoice by its token; the
        // payment shows the card's brand and last four, billing's row holds the token and the
        // minted payment method, the vault charged it once with its CVC under billing's request
        // id, and no card number is stored anywhere in billing.
        let vault = app.vault();
        let inv = app.open_invoice("usd", 10000).await;
        let (status, card) = vault
            .tokenize(json!({"number": VISA, "exp_month": 12, "exp_year": 2030, "cvc": "083", "name": "Ada Lovelace"}))
            .await;
        assert_eq!(status, 201, "{card}");
        let token = card["id"].as_str().unwrap().to_owned();
        assert!(carebill::vault::is_token(&token), "{token}");
        let r = app
            .admin
            .post(
                "/v1/payments",
                &pay_body(&inv, 10000, &token),
                Some(&new_key()),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["status"], "succeeded");
        assert_eq!(r.body["payment_method"], token.as_str());
        assert_eq!(r.body["card"], json!({"brand": "visa", "last4": "4242"}));
        assert_eq!(r.body["amount_applied"], 10000);
        let id = id_of(&r.body).unwrap();
        let fetched = app.admin.get(&format!("/v1/payments/{id}")).await.unwrap();
        assert_eq!(fetched.body, r.body);
        let invoice = app
            .admin
            .get(&format!("/v1/invoices/{}", inv["id"].as_str().unwrap()))
            .await
            .unwrap();
        assert_eq!(invoice.body["amount_due"], 0, "{}", invoice.body);
        assert_eq!(
            stored(&app, &id).await,
            (
                token.clone(),
                "pm_card_visa".to_owned(),
                "visa".to_owned(),
                "4242".to_owned()
            )
        );
        assert_no_card_number(&app, VISA).await;
        let audit = vault.audit("charge_method").await;
        assert_eq!(audit.len(), 1, "{audit:?}");
        assert_eq!(audit[0].0.as_deref(), Some(token.as_str()));
        assert_eq!(
            audit[0].1, "ok:cvc_provided",
            "the CVC went with the charge"
        );
        let request_id = audit[0].2.clone().unwrap_or_default();
        assert!(
            request_id.starts_with("req_") && request_id.len() == 24,
            "billing's request id: {request_id}"
        );
        app.assert_ledger_sound().await;
        app
    }
);

both_backends!(
    every_brand_the_vault_mints_charges,
    spawn = TestApp::spawn_with_vault,
    |app: TestApp| async move {
        // Goal: each brand's test card, tokenized, charges through the simulator (the vault's
        // minted ids, pm_card_jcb/diners/unionpay included), and the payment shows the card that
        // was tokenized — its last four, even where the simulator's test card differs (amex).
        let vault = app.vault();
        let patient = app.patient().await;
        for (number, brand, last4, pm) in [
            (
                "5555555555554444",
                "mastercard",
                "4444",
                "pm_card_mastercard",
            ),
            ("378282246310005", "amex", "0005", "pm_card_amex"),
            ("6011111111111117", "discover", "1117", "pm_card_discover"),
            ("3566002020360505", "jcb", "0505", "pm_card_jcb"),
            ("3056930009020004", "diners", "0004", "pm_card_diners"),
            ("6200000000000005", "unionpay", "0005", "pm_card_unionpay"),
        ] {
            let token = vault.token_for(number).await;
            let body = json!({"patient": patient, "amount": 700, "currency": "usd", "payment_method": token});
            let r = app
                .admin
                .post("/v1/payments", &body, Some(&new_key()))
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{brand}: {}", r.body);
            assert_eq!(r.body["status"], "succeeded", "{brand}");
            assert_eq!(r.body["card"], json!({"brand": brand, "last4": last4}));
            let (method, processor_method, _, _) = stored(&app, &id_of(&r.body).unwrap()).await;
            assert_eq!(
                (method.as_str(), processor_method.as_str()),
                (token.as_str(), pm)
            );
        }
        let statement = app
            .admin
            .get(&format!("/v1/patients/{patient}/statement"))
            .await
            .unwrap();
        assert_eq!(statement.body["credit_balance"], 4200, "{}", statement.body);
        app.assert_ledger_sound().await;
        app
    }
);

both_backends!(
    declined_test_cards_answer_402_with_their_decline_code,
    spawn = TestApp::spawn_with_vault,
    |app: TestApp| async move {
        // Goal: the decline test cards, paid by token, answer 402 card_error with the decline
        // code naming payment_method, record a failed payment with the token and the card, post
        // nothing to the ledger, replay the same 402, and the vault's audit record carries the
        // request id of billing's error.
        let vault = app.vault();
        let inv = app.open_invoice("usd", 5000).await;
        let entries_before = app.count("journal_entries").await;
        let cases = [
            ("4000000000000002", "card_declined", "0002"),
            ("4000000000009995", "insufficient_funds", "9995"),
            ("4000000000000069", "expired_card", "0069"),
        ];
        for (number, code, last4) in cases {
            let token = vault.token_for(number).await;
            let key = new_key();
            let body = pay_body(&inv, 5000, &token);
            let r = app
                .admin
                .post("/v1/payments", &body, Some(&key))
                .await
                .unwrap();
            assert_eq!(r.status, 402, "{number}: {}", r.body);
            let err = &r.body["error"];
            assert_eq!(err["type"], "card_error");
            assert_eq!(err["code"], code);
            assert_eq!(err["param"], "payment_method");
            assert_eq!(err["payment"]["status"], "failed");
            assert_eq!(err["payment"]["failure_code"], code);
            assert_eq!(err["payment"]["payment_method"], token.as_str());
            assert_eq!(
                err["payment"]["card"],
                json!({"brand": "visa", "last4": last4})
            );
            let again = app
                .admin
                .post("/v1/payments", &body, Some(&key))
                .await
                .unwrap();
            assert!(again.replayed);
            assert_eq!((again.status, &again.body), (402, &r.body));
            let audit = vault.audit("charge_method").await;
            let last = audit.last().unwrap();
            assert_eq!(last.0.as_deref(), Some(token.as_str()));
            assert_eq!(
                last.2.as_deref(),
                err["request_id"].as_str(),
                "request ids correlate"
            );
        }
        assert_eq!(app.count("payments").await, 3);
        assert_eq!(
            app.count("journal_entries").await,
            entries_before,
            "a decline posts nothing"
        );
        assert_eq!(
            vault.audit("charge_method").await.len(),
            3,
            "replays never ask the vault"
        );
        assert_no_card_number(&app, "4000000000009995").await;
        app.assert_ledger_sound().await;
        app
    }
);

both_backends!(
    unknown_or_deleted_tokens_are_refused_naming_payment_method_and_write_nothing,
    spawn = TestApp::spawn_with_vault,
    |app: TestApp| async move {
        // Goal: a well-formed token the vault does not know (never issued, or its card deleted)
        // answers 404 resource_missing naming payment_method without echoing it, writes no
        // payment and no idempotency key — so the same key then works for a good token.
        let vault = app.vault();
        let inv = app.open_invoice("usd", 5000).await;
        let deleted = vault.token_for(VISA).await;
        vault.delete(&deleted).await;
        let unknown = format!("tok_{}", carebill::ids::random_base62(24));
        let before = counts(&app).await;
        let key = new_key();
        for token in [&unknown, &deleted] {
            let r = app
                .admin
                .post("/v1/payments", &pay_body(&inv, 5000, token), Some(&key))
                .await
                .unwrap();
            assert_eq!(r.status, 404, "{}", r.body);
            assert_eq!(r.body["error"]["type"], "invalid_request_error");
            assert_eq!(r.body["error"]["code"], "resource_missing");
            assert_eq!(r.body["error"]["param"], "payment_method");
            assert!(
                !r.body.to_string().contains(token.as_str()),
                "echoed: {}",
                r.body
            );
            assert_eq!(counts(&app).await, before, "a refused token wrote rows");
        }
        // The vault was asked both times (and refused).
        let audit = vault.audit("charge_method").await;
        assert_eq!(audit.len(), 2, "{audit:?}");
        assert!(
            audit.iter().all(|a| a.1.starts_with("refused:")),
            "{audit:?}"
        );
        // Nothing was kept under the key: it is free for the corrected request.
        let good = vault.token_for("5555555555554444").await;
        let r = app
            .admin
            .post("/v1/payments", &pay_body(&inv, 5000, &good), Some(&key))
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(!r.replayed);
        assert_eq!(r.body["status"], "succeeded");
        app
    }
);

both_backends!(
    malformed_tokens_are_400_and_the_vault_is_not_asked,
    spawn = TestApp::spawn_with_vault,
    |app: TestApp| async move {
        // Goal: a `tok_` value that is not `tok_` + 24 letters and digits answers 400
        // payment_method_invalid naming payment_method, without echoing it, before the vault
        // is called or anything is written.
        let vault = app.vault();
        let inv = app.open_invoice("usd", 5000).await;
        let before = counts(&app).await;
        let a23 = "A".repeat(23);
        for bad in [
            "tok_".to_owned(),
            "tok_abc".to_owned(),
            format!("tok_{a23}"),
            format!("tok_{a23}BC"),
            format!("tok_{a23}_"),
            format!("tok_{a23}-"),
            format!("tok_{a23}é"),
            format!("tok_{a23}\u{0}"),
            format!("tok_{VISA}{VISA}"),
        ] {
            let r = app
                .admin
                .post(
                    "/v1/payments",
                    &pay_body(&inv, 5000, &bad),
                    Some(&new_key()),
                )
                .await
                .unwrap();
            assert_eq!(r.status, 400, "{bad:?}: {}", r.body);
            assert_eq!(r.body["error"]["code"], "payment_method_invalid");
            assert_eq!(r.body["error"]["param"], "payment_method");
            assert!(!r.body.to_string().contains(&a23), "echoed: {}", r.body);
            assert!(!r.body.to_string().contains(VISA), "echoed: {}", r.body);
        }
        assert_eq!(counts(&app).await, before, "a malformed token wrote rows");
        assert!(
            vault.audit("charge_method").await.is_empty(),
            "the vault was asked"
        );
        // The vault is there and answers for a well-formed token.
        let token = vault.token_for(VISA).await;
        let r = app
            .admin
            .post(
                "/v1/payments",
                &pay_body(&inv, 5000, &token),
                Some(&new_key()),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(vault.audit("charge_method").await.len(), 1);
        app
    }
);

both_backends!(
    a_vault_that_is_down_is_503_at_once_and_writes_nothing,
    spawn = TestApp::spawn_with_vault,
    |mut app: TestApp| async move {
        // Goal: with the vault process killed, a token payment answers 503 vault_unavailable
        // promptly and writes nothing (no payment, no key, no charge); once the vault is back
        // the very same request under the same key succeeds.
        let inv = app.open_invoice("usd", 8000).await;
        let token = app.vault().token_for(VISA).await;
        app.vault_mut().kill().await;
        let before = counts(&app).await;
        let key = new_key();
        let body = pay_body(&inv, 8000, &token);
        let started = Instant::now();
        let r = app
            .admin
            .post("/v1/payments", &body, Some(&key))
            .await
            .unwrap();
        let took = started.elapsed();
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(r.body["error"]["type"], "api_error");
        assert_eq!(r.body["error"]["code"], "vault_unavailable");
        assert!(!r.body.to_string().contains(&token), "echoed: {}", r.body);
        assert!(took < Duration::from_secs(3), "took {took:?}");
        assert_eq!(counts(&app).await, before, "a vault failure wrote rows");
        // A processor payment method does not need the vault.
        let r = app
            .admin
            .post(
                "/v1/payments",
                &pay_body(&inv, 1000, "pm_card_visa"),
                Some(&new_key()),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        // The failed attempt left its key unused: once the vault is back, the same key and
        // request run for real (not a replay of the 503).
        app.vault_mut().restart().await;
        let r = app
            .admin
            .post("/v1/payments", &body, Some(&key))
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(!r.replayed);
        assert_eq!(r.body["status"], "succeeded");
        assert_eq!(r.body["payment_method"], token.as_str());
        assert_eq!(
            (
                r.body["amount_applied"].clone(),
                r.body["amount_credited"].clone()
            ),
            (json!(7000), json!(1000))
        );
        app.assert_ledger_sound().await;
        app
    }
);

both_backends!(
    a_vault_that_never_answers_is_503_within_the_timeout_and_writes_nothing,
    spawn = |backend| TestApp::spawn_with_silent_vault(backend, 1000),
    |app: TestApp| async move {
        // Goal: a vault that accepts the connection and then says nothing makes a token payment
        // answer 503 vault_unavailable after the configured 1 s timeout — not the 30 s request
        // timeout, not a hang — and nothing is written.
        let silent = app.silent_vault.as_ref().unwrap();
        let inv = app.open_invoice("usd", 5000).await;
        let before = counts(&app).await;
        let token = format!("tok_{}", carebill::ids::random_base62(24));
        let started = Instant::now();
        let r = app
            .admin
            .post(
                "/v1/payments",
                &pay_body(&inv, 5000, &token),
                Some(&new_key()),
            )
            .await
            .unwrap();
        let took = started.elapsed();
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(r.body["error"]["code"], "vault_unavailable");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "took {took:?}"
        );
        assert!(
            silent.accepted.load(std::sync::atomic::Ordering::SeqCst) >= 1,
            "billing never reached the silent vault"
        );
        assert_eq!(counts(&app).await, before, "a vault timeout wrote rows");
        let r = app
            .admin
            .post(
                "/v1/payments",
                &pay_body(&inv, 5000, "pm_card_visa"),
                Some(&new_key()),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        app
    }
);

both_backends!(
    without_a_vault_a_token_is_503_and_writes_nothing,
    |app: TestApp| async move {
        // Goal: a server with no vault configured answers a token payment 503
        // vault_unavailable (saying no vault is configured) and writes nothing.
        assert!(app.state().vault.is_none());
        let inv = app.open_invoice("usd", 5000).await;
        let before = counts(&app).await;
        let token = format!("tok_{}", carebill::ids::random_base62(24));
        let r = app
            .admin
            .post(
                "/v1/payments",
                &pay_body(&inv, 5000, &token),
                Some(&new_key()),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(r.body["error"]["code"], "vault_unavailable");
        assert!(
            r.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("none configured"),
            "{}",
            r.body
        );
        assert_eq!(counts(&app).await, before);
        app
    }
);

both_backends!(
    an_idempotent_replay_of_a_token_payment_returns_the_same_payment,
    spawn = TestApp::spawn_with_vault,
    |app: TestApp| async move {
        // Goal: the same key and token request twice give one payment, one charge, one vault
        // call and the same body marked replayed — even after the card is deleted at the vault.
        let vault = app.vault();
        let inv = app.open_invoice("usd", 10000).await;
        let token = vault.token_for(VISA).await;
        let key = new_key();
        let body = pay_body(&inv, 4000, &token);
        let first = app
            .admin
            .post("/v1/payments", &body, Some(&key))
            .await
            .unwrap();
        assert_eq!(first.status, 200, "{}", first.body);
        assert!(!first.replayed);
        let second = app
            .admin
            .post("/v1/payments", &body, Some(&key))
            .await
            .unwrap();
        assert!(second.replayed);
        assert_eq!((second.status, &second.body), (200, &first.body));
        vault.delete(&token).await;
        let third = app
            .admin
            .post("/v1/payments", &body, Some(&key))
            .await
            .unwrap();
        assert!(third.replayed);
        assert_eq!((third.status, &third.body), (200, &first.body));
        assert_eq!(app.count("payments").await, 1);
        assert_eq!(app.count("simulator_charges").await, 1);
        assert_eq!(vault.audit("charge_method").await.len(), 1);
        // The same token under another key is another payment (and now the card is gone).
        let r = app
            .admin
            .post("/v1/payments", &body, Some(&new_key()))
            .await
            .unwrap();
        assert_eq!(r.status, 404, "{}", r.body);
        app.assert_ledger_sound().await;
        app
    }
);

both_backends!(
    the_same_card_tokenized_twice_pays_with_the_same_token,
    spawn = TestApp::spawn_with_vault,
    |app: TestApp| async move {
        // Goal: tokenizing one card number twice gives the same token (201 then 200), and
        // payments made with either answer carry that one token.
        let vault = app.vault();
        let (s1, c1) = vault
            .tokenize(json!({"number": VISA, "exp_month": 12, "exp_year": 2030, "cvc": "083"}))
            .await;
        let (s2, c2) = vault
            .tokenize(json!({"number": VISA, "exp_month": 11, "exp_year": 2031, "cvc": "064", "name": "Ada"}))
            .await;
        assert_eq!((s1, s2), (201, 200), "{c1} {c2}");
        assert_eq!(c1["id"], c2["id"]);
        assert_eq!(c1["fingerprint"], c2["fingerprint"]);
        let inv = app.open_invoice("usd", 10000).await;
        let mut ids = Vec::new();
        for card in [&c1, &c2] {
            let token = card["id"].as_str().unwrap();
            let r = app
                .admin
                .post(
                    "/v1/payments",
                    &pay_body(&inv, 5000, token),
                    Some(&new_key()),
                )
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{}", r.body);
            assert_eq!(r.body["payment_method"], token);
            ids.push(id_of(&r.body).unwrap());
        }
        assert_ne!(ids[0], ids[1]);
        let list = app
            .admin
            .get(&format!(
                "/v1/payments?invoice={}",
                inv["id"].as_str().unwrap()
            ))
            .await
            .unwrap();
        let methods: Vec<&Value> = list.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| &p["payment_method"])
            .collect();
        assert_eq!(methods, vec![&c1["id"], &c1["id"]]);
        let invoice = app
            .admin
            .get(&format!("/v1/invoices/{}", inv["id"].as_str().unwrap()))
            .await
            .unwrap();
        assert_eq!(invoice.body["status"], "paid", "{}", invoice.body);
        app
    }
);

/// A token payment interrupted by a crash after the processor call resumes with the payment
/// method stored in tx A: the vault is not asked again (here the card was even deleted
/// meanwhile) and the processor sees the same request, so there is one charge.
#[cfg(feature = "failpoints")]
mod resume_after_crash {
    use std::process::{Child, Command, Stdio};

    use carebill::db::Backend;

    use super::*;

    struct Server(Child);

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    async fn start_binary(app: &TestApp, failpoints: &str) -> (Server, String) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pki = &app.vault().spec.pki;
        // Debug level into the artifacts directory when one is kept.
        let (log_level, log) = child_logging("warn");
        let child = Server(
            Command::new(env!("CARGO_BIN_EXE_carebill"))
                .args(["serve", "--addr", &format!("127.0.0.1:{port}")])
                .envs(tls_env())
                .env("DATABASE_URL", &app.state().config.database_url)
                .env("CAREBILL_KEYRING", app.keyring())
                .env("CAREBILL_FAILPOINTS", failpoints)
                .env("CAREBILL_IDEMPOTENCY_LEASE_MS", "300")
                .env("CAREBILL_VAULT_URL", &app.vault().child.internal_url)
                .env("CAREBILL_VAULT_CA", &pki.ca_cert)
                .env("CAREBILL_VAULT_CLIENT_CERT", &pki.billing_client_cert)
                .env("CAREBILL_VAULT_CLIENT_KEY", &pki.billing_client_key)
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

    async fn crash_then_resume(backend: Backend) {
        let app = TestApp::spawn_with_vault(backend).await;
        let inv = app.open_invoice("usd", 10000).await;
        let token = app.vault().token_for(VISA).await;
        let key = app.keys["billing_manager"].clone();
        let body = pay_body(&inv, 6000, &token);
        let pay_key = new_key();

        let (mut child, base) = start_binary(&app, "payment_after_processor").await;
        let r = api_client(&base, &key)
            .post("/v1/payments", &body, Some(&pay_key))
            .await;
        assert!(r.is_err(), "the request dies with the process: {r:?}");
        for _ in 0..200 {
            if child.0.try_wait().unwrap().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(
            child.0.try_wait().unwrap().is_some(),
            "the fail point stopped the process"
        );
        assert_eq!(app.count("simulator_charges").await, 1, "charged once");
        assert_eq!(app.vault().audit("charge_method").await.len(), 1);
        let (method, processor_method, brand, last4) = {
            let id: String = sqlx::query_scalar("SELECT id FROM payments")
                .fetch_one(&app.db.pool)
                .await
                .unwrap();
            stored(&app, &id).await
        };
        assert_eq!(
            (
                method.as_str(),
                processor_method.as_str(),
                brand.as_str(),
                last4.as_str()
            ),
            (token.as_str(), "pm_card_visa", "visa", "4242")
        );
        // The card is deleted before the retry: asking the vault again would now fail.
        app.vault().delete(&token).await;
        drop(child);

        let (_child, base) = start_binary(&app, "").await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        let r = api_client(&base, &key)
            .post("/v1/payments", &body, Some(&pay_key))
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["status"], "succeeded");
        assert_eq!(r.body["payment_method"], token.as_str());
        assert_eq!(r.body["card"], json!({"brand": "visa", "last4": "4242"}));
        assert_eq!(app.count("payments").await, 1);
        assert_eq!(app.count("simulator_charges").await, 1, "no second charge");
        assert_eq!(
            app.vault().audit("charge_method").await.len(),
            1,
            "the resumed payment did not ask the vault"
        );
        app.assert_ledger_sound().await;
        app.finish().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite() {
        crash_then_resume(Backend::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres() {
        crash_then_resume(Backend::Postgres).await;
    }
}
