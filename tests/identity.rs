//! Identity and access over HTTP on both backends: staff sign-in with mandatory TOTP, recovery
//! codes, sessions (bearer and cookie + CSRF), brute-force throttling, patients who see only
//! their own records, guest pay, least privilege for admin and auditor, scoped API keys, and
//! bad credentials that never 500.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;

const STRONG: &str = "correct horse battery staple 1987";

fn totp_now(secret_b32: &str) -> String {
    let bytes = totp_rs::Secret::Encoded(secret_b32.to_owned())
        .to_bytes()
        .unwrap();
    let totp = totp_rs::TOTP::new_unchecked(
        totp_rs::Algorithm::SHA1,
        6,
        1,
        30,
        bytes,
        None,
        String::new(),
    );
    totp.generate_current().unwrap()
}

/// The `secret=` of an otpauth URL.
fn secret_of(url: &str) -> String {
    url.split(['?', '&'])
        .find_map(|p| p.strip_prefix("secret="))
        .unwrap()
        .to_owned()
}

async fn post_json(
    app: &TestApp,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = app
        .admin
        .http
        .post(format!("{}{path}", app.base))
        .json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, r.json().await.unwrap_or(Value::Null), headers)
}

async fn get_with(app: &TestApp, path: &str, token: &str) -> (u16, Value) {
    let r = app
        .admin
        .http
        .get(format!("{}{path}", app.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Creates a staff user through the admin, signs in, enrols TOTP; returns (user id, active
/// session token, TOTP secret, recovery codes).
async fn enrolled_staff(
    app: &TestApp,
    email: &str,
    role: &str,
) -> (String, String, String, Vec<String>) {
    let admin = app.as_role("admin");
    let user = admin
        .create(
            "/v1/users",
            &json!({"email": email, "role": role, "password": STRONG}),
        )
        .await
        .unwrap();
    let (status, s, _) = post_json(
        app,
        "/v1/sessions",
        None,
        json!({"email": email, "password": STRONG}),
    )
    .await;
    assert_eq!(status, 200, "{s}");
    assert_eq!(s["stage"], "mfa_enrollment");
    let pending = s["token"].as_str().unwrap().to_owned();
    // Before MFA, the session opens nothing.
    let (status, body) = get_with(app, "/v1/patients", &pending).await;
    assert_eq!(status, 401, "{body}");
    let (status, e, _) = post_json(
        app,
        "/v1/sessions/mfa/enrollment",
        Some(&pending),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{e}");
    assert!(e["qr_png_base64"].as_str().unwrap().len() > 100);
    let secret = secret_of(e["otpauth_url"].as_str().unwrap());
    let (status, done, _) = post_json(
        app,
        "/v1/sessions/mfa/enrollment/confirm",
        Some(&pending),
        json!({"code": totp_now(&secret)}),
    )
    .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["stage"], "active");
    let codes: Vec<String> = done["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(codes.len(), 10);
    (
        user["id"].as_str().unwrap().to_owned(),
        done["token"].as_str().unwrap().to_owned(),
        secret,
        codes,
    )
}

both_backends!(
    staff_sign_in_needs_totp_and_recovery_codes_work_once,
    |app: TestApp| async move {
        let (_, token, secret, codes) =
            enrolled_staff(&app, "clerk@example.org", "billing_clerk").await;
        let (status, _) = get_with(&app, "/v1/patients", &token).await;
        assert_eq!(status, 200);

        // Next sign-in: password, then TOTP. A wrong code fails; the right one works.
        let (_, s, _) = post_json(
            &app,
            "/v1/sessions",
            None,
            json!({"email": "clerk@example.org", "password": STRONG}),
        )
        .await;
        assert_eq!(s["stage"], "mfa_pending");
        let pending = s["token"].as_str().unwrap().to_owned();
        let (status, body, _) = post_json(
            &app,
            "/v1/sessions/mfa",
            Some(&pending),
            json!({"code": "000000"}),
        )
        .await;
        assert_eq!(status, 401, "{body}");
        // The code used at enrolment cannot be replayed within its step; a recovery code works once.
        let (status, ok, _) = post_json(
            &app,
            "/v1/sessions/mfa",
            Some(&pending),
            json!({"recovery_code": codes[0]}),
        )
        .await;
        assert_eq!(status, 200, "{ok}");
        let active = ok["token"].as_str().unwrap().to_owned();
        assert_eq!(get_with(&app, "/v1/patients", &active).await.0, 200);
        // The pre-MFA token died with the step.
        assert_eq!(get_with(&app, "/v1/patients", &pending).await.0, 401);
        let (_, s, _) = post_json(
            &app,
            "/v1/sessions",
            None,
            json!({"email": "clerk@example.org", "password": STRONG}),
        )
        .await;
        let pending = s["token"].as_str().unwrap().to_owned();
        let (status, _, _) = post_json(
            &app,
            "/v1/sessions/mfa",
            Some(&pending),
            json!({"recovery_code": codes[0]}),
        )
        .await;
        assert_eq!(status, 401, "a used recovery code worked again");
        let _ = secret;

        // Sign out: the token is refused server-side. Sign out everywhere: all of them.
        let r = app
            .admin
            .http
            .delete(format!("{}/v1/sessions/current", app.base))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 204);
        assert_eq!(get_with(&app, "/v1/patients", &token).await.0, 401);
        let (status, body, _) =
            post_json(&app, "/v1/sessions/revoke_all", Some(&active), json!({})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(get_with(&app, "/v1/patients", &active).await.0, 401);

        // An idle session is refused.
        let (_, s, _) = post_json(
            &app,
            "/v1/sessions",
            None,
            json!({"email": "clerk@example.org", "password": STRONG}),
        )
        .await;
        let pending = s["token"].as_str().unwrap().to_owned();
        let (_, ok, _) = post_json(
            &app,
            "/v1/sessions/mfa",
            Some(&pending),
            json!({"recovery_code": codes[1]}),
        )
        .await;
        let live = ok["token"].as_str().unwrap().to_owned();
        assert_eq!(get_with(&app, "/v1/patients", &live).await.0, 200);
        sqlx::query("UPDATE sessions SET last_seen_at_us = last_seen_at_us - 3600000000 WHERE revoked_at_us IS NULL")
        .execute(&app.db.pool)
        .await
        .unwrap();
        assert_eq!(get_with(&app, "/v1/patients", &live).await.0, 401);
        app
    }
);

both_backends!(
    brute_force_is_throttled_and_answers_are_uniform,
    |app: TestApp| async move {
        let admin = app.as_role("admin");
        admin
            .create(
                "/v1/users",
                &json!({"email": "mgr@example.org", "role": "billing_manager", "password": STRONG}),
            )
            .await
            .unwrap();
        let (s1, unknown, _) = post_json(
            &app,
            "/v1/sessions",
            None,
            json!({"email": "nobody@example.org", "password": STRONG}),
        )
        .await;
        let (s2, wrong, _) = post_json(
            &app,
            "/v1/sessions",
            None,
            json!({"email": "mgr@example.org", "password": "not the password at all"}),
        )
        .await;
        assert_eq!((s1, s2), (401, 401));
        assert_eq!(unknown["error"]["code"], wrong["error"]["code"]);
        assert_eq!(unknown["error"]["message"], wrong["error"]["message"]);
        for _ in 0..4 {
            let (s, _, _) = post_json(
                &app,
                "/v1/sessions",
                None,
                json!({"email": "mgr@example.org", "password": "still wrong, still wrong"}),
            )
            .await;
            assert_eq!(s, 401);
        }
        // The 6th attempt in the window: 429, even with the right password.
        let (s, body, headers) = post_json(
            &app,
            "/v1/sessions",
            None,
            json!({"email": "mgr@example.org", "password": STRONG}),
        )
        .await;
        assert_eq!(s, 429, "{body}");
        let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=900).contains(&retry));
        // Audited, and readable by the auditor, not by the billing office.
        let (status, events) =
            get_with(&app, "/v1/security_events?limit=100", &app.keys["auditor"]).await;
        assert_eq!(status, 200, "{events}");
        let kinds: Vec<&str> = events["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap())
            .collect();
        assert!(
            kinds.iter().filter(|k| **k == "signin_failed").count() >= 6,
            "{kinds:?}"
        );
        assert!(kinds.contains(&"signin_locked"));
        assert!(
            !events.to_string().contains("still wrong"),
            "a password reached the log"
        );
        assert_eq!(
            get_with(&app, "/v1/security_events", &app.keys["billing_manager"])
                .await
                .0,
            403
        );
        app
    }
);

// Goal: rotating an API key is one transaction: two rotations of the same key racing each
// other yield exactly one live successor (the other answers 404), never two live keys.
both_backends!(
    concurrent_key_rotations_leave_one_successor,
    |app: TestApp| async move {
        let admin = app.as_role("admin");
        let key = admin
            .create(
                "/v1/api_keys",
                &json!({"name": "race", "scopes": ["ledger:read"]}),
            )
            .await
            .unwrap();
        let old = key["id"].as_str().unwrap().to_owned();
        let path = format!("/v1/api_keys/{old}/rotate");
        let empty = json!({});
        let (a, b) = tokio::join!(
            admin.post(&path, &empty, None),
            admin.post(&path, &empty, None)
        );
        let mut statuses = [a.unwrap().status, b.unwrap().status];
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 404]);
        let live: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM api_keys WHERE rotated_from = $1 AND revoked_at_us IS NULL",
        )
        .bind(&old)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
        assert_eq!(live, 1);
        let all: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM api_keys WHERE rotated_from = $1")
            .bind(&old)
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
        assert_eq!(all, 1, "the losing rotation left no key behind");
        app
    }
);

// Goal: erasing a patient's personal data also ends their portal account: disabled, signed
// out, and nothing that identifies the person left on the user row (email, password,
// authenticator); their guest-pay session ends too. A security event names each account.
both_backends!(
    erasure_disables_the_patients_portal_account,
    |app: TestApp| async move {
        let inv = app.open_invoice("usd", 5000).await;
        let me = inv["patient"].as_str().unwrap().to_owned();
        let user = app
            .admin
            .create(
                "/v1/users",
                &json!({"email": "erase.me@example.org", "role": "patient", "password": STRONG, "patient": me}),
            )
            .await
            .unwrap();
        let user_id = user["id"].as_str().unwrap().to_owned();
        let (_, s, _) = post_json(
            &app,
            "/v1/sessions",
            None,
            json!({"email": "erase.me@example.org", "password": STRONG}),
        )
        .await;
        let token = s["token"].as_str().unwrap().to_owned();
        assert_eq!(
            get_with(&app, &format!("/v1/patients/{me}"), &token)
                .await
                .0,
            200
        );

        let r = app
            .admin
            .http
            .delete(format!("{}/v1/patients/{me}/personal-data", app.base))
            .bearer_auth(&app.keys["billing_manager"])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);

        // The session that was open is over, and the password no longer signs in.
        assert_eq!(
            get_with(&app, &format!("/v1/patients/{me}"), &token)
                .await
                .0,
            401
        );
        let (status, _, _) = post_json(
            &app,
            "/v1/sessions",
            None,
            json!({"email": "erase.me@example.org", "password": STRONG}),
        )
        .await;
        assert_eq!(status, 401);
        // Nothing on the row identifies the person any more.
        let (status_col, email, hash): (String, String, Option<String>) =
            sqlx::query_as("SELECT status, email, password_hash FROM users WHERE id = $1")
                .bind(&user_id)
                .fetch_one(&app.db.pool)
                .await
                .unwrap();
        assert_eq!(status_col, "disabled");
        assert_eq!(email, format!("erased+{user_id}@invalid"));
        assert!(hash.is_none());
        let clear: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE email LIKE '%erase.me%'")
                .fetch_one(&app.db.pool)
                .await
                .unwrap();
        assert_eq!(clear, 0);
        let logged: Vec<(String, String)> = sqlx::query_as(
            "SELECT actor, detail FROM security_events WHERE kind = 'user_disabled' AND subject = $1",
        )
        .bind(&user_id)
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
        assert_eq!(logged.len(), 1, "{logged:?}");
        assert_eq!(logged[0].1, "personal_data_erased");
        app
    }
);

both_backends!(
    patients_see_only_their_own_records,
    |app: TestApp| async move {
        let mine = app.open_invoice("usd", 5000).await;
        let theirs = app.open_invoice("usd", 7000).await;
        let their_payment = app.pay(&theirs, 1000).await;
        let me = mine["patient"].as_str().unwrap();
        let them = theirs["patient"].as_str().unwrap();
        // The billing office opens an account for the patient.
        app.admin
        .create("/v1/users", &json!({"email": "pat@example.org", "role": "patient", "password": STRONG, "patient": me}))
        .await
        .unwrap();
        let (_, s, _) = post_json(
            &app,
            "/v1/sessions",
            None,
            json!({"email": "pat@example.org", "password": STRONG}),
        )
        .await;
        assert_eq!(s["stage"], "active", "{s}");
        let t = s["token"].as_str().unwrap().to_owned();
        assert_eq!(
            get_with(&app, &format!("/v1/patients/{me}"), &t).await.0,
            200
        );
        assert_eq!(
            get_with(&app, &format!("/v1/patients/{me}/statement"), &t)
                .await
                .0,
            200
        );
        // Someone else's records: 404, exactly like ids that do not exist.
        for path in [
            format!("/v1/patients/{them}"),
            format!("/v1/patients/{them}/statement"),
            format!("/v1/payments/{}", their_payment["id"].as_str().unwrap()),
            format!("/v1/invoices/{}", theirs["id"].as_str().unwrap()),
        ] {
            let (status, body) = get_with(&app, &path, &t).await;
            assert_eq!(status, 404, "{path}: {body}");
        }
        let (_, list) = get_with(&app, "/v1/payments?limit=100", &t).await;
        assert_eq!(list["data"].as_array().unwrap().len(), 0, "{list}");
        let (_, list) = get_with(&app, "/v1/patients?limit=100", &t).await;
        assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list}");
        let (_, list) = get_with(&app, "/v1/invoices?limit=100", &t).await;
        let ids: Vec<&str> = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [mine["id"].as_str().unwrap()], "{list}");
        // Their own bill, itemized.
        let (status, own) = get_with(
            &app,
            &format!("/v1/invoices/{}", mine["id"].as_str().unwrap()),
            &t,
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(own["lines"][0]["code"], "99213");
        // Paying someone else's bill is "no such invoice".
        let r = app
        .admin
        .http
        .post(format!("{}/v1/payments", app.base))
        .bearer_auth(&t)
        .header("Idempotency-Key", new_key())
        .json(&json!({"invoice": theirs["id"], "amount": 100, "currency": "usd", "payment_method": "pm_card_visa"}))
        .send()
        .await
        .unwrap();
        assert_eq!(r.status().as_u16(), 404);
        // Their own: paid.
        let r = app
        .admin
        .http
        .post(format!("{}/v1/payments", app.base))
        .bearer_auth(&t)
        .header("Idempotency-Key", new_key())
        .json(&json!({"invoice": mine["id"], "amount": 100, "currency": "usd", "payment_method": "pm_card_visa"}))
        .send()
        .await
        .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        app
    }
);

both_backends!(
    guest_pay_opens_one_patients_bills,
    |app: TestApp| async move {
        let inv = app.open_invoice("usd", 5000).await;
        let other = app.open_invoice("usd", 6000).await;
        let patient = inv["patient"].as_str().unwrap();
        let code = app
            .as_role("billing_clerk")
            .create(&format!("/v1/patients/{patient}/access_code"), &json!({}))
            .await
            .unwrap();
        let code = code["access_code"].as_str().unwrap().to_owned();
        let (status, _, _) = post_json(
            &app,
            "/v1/sessions/guest",
            None,
            json!({"access_code": code, "date_of_birth": "1999-01-01"}),
        )
        .await;
        assert_eq!(status, 401, "a wrong date of birth opened the bill");
        let (status, g, _) = post_json(&app, "/v1/sessions/guest", None, json!({"access_code": code.to_lowercase().replace('-', ""), "date_of_birth": "1980-02-29"})).await;
        assert_eq!(status, 200, "{g}");
        let t = g["token"].as_str().unwrap().to_owned();
        assert_eq!(
            get_with(&app, &format!("/v1/patients/{patient}/statement"), &t)
                .await
                .0,
            200
        );
        let other_patient = other["patient"].as_str().unwrap();
        assert_eq!(
            get_with(&app, &format!("/v1/patients/{other_patient}/statement"), &t)
                .await
                .0,
            404
        );
        app
    }
);

both_backends!(
    least_privilege_for_admin_auditor_and_scoped_keys,
    |app: TestApp| async move {
        let admin = app.as_role("admin");
        // The admin manages users and keys, and reads no health or payment data.
        assert_eq!(admin.get("/v1/patients").await.unwrap().status, 403);
        assert_eq!(admin.get("/v1/payments").await.unwrap().status, 403);
        // The auditor reads, and moves no money.
        let auditor = app.as_role("auditor");
        assert_eq!(
            auditor
                .get("/v1/ledger/accounts?currency=usd")
                .await
                .unwrap()
                .status,
            200
        );
        let inv = app.open_invoice("usd", 5000).await;
        let r = auditor
        .post("/v1/payments", &json!({"invoice": inv["id"], "amount": 100, "currency": "usd", "payment_method": "pm_card_visa"}), Some(&new_key()))
        .await
        .unwrap();
        assert_eq!(r.status, 403);

        // A scoped key for the accounting system: ledger reads, nothing else.
        let key = admin
            .create(
                "/v1/api_keys",
                &json!({"name": "GL sync", "scopes": ["ledger:read"]}),
            )
            .await
            .unwrap();
        let secret = key["secret"].as_str().unwrap().to_owned();
        assert!(secret.starts_with("cbk_"));
        let gl = app.admin.with_key(&secret);
        assert_eq!(
            gl.get("/v1/ledger/accounts?currency=usd")
                .await
                .unwrap()
                .status,
            200
        );
        assert_eq!(
            gl.get("/v1/ledger/export?format=csv").await.unwrap().status,
            403
        );
        assert_eq!(gl.get("/v1/patients").await.unwrap().status, 403);
        // Listed with its last use; never with its secret.
        let list = admin.get("/v1/api_keys").await.unwrap().body;
        assert!(!list.to_string().contains(&secret));
        // Rotation: the new secret works, the old one is refused.
        let rotated = admin
            .create(
                &format!("/v1/api_keys/{}/rotate", key["id"].as_str().unwrap()),
                &json!({}),
            )
            .await
            .unwrap();
        let new_secret = rotated["secret"].as_str().unwrap().to_owned();
        assert_eq!(
            gl.get("/v1/ledger/accounts?currency=usd")
                .await
                .unwrap()
                .status,
            401
        );
        assert_eq!(
            app.admin
                .with_key(&new_secret)
                .get("/v1/ledger/accounts?currency=usd")
                .await
                .unwrap()
                .status,
            200
        );
        // An expired key is refused.
        sqlx::query("UPDATE api_keys SET expires_at_us = 1 WHERE id = $1")
            .bind(rotated["id"].as_str().unwrap())
            .execute(&app.db.pool)
            .await
            .unwrap();
        assert_eq!(
            app.admin
                .with_key(&new_secret)
                .get("/v1/ledger/accounts?currency=usd")
                .await
                .unwrap()
                .status,
            401
        );
        app
    }
);

both_backends!(
    cookie_sessions_need_the_csrf_token_to_change_state,
    |app: TestApp| async move {
        let inv = app.open_invoice("usd", 5000).await;
        let patient = inv["patient"].as_str().unwrap();
        app.admin
        .create("/v1/users", &json!({"email": "web@example.org", "role": "patient", "password": STRONG, "patient": patient}))
        .await
        .unwrap();
        let (status, s, headers) = post_json(
            &app,
            "/v1/sessions",
            None,
            json!({"email": "web@example.org", "password": STRONG, "kind": "cookie"}),
        )
        .await;
        assert_eq!(status, 200, "{s}");
        let cookie = headers["set-cookie"].to_str().unwrap().to_owned();
        for attr in [
            "__Host-carebill_session=",
            "HttpOnly",
            "Secure",
            "SameSite=Strict",
            "Path=/",
        ] {
            assert!(cookie.contains(attr), "{cookie}");
        }
        assert!(
            s.get("token").is_none(),
            "a cookie session's token is in the body"
        );
        let csrf = s["csrf_token"].as_str().unwrap().to_owned();
        let pair = cookie.split(';').next().unwrap().to_owned();
        let read = app
            .admin
            .http
            .get(format!("{}/v1/patients/{patient}", app.base))
            .header("cookie", &pair)
            .send()
            .await
            .unwrap();
        assert_eq!(read.status().as_u16(), 200);
        let pay = |csrf: Option<String>| {
            let mut r = app
            .admin
            .http
            .post(format!("{}/v1/payments", app.base))
            .header("cookie", &pair)
            .header("Idempotency-Key", new_key())
            .json(&json!({"invoice": inv["id"], "amount": 100, "currency": "usd", "payment_method": "pm_card_visa"}));
            if let Some(c) = csrf {
                r = r.header("x-csrf-token", c);
            }
            r.send()
        };
        assert_eq!(pay(None).await.unwrap().status().as_u16(), 403);
        assert_eq!(
            pay(Some("forged".into())).await.unwrap().status().as_u16(),
            403
        );
        assert_eq!(pay(Some(csrf)).await.unwrap().status().as_u16(), 200);
        app
    }
);

both_backends!(
    bad_credentials_are_4xx_and_change_nothing,
    |app: TestApp| async move {
        let long_email = format!("{}@example.org", "a".repeat(300));
        let (s, b, _) = post_json(
            &app,
            "/v1/sessions",
            None,
            json!({"email": long_email, "password": STRONG}),
        )
        .await;
        assert_eq!(
            (s, b["error"]["param"].as_str()),
            (400, Some("email")),
            "{b}"
        );
        let (s, b, _) = post_json(
            &app,
            "/v1/sessions",
            None,
            json!({"email": "x@example.org", "password": "p".repeat(5000)}),
        )
        .await;
        assert_eq!(
            (s, b["error"]["param"].as_str()),
            (400, Some("password")),
            "{b}"
        );
        for token in ["cbs_forged", "cbs_", "nonsense", "cbk_wrong"] {
            let (status, _) = get_with(&app, "/v1/patients", token).await;
            assert_eq!(status, 401, "{token}");
        }
        let admin = app.as_role("admin");
        for (password, code) in [
            ("short", "password_too_short"),
            ("password1234", "password_common"),
            ("aaaaaaaaaaaaaaaa", "password_weak"),
        ] {
            let r = admin
            .post("/v1/users", &json!({"email": "weak@example.org", "role": "billing_clerk", "password": password}), Some(&new_key()))
            .await
            .unwrap();
            assert_eq!(r.status, 400, "{password}: {}", r.body);
            assert_eq!(r.body["error"]["param"], "password");
            assert!(
                r.body["error"]["code"] == code
                    || r.body["error"]["code"] == "password_weak"
                    || r.body["error"]["code"] == "password_common",
                "{password}: {}",
                r.body
            );
            assert!(!r.body.to_string().contains(password) || password.len() < 6);
        }
        assert_eq!(app.count("users").await, 0);
        // A malformed TOTP code is a 400 naming the parameter.
        let (_, token, _, _) = enrolled_staff(&app, "ops@example.org", "billing_clerk").await;
        let _ = token;
        let (_, s, _) = post_json(
            &app,
            "/v1/sessions",
            None,
            json!({"email": "ops@example.org", "password": STRONG}),
        )
        .await;
        let pending = s["token"].as_str().unwrap().to_owned();
        let (status, body, _) = post_json(
            &app,
            "/v1/sessions/mfa",
            Some(&pending),
            json!({"code": "12ab56"}),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["param"], "code");
        app
    }
);

both_backends!(
    every_response_carries_the_security_headers,
    |app: TestApp| async move {
        for (path, key) in [
            ("/healthz", None),
            ("/v1/patients", Some("billing_manager")),
            ("/v1/nowhere", Some("billing_manager")),
            ("/v1/patients", None),
        ] {
            let mut req = app.admin.http.get(format!("{}{path}", app.base));
            if let Some(k) = key {
                req = req.bearer_auth(&app.keys[k]);
            }
            let r = req.send().await.unwrap();
            let h = r.headers();
            assert!(
                h["strict-transport-security"]
                    .to_str()
                    .unwrap()
                    .contains("max-age="),
                "{path}"
            );
            let csp = h["content-security-policy"].to_str().unwrap();
            assert!(
                csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe-inline"),
                "{path}: {csp}"
            );
            assert_eq!(h["x-content-type-options"], "nosniff");
            assert_eq!(h["referrer-policy"], "no-referrer");
        }
        app
    }
);

both_backends!(
    front_desk_sees_contact_details_not_procedure_codes,
    |app: TestApp| async move {
        let inv = app.open_invoice("usd", 5000).await;
        let desk = app.as_role("front_desk");
        let patient = desk
            .get(&format!(
                "/v1/patients/{}",
                inv["patient"].as_str().unwrap()
            ))
            .await
            .unwrap();
        assert_eq!(patient.status, 200);
        assert_eq!(patient.body["email"], "t@example.org");
        let bill = desk
            .get(&format!("/v1/invoices/{}", inv["id"].as_str().unwrap()))
            .await
            .unwrap();
        assert_eq!(bill.status, 200, "{}", bill.body);
        let line = &bill.body["lines"][0];
        assert!(
            line.get("code").is_none() && line.get("description").is_none(),
            "{line}"
        );
        assert_eq!(line["amount"], 5000);
        // The clerk sees the itemized bill.
        let clerk = app
            .as_role("billing_clerk")
            .get(&format!("/v1/invoices/{}", inv["id"].as_str().unwrap()))
            .await
            .unwrap();
        assert_eq!(clerk.body["lines"][0]["code"], "99213");
        app
    }
);

mod api_rate_limit {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn one_key_past_its_rate_gets_429_and_others_do_not() {
        let app = TestApp::spawn_with(carebill::db::Backend::Sqlite, |c| {
            c.api_requests_per_second = 3
        })
        .await;
        let clerk = app.as_role("billing_clerk");
        let mut statuses = Vec::new();
        for _ in 0..6 {
            statuses.push(clerk.get("/v1/patients").await.unwrap().status);
        }
        assert!(statuses.contains(&429), "{statuses:?}");
        let r = clerk.get_raw("/v1/patients").await.unwrap();
        if r.status().as_u16() == 429 {
            assert!(r.headers().contains_key("retry-after"));
        }
        // Another caller has its own allowance.
        assert_eq!(
            app.as_role("front_desk")
                .get("/v1/patients")
                .await
                .unwrap()
                .status,
            200
        );
        app.finish().await;
    }
}

both_backends!(
    facility_staff_see_only_their_facility,
    |app: TestApp| async move {
        let admin = app.as_role("admin");
        let north = admin
            .create("/v1/facilities", &json!({"name": "North clinic"}))
            .await
            .unwrap();
        let south = admin
            .create("/v1/facilities", &json!({"name": "South clinic"}))
            .await
            .unwrap();
        let mk = |facility: &Value| json!({"name": "Facility Patient", "date_of_birth": "1970-01-01", "facility": facility["id"]});
        let pn = app.admin.create("/v1/patients", &mk(&north)).await.unwrap();
        let ps = app.admin.create("/v1/patients", &mk(&south)).await.unwrap();
        let (user, token, _, _) =
            enrolled_staff(&app, "north.clerk@example.org", "billing_clerk").await;
        let r = admin
            .create(
                &format!("/v1/users/{user}"),
                &json!({"facility": north["id"]}),
            )
            .await
            .unwrap();
        assert_eq!(r["facility"], north["id"]);
        assert_eq!(
            get_with(
                &app,
                &format!("/v1/patients/{}", pn["id"].as_str().unwrap()),
                &token
            )
            .await
            .0,
            200
        );
        assert_eq!(
            get_with(
                &app,
                &format!("/v1/patients/{}", ps["id"].as_str().unwrap()),
                &token
            )
            .await
            .0,
            404
        );
        let (_, list) = get_with(&app, "/v1/patients?limit=100", &token).await;
        let ids: Vec<&str> = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [pn["id"].as_str().unwrap()]);
        // A patient they create lands in their facility; another facility is refused.
        let (status, body, _) = post_json_keyed(
            &app,
            "/v1/patients",
            &token,
            json!({"name": "New Walk-in", "date_of_birth": "1990-05-05"}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let (status, _, _) = post_json_keyed(
            &app,
            "/v1/patients",
            &token,
            json!({"name": "Elsewhere", "date_of_birth": "1990-05-05", "facility": south["id"]}),
        )
        .await;
        assert_eq!(status, 400);
        let (_, list) = get_with(&app, "/v1/patients?limit=100", &token).await;
        assert_eq!(list["data"].as_array().unwrap().len(), 2);
        // Writes on another facility's records are refused the same way (404).
        let south_draft = app
            .draft_invoice_for(ps["id"].as_str().unwrap(), "usd", 1000)
            .await;
        let draft_id = south_draft["id"].as_str().unwrap();
        let (status, _, _) = post_json_keyed(
            &app,
            &format!("/v1/invoices/{draft_id}/finalize"),
            &token,
            json!({}),
        )
        .await;
        assert_eq!(status, 404);
        let (status, _, _) = post_json_keyed(
            &app,
            "/v1/invoices",
            &token,
            json!({"patient": ps["id"], "currency": "usd", "due_date": "2030-01-31",
                   "lines": [{"service_date": "2026-01-15", "code": "99213", "description": "Visit", "quantity": 1, "unit_amount": 100}]}),
        )
        .await;
        assert_eq!(status, 404);
        let (status, _, _) = post_json_keyed(
            &app,
            &format!("/v1/invoices/{draft_id}/adjustments"),
            &token,
            json!({"kind": "discount", "amount": 10, "reason": "x"}),
        )
        .await;
        assert_eq!(status, 404);
        app
    }
);

async fn post_json_keyed(
    app: &TestApp,
    path: &str,
    token: &str,
    body: Value,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let r = app
        .admin
        .http
        .post(format!("{}{path}", app.base))
        .bearer_auth(token)
        .header("Idempotency-Key", new_key())
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, r.json().await.unwrap_or(Value::Null), headers)
}
