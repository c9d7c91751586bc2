//! `carebill up`: the one-command start for a newcomer.
//!
//! Creates the database (SQLite under `./var/` by default), migrates, makes an admin API key,
//! starts the server, seeds a small demo *through the API itself* (so the demo data went
//! through every check real data does), prints what to try, and serves until Ctrl-C.

use serde_json::json;

use crate::auth::{create_api_key, Role};
use crate::client::{id_of, ApiClient};
use crate::config::Config;

pub async fn up(config: Config) -> anyhow::Result<()> {
    let state = crate::server::prepare(config.clone()).await?;
    let key = create_api_key(&state.db, Role::Admin).await?;
    let listener = tokio::net::TcpListener::bind(&config.addr).await?;
    let running = crate::server::spawn(state.clone(), listener)?;
    let base = format!("http://{}", running.addr);
    let client = ApiClient::new(&base, &key.secret);

    let patients: i64 = sqlx::Row::try_get(
        &sqlx::query("SELECT COUNT(*) AS n FROM patients")
            .fetch_one(&state.db.pool)
            .await?,
        "n",
    )?;
    if patients == 0 {
        seed(&client).await?;
        println!("seeded a demo: 3 patients, 4 invoices, payments and a refund");
    }
    println!();
    println!(
        "carebill is up at {base} ({} database)",
        state.db.backend.name()
    );
    println!("API key (role admin):");
    println!("  export CAREBILL_KEY={}", key.secret);
    println!("Try:");
    println!("  curl -s {base}/v1/patients -H \"Authorization: Bearer $CAREBILL_KEY\"");
    println!("  curl -s {base}/v1/ledger/accounts?currency=usd -H \"Authorization: Bearer $CAREBILL_KEY\"");
    println!("  curl -s {base}/v1/openapi.json");
    println!("Press Ctrl-C to stop.");
    running.handle.await??;
    Ok(())
}

/// A few patients with bills in several states, made through the API.
pub async fn seed(client: &ApiClient) -> anyhow::Result<()> {
    let today = chrono::Utc::now().date_naive();
    let day = |n: i64| {
        (today - chrono::Duration::days(n))
            .format("%Y-%m-%d")
            .to_string()
    };
    let due = (today + chrono::Duration::days(30))
        .format("%Y-%m-%d")
        .to_string();
    let people = [
        ("Ada Lovelace", "1985-12-10", "ada@example.org", "MRN-1001"),
        (
            "Grace Hopper",
            "1966-12-09",
            "grace@example.org",
            "MRN-1002",
        ),
        ("Alan Turing", "1972-06-23", "alan@example.org", "MRN-1003"),
    ];
    let mut ids = Vec::new();
    for (name, dob, email, mrn) in people {
        let p = client
            .create("/v1/patients", &json!({"name": name, "date_of_birth": dob, "email": email, "phone": "+1 555 0100", "mrn": mrn,
                "address": {"line1": "1 Main St", "city": "Springfield", "state": "IL", "postal_code": "62701", "country": "US"}}))
            .await?;
        ids.push(id_of(&p)?);
    }
    let invoice = |patient: &str, lines: serde_json::Value| json!({"patient": patient, "currency": "usd", "due_date": due, "lines": lines});
    // Ada: an office visit and lab work, paid in part, then a partial refund.
    let inv = client
        .create("/v1/invoices", &invoice(&ids[0], json!([
            {"service_date": day(7), "code": "99213", "description": "Office visit, established patient", "quantity": 1, "unit_amount": 15000},
            {"service_date": day(7), "code": "80053", "description": "Comprehensive metabolic panel", "quantity": 1, "unit_amount": 4550}])))
        .await?;
    let inv_id = id_of(&inv)?;
    client
        .create(&format!("/v1/invoices/{inv_id}/finalize"), &json!({}))
        .await?;
    client.create(&format!("/v1/invoices/{inv_id}/adjustments"), &json!({"kind": "insurance_adjustment", "amount": 5000, "reason": "Contractual allowance, BCBS"})).await?;
    let pay = client.create("/v1/payments", &json!({"invoice": inv_id, "amount": 10000, "currency": "usd", "payment_method": "pm_card_visa"})).await?;
    client.create("/v1/refunds", &json!({"payment": id_of(&pay)?, "amount": 1500, "reason": "billing_error", "note": "Lab fee charged twice"})).await?;
    // Grace: paid in full with an overpayment that becomes a credit balance.
    let inv = client
        .create("/v1/invoices", &invoice(&ids[1], json!([
            {"service_date": day(3), "code": "71046", "description": "Chest X-ray, 2 views", "quantity": 1, "unit_amount": 12000}])))
        .await?;
    let inv_id = id_of(&inv)?;
    client
        .create(&format!("/v1/invoices/{inv_id}/finalize"), &json!({}))
        .await?;
    client.create("/v1/payments", &json!({"invoice": inv_id, "amount": 13000, "currency": "usd", "payment_method": "pm_card_mastercard"})).await?;
    // Alan: one open bill, one draft.
    let inv = client
        .create("/v1/invoices", &invoice(&ids[2], json!([
            {"service_date": day(1), "code": "97110", "description": "Therapeutic exercise, 15 min", "quantity": 4, "unit_amount": 3500}])))
        .await?;
    client
        .create(
            &format!("/v1/invoices/{}/finalize", id_of(&inv)?),
            &json!({}),
        )
        .await?;
    client
        .create("/v1/invoices", &invoice(&ids[2], json!([
            {"service_date": day(0), "code": "99214", "description": "Office visit, moderate complexity", "quantity": 1, "unit_amount": 21000}])))
        .await?;
    Ok(())
}
