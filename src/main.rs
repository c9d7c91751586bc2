//! The `carebill` binary: parses the command line and hands over to [`carebill::cli`].

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    carebill::telemetry::init();
    let cli = carebill::cli::Cli::parse();
    match carebill::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
