//! Test harness: every test starts the real server on port 0 with its own fresh database
//! (a new SQLite file, or a new PostgreSQL database) and drives it over HTTP.
//!
//! `both_backends!` turns one async test body into two tests, `sqlite` and `postgres`.
//! PostgreSQL is found at `CAREBILL_TEST_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`), a role allowed to create databases.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;

use carebill::auth::{create_api_key, Role};
pub use carebill::client::{id_of, ApiClient};
use carebill::config::Config;
use carebill::db::{Backend, Db};
use carebill::server::Running;
pub use serde_json::{json, Value};

pub fn pg_admin_url() -> String {
    std::env::var("CAREBILL_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A fresh database URL for `backend` and what to remove afterwards.
pub async fn fresh_database(backend: Backend) -> (String, Cleanup) {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("tempdir");
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
    pub async fn run(self) {
        if let Cleanup::PgDatabase(name) = self {
            if let Ok(admin) = Db::connect(&pg_admin_url()).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&admin.pool)
                    .await;
                admin.pool.close().await;
            }
        }
    }
}

/// A running server with an API key per role.
pub struct TestApp {
    pub backend: Backend,
    pub base: String,
    pub db: Db,
    /// Client with the `admin` role.
    pub admin: ApiClient,
    pub keys: HashMap<&'static str, String>,
    running: Running,
    cleanup: Option<Cleanup>,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> TestApp {
        Self::spawn_with(backend, |_| {}).await
    }

    pub async fn spawn_with(backend: Backend, adjust: impl FnOnce(&mut Config)) -> TestApp {
        let (url, cleanup) = fresh_database(backend).await;
        let mut config = Config {
            database_url: url,
            addr: "127.0.0.1:0".to_owned(),
            ..Config::default()
        };
        adjust(&mut config);
        let state = carebill::server::prepare(config)
            .await
            .expect("prepare server");
        let mut keys = HashMap::new();
        for (name, role) in [
            ("admin", Role::Admin),
            ("billing_clerk", Role::BillingClerk),
            ("billing_manager", Role::BillingManager),
            ("accountant", Role::Accountant),
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
        let base = format!("http://{}", running.addr);
        let admin = ApiClient::new(&base, &keys["admin"]);
        TestApp {
            backend,
            base,
            db,
            admin,
            keys,
            running,
            cleanup: Some(cleanup),
        }
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
}
