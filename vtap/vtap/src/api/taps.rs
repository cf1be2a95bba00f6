//! `/api/v1/taps` (interfaces vtap is attached to or configured for, and
//! explicit attach/detach) and `/api/v1/stats` (one read of every counter).
//!
//! An explicitly attached tap counts its packets whatever the policies
//! select; policies that name it still mirror from it. Explicit taps are
//! persisted in `STATE_DIR/taps.json`.

use std::collections::{BTreeMap, BTreeSet};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use vtap_abi::Dir;
use vtap_core::engine::Snapshot;
use vtap_core::policy::validate::check_ifname;

use super::error::parse_json;
use super::{ApiError, AppState, Core, dir_names, policy_counters};
use crate::wire::{
    self, ErrorDetail, OutputStats, PolicyStats, Stats, TapCounters, TapInfo, TapList, TapRequest,
};

/// Parses API direction names (`ingress`, `egress`, `both`); empty = both.
pub fn parse_dirs(d: &[String]) -> Result<BTreeSet<Dir>, ApiError> {
    let mut out = BTreeSet::new();
    for (i, s) in d.iter().enumerate() {
        match s.as_str() {
            "ingress" => {
                out.insert(Dir::Ingress);
            }
            "egress" => {
                out.insert(Dir::Egress);
            }
            "both" => out.extend(Dir::ALL),
            other => {
                return Err(ApiError::Invalid(
                    "invalid direction".into(),
                    vec![ErrorDetail {
                        field: format!("directions[{i}]"),
                        message: format!("{other:?} is not ingress, egress or both"),
                    }],
                ));
            }
        }
    }
    if out.is_empty() {
        out.extend(Dir::ALL);
    }
    Ok(out)
}

fn tap_infos(c: &Core, snap: &Snapshot) -> Vec<TapInfo> {
    let explicit = c.engine.explicit_taps();
    let mut names: BTreeSet<&String> = c.engine.taps().keys().collect();
    names.extend(explicit.keys());
    names
        .into_iter()
        .map(|name| {
            let st = c.engine.taps().get(name);
            let mut counters = BTreeMap::new();
            for t in snap.taps.iter().filter(|t| &t.tap == name) {
                counters.insert(
                    t.dir.as_str().to_string(),
                    TapCounters {
                        packets: t.stats.packets,
                        bytes: t.stats.bytes,
                        truncated: t.stats.truncated,
                        classified: t.stats.classified,
                    },
                );
            }
            let (ifindex, wanted, attached, error) = match st {
                Some(st) => (
                    st.ifindex,
                    st.wanted.clone(),
                    st.attached.clone(),
                    st.error.clone(),
                ),
                None => (
                    0,
                    BTreeSet::new(),
                    BTreeSet::new(),
                    Some("interface does not exist (yet)".into()),
                ),
            };
            let state = if ifindex == 0 {
                "missing"
            } else if !attached.is_empty() && attached == wanted {
                "attached"
            } else if !attached.is_empty() {
                "partial"
            } else {
                "error"
            };
            TapInfo {
                name: name.clone(),
                ifindex,
                mode: if st.is_some_and(|s| s.xdp) {
                    "xdp"
                } else {
                    "tcx"
                }
                .into(),
                directions: dir_names(&if wanted.is_empty() {
                    explicit.get(name).cloned().unwrap_or_default()
                } else {
                    wanted
                }),
                attached: dir_names(&attached),
                state: state.into(),
                error,
                explicit: explicit.contains_key(name),
                policies: c
                    .engine
                    .policies()
                    .iter()
                    .filter(|p| p.enabled && p.taps_match(name))
                    .map(|p| p.name.clone())
                    .collect(),
                counters,
            }
        })
        .collect()
}

fn snapshot(c: &Core) -> Result<Snapshot, ApiError> {
    c.engine
        .snapshot()
        .map_err(|e| ApiError::unavailable("reading counters", e))
}

#[utoipa::path(get, path = "/api/v1/taps", tag = "taps",
    responses((status = 200, body = TapList), (status = 401, body = wire::ErrorBody), (status = 503, body = wire::ErrorBody)))]
/// Every interface vtap is attached to or configured for.
pub async fn list(State(s): State<AppState>) -> Result<Json<TapList>, ApiError> {
    s.with_core(|c| {
        let snap = snapshot(c)?;
        Ok(Json(TapList {
            taps: tap_infos(c, &snap),
        }))
    })
    .await
}

#[utoipa::path(get, path = "/api/v1/taps/{iface}", tag = "taps",
    params(("iface" = String, Path, description = "Interface name")),
    responses((status = 200, body = TapInfo), (status = 401, body = wire::ErrorBody), (status = 404, body = wire::ErrorBody),
              (status = 503, body = wire::ErrorBody)))]
/// One tap.
pub async fn get_one(
    State(s): State<AppState>,
    Path(iface): Path<String>,
) -> Result<Json<TapInfo>, ApiError> {
    s.with_core(move |c| {
        let snap = snapshot(c)?;
        tap_infos(c, &snap)
            .into_iter()
            .find(|t| t.name == iface)
            .map(Json)
            .ok_or_else(|| {
                ApiError::NotFound(format!(
                    "vtap is not attached to or configured for {iface:?}"
                ))
            })
    })
    .await
}

#[utoipa::path(put, path = "/api/v1/taps/{iface}", tag = "taps",
    params(("iface" = String, Path, description = "Interface name")),
    request_body(content = Option<TapRequest>, description = "Directions (default both)"),
    responses((status = 201, body = TapInfo, description = "attached"), (status = 200, body = TapInfo, description = "already attached"),
              (status = 400, body = wire::ErrorBody), (status = 401, body = wire::ErrorBody), (status = 413, body = wire::ErrorBody),
              (status = 422, body = wire::ErrorBody), (status = 503, body = wire::ErrorBody)))]
/// Attaches to an interface explicitly (counting; policies that select it
/// mirror from it). An interface that does not exist yet is attached when
/// it appears.
pub async fn put_one(
    State(s): State<AppState>,
    Path(iface): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    check_ifname(&iface).map_err(|m| {
        ApiError::Invalid(
            "invalid interface name".into(),
            vec![ErrorDetail {
                field: "iface".into(),
                message: m,
            }],
        )
    })?;
    let empty = matches!(&body, Ok(b) if b.iter().all(|c| c.is_ascii_whitespace()));
    let req: TapRequest = if empty {
        TapRequest::default()
    } else {
        parse_json(body, s.body_limit)?
    };
    let dirs = parse_dirs(&req.directions)?;
    let links = vtap_core::netlink::list_links()
        .await
        .map_err(|e| ApiError::unavailable("listing interfaces", e))?;
    let name = iface.clone();
    let (created, info) = s
        .with_core(move |c| {
            let mut explicit = c.engine.explicit_taps().clone();
            let created = explicit.insert(name.clone(), dirs.clone()) != Some(dirs);
            if created {
                c.engine
                    .set_explicit_taps(explicit.clone(), &links)
                    .map_err(|e| ApiError::unavailable(&format!("attaching to {name}"), e))?;
                persist(c, &explicit)?;
            }
            let snap = snapshot(c)?;
            let info = tap_infos(c, &snap)
                .into_iter()
                .find(|t| t.name == name)
                .ok_or(ApiError::Internal)?;
            Ok((created, info))
        })
        .await?;
    s.update_ready();
    let code = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((code, Json(info)).into_response())
}

#[utoipa::path(delete, path = "/api/v1/taps/{iface}", tag = "taps",
    params(("iface" = String, Path, description = "Interface name")),
    responses((status = 200, body = TapInfo, description = "detached (still attached if policies select it)"),
              (status = 401, body = wire::ErrorBody), (status = 404, body = wire::ErrorBody), (status = 409, body = wire::ErrorBody),
              (status = 503, body = wire::ErrorBody)))]
/// Removes an explicit attachment. Interfaces attached because policies
/// select them stay attached: change the policies instead (409).
pub async fn delete_one(
    State(s): State<AppState>,
    Path(iface): Path<String>,
) -> Result<Json<TapInfo>, ApiError> {
    let links = vtap_core::netlink::list_links()
        .await
        .map_err(|e| ApiError::unavailable("listing interfaces", e))?;
    let r = s
        .with_core(move |c| {
            let mut explicit = c.engine.explicit_taps().clone();
            if explicit.remove(&iface).is_none() {
                let by: Vec<String> = c
                    .engine
                    .policies()
                    .iter()
                    .filter(|p| p.enabled && p.taps_match(&iface))
                    .map(|p| p.name.clone())
                    .collect();
                if !by.is_empty() && c.engine.taps().contains_key(&iface) {
                    return Err(ApiError::Conflict(format!(
                        "{iface} is attached because policies {by:?} select it; change those policies"
                    )));
                }
                return Err(ApiError::NotFound(format!("{iface:?} is not explicitly attached")));
            }
            c.engine
                .set_explicit_taps(explicit.clone(), &links)
                .map_err(|e| ApiError::unavailable(&format!("detaching from {iface}"), e))?;
            persist(c, &explicit)?;
            let snap = snapshot(c)?;
            let info = tap_infos(c, &snap).into_iter().find(|t| t.name == iface).unwrap_or(TapInfo {
                name: iface.clone(),
                ifindex: links.get(&iface).map_or(0, |l| l.ifindex),
                mode: "tcx".into(),
                directions: vec![],
                attached: vec![],
                state: "detached".into(),
                error: None,
                explicit: false,
                policies: vec![],
                counters: BTreeMap::new(),
            });
            Ok(Json(info))
        })
        .await;
    s.update_ready();
    r
}

fn persist(c: &Core, explicit: &BTreeMap<String, BTreeSet<Dir>>) -> Result<(), ApiError> {
    let Some(path) = &c.taps_file else {
        return Ok(());
    };
    let taps: BTreeMap<&String, Vec<String>> =
        explicit.iter().map(|(k, v)| (k, dir_names(v))).collect();
    let text = serde_json::to_vec_pretty(&serde_json::json!({ "taps": taps }))
        .map_err(|e| ApiError::internal("taps.json", e))?;
    vtap_core::store::write_atomic(path, &text)
        .map_err(|e| ApiError::unavailable("persisting taps.json", e))
}

#[utoipa::path(get, path = "/api/v1/stats", tag = "stats",
    responses((status = 200, body = Stats), (status = 401, body = wire::ErrorBody), (status = 503, body = wire::ErrorBody)))]
/// Every counter: per tap, per policy (with every reason a copy was not
/// delivered), per output.
pub async fn stats(State(s): State<AppState>) -> Result<Json<Stats>, ApiError> {
    s.with_core(|c| {
        let snap = snapshot(c)?;
        Ok(Json(Stats {
            taps: tap_infos(c, &snap),
            policies: snap
                .policies
                .iter()
                .map(|p| PolicyStats {
                    name: p.policy.clone(),
                    counters: policy_counters(p),
                })
                .collect(),
            outputs: snap
                .outputs
                .iter()
                .map(|o| OutputStats {
                    output: o.output.clone(),
                    sent: o.stats.sent,
                    failed: o.stats.failed,
                })
                .collect(),
            generation_flips: c.engine.generation_flips(),
        }))
    })
    .await
}
