//! Pcap sink: records from the datapath's ring buffer → pcapng files
//! (rotated, with stop conditions, surviving a full disk) and live streams.
//!
//! Data flow: `ebpf/vtap_tc.c` reserves a `struct vtap_pcap_rec` + packet
//! bytes in the `vtap_pcap_ring` ring buffer → [`ring`] walks it
//! ([`ringbuf::PcapRing`]) and encodes each record once, straight from the
//! ring, as a pcapng enhanced packet block of its capture's [`Batch`]
//! ([`pcapng::CaptureEncoder`]) → [`sink::Capture`] hands the batch to the
//! capture's [`files::CaptureFiles`] and to its live subscribers, which
//! write the blocks as they are (after the interface blocks they need).

pub mod direct;
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

/// One captured packet as a value, for [`pcapng::CaptureEncoder::push_packet`]
/// (tests build these; the ring reader encodes records without them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Wall-clock time of the capture, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// Length of the packet on the wire (the skb length; a GSO super-packet
    /// keeps its whole length).
    pub orig_len: u32,
    /// The captured bytes (`data.len()` is the caplen, ≤ `orig_len`).
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

/// The packets of one capture from one drain of the ring, already encoded
/// as pcapng enhanced packet blocks: the unit handed to the file writer and
/// to every live subscriber (one allocation and one hand-off per drain, not
/// per packet), written by each of them as it is, a range of blocks at a
/// time.
///
/// Interface ids in the blocks are the capture's own (assigned in the order
/// the capture first saw each tap and direction, see
/// [`pcapng::CaptureEncoder`]), the same in every file and stream of the
/// capture: each output writes the interface description blocks of
/// [`Batch::ifaces`] it has not written in its current section yet before
/// the blocks that use them ([`pcapng::PcapngEncoder::describe`]).
#[derive(Debug, Default)]
pub struct Batch {
    /// Sequence number of the first packet in the capture's stream (the
    /// packets of a capture are numbered from 0 in delivery order; a
    /// subscriber that skipped batches knows how many packets it lost).
    pub first_seq: u64,
    /// The capture's interfaces as of this batch: interface id `i` is
    /// `ifaces[i]`.
    pub ifaces: Arc<[IfaceDir]>,
    /// The enhanced packet blocks, back to back, in ring order.
    pub blocks: Bytes,
    /// Per packet: where its block ends in `blocks`, and its caplen.
    pub index: Vec<BlockRef>,
    /// Timestamp of the last packet (ns since the Unix epoch).
    pub last_ts_ns: u64,
}

/// Where one packet's block ends in its batch, and how many bytes of the
/// packet it holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockRef {
    /// End offset of the block in [`Batch::blocks`].
    pub end: u32,
    /// Captured bytes of the packet.
    pub caplen: u32,
}

impl Batch {
    /// Number of packets.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// No packets.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Start offset of packet `i`'s block (`i == len()`: the end).
    pub fn start(&self, i: usize) -> usize {
        match i {
            0 => 0,
            i => self.index[i - 1].end as usize,
        }
    }

    /// The blocks of packets `range`, contiguous.
    pub fn blocks_of(&self, range: std::ops::Range<usize>) -> &[u8] {
        &self.blocks[self.start(range.start)..self.start(range.end)]
    }

    /// Captured bytes of all packets (the packet data, not the blocks).
    pub fn caplen_bytes(&self) -> u64 {
        self.index.iter().map(|r| u64::from(r.caplen)).sum()
    }
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
