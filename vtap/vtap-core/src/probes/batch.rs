//! Reading whole BPF maps fast: batch syscalls, with an iterative fallback.
//!
//! Dynmon read a map element by element (one `get_next_key` and one
//! `lookup` syscall per entry, 1.3 s for 10k entries). Here a map is read
//! with `BPF_MAP_LOOKUP_BATCH` — thousands of entries per syscall, into two
//! flat buffers ([`Entries`]) — and reset with
//! `BPF_MAP_LOOKUP_AND_DELETE_BATCH` (hash maps) or read-then-zero with
//! `BPF_MAP_UPDATE_BATCH` (arrays, which cannot delete). When the kernel or
//! the map type has no batch operation (`EINVAL`, `ENOTSUPP`), the same
//! result is produced iteratively (`get_next_key` + `lookup`). Queues and
//! stacks have no keys and no non-destructive read: they are drained with
//! `BPF_MAP_LOOKUP_AND_DELETE_ELEM` (pop), whichever function reads them.
//!
//! Per-CPU maps return every possible CPU's slot per entry, each slot
//! [`per_cpu_stride`] bytes (the value size rounded up to 8);
//! [`super::btf::Layout::decode_per_cpu`] and
//! [`super::btf::Layout::aggregate`] decode them.
//!
//! Every public function asks the kernel (`BPF_OBJ_GET_INFO_BY_FD`) what the
//! map is before reading, and sizes its buffers from that answer: a caller's
//! wrong idea of a map is an error, never a buffer overrun. Element-wise
//! syscalls come from [`crate::datapath::sys`]; the batch, pop and info
//! commands that it lacks are wrapped here in the same style.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::OnceLock;

use crate::datapath::sys;

const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;
/// The kernel's internal "operation not supported" that leaks to user
/// space from the bpf syscall (not `EOPNOTSUPP`).
const ENOTSUPP: i32 = 524;
/// Entries asked for per batch syscall (and zeroed per update batch).
const CHUNK: usize = 1 << 16;

/// Errors of whole-map reads.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// A bpf syscall failed.
    #[error("{op} on map {map}: {source}")]
    Os {
        /// The operation.
        op: &'static str,
        /// The map (name and id as the kernel knows it).
        map: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The map's type cannot be read as a whole.
    #[error(
        "map {map} has type {map_type}, which cannot be read (hash, array, LRU hash, per-CPU array/hash, LRU per-CPU hash, LPM trie, queue and stack can)"
    )]
    UnsupportedType {
        /// The map.
        map: String,
        /// Its `BPF_MAP_TYPE_*`.
        map_type: u32,
    },
    /// The caller described the map differently than the kernel does.
    #[error("map {map}: {what} is {actual} in the kernel, not {expected}")]
    Mismatch {
        /// The map.
        map: String,
        /// The attribute that differs.
        what: &'static str,
        /// What the caller said.
        expected: u64,
        /// What the kernel says.
        actual: u64,
    },
    /// The possible CPUs could not be read.
    #[error("reading the possible CPUs: {0}")]
    Cpus(#[source] io::Error),
}

type Result<T, E = BatchError> = std::result::Result<T, E>;

/// The map types this module reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MapType {
    /// `BPF_MAP_TYPE_HASH`.
    Hash,
    /// `BPF_MAP_TYPE_ARRAY`.
    Array,
    /// `BPF_MAP_TYPE_PERCPU_HASH`.
    PerCpuHash,
    /// `BPF_MAP_TYPE_PERCPU_ARRAY`.
    PerCpuArray,
    /// `BPF_MAP_TYPE_LRU_HASH`.
    LruHash,
    /// `BPF_MAP_TYPE_LRU_PERCPU_HASH`.
    LruPerCpuHash,
    /// `BPF_MAP_TYPE_LPM_TRIE` (batch lookups where the kernel has them;
    /// reset key by key).
    LpmTrie,
    /// `BPF_MAP_TYPE_QUEUE` (drained by popping).
    Queue,
    /// `BPF_MAP_TYPE_STACK` (drained by popping).
    Stack,
}

impl MapType {
    /// From a `BPF_MAP_TYPE_*` number.
    pub fn from_raw(raw: u32) -> Option<MapType> {
        Some(match raw {
            1 => MapType::Hash,
            2 => MapType::Array,
            5 => MapType::PerCpuHash,
            6 => MapType::PerCpuArray,
            9 => MapType::LruHash,
            10 => MapType::LruPerCpuHash,
            11 => MapType::LpmTrie,
            22 => MapType::Queue,
            23 => MapType::Stack,
            _ => return None,
        })
    }

    /// The `BPF_MAP_TYPE_*` number.
    pub fn raw(self) -> u32 {
        match self {
            MapType::Hash => 1,
            MapType::Array => 2,
            MapType::PerCpuHash => 5,
            MapType::PerCpuArray => 6,
            MapType::LruHash => 9,
            MapType::LruPerCpuHash => 10,
            MapType::LpmTrie => 11,
            MapType::Queue => 22,
            MapType::Stack => 23,
        }
    }

    /// Whether values hold one slot per possible CPU.
    pub fn is_per_cpu(self) -> bool {
        matches!(
            self,
            MapType::PerCpuHash | MapType::PerCpuArray | MapType::LruPerCpuHash
        )
    }

    /// Whether it is an array (keys `0..max_entries`, entries never absent,
    /// reset by zeroing).
    pub fn is_array(self) -> bool {
        matches!(self, MapType::Array | MapType::PerCpuArray)
    }

    /// Whether it is a queue or stack (no keys; read by popping).
    pub fn is_queue(self) -> bool {
        matches!(self, MapType::Queue | MapType::Stack)
    }
}

/// Bytes per CPU in a per-CPU value: the value size rounded up to 8.
pub fn per_cpu_stride(value_size: usize) -> usize {
    value_size.div_ceil(8) * 8
}

/// Bytes of one value as the syscalls transfer it: `value_size`, or
/// `ncpus` strides for per-CPU maps.
pub fn value_len(map_type: MapType, value_size: usize, ncpus: usize) -> usize {
    if map_type.is_per_cpu() {
        per_cpu_stride(value_size) * ncpus
    } else {
        value_size
    }
}

/// Number of possible CPUs (the slots of a per-CPU value), read once.
pub fn possible_cpus() -> Result<usize> {
    static CPUS: OnceLock<usize> = OnceLock::new();
    if let Some(n) = CPUS.get() {
        return Ok(*n);
    }
    let n = aya::util::nr_cpus().map_err(|(_, e)| BatchError::Cpus(e))?;
    Ok(*CPUS.get_or_init(|| n))
}

/// What the kernel says about a map (`struct bpf_map_info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapInfo {
    /// `BPF_MAP_TYPE_*`.
    pub map_type: u32,
    /// Kernel map id.
    pub id: u32,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes (one CPU's slot for per-CPU maps).
    pub value_size: u32,
    /// Maximum number of entries.
    pub max_entries: u32,
    /// `BPF_F_*` flags.
    pub map_flags: u32,
    /// The (possibly truncated, 15 bytes) name.
    pub name: String,
    /// Id of the BTF object loaded with the map (0: none).
    pub btf_id: u32,
    /// Key type id in that BTF (0: none).
    pub btf_key_type_id: u32,
    /// Value type id in that BTF (0: none).
    pub btf_value_type_id: u32,
}

impl MapInfo {
    /// Asks the kernel about the map behind `fd`.
    pub fn of(fd: BorrowedFd<'_>) -> Result<MapInfo> {
        let raw = obj_info(fd).map_err(|source| BatchError::Os {
            op: "BPF_OBJ_GET_INFO_BY_FD",
            map: format!("fd {}", fd.as_raw_fd()),
            source,
        })?;
        let u =
            |off: usize| u32::from_ne_bytes([raw[off], raw[off + 1], raw[off + 2], raw[off + 3]]);
        let name = &raw[24..40];
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        Ok(MapInfo {
            map_type: u(0),
            id: u(4),
            key_size: u(8),
            value_size: u(12),
            max_entries: u(16),
            map_flags: u(20),
            name: String::from_utf8_lossy(&name[..end]).into_owned(),
            btf_id: u(64),
            btf_key_type_id: u(68),
            btf_value_type_id: u(72),
        })
    }

    fn label(&self) -> String {
        format!("{:?} (id {})", self.name, self.id)
    }
}

/// How to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Method {
    /// Batch syscalls, falling back to iteration when unsupported.
    #[default]
    Auto,
    /// Batch syscalls only: the kernel refusing them (e.g. no batch
    /// delete for LPM tries) is an error. Queues and stacks are popped
    /// whatever the method.
    Batch,
    /// One syscall per element (what the fallback does); for comparisons.
    Iterative,
}

/// The entries of a map, in two flat buffers: `len` keys of `key_size`
/// bytes and `len` values of `value_len` bytes (per-CPU values hold
/// `ncpus` slots of [`per_cpu_stride`] bytes).
#[derive(Debug, Clone)]
pub struct Entries {
    map_type: MapType,
    key_size: usize,
    value_size: usize,
    value_len: usize,
    ncpus: usize,
    keys: Vec<u8>,
    values: Vec<u8>,
    len: usize,
    batched: bool,
}

impl Entries {
    fn new(g: &Geometry) -> Entries {
        Entries {
            map_type: g.map_type,
            key_size: g.key_size,
            value_size: g.value_size,
            value_len: g.value_len,
            ncpus: g.ncpus,
            keys: Vec::new(),
            values: Vec::new(),
            len: 0,
            batched: false,
        }
    }

    fn push(&mut self, key: &[u8], value: &[u8]) {
        self.keys.extend_from_slice(key);
        self.values.extend_from_slice(value);
        self.len += 1;
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The map's type.
    pub fn map_type(&self) -> MapType {
        self.map_type
    }

    /// Bytes per key (0 for queues and stacks).
    pub fn key_size(&self) -> usize {
        self.key_size
    }

    /// The map's value size (one CPU's slot for per-CPU maps).
    pub fn value_size(&self) -> usize {
        self.value_size
    }

    /// Bytes per value as stored here (all CPUs' slots for per-CPU maps).
    pub fn value_len(&self) -> usize {
        self.value_len
    }

    /// Slots per value: the possible CPUs for per-CPU maps, else 1.
    pub fn ncpus(&self) -> usize {
        if self.map_type.is_per_cpu() {
            self.ncpus
        } else {
            1
        }
    }

    /// Whether batch syscalls did the work (`false`: iteration or popping).
    pub fn batched(&self) -> bool {
        self.batched
    }

    /// The key of entry `i`.
    pub fn key(&self, i: usize) -> Option<&[u8]> {
        if i >= self.len {
            return None;
        }
        self.keys.get(i * self.key_size..(i + 1) * self.key_size)
    }

    /// The value of entry `i`.
    pub fn value(&self, i: usize) -> Option<&[u8]> {
        if i >= self.len {
            return None;
        }
        self.values
            .get(i * self.value_len..(i + 1) * self.value_len)
    }

    /// `(key, value)` of every entry, in the order the kernel gave them.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&[u8], &[u8])> + '_ {
        (0..self.len).map(|i| (self.key(i).unwrap_or(&[]), self.value(i).unwrap_or(&[])))
    }

    /// Copies every entry into its own pair of vectors.
    pub fn to_pairs(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
    }
}

/// Sizes of a map, all from the kernel.
#[derive(Debug)]
struct Geometry {
    label: String,
    map_type: MapType,
    key_size: usize,
    value_size: usize,
    value_len: usize,
    max_entries: usize,
    ncpus: usize,
}

impl Geometry {
    fn of(info: &MapInfo) -> Result<Geometry> {
        let map_type =
            MapType::from_raw(info.map_type).ok_or_else(|| BatchError::UnsupportedType {
                map: info.label(),
                map_type: info.map_type,
            })?;
        let ncpus = possible_cpus()?;
        Ok(Geometry {
            label: info.label(),
            map_type,
            key_size: info.key_size as usize,
            value_size: info.value_size as usize,
            value_len: value_len(map_type, info.value_size as usize, ncpus),
            max_entries: info.max_entries as usize,
            ncpus,
        })
    }

    fn os(&self, op: &'static str) -> impl FnOnce(io::Error) -> BatchError + '_ {
        move |source| BatchError::Os {
            op,
            map: self.label.clone(),
            // ENOTSUPP is kernel-internal: libc has no text for it.
            source: if source.raw_os_error() == Some(ENOTSUPP) {
                io::Error::new(
                    io::ErrorKind::Unsupported,
                    "not supported for this map type by the kernel (ENOTSUPP)",
                )
            } else {
                source
            },
        }
    }
}

/// Checks the caller's description of a map against the kernel's.
fn verify(
    fd: BorrowedFd<'_>,
    map_type: MapType,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    ncpus: usize,
) -> Result<MapInfo> {
    let info = MapInfo::of(fd)?;
    let cpus = possible_cpus()?;
    for (what, expected, actual) in [
        ("type", map_type.raw() as u64, info.map_type as u64),
        ("key size", key_size as u64, info.key_size as u64),
        ("value size", value_size as u64, info.value_size as u64),
        ("max_entries", max_entries as u64, info.max_entries as u64),
        ("the number of possible CPUs", ncpus as u64, cpus as u64),
    ] {
        if expected != actual {
            return Err(BatchError::Mismatch {
                map: info.label(),
                what,
                expected,
                actual,
            });
        }
    }
    Ok(info)
}

/// Reads every entry of a map (see [`read`]), checking first that the map
/// is what the caller says; returns one `(key, value)` pair per entry.
/// Queues and stacks are drained (popped).
pub fn read_all(
    fd: BorrowedFd<'_>,
    map_type: MapType,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    ncpus: usize,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let info = verify(fd, map_type, key_size, value_size, max_entries, ncpus)?;
    Ok(read_map(fd, &info, Method::Auto, false)?.to_pairs())
}

/// Reads every entry and resets the map (see [`read_and_delete`]), checking
/// first that the map is what the caller says.
pub fn read_and_delete_all(
    fd: BorrowedFd<'_>,
    map_type: MapType,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    ncpus: usize,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let info = verify(fd, map_type, key_size, value_size, max_entries, ncpus)?;
    Ok(read_map(fd, &info, Method::Auto, true)?.to_pairs())
}

/// Reads every entry of the map behind `fd`: batch lookups (hash and array
/// types), else one lookup per key; queues and stacks are popped empty.
pub fn read(fd: BorrowedFd<'_>, method: Method) -> Result<Entries> {
    read_map(fd, &MapInfo::of(fd)?, method, false)
}

/// Reads every entry and resets the map, so the next read sees only what
/// came after: hash types are emptied (`LOOKUP_AND_DELETE_BATCH`, else key
/// by key), arrays are read and then zeroed (`UPDATE_BATCH`, else element
/// by element — updates landing between the read and the zeroing of an
/// element are lost), queues and stacks are popped empty.
pub fn read_and_delete(fd: BorrowedFd<'_>, method: Method) -> Result<Entries> {
    read_map(fd, &MapInfo::of(fd)?, method, true)
}

fn is_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)
    )
}

fn read_map(fd: BorrowedFd<'_>, info: &MapInfo, method: Method, delete: bool) -> Result<Entries> {
    let g = Geometry::of(info)?;
    if g.map_type.is_queue() {
        return pop_all(fd, &g);
    }
    let batch = method != Method::Iterative;
    let entries = if batch {
        let r = if g.map_type.is_array() {
            batch_array(fd, &g)
        } else {
            batch_hash(fd, &g, delete)
        };
        match r {
            Ok(e) => Some(e),
            Err(e) if method == Method::Auto && is_unsupported(&e) => None,
            Err(e) => {
                let op = match (g.map_type.is_array(), delete) {
                    (false, true) => "BPF_MAP_LOOKUP_AND_DELETE_BATCH",
                    _ => "BPF_MAP_LOOKUP_BATCH",
                };
                return Err(g.os(op)(e));
            }
        }
    } else {
        None
    };
    let entries = match entries {
        Some(e) => e,
        None if g.map_type.is_array() => iter_array(fd, &g)?,
        None => iter_hash(fd, &g, delete)?,
    };
    if delete && g.map_type.is_array() {
        zero_array(fd, &g, entries.batched)?;
    }
    Ok(entries)
}

/// Whole array in batches (keys are 0..max_entries).
fn batch_array(fd: BorrowedFd<'_>, g: &Geometry) -> io::Result<Entries> {
    let mut e = Entries::new(g);
    e.values = vec![0u8; g.max_entries * g.value_len];
    sys::lookup_batch_array(fd, g.max_entries as u32, &mut e.values)?;
    e.keys = (0..g.max_entries as u32)
        .flat_map(u32::to_ne_bytes)
        .collect();
    e.len = g.max_entries;
    e.batched = true;
    Ok(e)
}

/// Hash-type maps in batches of up to [`CHUNK`] entries, optionally
/// deleting what was read.
fn batch_hash(fd: BorrowedFd<'_>, g: &Geometry, delete: bool) -> io::Result<Entries> {
    let (ks, vl) = (g.key_size, g.value_len);
    let mut e = Entries::new(g);
    let mut want = g.max_entries.clamp(1, CHUNK);
    // The resume token: a bucket index (u32) for hash maps.
    let tok_len = ks.max(8);
    let mut in_tok = vec![0u8; tok_len];
    let mut out_tok = vec![0u8; tok_len];
    let mut first = true;
    loop {
        e.keys.resize((e.len + want) * ks, 0);
        e.values.resize((e.len + want) * vl, 0);
        let r = lookup_batch(
            fd,
            delete,
            (!first).then_some(in_tok.as_slice()),
            &mut out_tok,
            &mut e.keys[e.len * ks..],
            &mut e.values[e.len * vl..],
            want,
            (ks, vl),
        );
        match r {
            Ok(step) => {
                e.len += step.count;
                if step.done || step.count == 0 {
                    break;
                }
                first = false;
                in_tok.copy_from_slice(&out_tok);
            }
            // One bucket holds more entries than asked for: ask for more.
            Err(err) if err.raw_os_error() == Some(libc::ENOSPC) && want < g.max_entries * 2 => {
                want = (want * 2).min(g.max_entries * 2);
            }
            Err(err) => return Err(err),
        }
    }
    e.keys.truncate(e.len * ks);
    e.values.truncate(e.len * vl);
    e.batched = true;
    Ok(e)
}

/// Every array element, one lookup each.
fn iter_array(fd: BorrowedFd<'_>, g: &Geometry) -> Result<Entries> {
    let mut e = Entries::new(g);
    let mut value = vec![0u8; g.value_len];
    for i in 0..g.max_entries as u32 {
        let key = i.to_ne_bytes();
        if sys::lookup(fd, &key, &mut value).map_err(g.os("BPF_MAP_LOOKUP_ELEM"))? {
            e.push(&key, &value);
        }
    }
    Ok(e)
}

/// Every key with `get_next_key` (at most `max_entries`: a key deleted
/// under our feet restarts the walk), then one lookup — or lookup and
/// delete — per key.
fn iter_hash(fd: BorrowedFd<'_>, g: &Geometry, delete: bool) -> Result<Entries> {
    let ks = g.key_size;
    let mut keys: Vec<u8> = Vec::new();
    let mut next = vec![0u8; ks];
    let mut n = 0;
    while n < g.max_entries {
        let prev = (n > 0).then(|| &keys[(n - 1) * ks..n * ks]);
        if !sys::next_key(fd, prev, &mut next).map_err(g.os("BPF_MAP_GET_NEXT_KEY"))? {
            break;
        }
        keys.extend_from_slice(&next);
        n += 1;
    }
    let mut e = Entries::new(g);
    let mut value = vec![0u8; g.value_len];
    let mut pop_supported = true;
    for key in keys.chunks_exact(ks.max(1)).take(n) {
        let found = if delete && pop_supported {
            match lookup_and_delete_elem(fd, Some(key), &mut value, (ks, g.value_len)) {
                Err(err) if is_unsupported(&err) => {
                    pop_supported = false;
                    None
                }
                r => Some(r.map_err(g.os("BPF_MAP_LOOKUP_AND_DELETE_ELEM"))?),
            }
        } else {
            None
        };
        let found = match found {
            Some(f) => f,
            None => {
                let f = sys::lookup(fd, key, &mut value).map_err(g.os("BPF_MAP_LOOKUP_ELEM"))?;
                if f && delete {
                    sys::delete(fd, key).map_err(g.os("BPF_MAP_DELETE_ELEM"))?;
                }
                f
            }
        };
        if found {
            e.push(key, &value);
        }
    }
    Ok(e)
}

/// Zeroes every element of an array map.
fn zero_array(fd: BorrowedFd<'_>, g: &Geometry, batch: bool) -> Result<()> {
    let chunk = g.max_entries.clamp(1, CHUNK);
    let zeros = vec![0u8; chunk * g.value_len];
    let mut batch = batch;
    let mut start = 0;
    while start < g.max_entries {
        let n = chunk.min(g.max_entries - start);
        if batch {
            let keys: Vec<u8> = (start as u32..(start + n) as u32)
                .flat_map(u32::to_ne_bytes)
                .collect();
            match sys::update_batch(fd, &keys, &zeros[..n * g.value_len], n as u32) {
                Ok(()) => {
                    start += n;
                    continue;
                }
                Err(e) if is_unsupported(&e) => batch = false,
                Err(e) => return Err(g.os("BPF_MAP_UPDATE_BATCH")(e)),
            }
        }
        for i in start..start + n {
            sys::update(fd, &(i as u32).to_ne_bytes(), &zeros[..g.value_len], 0)
                .map_err(g.os("BPF_MAP_UPDATE_ELEM"))?;
        }
        start += n;
    }
    Ok(())
}

/// Pops a queue or stack empty (at most `max_entries` values, so a
/// producer that keeps pushing cannot keep us here).
fn pop_all(fd: BorrowedFd<'_>, g: &Geometry) -> Result<Entries> {
    let mut e = Entries::new(g);
    let mut value = vec![0u8; g.value_len];
    for _ in 0..g.max_entries {
        let popped = lookup_and_delete_elem(fd, None, &mut value, (0, g.value_len))
            .map_err(g.os("BPF_MAP_LOOKUP_AND_DELETE_ELEM"))?;
        if !popped {
            break;
        }
        e.push(&[], &value);
    }
    Ok(e)
}

// ------------------------------------------------------- raw syscall seam

// `union bpf_attr` and the syscall itself are `datapath::sys`'s (the one
// seam); the wrappers below add the commands that seam does not need. Each
// stores only pointers to buffers sized from what the kernel reported.
use crate::datapath::sys::{Attr, bpf};

fn too_small(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what} buffer too small"),
    )
}

/// What one batch syscall did.
#[derive(Debug, Clone, Copy)]
struct BatchStep {
    /// Entries written to the buffers.
    count: usize,
    /// The map has no more entries (the kernel said `ENOENT`).
    done: bool,
}

/// `BPF_MAP_LOOKUP_BATCH` (or `LOOKUP_AND_DELETE_BATCH` when `delete`):
/// up to `count` entries after `in_batch` (from the start when `None`) into
/// `keys`/`values`; `out_batch` receives the resume token. `sizes` are the
/// map's key size and value length as the kernel reported them.
#[allow(clippy::too_many_arguments)]
fn lookup_batch(
    fd: BorrowedFd<'_>,
    delete: bool,
    in_batch: Option<&[u8]>,
    out_batch: &mut [u8],
    keys: &mut [u8],
    values: &mut [u8],
    count: usize,
    (key_size, value_len): (usize, usize),
) -> io::Result<BatchStep> {
    let token = key_size.max(4);
    if out_batch.len() < token || in_batch.is_some_and(|b| b.len() < token) {
        return Err(too_small("batch token"));
    }
    if keys.len() < count * key_size {
        return Err(too_small("keys"));
    }
    if values.len() < count * value_len {
        return Err(too_small("values"));
    }
    let count = u32::try_from(count).map_err(|_| too_small("count"))?;
    let mut a = Attr::new();
    // struct { in_batch, out_batch, keys, values: u64; count, map_fd: u32;
    //          elem_flags, flags: u64 }
    a.put_u64(0, in_batch.map_or(0, |b| b.as_ptr() as u64));
    a.put_u64(8, out_batch.as_mut_ptr() as u64);
    a.put_u64(16, keys.as_mut_ptr() as u64);
    a.put_u64(24, values.as_mut_ptr() as u64);
    a.put_u32(32, count);
    a.put_u32(36, fd.as_raw_fd() as u32);
    let cmd = if delete {
        BPF_MAP_LOOKUP_AND_DELETE_BATCH
    } else {
        BPF_MAP_LOOKUP_BATCH
    };
    let r = bpf(cmd, &mut a);
    // The kernel reports how many entries it copied, also with ENOENT.
    let got = a.get_u32(32).min(count) as usize;
    match r {
        Ok(_) => Ok(BatchStep {
            count: got,
            done: false,
        }),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(BatchStep {
            count: got,
            done: true,
        }),
        Err(e) => Err(e),
    }
}

/// `BPF_MAP_LOOKUP_AND_DELETE_ELEM`: pops the head of a queue/stack
/// (`key` `None`) or takes one hash element; `Ok(false)` when empty/absent.
fn lookup_and_delete_elem(
    fd: BorrowedFd<'_>,
    key: Option<&[u8]>,
    value: &mut [u8],
    (key_size, value_len): (usize, usize),
) -> io::Result<bool> {
    if key.map_or(0, <[u8]>::len) < key_size {
        return Err(too_small("key"));
    }
    if value.len() < value_len {
        return Err(too_small("value"));
    }
    let mut a = Attr::new();
    a.put_u32(0, fd.as_raw_fd() as u32);
    a.put_u64(8, key.map_or(0, |k| k.as_ptr() as u64));
    a.put_u64(16, value.as_mut_ptr() as u64);
    match bpf(BPF_MAP_LOOKUP_AND_DELETE_ELEM, &mut a) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `BPF_OBJ_GET_INFO_BY_FD` on a map: the raw `struct bpf_map_info`.
fn obj_info(fd: BorrowedFd<'_>) -> io::Result<[u8; 128]> {
    let mut info = [0u64; 16];
    let mut a = Attr::new();
    // struct { bpf_fd, info_len: u32; info: u64 }
    a.put_u32(0, fd.as_raw_fd() as u32);
    a.put_u32(4, std::mem::size_of_val(&info) as u32);
    a.put_u64(8, info.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a)?;
    let mut out = [0u8; 128];
    for (chunk, word) in out.chunks_exact_mut(8).zip(info) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    Ok(out)
}
