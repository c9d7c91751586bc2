//! Logging: `tracing` to stderr, JSON when stderr is not a terminal (for log shippers),
//! human-readable otherwise. `RUST_LOG` filters (default `info`). Every request runs in a span
//! carrying its request id, so every line it logs carries the id too.
//!
//! What is never logged: request or response bodies, query strings, headers other than the
//! request id. Those can hold card tokens, health data and API keys. And as a last line of
//! defence, every log line passes through `logredact` on its way out: card numbers (any
//! Luhn-valid run of 12–19 digits, also grouped by spaces or dashes) and carebill secrets
//! (`cbk_` API keys, `cbs_` session tokens, `whsec_` webhook secrets) are replaced whatever
//! field or message they reached — so a mistake elsewhere cannot put one in a log file.

use std::io::IsTerminal;

use logredact::Redacting;
use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Redacting);
    // try_init: a second call (tests start several servers in one process) is not an error.
    let _ = if std::io::stderr().is_terminal() {
        builder.try_init()
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    };
}
