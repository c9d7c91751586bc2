//! The command line: `carebill serve | migrate | up | apikey create | ledger verify | audit
//! verify|export|purge | export | bench | reconcile`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::auth::Role;
use crate::config::Config;

#[derive(Debug, Parser)]
#[command(
    name = "carebill",
    version,
    about = "Payments and billing for healthcare providers"
)]
pub struct Cli {
    /// A TOML configuration file (environment variables override it).
    #[arg(long, global = true, env = "CAREBILL_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the API over HTTPS (needs tls_cert and tls_key; migrations run first).
    Serve {
        /// Address to listen on, e.g. 127.0.0.1:8080 (env CAREBILL_ADDR).
        #[arg(long)]
        addr: Option<String>,
    },
    /// Run the database migrations and exit.
    Migrate,
    /// One-command start on the embedded defaults: development certificates, the card vault
    /// (a child process), the database, a small demo; prints the URLs and an API key, and serves.
    Up {
        #[arg(long)]
        addr: Option<String>,
        /// The card vault's collect listener (the card form posts card numbers here); port 0
        /// picks a free port.
        #[arg(long, default_value = "127.0.0.1:8444")]
        vault_collect_addr: String,
        /// The card vault's internal, mutual-TLS listener (billing calls it); port 0 picks a
        /// free port.
        #[arg(long, default_value = "127.0.0.1:8445")]
        vault_internal_addr: String,
    },
    /// Manage API keys.
    Apikey {
        #[command(subcommand)]
        command: ApikeyCommand,
    },
    /// Ledger maintenance.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// The audit trail: verify its hash chains, export it for a SIEM, purge past retention.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Field-encryption keys: create a keyring, rotate the KEK, re-wrap data keys.
    Keys {
        #[command(subcommand)]
        command: crate::crypto::cli::KeysCommand,
    },
    /// Export the ledger for an accounting system (CSV, JSON Lines, Beancount, hledger).
    Export(crate::export::ExportArgs),
    /// Benchmark payments per second against pgbench on the same PostgreSQL server.
    Bench(crate::bench::BenchArgs),
    /// Benchmark ledger export (rows per second, peak memory) against PostgreSQL's COPY.
    BenchExport(crate::export::bench::BenchExportArgs),
    /// Benchmark the audit trail's batch writer and sealer (records per second).
    BenchAudit(crate::audit::BenchAuditArgs),
    /// What field encryption costs per operation, against SHA-256 of the same bytes.
    BenchCrypto(crate::crypto::bench::BenchCryptoArgs),
    /// Reconcile with Stripe: post processor fees and payouts once each, settle payments left
    /// `processing`, and report mismatches (exit 1 when there is any).
    Reconcile {
        /// Print the report as JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Only Stripe's payouts and balance transactions created at or after this (RFC 3339
        /// time or YYYY-MM-DD, midnight UTC), and our records made since; default: everything.
        #[arg(long)]
        since: Option<String>,
    },
    /// Benchmark `Stripe-Signature` verification (verifications per second) against raw
    /// HMAC-SHA256 computations in the same run.
    BenchWebhooksVerify(crate::stripe::signature::BenchArgs),
    /// Benchmark outbound webhook delivery to a local receiver (deliveries per second).
    BenchWebhooks(crate::webhooks::bench::BenchWebhooksArgs),
}

#[derive(Debug, Subcommand)]
pub enum ApikeyCommand {
    /// Create an API key; the key is printed alone on the last line.
    Create {
        #[arg(long, value_enum)]
        role: Role,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Seal what can be sealed, then walk the chains (audit trail, security events, export
    /// log); exit 1 naming the first broken record.
    Verify,
    /// Remove records older than the retention (`audit_retention_days`), a sealed prefix at a
    /// time behind an append-only checkpoint, so the chains stay verifiable.
    Purge {
        /// Purge only records older than this (RFC 3339 time or YYYY-MM-DD); it may not be
        /// inside the retention period. Default: the retention's cut-off.
        #[arg(long)]
        before: Option<String>,
        /// Report what would be removed; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Stream the trail for a SIEM, to standard output.
    Export {
        /// RFC 3339 time or YYYY-MM-DD; default: everything.
        #[arg(long)]
        since: Option<String>,
        /// jsonl or syslog (RFC 5424).
        #[arg(long, default_value = "jsonl")]
        format: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Re-derive every ledger invariant from the raw rows; exit 1 if any fails.
    Verify,
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Serve { addr } => {
            if let Some(addr) = addr {
                config.addr = addr;
            }
            crate::server::serve(config).await
        }
        Command::Migrate => {
            let db = crate::db::Db::connect(&config.database_url).await?;
            crate::db::migrate(&db).await?;
            println!("migrations applied ({})", db.backend.name());
            Ok(())
        }
        Command::Up {
            addr,
            vault_collect_addr,
            vault_internal_addr,
        } => {
            if let Some(addr) = addr {
                config.addr = addr;
            }
            let options = crate::demo::UpOptions {
                vault_collect_addr,
                vault_internal_addr,
            };
            crate::demo::up(config, options).await
        }
        Command::Apikey {
            command: ApikeyCommand::Create { role },
        } => {
            let db = crate::db::Db::connect(&config.database_url).await?;
            crate::db::migrate(&db).await?;
            let key = crate::auth::create_api_key(&db, role).await?;
            println!(
                "created API key {} with role {} (shown once; store it now):",
                key.id,
                role.as_str()
            );
            println!("{}", key.secret);
            Ok(())
        }
        Command::Ledger {
            command: LedgerCommand::Verify,
        } => {
            let db = crate::db::Db::connect(&config.database_url).await?;
            let violations = crate::ledger::invariants::verify(&db).await?;
            if violations.is_empty() {
                println!("ledger verified: every invariant holds");
                Ok(())
            } else {
                for v in &violations {
                    println!("VIOLATION {v}");
                }
                anyhow::bail!("{} ledger invariant violations", violations.len())
            }
        }
        Command::Audit {
            command: AuditCommand::Verify,
        } => {
            let db = crate::db::Db::connect(&config.database_url).await?;
            crate::db::migrate(&db).await?;
            crate::audit::seal_once(&db).await?;
            let v = crate::audit::verify(&db).await?;
            for c in &v.chains {
                println!(
                    "{} chain intact: {} records sealed since seq {} ({} checkpoints), {} not yet \
                     sealed, head {}",
                    c.chain, c.sealed, c.from_seq, c.checkpoints, c.unsealed, c.head
                );
            }
            println!("audit trail intact");
            Ok(())
        }
        Command::Audit {
            command: AuditCommand::Purge { before, dry_run },
        } => {
            let now = crate::db::now_us();
            let cutoff = crate::audit::purge::cutoff_us(now, config.audit_retention_days);
            let before_us = match before.as_deref() {
                Some(s) => crate::api::timestamp_field("before", s)
                    .map_err(|e| anyhow::anyhow!("--before: {}", e.client_message()))?,
                None => cutoff,
            };
            anyhow::ensure!(
                before_us <= cutoff,
                "--before is inside the retention period (audit_retention_days = {}): the \
                 latest allowed is {}",
                config.audit_retention_days,
                crate::db::us_to_rfc3339(cutoff)
            );
            let db = crate::db::Db::connect(&config.database_url).await?;
            crate::db::migrate(&db).await?;
            let user = std::env::var("USER").unwrap_or_default();
            let actor = format!("cli:{user}");
            let report = crate::audit::purge::purge(&db, before_us, &actor, dry_run).await?;
            let verb = if dry_run { "would purge" } else { "purged" };
            for p in &report {
                println!(
                    "{}: {verb} {} records and {} seals older than {}{}",
                    p.chain,
                    p.records,
                    p.seals,
                    crate::db::us_to_rfc3339(before_us),
                    p.through_seq
                        .map(|s| format!(" (through seq {s}, {} checkpoints)", p.checkpoints))
                        .unwrap_or_default()
                );
            }
            Ok(())
        }
        Command::Audit {
            command: AuditCommand::Export { since, format },
        } => {
            let syslog = match format.as_str() {
                "jsonl" => false,
                "syslog" => true,
                _ => anyhow::bail!("--format must be jsonl or syslog"),
            };
            let since_us = match since.as_deref() {
                Some(s) => crate::api::timestamp_field("since", s)
                    .map_err(|e| anyhow::anyhow!("{}", e.client_message()))?,
                None => 0,
            };
            let db = crate::db::Db::connect(&config.database_url).await?;
            crate::db::migrate(&db).await?;
            let mut out = std::io::BufWriter::new(std::io::stdout());
            let n = crate::audit::export(&db, since_us, syslog, &mut out).await?;
            std::io::Write::flush(&mut out)?;
            eprintln!("exported {n} audit records");
            Ok(())
        }
        Command::Keys { command } => crate::crypto::cli::run(&config, command).await,
        Command::Export(args) => {
            let db = crate::db::Db::connect(&config.database_url).await?;
            crate::db::migrate(&db).await?;
            let keys = crate::crypto::Keys::open(config.key_source(), &db).await?;
            crate::export::run_cli(db, keys, args).await
        }
        Command::Bench(args) => crate::bench::run(args).await,
        Command::BenchExport(args) => crate::export::bench::run(args).await,
        Command::BenchAudit(args) => crate::audit::bench(args).await,
        Command::BenchCrypto(args) => crate::crypto::bench::run(args).await,
        Command::Reconcile { json, since } => {
            // Checked before anything is opened: bad input changes nothing.
            let since_us = since
                .as_deref()
                .map(|s| crate::stripe::reconcile::parse_since(s, crate::db::now_us()))
                .transpose()?;
            let db = crate::db::Db::connect(&config.database_url).await?;
            crate::db::migrate(&db).await?;
            let report = crate::stripe::reconcile::run_since(&db, &config, since_us).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.table());
            }
            anyhow::ensure!(
                report.mismatches.is_empty(),
                "{} mismatches between Stripe and the ledger",
                report.mismatches.len()
            );
            Ok(())
        }
        Command::BenchWebhooksVerify(args) => crate::stripe::signature::bench(args),
        Command::BenchWebhooks(args) => crate::webhooks::bench::run(args).await,
    }
}
