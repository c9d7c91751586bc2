//! The server certificate and key: read from PEM files, checked, and reloaded when the files
//! change.
//!
//! A pair is *sound* when the certificate file holds at least one certificate (the leaf first,
//! then any intermediates), the key file holds one private key rustls can sign with, every
//! certificate in the chain is within its validity period now, and the key is the leaf's (their
//! public keys are compared). [`ReloadingCert::load`] refuses to start on anything else;
//! [`ReloadingCert::check`] keeps the pair in service instead.
//!
//! Rotation is detected by content, not by modification time (two writes within one second, or
//! a file restored with its old time, are still seen): each check reads both files and compares
//! their SHA-256 with the pair in service. Files are small; a check every few seconds costs
//! nothing measurable. Writing the new key before the new certificate (or renaming both into
//! place) avoids a check that sees one new file and one old; if one does, the mismatch is
//! refused once and the next check, seeing both, takes the new pair.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Where the certificate chain and its private key are read from (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertPaths {
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> CertPaths {
        CertPaths {
            cert: cert.into(),
            key: key.into(),
        }
    }
}

/// Why a certificate and key cannot be served. Every variant names the file; none carries key
/// material.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} holds no PEM certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: certificate {index} of the chain cannot be parsed ({reason})", path.display())]
    BadCertificate {
        path: PathBuf,
        index: usize,
        reason: String,
    },
    #[error("{} holds no usable PEM private key ({reason})", path.display())]
    BadKey { path: PathBuf, reason: String },
    #[error("{}: certificate {index} of the chain expired on {not_after}", path.display())]
    Expired {
        path: PathBuf,
        index: usize,
        not_after: String,
    },
    #[error("{}: certificate {index} of the chain is not valid before {not_before}", path.display())]
    NotYetValid {
        path: PathBuf,
        index: usize,
        not_before: String,
    },
    #[error("the private key {} does not match the certificate {} (a key from another pair?)", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
}

impl CertError {
    /// A short machine-readable name of the problem, for log fields and tests.
    pub fn kind(&self) -> &'static str {
        match self {
            CertError::Read { .. } => "unreadable",
            CertError::NoCertificate { .. } => "no_certificate",
            CertError::BadCertificate { .. } => "bad_certificate",
            CertError::BadKey { .. } => "bad_key",
            CertError::Expired { .. } => "expired",
            CertError::NotYetValid { .. } => "not_yet_valid",
            CertError::KeyMismatch { .. } => "key_mismatch",
        }
    }
}

/// What the checks have seen of the files.
struct Seen {
    /// The digest of the pair in service.
    in_service: Digest,
    /// The digest of the last pair refused: refused (and logged) once, not at every check.
    refused: Option<Digest>,
    /// Whether the files being unreadable was already logged.
    unreadable_logged: bool,
    /// The day (Unix days) the coming expiry was last warned about: once a day, not every check.
    expiry_warned_day: Option<i64>,
}

/// How long before the chain's first expiry the watcher starts warning
/// (`tls_certificate_expiring`, once a day; `tls_certificate_expired` once it has passed).
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);

/// A sound pair, ready for handshakes.
struct Loaded {
    certified: Arc<CertifiedKey>,
    /// The leaf's serial number (hex), for logs and tests.
    serial: String,
    /// The leaf's expiry (RFC 2822-like, UTC).
    not_after: String,
    /// The earliest expiry in the chain (an intermediate may expire before the leaf), Unix
    /// seconds.
    chain_not_after_s: i64,
}

/// Seconds since the Unix epoch (0 before it), comparable with x509 validity timestamps.
fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The digest of both files' bytes: what "changed" means.
type Digest = [u8; 32];

fn digest(cert: &[u8], key: &[u8]) -> Digest {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    // Length-prefixed, so moving bytes from one file to the other is a change too.
    for part in [cert, key] {
        ctx.update(&u64::try_from(part.len()).unwrap_or(u64::MAX).to_be_bytes());
        ctx.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Checks the pair read from `paths` (its bytes `cert_pem`, `key_pem`) at time `now`.
fn check_pair(
    paths: &CertPaths,
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
    now: SystemTime,
) -> Result<Loaded, CertError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::BadCertificate {
            path: paths.cert.clone(),
            index: 1,
            reason: format!("PEM: {e}"),
        })?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate {
            path: paths.cert.clone(),
        });
    }
    let now_s = unix_seconds(now);
    let mut leaf = None;
    let mut chain_not_after_s = i64::MAX;
    for (i, der) in chain.iter().enumerate() {
        let index = i.saturating_add(1);
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| {
            CertError::BadCertificate {
                path: paths.cert.clone(),
                index,
                reason: e.to_string(),
            }
        })?;
        let validity = cert.validity();
        if now_s < validity.not_before.timestamp() {
            return Err(CertError::NotYetValid {
                path: paths.cert.clone(),
                index,
                not_before: validity.not_before.to_string(),
            });
        }
        if now_s > validity.not_after.timestamp() {
            return Err(CertError::Expired {
                path: paths.cert.clone(),
                index,
                not_after: validity.not_after.to_string(),
            });
        }
        chain_not_after_s = chain_not_after_s.min(validity.not_after.timestamp());
        if leaf.is_none() {
            leaf = Some((
                hex_serial(cert.raw_serial()),
                validity.not_after.to_string(),
            ));
        }
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| CertError::BadKey {
        path: paths.key.clone(),
        reason: e.to_string(),
    })?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| CertError::BadKey {
            path: paths.key.clone(),
            reason: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(CertError::KeyMismatch {
                cert: paths.cert.clone(),
                key: paths.key.clone(),
            })
        }
        // Refused rather than served unchecked: every key type ring signs with can be checked.
        Err(e) => {
            return Err(CertError::BadKey {
                path: paths.key.clone(),
                reason: format!("cannot check it against the certificate: {e}"),
            })
        }
    }
    let (serial, not_after) = leaf.unwrap_or_default();
    Ok(Loaded {
        certified: Arc::new(certified),
        serial,
        not_after,
        chain_not_after_s,
    })
}

fn hex_serial(raw: &[u8]) -> String {
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether the pair at `paths` is sound now (the check [`ReloadingCert::load`] makes), without
/// loading it: for a process that wants to refuse to start before doing anything else.
pub fn check_files(paths: &CertPaths) -> Result<(), CertError> {
    let cert_pem = read(&paths.cert)?;
    let key_pem = read(&paths.key)?;
    check_pair(
        paths,
        &cert_pem,
        &key_pem,
        &crate::provider(),
        SystemTime::now(),
    )
    .map(|_| ())
}

/// Reads the certificates in `path` (e.g. a CA to trust): at least one, PEM.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::BadCertificate {
            path: path.to_owned(),
            index: 1,
            reason: format!("PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(CertError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// What one [`ReloadingCert::check`] did.
#[derive(Debug)]
pub enum Reload {
    /// The files hold the pair in service (or a pair already refused).
    Unchanged,
    /// A new pair is in service; its leaf's serial number (hex).
    Reloaded { serial: String },
    /// The files changed but the new pair is not sound; the previous pair stays in service.
    Rejected(CertError),
}

/// The server certificate and key of one process, reloaded when their files change. Serves as
/// the rustls certificate resolver of every listener that presents this pair.
pub struct ReloadingCert {
    /// Which process or listener, for log lines (`billing`, `vault`).
    name: &'static str,
    paths: CertPaths,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<Loaded>>,
    seen: Mutex<Seen>,
}

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("name", &self.name)
            .field("paths", &self.paths)
            .field("serial", &self.serial())
            .finish_non_exhaustive()
    }
}

impl ReloadingCert {
    /// Reads and checks the pair at `paths`; any problem is an error naming the file.
    pub fn load(name: &'static str, paths: CertPaths) -> Result<Arc<ReloadingCert>, CertError> {
        let provider = crate::provider();
        let cert_pem = read(&paths.cert)?;
        let key_pem = read(&paths.key)?;
        let loaded = check_pair(&paths, &cert_pem, &key_pem, &provider, SystemTime::now())?;
        tracing::info!(
            listener = name,
            cert = %paths.cert.display(),
            serial = %loaded.serial,
            not_after = %loaded.not_after,
            "TLS certificate loaded"
        );
        let loaded_at = SystemTime::now();
        let certs = Arc::new(ReloadingCert {
            name,
            provider,
            current: RwLock::new(Arc::new(loaded)),
            seen: Mutex::new(Seen {
                in_service: digest(&cert_pem, &key_pem),
                refused: None,
                unreadable_logged: false,
                expiry_warned_day: None,
            }),
            paths,
        });
        certs.warn_if_expiring(loaded_at);
        Ok(certs)
    }

    /// How long until the first certificate of the chain in service expires (zero once it has).
    pub fn expires_in(&self, now: SystemTime) -> Duration {
        let left = self
            .loaded()
            .chain_not_after_s
            .saturating_sub(unix_seconds(now));
        Duration::from_secs(u64::try_from(left).unwrap_or(0))
    }

    /// Warns, at most once a day, when the chain in service expires within [`EXPIRY_WARNING`]
    /// (or has expired: handshakes then fail at every client). Nothing else renews it, so an
    /// operator must see this before the day. Returns whether it warned.
    pub fn warn_if_expiring(&self, now: SystemTime) -> bool {
        let left = self.expires_in(now);
        if left > EXPIRY_WARNING {
            return false;
        }
        let day = unix_seconds(now) / 86_400;
        {
            let mut seen = match self.seen.lock() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            if seen.expiry_warned_day == Some(day) {
                return false;
            }
            seen.expiry_warned_day = Some(day);
        }
        let loaded = self.loaded();
        if left.is_zero() {
            tracing::error!(
                security_event = "tls_certificate_expired",
                listener = self.name,
                cert = %self.paths.cert.display(),
                serial = %loaded.serial,
                not_after = %loaded.not_after,
                "the TLS certificate in service has expired: install a new one (it is reloaded without a restart)"
            );
        } else {
            tracing::warn!(
                security_event = "tls_certificate_expiring",
                listener = self.name,
                cert = %self.paths.cert.display(),
                serial = %loaded.serial,
                not_after = %loaded.not_after,
                days_left = left.as_secs() / 86_400,
                "the TLS certificate in service expires soon: install a new one (it is reloaded without a restart)"
            );
        }
        true
    }

    pub fn paths(&self) -> &CertPaths {
        &self.paths
    }

    /// The serial number (hex) of the leaf certificate in service.
    pub fn serial(&self) -> String {
        self.loaded().serial.clone()
    }

    fn loaded(&self) -> Arc<Loaded> {
        // A poisoned lock still holds a sound pair (it is only ever replaced whole).
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reads the files once; puts a changed, sound pair in service. Logs what it did (a refusal
    /// as a `tls_certificate_rejected` security event, once per distinct refused content).
    pub fn check(&self) -> Reload {
        let files = read(&self.paths.cert).and_then(|c| Ok((c, read(&self.paths.key)?)));
        let mut seen = match self.seen.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let (cert_pem, key_pem) = match files {
            Ok(files) => files,
            Err(e) => {
                // A file missing for a moment (a rotation that deletes, then writes) is retried at
                // the next check; said once.
                if !seen.unreadable_logged {
                    seen.unreadable_logged = true;
                    self.log_rejected(&e);
                }
                return Reload::Rejected(e);
            }
        };
        seen.unreadable_logged = false;
        let now = digest(&cert_pem, &key_pem);
        if now == seen.in_service || seen.refused == Some(now) {
            return Reload::Unchanged;
        }
        match check_pair(
            &self.paths,
            &cert_pem,
            &key_pem,
            &self.provider,
            SystemTime::now(),
        ) {
            Ok(loaded) => {
                let serial = loaded.serial.clone();
                tracing::info!(
                    security_event = "tls_certificate_reloaded",
                    listener = self.name,
                    cert = %self.paths.cert.display(),
                    serial = %loaded.serial,
                    not_after = %loaded.not_after,
                    "TLS certificate reloaded: new handshakes present the new certificate"
                );
                let loaded = Arc::new(loaded);
                match self.current.write() {
                    Ok(mut guard) => *guard = loaded,
                    Err(poisoned) => *poisoned.into_inner() = loaded,
                }
                seen.in_service = now;
                seen.refused = None;
                Reload::Reloaded { serial }
            }
            Err(e) => {
                seen.refused = Some(now);
                self.log_rejected(&e);
                Reload::Rejected(e)
            }
        }
    }

    fn log_rejected(&self, e: &CertError) {
        tracing::warn!(
            security_event = "tls_certificate_rejected",
            listener = self.name,
            problem = e.kind(),
            reason = %e,
            serial_in_service = %self.serial(),
            "new TLS certificate refused; the previous one stays in service"
        );
    }

    /// Checks the files every `interval`, and at once on SIGHUP (Unix), until the returned task
    /// is aborted.
    pub fn watch(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let certs = Arc::clone(self);
        tokio::spawn(async move {
            #[cfg(unix)]
            let mut hangup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                #[cfg(unix)]
                let hup = async {
                    match hangup.as_mut() {
                        Some(s) => {
                            s.recv().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                #[cfg(not(unix))]
                let hup = std::future::pending::<()>();
                tokio::select! {
                    _ = tick.tick() => {}
                    () = hup => {}
                }
                let certs = Arc::clone(&certs);
                // File reads: off the async workers. Then the expiry of whatever is in service.
                let _ = tokio::task::spawn_blocking(move || {
                    certs.check();
                    certs.warn_if_expiring(SystemTime::now());
                })
                .await;
            }
        })
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.loaded().certified))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    struct Files {
        _dir: tempfile::TempDir,
        paths: CertPaths,
    }

    fn write(dir: &Path, issued: &devcerts::Issued) -> CertPaths {
        let paths = CertPaths::new(dir.join("server.pem"), dir.join("server.key"));
        std::fs::write(&paths.cert, &issued.cert_pem).unwrap();
        std::fs::write(&paths.key, &issued.key_pem).unwrap();
        paths
    }

    fn files(issued: &devcerts::Issued) -> Files {
        let dir = tempfile::tempdir().unwrap();
        let paths = write(dir.path(), issued);
        Files { _dir: dir, paths }
    }

    fn days(n: u64) -> Duration {
        Duration::from_secs(n * 86_400)
    }

    #[test]
    fn refuses_unsound_pairs_at_load_naming_the_file() {
        let ca = devcerts::Ca::new("tlskit test CA").unwrap();
        let good = ca.server_cert(&["localhost"]).unwrap();
        let now = SystemTime::now();

        let ok = files(&good);
        let certs = ReloadingCert::load("test", ok.paths.clone()).unwrap();
        assert!(!certs.serial().is_empty());

        let expired = ca
            .server_cert_between(&["localhost"], now - days(30), now - days(1))
            .unwrap();
        let f = files(&expired);
        let e = ReloadingCert::load("test", f.paths.clone()).unwrap_err();
        assert_eq!(e.kind(), "expired", "{e}");
        assert!(e.to_string().contains("server.pem"), "{e}");
        assert!(e.to_string().contains("expired"), "{e}");

        let future = ca
            .server_cert_between(&["localhost"], now + days(1), now + days(30))
            .unwrap();
        let e = ReloadingCert::load("test", files(&future).paths).unwrap_err();
        assert_eq!(e.kind(), "not_yet_valid", "{e}");

        let other = ca.server_cert(&["localhost"]).unwrap();
        let mismatched = devcerts::Issued {
            cert_pem: good.cert_pem.clone(),
            key_pem: other.key_pem.clone(),
        };
        let e = ReloadingCert::load("test", files(&mismatched).paths).unwrap_err();
        assert_eq!(e.kind(), "key_mismatch", "{e}");
        assert!(e.to_string().contains("server.key"), "{e}");
        assert!(
            !e.to_string().contains("PRIVATE KEY"),
            "no key material: {e}"
        );

        let missing = CertPaths::new(ok.paths.cert.with_extension("nope"), ok.paths.key.clone());
        let e = ReloadingCert::load("test", missing).unwrap_err();
        assert_eq!(e.kind(), "unreadable", "{e}");
        assert!(e.to_string().contains("server.nope"), "{e}");

        let garbage = devcerts::Issued {
            cert_pem: "not a certificate".to_owned(),
            key_pem: good.key_pem.clone(),
        };
        let e = ReloadingCert::load("test", files(&garbage).paths).unwrap_err();
        assert_eq!(e.kind(), "no_certificate", "{e}");
    }

    #[test]
    fn warns_of_a_coming_expiry_once_a_day() {
        let ca = devcerts::Ca::new("tlskit test CA").unwrap();
        let now = SystemTime::now();
        let long = files(&ca.server_cert(&["localhost"]).unwrap());
        let certs = ReloadingCert::load("test", long.paths.clone()).unwrap();
        assert!(certs.expires_in(now) > EXPIRY_WARNING);
        assert!(!certs.warn_if_expiring(now));

        let short = ca
            .server_cert_between(&["localhost"], now - days(1), now + days(10))
            .unwrap();
        let f = files(&short);
        let certs = ReloadingCert::load("test", f.paths.clone()).unwrap();
        let left = certs.expires_in(now);
        assert!(left <= days(10) && left > days(9), "{left:?}");
        // Once a day: the next day warns, then not again that day.
        assert!(certs.warn_if_expiring(now + days(1)));
        assert!(!certs.warn_if_expiring(now + days(1)));
        // Past its expiry (still in service: nothing better was offered).
        assert_eq!(certs.expires_in(now + days(11)), Duration::ZERO);
        assert!(certs.warn_if_expiring(now + days(11)));
    }

    #[test]
    fn check_swaps_a_sound_pair_and_keeps_the_old_one_otherwise() {
        let ca = devcerts::Ca::new("tlskit test CA").unwrap();
        let first = ca.server_cert(&["localhost"]).unwrap();
        let f = files(&first);
        let certs = ReloadingCert::load("test", f.paths.clone()).unwrap();
        let first_serial = certs.serial();
        assert!(matches!(certs.check(), Reload::Unchanged));

        // A mismatched pair: refused, the first stays, and the same content is not re-tried.
        let second = ca.server_cert(&["localhost"]).unwrap();
        std::fs::write(&f.paths.cert, &second.cert_pem).unwrap();
        assert!(matches!(
            certs.check(),
            Reload::Rejected(CertError::KeyMismatch { .. })
        ));
        assert_eq!(certs.serial(), first_serial);
        assert!(matches!(certs.check(), Reload::Unchanged));

        // Its key arrives: taken.
        std::fs::write(&f.paths.key, &second.key_pem).unwrap();
        match certs.check() {
            Reload::Reloaded { serial } => assert_eq!(serial, certs.serial()),
            other => panic!("expected a reload, got {other:?}"),
        }
        assert_ne!(certs.serial(), first_serial);

        // An expired pair: refused.
        let now = SystemTime::now();
        let expired = ca
            .server_cert_between(&["localhost"], now - days(30), now - days(1))
            .unwrap();
        let serial = certs.serial();
        write(f.paths.cert.parent().unwrap(), &expired);
        assert!(matches!(
            certs.check(),
            Reload::Rejected(CertError::Expired { .. })
        ));
        assert_eq!(certs.serial(), serial);
    }
}
