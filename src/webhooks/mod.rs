//! Outbound webhooks for accounting systems: what happened to payments, refunds, invoices, the
//! ledger, disputes, payouts and processor fees, pushed to registered HTTPS endpoints, signed per the Standard Webhooks
//! specification so receivers can verify with its published libraries.
//!
//! # Layout
//! | module | what lives there |
//! | --- | --- |
//! | [`endpoints`] | `/v1/webhook_endpoints`: register, list, change, delete, rotate the secret |
//! | [`events`] | `/v1/webhook_events`: the outbox with its deliveries; manual replay |
//! | [`outbox`] | the event types and `emit`, called inside the transaction of each change |
//! | [`worker`] | the background delivery task: order, retries, dead letters, auto-disable |
//! | [`signing`] | `whsec_…` secrets and `webhook-signature` |
//! | [`target`] | SSRF rules: https only, no internal addresses, checked again at delivery |
//! | [`config`] | the `[webhooks]` settings |
//! | [`bench`] | `carebill bench-webhooks`: delivery throughput to a local receiver |
//!
//! Tables: `webhook_endpoints`, `webhook_endpoint_events`, `webhook_events`,
//! `webhook_deliveries` (migrations/*/0006_webhooks.sql). All of it needs the `admin` role or
//! the `webhooks:manage` scope.

pub mod bench;
pub mod config;
pub mod endpoints;
pub mod events;
pub mod outbox;
pub mod signing;
pub mod target;
pub mod worker;

use axum::Router;

use crate::AppState;

/// The system data key endpoint secrets are sealed under.
pub const SYS_WEBHOOKS: &str = "sys:webhooks";

pub fn router() -> Router<AppState> {
    Router::new()
        .merge(endpoints::router())
        .merge(events::router())
}
