//! The one reader of `vtap_pcap_ring`: a thread that sleeps in `poll(2)` on
//! the ring's fd, drains the committed records ([`PcapRing`]), encodes each
//! one straight from the ring into a pcapng enhanced packet block of its
//! capture's batch, releases the records, and hands each capture its batch
//! ([`Capture::deliver_blocks`]). It never does I/O itself, so a slow disk
//! or a slow subscriber cannot make the ring fill up.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use vtap_abi::{Bitmap, Dir, PcapRec};

use super::pcapng::{BatchBuf, CaptureEncoder, policy_comment};
use super::ringbuf::{BatchEnd, PcapRing};
use super::sink::{Capture, Captures, Routes};

/// Counters of the reader itself.
#[derive(Debug, Default)]
pub struct ReaderCounters {
    /// Records read.
    pub records: AtomicU64,
    /// Records for an output id no capture owns (a capture removed while
    /// its records were in the ring) or malformed.
    pub unrouted: AtomicU64,
}

/// The running reader thread.
pub struct RingReader {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    /// Its counters.
    pub counters: Arc<ReaderCounters>,
}

impl RingReader {
    /// Starts the reader thread.
    pub fn start(ring: PcapRing, captures: Arc<Captures>) -> std::io::Result<RingReader> {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(ReaderCounters::default());
        let (s, c) = (stop.clone(), counters.clone());
        let handle = std::thread::Builder::new()
            .name("vtap-pcap-ring".into())
            .spawn(move || run(ring, captures, s, c))?;
        Ok(RingReader {
            stop,
            handle: Some(handle),
            counters,
        })
    }
}

impl Drop for RingReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// CLOCK_REALTIME − CLOCK_MONOTONIC, ns: turns `bpf_ktime_get_ns()` into
/// wall-clock time.
fn realtime_offset_ns() -> i128 {
    let mono = clock_ns(libc::CLOCK_MONOTONIC);
    let real = clock_ns(libc::CLOCK_REALTIME);
    real - mono
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// Names of interfaces by index (cached; a miss asks the kernel). The
/// last answer is kept apart: consecutive records mostly come from the same
/// tap, and this runs once per captured packet.
#[derive(Default)]
struct IfNames(HashMap<u32, Arc<str>>, Option<(u32, Arc<str>)>);

impl IfNames {
    fn get(&mut self, ifindex: u32) -> Arc<str> {
        if let Some((i, n)) = &self.1
            && *i == ifindex
        {
            return n.clone();
        }
        let n = self.lookup(ifindex);
        self.1 = Some((ifindex, n.clone()));
        n
    }

    fn clear(&mut self) {
        self.0.clear();
        self.1 = None;
    }

    fn lookup(&mut self, ifindex: u32) -> Arc<str> {
        if let Some(n) = self.0.get(&ifindex) {
            return n.clone();
        }
        let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
        // SAFETY: buf has IF_NAMESIZE bytes, as if_indextoname requires.
        let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
        let name: Arc<str> = if p.is_null() {
            format!("if{ifindex}").into()
        } else {
            // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
            unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
                .to_string_lossy()
                .into()
        };
        self.0.insert(ifindex, name.clone());
        name
    }
}

/// Decodes one record: (output id, header, packet bytes).
pub fn parse_record(rec: &[u8]) -> Option<(PcapRec, &[u8])> {
    let hs = std::mem::size_of::<PcapRec>();
    if rec.len() < hs {
        return None;
    }
    // SAFETY: PcapRec is plain old data and rec has at least its size;
    // read_unaligned copes with any alignment.
    let h: PcapRec = unsafe { std::ptr::read_unaligned(rec.as_ptr() as *const PcapRec) };
    let end = hs.checked_add(h.cap_len as usize)?;
    let data = rec.get(hs..end)?;
    Some((h, data))
}

/// Records taken from the ring before they are handed on (a batch).
const MAX_BATCH_RECORDS: usize = 1024;
/// Bytes of packet data per batch buffer: small enough that the file
/// writer, on the same CPU, still finds them in its cache (8 MiB batches
/// were written from memory; BENCHMARKS.md §5).
const MAX_BATCH_BYTES: usize = 512 << 10;
/// How long the reader sleeps when the ring is empty. The datapath wakes it
/// early only when the unread data crosses an eighth of the ring (see
/// `pcap_wakeup` in ebpf/vtap_tc.c), so this bounds the delay of a quiet
/// capture's packets.
const POLL_MS: i32 = 5;

/// One capture's share of a drain: its encoder (taken from the capture for
/// the drain) and the blocks encoded so far.
struct Slot {
    output: u8,
    cap: Arc<Capture>,
    enc: CaptureEncoder,
    buf: BatchBuf,
    /// The last policy list and its comment option (consecutive records
    /// mostly share it).
    last_comment: Option<(Bitmap, Arc<[u8]>)>,
}

fn run(
    mut ring: PcapRing,
    captures: Arc<Captures>,
    stop: Arc<AtomicBool>,
    counters: Arc<ReaderCounters>,
) {
    let fd = ring.as_raw_fd();
    let mut names = IfNames::default();
    // Policy list → comment option, for the running policy set.
    let mut comments: HashMap<Bitmap, Arc<[u8]>> = HashMap::new();
    let mut routes = Routes::default();
    let mut last_refresh = std::time::Instant::now() - std::time::Duration::from_secs(10);
    let mut slots: Vec<Slot> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, POLL_MS) };
        // Routes and names change rarely; refresh them at most every 100 ms
        // (a record for an id that just appeared triggers a refresh).
        if last_refresh.elapsed() >= std::time::Duration::from_millis(100) {
            routes = captures.routes();
            comments.clear();
            names.clear();
            last_refresh = std::time::Instant::now();
        }
        let offset = realtime_offset_ns();
        loop {
            // One batch: each record encoded straight out of the ring into
            // its capture's block buffer; the records are released to the
            // datapath once, after the whole batch.
            let (mut records, mut unrouted, mut bytes) = (0u64, 0u64, 0usize);
            let end = ring.walk(|rec| {
                records += 1;
                let Some((h, data)) = parse_record(rec) else {
                    unrouted += 1;
                    return true;
                };
                let k = match slots.iter().position(|s| s.output == h.output) {
                    Some(k) => k,
                    None => {
                        if !routes.by_output.contains_key(&h.output) {
                            routes = captures.routes();
                            comments.clear();
                        }
                        let Some(cap) = routes.by_output.get(&h.output).cloned() else {
                            unrouted += 1;
                            return true;
                        };
                        slots.push(Slot {
                            output: h.output,
                            enc: cap.take_encoder(),
                            cap,
                            buf: BatchBuf::with_capacity(
                                MAX_BATCH_BYTES + vtap_abi::PCAP_MAX_CAPLEN as usize + 1024,
                                MAX_BATCH_RECORDS,
                            ),
                            last_comment: None,
                        });
                        slots.len() - 1
                    }
                };
                let slot = &mut slots[k];
                let dir = if h.dir == 0 {
                    Dir::Ingress
                } else {
                    Dir::Egress
                };
                let id = slot
                    .enc
                    .interface_id(h.ifindex, dir, || names.get(h.ifindex));
                let opts = match &slot.last_comment {
                    Some((b, o)) if *b == h.policies => o.clone(),
                    _ => {
                        let o = comments
                            .entry(h.policies)
                            .or_insert_with(|| {
                                let list: Vec<String> = h
                                    .policies
                                    .iter()
                                    .map(|s| {
                                        routes
                                            .slot_names
                                            .get(&(s as u16))
                                            .cloned()
                                            .unwrap_or_else(|| format!("slot{s}"))
                                    })
                                    .collect();
                                policy_comment(&list).into()
                            })
                            .clone();
                        slot.last_comment = Some((h.policies, o.clone()));
                        o
                    }
                };
                let before = slot.buf.blocks.len();
                let ts = (h.ts_ns as i128 + offset).max(0) as u64;
                slot.buf.push(id, ts, h.orig_len, data, &opts);
                bytes += slot.buf.blocks.len() - before;
                (records as usize) < MAX_BATCH_RECORDS && bytes < MAX_BATCH_BYTES
            });
            ring.release();
            counters.records.fetch_add(records, Ordering::Relaxed);
            counters.unrouted.fetch_add(unrouted, Ordering::Relaxed);
            for slot in slots.drain(..) {
                let ifaces = slot.enc.ifaces();
                slot.cap.put_encoder(slot.enc);
                slot.cap.deliver_blocks(slot.buf, ifaces);
            }
            if end != BatchEnd::Full {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_record_checks_lengths() {
        let mut h = PcapRec {
            ts_ns: 5,
            orig_len: 100,
            cap_len: 4,
            ifindex: 3,
            dir: 1,
            output: 2,
            ..Default::default()
        };
        h.policies.set(7);
        let hs = std::mem::size_of::<PcapRec>();
        let mut rec = vec![0u8; hs + 8];
        // SAFETY: rec has room for one PcapRec.
        unsafe { std::ptr::write_unaligned(rec.as_mut_ptr() as *mut PcapRec, h) };
        rec[hs..hs + 4].copy_from_slice(&[1, 2, 3, 4]);
        let (g, d) = parse_record(&rec).unwrap();
        assert_eq!(g, h);
        assert_eq!(d, &[1, 2, 3, 4]);
        assert!(parse_record(&rec[..hs - 1]).is_none());
        h.cap_len = 9;
        // SAFETY: as above.
        unsafe { std::ptr::write_unaligned(rec.as_mut_ptr() as *mut PcapRec, h) };
        assert!(parse_record(&rec).is_none(), "caplen beyond the record");
    }

    #[test]
    fn realtime_offset_is_sane() {
        let off = realtime_offset_ns();
        let now = clock_ns(libc::CLOCK_REALTIME);
        // Monotonic starts at boot: the offset is the boot time, in the past.
        assert!(off > 0 && off < now);
    }
}
