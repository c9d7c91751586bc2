//! Nothing sensitive in the logs:
//! - the real binary, at debug level, serves a whole billing flow (including bad input that
//!   carries health data and a decline) and its log output is scanned for every secret and
//!   health value the test sent;
//! - the whole flow again — staff sign-in with password and TOTP, patients, bills, a card
//!   tokenized at a real vault and charged, a refund, an identified export, an API key, a
//!   patient's guest access — with *every* crate at TRACE (sqlx, reqwest, rustls, hyper…), on
//!   both backends, through carebill's own log pipeline (`telemetry::install`, the redacting
//!   writer); the vault logs at TRACE too. The billing capture, the vault's log and every error
//!   body are scanned for every value the test put in.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use carebill::db::Backend;
use common::*;

/// Every log line of this test binary (its in-process servers and clients), at TRACE.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Installs the TRACE capture as this binary's subscriber (before the harness installs its
/// own), through carebill's pipeline: JSON lines, each redacted on its way out.
fn capture() -> Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE
        .get_or_init(|| {
            let capture = Capture::default();
            let sink = capture.clone();
            carebill::telemetry::install(
                tracing_subscriber::EnvFilter::new("trace"),
                move || sink.clone(),
                false,
            );
            capture
        })
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logs_carry_no_health_data_keys_or_payment_methods() {
    // Goal: names, dates of birth, emails, phones, MRNs, line descriptions, API keys and
    // payment-method ids never reach a log line, even at debug level and on error paths.
    capture();
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
        .env("CAREBILL_KEYRING", crate::common::test_keyring())
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

/// A billing server wired to a real vault whose log level is TRACE.
async fn spawn_traced(backend: Backend) -> TestApp {
    capture();
    let mut vault = TestVault::start().await;
    vault
        .spec
        .extra_env
        .retain(|(name, _)| name != "TOKENIZER_LOG");
    vault
        .spec
        .extra_env
        .push(("TOKENIZER_LOG".to_owned(), "trace".to_owned()));
    vault.restart().await;
    let mut app = TestApp::spawn_with(backend, |c| vault.child.configure(c)).await;
    app.vault = Some(vault);
    app
}

/// A client that keeps every error body it receives.
struct Recording {
    client: ApiClient,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Recording {
    async fn post(&self, path: &str, body: &Value) -> carebill::client::Reply {
        let r = self
            .client
            .post(path, body, Some(&new_key()))
            .await
            .unwrap();
        if r.status >= 400 {
            self.errors.lock().unwrap().push(r.body.to_string());
        }
        r
    }

    async fn ok(&self, path: &str, body: &Value) -> Value {
        let r = self.post(path, body).await;
        assert_eq!(r.status, 200, "POST {path}: {}", r.body);
        r.body
    }

    async fn get(&self, path: &str) -> carebill::client::Reply {
        let r = self.client.get(path).await.unwrap();
        if r.status >= 400 {
            self.errors.lock().unwrap().push(r.body.to_string());
        }
        r
    }

    fn with_key(&self, key: &str) -> Recording {
        Recording {
            client: self.client.with_key(key),
            errors: self.errors.clone(),
        }
    }
}

fn totp_now(secret: &str) -> String {
    let bytes = totp_rs::Secret::Encoded(secret.to_owned())
        .to_bytes()
        .unwrap();
    totp_rs::TOTP::new_unchecked(
        totp_rs::Algorithm::SHA1,
        6,
        1,
        30,
        bytes,
        None,
        String::new(),
    )
    .generate_current()
    .unwrap()
}

both_backends!(
    the_whole_flow_at_trace_leaks_nothing,
    spawn = spawn_traced,
    |app: TestApp| async move {
        // Goal: with every crate logging at TRACE, no name, email, date of birth, MRN, phone,
        // address, line description, card number (plain or grouped), security code, password,
        // API key, session token, TOTP secret, recovery code or access code the flow used
        // reaches the billing log, the vault's log or an error body.
        let capture = capture();
        let tag = match app.backend {
            Backend::Sqlite => "Sq",
            Backend::Postgres => "Pg",
        };
        let errors = Arc::new(Mutex::new(Vec::new()));
        let admin = Recording {
            client: app.as_role("admin"),
            errors: errors.clone(),
        };
        let mut secrets: Vec<String> = app.keys.values().cloned().collect();

        // Staff: a billing manager with a password, signed in with TOTP.
        let email = format!("ottoline.{tag}.vantreight@clinic.example");
        let password = format!("Vantreight harbour {tag} lanterns 61");
        let wrong = format!("Vantreight wrong {tag} guess 19");
        admin
            .ok(
                "/v1/users",
                &json!({"email": email, "role": "billing_manager", "password": password}),
            )
            .await;
        let anonymous = admin.with_key("");
        let r = anonymous
            .post("/v1/sessions", &json!({"email": email, "password": wrong}))
            .await;
        assert_eq!(r.status, 401);
        let signin = anonymous
            .ok(
                "/v1/sessions",
                &json!({"email": email, "password": password}),
            )
            .await;
        let pending = signin["token"].as_str().unwrap().to_owned();
        let enrolling = admin.with_key(&pending);
        let enrol = enrolling
            .ok("/v1/sessions/mfa/enrollment", &json!({}))
            .await;
        let url = enrol["otpauth_url"].as_str().unwrap();
        let totp_secret = url
            .split(['?', '&'])
            .find_map(|p| p.strip_prefix("secret="))
            .unwrap()
            .to_owned();
        let done = enrolling
            .ok(
                "/v1/sessions/mfa/enrollment/confirm",
                &json!({"code": totp_now(&totp_secret)}),
            )
            .await;
        let session = done["token"].as_str().unwrap().to_owned();
        let recovery: Vec<String> = done["recovery_codes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_owned())
            .collect();
        // Signed out and in again, the second factor a recovery code this time.
        let r = admin
            .with_key(&session)
            .client
            .http
            .delete(format!("{}/v1/sessions/current", app.base))
            .bearer_auth(&session)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        let again = anonymous
            .ok(
                "/v1/sessions",
                &json!({"email": email, "password": password}),
            )
            .await;
        let pending2 = again["token"].as_str().unwrap().to_owned();
        let staff_session = admin
            .with_key(&pending2)
            .ok("/v1/sessions/mfa", &json!({"recovery_code": recovery[0]}))
            .await["token"]
            .as_str()
            .unwrap()
            .to_owned();
        let staff = admin.with_key(&staff_session);
        secrets.extend([
            email.clone(),
            password.clone(),
            wrong,
            pending,
            session,
            pending2,
            staff_session.clone(),
            totp_secret,
        ]);
        secrets.extend(recovery);

        // Patients, with everything a chart's front page has.
        let name = format!("Ottoline {tag} Vantreight");
        let patient_email = format!("ottoline.{tag}@patients.example");
        let dob = "1947-11-23";
        let mrn = format!("MRN-OV-{tag}-55731");
        let phone = "+1 415 555 0187";
        let line1 = format!("77 Quillfeather {tag} Lane");
        let city = "Zanesborough";
        let postal = "94999";
        let patient = staff
            .ok(
                "/v1/patients",
                &json!({"name": name, "date_of_birth": dob, "email": patient_email, "phone": phone,
                    "mrn": mrn, "address": {"line1": line1, "city": city, "state": "CA",
                    "postal_code": postal, "country": "US"}}),
            )
            .await;
        let patient = patient["id"].as_str().unwrap().to_owned();
        // Bad input carrying health data: refused without echoing it.
        let r = staff
            .post(
                "/v1/patients",
                &json!({"name": name, "date_of_birth": name}),
            )
            .await;
        assert_eq!(r.status, 400);
        let r = staff
            .post(
                "/v1/patients",
                &json!({"name": 5, "date_of_birth": dob, "mrn": mrn}),
            )
            .await;
        assert_eq!(r.status, 400);
        let _ = staff
            .get(&format!("/v1/patients?starting_after={mrn}"))
            .await;
        let description = format!("Hemodialysis session {tag} Vantreight");
        let invoice = staff
            .ok(
                "/v1/invoices",
                &json!({"patient": patient, "currency": "usd", "due_date": "2030-01-31",
                    "lines": [{"service_date": "2026-01-05", "code": "90935", "description": description,
                        "quantity": 1, "unit_amount": 48000}]}),
            )
            .await;
        let invoice_id = invoice["id"].as_str().unwrap().to_owned();
        let invoice = staff
            .ok(&format!("/v1/invoices/{invoice_id}/finalize"), &json!({}))
            .await;
        secrets.extend([
            name,
            patient_email,
            dob.to_owned(),
            mrn,
            phone.to_owned(),
            line1,
            city.to_owned(),
            description,
        ]);

        // Cards at the vault: an Amex that pays, a Visa that is declined.
        let vault = app.vault();
        let cards = [
            (
                "378282246310005",
                "0962",
                ["3782 822463 10005", "3782-822463-10005"],
            ),
            (
                "4000000000000002",
                "064",
                ["4000 0000 0000 0002", "4000-0000-0000-0002"],
            ),
        ];
        let mut tokens = Vec::new();
        for (number, cvc, _) in &cards {
            let (status, body) = vault
                .tokenize(json!({"number": number, "exp_month": 12, "exp_year": 2030, "cvc": cvc}))
                .await;
            assert!(status == 200 || status == 201, "{status} {body}");
            tokens.push(body["id"].as_str().unwrap().to_owned());
        }
        // A card form with a bad security code: refused without echoing the number.
        let (status, body) = vault
            .tokenize(json!({"number": cards[0].0, "exp_month": 12, "exp_year": 2030, "cvc": "x"}))
            .await;
        assert_eq!(status, 400, "{body}");
        errors.lock().unwrap().push(body.to_string());
        let paid = staff
            .ok(
                "/v1/payments",
                &json!({"invoice": invoice["id"], "amount": 30000, "currency": "usd",
                    "payment_method": tokens[0]}),
            )
            .await;
        assert_eq!(paid["status"], "succeeded", "{paid}");
        let declined = staff
            .post(
                "/v1/payments",
                &json!({"invoice": invoice["id"], "amount": 1000, "currency": "usd",
                    "payment_method": tokens[1]}),
            )
            .await;
        assert_eq!(declined.status, 402, "{}", declined.body);
        let note = format!("Refund for Vantreight {tag} dialysis copay");
        staff
            .ok(
                "/v1/refunds",
                &json!({"payment": paid["id"], "amount": 2500, "reason": "billing_error",
                    "note": note}),
            )
            .await;
        secrets.push(note);
        // The identified ledger export, as the billing manager pulls it.
        let export = staff
            .get("/v1/ledger/export?format=jsonl&identified=true")
            .await;
        assert_eq!(export.status, 200);

        // An API key for the accounting system, and a patient's guest access.
        let new_key = admin
            .ok(
                "/v1/api_keys",
                &json!({"name": "general ledger", "scopes": ["ledger:read"]}),
            )
            .await["secret"]
            .as_str()
            .unwrap()
            .to_owned();
        let code = staff
            .ok(&format!("/v1/patients/{patient}/access_code"), &json!({}))
            .await["access_code"]
            .as_str()
            .unwrap()
            .to_owned();
        let r = anonymous
            .post(
                "/v1/sessions/guest",
                &json!({"access_code": code, "date_of_birth": "1950-01-01"}),
            )
            .await;
        assert_eq!(r.status, 401);
        let guest = anonymous
            .ok(
                "/v1/sessions/guest",
                &json!({"access_code": code, "date_of_birth": dob}),
            )
            .await["token"]
            .as_str()
            .unwrap()
            .to_owned();
        let statement = admin
            .with_key(&guest)
            .get(&format!("/v1/patients/{patient}/statement"))
            .await;
        assert_eq!(statement.status, 200, "{}", statement.body);
        secrets.extend([new_key, code, guest]);

        // Let the background writer and sealer log what they do too.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let billing_log = capture.text();
        let vault_log = std::fs::read_to_string(vault.child.log()).unwrap();
        let error_bodies = errors.lock().unwrap().join("\n");
        if let Some(dir) = artifacts_dir() {
            std::fs::write(
                dir.join(format!("carebill-tests-log_hygiene-trace-{tag}.log")),
                &billing_log,
            )
            .unwrap();
        }
        // The capture is real: TRACE lines, from the database driver and the TLS stack too.
        let trace_lines: Vec<&str> = billing_log
            .lines()
            .filter(|l| l.contains("\"level\":\"TRACE\""))
            .collect();
        assert!(trace_lines.len() > 100, "{} TRACE lines", trace_lines.len());
        for target in ["sqlx", "rustls", "carebill"] {
            assert!(
                billing_log
                    .lines()
                    .any(|l| l.contains(&format!("\"target\":\"{target}"))),
                "no log line from {target}"
            );
        }
        assert!(
            vault_log.contains("\"level\":\"TRACE\""),
            "the vault logged at TRACE"
        );
        assert!(error_bodies.contains("parameter_invalid") || error_bodies.contains("param"));

        let mut card_forms = Vec::new();
        for (number, _, grouped) in &cards {
            card_forms.push(number.to_string());
            card_forms.extend(grouped.iter().map(|g| g.to_string()));
        }
        for (what, text) in [
            ("billing log", &billing_log),
            ("vault log", &vault_log),
            ("error bodies", &error_bodies),
        ] {
            for s in secrets.iter().chain(card_forms.iter()) {
                assert!(
                    !text.contains(s.as_str()),
                    "the {what} contains a value the test put in ({} chars, starting {:?})",
                    s.len(),
                    s.chars().take(3).collect::<String>()
                );
            }
            // Security codes are short: look for them where a leak would put them (a JSON or
            // Debug dump of the card form, a query string), not in every timestamp.
            for (_, cvc, _) in &cards {
                let leaked = [
                    format!("\"{cvc}\""),
                    format!("cvc={cvc}"),
                    format!("cvc: {cvc}"),
                    format!("\"cvc\":{cvc}"),
                ];
                assert!(
                    !leaked.iter().any(|l| text.contains(l.as_str())),
                    "the {what} contains a security code"
                );
            }
        }
        app
    }
);
