use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use ztunnel_rollout::cli::{
    Cli, Command, agent, completion, control, drain, errors, plan, preflight, sidecar, status,
};

fn main() -> ExitCode {
    // Before the runtime's threads exist.
    ztunnel_rollout::malloc_arenas::cap();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run_command()),
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_command() -> ExitCode {
    // Progress (pods evicted, waiting, gone) on stderr; results on stdout. RUST_LOG
    // overrides, e.g. RUST_LOG=warn for quiet runs. kube's own error lines repeat what
    // our warnings say with more context, so they are off by default.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .compact()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,kube_client=off,ztunnel_rollout=info".into()),
        )
        .init();
    let mut cli = parse_cli();
    // Named once: a command run again must not create a second object.
    default_names(&mut cli);
    let result = match &cli.command {
        // Long-running, or nothing to ask the API server: as they are.
        Command::Agent(args) => agent::run(args, &cli.global).await,
        Command::Completion(args) => completion(args),
        // A drain run again would report on its second run only.
        Command::Drain(args) => drain::run(args, &cli.global).await,
        // The others run again (bounded) when the API server asks to retry.
        _ => errors::retrying(|| run(&cli)).await,
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {}", errors::describe(&e));
        ExitCode::FAILURE
    })
}

async fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Drain(args) => drain::run(args, &cli.global).await,
        Command::Preflight(args) => preflight::run(args, &cli.global).await,
        Command::Plan(args) => plan::run(args, &cli.global).await,
        Command::Status(args) => status::run(args, &cli.global).await,
        Command::Pause(args) => control::pause(args, &cli.global).await,
        Command::Resume(args) => control::resume(args, &cli.global).await,
        Command::Abort(args) => control::abort(args, &cli.global).await,
        Command::Approve(args) => control::approve(args, &cli.global).await,
        Command::Trigger(args) => control::trigger(args, &cli.global).await,
        Command::Sidecar(args) => sidecar::run(args, &cli.global).await,
        Command::Agent(args) => agent::run(args, &cli.global).await,
        Command::Completion(args) => completion(args),
    }
}

/// Parses the command line; installed as `kubectl-ztunnel_rollout`, the binary is the
/// kubectl plugin `kubectl ztunnel-rollout` and says so in its help.
/// Fills in the names `trigger` and `sidecar move` would make up from the time.
fn default_names(cli: &mut Cli) {
    let stamp = || {
        k8s_openapi::jiff::Timestamp::now()
            .strftime("%Y%m%d-%H%M%S")
            .to_string()
    };
    match &mut cli.command {
        Command::Trigger(args) if args.name.is_none() => {
            args.name = Some(format!("trigger-{}", stamp()));
        }
        Command::Sidecar(s) => {
            if let sidecar::SidecarCommand::Move(args) = &mut s.command
                && args.name.is_none()
            {
                args.name = Some(format!(
                    "{}-{}",
                    args.to.to_lowercase().replace(['_', '.'], "-"),
                    stamp()
                ));
            }
        }
        _ => {}
    }
}

fn parse_cli() -> Cli {
    let invoked = std::env::args_os()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    let mut command = Cli::command();
    if invoked.starts_with("kubectl-") {
        command = command.bin_name("kubectl ztunnel-rollout");
    }
    let matches = command.get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}
