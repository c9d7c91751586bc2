//! Outbound webhooks, end to end on both backends: a real receiver (axum, in the test) gets
//! signed deliveries from the server's own delivery worker; the reference `standardwebhooks`
//! library (PyPI) verifies them; retries, per-endpoint order, dead letters, replay, automatic
//! disabling, SSRF refusals and the outbox's atomicity are each checked.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use carebill::config::Config;
use carebill::db::Backend;

// ---- a real receiver ----

#[derive(Debug, Clone)]
struct Captured {
    id: String,
    timestamp: String,
    signature: String,
    body: String,
}

#[derive(Default)]
struct ReceiverState {
    captured: Vec<Captured>,
    /// Statuses to answer, in order; when empty, `fallback`.
    script: VecDeque<u16>,
    fallback: u16,
}

#[derive(Clone)]
struct Receiver {
    addr: std::net::SocketAddr,
    state: Arc<Mutex<ReceiverState>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let state = Arc::new(Mutex::new(ReceiverState {
            fallback: 200,
            ..Default::default()
        }));
        let shared = state.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let shared = shared.clone();
                async move {
                    let h = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned()
                    };
                    let mut s = shared.lock().unwrap();
                    s.captured.push(Captured {
                        id: h("webhook-id"),
                        timestamp: h("webhook-timestamp"),
                        signature: h("webhook-signature"),
                        body,
                    });
                    let status = s.script.pop_front().unwrap_or(s.fallback);
                    StatusCode::from_u16(status).unwrap()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { addr, state }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn captured(&self) -> Vec<Captured> {
        self.state.lock().unwrap().captured.clone()
    }

    fn answer(&self, script: &[u16], fallback: u16) {
        let mut s = self.state.lock().unwrap();
        s.script = script.iter().copied().collect();
        s.fallback = fallback;
    }
}

/// An app whose worker polls fast, may reach the test's receiver on loopback over http, and
/// retries on `schedule_ms`.
async fn app_with(backend: Backend, schedule_ms: Vec<u64>, disable_after_seconds: u64) -> TestApp {
    TestApp::spawn_with(backend, move |c: &mut Config| {
        c.webhooks.poll_interval_ms = 20;
        c.webhooks.allow_http = true;
        c.webhooks.allow_private = true;
        c.webhooks.retry_schedule_ms = schedule_ms;
        c.webhooks.disable_after_seconds = disable_after_seconds;
    })
    .await
}

async fn fast_app(backend: Backend) -> TestApp {
    app_with(backend, vec![50, 50, 50], 3600).await
}

async fn register(app: &TestApp, url: &str, events: &[&str]) -> Value {
    let e = app
        .as_role("admin")
        .create(
            "/v1/webhook_endpoints",
            &json!({"url": url, "enabled_events": events, "description": "accounting"}),
        )
        .await
        .unwrap();
    assert!(e["secret"].as_str().unwrap().starts_with("whsec_"), "{e}");
    e
}

/// Waits (bounded) until `check` holds.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn scalar_i64(app: &TestApp, sql: &str, bind: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .bind(bind)
        .fetch_one(&app.db.pool)
        .await
        .unwrap()
}

async fn delivery_states(
    app: &TestApp,
    endpoint: &str,
) -> Vec<(String, String, i64, Option<String>)> {
    sqlx::query_as::<_, (String, String, i64, Option<String>)>(
        "SELECT event_id, status, attempts, last_error FROM webhook_deliveries WHERE endpoint_id = $1 ORDER BY seq",
    )
    .bind(endpoint)
    .fetch_all(&app.db.pool)
    .await
    .unwrap()
}

/// The reference library's verdict on `messages` (skipped outside CI when it is missing).
fn verify_with_standardwebhooks(secret: &str, messages: &[Captured]) {
    let python = [
        std::env::var_os("CAREBILL_TOOLS_BIN").map(|d| PathBuf::from(d).join("python3")),
        Some(PathBuf::from("/var/tmp/carebill-venv/bin/python3")),
    ]
    .into_iter()
    .flatten()
    .find(|p| {
        p.exists()
            && std::process::Command::new(p)
                .args(["-c", "import standardwebhooks"])
                .output()
                .is_ok_and(|o| o.status.success())
    });
    let Some(python) = python else {
        assert!(
            std::env::var("CI").is_err(),
            "python with standardwebhooks is required in CI (.ci/run installs it)"
        );
        eprintln!("standardwebhooks not installed; skipping the reference verification");
        return;
    };
    let input = json!({
        "secret": secret,
        "messages": messages.iter().map(|m| json!({
            "headers": {"webhook-id": m.id, "webhook-timestamp": m.timestamp, "webhook-signature": m.signature},
            "body": m.body,
        })).collect::<Vec<_>>(),
    });
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/tools/verify_standardwebhooks.py");
    let mut child = std::process::Command::new(python)
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "standardwebhooks: {text}");
    assert!(
        text.contains(&format!("verified {}", messages.len())),
        "{text}"
    );
}

// Health data the flow below enters; none of it may reach a webhook or the outbox.
const NAME: &str = "Zelda Quixote-Marchetti";
const DOB: &str = "1961-07-23";
const EMAIL: &str = "zelda.qm@example.org";
const CODE: &str = "45378";
const DESCRIPTION: &str = "Diagnostic colonoscopy";

// Goal: a whole billing flow reaches the receiver signed to the Standard Webhooks spec, every
// event once, verified by the reference library, carrying no health data.
both_backends!(
    signed_deliveries_verify_and_carry_no_health_data,
    spawn = fast_app,
    |app: TestApp| async move {
        let rx = Receiver::start().await;
        let endpoint = register(&app, &rx.url(), &["*"]).await;
        let secret = endpoint["secret"].as_str().unwrap().to_owned();
        let endpoint_id = id_of(&endpoint).unwrap();

        let patient = app
            .admin
            .create(
                "/v1/patients",
                &json!({"name": NAME, "date_of_birth": DOB, "email": EMAIL, "mrn": "MRN-4242"}),
            )
            .await
            .unwrap();
        let inv = app.admin.create("/v1/invoices", &json!({"patient": patient["id"], "currency": "usd", "due_date": "2030-01-31",
        "lines": [{"service_date": "2026-01-15", "code": CODE, "description": DESCRIPTION, "quantity": 1, "unit_amount": 30000}]})).await.unwrap();
        let inv = app
            .admin
            .create(
                &format!("/v1/invoices/{}/finalize", id_of(&inv).unwrap()),
                &json!({}),
            )
            .await
            .unwrap();
        let pay = app.pay(&inv, 30000).await;
        let refund = app.admin.create("/v1/refunds", &json!({"payment": pay["id"], "amount": 2500, "reason": "billing_error", "note": "patient had colonoscopy twice"})).await.unwrap();
        assert_eq!(refund["status"], "succeeded", "{refund}");
        let declined = app.admin.post("/v1/payments", &json!({"invoice": inv["id"], "amount": 100, "currency": "usd", "payment_method": "pm_card_visa_chargeDeclined"}), Some(&uuid::Uuid::new_v4().to_string())).await.unwrap();
        assert_eq!(declined.status, 402);

        let expected = app.count("webhook_events").await;
        // finalized, paid, payment succeeded and failed, refund succeeded, three ledger entries
        assert_eq!(expected, 8);
        eventually("every event delivered", || async {
            i64::try_from(rx.captured().len()).unwrap() >= expected
        })
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let got = rx.captured();
        assert_eq!(
            i64::try_from(got.len()).unwrap(),
            expected,
            "each event exactly once"
        );
        let mut types: Vec<String> = got
            .iter()
            .map(|m| {
                serde_json::from_str::<Value>(&m.body).unwrap()["type"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        types.sort();
        assert_eq!(
            types,
            [
                "invoice.finalized",
                "invoice.paid",
                "ledger.entry_posted",
                "ledger.entry_posted",
                "ledger.entry_posted",
                "payment.failed",
                "payment.succeeded",
                "refund.succeeded"
            ]
        );
        for m in &got {
            assert!(m.id.starts_with("evt_"));
            let expected_sig = carebill::webhooks::signing::sign(
                &secret,
                &m.id,
                m.timestamp.parse().unwrap(),
                m.body.as_bytes(),
            )
            .unwrap();
            assert_eq!(m.signature, expected_sig);
            for secret_text in [
                NAME,
                "Zelda",
                DOB,
                EMAIL,
                CODE,
                DESCRIPTION,
                "colonoscopy",
                "MRN-4242",
            ] {
                assert!(
                    !m.body.contains(secret_text),
                    "{secret_text} in a webhook: {}",
                    m.body
                );
            }
        }
        let paid = got
            .iter()
            .map(|m| serde_json::from_str::<Value>(&m.body).unwrap())
            .find(|b| b["type"] == "payment.succeeded")
            .unwrap();
        assert_eq!(paid["data"]["id"], pay["id"]);
        assert_eq!(paid["data"]["amount"], 30000);
        verify_with_standardwebhooks(&secret, &got);

        // The outbox table holds none of it either, and the secret is stored only sealed.
        let rows: Vec<String> = sqlx::query_scalar("SELECT payload FROM webhook_events")
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
        for r in &rows {
            assert!(
                !r.contains("Zelda") && !r.contains(CODE) && !r.contains("colonoscopy"),
                "{r}"
            );
        }
        let stored: String =
            sqlx::query_scalar("SELECT secret_sealed FROM webhook_endpoints WHERE id = $1")
                .bind(&endpoint_id)
                .fetch_one(&app.db.pool)
                .await
                .unwrap();
        assert!(stored.starts_with("v1.") && !stored.contains(&secret[6..]));
        // Read back: never the secret.
        let read = app
            .as_role("admin")
            .get(&format!("/v1/webhook_endpoints/{endpoint_id}"))
            .await
            .unwrap();
        assert_eq!(read.status, 200);
        assert!(read.body.get("secret").is_none(), "{}", read.body);
        let states = delivery_states(&app, &endpoint_id).await;
        assert!(
            states
                .iter()
                .all(|(_, s, a, _)| s == "succeeded" && *a == 1),
            "{states:?}"
        );
        app
    }
);

// Goal: a 500 is retried until it succeeds, and a later event to the same endpoint waits for
// the earlier one (per-endpoint order).
both_backends!(
    retries_keep_per_endpoint_order,
    spawn = fast_app,
    |app: TestApp| async move {
        let rx = Receiver::start().await;
        rx.answer(&[500, 500], 200);
        let endpoint = register(&app, &rx.url(), &["invoice.finalized"]).await;
        let endpoint_id = id_of(&endpoint).unwrap();
        let first = app.open_invoice("usd", 1000).await;
        let second = app.open_invoice("usd", 2000).await;
        eventually("both delivered", || async {
            let s = delivery_states(&app, &endpoint_id).await;
            s.len() == 2 && s.iter().all(|(_, st, _, _)| st == "succeeded")
        })
        .await;
        let got = rx.captured();
        let invoice_of = |m: &Captured| {
            serde_json::from_str::<Value>(&m.body).unwrap()["data"]["id"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        let order: Vec<String> = got.iter().map(invoice_of).collect();
        let (a, b) = (id_of(&first).unwrap(), id_of(&second).unwrap());
        assert_eq!(
            order,
            [a.clone(), a.clone(), a, b],
            "the second waits while the first is retried"
        );
        // Retries carry the same webhook-id (receivers dedupe on it).
        assert_eq!(got[0].id, got[2].id);
        let states = delivery_states(&app, &endpoint_id).await;
        assert_eq!(states[0].2, 3);
        assert_eq!(states[1].2, 1);
        let ep = app
            .as_role("admin")
            .get(&format!("/v1/webhook_endpoints/{endpoint_id}"))
            .await
            .unwrap()
            .body;
        assert_eq!(
            ep["failing_since"],
            Value::Null,
            "a success clears the failure clock"
        );
        app
    }
);

// Goal: after the last retry a delivery is dead; the next event is not held back by it; an
// operator replays it by API once the receiver is back, with the same webhook-id.
both_backends!(
    dead_letter_then_replay,
    spawn = fast_app,
    |app: TestApp| async move {
        let rx = Receiver::start().await;
        rx.answer(&[], 503);
        let endpoint = register(&app, &rx.url(), &["invoice.finalized"]).await;
        let endpoint_id = id_of(&endpoint).unwrap();
        app.open_invoice("usd", 1000).await;
        eventually("dead after 1 + 3 attempts", || async {
            delivery_states(&app, &endpoint_id)
                .await
                .first()
                .is_some_and(|(_, s, a, _)| s == "dead" && *a == 4)
        })
        .await;
        let (event, _, _, error) = delivery_states(&app, &endpoint_id).await.remove(0);
        assert_eq!(error.as_deref(), Some("http_status"));
        assert_eq!(rx.captured().len(), 4);

        rx.answer(&[], 200);
        let admin = app.as_role("admin");
        let replay = admin
            .post(
                &format!("/v1/webhook_events/{event}/replay"),
                &json!({}),
                None,
            )
            .await
            .unwrap();
        assert_eq!(replay.status, 200, "{}", replay.body);
        eventually("replayed", || async {
            delivery_states(&app, &endpoint_id)
                .await
                .iter()
                .any(|(_, s, _, _)| s == "succeeded")
        })
        .await;
        let got = rx.captured();
        assert_eq!(got.last().unwrap().id, event);
        let shown = admin
            .get(&format!("/v1/webhook_events/{event}"))
            .await
            .unwrap()
            .body;
        let statuses: Vec<&str> = shown["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["status"].as_str().unwrap())
            .collect();
        assert_eq!(statuses, ["dead", "succeeded"], "{shown}");
        assert!(shown["deliveries"][1]["replay_of"]
            .as_str()
            .unwrap()
            .starts_with("whd_"));
        // Unknown event, bad id, unknown endpoint: each named.
        let r = admin
            .post("/v1/webhook_events/evt_nope/replay", &json!({}), None)
            .await
            .unwrap();
        assert_eq!(
            (r.status, r.body["error"]["param"].as_str()),
            (404, Some("id"))
        );
        let r = admin
            .post(
                &format!("/v1/webhook_events/{event}/replay"),
                &json!({"endpoint": "pay_x"}),
                None,
            )
            .await
            .unwrap();
        assert_eq!(
            (r.status, r.body["error"]["param"].as_str()),
            (400, Some("endpoint"))
        );
        let r = admin
            .post(
                &format!("/v1/webhook_events/{event}/replay"),
                &json!({"endpoint": "we_nope"}),
                None,
            )
            .await
            .unwrap();
        assert_eq!(
            (r.status, r.body["error"]["param"].as_str()),
            (404, Some("endpoint"))
        );
        app
    }
);

async fn disabling_app(backend: Backend) -> TestApp {
    app_with(backend, vec![100; 30], 1).await
}

// Goal: an endpoint failing for longer than `disable_after_seconds` is disabled; its queue
// waits; re-enabling it delivers what waited.
both_backends!(
    failing_endpoint_is_disabled_then_reenabled,
    spawn = disabling_app,
    |app: TestApp| async move {
        let rx = Receiver::start().await;
        rx.answer(&[], 500);
        let endpoint = register(&app, &rx.url(), &["invoice.finalized"]).await;
        let endpoint_id = id_of(&endpoint).unwrap();
        let admin = app.as_role("admin");
        app.open_invoice("usd", 1000).await;
        eventually("disabled", || async {
            let e = admin
                .get(&format!("/v1/webhook_endpoints/{endpoint_id}"))
                .await
                .unwrap()
                .body;
            e["status"] == "disabled" && e["disabled_reason"] == "failing"
        })
        .await;
        let attempts = rx.captured().len();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(rx.captured().len(), attempts, "no attempts while disabled");
        // The automatic disabling is a security event, once, naming the endpoint.
        let logged: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT actor, detail FROM security_events WHERE kind = 'webhook_endpoint_disabled' \
             AND subject = $1",
        )
        .bind(&endpoint_id)
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
        assert_eq!(logged.len(), 1, "{logged:?}");
        assert_eq!(logged[0].0, "webhook-worker");
        assert!(
            logged[0]
                .1
                .as_deref()
                .is_some_and(|d| d.starts_with("failing_since=")),
            "{logged:?}"
        );
        let states = delivery_states(&app, &endpoint_id).await;
        assert_eq!(
            states[0].1, "pending",
            "the delivery waits, not dead: {states:?}"
        );

        rx.answer(&[], 200);
        let r = admin
            .post(
                &format!("/v1/webhook_endpoints/{endpoint_id}"),
                &json!({"disabled": false}),
                None,
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["status"], "enabled");
        eventually("delivered after re-enabling", || async {
            delivery_states(&app, &endpoint_id).await[0].1 == "succeeded"
        })
        .await;
        app
    }
);

async fn strict_app(backend: Backend) -> TestApp {
    // Production rules (https only, no private addresses), worker polling fast.
    TestApp::spawn_with(backend, |c: &mut Config| {
        c.webhooks.poll_interval_ms = 20;
        c.webhooks.retry_schedule_ms = vec![60_000];
    })
    .await
}

// Goal: URLs that are not URLs, not https, or lead to internal addresses are refused at
// registration naming `url`; an endpoint whose address turns internal after registration is
// refused at delivery time and nothing reaches it.
both_backends!(
    ssrf_and_bad_urls_are_refused,
    spawn = strict_app,
    |app: TestApp| async move {
        let admin = app.as_role("admin");
        for (url, code) in [
            ("not a url", "parameter_invalid"),
            ("https://", "parameter_invalid"),
            ("http://accounting.example.com/hook", "url_not_https"),
            ("ftp://accounting.example.com/hook", "url_not_https"),
            ("https://127.0.0.1/hook", "url_forbidden_address"),
            ("https://10.0.0.5/hook", "url_forbidden_address"),
            ("https://192.168.1.20:8443/hook", "url_forbidden_address"),
            (
                "https://169.254.169.254/latest/meta-data",
                "url_forbidden_address",
            ),
            ("https://[::1]/hook", "url_forbidden_address"),
            ("https://[::ffff:127.0.0.1]/hook", "url_forbidden_address"),
            ("https://localhost:8443/hook", "url_forbidden_address"),
            ("https://user:pw@93.184.216.34/hook", "parameter_invalid"),
        ] {
            let r = admin
                .post(
                    "/v1/webhook_endpoints",
                    &json!({"url": url, "enabled_events": ["*"]}),
                    None,
                )
                .await
                .unwrap();
            assert_eq!(r.status, 400, "{url}: {}", r.body);
            assert_eq!(r.body["error"]["param"], "url", "{url}: {}", r.body);
            assert_eq!(r.body["error"]["code"], code, "{url}: {}", r.body);
        }
        let r = admin
            .post(
                "/v1/webhook_endpoints",
                &json!({"url": 42, "enabled_events": ["*"]}),
                None,
            )
            .await
            .unwrap();
        assert_eq!(
            (r.status, r.body["error"]["param"].as_str()),
            (400, Some("url"))
        );
        let r = admin
            .post(
                "/v1/webhook_endpoints",
                &json!({"url": "https://93.184.216.34/h", "enabled_events": ["payment.exploded"]}),
                None,
            )
            .await
            .unwrap();
        assert_eq!(
            (r.status, r.body["error"]["param"].as_str()),
            (400, Some("enabled_events[0]"))
        );
        let r = admin
            .post(
                "/v1/webhook_endpoints",
                &json!({"url": "https://93.184.216.34/h", "enabled_events": []}),
                None,
            )
            .await
            .unwrap();
        assert_eq!(
            (r.status, r.body["error"]["param"].as_str()),
            (400, Some("enabled_events"))
        );
        assert_eq!(app.count("webhook_endpoints").await, 0, "nothing half-made");

        // Registered on a public address; then the address "changes" to the receiver on loopback
        // (as a DNS answer could): by IP literal and by a name. Delivery refuses both.
        let rx = Receiver::start().await;
        let port = rx.addr.port();
        let mut ids = Vec::new();
        for url in [
            format!("https://127.0.0.1:{port}/hook"),
            format!("https://localhost:{port}/hook"),
        ] {
            let e = register(&app, "https://93.184.216.34/hook", &["invoice.finalized"]).await;
            let id = id_of(&e).unwrap();
            sqlx::query("UPDATE webhook_endpoints SET url = $1 WHERE id = $2")
                .bind(&url)
                .bind(&id)
                .execute(&app.db.pool)
                .await
                .unwrap();
            ids.push(id);
        }
        app.open_invoice("usd", 1000).await;
        for id in &ids {
            eventually("attempted", || async {
                delivery_states(&app, id)
                    .await
                    .first()
                    .is_some_and(|(_, _, a, _)| *a >= 1)
            })
            .await;
            let (_, status, _, error) = delivery_states(&app, id).await.remove(0);
            assert_eq!(
                (status.as_str(), error.as_deref()),
                ("pending", Some("forbidden_address"))
            );
        }
        assert!(
            rx.captured().is_empty(),
            "nothing reached the internal address"
        );
        app
    }
);

// Goal: the outbox commits with its change or not at all, and every committed change has its
// event.
both_backends!(
    outbox_is_atomic_with_its_change,
    |app: TestApp| async move {
        use carebill::webhooks::outbox::{emit, EventType};
        // A rolled-back transaction leaves no event.
        let mut tx = app.db.begin_write().await.unwrap();
        emit(&mut tx, EventType::InvoicePaid, json!({"id": "inv_x"}))
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        assert_eq!(app.count("webhook_events").await, 0);

        // A refused request (over-refund) writes no event; a refused finalize neither.
        let inv = app.open_invoice("usd", 5000).await;
        let pay = app.pay(&inv, 5000).await;
        let before = app.count("webhook_events").await;
        let r = app
            .admin
            .post(
                "/v1/refunds",
                &json!({"payment": pay["id"], "amount": 999999, "reason": "duplicate"}),
                Some(&uuid::Uuid::new_v4().to_string()),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 400);
        let r = app
            .admin
            .post(
                &format!("/v1/invoices/{}/finalize", inv["id"].as_str().unwrap()),
                &json!({}),
                None,
            )
            .await
            .unwrap();
        assert_eq!(r.status, 400);
        assert_eq!(app.count("webhook_events").await, before);

        // A void, an adjustment and a partial refund; then every change has exactly its event.
        let draft = app
            .draft_invoice_for(&app.patient().await, "usd", 700)
            .await;
        let voided = app
            .admin
            .create(
                &format!("/v1/invoices/{}/void", id_of(&draft).unwrap()),
                &json!({}),
            )
            .await
            .unwrap();
        assert_eq!(voided["status"], "void");
        app.admin
            .create(
                "/v1/refunds",
                &json!({"payment": pay["id"], "amount": 100, "reason": "duplicate"}),
            )
            .await
            .unwrap();
        let pairs = [
            (
                "SELECT COUNT(*) FROM journal_entries",
                "ledger.entry_posted",
            ),
            (
                "SELECT COUNT(*) FROM payments WHERE status IN ('succeeded', 'failed')",
                "payment.%",
            ),
            (
                "SELECT COUNT(*) FROM refunds WHERE status IN ('succeeded', 'failed')",
                "refund.%",
            ),
            (
                "SELECT COUNT(*) FROM invoices WHERE status = 'void'",
                "invoice.voided",
            ),
            (
                "SELECT COUNT(*) FROM invoices WHERE finalized_at_us IS NOT NULL",
                "invoice.finalized",
            ),
        ];
        for (changes, kind) in pairs {
            let n: i64 = sqlx::query_scalar(changes)
                .fetch_one(&app.db.pool)
                .await
                .unwrap();
            let events = scalar_i64(
                &app,
                "SELECT COUNT(*) FROM webhook_events WHERE type LIKE $1",
                kind,
            )
            .await;
            assert!(n > 0, "{changes}");
            assert_eq!(n, events, "{kind}");
        }
        let entries_without_event = scalar_i64(&app,
        "SELECT COUNT(*) FROM journal_entries j WHERE $1 = '' AND NOT EXISTS (SELECT 1 FROM webhook_events e \
         WHERE e.type = 'ledger.entry_posted' AND e.payload LIKE '%\"id\":\"' || j.id || '\"%')", "").await;
        assert_eq!(entries_without_event, 0);
        // `ledger.entry_posted` is built from memory while the commit sequence is locked (no
        // read-back): it must say exactly what the ledger holds.
        let payloads: Vec<String> = sqlx::query_scalar(
            "SELECT payload FROM webhook_events WHERE type = 'ledger.entry_posted' ORDER BY seq",
        )
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
        for payload in &payloads {
            let data = &serde_json::from_str::<Value>(payload).unwrap()["data"];
            let id = data["id"].as_str().unwrap();
            let (kind, seq, posted_at, date, patient, payment, refund): (
                String,
                i64,
                i64,
                String,
                Option<String>,
                Option<String>,
                Option<String>,
            ) = sqlx::query_as(
                "SELECT kind, ledger_seq, posted_at_us, effective_date, patient_id, payment_id, \
                 refund_id FROM journal_entries WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
            assert_eq!(data["kind"], kind.as_str(), "{payload}");
            assert_eq!(data["ledger_seq"], seq, "{payload}");
            assert_eq!(
                data["posted_at"],
                carebill::db::us_to_rfc3339(posted_at),
                "{payload}"
            );
            assert_eq!(data["effective_date"], date.as_str(), "{payload}");
            assert_eq!(data["patient"].as_str(), patient.as_deref(), "{payload}");
            assert_eq!(data["payment"].as_str(), payment.as_deref(), "{payload}");
            assert_eq!(data["refund"].as_str(), refund.as_deref(), "{payload}");
            let postings: Vec<(String, i64, String)> = sqlx::query_as(
                "SELECT account_id, amount_minor, currency FROM postings WHERE entry_id = $1 \
                 ORDER BY seq",
            )
            .bind(id)
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
            let sent: Vec<(String, i64, String)> = data["postings"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p["account"].as_str().unwrap().to_owned(),
                        p["amount"].as_i64().unwrap(),
                        p["currency"].as_str().unwrap().to_owned(),
                    )
                })
                .collect();
            assert_eq!(sent, postings, "{payload}");
        }
        // The outbox is append-only.
        let edit = sqlx::query("UPDATE webhook_events SET type = 'invoice.paid'")
            .execute(&app.db.pool)
            .await;
        assert!(edit.is_err(), "webhook_events accepted an UPDATE");
        app
    }
);

// Goal: the endpoint API's life cycle: the `webhooks:manage` scope, list, update, rotation
// with two signatures during the overlap, delete.
both_backends!(
    endpoint_lifecycle_and_rotation,
    spawn = fast_app,
    |app: TestApp| async move {
        let admin = app.as_role("admin");
        let scoped = admin
            .create(
                "/v1/api_keys",
                &json!({"name": "accounting", "scopes": ["webhooks:manage"]}),
            )
            .await
            .unwrap();
        let accounting = app.admin.with_key(scoped["secret"].as_str().unwrap());
        let ledger_key = admin
            .create(
                "/v1/api_keys",
                &json!({"name": "ledger", "scopes": ["ledger:read"]}),
            )
            .await
            .unwrap();
        let r = app
            .admin
            .with_key(ledger_key["secret"].as_str().unwrap())
            .get("/v1/webhook_endpoints")
            .await
            .unwrap();
        assert_eq!(r.status, 403);

        let rx = Receiver::start().await;
        let created = accounting.create("/v1/webhook_endpoints", &json!({"url": rx.url(), "enabled_events": ["invoice.finalized", "invoice.finalized"]})).await.unwrap();
        assert_eq!(created["enabled_events"], json!(["invoice.finalized"]));
        let id = id_of(&created).unwrap();
        let old_secret = created["secret"].as_str().unwrap().to_owned();
        let list = accounting.get("/v1/webhook_endpoints").await.unwrap();
        assert_eq!(list.body["data"].as_array().unwrap().len(), 1);
        assert!(list.body["data"][0].get("secret").is_none());

        let rotated = accounting
            .post(
                &format!("/v1/webhook_endpoints/{id}/rotate_secret"),
                &json!({}),
                None,
            )
            .await
            .unwrap();
        assert_eq!(rotated.status, 200, "{}", rotated.body);
        let new_secret = rotated.body["secret"].as_str().unwrap().to_owned();
        assert_ne!(new_secret, old_secret);
        app.open_invoice("usd", 1000).await;
        eventually("delivered", || async { !rx.captured().is_empty() }).await;
        let got = rx.captured();
        assert_eq!(
            got[0].signature.split(' ').count(),
            2,
            "old and new secret both sign during the overlap"
        );
        verify_with_standardwebhooks(&new_secret, &got);
        verify_with_standardwebhooks(&old_secret, &got);
        let r = accounting
            .post(
                &format!("/v1/webhook_endpoints/{id}/rotate_secret"),
                &json!({"previous_secret_valid_seconds": -1}),
                None,
            )
            .await
            .unwrap();
        assert_eq!(
            (r.status, r.body["error"]["param"].as_str()),
            (400, Some("previous_secret_valid_seconds"))
        );

        let r = accounting
            .post(
                &format!("/v1/webhook_endpoints/{id}"),
                &json!({"url": "mailto:accounts@example.com"}),
                None,
            )
            .await
            .unwrap();
        assert_eq!(
            (r.status, r.body["error"]["param"].as_str()),
            (400, Some("url"))
        );
        let r = accounting
            .post(
                &format!("/v1/webhook_endpoints/{id}"),
                &json!({"enabled_events": ["*"], "description": "all of it"}),
                None,
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["enabled_events"], json!(["*"]));
        let deleted = accounting
            .http
            .delete(format!("{}/v1/webhook_endpoints/{id}", app.base))
            .bearer_auth(scoped["secret"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(deleted.status(), 200);
        let r = accounting
            .get(&format!("/v1/webhook_endpoints/{id}"))
            .await
            .unwrap();
        assert_eq!(r.status, 404);
        app
    }
);

// ---- outbound TLS ----

/// The test CA, written once per test binary; its PEM file is what `webhooks.ca` names.
fn test_ca() -> &'static (devcerts::Ca, PathBuf) {
    static CA: std::sync::OnceLock<(devcerts::Ca, PathBuf)> = std::sync::OnceLock::new();
    CA.get_or_init(|| {
        let ca = devcerts::Ca::new("carebill webhook test CA").unwrap();
        let dir = temp_dir("carebill-webhook-ca-").keep();
        let path = dir.join("ca.pem");
        std::fs::write(&path, ca.cert_pem()).unwrap();
        (ca, path)
    })
}

/// A minimal HTTPS receiver (tokio-rustls, a certificate from the test CA for 127.0.0.1) that
/// answers 200 to each request and counts the requests that got past the handshake.
async fn tls_receiver() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let issued = test_ca().0.server_cert(&["127.0.0.1"]).unwrap();
    // PEM through rustls-pki-types (rustls-pemfile is unmaintained: RUSTSEC-2025-0134).
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, counter) = (acceptor.clone(), counter.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                // Read the head and the body (Content-Length), then answer and close.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = tls.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(head_end) = text.find("\r\n\r\n") {
                        let length = text[..head_end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buf.len() >= head_end + 4 + length {
                            break;
                        }
                    }
                }
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = tls
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (addr, count)
}

async fn tls_app(backend: Backend, trust_test_ca: bool) -> TestApp {
    TestApp::spawn_with(backend, move |c: &mut Config| {
        c.webhooks.poll_interval_ms = 20;
        c.webhooks.allow_private = true; // the receiver is on loopback; https stays required
        c.webhooks.retry_schedule_ms = vec![60_000];
        if trust_test_ca {
            c.webhooks.ca = Some(test_ca().1.clone());
        }
    })
    .await
}

// Goal: deliveries go over verified TLS: to a receiver whose certificate the configured CA
// issued they arrive; without that CA (the public roots only) the handshake fails and nothing
// is sent. There is no way to accept an invalid certificate.
both_backends!(
    outbound_tls_is_verified,
    spawn = |b| tls_app(b, true),
    |app: TestApp| async move {
        let (addr, count) = tls_receiver().await;
        let url = format!("https://{addr}/hook");
        let trusted = register(&app, &url, &["invoice.finalized"]).await;
        let untrusting = tls_app(app.backend, false).await;
        let refused = register(&untrusting, &url, &["invoice.finalized"]).await;
        app.open_invoice("usd", 1000).await;
        untrusting.open_invoice("usd", 1000).await;
        let (trusted_id, refused_id) = (id_of(&trusted).unwrap(), id_of(&refused).unwrap());
        eventually("delivered over TLS", || async {
            delivery_states(&app, &trusted_id)
                .await
                .first()
                .is_some_and(|(_, s, _, _)| s == "succeeded")
        })
        .await;
        eventually("attempted without the CA", || async {
            delivery_states(&untrusting, &refused_id)
                .await
                .first()
                .is_some_and(|(_, _, a, _)| *a >= 1)
        })
        .await;
        let (_, status, _, error) = delivery_states(&untrusting, &refused_id).await.remove(0);
        assert_eq!(status, "pending");
        assert!(
            matches!(
                error.as_deref(),
                Some("connect_failed") | Some("request_failed")
            ),
            "{error:?}"
        );
        assert_eq!(
            count.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "only the verified delivery got through"
        );
        untrusting.finish().await;
        app
    }
);

/// The property names of schema `name` in the OpenAPI document the server serves.
fn schema_properties(doc: &Value, name: &str) -> Vec<String> {
    let mut keys: Vec<String> = doc["components"]["schemas"][name]["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("{name} has properties in the document"))
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

fn keys_of(v: &Value) -> Vec<String> {
    let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    keys
}

// Goal: update, rotate_secret and replay honour `Idempotency-Key` like payments and refunds: a
// retry with the same key and body answers the first response and does nothing again (no
// second delivery, no second secret); the same key with another body is 422
// `idempotency_key_reused`; a key that is not a UUID is 400 naming the header; refused input
// changes nothing. The processor event types are in the catalogue. The document describes
// what the routes answer.
both_backends!(
    idempotent_changes_and_replay,
    spawn = fast_app,
    |app: TestApp| async move {
        let admin = app.as_role("admin");
        let rx = Receiver::start().await;
        let endpoint = register(&app, &rx.url(), &["invoice.finalized"]).await;
        let endpoint_id = id_of(&endpoint).unwrap();
        app.open_invoice("usd", 1000).await;
        eventually("delivered", || async {
            delivery_states(&app, &endpoint_id)
                .await
                .first()
                .is_some_and(|(_, s, _, _)| s == "succeeded")
        })
        .await;
        let (event, _, _, _) = delivery_states(&app, &endpoint_id).await.remove(0);
        let deliveries = || async {
            scalar_i64(
                &app,
                "SELECT COUNT(*) FROM webhook_deliveries WHERE event_id = $1",
                &event,
            )
            .await
        };
        assert_eq!(deliveries().await, 1);

        // Replay: the retry replays the answer, queues nothing.
        let replay_path = format!("/v1/webhook_events/{event}/replay");
        let key = new_key();
        let body = json!({"endpoint": endpoint_id});
        let first = admin.post(&replay_path, &body, Some(&key)).await.unwrap();
        assert_eq!(first.status, 200, "{}", first.body);
        assert!(!first.replayed);
        assert_eq!(deliveries().await, 2);
        let again = admin.post(&replay_path, &body, Some(&key)).await.unwrap();
        assert_eq!(again.status, 200, "{}", again.body);
        assert!(again.replayed, "answered from the saved response");
        assert_eq!(again.body, first.body);
        assert_eq!(
            deliveries().await,
            2,
            "a retried replay queues no second delivery"
        );
        // The same key with another body: refused, nothing queued.
        let r = admin
            .post(&replay_path, &json!({}), Some(&key))
            .await
            .unwrap();
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (422, Some("idempotency_key_reused")),
            "{}",
            r.body
        );
        assert_eq!(r.body["error"]["type"], "idempotency_error");
        // Not a UUID: 400 naming the header, nothing queued.
        let r = admin
            .post(&replay_path, &body, Some("not-a-uuid"))
            .await
            .unwrap();
        assert_eq!(
            (r.status, r.body["error"]["param"].as_str()),
            (400, Some("Idempotency-Key")),
            "{}",
            r.body
        );
        assert_eq!(deliveries().await, 2);
        // A refused replay (unknown endpoint) does not use the key up: fixed, it runs.
        let key2 = new_key();
        let r = admin
            .post(&replay_path, &json!({"endpoint": "we_nope"}), Some(&key2))
            .await
            .unwrap();
        assert_eq!(
            (r.status, r.body["error"]["param"].as_str()),
            (404, Some("endpoint"))
        );
        let r = admin
            .post(&replay_path, &json!({"endpoint": "we_nope"}), Some(&key2))
            .await
            .unwrap();
        assert_eq!(
            r.status, 404,
            "an error is not saved as the key's answer: {}",
            r.body
        );
        assert_eq!(deliveries().await, 2);

        // Update.
        let path = format!("/v1/webhook_endpoints/{endpoint_id}");
        let key = new_key();
        let change = json!({"description": "ledger sync"});
        let first = admin.post(&path, &change, Some(&key)).await.unwrap();
        assert_eq!(
            (first.status, first.body["description"].as_str()),
            (200, Some("ledger sync")),
            "{}",
            first.body
        );
        let again = admin.post(&path, &change, Some(&key)).await.unwrap();
        assert!(again.replayed);
        assert_eq!(again.body, first.body);
        let r = admin
            .post(&path, &json!({"description": "other"}), Some(&key))
            .await
            .unwrap();
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (422, Some("idempotency_key_reused"))
        );
        // Bad input: 400 naming the parameter, and no part of the change is written.
        for (bad, param) in [
            (
                json!({"description": "half", "enabled_events": ["payout.exploded"]}),
                "enabled_events[0]",
            ),
            (
                json!({"description": "half", "enabled_events": []}),
                "enabled_events",
            ),
            (
                json!({"description": "half", "url": "ftp://example.com/x"}),
                "url",
            ),
            (
                json!({"description": "half", "disabled": "yes"}),
                "disabled",
            ),
            (json!({"description": "half", "colour": "red"}), "colour"),
        ] {
            let r = admin.post(&path, &bad, Some(&new_key())).await.unwrap();
            assert_eq!(
                (r.status, r.body["error"]["param"].as_str()),
                (400, Some(param)),
                "{bad}: {}",
                r.body
            );
        }
        let now = admin.get(&path).await.unwrap().body;
        assert_eq!(now["description"], "ledger sync", "{now}");
        assert_eq!(now["enabled_events"], json!(["invoice.finalized"]), "{now}");

        // Rotate: the retry shows the same new secret and rotates nothing.
        let rotate = format!("/v1/webhook_endpoints/{endpoint_id}/rotate_secret");
        let sealed = || async {
            sqlx::query_scalar::<_, String>(
                "SELECT secret_sealed FROM webhook_endpoints WHERE id = $1",
            )
            .bind(&endpoint_id)
            .fetch_one(&app.db.pool)
            .await
            .unwrap()
        };
        let key = new_key();
        let first = admin
            .post(
                &rotate,
                &json!({"previous_secret_valid_seconds": 60}),
                Some(&key),
            )
            .await
            .unwrap();
        assert_eq!(first.status, 200, "{}", first.body);
        let secret = first.body["secret"].as_str().unwrap().to_owned();
        assert_ne!(secret, endpoint["secret"].as_str().unwrap());
        let stored = sealed().await;
        let again = admin
            .post(
                &rotate,
                &json!({"previous_secret_valid_seconds": 60}),
                Some(&key),
            )
            .await
            .unwrap();
        assert!(again.replayed);
        assert_eq!(again.body["secret"], secret.as_str());
        assert_eq!(sealed().await, stored, "not rotated again");
        let r = admin
            .post(
                &rotate,
                &json!({"previous_secret_valid_seconds": 0}),
                Some(&key),
            )
            .await
            .unwrap();
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (422, Some("idempotency_key_reused"))
        );
        let r = admin
            .post(
                &rotate,
                &json!({"previous_secret_valid_seconds": -1}),
                Some(&new_key()),
            )
            .await
            .unwrap();
        assert_eq!(
            (r.status, r.body["error"]["param"].as_str()),
            (400, Some("previous_secret_valid_seconds"))
        );
        assert_eq!(sealed().await, stored, "a refused rotation changes nothing");
        let other = admin
            .post(&rotate, &json!({}), Some(&new_key()))
            .await
            .unwrap();
        assert_eq!(other.status, 200);
        assert_ne!(
            other.body["secret"],
            secret.as_str(),
            "a new key is a new rotation"
        );

        // The processor's event types are in the catalogue: accepted at registration and as a
        // filter; an unknown one is refused naming its position, listing them.
        let processor_types = [
            "dispute.created",
            "dispute.won",
            "dispute.lost",
            "payout.paid",
            "processor_fee.posted",
        ];
        let e = register(&app, &rx.url(), &processor_types).await;
        let mut got: Vec<String> = serde_json::from_value(e["enabled_events"].clone()).unwrap();
        got.sort();
        let mut want: Vec<String> = processor_types.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(got, want);
        for t in processor_types {
            let r = admin
                .get(&format!("/v1/webhook_events?type={t}"))
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{t}: {}", r.body);
        }
        let r = admin
            .post(
                "/v1/webhook_endpoints",
                &json!({"url": rx.url(), "enabled_events": ["payout.paid", "payout.failed"]}),
                None,
            )
            .await
            .unwrap();
        assert_eq!(
            (r.status, r.body["error"]["param"].as_str()),
            (400, Some("enabled_events[1]"))
        );
        for t in processor_types {
            assert!(
                r.body["error"]["message"].as_str().unwrap().contains(t),
                "{}",
                r.body
            );
        }

        // The document: these routes, their Idempotency-Key, their errors, and schemas whose
        // properties are exactly what the routes answer.
        let doc = app.admin.get("/v1/openapi.json").await.unwrap().body;
        for (path, method) in [
            ("/v1/webhook_endpoints", "post"),
            ("/v1/webhook_endpoints", "get"),
            ("/v1/webhook_endpoints/{id}", "get"),
            ("/v1/webhook_endpoints/{id}", "post"),
            ("/v1/webhook_endpoints/{id}", "delete"),
            ("/v1/webhook_endpoints/{id}/rotate_secret", "post"),
            ("/v1/webhook_events", "get"),
            ("/v1/webhook_events/{id}", "get"),
            ("/v1/webhook_events/{id}/replay", "post"),
        ] {
            let op = &doc["paths"][path][method];
            assert!(op.is_object(), "{method} {path} documented");
            assert_eq!(op["security"], json!([{"api_key": []}]), "{method} {path}");
            for status in ["400", "401", "403"] {
                assert!(
                    op["responses"][status].is_object(),
                    "{method} {path} documents {status}"
                );
            }
            let has_key = op["parameters"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["name"] == "Idempotency-Key"));
            assert_eq!(
                has_key,
                method == "post",
                "{method} {path}: Idempotency-Key"
            );
        }
        let catalogue = &doc["components"]["schemas"]["WebhookEventType"]["enum"];
        for t in processor_types
            .iter()
            .chain(&["payment.succeeded", "ledger.entry_posted"])
        {
            assert!(
                catalogue.as_array().unwrap().contains(&json!(t)),
                "{catalogue}"
            );
        }
        assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
        let shown = admin.get(&path).await.unwrap().body;
        assert_eq!(keys_of(&shown), schema_properties(&doc, "WebhookEndpoint"));
        let ev = admin
            .get(&format!("/v1/webhook_events/{event}"))
            .await
            .unwrap()
            .body;
        assert_eq!(keys_of(&ev), schema_properties(&doc, "WebhookEvent"));
        assert_eq!(
            keys_of(&ev["deliveries"][0]),
            schema_properties(&doc, "WebhookDelivery")
        );
        app
    }
);
