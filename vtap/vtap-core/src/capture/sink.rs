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
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::broadcast;

use super::files::{CaptureFiles, FilesStatus};
use super::name::validate_capture_name;
use super::{CaptureConfig, SharedPacket};

/// Packets queued between the ring reader and a capture's file writer.
const WRITER_QUEUE: usize = 65536;
/// Packets a live subscriber may fall behind before it skips.
const STREAM_QUEUE: usize = 16384;
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
    files_tx: Mutex<Option<SyncSender<SharedPacket>>>,
    stream: broadcast::Sender<SharedPacket>,
    files_status: Arc<Mutex<FilesStatus>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Capture {
    fn new(state_dir: &Path, name: &str, config: CaptureConfig) -> Result<Arc<Capture>, String> {
        validate_capture_name(name)?;
        let now = SystemTime::now();
        let files = CaptureFiles::new(state_dir, name, config.clone(), now)?;
        let files_status = Arc::new(Mutex::new(files.status()));
        let (tx, rx) = sync_channel(WRITER_QUEUE);
        let (stream, _) = broadcast::channel(STREAM_QUEUE);
        let cap = Arc::new(Capture {
            name: name.to_string(),
            config,
            counters: CaptureCounters::default(),
            created_unix_ms: unix_ms(now),
            files_tx: Mutex::new(Some(tx)),
            stream,
            files_status: files_status.clone(),
            writer: Mutex::new(None),
        });
        let weak = Arc::downgrade(&cap);
        let handle = std::thread::Builder::new()
            .name(format!("vtap-cap-{}", truncate(name, 7)))
            .spawn(move || writer_loop(files, rx, files_status, weak))
            .map_err(|e| format!("starting the writer thread of capture {name}: {e}"))?;
        *cap.writer.lock().unwrap() = Some(handle);
        Ok(cap)
    }

    /// Hands one packet to the file writer and the live subscribers; never
    /// blocks.
    pub fn deliver(&self, pkt: SharedPacket) {
        let c = &self.counters;
        c.received.fetch_add(1, Ordering::Relaxed);
        c.received_bytes
            .fetch_add(pkt.data.len() as u64, Ordering::Relaxed);
        if self.stream.receiver_count() > 0 && self.stream.send(pkt.clone()).is_ok() {
            c.streamed.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(tx) = self.files_tx.lock().unwrap().as_ref() {
            match tx.try_send(pkt) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    c.writer_queue_full.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// A new live subscriber: receives every packet delivered from now on
    /// (or a `Lagged(n)` error when it fell behind by n packets).
    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        self.counters.subscribers.fetch_add(1, Ordering::Relaxed);
        Subscription {
            rx: self.stream.subscribe(),
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

/// A live subscriber of a capture (counted while it exists).
pub struct Subscription {
    /// The packets.
    pub rx: broadcast::Receiver<SharedPacket>,
    cap: Arc<Capture>,
}

impl Subscription {
    /// Records packets this subscriber skipped.
    pub fn lost(&self, n: u64) {
        self.cap
            .counters
            .stream_lost
            .fetch_add(n, Ordering::Relaxed);
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
    rx: Receiver<SharedPacket>,
    status: Arc<Mutex<FilesStatus>>,
    cap: std::sync::Weak<Capture>,
) {
    let mut last_tick = SystemTime::now();
    loop {
        let r = rx.recv_timeout(TICK);
        let now = SystemTime::now();
        match r {
            Ok(pkt) => {
                files.write(&pkt, now);
                // Drain what is queued before looking at the clock again.
                let mut last = pkt;
                while let Ok(p) = rx.try_recv() {
                    files.write(&p, now);
                    last = p;
                }
                if let Some(c) = cap.upgrade() {
                    let lag = unix_ns(now).saturating_sub(last.ts_ns) / 1000;
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

    fn pkt(i: u8) -> SharedPacket {
        Arc::new(Packet {
            ts_ns: 1_700_000_000_000_000_000 + i as u64,
            orig_len: 60,
            data: vec![i; 60],
            iface: IfaceDir {
                ifindex: 3,
                ifname: "vm1-tap".into(),
                dir: Dir::Ingress,
            },
            policies: vec!["p".to_string()].into(),
        })
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
        for i in 0..(STREAM_QUEUE + 10) {
            c.deliver(pkt(i as u8));
            // The fast one keeps up.
            assert!(fast.rx.try_recv().is_ok());
        }
        // The slow one lagged by 10 packets: it skips them and goes on.
        match slow.rx.try_recv() {
            Err(broadcast::error::TryRecvError::Lagged(n)) => {
                assert_eq!(n, 10);
                slow.lost(n);
            }
            other => panic!("expected Lagged, got {other:?}"),
        }
        assert!(slow.rx.try_recv().is_ok());
        assert_eq!(c.counters.stream_lost.load(Ordering::Relaxed), 10);
        assert_eq!(c.counters.subscribers.load(Ordering::Relaxed), 2);
        drop(slow);
        assert_eq!(c.counters.subscribers.load(Ordering::Relaxed), 1);
        // Every packet reached the file writer.
        caps.shutdown();
        let st = c.files_status();
        assert_eq!(st.stats.packets_written as usize, STREAM_QUEUE + 10);
        let _ = std::fs::remove_dir_all(&d);
    }
}
