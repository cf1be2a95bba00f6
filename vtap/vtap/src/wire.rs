//! The JSON objects of the REST API (`/api/v1`), shared by the server
//! (`api/`) and the CLI client (`cli/`), and described in the OpenAPI
//! document the daemon serves (`/api/v1/openapi.json`).
//!
//! A policy travels as the same object as the policy file
//! (`vtap_core::policy::model::Policy`); it is described in the OpenAPI
//! document as a free-form object whose fields are documented in
//! `mirror-policies/README.md`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An error: what went wrong and, for invalid input, every problem with its
/// field path.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
    /// Every problem, with the field it concerns.
    #[serde(default)]
    pub details: Vec<ErrorDetail>,
}

/// One problem of an invalid request.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ErrorDetail {
    /// Field path (`outputs[0].vlan`), or the file for file problems.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// Packets and bytes.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct PacketsBytes {
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// Counters of one policy.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct PolicyCounters {
    /// Matched packets/bytes by direction (`ingress`, `egress`).
    pub matched: BTreeMap<String, PacketsBytes>,
    /// Copies delivered, by output (`IFACE` or `IFACE.VLAN`).
    pub mirrored: BTreeMap<String, u64>,
    /// Copies not delivered, by reason (`clone_failed`, `output_down`, …).
    pub dropped: BTreeMap<String, u64>,
}

/// Whether a policy is in effect, and why not.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct PolicyState {
    /// In effect on at least one attached tap.
    pub active: bool,
    /// Why it is not (disabled, no matching interface, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A policy as the daemon holds it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct PolicyStatus {
    /// The policy object (the same as the policy file).
    #[schema(value_type = Object)]
    pub policy: serde_json::Value,
    /// Version of this policy: changes whenever its content changes. Send
    /// it as `If-Match: "<etag>"` to update only what you read.
    pub etag: String,
    /// The file the policy is persisted in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// In effect or not.
    pub status: PolicyState,
    /// Interfaces the policy is attached to now.
    pub taps: Vec<String>,
    /// Its counters.
    pub counters: PolicyCounters,
}

/// `GET /api/v1/policies`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct PolicyList {
    /// Every policy, by name.
    pub policies: Vec<PolicyStatus>,
}

/// What a change did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ChangeResult {
    /// True when nothing was applied (`?dry_run=true`).
    pub dry_run: bool,
    /// Policies created.
    pub created: Vec<String>,
    /// Policies whose content changed.
    pub replaced: Vec<String>,
    /// Policies deleted.
    pub deleted: Vec<String>,
    /// Policies sent but identical to the running ones.
    pub unchanged: Vec<String>,
    /// New ETag of every created or replaced policy.
    pub etags: BTreeMap<String, String>,
}

/// `PUT /api/v1/policies`: several policies, applied all or nothing.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct PolicyBatch {
    /// The policies to create or replace (others are left alone).
    #[schema(value_type = Vec<Object>)]
    pub policies: Vec<serde_json::Value>,
}

/// Counters of one tap in one direction.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct TapCounters {
    /// Packets seen.
    pub packets: u64,
    /// Bytes seen.
    pub bytes: u64,
    /// Packets whose headers ended early.
    pub truncated: u64,
    /// Packets that matched at least one policy.
    pub classified: u64,
}

/// An interface vtap is attached to or configured for.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct TapInfo {
    /// Interface name.
    pub name: String,
    /// Interface index (0 when it does not exist).
    pub ifindex: u32,
    /// Attach mode: `tcx` (both directions, mirroring and captures) or
    /// `xdp` (ingress only, counting and captures; see `--xdp-tap`).
    pub mode: String,
    /// Directions wanted (by policies or explicitly).
    pub directions: Vec<String>,
    /// Directions attached now.
    pub attached: Vec<String>,
    /// `attached`, `partial`, `missing` (interface absent), `error`.
    pub state: String,
    /// Why it is not attached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Attached explicitly (`PUT /api/v1/taps/{iface}`).
    pub explicit: bool,
    /// Policies that select it.
    pub policies: Vec<String>,
    /// Counters by direction.
    pub counters: BTreeMap<String, TapCounters>,
}

/// `GET /api/v1/taps`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct TapList {
    /// Every tap.
    pub taps: Vec<TapInfo>,
}

/// `PUT /api/v1/taps/{iface}` body (optional).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TapRequest {
    /// `ingress`, `egress` or both (default both).
    #[serde(default)]
    pub directions: Vec<String>,
}

/// Counters of one output.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct OutputStats {
    /// `IFACE` or `IFACE.VLAN`.
    pub output: String,
    /// Copies sent.
    pub sent: u64,
    /// Copies that failed.
    pub failed: u64,
}

/// Counters of one policy, by name.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct PolicyStats {
    /// Policy name.
    pub name: String,
    /// Its counters.
    #[serde(flatten)]
    pub counters: PolicyCounters,
}

/// `GET /api/v1/stats`: one consistent read of every counter.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Stats {
    /// Per tap.
    pub taps: Vec<TapInfo>,
    /// Per policy.
    pub policies: Vec<PolicyStats>,
    /// Per output.
    pub outputs: Vec<OutputStats>,
    /// Atomic policy-set switches since start.
    pub generation_flips: u64,
}

/// `GET /api/v1/captures`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct CaptureList {
    /// Every capture (named by a policy, or configured).
    pub captures: Vec<CaptureInfo>,
}

/// One capture: its files and every counter of its packets, from the
/// datapath to the disk and the live streams.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct CaptureInfo {
    /// Capture name.
    pub name: String,
    /// Policies of the running set that name it.
    pub policies: Vec<String>,
    /// File output: `idle` (no packet yet), `writing`, `stopped` (a stop
    /// condition held), `error` (I/O failed, e.g. disk full: retried every
    /// second), `disabled` (streaming only).
    pub state: String,
    /// The stop reason or the I/O error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_detail: Option<String>,
    /// Directory of its files.
    pub dir: String,
    /// The file being written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// Its files, oldest first.
    pub files: Vec<CaptureFile>,
    /// Packets the datapath put in the ring for it.
    pub packets: u64,
    /// Their original bytes.
    pub bytes: u64,
    /// Their captured bytes.
    pub cap_bytes: u64,
    /// Packets lost because the ring was full (also in
    /// `vtap_policy_dropped_copies_total{reason="ring_full"}`).
    pub ring_full: u64,
    /// Packets read from the ring.
    pub received: u64,
    /// Packets written to files.
    pub written_packets: u64,
    /// Bytes written to files.
    pub written_bytes: u64,
    /// Packets not written because file output was in error.
    pub not_written_error: u64,
    /// Packets not written because a stop condition held.
    pub not_written_stopped: u64,
    /// Packets not written because the writer's queue was full.
    pub writer_queue_full: u64,
    /// Capture-to-disk delay of the last written packet, seconds.
    pub writer_lag_seconds: f64,
    /// Live subscribers now.
    pub subscribers: u64,
    /// Packets sent to live subscribers.
    pub streamed: u64,
    /// Packets live subscribers skipped because they fell behind.
    pub stream_lost: u64,
    /// Settings (rotation, stop conditions).
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
}

/// One file of a capture.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct CaptureFile {
    /// Path.
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
}
