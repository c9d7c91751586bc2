//! Card-number discovery (PCI DSS 12.5.2): finds Luhn-valid 12–19 digit numbers in files, the
//! way an assessor's data-discovery tool does. `tokenizer pan-scan` runs it over databases and
//! logs; CI runs it over everything the test suite left behind.
//!
//! A candidate is a run of digits, optionally grouped by single spaces or dashes
//! (`4242 4242 4242 4242`), that is not part of a longer word (a digit run inside a hex id or
//! next to letters is not a card number as written anywhere), passes the Luhn check, and starts
//! with an issuer prefix of a card brand at a length that brand issues — as assessors' discovery
//! tools do, so a microsecond timestamp (16 digits starting with 1) is not taken for a card.
//! Findings are reported by offset and last four only.

use std::path::{Path, PathBuf};

use logredact::{is_word, scan_digit_run};

use crate::card::{Brand, PAN_DIGITS_MAX, PAN_DIGITS_MIN};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub offset: usize,
    pub last4: String,
    pub digits: usize,
    /// A security code the caller asked about, rather than a card number.
    pub security_code: bool,
}

/// Luhn-valid card-number candidates in `bytes`: the runs the log redaction layer would
/// redact (`logredact::scan_digit_run`, one definition for both), less decimal fractions, kept
/// when a card brand issues that prefix and length.
pub fn find_pans(bytes: &[u8]) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        // Not inside a word, and not the fraction of a decimal number (`1.4086748199999999`).
        let prev = i.checked_sub(1).and_then(|j| bytes.get(j)).copied();
        let prev2 = i.checked_sub(2).and_then(|j| bytes.get(j)).copied();
        let fraction = prev == Some(b'.') && prev2.is_some_and(|b| b.is_ascii_digit());
        let starts_run =
            bytes.get(i).is_some_and(u8::is_ascii_digit) && !prev.is_some_and(is_word) && !fraction;
        if !starts_run {
            i += 1;
            continue;
        }
        let (j, card) = scan_digit_run(bytes, i);
        if let Some(digits) = card.filter(|d| {
            (PAN_DIGITS_MIN..=PAN_DIGITS_MAX).contains(&d.len())
                && Brand::detect(d).issues_length(d.len())
        }) {
            let last4: String = digits
                .iter()
                .skip(digits.len() - 4)
                .map(|d| char::from(b'0' + d))
                .collect();
            out.push(Finding {
                offset: i,
                last4,
                digits: digits.len(),
                security_code: false,
            });
        }
        i = j.max(i + 1);
    }
    out
}

/// Every file under `paths` (recursively), with what [`find_pans`] found in it, and where any
/// of `codes` (security codes the caller used) appears by [`find_code`].
pub fn scan_paths(paths: &[PathBuf], codes: &[String]) -> anyhow::Result<Vec<(PathBuf, Finding)>> {
    let mut findings = Vec::new();
    let mut stack: Vec<PathBuf> = paths.to_vec();
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        } else if meta.is_file() {
            let bytes = std::fs::read(&path)?;
            findings.extend(find_pans(&bytes).into_iter().map(|f| (path.clone(), f)));
            for code in codes {
                if let Some(offset) = find_code(&bytes, code.as_bytes()) {
                    findings.push((
                        path.clone(),
                        Finding {
                            offset,
                            last4: String::new(),
                            digits: code.len(),
                            security_code: true,
                        },
                    ));
                }
            }
        }
    }
    Ok(findings)
}

/// Whether `needle` occurs in `haystack` as a whole word (not inside a longer run of
/// letters or digits): how the tests look for the security codes they used.
pub fn contains_word(haystack: &[u8], needle: &[u8]) -> bool {
    if needle.is_empty() {
        return false;
    }
    haystack.windows(needle.len()).enumerate().any(|(i, w)| {
        w == needle
            && (i == 0 || !haystack.get(i - 1).copied().is_some_and(is_word))
            && !haystack.get(i + needle.len()).copied().is_some_and(is_word)
    })
}

/// Where `code` (a security code) occurs as a whole word that is not a JSON or `key:` number
/// (`"ms":317` is a latency; `cvc=317`, `"317"` or `Cvc("317")` would be a leak), nor one of
/// the four-character groups of a UUID (`6b30ceae-0643-447d-94e5-…`: one UUID in 65 536 has
/// any given four-digit code there, and the tests' databases hold a few thousand UUIDs).
pub fn find_code(haystack: &[u8], code: &[u8]) -> Option<usize> {
    if code.is_empty() {
        return None;
    }
    haystack
        .windows(code.len())
        .enumerate()
        .find(|(i, w)| {
            let before = i.checked_sub(1).and_then(|j| haystack.get(j)).copied();
            let after = haystack.get(i + code.len()).copied();
            *w == code
                && !before.is_some_and(|b| is_word(b) || b == b':' || b == b'.')
                && !after.is_some_and(|b| is_word(b) || b == b'.')
                && !uuid_group(haystack, *i, code.len())
        })
        .map(|(i, _)| i)
}

/// Whether `haystack[at..at + len]` is the second, third or fourth group of a UUID written
/// the usual way (8-4-4-4-12 hex digits; in a database file the text next to it may be another
/// value's).
fn uuid_group(haystack: &[u8], at: usize, len: usize) -> bool {
    const UUID_LEN: usize = 36;
    const HYPHENS: [usize; 4] = [8, 13, 18, 23];
    if len != 4 {
        return false;
    }
    HYPHENS[..3].iter().any(|&hyphen| {
        let Some(start) = at.checked_sub(hyphen + 1) else {
            return false;
        };
        let Some(text) = haystack.get(start..start + UUID_LEN) else {
            return false;
        };
        text.iter().enumerate().all(|(k, b)| {
            if HYPHENS.contains(&k) {
                *b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        })
    })
}

pub fn display(path: &Path, f: &Finding) -> String {
    if f.security_code {
        return format!(
            "{}: offset {}: a {}-digit security code this run used",
            path.display(),
            f.offset,
            f.digits
        );
    }
    format!(
        "{}: offset {}: a {}-digit Luhn-valid number ending {}",
        path.display(),
        f.offset,
        f.digits,
        f.last4
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_card_numbers_as_people_write_them() {
        for text in [
            "card 4242424242424242 declined",
            "\"number\":\"4242 4242 4242 4242\"",
            "4242-4242-4242-4242",
            "amex=378282246310005;",
        ] {
            assert_eq!(find_pans(text.as_bytes()).len(), 1, "{text}");
        }
    }

    #[test]
    fn ignores_what_is_not_a_card_number() {
        for text in [
            "4242424242424241",                    // Luhn fails
            "req_4242424242424242",                // part of a word
            "a4242424242424242b",                  // inside hex
            "42424242424",                         // too short
            "424242424242424242424242",            // too long
            "2026-11-28T19:04:05.123456Z",         // a timestamp
            "1795892369572125",                    // microseconds since 1970, Luhn-valid
            "9000000000000001",                    // Luhn-valid, no card brand
            "\"elapsed_secs\":1.4086748199999999", // a float's fraction
        ] {
            assert!(find_pans(text.as_bytes()).is_empty(), "{text}");
        }
    }

    #[test]
    fn word_search_for_security_codes() {
        assert!(contains_word(b"cvc=987;", b"987"));
        assert!(!contains_word(b"x19876", b"987"));
        assert!(find_code(b"cvc=987;", b"987").is_some());
        assert!(find_code(br#"{"cvc":"987"}"#, b"987").is_some());
        assert!(find_code(br#"Cvc("987")"#, b"987").is_some());
        assert!(find_code(br#"{"ms":987,"status":200}"#, b"987").is_none());
        assert!(find_code(b"cvc 987 given", b"987").is_some());
        assert!(find_code(b"amount 1.987", b"987").is_none());
        // A group of a UUID is not a security code; the same digits elsewhere are.
        for uuid in [
            "6b30ceae-0962-447d-94e5-7c1f2a3b4d5e",
            "6b30ceae-4a7d-0962-94e5-7c1f2a3b4d5e",
            "6b30ceae-4a7d-447d-0962-7c1f2a3b4d5e",
        ] {
            assert!(find_code(uuid.as_bytes(), b"0962").is_none(), "{uuid}");
            let key = format!("\"idempotency_key\":\"{uuid}\"");
            assert!(find_code(key.as_bytes(), b"0962").is_none(), "{key}");
        }
        assert!(find_code(b"key_6b30ceae-0962-447d-94e5-7c1f2a3b4d5e", b"0962").is_none());
        assert!(find_code(b"6b30ceae-0962-447d-94e5", b"0962").is_some());
        assert!(find_code(b"exp 12/30-0962-cvc", b"0962").is_some());
        assert!(find_code(b"cvc 0962", b"0962").is_some());
    }
}
