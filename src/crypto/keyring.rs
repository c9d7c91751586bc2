//! The key-encrypting keys (KEKs) and the blind-index key: where they come from and what they
//! do.
//!
//! # The keyring
//! A small text file (`keyring_file` / `CAREBILL_KEYRING_FILE`) or the same text in
//! `CAREBILL_KEYRING` (for a secret store that hands out environment variables):
//!
//! ```text
//! # carebill keyring: secret (mode 0600), never in the repository, an image or a log
//! kek 1 <base64 of 64 random bytes>
//! kek 2 <base64 of 64 random bytes>
//! index <base64 of 32 random bytes>
//! ```
//!
//! `kek N` lines are the versioned key-encrypting keys: AES-256-SIV keys that only ever wrap the
//! per-patient (and per-purpose) data keys, never data. The highest version the database also
//! knows as active wraps new data keys. `index` is the blind-index key (HMAC-SHA256), its own key
//! so that a leak of one does not give the other.
//!
//! # A KMS in its place
//! Everything else in carebill reaches the KEKs only through [`KeyProvider`]: wrap this data key
//! under version N, unwrap that one. A cloud KMS (whose keys never leave it) implements the same
//! trait with its `Encrypt`/`Decrypt` calls and its key versions; the check value becomes the KMS
//! key id.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use aes_siv::siv::Aes256Siv;
use aes_siv::KeyInit;
use base64::Engine as _;
use rand::RngCore;
use zeroize::Zeroizing;

use super::blind::IndexKey;
use super::field::{DataKey, DATA_KEY_BYTES};
use super::CryptoError;

pub const KEK_BYTES: usize = 64;
pub const INDEX_KEY_BYTES: usize = 32;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Wraps and unwraps data keys. The local keyring is one implementation; a KMS is another.
#[async_trait::async_trait]
pub trait KeyProvider: Send + Sync {
    /// The KEK versions this provider holds, ascending.
    fn versions(&self) -> Vec<i64>;
    /// A value that identifies version `version`'s key without revealing it (stored in the
    /// database, compared at start so a wrong key is refused before it wraps anything).
    fn check_value(&self, version: i64) -> Option<String>;
    /// Wraps `key` under KEK `version`; `context` is bound to the result (associated data).
    async fn wrap(
        &self,
        version: i64,
        key: &DataKey,
        context: &[u8],
    ) -> Result<Vec<u8>, CryptoError>;
    /// Opens what [`wrap`](Self::wrap) made under the same version and context.
    async fn unwrap(
        &self,
        version: i64,
        wrapped: &[u8],
        context: &[u8],
    ) -> Result<DataKey, CryptoError>;
}

/// One key-encrypting key.
struct Kek(Zeroizing<[u8; KEK_BYTES]>);

impl Kek {
    fn cipher(&self) -> Aes256Siv {
        Aes256Siv::new(aes_siv::aead::generic_array::GenericArray::from_slice(
            self.0.as_ref(),
        ))
    }

    /// The first 8 bytes of AES-SIV over nothing with a fixed label: identifies the key, reveals
    /// nothing of it (the same construction as a key check value of a payment HSM).
    fn check_value(&self) -> String {
        let tag = self
            .cipher()
            .encrypt([b"carebill.kek.check".as_slice()], b"")
            .unwrap_or_default();
        hex::encode(&tag[..tag.len().min(8)])
    }
}

/// The keyring read from a file or the environment. `Debug` shows versions only.
pub struct LocalKeyring {
    keks: BTreeMap<i64, Kek>,
    index: IndexKey,
}

impl fmt::Debug for LocalKeyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKeyring")
            .field("kek_versions", &self.keks.keys().collect::<Vec<_>>())
            .field("index", &"[redacted]")
            .finish()
    }
}

fn random<const N: usize>() -> Zeroizing<[u8; N]> {
    let mut bytes = Zeroizing::new([0u8; N]);
    rand::rngs::OsRng.fill_bytes(bytes.as_mut());
    bytes
}

fn decode_key<const N: usize>(line_no: usize, what: &str, b64: &str) -> anyhow::Result<[u8; N]> {
    let bytes = Zeroizing::new(B64.decode(b64.trim()).map_err(|_| {
        anyhow::anyhow!("keyring line {line_no}: the {what} key is not valid base64")
    })?);
    <[u8; N]>::try_from(bytes.as_slice()).map_err(|_| {
        anyhow::anyhow!(
            "keyring line {line_no}: the {what} key must be {N} bytes, not {}",
            bytes.len()
        )
    })
}

impl LocalKeyring {
    /// Parses keyring text (lines, or `;`-separated entries for an environment variable).
    /// Errors name the line, never its key.
    pub fn parse(text: &str) -> anyhow::Result<LocalKeyring> {
        let mut keks = BTreeMap::new();
        let mut index = None;
        // One line per entry; an environment variable may use `;` instead (then on one line).
        let separator = if text.trim().contains('\n') {
            '\n'
        } else {
            ';'
        };
        for (i, line) in text.split(separator).enumerate() {
            let line_no = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parts: Vec<&str> = line.split_whitespace().collect();
            match parts.as_slice() {
                ["kek", version, key] => {
                    let version: i64 =
                        version.parse().ok().filter(|v| *v >= 1).ok_or_else(|| {
                            anyhow::anyhow!(
                                "keyring line {line_no}: a KEK version is a whole number from 1"
                            )
                        })?;
                    let key = Zeroizing::new(decode_key::<KEK_BYTES>(line_no, "KEK", key)?);
                    if keks.insert(version, Kek(key)).is_some() {
                        anyhow::bail!("keyring line {line_no}: KEK version {version} given twice");
                    }
                }
                ["index", key] => {
                    if index.is_some() {
                        anyhow::bail!("keyring line {line_no}: the index key is given twice");
                    }
                    let key = Zeroizing::new(decode_key::<INDEX_KEY_BYTES>(line_no, "index", key)?);
                    index = Some(IndexKey::from_bytes(&key));
                }
                _ => anyhow::bail!(
                    "keyring line {line_no}: expected `kek <version> <base64>` or `index <base64>`"
                ),
            }
        }
        if keks.is_empty() {
            anyhow::bail!("the keyring holds no key-encrypting key (`kek 1 <base64>`)");
        }
        let index =
            index.ok_or_else(|| anyhow::anyhow!("the keyring holds no `index <base64>` key"))?;
        Ok(LocalKeyring { keks, index })
    }

    /// Reads a keyring file; warns when others can read it (on Unix). Not a refusal: container
    /// secret mounts are often world-readable inside their own, single-user filesystem.
    pub fn read(path: &Path) -> anyhow::Result<LocalKeyring> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!("cannot read the keyring file {}: {e}", path.display())
        })?);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)?.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(
                    file = %path.display(),
                    mode = format!("{:o}", mode & 0o777),
                    "the keyring file can be read by other users: chmod 600 it"
                );
            }
        }
        LocalKeyring::parse(&text)
            .map_err(|e| anyhow::anyhow!("keyring file {}: {e}", path.display()))
    }

    /// New keyring text: KEK version 1 and an index key.
    pub fn generate_text() -> Zeroizing<String> {
        Zeroizing::new(format!(
            "# carebill keyring: secret (mode 0600), never in the repository, an image or a log.\n\
             # `kek N`: key-encrypting keys (AES-256-SIV) that wrap the data keys; the highest\n\
             # version wraps new ones. `index`: the blind-index key (HMAC-SHA256).\n\
             kek 1 {}\nindex {}\n",
            B64.encode(random::<KEK_BYTES>().as_ref()),
            B64.encode(random::<INDEX_KEY_BYTES>().as_ref()),
        ))
    }

    /// A new `kek N` line for rotation.
    pub fn new_kek_line(version: i64) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "kek {version} {}\n",
            B64.encode(random::<KEK_BYTES>().as_ref())
        ))
    }

    pub fn index_key(&self) -> &IndexKey {
        &self.index
    }

    fn kek(&self, version: i64) -> Result<&Kek, CryptoError> {
        self.keks
            .get(&version)
            .ok_or(CryptoError::UnknownKekVersion(version))
    }
}

fn wrap_ad(version: i64, context: &[u8]) -> [Vec<u8>; 3] {
    [
        b"carebill.data-key.v1".to_vec(),
        version.to_be_bytes().to_vec(),
        context.to_vec(),
    ]
}

#[async_trait::async_trait]
impl KeyProvider for LocalKeyring {
    fn versions(&self) -> Vec<i64> {
        self.keks.keys().copied().collect()
    }

    fn check_value(&self, version: i64) -> Option<String> {
        self.keks.get(&version).map(Kek::check_value)
    }

    async fn wrap(
        &self,
        version: i64,
        key: &DataKey,
        context: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.kek(version)?
            .cipher()
            .encrypt(wrap_ad(version, context), key.expose())
            .map_err(|_| CryptoError::Encrypt)
    }

    async fn unwrap(
        &self,
        version: i64,
        wrapped: &[u8],
        context: &[u8],
    ) -> Result<DataKey, CryptoError> {
        let plain = Zeroizing::new(
            self.kek(version)?
                .cipher()
                .decrypt(wrap_ad(version, context), wrapped)
                .map_err(|_| CryptoError::Decrypt)?,
        );
        if plain.len() != DATA_KEY_BYTES {
            return Err(CryptoError::Decrypt);
        }
        DataKey::from_slice(&plain)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wraps_and_refuses_other_versions_contexts_and_keys() {
        let ring = LocalKeyring::parse(&LocalKeyring::generate_text()).unwrap();
        let other = LocalKeyring::parse(&LocalKeyring::generate_text()).unwrap();
        let key = DataKey::generate();
        let wrapped = ring.wrap(1, &key, b"pat_1").await.unwrap();
        assert_eq!(
            ring.unwrap(1, &wrapped, b"pat_1").await.unwrap().expose(),
            key.expose()
        );
        assert!(ring.unwrap(1, &wrapped, b"pat_2").await.is_err());
        assert!(other.unwrap(1, &wrapped, b"pat_1").await.is_err());
        assert!(matches!(
            ring.unwrap(2, &wrapped, b"pat_1").await,
            Err(CryptoError::UnknownKekVersion(2))
        ));
        assert_ne!(ring.check_value(1), other.check_value(1));
        assert_eq!(ring.check_value(1).unwrap().len(), 16);
    }

    #[test]
    fn parse_errors_name_the_line_and_never_the_key() {
        let text = LocalKeyring::generate_text();
        let secret = text.lines().find(|l| l.starts_with("kek")).unwrap()[6..].to_owned();
        for (bad, needle) in [
            (format!("kek 0 {secret}"), "line 1"),
            (format!("kek 1 {}", &secret[..20]), "64 bytes"),
            ("kek 1 !!!".to_owned(), "base64"),
            (format!("kek 1 {secret}\nkek 1 {secret}"), "twice"),
            (format!("kek 1 {secret}"), "no `index"),
            ("index AAAA".to_owned(), "32 bytes"),
            ("nonsense".to_owned(), "expected"),
            (String::new(), "no key-encrypting key"),
        ] {
            let err = LocalKeyring::parse(&bad).unwrap_err().to_string();
            assert!(err.contains(needle), "{bad:?}: {err}");
            assert!(!err.contains(&secret[..20]), "{err}");
        }
        let inline: String = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join(";");
        assert_eq!(LocalKeyring::parse(&inline).unwrap().versions(), vec![1]);
        assert!(!format!("{:?}", LocalKeyring::parse(&text).unwrap()).contains(&secret[..20]));
    }
}
