//! Test harness: every test starts the real server on port 0 with its own fresh database
//! (a new SQLite file, or a new PostgreSQL database) and drives it over HTTPS, as production
//! serves: the server presents a certificate of a development CA made once per test binary
//! ([`test_tls`]), and the clients ([`https_client`], [`api_client`], `TestApp::admin`) trust
//! that CA and nothing else.
//!
//! `both_backends!` turns one async test body into two tests, `sqlite` and `postgres`; its
//! `spawn = …` form starts the app another way (e.g. [`TestApp::spawn_with_vault`], which also
//! starts a real card vault process, `tokenizer serve`, wired to billing over mutual TLS).
//! PostgreSQL is found at `CAREBILL_TEST_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`), a role allowed to create databases.
//!
//! With `CAREBILL_TEST_ARTIFACTS` naming a directory, everything the tests make is kept there
//! for the card-data scan at the end of the suite (`.ci/run`); see [`artifacts_dir`].
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;

use carebill::auth::{create_api_key, Role};
pub use carebill::client::{id_of, ApiClient};
use carebill::config::Config;
use carebill::db::{Backend, Db};
use carebill::server::Running;
pub use serde_json::{json, Value};

/// Where a CI run keeps every database, dump and log the tests make, so that a card-number scan
/// can go over all of them once the whole suite has run (`.ci/run`): the directory
/// `CAREBILL_TEST_ARTIFACTS` names. Unset, the tests remove what they made, as always.
///
/// What billing's tests leave there (the vault's own tests add `vault-*/`, `cb_test_vault_*.sql`
/// and `<test binary>-<pid>.log`):
/// - `carebill-db-*/carebill.db`: each SQLite billing database;
/// - `cb_test_*.sql`: each PostgreSQL billing database, `pg_dump --data-only`'d before it is
///   dropped;
/// - `carebill-vault-*/`: each vault process a test ran (`tokenizer serve`): its database
///   `vault/tokenizer.db`, its log `vault/tokenizer.log` (JSON, debug level), certificates and
///   KEK components;
/// - `carebill-silent-vault-*/`: the certificates of each [`SilentVault`];
/// - `carebill-tests-<test binary>-<pid>.log`: the in-process servers' (and the tests') logs,
///   JSON, debug level;
/// - `carebill-serve-*.log`: the logs of `carebill serve` child processes, JSON, debug level.
pub fn artifacts_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("CAREBILL_TEST_ARTIFACTS")?);
    std::fs::create_dir_all(&dir).expect("create the CAREBILL_TEST_ARTIFACTS directory");
    Some(dir)
}

/// With artifacts kept, the logs of this test binary (the servers [`TestApp`] runs in-process
/// install no subscriber of their own) go to a file there: debug level, JSON. Once per binary.
pub fn init_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Some(dir) = artifacts_dir() {
            let exe = std::env::current_exe().unwrap();
            let name = exe.file_name().unwrap().to_string_lossy().into_owned();
            let path = dir.join(format!("carebill-tests-{name}-{}.log", std::process::id()));
            let file = std::fs::File::create(&path).unwrap();
            let _ = tracing_subscriber::fmt()
                .json()
                .with_max_level(tracing::Level::DEBUG)
                .with_writer(std::sync::Mutex::new(file))
                .try_init();
        }
    });
}

/// A temporary directory named `prefix…`: inside the artifacts directory, and kept, when there
/// is one; otherwise a usual one, removed when dropped.
pub fn temp_dir(prefix: &str) -> tempfile::TempDir {
    match artifacts_dir() {
        Some(dir) => tempfile::Builder::new()
            .prefix(prefix)
            .disable_cleanup(true)
            .tempdir_in(dir)
            .expect("tempdir in the artifacts directory"),
        None => tempfile::tempdir().expect("tempdir"),
    }
}

/// `RUST_LOG` and stderr for a `carebill` child process: as the test asks (`level`, output
/// discarded) normally; with artifacts, debug level into a new `carebill-serve-*.log` there.
pub fn child_logging(level: &str) -> (String, Stdio) {
    match artifacts_dir() {
        Some(dir) => {
            let (file, _path) = tempfile::Builder::new()
                .prefix("carebill-serve-")
                .suffix(".log")
                .tempfile_in(dir)
                .expect("log file in the artifacts directory")
                .keep()
                .expect("keep the log file");
            ("debug".to_owned(), Stdio::from(file))
        }
        None => (level.to_owned(), Stdio::null()),
    }
}

/// The keyring of the billing processes a test starts itself (`carebill serve`): one per test
/// binary, so a restarted process opens what the previous one encrypted.
pub fn test_keyring() -> &'static str {
    static KEYRING: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    KEYRING.get_or_init(|| carebill::crypto::LocalKeyring::generate_text().to_string())
}

/// The TLS material of this test binary: a development CA and a server certificate for
/// `localhost`/`127.0.0.1` it issued, written once (under Cargo's `CARGO_TARGET_TMPDIR`, or the
/// artifacts directory) and used by every server the binary starts. Tests that rotate or break
/// a certificate write their own files (issued by the same [`TestTls::ca`]), never these.
pub struct TestTls {
    pub ca: devcerts::Ca,
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca_pem: Vec<u8>,
}

pub fn test_tls() -> &'static TestTls {
    static TLS: std::sync::OnceLock<TestTls> = std::sync::OnceLock::new();
    TLS.get_or_init(|| {
        let parent = artifacts_dir().unwrap_or_else(|| {
            // Cargo's scratch directory for tests: earlier runs' TLS directories are removed
            // once an hour old (no test binary runs that long).
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
            let stale = |e: &std::fs::DirEntry| {
                e.file_name().to_string_lossy().starts_with("carebill-tls-")
                    && e.metadata()
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age > std::time::Duration::from_secs(3600))
            };
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if stale(&entry) {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
            dir
        });
        let dir = tempfile::Builder::new()
            .prefix("carebill-tls-")
            .tempdir_in(parent)
            .expect("TLS directory")
            .keep();
        let ca = devcerts::Ca::new("carebill test CA").expect("test CA");
        let server = ca
            .server_cert(devcerts::BILLING_SERVER_NAMES)
            .expect("server certificate");
        let tls = TestTls {
            ca_cert: dir.join("ca.pem"),
            cert: dir.join("billing.pem"),
            key: dir.join("billing.key"),
            ca_pem: ca.cert_pem().as_bytes().to_vec(),
            ca,
        };
        std::fs::write(&tls.ca_cert, &tls.ca_pem).unwrap();
        std::fs::write(&tls.cert, &server.cert_pem).unwrap();
        devcerts::write_private(&tls.key, &server.key_pem).unwrap();
        tls
    })
}

/// `CAREBILL_TLS_CERT` and `CAREBILL_TLS_KEY` for a `carebill serve` child process.
pub fn tls_env() -> [(&'static str, PathBuf); 2] {
    let tls = test_tls();
    [
        ("CAREBILL_TLS_CERT", tls.cert.clone()),
        ("CAREBILL_TLS_KEY", tls.key.clone()),
    ]
}

/// An HTTPS-only client trusting the test CA only (one per test: a client's connection pool
/// belongs to the runtime that made it).
pub fn https_client() -> reqwest::Client {
    carebill::client::https_client(&test_tls().ca_pem).expect("HTTPS client")
}

/// An API client for `base` with `key`, trusting the test CA only.
pub fn api_client(base: &str, key: &str) -> ApiClient {
    ApiClient::with_http(base, key, https_client())
}

pub fn pg_admin_url() -> String {
    std::env::var("CAREBILL_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A fresh database URL for `backend` and what to remove afterwards.
pub async fn fresh_database(backend: Backend) -> (String, Cleanup) {
    init_logging();
    match backend {
        Backend::Sqlite => {
            let dir = temp_dir("carebill-db-");
            let url = format!("sqlite://{}/carebill.db", dir.path().display());
            (url, Cleanup::Dir(dir))
        }
        Backend::Postgres => {
            let name = format!(
                "cb_test_{}",
                carebill::ids::random_base62(12).to_lowercase()
            );
            let admin = Db::connect(&pg_admin_url())
                .await
                .expect("connect to PostgreSQL admin URL");
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&admin.pool)
                .await
                .expect("create test database");
            admin.pool.close().await;
            let base = pg_admin_url()
                .rsplit_once('/')
                .map(|(b, _)| b.to_owned())
                .unwrap();
            (format!("{base}/{name}"), Cleanup::PgDatabase(name))
        }
    }
}

pub enum Cleanup {
    Dir(tempfile::TempDir),
    PgDatabase(String),
}

impl Cleanup {
    /// Removes the database (a SQLite directory in the artifacts directory is kept); with
    /// artifacts, a PostgreSQL database is dumped there (data only) first.
    pub async fn run(self) {
        if let Cleanup::PgDatabase(name) = self {
            let dumped = match artifacts_dir() {
                Some(dir) => {
                    let base = pg_admin_url()
                        .rsplit_once('/')
                        .map(|(b, _)| b.to_owned())
                        .unwrap();
                    let status = tokio::process::Command::new("pg_dump")
                        .arg("--data-only")
                        .arg("--file")
                        .arg(dir.join(format!("{name}.sql")))
                        .arg(format!("{base}/{name}"))
                        .stdin(Stdio::null())
                        .status()
                        .await;
                    Some(status)
                }
                None => None,
            };
            if let Ok(admin) = Db::connect(&pg_admin_url()).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&admin.pool)
                    .await;
                admin.pool.close().await;
            }
            if let Some(status) = dumped {
                let ok = status.as_ref().is_ok_and(|s| s.success());
                assert!(ok, "pg_dump {name} for the artifacts: {status:?}");
            }
        }
    }
}

/// A running server with an API key per role.
pub struct TestApp {
    pub backend: Backend,
    pub base: String,
    pub db: Db,
    /// The billing office's client: a `billing_manager` service key (see `spawn_with`).
    pub admin: ApiClient,
    pub keys: HashMap<&'static str, String>,
    /// The card vault billing is configured with, when started by [`TestApp::spawn_with_vault`].
    pub vault: Option<TestVault>,
    /// The unanswering "vault" of [`TestApp::spawn_with_silent_vault`].
    pub silent_vault: Option<SilentVault>,
    running: Running,
    cleanup: Option<Cleanup>,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> TestApp {
        Self::spawn_with(backend, |_| {}).await
    }

    pub async fn spawn_with(backend: Backend, adjust: impl FnOnce(&mut Config)) -> TestApp {
        let (url, cleanup) = fresh_database(backend).await;
        let tls = test_tls();
        let mut config = Config {
            database_url: url,
            addr: "127.0.0.1:0".to_owned(),
            tls_cert: Some(tls.cert.clone()),
            tls_key: Some(tls.key.clone()),
            // Tests fire retries in tight loops (duplicate storms, races) with one key; the
            // per-caller rate limit has its own test, which lowers this.
            api_requests_per_second: 1_000_000,
            // Each app its own keyring: health data is encrypted in every test.
            keyring_inline: Some(std::sync::Arc::new(
                carebill::crypto::LocalKeyring::generate_text(),
            )),
            ..Config::default()
        };
        adjust(&mut config);
        let state = carebill::server::prepare(config)
            .await
            .expect("prepare server");
        let mut keys = HashMap::new();
        for (name, role) in [
            ("admin", Role::Admin),
            ("front_desk", Role::FrontDesk),
            ("billing_clerk", Role::BillingClerk),
            ("billing_manager", Role::BillingManager),
            ("accountant", Role::Accountant),
            ("auditor", Role::Auditor),
        ] {
            keys.insert(
                name,
                create_api_key(&state.db, role)
                    .await
                    .expect("api key")
                    .secret,
            );
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind port 0");
        let db = state.db.clone();
        let running = carebill::server::spawn(state, listener).expect("spawn");
        let base = format!("https://{}", running.addr);
        // The tests' main client works the billing office's whole day (patients, bills,
        // payments, refunds, the ledger): the billing manager. (The `admin` role manages users
        // and keys and reads no health or payment data; `as_role("admin")` is that.)
        let admin = api_client(&base, &keys["billing_manager"]);
        TestApp {
            backend,
            base,
            db,
            admin,
            keys,
            vault: None,
            silent_vault: None,
            running,
            cleanup: Some(cleanup),
        }
    }

    /// A server whose vault client talks to a fresh real vault process.
    pub async fn spawn_with_vault(backend: Backend) -> TestApp {
        let vault = TestVault::start().await;
        let mut app = Self::spawn_with(backend, |c| vault.child.configure(c)).await;
        app.vault = Some(vault);
        app
    }

    /// A server whose vault URL leads to a [`SilentVault`], with a vault timeout of
    /// `timeout_ms`.
    pub async fn spawn_with_silent_vault(backend: Backend, timeout_ms: u64) -> TestApp {
        let silent = SilentVault::start().await;
        let mut app = Self::spawn_with(backend, |c| {
            c.vault_url = Some(format!("https://{}", silent.addr));
            c.vault_ca = Some(silent.pki.ca_cert.clone());
            c.vault_client_cert = Some(silent.pki.billing_client_cert.clone());
            c.vault_client_key = Some(silent.pki.billing_client_key.clone());
            c.vault_timeout_ms = timeout_ms;
        })
        .await;
        app.silent_vault = Some(silent);
        app
    }

    pub fn vault(&self) -> &TestVault {
        self.vault.as_ref().expect("this app has no vault")
    }

    pub fn vault_mut(&mut self) -> &mut TestVault {
        self.vault.as_mut().expect("this app has no vault")
    }

    /// This app's keyring, for a process (`carebill export`, a restarted server) that opens the
    /// same database.
    pub fn keyring(&self) -> String {
        self.state()
            .config
            .keyring_inline
            .as_ref()
            .expect("test apps have an inline keyring")
            .to_string()
    }

    /// The running server: its listeners' addresses and the certificate in service.
    pub fn running(&self) -> &Running {
        &self.running
    }

    /// The server's state (database, config, processor), for tests that call library code.
    pub fn state(&self) -> &carebill::AppState {
        &self.running.state
    }

    /// A client acting with `role`'s key.
    pub fn as_role(&self, role: &str) -> ApiClient {
        self.admin.with_key(&self.keys[role])
    }

    /// Asserts every ledger invariant holds (re-derived from the raw rows).
    pub async fn assert_ledger_sound(&self) {
        let violations = carebill::ledger::invariants::verify(&self.db)
            .await
            .expect("verify");
        assert!(
            violations.is_empty(),
            "ledger invariants violated on {:?}: {violations:#?}",
            self.backend
        );
    }

    /// Number of rows in `table`.
    pub async fn count(&self, table: &str) -> i64 {
        let row = sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table}"))
            .fetch_one(&self.db.pool)
            .await
            .unwrap();
        sqlx::Row::try_get(&row, "n").unwrap()
    }

    pub async fn finish(mut self) {
        if let Some(mut vault) = self.vault.take() {
            vault.child.stop().await;
        }
        self.running.handle.abort();
        self.db.pool.close().await;
        if let Some(c) = self.cleanup.take() {
            c.run().await;
        }
    }

    // ---- fixtures, made through the API ----

    pub async fn patient(&self) -> String {
        let p = self
            .admin
            .create("/v1/patients", &json!({"name": "Test Patient", "date_of_birth": "1980-02-29", "email": "t@example.org"}))
            .await
            .unwrap();
        id_of(&p).unwrap()
    }

    /// A finalized invoice of `total` minor units (one line) for a new patient.
    pub async fn open_invoice(&self, currency: &str, total: i64) -> Value {
        let patient = self.patient().await;
        self.open_invoice_for(&patient, currency, total).await
    }

    pub async fn open_invoice_for(&self, patient: &str, currency: &str, total: i64) -> Value {
        let inv = self.draft_invoice_for(patient, currency, total).await;
        self.admin
            .create(
                &format!("/v1/invoices/{}/finalize", id_of(&inv).unwrap()),
                &json!({}),
            )
            .await
            .unwrap()
    }

    pub async fn draft_invoice_for(&self, patient: &str, currency: &str, total: i64) -> Value {
        self.admin
            .create(
                "/v1/invoices",
                &json!({"patient": patient, "currency": currency, "due_date": "2030-01-31",
                    "lines": [{"service_date": "2026-01-15", "code": "99213", "description": "Office visit", "quantity": 1, "unit_amount": total}]}),
            )
            .await
            .unwrap()
    }

    /// A succeeded payment of `amount` on `invoice`.
    pub async fn pay(&self, invoice: &Value, amount: i64) -> Value {
        let body = json!({"invoice": invoice["id"], "amount": amount, "currency": invoice["currency"], "payment_method": "pm_card_visa"});
        let p = self.admin.create("/v1/payments", &body).await.unwrap();
        assert_eq!(p["status"], "succeeded", "{p}");
        p
    }
}

/// A real card vault: `tokenizer serve` as a child process (killed when dropped) over its own
/// SQLite file, with development certificates and KEK components in a temporary directory, both
/// listeners on free ports. The binary is found next to the test executable's directory
/// (`target/debug/tokenizer`; `cargo build` at the root builds it) or at
/// `CAREBILL_TOKENIZER_BIN`.
pub struct TestVault {
    pub dir: tempfile::TempDir,
    pub spec: carebill::demo::VaultSpec,
    pub child: carebill::demo::VaultChild,
    pub database_url: String,
    /// A browser posting the card form: trusts the development CA, no client certificate.
    pub browser: reqwest::Client,
    /// Billing's identity (the allowlisted client certificate), for calls the tests make
    /// directly (deleting a card).
    pub billing: reqwest::Client,
}

impl TestVault {
    pub async fn start() -> TestVault {
        init_logging();
        let dir = temp_dir("carebill-vault-");
        let binary = carebill::demo::tokenizer_binary().expect(
            "the tokenizer binary (run `cargo build -p tokenizer` or `cargo build` at the root)",
        );
        let pki = devcerts::ensure_dev_pki(&dir.path().join("certs")).expect("dev PKI");
        let database_url = format!("sqlite://{}/vault/tokenizer.db", dir.path().display());
        let key_components =
            carebill::demo::ensure_vault_keys(&binary, &database_url, &dir.path().join("keys"))
                .await
                .expect("tokenizer keys init");
        let spec = carebill::demo::VaultSpec {
            binary,
            database_url: database_url.clone(),
            key_components,
            pki: pki.clone(),
            collect_addr: "127.0.0.1:0".to_owned(),
            internal_addr: "127.0.0.1:0".to_owned(),
            cors_origins: Vec::new(),
            log: dir.path().join("vault/tokenizer.log"),
            extra_env: {
                let mut env = vec![
                    ("TOKENIZER_RATE_PER_ADDRESS".to_owned(), "10000".to_owned()),
                    ("TOKENIZER_RATE_GLOBAL".to_owned(), "100000".to_owned()),
                ];
                if artifacts_dir().is_some() {
                    env.push(("TOKENIZER_LOG".to_owned(), "debug".to_owned()));
                }
                env
            },
        };
        let child = carebill::demo::VaultChild::start(&spec)
            .await
            .expect("start tokenizer serve");
        let browser = carebill::demo::collect_client(&pki.ca_cert).expect("collect client");
        let identity = format!(
            "{}{}",
            std::fs::read_to_string(&pki.billing_client_cert).unwrap(),
            std::fs::read_to_string(&pki.billing_client_key).unwrap()
        );
        let billing = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(&std::fs::read(&pki.ca_cert).unwrap()).unwrap(),
            )
            .identity(reqwest::Identity::from_pem(identity.as_bytes()).unwrap())
            .https_only(true)
            .timeout(std::time::Duration::from_secs(20))
            .build()
            .unwrap();
        TestVault {
            dir,
            spec,
            child,
            database_url,
            browser,
            billing,
        }
    }

    /// Posts the card form to the collect listener; returns status and body.
    pub async fn tokenize(&self, card: Value) -> (u16, Value) {
        let response = self
            .browser
            .post(format!("{}/v1/cards", self.child.collect_url))
            .json(&card)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Tokenizes a valid test card (expiring 12/2030) and returns its token.
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

    /// Deletes a card at the vault (as billing may).
    pub async fn delete(&self, token: &str) {
        let response = self
            .billing
            .delete(format!("{}/v1/cards/{token}", self.child.internal_url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
    }

    /// Rows of the vault's audit trail for `action` (e.g. `charge_method`), oldest first:
    /// (token, outcome, request id).
    pub async fn audit(&self, action: &str) -> Vec<(Option<String>, String, Option<String>)> {
        let db = carebill::db::Db::connect(&self.database_url).await.unwrap();
        let rows = sqlx::query(
            "SELECT token, outcome, request_id FROM audit_log WHERE action = $1 ORDER BY seq",
        )
        .bind(action)
        .fetch_all(&db.pool)
        .await
        .unwrap();
        db.pool.close().await;
        rows.iter()
            .map(|r| {
                use sqlx::Row;
                (
                    r.try_get("token").unwrap(),
                    r.try_get("outcome").unwrap(),
                    r.try_get("request_id").unwrap(),
                )
            })
            .collect()
    }

    /// Kills the vault process (billing keeps pointing at its address).
    pub async fn kill(&mut self) {
        self.child.stop().await;
    }

    /// Starts the vault again on the same database, keys and ports.
    pub async fn restart(&mut self) {
        self.child.stop().await;
        let port = |url: &str| url.rsplit(':').next().unwrap().to_owned();
        let mut spec = self.spec.clone();
        spec.collect_addr = format!("127.0.0.1:{}", port(&self.child.collect_url));
        spec.internal_addr = format!("127.0.0.1:{}", port(&self.child.internal_url));
        self.child = carebill::demo::VaultChild::start(&spec)
            .await
            .expect("restart tokenizer serve");
    }
}

/// A "vault" that accepts TCP connections and never says a word (not even its half of the TLS
/// handshake), holding every connection open.
pub struct SilentVault {
    pub addr: std::net::SocketAddr,
    /// Connections accepted so far.
    pub accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Certificates for billing's client configuration (the silent vault never checks them).
    pub pki: devcerts::DevPki,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl SilentVault {
    pub async fn start() -> SilentVault {
        init_logging();
        let dir = temp_dir("carebill-silent-vault-");
        let pki = devcerts::ensure_dev_pki(&dir.path().join("certs")).expect("dev PKI");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(socket);
            }
        });
        SilentVault {
            addr,
            accepted,
            pki,
            _dir: dir,
            task,
        }
    }
}

impl Drop for SilentVault {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn new_key() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Runs an async test body once per backend, as two `#[tokio::test]`s in a module.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                let app = $crate::common::TestApp::spawn(carebill::db::Backend::Sqlite).await;
                let app = ($body)(app).await;
                $crate::common::TestApp::finish(app).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                let app = $crate::common::TestApp::spawn(carebill::db::Backend::Postgres).await;
                let app = ($body)(app).await;
                $crate::common::TestApp::finish(app).await;
            }
        }
    };
    // `spawn = f`: the app is `f(backend).await` (e.g. `TestApp::spawn_with_vault`).
    ($name:ident, spawn = $spawn:expr, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                let app = ($spawn)(carebill::db::Backend::Sqlite).await;
                let app = ($body)(app).await;
                $crate::common::TestApp::finish(app).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                let app = ($spawn)(carebill::db::Backend::Postgres).await;
                let app = ($body)(app).await;
                $crate::common::TestApp::finish(app).await;
            }
        }
    };
}
