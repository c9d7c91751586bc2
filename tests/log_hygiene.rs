//! Nothing sensitive in the logs: the real binary, at debug level, serves a whole billing flow
//! (including bad input that carries health data and a decline) and its log output is scanned
//! for every secret and health value the test sent.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use std::process::{Command, Stdio};
use std::time::Duration;

use carebill::db::Backend;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logs_carry_no_health_data_keys_or_payment_methods() {
    // Goal: names, dates of birth, emails, phones, MRNs, line descriptions, API keys and
    // payment-method ids never reach a log line, even at debug level and on error paths.
    let (url, cleanup) = fresh_database(Backend::Sqlite).await;
    let db = carebill::db::Db::connect(&url).await.unwrap();
    carebill::db::migrate(&db).await.unwrap();
    let key = carebill::auth::create_api_key(&db, carebill::auth::Role::BillingManager)
        .await
        .unwrap()
        .secret;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Kept in the artifacts directory (for the card-data scan) when there is one.
    let log_path = match artifacts_dir() {
        Some(dir) => dir.join(format!("carebill-serve-log-hygiene-{port}.log")),
        None => std::env::temp_dir().join(format!("carebill-log-{port}.jsonl")),
    };
    let log_file = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_carebill"))
        .args(["serve", "--addr", &format!("127.0.0.1:{port}")])
        .envs(tls_env())
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_file))
        .spawn()
        .unwrap();
    let base = format!("https://127.0.0.1:{port}");
    for _ in 0..200 {
        if https_client()
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c = api_client(&base, &key);
    let secrets = [
        "Zebulon Quartermaine",
        "1961-07-04",
        "zebulon.q@example.org",
        "555 0199 4242",
        "MRN-ZQ-90210",
        "Oncology consult Zebulon",
        "pm_card_visa_chargeDeclinedInsufficientFunds",
        key.as_str(),
    ];
    let p = c
        .create("/v1/patients", &json!({"name": secrets[0], "date_of_birth": secrets[1], "email": secrets[2], "phone": secrets[3], "mrn": secrets[4]}))
        .await
        .unwrap();
    let inv = c
        .create("/v1/invoices", &json!({"patient": p["id"], "currency": "usd", "due_date": "2030-01-01",
            "lines": [{"service_date": "2026-01-01", "code": "99245", "description": secrets[5], "quantity": 1, "unit_amount": 50000}]}))
        .await
        .unwrap();
    c.create(
        &format!("/v1/invoices/{}/finalize", inv["id"].as_str().unwrap()),
        &json!({}),
    )
    .await
    .unwrap();
    let r = c
        .post("/v1/payments", &json!({"invoice": inv["id"], "amount": 50000, "currency": "usd", "payment_method": secrets[6]}), Some(&new_key()))
        .await
        .unwrap();
    assert_eq!(r.status, 402);
    // Bad input that carries health data: must not be echoed or logged.
    let r = c
        .post(
            "/v1/patients",
            &json!({"name": secrets[0], "date_of_birth": secrets[0]}),
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(
        !r.body.to_string().contains(secrets[0]),
        "error body echoes the value"
    );
    let r = c
        .post(
            "/v1/patients",
            &json!({"name": 5, "date_of_birth": secrets[1], "bogus": secrets[2]}),
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(!r.body.to_string().contains(secrets[2]));
    let _ = c
        .get(&format!("/v1/patients?starting_after={}", secrets[4]))
        .await
        .unwrap();
    // Sign-in material: a password (right and wrong), the session token, the TOTP secret and
    // codes, recovery codes, a new API key's secret.
    let admin_key = carebill::auth::create_api_key(&db, carebill::auth::Role::Admin)
        .await
        .unwrap()
        .secret;
    let admin = api_client(&base, &admin_key);
    let password = "Quartermaine vaulted 88 zebras";
    admin
        .create("/v1/users", &json!({"email": "zq.staff@example.org", "role": "billing_clerk", "password": password}))
        .await
        .unwrap();
    let wrong = c
        .post(
            "/v1/sessions",
            &json!({"email": "zq.staff@example.org", "password": "Quartermaine wrong guess 77"}),
            None,
        )
        .await
        .unwrap();
    assert_eq!(wrong.status, 401);
    let signin = c
        .post(
            "/v1/sessions",
            &json!({"email": "zq.staff@example.org", "password": password}),
            None,
        )
        .await
        .unwrap();
    let token = signin.body["token"].as_str().unwrap().to_owned();
    let staff = api_client(&base, &token);
    let enrol = staff
        .post("/v1/sessions/mfa/enrollment", &json!({}), None)
        .await
        .unwrap();
    let url = enrol.body["otpauth_url"].as_str().unwrap().to_owned();
    let totp_secret = url
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("secret="))
        .unwrap()
        .to_owned();
    let bytes = totp_rs::Secret::Encoded(totp_secret.clone())
        .to_bytes()
        .unwrap();
    let code = totp_rs::TOTP::new_unchecked(
        totp_rs::Algorithm::SHA1,
        6,
        1,
        30,
        bytes,
        None,
        String::new(),
    )
    .generate_current()
    .unwrap();
    let done = staff
        .post(
            "/v1/sessions/mfa/enrollment/confirm",
            &json!({"code": code}),
            None,
        )
        .await
        .unwrap();
    assert_eq!(done.status, 200, "{}", done.body);
    let active = done.body["token"].as_str().unwrap().to_owned();
    let recovery = done.body["recovery_codes"][0].as_str().unwrap().to_owned();
    let new_key_secret = admin
        .create(
            "/v1/api_keys",
            &json!({"name": "gl", "scopes": ["ledger:read"]}),
        )
        .await
        .unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    child.kill().unwrap();
    let _ = child.wait();
    let mut secrets: Vec<String> = secrets.iter().map(|s| s.to_string()).collect();
    secrets.extend([
        password.to_owned(),
        "Quartermaine wrong guess 77".to_owned(),
        token,
        active,
        totp_secret,
        recovery,
        new_key_secret,
        admin_key,
    ]);

    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert!(logs.contains("request finished"), "the server did log");
    for s in &secrets {
        assert!(
            !logs.contains(s.as_str()),
            "log contains a sensitive value ({} chars)",
            s.len()
        );
    }
    if artifacts_dir().is_none() {
        let _ = std::fs::remove_file(&log_path);
    }
    db.pool.close().await;
    cleanup.run().await;
}
