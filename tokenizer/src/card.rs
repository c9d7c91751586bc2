//! Card data as types: a [`CardNumber`] and a [`Cvc`] can be validated, encrypted and compared,
//! but never printed. Their `Debug` shows brand and last four (or nothing), they have no
//! `Display` and no `Serialize`, and their memory is wiped on drop.

use chrono::Datelike;
use zeroize::{Zeroize, Zeroizing};

/// Card numbers are 12 to 19 digits (ISO/IEC 7812).
pub const PAN_DIGITS_MIN: usize = 12;
pub const PAN_DIGITS_MAX: usize = 19;
/// Cards expiring more than this many years ahead are refused as mistyped.
pub const EXPIRY_YEARS_AHEAD_MAX: i32 = 50;

/// Card brands, detected from the issuer identification number (IIN) ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Brand {
    Visa,
    Mastercard,
    Amex,
    Discover,
    Jcb,
    Diners,
    UnionPay,
    Unknown,
}

impl Brand {
    pub fn as_str(self) -> &'static str {
        match self {
            Brand::Visa => "visa",
            Brand::Mastercard => "mastercard",
            Brand::Amex => "amex",
            Brand::Discover => "discover",
            Brand::Jcb => "jcb",
            Brand::Diners => "diners",
            Brand::UnionPay => "unionpay",
            Brand::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> Option<Brand> {
        [
            Brand::Visa,
            Brand::Mastercard,
            Brand::Amex,
            Brand::Discover,
            Brand::Jcb,
            Brand::Diners,
            Brand::UnionPay,
            Brand::Unknown,
        ]
        .into_iter()
        .find(|b| b.as_str() == s)
    }

    /// The brand of a card number, by IIN prefix.
    pub fn detect(digits: &[u8]) -> Brand {
        let prefix = |n: usize| -> u32 {
            digits
                .iter()
                .take(n)
                .fold(0u32, |acc, d| acc * 10 + u32::from(*d))
        };
        let p1 = prefix(1);
        let p2 = prefix(2);
        let p3 = prefix(3);
        let p4 = prefix(4);
        if p1 == 4 {
            Brand::Visa
        } else if (51..=55).contains(&p2) || (2221..=2720).contains(&p4) {
            Brand::Mastercard
        } else if p2 == 34 || p2 == 37 {
            Brand::Amex
        } else if p4 == 6011 || (644..=649).contains(&p3) || p2 == 65 {
            Brand::Discover
        } else if (3528..=3589).contains(&p4) {
            Brand::Jcb
        } else if p2 == 36 || p2 == 38 || p2 == 39 || (300..=305).contains(&p3) || p4 == 3095 {
            Brand::Diners
        } else if p2 == 62 || p2 == 81 {
            Brand::UnionPay
        } else {
            Brand::Unknown
        }
    }

    /// The lengths this brand issues.
    fn lengths(self) -> std::ops::RangeInclusive<usize> {
        match self {
            Brand::Visa => 13..=19,
            Brand::Mastercard => 16..=16,
            Brand::Amex => 15..=15,
            Brand::Discover | Brand::Jcb | Brand::UnionPay => 16..=19,
            Brand::Diners => 14..=19,
            Brand::Unknown => PAN_DIGITS_MIN..=PAN_DIGITS_MAX,
        }
    }

    /// Whether this is a known brand that issues numbers of `len` digits.
    pub fn issues_length(self, len: usize) -> bool {
        self != Brand::Unknown && self.lengths().contains(&len)
    }

    /// Amex prints a 4-digit security code; the others 3.
    pub fn cvc_len(self) -> usize {
        if self == Brand::Amex {
            4
        } else {
            3
        }
    }
}

/// Why a card was refused. Each names the parameter at fault; none carries the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardError {
    NumberNotDigits,
    NumberLength,
    NumberLuhn,
    ExpMonth,
    ExpYear,
    Expired,
    Cvc,
}

impl CardError {
    pub fn param(self) -> &'static str {
        match self {
            CardError::NumberNotDigits | CardError::NumberLength | CardError::NumberLuhn => {
                "number"
            }
            CardError::ExpMonth => "exp_month",
            CardError::ExpYear | CardError::Expired => "exp_year",
            CardError::Cvc => "cvc",
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            CardError::NumberNotDigits | CardError::NumberLength | CardError::NumberLuhn => {
                "invalid_number"
            }
            CardError::ExpMonth => "invalid_expiry_month",
            CardError::ExpYear => "invalid_expiry_year",
            CardError::Expired => "expired_card",
            CardError::Cvc => "invalid_cvc",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            CardError::NumberNotDigits => {
                "The card number may contain only digits, spaces and dashes."
            }
            CardError::NumberLength => "The card number has the wrong number of digits.",
            CardError::NumberLuhn => "The card number is not a valid card number.",
            CardError::ExpMonth => "The expiry month must be 1 to 12.",
            CardError::ExpYear => "The expiry year is not a valid year.",
            CardError::Expired => "The card has expired.",
            CardError::Cvc => "The security code must be 3 digits (4 for American Express).",
        }
    }
}

/// A primary account number: digits only, validated. Wiped on drop; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct CardNumber {
    digits: Zeroizing<String>,
    brand: Brand,
}

impl std::fmt::Debug for CardNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CardNumber({} ••••{})",
            self.brand.as_str(),
            self.last4()
        )
    }
}

impl CardNumber {
    /// Parses what a cardholder typed: spaces and dashes are dropped, then 12–19 digits with a
    /// valid Luhn check digit and a length the brand issues.
    pub fn parse(input: &str) -> Result<CardNumber, CardError> {
        let mut digits = Zeroizing::new(String::with_capacity(PAN_DIGITS_MAX));
        for c in input.chars() {
            match c {
                '0'..='9' => {
                    if digits.len() > PAN_DIGITS_MAX {
                        return Err(CardError::NumberLength);
                    }
                    digits.push(c)
                }
                ' ' | '-' => {}
                _ => return Err(CardError::NumberNotDigits),
            }
        }
        if !(PAN_DIGITS_MIN..=PAN_DIGITS_MAX).contains(&digits.len()) {
            return Err(CardError::NumberLength);
        }
        let values: Zeroizing<Vec<u8>> =
            Zeroizing::new(digits.bytes().map(|b| b.saturating_sub(b'0')).collect());
        if !luhn_valid(&values) {
            return Err(CardError::NumberLuhn);
        }
        let brand = Brand::detect(&values);
        if !brand.lengths().contains(&digits.len()) {
            return Err(CardError::NumberLength);
        }
        Ok(CardNumber { digits, brand })
    }

    pub fn brand(&self) -> Brand {
        self.brand
    }

    pub fn last4(&self) -> &str {
        let len = self.digits.len();
        self.digits.get(len.saturating_sub(4)..).unwrap_or("")
    }

    /// The digits, for encryption and for the processor call only.
    pub fn expose_digits(&self) -> &str {
        &self.digits
    }

    /// Rebuilds a number from decrypted bytes (already validated when it was stored).
    pub fn from_stored(bytes: Zeroizing<Vec<u8>>) -> Option<CardNumber> {
        let text = std::str::from_utf8(&bytes).ok()?;
        CardNumber::parse(text).ok()
    }
}

/// The Luhn (mod 10) check over digit values (the one the log redaction layer uses too).
pub fn luhn_valid(digits: &[u8]) -> bool {
    logredact::luhn(digits)
}

/// A card's expiry, month and four-digit year.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    pub month: u32,
    pub year: i32,
}

impl Expiry {
    /// Validates an expiry against `today`: month 1–12, a two-digit year means 20xx, a card
    /// is valid through the last day of its expiry month.
    pub fn parse(month: i64, year: i64, today: chrono::NaiveDate) -> Result<Expiry, CardError> {
        let month = u32::try_from(month)
            .ok()
            .filter(|m| (1..=12).contains(m))
            .ok_or(CardError::ExpMonth)?;
        let year = i32::try_from(year).map_err(|_| CardError::ExpYear)?;
        let year = if (0..100).contains(&year) {
            year + 2000
        } else {
            year
        };
        if !(2000..=today.year() + EXPIRY_YEARS_AHEAD_MAX).contains(&year) {
            return Err(CardError::ExpYear);
        }
        let expiry = Expiry { month, year };
        if expiry.has_expired(today) {
            return Err(CardError::Expired);
        }
        Ok(expiry)
    }

    pub fn has_expired(self, today: chrono::NaiveDate) -> bool {
        (self.year, self.month) < (today.year(), today.month())
    }
}

/// A card security code. Never stored: see [`crate::cvc`]. Wiped on drop; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Cvc(Zeroizing<String>);

impl std::fmt::Debug for Cvc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cvc([redacted])")
    }
}

impl Cvc {
    pub fn parse(input: &str, brand: Brand) -> Result<Cvc, CardError> {
        if input.len() == brand.cvc_len() && input.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Cvc(Zeroizing::new(input.to_owned())))
        } else {
            Err(CardError::Cvc)
        }
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn from_bytes(mut bytes: Vec<u8>) -> Option<Cvc> {
        let out = std::str::from_utf8(&bytes)
            .ok()
            .map(|s| Cvc(Zeroizing::new(s.to_owned())));
        bytes.zeroize();
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn today() -> chrono::NaiveDate {
        chrono::NaiveDate::from_ymd_opt(2026, 11, 28).unwrap()
    }

    #[test]
    fn test_cards_parse_with_their_brand() {
        for (number, brand) in [
            ("4242 4242 4242 4242", Brand::Visa),
            ("4000-0566-5566-5556", Brand::Visa),
            ("5555555555554444", Brand::Mastercard),
            ("2223003122003222", Brand::Mastercard),
            ("378282246310005", Brand::Amex),
            ("6011111111111117", Brand::Discover),
            ("3566002020360505", Brand::Jcb),
            ("36227206271667", Brand::Diners),
            ("6200000000000005", Brand::UnionPay),
        ] {
            let card = CardNumber::parse(number).unwrap();
            assert_eq!(card.brand(), brand, "{number}");
        }
    }

    #[test]
    fn bad_numbers_are_refused_with_their_reason() {
        assert_eq!(
            CardNumber::parse("4242424242424241"),
            Err(CardError::NumberLuhn)
        );
        assert_eq!(
            CardNumber::parse("4242x42424242424"),
            Err(CardError::NumberNotDigits)
        );
        assert_eq!(CardNumber::parse("42424"), Err(CardError::NumberLength));
        assert_eq!(
            CardNumber::parse("42424242424242424242424"),
            Err(CardError::NumberLength)
        );
        // Luhn-valid, but Amex issues 15 digits.
        assert_eq!(
            CardNumber::parse("3782822463100003"),
            Err(CardError::NumberLength)
        );
    }

    #[test]
    fn debug_shows_only_brand_and_last_four() {
        let card = CardNumber::parse("4242424242424242").unwrap();
        let shown = format!("{card:?}");
        assert!(!shown.contains("424242424242"), "{shown}");
        assert!(shown.contains("4242"));
        let cvc = Cvc::parse("123", Brand::Visa).unwrap();
        assert!(!format!("{cvc:?}").contains("123"));
    }

    #[test]
    fn expiry_rules() {
        assert!(Expiry::parse(11, 2026, today()).is_ok());
        assert_eq!(Expiry::parse(10, 2026, today()), Err(CardError::Expired));
        assert_eq!(Expiry::parse(13, 2030, today()), Err(CardError::ExpMonth));
        assert_eq!(Expiry::parse(0, 2030, today()), Err(CardError::ExpMonth));
        assert_eq!(
            Expiry::parse(1, 30, today()).unwrap(),
            Expiry {
                month: 1,
                year: 2030
            }
        );
        assert_eq!(Expiry::parse(1, 2099, today()), Err(CardError::ExpYear));
    }

    #[test]
    fn cvc_length_follows_brand() {
        assert!(Cvc::parse("123", Brand::Visa).is_ok());
        assert!(Cvc::parse("1234", Brand::Amex).is_ok());
        assert_eq!(Cvc::parse("12345", Brand::Visa), Err(CardError::Cvc));
        assert_eq!(Cvc::parse("123", Brand::Amex), Err(CardError::Cvc));
        assert_eq!(Cvc::parse("12a", Brand::Visa), Err(CardError::Cvc));
    }
}
