//! Blind indexes: exact-match lookup of encrypted fields without decrypting them.
//!
//! An index value is HMAC-SHA256 under the keyring's `index` key (its own key, never an
//! encryption key) over a domain label and the normalized value. Without the key an index says
//! nothing — an unkeyed hash of an email or a name + date of birth could be reversed by
//! guessing, which is why there is none anywhere. Normalization makes the lookup forgiving of
//! case and spacing, and nothing more.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use unicode_normalization::UnicodeNormalization;
use zeroize::Zeroizing;

use super::keyring::INDEX_KEY_BYTES;

/// The blind-index key. Wiped on drop; prints as `[redacted]`.
#[derive(Clone)]
pub struct IndexKey(Zeroizing<[u8; INDEX_KEY_BYTES]>);

impl std::fmt::Debug for IndexKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IndexKey([redacted])")
    }
}

/// Collapses whitespace, applies NFKC and lower-cases.
fn fold(value: &str) -> String {
    let folded: String = value.nfkc().collect::<String>().to_lowercase();
    folded.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl IndexKey {
    pub(crate) fn from_bytes(bytes: &[u8; INDEX_KEY_BYTES]) -> IndexKey {
        IndexKey(Zeroizing::new(*bytes))
    }

    /// HMAC-SHA256 of `value` in `domain`, as hex: for any keyed lookup of a secret value.
    pub fn keyed(&self, domain: &str, value: &str) -> String {
        self.index(domain, value)
    }

    fn index(&self, domain: &str, value: &str) -> String {
        // HMAC pads a key shorter than the hash's block with zeros (RFC 2104 §2): padding it
        // here gives the same MAC through the infallible fixed-size constructor.
        let mut block = Zeroizing::new([0u8; 64]);
        block[..INDEX_KEY_BYTES].copy_from_slice(self.0.as_ref());
        let mut mac = <Hmac<Sha256> as hmac::digest::KeyInit>::new(
            hmac::digest::generic_array::GenericArray::from_slice(block.as_ref()),
        );
        mac.update(b"carebill.blind-index.v1\0");
        mac.update(domain.as_bytes());
        mac.update(b"\0");
        mac.update(value.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    pub fn email(&self, email: &str) -> String {
        self.index("email", &fold(email))
    }

    /// Medical record numbers compare without case, spaces or dashes.
    pub fn mrn(&self, mrn: &str) -> String {
        let folded: String = fold(mrn)
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .collect();
        self.index("mrn", &folded)
    }

    /// Name and date of birth (`YYYY-MM-DD`) together.
    pub fn name_dob(&self, name: &str, date_of_birth: &str) -> String {
        self.index(
            "name_dob",
            &format!("{}\0{}", fold(name), date_of_birth.trim()),
        )
    }

    /// The value stored to recognise this key again at start (an index of a fixed label).
    pub fn check_value(&self) -> String {
        self.index("check", "carebill")[..16].to_owned()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_and_separates_domains_and_keys() {
        let k = IndexKey::from_bytes(&[7; INDEX_KEY_BYTES]);
        let other = IndexKey::from_bytes(&[8; INDEX_KEY_BYTES]);
        assert_eq!(k.email(" Ada@Example.ORG "), k.email("ada@example.org"));
        assert_eq!(k.mrn("mrn-00 12"), k.mrn("MRN0012"));
        assert_eq!(
            k.name_dob("ADA   lovelace", "1815-12-10"),
            k.name_dob("Ada Lovelace", "1815-12-10")
        );
        assert_ne!(
            k.name_dob("Ada Lovelace", "1815-12-10"),
            k.name_dob("Ada Lovelace", "1815-12-11")
        );
        assert_ne!(k.email("x@y.z"), k.mrn("x@y.z"));
        assert_ne!(k.email("x@y.z"), other.email("x@y.z"));
        assert_eq!(k.email("x@y.z").len(), 64);
        assert_eq!(format!("{k:?}"), "IndexKey([redacted])");
        // The same as HMAC-SHA256 with the 32-byte key itself.
        let mut plain = <Hmac<Sha256> as Mac>::new_from_slice(&[7; INDEX_KEY_BYTES]).unwrap();
        plain.update(b"carebill.blind-index.v1\0email\0x@y.z");
        assert_eq!(k.email("x@y.z"), hex::encode(plain.finalize().into_bytes()));
    }
}
