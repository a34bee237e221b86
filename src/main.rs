use std::process::ExitCode;

use clap::Parser;
use ztunnel_rollout::cli::{Cli, Command, drain, preflight};

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Drain(args) => drain::run(args, &cli.global).await,
        Command::Preflight(args) => preflight::run(args, &cli.global).await,
    };
    result.unwrap_or_else(|e| {
        // Many errors repeat their source in their own message; say each thing once.
        let mut message = String::new();
        for cause in e.chain().map(|c| c.to_string()) {
            if !message.contains(&cause) {
                if !message.is_empty() {
                    message.push_str(": ");
                }
                message.push_str(&cause);
            }
        }
        eprintln!("error: {message}");
        ExitCode::FAILURE
    })
}
