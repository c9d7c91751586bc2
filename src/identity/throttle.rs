//! Sign-in throttling: failed attempts counted per account and per client address over a
//! sliding window (default 5 per account and 20 per address in 15 minutes). The next attempt
//! past a limit answers 429 with `Retry-After` until the oldest failure leaves the window.
//!
//! The lockout is bounded by design: it never outlasts the window, never escalates, and a
//! successful sign-in clears the account's count — so an attacker can slow a victim's sign-in
//! but cannot lock the account out for good. In-memory, per process: a deployment with several
//! billing processes needs a shared store (noted in the docs).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys tracked at most; past this, the oldest-untouched entries are forgotten first.
const KEYS_MAX: usize = 100_000;

#[derive(Debug)]
pub struct Throttle {
    window: Duration,
    per_account: usize,
    per_address: usize,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl Throttle {
    pub fn new(window: Duration, per_account: usize, per_address: usize) -> Throttle {
        Throttle {
            window,
            per_account: per_account.max(1),
            per_address: per_address.max(1),
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<Instant>>> {
        match self.failures.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// `Err(retry_after)` when `account` or `address` has reached its limit.
    pub fn check(&self, account: &str, address: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut map = self.lock();
        let mut wait = None;
        for (key, limit) in [
            (format!("a:{account}"), self.per_account),
            (format!("ip:{address}"), self.per_address),
        ] {
            if let Some(q) = map.get_mut(&key) {
                while q
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= self.window)
                {
                    q.pop_front();
                }
                if q.len() >= limit {
                    let oldest = q.front().copied().unwrap_or(now);
                    let w = self.window.saturating_sub(now.duration_since(oldest));
                    wait = Some(wait.map_or(w, |x: Duration| x.max(w)));
                }
            }
        }
        match wait {
            Some(w) => Err(w.max(Duration::from_secs(1))),
            None => Ok(()),
        }
    }

    pub fn failed(&self, account: &str, address: &str) {
        let now = Instant::now();
        let mut map = self.lock();
        if map.len() >= KEYS_MAX {
            map.retain(|_, q| {
                q.back()
                    .is_some_and(|t| now.duration_since(*t) < self.window)
            });
        }
        for key in [format!("a:{account}"), format!("ip:{address}")] {
            map.entry(key).or_default().push_back(now);
        }
    }

    pub fn succeeded(&self, account: &str) {
        self.lock().remove(&format!("a:{account}"));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_sixth_failure_in_the_window_is_refused() {
        let t = Throttle::new(Duration::from_secs(900), 5, 20);
        for _ in 0..5 {
            assert!(t.check("a@x", "1.2.3.4").is_ok());
            t.failed("a@x", "1.2.3.4");
        }
        let wait = t.check("a@x", "1.2.3.4").unwrap_err();
        assert!(wait <= Duration::from_secs(900) && wait >= Duration::from_secs(1));
        // Another account from another address is unaffected; success clears the account.
        assert!(t.check("b@x", "5.6.7.8").is_ok());
        t.succeeded("a@x");
        assert!(t.check("a@x", "9.9.9.9").is_ok());
    }

    #[test]
    fn the_window_ends_the_lockout() {
        let t = Throttle::new(Duration::from_millis(20), 1, 20);
        t.failed("a@x", "1.2.3.4");
        assert!(t.check("a@x", "1.2.3.4").is_err());
        std::thread::sleep(Duration::from_millis(30));
        assert!(t.check("a@x", "1.2.3.4").is_ok());
    }
}
