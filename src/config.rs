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
//! | `vault_url` | `CAREBILL_VAULT_URL` | none: card tokens (`tok_…`) answer 503 |
//! | `vault_ca` | `CAREBILL_VAULT_CA` | the CA that issued the vault's server certificate |
//! | `vault_client_cert` | `CAREBILL_VAULT_CLIENT_CERT` | billing's client certificate (PEM) |
//! | `vault_client_key` | `CAREBILL_VAULT_CLIENT_KEY` | its private key (PEM) |
//! | `vault_timeout_ms` | `CAREBILL_VAULT_TIMEOUT_MS` | 5000 |
//! | `dual_control_threshold` | `CAREBILL_DUAL_CONTROL_THRESHOLD` | `"500.00"` |
//! | `session_idle_timeout_seconds` | `CAREBILL_SESSION_IDLE_TIMEOUT_SECONDS` | 900 |
//! | `session_lifetime_seconds` | `CAREBILL_SESSION_LIFETIME_SECONDS` | 43200 |
//! | `signin_window_seconds` | `CAREBILL_SIGNIN_WINDOW_SECONDS` | 900 |
//! | `signin_failures_per_account` | `CAREBILL_SIGNIN_FAILURES_PER_ACCOUNT` | 5 |
//! | `signin_failures_per_address` | `CAREBILL_SIGNIN_FAILURES_PER_ADDRESS` | 20 |
//! | `api_requests_per_second` | `CAREBILL_API_REQUESTS_PER_SECOND` | 1000 (per key or session) |
//! | `keyring_file` | `CAREBILL_KEYRING_FILE` | none: required (`carebill keys init --file …`) |
//! | — | `CAREBILL_KEYRING` | the keyring's text itself, instead of a file (never in a TOML file) |
//! | `audit_retention_days` | `CAREBILL_AUDIT_RETENTION_DAYS` | 2192 (6 years) |
//! | `audit_purge_interval_seconds` | `CAREBILL_AUDIT_PURGE_INTERVAL_SECONDS` | 86400 (0: off) |
//! | `tls_cert` | `CAREBILL_TLS_CERT` | none; `serve` requires it: the server's certificate chain (PEM, leaf first) |
//! | `tls_key` | `CAREBILL_TLS_KEY` | none; `serve` requires it: its private key (PEM) |
//! | `tls_reload_interval_ms` | `CAREBILL_TLS_RELOAD_INTERVAL_MS` | 10000 (and at once on SIGHUP) |
//! | `http_redirect_addr` | `CAREBILL_HTTP_REDIRECT_ADDR` | none: no plain-HTTP port |
//! | `[stripe]` | `STRIPE_API_KEY`, `STRIPE_API_BASE`, `STRIPE_WEBHOOK_SECRETS`, … | the simulator; see `crate::stripe` |
//! | `[webhooks]` | `CAREBILL_WEBHOOK_*` | outbound webhooks: see `webhooks::config` |
//!
//! `dual_control_threshold` is an amount in *major* units of the refund's or write-off's own
//! currency (a decimal string such as `"500.00"`, or an integer). A refund or write-off above it
//! waits for a second `billing_manager` (see `refunds.rs`). The amount is compared exactly, as a
//! decimal (`Money::to_decimal`), so the same threshold means 500.00 USD (50000 cents),
//! 500 JPY (500 minor units) and 500.000 KWD (500000 fils): there is no exchange-rate
//! conversion between currencies, one number applies in each.
//!
//! `audit_retention_days` is how long the audit trail, the security event log and the export
//! log keep a record: six years by default, HIPAA's retention for documentation (45 CFR
//! 164.316(b)(2)); longer if a state law or your policy asks. The server purges what is older
//! every `audit_purge_interval_seconds` (the first pass an hour after start), keeping the
//! hash chains verifiable (see `audit::purge`).
//!
//! The server speaks HTTPS only (TLS 1.2 or 1.3, forward-secret AEAD suites: `crates/tlskit`).
//! `tls_cert` and `tls_key` are re-read every `tls_reload_interval_ms` (and on SIGHUP): a
//! rotated pair is taken by new handshakes without a restart, and a pair that is expired, not
//! yet valid or mismatched is refused (logged; the previous one stays). At start-up the same
//! problems stop `serve` with an error naming the file. `http_redirect_addr`, when set, is a
//! plain-HTTP listener that answers every request with `308` to the same path over HTTPS and
//! serves nothing else.
//!
//! The vault is the card vault's internal (mutual-TLS) listener, e.g. `https://127.0.0.1:8445`;
//! with `vault_url` set, the CA, client certificate and key are required.

use std::path::{Path, PathBuf};

use rust_decimal::Decimal;
use serde::Deserialize;

use crate::money::Money;

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
    /// The card vault's internal listener (`https://…`); none: no card tokens.
    pub vault_url: Option<String>,
    /// The CA that issued the vault's server certificate (PEM); the only root trusted.
    pub vault_ca: Option<PathBuf>,
    /// Billing's client certificate for the vault (PEM).
    pub vault_client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub vault_client_key: Option<PathBuf>,
    /// Whole-call timeout of one vault request (connect, TLS handshake, answer).
    pub vault_timeout_ms: u64,
    /// Refunds and write-offs above this amount (major units of their own currency) need a
    /// second billing manager's approval. Exact decimal; in a TOML file a string (`"500.00"`)
    /// or an integer, never a float.
    #[serde(deserialize_with = "decimal_setting")]
    pub dual_control_threshold: Decimal,
    /// A session unused this long is signed out (NIST SP 800-63B AAL2: 30 minutes at most).
    pub session_idle_timeout_seconds: u64,
    /// A session ends this long after sign-in, however active.
    pub session_lifetime_seconds: u64,
    /// Failed sign-ins counted over this window…
    pub signin_window_seconds: u64,
    /// …at most this many per account…
    pub signin_failures_per_account: usize,
    /// …and this many per client address, before 429.
    pub signin_failures_per_address: usize,
    /// Requests per second one API key or session may make (bursts up to the same number);
    /// beyond it, 429 with `Retry-After`.
    pub api_requests_per_second: u32,
    /// The keyring (KEKs and the blind-index key: src/crypto/keyring.rs). Without it, or
    /// `CAREBILL_KEYRING`, the server refuses to start: it would not be able to read the health
    /// data it stores.
    pub keyring_file: Option<PathBuf>,
    /// The keyring's text from `CAREBILL_KEYRING` (environment only, never printed).
    #[serde(skip)]
    pub keyring_inline: Option<std::sync::Arc<zeroize::Zeroizing<String>>>,
    /// Days the audit logs keep a record before the retention purge removes it.
    pub audit_retention_days: u32,
    /// How often the server runs the retention purge; 0: never (run `carebill audit purge`).
    pub audit_purge_interval_seconds: u64,
    /// The server's certificate chain (PEM, leaf first); required to serve.
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM); required to serve.
    pub tls_key: Option<PathBuf>,
    /// How often the certificate and key files are checked for a rotation.
    pub tls_reload_interval_ms: u64,
    /// A plain-HTTP listener that only redirects to HTTPS; none: no plain-HTTP port.
    pub http_redirect_addr: Option<String>,
    /// The Stripe processor, webhooks and reconciler (`STRIPE_*`; see `crate::stripe`). In a
    /// TOML file: a `[stripe]` table without the key and secrets, which come from the environment.
    pub stripe: crate::stripe::StripeSettings,
    /// Outbound webhooks: delivery worker, retries, SSRF guards (`webhooks::config`).
    pub webhooks: crate::webhooks::config::WebhookSettings,
}

/// Deserializes a decimal setting from a string (`"500.00"`) or an integer (`500`); a TOML
/// float is refused (it would not be exact).
fn decimal_setting<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Integer(i64),
        Text(String),
    }
    match Raw::deserialize(d) {
        Ok(Raw::Integer(i)) => Ok(Decimal::from(i)),
        Ok(Raw::Text(s)) => parse_decimal_setting(&s).map_err(serde::de::Error::custom),
        Err(_) => Err(serde::de::Error::custom(
            "expected a decimal string such as \"500.00\" or an integer",
        )),
    }
}

fn parse_decimal_setting(s: &str) -> anyhow::Result<Decimal> {
    let t = s.trim();
    anyhow::ensure!(
        !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit() || b == b'.'),
        "expected a non-negative decimal such as \"500.00\", got {s:?}"
    );
    Decimal::from_str_exact(t).map_err(|e| anyhow::anyhow!("not a decimal ({s:?}): {e}"))
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: "127.0.0.1:8080".to_owned(),
            database_url: "sqlite://var/carebill.db".to_owned(),
            idempotency_ttl_seconds: 86_400,
            idempotency_lease_ms: 60_000,
            request_timeout_ms: 30_000,
            vault_url: None,
            vault_ca: None,
            vault_client_cert: None,
            vault_client_key: None,
            vault_timeout_ms: 5_000,
            dual_control_threshold: Decimal::new(50_000, 2), // 500.00
            session_idle_timeout_seconds: 900,
            session_lifetime_seconds: 43_200,
            signin_window_seconds: 900,
            signin_failures_per_account: 5,
            signin_failures_per_address: 20,
            api_requests_per_second: 1000,
            keyring_file: None,
            keyring_inline: None,
            audit_retention_days: 2192,
            audit_purge_interval_seconds: 86_400,
            tls_cert: None,
            tls_key: None,
            tls_reload_interval_ms: 10_000,
            http_redirect_addr: None,
            stripe: crate::stripe::StripeSettings::default(),
            webhooks: Default::default(),
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
            .field("vault_url", &self.vault_url)
            .field("vault_ca", &self.vault_ca)
            .field("vault_client_cert", &self.vault_client_cert)
            .field("vault_client_key", &self.vault_client_key)
            .field("vault_timeout_ms", &self.vault_timeout_ms)
            .field(
                "dual_control_threshold",
                &self.dual_control_threshold.to_string(),
            )
            .field(
                "session_idle_timeout_seconds",
                &self.session_idle_timeout_seconds,
            )
            .field("session_lifetime_seconds", &self.session_lifetime_seconds)
            .field("signin_window_seconds", &self.signin_window_seconds)
            .field(
                "signin_failures_per_account",
                &self.signin_failures_per_account,
            )
            .field(
                "signin_failures_per_address",
                &self.signin_failures_per_address,
            )
            .field("keyring_file", &self.keyring_file)
            .field(
                "keyring_inline",
                &self.keyring_inline.as_ref().map(|_| "[redacted]"),
            )
            .field("audit_retention_days", &self.audit_retention_days)
            .field(
                "audit_purge_interval_seconds",
                &self.audit_purge_interval_seconds,
            )
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("tls_reload_interval_ms", &self.tls_reload_interval_ms)
            .field("http_redirect_addr", &self.http_redirect_addr)
            .field("stripe", &self.stripe)
            .field("webhooks", &self.webhooks)
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
        let nonempty = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        if let Some(v) = nonempty("CAREBILL_VAULT_URL") {
            self.vault_url = Some(v);
        }
        if let Some(v) = nonempty("CAREBILL_VAULT_CA") {
            self.vault_ca = Some(PathBuf::from(v));
        }
        if let Some(v) = nonempty("CAREBILL_VAULT_CLIENT_CERT") {
            self.vault_client_cert = Some(PathBuf::from(v));
        }
        if let Some(v) = nonempty("CAREBILL_VAULT_CLIENT_KEY") {
            self.vault_client_key = Some(PathBuf::from(v));
        }
        if let Some(v) = get("CAREBILL_VAULT_TIMEOUT_MS") {
            self.vault_timeout_ms = v
                .parse()
                .map_err(|_| anyhow::anyhow!("CAREBILL_VAULT_TIMEOUT_MS must be an integer"))?;
        }
        for (name, slot) in [
            (
                "CAREBILL_SESSION_IDLE_TIMEOUT_SECONDS",
                &mut self.session_idle_timeout_seconds,
            ),
            (
                "CAREBILL_SESSION_LIFETIME_SECONDS",
                &mut self.session_lifetime_seconds,
            ),
            (
                "CAREBILL_SIGNIN_WINDOW_SECONDS",
                &mut self.signin_window_seconds,
            ),
        ] {
            if let Some(v) = nonempty(name) {
                *slot = v
                    .parse()
                    .map_err(|_| anyhow::anyhow!("{name} must be a whole number of seconds"))?;
            }
        }
        for (name, slot) in [
            (
                "CAREBILL_SIGNIN_FAILURES_PER_ACCOUNT",
                &mut self.signin_failures_per_account,
            ),
            (
                "CAREBILL_SIGNIN_FAILURES_PER_ADDRESS",
                &mut self.signin_failures_per_address,
            ),
        ] {
            if let Some(v) = nonempty(name) {
                *slot = v
                    .parse()
                    .map_err(|_| anyhow::anyhow!("{name} must be a whole number"))?;
            }
        }
        if let Some(v) = nonempty("CAREBILL_API_REQUESTS_PER_SECOND") {
            self.api_requests_per_second = v.parse().map_err(|_| {
                anyhow::anyhow!("CAREBILL_API_REQUESTS_PER_SECOND must be a whole number")
            })?;
        }
        if let Some(v) = nonempty("CAREBILL_KEYRING_FILE") {
            self.keyring_file = Some(PathBuf::from(v));
        }
        if let Some(v) = nonempty("CAREBILL_KEYRING") {
            self.keyring_inline = Some(std::sync::Arc::new(zeroize::Zeroizing::new(v)));
        }
        if let Some(v) = nonempty("CAREBILL_AUDIT_RETENTION_DAYS") {
            self.audit_retention_days = v.parse().map_err(|_| {
                anyhow::anyhow!("CAREBILL_AUDIT_RETENTION_DAYS must be a whole number of days")
            })?;
        }
        if let Some(v) = nonempty("CAREBILL_AUDIT_PURGE_INTERVAL_SECONDS") {
            self.audit_purge_interval_seconds = v.parse().map_err(|_| {
                anyhow::anyhow!(
                    "CAREBILL_AUDIT_PURGE_INTERVAL_SECONDS must be a whole number of seconds"
                )
            })?;
        }
        if let Some(v) = nonempty("CAREBILL_DUAL_CONTROL_THRESHOLD") {
            self.dual_control_threshold = parse_decimal_setting(&v)
                .map_err(|e| anyhow::anyhow!("CAREBILL_DUAL_CONTROL_THRESHOLD: {e}"))?;
        }
        self.webhooks.apply_env(&get)?;
        self.stripe.apply_env(&get)?;
        self.apply_tls_env(nonempty)
    }

    fn apply_tls_env(&mut self, nonempty: impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        if let Some(v) = nonempty("CAREBILL_TLS_CERT") {
            self.tls_cert = Some(PathBuf::from(v));
        }
        if let Some(v) = nonempty("CAREBILL_TLS_KEY") {
            self.tls_key = Some(PathBuf::from(v));
        }
        if let Some(v) = nonempty("CAREBILL_TLS_RELOAD_INTERVAL_MS") {
            self.tls_reload_interval_ms = v.parse().map_err(|_| {
                anyhow::anyhow!("CAREBILL_TLS_RELOAD_INTERVAL_MS must be a whole number")
            })?;
        }
        if let Some(v) = nonempty("CAREBILL_HTTP_REDIRECT_ADDR") {
            self.http_redirect_addr = Some(v);
        }
        Ok(())
    }

    /// The certificate and key files to serve with: both required (the server speaks HTTPS
    /// only).
    pub fn tls_paths(&self) -> anyhow::Result<tlskit::CertPaths> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(tlskit::CertPaths::new(cert, key)),
            (cert, key) => {
                let mut missing = Vec::new();
                if cert.is_none() {
                    missing.push("tls_cert (CAREBILL_TLS_CERT)");
                }
                if key.is_none() {
                    missing.push("tls_key (CAREBILL_TLS_KEY)");
                }
                anyhow::bail!(
                    "carebill serves HTTPS only: set {} to the server's certificate chain and \
                     private key (PEM files); `carebill up` makes development ones",
                    missing.join(" and ")
                )
            }
        }
    }

    /// Whether `amount` (a refund or a write-off) is above the dual-control threshold, compared
    /// exactly in the amount's own major units.
    pub fn needs_second_approver(&self, amount: Money) -> bool {
        amount.to_decimal() > self.dual_control_threshold
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
        anyhow::ensure!(
            !self.dual_control_threshold.is_sign_negative(),
            "dual_control_threshold must not be negative"
        );
        anyhow::ensure!(
            (1..=36_500).contains(&self.audit_retention_days),
            "audit_retention_days must be between 1 and 36500"
        );
        anyhow::ensure!(
            (100..=86_400_000).contains(&self.tls_reload_interval_ms),
            "tls_reload_interval_ms must be between 100 and 86400000"
        );
        crate::db::Backend::from_url(&self.database_url)?;
        self.stripe.validate(self.request_timeout_ms)?;
        self.webhooks.validate()?;
        self.validate_vault()
    }

    /// Where the keyring comes from: the environment's text wins over a file.
    pub fn key_source(&self) -> Option<crate::crypto::store::KeySource> {
        use crate::crypto::store::KeySource;
        match (&self.keyring_inline, &self.keyring_file) {
            (Some(text), _) => Some(KeySource::Inline(text.clone())),
            (None, Some(path)) => Some(KeySource::File(path.clone())),
            (None, None) => None,
        }
    }

    /// The vault settings: all or nothing, over https, with a sane timeout.
    pub fn validate_vault(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (100..=120_000).contains(&self.vault_timeout_ms),
            "vault_timeout_ms must be between 100 and 120000"
        );
        let Some(url) = &self.vault_url else {
            return Ok(());
        };
        anyhow::ensure!(
            url.starts_with("https://"),
            "vault_url must start with https:// (the vault speaks mutual TLS only)"
        );
        for (value, name) in [
            (&self.vault_ca, "vault_ca (CAREBILL_VAULT_CA)"),
            (
                &self.vault_client_cert,
                "vault_client_cert (CAREBILL_VAULT_CLIENT_CERT)",
            ),
            (
                &self.vault_client_key,
                "vault_client_key (CAREBILL_VAULT_CLIENT_KEY)",
            ),
        ] {
            anyhow::ensure!(value.is_some(), "vault_url is set, so {name} is required");
        }
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

    #[test]
    fn audit_retention_defaults_to_six_years_and_is_checked() {
        let mut c = Config::default();
        assert_eq!(c.audit_retention_days, 2192);
        assert_eq!(c.audit_purge_interval_seconds, 86_400);
        c.apply_env(|n| match n {
            "CAREBILL_AUDIT_RETENTION_DAYS" => Some("3650".to_owned()),
            "CAREBILL_AUDIT_PURGE_INTERVAL_SECONDS" => Some("0".to_owned()),
            _ => None,
        })
        .unwrap();
        assert_eq!(
            (c.audit_retention_days, c.audit_purge_interval_seconds),
            (3650, 0)
        );
        c.validate().unwrap();
        let err = c
            .apply_env(|n| (n == "CAREBILL_AUDIT_RETENTION_DAYS").then(|| "six".to_owned()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("CAREBILL_AUDIT_RETENTION_DAYS"), "{err}");
        c.audit_retention_days = 0;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("audit_retention_days"));
    }

    #[test]
    fn vault_settings_from_file_and_env() {
        let mut c: Config = toml::from_str(
            "vault_url = \"https://127.0.0.1:8445\"\nvault_ca = \"ca.pem\"\nvault_timeout_ms = 1500",
        )
        .unwrap();
        assert_eq!(c.vault_timeout_ms, 1500);
        // The client certificate and key are missing: refused, naming the setting.
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("vault_client_cert"), "{err}");
        c.apply_env(|n| match n {
            "CAREBILL_VAULT_CLIENT_CERT" => Some("client.pem".to_owned()),
            "CAREBILL_VAULT_CLIENT_KEY" => Some("client.key".to_owned()),
            "CAREBILL_VAULT_TIMEOUT_MS" => Some("900".to_owned()),
            _ => None,
        })
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.vault_timeout_ms, 900);
        assert_eq!(c.vault_client_key, Some(PathBuf::from("client.key")));
        c.vault_url = Some("http://127.0.0.1:8445".to_owned());
        assert!(c.validate().is_err(), "plain http is refused");
        assert!(Config::default().validate().is_ok(), "no vault is fine");
    }

    #[test]
    fn tls_settings_from_file_and_env() {
        let mut c: Config =
            toml::from_str("tls_cert = \"server.pem\"\nhttp_redirect_addr = \"127.0.0.1:8081\"")
                .unwrap();
        // The key is missing: refused at serve time, naming the setting and its variable.
        let err = c.tls_paths().unwrap_err().to_string();
        assert!(err.contains("tls_key (CAREBILL_TLS_KEY)"), "{err}");
        assert!(!err.contains("tls_cert"), "{err}");
        c.apply_env(|n| match n {
            "CAREBILL_TLS_KEY" => Some("server.key".to_owned()),
            "CAREBILL_TLS_RELOAD_INTERVAL_MS" => Some("250".to_owned()),
            _ => None,
        })
        .unwrap();
        let paths = c.tls_paths().unwrap();
        assert_eq!(paths.key, PathBuf::from("server.key"));
        assert_eq!(c.tls_reload_interval_ms, 250);
        assert_eq!(c.http_redirect_addr.as_deref(), Some("127.0.0.1:8081"));
        c.validate().unwrap();
        c.tls_reload_interval_ms = 0;
        assert!(c.validate().is_err());
        let err = Config::default().tls_paths().unwrap_err().to_string();
        assert!(
            err.contains("CAREBILL_TLS_CERT") && err.contains("CAREBILL_TLS_KEY"),
            "{err}"
        );
    }

    #[test]
    fn dual_control_threshold_in_major_units_of_each_currency() {
        use crate::money::Currency;
        let c = Config::default();
        assert_eq!(c.dual_control_threshold.to_string(), "500.00");
        // 500.00 exactly is not above the threshold; one minor unit more is.
        assert!(!c.needs_second_approver(Money::new(50_000, Currency::Usd)));
        assert!(c.needs_second_approver(Money::new(50_001, Currency::Usd)));
        assert!(!c.needs_second_approver(Money::new(500, Currency::Jpy)));
        assert!(c.needs_second_approver(Money::new(501, Currency::Jpy)));
        assert!(!c.needs_second_approver(Money::new(500_000, Currency::Kwd)));
        assert!(c.needs_second_approver(Money::new(500_001, Currency::Kwd)));

        let mut c: Config = toml::from_str("dual_control_threshold = \"1250.5\"").unwrap();
        assert!(!c.needs_second_approver(Money::new(125_050, Currency::Eur)));
        assert!(c.needs_second_approver(Money::new(125_051, Currency::Eur)));
        let from_int: Config = toml::from_str("dual_control_threshold = 100").unwrap();
        assert!(from_int.needs_second_approver(Money::new(10_001, Currency::Gbp)));
        assert!(toml::from_str::<Config>("dual_control_threshold = 100.5").is_err());
        assert!(toml::from_str::<Config>("dual_control_threshold = \"-1\"").is_err());
        assert!(toml::from_str::<Config>("dual_control_threshold = \"1e3\"").is_err());
        c.apply_env(|n| (n == "CAREBILL_DUAL_CONTROL_THRESHOLD").then(|| "0".to_owned()))
            .unwrap();
        assert!(c.needs_second_approver(Money::new(1, Currency::Jpy)));
        assert!(c
            .apply_env(|n| (n == "CAREBILL_DUAL_CONTROL_THRESHOLD").then(|| "lots".to_owned()))
            .is_err());
    }
}
