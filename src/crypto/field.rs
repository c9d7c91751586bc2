//! Field encryption under a data key: AES-256-SIV as a nonce-based AEAD (RFC 5297 §3), a fresh
//! random 128-bit nonce per value, and associated data that binds a ciphertext to its table,
//! column, patient and row, so a value copied into another row or column fails to open.
//!
//! Stored form: `v1.` + base64url(nonce ‖ ciphertext ‖ tag). `v1` names the format and the
//! data-key generation; the data key itself is stored wrapped under a versioned KEK
//! (`patient_keys.kek_version`). The database CHECKs the prefix on every encrypted column, so a
//! bug that writes a clear value is refused there too.
//!
//! AES-SIV rather than AES-GCM: a repeated nonce (a broken RNG, a cloned VM) costs only the
//! leak of equality of two equal values, never the key stream or the authentication key.

use aes_siv::aead::generic_array::GenericArray;
use aes_siv::aead::{Aead, KeyInit, Payload};
use aes_siv::Aes256SivAead;
use base64::Engine as _;
use rand::RngCore;
use zeroize::Zeroizing;

use super::CryptoError;

pub const DATA_KEY_BYTES: usize = 64;
const NONCE_BYTES: usize = 16;
pub const PREFIX: &str = "v1.";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A data key (one per patient, one per system purpose). Wiped on drop; prints as `[redacted]`.
#[derive(Clone)]
pub struct DataKey(Zeroizing<[u8; DATA_KEY_BYTES]>);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey([redacted])")
    }
}

/// Where a value lives: bound into its ciphertext as associated data.
#[derive(Debug, Clone, Copy)]
pub struct Field<'a> {
    /// `table.column`, e.g. `patients.name`.
    pub column: &'a str,
    /// The key's owner: a patient id, or a system purpose.
    pub owner: &'a str,
    /// The row (its public id).
    pub row: &'a str,
}

impl<'a> Field<'a> {
    pub fn new(column: &'a str, owner: &'a str, row: &'a str) -> Field<'a> {
        Field { column, owner, row }
    }

    fn associated_data(&self) -> Vec<u8> {
        let mut ad = b"carebill.field.v1".to_vec();
        for part in [self.column, self.owner, self.row] {
            ad.push(0);
            ad.extend_from_slice(&u64::try_from(part.len()).unwrap_or(u64::MAX).to_be_bytes());
            ad.extend_from_slice(part.as_bytes());
        }
        ad
    }
}

impl DataKey {
    pub fn generate() -> DataKey {
        let mut bytes = Zeroizing::new([0u8; DATA_KEY_BYTES]);
        rand::rngs::OsRng.fill_bytes(bytes.as_mut());
        DataKey(bytes)
    }

    pub fn from_slice(bytes: &[u8]) -> Result<DataKey, CryptoError> {
        let array: [u8; DATA_KEY_BYTES] = bytes.try_into().map_err(|_| CryptoError::KeyLength)?;
        Ok(DataKey(Zeroizing::new(array)))
    }

    pub(crate) fn expose(&self) -> &[u8] {
        self.0.as_ref()
    }

    fn cipher(&self) -> Aes256SivAead {
        Aes256SivAead::new(GenericArray::from_slice(self.0.as_ref()))
    }

    /// Encrypts `plaintext` for `field`.
    pub fn seal(&self, field: Field<'_>, plaintext: &str) -> Result<String, CryptoError> {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ad = field.associated_data();
        let ciphertext = self
            .cipher()
            .encrypt(
                GenericArray::from_slice(&nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: &ad,
                },
            )
            .map_err(|_| CryptoError::Encrypt)?;
        let mut out = Vec::with_capacity(NONCE_BYTES + ciphertext.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        Ok(format!("{PREFIX}{}", B64.encode(out)))
    }

    /// Encrypts an optional value (`None` stays `None`).
    pub fn seal_opt(
        &self,
        field: Field<'_>,
        plaintext: Option<&str>,
    ) -> Result<Option<String>, CryptoError> {
        plaintext.map(|p| self.seal(field, p)).transpose()
    }

    /// Decrypts what [`seal`](Self::seal) made for the same field, or fails: wrong key, altered
    /// or moved ciphertext, or not a ciphertext at all.
    pub fn open(&self, field: Field<'_>, sealed: &str) -> Result<Zeroizing<String>, CryptoError> {
        let body = sealed.strip_prefix(PREFIX).ok_or(CryptoError::Decrypt)?;
        let bytes = B64.decode(body).map_err(|_| CryptoError::Decrypt)?;
        if bytes.len() < NONCE_BYTES + 16 {
            return Err(CryptoError::Decrypt);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_BYTES);
        let ad = field.associated_data();
        let plain = Zeroizing::new(
            self.cipher()
                .decrypt(
                    GenericArray::from_slice(nonce),
                    Payload {
                        msg: ciphertext,
                        aad: &ad,
                    },
                )
                .map_err(|_| CryptoError::Decrypt)?,
        );
        String::from_utf8(plain.to_vec())
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Decrypt)
    }

    pub fn open_opt(
        &self,
        field: Field<'_>,
        sealed: Option<&str>,
    ) -> Result<Option<String>, CryptoError> {
        sealed
            .map(|s| self.open(field, s).map(|p| p.as_str().to_owned()))
            .transpose()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_binding() {
        let key = DataKey::generate();
        let f = Field::new("patients.name", "pat_1", "pat_1");
        let sealed = key.seal(f, "Ada Lovelace").unwrap();
        assert!(sealed.starts_with(PREFIX));
        assert!(!sealed.contains("Ada"));
        assert_eq!(key.open(f, &sealed).unwrap().as_str(), "Ada Lovelace");
        // Fresh nonce: the same value seals differently.
        assert_ne!(sealed, key.seal(f, "Ada Lovelace").unwrap());
        // Moved to another column, patient or row; another key; altered; clear text.
        for other in [
            Field::new("patients.email", "pat_1", "pat_1"),
            Field::new("patients.name", "pat_2", "pat_1"),
            Field::new("patients.name", "pat_1", "pat_2"),
        ] {
            assert!(key.open(other, &sealed).is_err());
        }
        assert!(DataKey::generate().open(f, &sealed).is_err());
        let mut altered = sealed.clone().into_bytes();
        let last = altered.len() - 2;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        assert!(key.open(f, &String::from_utf8(altered).unwrap()).is_err());
        assert!(key.open(f, "Ada Lovelace").is_err());
        assert!(key.open(f, "v1.").is_err());
        assert!(key.open(f, "v1.!!!").is_err());
        assert_eq!(format!("{key:?}"), "DataKey([redacted])");
    }

    proptest! {
        #[test]
        fn any_text_round_trips(text in ".{0,300}") {
            let key = DataKey::generate();
            let f = Field::new("invoice_lines.description", "pat_x", "il_y");
            let sealed = key.seal(f, &text).unwrap();
            let opened = key.open(f, &sealed).unwrap();
            prop_assert_eq!(opened.as_str(), text.as_str());
        }
    }
}
