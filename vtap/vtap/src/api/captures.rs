//! `/api/v1/captures`: the pcap captures (files, counters) and their live
//! pcapng streams.
//!
//! A stream starts with a section header, then one interface description
//! block per tap + direction the first time it appears, then enhanced packet
//! blocks, so `curl -sN …/stream | tcpdump -r -` shows packets as they come.
//! A subscriber that falls behind skips packets (counted in the capture's
//! `stream_lost`); it never holds up the file writer or the datapath.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use vtap_abi::CaptureStats;
use vtap_core::capture::files::FileState;
use vtap_core::capture::name::validate_capture_name;
use vtap_core::capture::pcapng::PcapngEncoder;
use vtap_core::capture::sink::{Capture, DatapathCounters};

use super::{ApiError, AppState};
use crate::wire::{self, CaptureFile, CaptureInfo, CaptureList, ErrorDetail};

/// The REST view of one capture.
pub fn capture_info(
    cap: &Capture,
    policies: Vec<String>,
    dp: Option<&CaptureStats>,
) -> CaptureInfo {
    let dp = dp
        .map(|s| DatapathCounters {
            packets: s.packets,
            bytes: s.bytes,
            cap_bytes: s.cap_bytes,
            ring_full: s.ring_full,
        })
        .unwrap_or_default();
    let v = cap.view(policies, dp);
    let (state, state_detail) = match &v.files.state {
        FileState::Idle => ("idle", None),
        FileState::Writing => ("writing", None),
        FileState::Stopped { reason } => ("stopped", Some(format!("stop condition: {reason}"))),
        FileState::Error { error, .. } => ("error", Some(error.clone())),
        FileState::Disabled => ("disabled", None),
    };
    let st = &v.files.stats;
    CaptureInfo {
        name: v.name,
        policies: v.policies,
        state: state.into(),
        state_detail,
        dir: v.files.dir.display().to_string(),
        current: v.files.current.as_ref().map(|p| p.display().to_string()),
        files: v
            .files
            .files
            .iter()
            .map(|f| CaptureFile {
                path: f.path.display().to_string(),
                bytes: f.bytes,
            })
            .collect(),
        packets: v.datapath.packets,
        bytes: v.datapath.bytes,
        cap_bytes: v.datapath.cap_bytes,
        ring_full: v.datapath.ring_full,
        received: v.received,
        written_packets: st.packets_written,
        written_bytes: st.bytes_written,
        not_written_error: st.not_written_error,
        not_written_stopped: st.not_written_stopped,
        writer_queue_full: v.writer_queue_full,
        writer_lag_seconds: v.writer_lag_seconds,
        subscribers: v.stream.subscribers as u64,
        streamed: v.stream.streamed,
        stream_lost: v.stream.lost,
        config: serde_json::to_value(&v.config).unwrap_or_default(),
    }
}

/// Every capture with its counters (one read of the datapath's).
pub async fn infos(s: &AppState) -> Result<Vec<CaptureInfo>, ApiError> {
    let dp: BTreeMap<String, CaptureStats> = s
        .with_core(|c| {
            c.engine
                .capture_stats()
                .map_err(|e| ApiError::unavailable("reading capture counters", e))
        })
        .await?;
    Ok(s.captures
        .all()
        .iter()
        .map(|cap| capture_info(cap, s.captures.policies_of(&cap.name), dp.get(&cap.name)))
        .collect())
}

fn check_name(name: &str) -> Result<(), ApiError> {
    validate_capture_name(name).map_err(|e| {
        ApiError::Invalid(
            "invalid capture name".into(),
            vec![ErrorDetail {
                field: "name".into(),
                message: e,
            }],
        )
    })
}

#[utoipa::path(get, path = "/api/v1/captures", tag = "captures",
    responses((status = 200, body = CaptureList), (status = 401, body = wire::ErrorBody), (status = 503, body = wire::ErrorBody)))]
/// Every capture: state of its files, the files with their sizes, and its
/// packet and loss counters.
pub async fn list(State(s): State<AppState>) -> Result<Json<CaptureList>, ApiError> {
    Ok(Json(CaptureList {
        captures: infos(&s).await?,
    }))
}

#[utoipa::path(get, path = "/api/v1/captures/{name}", tag = "captures",
    params(("name" = String, Path, description = "Capture name")),
    responses((status = 200, body = CaptureInfo), (status = 401, body = wire::ErrorBody), (status = 404, body = wire::ErrorBody),
              (status = 422, body = wire::ErrorBody), (status = 503, body = wire::ErrorBody)))]
/// One capture.
pub async fn get_one(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<CaptureInfo>, ApiError> {
    check_name(&name)?;
    infos(&s)
        .await?
        .into_iter()
        .find(|c| c.name == name)
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no capture named {name}")))
}

/// Query of `GET /api/v1/captures/{name}/stream`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// End the stream after this many packets (0 or absent: no limit).
    pub packets: Option<u64>,
    /// End the stream after this many seconds (0 or absent: no limit).
    pub seconds: Option<u64>,
}

#[utoipa::path(get, path = "/api/v1/captures/{name}/stream", tag = "captures",
    params(("name" = String, Path, description = "Capture name"), StreamQuery),
    responses((status = 200, content_type = "application/x-pcapng", description = "pcapng stream of every packet captured from now on"),
              (status = 400, body = wire::ErrorBody), (status = 401, body = wire::ErrorBody), (status = 404, body = wire::ErrorBody),
              (status = 422, body = wire::ErrorBody)))]
/// Streams the capture as pcapng: the header at once, then every packet as
/// it is captured, until the client goes away or a limit of the query is
/// reached.
pub async fn stream(
    State(s): State<AppState>,
    Path(name): Path<String>,
    q: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    check_name(&name)?;
    let cap = s
        .captures
        .get(&name)
        .ok_or_else(|| ApiError::NotFound(format!("no capture named {name}")))?;
    let sub = cap.subscribe();
    let max_packets = q.packets.filter(|n| *n > 0);
    let deadline = q
        .seconds
        .filter(|n| *n > 0)
        .map(|n| Instant::now() + Duration::from_secs(n));
    let mut enc = PcapngEncoder::new();
    let header = Bytes::from(enc.header());
    let body = futures::stream::unfold(
        (sub, enc, Some(header), 0u64),
        move |(mut sub, mut enc, header, sent)| async move {
            if let Some(h) = header {
                return Some((Ok::<Bytes, std::io::Error>(h), (sub, enc, None, sent)));
            }
            if max_packets.is_some_and(|m| sent >= m) {
                return None;
            }
            // Wait for one batch (or the deadline), then take whatever else
            // is already queued, so a burst goes out in one chunk.
            let first = match deadline {
                Some(d) => match tokio::time::timeout_at(d.into(), sub.next()).await {
                    Ok(b) => b,
                    Err(_) => return None,
                },
                None => sub.next().await,
            };
            let mut out = Vec::new();
            let mut n = sent;
            let mut next = Some(first?);
            while let Some(b) = next.take() {
                let take = match max_packets {
                    Some(m) => b
                        .len()
                        .min(usize::try_from(m.saturating_sub(n)).unwrap_or(usize::MAX)),
                    None => b.len(),
                };
                enc.encode_batch(&b, 0..take, &mut out);
                n += take as u64;
                if max_packets.is_some_and(|m| n >= m) || out.len() >= 256 * 1024 {
                    break;
                }
                next = sub.try_next();
            }
            Some((Ok(Bytes::from(out)), (sub, enc, None, n)))
        },
    );
    let _keep: Arc<Capture> = cap;
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-pcapng"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(body),
    )
        .into_response())
}
