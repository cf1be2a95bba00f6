//! `vtap daemon`: start-up in a fixed order — tracing, configuration (no
//! binding yet), policies, datapath, attach, then serve — and a `select!`
//! over the server, SIGHUP (reload the policy directory) and SIGTERM/SIGINT
//! (stop serving, detach everything, exit 0).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Deserialize;
use tokio::signal::unix::{SignalKind, signal};
use vtap_core::engine::{Engine, EngineError};
use vtap_core::policy::model::Policy;

/// Flags of `vtap daemon`; each overrides the config file.
#[derive(clap::Args, Debug)]
pub struct DaemonArgs {
    /// Daemon configuration file (YAML: listen, policies, state_dir, refresh_ms, log_format).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address of the HTTP API and /metrics [default: 127.0.0.1:7470].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Directory of policy files, loaded at start and on SIGHUP.
    #[arg(long)]
    policies: Option<PathBuf>,
    /// Directory for the daemon's state [default: /var/lib/vtap].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Log format: text or json [default: text].
    #[arg(long)]
    log_format: Option<String>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    listen: Option<SocketAddr>,
    policies: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    refresh_ms: Option<u64>,
    log_format: Option<String>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub policies: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub refresh: Duration,
    pub log_json: bool,
}

fn config(args: &DaemonArgs) -> anyhow::Result<Config> {
    let file: ConfigFile = match &args.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("reading config {}: {e}", p.display()))?;
            serde_yaml::from_str(&text)
                .map_err(|e| anyhow::anyhow!("config {}: {e}", p.display()))?
        }
        None => ConfigFile::default(),
    };
    let log_format = args
        .log_format
        .clone()
        .or(file.log_format)
        .unwrap_or_else(|| "text".into());
    if log_format != "text" && log_format != "json" {
        anyhow::bail!("log_format must be text or json, not {log_format:?}");
    }
    Ok(Config {
        listen: args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:7470".parse().unwrap()),
        policies: args.policies.clone().or(file.policies),
        state_dir: args
            .state_dir
            .clone()
            .or(file.state_dir)
            .unwrap_or_else(|| "/var/lib/vtap".into()),
        refresh: Duration::from_millis(file.refresh_ms.unwrap_or(1000).clamp(50, 60_000)),
        log_json: log_format == "json",
    })
}

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Mutex<Engine>>,
    pub ready: Arc<std::sync::atomic::AtomicBool>,
}

pub fn run(args: DaemonArgs) -> ExitCode {
    let cfg = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vtap daemon: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(cfg.log_json);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(serve(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "vtap daemon failed");
            ExitCode::from(1)
        }
    }
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VTAP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,netlink_packet_route=error"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json { b.json().init() } else { b.init() }
}

fn load_policies(dir: Option<&Path>) -> anyhow::Result<Vec<Policy>> {
    match dir {
        None => Ok(Vec::new()),
        // Validates with file names, so every error names its file.
        Some(d) => {
            vtap_core::policy::load::load_and_validate(d).map_err(|e| anyhow::anyhow!("{e}"))
        }
    }
}

fn log_engine_error(what: &str, e: &EngineError) {
    match e {
        EngineError::Invalid(errors) => {
            for fe in errors {
                tracing::error!(field = %fe.field, "{what}: {}", fe.message);
            }
        }
        other => tracing::error!(error = %other, "{what}"),
    }
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    tracing::info!(listen = %cfg.listen, policies = ?cfg.policies, state_dir = %cfg.state_dir.display(), "starting vtap daemon");
    std::fs::create_dir_all(&cfg.state_dir)
        .map_err(|e| anyhow::anyhow!("creating state dir {}: {e}", cfg.state_dir.display()))?;
    let policies = match load_policies(cfg.policies.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            for line in e.to_string().lines() {
                tracing::error!("policy directory rejected: {line}");
            }
            anyhow::bail!("invalid policy directory; nothing attached");
        }
    };
    let links = vtap_core::netlink::list_links().await?;
    let engine = tokio::task::spawn_blocking(move || -> anyhow::Result<Engine> {
        let mut engine = Engine::new()?;
        if let Err(e) = engine.apply(policies, &links) {
            log_engine_error("initial policy set rejected", &e);
            anyhow::bail!("initial policy set rejected: {e}");
        }
        Ok(engine)
    })
    .await??;
    let n = engine.policies().len();
    let state = AppState {
        engine: Arc::new(Mutex::new(engine)),
        ready: Arc::new(std::sync::atomic::AtomicBool::new(false)),
    };
    tracing::info!(policies = n, "policies active");
    update_ready(&state);

    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| anyhow::anyhow!("listening on {}: {e}", cfg.listen))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut server_stop = stop_rx.clone();
    let server = tokio::spawn(
        axum::serve(listener, app(state.clone()))
            .with_graceful_shutdown(async move {
                let _ = server_stop.wait_for(|s| *s).await;
            })
            .into_future(),
    );
    let refresher = tokio::spawn(refresh_loop(state.clone(), cfg.refresh, stop_rx.clone()));

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hup.recv() => reload(&state, cfg.policies.as_deref()).await,
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("stopping: draining requests, then detaching");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    let _ = refresher.await;
    let st = state.clone();
    tokio::task::spawn_blocking(move || st.engine.lock().unwrap().shutdown()).await?;
    tracing::info!("detached; bye");
    Ok(())
}

async fn reload(state: &AppState, dir: Option<&Path>) {
    tracing::info!("SIGHUP: reloading policies");
    let policies = match load_policies(dir) {
        Ok(p) => p,
        Err(e) => {
            for line in e.to_string().lines() {
                tracing::error!("reload rejected, running set kept: {line}");
            }
            return;
        }
    };
    let links = match vtap_core::netlink::list_links().await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "reload: listing interfaces failed, running set kept");
            return;
        }
    };
    let st = state.clone();
    let r = tokio::task::spawn_blocking(move || {
        let n = policies.len();
        st.engine.lock().unwrap().apply(policies, &links).map(|_| n)
    })
    .await;
    match r {
        Ok(Ok(n)) => tracing::info!(policies = n, "reload applied"),
        Ok(Err(e)) => log_engine_error("reload rejected, running set kept", &e),
        Err(e) => tracing::error!(error = %e, "reload task failed"),
    }
    update_ready(state);
}

async fn refresh_loop(
    state: AppState,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let links = match vtap_core::netlink::list_links().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "listing interfaces failed");
                continue;
            }
        };
        let st = state.clone();
        let r =
            tokio::task::spawn_blocking(move || st.engine.lock().unwrap().refresh(&links)).await;
        if let Ok(Err(e)) = r {
            log_engine_error("refresh failed", &e);
        }
        update_ready(&state);
    }
}

/// Ready when every existing interface that a policy selects is attached.
fn update_ready(state: &AppState) {
    let e = state.engine.lock().unwrap();
    let ready = e
        .taps()
        .values()
        .all(|t| t.ifindex == 0 || t.attached == t.wanted);
    state
        .ready
        .store(ready, std::sync::atomic::Ordering::Relaxed);
}

/// The HTTP application (tests call it with `oneshot`).
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    if s.ready.load(std::sync::atomic::Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: some selected interfaces are not attached\n",
        )
    }
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    let r = tokio::task::spawn_blocking(move || {
        let e = s.engine.lock().unwrap();
        crate::metrics::render(&e)
    })
    .await;
    match r {
        Ok(Ok(body)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
            body,
        )
            .into_response(),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "reading counters failed");
            (StatusCode::SERVICE_UNAVAILABLE, "counters unavailable\n").into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "metrics task failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
        }
    }
}
