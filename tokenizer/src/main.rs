//! `tokenizer`: the card vault's process and its key-custody commands.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tokenizer::{audit, db, keys, pan_scan};

#[derive(Parser, Debug)]
#[command(name = "tokenizer", version, about = "carebill's card vault")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the collect (TLS) and internal (mutual TLS) listeners.
    Serve(ServeArgs),
    /// Key custody: init, rotate, reencrypt, retire, list.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Recompute the audit trail's hash chain and print its head.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Look for card numbers (Luhn-valid 12–19 digits) in files and directories. Exits 1 if
    /// any is found.
    PanScan {
        /// Also look for these security codes (the ones a test run used).
        #[arg(long = "cvc")]
        cvcs: Vec<String>,
        paths: Vec<PathBuf>,
    },
}

#[derive(Args, Debug)]
struct DbArgs {
    /// The vault's own database (never billing's).
    #[arg(
        long,
        env = "TOKENIZER_DATABASE_URL",
        default_value = "sqlite://var/vault/tokenizer.db"
    )]
    database_url: String,
}

#[derive(Args, Debug)]
struct ComponentArgs {
    /// The custodians' KEK component files (comma-separated in the environment).
    #[arg(
        long = "key-component",
        env = "TOKENIZER_KEY_COMPONENTS",
        value_delimiter = ',',
        required = true
    )]
    key_components: Vec<PathBuf>,
}

#[derive(Args, Debug)]
struct ServeArgs {
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    components: ComponentArgs,
    #[arg(long, env = "TOKENIZER_COLLECT_ADDR", default_value = "127.0.0.1:8444")]
    collect_addr: SocketAddr,
    #[arg(
        long,
        env = "TOKENIZER_INTERNAL_ADDR",
        default_value = "127.0.0.1:8445"
    )]
    internal_addr: SocketAddr,
    #[arg(long, env = "TOKENIZER_TLS_CERT")]
    tls_cert: PathBuf,
    #[arg(long, env = "TOKENIZER_TLS_KEY")]
    tls_key: PathBuf,
    /// How often the certificate and key files are checked for a rotation, in milliseconds
    /// (SIGHUP checks at once).
    #[arg(
        long,
        env = "TOKENIZER_TLS_RELOAD_INTERVAL_MS",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(100..=86_400_000)
    )]
    tls_reload_interval_ms: u64,
    /// CA of the client certificates accepted on the internal listener.
    #[arg(long, env = "TOKENIZER_CLIENT_CA")]
    client_ca: PathBuf,
    /// Client-certificate identities (DNS names) allowed on the internal listener.
    #[arg(
        long,
        env = "TOKENIZER_CLIENT_ALLOWLIST",
        value_delimiter = ',',
        required = true
    )]
    client_allowlist: Vec<String>,
    /// Browser origins allowed to post the card form.
    #[arg(long, env = "TOKENIZER_CORS_ORIGINS", value_delimiter = ',')]
    cors_origins: Vec<String>,
    /// Tokenization attempts allowed per client address per window.
    #[arg(long, env = "TOKENIZER_RATE_PER_ADDRESS", default_value_t = 10)]
    rate_per_address: u32,
    /// Tokenization attempts allowed in all per window.
    #[arg(long, env = "TOKENIZER_RATE_GLOBAL", default_value_t = 600)]
    rate_global: u32,
    #[arg(long, env = "TOKENIZER_RATE_WINDOW_SECONDS", default_value_t = 600)]
    rate_window_seconds: u64,
    /// How long a security code is held for its first charge (at most 600).
    #[arg(long, env = "TOKENIZER_CVC_TTL_SECONDS", default_value_t = 600)]
    cvc_ttl_seconds: u64,
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Create the KEK components (one file per custodian) and the first keys.
    Init {
        #[command(flatten)]
        db: DbArgs,
        /// How many custodians hold a component (at least 2).
        #[arg(long, default_value_t = 2)]
        components: usize,
        /// Where to write the component files; hand each to its custodian.
        #[arg(long)]
        out_dir: PathBuf,
    },
    /// Add a new primary card-number key.
    Rotate {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        components: ComponentArgs,
    },
    /// Move every card to the primary key, in batches; safe to stop and run again.
    Reencrypt {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        components: ComponentArgs,
        #[arg(long, default_value_t = 500)]
        batch_size: u32,
        /// Stop after this many batches (to spread the work over maintenance windows).
        #[arg(long)]
        max_batches: Option<u64>,
    },
    /// Destroy a card-number key that no card uses any more.
    Retire {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        version: i64,
    },
    /// Each key's version, state and how many cards it encrypts.
    List {
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    Verify {
        #[command(flatten)]
        db: DbArgs,
    },
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("TOKENIZER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .json()
        // Every line redacted on its way out (card numbers, carebill secrets).
        .with_writer(logredact::Redacting)
        .init();
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tokenizer: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => {
            init_tracing();
            let running = tokenizer::start(tokenizer::Config {
                database_url: args.db.database_url,
                collect_addr: args.collect_addr,
                internal_addr: args.internal_addr,
                tls_cert: args.tls_cert,
                tls_key: args.tls_key,
                tls_reload_interval: Duration::from_millis(args.tls_reload_interval_ms),
                client_ca: args.client_ca,
                client_allowlist: args.client_allowlist,
                key_components: args.components.key_components,
                cors_origins: args.cors_origins,
                rate_per_address: args.rate_per_address,
                rate_global: args.rate_global,
                rate_window: Duration::from_secs(args.rate_window_seconds.max(1)),
                cvc_ttl: Duration::from_secs(args.cvc_ttl_seconds),
            })
            .await?;
            // The line `carebill up` and the tests wait for.
            println!(
                "tokenizer listening collect=https://{} internal=https://{}",
                running.collect_addr, running.internal_addr
            );
            shutdown_requested().await;
            running.stop().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys { command } => keys_command(command).await,
        Command::Audit {
            command: AuditCommand::Verify { db },
        } => {
            let db = db::connect(&db.database_url).await?;
            let verified = audit::verify(&db).await?;
            println!(
                "audit trail intact: {} rows, head {}",
                verified.rows, verified.head
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::PanScan { cvcs, paths } => {
            anyhow::ensure!(!paths.is_empty(), "give at least one file or directory");
            let findings = pan_scan::scan_paths(&paths, &cvcs)?;
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            for (path, f) in &findings {
                let _ = writeln!(out, "{}", pan_scan::display(path, f));
            }
            if findings.is_empty() {
                let _ = writeln!(out, "no card numbers found");
                Ok(ExitCode::SUCCESS)
            } else {
                Ok(ExitCode::from(1))
            }
        }
    }
}

async fn keys_command(command: KeysCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeysCommand::Init {
            db,
            components,
            out_dir,
        } => {
            let db = db::connect(&db.database_url).await?;
            let paths = keys::init(&db, components, &out_dir).await?;
            println!("vault keys created; KEK components (give each to a different custodian):");
            for p in paths {
                println!("  {}", p.display());
            }
        }
        KeysCommand::Rotate { db, components } => {
            let db = db::connect(&db.database_url).await?;
            let kek = keys::unlock(&db, &components.key_components).await?;
            let version = keys::rotate(&db, &kek).await?;
            println!("card-number key v{version} is now primary; run `tokenizer keys reencrypt`");
        }
        KeysCommand::Reencrypt {
            db,
            components,
            batch_size,
            max_batches,
        } => {
            let db = db::connect(&db.database_url).await?;
            let kek = keys::unlock(&db, &components.key_components).await?;
            let cache = std::sync::Arc::new(keys::KeyringCache::open(&db, kek).await?);
            let bar = indicatif::ProgressBar::new(0);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{spinner} re-encrypting [{bar:40}] {pos}/{len} cards ({per_sec}, eta {eta})",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            let done = keys::reencrypt(&db, &cache, batch_size, max_batches, &bar).await?;
            bar.finish_and_clear();
            println!(
                "re-encrypted {} card(s); {} still under an older key",
                done.moved, done.remaining
            );
        }
        KeysCommand::Retire { db, version } => {
            let db = db::connect(&db.database_url).await?;
            keys::retire(&db, version).await?;
            println!("card-number key v{version} retired and destroyed");
        }
        KeysCommand::List { db } => {
            let db = db::connect(&db.database_url).await?;
            println!(
                "{:<12} {:>7} {:<8} {:>8}",
                "purpose", "version", "state", "cards"
            );
            for k in keys::list(&db).await? {
                println!(
                    "{:<12} {:>7} {:<8} {:>8}",
                    k.purpose, k.version, k.state, k.cards
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_requested() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
