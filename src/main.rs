//! Command line: `laser-router serve [--config FILE] [--listen ADDR] [--metrics-listen ADDR] [--http-listen ADDR]
//! [--data-dir DIR] [--recover-truncate]` and `laser-router state export|import|inspect`;
//! every flag is also an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use laser_router::config::Config;
use laser_router::{app, models, state_cli, telemetry};

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
    /// Export, import or inspect router state in a data directory (server stopped).
    State(StateArgs),
    /// Ask a running server's grpc.health.v1 service; exit 0 when SERVING (container
    /// health checks).
    Health(HealthArgs),
}

#[derive(clap::Args)]
struct HealthArgs {
    /// The server's gRPC address.
    #[arg(long, env = "LASER_HEALTH_ADDR", default_value = "127.0.0.1:50051")]
    addr: SocketAddr,
    /// Service to ask about (empty: the whole server).
    #[arg(long, default_value = "")]
    service: String,
}

#[derive(clap::Args)]
struct StateArgs {
    #[command(subcommand)]
    action: StateAction,
    /// TOML config file (for the data directory and router defaults).
    #[arg(long, env = "LASER_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Data directory (overrides server.data_dir).
    #[arg(long, env = "LASER_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum StateAction {
    /// Write a router's state (arms, pending decisions, reward history) to FILE.
    Export { router: String, file: PathBuf },
    /// Make FILE's state the router ROUTER (replacing one of that name), durably.
    Import { router: String, file: PathBuf },
    /// Print what the data directory holds.
    Inspect,
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
    /// HTTP/JSON listen address (overrides server.http_listen; off unless set).
    #[arg(long, env = "LASER_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// Directory for local state (overrides server.data_dir).
    #[arg(long, env = "LASER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Bearer token required by Admin RPCs (overrides server.admin_token).
    #[arg(long, env = "LASER_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Start even if the state log is damaged before its tail: truncate it at the damage
    /// (everything after it is lost). Without it, such damage stops startup.
    #[arg(long, env = "LASER_RECOVER_TRUNCATE")]
    recover_truncate: bool,
}

fn main() -> ExitCode {
    laser_router::memory::limit_malloc_arenas();
    let result = match Cli::parse().command {
        Command::Serve(args) => serve(args),
        Command::State(args) => state(args),
        Command::Health(args) => health(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("laser-router: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn health(args: HealthArgs) -> anyhow::Result<()> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let status = runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", args.addr))?
            .connect_timeout(std::time::Duration::from_secs(2))
            .timeout(std::time::Duration::from_secs(2))
            .connect()
            .await?;
        let reply = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: args.service,
            })
            .await?;
        anyhow::Ok(reply.into_inner().status)
    })?;
    if status == ServingStatus::Serving as i32 {
        println!("SERVING");
        Ok(())
    } else {
        anyhow::bail!("not serving (status {status})")
    }
}

fn state(args: StateArgs) -> anyhow::Result<()> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(data_dir) = args.data_dir {
        config.server.data_dir = data_dir;
    }
    let line = match args.action {
        StateAction::Export { router, file } => state_cli::export(&config, &router, &file)?,
        StateAction::Import { router, file } => state_cli::import(&config, &router, &file)?,
        StateAction::Inspect => state_cli::inspect(&config)?,
    };
    println!("{line}");
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    if let Some(http_listen) = args.http_listen {
        config.server.http_listen = Some(http_listen);
    }
    if let Some(metrics_listen) = args.metrics_listen {
        config.server.metrics_listen = metrics_listen;
    }
    if let Some(data_dir) = args.data_dir {
        config.server.data_dir = data_dir;
    }
    if let Some(token) = args.admin_token {
        config.server.admin_token = Some(token);
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
