//! `vtap daemon`: start-up in a fixed order — tracing, configuration (no
//! binding yet), security checks, policies, datapath, attach, bind, serve —
//! and a `select!` over SIGHUP (re-read the policy directory) and
//! SIGTERM/SIGINT (stop accepting, drain in-flight requests for a bounded
//! time, detach everything, exit 0).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use std::collections::BTreeMap;
use tokio::signal::unix::{SignalKind, signal};

use vtap_core::capture::CaptureConfig;
use vtap_core::capture::ring::RingReader;
use vtap_core::capture::sink::Captures;
use vtap_core::datapath::LoadOptions;
use vtap_core::engine::{Engine, EngineError};
use vtap_core::store::PolicyStore;

use crate::api::{AppState, Auth, Core};

/// Flags of `vtap daemon`; each overrides the config file.
#[derive(clap::Args, Debug, Default)]
pub struct DaemonArgs {
    /// Daemon configuration file (YAML: listen, policies, state_dir,
    /// token_file, public_read, insecure, body_limit, request_timeout_ms,
    /// refresh_ms, log_format, capture_ring_mib, capture_defaults, captures,
    /// xdp_taps, vxlan_port).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address of the REST API and /metrics [default: 127.0.0.1:7470].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Directory of policy files: loaded at start and on SIGHUP, and where
    /// changes made over REST are persisted [default: STATE_DIR/policies].
    #[arg(long)]
    pub policies: Option<PathBuf>,
    /// Directory for the daemon's state [default: /var/lib/vtap].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// File holding a bearer token: enables authentication (every mutating
    /// request needs it, and reads too unless --public-read).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// With --token-file: GET requests need no token.
    #[arg(long)]
    pub public_read: bool,
    /// Allow listening on a non-loopback address without a token.
    #[arg(long)]
    pub insecure: bool,
    /// Largest accepted request body in bytes [default: 1048576].
    #[arg(long)]
    pub body_limit: Option<usize>,
    /// Log format: text or json [default: text].
    #[arg(long)]
    pub log_format: Option<String>,
    /// Size of the pcap ring buffer shared by all captures, in MiB (a power
    /// of two) [default: 64].
    #[arg(long)]
    pub capture_ring_mib: Option<u32>,
    /// Attach interfaces matching this glob in XDP mode instead of TCX
    /// (repeatable): ingress only, for counting and pcap captures at the
    /// lowest cost; copies to interfaces are not possible there.
    #[arg(long = "xdp-tap", value_name = "GLOB")]
    pub xdp_taps: Vec<String>,
    /// UDP destination port of `vxlan:` outputs (vtap's VXLAN device)
    /// [default: 4789].
    #[arg(long)]
    pub vxlan_port: Option<u16>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    listen: Option<SocketAddr>,
    policies: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    token_file: Option<PathBuf>,
    #[serde(default)]
    public_read: bool,
    #[serde(default)]
    insecure: bool,
    body_limit: Option<usize>,
    request_timeout_ms: Option<u64>,
    refresh_ms: Option<u64>,
    log_format: Option<String>,
    capture_ring_mib: Option<u32>,
    #[serde(default)]
    xdp_taps: Vec<String>,
    vxlan_port: Option<u16>,
    /// Settings of captures created by a policy that names them.
    #[serde(default)]
    capture_defaults: CaptureConfig,
    /// Named captures with their own settings (created at start).
    #[serde(default)]
    captures: BTreeMap<String, CaptureConfig>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub policies: PathBuf,
    pub state_dir: PathBuf,
    pub token: Option<String>,
    pub public_read: bool,
    pub body_limit: usize,
    pub request_timeout: Duration,
    pub refresh: Duration,
    pub log_json: bool,
    pub capture_ring_bytes: u32,
    pub capture_defaults: CaptureConfig,
    pub captures: BTreeMap<String, CaptureConfig>,
    pub xdp_taps: Vec<glob::Pattern>,
    pub vxlan_port: u16,
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
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| "127.0.0.1:7470".parse().unwrap());
    let state_dir = args
        .state_dir
        .clone()
        .or(file.state_dir)
        .unwrap_or_else(|| "/var/lib/vtap".into());
    let token = match args.token_file.clone().or(file.token_file) {
        None => None,
        Some(p) => {
            let t = std::fs::read_to_string(&p)
                .map_err(|e| anyhow::anyhow!("reading token file {}: {e}", p.display()))?;
            let t = t.trim().to_string();
            if t.len() < 16 || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
                anyhow::bail!(
                    "token file {}: the token must be at least 16 printable characters",
                    p.display()
                );
            }
            Some(t)
        }
    };
    let insecure = args.insecure || file.insecure;
    if token.is_none() && !listen.ip().is_loopback() && !insecure {
        anyhow::bail!(
            "refusing to listen on {listen} (not loopback) without --token-file; pass --insecure to do it anyway"
        );
    }
    let ring_mib = args
        .capture_ring_mib
        .or(file.capture_ring_mib)
        .unwrap_or(64);
    if !ring_mib.is_power_of_two() || ring_mib > 1024 {
        anyhow::bail!("capture_ring_mib must be a power of two from 1 to 1024, not {ring_mib}");
    }
    for name in file.captures.keys() {
        vtap_core::capture::name::validate_capture_name(name)
            .map_err(|e| anyhow::anyhow!("captures.{name}: {e}"))?;
    }
    let mut xdp_taps = Vec::new();
    for t in args.xdp_taps.iter().chain(&file.xdp_taps) {
        vtap_core::policy::validate::check_ifname(&t.replace(['*', '?', '[', ']'], "x"))
            .map_err(|e| anyhow::anyhow!("xdp tap {t:?}: {e}"))?;
        xdp_taps.push(glob::Pattern::new(t).map_err(|e| anyhow::anyhow!("xdp tap {t:?}: {e}"))?);
    }
    let vxlan_port = args
        .vxlan_port
        .or(file.vxlan_port)
        .unwrap_or(vtap_core::tunnel::DEFAULT_PORT);
    if vxlan_port == 0 {
        anyhow::bail!("vxlan_port must be 1..65535");
    }
    let body_limit = args.body_limit.or(file.body_limit).unwrap_or(1 << 20);
    if body_limit < 1024 {
        anyhow::bail!("body_limit must be at least 1024 bytes");
    }
    Ok(Config {
        listen,
        policies: args
            .policies
            .clone()
            .or(file.policies)
            .unwrap_or_else(|| state_dir.join("policies")),
        state_dir,
        token,
        public_read: args.public_read || file.public_read,
        body_limit,
        request_timeout: Duration::from_millis(
            file.request_timeout_ms
                .unwrap_or(30_000)
                .clamp(100, 600_000),
        ),
        refresh: Duration::from_millis(file.refresh_ms.unwrap_or(1000).clamp(50, 60_000)),
        log_json: log_format == "json",
        capture_ring_bytes: ring_mib << 20,
        capture_defaults: file.capture_defaults,
        captures: file.captures,
        xdp_taps,
        vxlan_port,
    })
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
    // netlink-packet-route warns about every attribute newer than itself on
    // each link dump; keep that quiet unless asked for explicitly.
    let spec = std::env::var("VTAP_LOG").unwrap_or_else(|_| "info".into());
    let spec = if spec.contains("netlink_packet_route") {
        spec
    } else {
        format!("{spec},netlink_packet_route=error")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&spec)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,netlink_packet_route=error"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    if json { b.json().init() } else { b.init() }
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

/// Where `vtap_parse_pub` is pinned for probes; removed (and the private
/// bpf filesystem unmounted) on drop.
pub struct BpfPin {
    pub pin: PathBuf,
    dir: PathBuf,
    mounted: bool,
}

impl BpfPin {
    /// A directory on a bpf filesystem: `/sys/fs/bpf/vtap-PID` when
    /// /sys/fs/bpf is one, else a bpf filesystem mounted (in the daemon's
    /// mount namespace) on `STATE_DIR/bpffs`.
    fn create(state_dir: &std::path::Path) -> anyhow::Result<BpfPin> {
        const BPF_FS_MAGIC: i64 = 0xcafe4a11;
        let is_bpffs = |p: &std::path::Path| -> bool {
            let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
                return false;
            };
            // SAFETY: a valid C string and an out-struct.
            let mut st: libc::statfs = unsafe { std::mem::zeroed() };
            let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
            rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
        };
        let sys = std::path::Path::new("/sys/fs/bpf");
        let (dir, mounted) = if is_bpffs(sys) {
            (sys.join(format!("vtap-{}", std::process::id())), false)
        } else {
            let d = state_dir.join("bpffs");
            std::fs::create_dir_all(&d)?;
            if !is_bpffs(&d) {
                let c = std::ffi::CString::new(d.as_os_str().as_encoded_bytes())?;
                let fs = c"bpf";
                // SAFETY: valid C strings; no data.
                if unsafe { libc::mount(fs.as_ptr(), c.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) }
                    != 0
                {
                    anyhow::bail!(
                        "mounting a bpf filesystem on {}: {}",
                        d.display(),
                        std::io::Error::last_os_error()
                    );
                }
            }
            (d, true)
        };
        std::fs::create_dir_all(&dir)?;
        let pin = dir.join("vtap_parse_pub");
        let _ = std::fs::remove_file(&pin);
        Ok(BpfPin { pin, dir, mounted })
    }
}

impl Drop for BpfPin {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.pin);
        if self.mounted {
            if let Ok(c) = std::ffi::CString::new(self.dir.as_os_str().as_encoded_bytes()) {
                // SAFETY: a valid C string.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        } else {
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

/// Builds the state: loads the policy directory and the explicit taps,
/// loads the datapath and applies them.
pub async fn build_state(cfg: &Config) -> anyhow::Result<AppState> {
    std::fs::create_dir_all(&cfg.state_dir)
        .map_err(|e| anyhow::anyhow!("creating state dir {}: {e}", cfg.state_dir.display()))?;
    let (store, policies) = match PolicyStore::open(&cfg.policies) {
        Ok(x) => x,
        Err(e) => {
            for line in e.to_string().lines() {
                tracing::error!("policy directory rejected: {line}");
            }
            anyhow::bail!(
                "invalid policy directory {}; nothing attached",
                cfg.policies.display()
            );
        }
    };
    let taps_file = cfg.state_dir.join("taps.json");
    let explicit = crate::api::load_explicit_taps(&taps_file)?;
    let links = vtap_core::netlink::list_links().await?;
    let captures = Arc::new(
        Captures::new(
            &cfg.state_dir,
            cfg.capture_defaults.clone(),
            cfg.captures.clone(),
        )
        .map_err(|e| anyhow::anyhow!("captures: {e}"))?,
    );
    let opts = LoadOptions {
        pcap_ring_bytes: cfg.capture_ring_bytes,
    };
    let caps = captures.clone();
    let xdp_taps = cfg.xdp_taps.clone();
    let vxlan_port = cfg.vxlan_port;
    let state_dir = cfg.state_dir.clone();
    let (engine, reader, pin) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let mut engine = Engine::with_options(opts)?;
        // Parse once: probes share vtap's parse results through this map.
        let pin = match BpfPin::create(&state_dir)
            .and_then(|p| engine.pin_parse_pub(&p.pin).map(|()| p).map_err(Into::into))
        {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "parse results will not be shared with probes");
                None
            }
        };
        engine.set_xdp_taps(xdp_taps);
        engine.set_tunnel_port(vxlan_port);
        engine.set_captures(caps.clone());
        let ring = engine
            .take_pcap_ring()
            .ok_or_else(|| anyhow::anyhow!("the pcap ring buffer is missing"))?;
        let reader = RingReader::start(ring, caps)?;
        if !explicit.is_empty() {
            engine.set_explicit_taps(explicit, &links)?;
        }
        if let Err(e) = engine.apply(policies, &links) {
            log_engine_error("initial policy set rejected", &e);
            anyhow::bail!("initial policy set rejected: {e}");
        }
        Ok((engine, reader, pin))
    })
    .await??;
    let mut probes = vtap_core::probes::manager::ProbeManager::new();
    if let Some(p) = &pin {
        probes.set_parse_pub_pin(p.pin.clone());
    }
    tracing::info!(policies = engine.policies().len(), dir = %cfg.policies.display(), "policies active");
    let state = AppState {
        core: Arc::new(Mutex::new(Core {
            engine,
            store: Some(store),
            taps_file: Some(taps_file),
        })),
        ready: Arc::new(AtomicBool::new(false)),
        auth: Arc::new(Auth {
            token: cfg.token.clone(),
            public_read: cfg.public_read,
        }),
        body_limit: cfg.body_limit,
        request_timeout: cfg.request_timeout,
        captures,
        ring_reader: Arc::new(Mutex::new(Some(reader))),
        probes: Arc::new(Mutex::new(probes)),
        bpf_pin: Arc::new(Mutex::new(pin)),
    };
    state.update_ready();
    Ok(state)
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    tracing::info!(
        listen = %cfg.listen,
        policies = %cfg.policies.display(),
        state_dir = %cfg.state_dir.display(),
        auth = cfg.token.is_some(),
        "starting vtap daemon"
    );
    let state = build_state(&cfg).await?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| anyhow::anyhow!("listening on {}: {e}", cfg.listen))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut server_stop = stop_rx.clone();
    let server = tokio::spawn(
        axum::serve(listener, crate::api::app(state.clone()))
            .with_graceful_shutdown(async move {
                let _ = server_stop.wait_for(|s| *s).await;
            })
            .into_future(),
    );
    let refresher = tokio::spawn(refresh_loop(state.clone(), cfg.refresh, stop_rx.clone()));
    let adaptive = tokio::spawn(adaptive_loop(state.clone(), stop_rx.clone()));

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hup.recv() => reload(&state, cfg.policies.clone()).await,
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("stopping: draining requests (at most 5 s), then detaching");
    let _ = stop_tx.send(true);
    if tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .is_err()
    {
        tracing::warn!("requests still running after 5 s; detaching anyway");
    }
    let _ = refresher.await;
    let _ = adaptive.await;
    let st = state.clone();
    tokio::task::spawn_blocking(move || {
        st.core
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .engine
            .shutdown();
        // Probes: detached and freed with their objects.
        *st.probes.lock().unwrap_or_else(|p| p.into_inner()) =
            vtap_core::probes::manager::ProbeManager::new();
        st.bpf_pin.lock().unwrap_or_else(|p| p.into_inner()).take();
        // Stop reading the ring, then close every capture file.
        st.ring_reader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        st.captures.shutdown();
    })
    .await?;
    tracing::info!("detached; bye");
    Ok(())
}

/// SIGHUP: re-read the policy directory; a bad file keeps the running set.
async fn reload(state: &AppState, dir: PathBuf) {
    tracing::info!("SIGHUP: reloading policies");
    let links = match vtap_core::netlink::list_links().await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "reload: listing interfaces failed, running set kept");
            return;
        }
    };
    let st = state.clone();
    let r = tokio::task::spawn_blocking(move || {
        let mut c = st.core.lock().unwrap_or_else(|p| p.into_inner());
        let (store, policies) = match PolicyStore::open(&dir) {
            Ok(x) => x,
            Err(e) => {
                for line in e.to_string().lines() {
                    tracing::error!("reload rejected, running set kept: {line}");
                }
                return;
            }
        };
        let n = policies.len();
        match c.engine.apply(policies, &links) {
            Ok(()) => {
                c.store = Some(store);
                tracing::info!(policies = n, "reload applied");
            }
            Err(e) => log_engine_error("reload rejected, running set kept", &e),
        }
    })
    .await;
    if let Err(e) = r {
        tracing::error!(error = %e, "reload task failed");
    }
    state.update_ready();
}

/// Adaptive mirroring: evaluates the policies' `when:` conditions from the
/// probes' samples every `EVAL_PERIOD`; the engine flips a policy in or out
/// when its condition changes.
async fn adaptive_loop(state: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(vtap_core::policy::when::EVAL_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let st = state.clone();
        let r = tokio::task::spawn_blocking(move || {
            let probes = {
                let c = st.core.lock().unwrap_or_else(|p| p.into_inner());
                if c.engine.conditions().is_empty() {
                    return Ok(());
                }
                c.engine.conditions().probes()
            };
            let samples = st
                .probes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .samples_of(&probes);
            st.core
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .engine
                .evaluate_conditions(std::time::Instant::now(), &samples)
                .map(|_| ())
        })
        .await;
        if let Ok(Err(e)) = r {
            log_engine_error("adaptive mirroring: applying a condition change failed", &e);
        }
    }
}

async fn refresh_loop(
    state: AppState,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Hot-plug: rtnetlink link events wake the loop at once; the periodic
    // tick stays as a safety net (a missed event, a socket error).
    let changed = Arc::new(tokio::sync::Notify::new());
    let c = changed.clone();
    let watcher = tokio::spawn(async move {
        if let Err(e) = vtap_core::netlink::watch_links(move || c.notify_one()).await {
            tracing::warn!(error = %e, "link events unavailable; interfaces are re-checked periodically only");
        }
    });
    loop {
        let event = tokio::select! {
            _ = tick.tick() => false,
            _ = changed.notified() => true,
            _ = stop.wait_for(|s| *s) => break,
        };
        if event {
            // A burst of events (a VM's tap created, renamed, set up) is
            // handled in one pass.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let links = match vtap_core::netlink::list_links().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "listing interfaces failed");
                continue;
            }
        };
        let st = state.clone();
        let r = tokio::task::spawn_blocking(move || {
            // Probes follow interfaces that appear and go away, too.
            st.probes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .refresh(&links);
            st.core
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .engine
                .refresh(&links)
        })
        .await;
        if let Ok(Err(e)) = r {
            log_engine_error("refresh failed", &e);
        }
        state.update_ready();
    }
    watcher.abort();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn deploy(path: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy")
            .join(path)
    }

    #[test]
    fn the_sample_config_is_valid() {
        let args = DaemonArgs {
            config: Some(deploy("vtap.yaml")),
            ..Default::default()
        };
        let c = config(&args).unwrap_or_else(|e| panic!("deploy/vtap.yaml: {e:#}"));
        assert_eq!(c.listen, "127.0.0.1:7470".parse().unwrap());
        assert_eq!(c.capture_ring_bytes, 64 << 20);
        assert!(c.captures.contains_key("web"));
        assert!(c.log_json);
    }

    #[test]
    fn the_daemonset_config_map_is_a_valid_config() {
        let text = std::fs::read_to_string(deploy("kubernetes/vtap-daemonset.yaml")).unwrap();
        let mut found = false;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = serde_yaml::Value::deserialize(doc).unwrap();
            if v["kind"] == "ConfigMap"
                && let Some(cfg) = v["data"]["vtap.yaml"].as_str()
            {
                let f: ConfigFile = serde_yaml::from_str(cfg).unwrap();
                assert!(f.token_file.is_some(), "off loopback it needs a token");
                found = true;
            }
        }
        assert!(found, "no vtap.yaml in the manifest's ConfigMap");
    }
}
