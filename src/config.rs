//! Configuration: defaults, then an optional TOML file (`--config` / `CAREBILL_CONFIG`), then
//! environment variables, each overriding the one before.
//!
//! | setting | env | default |
//! | --- | --- | --- |
//! | `addr` | `CAREBILL_ADDR` | `127.0.0.1:8080` |
//! | `database_url` | `DATABASE_URL` | `sqlite://var/carebill.db` |
//! | `idempotency_ttl_seconds` | `CAREBILL_IDEMPOTENCY_TTL_SECONDS` | 86400 (24 h) |
//! | `idempotency_lease_ms` | `CAREBILL_IDEMPOTENCY_LEASE_MS` | 60000 |
//! | `request_timeout_ms` | `CAREBILL_REQUEST_TIMEOUT_MS` | 30000 |

use std::path::Path;

use serde::Deserialize;

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub addr: String,
    pub database_url: String,
    /// How long a finished idempotency key replays its response.
    pub idempotency_ttl_seconds: i64,
    /// How long a request owns its key before a retry may take over (after a crash). Must
    /// exceed the longest processor call.
    pub idempotency_lease_ms: i64,
    /// Whole-request timeout.
    pub request_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: "127.0.0.1:8080".to_owned(),
            database_url: "sqlite://var/carebill.db".to_owned(),
            idempotency_ttl_seconds: 86_400,
            idempotency_lease_ms: 60_000,
            request_timeout_ms: 30_000,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The database URL may hold a password: print only its scheme.
        let scheme = self.database_url.split(':').next().unwrap_or("");
        f.debug_struct("Config")
            .field("addr", &self.addr)
            .field("database", &scheme)
            .field("idempotency_ttl_seconds", &self.idempotency_ttl_seconds)
            .field("idempotency_lease_ms", &self.idempotency_lease_ms)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .finish()
    }
}

impl Config {
    /// Loads the file (if any) and applies the environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("reading config file {}: {e}", path.display()))?;
                toml::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?
            }
            None => Config::default(),
        };
        config.apply_env(|name| std::env::var(name).ok())?;
        config.validate()?;
        Ok(config)
    }

    fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        if let Some(v) = get("CAREBILL_ADDR") {
            self.addr = v;
        }
        if let Some(v) = get("DATABASE_URL") {
            self.database_url = v;
        }
        if let Some(v) = get("CAREBILL_IDEMPOTENCY_TTL_SECONDS") {
            self.idempotency_ttl_seconds = v.parse().map_err(|_| {
                anyhow::anyhow!("CAREBILL_IDEMPOTENCY_TTL_SECONDS must be an integer")
            })?;
        }
        if let Some(v) = get("CAREBILL_IDEMPOTENCY_LEASE_MS") {
            self.idempotency_lease_ms = v
                .parse()
                .map_err(|_| anyhow::anyhow!("CAREBILL_IDEMPOTENCY_LEASE_MS must be an integer"))?;
        }
        if let Some(v) = get("CAREBILL_REQUEST_TIMEOUT_MS") {
            self.request_timeout_ms = v
                .parse()
                .map_err(|_| anyhow::anyhow!("CAREBILL_REQUEST_TIMEOUT_MS must be an integer"))?;
        }
        Ok(())
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.idempotency_ttl_seconds >= 60,
            "idempotency_ttl_seconds must be at least 60"
        );
        anyhow::ensure!(
            self.idempotency_lease_ms >= 100,
            "idempotency_lease_ms must be at least 100"
        );
        anyhow::ensure!(
            self.request_timeout_ms >= 100,
            "request_timeout_ms must be at least 100"
        );
        crate::db::Backend::from_url(&self.database_url)?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_file_and_debug_hides_url() {
        let mut c: Config =
            toml::from_str("addr = \"0.0.0.0:1\"\ndatabase_url = \"postgres://u:secret@h/db\"")
                .unwrap();
        c.apply_env(|n| (n == "CAREBILL_ADDR").then(|| "127.0.0.1:9".to_owned()))
            .unwrap();
        assert_eq!(c.addr, "127.0.0.1:9");
        assert!(!format!("{c:?}").contains("secret"));
        assert!(toml::from_str::<Config>("bogus = 1").is_err());
    }
}
