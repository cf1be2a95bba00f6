//! `/api/v1/probes`: inject (compile, verify, attach), replace, list,
//! remove counting probes, and read their maps as metrics.
//!
//! A probe that does not compile, that the verifier refuses, or whose spec
//! names a map or field the object does not have is refused with 422 and
//! the compiler's or verifier's messages; nothing running changes (a probe
//! being replaced keeps running).

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use vtap_core::probes::compile::CompileError;
use vtap_core::probes::manager::ProbeManagerError;
use vtap_core::probes::spec::ProbeSpec;

use super::error::parse_json;
use super::{ApiError, AppState};
use crate::wire::{self, ErrorDetail};

fn api_error(e: ProbeManagerError) -> ApiError {
    match e {
        ProbeManagerError::Invalid(errors) => ApiError::Invalid(
            format!("invalid probe ({} problems)", errors.len()),
            errors
                .into_iter()
                .map(|e| ErrorDetail {
                    field: e.field,
                    message: e.message,
                })
                .collect(),
        ),
        ProbeManagerError::Compile(CompileError::NoCompiler) => {
            ApiError::unavailable("compiling the probe", CompileError::NoCompiler)
        }
        ProbeManagerError::Compile(CompileError::Io(m)) => {
            ApiError::unavailable("compiling the probe", m)
        }
        ProbeManagerError::Compile(c) => ApiError::Invalid(
            "the probe does not compile or is not a BPF object".into(),
            vec![ErrorDetail {
                field: match c {
                    CompileError::NotBpf(_) => "object",
                    _ => "source",
                }
                .into(),
                message: c.to_string(),
            }],
        ),
        ProbeManagerError::Verifier(log) => ApiError::Invalid(
            "the kernel's verifier refused the probe".into(),
            vec![ErrorDetail {
                field: "source".into(),
                message: log,
            }],
        ),
        ProbeManagerError::NotFound(n) => ApiError::NotFound(format!("no probe named {n}")),
        ProbeManagerError::Kernel(m) => ApiError::unavailable("the probe", m),
    }
}

#[utoipa::path(get, path = "/api/v1/probes", tag = "probes",
    responses((status = 200, description = "every probe: hook, taps, where attached, program id, instructions, metrics", body = Object),
              (status = 401, body = wire::ErrorBody)))]
/// Every probe.
pub async fn list(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    let p = s.probes.clone();
    let v = tokio::task::spawn_blocking(move || p.lock().unwrap().statuses())
        .await
        .map_err(|e| ApiError::internal("blocking task failed", e))?;
    Ok(Json(json!({ "probes": v })))
}

#[utoipa::path(get, path = "/api/v1/probes/{name}", tag = "probes",
    params(("name" = String, Path, description = "Probe name")),
    responses((status = 200, body = Object), (status = 401, body = wire::ErrorBody), (status = 404, body = wire::ErrorBody)))]
/// One probe.
pub async fn get_one(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let p = s.probes.clone();
    let n = name.clone();
    let st = tokio::task::spawn_blocking(move || p.lock().unwrap().status(&n))
        .await
        .map_err(|e| ApiError::internal("blocking task failed", e))?;
    st.map(|v| Json(serde_json::to_value(v).unwrap_or_default()))
        .ok_or_else(|| ApiError::NotFound(format!("no probe named {name}")))
}

#[utoipa::path(put, path = "/api/v1/probes/{name}", tag = "probes",
    params(("name" = String, Path, description = "Probe name")),
    request_body(content = Object, description = "A probe spec: version, name, attach {taps, hook, direction}, source (C) or object (base64 BPF ELF), metrics [{name, map, help, type, labels, key_labels, value_field, aggregate}]"),
    responses((status = 201, body = Object, description = "injected"), (status = 200, body = Object, description = "replaced"),
              (status = 400, body = wire::ErrorBody), (status = 401, body = wire::ErrorBody), (status = 413, body = wire::ErrorBody),
              (status = 422, body = wire::ErrorBody, description = "invalid spec, compiler or verifier error (with its messages)"),
              (status = 503, body = wire::ErrorBody)))]
/// Injects a probe, or replaces the probe of that name (the new version is
/// compiled, verified and attached before the old one is removed).
pub async fn put_one(
    State(s): State<AppState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let spec: ProbeSpec = parse_json(body, s.body_limit)?;
    if spec.name != name {
        return Err(ApiError::Invalid(
            "the probe's name differs from the path".into(),
            vec![ErrorDetail {
                field: "name".into(),
                message: format!("{:?} in the body, {name:?} in the path", spec.name),
            }],
        ));
    }
    let links = vtap_core::netlink::list_links()
        .await
        .map_err(|e| ApiError::unavailable("listing interfaces", e))?;
    let p = s.probes.clone();
    let r = tokio::task::spawn_blocking(move || {
        let mut m = p.lock().unwrap();
        let replaced = m.inject(spec, &links)?;
        let mut st = serde_json::to_value(m.status(&name)).unwrap_or_default();
        if let Some(fin) = m.take_replaced_final(&name) {
            // What the replaced version counted, read after the switch:
            // nothing is lost between versions.
            st["replaced_final"] = Value::Array(fin);
        }
        Ok::<_, ProbeManagerError>((replaced, st))
    })
    .await
    .map_err(|e| ApiError::internal("blocking task failed", e))?;
    let (replaced, st) = r.map_err(api_error)?;
    share_parse(&s).await?;
    let code = if replaced {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((code, Json(st)).into_response())
}

#[utoipa::path(delete, path = "/api/v1/probes/{name}", tag = "probes",
    params(("name" = String, Path, description = "Probe name")),
    responses((status = 204, description = "detached and freed"), (status = 401, body = wire::ErrorBody), (status = 404, body = wire::ErrorBody)))]
/// Detaches a probe and frees its maps.
pub async fn delete_one(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let p = s.probes.clone();
    tokio::task::spawn_blocking(move || p.lock().unwrap().remove(&name))
        .await
        .map_err(|e| ApiError::internal("blocking task failed", e))?
        .map_err(api_error)?;
    share_parse(&s).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// vtap's programs publish their parse results while some probe runs.
async fn share_parse(s: &AppState) -> Result<(), ApiError> {
    let on = !s.probes.lock().unwrap().names().is_empty();
    s.with_core(move |c| {
        c.engine
            .set_share_parse(on)
            .map_err(|e| ApiError::unavailable("sharing parse results with probes", e))
    })
    .await
}

/// `?format=json|openmetrics`.
#[derive(Debug, Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct Format {
    /// `json` (default) or `openmetrics`.
    pub format: Option<String>,
}

async fn metrics_of(
    s: AppState,
    name: String,
    only: Option<String>,
    q: Result<Query<Format>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(format!("bad query: {}", e.body_text())))?;
    let om = match q.format.as_deref() {
        None | Some("json") => false,
        Some("openmetrics") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "format {other:?}: json or openmetrics"
            )));
        }
    };
    let p = s.probes.clone();
    if om {
        let n = name.clone();
        let (exists, samples) = tokio::task::spawn_blocking(move || {
            let mut m = p.lock().unwrap();
            (m.status(&n).is_some(), m.samples())
        })
        .await
        .map_err(|e| ApiError::internal("blocking task failed", e))?;
        if !exists {
            return Err(ApiError::NotFound(format!("no probe named {name}")));
        }
        let mut fams = Vec::new();
        crate::metrics::probe_families(samples, Some(&name), only.as_deref(), &mut fams);
        let text = crate::metrics::encode_openmetrics(fams)
            .map_err(|e| ApiError::internal("encoding metrics", e))?;
        return Ok(([(header::CONTENT_TYPE, crate::metrics::OPENMETRICS)], text).into_response());
    }
    let text = tokio::task::spawn_blocking(move || {
        p.lock().unwrap().read_json_text(&name, only.as_deref())
    })
    .await
    .map_err(|e| ApiError::internal("blocking task failed", e))?
    .map_err(api_error)?;
    Ok(([(header::CONTENT_TYPE, "application/json")], text).into_response())
}

#[utoipa::path(get, path = "/api/v1/probes/{name}/metrics", tag = "probes",
    params(("name" = String, Path, description = "Probe name"), Format),
    responses((status = 200, description = "[{name, value, timestamp}]: value follows the map's structure ({key, value} per entry)", body = Object),
              (status = 400, body = wire::ErrorBody), (status = 401, body = wire::ErrorBody), (status = 404, body = wire::ErrorBody), (status = 503, body = wire::ErrorBody)))]
/// Every metric of a probe.
pub async fn metrics(
    State(s): State<AppState>,
    Path(name): Path<String>,
    q: Result<Query<Format>, QueryRejection>,
) -> Result<Response, ApiError> {
    metrics_of(s, name, None, q).await
}

#[utoipa::path(get, path = "/api/v1/probes/{name}/metrics/{metric}", tag = "probes",
    params(("name" = String, Path, description = "Probe name"), ("metric" = String, Path, description = "Metric name"), Format),
    responses((status = 200, body = Object), (status = 400, body = wire::ErrorBody), (status = 401, body = wire::ErrorBody),
              (status = 404, body = wire::ErrorBody), (status = 503, body = wire::ErrorBody)))]
/// One metric of a probe.
pub async fn metric(
    State(s): State<AppState>,
    Path((name, metric)): Path<(String, String)>,
    q: Result<Query<Format>, QueryRejection>,
) -> Result<Response, ApiError> {
    metrics_of(s, name, Some(metric), q).await
}
