//! The vault's own database: never the billing database, never shared. The plumbing is the
//! `dbkit` crate; the schema is the vault's, embedded here.

pub use dbkit::*;

static MIGRATOR_POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");
static MIGRATOR_SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Vault writes are few and small; a modest pool keeps PostgreSQL connection use low.
pub const VAULT_POOL_CONNECTIONS: u32 = 16;

pub async fn connect(url: &str) -> anyhow::Result<Db> {
    let db = Db::connect_with(url, Durability::Full, VAULT_POOL_CONNECTIONS).await?;
    db.migrate(&MIGRATOR_POSTGRES, &MIGRATOR_SQLITE).await?;
    Ok(db)
}
