//! The consumer side of a `BPF_MAP_TYPE_RINGBUF`, read straight from its
//! memory mapping, releasing records a batch at a time.
//!
//! aya's `RingBuf` publishes the consumer position after every record. The
//! datapath reads that position at every reservation (and again to decide
//! whether to wake the reader), on another CPU, so a per-record store costs a
//! cache-line transfer on both sides for every captured packet. Here the
//! reader walks the committed records of a batch and publishes its position
//! once, after it has copied them out ([`PcapRing::release`]).
//!
//! Layout (kernel/bpf/ringbuf.c): page 0 holds the consumer position
//! (mapped read-write), page 1 the producer position, then the data pages,
//! mapped twice in a row so a record that wraps around the end reads as one
//! contiguous slice. Each record starts with an 8-byte header: a `u32`
//! length carrying the busy (not yet committed) and discard bits, and the
//! record's page offset; the next record starts at the following multiple
//! of 8.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use aya::maps::MapData;

const BUSY_BIT: u32 = 1 << 31;
const DISCARD_BIT: u32 = 1 << 30;
const HDR_SZ: u64 = 8;

/// One `mmap(2)` region, unmapped on drop.
struct Region {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Region {
    fn map(fd: RawFd, len: usize, prot: libc::c_int, offset: usize) -> io::Result<Region> {
        // SAFETY: a fresh shared mapping of the map's fd; the kernel checks
        // the length, protection and offset against the ring's layout.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd,
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Region { ptr, len })
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// The reader's handle on the datapath's pcap ring buffer.
pub struct PcapRing {
    map: MapData,
    consumer: Region,
    producer: Region,
    page: usize,
    /// Ring size in bytes (a power of two).
    size: u64,
    /// Position after the last record walked (published by `release`).
    pos: u64,
    /// Position last published to the kernel.
    published: u64,
}

// SAFETY: the regions are plain shared memory owned by this value. Writes
// (the consumer position) need `&mut self`; through `&self` the mappings are
// only read, with atomic loads.
unsafe impl Send for PcapRing {}
// SAFETY: as above.
unsafe impl Sync for PcapRing {}

/// Why a batch stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchEnd {
    /// Every committed record was walked.
    Empty,
    /// The caller's callback asked to stop (its batch is full).
    Full,
}

impl PcapRing {
    /// Maps the ring buffer map `map`.
    pub fn new(map: MapData) -> io::Result<PcapRing> {
        let size = map
            .info()
            .map_err(|e| io::Error::other(format!("reading the ring buffer's size: {e}")))?
            .max_entries() as u64;
        if !size.is_power_of_two() {
            return Err(io::Error::other(format!(
                "ring buffer size {size} is not a power of two"
            )));
        }
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let fd = map.fd().as_fd().as_raw_fd();
        let consumer = Region::map(fd, page, libc::PROT_READ | libc::PROT_WRITE, 0)?;
        let producer = Region::map(fd, page + 2 * size as usize, libc::PROT_READ, page)?;
        let mut ring = PcapRing {
            map,
            consumer,
            producer,
            page,
            size,
            pos: 0,
            published: 0,
        };
        ring.pos = ring.consumer_pos().load(Ordering::Acquire);
        ring.published = ring.pos;
        Ok(ring)
    }

    /// Ring size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn consumer_pos(&self) -> &AtomicU64 {
        // SAFETY: page 0 of the mapping is the kernel's consumer_pos, an
        // 8-byte aligned unsigned long at its start.
        unsafe { &*(self.consumer.ptr as *const AtomicU64) }
    }

    fn producer_pos(&self) -> u64 {
        // SAFETY: the first word of the producer page is producer_pos,
        // written by the kernel with release semantics.
        unsafe { &*(self.producer.ptr as *const AtomicU64) }.load(Ordering::Acquire)
    }

    /// Walks the committed records after the last one walked, calling `f`
    /// with each record's bytes (discarded records are skipped) until the
    /// ring has no committed record left or `f` returns false (that record
    /// counts as walked). The records stay reserved, and their bytes valid,
    /// until [`PcapRing::release`].
    pub fn walk(&mut self, mut f: impl FnMut(&[u8]) -> bool) -> BatchEnd {
        let prod = self.producer_pos();
        let mask = self.size - 1;
        // SAFETY: the data pages start one page into the producer mapping
        // and span 2 × size bytes.
        let data = unsafe {
            std::slice::from_raw_parts(
                (self.producer.ptr as *const u8).add(self.page),
                2 * self.size as usize,
            )
        };
        while self.pos < prod {
            let off = (self.pos & mask) as usize;
            // SAFETY: off < size and record headers are 8-byte aligned; the
            // kernel commits a record by clearing the busy bit with a fully
            // ordered xchg, which this acquire load pairs with.
            let hdr =
                unsafe { &*(data.as_ptr().add(off) as *const AtomicU32) }.load(Ordering::Acquire);
            if hdr & BUSY_BIT != 0 {
                break;
            }
            let len = (hdr & !(BUSY_BIT | DISCARD_BIT)) as u64;
            self.pos += (len + HDR_SZ).next_multiple_of(8);
            if hdr & DISCARD_BIT != 0 {
                continue;
            }
            let start = off + HDR_SZ as usize;
            let Some(rec) = data.get(start..start + len as usize) else {
                // A length beyond the double mapping cannot come from the
                // kernel; stop rather than read out of bounds.
                break;
            };
            if !f(rec) {
                return BatchEnd::Full;
            }
        }
        BatchEnd::Empty
    }

    /// Hands every walked record back to the kernel (one store the
    /// datapath's reservations then see).
    pub fn release(&mut self) {
        if self.pos != self.published {
            self.consumer_pos().store(self.pos, Ordering::Release);
            self.published = self.pos;
        }
    }

    /// Bytes committed or reserved and not yet released.
    pub fn unread(&self) -> u64 {
        self.producer_pos().saturating_sub(self.published)
    }
}

impl AsFd for PcapRing {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.map.fd().as_fd()
    }
}

impl AsRawFd for PcapRing {
    fn as_raw_fd(&self) -> RawFd {
        self.map.fd().as_fd().as_raw_fd()
    }
}
