//! `carebill up`: the one-command start for a newcomer.
//!
//! Issues the development certificates (`var/certs/`: a CA, billing's HTTPS certificate, the
//! vault's, billing's client certificate for the vault), creates the card vault's keys on first
//! run (`var/vault/keys/`), starts the vault (`tokenizer serve`, its own SQLite file
//! `var/vault/tokenizer.db`, its log `var/vault/tokenizer.log`) as a child process, creates the
//! billing database (SQLite under `./var/` by default), migrates, makes a billing-manager API
//! key, starts the HTTPS server wired to the vault over mutual TLS, seeds a small demo *through
//! the API itself* (so the demo data went through every check real data does; one payment is
//! made with a card tokenized by the vault), prints what to try and how to trust the
//! development CA, and serves until Ctrl-C. The vault is stopped when `up` stops (Ctrl-C,
//! SIGTERM, or an error).
//!
//! [`VaultSpec`] and [`VaultChild`] run a vault process for `up` and for the tests.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::auth::{create_api_key, Role};
use crate::client::{id_of, ApiClient};
use crate::config::Config;

/// Where `up` keeps the development certificates.
pub const CERTS_DIR: &str = "var/certs";
/// The vault's own database (never billing's).
pub const VAULT_DATABASE_URL: &str = "sqlite://var/vault/tokenizer.db";
/// The custodians' KEK component files of the development vault.
pub const VAULT_KEYS_DIR: &str = "var/vault/keys";
/// The vault's log (JSON lines).
pub const VAULT_LOG: &str = "var/vault/tokenizer.log";
/// Billing's keyring (field encryption of health data), made on first run.
pub const BILLING_KEYRING: &str = "var/keys/billing.keyring";
/// How long the vault may take to print its ready line.
const VAULT_START_TIMEOUT: Duration = Duration::from_secs(30);
/// The card the demo tokenizes (Stripe's Mastercard test number).
const DEMO_CARD_NUMBER: &str = "5555555555554444";

/// The `tokenizer` binary: `CAREBILL_TOKENIZER_BIN`, else the `tokenizer` file next to the
/// running executable (for a test executable in `target/*/deps/`, the one in `target/*/`).
pub fn tokenizer_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("CAREBILL_TOKENIZER_BIN") {
        let path = PathBuf::from(path);
        anyhow::ensure!(
            path.is_file(),
            "CAREBILL_TOKENIZER_BIN is {}, which is not a file",
            path.display()
        );
        return Ok(path);
    }
    let exe = std::env::current_exe().context("locating the running executable")?;
    let name = format!("tokenizer{}", std::env::consts::EXE_SUFFIX);
    let mut candidates = Vec::new();
    if let Some(dir) = exe.parent() {
        candidates.push(dir.join(&name));
        if dir.file_name().is_some_and(|n| n == "deps") {
            if let Some(up) = dir.parent() {
                candidates.push(up.join(&name));
            }
        }
    }
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    anyhow::bail!(
        "the card vault binary `tokenizer` was not found (looked for {}). Build it with \
         `cargo build --workspace` at the repository root (or point CAREBILL_TOKENIZER_BIN at it)",
        looked.join(", ")
    )
}

/// The KEK component files in `keys_dir` (`kek-component-N.txt`, in order of N).
fn component_files(keys_dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in
        std::fs::read_dir(keys_dir).with_context(|| format!("reading {}", keys_dir.display()))?
    {
        let path = entry?.path();
        let number = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("kek-component-"))
            .and_then(|n| n.strip_suffix(".txt"))
            .and_then(|n| n.parse::<u32>().ok());
        if let Some(n) = number {
            found.push((n, path));
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// The vault's KEK components in `keys_dir`, created with `tokenizer keys init` (which also
/// creates the vault's keys in `database_url`) when `kek-component-1.txt` is missing.
pub async fn ensure_vault_keys(
    binary: &Path,
    database_url: &str,
    keys_dir: &Path,
) -> anyhow::Result<Vec<PathBuf>> {
    if !keys_dir.join("kek-component-1.txt").exists() {
        let out = tokio::process::Command::new(binary)
            .args(["keys", "init", "--out-dir"])
            .arg(keys_dir)
            .env("TOKENIZER_DATABASE_URL", database_url)
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("running {} keys init", binary.display()))?;
        if !out.status.success() {
            anyhow::bail!(
                "`tokenizer keys init` failed ({}): {}. If the vault database already has keys but \
                 {} lost its component files, the vault cannot be unlocked: remove the vault's \
                 database to start afresh (its tokens are lost)",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                keys_dir.display()
            );
        }
    }
    let components = component_files(keys_dir)?;
    anyhow::ensure!(
        components.len() >= 2,
        "{} holds {} KEK component file(s); the vault needs at least 2",
        keys_dir.display(),
        components.len()
    );
    Ok(components)
}

/// How to run a vault: `tokenizer serve` with these files and addresses.
#[derive(Debug, Clone)]
pub struct VaultSpec {
    pub binary: PathBuf,
    pub database_url: String,
    pub key_components: Vec<PathBuf>,
    /// The development certificates (the vault's server certificate, the CA of billing's
    /// client certificate, billing's client certificate).
    pub pki: devcerts::DevPki,
    /// The collect listener (the card form posts here); port 0 picks a free port.
    pub collect_addr: String,
    /// The internal, mutual-TLS listener (billing calls it); port 0 picks a free port.
    pub internal_addr: String,
    /// Browser origins allowed to post the card form.
    pub cors_origins: Vec<String>,
    /// The vault's stderr (its JSON log) is appended here.
    pub log: PathBuf,
    /// More `TOKENIZER_*` settings (rate limits, log level).
    pub extra_env: Vec<(String, String)>,
}

/// A running vault process. Killed when dropped; [`VaultChild::stop`] also waits for it.
#[derive(Debug)]
pub struct VaultChild {
    child: tokio::process::Child,
    /// `https://127.0.0.1:PORT` of the collect listener.
    pub collect_url: String,
    /// `https://127.0.0.1:PORT` of the internal listener.
    pub internal_url: String,
    pki: devcerts::DevPki,
    log: PathBuf,
}

/// `https://ADDR`, with an unspecified address (`0.0.0.0`) replaced by the loopback address
/// the development certificate names.
fn listener_url(value: &str) -> Option<String> {
    let mut addr: SocketAddr = value.strip_prefix("https://")?.parse().ok()?;
    if addr.ip().is_unspecified() {
        addr.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    Some(format!("https://{addr}"))
}

/// The collect and internal URLs of `tokenizer serve`'s ready line
/// (`tokenizer listening collect=https://… internal=https://…`).
pub fn parse_ready_line(line: &str) -> Option<(String, String)> {
    let rest = line.trim().strip_prefix("tokenizer listening ")?;
    let mut collect = None;
    let mut internal = None;
    for part in rest.split_whitespace() {
        if let Some(v) = part.strip_prefix("collect=") {
            collect = listener_url(v);
        } else if let Some(v) = part.strip_prefix("internal=") {
            internal = listener_url(v);
        }
    }
    Some((collect?, internal?))
}

/// The last `n` lines of a log file, for an error message.
fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl VaultChild {
    /// Starts `tokenizer serve` and waits (at most 30 s) for its ready line.
    pub async fn start(spec: &VaultSpec) -> anyhow::Result<VaultChild> {
        if let Some(dir) = spec.log.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .with_context(|| format!("opening {}", spec.log.display()))?;
        let components = spec
            .key_components
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(",");
        let mut command = tokio::process::Command::new(&spec.binary);
        command
            .arg("serve")
            .env("TOKENIZER_DATABASE_URL", &spec.database_url)
            .env("TOKENIZER_COLLECT_ADDR", &spec.collect_addr)
            .env("TOKENIZER_INTERNAL_ADDR", &spec.internal_addr)
            .env("TOKENIZER_TLS_CERT", &spec.pki.vault_cert)
            .env("TOKENIZER_TLS_KEY", &spec.pki.vault_key)
            .env("TOKENIZER_CLIENT_CA", &spec.pki.ca_cert)
            .env("TOKENIZER_CLIENT_ALLOWLIST", devcerts::BILLING_CLIENT_NAME)
            .env("TOKENIZER_KEY_COMPONENTS", components)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        if spec.cors_origins.is_empty() {
            command.env_remove("TOKENIZER_CORS_ORIGINS");
        } else {
            command.env("TOKENIZER_CORS_ORIGINS", spec.cors_origins.join(","));
        }
        for (name, value) in &spec.extra_env {
            command.env(name, value);
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {} serve", spec.binary.display()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("the vault's stdout is not piped"))?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(VAULT_START_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(urls) = parse_ready_line(&line) {
                    return Ok::<_, std::io::Error>(Some(urls));
                }
            }
            Ok(None)
        })
        .await;
        let failed = |why: String| {
            anyhow::anyhow!(
                "the card vault did not start ({why}); its log {} ends with:\n{}",
                spec.log.display(),
                log_tail(&spec.log, 8)
            )
        };
        let (collect_url, internal_url) = match ready {
            Ok(Ok(Some(urls))) => urls,
            Ok(Ok(None)) => {
                let status = child.wait().await.ok();
                return Err(failed(match status {
                    Some(s) => format!("it exited: {s}"),
                    None => "it closed its output".to_owned(),
                }));
            }
            Ok(Err(e)) => return Err(failed(format!("reading its output: {e}"))),
            Err(_) => {
                let _ = child.kill().await;
                return Err(failed(format!(
                    "no ready line within {} s",
                    VAULT_START_TIMEOUT.as_secs()
                )));
            }
        };
        // Nothing more is expected on stdout, but keep reading so a write never fails.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(VaultChild {
            child,
            collect_url,
            internal_url,
            pki: spec.pki.clone(),
            log: spec.log.clone(),
        })
    }

    /// Points billing's vault client at this vault's internal listener, with billing's client
    /// certificate.
    pub fn configure(&self, config: &mut Config) {
        config.vault_url = Some(self.internal_url.clone());
        config.vault_ca = Some(self.pki.ca_cert.clone());
        config.vault_client_cert = Some(self.pki.billing_client_cert.clone());
        config.vault_client_key = Some(self.pki.billing_client_key.clone());
    }

    /// The CA to trust for the vault's listeners.
    pub fn ca_cert(&self) -> &Path {
        &self.pki.ca_cert
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits until the process exits by itself.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// Kills the process (unless it already exited) and waits for it.
    pub async fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        if let Err(e) = self.child.kill().await {
            tracing::warn!(error = %e, "stopping the card vault");
        }
    }
}

/// A client of the vault's collect listener, as a browser's card form would be: trusting only
/// the development CA, no client certificate.
pub fn collect_client(ca_cert: &Path) -> anyhow::Result<reqwest::Client> {
    let pem = std::fs::read(ca_cert).with_context(|| format!("reading {}", ca_cert.display()))?;
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
        .https_only(true)
        .timeout(Duration::from_secs(10))
        .build()
        .context("building the collect client")
}

/// Tokenizes a card at the vault's collect listener and returns its token.
pub async fn tokenize(
    http: &reqwest::Client,
    collect_url: &str,
    card: &serde_json::Value,
) -> anyhow::Result<String> {
    let response = http
        .post(format!("{collect_url}/v1/cards"))
        .json(card)
        .send()
        .await
        .context("posting the demo card to the vault")?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    anyhow::ensure!(
        status.is_success(),
        "the vault refused the demo card: {status} {}",
        body["error"]["code"]
    );
    id_of(&body)
}

/// Options of `carebill up` besides the configuration.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub vault_collect_addr: String,
    pub vault_internal_addr: String,
}

/// `https://ADDR` for a client on this machine: an unspecified address (`0.0.0.0`, `::`)
/// becomes the loopback address the development certificate names.
fn local_https_url(mut addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        addr.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    format!("https://{addr}")
}

pub async fn up(mut config: Config, options: UpOptions) -> anyhow::Result<()> {
    let binary = tokenizer_binary()?;
    if config.key_source().is_none() {
        let keyring = PathBuf::from(BILLING_KEYRING);
        if !keyring.exists() {
            crate::crypto::store::write_new_keyring(&keyring)?;
            println!("created billing keyring {BILLING_KEYRING} (health data is stored encrypted under it)");
        }
        config.keyring_file = Some(keyring);
    }
    let pki = devcerts::ensure_dev_pki(Path::new(CERTS_DIR))?;
    // The development certificate, unless the operator configured one.
    let dev_cert = config.tls_cert.is_none() && config.tls_key.is_none();
    if dev_cert {
        config.tls_cert = Some(pki.billing_cert.clone());
        config.tls_key = Some(pki.billing_key.clone());
    }
    let key_components =
        ensure_vault_keys(&binary, VAULT_DATABASE_URL, Path::new(VAULT_KEYS_DIR)).await?;
    let listener = tokio::net::TcpListener::bind(&config.addr)
        .await
        .with_context(|| format!("binding {}", config.addr))?;
    let addr = listener.local_addr()?;
    let mut origins = vec![local_https_url(addr)];
    if addr.ip().is_loopback() || addr.ip().is_unspecified() {
        origins.push(format!("https://localhost:{}", addr.port()));
    }
    let mut vault = VaultChild::start(&VaultSpec {
        binary,
        database_url: VAULT_DATABASE_URL.to_owned(),
        key_components,
        pki,
        collect_addr: options.vault_collect_addr,
        internal_addr: options.vault_internal_addr,
        cors_origins: origins,
        log: PathBuf::from(VAULT_LOG),
        extra_env: Vec::new(),
    })
    .await
    .context("starting the card vault (is another `carebill up` running? see --vault-collect-addr and --vault-internal-addr)")?;
    vault.configure(&mut config);
    let result = serve_with_vault(config, listener, &mut vault, dev_cert).await;
    vault.stop().await;
    result
}

async fn serve_with_vault(
    config: Config,
    listener: tokio::net::TcpListener,
    vault: &mut VaultChild,
    dev_cert: bool,
) -> anyhow::Result<()> {
    let state = crate::server::prepare(config).await?;
    let key = create_api_key(&state.db, Role::BillingManager).await?;
    let mut running = crate::server::spawn(state.clone(), listener)?;
    let base = local_https_url(running.addr);
    // The seeding client trusts what the server presents: the development CA, or the system
    // roots for an operator's certificate.
    let http = if dev_cert {
        let pem = std::fs::read(vault.ca_cert())
            .with_context(|| format!("reading {}", vault.ca_cert().display()))?;
        crate::client::https_client(&pem)?
    } else {
        reqwest::Client::builder().https_only(true).build()?
    };
    let client = ApiClient::with_http(&base, &key.secret, http);

    let patients: i64 = sqlx::Row::try_get(
        &sqlx::query("SELECT COUNT(*) AS n FROM patients")
            .fetch_one(&state.db.pool)
            .await?,
        "n",
    )?;
    if patients == 0 {
        let exp_year = chrono::Datelike::year(&chrono::Utc::now()).saturating_add(3);
        let token = tokenize(
            &collect_client(vault.ca_cert())?,
            &vault.collect_url,
            &json!({"number": DEMO_CARD_NUMBER, "exp_month": 12, "exp_year": exp_year, "cvc": "123", "name": "Grace Hopper"}),
        )
        .await?;
        seed(&client, &token).await?;
        println!("seeded a demo: 3 patients, 4 invoices, payments (one with a vault card token) and a refund");
    }
    let ca = std::fs::canonicalize(vault.ca_cert()).unwrap_or_else(|_| vault.ca_cert().to_owned());
    let ca = ca.display();
    let collect = &vault.collect_url;
    println!();
    println!(
        "carebill is up at {base} ({} database; HTTPS only)",
        state.db.backend.name()
    );
    println!("API key (a billing_manager service key: billing, refunds, ledger, exports):");
    println!("  export CAREBILL_KEY={}", key.secret);
    println!("Card vault: the card form posts to {collect}/v1/cards");
    println!("  (its log: {})", vault.log().display());
    if dev_cert {
        println!("Both serve certificates of the development CA {ca}. Trust it:");
        println!("  curl:           curl --cacert {ca} {base}/healthz");
        println!("  Debian/Ubuntu:  sudo cp {ca} /usr/local/share/ca-certificates/carebill-dev.crt && sudo update-ca-certificates");
        println!("  Fedora/RHEL:    sudo cp {ca} /etc/pki/ca-trust/source/anchors/carebill-dev.pem && sudo update-ca-trust");
        println!("  macOS:          sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain {ca}");
        println!("  Windows:        certutil -addstore -f Root {ca}");
        println!("  Firefox:        Settings > Privacy & Security > Certificates > View Certificates > Authorities > Import");
        println!("  (the CA's private key was never written to disk: trusting it lets nobody issue more certificates)");
    }
    println!("Try:");
    println!(
        "  curl -s --cacert {ca} {base}/v1/patients -H \"Authorization: Bearer $CAREBILL_KEY\""
    );
    println!("  curl -s --cacert {ca} '{base}/v1/ledger/accounts?currency=usd' -H \"Authorization: Bearer $CAREBILL_KEY\"");
    println!("  curl -s --cacert {ca} {base}/v1/openapi.json");
    println!("  curl -s --cacert {ca} {collect}/v1/cards -H 'Content-Type: application/json' \\");
    println!("    -d '{{\"number\":\"4242424242424242\",\"exp_month\":12,\"exp_year\":2030,\"cvc\":\"123\"}}'   # a tok_… for payment_method");
    println!("Press Ctrl-C to stop.");
    let served = tokio::select! {
        served = &mut running.handle => served,
        exited = vault.wait() => {
            let how = exited.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
            eprintln!(
                "warning: the card vault exited ({how}); payments with card tokens answer 503 until `carebill up` is restarted. See {}",
                vault.log().display()
            );
            (&mut running.handle).await
        }
    };
    served??;
    Ok(())
}

/// A few patients with bills in several states, made through the API. Grace's payment is made
/// with `card_token`, a card the vault tokenized.
pub async fn seed(client: &ApiClient, card_token: &str) -> anyhow::Result<()> {
    let today = chrono::Utc::now().date_naive();
    let day = |n: i64| {
        (today - chrono::Duration::days(n))
            .format("%Y-%m-%d")
            .to_string()
    };
    let due = (today + chrono::Duration::days(30))
        .format("%Y-%m-%d")
        .to_string();
    let people = [
        ("Ada Lovelace", "1985-12-10", "ada@example.org", "MRN-1001"),
        (
            "Grace Hopper",
            "1966-12-09",
            "grace@example.org",
            "MRN-1002",
        ),
        ("Alan Turing", "1972-06-23", "alan@example.org", "MRN-1003"),
    ];
    let mut ids = Vec::new();
    for (name, dob, email, mrn) in people {
        let p = client
            .create("/v1/patients", &json!({"name": name, "date_of_birth": dob, "email": email, "phone": "+1 555 0100", "mrn": mrn,
                "address": {"line1": "1 Main St", "city": "Springfield", "state": "IL", "postal_code": "62701", "country": "US"}}))
            .await?;
        ids.push(id_of(&p)?);
    }
    let invoice = |patient: &str, lines: serde_json::Value| json!({"patient": patient, "currency": "usd", "due_date": due, "lines": lines});
    // Ada: an office visit and lab work, paid in part, then a partial refund.
    let inv = client
        .create("/v1/invoices", &invoice(&ids[0], json!([
            {"service_date": day(7), "code": "99213", "description": "Office visit, established patient", "quantity": 1, "unit_amount": 15000},
            {"service_date": day(7), "code": "80053", "description": "Comprehensive metabolic panel", "quantity": 1, "unit_amount": 4550}])))
        .await?;
    let inv_id = id_of(&inv)?;
    client
        .create(&format!("/v1/invoices/{inv_id}/finalize"), &json!({}))
        .await?;
    client.create(&format!("/v1/invoices/{inv_id}/adjustments"), &json!({"kind": "insurance_adjustment", "amount": 5000, "reason": "Contractual allowance, BCBS"})).await?;
    let pay = client.create("/v1/payments", &json!({"invoice": inv_id, "amount": 10000, "currency": "usd", "payment_method": "pm_card_visa"})).await?;
    client.create("/v1/refunds", &json!({"payment": id_of(&pay)?, "amount": 1500, "reason": "billing_error", "note": "Lab fee charged twice"})).await?;
    // Grace: paid in full, by a card the vault tokenized, with an overpayment that becomes a
    // credit balance.
    let inv = client
        .create("/v1/invoices", &invoice(&ids[1], json!([
            {"service_date": day(3), "code": "71046", "description": "Chest X-ray, 2 views", "quantity": 1, "unit_amount": 12000}])))
        .await?;
    let inv_id = id_of(&inv)?;
    client
        .create(&format!("/v1/invoices/{inv_id}/finalize"), &json!({}))
        .await?;
    client.create("/v1/payments", &json!({"invoice": inv_id, "amount": 13000, "currency": "usd", "payment_method": card_token})).await?;
    // Alan: one open bill, one draft.
    let inv = client
        .create("/v1/invoices", &invoice(&ids[2], json!([
            {"service_date": day(1), "code": "97110", "description": "Therapeutic exercise, 15 min", "quantity": 4, "unit_amount": 3500}])))
        .await?;
    client
        .create(
            &format!("/v1/invoices/{}/finalize", id_of(&inv)?),
            &json!({}),
        )
        .await?;
    client
        .create("/v1/invoices", &invoice(&ids[2], json!([
            {"service_date": day(0), "code": "99214", "description": "Office visit, moderate complexity", "quantity": 1, "unit_amount": 21000}])))
        .await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ready_line() {
        let (c, i) = parse_ready_line(
            "tokenizer listening collect=https://127.0.0.1:8444 internal=https://0.0.0.0:45123\n",
        )
        .unwrap();
        assert_eq!(c, "https://127.0.0.1:8444");
        assert_eq!(i, "https://127.0.0.1:45123", "unspecified becomes loopback");
        assert!(parse_ready_line("tokenizer listening collect=https://127.0.0.1:1").is_none());
        assert!(parse_ready_line("something else").is_none());
    }
}
