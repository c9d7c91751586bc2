//! Prefixed, random resource ids (`pat_…`, `inv_…`, `pay_…`), Stripe style.
//!
//! The prefix says what an id names, so an id of the wrong kind is refused at the HTTP boundary
//! with an error naming the parameter, before any query runs. The random part is 24 base62
//! characters (~143 bits) and carries no information: no sequence, no time, no patient data.

use std::fmt;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// Length of the random part of every id.
pub const ID_RANDOM_LEN: usize = 24;
/// Longest id accepted from a client (prefix + random part, with room for future prefixes).
pub const ID_LEN_MAX: usize = 64;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A random base62 string of `len` characters from the OS-seeded thread RNG.
pub fn random_base62(len: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| char::from(BASE62[rng.gen_range(0..BASE62.len())]))
        .collect()
}

/// Why a string is not an id of the expected kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("must be an id starting with `{expected_prefix}`")]
pub struct IdError {
    pub expected_prefix: &'static str,
}

macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A fresh random id.
            pub fn generate() -> Self {
                $name(format!("{}{}", $prefix, random_base62(ID_RANDOM_LEN)))
            }

            /// Parses a client-supplied id: the right prefix, then 1..=64 ASCII alphanumerics or `_`.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                let err = IdError { expected_prefix: $prefix };
                let rest = s.strip_prefix($prefix).ok_or(err)?;
                if rest.is_empty()
                    || s.len() > ID_LEN_MAX
                    || !rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(err);
                }
                Ok($name(s.to_owned()))
            }

            /// Parses the id a client sent as parameter `param`; a bad one is a 400 naming it.
            pub fn parse_param(s: &str, param: &str) -> Result<Self, crate::error::ApiError> {
                $name::parse(s).map_err(|e| {
                    crate::error::ApiError::invalid(param, "parameter_invalid", e.to_string())
                })
            }

            /// [`Self::parse_param`] for an optional parameter.
            pub fn parse_opt_param(
                s: Option<&str>,
                param: &str,
            ) -> Result<Option<Self>, crate::error::ApiError> {
                s.map(|s| $name::parse_param(s, param)).transpose()
            }

            /// Wraps an id read back from our own database.
            pub fn from_db(s: String) -> Self {
                $name(s)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                $name::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
    };
}

prefixed_id!(/// A patient.
    PatientId, "pat_");
prefixed_id!(/// An invoice (a patient's bill).
    InvoiceId, "inv_");
prefixed_id!(/// A line of an invoice.
    InvoiceLineId, "il_");
prefixed_id!(/// An adjustment on an invoice (insurance adjustment, discount, write-off).
    AdjustmentId, "adj_");
prefixed_id!(/// A payment attempt.
    PaymentId, "pay_");
prefixed_id!(/// A refund of a payment.
    RefundId, "re_");
prefixed_id!(/// A journal entry of the ledger.
    EntryId, "je_");
prefixed_id!(/// A ledger account.
    AccountId, "acct_");
prefixed_id!(/// An API key (its public id, not the secret).
    ApiKeyId, "key_");
prefixed_id!(/// A user: staff or patient.
    UserId, "usr_");
prefixed_id!(/// A sign-in session (its public id, not the token).
    SessionId, "ses_");
prefixed_id!(/// A facility of the provider.
    FacilityId, "fac_");
prefixed_id!(/// A registered outbound webhook endpoint.
    WebhookEndpointId, "we_");
prefixed_id!(/// An outbound webhook event (the outbox row; its `webhook-id`).
    WebhookEventId, "evt_");
prefixed_id!(/// One delivery of an event to one endpoint.
    WebhookDeliveryId, "whd_");

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_check_their_prefix_and_alphabet() {
        let id = PaymentId::generate();
        assert!(id.as_str().starts_with("pay_"));
        assert_eq!(id.as_str().len(), 4 + ID_RANDOM_LEN);
        assert_eq!(PaymentId::parse(id.as_str()).unwrap(), id);
        assert!(PaymentId::parse("re_abc").is_err());
        assert!(PaymentId::parse("pay_").is_err());
        assert!(PaymentId::parse("pay_a b").is_err());
        assert!(PaymentId::parse("pay_'; drop table x;--").is_err());
        assert!(PaymentId::parse(&format!("pay_{}", "a".repeat(80))).is_err());
    }
}
