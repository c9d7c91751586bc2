//! Logging: `tracing` to stderr, JSON when stderr is not a terminal (for log shippers),
//! human-readable otherwise. `RUST_LOG` filters (default `info`). Every request runs in a span
//! carrying its request id, so every line it logs carries the id too. Records of the `log`
//! crate (rustls, reqwest, hyper-util) are bridged into the same pipeline.
//!
//! What is never logged: request or response bodies, query strings, headers other than the
//! request id, SQL parameters (sqlx logs statement text only, with `$n` placeholders). Those
//! can hold card tokens, health data and API keys. And as a last line of defence, every log
//! line passes through `logredact` on its way out: card numbers (any Luhn-valid run of 12–19
//! digits, also grouped by spaces or dashes) and carebill secrets (`cbk_` API keys, `cbs_`
//! session tokens, `whsec_` webhook secrets) are replaced whatever field or message they
//! reached — so a mistake elsewhere cannot put one in a log file.
//!
//! Panics: the default hook prints the panic message to stderr as is. [`init`] replaces it with
//! one that logs the message as an `error` event, through the same redacting writer (a
//! message formatted from a card number or a key cannot reach stderr whole).
//! `tests/log_hygiene.rs` runs the whole billing flow with every crate at TRACE through this
//! pipeline ([`install`]) and scans the output for every value it sent.

use std::io::IsTerminal;

use logredact::RedactingTo;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Installs the process's subscriber (stderr, `RUST_LOG`) and the redacting panic hook.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    install(filter, std::io::stderr, std::io::stderr().is_terminal());
    install_panic_hook();
}

/// Installs the global subscriber: events `filter` lets through, formatted as JSON lines (or
/// for a human), each line redacted on its way to `writer`. A second call (tests start several
/// servers in one process) changes nothing and is not an error.
pub fn install<M>(filter: EnvFilter, writer: M, human: bool)
where
    M: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(RedactingTo(writer));
    let _ = if human {
        builder.try_init()
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    };
}

/// Replaces the panic hook with one that logs the panic (message and location) as an `error`
/// event, so it goes through the redacting writer. Without a subscriber it writes the redacted
/// text to stderr itself.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        if tracing::enabled!(tracing::Level::ERROR) {
            tracing::error!(panic.message = message, panic.location = %location, "panicked");
        } else {
            let text = format!("panicked at {location}: {message}\n");
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                &logredact::redact(text.as_bytes()),
            );
        }
    }));
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_panic_message_goes_through_the_redaction() {
        // Goal: a panic formatted from a card number or an API key logs neither.
        let capture = Capture::default();
        let sink = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(RedactingTo(move || sink.clone()))
            .finish();
        install_panic_hook();
        let caught = tracing::subscriber::with_default(subscriber, || {
            std::panic::catch_unwind(|| {
                panic!("charging 4242 4242 4242 4242 with key cbk_live0123456789abcdef failed")
            })
        });
        let _ = std::panic::take_hook();
        assert!(caught.is_err());
        let logged = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        assert!(logged.contains("panicked"), "{logged}");
        assert!(logged.contains("[card number redacted]"), "{logged}");
        assert!(!logged.contains("4242 4242"), "{logged}");
        assert!(!logged.contains("cbk_live0123"), "{logged}");
    }
}
