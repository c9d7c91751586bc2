//! Money: integer minor units plus an ISO 4217 currency that knows its exponent.
//!
//! This is the most carefully written code in carebill. The rules:
//! - An amount is an `i64` count of the currency's minor unit (cents, fils, yen). There is no
//!   floating point anywhere near money.
//! - Arithmetic is checked: every operation returns `Result` and overflow is an error
//!   ([`MoneyError::Overflow`]), never a wrap. There is deliberately no `Add`/`Sub` impl, so a
//!   `+` on money does not compile.
//! - Two amounts in different currencies never combine ([`MoneyError::CurrencyMismatch`]).
//! - Decimal strings ("125.50") are produced and parsed through `rust_decimal`; a string with
//!   more fractional digits than the currency has is refused, never rounded.
#![deny(
    clippy::arithmetic_side_effects,
    clippy::as_conversions,
    clippy::float_arithmetic
)]

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// The largest amount carebill accepts for a single charge, line or adjustment, in minor units.
/// 10^12 - 1 minor units is 9,999,999,999.99 in a two-decimal currency: far above any hospital
/// bill, far below `i64::MAX`, so sums of many such amounts still cannot overflow silently.
pub const AMOUNT_MINOR_MAX: i64 = 999_999_999_999;

/// Why a money operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("arithmetic overflow")]
    Overflow,
    #[error("currencies differ: {0} and {1}")]
    CurrencyMismatch(Currency, Currency),
    #[error("unsupported currency")]
    UnknownCurrency,
    #[error("not a decimal amount")]
    NotDecimal,
    #[error("{currency} allows at most {exponent} decimal places")]
    TooManyDecimals { currency: Currency, exponent: u32 },
}

/// The currencies carebill settles in, each with its ISO 4217 minor-unit exponent.
///
/// Serialized as the lowercase ISO code (`"usd"`), as Stripe does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Currency {
    Usd,
    Eur,
    Gbp,
    Cad,
    Aud,
    Chf,
    Jpy,
    Kwd,
    Bhd,
}

impl Currency {
    /// Every supported currency, in a fixed order (the chart of accounts is created per currency).
    pub const ALL: [Currency; 9] = [
        Currency::Usd,
        Currency::Eur,
        Currency::Gbp,
        Currency::Cad,
        Currency::Aud,
        Currency::Chf,
        Currency::Jpy,
        Currency::Kwd,
        Currency::Bhd,
    ];

    /// Digits after the decimal point in the currency's minor unit (ISO 4217).
    pub const fn exponent(self) -> u32 {
        match self {
            Currency::Jpy => 0,
            Currency::Kwd | Currency::Bhd => 3,
            _ => 2,
        }
    }

    /// The lowercase ISO 4217 code, as used on the API and in the database.
    pub const fn code(self) -> &'static str {
        match self {
            Currency::Usd => "usd",
            Currency::Eur => "eur",
            Currency::Gbp => "gbp",
            Currency::Cad => "cad",
            Currency::Aud => "aud",
            Currency::Chf => "chf",
            Currency::Jpy => "jpy",
            Currency::Kwd => "kwd",
            Currency::Bhd => "bhd",
        }
    }

    /// The uppercase code accounting tools expect (Beancount commodities, hledger).
    pub fn upper_code(self) -> String {
        self.code().to_ascii_uppercase()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for Currency {
    type Err = MoneyError;
    /// Accepts only the lowercase code, the one the API documents.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Currency::ALL
            .into_iter()
            .find(|c| c.code() == s)
            .ok_or(MoneyError::UnknownCurrency)
    }
}

/// An amount of one currency in integer minor units. May be negative (a signed ledger amount);
/// API inputs are parsed into [`PositiveAmount`] first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Money {
    amount_minor: i64,
    currency: Currency,
}

impl Money {
    pub const fn new(amount_minor: i64, currency: Currency) -> Self {
        Money {
            amount_minor,
            currency,
        }
    }

    pub const fn zero(currency: Currency) -> Self {
        Money::new(0, currency)
    }

    pub const fn amount_minor(self) -> i64 {
        self.amount_minor
    }

    pub const fn currency(self) -> Currency {
        self.currency
    }

    pub const fn is_zero(self) -> bool {
        self.amount_minor == 0
    }

    fn same_currency(self, other: Money) -> Result<(), MoneyError> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(MoneyError::CurrencyMismatch(self.currency, other.currency))
        }
    }

    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let amount = self
            .amount_minor
            .checked_add(other.amount_minor)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money::new(amount, self.currency))
    }

    pub fn checked_sub(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let amount = self
            .amount_minor
            .checked_sub(other.amount_minor)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money::new(amount, self.currency))
    }

    pub fn checked_neg(self) -> Result<Money, MoneyError> {
        let amount = self
            .amount_minor
            .checked_neg()
            .ok_or(MoneyError::Overflow)?;
        Ok(Money::new(amount, self.currency))
    }

    pub fn checked_mul(self, factor: i64) -> Result<Money, MoneyError> {
        let amount = self
            .amount_minor
            .checked_mul(factor)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money::new(amount, self.currency))
    }

    /// The smaller of two amounts of the same currency.
    pub fn min(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        Ok(if other.amount_minor < self.amount_minor {
            other
        } else {
            self
        })
    }

    /// The amount as an exact decimal in major units (`12550` USD → `125.50`).
    pub fn to_decimal(self) -> Decimal {
        Decimal::new(self.amount_minor, self.currency.exponent())
    }

    /// Parses a decimal string in major units ("125.50") into minor units.
    ///
    /// Refuses more fractional digits than the currency has ("1.005" USD), exponents,
    /// and anything that does not fit in `i64` minor units. "125.5" is accepted (= 125.50).
    pub fn parse_decimal(s: &str, currency: Currency) -> Result<Money, MoneyError> {
        let trimmed = s.trim();
        if trimmed.is_empty()
            || !trimmed
                .bytes()
                .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-')
        {
            return Err(MoneyError::NotDecimal);
        }
        let d = Decimal::from_str_exact(trimmed).map_err(|_| MoneyError::NotDecimal)?;
        Money::from_decimal(d, currency)
    }

    /// Converts an exact decimal in major units into minor units without rounding.
    pub fn from_decimal(d: Decimal, currency: Currency) -> Result<Money, MoneyError> {
        let exponent = currency.exponent();
        let normalized = d.normalize();
        if normalized.scale() > exponent {
            return Err(MoneyError::TooManyDecimals { currency, exponent });
        }
        let factor = Decimal::from(10_i64.checked_pow(exponent).ok_or(MoneyError::Overflow)?);
        let minor = d.checked_mul(factor).ok_or(MoneyError::Overflow)?;
        let minor = i64::try_from(minor.trunc()).map_err(|_| MoneyError::Overflow)?;
        Ok(Money::new(minor, currency))
    }
}

impl fmt::Display for Money {
    /// `125.50 usd`: the exact decimal with the currency's exponent, then the code.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.to_decimal(), self.currency)
    }
}

/// A strictly positive amount no larger than [`AMOUNT_MINOR_MAX`]: what a charge, a refund,
/// an adjustment or a line's unit price may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PositiveAmount(i64);

impl PositiveAmount {
    pub fn parse(amount_minor: i64) -> Result<Self, AmountError> {
        if amount_minor <= 0 {
            Err(AmountError::NotPositive)
        } else if amount_minor > AMOUNT_MINOR_MAX {
            Err(AmountError::TooLarge)
        } else {
            Ok(PositiveAmount(amount_minor))
        }
    }

    pub const fn get(self) -> i64 {
        self.0
    }

    pub const fn of(self, currency: Currency) -> Money {
        Money::new(self.0, currency)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("must be a positive integer number of minor units")]
    NotPositive,
    #[error("must be at most 999999999999 minor units")]
    TooLarge,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn exponents_follow_iso_4217() {
        assert_eq!(Currency::Usd.exponent(), 2);
        assert_eq!(Currency::Jpy.exponent(), 0);
        assert_eq!(Currency::Kwd.exponent(), 3);
        assert_eq!(Currency::Bhd.exponent(), 3);
    }

    #[test]
    fn decimal_round_trip_and_refusals() {
        let m = Money::parse_decimal("125.50", Currency::Usd).unwrap();
        assert_eq!(m.amount_minor(), 12550);
        assert_eq!(m.to_decimal().to_string(), "125.50");
        assert_eq!(
            Money::parse_decimal("125.5", Currency::Usd)
                .unwrap()
                .amount_minor(),
            12550
        );
        assert_eq!(
            Money::new(1, Currency::Kwd).to_decimal().to_string(),
            "0.001"
        );
        assert_eq!(
            Money::new(1500, Currency::Jpy).to_decimal().to_string(),
            "1500"
        );
        assert!(matches!(
            Money::parse_decimal("1.005", Currency::Usd),
            Err(MoneyError::TooManyDecimals { .. })
        ));
        assert!(Money::parse_decimal("1.5", Currency::Jpy).is_err());
        assert!(Money::parse_decimal("1e3", Currency::Usd).is_err());
        assert!(Money::parse_decimal("", Currency::Usd).is_err());
        assert!(Money::parse_decimal("99999999999999999999", Currency::Usd).is_err());
        // Trailing zeros beyond the exponent are not extra precision.
        assert_eq!(
            Money::parse_decimal("2.500", Currency::Usd)
                .unwrap()
                .amount_minor(),
            250
        );
    }

    #[test]
    fn overflow_is_an_error_never_a_wrap() {
        let max = Money::new(i64::MAX, Currency::Usd);
        assert_eq!(
            max.checked_add(Money::new(1, Currency::Usd)),
            Err(MoneyError::Overflow)
        );
        assert_eq!(
            Money::new(i64::MIN, Currency::Usd).checked_neg(),
            Err(MoneyError::Overflow)
        );
        assert_eq!(max.checked_mul(2), Err(MoneyError::Overflow));
    }

    #[test]
    fn currencies_never_mix() {
        let usd = Money::new(1, Currency::Usd);
        let eur = Money::new(1, Currency::Eur);
        assert!(matches!(
            usd.checked_add(eur),
            Err(MoneyError::CurrencyMismatch(..))
        ));
        assert!(matches!(
            usd.checked_sub(eur),
            Err(MoneyError::CurrencyMismatch(..))
        ));
    }

    #[test]
    fn currency_codes_parse_lowercase_only() {
        for c in Currency::ALL {
            assert_eq!(c.code().parse::<Currency>().unwrap(), c);
        }
        assert!("USD".parse::<Currency>().is_err());
        assert!("xxx".parse::<Currency>().is_err());
    }

    proptest! {
        #[test]
        fn decimal_string_round_trips(minor in -AMOUNT_MINOR_MAX..AMOUNT_MINOR_MAX, idx in 0usize..9) {
            let currency = Currency::ALL[idx];
            let m = Money::new(minor, currency);
            let s = m.to_decimal().to_string();
            prop_assert_eq!(Money::parse_decimal(&s, currency).unwrap(), m);
        }

        #[test]
        fn add_then_sub_is_identity(a in any::<i64>(), b in any::<i64>()) {
            let (a, b) = (Money::new(a, Currency::Eur), Money::new(b, Currency::Eur));
            if let Ok(sum) = a.checked_add(b) {
                prop_assert_eq!(sum.checked_sub(b).unwrap(), a);
            } else {
                prop_assert!(a.amount_minor().checked_add(b.amount_minor()).is_none());
            }
        }
    }
}
