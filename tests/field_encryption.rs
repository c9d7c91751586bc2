//! Health data encrypted at rest, field by field (src/crypto), on both backends: nothing a test
//! puts in is found in the database's bytes; blind-index search; crypto-shredding erasure that
//! keeps the ledger; a tampered ciphertext that spoils one record and raises a security event;
//! KEK rotation and resumable re-wrapping through the real command line; and a wrong or missing
//! keyring that refuses to start.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use std::path::{Path, PathBuf};

use carebill::config::Config;
use carebill::db::Backend;
use common::*;

const NAME: &str = "Philippa Quartermaine-Oyelaran";
const DOB: &str = "1961-07-23";
const EMAIL: &str = "p.quartermaine@example.org";
const PHONE: &str = "+1 555 013 2871";
const MRN: &str = "MRN-77Q3-0914";
const STREET: &str = "41 Wisteria Crescent";
const LINE_CODE: &str = "J45X909";
const LINE_TEXT: &str = "Asthma review with nebulizer teaching";
const REFUND_NOTE: &str = "charged twice for the spirometry";
const ADJUSTMENT_REASON: &str = "hardship discount agreed with oncology social worker";

/// Every byte the database holds for the test's tables, as text: the SQLite file and its WAL,
/// or a `pg_dump --data-only` of the PostgreSQL database.
async fn database_bytes(app: &TestApp) -> String {
    let url = app.state().config.database_url.clone();
    match app.backend {
        Backend::Sqlite => {
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&app.db.pool)
                .await
                .unwrap();
            let path = url.trim_start_matches("sqlite://").to_owned();
            let mut bytes = std::fs::read(&path).unwrap();
            if let Ok(wal) = std::fs::read(format!("{path}-wal")) {
                bytes.extend(wal);
            }
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Backend::Postgres => {
            let out = std::process::Command::new("pg_dump")
                .args(["--data-only", &url])
                .output()
                .unwrap();
            assert!(out.status.success(), "pg_dump failed");
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    }
}

async fn create_patient(app: &TestApp, name: &str, dob: &str, email: &str, mrn: &str) -> String {
    let body = serde_json::json!({
        "name": name, "date_of_birth": dob, "email": email, "phone": PHONE, "mrn": mrn,
        "address": {"line1": STREET, "city": "Springfield", "postal_code": "62701", "country": "US"},
    });
    // With an Idempotency-Key: the saved response (which holds all of it) is stored too.
    let r = app
        .admin
        .post("/v1/patients", &body, Some(&new_key()))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    id_of(&r.body).unwrap()
}

async fn invoice_with_line(app: &TestApp, patient: &str) -> serde_json::Value {
    let inv = app
        .admin
        .create(
            "/v1/invoices",
            &serde_json::json!({"patient": patient, "currency": "usd", "due_date": "2030-01-31",
                "lines": [{"service_date": "2026-03-02", "code": LINE_CODE, "description": LINE_TEXT,
                           "quantity": 2, "unit_amount": 7500}]}),
        )
        .await
        .unwrap();
    app.admin
        .create(
            &format!("/v1/invoices/{}/finalize", id_of(&inv).unwrap()),
            &serde_json::json!({}),
        )
        .await
        .unwrap()
}

fn bearer(app: &TestApp, role: &str) -> String {
    format!("Bearer {}", app.keys[role])
}

async fn erase(app: &TestApp, role: &str, patient: &str) -> (u16, serde_json::Value) {
    let r = app
        .admin
        .http
        .delete(format!("{}/v1/patients/{patient}/personal-data", app.base))
        .header("authorization", bearer(app, role))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn search(app: &TestApp, body: serde_json::Value) -> (u16, serde_json::Value) {
    let r = app
        .admin
        .post("/v1/patients/search", &body, None)
        .await
        .unwrap();
    (r.status, r.body)
}

async fn security_events(app: &TestApp, kind: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM security_events WHERE kind = $1")
        .bind(kind)
        .fetch_one(&app.db.pool)
        .await
        .unwrap()
}

both_backends!(
    health_data_is_only_ciphertext_at_rest,
    |app: TestApp| async move {
        let id = create_patient(&app, NAME, DOB, EMAIL, MRN).await;
        let inv = invoice_with_line(&app, &id).await;
        // The API gives it all back, decrypted…
        let got = app
            .admin
            .get(&format!("/v1/patients/{id}"))
            .await
            .unwrap()
            .body;
        assert_eq!(got["personal_data"], "available");
        assert_eq!(got["name"], NAME);
        assert_eq!(got["date_of_birth"], DOB);
        assert_eq!(got["email"], EMAIL);
        assert_eq!(got["phone"], PHONE);
        assert_eq!(got["mrn"], MRN);
        assert_eq!(got["address"]["line1"], STREET);
        let line = &app
            .admin
            .get(&format!("/v1/invoices/{}", id_of(&inv).unwrap()))
            .await
            .unwrap()
            .body["lines"][0];
        assert_eq!(line["code"], LINE_CODE);
        assert_eq!(line["description"], LINE_TEXT);
        // Free text on money records too: a refund's note, an adjustment's reason.
        let adj = app
        .admin
        .create(
            &format!("/v1/invoices/{}/adjustments", id_of(&inv).unwrap()),
            &serde_json::json!({"kind": "discount", "amount": 1000, "reason": ADJUSTMENT_REASON}),
        )
        .await
        .unwrap();
        assert_eq!(adj["reason"], ADJUSTMENT_REASON);
        let pay = app.pay(&inv, 5000).await;
        let re = app
        .admin
        .create(
            "/v1/refunds",
            &serde_json::json!({"payment": pay["id"], "amount": 300, "reason": "billing_error", "note": REFUND_NOTE}),
        )
        .await
        .unwrap();
        assert_eq!(re["note"], REFUND_NOTE);
        let listed = app.admin.get("/v1/refunds").await.unwrap().body;
        assert_eq!(listed["data"][0]["note"], REFUND_NOTE);
        let listed = app
            .admin
            .get(&format!(
                "/v1/invoices/{}/adjustments",
                id_of(&inv).unwrap()
            ))
            .await
            .unwrap()
            .body;
        assert_eq!(listed["data"][0]["reason"], ADJUSTMENT_REASON);
        // …while the database holds none of it, in any table, row, index or the saved response.
        let bytes = database_bytes(&app).await;
        assert!(bytes.len() > 10_000, "the scan read the database");
        assert!(
            bytes.contains(id.as_str()),
            "ids stay in clear (the scan sees rows)"
        );
        for secret in [
            NAME,
            "Quartermaine",
            DOB,
            EMAIL,
            PHONE,
            MRN,
            STREET,
            LINE_CODE,
            LINE_TEXT,
            REFUND_NOTE,
            ADJUSTMENT_REASON,
        ] {
            assert!(
                !bytes.contains(secret),
                "{secret:?} is in the database in clear"
            );
        }
        // The database refuses a clear value, whatever the code does.
        let refused = sqlx::query("UPDATE patients SET name_enc = $1 WHERE id = $2")
            .bind(NAME)
            .bind(&id)
            .execute(&app.db.pool)
            .await;
        assert!(refused.is_err(), "a clear name is refused by a CHECK");
        app
    }
);

both_backends!(
    search_goes_through_blind_indexes,
    |app: TestApp| async move {
        let id = create_patient(&app, NAME, DOB, EMAIL, MRN).await;
        let other = create_patient(
            &app,
            "Someone Else",
            "1990-01-01",
            "else@example.org",
            "MRN-1",
        )
        .await;
        for body in [
            serde_json::json!({"email": EMAIL.to_uppercase()}),
            serde_json::json!({"mrn": "mrn 77q3 0914"}),
            serde_json::json!({"name": "  philippa   QUARTERMAINE-oyelaran ", "date_of_birth": DOB}),
        ] {
            let (status, found) = search(&app, body.clone()).await;
            assert_eq!(status, 200, "{found}");
            let ids: Vec<&str> = found["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["id"].as_str().unwrap())
                .collect();
            assert_eq!(ids, vec![id.as_str()], "{body}");
            assert_eq!(found["data"][0]["name"], NAME);
        }
        let (_, none) = search(
            &app,
            serde_json::json!({"name": NAME, "date_of_birth": "1961-07-24"}),
        )
        .await;
        assert_eq!(none["data"].as_array().unwrap().len(), 0);
        let (_, none) = search(&app, serde_json::json!({"email": "nobody@example.org"})).await;
        assert_eq!(none["data"].as_array().unwrap().len(), 0);
        // The indexes are keyed: nothing in the database is an unkeyed hash of the email.
        let unkeyed = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(EMAIL.as_bytes()))
        };
        assert!(!database_bytes(&app).await.contains(&unkeyed));
        // Bad input: each names its parameter; nothing is searched.
        for (body, param) in [
            (serde_json::json!({}), "email"),
            (serde_json::json!({"email": EMAIL, "mrn": MRN}), "email"),
            (serde_json::json!({"name": NAME}), "date_of_birth"),
            (serde_json::json!({"date_of_birth": DOB}), "name"),
            (
                serde_json::json!({"name": NAME, "date_of_birth": "23/07/1961"}),
                "date_of_birth",
            ),
            (serde_json::json!({"email": EMAIL, "limit": 0}), "limit"),
            (serde_json::json!({"email": "x".repeat(300)}), "email"),
            (serde_json::json!({"ssn": "1"}), "ssn"),
        ] {
            let (status, err) = search(&app, body.clone()).await;
            assert_eq!(status, 400, "{body}: {err}");
            assert_eq!(err["error"]["param"], param, "{body}: {err}");
        }
        // Facility-bound staff and patients see only their own (record-level rules apply).
        let _ = other;
        app
    }
);

both_backends!(
    erasure_destroys_the_key_and_keeps_the_ledger,
    |app: TestApp| async move {
        let id = create_patient(&app, NAME, DOB, EMAIL, MRN).await;
        let inv = invoice_with_line(&app, &id).await;
        let paid = app.pay(&inv, 5000).await;
        assert_eq!(paid["status"], "succeeded");
        let entries_before = app.count("journal_entries").await;

        // Only a billing manager may erase.
        for role in [
            "front_desk",
            "billing_clerk",
            "accountant",
            "auditor",
            "admin",
        ] {
            let (status, _) = erase(&app, role, &id).await;
            assert_eq!(status, 403, "{role}");
        }
        let (status, erased) = erase(&app, "billing_manager", &id).await;
        assert_eq!(status, 200, "{erased}");
        assert_eq!(erased["personal_data"], "erased");
        assert!(erased["erased_at"].is_string());
        for field in ["name", "date_of_birth", "email", "phone", "mrn", "address"] {
            assert!(erased[field].is_null(), "{field}: {erased}");
        }
        // Again: not an error, the same answer.
        let (status, again) = erase(&app, "billing_manager", &id).await;
        assert_eq!(status, 200);
        assert_eq!(again["erased_at"], erased["erased_at"]);

        // The key is gone for good, and the database will not bring it back.
        let wrapped: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT wrapped_key FROM data_keys WHERE owner = $1")
                .bind(&id)
                .fetch_one(&app.db.pool)
                .await
                .unwrap();
        assert!(wrapped.is_none());
        let resurrect = sqlx::query(
        "UPDATE data_keys SET wrapped_key = (SELECT wrapped_key FROM data_keys WHERE owner <> $1 AND wrapped_key IS NOT NULL LIMIT 1), destroyed_at_us = NULL WHERE owner = $1",
    )
    .bind(&id)
    .execute(&app.db.pool)
    .await;
        assert!(resurrect.is_err(), "a destroyed key cannot come back");
        assert!(sqlx::query("DELETE FROM data_keys WHERE owner = $1")
            .bind(&id)
            .execute(&app.db.pool)
            .await
            .is_err());

        // The bill keeps its amounts and loses its texts; the ledger is untouched and balanced.
        let bill = app
            .admin
            .get(&format!("/v1/invoices/{}", id_of(&inv).unwrap()))
            .await
            .unwrap()
            .body;
        assert_eq!(bill["amount_paid"], 5000);
        assert_eq!(bill["lines"][0]["amount"], 15000);
        assert!(bill["lines"][0].get("description").is_none(), "{bill}");
        assert!(bill["lines"][0].get("code").is_none(), "{bill}");
        assert_eq!(app.count("journal_entries").await, entries_before);
        app.assert_ledger_sound().await;
        let statement = app
            .admin
            .get(&format!("/v1/patients/{id}/statement"))
            .await
            .unwrap()
            .body;
        assert_eq!(statement["balance_due"], 10000);

        // Nothing finds them any more; nothing can be written for them.
        let (_, found) = search(&app, serde_json::json!({"email": EMAIL})).await;
        assert_eq!(found["data"].as_array().unwrap().len(), 0);
        let (_, found) = search(
            &app,
            serde_json::json!({"name": NAME, "date_of_birth": DOB}),
        )
        .await;
        assert_eq!(found["data"].as_array().unwrap().len(), 0);
        let r = app
            .admin
            .post(
                &format!("/v1/patients/{id}"),
                &serde_json::json!({"phone": "+1 555 0199"}),
                None,
            )
            .await
            .unwrap();
        assert_eq!(r.status, 409, "{}", r.body);
        assert_eq!(r.body["error"]["code"], "personal_data_erased");
        let r = app
        .admin
        .post(
            "/v1/invoices",
            &serde_json::json!({"patient": id, "currency": "usd", "due_date": "2030-01-31",
                "lines": [{"service_date": "2026-03-02", "code": "X", "description": "Y", "quantity": 1, "unit_amount": 100}]}),
            None,
        )
        .await
        .unwrap();
        assert_eq!(r.status, 409, "{}", r.body);
        // Audited twice over: the request in the audit trail, the act as a security event.
        assert_eq!(security_events(&app, "personal_data_erased").await, 1);
        let actor: String = sqlx::query_scalar(
            "SELECT actor FROM security_events WHERE kind = 'personal_data_erased'",
        )
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
        assert!(actor.starts_with("key_"), "{actor}");
        app
    }
);

both_backends!(
    a_tampered_ciphertext_spoils_one_record_not_the_list,
    |app: TestApp| async move {
        let a = create_patient(&app, NAME, DOB, EMAIL, MRN).await;
        let b = create_patient(
            &app,
            "Second Person",
            "1970-02-02",
            "second@example.org",
            "MRN-2",
        )
        .await;
        // Move b's sealed name into a's row: it is bound to b, so it must not open as a's.
        sqlx::query("UPDATE patients SET name_enc = (SELECT name_enc FROM patients WHERE id = $1) WHERE id = $2")
        .bind(&b)
        .bind(&a)
        .execute(&app.db.pool)
        .await
        .unwrap();
        let got = app.admin.get(&format!("/v1/patients/{a}")).await.unwrap();
        assert_eq!(got.status, 200);
        assert_eq!(got.body["personal_data"], "unreadable");
        assert!(got.body["name"].is_null() && got.body["email"].is_null());
        let list = app.admin.get("/v1/patients").await.unwrap();
        assert_eq!(list.status, 200);
        let second = list.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == b.as_str())
            .unwrap()
            .clone();
        assert_eq!(second["name"], "Second Person");
        assert!(security_events(&app, "ciphertext_rejected").await >= 2);
        let detail: String = sqlx::query_scalar(
            "SELECT detail FROM security_events WHERE kind = 'ciphertext_rejected' LIMIT 1",
        )
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
        assert!(detail.starts_with("patients.name"), "{detail}");
        assert!(!detail.contains("Second"), "{detail}");
        app
    }
);

fn keys_cli(url: &str, keyring: &Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_carebill"))
        .arg("keys")
        .args(args)
        .env("DATABASE_URL", url)
        .env("CAREBILL_KEYRING_FILE", keyring)
        .env_remove("CAREBILL_KEYRING")
        .env_remove("CAREBILL_CONFIG")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn kek_versions(app: &TestApp) -> Vec<(i64, String, i64)> {
    let rows = sqlx::query(
        "SELECT v.version, v.status, (SELECT COUNT(*) FROM data_keys d WHERE d.kek_version = v.version AND d.wrapped_key IS NOT NULL) \
         FROM kek_versions v ORDER BY v.version",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    rows.iter()
        .map(|r| {
            use sqlx::Row;
            (r.get(0), r.get(1), r.get(2))
        })
        .collect()
}

async fn rotation(backend: Backend) {
    let dir = temp_dir("carebill-keyring");
    let keyring: PathBuf = dir.path().join("billing.keyring");
    carebill::crypto::store::write_new_keyring(&keyring).unwrap();
    let file = keyring.clone();
    let app = TestApp::spawn_with(backend, move |c: &mut Config| {
        c.keyring_inline = None;
        c.keyring_file = Some(file);
    })
    .await;
    let url = app.state().config.database_url.clone();
    let mut patients = Vec::new();
    for i in 0..7 {
        patients.push(
            create_patient(
                &app,
                &format!("Rotating Patient {i}"),
                DOB,
                &format!("r{i}@example.org"),
                &format!("R-{i}"),
            )
            .await,
        );
    }
    // Rotate with the command line, beside the running server.
    let (ok, out) = keys_cli(&url, &keyring, &["rotate"]);
    assert!(ok, "{out}");
    assert!(out.contains("KEK version 2"), "{out}");
    // The running server wraps new keys under version 2 at once (it re-reads the keyring).
    patients.push(create_patient(&app, "After Rotation", DOB, "after@example.org", "R-A").await);
    let versions = kek_versions(&app).await;
    assert!(versions.len() >= 2, "{versions:?}");
    assert_eq!(versions[1].0, 2);
    assert_eq!(
        versions[1].2, 1,
        "the new patient's key is under v2: {versions:?}"
    );
    // Re-wrap in bounded batches: stop after one batch of 3, then finish.
    let (ok, out) = keys_cli(
        &url,
        &keyring,
        &["rewrap", "--batch-size", "3", "--max-batches", "1"],
    );
    assert!(ok, "{out}");
    assert!(out.contains("stopped early"), "{out}");
    let versions = kek_versions(&app).await;
    assert_eq!(versions[0].1, "active", "v1 still wraps keys: {versions:?}");
    assert!(versions[0].2 > 0);
    let (ok, out) = keys_cli(&url, &keyring, &["rewrap", "--batch-size", "3"]);
    assert!(ok, "{out}");
    assert!(out.contains("KEK version 1 retired"), "{out}");
    let versions = kek_versions(&app).await;
    assert_eq!(versions[0], (1, "retired".to_owned(), 0), "{versions:?}");
    let (ok, out) = keys_cli(&url, &keyring, &["list"]);
    assert!(ok && out.contains("retired"), "{out}");
    // Every patient still reads, old and new.
    for p in &patients {
        let got = app
            .admin
            .get(&format!("/v1/patients/{p}"))
            .await
            .unwrap()
            .body;
        assert_eq!(got["personal_data"], "available", "{got}");
    }
    // The database refuses to wrap under a retired version, or to bring it back.
    assert!(
        sqlx::query("UPDATE data_keys SET kek_version = 1 WHERE owner = $1")
            .bind(&patients[0])
            .execute(&app.db.pool)
            .await
            .is_err()
    );
    assert!(sqlx::query(
        "UPDATE kek_versions SET status = 'active', retired_at_us = NULL WHERE version = 1"
    )
    .execute(&app.db.pool)
    .await
    .is_err());
    // A version still in use cannot be retired.
    assert!(sqlx::query(
        "UPDATE kek_versions SET status = 'retired', retired_at_us = 1 WHERE version = 2"
    )
    .execute(&app.db.pool)
    .await
    .is_err());
    // The retired key can leave the keyring: the server still starts and reads everything.
    let text = std::fs::read_to_string(&keyring).unwrap();
    let without_v1: String = text
        .lines()
        .filter(|l| !l.starts_with("kek 1 "))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&keyring, without_v1).unwrap();
    let (ok, out) = keys_cli(&url, &keyring, &["list"]);
    assert!(ok, "{out}");
    // Key operations are security events.
    assert_eq!(security_events(&app, "kek_rotated").await, 1);
    assert_eq!(security_events(&app, "data_keys_rewrapped").await, 2);
    assert_eq!(security_events(&app, "kek_retired").await, 1);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_and_rewrap_sqlite() {
    rotation(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_and_rewrap_postgres() {
    rotation(Backend::Postgres).await;
}

async fn wrong_keys(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    create_patient(&app, NAME, DOB, EMAIL, MRN).await;
    let url = app.state().config.database_url.clone();
    let start = |keyring: Option<String>| {
        let url = url.clone();
        async move {
            let config = Config {
                database_url: url,
                keyring_inline: keyring.map(|k| std::sync::Arc::new(zeroize::Zeroizing::new(k))),
                ..Config::default()
            };
            carebill::server::prepare(config)
                .await
                .err()
                .map(|e| e.to_string())
        }
    };
    // No keyring: a clear refusal that says what to do.
    let err = start(None).await.expect("refused without a keyring");
    assert!(err.contains("CAREBILL_KEYRING_FILE"), "{err}");
    // Another keyring (another index key and KEK v1): refused before anything is served.
    let other = carebill::crypto::LocalKeyring::generate_text().to_string();
    let err = start(Some(other.clone()))
        .await
        .expect("refused with a wrong keyring");
    assert!(err.contains("wrong keyring"), "{err}");
    assert!(
        !err.contains(other.lines().last().unwrap()),
        "no key material in the message"
    );
    // The right index key with a wrong KEK v1: refused too, naming the version.
    let mine = app.keyring();
    let index_line = mine.lines().find(|l| l.starts_with("index ")).unwrap();
    let kek_line = other.lines().find(|l| l.starts_with("kek 1 ")).unwrap();
    let err = start(Some(format!("{kek_line}\n{index_line}\n")))
        .await
        .expect("refused with a wrong KEK");
    assert!(err.contains("KEK version 1"), "{err}");
    // A malformed keyring names the line.
    let err = start(Some("kek one AAAA\nindex AAAA\n".to_owned()))
        .await
        .expect("refused");
    assert!(err.contains("line 1"), "{err}");
    // The right one starts.
    assert!(start(Some(mine)).await.is_none());
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_or_missing_keyring_refuses_to_start_sqlite() {
    wrong_keys(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_or_missing_keyring_refuses_to_start_postgres() {
    wrong_keys(Backend::Postgres).await;
}
