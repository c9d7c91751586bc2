//! A development PKI: one local CA, and the certificates carebill's processes present: the
//! billing server's HTTPS certificate, the vault's, and billing's client certificate for the
//! vault's mutual-TLS listener.
//!
//! `carebill up` calls [`ensure_dev_pki`] so the one-command start serves real TLS and real
//! mutual TLS between billing and the card vault, with nothing to install. Production deployments
//! bring certificates from their own CA instead; nothing here is used there. The tests use
//! [`Ca`] directly to make the certificates an attacker would try (another CA, a name that is not
//! on the vault's allowlist).
//!
//! Keys are ECDSA P-256. The CA's private key is never written to disk: when any file is
//! missing, the whole set is issued again from a fresh CA.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// The identity (DNS SAN) of the billing service's client certificate, as the vault's
/// allowlist names it.
pub const BILLING_CLIENT_NAME: &str = "carebill-billing";
/// The vault's server name; its certificate also covers `localhost` and `127.0.0.1`.
pub const VAULT_SERVER_NAME: &str = "carebill-vault";
/// The names the billing server's development certificate covers.
pub const BILLING_SERVER_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// A certificate and its private key, both PEM. `Debug` leaves the key out.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[redacted]")
            .finish()
    }
}

/// A certificate authority held in memory.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("cert_pem", &self.cert_pem)
            .finish()
    }
}

impl Ca {
    /// A new self-signed CA named `common_name`, valid for ten years.
    pub fn new(common_name: &str) -> anyhow::Result<Ca> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "carebill development");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, 3650);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn server_cert(&self, names: &[&str]) -> anyhow::Result<Issued> {
        self.leaf(names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A server certificate for `names` valid from `not_before` to `not_after` only: the
    /// expired and not-yet-valid certificates the TLS tests present.
    pub fn server_cert_between(
        &self,
        names: &[&str],
        not_before: std::time::SystemTime,
        not_after: std::time::SystemTime,
    ) -> anyhow::Result<Issued> {
        self.leaf_with(names, ExtendedKeyUsagePurpose::ServerAuth, |params| {
            params.not_before = not_before.into();
            params.not_after = not_after.into();
        })
    }

    /// A client certificate whose identity (DNS SAN and common name) is `name`.
    pub fn client_cert(&self, name: &str) -> anyhow::Result<Issued> {
        self.leaf(&[name], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn leaf(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> anyhow::Result<Issued> {
        self.leaf_with(names, usage, |_| {})
    }

    fn leaf_with(
        &self,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> anyhow::Result<Issued> {
        let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(sans)?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("carebill"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, 825);
        adjust(&mut params);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn set_validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(days);
}

/// Where [`ensure_dev_pki`] keeps each file.
#[derive(Debug, Clone)]
pub struct DevPki {
    pub ca_cert: PathBuf,
    pub vault_cert: PathBuf,
    pub vault_key: PathBuf,
    pub billing_client_cert: PathBuf,
    pub billing_client_key: PathBuf,
    /// The billing server's own HTTPS certificate and key.
    pub billing_cert: PathBuf,
    pub billing_key: PathBuf,
}

impl DevPki {
    pub fn in_dir(dir: &Path) -> DevPki {
        DevPki {
            ca_cert: dir.join("ca.pem"),
            vault_cert: dir.join("vault.pem"),
            vault_key: dir.join("vault.key"),
            billing_client_cert: dir.join("billing-client.pem"),
            billing_client_key: dir.join("billing-client.key"),
            billing_cert: dir.join("billing.pem"),
            billing_key: dir.join("billing.key"),
        }
    }

    fn files(&self) -> [&PathBuf; 7] {
        [
            &self.ca_cert,
            &self.vault_cert,
            &self.vault_key,
            &self.billing_client_cert,
            &self.billing_client_key,
            &self.billing_cert,
            &self.billing_key,
        ]
    }
}

/// The development certificates in `dir`, issued now if any is missing. Private keys are
/// written with mode 0600.
pub fn ensure_dev_pki(dir: &Path) -> anyhow::Result<DevPki> {
    let pki = DevPki::in_dir(dir);
    if pki.files().iter().all(|f| f.exists()) {
        return Ok(pki);
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca = Ca::new("carebill development CA")?;
    let vault = ca.server_cert(&[VAULT_SERVER_NAME, "localhost", "127.0.0.1"])?;
    let client = ca.client_cert(BILLING_CLIENT_NAME)?;
    let billing = ca.server_cert(BILLING_SERVER_NAMES)?;
    write_public(&pki.ca_cert, ca.cert_pem())?;
    write_public(&pki.vault_cert, &vault.cert_pem)?;
    write_private(&pki.vault_key, &vault.key_pem)?;
    write_public(&pki.billing_client_cert, &client.cert_pem)?;
    write_private(&pki.billing_client_key, &client.key_pem)?;
    write_public(&pki.billing_cert, &billing.cert_pem)?;
    write_private(&pki.billing_key, &billing.key_pem)?;
    Ok(pki)
}

fn write_public(path: &Path, contents: &str) -> anyhow::Result<()> {
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

/// Writes a secret file readable by its owner only.
pub fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn issues_a_complete_set_once() {
        let dir = tempfile_dir();
        let pki = ensure_dev_pki(&dir).expect("issue");
        let first = fs::read_to_string(&pki.vault_cert).expect("read");
        assert!(first.contains("BEGIN CERTIFICATE"));
        let again = ensure_dev_pki(&dir).expect("reuse");
        assert_eq!(first, fs::read_to_string(&again.vault_cert).expect("read"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&pki.vault_key)
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "private key readable by others");
        }
        fs::remove_dir_all(&dir).ok();
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("devcerts-{}", std::process::id()));
        fs::remove_dir_all(&dir).ok();
        dir
    }
}
