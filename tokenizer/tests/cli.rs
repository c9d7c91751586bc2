//! The `tokenizer` binary as operators run it: key custody commands, a start refused without
//! the custodians, security events in the log, a re-encryption killed mid-run and resumed,
//! the audit check and the card-number scan.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tokenizer");

fn tokenizer(db_url: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env("TOKENIZER_DATABASE_URL", db_url)
        .env_remove("TOKENIZER_KEY_COMPONENTS");
    cmd
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{:?} failed: {}{}",
        cmd,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn components_arg(dir: &Path) -> String {
    format!(
        "{},{}",
        dir.join("keys/kek-component-1.txt").display(),
        dir.join("keys/kek-component-2.txt").display()
    )
}

#[test]
fn serve_refuses_without_every_custodian_and_logs_refused_clients() {
    let dir = test_dir();
    let db_url = format!("sqlite://{}/vault.db", dir.path().display());
    let out = run_ok(
        tokenizer(&db_url)
            .args(["keys", "init", "--out-dir"])
            .arg(dir.path().join("keys")),
    );
    assert!(out.contains("kek-component-2.txt"), "{out}");
    let text = std::fs::read_to_string(dir.path().join("keys/kek-component-1.txt")).unwrap();
    assert!(text.contains("component:") && text.contains("kcv:"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("keys/kek-component-1.txt"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "a key component is readable by others");
    }

    let ca = devcerts::Ca::new("cli test CA").unwrap();
    let server = ca.server_cert(&["localhost", "127.0.0.1"]).unwrap();
    std::fs::write(dir.path().join("vault.pem"), &server.cert_pem).unwrap();
    std::fs::write(dir.path().join("vault.key"), &server.key_pem).unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
    let serve = |components: &str| {
        let mut cmd = tokenizer(&db_url);
        cmd.arg("serve")
            .env("TOKENIZER_KEY_COMPONENTS", components)
            .env("TOKENIZER_COLLECT_ADDR", "127.0.0.1:0")
            .env("TOKENIZER_INTERNAL_ADDR", "127.0.0.1:0")
            .env("TOKENIZER_TLS_CERT", dir.path().join("vault.pem"))
            .env("TOKENIZER_TLS_KEY", dir.path().join("vault.key"))
            .env("TOKENIZER_CLIENT_CA", dir.path().join("ca.pem"))
            .env("TOKENIZER_CLIENT_ALLOWLIST", "carebill-billing");
        cmd
    };

    // One custodian alone cannot start the vault.
    let one = dir
        .path()
        .join("keys/kek-component-1.txt")
        .display()
        .to_string();
    let out = serve(&one).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs 2"), "{err}");

    // Both: it starts and says where it listens.
    let log = dir.path().join("vault.log");
    let mut child = serve(&components_arg(dir.path()))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("tokenizer listening"), "{line}");
    let internal = line
        .split("internal=https://")
        .nth(1)
        .unwrap()
        .trim()
        .to_owned();
    let port = internal.rsplit(':').next().unwrap().to_owned();

    // A client without a certificate is refused in the handshake and logged as a security event.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let anonymous = client_with(&ca, None);
        let r = anonymous
            .get(format!("https://localhost:{port}/healthz"))
            .send()
            .await;
        assert!(r.is_err());
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("tls_handshake_refused") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no security event logged: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("vault.db"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the vault database is readable by others");
    }
    let out = run_ok(tokenizer(&db_url).args(["keys", "list"]));
    assert!(out.contains("pan") && out.contains("primary"), "{out}");
    let out = run_ok(tokenizer(&db_url).args(["audit", "verify"]));
    assert!(out.contains("audit trail intact"), "{out}");
    if artifacts_dir().is_some() {
        let _ = dir.keep();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reencryption_killed_mid_run_resumes_and_loses_nothing() {
    let vault = Vault::start(tokenizer::db::Backend::Sqlite).await;
    let mut tokens = Vec::new();
    for i in 0..300u32 {
        let body = format!("510000000{:06}", i);
        let number = (0..10u8)
            .map(|c| format!("{body}{c}"))
            .find(|n| {
                let d: Vec<u8> = n.bytes().map(|b| b - b'0').collect();
                tokenizer::card::luhn_valid(&d)
            })
            .unwrap();
        tokens.push((vault.token_for(&number).await, number));
    }
    let components = vault
        .components
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(",");
    run_ok(
        tokenizer(&vault.db_url)
            .args(["keys", "rotate"])
            .env("TOKENIZER_KEY_COMPONENTS", &components),
    );

    // Batches of one, killed as soon as some (not all) cards moved.
    let mut child = tokenizer(&vault.db_url)
        .args(["keys", "reencrypt", "--batch-size", "1"])
        .env("TOKENIZER_KEY_COMPONENTS", &components)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let moved = vault
            .count("SELECT COUNT(*) FROM cards WHERE key_version = 2")
            .await;
        if moved >= 20 {
            break;
        }
        assert!(Instant::now() < deadline, "re-encryption made no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let left = vault
        .count("SELECT COUNT(*) FROM cards WHERE key_version = 1")
        .await;
    assert!(
        left > 0,
        "the run finished before it was killed; nothing was interrupted"
    );

    let out = run_ok(
        tokenizer(&vault.db_url)
            .args(["keys", "reencrypt", "--batch-size", "50"])
            .env("TOKENIZER_KEY_COMPONENTS", &components),
    );
    assert!(out.contains("0 still under an older key"), "{out}");
    assert_eq!(
        vault
            .count("SELECT COUNT(*) FROM cards WHERE key_version = 1")
            .await,
        0
    );
    // Every card is intact and still finds its own token.
    for (token, number) in tokens.iter().step_by(7) {
        assert_eq!(&vault.token_for(number).await, token);
        let (status, _) = vault
            .internal(
                reqwest::Method::POST,
                &format!("/v1/cards/{token}/charge-method"),
            )
            .await;
        assert_eq!(status, 200);
    }
    run_ok(tokenizer(&vault.db_url).args(["keys", "retire", "--version", "1"]));
    let out = run_ok(tokenizer(&vault.db_url).args(["audit", "verify"]));
    assert!(out.contains("audit trail intact"), "{out}");
    vault.finish().await;
}

#[test]
fn pan_scan_finds_a_planted_card_number() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("clean.log"),
        "req_4242424242424242 paid 2026-11-28T19:00:00Z\n",
    )
    .unwrap();
    let clean = Command::new(BIN)
        .arg("pan-scan")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        clean.status.success(),
        "{}",
        String::from_utf8_lossy(&clean.stdout)
    );
    std::fs::write(dir.path().join("leak.log"), "card=4000 0566 5566 5556;\n").unwrap();
    let leak = Command::new(BIN)
        .arg("pan-scan")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(leak.status.code(), Some(1));
    let out = String::from_utf8_lossy(&leak.stdout);
    assert!(
        out.contains("leak.log") && out.contains("ending 5556"),
        "{out}"
    );
    assert!(
        !out.contains("4000 0566"),
        "the scan repeated the number: {out}"
    );
}
