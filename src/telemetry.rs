//! Logging: `tracing` to stderr, JSON when stderr is not a terminal (for log shippers),
//! human-readable otherwise. `RUST_LOG` filters (default `info`). Every request runs in a span
//! carrying its request id, so every line it logs carries the id too.
//!
//! What is never logged: request or response bodies, query strings, headers other than the
//! request id. Those can hold card tokens, health data and API keys.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
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
