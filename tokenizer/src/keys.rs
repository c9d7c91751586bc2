//! Key custody and the keyring.
//!
//! - `keys init` makes the KEK components (one file per custodian), the KEK check value, the
//!   first card-number key and the fingerprint key, both stored wrapped under the KEK.
//! - At start the vault reads at least the required number of components, combines them and
//!   checks the result against the stored check value; it refuses to start otherwise.
//! - `keys rotate` adds a new primary card-number key; older ones stay active for lookup and
//!   decryption. `keys reencrypt` moves every card to the primary key in bounded, resumable
//!   batches. `keys retire` destroys a key once no card uses it (the database refuses earlier).
//! - A running vault re-reads the keyring when the `keyring_generation` counter moves, checked
//!   inside every card transaction, so a rotation by the CLI never leaves it encrypting or
//!   looking up with a stale set of keys.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{bail, Context};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use subtle::ConstantTimeEq;

use crate::audit;
use crate::crypto::{FingerprintKey, Kek, KeyComponent, PanKey, SivKey};
use crate::db::{now_us, Backend, Db, Tx};

/// Field names, bound into each ciphertext as associated data.
pub const FIELD_CARD_NUMBER: &str = "card_number";
pub const FIELD_CARDHOLDER_NAME: &str = "cardholder_name";

/// The usable keys at one keyring generation.
#[derive(Debug)]
pub struct Keyring {
    pub generation: i64,
    /// Every non-retired card-number key, newest first.
    pan: Vec<PanKey>,
    primary: i64,
    fingerprint: FingerprintKey,
}

impl Keyring {
    pub fn primary(&self) -> Option<&PanKey> {
        self.get(self.primary)
    }

    pub fn get(&self, version: i64) -> Option<&PanKey> {
        self.pan.iter().find(|k| k.version == version)
    }

    pub fn active(&self) -> &[PanKey] {
        &self.pan
    }

    pub fn fingerprint(&self, digits: &str) -> String {
        self.fingerprint.fingerprint(digits)
    }

    /// Reads the keyring through `conn` (inside the caller's transaction when it has one).
    pub async fn load(conn: &mut AnyConnection, kek: &Kek) -> anyhow::Result<Keyring> {
        let generation: i64 =
            sqlx::query_scalar("SELECT generation FROM keyring_generation WHERE id = 1")
                .fetch_one(&mut *conn)
                .await?;
        let rows = sqlx::query(
            "SELECT purpose, version, state, wrapped FROM data_keys \
             WHERE state <> 'retired' ORDER BY version DESC",
        )
        .fetch_all(&mut *conn)
        .await?;
        let mut pan = Vec::new();
        let mut primary = None;
        let mut fingerprint = None;
        for row in rows {
            let purpose: String = row.try_get(0)?;
            let version: i64 = row.try_get(1)?;
            let state: String = row.try_get(2)?;
            let wrapped: Vec<u8> = row.try_get(3)?;
            let key = kek
                .unwrap_key(&purpose, version, &wrapped)
                .with_context(|| format!("unwrapping {purpose} key v{version}"))?;
            match purpose.as_str() {
                "pan" => {
                    if state == "primary" {
                        primary = Some(version);
                    }
                    pan.push(PanKey::new(version, SivKey::from_slice(&key)?));
                }
                "fingerprint" if state == "primary" => {
                    fingerprint = Some(FingerprintKey::from_slice(&key)?)
                }
                _ => {}
            }
        }
        Ok(Keyring {
            generation,
            pan,
            primary: primary.context("no primary card-number key: run `tokenizer keys init`")?,
            fingerprint: fingerprint.context("no fingerprint key")?,
        })
    }
}

/// The running vault's keyring, refreshed when another process changes the keys.
#[derive(Debug)]
pub struct KeyringCache {
    kek: Kek,
    current: RwLock<Arc<Keyring>>,
}

impl KeyringCache {
    pub async fn open(db: &Db, kek: Kek) -> anyhow::Result<KeyringCache> {
        let mut conn = db.pool.acquire().await?;
        let keyring = Keyring::load(&mut conn, &kek).await?;
        Ok(KeyringCache {
            kek,
            current: RwLock::new(Arc::new(keyring)),
        })
    }

    fn cached(&self) -> Arc<Keyring> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The keyring as of `tx`: one small read of the generation counter, and a reload only
    /// when it moved.
    pub async fn current(&self, tx: &mut Tx) -> anyhow::Result<Arc<Keyring>> {
        let generation: i64 =
            sqlx::query_scalar("SELECT generation FROM keyring_generation WHERE id = 1")
                .fetch_one(&mut **tx)
                .await?;
        let cached = self.cached();
        if cached.generation == generation {
            return Ok(cached);
        }
        let fresh = Arc::new(Keyring::load(&mut *tx, &self.kek).await?);
        tracing::info!(generation = fresh.generation, "keyring reloaded");
        match self.current.write() {
            Ok(mut guard) => *guard = fresh.clone(),
            Err(poisoned) => *poisoned.into_inner() = fresh.clone(),
        }
        Ok(fresh)
    }
}

async fn bump_generation(tx: &mut Tx) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE keyring_generation SET generation = generation + 1 WHERE id = 1")
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Reads component files and combines them into the KEK, checking it against the vault's
/// stored check value. Refuses fewer components than the vault was set up with, and the same
/// component given twice.
pub async fn unlock(db: &Db, paths: &[PathBuf]) -> anyhow::Result<Kek> {
    let row = sqlx::query("SELECT check_value, components_required FROM kek WHERE id = 1")
        .fetch_optional(&db.pool)
        .await?
        .context("this vault has no keys yet: run `tokenizer keys init`")?;
    let check_value: String = row.try_get(0)?;
    let required: i64 = row.try_get(1)?;
    let given = i64::try_from(paths.len()).unwrap_or(i64::MAX);
    if given < required {
        bail!(
            "{given} key component(s) given; this vault needs {required} (split knowledge: \
             each custodian supplies one)"
        );
    }
    let mut components = Vec::with_capacity(paths.len());
    let mut seen = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading key component {}", path.display()))?;
        let component = KeyComponent::parse_file_text(&text)
            .with_context(|| format!("key component {}", path.display()))?;
        let kcv = component.check_value();
        if seen.contains(&kcv) {
            bail!(
                "the same key component was given twice ({})",
                path.display()
            );
        }
        seen.push(kcv);
        components.push(component);
    }
    let kek = Kek::combine(&components)?;
    if !bool::from(kek.check_value().as_bytes().ct_eq(check_value.as_bytes())) {
        bail!("the key components do not combine to this vault's key-encrypting key");
    }
    Ok(kek)
}

/// `tokenizer keys init`: creates `components` KEK component files in `out_dir` and the first
/// keys. Refuses a vault that already has keys and overwrites no file.
pub async fn init(db: &Db, components: usize, out_dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if components < 2 {
        bail!("at least 2 key components are required (split knowledge and dual control)");
    }
    let existing: Option<i64> = sqlx::query_scalar("SELECT id FROM kek WHERE id = 1")
        .fetch_optional(&db.pool)
        .await?;
    if existing.is_some() {
        bail!("this vault already has keys; use `tokenizer keys rotate`");
    }
    std::fs::create_dir_all(out_dir)?;
    let parts: Vec<KeyComponent> = (0..components).map(|_| KeyComponent::generate()).collect();
    let paths: Vec<PathBuf> = (1..=components)
        .map(|i| out_dir.join(format!("kek-component-{i}.txt")))
        .collect();
    if let Some(p) = paths.iter().find(|p| p.exists()) {
        bail!(
            "{} already exists; not overwriting a key component",
            p.display()
        );
    }
    for (i, (part, path)) in parts.iter().zip(&paths).enumerate() {
        write_new_private(path, &part.to_file_text(i + 1, components))?;
    }
    let kek = Kek::combine(&parts)?;
    let pan = SivKey::generate();
    let fingerprint = FingerprintKey::generate();
    let now = now_us();
    let required = i64::try_from(components)?;
    let wrapped_pan = kek.wrap("pan", 1, pan.expose())?;
    let wrapped_fp = kek.wrap("fingerprint", 1, fingerprint.expose())?;
    let check = kek.check_value();
    let backend = db.backend;
    db.write(|tx| {
        let (check, wrapped_pan, wrapped_fp) = (check.clone(), wrapped_pan.clone(), wrapped_fp.clone());
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO kek (id, check_value, components_required, created_at) VALUES (1, $1, $2, $3)",
            )
            .bind(check)
            .bind(required)
            .bind(now)
            .execute(&mut **tx)
            .await?;
            for (purpose, wrapped) in [("pan", wrapped_pan), ("fingerprint", wrapped_fp)] {
                sqlx::query(
                    "INSERT INTO data_keys (purpose, version, state, wrapped, created_at) \
                     VALUES ($1, 1, 'primary', $2, $3)",
                )
                .bind(purpose)
                .bind(wrapped)
                .bind(now)
                .execute(&mut **tx)
                .await?;
            }
            bump_generation(tx).await?;
            audit::append(
                tx,
                backend,
                &audit::Event {
                    actor: "cli",
                    action: "keys.init",
                    token: None,
                    outcome: "ok",
                    request_id: None,
                },
            )
            .await
        })
    })
    .await?;
    Ok(paths)
}

/// Writes a secret file readable by its owner only, refusing to replace one.
fn write_new_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

/// `tokenizer keys rotate`: a new primary card-number key. Returns its version.
pub async fn rotate(db: &Db, kek: &Kek) -> anyhow::Result<i64> {
    let backend = db.backend;
    let version = db
        .write(|tx| {
            let kek = kek.clone();
            Box::pin(async move {
                let max: i64 = sqlx::query_scalar(
                    "SELECT COALESCE(MAX(version), 0) FROM data_keys WHERE purpose = 'pan'",
                )
                .fetch_one(&mut **tx)
                .await?;
                let version = max.saturating_add(1);
                let wrapped = kek
                    .wrap("pan", version, SivKey::generate().expose())
                    .map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
                sqlx::query(
                    "UPDATE data_keys SET state = 'active' WHERE purpose = 'pan' AND state = 'primary'",
                )
                .execute(&mut **tx)
                .await?;
                sqlx::query(
                    "INSERT INTO data_keys (purpose, version, state, wrapped, created_at) \
                     VALUES ('pan', $1, 'primary', $2, $3)",
                )
                .bind(version)
                .bind(wrapped)
                .bind(now_us())
                .execute(&mut **tx)
                .await?;
                bump_generation(tx).await?;
                let outcome = format!("ok:v{version}");
                audit::append(
                    tx,
                    backend,
                    &audit::Event {
                        actor: "cli",
                        action: "keys.rotate",
                        token: None,
                        outcome: &outcome,
                        request_id: None,
                    },
                )
                .await?;
                Ok::<i64, sqlx::Error>(version)
            })
        })
        .await?;
    Ok(version)
}

/// `tokenizer keys retire --version N`: destroys a card-number key no card uses any more.
pub async fn retire(db: &Db, version: i64) -> anyhow::Result<()> {
    let state: Option<String> =
        sqlx::query_scalar("SELECT state FROM data_keys WHERE purpose = 'pan' AND version = $1")
            .bind(version)
            .fetch_optional(&db.pool)
            .await?;
    match state.as_deref() {
        None => bail!("there is no card-number key v{version}"),
        Some("primary") => bail!("v{version} is the primary key; rotate first"),
        Some("retired") => bail!("v{version} is already retired"),
        _ => {}
    }
    let in_use: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM cards WHERE key_version = $1 AND pan_ct IS NOT NULL",
    )
    .bind(version)
    .fetch_one(&db.pool)
    .await?;
    if in_use > 0 {
        bail!("v{version} still encrypts {in_use} card(s); run `tokenizer keys reencrypt` first");
    }
    let backend = db.backend;
    db.write(|tx| {
        Box::pin(async move {
            // The trigger refuses this if a card started using the key meanwhile.
            sqlx::query(
                "UPDATE data_keys SET state = 'retired', wrapped = NULL, retired_at = $2 \
                 WHERE purpose = 'pan' AND version = $1",
            )
            .bind(version)
            .bind(now_us())
            .execute(&mut **tx)
            .await?;
            bump_generation(tx).await?;
            let outcome = format!("ok:v{version}");
            audit::append(
                tx,
                backend,
                &audit::Event {
                    actor: "cli",
                    action: "keys.retire",
                    token: None,
                    outcome: &outcome,
                    request_id: None,
                },
            )
            .await
        })
    })
    .await?;
    Ok(())
}

/// One key's use, for `keys list`.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    pub purpose: String,
    pub version: i64,
    pub state: String,
    pub cards: i64,
}

pub async fn list(db: &Db) -> anyhow::Result<Vec<KeyInfo>> {
    let rows = sqlx::query(
        "SELECT k.purpose, k.version, k.state, \
           (SELECT COUNT(*) FROM cards c WHERE k.purpose = 'pan' AND c.key_version = k.version AND c.pan_ct IS NOT NULL) \
         FROM data_keys k ORDER BY k.purpose, k.version",
    )
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r: &AnyRow| {
            Ok(KeyInfo {
                purpose: r.try_get(0)?,
                version: r.try_get(1)?,
                state: r.try_get(2)?,
                cards: r.try_get(3)?,
            })
        })
        .collect()
}

/// How a re-encryption run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reencrypted {
    pub moved: u64,
    /// Cards still under an older key (non-zero only when `max_batches` stopped the run).
    pub remaining: i64,
}

/// `tokenizer keys reencrypt`: moves every card to the primary key, `batch_size` cards per
/// transaction. Each batch commits on its own, so a run that is stopped (or crashes) keeps what
/// it did and the next run continues from there. `max_batches` bounds one run.
pub async fn reencrypt(
    db: &Db,
    keys: &Arc<KeyringCache>,
    batch_size: u32,
    max_batches: Option<u64>,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<Reencrypted> {
    let batch_size = i64::from(batch_size.max(1));
    let backend = db.backend;
    let total: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM cards WHERE pan_ct IS NOT NULL AND key_version <> \
         (SELECT version FROM data_keys WHERE purpose = 'pan' AND state = 'primary')",
    )
    .fetch_one(&db.pool)
    .await?;
    progress.set_length(u64::try_from(total).unwrap_or(0));
    let mut moved = 0u64;
    let mut batches = 0u64;
    loop {
        if max_batches.is_some_and(|m| batches >= m) {
            break;
        }
        let n = db
            .write(|tx| {
                let keys = keys.clone();
                Box::pin(async move { reencrypt_batch(tx, backend, &keys, batch_size).await })
            })
            .await?;
        if n == 0 {
            break;
        }
        batches += 1;
        moved += n;
        progress.inc(n);
    }
    let remaining: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM cards WHERE pan_ct IS NOT NULL AND key_version <> \
         (SELECT version FROM data_keys WHERE purpose = 'pan' AND state = 'primary')",
    )
    .fetch_one(&db.pool)
    .await?;
    Ok(Reencrypted { moved, remaining })
}

#[derive(Debug, thiserror::Error)]
enum BatchError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl dbkit::RetryableError for BatchError {
    fn is_retryable(&self) -> bool {
        matches!(self, BatchError::Db(e) if dbkit::is_conflict(e))
    }
}

async fn reencrypt_batch(
    tx: &mut Tx,
    backend: Backend,
    keys: &KeyringCache,
    batch_size: i64,
) -> Result<u64, BatchError> {
    let keyring = keys.current(tx).await?;
    let primary = keyring.primary().context("no primary key")?;
    let rows = sqlx::query(&format!(
        "SELECT id, key_version, pan_ct, name_ct FROM cards \
         WHERE pan_ct IS NOT NULL AND key_version <> $1 ORDER BY key_version, id LIMIT $2{}",
        backend.for_update()
    ))
    .bind(primary.version)
    .bind(batch_size)
    .fetch_all(&mut **tx)
    .await?;
    let mut moved = 0u64;
    for row in &rows {
        let id: String = row.try_get(0)?;
        let version: i64 = row.try_get(1)?;
        let pan_ct: Vec<u8> = row.try_get(2)?;
        let name_ct: Option<Vec<u8>> = row.try_get(3)?;
        let old = keyring
            .get(version)
            .with_context(|| format!("card {id}: key v{version} is not available"))?;
        let pan = old
            .decrypt_field(FIELD_CARD_NUMBER, &pan_ct)
            .with_context(|| format!("card {id}: does not decrypt under v{version}"))?;
        let new_pan = primary
            .encrypt_field(FIELD_CARD_NUMBER, &pan)
            .map_err(anyhow::Error::from)?;
        let new_name = match name_ct {
            Some(ct) => {
                let name = old
                    .decrypt_field(FIELD_CARDHOLDER_NAME, &ct)
                    .map_err(anyhow::Error::from)?;
                Some(
                    primary
                        .encrypt_field(FIELD_CARDHOLDER_NAME, &name)
                        .map_err(anyhow::Error::from)?,
                )
            }
            None => None,
        };
        sqlx::query(
            "UPDATE cards SET key_version = $1, pan_ct = $2, name_ct = $3, updated_at = $4 \
             WHERE id = $5 AND key_version = $6",
        )
        .bind(primary.version)
        .bind(new_pan)
        .bind(new_name)
        .bind(now_us())
        .bind(&id)
        .bind(version)
        .execute(&mut **tx)
        .await?;
        moved += 1;
    }
    if moved > 0 {
        let outcome = format!("ok:{moved}->v{}", primary.version);
        audit::append(
            tx,
            backend,
            &audit::Event {
                actor: "cli",
                action: "keys.reencrypt",
                token: None,
                outcome: &outcome,
                request_id: None,
            },
        )
        .await?;
    }
    Ok(moved)
}
