//! `/api/v1/policies`: list, get, create or replace (one or a batch, all or
//! nothing), delete; `?dry_run=true` validates and reports without applying.
//!
//! A change is: build the next set → validate it whole → (dry run: report)
//! → write the policy files to temporary files → apply the set to the
//! datapath atomically → rename the files into place. If the datapath
//! refuses, the temporary files are dropped and nothing changed; if the
//! files cannot be committed, the datapath is put back to the previous set.

use std::collections::{BTreeMap, BTreeSet};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use vtap_core::engine::EngineError;
use vtap_core::policy::model::Policy;
use vtap_core::policy::validate::validate_set;

use super::error::parse_json;
use super::{ApiError, AppState, Core, policy_counters};
use crate::wire::{
    self, ChangeResult, ErrorDetail, PolicyBatch, PolicyList, PolicyState, PolicyStatus,
};

/// `?dry_run=true`.
#[derive(Debug, Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DryRun {
    /// Validate and report what would change, without applying.
    #[serde(default)]
    pub dry_run: bool,
}

fn dry_run(q: Result<Query<DryRun>, QueryRejection>) -> Result<bool, ApiError> {
    q.map(|Query(d)| d.dry_run)
        .map_err(|e| ApiError::BadRequest(format!("bad query: {}", e.body_text())))
}

/// The ETag of a policy: a hash of its canonical JSON (stable across
/// restarts; changes whenever the content changes).
pub fn etag(p: &Policy) -> String {
    let json = serde_json::to_vec(p).expect("policies serialise");
    let d = Sha256::digest(&json);
    d[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn status_of(c: &Core, p: &Policy) -> Result<PolicyStatus, ApiError> {
    let snap = c
        .engine
        .snapshot()
        .map_err(|e| ApiError::unavailable("reading counters", e))?;
    Ok(status_with(c, p, &snap))
}

fn status_with(c: &Core, p: &Policy, snap: &vtap_core::engine::Snapshot) -> PolicyStatus {
    let taps: Vec<String> = c
        .engine
        .taps()
        .iter()
        .filter(|(name, st)| {
            p.enabled && p.taps_match(name) && st.attached.iter().any(|d| p.direction.includes(*d))
        })
        .map(|(n, _)| n.clone())
        .collect();
    let condition = p.when.as_ref().map(|w| {
        let st = c.engine.conditions().status(&p.name);
        (w, st.cloned().unwrap_or_default())
    });
    let state = if !p.enabled {
        PolicyState {
            active: false,
            reason: Some("disabled".into()),
        }
    } else if let Some((w, st)) = condition.as_ref().filter(|(_, st)| !st.active) {
        let now = match (&st.value, &st.missing) {
            (Some(v), _) => format!("now {v:.2}"),
            (None, Some(m)) => m.clone(),
            (None, None) => "not evaluated yet".into(),
        };
        PolicyState {
            active: false,
            reason: Some(format!("condition does not hold: {} ({now})", w.describe())),
        }
    } else if taps.is_empty() {
        let failed: Vec<String> = c
            .engine
            .taps()
            .iter()
            .filter(|(name, st)| p.taps_match(name) && st.error.is_some())
            .map(|(n, st)| format!("{n}: {}", st.error.as_deref().unwrap_or_default()))
            .collect();
        let reason = if failed.is_empty() {
            format!("no existing interface matches taps {:?}", p.taps)
        } else {
            format!("not attached ({})", failed.join("; "))
        };
        PolicyState {
            active: false,
            reason: Some(reason),
        }
    } else {
        PolicyState {
            active: true,
            reason: None,
        }
    };
    let counters = snap
        .policies
        .iter()
        .find(|x| x.policy == p.name)
        .map(policy_counters)
        .unwrap_or_default();
    PolicyStatus {
        policy: serde_json::to_value(p).expect("policies serialise"),
        etag: etag(p),
        file: c
            .store
            .as_ref()
            .and_then(|s| s.file_of(&p.name))
            .map(|f| f.display().to_string()),
        status: state,
        taps,
        counters,
    }
}

#[utoipa::path(get, path = "/api/v1/policies", tag = "policies",
    responses((status = 200, body = PolicyList), (status = 401, body = wire::ErrorBody), (status = 503, body = wire::ErrorBody)))]
/// Every policy with its status, taps and counters.
pub async fn list(State(s): State<AppState>) -> Result<Json<PolicyList>, ApiError> {
    s.with_core(|c| {
        let snap = c
            .engine
            .snapshot()
            .map_err(|e| ApiError::unavailable("reading counters", e))?;
        let mut policies: Vec<PolicyStatus> = c
            .engine
            .policies()
            .iter()
            .map(|p| status_with(c, p, &snap))
            .collect();
        policies.sort_by(|a, b| a.policy["name"].as_str().cmp(&b.policy["name"].as_str()));
        Ok(Json(PolicyList { policies }))
    })
    .await
}

#[utoipa::path(get, path = "/api/v1/policies/{name}", tag = "policies",
    params(("name" = String, Path, description = "Policy name")),
    responses((status = 200, body = PolicyStatus, headers(("ETag" = String))), (status = 401, body = wire::ErrorBody),
              (status = 404, body = wire::ErrorBody), (status = 503, body = wire::ErrorBody)))]
/// One policy.
pub async fn get_one(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let st = s
        .with_core(move |c| {
            let p = c
                .engine
                .policies()
                .iter()
                .find(|p| p.name == name)
                .cloned()
                .ok_or_else(|| ApiError::NotFound(format!("no policy named {name:?}")))?;
            status_of(c, &p)
        })
        .await?;
    let tag = HeaderValue::from_str(&format!("\"{}\"", st.etag))
        .map_err(|e| ApiError::internal("etag", e))?;
    Ok(([(header::ETAG, tag)], Json(st)).into_response())
}

/// Parses a policy from a JSON body: 400 malformed, 422 wrong shape.
fn policy_from(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Policy, ApiError> {
    parse_json::<Policy>(body, limit)
}

/// `If-Match: "etag"` (or `*`).
fn if_match(h: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = h.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| ApiError::BadRequest("If-Match is not text".into()))?
        .trim();
    let v = v.strip_prefix("W/").unwrap_or(v);
    Ok(Some(v.trim_matches('"').to_string()))
}

#[utoipa::path(put, path = "/api/v1/policies/{name}", tag = "policies",
    params(("name" = String, Path, description = "Policy name (must equal the body's)"), DryRun,
           ("If-Match" = Option<String>, Header, description = "Apply only if the policy's ETag is still this")),
    request_body(content = Object, description = "A policy (the same object as a policy file)"),
    responses((status = 201, body = ChangeResult, description = "created"), (status = 200, body = ChangeResult, description = "replaced, unchanged, or a dry run"),
              (status = 401, body = wire::ErrorBody),
              (status = 400, body = wire::ErrorBody), (status = 409, body = wire::ErrorBody), (status = 413, body = wire::ErrorBody),
              (status = 422, body = wire::ErrorBody), (status = 503, body = wire::ErrorBody)))]
/// Creates or replaces one policy.
pub async fn put_one(
    State(s): State<AppState>,
    Path(name): Path<String>,
    q: Result<Query<DryRun>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let dry = dry_run(q)?;
    let expect = if_match(&headers)?;
    let p = policy_from(body, s.body_limit)?;
    if p.name != name {
        return Err(ApiError::Invalid(
            "the name in the path must equal the policy's name".into(),
            vec![ErrorDetail {
                field: "name".into(),
                message: format!("{:?} in the body, {name:?} in the path", p.name),
            }],
        ));
    }
    let guard = expect.map(|e| (name.clone(), e));
    let r = change(&s, vec![p], vec![], guard, dry).await?;
    let code = if r.created.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((code, Json(r)).into_response())
}

#[utoipa::path(put, path = "/api/v1/policies", tag = "policies", params(DryRun),
    request_body = PolicyBatch,
    responses((status = 200, body = ChangeResult), (status = 400, body = wire::ErrorBody), (status = 401, body = wire::ErrorBody), (status = 413, body = wire::ErrorBody),
              (status = 422, body = wire::ErrorBody), (status = 503, body = wire::ErrorBody)))]
/// Creates or replaces several policies, all or nothing (others stay).
pub async fn put_batch(
    State(s): State<AppState>,
    q: Result<Query<DryRun>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ChangeResult>, ApiError> {
    let dry = dry_run(q)?;
    let batch: PolicyBatch = parse_json(body, s.body_limit)?;
    let mut policies = Vec::new();
    let mut details = Vec::new();
    for (i, v) in batch.policies.into_iter().enumerate() {
        match serde_path_to_error::deserialize::<_, Policy>(v) {
            Ok(p) => policies.push(p),
            Err(e) => details.push(ErrorDetail {
                field: format!("policies[{i}].{}", e.path()),
                message: e.into_inner().to_string(),
            }),
        }
    }
    if !details.is_empty() {
        return Err(ApiError::Invalid("invalid policies".into(), details));
    }
    let names: BTreeSet<&str> = policies.iter().map(|p| p.name.as_str()).collect();
    if names.len() != policies.len() {
        return Err(ApiError::Invalid(
            "a policy name appears twice in the batch".into(),
            vec![ErrorDetail {
                field: "policies".into(),
                message: "duplicate names".into(),
            }],
        ));
    }
    Ok(Json(change(&s, policies, vec![], None, dry).await?))
}

#[utoipa::path(delete, path = "/api/v1/policies/{name}", tag = "policies",
    params(("name" = String, Path, description = "Policy name"), DryRun,
           ("If-Match" = Option<String>, Header, description = "Delete only if the policy's ETag is still this")),
    responses((status = 200, body = ChangeResult), (status = 400, body = wire::ErrorBody), (status = 401, body = wire::ErrorBody), (status = 404, body = wire::ErrorBody), (status = 409, body = wire::ErrorBody),
              (status = 503, body = wire::ErrorBody)))]
/// Deletes one policy.
pub async fn delete_one(
    State(s): State<AppState>,
    Path(name): Path<String>,
    q: Result<Query<DryRun>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<ChangeResult>, ApiError> {
    let dry = dry_run(q)?;
    let guard = if_match(&headers)?.map(|e| (name.clone(), e));
    Ok(Json(change(&s, vec![], vec![name], guard, dry).await?))
}

/// Applies upserts and deletions as one atomic, durable change.
async fn change(
    s: &AppState,
    upserts: Vec<Policy>,
    deletes: Vec<String>,
    guard: Option<(String, String)>,
    dry_run: bool,
) -> Result<ChangeResult, ApiError> {
    let links = vtap_core::netlink::list_links()
        .await
        .map_err(|e| ApiError::unavailable("listing interfaces", e))?;
    let r = s
        .with_core(move |c| {
            let current: Vec<Policy> = c.engine.policies().to_vec();
            let by_name: BTreeMap<&str, &Policy> = current.iter().map(|p| (p.name.as_str(), p)).collect();
            if let Some((name, want)) = &guard {
                match by_name.get(name.as_str()) {
                    Some(p) if want == "*" || etag(p) == *want => {}
                    Some(p) => {
                        return Err(ApiError::Conflict(format!(
                            "policy {name:?} changed since you read it (If-Match {want:?}, now {:?})",
                            etag(p)
                        )));
                    }
                    None => return Err(ApiError::Conflict(format!("policy {name:?} does not exist (If-Match given)"))),
                }
            }
            let mut result = ChangeResult {
                dry_run,
                created: vec![],
                replaced: vec![],
                deleted: vec![],
                unchanged: vec![],
                etags: BTreeMap::new(),
            };
            for d in &deletes {
                if !by_name.contains_key(d.as_str()) {
                    return Err(ApiError::NotFound(format!("no policy named {d:?}")));
                }
                result.deleted.push(d.clone());
            }
            let mut next: Vec<Policy> = current.iter().filter(|p| !deletes.contains(&p.name)).cloned().collect();
            for p in upserts {
                match by_name.get(p.name.as_str()) {
                    Some(old) if **old == p => result.unchanged.push(p.name.clone()),
                    Some(_) => {
                        result.etags.insert(p.name.clone(), etag(&p));
                        result.replaced.push(p.name.clone());
                    }
                    None => {
                        result.etags.insert(p.name.clone(), etag(&p));
                        result.created.push(p.name.clone());
                    }
                }
                match next.iter_mut().find(|x| x.name == p.name) {
                    Some(slot) => *slot = p,
                    None => next.push(p),
                }
            }
            let errors = validate_set(&next);
            if !errors.is_empty() {
                return Err(invalid(errors));
            }
            if dry_run || (result.created.is_empty() && result.replaced.is_empty() && result.deleted.is_empty()) {
                return Ok(result);
            }
            let changed: BTreeSet<String> = result.created.iter().chain(&result.replaced).cloned().collect();
            let deleted: BTreeSet<String> = result.deleted.iter().cloned().collect();
            let prepared = match &c.store {
                Some(store) => Some(
                    store
                        .prepare(&next, &changed, &deleted)
                        .map_err(|e| ApiError::unavailable("writing the policy files", e))?,
                ),
                None => None,
            };
            c.engine.apply(next, &links).map_err(|e| match e {
                EngineError::Invalid(errors) => invalid(errors),
                other => ApiError::unavailable("applying the policy set to the datapath", other),
            })?;
            if let (Some(store), Some(p)) = (c.store.as_mut(), prepared) {
                store.adopt(&p);
                if let Err(e) = p.commit() {
                    // Put the datapath back: the files are the truth.
                    if let Err(e2) = c.engine.apply(current, &links) {
                        tracing::error!(error = %e2, "rolling back the datapath failed");
                    }
                    return Err(ApiError::unavailable("committing the policy files", e));
                }
            }
            for n in result.created.iter().chain(&result.replaced) {
                tracing::info!(policy = %n, "policy applied over REST");
            }
            for n in &result.deleted {
                tracing::info!(policy = %n, "policy deleted over REST");
            }
            Ok(result)
        })
        .await;
    s.update_ready();
    r
}

fn invalid(errors: Vec<vtap_core::policy::validate::FieldError>) -> ApiError {
    ApiError::Invalid(
        format!("invalid policy set ({} problems)", errors.len()),
        errors
            .into_iter()
            .map(|e| ErrorDetail {
                field: e.field,
                message: e.message,
            })
            .collect(),
    )
}
