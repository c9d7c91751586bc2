//! Crash safety: the real `carebill` binary is killed (by an armed fail point that aborts the
//! process) between the processor call and the database commit, then restarted; the retry with
//! the same Idempotency-Key completes the *same* charge or refund instead of making another.
//!
//! Needs the `failpoints` feature (the README's test command enables all features).
#![cfg(feature = "failpoints")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use carebill::db::Backend;
use common::*;

/// A server process, killed and reaped when dropped (also when a test panics).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the binary on a free port against `database_url`, with `failpoints` armed.
async fn start_binary(database_url: &str, keyring: &str, failpoints: &str) -> (Server, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Debug level into the artifacts directory when one is kept.
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

async fn wait_exit(child: &mut Server) -> std::process::ExitStatus {
    for _ in 0..200 {
        if let Some(status) = child.0.try_wait().unwrap() {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("process did not exit");
}

async fn phase_of(app: &TestApp, key: &str) -> String {
    let row = sqlx::query("SELECT phase FROM idempotency_keys WHERE key = $1")
        .bind(key)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    sqlx::Row::try_get(&row, "phase").unwrap()
}

async fn crash_between_processor_and_commit(backend: Backend) {
    // Goal: a payment and a refund each survive a process crash after the processor call:
    // one charge, one refund, the ledger balanced, the retry answering with the same objects.
    let app = TestApp::spawn(backend).await;
    let url = app.state().config.database_url.clone();
    let inv = app.open_invoice("usd", 10000).await;
    let key = app.keys["billing_manager"].clone();

    // 1. The payment: the process dies right after the processor charged the card.
    let (mut child, base) = start_binary(&url, &app.keyring(), "payment_after_processor").await;
    let client = api_client(&base, &key);
    let pay_key = new_key();
    let body = json!({"invoice": inv["id"], "amount": 6000, "currency": "usd", "payment_method": "pm_card_visa"});
    let r = client.post("/v1/payments", &body, Some(&pay_key)).await;
    assert!(r.is_err(), "the request dies with the process: {r:?}");
    let status = wait_exit(&mut child).await;
    assert!(!status.success(), "aborted by the fail point");
    assert_eq!(
        app.count("simulator_charges").await,
        1,
        "the processor charged once"
    );
    assert_eq!(phase_of(&app, &pay_key).await, "processor_called");
    assert_eq!(
        app.count("journal_entries").await,
        1,
        "only the invoice's entry: nothing committed after the charge"
    );

    // 2. Restart without the fail point and retry with the same key after the lease runs out.
    let (child, base) = start_binary(&url, &app.keyring(), "").await;
    let client = api_client(&base, &key);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = client
        .post("/v1/payments", &body, Some(&pay_key))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "succeeded");
    assert_eq!(app.count("payments").await, 1);
    assert_eq!(app.count("simulator_charges").await, 1, "no second charge");
    assert_eq!(phase_of(&app, &pay_key).await, "finished");
    let again = client
        .post("/v1/payments", &body, Some(&pay_key))
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.body, r.body);
    let pay_id = r.body["id"].clone();
    drop(child);

    // 3. The refund: same crash, same recovery.
    let (mut child, base) = start_binary(&url, &app.keyring(), "refund_after_processor").await;
    let client = api_client(&base, &key);
    let re_key = new_key();
    let body = json!({"payment": pay_id, "amount": 2500, "reason": "billing_error"});
    assert!(client
        .post("/v1/refunds", &body, Some(&re_key))
        .await
        .is_err());
    wait_exit(&mut child).await;
    assert_eq!(app.count("simulator_refunds").await, 1);
    let (child, base) = start_binary(&url, &app.keyring(), "").await;
    let client = api_client(&base, &key);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = client
        .post("/v1/refunds", &body, Some(&re_key))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "succeeded");
    assert_eq!(app.count("refunds").await, 1);
    assert_eq!(app.count("simulator_refunds").await, 1, "no second refund");
    let p = client
        .get(&format!("/v1/payments/{}", pay_id.as_str().unwrap()))
        .await
        .unwrap()
        .body;
    assert_eq!(p["amount_refunded"], 2500);
    drop(child);

    app.assert_ledger_sound().await;
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_between_processor_and_commit_sqlite() {
    crash_between_processor_and_commit(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_between_processor_and_commit_postgres() {
    crash_between_processor_and_commit(Backend::Postgres).await;
}
