//! The vault's certificate is reloaded from its files without a restart (both listeners share
//! it), an unsound replacement is refused with the old one kept, and an unsound certificate
//! stops the vault from starting. The protocol policy itself is checked against a running vault
//! process in the billing crate's `tests/tls.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};
use tokenizer::db::Backend;

const RELOAD_INTERVAL: Duration = Duration::from_millis(100);

fn days(n: u64) -> Duration {
    Duration::from_secs(n * 86_400)
}

/// Replaces `path` whole with `text` (written aside, then renamed).
fn replace(path: &Path, text: &str) {
    let aside = path.with_extension("incoming");
    std::fs::write(&aside, text).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

fn der_of(pem: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.pem");
    std::fs::write(&path, pem).unwrap();
    tlskit::certs::load_certs(&path).unwrap()[0].to_vec()
}

/// Billing's client with a fresh connection per request, reporting the server's certificate.
fn billing_client(vault: &Vault) -> reqwest::Client {
    let identity = vault.ca.client_cert(devcerts::BILLING_CLIENT_NAME).unwrap();
    let pem = format!("{}{}", identity.cert_pem, identity.key_pem);
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(vault.ca.cert_pem().as_bytes()).unwrap(),
        )
        .identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap())
        .https_only(true)
        .tls_info(true)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// The leaf certificate the internal (mutual-TLS) listener presents to a new connection, after
/// checking the call itself succeeds.
async fn presented(vault: &Vault, path: &str) -> Vec<u8> {
    let r = billing_client(vault)
        .get(vault.internal_url(path))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|t| t.peer_certificate())
        .unwrap()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_internal_listener_reloads_its_certificate_and_refuses_unsound_ones() {
    // Goal: a rotated certificate is presented by the mutual-TLS listener without a restart
    // (the allowlist still enforced); an expired one or a mismatched key is refused and the
    // certificate in service kept.
    let vault =
        Vault::start_with(Backend::Sqlite, |c| c.tls_reload_interval = RELOAD_INTERVAL).await;
    let token = vault.token_for(VISA).await;
    let path = format!("/v1/cards/{token}");
    let (cert, key) = (vault.config.tls_cert.clone(), vault.config.tls_key.clone());
    let original = der_of(&std::fs::read_to_string(&cert).unwrap());
    assert_eq!(presented(&vault, &path).await, original);
    let serial = vault.running().tls.serial();

    let now = SystemTime::now();
    let expired = vault
        .ca
        .server_cert_between(&["localhost", "127.0.0.1"], now - days(30), now - days(1))
        .unwrap();
    let (a, b) = (
        vault.ca.server_cert(&["localhost", "127.0.0.1"]).unwrap(),
        vault.ca.server_cert(&["localhost", "127.0.0.1"]).unwrap(),
    );
    for (what, cert_pem, key_pem) in [
        ("expired", &expired.cert_pem, &expired.key_pem),
        ("mismatched key", &a.cert_pem, &b.key_pem),
    ] {
        replace(&key, key_pem);
        replace(&cert, cert_pem);
        tokio::time::sleep(RELOAD_INTERVAL * 5).await;
        assert_eq!(
            presented(&vault, &path).await,
            original,
            "{what}: swapped in"
        );
        assert_eq!(vault.running().tls.serial(), serial, "{what}");
    }

    let rotated = vault.ca.server_cert(&["localhost", "127.0.0.1"]).unwrap();
    replace(&key, &rotated.key_pem);
    replace(&cert, &rotated.cert_pem);
    let deadline = Instant::now() + Duration::from_secs(10);
    while presented(&vault, &path).await != der_of(&rotated.cert_pem) {
        assert!(
            Instant::now() < deadline,
            "the rotated certificate was not taken"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(vault.running().tls.serial(), serial);
    // The collect listener presents the same (shared) certificate.
    let r = vault
        .browser
        .post(vault.collect_url("/v1/cards"))
        .json(&json!({"number": VISA, "exp_month": 12, "exp_year": 2030, "cvc": "083"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    // The allowlist is as strict as before the reload.
    let stranger_id = vault.ca.client_cert("carebill-reports").unwrap();
    let stranger = client_with(&vault.ca, Some(&stranger_id));
    assert!(stranger
        .get(vault.internal_url(&path))
        .send()
        .await
        .is_err());
    vault.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_vault_refuses_to_start_on_an_unsound_certificate() {
    // Goal: an expired certificate or a key that does not match stops `start`, with an error
    // naming the problem and the file.
    let vault = Vault::start(Backend::Sqlite).await;
    let now = SystemTime::now();
    let expired = vault
        .ca
        .server_cert_between(&["localhost"], now - days(30), now - days(1))
        .unwrap();
    let other = vault.ca.server_cert(&["localhost"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let mut config = vault.config.clone();
    config.tls_cert = write("expired.pem", &expired.cert_pem);
    config.tls_key = write("expired.key", &expired.key_pem);
    let err = format!("{:#}", tokenizer::start(config.clone()).await.unwrap_err());
    assert!(
        err.contains("expired.pem") && err.contains("expired on"),
        "{err}"
    );

    config.tls_cert = vault.config.tls_cert.clone();
    config.tls_key = write("other.key", &other.key_pem);
    let err = format!("{:#}", tokenizer::start(config).await.unwrap_err());
    assert!(
        err.contains("other.key") && err.contains("does not match"),
        "{err}"
    );
    vault.finish().await;
}
