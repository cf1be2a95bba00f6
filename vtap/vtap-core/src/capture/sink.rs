//! The captures of a daemon: named objects that receive packets from the ring
//! reader and hand them to a file writer thread and to live subscribers.
//!
//! Nothing on the packet path waits: the ring reader's hand-off to the file
//! writer is a bounded queue (`try_send`; a full queue counts
//! `writer_queue_full`), and to subscribers a `tokio::sync::broadcast`
//! channel (a subscriber that falls behind skips packets, counted in
//! `stream_lost`). A full disk stops only that capture's files
//! ([`FileState::Error`](super::files::FileState)), never the reader, the
//! streams or the datapath.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::broadcast;

#[cfg(test)]
use super::Packet;
use super::files::{CaptureFiles, FilesStatus};
use super::name::validate_capture_name;
use super::pcapng::{BatchBuf, CaptureEncoder};
use super::{CaptureConfig, SharedBatch};

/// Block bytes that may wait between the ring reader and a capture's file
/// writer (about 0.17 s of whole MTU frames at 1 Mpps); beyond that a batch
/// is not queued (`writer_queue_full`).
const WRITER_QUEUE_BYTES: usize = 256 << 20;
/// Batches a live subscriber may fall behind before it skips.
///
/// The channel keeps the last this many batches of a streamed capture in
/// memory (at most ~0.5 MiB each: ≤ ~550 MiB at line rate, far less at
/// ordinary rates, where a batch is what one 5 ms poll of the ring found).
const STREAM_QUEUE: usize = 1024;
/// How often the writer flushes and applies time-based rules.
const TICK: Duration = Duration::from_millis(200);

/// Counters of one capture kept in user space.
#[derive(Debug, Default)]
pub struct CaptureCounters {
    /// Records received from the ring for this capture.
    pub received: AtomicU64,
    /// Their captured bytes.
    pub received_bytes: AtomicU64,
    /// Packets not handed to the file writer because its queue was full.
    pub writer_queue_full: AtomicU64,
    /// Packets live subscribers skipped because they fell behind.
    pub stream_lost: AtomicU64,
    /// Packets sent to at least one live subscriber.
    pub streamed: AtomicU64,
    /// Delay between capture and file write of the last written packet (µs).
    pub writer_lag_us: AtomicU64,
    /// Live subscribers now.
    pub subscribers: AtomicUsize,
}

/// One capture.
pub struct Capture {
    /// Its name (validated).
    pub name: String,
    /// Its file settings.
    pub config: CaptureConfig,
    /// User-space counters.
    pub counters: CaptureCounters,
    /// Unix time (ms) the capture was created.
    pub created_unix_ms: u64,
    /// Interface ids and names of the capture (the ring reader takes it
    /// for the length of a drain).
    encoder: Mutex<CaptureEncoder>,
    files_tx: Mutex<Option<Sender<SharedBatch>>>,
    /// Block bytes queued to the writer now.
    queued: Arc<AtomicUsize>,
    /// Sequence number of the next packet delivered.
    next_seq: AtomicU64,
    stream: broadcast::Sender<SharedBatch>,
    files_status: Arc<Mutex<FilesStatus>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Capture {
    fn new(state_dir: &Path, name: &str, config: CaptureConfig) -> Result<Arc<Capture>, String> {
        validate_capture_name(name)?;
        let now = SystemTime::now();
        let files = CaptureFiles::new(state_dir, name, config.clone(), now)?;
        let files_status = Arc::new(Mutex::new(files.status()));
        let (tx, rx) = channel();
        let (stream, _) = broadcast::channel(STREAM_QUEUE);
        let queued = Arc::new(AtomicUsize::new(0));
        let cap = Arc::new(Capture {
            name: name.to_string(),
            config,
            counters: CaptureCounters::default(),
            created_unix_ms: unix_ms(now),
            encoder: Mutex::new(CaptureEncoder::new()),
            files_tx: Mutex::new(Some(tx)),
            queued: queued.clone(),
            next_seq: AtomicU64::new(0),
            stream,
            files_status: files_status.clone(),
            writer: Mutex::new(None),
        });
        let weak = Arc::downgrade(&cap);
        let handle = std::thread::Builder::new()
            .name(format!("vtap-cap-{}", truncate(name, 7)))
            .spawn(move || writer_loop(files, rx, queued, files_status, weak))
            .map_err(|e| format!("starting the writer thread of capture {name}: {e}"))?;
        *cap.writer.lock().unwrap() = Some(handle);
        Ok(cap)
    }

    /// Encodes `packets` with the capture's encoder and delivers them as
    /// one batch. For tests: the ring reader encodes records itself (see
    /// [`Capture::take_encoder`]).
    #[cfg(test)]
    pub fn deliver(&self, packets: Vec<Packet>) {
        let mut enc = self.encoder.lock().unwrap();
        let mut buf = BatchBuf::default();
        for p in &packets {
            enc.push_packet(&mut buf, p);
        }
        let ifaces = enc.ifaces();
        drop(enc);
        self.deliver_blocks(buf, ifaces);
    }

    /// The capture's encoder, for a reader that encodes a drain's records;
    /// hand it back with [`Capture::put_encoder`]. Only one thread, the
    /// ring reader, encodes a capture's packets.
    pub fn take_encoder(&self) -> CaptureEncoder {
        std::mem::take(&mut *self.encoder.lock().unwrap())
    }

    /// Returns the encoder taken by [`Capture::take_encoder`].
    pub fn put_encoder(&self, enc: CaptureEncoder) {
        *self.encoder.lock().unwrap() = enc;
    }

    /// Hands encoded packets (of one ring drain) to the file writer and the
    /// live subscribers; never blocks. `ifaces` are the capture's interfaces
    /// the blocks' ids refer to.
    pub fn deliver_blocks(&self, buf: BatchBuf, ifaces: Arc<[super::IfaceDir]>) {
        let n = buf.len();
        if n == 0 {
            return;
        }
        let c = &self.counters;
        let bytes = buf.blocks.len();
        let batch =
            Arc::new(buf.finish(self.next_seq.fetch_add(n as u64, Ordering::Relaxed), ifaces));
        c.received.fetch_add(n as u64, Ordering::Relaxed);
        c.received_bytes
            .fetch_add(batch.caplen_bytes(), Ordering::Relaxed);
        if self.stream.receiver_count() > 0 && self.stream.send(batch.clone()).is_ok() {
            c.streamed.fetch_add(n as u64, Ordering::Relaxed);
        }
        let tx = self.files_tx.lock().unwrap();
        let Some(tx) = tx.as_ref() else {
            return;
        };
        if self.queued.load(Ordering::Relaxed) + bytes > WRITER_QUEUE_BYTES {
            c.writer_queue_full.fetch_add(n as u64, Ordering::Relaxed);
            return;
        }
        self.queued.fetch_add(bytes, Ordering::Relaxed);
        if tx.send(batch).is_err() {
            self.queued.fetch_sub(bytes, Ordering::Relaxed);
            c.writer_queue_full.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// A new live subscriber: receives every packet delivered from now on.
    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        self.counters.subscribers.fetch_add(1, Ordering::Relaxed);
        Subscription {
            rx: self.stream.subscribe(),
            next_seq: None,
            cap: self.clone(),
        }
    }

    /// The file side's status (refreshed by the writer about every 200 ms).
    pub fn files_status(&self) -> FilesStatus {
        self.files_status.lock().unwrap().clone()
    }

    /// Stops the writer thread (flushes and closes the current file).
    fn shutdown(&self) {
        self.files_tx.lock().unwrap().take();
        if let Some(h) = self.writer.lock().unwrap().take() {
            let _ = h.join();
        }
    }
}

/// A live subscriber of a capture (counted while it exists). A subscriber
/// that falls more than a thousand batches behind skips the oldest; the
/// packets it skipped are counted in the capture's `stream_lost`.
pub struct Subscription {
    rx: broadcast::Receiver<SharedBatch>,
    /// Sequence number of the next packet expected (None before the first).
    next_seq: Option<u64>,
    cap: Arc<Capture>,
}

impl Subscription {
    /// The next batch; None when the capture is gone.
    pub async fn next(&mut self) -> Option<SharedBatch> {
        loop {
            match self.rx.recv().await {
                Ok(b) => return Some(self.seen(b)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The next batch if one is waiting.
    pub fn try_next(&mut self) -> Option<SharedBatch> {
        loop {
            match self.rx.try_recv() {
                Ok(b) => return Some(self.seen(b)),
                Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
                Err(_) => return None,
            }
        }
    }

    /// Counts the packets skipped before `b`.
    fn seen(&mut self, b: SharedBatch) -> SharedBatch {
        if let Some(want) = self.next_seq
            && b.first_seq > want
        {
            self.cap
                .counters
                .stream_lost
                .fetch_add(b.first_seq - want, Ordering::Relaxed);
        }
        self.next_seq = Some(b.first_seq + b.len() as u64);
        b
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.cap
            .counters
            .subscribers
            .fetch_sub(1, Ordering::Relaxed);
    }
}

fn writer_loop(
    mut files: CaptureFiles,
    rx: Receiver<SharedBatch>,
    queued: Arc<AtomicUsize>,
    status: Arc<Mutex<FilesStatus>>,
    cap: std::sync::Weak<Capture>,
) {
    let mut last_tick = SystemTime::now();
    loop {
        let r = rx.recv_timeout(TICK);
        let now = SystemTime::now();
        match r {
            Ok(batch) => {
                // Drain what is queued before looking at the clock again.
                let mut next = Some(batch);
                let mut last_ts = 0;
                while let Some(b) = next.take() {
                    files.write_batch(&b, now);
                    queued.fetch_sub(b.blocks.len(), Ordering::Relaxed);
                    last_ts = b.last_ts_ns;
                    next = rx.try_recv().ok();
                }
                if let Some(c) = cap.upgrade() {
                    let lag = unix_ns(now).saturating_sub(last_ts) / 1000;
                    c.counters.writer_lag_us.store(lag, Ordering::Relaxed);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                files.tick(now);
                *status.lock().unwrap() = files.status();
                return;
            }
        }
        if now.duration_since(last_tick).unwrap_or_default() >= TICK {
            files.tick(now);
            *status.lock().unwrap() = files.status();
            last_tick = now;
        }
    }
}

/// Every capture of the daemon, by name, and the map from the datapath's
/// output ids to them.
pub struct Captures {
    state_dir: PathBuf,
    defaults: CaptureConfig,
    configured: BTreeMap<String, CaptureConfig>,
    by_name: RwLock<BTreeMap<String, Arc<Capture>>>,
    routes: RwLock<Routes>,
}

/// What the ring reader needs to turn a record into a packet of a capture.
#[derive(Clone, Default)]
pub struct Routes {
    /// Output id → capture.
    pub by_output: BTreeMap<u8, Arc<Capture>>,
    /// Policy slot → name.
    pub slot_names: BTreeMap<u16, String>,
    /// Capture name → policies of the running set naming it.
    pub policies: BTreeMap<String, Vec<String>>,
}

impl Captures {
    /// No captures yet; `configured` (the daemon config's `captures:`
    /// section) are created at once, others when a policy first names them,
    /// with `defaults`.
    pub fn new(
        state_dir: &Path,
        defaults: CaptureConfig,
        configured: BTreeMap<String, CaptureConfig>,
    ) -> Result<Captures, String> {
        for name in configured.keys() {
            validate_capture_name(name).map_err(|e| format!("captures.{name}: {e}"))?;
        }
        let c = Captures {
            state_dir: state_dir.to_path_buf(),
            defaults,
            configured: configured.clone(),
            by_name: RwLock::new(BTreeMap::new()),
            routes: RwLock::new(Routes::default()),
        };
        for name in configured.keys() {
            c.get_or_create(name)?;
        }
        Ok(c)
    }

    /// The capture called `name`, created (with its configured or default
    /// settings) if it does not exist.
    pub fn get_or_create(&self, name: &str) -> Result<Arc<Capture>, String> {
        if let Some(c) = self.by_name.read().unwrap().get(name) {
            return Ok(c.clone());
        }
        let mut w = self.by_name.write().unwrap();
        if let Some(c) = w.get(name) {
            return Ok(c.clone());
        }
        let cfg = self
            .configured
            .get(name)
            .cloned()
            .unwrap_or_else(|| self.defaults.clone());
        let c = Capture::new(&self.state_dir, name, cfg)?;
        tracing::info!(capture = name, "capture created");
        w.insert(name.to_string(), c.clone());
        Ok(c)
    }

    /// The capture called `name`, if it exists.
    pub fn get(&self, name: &str) -> Option<Arc<Capture>> {
        self.by_name.read().unwrap().get(name).cloned()
    }

    /// Every capture, by name.
    pub fn all(&self) -> Vec<Arc<Capture>> {
        self.by_name.read().unwrap().values().cloned().collect()
    }

    /// Points the datapath's output ids at captures after a policy change
    /// (creating captures named for the first time). A capture that no
    /// policy names any more, that is not configured and that nobody is
    /// streaming is closed (its files stay on disk) and forgotten.
    pub fn sync(
        &self,
        capture_ids: &BTreeMap<u8, String>,
        slot_names: BTreeMap<u16, String>,
        policies: BTreeMap<String, Vec<String>>,
    ) -> Result<(), String> {
        let mut by_output = BTreeMap::new();
        for (id, name) in capture_ids {
            by_output.insert(*id, self.get_or_create(name)?);
        }
        let named: std::collections::BTreeSet<&String> = capture_ids.values().collect();
        *self.routes.write().unwrap() = Routes {
            by_output,
            slot_names,
            policies,
        };
        let gone: Vec<Arc<Capture>> = {
            let mut w = self.by_name.write().unwrap();
            let names: Vec<String> = w
                .iter()
                .filter(|(n, c)| {
                    !named.contains(n)
                        && !self.configured.contains_key(*n)
                        && c.counters.subscribers.load(Ordering::Relaxed) == 0
                })
                .map(|(n, _)| n.clone())
                .collect();
            names.iter().filter_map(|n| w.remove(n)).collect()
        };
        for c in gone {
            tracing::info!(capture = %c.name, "capture no longer named by a policy: closed");
            c.shutdown();
        }
        Ok(())
    }

    /// The current routes (the ring reader takes a copy per batch).
    pub fn routes(&self) -> Routes {
        self.routes.read().unwrap().clone()
    }

    /// Policies of the running set naming `capture`.
    pub fn policies_of(&self, capture: &str) -> Vec<String> {
        self.routes
            .read()
            .unwrap()
            .policies
            .get(capture)
            .cloned()
            .unwrap_or_default()
    }

    /// Stops every writer thread (files flushed and closed).
    pub fn shutdown(&self) {
        for c in self.all() {
            c.shutdown();
        }
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// What REST and the CLI show of a capture.
#[derive(Clone, Debug, Serialize)]
pub struct CaptureView {
    /// Name.
    pub name: String,
    /// Policies of the running set that name it.
    pub policies: Vec<String>,
    /// File settings.
    pub config: CaptureConfig,
    /// Datapath counters (records written to the ring, ring full).
    pub datapath: DatapathCounters,
    /// Files: state, directory, files with sizes, counters.
    pub files: FilesStatus,
    /// Live streaming.
    pub stream: StreamView,
    /// Packets received from the ring.
    pub received: u64,
    /// Packets the file writer's queue had no room for.
    pub writer_queue_full: u64,
    /// Capture-to-disk delay of the last written packet, seconds.
    pub writer_lag_seconds: f64,
}

/// Datapath counters of a capture.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DatapathCounters {
    /// Records submitted to the ring.
    pub packets: u64,
    /// Their original bytes.
    pub bytes: u64,
    /// Their captured bytes.
    pub cap_bytes: u64,
    /// Records that found the ring full (packets lost to the capture).
    pub ring_full: u64,
}

/// Live streaming state of a capture.
#[derive(Clone, Debug, Serialize)]
pub struct StreamView {
    /// Subscribers now.
    pub subscribers: usize,
    /// Packets sent to subscribers.
    pub streamed: u64,
    /// Packets subscribers skipped because they fell behind.
    pub lost: u64,
}

impl Capture {
    /// The REST/CLI view, with the datapath counters the caller read.
    pub fn view(&self, policies: Vec<String>, dp: DatapathCounters) -> CaptureView {
        let c = &self.counters;
        CaptureView {
            name: self.name.clone(),
            policies,
            config: self.config.clone(),
            datapath: dp,
            files: self.files_status(),
            stream: StreamView {
                subscribers: c.subscribers.load(Ordering::Relaxed),
                streamed: c.streamed.load(Ordering::Relaxed),
                lost: c.stream_lost.load(Ordering::Relaxed),
            },
            received: c.received.load(Ordering::Relaxed),
            writer_queue_full: c.writer_queue_full.load(Ordering::Relaxed),
            writer_lag_seconds: c.writer_lag_us.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{IfaceDir, Packet};
    use vtap_abi::Dir;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vtap-sink-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn pkt(i: u8) -> Packet {
        Packet {
            ts_ns: 1_700_000_000_000_000_000 + i as u64,
            orig_len: 60,
            data: vec![i; 60].into(),
            iface: IfaceDir {
                ifindex: 3,
                ifname: "vm1-tap".into(),
                dir: Dir::Ingress,
            },
            policies: vec!["p".to_string()].into(),
        }
    }

    #[test]
    fn unnamed_captures_are_closed_configured_ones_stay() {
        let d = tmp("sync");
        let mut configured = BTreeMap::new();
        configured.insert("kept".to_string(), CaptureConfig::default());
        let caps = Captures::new(&d, CaptureConfig::default(), configured).unwrap();
        let ids: BTreeMap<u8, String> = [(1, "a".to_string()), (2, "b".to_string())].into();
        caps.sync(&ids, BTreeMap::new(), BTreeMap::new()).unwrap();
        assert_eq!(caps.all().len(), 3);
        let b = caps.get("b").unwrap();
        let _sub = b.subscribe(); // a streamed capture is not closed
        caps.sync(&BTreeMap::new(), BTreeMap::new(), BTreeMap::new())
            .unwrap();
        let names: Vec<String> = caps.all().iter().map(|c| c.name.clone()).collect();
        assert_eq!(names, vec!["b", "kept"]);
        assert!(caps.routes().by_output.is_empty());
        caps.shutdown();
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn delivery_reaches_files_and_subscribers_and_lag_is_skipped() {
        let d = tmp("deliver");
        let caps = Captures::new(&d, CaptureConfig::default(), BTreeMap::new()).unwrap();
        let c = caps.get_or_create("c").unwrap();
        let mut slow = c.subscribe();
        let mut fast = c.subscribe();
        // Batches of 3 packets.
        for i in 0..(STREAM_QUEUE + 10) {
            c.deliver(vec![pkt(i as u8), pkt(i as u8), pkt(i as u8)]);
            // The fast one keeps up.
            assert!(fast.try_next().is_some());
        }
        // The slow one read the first batch, then fell 10 batches behind:
        // it skips them (30 packets, counted) and goes on.
        let mut slow2 = c.subscribe();
        assert!(slow2.try_next().is_none());
        let b = slow.try_next().unwrap();
        assert_eq!(b.first_seq, 30, "oldest kept batch");
        assert_eq!(
            c.counters.stream_lost.load(Ordering::Relaxed),
            0,
            "nothing seen yet"
        );
        // A subscriber that saw batch k and then batch k + 11 lost 30 packets.
        let mut s = c.subscribe();
        c.deliver(vec![pkt(1); 3]);
        assert!(s.try_next().is_some());
        for _ in 0..STREAM_QUEUE + 10 {
            c.deliver(vec![pkt(2); 3]);
        }
        assert!(s.try_next().is_some());
        assert_eq!(c.counters.stream_lost.load(Ordering::Relaxed), 30);
        drop((slow2, s));
        assert_eq!(c.counters.subscribers.load(Ordering::Relaxed), 2);
        drop(slow);
        assert_eq!(c.counters.subscribers.load(Ordering::Relaxed), 1);
        // Every packet reached the file writer.
        caps.shutdown();
        let st = c.files_status();
        assert_eq!(
            st.stats.packets_written as usize,
            3 * (2 * STREAM_QUEUE + 21)
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
