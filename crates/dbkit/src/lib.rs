//! The database: one sqlx `Any` pool over PostgreSQL or SQLite, chosen by the URL.
//!
//! Both backends are first-class. Queries are written once in the SQL both dialects share
//! (`$1` placeholders work on both); where they differ (row locks, how a write transaction
//! starts) [`Backend`] says which form to use. Each process embeds its own migrations (one
//! directory per dialect) and passes them to [`Db::migrate`]; no two processes share a database.
//!
//! Write transactions go through [`Db::write`], which starts the transaction the way the
//! backend needs (SQLite: `BEGIN IMMEDIATE`, so the write lock is taken up front and two writers
//! never both read then both write) and retries serialization failures, deadlocks and
//! `SQLITE_BUSY` a bounded number of times with jittered backoff.

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::time::Duration;

use rand::Rng;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyPool, Executor, Transaction};

/// Attempts for one write transaction before the conflict is reported as a 503.
pub const WRITE_ATTEMPTS_MAX: u32 = 8;
/// Connections in the pool.
pub const POOL_CONNECTIONS_MAX: u32 = 32;
/// How long SQLite waits on a locked database before answering `SQLITE_BUSY`.
const SQLITE_BUSY_TIMEOUT_MS: u64 = 5_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    pub fn from_url(url: &str) -> anyhow::Result<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else {
            anyhow::bail!("the database URL must start with postgres:// or sqlite:")
        }
    }

    /// The row-lock suffix for a `SELECT` that reads rows the transaction will change.
    /// SQLite needs none: `BEGIN IMMEDIATE` already holds the database's write lock.
    pub fn for_update(self) -> &'static str {
        match self {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        }
    }
}

pub type Tx = Transaction<'static, Any>;

/// Whether a commit waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Every commit is on disk before it is acknowledged: all billing data.
    Full,
    /// Commits survive a crash of the process but not of the machine (PostgreSQL
    /// `synchronous_commit = off`, SQLite WAL with `synchronous = NORMAL`). Only for the
    /// processor simulator, which stands for a remote system whose durability is not ours.
    Relaxed,
}

/// The pool and the backend it talks to. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the URL: it may carry a password.
        f.debug_struct("Db")
            .field("backend", &self.backend)
            .finish()
    }
}

/// A write transaction body: gets the transaction, returns its result. Boxed so it can be
/// called again on retry.
pub type TxFuture<'t, T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 't>>;

impl Db {
    /// Connects, creating the SQLite file (and its directory) if needed.
    pub async fn connect(url: &str) -> anyhow::Result<Db> {
        Db::connect_with(url, Durability::Full, POOL_CONNECTIONS_MAX).await
    }

    /// Connects with the given durability and pool size.
    pub async fn connect_with(
        url: &str,
        durability: Durability,
        connections_max: u32,
    ) -> anyhow::Result<Db> {
        sqlx::any::install_default_drivers();
        let backend = Backend::from_url(url)?;
        let mut url = url.to_owned();
        if backend == Backend::Sqlite {
            if let Some(path) = sqlite_path(&url) {
                if let Some(parent) = std::path::Path::new(&path).parent() {
                    if !parent.as_os_str().is_empty() {
                        std::fs::create_dir_all(parent)?;
                    }
                }
            }
            if !url.contains("mode=") {
                url.push_str(if url.contains('?') {
                    "&mode=rwc"
                } else {
                    "?mode=rwc"
                });
            }
        }
        let options = AnyConnectOptions::from_str(&url)?;
        let pool = AnyPoolOptions::new()
            .max_connections(connections_max)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL for concurrent readers; synchronous=FULL so an acknowledged
                        // payment is on disk; foreign keys enforced; wait, don't fail, on locks.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute(match durability {
                            Durability::Full => "PRAGMA synchronous = FULL",
                            Durability::Relaxed => "PRAGMA synchronous = NORMAL",
                        })
                        .await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                        conn.execute(
                            format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}").as_str(),
                        )
                        .await?;
                    } else if durability == Durability::Relaxed {
                        conn.execute("SET synchronous_commit = off").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        Ok(Db { pool, backend })
    }

    /// Applies the migrations of this database's dialect.
    pub async fn migrate(
        &self,
        postgres: &sqlx::migrate::Migrator,
        sqlite: &sqlx::migrate::Migrator,
    ) -> anyhow::Result<()> {
        match self.backend {
            Backend::Postgres => postgres.run(&self.pool).await?,
            Backend::Sqlite => sqlite.run(&self.pool).await?,
        }
        Ok(())
    }

    /// Starts a write transaction in the backend's way.
    pub async fn begin_write(&self) -> Result<Tx, sqlx::Error> {
        match self.backend {
            Backend::Postgres => self.pool.begin().await,
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
        }
    }

    /// Runs `body` in a write transaction and commits it, retrying the whole body when the
    /// database reports a serialization failure, a deadlock or a busy lock, at most
    /// [`WRITE_ATTEMPTS_MAX`] times. `body` must have no effect outside the transaction.
    pub async fn write<T, E, F>(&self, mut body: F) -> Result<T, E>
    where
        F: for<'t> FnMut(&'t mut Tx) -> TxFuture<'t, T, E>,
        E: From<sqlx::Error> + RetryableError,
    {
        let mut attempt: u32 = 0;
        loop {
            attempt = attempt.saturating_add(1);
            let result = async {
                let mut tx = self.begin_write().await?;
                let value = body(&mut tx).await?;
                tx.commit().await?;
                Ok::<T, E>(value)
            }
            .await;
            match result {
                Err(e) if e.is_retryable() && attempt < WRITE_ATTEMPTS_MAX => {
                    let base_ms = 2_u64.saturating_pow(attempt.min(8));
                    let jitter_ms = rand::thread_rng().gen_range(0..=base_ms);
                    tracing::debug!(attempt, "write conflict; retrying");
                    tokio::time::sleep(Duration::from_millis(base_ms.saturating_add(jitter_ms)))
                        .await;
                }
                other => return other,
            }
        }
    }
}

/// Errors that can say whether they come from a transient database conflict.
pub trait RetryableError {
    fn is_retryable(&self) -> bool;
}

impl RetryableError for sqlx::Error {
    fn is_retryable(&self) -> bool {
        is_conflict(self)
    }
}

/// Serialization failure, deadlock (PostgreSQL) or busy/locked database (SQLite).
pub fn is_conflict(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code();
            let code = code.as_deref().unwrap_or("");
            // 40001 serialization_failure, 40P01 deadlock_detected (PostgreSQL);
            // 5 SQLITE_BUSY, 6 SQLITE_LOCKED and their extended codes (x + 256·n).
            matches!(code, "40001" | "40P01")
                || code
                    .parse::<i64>()
                    .map(|c| matches!(c % 256, 5 | 6))
                    .unwrap_or(false)
        }
        _ => false,
    }
}

/// Whether `e` is a unique-constraint violation (PostgreSQL 23505, SQLite 2067/1555).
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => matches!(
            db.code().as_deref(),
            Some("23505") | Some("2067") | Some("1555")
        ),
        _ => false,
    }
}

/// The file path of an `sqlite:` URL, if it names a file.
pub fn sqlite_path(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or("");
    if path.is_empty() || path == ":memory:" {
        None
    } else {
        Some(path.to_owned())
    }
}

/// Microseconds since the Unix epoch, the timestamp representation of every table.
pub fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// RFC 3339 (UTC, microsecond precision) for a stored timestamp.
pub fn us_to_rfc3339(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default()
}

/// Builds `$from, $from+1, …` placeholders for an `IN (…)` list of `n` values.
pub fn placeholders(from: usize, n: usize) -> String {
    (from..from.saturating_add(n))
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}
