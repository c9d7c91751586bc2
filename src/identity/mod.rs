//! Identity and access: users (staff and patients), passwords, TOTP MFA, sessions, guest pay,
//! scoped API keys and the security event log. What a principal may *do* is decided in
//! [`crate::auth`]; this module is how principals come to exist.

pub mod events;
pub mod keys;
pub mod password;
pub mod sessions;
pub mod throttle;
pub mod totp;
pub mod users;

use std::time::Duration;

use axum::Router;

use crate::AppState;

/// Identity settings and in-memory state shared by the handlers.
pub struct Identity {
    pub sessions: sessions::SessionSettings,
    pub throttle: throttle::Throttle,
    /// Per-caller request rate (keyed by key id, user id or guest).
    pub api_rate: governor::DefaultKeyedRateLimiter<String>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("sessions", &self.sessions)
            .field("throttle", &self.throttle)
            .finish()
    }
}

impl Identity {
    pub fn from_config(config: &crate::config::Config) -> Identity {
        Identity {
            sessions: sessions::SessionSettings {
                idle_timeout: Duration::from_secs(config.session_idle_timeout_seconds.max(60)),
                lifetime: Duration::from_secs(config.session_lifetime_seconds.max(300)),
            },
            throttle: throttle::Throttle::new(
                Duration::from_secs(config.signin_window_seconds.max(1)),
                config.signin_failures_per_account,
                config.signin_failures_per_address,
            ),
            api_rate: governor::RateLimiter::keyed(governor::Quota::per_second(
                std::num::NonZeroU32::new(config.api_requests_per_second)
                    .unwrap_or(std::num::NonZeroU32::MIN),
            )),
        }
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .merge(sessions::router())
        .merge(users::router())
        .merge(keys::router())
}

/// Access codes are printed on statements in groups (`ABCD-EFGH-JKLM`); people type them in
/// any case, with or without the dashes.
pub fn normalize_access_code(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}
