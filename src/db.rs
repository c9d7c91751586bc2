//! The billing database. The plumbing (pool, backends, write transactions with retry) is the
//! shared `dbkit` crate; what is billing's own is its schema, embedded here.

pub use dbkit::*;

static MIGRATOR_POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");
static MIGRATOR_SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Brings the billing schema up to date.
pub async fn migrate(db: &Db) -> anyhow::Result<()> {
    db.migrate(&MIGRATOR_POSTGRES, &MIGRATOR_SQLITE).await
}
