//! Tokenization over real HTTPS on both backends: determinism, masking, the CVC's life, the
//! internal API, deletion, and the audit trail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use reqwest::Method;

/// actor, action, token, outcome, request_id
type AuditRow = (String, String, Option<String>, String, Option<String>);

vault_test!(
    same_card_same_token_other_card_other_token,
    |vault: Vault| async move {
        // Goal: the same number (typed differently) gives the same token; another number, another
        // token and another ciphertext; the token reveals nothing of the number.
        let (status, first) = vault
        .tokenize(json!({"number": "4242 4242 4242 4242", "exp_month": 12, "exp_year": 2030, "cvc": "083", "name": "Jane Doe"}))
        .await;
        assert_eq!(status, 201, "{first}");
        assert_eq!(first["brand"], "visa");
        assert_eq!(first["last4"], "4242");
        assert_eq!(first["exp_month"], 12);
        assert_eq!(first["exp_year"], 2030);
        let token = first["id"].as_str().unwrap();
        assert!(token.starts_with("tok_") && token.len() == 28, "{token}");
        assert!(!token.contains("4242") && !token.contains("424242"));

        let (status, again) = vault
        .tokenize(json!({"number": "4242-4242-4242-4242", "exp_month": 1, "exp_year": 2031, "cvc": "029"}))
        .await;
        assert_eq!(status, 200, "{again}");
        assert_eq!(again["id"], first["id"]);
        assert_eq!(again["fingerprint"], first["fingerprint"]);
        // The reissued expiry is kept.
        assert_eq!(again["exp_year"], 2031);

        let (status, other) = vault
            .tokenize(
                json!({"number": MASTERCARD, "exp_month": 12, "exp_year": 2030, "cvc": "083"}),
            )
            .await;
        assert_eq!(status, 201);
        assert_ne!(other["id"], first["id"]);
        assert_ne!(other["fingerprint"], first["fingerprint"]);
        assert_eq!(other["brand"], "mastercard");

        assert_eq!(vault.count("SELECT COUNT(*) FROM cards").await, 2);
        assert_eq!(
            vault
                .count("SELECT COUNT(DISTINCT pan_ct) FROM cards")
                .await,
            2,
            "different cards, different ciphertexts"
        );
        vault
    }
);

vault_test!(
    internal_api_masks_mints_and_deletes,
    |vault: Vault| async move {
        let token = vault.token_for(VISA).await;
        let (status, card) = vault
            .internal(Method::GET, &format!("/v1/cards/{token}"))
            .await;
        assert_eq!(status, 200, "{card}");
        assert_eq!(card["last4"], "4242");
        assert!(card.get("number").is_none());

        // The first charge-method uses the held CVC; the second finds it wiped.
        let path = format!("/v1/cards/{token}/charge-method");
        let (status, minted) = vault.internal(Method::POST, &path).await;
        assert_eq!(status, 200, "{minted}");
        assert_eq!(minted["payment_method"], "pm_card_visa");
        assert_eq!(minted["cvc"], "provided");
        assert_eq!(minted["card"]["id"], token.as_str());
        let (_, again) = vault.internal(Method::POST, &path).await;
        assert_eq!(again["cvc"], "unavailable");
        assert!(vault.state().cvcs.is_empty());

        // Stripe's test cards decline the way they do in Stripe's test mode.
        for (number, pm) in [
            ("4000000000000002", "pm_card_visa_chargeDeclined"),
            (
                "4000000000009995",
                "pm_card_visa_chargeDeclinedInsufficientFunds",
            ),
            ("4000000000000069", "pm_card_chargeDeclinedExpiredCard"),
            (AMEX, "pm_card_amex"),
        ] {
            let t = vault.token_for(number).await;
            let (_, m) = vault
                .internal(Method::POST, &format!("/v1/cards/{t}/charge-method"))
                .await;
            assert_eq!(m["payment_method"], pm, "{number}");
        }

        // Delete: the ciphertext is gone, the token answers 404, the fingerprint stays.
        let (status, deleted) = vault
            .internal(Method::DELETE, &format!("/v1/cards/{token}"))
            .await;
        assert_eq!(status, 200, "{deleted}");
        assert_eq!(deleted["deleted"], true);
        let (status, _) = vault
            .internal(Method::GET, &format!("/v1/cards/{token}"))
            .await;
        assert_eq!(status, 404);
        let (status, _) = vault.internal(Method::POST, &path).await;
        assert_eq!(status, 404);
        let row: (Option<Vec<u8>>, String) =
            sqlx::query_as("SELECT pan_ct, fingerprint FROM cards WHERE id = $1")
                .bind(&token)
                .fetch_one(&vault.db().pool)
                .await
                .unwrap();
        assert!(row.0.is_none());
        assert_eq!(row.1.len(), 32);
        // The same card tokenized again is a new token.
        let renewed = vault.token_for(VISA).await;
        assert_ne!(renewed, token);

        // Unknown and malformed tokens.
        let (status, body) = vault
            .internal(Method::GET, "/v1/cards/tok_AAAAAAAAAAAAAAAAAAAAAAAA")
            .await;
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["param"], "token");
        let (status, body) = vault
            .internal(Method::GET, "/v1/cards/4242424242424242")
            .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["code"], "invalid_token");
        vault
    }
);

vault_test!(
    every_operation_is_audited_in_a_chain,
    |vault: Vault| async move {
        let token = vault.token_for(VISA).await;
        vault
            .internal(Method::GET, &format!("/v1/cards/{token}"))
            .await;
        vault
            .internal(Method::POST, &format!("/v1/cards/{token}/charge-method"))
            .await;
        vault
        .tokenize(json!({"number": "4242424242424241", "exp_month": 12, "exp_year": 2030, "cvc": "083"}))
        .await;
        let rows: Vec<AuditRow> = sqlx::query_as(
            "SELECT actor, action, token, outcome, request_id FROM audit_log ORDER BY seq",
        )
        .fetch_all(&vault.db().pool)
        .await
        .unwrap();
        let actions: Vec<(&str, &str)> =
            rows.iter().map(|r| (r.1.as_str(), r.3.as_str())).collect();
        assert_eq!(
            actions,
            [
                ("keys.init", "ok"),
                ("tokenize", "created"),
                ("get", "ok"),
                ("charge_method", "ok:cvc_provided"),
                ("tokenize", "refused:invalid_number"),
            ]
        );
        assert!(rows[1].0.starts_with("collect:127.0.0.1"));
        assert_eq!(rows[2].0, "billing:carebill-billing");
        assert_eq!(rows[2].4.as_deref(), Some("req_test"));
        let verified = tokenizer::audit::verify(vault.db()).await.unwrap();
        assert_eq!(verified.rows, 5);

        // The database refuses edits and deletions of the trail.
        for sql in [
            "UPDATE audit_log SET outcome = 'ok' WHERE seq = 5",
            "DELETE FROM audit_log WHERE seq = 1",
        ] {
            assert!(
                sqlx::query(sql).execute(&vault.db().pool).await.is_err(),
                "{sql}"
            );
        }
        vault
    }
);

vault_test!(
    bad_cards_are_refused_naming_the_field_and_nothing_is_stored,
    |vault: Vault| async move {
        let cases = [
            (
                json!({"number": "4242424242424241", "exp_month": 12, "exp_year": 2030, "cvc": "083"}),
                400,
                "number",
            ),
            (
                json!({"number": "4242 4242", "exp_month": 12, "exp_year": 2030, "cvc": "083"}),
                400,
                "number",
            ),
            (
                json!({"number": "4242abcd42424242", "exp_month": 12, "exp_year": 2030, "cvc": "083"}),
                400,
                "number",
            ),
            (
                json!({"number": VISA, "exp_month": 13, "exp_year": 2030, "cvc": "083"}),
                400,
                "exp_month",
            ),
            (
                json!({"number": VISA, "exp_month": 1, "exp_year": 2021, "cvc": "083"}),
                400,
                "exp_year",
            ),
            (
                json!({"number": VISA, "exp_month": 12, "exp_year": 2030, "cvc": "07315"}),
                400,
                "cvc",
            ),
            (
                json!({"number": VISA, "exp_month": 12, "exp_year": 2030, "cvc": "083", "ssn": "1"}),
                400,
                "ssn",
            ),
            (
                json!({"exp_month": 12, "exp_year": 2030, "cvc": "083"}),
                400,
                "number",
            ),
        ];
        for (card, status, param) in cases {
            let (got, body) = vault.tokenize(card.clone()).await;
            assert_eq!(got, status, "{card} -> {body}");
            assert_eq!(body["param"], param, "{card} -> {body}");
            let text = body.to_string();
            assert!(
                !text.contains("4242424242"),
                "the error repeats the number: {text}"
            );
        }
        // Wrong content type, huge body.
        let response = vault
            .browser
            .post(vault.collect_url("/v1/cards"))
            .header("content-type", "text/plain")
            .body(format!(r#"{{"number":"{VISA}"}}"#))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 415);
        let response = vault
            .browser
            .post(vault.collect_url("/v1/cards"))
            .header("content-type", "application/json")
            .body(format!(r#"{{"name":"{}"}}"#, "x".repeat(100_000)))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 413);
        assert_eq!(vault.count("SELECT COUNT(*) FROM cards").await, 0);
        vault
    }
);
