//! Field encryption of health data: envelope keys, blind indexes, rotation and crypto-shredding.
//!
//! # The scheme
//! - Every patient has a **data key** (AES-256-SIV, 512 bits) that encrypts their name, date of
//!   birth, contact details, medical record number and the codes and descriptions of their
//!   invoice lines ([`field`]). System secrets have their own data keys, one per purpose
//!   (`sys:totp` for staff TOTP seeds, `sys:export-pseudonyms` for the ledger export's
//!   pseudonym key).
//! - Data keys are stored only **wrapped** under a versioned **key-encrypting key** (KEK) from
//!   the keyring ([`keyring`]; a KMS can stand in through [`KeyProvider`]), in `data_keys`,
//!   with the KEK version beside them and bound into the wrap.
//! - **Lookup without decryption**: email, MRN and name + date of birth have blind indexes
//!   ([`blind`]: HMAC-SHA256 under the keyring's own index key).
//! - **Rotation**: `carebill keys rotate` adds KEK version N+1 (new data keys are wrapped under
//!   it at once, by running servers too: they read the active version in the transaction that
//!   wraps); `carebill keys rewrap` re-wraps every data key in bounded, resumable batches and
//!   then retires the versions nothing uses, which the database refuses to wrap under again.
//!   Field ciphertexts do not change: only the wraps do.
//! - **Erasure** (`DELETE /v1/patients/{id}/personal-data`) destroys the patient's data key: their
//!   health and contact data become unreadable ciphertext, their blind indexes are cleared, and the
//!   ledger keeps every amount under the patient id (a pseudonym once nothing links it to a person).
//!
//! Amounts, currencies, dates of service and ids stay in clear so the ledger can be queried and
//! exported. A value that fails authentication is an error for that record only, recorded as a
//! `ciphertext_rejected` security event; it never panics and never takes a list down.

pub mod bench;
pub mod blind;
pub mod cli;
pub mod field;
pub mod keyring;
pub mod notes;
pub mod store;

pub use blind::IndexKey;
pub use field::{DataKey, Field};
pub use keyring::{KeyProvider, LocalKeyring};
pub use store::{KeyState, Keys};

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("decryption failed: wrong key or altered ciphertext")]
    Decrypt,
    #[error("encryption failed")]
    Encrypt,
    #[error("key material has the wrong length")]
    KeyLength,
    #[error("KEK version {0} is not in the keyring")]
    UnknownKekVersion(i64),
}
