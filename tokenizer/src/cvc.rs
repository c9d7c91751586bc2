//! Security codes, held only in memory (PCI DSS 3.3.1/3.3.2 forbid storing them after
//! authorization, and this vault never writes them anywhere).
//!
//! A CVC is kept encrypted under a key that exists only in this process (AES-SIV with a random
//! nonce), for at most the configured time (10 minutes at most) or until its first use in a
//! charge, whichever comes first; then its ciphertext is wiped. A restart loses every CVC, which
//! is the point: the card can still be charged, without one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aes_siv::aead::{Aead, KeyInit, OsRng};
use aes_siv::{AeadCore, Aes256SivAead, Nonce};
use zeroize::Zeroize;

use crate::card::Cvc;

/// The longest a CVC may be held.
pub const CVC_TTL_MAX: Duration = Duration::from_secs(600);
/// Bound on memory: beyond this many held codes, new ones are not kept.
pub const CVC_HELD_MAX: usize = 100_000;

struct Held {
    nonce: Nonce,
    ciphertext: Vec<u8>,
    expires: Instant,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.ciphertext.zeroize();
    }
}

pub struct CvcStore {
    cipher: Aes256SivAead,
    ttl: Duration,
    held: Mutex<HashMap<String, Held>>,
}

impl std::fmt::Debug for CvcStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CvcStore")
            .field("ttl", &self.ttl)
            .field("held", &self.len())
            .finish()
    }
}

impl CvcStore {
    /// A store with a fresh in-memory key. `ttl` is capped at [`CVC_TTL_MAX`].
    pub fn new(ttl: Duration) -> CvcStore {
        CvcStore {
            cipher: Aes256SivAead::new(&Aes256SivAead::generate_key(&mut OsRng)),
            ttl: ttl.min(CVC_TTL_MAX),
            held: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        match self.held.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Holds `cvc` for `token`, replacing any code held for it.
    pub fn put(&self, token: &str, cvc: &Cvc) {
        let nonce = Aes256SivAead::generate_nonce(&mut OsRng);
        let Ok(ciphertext) = self.cipher.encrypt(&nonce, cvc.expose().as_bytes()) else {
            return;
        };
        let mut held = self.lock();
        if held.len() >= CVC_HELD_MAX && !held.contains_key(token) {
            let now = Instant::now();
            held.retain(|_, h| h.expires > now);
            if held.len() >= CVC_HELD_MAX {
                tracing::warn!("CVC store full; this code is not kept");
                return;
            }
        }
        held.insert(
            token.to_owned(),
            Held {
                nonce,
                ciphertext,
                expires: Instant::now() + self.ttl,
            },
        );
    }

    /// Takes the code held for `token`: it is removed (and wiped) whether or not it expired.
    pub fn take(&self, token: &str) -> Option<Cvc> {
        let held = self.lock().remove(token)?;
        if held.expires <= Instant::now() {
            return None;
        }
        let plain = self
            .cipher
            .decrypt(&held.nonce, held.ciphertext.as_slice())
            .ok()?;
        Cvc::from_bytes(plain)
    }

    /// Drops the code held for `token`, if any.
    pub fn forget(&self, token: &str) {
        self.lock().remove(token);
    }

    /// Wipes expired codes. Called every few seconds by the server.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut held = self.lock();
        let before = held.len();
        held.retain(|_, h| h.expires > now);
        before - held.len()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::card::Brand;

    #[test]
    fn a_code_is_used_once() {
        let store = CvcStore::new(Duration::from_secs(60));
        store.put("tok_a", &Cvc::parse("123", Brand::Visa).unwrap());
        assert_eq!(store.take("tok_a").unwrap().expose(), "123");
        assert!(store.take("tok_a").is_none());
    }

    #[test]
    fn an_expired_code_is_gone() {
        let store = CvcStore::new(Duration::from_millis(1));
        store.put("tok_a", &Cvc::parse("123", Brand::Visa).unwrap());
        std::thread::sleep(Duration::from_millis(5));
        assert!(store.take("tok_a").is_none());
        store.put("tok_b", &Cvc::parse("456", Brand::Visa).unwrap());
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(store.sweep(), 1);
        assert!(store.is_empty());
    }

    #[test]
    fn the_ttl_is_capped_at_ten_minutes() {
        let store = CvcStore::new(Duration::from_secs(3600));
        assert_eq!(store.ttl, CVC_TTL_MAX);
    }
}
