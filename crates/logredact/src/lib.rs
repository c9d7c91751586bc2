//! A `tracing_subscriber` writer that redacts every log line on its way out: card numbers
//! (any Luhn-valid run of 12–19 digits outside a word, also grouped by spaces or dashes in
//! groups of at most 6), carebill secrets (`cbk_` API keys, `cbs_` session tokens, `whsec_`
//! webhook secrets), and the value of any field named like a security code, a password, a
//! secret or a health-data field ([`SENSITIVE_FIELDS`]: `"cvc":"…"` in JSON lines, `cvc=…` in
//! human-readable ones). Both carebill processes log through it, so a mistake anywhere else
//! cannot put one of these in a log file.

use std::io::Write;

use tracing_subscriber::fmt::MakeWriter;

/// Makes one [`RedactingLine`] per log event: redacted lines to stderr.
#[derive(Debug, Clone, Copy)]
pub struct Redacting;

impl<'a> MakeWriter<'a> for Redacting {
    type Writer = RedactingLine;

    fn make_writer(&'a self) -> Self::Writer {
        RedactedLine::new(std::io::stderr())
    }
}

/// Makes one [`RedactedLine`] per log event around what `M` makes: redacted lines to any
/// writer (a file, or a test's capture buffer), through the same code as [`Redacting`].
#[derive(Debug, Clone)]
pub struct RedactingTo<M>(pub M);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for RedactingTo<M> {
    type Writer = RedactedLine<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactedLine::new(self.0.make_writer())
    }
}

/// One event's line on its way to stderr.
pub type RedactingLine = RedactedLine<std::io::Stderr>;

/// Collects one event's bytes and writes them, redacted, to `W` in one write when dropped.
#[derive(Debug)]
pub struct RedactedLine<W: Write> {
    line: Vec<u8>,
    out: W,
}

impl<W: Write> RedactedLine<W> {
    fn new(out: W) -> Self {
        RedactedLine {
            line: Vec::with_capacity(256),
            out,
        }
    }
}

impl<W: Write> Write for RedactedLine<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<W: Write> Drop for RedactedLine<W> {
    fn drop(&mut self) {
        let line = redact(&self.line);
        let _ = self.out.write_all(&line);
        let _ = self.out.flush();
    }
}

const SECRET_PREFIXES: [&[u8]; 3] = [b"cbk_", b"cbs_", b"whsec_"];

/// Field names whose values never reach a log line, whatever they hold: card security codes,
/// credentials and secrets, and the health-data fields of a patient's record. (Not `name`,
/// which `tracing` uses for span names, nor `token`, which the vault uses for card tokens —
/// ids, not secrets.)
pub const SENSITIVE_FIELDS: &[&str] = &[
    "cvc",
    "cvv",
    "cvc2",
    "security_code",
    "password",
    "new_password",
    "current_password",
    "passphrase",
    "secret",
    "client_secret",
    "totp_secret",
    "recovery_code",
    "access_code",
    "api_key",
    "session_token",
    "authorization",
    "cookie",
    "patient_name",
    "full_name",
    "date_of_birth",
    "dob",
    "email",
    "phone",
    "mrn",
    "address",
    "line1",
    "line2",
    "postal_code",
    "description",
    "note",
    "diagnosis",
];

/// Where the value of a sensitive field starts, if `bytes[i..]` names one: `"field":` (JSON)
/// or `field=` (human-readable) at a word start.
fn sensitive_value_at(bytes: &[u8], i: usize) -> Option<usize> {
    let quoted = bytes.get(i) == Some(&b'"');
    let start = if quoted { i + 1 } else { i };
    let mut j = start;
    while bytes.get(j).copied().is_some_and(is_word) {
        j += 1;
    }
    let field = bytes.get(start..j)?;
    if !SENSITIVE_FIELDS
        .iter()
        .any(|f| f.as_bytes().eq_ignore_ascii_case(field))
    {
        return None;
    }
    if quoted {
        if bytes.get(j) != Some(&b'"') {
            return None;
        }
        j += 1;
        while bytes.get(j) == Some(&b' ') {
            j += 1;
        }
        (bytes.get(j) == Some(&b':')).then_some(j + 1)
    } else {
        (bytes.get(j) == Some(&b'=')).then_some(j + 1)
    }
}

/// The end of the value starting at `j` (after spaces): a quoted string with its escapes, or
/// a bare value up to a separator.
fn value_end(bytes: &[u8], mut j: usize) -> usize {
    while bytes.get(j) == Some(&b' ') {
        j += 1;
    }
    if bytes.get(j) == Some(&b'"') {
        j += 1;
        while let Some(b) = bytes.get(j).copied() {
            j += match b {
                b'\\' => 2,
                b'"' => return j + 1,
                _ => 1,
            };
        }
        return bytes.len();
    }
    while bytes
        .get(j)
        .copied()
        .is_some_and(|b| !matches!(b, b',' | b'}' | b']' | b' ' | b'\n'))
    {
        j += 1;
    }
    j
}

/// Scans the run of digits starting at `start` (which must begin a word): digits, with single
/// spaces or dashes between them. Returns where the run ends and, when it is a card-number
/// candidate, its digit values: 12–19 digits, Luhn-valid, not continued by a word, and not
/// grouped like a UUID (cards are printed whole or in groups of at most 6; a UUID's leading
/// groups are 8-4-4, and a dash continues them into letters: `…-4024-b16b-…`).
pub fn scan_digit_run(bytes: &[u8], start: usize) -> (usize, Option<Vec<u8>>) {
    let mut digits = Vec::new();
    let mut j = start;
    let (mut group, mut longest_group, mut grouped) = (0usize, 0usize, false);
    while let Some(b) = bytes.get(j).copied() {
        if b.is_ascii_digit() {
            digits.push(b - b'0');
            group += 1;
            longest_group = longest_group.max(group);
            j += 1;
        } else if (b == b' ' || b == b'-')
            && bytes.get(j + 1).is_some_and(u8::is_ascii_digit)
            && j > start
        {
            grouped = true;
            group = 0;
            j += 1;
        } else {
            break;
        }
    }
    let uuid_like = (grouped && longest_group > 6)
        || (bytes.get(j) == Some(&b'-') && bytes.get(j + 1).copied().is_some_and(is_word));
    let bounded = !uuid_like && !bytes.get(j).copied().is_some_and(is_word);
    let card = bounded && (12..=19).contains(&digits.len()) && luhn(&digits);
    (j, card.then_some(digits))
}

/// Whether `b` is part of a word (a digit run next to one is not a number on its own).
pub fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The Luhn (mod 10) check over digit values.
pub fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(*d);
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    !digits.is_empty() && sum.is_multiple_of(10)
}

/// `bytes` with card numbers and carebill secrets replaced.
pub fn redact(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let at_word_start = i == 0 || !bytes.get(i - 1).copied().is_some_and(is_word);
        if at_word_start {
            // A sensitive field: its name stays, its value goes.
            if let Some(value) = sensitive_value_at(bytes, i) {
                out.extend_from_slice(bytes.get(i..value).unwrap_or_default());
                out.extend_from_slice(b"\"[redacted]\"");
                i = value_end(bytes, value).max(value);
                continue;
            }
            // A secret: its prefix, then the rest of the word.
            if let Some(prefix) = SECRET_PREFIXES
                .iter()
                .find(|p| bytes.get(i..i + p.len()) == Some(**p))
            {
                let mut j = i + prefix.len();
                while bytes.get(j).copied().is_some_and(is_word) {
                    j += 1;
                }
                if j > i + prefix.len() {
                    out.extend_from_slice(prefix);
                    out.extend_from_slice(b"[redacted]");
                    i = j;
                    continue;
                }
            }
            // A card number: digits, single spaces or dashes between them, not part of a word.
            if bytes.get(i).is_some_and(u8::is_ascii_digit) {
                let (j, card) = scan_digit_run(bytes, i);
                if card.is_some() {
                    out.extend_from_slice(b"[card number redacted]");
                } else {
                    out.extend_from_slice(bytes.get(i..j).unwrap_or_default());
                }
                i = j.max(i + 1);
                continue;
            }
        }
        out.push(bytes.get(i).copied().unwrap_or_default());
        i += 1;
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn r(s: &str) -> String {
        String::from_utf8(redact(s.as_bytes())).unwrap()
    }

    #[test]
    fn card_numbers_and_secrets_never_leave() {
        assert_eq!(
            r("card 4242424242424242 declined"),
            "card [card number redacted] declined"
        );
        assert_eq!(
            r("\"pan\":\"4242 4242 4242 4242\""),
            "\"pan\":\"[card number redacted]\""
        );
        assert_eq!(r("key=cbk_AbC123xyz;"), "key=cbk_[redacted];");
        assert_eq!(r("Bearer cbs_0123456789abcdef"), "Bearer cbs_[redacted]");
        assert_eq!(r("whsec_c2VjcmV0 end"), "whsec_[redacted] end");
    }

    #[test]
    fn sensitive_fields_lose_their_values() {
        assert_eq!(
            r("{\"cvc\":\"0962\",\"exp_month\":12}"),
            "{\"cvc\":\"[redacted]\",\"exp_month\":12}"
        );
        assert_eq!(
            r("{\"Password\": \"a \\\"quoted\\\" pass\", \"x\":1}"),
            "{\"Password\":\"[redacted]\", \"x\":1}"
        );
        assert_eq!(r("{\"cvc\":962}"), "{\"cvc\":\"[redacted]\"}");
        assert_eq!(
            r("INFO signin email=jane@example.org ip=10.0.0.1"),
            "INFO signin email=\"[redacted]\" ip=10.0.0.1"
        );
        assert_eq!(
            r("date_of_birth=\"1961-07-04\" mrn=MRN-1"),
            "date_of_birth=\"[redacted]\" mrn=\"[redacted]\""
        );
        // Only whole field names: `emails_sent`, `card_note_count` and a message that merely
        // mentions a password are untouched.
        for line in [
            "{\"emails_sent\":3}",
            "{\"message\":\"password accepted\",\"stage\":\"mfa\"}",
            "xemail=1",
        ] {
            assert_eq!(r(line), line);
        }
    }

    #[test]
    fn ordinary_lines_pass_unchanged() {
        for line in [
            "{\"status\":200,\"latency_ms\":12,\"request_id\":\"req_AbCd1234\"}",
            "4242424242424241 is not a card number (Luhn)",
            "pay_4242424242424242 is an id, not a number",
            "2026-11-28T19:04:05.123456Z",
            "cbk_ alone",
            "idempotency_key 26078457-3291-4024-b16b-a3ec48446219",
        ] {
            assert_eq!(r(line), line);
        }
    }
}
