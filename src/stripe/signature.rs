//! `Stripe-Signature` verification, as Stripe specifies it.
//!
//! The header is `t=<unix seconds>,v1=<hex>[,v1=<hex>…]` (other schemes such as `v0` are
//! ignored). The signed payload is `t` + `.` + the raw request body, exactly as received; each
//! `v1` is the hex HMAC-SHA256 of it under an endpoint secret. The event is accepted when any
//! `v1` matches under any configured secret (several during rotation), compared in constant
//! time (`subtle`), and `t` is within the tolerance of now (300 s by default) — in either
//! direction, so a replay of an old event and a signature minted ahead of time both fail.
//!
//! The header is bounded (4 KiB, 16 signatures) before any HMAC runs, so a huge or repetitive
//! header costs nothing; a malformed one is told apart from a wrong one only in the error's
//! code, never by echoing what was sent.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Longest header accepted.
pub const HEADER_MAX_BYTES: usize = 4096;
/// Most `v1` signatures read from one header.
pub const SIGNATURES_MAX: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    /// No `Stripe-Signature` header.
    Missing,
    /// The header is not `t=…,v1=…` (the reason is a fixed word).
    Malformed(&'static str),
    /// `t` is outside the tolerance.
    Stale,
    /// No `v1` matches under any configured secret.
    NoMatch,
    /// No secret is configured: nothing can be verified.
    NotConfigured,
}

impl SignatureError {
    pub fn code(self) -> &'static str {
        match self {
            SignatureError::Missing => "signature_missing",
            SignatureError::Malformed(_) => "signature_malformed",
            SignatureError::Stale => "signature_stale",
            SignatureError::NoMatch => "signature_invalid",
            SignatureError::NotConfigured => "webhook_not_configured",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            SignatureError::Missing => "The Stripe-Signature header is missing.",
            SignatureError::Malformed(_) => {
                "The Stripe-Signature header is not of the form t=<timestamp>,v1=<hex signature>."
            }
            SignatureError::Stale => "The Stripe-Signature timestamp is outside the tolerance.",
            SignatureError::NoMatch => "No signature in Stripe-Signature matches.",
            SignatureError::NotConfigured => "Stripe webhooks are not configured on this server.",
        }
    }
}

/// The parts of a well-formed header.
#[derive(Debug)]
pub struct ParsedHeader {
    pub timestamp: i64,
    pub signatures: Vec<[u8; 32]>,
}

pub fn parse_header(header: &str) -> Result<ParsedHeader, SignatureError> {
    if header.len() > HEADER_MAX_BYTES {
        return Err(SignatureError::Malformed("too_long"));
    }
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let (key, value) = part
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed("not_key_value"))?;
        match key {
            "t" => {
                if timestamp.is_some() {
                    return Err(SignatureError::Malformed("two_timestamps"));
                }
                if value.is_empty()
                    || value.len() > 12
                    || !value.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(SignatureError::Malformed("timestamp_not_a_number"));
                }
                timestamp = Some(
                    value
                        .parse::<i64>()
                        .map_err(|_| SignatureError::Malformed("timestamp_not_a_number"))?,
                );
            }
            "v1" => {
                if signatures.len() >= SIGNATURES_MAX {
                    return Err(SignatureError::Malformed("too_many_signatures"));
                }
                let mut sig = [0u8; 32];
                hex::decode_to_slice(value, &mut sig)
                    .map_err(|_| SignatureError::Malformed("signature_not_hex_sha256"))?;
                signatures.push(sig);
            }
            _ => {} // v0 and schemes to come: ignored, as Stripe's libraries do
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed("no_timestamp"))?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed("no_v1_signature"));
    }
    Ok(ParsedHeader {
        timestamp,
        signatures,
    })
}

/// The `v1` signature of `body` at `timestamp` under `secret`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> [u8; 32] {
    // HMAC takes a key of any length: this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return [0u8; 32],
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// A header Stripe would send for `body` (tests, benchmarks and the fault-injecting server).
pub fn header_for(secret: &str, timestamp: i64, body: &[u8]) -> String {
    format!(
        "t={timestamp},v1={}",
        hex::encode(sign(secret.as_bytes(), timestamp, body))
    )
}

/// Verifies `header` for `body` against `secrets` at `now` (Unix seconds).
pub fn verify(
    header: Option<&str>,
    body: &[u8],
    secrets: &[zeroize::Zeroizing<String>],
    tolerance_seconds: u64,
    now: i64,
) -> Result<i64, SignatureError> {
    if secrets.is_empty() {
        return Err(SignatureError::NotConfigured);
    }
    let parsed = parse_header(header.ok_or(SignatureError::Missing)?)?;
    let tolerance = i64::try_from(tolerance_seconds).unwrap_or(i64::MAX);
    if now.abs_diff(parsed.timestamp) > tolerance.unsigned_abs() {
        return Err(SignatureError::Stale);
    }
    // Every secret against every signature, with no early exit: the time taken does not tell
    // which one matched.
    let mut matched = subtle::Choice::from(0u8);
    for secret in secrets {
        let expected = sign(secret.as_bytes(), parsed.timestamp, body);
        for candidate in &parsed.signatures {
            matched |= expected.ct_eq(candidate);
        }
    }
    if bool::from(matched) {
        Ok(parsed.timestamp)
    } else {
        Err(SignatureError::NoMatch)
    }
}

/// `carebill bench-webhooks-verify`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Seconds each measurement lasts.
    #[arg(long, default_value_t = 3)]
    pub seconds: u64,
    /// Size of the event body signed (Stripe's events are a few KiB).
    #[arg(long, default_value_t = 2048)]
    pub body_bytes: usize,
}

/// How many times `f` runs in `seconds` on one thread, per second.
fn per_second(seconds: u64, mut f: impl FnMut() -> bool) -> anyhow::Result<f64> {
    let budget = std::time::Duration::from_secs(seconds.clamp(1, 600));
    let start = std::time::Instant::now();
    let mut n: f64 = 0.0;
    loop {
        // 256 calls between clock reads: the clock is not what is measured.
        for _ in 0..256 {
            anyhow::ensure!(std::hint::black_box(f()), "the benchmark's check failed");
        }
        n += 256.0;
        let elapsed = start.elapsed();
        if elapsed >= budget {
            return Ok(n / elapsed.as_secs_f64());
        }
    }
}

/// Stripe-Signature verifications per second (one thread), against raw HMAC-SHA256 over the
/// same signed payload in the same run: the ratio is what to compare across machines.
pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let body: Vec<u8> = std::iter::repeat_n(b'x', args.body_bytes.clamp(1, 1 << 20)).collect();
    let now: i64 = 1_800_000_000;
    let one = vec![zeroize::Zeroizing::new("whsec_bench_current".to_owned())];
    let two = vec![
        zeroize::Zeroizing::new("whsec_bench_current".to_owned()),
        zeroize::Zeroizing::new("whsec_bench_previous".to_owned()),
    ];
    let good = header_for("whsec_bench_current", now, &body);
    let old = header_for("whsec_bench_previous", now, &body);
    let wrong = header_for("whsec_someone_else", now, &body);
    let malformed = format!("t={now},{}", "v1=00,".repeat(600));
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    eprintln!(
        "bench-webhooks-verify: {build} build, one thread, {} s each, {} byte body",
        args.seconds,
        body.len()
    );
    let raw = per_second(args.seconds, || {
        std::hint::black_box(sign(b"whsec_bench_current", now, &body));
        true
    })?;
    let cases: Vec<(&str, f64)> = vec![
        (
            "verify, 1 secret, valid",
            per_second(args.seconds, || {
                verify(Some(&good), &body, &one, 300, now).is_ok()
            })?,
        ),
        (
            "verify, 2 secrets (rotation), signed by the old one",
            per_second(args.seconds, || {
                verify(Some(&old), &body, &two, 300, now).is_ok()
            })?,
        ),
        (
            "verify, 2 secrets, wrong secret (rejected)",
            per_second(args.seconds, || {
                verify(Some(&wrong), &body, &two, 300, now) == Err(SignatureError::NoMatch)
            })?,
        ),
        (
            "verify, malformed 4 KiB header (rejected before any HMAC)",
            per_second(args.seconds, || {
                matches!(
                    verify(Some(&malformed), &body, &two, 300, now),
                    Err(SignatureError::Malformed(_))
                )
            })?,
        ),
    ];
    println!("| measurement | per second | ratio to raw HMAC-SHA256 |");
    println!("| --- | ---: | ---: |");
    println!("| raw HMAC-SHA256 of `t.` + body (reference) | {raw:.0} | 1.00 |");
    for (name, rate) in cases {
        println!("| {name} | {rate:.0} | {:.2} |", rate / raw);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn secrets(list: &[&str]) -> Vec<zeroize::Zeroizing<String>> {
        list.iter()
            .map(|s| zeroize::Zeroizing::new((*s).to_owned()))
            .collect()
    }

    #[test]
    fn stripe_documented_example_shape() {
        let body = br#"{"id":"evt_1","type":"payout.paid"}"#;
        let h = header_for("whsec_a", 1_700_000_000, body);
        assert_eq!(
            verify(Some(&h), body, &secrets(&["whsec_a"]), 300, 1_700_000_100),
            Ok(1_700_000_000)
        );
        // The old secret during rotation, and a v0 alongside.
        let h2 = format!("{h},v0=deadbeef");
        assert!(verify(
            Some(&h2),
            body,
            &secrets(&["whsec_b", "whsec_a"]),
            300,
            1_700_000_000
        )
        .is_ok());
        assert_eq!(
            verify(Some(&h), body, &secrets(&["whsec_b"]), 300, 1_700_000_000),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            verify(Some(&h), body, &secrets(&["whsec_a"]), 300, 1_700_000_301),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify(Some(&h), b"{}", &secrets(&["whsec_a"]), 300, 1_700_000_000),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            verify(None, body, &secrets(&["whsec_a"]), 300, 0),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify(Some(&h), body, &[], 300, 0),
            Err(SignatureError::NotConfigured)
        );
    }

    #[test]
    fn malformed_headers() {
        for h in [
            "",
            "t=1",
            "v1=00",
            "t=x,v1=00",
            "t=1,v1=zz",
            "t=1,v1=abcd",
            "garbage",
            "t=1,t=2,v1=00",
        ] {
            assert!(
                matches!(parse_header(h), Err(SignatureError::Malformed(_))),
                "{h}"
            );
        }
        let huge = format!("t=1,{}", "v1=".repeat(5000));
        assert!(matches!(
            parse_header(&huge),
            Err(SignatureError::Malformed("too_long"))
        ));
        let many = format!("t=1{}", format!(",v1={}", "a".repeat(64)).repeat(17));
        assert!(matches!(
            parse_header(&many),
            Err(SignatureError::Malformed("too_many_signatures"))
        ));
    }
}
