//! The webhook settings: the `[webhooks]` table of the TOML file, or `CAREBILL_WEBHOOK_*`.
//!
//! | setting | env | default |
//! | --- | --- | --- |
//! | `poll_interval_ms` | `CAREBILL_WEBHOOK_POLL_INTERVAL_MS` | 1000 (0: no delivery worker in this process) |
//! | `retry_schedule_ms` | `CAREBILL_WEBHOOK_RETRY_SCHEDULE_MS` (comma-separated) | 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, 24 h, 20 h: about 3 days |
//! | `disable_after_seconds` | `CAREBILL_WEBHOOK_DISABLE_AFTER_SECONDS` | 432000 (5 days failing: endpoint disabled) |
//! | `timeout_ms` | `CAREBILL_WEBHOOK_TIMEOUT_MS` | 10000 (one delivery attempt, connect to answer) |
//! | `allow_http` | `CAREBILL_WEBHOOK_ALLOW_HTTP` | false: `https://` targets only |
//! | `allow_private` | `CAREBILL_WEBHOOK_ALLOW_PRIVATE` | false: no loopback, private, link-local… addresses |
//! | `ca` | `CAREBILL_WEBHOOK_CA` | none: the public web roots (webpki-roots); a PEM file: only that CA |
//!
//! `allow_http` and `allow_private` exist for tests and closed networks; in production leave
//! them off: a webhook URL is chosen by an API caller, and without them it cannot make the
//! server reach its own database, the card vault or a cloud metadata service (SSRF).

use std::path::PathBuf;

use serde::Deserialize;

/// Delay before each retry, in order; after the last one the delivery is dead-lettered.
pub const DEFAULT_RETRY_SCHEDULE_MS: [u64; 9] = [
    5_000,      // 5 s
    300_000,    // 5 min
    1_800_000,  // 30 min
    7_200_000,  // 2 h
    18_000_000, // 5 h
    36_000_000, // 10 h
    36_000_000, // 10 h
    86_400_000, // 24 h
    72_000_000, // 20 h: about 2.98 days after the first attempt in all
];
/// Retries at most (a bound on every loop): a schedule longer than this is refused.
pub const RETRY_SCHEDULE_LEN_MAX: usize = 32;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSettings {
    pub poll_interval_ms: u64,
    pub retry_schedule_ms: Vec<u64>,
    pub disable_after_seconds: u64,
    pub timeout_ms: u64,
    pub allow_http: bool,
    pub allow_private: bool,
    pub ca: Option<PathBuf>,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            poll_interval_ms: 1_000,
            retry_schedule_ms: DEFAULT_RETRY_SCHEDULE_MS.to_vec(),
            disable_after_seconds: 432_000,
            timeout_ms: 10_000,
            allow_http: false,
            allow_private: false,
            ca: None,
        }
    }
}

impl WebhookSettings {
    pub fn apply_env(&mut self, get: &impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        let nonempty = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let number = |name: &str, v: String| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| anyhow::anyhow!("{name} must be a whole number"))
        };
        let flag = |name: &str, v: String| match v.trim() {
            "1" | "true" => Ok(true),
            "0" | "false" => Ok(false),
            _ => Err(anyhow::anyhow!("{name} must be true or false")),
        };
        for (name, slot) in [
            (
                "CAREBILL_WEBHOOK_POLL_INTERVAL_MS",
                &mut self.poll_interval_ms,
            ),
            (
                "CAREBILL_WEBHOOK_DISABLE_AFTER_SECONDS",
                &mut self.disable_after_seconds,
            ),
            ("CAREBILL_WEBHOOK_TIMEOUT_MS", &mut self.timeout_ms),
        ] {
            if let Some(v) = nonempty(name) {
                *slot = number(name, v)?;
            }
        }
        if let Some(v) = nonempty("CAREBILL_WEBHOOK_RETRY_SCHEDULE_MS") {
            self.retry_schedule_ms = v
                .split(',')
                .map(|part| number("CAREBILL_WEBHOOK_RETRY_SCHEDULE_MS", part.to_owned()))
                .collect::<Result<_, _>>()?;
        }
        if let Some(v) = nonempty("CAREBILL_WEBHOOK_ALLOW_HTTP") {
            self.allow_http = flag("CAREBILL_WEBHOOK_ALLOW_HTTP", v)?;
        }
        if let Some(v) = nonempty("CAREBILL_WEBHOOK_ALLOW_PRIVATE") {
            self.allow_private = flag("CAREBILL_WEBHOOK_ALLOW_PRIVATE", v)?;
        }
        if let Some(v) = nonempty("CAREBILL_WEBHOOK_CA") {
            self.ca = Some(PathBuf::from(v));
        }
        Ok(())
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.retry_schedule_ms.len() <= RETRY_SCHEDULE_LEN_MAX,
            "webhooks.retry_schedule_ms has more than {RETRY_SCHEDULE_LEN_MAX} retries"
        );
        anyhow::ensure!(
            self.retry_schedule_ms
                .iter()
                .all(|ms| *ms <= 7 * 86_400_000),
            "webhooks.retry_schedule_ms: each delay must be at most 7 days"
        );
        anyhow::ensure!(
            (100..=120_000).contains(&self.timeout_ms),
            "webhooks.timeout_ms must be between 100 and 120000"
        );
        anyhow::ensure!(
            self.disable_after_seconds >= 1,
            "webhooks.disable_after_seconds must be at least 1"
        );
        Ok(())
    }
}
