//! The vault's own database: never the billing database, never shared. The plumbing is the
//! `dbkit` crate; the schema is the vault's, embedded here.

pub use dbkit::*;

static MIGRATOR_POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");
static MIGRATOR_SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Vault writes are few and small; a modest pool keeps PostgreSQL connection use low.
pub const VAULT_POOL_CONNECTIONS: u32 = 16;

/// Connects and migrates. A SQLite file (and its WAL) is made readable by its owner only.
pub async fn connect(url: &str) -> anyhow::Result<Db> {
    let db = Db::connect_with(url, Durability::Full, VAULT_POOL_CONNECTIONS).await?;
    db.migrate(&MIGRATOR_POSTGRES, &MIGRATOR_SQLITE).await?;
    #[cfg(unix)]
    if let Some(path) = sqlite_path(url) {
        use std::os::unix::fs::PermissionsExt;
        for suffix in ["", "-wal", "-shm"] {
            let file = format!("{path}{suffix}");
            if std::path::Path::new(&file).exists() {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
            }
        }
    }
    Ok(db)
}
