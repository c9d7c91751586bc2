//! TOTP multi-factor authentication (RFC 6238) and single-use recovery codes.
//!
//! - [`TotpSecret`]: 160 random bits from the OS (RFC 4226 §4 recommends 160), zeroized on
//!   drop, never shown by `Debug`. Stored as base32 ([`TotpSecret::to_base32`]).
//! - [`enrollment`]: the `otpauth://` URL and a PNG QR code of it for the authenticator app.
//! - [`verify`]: exactly [`TOTP_DIGITS`] ASCII digits, HMAC-SHA-1, 30-second steps, the
//!   current step and one either side for clock skew, constant-time comparison, and no step at
//!   or before the last one used (RFC 6238 §5.2: a code is good once). The caller stores the
//!   returned step with a compare-and-set so two requests with one code cannot both win.
//! - Recovery codes: [`new_recovery_codes`] (shown once), [`normalize_recovery_code`] (what a
//!   person typed), [`recovery_code_digest`] (what is stored).

use std::collections::HashSet;
use std::fmt;

use base64::Engine as _;
use rand::rngs::OsRng;
use rand::{Rng, RngCore};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, Secret, TOTP};
use zeroize::Zeroizing;

/// Digits in a code.
pub const TOTP_DIGITS: usize = 6;
/// Seconds in a time step (RFC 6238's recommended X = 30).
pub const TOTP_STEP_SECS: u64 = 30;
/// Steps accepted either side of the current one, for clock drift and typing time (RFC 6238
/// §5.2 recommends at most one).
pub const TOTP_SKEW_STEPS: i64 = 1;
/// A new secret's length: 160 bits.
pub const TOTP_SECRET_BYTES: usize = 20;
/// The shortest secret accepted from storage (RFC 4226's minimum, 128 bits).
const TOTP_SECRET_BYTES_MIN: usize = 16;
/// The longest secret accepted from storage (a SHA-512 block).
const TOTP_SECRET_BYTES_MAX: usize = 64;
/// The issuer shown in authenticator apps.
pub const ISSUER: &str = "carebill";

/// Recovery codes issued at enrolment.
pub const RECOVERY_CODE_COUNT: usize = 10;
/// The recovery-code alphabet: digits and lowercase letters without `0 1 i l o`, which are
/// easily misread. 31 symbols, about 4.95 bits each.
pub const RECOVERY_CODE_ALPHABET: &[u8] = b"23456789abcdefghjkmnpqrstuvwxyz";
/// Symbols in a group of a recovery code.
const RECOVERY_GROUP_LEN: usize = 5;
/// Groups in a recovery code: `xxxxx-xxxxx-xxxxx`, 15 symbols, 15 × log2(31) ≈ 74 bits.
const RECOVERY_GROUPS: usize = 3;
/// Symbols in a normalized recovery code.
pub const RECOVERY_CODE_LEN: usize = RECOVERY_GROUP_LEN * RECOVERY_GROUPS;
/// Longest input [`normalize_recovery_code`] looks at (room for spaces and dashes).
const RECOVERY_CODE_INPUT_MAX: usize = 64;

/// QR code rendering: pixels per module and the quiet zone in modules (the standard's 4).
const QR_SCALE: usize = 8;
const QR_BORDER: usize = 4;

/// A TOTP shared secret.
pub struct TotpSecret(Zeroizing<Vec<u8>>);

impl TotpSecret {
    /// 160 bits from the operating system's CSPRNG.
    pub fn generate() -> TotpSecret {
        let mut bytes = Zeroizing::new(vec![0u8; TOTP_SECRET_BYTES]);
        OsRng.fill_bytes(bytes.as_mut_slice());
        TotpSecret(bytes)
    }

    /// A secret of 16 to 64 bytes; `None` otherwise.
    pub fn from_bytes(bytes: &[u8]) -> Option<TotpSecret> {
        (TOTP_SECRET_BYTES_MIN..=TOTP_SECRET_BYTES_MAX)
            .contains(&bytes.len())
            .then(|| TotpSecret(Zeroizing::new(bytes.to_vec())))
    }

    /// Parses RFC 4648 base32 (any case, padding and spaces ignored), as written by
    /// [`TotpSecret::to_base32`]; `None` if it is not base32 or not 16 to 64 bytes.
    pub fn from_base32(text: &str) -> Option<TotpSecret> {
        // 64 bytes are 103 base32 characters; allow for spaces and padding.
        if text.len() > 256 {
            return None;
        }
        let cleaned: Zeroizing<String> = Zeroizing::new(
            text.chars()
                .filter(|c| !c.is_ascii_whitespace() && *c != '=')
                .map(|c| c.to_ascii_uppercase())
                .collect(),
        );
        let bytes = Zeroizing::new(Secret::Encoded(cleaned.to_string()).to_bytes().ok()?);
        TotpSecret::from_bytes(&bytes)
    }

    /// Unpadded uppercase RFC 4648 base32, as authenticator apps take it.
    pub fn to_base32(&self) -> String {
        self.totp(TOTP_DIGITS, None, String::new())
            .get_secret_base32()
    }

    /// The raw secret. Do not log it.
    pub fn expose_bytes(&self) -> &[u8] {
        self.0.as_slice()
    }

    /// The totp-rs view: HMAC-SHA-1, 30-second steps. (Its `skew` is unused: [`verify_with`]
    /// walks the window itself to learn which step matched.) The secret's length was checked
    /// when this value was made, so the unchecked constructor is safe; totp-rs zeroizes its
    /// copy on drop (feature `zeroize`).
    fn totp(&self, digits: usize, issuer: Option<String>, account: String) -> TOTP {
        TOTP::new_unchecked(
            Algorithm::SHA1,
            digits,
            0,
            TOTP_STEP_SECS,
            self.0.to_vec(),
            issuer,
            account,
        )
    }
}

impl fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpSecret([redacted])")
    }
}

/// What the person enrolling sees once. Every field carries the secret: show it to them over
/// TLS, never log it or store it.
pub struct Enrollment {
    /// `otpauth://totp/carebill:<email>?secret=…&issuer=carebill`.
    pub otpauth_url: String,
    /// The URL as a QR code: a grayscale PNG, standard base64 (no `data:` prefix).
    pub qr_png_base64: String,
    /// The secret in base32, for typing in when the QR code cannot be scanned.
    pub secret_base32: String,
}

impl fmt::Debug for Enrollment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Enrollment([redacted])")
    }
}

/// Why an enrolment could not be drawn up. No variant carries the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrollmentError {
    /// The account name or issuer contains `:`, which the otpauth label cannot hold.
    Label,
    /// The URL does not fit in a QR code (it is ~120 bytes, so this does not happen).
    QrTooLong,
    /// PNG encoding failed.
    Png,
}

impl fmt::Display for EnrollmentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EnrollmentError::Label => "account name or issuer contains ':'",
            EnrollmentError::QrTooLong => "otpauth URL too long for a QR code",
            EnrollmentError::Png => "QR code PNG encoding failed",
        })
    }
}

impl std::error::Error for EnrollmentError {}

/// The otpauth URL (issuer and account in the label and the issuer parameter, 6 digits,
/// SHA-1, 30 s — the defaults every authenticator app understands) and its QR code.
pub fn enrollment(
    secret: &TotpSecret,
    account_email: &str,
    issuer: &str,
) -> Result<Enrollment, EnrollmentError> {
    if account_email.contains(':') || issuer.contains(':') {
        return Err(EnrollmentError::Label);
    }
    let totp = secret.totp(
        TOTP_DIGITS,
        Some(issuer.to_owned()),
        account_email.to_owned(),
    );
    let otpauth_url = totp.get_url();
    let png = qr_png(&otpauth_url)?;
    Ok(Enrollment {
        otpauth_url,
        qr_png_base64: base64::engine::general_purpose::STANDARD.encode(png),
        secret_base32: totp.get_secret_base32(),
    })
}

/// `text` as a QR code (medium error correction): a grayscale 8-bit PNG, 8 pixels a module, a
/// 4-module white quiet zone.
fn qr_png(text: &str) -> Result<Vec<u8>, EnrollmentError> {
    let qr = qrcodegen::QrCode::encode_text(text, qrcodegen::QrCodeEcc::Medium)
        .map_err(|_| EnrollmentError::QrTooLong)?;
    let modules = usize::try_from(qr.size()).map_err(|_| EnrollmentError::QrTooLong)?;
    let side_modules = modules + 2 * QR_BORDER;
    let side = side_modules * QR_SCALE;
    let mut pixels = vec![255u8; side * side];
    for (y, row) in pixels.chunks_exact_mut(side).enumerate() {
        let qr_y = (y / QR_SCALE).checked_sub(QR_BORDER);
        for (x, pixel) in row.iter_mut().enumerate() {
            let qr_x = (x / QR_SCALE).checked_sub(QR_BORDER);
            if let (Some(qx), Some(qy)) = (qr_x, qr_y) {
                let (Ok(qx), Ok(qy)) = (i32::try_from(qx), i32::try_from(qy)) else {
                    continue;
                };
                // Out-of-range coordinates (the far quiet zone) read as light.
                if qr.get_module(qx, qy) {
                    *pixel = 0;
                }
            }
        }
    }
    let side_u32 = u32::try_from(side).map_err(|_| EnrollmentError::QrTooLong)?;
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, side_u32, side_u32);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(|_| EnrollmentError::Png)?;
    writer
        .write_image_data(&pixels)
        .map_err(|_| EnrollmentError::Png)?;
    writer.finish().map_err(|_| EnrollmentError::Png)?;
    Ok(out)
}

/// Why a code was not accepted. `Malformed` is the client's mistake (a 4xx saying so); the
/// others should all get the same "incorrect or already used" answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TotpError {
    /// Not exactly [`TOTP_DIGITS`] ASCII digits.
    Malformed,
    /// Matches no step in the window.
    Invalid,
    /// Matches a step at or before the last one used.
    Replayed,
}

impl TotpError {
    pub fn code(&self) -> &'static str {
        match self {
            TotpError::Malformed => "code_malformed",
            TotpError::Invalid | TotpError::Replayed => "mfa_code_invalid",
        }
    }
}

impl fmt::Display for TotpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TotpError::Malformed => "an authenticator code is 6 digits",
            TotpError::Invalid => "the authenticator code is incorrect",
            TotpError::Replayed => "the authenticator code was already used",
        })
    }
}

impl std::error::Error for TotpError {}

/// Checks a 6-digit code at `now_unix_secs`; on success returns the time step it matched (the
/// caller stores it as the new `last_used_step`, with a compare-and-set).
///
/// Accepts the current step and [`TOTP_SKEW_STEPS`] either side; refuses a matching step
/// `<= last_used_step` as [`TotpError::Replayed`]. All steps of the window are computed and
/// compared in constant time whatever matches, so the timing says nothing about which did.
pub fn verify(
    secret: &TotpSecret,
    code: &str,
    now_unix_secs: u64,
    last_used_step: Option<i64>,
) -> Result<i64, TotpError> {
    // Malformed input is refused before the secret is touched.
    if !well_formed(code, TOTP_DIGITS) {
        return Err(TotpError::Malformed);
    }
    let totp = secret.totp(TOTP_DIGITS, None, String::new());
    verify_with(&totp, code, now_unix_secs, last_used_step)
}

fn well_formed(code: &str, digits: usize) -> bool {
    code.len() == digits && code.bytes().all(|b| b.is_ascii_digit())
}

/// The core of [`verify`] for any totp-rs configuration (the RFC's test vectors are 8 digits
/// and also SHA-256 and SHA-512).
fn verify_with(
    totp: &TOTP,
    code: &str,
    now_unix_secs: u64,
    last_used_step: Option<i64>,
) -> Result<i64, TotpError> {
    if !well_formed(code, totp.digits) || totp.step == 0 {
        return Err(TotpError::Malformed);
    }
    let current = i64::try_from(now_unix_secs / totp.step).map_err(|_| TotpError::Invalid)?;
    let mut fresh: Option<i64> = None;
    let mut replayed = false;
    for offset in -TOTP_SKEW_STEPS..=TOTP_SKEW_STEPS {
        let Some(step) = current.checked_add(offset) else {
            continue;
        };
        let Some(at) = u64::try_from(step)
            .ok()
            .and_then(|s| s.checked_mul(totp.step))
        else {
            continue;
        };
        let expected = Zeroizing::new(totp.generate(at));
        let matches: bool = expected.as_bytes().ct_eq(code.as_bytes()).into();
        if matches {
            if last_used_step.is_some_and(|last| step <= last) {
                replayed = true;
            } else {
                fresh = Some(fresh.map_or(step, |f| f.max(step)));
            }
        }
    }
    match (fresh, replayed) {
        (Some(step), _) => Ok(step),
        (None, true) => Err(TotpError::Replayed),
        (None, false) => Err(TotpError::Invalid),
    }
}

/// `n` distinct recovery codes like `7kq2m-xh4ad-93pzt` (15 symbols from
/// [`RECOVERY_CODE_ALPHABET`], ~74 bits each, uniformly drawn from the OS CSPRNG). Show them
/// once; store only [`recovery_code_digest`] of each.
pub fn new_recovery_codes(n: usize) -> Vec<String> {
    let mut seen = HashSet::with_capacity(n);
    let mut codes = Vec::with_capacity(n);
    while codes.len() < n {
        let code = new_recovery_code();
        if seen.insert(code.clone()) {
            codes.push(code);
        }
    }
    codes
}

fn new_recovery_code() -> String {
    let mut code = String::with_capacity(RECOVERY_CODE_LEN + RECOVERY_GROUPS);
    for group in 0..RECOVERY_GROUPS {
        if group > 0 {
            code.push('-');
        }
        for _ in 0..RECOVERY_GROUP_LEN {
            let i = OsRng.gen_range(0..RECOVERY_CODE_ALPHABET.len());
            if let Some(c) = RECOVERY_CODE_ALPHABET.get(i) {
                code.push(char::from(*c));
            }
        }
    }
    code
}

/// What a person typed, as stored: lowercased, dashes and spaces removed, exactly
/// [`RECOVERY_CODE_LEN`] symbols of [`RECOVERY_CODE_ALPHABET`]. `None` for anything else,
/// including input over 64 bytes (looked at no further).
pub fn normalize_recovery_code(input: &str) -> Option<String> {
    if input.len() > RECOVERY_CODE_INPUT_MAX {
        return None;
    }
    let normalized: String = input
        .trim()
        .chars()
        .filter(|c| *c != '-' && *c != ' ')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let ok = normalized.len() == RECOVERY_CODE_LEN
        && normalized
            .bytes()
            .all(|b| RECOVERY_CODE_ALPHABET.contains(&b));
    ok.then_some(normalized)
}

/// Lowercase hex SHA-256 of the code with dashes and spaces removed and letters lowercased, so
/// the displayed and the normalized forms have the same digest. Callers validate with
/// [`normalize_recovery_code`] first (a malformed code is a 4xx, not a lookup).
///
/// Why a fast, unsalted hash is enough here, unlike passwords: a recovery code is ~74 random
/// bits, not something a person chose, so there is no dictionary to try and brute force over
/// 2^74 SHA-256 preimages is out of reach even with the digests in hand; and an unsalted digest
/// can be looked up directly (`WHERE code_sha256 = $1`), which a per-code salt would prevent.
pub fn recovery_code_digest(code: &str) -> String {
    let normalized: String = code
        .trim()
        .chars()
        .filter(|c| *c != '-' && *c != ' ')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    hex::encode(Sha256::digest(normalized.as_bytes()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const SEED_SHA1: &[u8] = b"12345678901234567890";
    const SEED_SHA256: &[u8] = b"12345678901234567890123456789012";
    const SEED_SHA512: &[u8] = b"1234567890123456789012345678901234567890123456789012345678901234";

    /// RFC 6238 Appendix B: (time, SHA-1, SHA-256, SHA-512), 8 digits, X = 30, T0 = 0.
    const RFC6238: &[(u64, &str, &str, &str)] = &[
        (59, "94287082", "46119246", "90693936"),
        (1_111_111_109, "07081804", "68084774", "25091201"),
        (1_111_111_111, "14050471", "67062674", "99943326"),
        (1_234_567_890, "89005924", "91819424", "93441116"),
        (2_000_000_000, "69279037", "90698825", "38618901"),
        (20_000_000_000, "65353130", "77737706", "47863826"),
    ];

    fn rfc_totp(algorithm: Algorithm, seed: &[u8]) -> TOTP {
        TOTP::new(algorithm, 8, 1, 30, seed.to_vec(), None, String::new()).unwrap()
    }

    #[test]
    fn rfc6238_vectors_generate() {
        for (time, sha1, sha256, sha512) in RFC6238 {
            assert_eq!(rfc_totp(Algorithm::SHA1, SEED_SHA1).generate(*time), *sha1);
            assert_eq!(
                rfc_totp(Algorithm::SHA256, SEED_SHA256).generate(*time),
                *sha256
            );
            assert_eq!(
                rfc_totp(Algorithm::SHA512, SEED_SHA512).generate(*time),
                *sha512
            );
        }
    }

    #[test]
    fn rfc6238_vectors_verify_in_the_core() {
        for (time, sha1, sha256, sha512) in RFC6238 {
            let step = i64::try_from(time / 30).unwrap();
            for (totp, code) in [
                (rfc_totp(Algorithm::SHA1, SEED_SHA1), sha1),
                (rfc_totp(Algorithm::SHA256, SEED_SHA256), sha256),
                (rfc_totp(Algorithm::SHA512, SEED_SHA512), sha512),
            ] {
                assert_eq!(verify_with(&totp, code, *time, None), Ok(step), "{time}");
                // One step late or early is within the skew window.
                assert_eq!(verify_with(&totp, code, time + 30, None), Ok(step));
                assert_eq!(verify_with(&totp, code, time - 30, None), Ok(step));
                // Two steps away is not.
                assert_eq!(
                    verify_with(&totp, code, time + 60, None),
                    Err(TotpError::Invalid)
                );
                // Replay of the same step.
                assert_eq!(
                    verify_with(&totp, code, *time, Some(step)),
                    Err(TotpError::Replayed)
                );
                // 6 digits against the 8-digit core is malformed.
                assert_eq!(
                    verify_with(&totp, &code[2..], *time, None),
                    Err(TotpError::Malformed)
                );
            }
        }
    }

    #[test]
    fn six_digit_wrapper_matches_the_rfc_vectors() {
        // A 6-digit code is the 8-digit one mod 10^6: its last six digits.
        let secret = TotpSecret::from_bytes(SEED_SHA1).unwrap();
        for (time, sha1, _, _) in RFC6238 {
            let step = i64::try_from(time / 30).unwrap();
            assert_eq!(verify(&secret, &sha1[2..], *time, None), Ok(step), "{time}");
            assert_eq!(verify(&secret, &sha1[2..], *time, Some(step - 1)), Ok(step));
            assert_eq!(
                verify(&secret, &sha1[2..], *time, Some(step)),
                Err(TotpError::Replayed)
            );
            assert_eq!(
                verify(&secret, sha1, *time, None),
                Err(TotpError::Malformed)
            );
        }
    }

    #[test]
    fn skew_window_is_one_step_each_way() {
        // A fixed secret keeps this deterministic (neighbouring steps can share a code).
        let secret = TotpSecret::from_bytes(SEED_SHA1).unwrap();
        let t0: u64 = 1_700_000_010;
        let step0 = i64::try_from(t0 / 30).unwrap();
        let code = secret.totp(6, None, String::new()).generate(t0);
        assert_eq!(verify(&secret, &code, t0, None), Ok(step0));
        assert_eq!(verify(&secret, &code, t0 + 30, None), Ok(step0));
        assert_eq!(verify(&secret, &code, t0 - 30, None), Ok(step0));
        assert_eq!(
            verify(&secret, &code, t0 + 90, None),
            Err(TotpError::Invalid)
        );
        assert_eq!(
            verify(&secret, &code, t0 - 90, None),
            Err(TotpError::Invalid)
        );
    }

    #[test]
    fn replays_are_refused() {
        let secret = TotpSecret::from_bytes(SEED_SHA1).unwrap();
        let t: u64 = 1_700_000_000;
        let code = secret.totp(6, None, String::new()).generate(t);
        let step = verify(&secret, &code, t, None).unwrap();
        assert_eq!(
            verify(&secret, &code, t, Some(step)),
            Err(TotpError::Replayed)
        );
        // Used later in the window: still a replay.
        assert_eq!(
            verify(&secret, &code, t + 30, Some(step)),
            Err(TotpError::Replayed)
        );
        // A later step's code is fine after it; an earlier one is not.
        let next = secret.totp(6, None, String::new()).generate(t + 30);
        assert_eq!(verify(&secret, &next, t + 30, Some(step)), Ok(step + 1));
        assert_eq!(
            verify(&secret, &code, t, Some(step + 1)),
            Err(TotpError::Replayed)
        );
    }

    #[test]
    fn malformed_codes_are_refused() {
        let secret = TotpSecret::generate();
        let huge = "1".repeat(1024 * 1024);
        for bad in [
            "",
            "12345",
            "1234567",
            "12345a",
            "abcdef",
            " 123456",
            "123 456",
            "12345\u{0}",
            "１２３４５６",
            "١٢٣٤٥٦",
            "+12345",
            "-12345",
            huge.as_str(),
        ] {
            assert_eq!(
                verify(&secret, bad, 1_700_000_000, None),
                Err(TotpError::Malformed),
                "{:?}",
                bad.get(..20).unwrap_or(bad)
            );
        }
        assert_eq!(TotpError::Malformed.code(), "code_malformed");
    }

    #[test]
    fn step_zero_edges() {
        let secret = TotpSecret::from_bytes(SEED_SHA1).unwrap();
        // At t = 0 the window is steps 0 and 1 (there is no step -1).
        let code = secret.totp(6, None, String::new()).generate(0);
        assert_eq!(verify(&secret, &code, 0, None), Ok(0));
        assert!(verify(&secret, "000000", u64::MAX, None).is_err());
    }

    #[test]
    fn secrets_are_160_bits_and_round_trip_base32() {
        let a = TotpSecret::generate();
        let b = TotpSecret::generate();
        assert_eq!(a.expose_bytes().len(), 20);
        assert_ne!(a.expose_bytes(), b.expose_bytes());
        let text = a.to_base32();
        assert_eq!(text.len(), 32);
        let back = TotpSecret::from_base32(&text).unwrap();
        assert_eq!(back.expose_bytes(), a.expose_bytes());
        let lower = TotpSecret::from_base32(&text.to_lowercase()).unwrap();
        assert_eq!(lower.expose_bytes(), a.expose_bytes());
        // RFC 4648 test vector: "foobar".
        assert_eq!(
            TotpSecret::from_bytes(b"foobarfoobarfoobar")
                .unwrap()
                .to_base32(),
            "MZXW6YTBOJTG633CMFZGM33PMJQXE"
        );
        assert!(TotpSecret::from_base32("not base32!").is_none());
        assert!(TotpSecret::from_base32("MZXW6YTBOI").is_none()); // 6 bytes: too short
        assert!(TotpSecret::from_base32(&"A".repeat(10_000)).is_none());
        assert!(TotpSecret::from_bytes(&[0u8; 15]).is_none());
        assert!(TotpSecret::from_bytes(&[0u8; 65]).is_none());
    }

    #[test]
    fn debug_redacts() {
        let s = TotpSecret::from_bytes(SEED_SHA1).unwrap();
        assert_eq!(format!("{s:?}"), "TotpSecret([redacted])");
        let e = enrollment(&s, "jane@example.org", ISSUER).unwrap();
        let shown = format!("{e:?}");
        assert_eq!(shown, "Enrollment([redacted])");
        assert!(!shown.contains(&s.to_base32()));
    }

    #[test]
    fn enrollment_url_and_qr() {
        let secret = TotpSecret::from_bytes(SEED_SHA1).unwrap();
        let e = enrollment(&secret, "jane.doe@example.org", ISSUER).unwrap();
        assert_eq!(
            e.otpauth_url,
            "otpauth://totp/carebill:jane.doe%40example.org?\
             secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=carebill"
        );
        assert_eq!(e.secret_base32, "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        let png_bytes = base64::engine::general_purpose::STANDARD
            .decode(&e.qr_png_base64)
            .unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Grayscale);
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        let qr =
            qrcodegen::QrCode::encode_text(&e.otpauth_url, qrcodegen::QrCodeEcc::Medium).unwrap();
        let modules = usize::try_from(qr.size()).unwrap();
        let side = (modules + 8) * 8;
        assert_eq!(usize::try_from(info.width).unwrap(), side);
        assert_eq!(usize::try_from(info.height).unwrap(), side);
        // Every module's centre pixel has the module's colour; the quiet zone is white.
        for my in 0..modules {
            for mx in 0..modules {
                let px = buf[(my * 8 + 32 + 4) * side + mx * 8 + 32 + 4];
                let dark = qr.get_module(i32::try_from(mx).unwrap(), i32::try_from(my).unwrap());
                assert_eq!(px == 0, dark, "module {mx},{my}");
            }
        }
        assert!(buf[..side * 32].iter().all(|p| *p == 255));
        assert!(buf[buf.len() - side * 32..].iter().all(|p| *p == 255));
    }

    #[test]
    fn enrollment_refuses_colons() {
        let secret = TotpSecret::generate();
        assert_eq!(
            enrollment(&secret, "a:b@example.org", ISSUER).unwrap_err(),
            EnrollmentError::Label
        );
        assert_eq!(
            enrollment(&secret, "a@example.org", "care:bill").unwrap_err(),
            EnrollmentError::Label
        );
    }

    #[test]
    fn recovery_codes_look_right_and_are_distinct() {
        let codes = new_recovery_codes(RECOVERY_CODE_COUNT);
        assert_eq!(codes.len(), 10);
        let distinct: HashSet<&String> = codes.iter().collect();
        assert_eq!(distinct.len(), 10);
        for code in &codes {
            assert_eq!(code.len(), 17, "{code}");
            let groups: Vec<&str> = code.split('-').collect();
            assert_eq!(groups.len(), 3);
            assert!(groups
                .iter()
                .all(|g| g.len() == 5 && g.bytes().all(|b| RECOVERY_CODE_ALPHABET.contains(&b))));
            let normalized = normalize_recovery_code(code).unwrap();
            assert_eq!(normalized, code.replace('-', ""));
        }
        // At least 60 bits each.
        let bits = f64::from(u32::try_from(RECOVERY_CODE_LEN).unwrap())
            * f64::from(u32::try_from(RECOVERY_CODE_ALPHABET.len()).unwrap()).log2();
        assert!(bits >= 60.0, "{bits}");
        assert!(new_recovery_codes(0).is_empty());
    }

    #[test]
    fn alphabet_has_no_ambiguous_symbols() {
        assert_eq!(RECOVERY_CODE_ALPHABET.len(), 31);
        for ambiguous in b"01ilo" {
            assert!(!RECOVERY_CODE_ALPHABET.contains(ambiguous));
        }
        let distinct: HashSet<&u8> = RECOVERY_CODE_ALPHABET.iter().collect();
        assert_eq!(distinct.len(), RECOVERY_CODE_ALPHABET.len());
    }

    #[test]
    fn recovery_codes_normalize() {
        assert_eq!(
            normalize_recovery_code("  7KQ2M-XH4AD-93PZT ").as_deref(),
            Some("7kq2mxh4ad93pzt")
        );
        assert_eq!(
            normalize_recovery_code("7kq2m xh4ad 93pzt").as_deref(),
            Some("7kq2mxh4ad93pzt")
        );
        assert_eq!(
            normalize_recovery_code("7kq2mxh4ad93pzt").as_deref(),
            Some("7kq2mxh4ad93pzt")
        );
        for bad in [
            "",
            "7kq2m-xh4ad",
            "7kq2m-xh4ad-93pzt-x",
            "7kq2m-xh4ad-93pz0",
            "7kq2m-xh4ad-93pzl",
            "7kq2m_xh4ad_93pzt",
            "7kq2m-xh4ad-93pzé",
            "123456",
        ] {
            assert_eq!(normalize_recovery_code(bad), None, "{bad}");
        }
        assert_eq!(normalize_recovery_code(&"a".repeat(1_000_000)), None);
        assert_eq!(normalize_recovery_code(&"-".repeat(65)), None);
    }

    #[test]
    fn recovery_digest_is_sha256_of_the_normalized_code() {
        let d = recovery_code_digest("7kq2mxh4ad93pzt");
        assert_eq!(d, hex::encode(Sha256::digest(b"7kq2mxh4ad93pzt")));
        assert_eq!(d.len(), 64);
        assert_eq!(recovery_code_digest("7KQ2M-XH4AD-93PZT"), d);
        assert_eq!(recovery_code_digest("7kq2m xh4ad 93pzt"), d);
        assert_ne!(recovery_code_digest("7kq2mxh4ad93pzu"), d);
        // SHA-256("") as a sanity anchor.
        assert_eq!(
            recovery_code_digest(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
