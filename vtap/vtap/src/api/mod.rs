//! The REST control plane (axum): `/api/v1/{policies,taps,stats}`,
//! `/metrics`, `/healthz`, `/readyz`, `/api/v1/openapi.json`.
//!
//! `app(state)` builds the router, so tests drive it with `oneshot` and no
//! socket. Every error is JSON `{"error", "details": [{"field", "message"}]}`
//! with its status ([`ApiError`]); internal detail is logged, not returned.
//! Kernel work runs in `spawn_blocking` under the one [`Core`] mutex.

mod captures;
mod error;
mod openapi;
mod policies;
mod probes;
mod taps;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use vtap_abi::Dir;
use vtap_core::engine::Engine;
use vtap_core::store::PolicyStore;

pub use error::ApiError;

use crate::wire;

/// What the mutex protects: the engine and the stores that persist it.
pub struct Core {
    /// The one owner of kernel state.
    pub engine: Engine,
    /// The policy directory (None: changes are not persisted).
    pub store: Option<PolicyStore>,
    /// Where explicitly attached taps are persisted.
    pub taps_file: Option<PathBuf>,
}

/// Who may do what.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    /// Bearer token; None = no authentication.
    pub token: Option<String>,
    /// Reads need no token even when one is set.
    pub public_read: bool,
}

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    pub core: Arc<Mutex<Core>>,
    pub ready: Arc<AtomicBool>,
    pub auth: Arc<Auth>,
    pub body_limit: usize,
    pub request_timeout: Duration,
    /// Every capture (pcap outputs).
    pub captures: Arc<vtap_core::capture::sink::Captures>,
    /// The pcap ring reader (taken at shutdown).
    pub ring_reader: Arc<Mutex<Option<vtap_core::capture::ring::RingReader>>>,
    /// Running probes.
    pub probes: Arc<Mutex<vtap_core::probes::manager::ProbeManager>>,
    /// Where the parse results are pinned for probes (removed at shutdown).
    pub bpf_pin: Arc<Mutex<Option<crate::daemon::BpfPin>>>,
}

impl AppState {
    /// Runs `f` on the core in a blocking thread.
    pub async fn with_core<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Core) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let core = self.core.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = core.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut c)
        })
        .await
        .map_err(|e| ApiError::internal("blocking task failed", e))?
    }

    /// Recomputes readiness: every existing interface a policy (or a tap
    /// request) selects is attached.
    pub fn update_ready(&self) {
        let c = self.core.lock().unwrap_or_else(|p| p.into_inner());
        let ready = c
            .engine
            .taps()
            .values()
            .all(|t| t.ifindex == 0 || t.attached == t.wanted);
        self.ready.store(ready, Ordering::Relaxed);
    }
}

/// The HTTP application.
pub fn app(state: AppState) -> Router {
    let api = Router::new()
        .route("/policies", get(policies::list).put(policies::put_batch))
        .route(
            "/policies/{name}",
            get(policies::get_one)
                .put(policies::put_one)
                .delete(policies::delete_one),
        )
        .route("/taps", get(taps::list))
        .route(
            "/taps/{iface}",
            get(taps::get_one)
                .put(taps::put_one)
                .delete(taps::delete_one),
        )
        .route("/stats", get(taps::stats))
        .route("/captures", get(captures::list))
        .route("/captures/{name}", get(captures::get_one))
        .route("/captures/{name}/stream", get(captures::stream))
        .route("/probes", get(probes::list))
        .route(
            "/probes/{name}",
            get(probes::get_one)
                .put(probes::put_one)
                .delete(probes::delete_one),
        )
        .route("/probes/{name}/metrics", get(probes::metrics))
        .route("/probes/{name}/metrics/{metric}", get(probes::metric))
        .route("/openapi.json", get(openapi::document))
        .fallback(|| async { ApiError::NotFound("no such API path".into()) });
    Router::new()
        .nest("/api/v1", api)
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .fallback(|| async { ApiError::NotFound("no such path".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ))
        .layer(DefaultBodyLimit::max(state.body_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            time_limit,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            tracing::error!("a request handler panicked");
            ApiError::Internal.into_response()
        }))
        .with_state(state)
}

async fn time_limit(State(s): State<AppState>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(s.request_timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::Timeout.into_response(),
    }
}

/// Bearer-token check: mutations always need the token (when one is set);
/// reads too unless `--public-read`. Health endpoints are always open.
async fn authenticate(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let Some(token) = &s.auth.token else {
        return next.run(req).await;
    };
    let path = req.uri().path();
    if path == "/healthz" || path == "/readyz" {
        return next.run(req).await;
    }
    let read = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if read && s.auth.public_read {
        return next.run(req).await;
    }
    if bearer_ok(req.headers(), token) {
        next.run(req).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}

fn bearer_ok(h: &HeaderMap, token: &str) -> bool {
    let Some(v) = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some(given) = v.strip_prefix("Bearer ").map(str::trim) else {
        return false;
    };
    // Constant-time comparison.
    let (a, b) = (given.as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn readyz(State(s): State<AppState>) -> Response {
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: some selected interfaces are not attached\n",
        )
            .into_response()
    }
}

async fn metrics(State(s): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let om = crate::metrics::wants_openmetrics(
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()),
    );
    let caps = captures::infos(&s).await?;
    // Output devices' own transmit failures (best effort: a failed dump
    // leaves those two families out of this scrape).
    let tx = vtap_core::netlink::tx_failures().await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "reading interface statistics");
        Default::default()
    });
    let pm = s.probes.clone();
    let probe_samples = tokio::task::spawn_blocking(move || pm.lock().unwrap().samples())
        .await
        .map_err(|e| ApiError::internal("blocking task failed", e))?;
    let body = s
        .with_core(move |c| {
            let mut fams = crate::metrics::families(&c.engine, &caps)
                .map_err(|e| ApiError::unavailable("reading counters", e))?;
            fams.extend(crate::metrics::device_families(&c.engine, &tx));
            crate::metrics::probe_families(probe_samples, None, None, &mut fams);
            if om {
                crate::metrics::encode_openmetrics(fams)
            } else {
                crate::metrics::encode_text(fams)
            }
            .map_err(|e| ApiError::internal("encoding metrics", e))
        })
        .await?;
    let ct = if om {
        crate::metrics::OPENMETRICS
    } else {
        prometheus::TEXT_FORMAT
    };
    Ok(([(header::CONTENT_TYPE, ct)], body).into_response())
}

/// Directions as API strings.
pub fn dir_names(d: &BTreeSet<Dir>) -> Vec<String> {
    d.iter().map(|d| d.as_str().to_string()).collect()
}

/// Reads persisted explicit taps (`{"taps": {"name": ["ingress", ...]}}`).
pub fn load_explicit_taps(
    path: &std::path::Path,
) -> anyhow::Result<BTreeMap<String, BTreeSet<Dir>>> {
    #[derive(serde::Deserialize)]
    struct File {
        taps: BTreeMap<String, Vec<String>>,
    }
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => anyhow::bail!("reading {}: {e}", path.display()),
    };
    let f: File =
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut out = BTreeMap::new();
    for (name, dirs) in f.taps {
        vtap_core::policy::validate::check_ifname(&name)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        out.insert(
            name,
            taps::parse_dirs(&dirs).map_err(|e| anyhow::anyhow!("{}: {e:?}", path.display()))?,
        );
    }
    Ok(out)
}

/// Converts engine counters into the wire shape.
pub fn policy_counters(p: &vtap_core::engine::PolicyCounters) -> wire::PolicyCounters {
    let mut c = wire::PolicyCounters::default();
    for (i, d) in ["ingress", "egress"].iter().enumerate() {
        c.matched.insert(
            d.to_string(),
            wire::PacketsBytes {
                packets: p.matched[i].packets,
                bytes: p.matched[i].bytes,
            },
        );
    }
    for (out, s) in &p.outputs {
        c.mirrored.insert(out.clone(), s.mirrored);
    }
    for (i, name) in vtap_abi::drop_reason::NAMES.iter().enumerate() {
        if let Some(name) = name {
            c.dropped.insert(name.to_string(), p.drops.reason[i]);
        }
    }
    c
}

#[cfg(test)]
mod tests;
