//! Vault test harness: each test starts a real vault (both TLS listeners, on port 0) over its
//! own fresh database — a new SQLite file, or a new PostgreSQL database — with its own dev CA,
//! KEK components and keys, and talks to it with real HTTPS clients: a browser-like one for the
//! collect listener and billing's mutual-TLS one for the internal listener.
//!
//! `vault_test!` turns one async test body into two tests, `sqlite` and `postgres`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::Duration;

pub use serde_json::{json, Value};
use tokenizer::db::{Backend, Db};

/// Where a CI run keeps every database file, dump and log the tests make, so that a card-number
/// scan can go over all of them once the whole suite has run (`.ci/run`).
pub fn artifacts_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("CAREBILL_TEST_ARTIFACTS")?);
    std::fs::create_dir_all(&dir).unwrap();
    Some(dir)
}

/// With artifacts kept, the vault's logs (debug level, JSON) go to a file there.
fn init_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Some(dir) = artifacts_dir() {
            let exe = std::env::current_exe().unwrap();
            let name = exe.file_name().unwrap().to_string_lossy().into_owned();
            let file =
                std::fs::File::create(dir.join(format!("{name}-{}.log", std::process::id())))
                    .unwrap();
            let _ = tracing_subscriber::fmt()
                .json()
                .with_max_level(tracing::Level::DEBUG)
                .with_writer(std::sync::Mutex::new(file))
                .try_init();
        }
    });
}

pub fn test_dir() -> tempfile::TempDir {
    match artifacts_dir() {
        Some(dir) => tempfile::Builder::new()
            .prefix("vault-")
            .tempdir_in(dir)
            .unwrap(),
        None => tempfile::tempdir().unwrap(),
    }
}

pub fn pg_admin_url() -> String {
    std::env::var("CAREBILL_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Valid, unexpired test cards.
pub const VISA: &str = "4242424242424242";
pub const MASTERCARD: &str = "5555555555554444";
pub const AMEX: &str = "378282246310005";

pub struct Vault {
    pub backend: Backend,
    pub dir: tempfile::TempDir,
    pub db_url: String,
    pg_database: Option<String>,
    pub ca: devcerts::Ca,
    pub components: Vec<PathBuf>,
    pub config: tokenizer::Config,
    pub running: Option<tokenizer::Running>,
    /// A browser posting the card form (trusts the dev CA, no client certificate).
    pub browser: reqwest::Client,
    /// Billing: the allowlisted client certificate.
    pub billing: reqwest::Client,
}

pub fn client_with(ca: &devcerts::Ca, identity: Option<&devcerts::Issued>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .https_only(true)
        .timeout(Duration::from_secs(20))
        .add_root_certificate(reqwest::Certificate::from_pem(ca.cert_pem().as_bytes()).unwrap());
    if let Some(id) = identity {
        let pem = format!("{}{}", id.cert_pem, id.key_pem);
        builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

async fn fresh_database(backend: Backend, dir: &std::path::Path) -> (String, Option<String>) {
    match backend {
        Backend::Sqlite => (format!("sqlite://{}/vault.db", dir.display()), None),
        Backend::Postgres => {
            let name = format!("cb_test_vault_{}", uuid::Uuid::new_v4().simple());
            let admin = Db::connect(&pg_admin_url())
                .await
                .expect("connect to PostgreSQL");
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&admin.pool)
                .await
                .expect("create test database");
            admin.pool.close().await;
            let base = pg_admin_url()
                .rsplit_once('/')
                .map(|(b, _)| b.to_owned())
                .unwrap();
            (format!("{base}/{name}"), Some(name))
        }
    }
}

impl Vault {
    pub async fn start(backend: Backend) -> Vault {
        Vault::start_with(backend, |_| {}).await
    }

    pub async fn start_with(
        backend: Backend,
        adjust: impl FnOnce(&mut tokenizer::Config),
    ) -> Vault {
        init_logging();
        let dir = test_dir();
        let (db_url, pg_database) = fresh_database(backend, dir.path()).await;
        let ca = devcerts::Ca::new("vault test CA").unwrap();
        let server = ca.server_cert(&["localhost", "127.0.0.1"]).unwrap();
        let client = ca.client_cert(devcerts::BILLING_CLIENT_NAME).unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let tls_cert = write("vault.pem", &server.cert_pem);
        let tls_key = write("vault.key", &server.key_pem);
        let client_ca = write("ca.pem", ca.cert_pem());
        let db = tokenizer::db::connect(&db_url).await.unwrap();
        let components = tokenizer::keys::init(&db, 2, &dir.path().join("keys"))
            .await
            .unwrap();
        db.pool.close().await;
        let mut config = tokenizer::Config {
            database_url: db_url.clone(),
            collect_addr: "127.0.0.1:0".parse().unwrap(),
            internal_addr: "127.0.0.1:0".parse().unwrap(),
            tls_cert,
            tls_key,
            tls_reload_interval: Duration::from_secs(10),
            client_ca,
            client_allowlist: vec![devcerts::BILLING_CLIENT_NAME.to_owned()],
            key_components: components.clone(),
            cors_origins: vec!["https://portal.example.org".to_owned()],
            rate_per_address: 10_000,
            rate_global: 100_000,
            rate_window: Duration::from_secs(60),
            cvc_ttl: Duration::from_secs(600),
        };
        adjust(&mut config);
        let running = tokenizer::start(config.clone()).await.unwrap();
        let browser = client_with(&ca, None);
        let billing = client_with(&ca, Some(&client));
        Vault {
            backend,
            dir,
            db_url,
            pg_database,
            ca,
            components,
            config,
            running: Some(running),
            browser,
            billing,
        }
    }

    pub fn running(&self) -> &tokenizer::Running {
        self.running.as_ref().unwrap()
    }

    pub fn state(&self) -> &tokenizer::AppState {
        &self.running().state
    }

    pub fn db(&self) -> &Db {
        &self.running().state.db
    }

    pub fn collect_url(&self, path: &str) -> String {
        format!(
            "https://localhost:{}{path}",
            self.running().collect_addr.port()
        )
    }

    pub fn internal_url(&self, path: &str) -> String {
        format!(
            "https://localhost:{}{path}",
            self.running().internal_addr.port()
        )
    }

    /// Posts the card form; returns status and body.
    pub async fn tokenize(&self, card: Value) -> (u16, Value) {
        let response = self
            .browser
            .post(self.collect_url("/v1/cards"))
            .json(&card)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Tokenizes a valid card and returns its token.
    pub async fn token_for(&self, number: &str) -> String {
        // Codes no database or log holds by chance (`.ci/run` scans for every code the tests use).
        let cvc = if number.starts_with("37") {
            "0962"
        } else {
            "083"
        };
        let (status, body) = self
            .tokenize(json!({"number": number, "exp_month": 12, "exp_year": 2030, "cvc": cvc}))
            .await;
        assert!(status == 200 || status == 201, "{status} {body}");
        body["id"].as_str().unwrap().to_owned()
    }

    pub async fn internal(&self, method: reqwest::Method, path: &str) -> (u16, Value) {
        let response = self
            .billing
            .request(method, self.internal_url(path))
            .header("x-request-id", "req_test")
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.db().pool)
            .await
            .unwrap()
    }

    /// Stops the vault (keeping its database) and starts it again with the same config.
    pub async fn restart(&mut self) {
        self.running.take().unwrap().stop().await;
        let mut config = self.config.clone();
        config.collect_addr = "127.0.0.1:0".parse().unwrap();
        config.internal_addr = "127.0.0.1:0".parse().unwrap();
        self.running = Some(tokenizer::start(config).await.unwrap());
    }

    pub async fn finish(mut self) {
        if artifacts_dir().is_some() {
            // Kept for the scan at the end of the suite.
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
            let _ = dir.keep();
        }
        let verified = tokenizer::audit::verify(self.db()).await.unwrap();
        assert!(verified.rows > 0);
        if let Some(running) = self.running.take() {
            running.state.db.pool.close().await;
            running.stop().await;
        }
        if let Some(name) = self.pg_database.take() {
            if let Some(artifacts) = artifacts_dir() {
                let out = std::process::Command::new("pg_dump")
                    .arg("--data-only")
                    .arg("--file")
                    .arg(artifacts.join(format!("{name}.sql")))
                    .arg(&self.db_url)
                    .status()
                    .unwrap();
                assert!(out.success(), "pg_dump {name}");
            }
            let admin = Db::connect(&pg_admin_url()).await.unwrap();
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&admin.pool)
                .await;
            admin.pool.close().await;
        }
    }
}

/// Runs an async test body once per backend.
#[macro_export]
macro_rules! vault_test {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                let vault = $crate::common::Vault::start(tokenizer::db::Backend::Sqlite).await;
                let vault = ($body)(vault).await;
                $crate::common::Vault::finish(vault).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                let vault = $crate::common::Vault::start(tokenizer::db::Backend::Postgres).await;
                let vault = ($body)(vault).await;
                $crate::common::Vault::finish(vault).await;
            }
        }
    };
}
