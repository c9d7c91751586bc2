//! The Stripe adapter against `localstripe` (PyPI), a fake but stateful Stripe server: a
//! PaymentMethod made from a test card, a payment, a refund, and localstripe's signed webhook
//! verified and applied by `POST /v1/webhooks/stripe`.
//!
//! localstripe is started per test on 127.0.0.1 (its own `localstripe` command binds every
//! interface, `::`; we run its aiohttp app with `host = 127.0.0.1` instead), from the virtualenv
//! `.ci/run` installs it into (`$CAREBILL_TOOLS_BIN`, else `/var/tmp/carebill-venv/bin`).
//! Without it the test is skipped, except in CI, where it fails.
//!
//! Where localstripe falls short, and what covers it instead (tests/stripe_faults.rs, a
//! fault-injecting fake Stripe of our own, at the HTTP level):
//! - it ignores `Idempotency-Key`: a retried POST would be a second charge there, so "no double
//!   charge / no double refund under retries" is asserted against our own fake;
//! - it accepts over-refunds (billing refuses them before calling Stripe, tests/api_flow.rs);
//! - it cannot time out, answer 500/429, send `Stripe-Should-Retry` or drop a connection;
//! - it has no disputes, sends no `refund.*` or `charge.refunded` events (only
//!   `payment_intent.*` among the ones we handle), and no `payout.paid`;
//! - its balance transactions are not made by charges and refunds (only by hand, `charge` or
//!   `refund` types, always with a zero fee), so `carebill reconcile` is tested against our fake;
//! - it accepts only secret keys (`sk_…`), not the restricted key (`rk_…`) billing holds in
//!   production, and it answers with API version 2017-08-15 objects: fields newer versions
//!   always send are missing, so async-stripe 1.0's typed PaymentIntent, Charge,
//!   BalanceTransaction and Event refuse its answers (the exact fields: src/stripe/mod.rs, "Why
//!   not async-stripe"), which is one reason the adapter reads JSON, not typed structs;
//! - it signs webhooks with `t` = the event's creation time, so a delivery it retries late
//!   would be stale by our tolerance (it does not retry).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use carebill::db::Backend;
use common::*;

const SECRET: &str = "whsec_localstripe_test";
const KEY: &str = "sk_test_carebill_localstripe";

/// The virtualenv's Python, when localstripe is installed in it.
fn localstripe_python() -> Option<PathBuf> {
    let found = [
        std::env::var_os("CAREBILL_TOOLS_BIN").map(PathBuf::from),
        Some(PathBuf::from("/var/tmp/carebill-venv/bin")),
    ]
    .into_iter()
    .flatten()
    .find(|dir| dir.join("localstripe").exists())
    .map(|dir| dir.join("python3"));
    if found.is_none() {
        assert!(
            std::env::var("CI").is_err(),
            "localstripe is required in CI (.ci/run installs it)"
        );
        eprintln!("localstripe not installed; skipping (CI installs it)");
    }
    found
}

struct LocalStripe {
    child: Child,
    base: String,
}

impl Drop for LocalStripe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_localstripe(python: &PathBuf) -> LocalStripe {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // A fresh store (no `try_load_from_disk`), bound to loopback only.
    let child = Command::new(python)
        .arg("-c")
        .arg(
            "import sys\nfrom aiohttp import web\nfrom localstripe.server import app\n\
             web.run_app(app, host='127.0.0.1', port=int(sys.argv[1]), print=None)",
        )
        .arg(port.to_string())
        // Billing listens on HTTPS only: localstripe's webhook deliveries (aiohttp, OpenSSL's
        // default verify paths) trust the test CA and nothing else.
        .env("SSL_CERT_FILE", &test_tls().ca_cert)
        .env_remove("SSL_CERT_DIR")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let ls = LocalStripe { child, base };
    let http = reqwest::Client::new();
    for _ in 0..150 {
        if http
            .get(format!("{}/v1/payment_intents", ls.base))
            .bearer_auth(KEY)
            .send()
            .await
            .is_ok()
        {
            return ls;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("localstripe did not start on {}", ls.base);
}

async fn events_of(app: &TestApp, kind: &str) -> Vec<String> {
    sqlx::query("SELECT outcome FROM stripe_events WHERE type = $1")
        .bind(kind)
        .fetch_all(&app.db.pool)
        .await
        .unwrap()
        .iter()
        .map(|r| sqlx::Row::try_get(r, "outcome").unwrap())
        .collect()
}

async fn pay_refund_and_webhook(backend: Backend) {
    let Some(python) = localstripe_python() else {
        return;
    };
    let ls = start_localstripe(&python).await;
    let base = ls.base.clone();
    let app = TestApp::spawn_with(backend, move |c| {
        c.stripe.api_key = Some(Arc::new(zeroize::Zeroizing::new(KEY.to_owned())));
        c.stripe.api_base = base;
        c.stripe.timeout_ms = 3_000;
        c.stripe.max_retries = 1;
        c.stripe.retry_base_ms = 5;
        c.stripe.retry_max_ms = 40;
        c.stripe.webhook_secrets = Arc::new(vec![zeroize::Zeroizing::new(SECRET.to_owned())]);
    })
    .await;
    let http = reqwest::Client::new();
    // localstripe's webhook endpoint, signed with our secret.
    let r = http
        .post(format!("{}/_config/webhooks/carebill", ls.base))
        .form(&[
            ("url", format!("{}/v1/webhooks/stripe", app.base)),
            ("secret", SECRET.to_owned()),
        ])
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());

    // A PaymentMethod from a test card, as the vault's minter makes it (in production the
    // vault holds this key and billing never sees the number).
    let pm: Value = http
        .post(format!("{}/v1/payment_methods", ls.base))
        .bearer_auth(KEY)
        .form(&[
            ("type", "card"),
            ("card[number]", "4242424242424242"),
            ("card[exp_month]", "12"),
            ("card[exp_year]", "2030"),
            ("card[cvc]", "123"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pm_id = pm["id"].as_str().expect("a PaymentMethod id").to_owned();
    assert!(pm_id.starts_with("pm_"), "{pm}");

    // Pay with it: a confirmed PaymentIntent at localstripe.
    let invoice = app.open_invoice("usd", 10_000).await;
    let r = app
        .admin
        .post(
            "/v1/payments",
            &json!({"invoice": invoice["id"], "amount": 6_000, "currency": "usd", "payment_method": pm_id}),
            Some(&new_key()),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "succeeded", "{}", r.body);
    assert_eq!(r.body["card"]["last4"], "4242", "{}", r.body);
    let payment = r.body["id"].as_str().unwrap().to_owned();
    let intent: Value = http
        .get(format!("{}/v1/payment_intents?limit=10", ls.base))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let intents = intent["data"].as_array().unwrap();
    assert_eq!(intents.len(), 1, "{intent}");
    assert_eq!(intents[0]["status"], "succeeded");
    assert_eq!(intents[0]["amount"], 6_000);
    assert_eq!(intents[0]["metadata"]["carebill_payment"], payment.as_str());

    // Refund part of it.
    let r = app
        .admin
        .post(
            "/v1/refunds",
            &json!({"payment": payment, "amount": 1_500, "reason": "billing_error"}),
            Some(&new_key()),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "succeeded", "{}", r.body);
    let refunds: Value = http
        .get(format!("{}/v1/refunds?limit=10", ls.base))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(refunds["data"][0]["amount"], 1_500, "{refunds}");
    assert_eq!(refunds["data"][0]["status"], "succeeded", "{refunds}");

    // localstripe's signed `payment_intent.succeeded` (sent ~1 s later): verified and recorded
    // once; the payment was already final, so it changes nothing.
    let mut outcomes = Vec::new();
    for _ in 0..100 {
        outcomes = events_of(&app, "payment_intent.succeeded").await;
        if !outcomes.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(outcomes, vec!["noop".to_owned()]);
    let rejected: i64 = sqlx::Row::try_get(
        &sqlx::query(
            "SELECT COUNT(*) AS n FROM security_events WHERE kind = 'webhook_signature_rejected'",
        )
        .fetch_one(&app.db.pool)
        .await
        .unwrap(),
        "n",
    )
    .unwrap();
    assert_eq!(rejected, 0, "localstripe's signatures verify");
    let now = app
        .admin
        .get(&format!("/v1/payments/{payment}"))
        .await
        .unwrap();
    assert_eq!(now.body["status"], "succeeded");
    assert_eq!(now.body["amount_refunded"], 1_500, "{}", now.body);
    app.assert_ledger_sound().await;
    app.finish().await;
    drop(ls);
}

mod pay_refund_and_webhook {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite() {
        super::pay_refund_and_webhook(carebill::db::Backend::Sqlite).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres() {
        super::pay_refund_and_webhook(carebill::db::Backend::Postgres).await
    }
}
