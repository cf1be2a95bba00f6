//! Pcap sink: records from the datapath's ring buffer → pcapng files
//! (rotated, with stop conditions, surviving a full disk) and live streams.
//!
//! Data flow: `ebpf/vtap_tc.c` reserves a `struct vtap_pcap_rec` + packet
//! bytes in the `vtap_pcap_ring` ring buffer → [`ring`] drains it and turns
//! each record into a [`Packet`] → [`sink::Captures`] hands it to the
//! capture's [`files::CaptureFiles`] (pcapng through [`pcapng`]) and to the
//! capture's live subscribers.

pub mod files;
pub mod name;
pub mod pcapng;
pub mod ring;
pub mod ringbuf;
pub mod sink;

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use vtap_abi::Dir;

/// One captured packet, as user space hands it to file writers and streams.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Wall-clock time of the capture, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// Length of the packet on the wire (the skb length; a GSO super-packet
    /// keeps its whole length).
    pub orig_len: u32,
    /// The captured bytes (`data.len()` is the caplen, ≤ `orig_len`): a
    /// slice of the buffer of one ring drain, shared, not copied per packet.
    pub data: Bytes,
    /// Where it was seen.
    pub iface: IfaceDir,
    /// Names of the policies that sent it to this capture (at least one);
    /// shared because consecutive packets mostly name the same policies.
    pub policies: Arc<[String]>,
}

/// A tapped interface and direction: one pcapng interface description block.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfaceDir {
    /// Kernel interface index.
    pub ifindex: u32,
    /// Interface name at capture time (`if<ifindex>` when unknown).
    pub ifname: Arc<str>,
    /// Direction relative to the VM.
    pub dir: Dir,
}

/// The packets of one capture from one drain of the ring: the unit handed to
/// the file writer and to every live subscriber (one allocation and one
/// hand-off per drain, not per packet).
#[derive(Debug, Default)]
pub struct Batch {
    /// Sequence number of the first packet in the capture's stream (the
    /// packets of a capture are numbered from 0 in delivery order; a
    /// subscriber that skipped batches knows how many packets it lost).
    pub first_seq: u64,
    /// The packets, in ring order.
    pub packets: Vec<Packet>,
}

/// A shared, immutable batch.
pub type SharedBatch = Arc<Batch>;

/// File settings of one capture (the `captures:` section of the daemon
/// config; defaults for captures created by a policy).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureConfig {
    /// Start a new file when the current one reaches this size (MiB), 0 = never.
    pub rotate_mib: u64,
    /// Start a new file after this many seconds, 0 = never.
    pub rotate_seconds: u64,
    /// Keep at most this many files (oldest deleted), 0 = unlimited.
    pub max_files: u32,
    /// Stop writing files after this many packets, 0 = no limit.
    pub stop_packets: u64,
    /// Stop writing files after this many captured bytes, 0 = no limit.
    pub stop_bytes: u64,
    /// Stop writing files this many seconds after the capture started, 0 = no limit.
    pub stop_seconds: u64,
    /// Write files at all (false = streaming only).
    pub files: bool,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            rotate_mib: 100,
            rotate_seconds: 0,
            max_files: 10,
            stop_packets: 0,
            stop_bytes: 0,
            stop_seconds: 0,
            files: true,
        }
    }
}
