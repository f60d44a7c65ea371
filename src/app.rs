//! Wiring and lifecycle: recover state, load reward models, build the [`Service`], bind
//! the listeners, serve gRPC (RewardRouter, Admin, health, reflection) and Prometheus
//! metrics, stop on the shutdown signal. The only module that sees every layer.
//!
//! Startup order: state recovered from the data directory (snapshot + log replay) ->
//! reward models (the config's, less those removed through Admin, plus those added through
//! Admin; loaded and probed on a blocking thread) -> listeners bound ->
//! the ready line on stdout (`laser-router listening grpc=ADDR metrics=ADDR [http=ADDR]`, which tests
//! and scripts wait for) -> serving, with snapshots taken on the blocking pool when due.
//! Shutdown: stop accepting, let in-flight requests finish, stop the metrics endpoint,
//! write a final snapshot.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

use crate::api::admin::AdminService;
use crate::api::auth::AdminAccess;
use crate::api::deadline::DeadlineLayer;
use crate::api::forward::Peers;
use crate::api::pb;
use crate::api::reward_router::RewardRouterService;
use crate::config::Config;
use crate::models::{Encoder, Encoders, ModelError, RewardModels};
use crate::routers::replicas::Replicas;
use crate::routers::{RouterError, Routers, RoutersHandle};
use crate::service::{Models, Service};
use crate::store::{Store, StoreError, StoreOptions};
use crate::tls::TlsConfig;
use crate::{http_listener, telemetry};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    State(#[from] RouterError),
    #[error("cannot {action}: {source}")]
    Io {
        action: String,
        source: std::io::Error,
    },
    #[error("metrics: {0}")]
    Metrics(#[from] metrics_exporter_prometheus::BuildError),
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error(transparent)]
    Http(#[from] http_listener::HttpListenerError),
}

fn io_error(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> AppError {
    let action = action.into();
    move |source| AppError::Io { action, source }
}

/// Load everything `config` names and serve until `shutdown` resolves.
pub async fn run(
    config: Config,
    recover_truncate: bool,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AppError> {
    let metrics_handle = telemetry::install_metrics()?;
    telemetry::record_start_time();
    std::fs::create_dir_all(&config.server.data_dir).map_err(io_error(format!(
        "create data directory {}",
        config.server.data_dir.display()
    )))?;

    let routers = open_routers(&config, recover_truncate).await?;
    let models = load_models(&config, &routers).await?;
    let service = Arc::new(Service::new(models, routers.clone(), config.limits.clone()));
    let peers = forwarding_peers(&config)?;

    let listeners = Listeners::bind(&config).await?;
    let (grpc_addr, metrics_addr) = (
        local_addr(&listeners.grpc)?,
        local_addr(&listeners.metrics)?,
    );
    let http_addr = listeners.http.as_ref().map(local_addr).transpose()?;
    let health_reporter = HealthReporter::new();
    let stop = stop_on(shutdown, health_reporter.clone());
    let background = Background::spawn(
        &config,
        &service,
        &routers,
        &peers,
        (listeners.metrics, metrics_handle, listeners.http),
        &health_reporter,
        &stop,
    )?;
    let grpc = grpc_server(&config, &service, peers, &health_reporter).await?;

    tracing::info!(grpc = %grpc_addr, metrics = %metrics_addr, reward_models = ?service.reward_models().names(), "laser-router ready");
    announce(grpc_addr, metrics_addr, http_addr);
    serve_until_stopped(grpc, listeners.grpc, &config, stop).await?;

    background.join().await;
    // A final snapshot makes the next start fast; the log already holds everything.
    take_snapshot(&routers, "final").await;
    if let Err(error) = routers.release_all().await {
        tracing::warn!(%error, "routers' leases not handed back (they expire by themselves)");
    }
    tracing::info!("laser-router stopped");
    Ok(())
}

/// Replicas forward requests for routers another replica owns to it.
fn forwarding_peers(config: &Config) -> Result<Arc<Peers>, AppError> {
    let peers = Peers::new(
        config.server.tls.as_ref(),
        config.limits.max_message_bytes,
        Duration::from_secs_f64(config.store.lease_seconds),
    )
    .map_err(io_error(
        "read the TLS files for forwarding to other replicas",
    ))?;
    Ok(Arc::new(peers))
}

/// The tasks that run beside the gRPC server until the stop signal: the metrics endpoint,
/// snapshots, the catalog follower (replicas), the state's health, the HTTP port.
struct Background {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Background {
    fn spawn(
        config: &Config,
        service: &Arc<Service>,
        routers: &RoutersHandle,
        peers: &Arc<Peers>,
        (metrics_listener, metrics_handle, http): (
            TcpListener,
            PrometheusHandle,
            Option<TcpListener>,
        ),
        health: &HealthReporter,
        stop: &watch::Receiver<bool>,
    ) -> Result<Self, AppError> {
        let mut tasks = vec![
            tokio::spawn(serve_metrics(
                metrics_listener,
                metrics_handle,
                stop.clone(),
            )),
            tokio::spawn(maintain_state(routers.clone(), stop.clone())),
            tokio::spawn(report_state_health(
                routers.clone(),
                health.clone(),
                stop.clone(),
            )),
        ];
        if routers.is_replicated() {
            tasks.push(tokio::spawn(follow_catalog(service.clone(), stop.clone())));
        }
        if let Some(listener) = http {
            let tls = config
                .server
                .tls
                .as_ref()
                .map(http_listener::tls_acceptor)
                .transpose()?;
            let routes = crate::api::http::routes(
                service.clone(),
                peers.clone(),
                config.limits.max_message_bytes,
            );
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                http_listener::serve(listener, routes, tls, stop).await
            }));
        }
        Ok(Self { tasks })
    }

    /// Wait for every task to end (they end on the stop signal).
    async fn join(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// The gRPC server with its services and layers, ready to serve.
type GrpcServer = tonic::transport::server::Router<
    tower::layer::util::Stack<DeadlineLayer, tower::layer::util::Identity>,
>;

/// The gRPC server with its services (health, reflection, RewardRouter, Admin behind its
/// access check), TLS and the deadline layer; both services reported SERVING.
async fn grpc_server(
    config: &Config,
    service: &Arc<Service>,
    peers: Arc<Peers>,
    health: &HealthReporter,
) -> Result<GrpcServer, AppError> {
    health
        .set_serving::<pb::reward_router_server::RewardRouterServer<RewardRouterService>>()
        .await;
    health
        .set_serving::<pb::admin_server::AdminServer<AdminService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let max_message = config.limits.max_message_bytes;
    let reward_router = pb::reward_router_server::RewardRouterServer::new(
        RewardRouterService::new(service.clone(), peers.clone()),
    )
    .max_decoding_message_size(max_message)
    .max_encoding_message_size(max_message);
    let access = admin_access(config);
    let admin = tonic::service::interceptor::InterceptedService::new(
        pb::admin_server::AdminServer::new(AdminService::new(service.clone(), peers))
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message),
        move |request| access.check(request),
    );
    // Deadlines end as DEADLINE_EXCEEDED (not tonic's CANCELLED "Timeout expired").
    let mut builder = Server::builder().layer(DeadlineLayer);
    if let Some(tls) = &config.server.tls {
        builder = builder.tls_config(server_tls(tls)?)?;
        tracing::info!(
            client_certificates = tls.client_ca_path.is_some(),
            "TLS on the gRPC port"
        );
    }
    let health_service = HealthServer::new(HealthService::from_health_reporter(health.clone()));
    Ok(builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reward_router)
        .add_service(admin))
}

/// Serve gRPC on `listener` until the stop signal, then let in-flight requests finish for
/// at most the grace period (idle client connections could hold a graceful shutdown open
/// forever).
async fn serve_until_stopped(
    grpc: GrpcServer,
    listener: TcpListener,
    config: &Config,
    stop: watch::Receiver<bool>,
) -> Result<(), AppError> {
    let mut grpc_stop = stop.clone();
    let server = grpc.serve_with_incoming_shutdown(no_delay(listener), async move {
        let _ = grpc_stop.wait_for(|stop| *stop).await;
        tracing::info!("shutting down: no new connections, finishing in-flight requests");
    });
    let grace = Duration::from_secs_f64(config.server.shutdown_grace_seconds.max(0.0));
    let mut grace_stop = stop;
    let grace_over = async move {
        let _ = grace_stop.wait_for(|stop| *stop).await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        served = server => served?,
        () = grace_over => tracing::warn!(grace_seconds = grace.as_secs_f64(), "grace period over; closing the remaining connections"),
    }
    Ok(())
}

/// Open the store under the data directory and rebuild the routers from it.
/// The config's models, less those removed through Admin, then those added through Admin
/// (as the routers' log says); their gauges set.
async fn load_models(config: &Config, routers: &RoutersHandle) -> Result<Models, AppError> {
    let specs = routers
        .reward_model_changes()
        .startup(config.reward_models.iter().map(|s| (s.name.as_str(), s)));
    let reward_models = RewardModels::open(specs).await?;
    let encoder_specs = routers
        .encoder_changes()
        .startup(config.encoders.iter().map(|s| (s.name.as_str(), s)));
    let encoders = Encoders::default();
    for (spec, source) in encoder_specs {
        encoders.insert(Encoder::load_off_runtime(spec, source).await?)?;
    }
    if let Some(name) = &config.routers.default_encoder
        && !encoders.contains(name)
    {
        tracing::warn!(encoder = %name, "routers.default_encoder is not loaded: Scores without contexts need an existing router");
    }
    for model in reward_models.list() {
        telemetry::record_reward_model_loaded(model.gauges());
    }
    if reward_models.names().is_empty() {
        tracing::warn!("no reward models configured: Score will answer FAILED_PRECONDITION");
    }
    Ok(Models {
        reward_models,
        encoders,
        default_encoder: config.routers.default_encoder.clone(),
    })
}

/// The ports the server listens on.
struct Listeners {
    grpc: TcpListener,
    metrics: TcpListener,
    http: Option<TcpListener>,
}

impl Listeners {
    async fn bind(config: &Config) -> Result<Self, AppError> {
        let bind = async |addr: SocketAddr| {
            TcpListener::bind(addr)
                .await
                .map_err(io_error(format!("listen on {addr}")))
        };
        Ok(Self {
            grpc: bind(config.server.listen).await?,
            metrics: bind(config.server.metrics_listen).await?,
            http: match config.server.http_listen {
                Some(addr) => Some(bind(addr).await?),
                None => None,
            },
        })
    }
}

/// A stop signal that turns true once `shutdown` resolves, after the health service says
/// NOT_SERVING (orchestrators are told first, then the ports stop accepting).
fn stop_on(
    shutdown: impl Future<Output = ()> + Send + 'static,
    health: tonic_health::server::HealthReporter,
) -> watch::Receiver<bool> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        health
            .set_not_serving::<pb::reward_router_server::RewardRouterServer<RewardRouterService>>()
            .await;
        health
            .set_not_serving::<pb::admin_server::AdminServer<AdminService>>()
            .await;
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        let _ = stop_tx.send(true);
    });
    stop_rx
}

/// Who may call Admin, as the config says (logged).
fn admin_access(config: &Config) -> AdminAccess {
    let access = AdminAccess::new(
        config.server.admin_token.clone(),
        config.server.listen.ip().is_loopback(),
    );
    match &access {
        AdminAccess::Token(_) => tracing::info!("admin RPCs require the bearer token"),
        AdminAccess::LoopbackOnly => tracing::warn!(
            "no admin token configured: admin RPCs are open to every local process (listening on loopback only); set LASER_ADMIN_TOKEN"
        ),
        AdminAccess::Refused => tracing::warn!(
            "no admin token configured and listening beyond loopback: admin RPCs are refused; set LASER_ADMIN_TOKEN"
        ),
    }
    access
}

/// The line tests and scripts wait for on stdout: where each port listens.
fn announce(grpc: SocketAddr, metrics: SocketAddr, http: Option<SocketAddr>) {
    let mut stdout = std::io::stdout().lock();
    let http = http.map(|addr| format!(" http={addr}")).unwrap_or_default();
    let _ = writeln!(
        stdout,
        "laser-router listening grpc={grpc} metrics={metrics}{http}"
    );
    let _ = stdout.flush();
}

async fn open_routers(config: &Config, recover_truncate: bool) -> Result<RoutersHandle, AppError> {
    let options = StoreOptions {
        recover_truncate,
        advertise: Some(config.server.advertised_address()),
        ..config.store_options()
    };
    let data_dir = config.server.data_dir.clone();
    let routers_options = config.routers_options();
    if let Some(url) = options.postgres_url.clone().filter(|_| options.durable) {
        // Replicas: each router is taken over on first use; here only the catalog.
        let replicas =
            tokio::task::spawn_blocking(move || Replicas::open(&url, options, routers_options))
                .await
                .map_err(|e| io_error("open the state database")(std::io::Error::other(e)))??;
        tracing::info!("state in PostgreSQL: routers are owned one by one, on first use");
        return Ok(RoutersHandle::replicated(replicas));
    }
    let routers = tokio::task::spawn_blocking(move || -> Result<Routers, AppError> {
        let started = std::time::Instant::now();
        let (store, recovered) = Store::open(&data_dir, &options)?;
        let routers = Routers::with_store(routers_options, store);
        let from_snapshot = recovered.snapshot.as_ref().map(|(seq, _)| *seq);
        let replayed = routers.recover(recovered)?;
        if options.durable {
            tracing::info!(
                snapshot_seq = ?from_snapshot,
                records_replayed = replayed,
                routers = routers.list().len(),
                seconds = started.elapsed().as_secs_f64(),
                "state recovered"
            );
        } else {
            tracing::warn!(
                "store.durable = false: routers live in memory only and are lost on restart"
            );
        }
        Ok(routers)
    })
    .await
    .map_err(|e| io_error("recover state")(std::io::Error::other(e)))??;
    Ok(RoutersHandle::new(routers))
}

/// Take a snapshot whenever enough records accumulated.
/// NOT_SERVING (both services and the server as a whole) while the state log cannot be
/// written, SERVING again once it can: an orchestrator stops sending traffic to a replica
/// that could acknowledge nothing. Checked every 250 ms (reading a flag).
async fn report_state_health(
    routers: RoutersHandle,
    reporter: tonic_health::server::HealthReporter,
    mut stop: watch::Receiver<bool>,
) {
    let mut interval = tokio::time::interval(Duration::from_millis(250));
    let mut failing = false;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let reason = routers.state_unwritable();
        if reason.is_some() == failing || *stop.borrow() {
            continue;
        }
        failing = reason.is_some();
        let status = if failing {
            tracing::warn!(
                reason = reason.as_deref().unwrap_or(""),
                "health: NOT_SERVING until the state log can be written"
            );
            tonic_health::ServingStatus::NotServing
        } else {
            tracing::info!("health: SERVING, the state log is writable again");
            tonic_health::ServingStatus::Serving
        };
        for service in [
            "",
            <pb::reward_router_server::RewardRouterServer<RewardRouterService> as tonic::server::NamedService>::NAME,
            <pb::admin_server::AdminServer<AdminService> as tonic::server::NamedService>::NAME,
        ] {
            reporter.set_service_status(service, status).await;
        }
    }
}

/// Every 500 ms: snapshots when due; with replicas, the leases of routers no longer held
/// here handed back.
async fn maintain_state(routers: RoutersHandle, mut stop: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        if routers.snapshot_due() {
            take_snapshot(&routers, "periodic").await;
        }
        if let Err(error) = routers.release_idle().await {
            tracing::warn!(%error, "releasing idle routers failed");
        }
    }
}

/// Replicas: every 500 ms, the models other replicas published or unpublished loaded or
/// unloaded here (a task of its own: it waits while an Admin model change runs, which must
/// not hold snapshots back).
async fn follow_catalog(service: Arc<Service>, mut stop: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        if let Err(error) = service.follow_catalog().await {
            tracing::warn!(%error, "reading the catalog's changes failed; retrying");
        }
    }
}

/// Write a snapshot (on the blocking pool) and log the outcome. A failed snapshot loses
/// nothing: the log still holds every change.
async fn take_snapshot(routers: &RoutersHandle, kind: &'static str) {
    match routers.snapshot(kind == "final").await {
        Ok(written) => {
            for (seq, bytes) in written {
                tracing::info!(kind, seq, bytes, "snapshot written");
            }
        }
        Err(error) => {
            tracing::error!(kind, %error, "snapshot failed; the log still holds every change")
        }
    }
}

/// The listener's connections with Nagle's algorithm off. tonic sets TCP_NODELAY only on
/// listeners it binds itself; without it a small reply waits for the client's delayed ACK
/// (about 40 ms on Linux) whenever a request spans several packets.
fn no_delay(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}

/// rustls server config from PEM files; a client CA makes client certificates mandatory.
fn server_tls(tls: &TlsConfig) -> Result<ServerTlsConfig, AppError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(io_error(format!("read TLS file {}", path.display())))
    };
    let identity = Identity::from_pem(read(&tls.cert_path)?, read(&tls.key_path)?);
    let mut config = ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &tls.client_ca_path {
        config = config
            .client_ca_root(Certificate::from_pem(read(ca)?))
            .client_auth_optional(false);
    }
    Ok(config)
}

fn local_addr(listener: &TcpListener) -> Result<SocketAddr, AppError> {
    listener
        .local_addr()
        .map_err(io_error("read bound address"))
}

/// `GET /metrics` in Prometheus text format until `stop` turns true.
async fn serve_metrics(
    listener: TcpListener,
    handle: metrics_exporter_prometheus::PrometheusHandle,
    mut stop: watch::Receiver<bool>,
) {
    let upkeep = handle.clone();
    let upkeep_task = tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_secs(5));
        loop {
            interval.tick().await;
            upkeep.run_upkeep();
        }
    });
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move {
                telemetry::record_process_metrics();
                handle.render()
            }
        }),
    );
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|stop| *stop).await;
        })
        .await;
    if let Err(error) = served {
        tracing::error!(%error, "metrics endpoint failed");
    }
    upkeep_task.abort();
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {},
                    _ = terminate.recv() => {},
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
