//! The Stripe adapter and webhooks against a fault-injecting fake Stripe of our own, at the
//! HTTP level.
//!
//! Why not only localstripe: it ignores `Idempotency-Key` (so it cannot show that a retried
//! charge is not a second charge), accepts over-refunds, has no disputes, and cannot time out,
//! answer 500/429 or send `Stripe-Should-Retry` on demand. The fake below keeps Stripe's
//! idempotency semantics (a repeated key replays the first answer) and counts the objects it
//! really created, so "no double charge, no double refund" is asserted on the processor's side.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use carebill::db::Backend;
use carebill::stripe::signature::header_for;
use common::*;

const SECRET: &str = "whsec_fault_test_secret";

/// What the fake does with the next POST.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Does the work, records it under the key, then answers too late (the client times out:
    /// the request landed but its answer was lost).
    LandThenHang,
    /// 500 with `Stripe-Should-Retry: true`, doing nothing.
    Error500,
    /// 429, doing nothing.
    TooMany,
    /// 500 with `Stripe-Should-Retry: false`: the client must not retry.
    Error500NoRetry,
}

#[derive(Default)]
struct Fake {
    faults: VecDeque<Fault>,
    /// Idempotency-Key → the saved answer, as Stripe keeps it.
    saved: HashMap<String, Value>,
    intents: HashMap<String, Value>,
    refunds: HashMap<String, Value>,
    /// Objects really created (a replay creates nothing).
    charges_created: usize,
    refunds_created: usize,
    posts_seen: usize,
    /// The status the next PaymentIntent gets.
    intent_status: String,
    refund_status: String,
    /// Balance transactions, newest first as Stripe lists them: one per succeeded charge
    /// (with a fee) and refund, made as they happen.
    balance_transactions: Vec<Value>,
    payouts: Vec<Value>,
    /// The query of every list request, in order: (path, query).
    list_queries: Vec<(String, HashMap<String, String>)>,
}

type Shared = Arc<Mutex<Fake>>;

async fn start_fake() -> (String, Shared) {
    let fake: Shared = Arc::new(Mutex::new(Fake {
        intent_status: "succeeded".into(),
        refund_status: "succeeded".into(),
        ..Default::default()
    }));
    let app = Router::new()
        .route("/v1/payment_intents", post(create_intent))
        .route("/v1/payment_intents/{id}", get(get_intent))
        .route("/v1/payment_methods/{id}", get(get_pm))
        .route("/v1/refunds", post(create_refund))
        .route("/v1/refunds/{id}", get(get_refund))
        .route("/v1/balance_transactions", get(list_balance_transactions))
        .route("/v1/payouts", get(list_payouts))
        .route("/v1/payouts/{id}", get(get_payout))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), fake)
}

/// Runs a POST through the fault script and Stripe's idempotency.
async fn idempotent(
    fake: &Shared,
    headers: &HeaderMap,
    create: impl FnOnce(&mut Fake) -> Value,
) -> Response {
    let key = headers
        .get("idempotency-key")
        .map(|v| v.to_str().unwrap().to_owned())
        .expect("every POST carries an Idempotency-Key");
    let (fault, answer) = {
        let mut f = fake.lock().unwrap();
        f.posts_seen += 1;
        let fault = f.faults.pop_front();
        let answer = match fault {
            Some(Fault::Error500 | Fault::TooMany | Fault::Error500NoRetry) => None,
            _ => Some(match f.saved.get(&key) {
                Some(v) => v.clone(),
                None => {
                    let v = create(&mut f);
                    f.saved.insert(key, v.clone());
                    v
                }
            }),
        };
        (fault, answer)
    };
    match fault {
        Some(Fault::Error500) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("Stripe-Should-Retry", "true")],
            Json(json!({"error": {"type": "api_error"}})),
        )
            .into_response(),
        Some(Fault::Error500NoRetry) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("Stripe-Should-Retry", "false")],
            Json(json!({"error": {"type": "api_error"}})),
        )
            .into_response(),
        Some(Fault::TooMany) => (
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({"error": {"type": "invalid_request_error", "code": "rate_limit"}})),
        )
            .into_response(),
        Some(Fault::LandThenHang) => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Json(answer.unwrap()).into_response()
        }
        None => Json(answer.unwrap()).into_response(),
    }
}

async fn create_intent(State(fake): State<Shared>, headers: HeaderMap, body: String) -> Response {
    let form: HashMap<String, String> = serde_urlencoded::from_str(&body).unwrap();
    assert_eq!(form.get("confirm").map(String::as_str), Some("true"));
    idempotent(&fake, &headers, |f| {
        f.charges_created += 1;
        let id = format!("pi_fake{}", f.charges_created);
        let status = f.intent_status.clone();
        let mut intent = json!({"id": id, "object": "payment_intent", "status": status,
            "amount": form["amount"].parse::<i64>().unwrap(), "currency": form["currency"],
            "payment_method": form["payment_method"], "client_secret": format!("{id}_secret_x"),
            "metadata": {"carebill_payment": form["metadata[carebill_payment]"]}});
        if status == "requires_action" {
            intent["next_action"] = json!({"type": "use_stripe_sdk"});
        }
        if status == "succeeded" {
            let amount = intent["amount"].as_i64().unwrap();
            let n = f.balance_transactions.len() + 1;
            f.balance_transactions.insert(0, json!({"id": format!("txn_c{n}"), "object": "balance_transaction",
                "created": now_s(), "type": "charge", "amount": amount, "fee": 30 + amount * 29 / 1000, "currency": "usd",
                "source": {"id": format!("ch_{n}"), "object": "charge", "payment_intent": id,
                           "metadata": intent["metadata"]}}));
        }
        f.intents.insert(id, intent.clone());
        intent
    })
    .await
}

async fn get_intent(State(fake): State<Shared>, Path(id): Path<String>) -> Response {
    match fake.lock().unwrap().intents.get(&id) {
        Some(v) => Json(v.clone()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": {"code": "resource_missing"}})),
        )
            .into_response(),
    }
}

async fn get_pm(Path(id): Path<String>) -> Response {
    Json(json!({"id": id, "object": "payment_method", "card": {"brand": "visa", "last4": "4242"}}))
        .into_response()
}

async fn create_refund(State(fake): State<Shared>, headers: HeaderMap, body: String) -> Response {
    let form: HashMap<String, String> = serde_urlencoded::from_str(&body).unwrap();
    idempotent(&fake, &headers, |f| {
        f.refunds_created += 1;
        let id = format!("re_fake{}", f.refunds_created);
        let refund = json!({"id": id, "object": "refund", "status": f.refund_status,
            "amount": form["amount"].parse::<i64>().unwrap(), "payment_intent": form["payment_intent"],
            "metadata": {"carebill_refund": form["metadata[carebill_refund]"]}});
        if f.refund_status == "succeeded" {
            let n = f.balance_transactions.len() + 1;
            f.balance_transactions.insert(0, json!({"id": format!("txn_r{n}"), "object": "balance_transaction",
                "created": now_s(), "type": "refund", "amount": -refund["amount"].as_i64().unwrap(), "fee": 0, "currency": "usd",
                "source": refund.clone()}));
        }
        f.refunds.insert(id, refund.clone());
        refund
    })
    .await
}

async fn get_refund(State(fake): State<Shared>, Path(id): Path<String>) -> Response {
    match fake.lock().unwrap().refunds.get(&id) {
        Some(v) => Json(v.clone()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": {"code": "resource_missing"}})),
        )
            .into_response(),
    }
}

/// Stripe's list pagination (`limit`, `starting_after`, `has_more`), with pages of at most
/// 2 so that every run crosses pages, and its `created[gte]` filter (an object without
/// `created` counts as created now).
fn page_of(all: &[Value], query: &HashMap<String, String>) -> Response {
    let all: Vec<Value> = match query.get("created[gte]") {
        Some(gte) => {
            let gte: i64 = gte
                .parse()
                .expect("created[gte] is a whole number of seconds");
            all.iter()
                .filter(|o| o["created"].as_i64().unwrap_or_else(now_s) >= gte)
                .cloned()
                .collect()
        }
        None => all.to_vec(),
    };
    let all = &all[..];
    let limit = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(10)
        .min(2);
    let start = match query.get("starting_after") {
        Some(after) => all.iter().position(|o| o["id"] == after.as_str()).unwrap() + 1,
        None => 0,
    };
    let data: Vec<Value> = all.iter().skip(start).take(limit).cloned().collect();
    let has_more = start + data.len() < all.len();
    Json(json!({"object": "list", "data": data, "has_more": has_more})).into_response()
}

async fn list_balance_transactions(
    State(fake): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    assert_eq!(
        query.get("expand[]").map(String::as_str),
        Some("data.source"),
        "the reconciler reads each transaction's source"
    );
    let mut f = fake.lock().unwrap();
    f.list_queries
        .push(("/v1/balance_transactions".into(), query.clone()));
    page_of(&f.balance_transactions, &query)
}

async fn list_payouts(
    State(fake): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let mut f = fake.lock().unwrap();
    f.list_queries.push(("/v1/payouts".into(), query.clone()));
    page_of(&f.payouts, &query)
}

async fn get_payout(State(fake): State<Shared>, Path(id): Path<String>) -> Response {
    match fake
        .lock()
        .unwrap()
        .payouts
        .iter()
        .find(|p| p["id"] == id.as_str())
    {
        Some(v) => Json(v.clone()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": {"code": "resource_missing"}})),
        )
            .into_response(),
    }
}

async fn app_on(backend: Backend, base: &str) -> TestApp {
    let base = base.to_owned();
    TestApp::spawn_with(backend, move |c| {
        c.stripe.api_key = Some(Arc::new(zeroize::Zeroizing::new(
            "rk_test_fault".to_owned(),
        )));
        c.stripe.api_base = base;
        c.stripe.timeout_ms = 400;
        c.stripe.max_retries = 3;
        c.stripe.retry_base_ms = 5;
        c.stripe.retry_max_ms = 40;
        c.stripe.webhook_secrets = Arc::new(vec![zeroize::Zeroizing::new(SECRET.to_owned())]);
    })
    .await
}

fn now_s() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Sends `event` to the webhook endpoint, signed at `t` with `secret`.
async fn deliver(app: &TestApp, event: &Value, secret: &str, t: i64) -> (u16, Value) {
    let body = serde_json::to_vec(event).unwrap();
    let r = https_client()
        .post(format!("{}/v1/webhooks/stripe", app.base))
        .header("Stripe-Signature", header_for(secret, t, &body))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn event(id: &str, kind: &str, created: i64, object: Value) -> Value {
    json!({"id": id, "object": "event", "type": kind, "created": created, "data": {"object": object}})
}

async fn entries_of_kind(app: &TestApp, kind: &str) -> i64 {
    let row = sqlx::query("SELECT COUNT(*) AS n FROM journal_entries WHERE kind = $1")
        .bind(kind)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    sqlx::Row::try_get(&row, "n").unwrap()
}

/// The `data` of the outbox's events of `kind`, oldest first.
async fn outbox_of(app: &TestApp, kind: &str) -> Vec<Value> {
    let rows: Vec<String> =
        sqlx::query_scalar("SELECT payload FROM webhook_events WHERE type = $1 ORDER BY seq")
            .bind(kind)
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    rows.iter()
        .map(|p| serde_json::from_str::<Value>(p).unwrap()["data"].clone())
        .collect()
}

/// The keys of an outbox payload: ids, amounts, currency, status, dates — nothing else.
fn assert_keys(data: &Value, keys: &[&str]) {
    let mut got: Vec<&str> = data
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    got.sort_unstable();
    let mut want = keys.to_vec();
    want.sort_unstable();
    assert_eq!(got, want, "{data}");
}

async fn pay(app: &TestApp, amount: i64) -> Value {
    let invoice = app.open_invoice("usd", 10_000).await;
    let r = app
        .admin
        .post(
            "/v1/payments",
            &json!({"invoice": invoice["id"], "amount": amount, "currency": "usd", "payment_method": "pm_card_visa"}),
            Some(&new_key()),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

/// A charge whose first answer is lost, then 500, then 429: retried with the same key, it
/// succeeds once — one PaymentIntent at the fake, one capture entry in the ledger.
async fn retries_never_double_charge(backend: Backend) {
    let (base, fake) = start_fake().await;
    let app = app_on(backend, &base).await;
    fake.lock().unwrap().faults =
        VecDeque::from([Fault::LandThenHang, Fault::Error500, Fault::TooMany]);
    let p = pay(&app, 5_000).await;
    assert_eq!(p["status"], "succeeded", "{p}");
    assert_eq!(p["card"]["last4"], "4242");
    {
        let f = fake.lock().unwrap();
        assert_eq!(f.charges_created, 1, "exactly one charge at the processor");
        assert_eq!(f.posts_seen, 4, "first attempt + three retries");
    }
    assert_eq!(entries_of_kind(&app, "payment_captured").await, 1);

    // Two equal partial refunds are two refunds (keys from our refund ids), each once, even
    // through a lost answer.
    fake.lock().unwrap().faults = VecDeque::from([Fault::LandThenHang]);
    for _ in 0..2 {
        let r = app
            .admin
            .post(
                "/v1/refunds",
                &json!({"payment": p["id"], "amount": 1_000, "reason": "billing_error"}),
                Some(&new_key()),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["status"], "succeeded", "{}", r.body);
    }
    assert_eq!(fake.lock().unwrap().refunds_created, 2);
    assert_eq!(entries_of_kind(&app, "refund_succeeded").await, 2);
    app.assert_ledger_sound().await;
    app.finish().await;
}

/// `Stripe-Should-Retry: false` stops retries at once; an outcome left unknown leaves the
/// payment `processing` (no entry), and Stripe's webhook settles it — once, whatever the
/// duplicates and late, out-of-order events.
async fn unknown_outcome_settles_by_webhook(backend: Backend) {
    let (base, fake) = start_fake().await;
    let app = app_on(backend, &base).await;
    fake.lock().unwrap().faults = VecDeque::from([Fault::Error500NoRetry]);
    let p = pay(&app, 3_000).await;
    assert_eq!(p["status"], "processing", "{p}");
    assert_eq!(
        fake.lock().unwrap().posts_seen,
        1,
        "Stripe-Should-Retry: false is obeyed"
    );
    assert_eq!(entries_of_kind(&app, "payment_captured").await, 0);

    // What Stripe eventually did: the intent succeeded (its id reaches us in the webhook).
    let intent = json!({"id": "pi_late1", "object": "payment_intent", "status": "succeeded",
        "amount": 3000, "currency": "usd", "payment_method": "pm_card_visa",
        "metadata": {"carebill_payment": p["id"]}});
    fake.lock()
        .unwrap()
        .intents
        .insert("pi_late1".into(), intent.clone());
    let t = now_s();
    let (s, b) = deliver(
        &app,
        &event("evt_ok1", "payment_intent.succeeded", t, intent.clone()),
        SECRET,
        t,
    )
    .await;
    assert_eq!((s, b["outcome"].as_str()), (200, Some("applied")), "{b}");
    // The same event again: nothing happens.
    let (s, b) = deliver(
        &app,
        &event("evt_ok1", "payment_intent.succeeded", t, intent.clone()),
        SECRET,
        t,
    )
    .await;
    assert_eq!((s, b["outcome"].as_str()), (200, Some("duplicate")), "{b}");
    // A failure event from before (out of order): older than our state, so the intent is
    // re-fetched — it succeeded — and nothing changes.
    let mut failed = intent.clone();
    failed["status"] = json!("requires_payment_method");
    failed["last_payment_error"] = json!({"decline_code": "insufficient_funds"});
    let (s, b) = deliver(
        &app,
        &event("evt_old1", "payment_intent.payment_failed", t - 60, failed),
        SECRET,
        t,
    )
    .await;
    assert_eq!((s, b["outcome"].as_str()), (200, Some("noop")), "{b}");
    let now = app
        .admin
        .get(&format!("/v1/payments/{}", p["id"].as_str().unwrap()))
        .await
        .unwrap();
    assert_eq!(now.body["status"], "succeeded", "{}", now.body);
    assert_eq!(entries_of_kind(&app, "payment_captured").await, 1);
    app.assert_ledger_sound().await;
    app.finish().await;
}

/// 3-D Secure: the caller gets the client secret and next action; the webhook finishes it.
async fn requires_action_then_webhook(backend: Backend) {
    let (base, fake) = start_fake().await;
    let app = app_on(backend, &base).await;
    fake.lock().unwrap().intent_status = "requires_action".into();
    let p = pay(&app, 2_000).await;
    assert_eq!(p["status"], "processing", "{p}");
    assert_eq!(p["next_action"]["type"], "use_stripe_sdk", "{p}");
    assert_eq!(
        p["next_action"]["client_secret"], "pi_fake1_secret_x",
        "{p}"
    );
    let mut intent = fake.lock().unwrap().intents["pi_fake1"].clone();
    intent["status"] = json!("succeeded");
    fake.lock()
        .unwrap()
        .intents
        .insert("pi_fake1".into(), intent.clone());
    let t = now_s() + 1;
    let (s, b) = deliver(
        &app,
        &event("evt_3ds", "payment_intent.succeeded", t, intent),
        SECRET,
        t - 1,
    )
    .await;
    assert_eq!((s, b["outcome"].as_str()), (200, Some("applied")), "{b}");
    let now = app
        .admin
        .get(&format!("/v1/payments/{}", p["id"].as_str().unwrap()))
        .await
        .unwrap();
    assert_eq!(now.body["status"], "succeeded");
    assert!(now.body["next_action"].is_null());
    app.assert_ledger_sound().await;
    app.finish().await;
}

/// A pending refund settles on `refund.updated`; one that fails after succeeding is reversed.
/// Disputes move money to 1100 and out again; a payout posts clearing → bank once.
async fn refunds_disputes_payouts(backend: Backend) {
    let (base, fake) = start_fake().await;
    let app = app_on(backend, &base).await;
    let p = pay(&app, 8_000).await;
    let intent_id = fake.lock().unwrap().intents.keys().next().unwrap().clone();
    fake.lock().unwrap().refund_status = "pending".into();
    let r = app
        .admin
        .post(
            "/v1/refunds",
            &json!({"payment": p["id"], "amount": 2_000, "reason": "billing_error"}),
            Some(&new_key()),
        )
        .await
        .unwrap();
    assert_eq!(r.body["status"], "pending", "{}", r.body);
    let mut refund = fake.lock().unwrap().refunds["re_fake1"].clone();
    refund["status"] = json!("succeeded");
    let t = now_s() + 2;
    let (s, b) = deliver(
        &app,
        &event("evt_r1", "refund.updated", t, refund.clone()),
        SECRET,
        now_s(),
    )
    .await;
    assert_eq!((s, b["outcome"].as_str()), (200, Some("applied")), "{b}");
    assert_eq!(entries_of_kind(&app, "refund_succeeded").await, 1);
    // The bank returned it: failed after succeeding → reversed, the payment refundable again.
    refund["status"] = json!("failed");
    refund["failure_reason"] = json!("lost_or_stolen_card");
    fake.lock()
        .unwrap()
        .refunds
        .insert("re_fake1".into(), refund.clone());
    let (s, b) = deliver(
        &app,
        &event("evt_r2", "refund.failed", t + 5, refund),
        SECRET,
        now_s(),
    )
    .await;
    assert_eq!((s, b["outcome"].as_str()), (200, Some("applied")), "{b}");
    assert_eq!(entries_of_kind(&app, "reversal").await, 1);
    // Accounting systems hear of both, from the webhooks' own transactions (the outbox).
    let outbox: Vec<String> = sqlx::query_scalar(
        "SELECT type FROM webhook_events WHERE type IN ('refund.succeeded', 'refund.failed') ORDER BY seq",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(outbox, vec!["refund.succeeded", "refund.failed"]);
    let now = app
        .admin
        .get(&format!("/v1/payments/{}", p["id"].as_str().unwrap()))
        .await
        .unwrap();
    assert_eq!(now.body["amount_refunded"], 0, "{}", now.body);

    // Dispute: opened, then lost.
    let dispute = json!({"id": "dp_1", "object": "dispute", "amount": 8000, "currency": "usd",
        "payment_intent": intent_id, "status": "needs_response", "reason": "fraudulent"});
    let t = now_s();
    let (s, b) = deliver(
        &app,
        &event("evt_d1", "charge.dispute.created", t, dispute.clone()),
        SECRET,
        t,
    )
    .await;
    assert_eq!((s, b["outcome"].as_str()), (200, Some("applied")), "{b}");
    let mut closed = dispute.clone();
    closed["status"] = json!("lost");
    let (s, b) = deliver(
        &app,
        &event("evt_d2", "charge.dispute.closed", t, closed),
        SECRET,
        t,
    )
    .await;
    assert_eq!((s, b["outcome"].as_str()), (200, Some("applied")), "{b}");
    assert_eq!(entries_of_kind(&app, "dispute_opened").await, 1);
    assert_eq!(entries_of_kind(&app, "dispute_lost").await, 1);
    // Stripe delivers again (same event ids), and sends another `closed` for the same
    // dispute: nothing is applied, so nothing is emitted.
    let mut closed_again = dispute.clone();
    closed_again["status"] = json!("lost");
    for (id, kind, object, outcome) in [
        (
            "evt_d1",
            "charge.dispute.created",
            dispute.clone(),
            "duplicate",
        ),
        (
            "evt_d2",
            "charge.dispute.closed",
            closed_again.clone(),
            "duplicate",
        ),
        ("evt_d2b", "charge.dispute.closed", closed_again, "noop"),
    ] {
        let (s, b) = deliver(&app, &event(id, kind, t, object), SECRET, t).await;
        assert_eq!((s, b["outcome"].as_str()), (200, Some(outcome)), "{b}");
    }
    assert_eq!(entries_of_kind(&app, "dispute_opened").await, 1);
    // Accounting systems hear of each step once, from the webhook's own transaction.
    let dispute_keys = [
        "object",
        "id",
        "payment",
        "patient",
        "invoice",
        "amount",
        "currency",
        "status",
        "opened_entry",
        "closed_entry",
        "created",
    ];
    let created = outbox_of(&app, "dispute.created").await;
    assert_eq!(created.len(), 1, "{created:?}");
    assert_keys(&created[0], &dispute_keys);
    assert_eq!(
        (
            &created[0]["id"],
            &created[0]["amount"],
            &created[0]["currency"],
            &created[0]["status"]
        ),
        (&json!("dp_1"), &json!(8000), &json!("usd"), &json!("open"))
    );
    assert_eq!(created[0]["payment"], p["id"]);
    assert!(created[0]["closed_entry"].is_null());
    let lost = outbox_of(&app, "dispute.lost").await;
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_keys(&lost[0], &dispute_keys);
    assert_eq!(
        (&lost[0]["id"], &lost[0]["amount"], &lost[0]["status"]),
        (&json!("dp_1"), &json!(8000), &json!("lost"))
    );
    assert!(lost[0]["closed_entry"].is_string(), "{}", lost[0]);
    assert_ne!(lost[0]["closed_entry"], lost[0]["opened_entry"]);
    assert!(outbox_of(&app, "dispute.won").await.is_empty());

    // Won, with `closed` arriving first: opened and won in one go, both emitted once.
    let p2 = pay(&app, 3_000).await;
    let intent2 = {
        let f = fake.lock().unwrap();
        f.intents
            .values()
            .find(|i| i["metadata"]["carebill_payment"] == p2["id"])
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let won = json!({"id": "dp_w", "object": "dispute", "amount": 3000, "currency": "usd",
        "payment_intent": intent2, "status": "won"});
    for id in ["evt_w1", "evt_w1", "evt_w2"] {
        let (s, _) = deliver(
            &app,
            &event(id, "charge.dispute.closed", t, won.clone()),
            SECRET,
            t,
        )
        .await;
        assert_eq!(s, 200);
    }
    let created = outbox_of(&app, "dispute.created").await;
    assert_eq!(created.len(), 2, "{created:?}");
    assert_eq!(
        (
            &created[1]["id"],
            &created[1]["amount"],
            &created[1]["payment"]
        ),
        (&json!("dp_w"), &json!(3000), &p2["id"])
    );
    let won = outbox_of(&app, "dispute.won").await;
    assert_eq!(won.len(), 1, "{won:?}");
    assert_eq!(
        (&won[0]["id"], &won[0]["amount"], &won[0]["status"]),
        (&json!("dp_w"), &json!(3000), &json!("won"))
    );
    assert_eq!(entries_of_kind(&app, "dispute_won").await, 1);
    // A dispute on something not ours: acknowledged, nothing written but the event.
    let stranger =
        json!({"id": "dp_2", "amount": 100, "currency": "usd", "payment_intent": "pi_nobody"});
    let (s, b) = deliver(
        &app,
        &event("evt_d3", "charge.dispute.created", t, stranger),
        SECRET,
        t,
    )
    .await;
    assert_eq!(
        (s, b["outcome"].as_str()),
        (200, Some("unknown_object")),
        "{b}"
    );

    // Payout, twice (two events for one payout): one entry.
    let payout = json!({"id": "po_1", "object": "payout", "amount": 4000, "currency": "usd", "status": "paid", "arrival_date": t});
    for id in ["evt_p1", "evt_p2"] {
        let (s, _) = deliver(
            &app,
            &event(id, "payout.paid", t, payout.clone()),
            SECRET,
            t,
        )
        .await;
        assert_eq!(s, 200);
    }
    assert_eq!(entries_of_kind(&app, "payout").await, 1);
    let paid = outbox_of(&app, "payout.paid").await;
    assert_eq!(paid.len(), 1, "{paid:?}");
    assert_keys(
        &paid[0],
        &[
            "object",
            "id",
            "amount",
            "currency",
            "arrival_date",
            "journal_entry",
        ],
    );
    assert_eq!(
        (&paid[0]["id"], &paid[0]["amount"], &paid[0]["currency"]),
        (&json!("po_1"), &json!(4000), &json!("usd"))
    );
    // The stranger's dispute emitted nothing.
    let n: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM webhook_events WHERE payload LIKE '%dp_2%'")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(n, 0);
    app.assert_ledger_sound().await;
    app.finish().await;
}

/// Unsigned, stale, wrongly signed and malformed deliveries: 400 naming the header, a security
/// event each, nothing applied. Bodies that are not events: 400 naming `body`. Unknown types:
/// acknowledged and ignored.
async fn webhook_bad_input(backend: Backend) {
    let (base, _fake) = start_fake().await;
    let app = app_on(backend, &base).await;
    let t = now_s();
    let payout = event(
        "evt_bad",
        "payout.paid",
        t,
        json!({"id": "po_x", "amount": 100, "currency": "usd"}),
    );
    let body = serde_json::to_vec(&payout).unwrap();
    let http = https_client();
    let url = format!("{}/v1/webhooks/stripe", app.base);
    let good = header_for(SECRET, t, &body);
    let cases: Vec<(Option<String>, &str)> = vec![
        (None, "signature_missing"),
        (
            Some(header_for("whsec_other", t, &body)),
            "signature_invalid",
        ),
        (Some(header_for(SECRET, t - 301, &body)), "signature_stale"),
        (Some(format!("t={t}")), "signature_malformed"),
        (Some(format!("t={t},v1=nothex")), "signature_malformed"),
        (
            Some(format!("t={t},{}", "v1=00,".repeat(2000))),
            "signature_malformed",
        ),
        (Some(good.replace("v1=", "v1=0")), "signature_malformed"),
    ];
    for (header, code) in &cases {
        let mut req = http.post(&url).body(body.clone());
        if let Some(h) = header {
            req = req.header("Stripe-Signature", h);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), 400, "{code}");
        let b: Value = r.json().await.unwrap();
        assert_eq!(b["error"]["code"], *code, "{b}");
        assert_eq!(b["error"]["param"], "Stripe-Signature", "{b}");
    }
    let row = sqlx::query(
        "SELECT COUNT(*) AS n FROM security_events WHERE kind = 'webhook_signature_rejected'",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(
        sqlx::Row::try_get::<i64, _>(&row, "n").unwrap(),
        i64::try_from(cases.len()).unwrap()
    );
    assert_eq!(app.count("stripe_events").await, 0);
    assert_eq!(entries_of_kind(&app, "payout").await, 0);

    // Signed but not an event.
    for raw in [
        &b"not json"[..],
        b"[]",
        br#"{"id":"evt_1"}"#,
        br#"{"id":"nope","type":"x","created":1,"data":{"object":{}}}"#,
    ] {
        let r = http
            .post(&url)
            .header("Stripe-Signature", header_for(SECRET, t, raw))
            .body(raw.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400);
        let b: Value = r.json().await.unwrap();
        assert_eq!(b["error"]["param"], "body", "{b}");
    }
    // An unknown type: 200, ignored.
    let (s, b) = deliver(
        &app,
        &event("evt_unk", "customer.created", t, json!({"id": "cus_1"})),
        SECRET,
        t,
    )
    .await;
    assert_eq!((s, b["outcome"].as_str()), (200, Some("ignored")), "{b}");
    // The well-signed original, and with the old secret during rotation.
    let (s, _) = deliver(&app, &payout, SECRET, t).await;
    assert_eq!(s, 200);
    app.assert_ledger_sound().await;
    app.finish().await;
}

/// `carebill reconcile`: a payment whose answer was lost is settled by asking again with its
/// own key (one charge at Stripe); fees and a paid payout are posted once each, however many
/// runs; the deliberate differences (a capture Stripe does not show, a charge we have no
/// payment for, a refund of another amount, a payout Stripe does not list) are reported, by
/// the library and by the command (`--json`, exit 1). The ledger stays sound.
async fn reconcile_posts_once_and_reports_mismatches(backend: Backend) {
    use carebill::stripe::reconcile;
    let (base, fake) = start_fake().await;
    let app = app_on(backend, &base).await;
    let p1 = pay(&app, 5_000).await; // pi_fake1, txn_c1 (fee 175)
    let r = app
        .admin
        .post(
            "/v1/refunds",
            &json!({"payment": p1["id"], "amount": 1_000, "reason": "billing_error"}),
            Some(&new_key()),
        )
        .await
        .unwrap();
    assert_eq!(r.body["status"], "succeeded", "{}", r.body);
    // The answer is lost and not retried: `processing`, no intent id, nothing at Stripe.
    fake.lock().unwrap().faults = VecDeque::from([Fault::Error500NoRetry]);
    let p2 = pay(&app, 3_000).await;
    assert_eq!(p2["status"], "processing", "{p2}");
    let p3 = pay(&app, 2_000).await; // pi_fake2
    assert_eq!(p3["status"], "succeeded", "{p3}");
    // A payout already booked from its webhook that Stripe does not list.
    let t = now_s();
    let ghost = json!({"id": "po_ghost", "object": "payout", "amount": 100, "currency": "usd", "status": "paid"});
    let (s, _) = deliver(
        &app,
        &event("evt_ghost", "payout.paid", t, ghost),
        SECRET,
        t,
    )
    .await;
    assert_eq!(s, 200);
    {
        let mut f = fake.lock().unwrap();
        // Deliberate differences: p3's charge is gone from Stripe's list; a charge of someone
        // else's; the refund is listed for 1 200, not 1 000.
        f.balance_transactions
            .retain(|bt| bt["source"]["payment_intent"] != "pi_fake2");
        f.balance_transactions.push(json!({"id": "txn_stranger", "type": "charge", "amount": 777,
            "fee": 53, "currency": "usd", "source": {"id": "ch_x", "payment_intent": "pi_stranger"}}));
        for bt in f.balance_transactions.iter_mut() {
            if bt["type"] == "refund" {
                bt["amount"] = json!(-1_200);
            }
        }
        f.payouts = vec![
            json!({"id": "po_1", "object": "payout", "amount": 4_000, "currency": "usd", "status": "paid", "arrival_date": t}),
            json!({"id": "po_2", "object": "payout", "amount": 900, "currency": "usd", "status": "in_transit"}),
        ];
    }
    let config = app.state().config.clone();
    let first = reconcile::run(&app.db, &config).await.unwrap();
    // The re-asked charge: one new PaymentIntent (pi_fake3), with its balance transaction.
    assert_eq!(fake.lock().unwrap().charges_created, 3);
    assert_eq!(first.payments_settled, 1, "{}", first.table());
    assert_eq!(first.payments_still_processing, 0);
    assert_eq!(first.payouts_posted, 1);
    assert_eq!(first.payouts_seen, 2);
    // Fees: p1 (175), p2 re-asked (117), the stranger (53); p3's transaction is not listed.
    assert_eq!(first.fees_posted, 3, "{}", first.table());
    let now = app
        .admin
        .get(&format!("/v1/payments/{}", p2["id"].as_str().unwrap()))
        .await
        .unwrap();
    assert_eq!(now.body["status"], "succeeded", "{}", now.body);
    let mut found: Vec<(&str, &str, Option<String>)> = first
        .mismatches
        .iter()
        .map(|m| (m.kind, m.object, m.stripe_id.clone()))
        .collect();
    found.sort();
    assert_eq!(
        found,
        vec![
            ("amount_differs", "refund", Some("re_fake1".to_owned())),
            (
                "missing_in_ledger",
                "payment",
                Some("pi_stranger".to_owned())
            ),
            ("missing_in_stripe", "payment", Some("pi_fake2".to_owned())),
            ("missing_in_stripe", "payout", Some("po_ghost".to_owned())),
        ],
        "{}",
        first.table()
    );
    let table = first.table();
    assert!(
        table.contains("pi_stranger") && table.contains("mismatches 4"),
        "{table}"
    );

    // Again: nothing posted twice, the same differences.
    let second = reconcile::run(&app.db, &config).await.unwrap();
    assert_eq!(
        (
            second.fees_posted,
            second.payouts_posted,
            second.payments_settled
        ),
        (0, 0, 0)
    );
    assert_eq!(second.mismatches, first.mismatches);
    assert_eq!(entries_of_kind(&app, "processor_fee").await, 3);
    assert_eq!(entries_of_kind(&app, "payout").await, 2);
    assert_eq!(entries_of_kind(&app, "payment_captured").await, 3);
    app.assert_ledger_sound().await;
    // Each fee and payout the runs posted is in the outbox once, with its amount, from the
    // transaction that posted it (the webhook's payout and the reconciler's share the key).
    let assert_outbox_once = |fees: Vec<Value>, payouts: Vec<Value>| {
        let mut fee_amounts: Vec<(String, i64)> = fees
            .iter()
            .map(|f| {
                assert_keys(
                    f,
                    &[
                        "object",
                        "balance_transaction",
                        "amount",
                        "currency",
                        "journal_entry",
                    ],
                );
                assert_eq!(f["currency"], "usd");
                (
                    f["balance_transaction"].as_str().unwrap().to_owned(),
                    f["amount"].as_i64().unwrap(),
                )
            })
            .collect();
        fee_amounts.sort();
        assert_eq!(
            fee_amounts
                .iter()
                .map(|(_, a)| *a)
                .collect::<Vec<_>>()
                .iter()
                .sum::<i64>(),
            175 + 117 + 53,
            "{fee_amounts:?}"
        );
        assert_eq!(fee_amounts.len(), 3, "{fee_amounts:?}");
        assert!(
            fee_amounts.contains(&("txn_stranger".to_owned(), 53)),
            "{fee_amounts:?}"
        );
        let mut paid: Vec<(String, i64)> = payouts
            .iter()
            .map(|p| {
                (
                    p["id"].as_str().unwrap().to_owned(),
                    p["amount"].as_i64().unwrap(),
                )
            })
            .collect();
        paid.sort();
        assert_eq!(
            paid,
            vec![("po_1".to_owned(), 4_000), ("po_ghost".to_owned(), 100)]
        );
    };
    assert_outbox_once(
        outbox_of(&app, "processor_fee.posted").await,
        outbox_of(&app, "payout.paid").await,
    );

    // The command: JSON, exit 1 on mismatches; then `ledger verify` stays green.
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_carebill"))
            .args(args)
            .env("DATABASE_URL", &config.database_url)
            .env("CAREBILL_KEYRING", app.keyring())
            .env("STRIPE_API_KEY", "rk_test_fault")
            .env("STRIPE_API_BASE", &base)
            .env("STRIPE_TIMEOUT_MS", "1000")
            .env("STRIPE_MAX_RETRIES", "1")
            .env_remove("CAREBILL_CONFIG")
            .output()
            .unwrap()
    };
    let out = cli(&["reconcile", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["mismatches"].as_array().unwrap().len(), 4, "{json}");
    assert_eq!(json["fees_posted"], 0, "{json}");
    let out = cli(&["reconcile"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("amount_differs"));
    let out = cli(&["ledger", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // With the differences gone, the command is green.
    {
        let mut f = fake.lock().unwrap();
        f.balance_transactions
            .retain(|bt| bt["id"] != "txn_stranger");
        for bt in f.balance_transactions.iter_mut() {
            if bt["type"] == "refund" {
                bt["amount"] = json!(-1_000);
            }
        }
        f.balance_transactions.push(
            json!({"id": "txn_late", "type": "charge", "amount": 2_000, "fee": 88,
            "currency": "usd", "source": {"id": "ch_late", "payment_intent": "pi_fake2"}}),
        );
        f.payouts
            .push(json!({"id": "po_ghost", "amount": 100, "currency": "usd", "status": "paid"}));
    }
    let out = cli(&["reconcile"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("no mismatches"));
    // txn_late's fee is new (88); everything else was posted, and emitted, already.
    let fees = outbox_of(&app, "processor_fee.posted").await;
    assert_eq!(fees.len(), 4);
    assert_eq!(fees[3]["balance_transaction"], "txn_late");
    assert_eq!(fees[3]["amount"], 88);
    assert_outbox_once(fees[..3].to_vec(), outbox_of(&app, "payout.paid").await);
    app.assert_ledger_sound().await;
    app.finish().await;
}

/// `carebill reconcile --since`: Stripe is asked only for what was created in the window
/// (`created[gte]` on both lists); what lies before it — a stranger's old charge, an old
/// payout, our own payment made before the window, a payout Stripe created before the window
/// but we booked in it — is neither posted nor reported. Bad input is refused naming the
/// option, before anything is touched; without the option the run is the full one.
async fn reconcile_since_window(backend: Backend) {
    use carebill::stripe::reconcile;
    let (base, fake) = start_fake().await;
    let app = app_on(backend, &base).await;
    let day = 86_400;
    let old_payment = pay(&app, 5_000).await; // pi_fake1, txn_c1: before the window
    assert_eq!(old_payment["status"], "succeeded");
    // The window starts on a later second than everything above.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let since = now_s();
    let in_window = pay(&app, 2_000).await; // pi_fake2, txn_c2: in the window
    assert_eq!(in_window["status"], "succeeded");
    // Booked now from its webhook, created by Stripe three days ago.
    let late = json!({"id": "po_late", "object": "payout", "amount": 300, "currency": "usd",
        "status": "paid", "created": since - 3 * day});
    let (s, _) = deliver(
        &app,
        &event("evt_late", "payout.paid", since, late.clone()),
        SECRET,
        now_s(),
    )
    .await;
    assert_eq!(s, 200);
    {
        let mut f = fake.lock().unwrap();
        for bt in f.balance_transactions.iter_mut() {
            if bt["source"]["payment_intent"] == "pi_fake1" {
                bt["created"] = json!(since - 1);
            }
        }
        // Before the window: a charge of someone else's, and a payout we never booked.
        f.balance_transactions
            .push(json!({"id": "txn_old", "created": since - 30 * day,
            "type": "charge", "amount": 777, "fee": 53, "currency": "usd",
            "source": {"id": "ch_old", "payment_intent": "pi_old"}}));
        f.payouts = vec![
            json!({"id": "po_new", "object": "payout", "amount": 1_000, "currency": "usd",
                   "status": "paid", "created": since + 1}),
            late,
            json!({"id": "po_old", "object": "payout", "amount": 999, "currency": "usd",
                   "status": "paid", "created": since - 30 * day}),
        ];
    }
    let config = app.state().config.clone();
    let report = reconcile::run_since(&app.db, &config, Some(since * 1_000_000))
        .await
        .unwrap();
    assert!(report.mismatches.is_empty(), "{}", report.table());
    assert_eq!(report.payouts_seen, 1, "{}", report.table());
    assert_eq!(report.payouts_posted, 1);
    assert_eq!(report.balance_transactions_seen, 1, "{}", report.table());
    assert_eq!(report.fees_posted, 1, "only the window's fee (txn_c2)");
    assert!(report
        .table()
        .contains("window: Stripe objects created since"));
    {
        let f = fake.lock().unwrap();
        let lists: Vec<_> = f.list_queries.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            lists,
            ["/v1/payouts", "/v1/balance_transactions"],
            "one page each"
        );
        for (path, q) in &f.list_queries {
            assert_eq!(
                q.get("created[gte]"),
                Some(&since.to_string()),
                "{path} carries the window"
            );
        }
    }
    let fees = outbox_of(&app, "processor_fee.posted").await;
    assert_eq!(fees.len(), 1);
    assert_eq!(fees[0]["amount"], 30 + 2_000 * 29 / 1000);
    let mut paid: Vec<String> = outbox_of(&app, "payout.paid")
        .await
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect();
    paid.sort();
    assert_eq!(paid, ["po_late", "po_new"], "po_old is outside the window");

    // The command: the same window by date or time; bad values refused naming --since.
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_carebill"))
            .args(args)
            .env("DATABASE_URL", &config.database_url)
            .env("CAREBILL_KEYRING", app.keyring())
            .env("STRIPE_API_KEY", "rk_test_fault")
            .env("STRIPE_API_BASE", &base)
            .env("STRIPE_TIMEOUT_MS", "1000")
            .env("STRIPE_MAX_RETRIES", "1")
            .env_remove("CAREBILL_CONFIG")
            .output()
            .unwrap()
    };
    let asked = || fake.lock().unwrap().list_queries.len();
    let before = asked();
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1))
        .format("%Y-%m-%d")
        .to_string();
    for bad in [
        "yesterday",
        "2026-13-01",
        "2026-01-31 10:00",
        "1969-12-31",
        tomorrow.as_str(),
        "",
    ] {
        let out = cli(&["reconcile", "--since", bad]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bad}: {stderr}");
        assert!(stderr.contains("--since"), "{bad}: {stderr}");
        assert!(!stderr.to_lowercase().contains("panic"), "{stderr}");
    }
    assert_eq!(asked(), before, "a bad --since asks Stripe nothing");
    let stamp = chrono::DateTime::from_timestamp(since, 0)
        .unwrap()
        .to_rfc3339();
    let out = cli(&["reconcile", "--json", "--since", &stamp]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["mismatches"], json!([]), "{json}");
    assert_eq!(json["fees_posted"], 0, "{json}");
    assert!(
        json["since"].as_str().unwrap().starts_with(&stamp[..19]),
        "{json}"
    );
    // Without --since: the full pull (no filter), which does report what lies before.
    let out = cli(&["reconcile", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json.get("since").is_none(), "{json}");
    let found: Vec<&str> = json["mismatches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["stripe_id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(found, ["pi_old"], "{json}");
    {
        let f = fake.lock().unwrap();
        let (_, last) = f.list_queries.last().unwrap();
        assert!(last.get("created[gte]").is_none());
    }
    // The full run posted po_old and the two older fees: each emitted once, like the rest.
    assert_eq!(outbox_of(&app, "payout.paid").await.len(), 3);
    assert_eq!(outbox_of(&app, "processor_fee.posted").await.len(), 3);
    app.assert_ledger_sound().await;
    app.finish().await;
}

/// The periodic job runs when `reconcile_interval_seconds` > 0 (off by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn periodic_reconcile_posts_fees() {
    let (base, fake) = start_fake().await;
    let app = TestApp::spawn_with(Backend::Sqlite, {
        let base = base.clone();
        move |c| {
            c.stripe.api_key = Some(Arc::new(zeroize::Zeroizing::new(
                "rk_test_fault".to_owned(),
            )));
            c.stripe.api_base = base;
            c.stripe.timeout_ms = 400;
            c.stripe.retry_base_ms = 5;
            c.stripe.retry_max_ms = 40;
            c.stripe.reconcile_interval_seconds = 1;
        }
    })
    .await;
    pay(&app, 1_000).await;
    assert_eq!(fake.lock().unwrap().balance_transactions.len(), 1);
    let mut fees = 0;
    for _ in 0..100 {
        fees = entries_of_kind(&app, "processor_fee").await;
        if fees > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(fees, 1, "the periodic job posted the fee");
    app.assert_ledger_sound().await;
    app.finish().await;
}

macro_rules! on_both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::$name(carebill::db::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                super::$name(carebill::db::Backend::Postgres).await
            }
        }
    };
}

on_both!(retries_never_double_charge);
on_both!(unknown_outcome_settles_by_webhook);
on_both!(requires_action_then_webhook);
on_both!(refunds_disputes_payouts);
on_both!(webhook_bad_input);
on_both!(reconcile_posts_once_and_reports_mismatches);
on_both!(reconcile_since_window);
