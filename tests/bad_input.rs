//! Bad input on every endpoint, family by family, on both backends: each mistake gets a 4xx
//! error object (`type`, `code`, `param`, `request_id`) naming the parameter at fault, echoes
//! nothing of what was sent, writes nothing, and leaves the service serving valid requests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;

use reqwest::header::HeaderValue;
use reqwest::Method;

/// Shaped like a card number. Wherever a test submits it, it must not come back in the answer.
const SECRET: &str = "4242424242424242";
const SECRET_NUMBER: i64 = 4_242_424_242_424_242;
/// Tables no refused request may write to.
const TABLES: [&str; 9] = [
    "patients",
    "invoices",
    "invoice_lines",
    "adjustments",
    "payments",
    "refunds",
    "journal_entries",
    "postings",
    "idempotency_keys",
];
const BODY_LIMIT: usize = 256 * 1024;

/// An HTTP answer with its raw text, to search it for echoed input.
struct Answer {
    status: u16,
    text: String,
    body: Value,
    request_id_header: Option<String>,
    replayed: bool,
}

async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: Option<Vec<u8>>,
    key: Option<HeaderValue>,
) -> Answer {
    let mut request = app
        .admin
        .http
        .request(method, format!("{}{}", app.base, path))
        .bearer_auth(&app.keys["billing_manager"]);
    if let Some(ct) = content_type {
        request = request.header("content-type", ct);
    }
    if let Some(body) = body {
        request = request.body(body);
    }
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.expect("the service answers");
    let status = response.status().as_u16();
    let request_id_header = response
        .headers()
        .get("request-id")
        .map(|v| v.to_str().unwrap().to_owned());
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer {
        status,
        text,
        body,
        request_id_header,
        replayed,
    }
}

fn header(key: &str) -> Option<HeaderValue> {
    Some(HeaderValue::from_str(key).unwrap())
}

/// POSTs raw bytes as `application/json` with a fresh Idempotency-Key.
async fn post_bytes(app: &TestApp, path: &str, bytes: Vec<u8>) -> Answer {
    send(
        app,
        Method::POST,
        path,
        Some("application/json"),
        Some(bytes),
        header(&new_key()),
    )
    .await
}

/// POSTs `body` as JSON with the given key.
async fn post_with_key(app: &TestApp, path: &str, body: &Value, key: Option<&str>) -> Answer {
    let bytes = serde_json::to_vec(body).unwrap();
    send(
        app,
        Method::POST,
        path,
        Some("application/json"),
        Some(bytes),
        key.and_then(header),
    )
    .await
}

/// POSTs `body` as JSON with a fresh key.
async fn post(app: &TestApp, path: &str, body: &Value) -> Answer {
    post_with_key(app, path, body, Some(&new_key())).await
}

async fn get(app: &TestApp, path: &str) -> Answer {
    send(app, Method::GET, path, None, None, None).await
}

/// Asserts `answer` is the error object of an `invalid_request_error` with `status`, `code` and
/// `param`, carries its request id (also in the `Request-Id` header), and does not echo
/// [`SECRET`].
#[track_caller]
fn assert_refused(answer: &Answer, status: u16, code: &str, param: &str) {
    let text = &answer.text;
    assert_eq!(answer.status, status, "status of {text}");
    let error = &answer.body["error"];
    assert!(error.is_object(), "not an error object: {text}");
    assert_eq!(error["type"], "invalid_request_error", "{text}");
    assert_eq!(error["code"], code, "{text}");
    assert_eq!(error["param"], param, "{text}");
    let request_id = error["request_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no request_id: {text}"));
    assert!(request_id.starts_with("req_"), "{text}");
    assert_eq!(
        answer.request_id_header.as_deref(),
        Some(request_id),
        "{text}"
    );
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{text}"
    );
    assert!(
        !text.contains(SECRET),
        "the submitted value is echoed: {text}"
    );
}

async fn counts(app: &TestApp) -> Vec<(&'static str, i64)> {
    let mut out = Vec::new();
    for table in TABLES {
        out.push((table, app.count(table).await));
    }
    out
}

/// `value` with each JSON pointer set to the given value (parents must exist).
fn with(value: &Value, changes: &[(&str, Value)]) -> Value {
    let mut v = value.clone();
    for (pointer, new) in changes {
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        match v.pointer_mut(parent).unwrap() {
            Value::Object(map) => {
                map.insert(key.to_owned(), new.clone());
            }
            Value::Array(items) => items[key.parse::<usize>().unwrap()] = new.clone(),
            other => panic!("cannot set {pointer} in {other}"),
        }
    }
    v
}

/// `value` without the member at `pointer`.
fn without(value: &Value, pointer: &str) -> Value {
    let mut v = value.clone();
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    v.pointer_mut(parent)
        .unwrap()
        .as_object_mut()
        .unwrap()
        .remove(key)
        .unwrap();
    v
}

fn line() -> Value {
    json!({"service_date": "2026-01-15", "code": "99213", "description": "Office visit", "quantity": 1, "unit_amount": 15000})
}

/// What the families need: a patient with an open USD invoice of 50000 and a succeeded payment
/// of 1000 on it.
struct Fixtures {
    patient: String,
    invoice: String,
    payment: String,
}

impl Fixtures {
    async fn make(app: &TestApp) -> Fixtures {
        let invoice = app.open_invoice("usd", 50_000).await;
        let payment = app.pay(&invoice, 1_000).await;
        Fixtures {
            patient: invoice["patient"].as_str().unwrap().to_owned(),
            invoice: id_of(&invoice).unwrap(),
            payment: id_of(&payment).unwrap(),
        }
    }

    fn patient_body(&self) -> Value {
        json!({"name": "Ada Lovelace", "date_of_birth": "1980-02-29", "address": {"city": "Boston", "country": "us"}})
    }

    fn invoice_body(&self) -> Value {
        json!({"patient": self.patient, "currency": "usd", "due_date": "2030-01-31", "lines": [line(), line()]})
    }

    fn adjustment_body(&self) -> Value {
        json!({"kind": "discount", "amount": 100, "reason": "Prompt-pay discount"})
    }

    fn payment_body(&self) -> Value {
        json!({"invoice": self.invoice, "amount": 100, "currency": "usd", "payment_method": "pm_card_visa"})
    }

    fn refund_body(&self) -> Value {
        json!({"payment": self.payment, "amount": 100, "reason": "duplicate"})
    }

    /// A valid body for every POST endpoint that takes a JSON document.
    fn valid_posts(&self) -> Vec<(String, Value)> {
        vec![
            ("/v1/patients".to_owned(), self.patient_body()),
            (
                format!("/v1/patients/{}", self.patient),
                json!({"phone": "+1 555 0100"}),
            ),
            ("/v1/invoices".to_owned(), self.invoice_body()),
            (
                format!("/v1/invoices/{}/adjustments", self.invoice),
                self.adjustment_body(),
            ),
            ("/v1/payments".to_owned(), self.payment_body()),
            ("/v1/refunds".to_owned(), self.refund_body()),
        ]
    }
}

/// Proves the service still serves: a valid patient, payment and list all succeed.
async fn assert_still_serving(app: &TestApp, fx: &Fixtures) {
    let patients = app.count("patients").await;
    let r = post(app, "/v1/patients", &fx.patient_body()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(app.count("patients").await, patients + 1);
    let r = post(app, "/v1/payments", &fx.payment_body()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "succeeded", "{}", r.text);
    assert_eq!(get(app, "/v1/invoices?limit=100").await.status, 200);
    app.assert_ledger_sound().await;
}

both_backends!(
    malformed_json_and_wrong_content_type_are_refused,
    |app: TestApp| async move {
        // Goal: a broken JSON document, a valid one followed by garbage, or a body that is not declared as JSON is refused on every POST, naming the body or Content-Type, and nothing runs.
        let fx = Fixtures::make(&app).await;
        let draft = app.draft_invoice_for(&fx.patient, "usd", 700).await;
        let draft = id_of(&draft).unwrap();
        let before = counts(&app).await;
        for (path, valid) in fx.valid_posts() {
            let doc = serde_json::to_string(&valid).unwrap();
            // Each breaks before any complete unknown key could be reported instead.
            let broken: Vec<Vec<u8>> = vec![
                doc.as_bytes()[..doc.len() - 1].to_vec(),
                doc.as_bytes()[..doc.len() / 2].to_vec(),
                format!("{}, {SECRET}}}", &doc[..doc.len() - 1]).into_bytes(),
                format!("{}, \"{SECRET}", &doc[..doc.len() - 1]).into_bytes(),
                format!("{{\"{SECRET}").into_bytes(),
                format!("{{'{SECRET}': 1}}").into_bytes(),
                format!("{{{SECRET}: 1}}").into_bytes(),
                format!("{{,\"{SECRET}\": 1}}").into_bytes(),
                b"{\"\xff\xfe\": 1}".to_vec(),
                b"\xef\xbb\xbf{}".to_vec(),
                Vec::new(),
                b"   ".to_vec(),
            ];
            for bytes in broken {
                assert_refused(
                    &post_bytes(&app, &path, bytes).await,
                    400,
                    "invalid_json",
                    "body",
                );
            }
            // A valid document followed by anything else is not executed.
            for trailing in [
                format!(" {SECRET}"),
                doc.clone(),
                "}".to_owned(),
                " x".to_owned(),
            ] {
                let r = post_bytes(&app, &path, format!("{doc}{trailing}").into_bytes()).await;
                assert_refused(&r, 400, "invalid_json", "body");
            }
            // The right document under the wrong Content-Type, or none.
            for content_type in [
                Some("text/plain"),
                Some("application/x-www-form-urlencoded"),
                Some("application/jsonx"),
                None,
            ] {
                let r = send(
                    &app,
                    Method::POST,
                    &path,
                    content_type,
                    Some(doc.clone().into_bytes()),
                    header(&new_key()),
                )
                .await;
                assert_refused(&r, 415, "invalid_content_type", "Content-Type");
            }
        }
        // Finalize and void take an optional empty body: anything but nothing or `{}` is refused.
        for action in ["finalize", "void"] {
            let path = format!("/v1/invoices/{draft}/{action}");
            assert_refused(
                &post_bytes(&app, &path, format!("{{\"{SECRET}").into_bytes()).await,
                400,
                "invalid_json",
                "body",
            );
            assert_refused(
                &post_bytes(&app, &path, format!("{{}} {SECRET}").into_bytes()).await,
                400,
                "invalid_json",
                "body",
            );
            assert_refused(
                &post_bytes(&app, &path, b"not json".to_vec()).await,
                400,
                "invalid_json",
                "body",
            );
            assert_refused(
                &post_bytes(&app, &path, format!("{{\"force\": {SECRET}}}").into_bytes()).await,
                400,
                "parameter_unknown",
                "force",
            );
        }
        assert_eq!(counts(&app).await, before, "a refused request wrote rows");
        // The same endpoints still work.
        let r = send(
            &app,
            Method::POST,
            &format!("/v1/invoices/{draft}/finalize"),
            None,
            None,
            None,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["status"], "open");
        let r = send(
            &app,
            Method::POST,
            "/v1/patients",
            Some("application/json; charset=utf-8"),
            Some(serde_json::to_vec(&fx.patient_body()).unwrap()),
            None,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_still_serving(&app, &fx).await;
        app
    }
);

both_backends!(
    missing_and_unknown_fields_are_named_by_path,
    |app: TestApp| async move {
        // Goal: a missing required field or an unknown one is named by its full path (`lines[1].unit_amount`), an unknown key that is not a plain name is never echoed, and nothing is written.
        let fx = Fixtures::make(&app).await;
        let before = counts(&app).await;
        let adjustments = format!("/v1/invoices/{}/adjustments", fx.invoice);
        #[rustfmt::skip]
        let missing: Vec<(&str, Value, &str, &str)> = vec![
            ("/v1/patients", fx.patient_body(), "/name", "name"),
            ("/v1/patients", fx.patient_body(), "/date_of_birth", "date_of_birth"),
            ("/v1/invoices", fx.invoice_body(), "/patient", "patient"),
            ("/v1/invoices", fx.invoice_body(), "/currency", "currency"),
            ("/v1/invoices", fx.invoice_body(), "/due_date", "due_date"),
            ("/v1/invoices", fx.invoice_body(), "/lines", "lines"),
            ("/v1/invoices", fx.invoice_body(), "/lines/0/service_date", "lines[0].service_date"),
            ("/v1/invoices", fx.invoice_body(), "/lines/0/code", "lines[0].code"),
            ("/v1/invoices", fx.invoice_body(), "/lines/0/description", "lines[0].description"),
            ("/v1/invoices", fx.invoice_body(), "/lines/1/quantity", "lines[1].quantity"),
            ("/v1/invoices", fx.invoice_body(), "/lines/1/unit_amount", "lines[1].unit_amount"),
            (&adjustments, fx.adjustment_body(), "/kind", "kind"),
            (&adjustments, fx.adjustment_body(), "/amount", "amount"),
            (&adjustments, fx.adjustment_body(), "/reason", "reason"),
            ("/v1/payments", fx.payment_body(), "/amount", "amount"),
            ("/v1/payments", fx.payment_body(), "/currency", "currency"),
            ("/v1/payments", fx.payment_body(), "/payment_method", "payment_method"),
            ("/v1/refunds", fx.refund_body(), "/payment", "payment"),
            ("/v1/refunds", fx.refund_body(), "/reason", "reason"),
        ];
        for (path, valid, pointer, param) in missing {
            let r = post(&app, path, &without(&valid, pointer)).await;
            assert_refused(&r, 400, "parameter_missing", param);
        }
        // A payment needs an invoice or a patient.
        let r = post(
            &app,
            "/v1/payments",
            &without(&fx.payment_body(), "/invoice"),
        )
        .await;
        assert_refused(&r, 400, "parameter_missing", "invoice");
        // An explicit null is a missing value for an optional field, a wrong type for a required one.
        let r = post(
            &app,
            "/v1/patients",
            &with(&fx.patient_body(), &[("/name", Value::Null)]),
        )
        .await;
        assert_refused(&r, 400, "parameter_invalid_type", "name");

        let update = format!("/v1/patients/{}", fx.patient);
        #[rustfmt::skip]
        let unknown: Vec<(&str, Value, &str, &str, &str)> = vec![
            ("/v1/patients", fx.patient_body(), "", "nickname", "nickname"),
            ("/v1/patients", fx.patient_body(), "/address", "planet", "address.planet"),
            // Name and date of birth are set at creation only.
            (&update, json!({"email": "a@example.org"}), "", "name", "name"),
            ("/v1/invoices", fx.invoice_body(), "/lines/1", "colour", "lines[1].colour"),
            ("/v1/invoices", fx.invoice_body(), "", "total", "total"),
            (&adjustments, fx.adjustment_body(), "", "currency", "currency"),
            ("/v1/payments", fx.payment_body(), "", "card_number", "card_number"),
            ("/v1/refunds", fx.refund_body(), "", "refund_all", "refund_all"),
            // A key that is not a plain name is not repeated back: the object holding it is named.
            ("/v1/payments", fx.payment_body(), "", "card 4242424242424242", "body"),
            ("/v1/invoices", fx.invoice_body(), "/lines/0", "pan.4242424242424242", "lines[0]"),
            ("/v1/patients", fx.patient_body(), "/address", "4242424242424242 ", "address"),
        ];
        for (path, valid, parent, key, param) in unknown {
            let r = post(
                &app,
                path,
                &with(&valid, &[(&format!("{parent}/{key}"), json!(SECRET))]),
            )
            .await;
            assert_refused(&r, 400, "parameter_unknown", param);
        }
        // The same field twice is named once, without either value.
        let r = post_bytes(
            &app,
            "/v1/patients",
            format!(
                "{{\"name\": \"Ada\", \"name\": \"{SECRET}\", \"date_of_birth\": \"1980-02-29\"}}"
            )
            .into_bytes(),
        )
        .await;
        assert_refused(&r, 400, "parameter_invalid", "name");
        let r = post_bytes(&app, "/v1/payments", format!("{{\"invoice\": \"{}\", \"amount\": 100, \"amount\": {SECRET}, \"currency\": \"usd\", \"payment_method\": \"pm_card_visa\"}}", fx.invoice).into_bytes()).await;
        assert_refused(&r, 400, "parameter_invalid", "amount");
        assert_eq!(counts(&app).await, before, "a refused request wrote rows");
        assert_still_serving(&app, &fx).await;
        app
    }
);

both_backends!(
    wrong_types_are_named_without_echoing_the_value,
    |app: TestApp| async move {
        // Goal: a string, float, null, object or array where another type belongs is refused as parameter_invalid_type (or parameter_invalid for an out-of-range integer or unknown enum value) naming the field, and the value never comes back.
        let fx = Fixtures::make(&app).await;
        let before = counts(&app).await;
        let adjustments = format!("/v1/invoices/{}/adjustments", fx.invoice);
        #[rustfmt::skip]
        let cases: Vec<(&str, Value, &str, Value, &str, &str)> = vec![
            ("/v1/payments", fx.payment_body(), "/amount", json!(SECRET), "parameter_invalid_type", "amount"),
            ("/v1/payments", fx.payment_body(), "/amount", json!(12.5), "parameter_invalid_type", "amount"),
            ("/v1/payments", fx.payment_body(), "/amount", json!(100.0), "parameter_invalid_type", "amount"),
            ("/v1/payments", fx.payment_body(), "/amount", json!(4.242424242424242e15), "parameter_invalid_type", "amount"),
            ("/v1/payments", fx.payment_body(), "/amount", json!(1e300), "parameter_invalid_type", "amount"),
            ("/v1/payments", fx.payment_body(), "/amount", json!(u64::MAX), "parameter_invalid", "amount"),
            // serde_json appends " at line L column C" to its messages; a value ending the same way
            // must not survive the stripping of that suffix.
            ("/v1/payments", fx.payment_body(), "/amount", json!(format!("{SECRET} at line 1 column 2")), "parameter_invalid_type", "amount"),
            ("/v1/payments", fx.payment_body(), "/amount", json!(format!("x, expected {SECRET}")), "parameter_invalid_type", "amount"),
            ("/v1/payments", fx.payment_body(), "/amount", json!({"value": SECRET_NUMBER}), "parameter_invalid_type", "amount"),
            ("/v1/payments", fx.payment_body(), "/currency", json!(840), "parameter_invalid_type", "currency"),
            ("/v1/payments", fx.payment_body(), "/invoice", json!({"id": fx.invoice}), "parameter_invalid_type", "invoice"),
            ("/v1/payments", fx.payment_body(), "/payment_method", json!(SECRET_NUMBER), "parameter_invalid_type", "payment_method"),
            ("/v1/patients", fx.patient_body(), "/name", json!({"given": SECRET}), "parameter_invalid_type", "name"),
            ("/v1/patients", fx.patient_body(), "/name", json!([SECRET]), "parameter_invalid_type", "name"),
            ("/v1/patients", fx.patient_body(), "/name", json!(SECRET_NUMBER), "parameter_invalid_type", "name"),
            ("/v1/patients", fx.patient_body(), "/date_of_birth", json!(19800229), "parameter_invalid_type", "date_of_birth"),
            ("/v1/patients", fx.patient_body(), "/address", json!(SECRET), "parameter_invalid_type", "address"),
            ("/v1/patients", fx.patient_body(), "/address/city", json!(true), "parameter_invalid_type", "address.city"),
            ("/v1/invoices", fx.invoice_body(), "/lines", json!({"0": line()}), "parameter_invalid_type", "lines"),
            ("/v1/invoices", fx.invoice_body(), "/lines/1", json!(SECRET), "parameter_invalid_type", "lines[1]"),
            ("/v1/invoices", fx.invoice_body(), "/lines/0/quantity", json!(true), "parameter_invalid_type", "lines[0].quantity"),
            ("/v1/invoices", fx.invoice_body(), "/lines/0/quantity", json!(1.5), "parameter_invalid_type", "lines[0].quantity"),
            ("/v1/invoices", fx.invoice_body(), "/lines/1/unit_amount", json!("150.00"), "parameter_invalid_type", "lines[1].unit_amount"),
            ("/v1/invoices", fx.invoice_body(), "/lines/1/unit_amount", json!(12.5), "parameter_invalid_type", "lines[1].unit_amount"),
            ("/v1/invoices", fx.invoice_body(), "/lines/0/code", json!(99213), "parameter_invalid_type", "lines[0].code"),
            (&adjustments, fx.adjustment_body(), "/kind", json!(SECRET), "parameter_invalid", "kind"),
            (&adjustments, fx.adjustment_body(), "/kind", json!("Discount"), "parameter_invalid", "kind"),
            (&adjustments, fx.adjustment_body(), "/amount", json!("1.00"), "parameter_invalid_type", "amount"),
            ("/v1/refunds", fx.refund_body(), "/reason", json!(format!("expected {SECRET}")), "parameter_invalid", "reason"),
            ("/v1/refunds", fx.refund_body(), "/amount", json!("all"), "parameter_invalid_type", "amount"),
            ("/v1/refunds", fx.refund_body(), "/note", json!(SECRET_NUMBER), "parameter_invalid_type", "note"),
        ];
        for (path, valid, pointer, value, code, param) in cases {
            let r = post(&app, path, &with(&valid, &[(pointer, value)])).await;
            assert_refused(&r, 400, code, param);
        }
        // A document that is not an object is refused as a whole.
        for doc in [
            json!([SECRET]),
            json!(SECRET),
            Value::Null,
            json!(SECRET_NUMBER),
        ] {
            let r = post(&app, "/v1/patients", &doc).await;
            let code = if doc.is_array() {
                "parameter_invalid"
            } else {
                "parameter_invalid_type"
            };
            assert_refused(&r, 400, code, "body");
        }
        assert_eq!(counts(&app).await, before, "a refused request wrote rows");
        assert_still_serving(&app, &fx).await;
        app
    }
);

both_backends!(
    amounts_out_of_range_and_overflowing_totals_are_refused,
    |app: TestApp| async move {
        // Goal: negative, zero and too-large amounts, quantity x unit products beyond i64 or the amount cap, and invoice totals beyond the cap are refused naming the line field (or `lines` for the total), never a 500; the cap itself is accepted.
        let fx = Fixtures::make(&app).await;
        let before = counts(&app).await;
        let max = 999_999_999_999_i64;
        let adjustments = format!("/v1/invoices/{}/adjustments", fx.invoice);
        let amounts: Vec<(i64, &str)> = vec![
            (-1, "amount_invalid"),
            (0, "amount_invalid"),
            (i64::MIN, "amount_invalid"),
            (max + 1, "amount_too_large"),
            (SECRET_NUMBER, "amount_too_large"),
            (i64::MAX, "amount_too_large"),
        ];
        for (amount, code) in &amounts {
            let a = json!(amount);
            assert_refused(
                &post(
                    &app,
                    "/v1/payments",
                    &with(&fx.payment_body(), &[("/amount", a.clone())]),
                )
                .await,
                400,
                code,
                "amount",
            );
            let on_account = json!({"patient": fx.patient, "amount": a, "currency": "usd", "payment_method": "pm_card_visa"});
            assert_refused(
                &post(&app, "/v1/payments", &on_account).await,
                400,
                code,
                "amount",
            );
            assert_refused(
                &post(
                    &app,
                    "/v1/refunds",
                    &with(&fx.refund_body(), &[("/amount", a.clone())]),
                )
                .await,
                400,
                code,
                "amount",
            );
            assert_refused(
                &post(
                    &app,
                    &adjustments,
                    &with(&fx.adjustment_body(), &[("/amount", a.clone())]),
                )
                .await,
                400,
                code,
                "amount",
            );
            let r = post(
                &app,
                "/v1/invoices",
                &with(&fx.invoice_body(), &[("/lines/1/unit_amount", a.clone())]),
            )
            .await;
            assert_refused(&r, 400, code, "lines[1].unit_amount");
        }
        // More than the payment's refundable 1000, more than the invoice's 49000 due.
        let r = post(
            &app,
            "/v1/refunds",
            &with(&fx.refund_body(), &[("/amount", json!(1_001))]),
        )
        .await;
        assert_refused(&r, 400, "amount_exceeds_refundable", "amount");
        let r = post(
            &app,
            &adjustments,
            &with(&fx.adjustment_body(), &[("/amount", json!(49_001))]),
        )
        .await;
        assert_refused(&r, 400, "amount_exceeds_amount_due", "amount");

        let base = fx.invoice_body();
        #[rustfmt::skip]
        let lines = vec![
            (vec![("/lines/0/quantity", json!(0))], "parameter_invalid", "lines[0].quantity"),
            (vec![("/lines/0/quantity", json!(-3))], "parameter_invalid", "lines[0].quantity"),
            (vec![("/lines/0/quantity", json!(10_001))], "parameter_invalid", "lines[0].quantity"),
            // quantity x unit beyond i64: refused on the range of each factor before multiplying.
            (vec![("/lines/0/quantity", json!(1_i64 << 62)), ("/lines/0/unit_amount", json!(4))], "parameter_invalid", "lines[0].quantity"),
            (vec![("/lines/0/quantity", json!(2)), ("/lines/0/unit_amount", json!(i64::MAX))], "amount_too_large", "lines[0].unit_amount"),
            (vec![("/lines/0/quantity", json!(SECRET_NUMBER)), ("/lines/0/unit_amount", json!(SECRET_NUMBER))], "parameter_invalid", "lines[0].quantity"),
            // Each factor in range, the line beyond the cap.
            (vec![("/lines/1/quantity", json!(10_000)), ("/lines/1/unit_amount", json!(max))], "amount_too_large", "lines[1].quantity"),
            (vec![("/lines/0/quantity", json!(2)), ("/lines/0/unit_amount", json!(max / 2 + 1))], "amount_too_large", "lines[0].quantity"),
            // Each line within the cap, the invoice total beyond it.
            (vec![("/lines/0/unit_amount", json!(max)), ("/lines/1/unit_amount", json!(1))], "amount_too_large", "lines"),
            (vec![("/lines/0/unit_amount", json!(600_000_000_000_i64)), ("/lines/1/unit_amount", json!(600_000_000_000_i64))], "amount_too_large", "lines"),
            (vec![("/lines", json!([]))], "parameter_invalid", "lines"),
            (vec![("/lines", Value::Array(vec![line(); 251]))], "parameter_invalid", "lines"),
        ];
        for (changes, code, param) in lines {
            assert_refused(
                &post(&app, "/v1/invoices", &with(&base, &changes)).await,
                400,
                code,
                param,
            );
        }
        // 250 lines whose sum passes the cap: named as the total, not as a line.
        let mut many = vec![line(); 250];
        for l in &mut many {
            l["unit_amount"] = json!(max / 200);
        }
        assert_refused(
            &post(
                &app,
                "/v1/invoices",
                &with(&base, &[("/lines", Value::Array(many))]),
            )
            .await,
            400,
            "amount_too_large",
            "lines",
        );
        assert_eq!(counts(&app).await, before, "a refused request wrote rows");

        // The cap itself is a valid invoice total.
        let r = post(
            &app,
            "/v1/invoices",
            &with(
                &base,
                &[(
                    "/lines",
                    json!([with(&line(), &[("/unit_amount", json!(max))])]),
                )],
            ),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["total"], max);
        let r = post(
            &app,
            "/v1/invoices",
            &with(
                &base,
                &[
                    ("/lines/0/quantity", json!(10_000)),
                    ("/lines/0/unit_amount", json!(1_000)),
                ],
            ),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["total"], 10_000_000 + 15_000);
        assert_still_serving(&app, &fx).await;
        app
    }
);

both_backends!(
    currencies_are_lowercase_supported_and_match_the_invoice,
    |app: TestApp| async move {
        // Goal: unknown and uppercase currency codes are refused as currency_invalid wherever a currency is accepted, a payment in another currency than its invoice is currency_mismatch, and none of it writes anything or holds the idempotency key.
        let fx = Fixtures::make(&app).await;
        let before = counts(&app).await;
        for currency in ["xyz", "USD", "Usd", "", " usd", "usd ", SECRET, "us"] {
            let c = json!(currency);
            assert_refused(
                &post(
                    &app,
                    "/v1/invoices",
                    &with(&fx.invoice_body(), &[("/currency", c.clone())]),
                )
                .await,
                400,
                "currency_invalid",
                "currency",
            );
            assert_refused(
                &post(
                    &app,
                    "/v1/payments",
                    &with(&fx.payment_body(), &[("/currency", c.clone())]),
                )
                .await,
                400,
                "currency_invalid",
                "currency",
            );
            let on_account = json!({"patient": fx.patient, "amount": 100, "currency": c, "payment_method": "pm_card_visa"});
            assert_refused(
                &post(&app, "/v1/payments", &on_account).await,
                400,
                "currency_invalid",
                "currency",
            );
            let q = currency.replace(' ', "%20");
            assert_refused(
                &get(
                    &app,
                    &format!("/v1/patients/{}/statement?currency={q}", fx.patient),
                )
                .await,
                400,
                "currency_invalid",
                "currency",
            );
            assert_refused(
                &get(&app, &format!("/v1/ledger/accounts?currency={q}")).await,
                400,
                "currency_invalid",
                "currency",
            );
        }
        // A supported currency that is not the invoice's, with an Idempotency-Key.
        let key = new_key();
        for currency in ["eur", "jpy"] {
            let r = post_with_key(
                &app,
                "/v1/payments",
                &with(&fx.payment_body(), &[("/currency", json!(currency))]),
                Some(&key),
            )
            .await;
            assert_refused(&r, 400, "currency_mismatch", "currency");
        }
        assert_eq!(counts(&app).await, before, "a refused request wrote rows");
        // The key was released: the corrected payment under the same key goes through.
        let r = post_with_key(&app, "/v1/payments", &fx.payment_body(), Some(&key)).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(!r.replayed);
        assert_eq!(r.body["currency"], "usd");
        assert_still_serving(&app, &fx).await;
        app
    }
);

both_backends!(
    ids_of_the_wrong_kind_or_unknown_are_named,
    |app: TestApp| async move {
        // Goal: an id with another resource's prefix (in a body, a path or a query) is a 400 naming it, a well-formed id of nothing is a 404 resource_missing naming it, and neither writes anything.
        let fx = Fixtures::make(&app).await;
        let other_patient = app.patient().await;
        let before = counts(&app).await;
        let nope = "ZZZZZZZZZZZZZZZZZZZZZZZZ";
        let long = "a".repeat(80);
        // Body ids of the wrong kind, malformed, or over-long.
        #[rustfmt::skip]
        let wrong: Vec<(&str, Value, &str, Value)> = vec![
            ("/v1/refunds", fx.refund_body(), "payment", json!(fx.invoice)),
            ("/v1/refunds", fx.refund_body(), "payment", json!(SECRET)),
            ("/v1/refunds", fx.refund_body(), "payment", json!(format!("pay_{long}"))),
            ("/v1/refunds", fx.refund_body(), "payment", json!("pay_")),
            ("/v1/refunds", fx.refund_body(), "payment", json!(format!("pay_{SECRET}'--"))),
            ("/v1/payments", fx.payment_body(), "invoice", json!(fx.patient)),
            ("/v1/payments", fx.payment_body(), "invoice", json!(fx.payment)),
            ("/v1/payments", with(&fx.payment_body(), &[("/patient", json!(fx.invoice))]), "patient", json!(fx.invoice)),
            ("/v1/invoices", fx.invoice_body(), "patient", json!(fx.invoice)),
            ("/v1/invoices", fx.invoice_body(), "patient", json!(format!("pat {SECRET}"))),
        ];
        for (path, valid, field, id) in wrong {
            let r = post(&app, path, &with(&valid, &[(&format!("/{field}"), id)])).await;
            assert_refused(&r, 400, "parameter_invalid", field);
        }
        // Well-formed ids of nothing.
        #[rustfmt::skip]
        let missing: Vec<(&str, Value, &str)> = vec![
            ("/v1/refunds", with(&fx.refund_body(), &[("/payment", json!(format!("pay_{nope}")))]), "payment"),
            ("/v1/payments", with(&fx.payment_body(), &[("/invoice", json!(format!("inv_{nope}")))]), "invoice"),
            ("/v1/payments", json!({"patient": format!("pat_{nope}"), "amount": 100, "currency": "usd", "payment_method": "pm_card_visa"}), "patient"),
            ("/v1/invoices", with(&fx.invoice_body(), &[("/patient", json!(format!("pat_{SECRET}")))]), "patient"),
        ];
        for (path, body, param) in missing {
            assert_refused(
                &post(&app, path, &body).await,
                404,
                "resource_missing",
                param,
            );
        }
        // An invoice paid for another patient.
        let r = post(
            &app,
            "/v1/payments",
            &with(&fx.payment_body(), &[("/patient", json!(other_patient))]),
        )
        .await;
        assert_refused(&r, 400, "patient_mismatch", "patient");

        // Path ids: the wrong kind is a 400, an unknown one a 404, both naming `id`.
        let gets = [
            ("/v1/patients/{}", "pat_"),
            ("/v1/patients/{}/statement", "pat_"),
            ("/v1/invoices/{}", "inv_"),
            ("/v1/invoices/{}/adjustments", "inv_"),
            ("/v1/payments/{}", "pay_"),
            ("/v1/refunds/{}", "re_"),
            ("/v1/ledger/entries/{}", "je_"),
            ("/v1/ledger/accounts/{}", "acct_"),
        ];
        for (template, prefix) in gets {
            let wrong_kind = if prefix == "inv_" {
                fx.patient.clone()
            } else {
                fx.invoice.clone()
            };
            for bad in [
                wrong_kind,
                SECRET.to_owned(),
                format!("{prefix}{long}"),
                format!("{prefix}%FF{SECRET}"),
                format!("{prefix}%00"),
            ] {
                let r = get(&app, &template.replace("{}", &bad)).await;
                assert_refused(&r, 400, "parameter_invalid", "id");
            }
            let r = get(&app, &template.replace("{}", &format!("{prefix}{nope}"))).await;
            assert_refused(&r, 404, "resource_missing", "id");
        }
        #[rustfmt::skip]
        let posts: Vec<(&str, Value, &str)> = vec![
            ("/v1/patients/{}", json!({"phone": "+1 555 0100"}), "pat_"),
            ("/v1/invoices/{}/finalize", json!({}), "inv_"),
            ("/v1/invoices/{}/void", json!({}), "inv_"),
            ("/v1/invoices/{}/adjustments", fx.adjustment_body(), "inv_"),
        ];
        for (template, body, prefix) in posts {
            let wrong_kind = if prefix == "inv_" {
                fx.patient.clone()
            } else {
                fx.invoice.clone()
            };
            for bad in [wrong_kind, SECRET.to_owned(), format!("{prefix}%FF")] {
                assert_refused(
                    &post(&app, &template.replace("{}", &bad), &body).await,
                    400,
                    "parameter_invalid",
                    "id",
                );
            }
            let r = post(
                &app,
                &template.replace("{}", &format!("{prefix}{nope}")),
                &body,
            )
            .await;
            assert_refused(&r, 404, "resource_missing", "id");
        }
        // Query ids.
        #[rustfmt::skip]
        let queries = [
            ("/v1/invoices?patient={}", "patient", fx.invoice.clone()),
            ("/v1/payments?invoice={}", "invoice", fx.patient.clone()),
            ("/v1/payments?patient={}", "patient", fx.payment.clone()),
            ("/v1/refunds?payment={}", "payment", fx.invoice.clone()),
            ("/v1/ledger/accounts?patient={}", "patient", fx.invoice.clone()),
            ("/v1/ledger/entries?account={}", "account", fx.patient.clone()),
            ("/v1/patients?starting_after={}", "starting_after", fx.invoice.clone()),
            ("/v1/invoices?starting_after={}", "starting_after", SECRET.to_owned()),
            ("/v1/payments?starting_after={}", "starting_after", fx.invoice.clone()),
            ("/v1/refunds?starting_after={}", "starting_after", fx.payment.clone()),
            ("/v1/ledger/entries?starting_after={}", "starting_after", fx.invoice.clone()),
        ];
        for (template, param, bad) in queries {
            assert_refused(
                &get(&app, &template.replace("{}", &bad)).await,
                400,
                "parameter_invalid",
                param,
            );
        }
        for (path, prefix) in [
            ("/v1/patients", "pat_"),
            ("/v1/invoices", "inv_"),
            ("/v1/payments", "pay_"),
            ("/v1/refunds", "re_"),
            ("/v1/ledger/entries", "je_"),
        ] {
            let r = get(&app, &format!("{path}?starting_after={prefix}{nope}")).await;
            assert_refused(&r, 404, "resource_missing", "starting_after");
        }
        assert_eq!(counts(&app).await, before, "a refused request wrote rows");
        // The real ids work.
        for path in [
            format!("/v1/patients/{}", fx.patient),
            format!("/v1/invoices/{}", fx.invoice),
            format!("/v1/payments/{}", fx.payment),
        ] {
            assert_eq!(get(&app, &path).await.status, 200, "{path}");
        }
        assert_still_serving(&app, &fx).await;
        app
    }
);

both_backends!(
    overlong_strings_and_control_characters_are_refused,
    |app: TestApp| async move {
        // Goal: text over its length limit (counted in characters), blank text and text with control characters (NUL included) are refused naming the field, without echoing it; text at the limit is accepted.
        let fx = Fixtures::make(&app).await;
        let before = counts(&app).await;
        let update = format!("/v1/patients/{}", fx.patient);
        let adjustments = format!("/v1/invoices/{}/adjustments", fx.invoice);
        let secret_text = |chars: usize| SECRET.repeat(chars / SECRET.len() + 1);
        #[rustfmt::skip]
        let cases: Vec<(&str, Value, &str, String, &str, &str)> = vec![
            ("/v1/patients", fx.patient_body(), "/name", secret_text(200), "parameter_too_long", "name"),
            ("/v1/patients", fx.patient_body(), "/name", "é".repeat(201), "parameter_too_long", "name"),
            ("/v1/patients", fx.patient_body(), "/name", format!("Ada {SECRET}\u{7}"), "parameter_invalid", "name"),
            ("/v1/patients", fx.patient_body(), "/name", format!("Ada\u{0}{SECRET}"), "parameter_invalid", "name"),
            ("/v1/patients", fx.patient_body(), "/name", format!("Ada\u{1b}[31m{SECRET}"), "parameter_invalid", "name"),
            ("/v1/patients", fx.patient_body(), "/name", "Ada\u{85}Lovelace".to_owned(), "parameter_invalid", "name"),
            ("/v1/patients", fx.patient_body(), "/name", " \t\n ".to_owned(), "parameter_invalid", "name"),
            ("/v1/patients", fx.patient_body(), "/mrn", secret_text(64), "parameter_too_long", "mrn"),
            ("/v1/patients", fx.patient_body(), "/email", format!("{SECRET}\u{0}@example.org"), "parameter_invalid", "email"),
            ("/v1/patients", fx.patient_body(), "/email", SECRET.to_owned(), "parameter_invalid", "email"),
            ("/v1/patients", fx.patient_body(), "/phone", format!("{SECRET}x"), "parameter_invalid", "phone"),
            ("/v1/patients", fx.patient_body(), "/address/city", format!("Boston\r{SECRET}"), "parameter_invalid", "address.city"),
            ("/v1/patients", fx.patient_body(), "/address/country", SECRET.to_owned(), "parameter_invalid", "address.country"),
            (&update, json!({}), "/email", secret_text(254), "parameter_too_long", "email"),
            (&update, json!({}), "/phone", format!("+1\u{0}{SECRET}"), "parameter_invalid", "phone"),
            (&update, json!({"address": {}}), "/address/line1", secret_text(200), "parameter_too_long", "address.line1"),
            ("/v1/invoices", fx.invoice_body(), "/lines/1/description", secret_text(500), "parameter_too_long", "lines[1].description"),
            ("/v1/invoices", fx.invoice_body(), "/lines/0/description", "ü".repeat(501), "parameter_too_long", "lines[0].description"),
            ("/v1/invoices", fx.invoice_body(), "/lines/0/description", format!("Visit\u{0}{SECRET}"), "parameter_invalid", "lines[0].description"),
            ("/v1/invoices", fx.invoice_body(), "/lines/0/code", format!("{SECRET}{SECRET}"), "parameter_invalid", "lines[0].code"),
            ("/v1/invoices", fx.invoice_body(), "/lines/0/code", format!("99\u{0}{SECRET}"), "parameter_invalid", "lines[0].code"),
            (&adjustments, fx.adjustment_body(), "/reason", secret_text(500), "parameter_too_long", "reason"),
            (&adjustments, fx.adjustment_body(), "/reason", format!("Allowance\u{7f}{SECRET}"), "parameter_invalid", "reason"),
            ("/v1/refunds", fx.refund_body(), "/note", secret_text(500), "parameter_too_long", "note"),
            ("/v1/refunds", fx.refund_body(), "/note", format!("Asked\u{0}{SECRET}"), "parameter_invalid", "note"),
            ("/v1/payments", fx.payment_body(), "/payment_method", SECRET.to_owned(), "payment_method_invalid", "payment_method"),
            ("/v1/payments", fx.payment_body(), "/payment_method", format!("pm_{SECRET}\u{0}"), "payment_method_invalid", "payment_method"),
            ("/v1/payments", fx.payment_body(), "/payment_method", format!("tok_{}", secret_text(100)), "payment_method_invalid", "payment_method"),
        ];
        for (path, valid, pointer, text, code, param) in cases {
            let r = post(&app, path, &with(&valid, &[(pointer, json!(text))])).await;
            assert_refused(&r, 400, code, param);
        }
        assert_eq!(counts(&app).await, before, "a refused request wrote rows");
        // At the limits, counted in characters, the same fields are accepted.
        let name = "é".repeat(200);
        let r = post(
            &app,
            "/v1/patients",
            &with(&fx.patient_body(), &[("/name", json!(name))]),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["name"], name);
        let description = "ü".repeat(500);
        let r = post(
            &app,
            "/v1/invoices",
            &with(
                &fx.invoice_body(),
                &[("/lines/0/description", json!(description))],
            ),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["lines"][0]["description"], description);
        assert_still_serving(&app, &fx).await;
        app
    }
);

both_backends!(
    bodies_over_the_limit_are_413_on_every_post,
    |app: TestApp| async move {
        // Goal: a body over 256 KiB is refused with 413 body_too_large on every POST (finalize and void included), without echoing it or writing, while a large valid invoice under the limit is accepted.
        let fx = Fixtures::make(&app).await;
        let draft = id_of(&app.draft_invoice_for(&fx.patient, "usd", 900).await).unwrap();
        let before = counts(&app).await;
        let filler = SECRET.repeat((BODY_LIMIT + 4096) / SECRET.len());
        let mut paths: Vec<String> = fx.valid_posts().into_iter().map(|(path, _)| path).collect();
        paths.push(format!("/v1/invoices/{draft}/finalize"));
        paths.push(format!("/v1/invoices/{draft}/void"));
        for path in &paths {
            let doc = format!("{{\"name\": \"{filler}\"}}");
            assert!(doc.len() > BODY_LIMIT);
            assert_refused(
                &post_bytes(&app, path, doc.into_bytes()).await,
                413,
                "body_too_large",
                "body",
            );
            // Also when the JSON would otherwise be invalid: the size is checked first.
            assert_refused(
                &post_bytes(&app, path, vec![b' '; BODY_LIMIT + 1]).await,
                413,
                "body_too_large",
                "body",
            );
        }
        assert_eq!(counts(&app).await, before, "a refused request wrote rows");
        // The largest invoice the API allows (250 lines of 500-character descriptions) fits.
        let mut lines = vec![line(); 250];
        for l in &mut lines {
            l["description"] = json!("d".repeat(500));
        }
        let body = with(&fx.invoice_body(), &[("/lines", Value::Array(lines))]);
        assert!(serde_json::to_vec(&body).unwrap().len() < BODY_LIMIT);
        let r = post(&app, "/v1/invoices", &body).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["lines"].as_array().unwrap().len(), 250);
        assert_eq!(app.count("invoice_lines").await, before[2].1 + 250);
        let r = post(&app, &format!("/v1/invoices/{draft}/finalize"), &json!({})).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_still_serving(&app, &fx).await;
        app
    }
);

both_backends!(
    idempotency_keys_must_be_uuids_and_money_needs_one,
    |app: TestApp| async move {
        // Goal: a non-UUID Idempotency-Key is a 400 naming the header on every POST, payments and refunds without a key are refused, and a request refused for bad input does not keep its key: the corrected request with the same key succeeds.
        let fx = Fixtures::make(&app).await;
        let draft = id_of(&app.draft_invoice_for(&fx.patient, "usd", 900).await).unwrap();
        let before = counts(&app).await;
        let mut posts = fx.valid_posts();
        posts.push((format!("/v1/invoices/{draft}/finalize"), json!({})));
        posts.push((format!("/v1/invoices/{draft}/void"), json!({})));
        let bad_keys: Vec<HeaderValue> = vec![
            HeaderValue::from_static(SECRET),
            HeaderValue::from_static("not-a-uuid"),
            HeaderValue::from_static(""),
            HeaderValue::from_str(&format!("{}x", new_key())).unwrap(),
            HeaderValue::from_str(&new_key()[..35]).unwrap(),
            HeaderValue::from_bytes(b"\xff\xfe4242424242424242").unwrap(),
        ];
        for (path, body) in &posts {
            for key in &bad_keys {
                // The body is valid: only the key is at fault, and nothing runs.
                let r = send(
                    &app,
                    Method::POST,
                    path,
                    Some("application/json"),
                    Some(serde_json::to_vec(body).unwrap()),
                    Some(key.clone()),
                )
                .await;
                assert_refused(&r, 400, "idempotency_key_invalid", "Idempotency-Key");
            }
        }
        for path in ["/v1/payments", "/v1/refunds"] {
            let body = posts.iter().find(|(p, _)| p == path).unwrap().1.clone();
            assert_refused(
                &post_with_key(&app, path, &body, None).await,
                400,
                "idempotency_key_missing",
                "Idempotency-Key",
            );
        }
        assert_eq!(counts(&app).await, before, "a refused request wrote rows");

        // A validation error under key K is not saved: the corrected request with K runs (200, not a
        // 422 for a reused key, not a replay), and only then does K replay.
        #[rustfmt::skip]
        let corrections: Vec<(&str, Value, Value)> = vec![
            ("/v1/patients", with(&fx.patient_body(), &[("/name", json!(SECRET.repeat(20)))]), fx.patient_body()),
            ("/v1/invoices", with(&fx.invoice_body(), &[("/lines/0/unit_amount", json!(12.5))]), fx.invoice_body()),
            ("/v1/payments", with(&fx.payment_body(), &[("/amount", json!(0))]), fx.payment_body()),
            ("/v1/refunds", with(&fx.refund_body(), &[("/amount", json!(-100))]), fx.refund_body()),
            ("/v1/refunds", with(&fx.refund_body(), &[("/amount", json!(5_000))]), fx.refund_body()),
        ];
        for (path, bad, good) in corrections {
            let key = new_key();
            let keys = app.count("idempotency_keys").await;
            let r = post_with_key(&app, path, &bad, Some(&key)).await;
            assert_eq!(r.status, 400, "{}", r.text);
            assert!(!r.text.contains(SECRET), "{}", r.text);
            assert_eq!(
                app.count("idempotency_keys").await,
                keys,
                "the refused request kept its key"
            );
            let r = post_with_key(&app, path, &good, Some(&key)).await;
            assert_eq!(r.status, 200, "{}", r.text);
            assert!(!r.replayed);
            let again = post_with_key(&app, path, &good, Some(&key)).await;
            assert_eq!(again.status, 200, "{}", again.text);
            assert!(again.replayed);
            assert_eq!(again.body["id"], r.body["id"]);
        }
        // Keys are not case- or format-sensitive: the braced upper-case form is the same key.
        let key = new_key();
        let r = post_with_key(&app, "/v1/patients", &fx.patient_body(), Some(&key)).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let r2 = post_with_key(
            &app,
            "/v1/patients",
            &fx.patient_body(),
            Some(&format!("{{{}}}", key.to_uppercase())),
        )
        .await;
        assert!(r2.replayed, "{}", r2.text);
        assert_eq!(r2.body["id"], r.body["id"]);
        assert_still_serving(&app, &fx).await;
        app
    }
);

both_backends!(
    dates_limits_and_query_parameters_are_checked,
    |app: TestApp| async move {
        // Goal: malformed or impossible dates, a date of birth or service date in the future, `to` before `from`, a bad `limit`, and unknown or repeated query parameters are refused naming the parameter, and nothing is written.
        let fx = Fixtures::make(&app).await;
        let before = counts(&app).await;
        let tomorrow = (chrono::Utc::now().date_naive() + chrono::Days::new(2))
            .format("%Y-%m-%d")
            .to_string();
        for dob in [
            "1980-13-01",
            "1981-02-29",
            "29/02/1980",
            "1980-2-29",
            "1980-02-29T00:00:00Z",
            "4242424242",
            SECRET,
            "",
            "1879-12-31",
            "2999-01-01",
            tomorrow.as_str(),
        ] {
            let r = post(
                &app,
                "/v1/patients",
                &with(&fx.patient_body(), &[("/date_of_birth", json!(dob))]),
            )
            .await;
            assert_refused(&r, 400, "parameter_invalid", "date_of_birth");
        }
        for due in ["2030-02-30", "31.01.2030", SECRET, "tomorrow"] {
            let r = post(
                &app,
                "/v1/invoices",
                &with(&fx.invoice_body(), &[("/due_date", json!(due))]),
            )
            .await;
            assert_refused(&r, 400, "parameter_invalid", "due_date");
        }
        for service in ["2026-00-10", SECRET, "2999-01-01", tomorrow.as_str()] {
            let r = post(
                &app,
                "/v1/invoices",
                &with(
                    &fx.invoice_body(),
                    &[("/lines/1/service_date", json!(service))],
                ),
            )
            .await;
            assert_refused(&r, 400, "parameter_invalid", "lines[1].service_date");
        }
        // Ledger time ranges.
        let entries = "/v1/ledger/entries";
        assert_refused(
            &get(
                &app,
                &format!("{entries}?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z"),
            )
            .await,
            400,
            "parameter_invalid",
            "to",
        );
        assert_refused(
            &get(&app, &format!("{entries}?from=2026-01-02&to=2026-01-01")).await,
            400,
            "parameter_invalid",
            "to",
        );
        assert_refused(
            &get(&app, &format!("{entries}?from=yesterday")).await,
            400,
            "parameter_invalid",
            "from",
        );
        assert_refused(
            &get(&app, &format!("{entries}?from={SECRET}")).await,
            400,
            "parameter_invalid",
            "from",
        );
        assert_refused(
            &get(&app, &format!("{entries}?to=2026-13-01T00:00:00Z")).await,
            400,
            "parameter_invalid",
            "to",
        );
        let account = format!("/v1/ledger/accounts/acct_1200_usd_{}", fx.patient);
        assert_refused(
            &get(&app, &format!("{account}?as_of={SECRET}")).await,
            400,
            "parameter_invalid",
            "as_of",
        );
        // Limits and unknown or repeated parameters, on every list.
        let lists = [
            "/v1/patients",
            "/v1/invoices",
            "/v1/payments",
            "/v1/refunds",
            "/v1/ledger/accounts",
            "/v1/ledger/entries",
        ];
        for list in lists {
            for limit in [
                "0",
                "-1",
                "101",
                "abc",
                "1.5",
                "",
                "%FF",
                SECRET,
                "99999999999999999999",
            ] {
                assert_refused(
                    &get(&app, &format!("{list}?limit={limit}")).await,
                    400,
                    "parameter_invalid",
                    "limit",
                );
            }
            assert_refused(
                &get(&app, &format!("{list}?lmit=10")).await,
                400,
                "parameter_unknown",
                "lmit",
            );
            assert_refused(
                &get(&app, &format!("{list}?limit=10&sort={SECRET}")).await,
                400,
                "parameter_unknown",
                "sort",
            );
            assert_refused(
                &get(&app, &format!("{list}?card%20{SECRET}=1")).await,
                400,
                "parameter_unknown",
                "query",
            );
            assert_refused(
                &get(&app, &format!("{list}?limit=5&limit=6")).await,
                400,
                "parameter_invalid",
                "limit",
            );
            let r = get(&app, &format!("{list}?limit=100")).await;
            assert_eq!(r.status, 200, "{list}: {}", r.text);
        }
        assert_refused(
            &get(
                &app,
                &format!("/v1/patients/{}/statement?currncy=usd", fx.patient),
            )
            .await,
            400,
            "parameter_unknown",
            "currncy",
        );
        assert_refused(
            &get(&app, &format!("{account}?asof=2026-01-01")).await,
            400,
            "parameter_unknown",
            "asof",
        );
        assert_refused(
            &get(&app, "/v1/invoices?status=unpaid").await,
            400,
            "parameter_invalid",
            "status",
        );
        assert_refused(
            &get(&app, &format!("/v1/invoices?status={SECRET}")).await,
            400,
            "parameter_invalid",
            "status",
        );
        assert_eq!(counts(&app).await, before, "a refused request wrote rows");
        // The valid forms work.
        let r = get(
            &app,
            &format!("{entries}?from=2000-01-01T00:00:00Z&to=2999-01-01T00:00:00Z&limit=100"),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(!r.body["data"].as_array().unwrap().is_empty());
        let same = get(
            &app,
            &format!("{entries}?from=2026-01-01T00:00:00Z&to=2026-01-01T00:00:00Z"),
        )
        .await;
        assert_eq!(
            same.status, 200,
            "an empty range is not an error: {}",
            same.text
        );
        let today = chrono::Utc::now()
            .date_naive()
            .format("%Y-%m-%d")
            .to_string();
        let r = post(
            &app,
            "/v1/patients",
            &with(&fx.patient_body(), &[("/date_of_birth", json!(today))]),
        )
        .await;
        assert_eq!(r.status, 200, "born today: {}", r.text);
        assert_still_serving(&app, &fx).await;
        app
    }
);
