//! The vault's cryptography, all from RustCrypto crates:
//!
//! - **Card numbers**: AES-SIV (RFC 5297, `Aes256Siv`, 64-byte keys), deterministic: the same
//!   number under the same key always gives the same ciphertext, so the database can look a card
//!   up by its ciphertext and a unique index stops a second token for it. The key version and
//!   the field name are associated data, so a ciphertext cannot be moved to another field or
//!   replayed under another version.
//! - **Fingerprints**: HMAC-SHA256 under its own key (PCI DSS 3.5.1.1: a keyed hash, never a
//!   plain one), truncated to 128 bits and shown as hex.
//! - **Key custody**: data keys are stored wrapped (AES-SIV under the key-encrypting key). The
//!   KEK exists only in memory, as the XOR of full-length components held by different
//!   custodians (split knowledge, PCI DSS 3.6.1.2 / 3.7.6).
//!
//! Every key type wipes itself on drop and prints as `[redacted]`.

use aes_siv::aead::generic_array::GenericArray;
use aes_siv::siv::Aes256Siv;
use aes_siv::KeyInit;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

/// AES-256-SIV takes a 512-bit key (two AES-256 keys: one for S2V/CMAC, one for CTR).
pub const SIV_KEY_BYTES: usize = 64;
pub const HMAC_KEY_BYTES: usize = 32;
/// Fingerprints are the first 16 bytes of the HMAC.
const FINGERPRINT_BYTES: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("decryption failed: wrong key or altered ciphertext")]
    Decrypt,
    #[error("encryption failed")]
    Encrypt,
    #[error("key material has the wrong length")]
    KeyLength,
}

fn random_bytes<const N: usize>() -> Zeroizing<[u8; N]> {
    let mut bytes = Zeroizing::new([0u8; N]);
    rand::rngs::OsRng.fill_bytes(bytes.as_mut());
    bytes
}

/// A 512-bit AES-SIV key.
#[derive(Clone)]
pub struct SivKey(Zeroizing<[u8; SIV_KEY_BYTES]>);

impl std::fmt::Debug for SivKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SivKey([redacted])")
    }
}

impl SivKey {
    pub fn generate() -> SivKey {
        SivKey(random_bytes())
    }

    pub fn from_slice(bytes: &[u8]) -> Result<SivKey, CryptoError> {
        let mut key = Zeroizing::new([0u8; SIV_KEY_BYTES]);
        if bytes.len() != SIV_KEY_BYTES {
            return Err(CryptoError::KeyLength);
        }
        key.copy_from_slice(bytes);
        Ok(SivKey(key))
    }

    pub fn expose(&self) -> &[u8] {
        self.0.as_ref()
    }

    fn cipher(&self) -> Aes256Siv {
        Aes256Siv::new(GenericArray::from_slice(self.0.as_ref()))
    }

    /// Deterministic authenticated encryption of `plaintext` with `associated` data.
    pub fn seal(&self, associated: &[&[u8]], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.cipher()
            .encrypt(associated, plaintext)
            .map_err(|_| CryptoError::Encrypt)
    }

    /// Decrypts and authenticates; the plaintext is wiped when dropped.
    pub fn open(
        &self,
        associated: &[&[u8]],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        self.cipher()
            .decrypt(associated, ciphertext)
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Decrypt)
    }
}

/// A card-number encryption key of one version.
#[derive(Debug, Clone)]
pub struct PanKey {
    pub version: i64,
    key: SivKey,
}

/// The associated data of a field ciphertext: `field` and the key version.
fn field_ad(version: i64, field: &str) -> [Vec<u8>; 2] {
    [
        field.as_bytes().to_vec(),
        format!("v{version}").into_bytes(),
    ]
}

impl PanKey {
    pub fn new(version: i64, key: SivKey) -> PanKey {
        PanKey { version, key }
    }

    pub fn encrypt_field(&self, field: &str, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let ad = field_ad(self.version, field);
        self.key.seal(&[&ad[0], &ad[1]], plaintext)
    }

    pub fn decrypt_field(
        &self,
        field: &str,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let ad = field_ad(self.version, field);
        self.key.open(&[&ad[0], &ad[1]], ciphertext)
    }
}

/// The fingerprint key: HMAC-SHA256, its own key, not derived from any encryption key.
#[derive(Clone)]
pub struct FingerprintKey(Zeroizing<[u8; HMAC_KEY_BYTES]>);

impl std::fmt::Debug for FingerprintKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FingerprintKey([redacted])")
    }
}

impl FingerprintKey {
    pub fn generate() -> FingerprintKey {
        FingerprintKey(random_bytes())
    }

    pub fn from_slice(bytes: &[u8]) -> Result<FingerprintKey, CryptoError> {
        let mut key = Zeroizing::new([0u8; HMAC_KEY_BYTES]);
        if bytes.len() != HMAC_KEY_BYTES {
            return Err(CryptoError::KeyLength);
        }
        key.copy_from_slice(bytes);
        Ok(FingerprintKey(key))
    }

    pub fn expose(&self) -> &[u8] {
        self.0.as_ref()
    }

    /// The card's fingerprint: hex of the first 128 bits of HMAC-SHA256(key, digits).
    pub fn fingerprint(&self, digits: &str) -> String {
        let tag = hmac_sha256(self.0.as_ref(), &[b"card_number", digits.as_bytes()]);
        hex::encode(tag.get(..FINGERPRINT_BYTES).unwrap_or(&tag))
    }
}

/// HMAC-SHA256 over the concatenation of `parts`, each length-prefixed so no two different
/// part lists give the same input.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail.
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return [0u8; 32],
    };
    for part in parts {
        mac.update(&u64::try_from(part.len()).unwrap_or(u64::MAX).to_be_bytes());
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// The key-encrypting key: the XOR of the custodians' components. Held only in memory.
#[derive(Clone)]
pub struct Kek(SivKey);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek([redacted])")
    }
}

/// What identifies a wrapped data key: its purpose and version (associated data of the wrap).
fn wrap_ad(purpose: &str, version: i64) -> [Vec<u8>; 3] {
    [
        b"carebill-vault/data-key".to_vec(),
        purpose.as_bytes().to_vec(),
        format!("v{version}").into_bytes(),
    ]
}

impl Kek {
    /// Combines full-length components by XOR. Any subset short of all of them reveals
    /// nothing about the KEK.
    pub fn combine(components: &[KeyComponent]) -> Result<Kek, CryptoError> {
        let mut kek = Zeroizing::new([0u8; SIV_KEY_BYTES]);
        for component in components {
            for (k, c) in kek.iter_mut().zip(component.0.iter()) {
                *k ^= c;
            }
        }
        Ok(Kek(SivKey(kek)))
    }

    /// A value that shows the combined KEK is the one the data keys were wrapped under,
    /// without revealing it.
    pub fn check_value(&self) -> String {
        hex::encode(hmac_sha256(
            self.0.expose(),
            &[b"carebill-vault/kek-check/v1"],
        ))
    }

    pub fn wrap(&self, purpose: &str, version: i64, key: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let ad = wrap_ad(purpose, version);
        self.0.seal(&[&ad[0], &ad[1], &ad[2]], key)
    }

    pub fn unwrap_key(
        &self,
        purpose: &str,
        version: i64,
        wrapped: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let ad = wrap_ad(purpose, version);
        self.0.open(&[&ad[0], &ad[1], &ad[2]], wrapped)
    }
}

/// One custodian's full-length KEK component.
#[derive(Clone)]
pub struct KeyComponent(Zeroizing<[u8; SIV_KEY_BYTES]>);

impl std::fmt::Debug for KeyComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyComponent([redacted])")
    }
}

impl KeyComponent {
    pub fn generate() -> KeyComponent {
        KeyComponent(random_bytes())
    }

    /// The component file's text: the component in hex and its check value, so a custodian
    /// can confirm the right component was entered without showing it to anyone.
    pub fn to_file_text(&self, index: usize, of: usize) -> String {
        format!(
            "# carebill card vault: key-encrypting-key component {index} of {of}.\n\
             # Give this file to one custodian only; no one person may hold two components.\n\
             component: {}\n\
             kcv: {}\n",
            hex::encode(self.0.as_ref()),
            self.check_value()
        )
    }

    pub fn check_value(&self) -> String {
        let tag = hmac_sha256(self.0.as_ref(), &[b"carebill-vault/component-check/v1"]);
        hex::encode(tag.get(..3).unwrap_or(&tag))
    }

    /// Parses a component file, verifying its check value.
    pub fn parse_file_text(text: &str) -> anyhow::Result<KeyComponent> {
        let mut component = None;
        let mut kcv = None;
        for line in text.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("component:") {
                component = Some(Zeroizing::new(rest.trim().to_owned()));
            } else if let Some(rest) = line.strip_prefix("kcv:") {
                kcv = Some(rest.trim().to_owned());
            }
        }
        let hex_text = component.ok_or_else(|| anyhow::anyhow!("no `component:` line"))?;
        let bytes = Zeroizing::new(
            hex::decode(hex_text.as_bytes())
                .map_err(|_| anyhow::anyhow!("the component is not hex"))?,
        );
        if bytes.len() != SIV_KEY_BYTES {
            anyhow::bail!(
                "the component must be {SIV_KEY_BYTES} bytes (full length, not a key half)"
            );
        }
        let mut out = Zeroizing::new([0u8; SIV_KEY_BYTES]);
        out.copy_from_slice(&bytes);
        let component = KeyComponent(out);
        match kcv {
            Some(kcv) if kcv == component.check_value() => Ok(component),
            Some(_) => anyhow::bail!("the component does not match its check value (kcv)"),
            None => anyhow::bail!("no `kcv:` line"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s.replace([' ', '\n'], "")).unwrap()
    }

    /// RFC 5297 appendix A. The RFC's vectors are for AES-SIV with a 256-bit key (AES-128 in
    /// CTR and CMAC); the vault uses the same construction (`Siv<Aes, Cmac<Aes>>` from the same
    /// crate) at 512 bits, checked below by round trip and determinism.
    #[test]
    fn rfc5297_a1_deterministic_authenticated_encryption() {
        use aes_siv::siv::Aes128Siv;
        let key = unhex("fffefdfc fbfaf9f8 f7f6f5f4 f3f2f1f0 f0f1f2f3 f4f5f6f7 f8f9fafb fcfdfeff");
        let ad = unhex("10111213 14151617 18191a1b 1c1d1e1f 20212223 24252627");
        let plaintext = unhex("11223344 55667788 99aabbcc ddee");
        let expected = unhex("85632d07 c6e8f37f 950acd32 0a2ecc93 40c02b96 90c4dc04 daef7f6a fe5c");
        let mut cipher = Aes128Siv::new(GenericArray::from_slice(&key));
        let out = cipher.encrypt([&ad], &plaintext).unwrap();
        assert_eq!(out, expected);
        assert_eq!(cipher.decrypt([&ad], &out).unwrap(), plaintext);
    }

    #[test]
    fn rfc5297_a2_nonce_based_authenticated_encryption() {
        use aes_siv::siv::Aes128Siv;
        let key = unhex("7f7e7d7c 7b7a7978 77767574 73727170 40414243 44454647 48494a4b 4c4d4e4f");
        let ad1 = unhex(
            "00112233 44556677 8899aabb ccddeeff deaddada deaddada ffeeddcc bbaa9988 77665544 33221100",
        );
        let ad2 = unhex("10203040 50607080 90a0");
        let nonce = unhex("09f91102 9d74e35b d84156c5 635688c0");
        let plaintext = unhex(
            "74686973 20697320 736f6d65 20706c61 696e7465 78742074 6f20656e 63727970 74207573 696e6720 5349562d 414553",
        );
        let expected = unhex(
            "7bdb6e3b 432667eb 06f4d14b ff2fbd0f cb900f2f ddbe4043 26601965 c889bf17 dba77ceb 094fa663 b7a3f748 ba8af829 ea64ad54 4a272e9c 485b62a3 fd5c0d",
        );
        let mut cipher = Aes128Siv::new(GenericArray::from_slice(&key));
        let out = cipher.encrypt([&ad1, &ad2, &nonce], &plaintext).unwrap();
        assert_eq!(out, expected);
    }

    #[test]
    fn pan_encryption_is_deterministic_and_bound_to_version_and_field() {
        let key = PanKey::new(1, SivKey::generate());
        let a = key
            .encrypt_field("card_number", b"4242424242424242")
            .unwrap();
        let b = key
            .encrypt_field("card_number", b"4242424242424242")
            .unwrap();
        assert_eq!(a, b, "same card, same ciphertext");
        let c = key
            .encrypt_field("card_number", b"5555555555554444")
            .unwrap();
        assert_ne!(a, c);
        assert_eq!(
            &key.decrypt_field("card_number", &a).unwrap()[..],
            b"4242424242424242"
        );
        // Another field name or version does not open it.
        assert!(key.decrypt_field("cardholder_name", &a).is_err());
        let same_bytes_v2 = PanKey::new(2, SivKey::from_slice(key.key.expose()).unwrap());
        assert!(same_bytes_v2.decrypt_field("card_number", &a).is_err());
        // Another key does not open it.
        let other = PanKey::new(1, SivKey::generate());
        assert!(other.decrypt_field("card_number", &a).is_err());
        // The ciphertext does not contain the digits.
        assert!(!String::from_utf8_lossy(&a).contains("4242"));
    }

    #[test]
    fn kek_needs_every_component() {
        let parts = [KeyComponent::generate(), KeyComponent::generate()];
        let kek = Kek::combine(&parts).unwrap();
        let wrapped = kek.wrap("pan", 1, &[7u8; 64]).unwrap();
        assert_eq!(&kek.unwrap_key("pan", 1, &wrapped).unwrap()[..], &[7u8; 64]);
        let one = Kek::combine(&parts[..1]).unwrap();
        assert!(one.unwrap_key("pan", 1, &wrapped).is_err());
        assert_ne!(one.check_value(), kek.check_value());
        // The wrap is bound to purpose and version.
        assert!(kek.unwrap_key("fingerprint", 1, &wrapped).is_err());
        assert!(kek.unwrap_key("pan", 2, &wrapped).is_err());
    }

    #[test]
    fn component_files_round_trip_and_catch_typos() {
        let c = KeyComponent::generate();
        let text = c.to_file_text(1, 2);
        let back = KeyComponent::parse_file_text(&text).unwrap();
        assert_eq!(back.check_value(), c.check_value());
        let hexed = hex::encode(c.0.as_ref());
        let first = hexed.chars().next().unwrap();
        let typo = if first == '0' { '1' } else { '0' };
        let broken = text.replace(&hexed, &format!("{typo}{}", &hexed[1..]));
        assert!(KeyComponent::parse_file_text(&broken).is_err());
        let half = text.replace(&hexed, &hexed[..64]);
        assert!(KeyComponent::parse_file_text(&half).is_err());
    }

    #[test]
    fn fingerprints_are_keyed() {
        let k1 = FingerprintKey::generate();
        let k2 = FingerprintKey::generate();
        assert_eq!(
            k1.fingerprint("4242424242424242"),
            k1.fingerprint("4242424242424242")
        );
        assert_ne!(
            k1.fingerprint("4242424242424242"),
            k2.fingerprint("4242424242424242")
        );
        assert_eq!(k1.fingerprint("4242424242424242").len(), 32);
    }
}
