//! Staff passwords and sign-in emails.
//!
//! - A [`Password`] is bounded ([`PASSWORD_BYTES_MAX`]) and NFKC-normalized when it is made, so
//!   nothing unbounded ever reaches argon2 or the strength estimator, and the same text typed
//!   with composed or decomposed accents is the same password (NIST SP 800-63B §5.1.1.2). It
//!   zeroizes its memory when dropped and its `Debug` shows no content.
//! - [`check_new_password`] is the policy for a *new* password: at least [`PASSWORD_CHARS_MIN`]
//!   characters, not in the bundled list of common passwords, and rated at least
//!   [`ZXCVBN_SCORE_MIN`] by zxcvbn with the user's email and name as context. There are no
//!   composition rules and no periodic expiry (NIST SP 800-63B); a reset is forced only on
//!   suspicion, elsewhere.
//! - [`hash_password`] / [`verify_password`]: argon2id in a PHC string, with the parameters of
//!   [`ARGON2_M_COST_KIB`], [`ARGON2_T_COST`] and [`ARGON2_P_COST`]. `verify_password(None, _)`
//!   does the same argon2id work as for a real user (see there), so an unknown email and a
//!   wrong password take the same time and get the same answer.
//!
//! Hashing costs ~19 MiB of memory and tens of milliseconds of CPU: call it from
//! `tokio::task::spawn_blocking`, never on the async executor.

use std::collections::HashSet;
use std::fmt;
use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::rngs::OsRng;
use rand::RngCore;
use unicode_normalization::UnicodeNormalization;
use zeroize::Zeroizing;

/// The shortest new password, in characters (Unicode scalar values, after NFKC), as the issue
/// asks (NIST SP 800-63B requires at least 8 and allows more).
pub const PASSWORD_CHARS_MIN: usize = 12;

/// The longest password, in UTF-8 bytes, checked before anything else touches it.
///
/// Why a bound at all: argon2 itself takes any length, but the request body, the NFKC pass,
/// the lowercasing for the common-password check and zxcvbn are all work proportional to the
/// input, and a sign-in endpoint that hashes whatever it is sent is a cheap way to burn CPU
/// and memory. 1024 bytes is far beyond any passphrase or password manager output (NIST asks
/// that at least 64 characters be accepted), and a password this long is refused with a 4xx
/// before any hashing, whether or not the account exists.
pub const PASSWORD_BYTES_MAX: usize = 1024;

/// The longest email address in characters (RFC 5321's 254-octet path limit, less the angle
/// brackets); anything longer is refused before it is lowercased, looked up or logged.
pub const EMAIL_CHARS_MAX: usize = 254;

/// The longest local part (before the `@`), RFC 5321 §4.5.3.1.1.
const EMAIL_LOCAL_CHARS_MAX: usize = 64;

/// argon2id memory cost in KiB: OWASP's minimum configuration for argon2id (19 MiB, t=2, p=1,
/// Password Storage Cheat Sheet). Raising any of these three makes [`needs_rehash`] true for
/// the older hashes, which the sign-in flow can then upgrade.
pub const ARGON2_M_COST_KIB: u32 = 19_456;
/// argon2id iterations (time cost); see [`ARGON2_M_COST_KIB`].
pub const ARGON2_T_COST: u32 = 2;
/// argon2id lanes (parallelism); see [`ARGON2_M_COST_KIB`].
pub const ARGON2_P_COST: u32 = 1;
/// argon2id output length in bytes.
pub const ARGON2_OUTPUT_LEN: usize = 32;
/// Random salt length in bytes (argon2's recommended 16).
const SALT_LEN: usize = 16;

/// The lowest acceptable zxcvbn score: `Three` means "safely unguessable: moderate protection
/// from an offline slow-hash scenario" (at least 10^8 guesses).
pub const ZXCVBN_SCORE_MIN: zxcvbn::Score = zxcvbn::Score::Three;

/// At most this many context words (from the email and the names) are given to zxcvbn, each
/// cut to [`HINT_CHARS_MAX`] characters: zxcvbn's work grows with them.
const HINTS_MAX: usize = 16;
const HINT_CHARS_MAX: usize = 100;

/// Words every carebill password is checked against, beside the user's own: the service's
/// name is the first thing a person reaches for (NIST SP 800-63B §5.1.1.2, context-specific
/// words).
const SERVICE_WORDS: &[&str] = &["carebill", "care", "bill", "billing"];

/// The bundled list of common passwords (30,000 lines, most common first); its header says
/// where it comes from. Lines starting with `# ` are comments.
const COMMON_PASSWORDS: &str = include_str!("common_passwords.txt");

/// A password as typed: bounded, NFKC-normalized, zeroized on drop, never shown by `Debug`.
pub struct Password(Zeroizing<String>);

impl Password {
    /// Takes ownership of the text (so the only copy is wiped on drop) and refuses it with
    /// [`PasswordError::TooLong`] past [`PASSWORD_BYTES_MAX`] bytes, before and after
    /// normalization. An empty or short password is accepted here (a sign-in with it simply
    /// fails); [`check_new_password`] holds the policy for new ones.
    pub fn new(text: String) -> Result<Password, PasswordError> {
        let raw = Zeroizing::new(text);
        if raw.len() > PASSWORD_BYTES_MAX {
            return Err(PasswordError::TooLong);
        }
        // Allocated once at the bound, so no reallocation leaves an unwiped copy behind, and
        // normalization (which can expand text) stops as soon as it passes the bound.
        let mut normalized = Zeroizing::new(String::with_capacity(PASSWORD_BYTES_MAX));
        for c in raw.nfkc() {
            if normalized.len().saturating_add(c.len_utf8()) > PASSWORD_BYTES_MAX {
                return Err(PasswordError::TooLong);
            }
            normalized.push(c);
        }
        Ok(Password(normalized))
    }

    /// The normalized text. Do not log it, format it or keep copies of it.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }

    fn chars(&self) -> usize {
        self.0.chars().count()
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password([redacted])")
    }
}

/// Why a password was refused. [`PasswordError::code`] is a stable machine code for API
/// errors; [`PasswordError::message`] is for people. Neither ever contains the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordError {
    /// Fewer than [`PASSWORD_CHARS_MIN`] characters.
    TooShort,
    /// More than [`PASSWORD_BYTES_MAX`] bytes.
    TooLong,
    /// In the bundled list of common passwords.
    Common,
    /// zxcvbn rates it below [`ZXCVBN_SCORE_MIN`]; `warning` is zxcvbn's fixed explanation,
    /// when it has one (e.g. "This is similar to a commonly used password.").
    Weak { warning: Option<String> },
}

impl PasswordError {
    /// `password_too_short`, `password_too_long`, `password_common` or `password_weak`.
    pub fn code(&self) -> &'static str {
        match self {
            PasswordError::TooShort => "password_too_short",
            PasswordError::TooLong => "password_too_long",
            PasswordError::Common => "password_common",
            PasswordError::Weak { .. } => "password_weak",
        }
    }

    /// A sentence for the person choosing the password.
    pub fn message(&self) -> String {
        match self {
            PasswordError::TooShort => {
                format!(
                    "Use at least {PASSWORD_CHARS_MIN} characters; \
                     a few unrelated words make a good password."
                )
            }
            PasswordError::TooLong => {
                format!("Passwords are limited to {PASSWORD_BYTES_MAX} bytes.")
            }
            PasswordError::Common => {
                "This password is on a list of commonly used passwords; choose another.".to_owned()
            }
            PasswordError::Weak { warning } => {
                let advice = "This password is too easy to guess; add more unrelated words, \
                              and avoid names, dates and keyboard patterns.";
                match warning {
                    Some(w) => format!("{w} {advice}"),
                    None => advice.to_owned(),
                }
            }
        }
    }
}

impl fmt::Display for PasswordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for PasswordError {}

/// The policy for a new password: length, the common-password list, then zxcvbn with the
/// user's `email` (normalized or not) and `name_hints` (names, each split into words) as
/// context, so `Pemberton1985!` passes for most people but not for jane@pemberton.example.
pub fn check_new_password(
    password: &Password,
    email: &str,
    name_hints: &[&str],
) -> Result<(), PasswordError> {
    if password.expose().len() > PASSWORD_BYTES_MAX {
        return Err(PasswordError::TooLong);
    }
    if password.chars() < PASSWORD_CHARS_MIN {
        return Err(PasswordError::TooShort);
    }
    if is_common(password) {
        return Err(PasswordError::Common);
    }
    let hints = user_inputs(email, name_hints);
    let hint_refs: Vec<&str> = hints.iter().map(String::as_str).collect();
    let entropy = zxcvbn::zxcvbn(password.expose(), &hint_refs);
    if entropy.score() < ZXCVBN_SCORE_MIN {
        let warning = entropy
            .feedback()
            .and_then(|f| f.warning())
            .map(|w| w.to_string());
        return Err(PasswordError::Weak { warning });
    }
    Ok(())
}

/// Whether the lowercased password is in the bundled list.
fn is_common(password: &Password) -> bool {
    let lowered = Zeroizing::new(password.expose().to_lowercase());
    common_passwords().contains(lowered.as_str())
}

fn common_passwords() -> &'static HashSet<&'static str> {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| {
        COMMON_PASSWORDS
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with("# "))
            .collect()
    })
}

/// The context words for zxcvbn: the whole email, its local part and its pieces, the domain's
/// labels and their pieces, each name and each word of it, and the service's own words.
/// Bounded in count and length (duplicates are harmless).
fn user_inputs(email: &str, name_hints: &[&str]) -> Vec<String> {
    let bounded = |s: &str| -> String { s.chars().take(HINT_CHARS_MAX).collect() };
    let mut out: Vec<String> = Vec::new();
    let email = email.trim();
    if !email.is_empty() {
        out.push(bounded(email));
        let (local, domain) = email.split_once('@').unwrap_or((email, ""));
        out.push(bounded(local));
        out.extend(
            local
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| w.chars().count() >= 3)
                .map(bounded),
        );
        out.extend(
            domain
                .split('.')
                .filter(|w| w.chars().count() >= 3)
                .map(bounded),
        );
        out.extend(
            domain
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| w.chars().count() >= 3 && w.len() < domain.len())
                .map(bounded),
        );
    }
    for name in name_hints {
        let name = name.trim();
        if name.is_empty() {
            continue;
        }
        out.push(bounded(name));
        out.extend(
            name.split(|c: char| !c.is_alphanumeric())
                .filter(|w| w.chars().count() >= 2)
                .map(bounded),
        );
    }
    out.truncate(HINTS_MAX);
    out.extend(SERVICE_WORDS.iter().map(|w| (*w).to_owned()));
    out
}

fn argon2id() -> anyhow::Result<Argon2<'static>> {
    let params = Params::new(
        ARGON2_M_COST_KIB,
        ARGON2_T_COST,
        ARGON2_P_COST,
        Some(ARGON2_OUTPUT_LEN),
    )
    .map_err(|e| anyhow::anyhow!("argon2 parameters: {e}"))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// argon2id with the documented parameters and a fresh 16-byte salt from the OS; returns the
/// PHC string (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`) to store. Blocking and
/// expensive: run it in `spawn_blocking`.
pub fn hash_password(password: &Password) -> anyhow::Result<String> {
    let mut salt_bytes = [0u8; SALT_LEN];
    OsRng
        .try_fill_bytes(&mut salt_bytes)
        .map_err(|e| anyhow::anyhow!("salt from the OS: {e}"))?;
    let salt =
        SaltString::encode_b64(&salt_bytes).map_err(|e| anyhow::anyhow!("argon2 salt: {e}"))?;
    let hash = argon2id()?
        .hash_password(password.expose().as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("argon2id: {e}"))?;
    Ok(hash.to_string())
}

/// Checks `candidate` against a stored PHC string, taking the same time whether or not there
/// is one.
///
/// The dummy-hash design: when the account does not exist (`phc` is `None`), or its stored
/// hash cannot be parsed, the candidate is still verified — against a dummy argon2id hash of a
/// random password that nobody knows, made once per process (a `OnceLock`) with the current
/// parameters — and the answer is `false` whatever that comparison says. So an unknown email
/// costs exactly one argon2id computation with the same memory and time cost as a wrong
/// password for a real account, and the caller answers both the same way. (Stored hashes with
/// older parameters cost what their parameters say; [`needs_rehash`] lets sign-in upgrade
/// them.) The hash comparison itself is argon2's constant-time one. Call [`warm_up`] at start-up
/// so the first unknown-email sign-in does not also pay for making the dummy. Timing is not
/// asserted in tests (too noisy on shared machines); the structure is what guarantees it.
///
/// Blocking and expensive: run it in `spawn_blocking`.
pub fn verify_password(phc: Option<&str>, candidate: &Password) -> bool {
    let parsed = phc.and_then(|p| PasswordHash::new(p).ok());
    match parsed {
        Some(hash) => Argon2::default()
            .verify_password(candidate.expose().as_bytes(), &hash)
            .is_ok(),
        None => {
            let dummy = dummy_hash();
            if let Ok(hash) = PasswordHash::new(dummy) {
                // The work is the point; the result is not.
                let _ = Argon2::default().verify_password(candidate.expose().as_bytes(), &hash);
            }
            false
        }
    }
}

/// Whether a stored hash should be replaced (after a successful sign-in) because it is not
/// argon2id v19 with exactly the current parameters, or cannot be parsed.
pub fn needs_rehash(phc: &str) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return true;
    };
    if hash.algorithm != argon2::ARGON2ID_IDENT || hash.version != Some(0x13) {
        return true;
    }
    match Params::try_from(&hash) {
        Ok(p) => {
            p.m_cost() != ARGON2_M_COST_KIB
                || p.t_cost() != ARGON2_T_COST
                || p.p_cost() != ARGON2_P_COST
                || p.output_len() != Some(ARGON2_OUTPUT_LEN)
        }
        Err(_) => true,
    }
}

/// Makes the dummy hash and loads the common-password list now rather than on first use.
pub fn warm_up() {
    let _ = dummy_hash();
    let _ = common_passwords();
}

/// Used only if making the random dummy fails (it cannot with these constant parameters): an
/// argon2id hash, with the same parameters, of 32 random bytes (as hex) that were thrown away.
/// A unit test keeps its parameters equal to the constants.
const DUMMY_HASH_FALLBACK: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$ErcCquvQUK6wWT+eB/5/FA$zIONQQuUcz2rfufDOVTM3EgKcSW0tABM4U7pcD6mCg8";

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let mut secret = Zeroizing::new([0u8; 32]);
        if OsRng.try_fill_bytes(secret.as_mut()).is_err() {
            return DUMMY_HASH_FALLBACK.to_owned();
        }
        let text = Zeroizing::new(hex::encode(secret.as_ref()));
        match Password::new(text.to_string()).map(|p| hash_password(&p)) {
            Ok(Ok(phc)) => phc,
            _ => DUMMY_HASH_FALLBACK.to_owned(),
        }
    })
}

/// Why an email address was refused. All of them answer `email_invalid` at the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailError {
    /// Longer than [`EMAIL_CHARS_MAX`] characters (or a local part over 64).
    TooLong,
    /// Empty, no `@` or more than one, an empty side, whitespace or a control character.
    Malformed,
}

impl EmailError {
    /// `email_too_long` or `email_invalid`.
    pub fn code(&self) -> &'static str {
        match self {
            EmailError::TooLong => "email_too_long",
            EmailError::Malformed => "email_invalid",
        }
    }

    pub fn message(&self) -> &'static str {
        match self {
            EmailError::TooLong => "Email addresses are limited to 254 characters.",
            EmailError::Malformed => "Not a valid email address.",
        }
    }
}

impl fmt::Display for EmailError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for EmailError {}

/// The form an email is stored and looked up in: trimmed, lowercased, at most
/// [`EMAIL_CHARS_MAX`] characters, exactly one `@` between a non-empty local part (at most 64
/// characters) and a non-empty domain without empty labels, and no whitespace or control
/// characters. Deliberately not a full RFC 5322 parser: staff addresses are plain.
pub fn normalize_email(raw: &str) -> Result<String, EmailError> {
    // A character is at most 4 bytes: anything longer than this is too long without looking.
    if raw.len() > EMAIL_CHARS_MAX.saturating_mul(4).saturating_add(64) {
        return Err(EmailError::TooLong);
    }
    let trimmed = raw.trim();
    if trimmed.chars().count() > EMAIL_CHARS_MAX {
        return Err(EmailError::TooLong);
    }
    if trimmed.is_empty() || trimmed.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(EmailError::Malformed);
    }
    let email = trimmed.to_lowercase();
    if email.chars().count() > EMAIL_CHARS_MAX {
        return Err(EmailError::TooLong);
    }
    let mut parts = email.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(EmailError::Malformed);
    };
    if local.is_empty() || domain.is_empty() || domain.split('.').any(str::is_empty) {
        return Err(EmailError::Malformed);
    }
    if local.chars().count() > EMAIL_LOCAL_CHARS_MAX {
        return Err(EmailError::TooLong);
    }
    Ok(email)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn pw(s: &str) -> Password {
        Password::new(s.to_owned()).unwrap()
    }

    const STRONG: &str = "correct horse battery staple vellum";

    #[test]
    fn refuses_short_passwords() {
        let err = check_new_password(&pw("Xk7#qL2!vR9"), "jane@example.org", &[]).unwrap_err();
        assert_eq!(err, PasswordError::TooShort);
        assert_eq!(err.code(), "password_too_short");
        // Characters, not bytes: 11 accented letters are 22 bytes and still too short.
        let err = check_new_password(&pw("éééééééééèè"), "jane@example.org", &[]).unwrap_err();
        assert_eq!(err, PasswordError::TooShort);
    }

    #[test]
    fn refuses_long_passwords_before_anything_else() {
        let err = Password::new("a".repeat(PASSWORD_BYTES_MAX + 1)).unwrap_err();
        assert_eq!(err, PasswordError::TooLong);
        assert_eq!(err.code(), "password_too_long");
        assert!(Password::new("a".repeat(PASSWORD_BYTES_MAX)).is_ok());
        // Multi-byte characters count as bytes: 513 two-byte characters are over the bound.
        assert_eq!(
            Password::new("é".repeat(513)).unwrap_err(),
            PasswordError::TooLong
        );
        // A huge input is refused, not hashed.
        assert_eq!(
            Password::new("x".repeat(10 * 1024 * 1024)).unwrap_err(),
            PasswordError::TooLong
        );
    }

    #[test]
    fn refuses_common_passwords_in_any_case() {
        for common in [
            "qwerty123456",
            "1qaz2wsx3edc",
            "JustinBieber",
            "Q1W2E3R4T5Y6",
        ] {
            let err = check_new_password(&pw(common), "jane@example.org", &[]).unwrap_err();
            assert_eq!(err, PasswordError::Common, "{common}");
            assert_eq!(err.code(), "password_common");
        }
    }

    #[test]
    fn bundled_list_is_large_and_clean() {
        let set = common_passwords();
        assert!(set.len() >= 10_000, "{}", set.len());
        assert!(set.contains("password"));
        assert!(set.contains("pic's"));
        assert!(set
            .iter()
            .all(|p| !p.is_empty() && *p == p.to_lowercase().as_str()));
    }

    #[test]
    fn refuses_weak_passwords() {
        for weak in [
            "aaaaaaaaaaaaaaaa",
            "abcdefghijklmnop",
            "1234567890123",
            "passwordpassword",
        ] {
            let err = check_new_password(&pw(weak), "jane@example.org", &[]).unwrap_err();
            assert!(
                matches!(err, PasswordError::Weak { .. } | PasswordError::Common),
                "{weak}: {err:?}"
            );
        }
        let err = check_new_password(&pw("aaaaaaaaaaaaaaaa"), "jane@example.org", &[]).unwrap_err();
        assert_eq!(err.code(), "password_weak");
    }

    #[test]
    fn the_users_own_details_make_a_password_weak() {
        // Strong enough for someone else...
        let candidate = "Pemberton1985!";
        assert!(check_new_password(&pw(candidate), "x@example.org", &[]).is_ok());
        // ...but not for Jane Doe of pemberton.example.
        let err = check_new_password(&pw(candidate), "jane.doe@pemberton.example", &["Jane Doe"])
            .unwrap_err();
        assert_eq!(err.code(), "password_weak");
        // The domain's labels count, not only its words.
        let candidate = "stmarys-clinic1";
        assert!(check_new_password(&pw(candidate), "x@example.org", &[]).is_ok());
        let err = check_new_password(
            &pw(candidate),
            "adaeze.okonkwo@stmarys-clinic.example",
            &["Adaeze Okonkwo"],
        )
        .unwrap_err();
        assert_eq!(err.code(), "password_weak");
        // The service's name is context for everyone.
        let err = check_new_password(&pw("Carebill2024!"), "x@example.org", &[]).unwrap_err();
        assert_eq!(err.code(), "password_weak");
    }

    #[test]
    fn messages_never_repeat_the_password() {
        let secret = "aaaaaaaaaaaaaaaa";
        let err = check_new_password(&pw(secret), "jane@example.org", &[]).unwrap_err();
        assert!(!err.message().contains(secret));
        assert!(!format!("{err:?}").contains(secret));
        for e in [
            PasswordError::TooShort,
            PasswordError::TooLong,
            PasswordError::Common,
        ] {
            assert!(!e.message().is_empty());
            assert_eq!(e.to_string(), e.message());
        }
    }

    #[test]
    fn accepts_a_strong_passphrase() {
        check_new_password(&pw(STRONG), "jane.doe@pemberton.example", &["Jane Doe"]).unwrap();
        check_new_password(&pw("Tq8$wz!Lm3#pV6&r"), "jane@example.org", &[]).unwrap();
    }

    #[test]
    fn debug_redacts() {
        let p = pw(STRONG);
        let shown = format!("{p:?}");
        assert_eq!(shown, "Password([redacted])");
        assert!(!shown.contains("horse"));
    }

    #[test]
    fn normalizes_nfkc() {
        // Composed é and e + combining acute are the same password.
        let composed = pw("caf\u{e9} lumi\u{e8}re ocean");
        let decomposed = pw("cafe\u{301} lumie\u{300}re ocean");
        assert_eq!(composed.expose(), decomposed.expose());
    }

    #[test]
    fn hash_verify_round_trip() {
        let p = pw(STRONG);
        let phc = hash_password(&p).unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(!phc.contains("horse"));
        assert!(verify_password(Some(&phc), &p));
        assert!(!verify_password(
            Some(&phc),
            &pw("correct horse battery staple vellun")
        ));
        assert!(!verify_password(Some(&phc), &pw("")));
        assert!(!needs_rehash(&phc));
        // Fresh salt each time.
        assert_ne!(phc, hash_password(&p).unwrap());
    }

    #[test]
    fn unknown_user_and_garbage_hashes_never_verify() {
        let p = pw(STRONG);
        assert!(!verify_password(None, &p));
        assert!(!verify_password(Some("not a phc string"), &p));
        assert!(!verify_password(Some(""), &p));
        // The dummy is made once and has the current parameters.
        let dummy = dummy_hash();
        assert!(std::ptr::eq(dummy, dummy_hash()));
        assert!(!needs_rehash(dummy));
    }

    #[test]
    fn fallback_dummy_has_current_parameters() {
        assert!(!needs_rehash(DUMMY_HASH_FALLBACK));
    }

    #[test]
    fn rehash_when_parameters_change() {
        assert!(needs_rehash("garbage"));
        assert!(needs_rehash(
            "$argon2id$v=19$m=4096,t=3,p=1$ZHVtbXktc2FsdC1jYXJlYmlsbA$iJqAGvLIMm7k2WRDjW0FpX2cx3T6yOSwGHT5Ql9kG9A"
        ));
        assert!(needs_rehash(
            "$argon2i$v=19$m=19456,t=2,p=1$ZHVtbXktc2FsdC1jYXJlYmlsbA$iJqAGvLIMm7k2WRDjW0FpX2cx3T6yOSwGHT5Ql9kG9A"
        ));
    }

    #[test]
    fn emails_are_normalized() {
        assert_eq!(
            normalize_email("  Jane.Doe@Example.ORG \n").unwrap(),
            "jane.doe@example.org"
        );
        assert_eq!(normalize_email("a@b").unwrap(), "a@b");
    }

    #[test]
    fn malformed_emails_are_refused() {
        for bad in [
            "",
            "   ",
            "jane",
            "@example.org",
            "jane@",
            "jane@@example.org",
            "jane@doe@example.org",
            "jane doe@example.org",
            "jane@exa\tmple.org",
            "jane\u{0}@example.org",
            "jane@example..org",
            "jane@.example.org",
            "jane@example.org.",
        ] {
            assert_eq!(normalize_email(bad), Err(EmailError::Malformed), "{bad:?}");
        }
        assert_eq!(EmailError::Malformed.code(), "email_invalid");
    }

    #[test]
    fn long_emails_are_refused() {
        let domain = format!("{}.org", "d".repeat(EMAIL_CHARS_MAX));
        assert_eq!(
            normalize_email(&format!("j@{domain}")),
            Err(EmailError::TooLong)
        );
        assert_eq!(
            normalize_email(&"x".repeat(10 * 1024 * 1024)),
            Err(EmailError::TooLong)
        );
        assert_eq!(
            normalize_email(&format!("{}@example.org", "j".repeat(65))),
            Err(EmailError::TooLong)
        );
        // Exactly 254 characters is fine.
        let local = "j".repeat(64);
        let domain = format!("{}.org", "d".repeat(EMAIL_CHARS_MAX - 64 - 1 - 4));
        let email = format!("{local}@{domain}");
        assert_eq!(email.len(), EMAIL_CHARS_MAX);
        assert_eq!(normalize_email(&email).unwrap(), email);
        assert_eq!(EmailError::TooLong.code(), "email_too_long");
    }
}
