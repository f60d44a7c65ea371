//! Command line: `laser-router serve [--config FILE] [--listen ADDR] [--metrics-listen ADDR]
//! [--data-dir DIR]`; every flag is also an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use laser_router::config::Config;
use laser_router::{app, models, telemetry};

#[derive(Parser)]
#[command(
    name = "laser-router",
    version,
    about = "Routes RLHF training queries to reward models with a contextual bandit (LASeR)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the RewardRouter and Admin gRPC services and Prometheus metrics.
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML config file; without it the embedded deploy/config/default.toml is used.
    #[arg(long, env = "LASER_CONFIG")]
    config: Option<PathBuf>,
    /// gRPC listen address (overrides server.listen; port 0 picks a free port).
    #[arg(long, env = "LASER_LISTEN")]
    listen: Option<SocketAddr>,
    /// Prometheus /metrics listen address (overrides server.metrics_listen).
    #[arg(long, env = "LASER_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Directory for local state (overrides server.data_dir).
    #[arg(long, env = "LASER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Start even if the state log is damaged before its tail: truncate it at the damage
    /// (everything after it is lost). Without it, such damage stops startup.
    #[arg(long, env = "LASER_RECOVER_TRUNCATE")]
    recover_truncate: bool,
}

fn main() -> ExitCode {
    let Cli {
        command: Command::Serve(args),
    } = Cli::parse();
    match serve(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("laser-router: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    if let Some(metrics_listen) = args.metrics_listen {
        config.server.metrics_listen = metrics_listen;
    }
    if let Some(data_dir) = args.data_dir {
        config.server.data_dir = data_dir;
    }
    // Fail with one line before anything else when ONNX Runtime is missing.
    models::runtime::environment()?;
    telemetry::init_tracing(config.server.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("laser-async")
        .build()?;
    runtime.block_on(app::run(
        config,
        args.recover_truncate,
        app::shutdown_signal(),
    ))?;
    Ok(())
}
