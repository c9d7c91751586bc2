//! The keys at run time: the keyring checked against the database, data keys made, opened,
//! destroyed and re-wrapped (`data_keys`, `kek_versions`, `index_key`:
//! migrations/*/0004_keys.sql).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use sqlx::Row;
use zeroize::Zeroizing;

use super::field::DataKey;
use super::keyring::{KeyProvider, LocalKeyring};
use super::{CryptoError, IndexKey};
use crate::db::{now_us, Db, Tx};
use crate::error::{ApiError, ApiResult};
use crate::identity::events::{self, Event, Kind};

/// Where the keyring comes from.
#[derive(Clone)]
pub enum KeySource {
    File(PathBuf),
    Inline(Arc<Zeroizing<String>>),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::File(p) => write!(f, "KeySource::File({})", p.display()),
            KeySource::Inline(_) => f.write_str("KeySource::Inline([redacted])"),
        }
    }
}

impl KeySource {
    fn read(&self) -> anyhow::Result<LocalKeyring> {
        match self {
            KeySource::File(path) => LocalKeyring::read(path),
            KeySource::Inline(text) => {
                LocalKeyring::parse(text).map_err(|e| anyhow::anyhow!("CAREBILL_KEYRING: {e}"))
            }
        }
    }
}

/// A data key as found in the database.
#[derive(Debug)]
pub enum KeyState {
    Available(DataKey),
    /// Destroyed by an erasure: what it encrypted is gone for good.
    Erased,
    /// Present but it did not open (wrong KEK, altered wrap): a security event was recorded.
    Unreadable,
}

impl KeyState {
    /// `"available"`, `"erased"` or `"unreadable"`: how an API object says it.
    pub fn status(&self) -> &'static str {
        match self {
            KeyState::Available(_) => "available",
            KeyState::Erased => "erased",
            KeyState::Unreadable => "unreadable",
        }
    }

    pub fn key(&self) -> Option<&DataKey> {
        match self {
            KeyState::Available(k) => Some(k),
            _ => None,
        }
    }
}

/// The billing process's keys. Cheap to share (`Arc`).
pub struct Keys {
    source: KeySource,
    ring: RwLock<Arc<LocalKeyring>>,
    index: IndexKey,
    db: Db,
    /// System data keys, opened once (they are never destroyed).
    system: tokio::sync::Mutex<HashMap<String, DataKey>>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// System purposes with their own data key.
pub const SYS_TOTP: &str = "sys:totp";
pub const SYS_EXPORT_PSEUDONYMS: &str = "sys:export-pseudonyms";
pub const SYS_IDEMPOTENCY: &str = "sys:idempotency";

impl Keys {
    /// Reads the keyring and checks it against the database (registering versions the database
    /// has not seen). Refuses to start, with a message that says what to do, when the keyring is
    /// missing, malformed, or not the one this database's data was encrypted under.
    pub async fn open(source: Option<KeySource>, db: &Db) -> anyhow::Result<Arc<Keys>> {
        let source = source.ok_or_else(|| {
            anyhow::anyhow!(
                "no keyring: health data is stored encrypted and carebill will not start without \
                 its keys. Set CAREBILL_KEYRING_FILE (or `keyring_file`) to a keyring made with \
                 `carebill keys init --file PATH`, or CAREBILL_KEYRING to its contents"
            )
        })?;
        let ring = source.read()?;
        let index = ring.index_key().clone();
        let keys = Keys {
            source,
            ring: RwLock::new(Arc::new(ring)),
            index,
            db: db.clone(),
            system: tokio::sync::Mutex::new(HashMap::new()),
        };
        keys.register().await?;
        Ok(Arc::new(keys))
    }

    fn ring(&self) -> Arc<LocalKeyring> {
        self.ring
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Re-reads the keyring (after `carebill keys rotate` by another process). The index key
    /// must not change.
    fn reload(&self) -> anyhow::Result<()> {
        let ring = self.source.read()?;
        if ring.index_key().check_value() != self.index.check_value() {
            anyhow::bail!("the keyring's index key changed; refusing the new keyring");
        }
        *self
            .ring
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(ring);
        tracing::info!(kek_versions = ?self.ring().versions(), "keyring reloaded");
        Ok(())
    }

    /// The blind-index key.
    pub fn index(&self) -> &IndexKey {
        &self.index
    }

    async fn register(&self) -> anyhow::Result<()> {
        let ring = self.ring();
        let pool = &self.db.pool;
        let now = now_us();
        sqlx::query(
            "INSERT INTO index_key (id, check_value, created_at_us) VALUES (1, $1, $2) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(self.index.check_value())
        .bind(now)
        .execute(pool)
        .await?;
        let stored: String = sqlx::query_scalar("SELECT check_value FROM index_key WHERE id = 1")
            .fetch_one(pool)
            .await?;
        if stored != self.index.check_value() {
            anyhow::bail!(
                "the keyring's index key is not the one this database was indexed with \
                 (check value differs): wrong keyring for this database?"
            );
        }
        let rows = sqlx::query("SELECT version, check_value, status FROM kek_versions")
            .fetch_all(pool)
            .await?;
        let mut known = Vec::new();
        for row in &rows {
            let version: i64 = row.try_get(0)?;
            let check: String = row.try_get(1)?;
            let status: String = row.try_get(2)?;
            known.push(version);
            match (status.as_str(), ring.check_value(version)) {
                ("active", None) => anyhow::bail!(
                    "KEK version {version} is in use in this database but not in the keyring: \
                     add it back (the data it wraps cannot be read without it)"
                ),
                (_, Some(c)) if c != check => anyhow::bail!(
                    "KEK version {version} in the keyring is not the key this database knows \
                     (check value differs): wrong keyring for this database?"
                ),
                ("retired", Some(_)) => tracing::warn!(
                    kek_version = version,
                    "KEK version is retired: its key can be removed from the keyring"
                ),
                _ => {}
            }
        }
        for version in ring.versions() {
            if known.contains(&version) {
                continue;
            }
            sqlx::query(
                "INSERT INTO kek_versions (version, check_value, status, created_at_us) \
                 VALUES ($1, $2, 'active', $3) ON CONFLICT (version) DO NOTHING",
            )
            .bind(version)
            .bind(ring.check_value(version).unwrap_or_default())
            .bind(now)
            .execute(pool)
            .await?;
            tracing::info!(kek_version = version, "KEK version registered");
        }
        Ok(())
    }

    /// The newest active KEK version, read in the caller's transaction (so a rotation by another
    /// process is seen at once); the keyring is re-read if it does not hold it yet.
    pub async fn active_version(&self, tx: &mut Tx) -> ApiResult<i64> {
        let version: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM kek_versions WHERE status = 'active'")
                .fetch_one(&mut **tx)
                .await?;
        let version =
            version.ok_or_else(|| ApiError::Internal(anyhow::anyhow!("no active KEK version")))?;
        if self.ring().check_value(version).is_none() {
            self.reload().map_err(ApiError::Internal)?;
            if self.ring().check_value(version).is_none() {
                return Err(ApiError::Internal(anyhow::anyhow!(
                    "KEK version {version} is active but not in the keyring"
                )));
            }
        }
        Ok(version)
    }

    async fn wrap(&self, version: i64, key: &DataKey, owner: &str) -> ApiResult<Vec<u8>> {
        self.ring()
            .wrap(version, key, owner.as_bytes())
            .await
            .map_err(|e| ApiError::Internal(e.into()))
    }

    /// Makes and stores a new data key for `owner` (a patient id) in the caller's transaction.
    pub async fn new_data_key(&self, tx: &mut Tx, owner: &str) -> ApiResult<DataKey> {
        let version = self.active_version(tx).await?;
        let key = DataKey::generate();
        let wrapped = self.wrap(version, &key, owner).await?;
        sqlx::query(
            "INSERT INTO data_keys (owner, kek_version, wrapped_key, created_at_us) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(owner)
        .bind(version)
        .bind(wrapped)
        .bind(now_us())
        .execute(&mut **tx)
        .await?;
        Ok(key)
    }

    /// Opens a stored wrap; a failure is recorded as a security event, never a panic.
    pub async fn open_wrapped(
        &self,
        owner: &str,
        version: i64,
        wrapped: Option<Vec<u8>>,
    ) -> KeyState {
        let Some(wrapped) = wrapped else {
            return KeyState::Erased;
        };
        let mut result = self
            .ring()
            .unwrap(version, &wrapped, owner.as_bytes())
            .await;
        if matches!(result, Err(CryptoError::UnknownKekVersion(_))) && self.reload().is_ok() {
            result = self
                .ring()
                .unwrap(version, &wrapped, owner.as_bytes())
                .await;
        }
        match result {
            Ok(key) => KeyState::Available(key),
            Err(e) => {
                self.report_unreadable(owner, "data_keys.wrapped_key", &e)
                    .await;
                KeyState::Unreadable
            }
        }
    }

    /// Records a value that failed authentication (subject: its owner; detail: the column).
    pub async fn report_unreadable(&self, owner: &str, column: &str, error: &CryptoError) {
        tracing::warn!(owner, column, error = %error, "a stored ciphertext failed authentication");
        let detail = format!("{column}: {error}");
        if let Err(e) = events::record(
            &self.db,
            Kind::CiphertextRejected,
            Event {
                subject: Some(owner),
                detail: Some(&detail),
                ..Event::default()
            },
        )
        .await
        {
            tracing::error!(error = %e, "could not record a ciphertext_rejected security event");
        }
    }

    /// The data key of `owner`, on the pool or in a transaction. A patient without one is
    /// reported like a key that does not open.
    pub async fn data_key<'c, E>(&self, executor: E, owner: &str) -> ApiResult<KeyState>
    where
        E: sqlx::Executor<'c, Database = sqlx::Any>,
    {
        match self.fetch_key(executor, owner).await? {
            Some(state) => Ok(state),
            None => Ok(self.open_joined(owner, None, None).await),
        }
    }

    /// The data key of `owner` from a row that LEFT JOINed `data_keys` (`version` None: no key
    /// row, reported like a key that does not open).
    pub async fn open_joined(
        &self,
        owner: &str,
        version: Option<i64>,
        wrapped: Option<Vec<u8>>,
    ) -> KeyState {
        match version {
            Some(version) => self.open_wrapped(owner, version, wrapped).await,
            None => {
                self.report_unreadable(owner, "data_keys", &CryptoError::Decrypt)
                    .await;
                KeyState::Unreadable
            }
        }
    }

    /// Opens one sealed value with `key`; a failure is recorded as a security event (subject:
    /// the field's owner; detail: its column) and answers None.
    pub async fn open_or_report(
        &self,
        key: &DataKey,
        field: super::Field<'_>,
        sealed: &str,
    ) -> Option<Zeroizing<String>> {
        match key.open(field, sealed) {
            Ok(text) => Some(text),
            Err(e) => {
                self.report_unreadable(field.owner, field.column, &e).await;
                None
            }
        }
    }

    /// The data key of `owner`, or None when it has none.
    async fn fetch_key<'c, E>(&self, executor: E, owner: &str) -> ApiResult<Option<KeyState>>
    where
        E: sqlx::Executor<'c, Database = sqlx::Any>,
    {
        let row = sqlx::query("SELECT kek_version, wrapped_key FROM data_keys WHERE owner = $1")
            .bind(owner)
            .fetch_optional(executor)
            .await?;
        Ok(match row {
            Some(row) => Some(
                self.open_wrapped(owner, row.try_get(0)?, row.try_get(1)?)
                    .await,
            ),
            None => None,
        })
    }

    /// Destroys `owner`'s data key (crypto-shredding). True if it was live.
    pub async fn destroy(&self, tx: &mut Tx, owner: &str) -> ApiResult<bool> {
        let done = sqlx::query(
            "UPDATE data_keys SET wrapped_key = NULL, destroyed_at_us = $1 \
             WHERE owner = $2 AND wrapped_key IS NOT NULL",
        )
        .bind(now_us())
        .bind(owner)
        .execute(&mut **tx)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The data key of a system purpose (`sys:…`), made on first use.
    pub async fn system_key(&self, purpose: &str) -> ApiResult<DataKey> {
        debug_assert!(purpose.starts_with("sys:"));
        let mut cache = self.system.lock().await;
        if let Some(key) = cache.get(purpose) {
            return Ok(key.clone());
        }
        let state = match self.fetch_key(&self.db.pool, purpose).await? {
            Some(state) => state,
            None => {
                // First use: make it (a racing process may win; then its key is the one).
                let mut tx = self.db.begin_write().await?;
                let taken: Option<i64> =
                    sqlx::query_scalar("SELECT kek_version FROM data_keys WHERE owner = $1")
                        .bind(purpose)
                        .fetch_optional(&mut *tx)
                        .await?;
                if taken.is_none() {
                    self.new_data_key(&mut tx, purpose).await?;
                }
                tx.commit().await?;
                self.data_key(&self.db.pool, purpose).await?
            }
        };
        match state {
            KeyState::Available(key) => {
                cache.insert(purpose.to_owned(), key.clone());
                Ok(key)
            }
            _ => Err(ApiError::Internal(anyhow::anyhow!(
                "the {purpose} data key cannot be opened"
            ))),
        }
    }

    /// Adds KEK version N+1 to the keyring file and registers it: new data keys are wrapped
    /// under it from now on (running servers included). Returns the new version.
    pub async fn rotate(&self) -> anyhow::Result<i64> {
        let KeySource::File(path) = &self.source else {
            anyhow::bail!(
                "the keyring comes from CAREBILL_KEYRING: add a `kek N` line to it yourself \
                 (`carebill keys rotate` edits keyring files only)"
            );
        };
        let in_db: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM kek_versions")
            .fetch_one(&self.db.pool)
            .await?;
        let next = in_db
            .unwrap_or(0)
            .max(self.ring().versions().into_iter().max().unwrap_or(0))
            + 1;
        append_line(path, &LocalKeyring::new_kek_line(next))?;
        self.reload()?;
        self.register().await?;
        let detail = format!("kek_version={next}");
        events::record(
            &self.db,
            Kind::KekRotated,
            Event {
                actor: Some("cli"),
                detail: Some(&detail),
                ..Event::default()
            },
        )
        .await?;
        Ok(next)
    }

    /// The versions, their status and how many live data keys each wraps.
    pub async fn list(&self) -> anyhow::Result<Vec<KekVersionInfo>> {
        let rows = sqlx::query(
            "SELECT v.version, v.status, v.check_value, \
             (SELECT COUNT(*) FROM data_keys d WHERE d.kek_version = v.version AND d.wrapped_key IS NOT NULL) \
             FROM kek_versions v ORDER BY v.version",
        )
        .fetch_all(&self.db.pool)
        .await?;
        let ring = self.ring();
        rows.iter()
            .map(|r| {
                let version: i64 = r.try_get(0)?;
                Ok(KekVersionInfo {
                    version,
                    status: r.try_get(1)?,
                    check_value: r.try_get(2)?,
                    live_data_keys: r.try_get(3)?,
                    in_keyring: ring.check_value(version).is_some(),
                })
            })
            .collect()
    }

    /// Re-wraps every live data key not under the active version, `batch_size` per committed
    /// transaction (at most `max_batches` of them, if given), then retires each older version
    /// that no longer wraps anything. Safe to stop at any point and run again; safe beside
    /// running servers (a key erased meanwhile is skipped).
    pub async fn rewrap(
        &self,
        batch_size: i64,
        max_batches: Option<u64>,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> anyhow::Result<RewrapReport> {
        let batch_size = batch_size.clamp(1, 10_000);
        let mut report = RewrapReport::default();
        let target: i64 = {
            let mut tx = self.db.begin_write().await?;
            let v = self.active_version(&mut tx).await.map_err(api_to_anyhow)?;
            tx.commit().await?;
            v
        };
        report.target_version = target;
        let total: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM data_keys WHERE wrapped_key IS NOT NULL AND kek_version <> $1",
        )
        .bind(target)
        .fetch_one(&self.db.pool)
        .await?;
        let total = u64::try_from(total).unwrap_or(0);
        let mut after = String::new();
        let mut batches = 0u64;
        loop {
            if max_batches.is_some_and(|m| batches >= m) {
                report.stopped_early = true;
                break;
            }
            let mut tx = self.db.begin_write().await?;
            let (moved, unreadable, last) = self
                .rewrap_batch(&mut tx, target, &after, batch_size)
                .await
                .map_err(api_to_anyhow)?;
            tx.commit().await?;
            batches += 1;
            report.rewrapped += moved;
            report.unreadable.extend(unreadable);
            progress(report.rewrapped, total);
            match last {
                Some(last) => after = last,
                None => break,
            }
        }
        if !report.stopped_early && report.unreadable.is_empty() {
            report.retired = self.retire_unused(target).await?;
        }
        let detail = format!(
            "target_version={target} rewrapped={} unreadable={} retired={:?}",
            report.rewrapped,
            report.unreadable.len(),
            report.retired
        );
        events::record(
            &self.db,
            Kind::DataKeysRewrapped,
            Event {
                actor: Some("cli"),
                detail: Some(&detail),
                ..Event::default()
            },
        )
        .await?;
        Ok(report)
    }

    /// One batch: returns (re-wrapped, unreadable owners, the last owner seen or None at the end).
    async fn rewrap_batch(
        &self,
        tx: &mut Tx,
        target: i64,
        after: &str,
        batch_size: i64,
    ) -> ApiResult<(u64, Vec<String>, Option<String>)> {
        let rows = sqlx::query(
            "SELECT owner, kek_version, wrapped_key FROM data_keys \
             WHERE wrapped_key IS NOT NULL AND kek_version <> $1 AND owner > $2 \
             ORDER BY owner LIMIT $3",
        )
        .bind(target)
        .bind(after)
        .bind(batch_size)
        .fetch_all(&mut **tx)
        .await?;
        let mut moved = 0u64;
        let mut unreadable = Vec::new();
        let mut last = None;
        for row in &rows {
            let owner: String = row.try_get(0)?;
            let version: i64 = row.try_get(1)?;
            let wrapped: Vec<u8> = row.try_get(2)?;
            last = Some(owner.clone());
            let key = match self.open_wrapped(&owner, version, Some(wrapped)).await {
                KeyState::Available(k) => k,
                _ => {
                    unreadable.push(owner);
                    continue;
                }
            };
            let rewrapped = self.wrap(target, &key, &owner).await?;
            let done = sqlx::query(
                "UPDATE data_keys SET kek_version = $1, wrapped_key = $2, rewrapped_at_us = $3 \
                 WHERE owner = $4 AND kek_version = $5 AND wrapped_key IS NOT NULL",
            )
            .bind(target)
            .bind(rewrapped)
            .bind(now_us())
            .bind(&owner)
            .bind(version)
            .execute(&mut **tx)
            .await?;
            moved += done.rows_affected();
        }
        Ok((moved, unreadable, last))
    }

    async fn retire_unused(&self, target: i64) -> anyhow::Result<Vec<i64>> {
        let versions: Vec<i64> = sqlx::query_scalar(
            "SELECT version FROM kek_versions v WHERE status = 'active' AND version < $1 \
             AND NOT EXISTS (SELECT 1 FROM data_keys d WHERE d.kek_version = v.version AND d.wrapped_key IS NOT NULL) \
             ORDER BY version",
        )
        .bind(target)
        .fetch_all(&self.db.pool)
        .await?;
        for version in &versions {
            sqlx::query(
                "UPDATE kek_versions SET status = 'retired', retired_at_us = $1 WHERE version = $2",
            )
            .bind(now_us())
            .bind(version)
            .execute(&self.db.pool)
            .await?;
            let detail = format!("kek_version={version}");
            events::record(
                &self.db,
                Kind::KekRetired,
                Event {
                    actor: Some("cli"),
                    detail: Some(&detail),
                    ..Event::default()
                },
            )
            .await?;
        }
        Ok(versions)
    }
}

fn api_to_anyhow(e: ApiError) -> anyhow::Error {
    match e {
        ApiError::Internal(e) => e,
        other => anyhow::anyhow!("{}", other.client_message()),
    }
}

/// Appends a line to the keyring file, keeping it private (0600) and durable.
fn append_line(path: &std::path::Path, line: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.append(true);
    let mut file = options
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot open the keyring file {}: {e}", path.display()))?;
    file.write_all(line.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

/// Writes a new keyring file (mode 0600), refusing to overwrite one.
pub fn write_new_keyring(path: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| {
        anyhow::anyhow!(
            "cannot create the keyring file {} (it must not exist yet): {e}",
            path.display()
        )
    })?;
    file.write_all(LocalKeyring::generate_text().as_bytes())?;
    file.sync_all()?;
    Ok(())
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct KekVersionInfo {
    pub version: i64,
    pub status: String,
    pub check_value: String,
    pub live_data_keys: i64,
    pub in_keyring: bool,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct RewrapReport {
    pub target_version: i64,
    pub rewrapped: u64,
    /// Owners whose data key did not open (recorded as security events); their versions stay.
    pub unreadable: Vec<String>,
    pub retired: Vec<i64>,
    pub stopped_early: bool,
}
