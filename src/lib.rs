//! carebill: payment and billing for healthcare providers.
//!
//! Patients pay their bills by card, billing staff issue refunds and adjustments, and the
//! provider's accounting system reads a double-entry ledger. Card numbers never reach this
//! crate: it sees processor payment-method ids or vault tokens, a brand and a last four.
//!
//! # Layout
//! One module per resource, each owning its router, request/response types, handlers and SQL:
//!
//! | module | what lives there |
//! | --- | --- |
//! | [`money`] | `Money`, `Currency` (ISO 4217 exponents), checked arithmetic, decimal strings |
//! | [`ids`] | prefixed random ids (`pat_`, `inv_`, `pay_`, `re_`, `je_`, `acct_`) |
//! | [`ledger`] | chart of accounts, posting and reversing entries, invariants, `/v1/ledger` |
//! | [`patients`] | patients and their statement |
//! | [`invoices`] | invoices, their life cycle and adjustments |
//! | [`payments`] | charging a payment method, crash-safe |
//! | [`refunds`] | refunding a payment, with reservations against over-refund |
//! | [`processor`] | the processor seam and its simulator |
//! | [`stripe`] | the Stripe adapter, verified inbound webhooks (`/v1/webhooks/stripe`) |
//! | [`crypto`] | field encryption of health data: envelope keys, blind indexes, crypto-shredding |
//! | [`vault`] | the card vault's mutual-TLS client: a card token becomes a payment method |
//! | [`idempotency`] | `Idempotency-Key`: claim, replay, resume after a crash |
//! | [`auth`] | API keys, roles and the one authorization table |
//! | [`api`], [`error`] | extractors that name bad parameters; the error type |
//! | [`db`] | the pool over PostgreSQL or SQLite, write transactions with bounded retry |
//! | [`server`] | the router, middleware, HTTPS listeners (`tlskit`) and OpenAPI document |
//! | [`cli`] | `carebill serve / migrate / up / apikey / ledger verify / bench` |
//! | [`demo`] | `carebill up`: billing, a vault child process and a seeded demo |
//! | [`webhooks`] | outbound webhooks: endpoints, the outbox, signed delivery with retries |

pub mod api;
pub mod audit;
pub mod auth;
pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
pub mod crypto;
pub mod db;
pub mod demo;
pub mod error;
pub mod export;
pub mod failpoint;
pub mod idempotency;
pub mod identity;
pub mod ids;
pub mod invoices;
pub mod ledger;
pub mod money;
pub mod openapi;
pub mod patients;
pub mod payments;
pub mod processor;
pub mod refunds;
pub mod server;
pub mod stripe;
pub mod telemetry;
pub mod vault;
pub mod webhooks;

use std::sync::Arc;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub db: db::Db,
    pub config: Arc<config::Config>,
    pub processor: Arc<dyn processor::PaymentProcessor>,
    /// The card vault, when configured; without it a card token (`tok_…`) answers 503.
    pub vault: Option<vault::VaultClient>,
    /// Session settings and sign-in throttling.
    pub identity: Arc<identity::Identity>,
    /// The audit trail's queue (written and sealed in the background).
    pub audit: audit::AuditSink,
    /// The keys of field encryption (src/crypto): data keys, blind indexes.
    pub keys: Arc<crypto::Keys>,
}
