//! Encryption in transit: the billing server speaks HTTPS only (TLS 1.2 or 1.3, forward-secret
//! AEAD suites), its plain-HTTP port only redirects, every response carries HSTS, certificates
//! are rotated under load without a failed request, and an unsound certificate is refused at
//! start-up (naming the problem) and at reload (keeping the one in service). The vault's
//! listeners share the policy: the protocol checks run against its collect listener too (its
//! reload has its own test in `tokenizer/tests/tls.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use carebill::db::Backend;
use common::*;

/// How often the tests' servers check their certificate files.
const RELOAD_INTERVAL_MS: u64 = 100;

/// A certificate and key of the test CA in files of their own (the test rewrites them).
struct OwnCert {
    dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
}

impl OwnCert {
    fn new() -> OwnCert {
        let dir = temp_dir("carebill-tls-rotation-");
        let own = OwnCert {
            cert: dir.path().join("server.pem"),
            key: dir.path().join("server.key"),
            dir,
        };
        own.install(&issue());
        own
    }

    /// Writes `pair`, the key first, each file replaced whole (written aside, then renamed),
    /// as an operator's rotation would.
    fn install(&self, pair: &devcerts::Issued) {
        self.install_parts(&pair.cert_pem, &pair.key_pem);
    }

    fn install_parts(&self, cert_pem: &str, key_pem: &str) {
        for (path, text) in [(&self.key, key_pem), (&self.cert, cert_pem)] {
            let aside = self.dir.path().join("incoming.tmp");
            std::fs::write(&aside, text).unwrap();
            std::fs::rename(&aside, path).unwrap();
        }
    }
}

/// A new server certificate of the test CA (new key, new serial).
fn issue() -> devcerts::Issued {
    test_tls()
        .ca
        .server_cert(devcerts::BILLING_SERVER_NAMES)
        .unwrap()
}

fn issue_between(from: SystemTime, until: SystemTime) -> devcerts::Issued {
    test_tls()
        .ca
        .server_cert_between(devcerts::BILLING_SERVER_NAMES, from, until)
        .unwrap()
}

fn days(n: u64) -> Duration {
    Duration::from_secs(n * 86_400)
}

/// The DER of the PEM certificate `pem`.
fn der_of(pem: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.pem");
    std::fs::write(&path, pem).unwrap();
    tlskit::certs::load_certs(&path).unwrap()[0].to_vec()
}

/// The leaf certificate a new connection to `base` is shown.
async fn presented(base: &str) -> Vec<u8> {
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&test_tls().ca_pem).unwrap())
        .tls_info(true)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let response = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .expect("the TLS info of the response")
        .to_vec()
}

async fn spawn_with_own_cert(backend: Backend, own: &OwnCert) -> TestApp {
    let (cert, key) = (own.cert.clone(), own.key.clone());
    TestApp::spawn_with(backend, move |c| {
        c.tls_cert = Some(cert);
        c.tls_key = Some(key);
        c.tls_reload_interval_ms = RELOAD_INTERVAL_MS;
    })
    .await
}

both_backends!(
    plain_http_is_not_served_and_every_https_response_has_hsts,
    |app: TestApp| async move {
        // Goal: the HTTPS port does not answer plain HTTP; every HTTPS answer (success, client
        // error, unknown route) tells browsers to use HTTPS only.
        let plain = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let port = app.running().addr.port();
        let r = plain
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await;
        assert!(r.is_err(), "plain HTTP on the HTTPS port answered: {r:?}");
        let https = https_client();
        for (path, status) in [
            ("/healthz", 200),
            ("/v1/patients", 401),
            ("/no/such/route", 404),
        ] {
            let r = https
                .get(format!("{}{path}", app.base))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), status, "{path}");
            let hsts = r
                .headers()
                .get("strict-transport-security")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            assert!(hsts.starts_with("max-age=63072000"), "{path}: {hsts:?}");
        }
        // The API over HTTPS works with a key (the harness's own client).
        assert_eq!(app.admin.get("/v1/patients").await.unwrap().status, 200);
        app
    }
);

both_backends!(
    the_plain_http_port_only_redirects_to_https,
    spawn = |backend| TestApp::spawn_with(backend, |c| {
        c.http_redirect_addr = Some("127.0.0.1:0".to_owned())
    }),
    |app: TestApp| async move {
        // Goal: every request to the redirect port, whatever its method, path or credentials,
        // is answered 308 to the same path and query over HTTPS, and reaches no handler.
        let redirect_port = app.running().redirect_addr.unwrap().port();
        let https_port = app.running().addr.port();
        let plain = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let key = &app.keys["billing_manager"];
        let before = app.count("patients").await;
        let requests = [
            plain.get(format!(
                "http://127.0.0.1:{redirect_port}/v1/patients?limit=2"
            )),
            plain
                .get(format!("http://127.0.0.1:{redirect_port}/v1/patients"))
                .bearer_auth(key),
            plain
                .post(format!("http://127.0.0.1:{redirect_port}/v1/patients"))
                .bearer_auth(key)
                .json(&json!({"name": "Over Plain HTTP", "date_of_birth": "1980-01-01"})),
            plain.get(format!("http://localhost:{redirect_port}/healthz")),
        ];
        let expected = [
            format!("https://127.0.0.1:{https_port}/v1/patients?limit=2"),
            format!("https://127.0.0.1:{https_port}/v1/patients"),
            format!("https://127.0.0.1:{https_port}/v1/patients"),
            format!("https://localhost:{https_port}/healthz"),
        ];
        for (request, location) in requests.into_iter().zip(expected) {
            let r = request.send().await.unwrap();
            assert_eq!(r.status().as_u16(), 308);
            assert_eq!(
                r.headers().get("location").unwrap().to_str().unwrap(),
                location
            );
            // Not the API: no request id, no JSON, nothing of the application.
            assert!(r.headers().get("request-id").is_none());
            assert!(r.text().await.unwrap().is_empty());
        }
        assert_eq!(
            app.count("patients").await,
            before,
            "the POST reached no handler"
        );
        // A client that follows the redirect lands on the HTTPS API.
        let following = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&test_tls().ca_pem).unwrap())
            .build()
            .unwrap();
        let r = following
            .get(format!("http://127.0.0.1:{redirect_port}/v1/patients"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        // There: the client dropped the key on the way (another origin), as it should.
        assert_eq!(r.url().scheme(), "https");
        assert_eq!(r.url().port(), Some(https_port));
        assert_eq!(r.status().as_u16(), 401);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["type"], "authentication_error", "{body}");
        app
    }
);

/// `openssl s_client` against `addr` with `args`; whether the handshake succeeded, and the
/// output.
async fn s_client(addr: std::net::SocketAddr, args: &[&str]) -> (bool, String) {
    let mut command = tokio::process::Command::new("openssl");
    command
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .args(["-servername", "localhost", "-CAfile"])
        .arg(&test_tls().ca_cert)
        .args(args)
        .stdin(Stdio::null());
    let out = tokio::time::timeout(Duration::from_secs(20), command.output())
        .await
        .expect("openssl s_client timed out")
        .expect("running openssl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A client-side refusal would make a "refused" check pass without asking the server.
    assert!(
        !text.contains("no protocols available") && !text.contains("no cipher match"),
        "openssl refused to try {args:?} itself: {text}"
    );
    (out.status.success(), text)
}

fn openssl_present() -> bool {
    std::process::Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The protocol checks against one listener (`name` for messages).
async fn check_protocols(name: &str, addr: std::net::SocketAddr) {
    // Both offered: TLS 1.3, with h2 when asked for.
    let (ok, out) = s_client(addr, &["-alpn", "h2,http/1.1"]).await;
    assert!(ok, "{name}: default handshake failed: {out}");
    assert!(out.contains("TLSv1.3"), "{name}: TLS 1.3 not chosen: {out}");
    assert!(
        out.contains("ALPN protocol: h2"),
        "{name}: h2 not offered: {out}"
    );
    assert!(
        out.contains("Verify return code: 0 (ok)"),
        "{name}: the certificate does not verify: {out}"
    );
    // TLS 1.2 with a modern suite: accepted.
    let (ok, out) = s_client(
        addr,
        &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"],
    )
    .await;
    assert!(
        ok,
        "{name}: TLS 1.2 with ECDHE-ECDSA-AES128-GCM refused: {out}"
    );
    // TLS 1.2 with CBC suites (with and without forward secrecy): refused.
    for weak in [
        "ECDHE-ECDSA-AES128-SHA",
        "ECDHE-ECDSA-AES256-SHA384",
        "AES128-SHA",
    ] {
        let (ok, out) = s_client(addr, &["-tls1_2", "-cipher", weak]).await;
        assert!(!ok, "{name}: TLS 1.2 with {weak} accepted: {out}");
    }
    // TLS 1.1 and 1.0 (allowed on the client's side by security level 0): refused.
    for old in ["-tls1_1", "-tls1"] {
        let (ok, out) = s_client(addr, &[old, "-cipher", "DEFAULT:@SECLEVEL=0"]).await;
        assert!(!ok, "{name}: {old} accepted: {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_tls_1_2_and_1_3_with_aead_suites_on_billing_and_the_vault() {
    // Goal: both processes' listeners negotiate TLS 1.3 by default, accept TLS 1.2 only with
    // forward-secret AEAD suites, and refuse TLS 1.0/1.1 and CBC suites.
    if !openssl_present() {
        eprintln!("SKIPPED: `openssl` is not installed; the protocol and cipher-suite checks need `openssl s_client` (apt-get install openssl)");
        return;
    }
    let app = TestApp::spawn_with_vault(Backend::Sqlite).await;
    check_protocols("billing", app.running().addr).await;
    let collect: std::net::SocketAddr = app
        .vault()
        .child
        .collect_url
        .trim_start_matches("https://")
        .parse()
        .unwrap();
    // The vault's certificate is of its own development CA.
    let (ok, out) = s_client(collect, &[]).await;
    assert!(ok, "vault collect: {out}");
    check_protocols_untrusted("vault collect", collect).await;
    app.finish().await;
}

/// As [`check_protocols`], for a listener whose CA the test does not hold: only whether the
/// handshake completes is looked at.
async fn check_protocols_untrusted(name: &str, addr: std::net::SocketAddr) {
    let (ok, out) = s_client(addr, &["-alpn", "h2,http/1.1"]).await;
    assert!(
        ok && out.contains("TLSv1.3") && out.contains("ALPN protocol: h2"),
        "{name}: {out}"
    );
    let (ok, out) = s_client(
        addr,
        &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"],
    )
    .await;
    assert!(ok, "{name}: {out}");
    for weak in ["ECDHE-ECDSA-AES128-SHA", "AES128-SHA"] {
        let (ok, out) = s_client(addr, &["-tls1_2", "-cipher", weak]).await;
        assert!(!ok, "{name}: TLS 1.2 with {weak} accepted: {out}");
    }
    for old in ["-tls1_1", "-tls1"] {
        let (ok, out) = s_client(addr, &[old, "-cipher", "DEFAULT:@SECLEVEL=0"]).await;
        assert!(!ok, "{name}: {old} accepted: {out}");
    }
}

mod a_certificate_rotated_under_load_fails_no_request {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite() {
        rotation_under_load(Backend::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres() {
        rotation_under_load(Backend::Postgres).await;
    }
}

async fn rotation_under_load(backend: Backend) {
    // Goal: while clients make requests continuously (half on kept-alive connections, half
    // with a full handshake each time: a new client, so no session to resume), the certificate
    // files are replaced; new handshakes present the new certificate, connections already open
    // keep working, and not one request fails.
    let own = OwnCert::new();
    let app = spawn_with_own_cert(backend, &own).await;
    let first = std::fs::read_to_string(&own.cert).unwrap();
    assert_eq!(presented(&app.base).await, der_of(&first));
    let serial_before = app.running().tls.serial();

    const CLIENTS: usize = 8;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    let client = || {
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&test_tls().ca_pem).unwrap())
            .https_only(true)
            .tls_info(true)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    };
    for i in 0..CLIENTS {
        let full_handshakes = i % 2 == 0;
        let mut http = client();
        let url = format!("{}/v1/patients?limit=1", app.base);
        let key = app.keys["billing_manager"].clone();
        let (stop, ok) = (stop.clone(), ok.clone());
        load.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut seen = std::collections::HashSet::new();
            while !stop.load(Ordering::Relaxed) {
                if full_handshakes {
                    http = client();
                }
                match http.get(&url).bearer_auth(&key).send().await {
                    Ok(r) if r.status().as_u16() == 200 => {
                        if let Some(der) = r
                            .extensions()
                            .get::<reqwest::tls::TlsInfo>()
                            .and_then(|t| t.peer_certificate())
                        {
                            seen.insert(der.to_vec());
                        }
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures.push(format!("status {}", r.status())),
                    Err(e) => failures.push(format!("{e:?}")),
                }
            }
            (failures, seen)
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before_rotation = ok.load(Ordering::Relaxed);
    assert!(before_rotation > 0, "the load is running");

    let second = issue();
    own.install(&second);
    let new_der = der_of(&second.cert_pem);
    let deadline = Instant::now() + Duration::from_secs(10);
    while presented(&app.base).await != new_der {
        assert!(
            Instant::now() < deadline,
            "new handshakes still present the old certificate"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for task in load {
        let (f, s) = task.await.unwrap();
        failures.extend(f);
        seen.extend(s);
    }
    let total = ok.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        total > before_rotation,
        "requests went on after the rotation"
    );
    assert!(
        seen.contains(&der_of(&first)),
        "the load saw the first certificate"
    );
    assert!(seen.contains(&new_der), "the load saw the new certificate");
    assert_ne!(app.running().tls.serial(), serial_before);
    eprintln!("rotation under load: {total} requests by {CLIENTS} clients, none failed");
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unsound_certificate_is_refused_at_reload_and_the_old_one_kept() {
    // Goal: an expired certificate, a not-yet-valid one and a key that does not match are
    // each refused when they appear in the files: new handshakes keep getting the
    // certificate in service, and requests keep working. A sound pair afterwards is taken
    // (so the watcher was looking all along).
    let own = OwnCert::new();
    let app = spawn_with_own_cert(Backend::Sqlite, &own).await;
    let in_service = presented(&app.base).await;
    let serial = app.running().tls.serial();
    let now = SystemTime::now();
    let expired = issue_between(now - days(30), now - days(1));
    let future = issue_between(now + days(1), now + days(30));
    let (a, b) = (issue(), issue());
    for (what, cert_pem, key_pem) in [
        ("expired", &expired.cert_pem, &expired.key_pem),
        ("not yet valid", &future.cert_pem, &future.key_pem),
        ("mismatched key", &a.cert_pem, &b.key_pem),
    ] {
        own.install_parts(cert_pem, key_pem);
        // Several check intervals.
        tokio::time::sleep(Duration::from_millis(RELOAD_INTERVAL_MS * 5)).await;
        assert_eq!(presented(&app.base).await, in_service, "{what}: swapped in");
        assert_eq!(app.running().tls.serial(), serial, "{what}");
        assert_eq!(app.admin.get("/v1/patients").await.unwrap().status, 200);
    }
    let good = issue();
    own.install(&good);
    let deadline = Instant::now() + Duration::from_secs(10);
    while presented(&app.base).await != der_of(&good.cert_pem) {
        assert!(Instant::now() < deadline, "the sound pair was not taken");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.finish().await;
}

/// Runs `carebill serve` with `env` and returns its exit status and stderr (it is expected to
/// refuse to start).
async fn serve_refuses(env: &[(&str, &Path)]) -> String {
    let dir = temp_dir("carebill-tls-refused-");
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_carebill"));
    command
        .args(["serve", "--addr", "127.0.0.1:0"])
        .env(
            "DATABASE_URL",
            format!("sqlite://{}/carebill.db", dir.path().display()),
        )
        .env_remove("CAREBILL_TLS_CERT")
        .env_remove("CAREBILL_TLS_KEY")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    let out = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("carebill serve kept running with an unsound certificate")
        .unwrap();
    assert!(!out.status.success(), "carebill serve started");
    assert!(
        !dir.path().join("carebill.db").exists(),
        "the database was touched before the certificate was checked"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn carebill_serve_refuses_to_start_on_an_unsound_certificate() {
    // Goal: `carebill serve` without a certificate, or with one that is expired, not yet
    // valid, missing, or whose key does not match, exits with an error naming the problem and
    // the file, before touching the database.
    let dir = temp_dir("carebill-tls-bad-");
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let now = SystemTime::now();
    let expired = issue_between(now - days(30), now - days(1));
    let future = issue_between(now + days(2), now + days(30));
    let (a, b) = (issue(), issue());
    let expired_cert = write("expired.pem", &expired.cert_pem);
    let expired_key = write("expired.key", &expired.key_pem);
    let future_cert = write("future.pem", &future.cert_pem);
    let future_key = write("future.key", &future.key_pem);
    let a_cert = write("a.pem", &a.cert_pem);
    let b_key = write("b.key", &b.key_pem);
    let missing = dir.path().join("missing.pem");

    let err = serve_refuses(&[]).await;
    assert!(
        err.contains("HTTPS only")
            && err.contains("CAREBILL_TLS_CERT")
            && err.contains("CAREBILL_TLS_KEY"),
        "{err}"
    );
    let err = serve_refuses(&[
        ("CAREBILL_TLS_CERT", &expired_cert),
        ("CAREBILL_TLS_KEY", &expired_key),
    ])
    .await;
    assert!(
        err.contains("expired.pem") && err.contains("expired on"),
        "{err}"
    );
    let err = serve_refuses(&[
        ("CAREBILL_TLS_CERT", &future_cert),
        ("CAREBILL_TLS_KEY", &future_key),
    ])
    .await;
    assert!(
        err.contains("future.pem") && err.contains("not valid before"),
        "{err}"
    );
    let err = serve_refuses(&[("CAREBILL_TLS_CERT", &a_cert), ("CAREBILL_TLS_KEY", &b_key)]).await;
    assert!(
        err.contains("b.key") && err.contains("a.pem") && err.contains("does not match"),
        "{err}"
    );
    assert!(!err.contains("PRIVATE KEY"), "no key material: {err}");
    let err = serve_refuses(&[
        ("CAREBILL_TLS_CERT", &missing),
        ("CAREBILL_TLS_KEY", &b_key),
    ])
    .await;
    assert!(
        err.contains("missing.pem") && err.contains("No such file"),
        "{err}"
    );
}
