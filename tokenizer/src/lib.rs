//! carebill's card vault: the only component in PCI scope.
//!
//! Card numbers arrive on the **collect** listener (the patient's browser posts the card form
//! there), are encrypted deterministically with AES-SIV under versioned data keys that are
//! stored wrapped under a split-knowledge key-encrypting key, and are answered with a random
//! token. Billing, on the **internal** mutual-TLS listener, can read a token's masked metadata
//! and have the vault turn it into the processor's payment method; nothing returns a card
//! number. Security codes live only in memory, encrypted, for at most ten minutes or one use.
//! Every operation is recorded in a hash-chained, append-only audit trail.
//!
//! The vault shares no database, no key and no process with billing. See `tokenizer/README.md`.

pub mod audit;
pub mod card;
pub mod cards;
pub mod crypto;
pub mod cvc;
pub mod db;
pub mod http;
pub mod keys;
pub mod minter;
pub mod pan_scan;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cvc::CvcStore;
use crate::db::Db;
use crate::http::collect::RateLimits;
use crate::keys::KeyringCache;
use crate::minter::Minter;

/// What every handler shares.
#[derive(Clone, Debug)]
pub struct AppState {
    pub db: Db,
    pub keys: Arc<KeyringCache>,
    pub cvcs: Arc<CvcStore>,
    pub limits: Arc<RateLimits>,
    pub minter: Minter,
}

/// Everything `tokenizer serve` needs.
#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: String,
    pub collect_addr: SocketAddr,
    pub internal_addr: SocketAddr,
    /// The vault's server certificate and key (both listeners), reloaded when they change.
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// How often the certificate and key files are checked for a rotation (also on SIGHUP).
    pub tls_reload_interval: Duration,
    /// The CA that issues billing's client certificates.
    pub client_ca: PathBuf,
    /// Client-certificate identities (DNS SAN) allowed on the internal listener.
    pub client_allowlist: Vec<String>,
    /// The custodians' KEK component files.
    pub key_components: Vec<PathBuf>,
    /// Browser origins allowed to post the card form (CORS).
    pub cors_origins: Vec<String>,
    pub rate_per_address: u32,
    pub rate_global: u32,
    pub rate_window: Duration,
    pub cvc_ttl: Duration,
}

/// A running vault.
#[derive(Debug)]
pub struct Running {
    pub collect_addr: SocketAddr,
    pub internal_addr: SocketAddr,
    pub state: AppState,
    /// The certificate both listeners present.
    pub tls: Arc<tlskit::ReloadingCert>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops accepting connections and waits for the listeners to close.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

async fn shutdown_signal(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            break;
        }
    }
}

/// Opens the database, unlocks the keys (refusing to start without enough valid components),
/// binds both TLS listeners and serves.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let db = db::connect(&config.database_url).await?;
    let kek = keys::unlock(&db, &config.key_components).await?;
    let keys = Arc::new(KeyringCache::open(&db, kek).await?);
    let state = AppState {
        db,
        keys,
        cvcs: Arc::new(CvcStore::new(config.cvc_ttl)),
        limits: Arc::new(RateLimits::new(
            config.rate_per_address,
            config.rate_global,
            config.rate_window,
        )),
        minter: Minter::from_env()?,
    };
    let certs = tlskit::ReloadingCert::load(
        "vault",
        tlskit::CertPaths::new(&config.tls_cert, &config.tls_key),
    )?;
    let collect_tls = tls::server_config(certs.clone())?;
    let internal_tls =
        tls::mtls_config(certs.clone(), &config.client_ca, &config.client_allowlist)?;
    let allowed = tls::allowlist_names(&config.client_allowlist)?;
    let collect = TcpListener::bind(config.collect_addr).await?;
    let internal = TcpListener::bind(config.internal_addr).await?;
    let collect_addr = collect.local_addr()?;
    let internal_addr = internal.local_addr()?;
    let (tx, rx) = watch::channel(false);
    let collect_app = http::collect::router(state.clone(), &config.cors_origins)?;
    let internal_app = http::internal::router(state.clone());
    let mut tasks = vec![
        tokio::spawn(tls::serve(
            collect,
            collect_tls,
            Vec::new(),
            collect_app,
            "collect",
            shutdown_signal(rx.clone()),
        )),
        tokio::spawn(tls::serve(
            internal,
            internal_tls,
            allowed,
            internal_app,
            "internal",
            shutdown_signal(rx.clone()),
        )),
    ];
    let watcher = certs.watch(config.tls_reload_interval);
    let watcher_rx = rx.clone();
    tasks.push(tokio::spawn(async move {
        shutdown_signal(watcher_rx).await;
        watcher.abort();
    }));
    let sweeper_state = state.clone();
    let mut sweeper_rx = rx;
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    sweeper_state.cvcs.sweep();
                    sweeper_state.limits.prune();
                }
                _ = sweeper_rx.changed() => break,
            }
        }
    }));
    tracing::info!(%collect_addr, %internal_addr, "vault listening (TLS; internal: mutual TLS)");
    Ok(Running {
        collect_addr,
        internal_addr,
        state,
        tls: certs,
        shutdown: tx,
        tasks,
    })
}
