//! `carebill keys init | list | rotate | rewrap`: the key lifecycle from the command line.
//! Every operation that changes keys is recorded as a security event (actor `cli`).

use std::path::PathBuf;

use clap::Subcommand;

use super::store::{write_new_keyring, Keys};
use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a new keyring file (KEK version 1 and a blind-index key), mode 0600. Refuses to
    /// overwrite an existing file.
    Init {
        #[arg(long)]
        file: PathBuf,
    },
    /// The KEK versions this database knows: status, live data keys, whether the keyring has them.
    List,
    /// Add KEK version N+1 to the keyring file; new data keys are wrapped under it at once.
    Rotate,
    /// Re-wrap every data key under the newest KEK version, in committed batches (stop and run
    /// again at will), then retire the versions nothing uses any more.
    Rewrap {
        /// Data keys per transaction.
        #[arg(long, default_value_t = 500)]
        batch_size: i64,
        /// Stop after this many batches (the rest is left for the next run).
        #[arg(long)]
        max_batches: Option<u64>,
    },
}

pub async fn run(config: &Config, command: KeysCommand) -> anyhow::Result<()> {
    if let KeysCommand::Init { file } = &command {
        write_new_keyring(file)?;
        println!(
            "created keyring {} (mode 0600). Start carebill with CAREBILL_KEYRING_FILE={} and \
             keep a copy in your secret store: without it the health data cannot be read.",
            file.display(),
            file.display()
        );
        return Ok(());
    }
    let db = crate::db::Db::connect(&config.database_url).await?;
    crate::db::migrate(&db).await?;
    let keys = Keys::open(config.key_source(), &db).await?;
    match command {
        KeysCommand::Init { .. } => Ok(()),
        KeysCommand::List => {
            println!(
                "{:>7}  {:<8}  {:<16}  {:>14}  in keyring",
                "version", "status", "check value", "live data keys"
            );
            for v in keys.list().await? {
                println!(
                    "{:>7}  {:<8}  {:<16}  {:>14}  {}",
                    v.version,
                    v.status,
                    v.check_value,
                    v.live_data_keys,
                    if v.in_keyring { "yes" } else { "no" }
                );
            }
            Ok(())
        }
        KeysCommand::Rotate => {
            let version = keys.rotate().await?;
            println!(
                "KEK version {version} added and active: new data keys are wrapped under it. \
                 Run `carebill keys rewrap` to move the existing ones."
            );
            Ok(())
        }
        KeysCommand::Rewrap {
            batch_size,
            max_batches,
        } => {
            let bar = indicatif::ProgressBar::new(0);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{spinner} re-wrapping [{bar:40}] {pos}/{len} data keys ({per_sec}, eta {eta})",
            ) {
                bar.set_style(style);
            }
            let report = keys
                .rewrap(batch_size, max_batches, &|done, total| {
                    bar.set_length(total);
                    bar.set_position(done);
                })
                .await?;
            bar.finish_and_clear();
            println!(
                "{} data keys re-wrapped under KEK version {}{}",
                report.rewrapped,
                report.target_version,
                if report.stopped_early {
                    " (stopped early: run again to continue)"
                } else {
                    ""
                }
            );
            for version in &report.retired {
                println!(
                    "KEK version {version} retired: nothing is wrapped under it; remove its \
                     `kek {version}` line from the keyring (and its backups' copies expire with it)"
                );
            }
            if !report.unreadable.is_empty() {
                anyhow::bail!(
                    "{} data keys could not be opened (security events recorded); their KEK \
                     versions stay active",
                    report.unreadable.len()
                );
            }
            Ok(())
        }
    }
}
