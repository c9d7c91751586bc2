//! The vault's network edges: mutual TLS with an allowlist on the internal listener, TLS only
//! on both, CORS limited to the portal, and the rate limits on tokenization.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use std::time::Duration;
use tokenizer::db::Backend;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn internal_listener_admits_only_allowlisted_client_certificates() {
    let vault = Vault::start(Backend::Sqlite).await;
    let token = vault.token_for(VISA).await;
    let path = format!("/v1/cards/{token}");

    // Billing's certificate: admitted.
    let ok = vault
        .billing
        .get(vault.internal_url(&path))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);

    // No certificate.
    let anonymous = client_with(&vault.ca, None);
    assert!(anonymous
        .get(vault.internal_url(&path))
        .send()
        .await
        .is_err());

    // A certificate from another CA, with the allowlisted name.
    let other_ca = devcerts::Ca::new("attacker CA").unwrap();
    let forged = other_ca.client_cert(devcerts::BILLING_CLIENT_NAME).unwrap();
    let forger = client_with(&vault.ca, Some(&forged));
    assert!(forger.get(vault.internal_url(&path)).send().await.is_err());

    // The right CA, but an identity not on the allowlist.
    let reports = vault.ca.client_cert("carebill-reports").unwrap();
    let stranger = client_with(&vault.ca, Some(&reports));
    assert!(stranger
        .get(vault.internal_url(&path))
        .send()
        .await
        .is_err());

    // Plain HTTP is not served on either listener.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let port = vault.running().internal_addr.port();
    assert!(plain
        .get(format!("http://127.0.0.1:{port}{path}"))
        .send()
        .await
        .is_err());
    let port = vault.running().collect_addr.port();
    assert!(plain
        .post(format!("http://127.0.0.1:{port}/v1/cards"))
        .json(&json!({"number": VISA}))
        .send()
        .await
        .is_err());

    // The collect listener serves no card metadata: only the card form.
    let response = vault
        .browser
        .get(vault.collect_url(&path))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_client_error(), "{}", response.status());
    vault.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_n_plus_first_attempt_from_one_address_is_refused() {
    let vault = Vault::start_with(Backend::Sqlite, |c| {
        c.rate_per_address = 5;
        c.rate_window = Duration::from_secs(600);
    })
    .await;
    // Valid and invalid attempts count alike: an invalid number is still a guess.
    for i in 0..5 {
        let number = if i % 2 == 0 { VISA } else { "4242424242424241" };
        let (status, body) = vault
            .tokenize(json!({"number": number, "exp_month": 12, "exp_year": 2030, "cvc": "083"}))
            .await;
        assert_ne!(status, 429, "attempt {i}: {body}");
    }
    let response = vault
        .browser
        .post(vault.collect_url("/v1/cards"))
        .json(&json!({"number": VISA, "exp_month": 12, "exp_year": 2030, "cvc": "083"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=600).contains(&retry), "{retry}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "rate_limited");
    // Billing's internal calls are not limited by the browser's allowance.
    let token: String = sqlx::query_scalar("SELECT id FROM cards")
        .fetch_one(&vault.db().pool)
        .await
        .unwrap();
    let (status, _) = vault
        .internal(reqwest::Method::GET, &format!("/v1/cards/{token}"))
        .await;
    assert_eq!(status, 200);
    vault.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_global_limit_caps_all_addresses_together() {
    let vault = Vault::start_with(Backend::Sqlite, |c| {
        c.rate_per_address = 100;
        c.rate_global = 3;
        c.rate_window = Duration::from_secs(600);
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            vault
                .tokenize(json!({"number": VISA, "exp_month": 12, "exp_year": 2030, "cvc": "083"}))
                .await
                .0,
        );
    }
    assert_eq!(statuses, [201, 200, 200, 429]);
    vault.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cors_admits_only_the_portal() {
    let vault = Vault::start(Backend::Sqlite).await;
    let preflight = |origin: &'static str| {
        vault
            .browser
            .request(reqwest::Method::OPTIONS, vault.collect_url("/v1/cards"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let allowed = preflight("https://portal.example.org").await.unwrap();
    assert_eq!(
        allowed
            .headers()
            .get("access-control-allow-origin")
            .unwrap(),
        "https://portal.example.org"
    );
    let denied = preflight("https://evil.example.com").await.unwrap();
    assert!(denied
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    // Every answer forbids caching and insists on HTTPS.
    let (_, _) = vault
        .tokenize(json!({"number": VISA, "exp_month": 12, "exp_year": 2030, "cvc": "083"}))
        .await;
    let response = vault
        .browser
        .post(vault.collect_url("/v1/cards"))
        .json(&json!({"number": VISA, "exp_month": 12, "exp_year": 2030, "cvc": "083"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert!(response.headers().contains_key("strict-transport-security"));
    vault.finish().await;
}
