//! `carebill bench-crypto`: what field encryption costs per operation, against SHA-256 of the
//! same bytes measured in the same run (the reference). The payment path adds one seal of the
//! saved idempotent response and one keyed fingerprint of the request; a patient read adds one
//! unwrap of their data key and six field opens.

use std::time::Instant;

use sha2::Digest;

use super::field::{DataKey, Field};
use super::keyring::{KeyProvider, LocalKeyring};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchCryptoArgs {
    /// Operations per measurement.
    #[arg(long, default_value_t = 200_000)]
    pub iterations: u32,
}

fn measure(iterations: u32, mut op: impl FnMut(u32)) -> f64 {
    let started = Instant::now();
    for i in 0..iterations {
        op(i);
    }
    started.elapsed().as_secs_f64() * 1e6 / f64::from(iterations)
}

pub async fn run(args: BenchCryptoArgs) -> anyhow::Result<()> {
    let n = args.iterations.max(1000);
    let ring = LocalKeyring::parse(&LocalKeyring::generate_text())?;
    let key = DataKey::generate();
    // A saved payment response and a payment request, as the API writes them.
    let response = serde_json::json!({
        "id": "pay_4x9Qk2mZr8LwT1bVn0Yc", "object": "payment", "invoice": "inv_7HcV2pL0qW9sXe3nBm5A",
        "patient": "pat_1aB2cD3eF4gH5iJ6kL7m", "amount": 12_345, "currency": "usd", "status": "succeeded",
        "payment_method": "tok_9sd8f7g6h5j4k3l2m1n0bv", "card": {"brand": "visa", "last4": "4242"},
        "amount_applied": 12_345, "amount_credited": 0, "amount_refunded": 0, "failure_code": null,
        "journal_entry": "je_2kJ9sL0dP3qW7eR1tY5u", "created_at": "2026-11-28T22:40:31.123456Z",
    })
    .to_string();
    let request = r#"{"amount":12345,"currency":"usd","invoice":"inv_7HcV2pL0qW9sXe3nBm5A","payment_method":"tok_9sd8f7g6h5j4k3l2m1n0bv"}"#;
    let index = ring.index_key().clone();
    let field = Field::new(
        "idempotency_keys.response_body",
        "sys:idempotency",
        "key_1\0k",
    );
    let sealed = key.seal(field, &response)?;
    let wrapped = ring.wrap(1, &key, b"pat_1").await?;

    let sha = measure(n, |_| {
        std::hint::black_box(sha2::Sha256::digest(response.as_bytes()));
    });
    let seal = measure(n, |_| {
        std::hint::black_box(key.seal(field, &response).ok());
    });
    let open = measure(n, |_| {
        std::hint::black_box(key.open(field, &sealed).ok());
    });
    let fingerprint = measure(n, |_| {
        std::hint::black_box(index.keyed("idempotency-request", request));
    });
    let started = Instant::now();
    for _ in 0..n {
        std::hint::black_box(ring.unwrap(1, &wrapped, b"pat_1").await.ok());
    }
    let unwrap = started.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    let name = Field::new("patients.name", "pat_1", "pat_1");
    let short = key.seal(name, "Philippa Quartermaine-Oyelaran")?;
    let open_short = measure(n, |_| {
        std::hint::black_box(key.open(name, &short).ok());
    });

    println!("| operation | µs | per second | ratio to SHA-256 of the response |");
    println!("| --- | ---: | ---: | ---: |");
    for (what, us) in [
        ("SHA-256 of a saved payment response (reference)", sha),
        ("seal the saved payment response (AES-256-SIV)", seal),
        ("open it (a replay)", open),
        ("keyed request fingerprint (HMAC-SHA256)", fingerprint),
        ("unwrap a patient's data key", unwrap),
        ("open one short field (a name)", open_short),
    ] {
        println!("| {what} | {us:.2} | {:.0} | {:.2} |", 1e6 / us, us / sha);
    }
    println!(
        "\nadded to each payment: {:.2} µs (seal + fingerprint); to each patient read: {:.2} µs (unwrap + 6 opens)",
        seal + fingerprint,
        unwrap + 6.0 * open_short
    );
    Ok(())
}
