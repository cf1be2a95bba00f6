//! The file side of one capture: pcapng files under
//! `<state_dir>/captures/<name>/`, rotated by size and time, pruned to
//! `max_files`, stopped by packet/byte/time limits, and surviving I/O errors
//! (a full disk, a removed directory): the capture goes to
//! [`FileState::Error`], counts what it could not write, and resumes by
//! itself in a new file once [`CaptureFiles::tick`] can open one again.
//!
//! Nothing here panics or blocks beyond ordinary file system calls; the
//! owner calls [`CaptureFiles::write_batch`] per batch and
//! [`CaptureFiles::tick`] periodically (200 ms to 1 s). A batch's blocks go
//! to the file as they are, as few contiguous ranges as the rotation and
//! stop rules allow, through the file's aligned `O_DIRECT` buffer
//! ([`DirectFile`]).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

#[cfg(test)]
use super::Packet;
use super::direct::DirectFile;
use super::name::validate_capture_name;
use super::pcapng::PcapngEncoder;
#[cfg(test)]
use super::pcapng::{BatchBuf, CaptureEncoder};
use super::{Batch, CaptureConfig};

/// Bytes in a MiB (`rotate_mib` unit).
const MIB: u64 = 1024 * 1024;

/// How long after a failure [`CaptureFiles::tick`] tries a new file.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// How often [`CaptureFiles::tick`] re-reads the directory for the listing
/// (it is also re-read whenever a file is opened or deleted).
const RELIST_EVERY: Duration = Duration::from_secs(1);

/// Most `-N` suffixes tried when a file name is taken.
const MAX_SUFFIX: u64 = 10_000;

/// Files of one capture.
#[derive(Debug)]
pub struct CaptureFiles {
    name: String,
    dir: PathBuf,
    cfg: CaptureConfig,
    /// Rotation size in bytes, 0 = never (from `rotate_mib` unless
    /// overridden by [`CaptureFiles::with_rotate_bytes`]).
    rotate_bytes: u64,
    started: SystemTime,
    state: FileState,
    current: Option<OpenFile>,
    stats: FileStats,
    /// Sum of the caplens written (the `stop_bytes` measure).
    captured_bytes: u64,
    last_failure: Option<SystemTime>,
    /// Cached listing of this capture's files, oldest first.
    listing: Vec<FileInfo>,
    listed_at: Option<SystemTime>,
    /// UTC stamp and suffix of the last file opened.
    last_name: Option<(String, u64)>,
    /// Encoder of the packets tests give one at a time
    /// ([`CaptureFiles::write`]).
    #[cfg(test)]
    single: CaptureEncoder,
}

/// The file being written.
#[derive(Debug)]
struct OpenFile {
    path: PathBuf,
    out: DirectFile,
    encoder: PcapngEncoder,
    /// Bytes handed to the file (header included).
    bytes: u64,
    packets: u64,
    opened: SystemTime,
}

/// What [`CaptureFiles::status`] reports.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FilesStatus {
    /// Where the capture stands.
    pub state: FileState,
    /// The capture's directory, `<state_dir>/captures/<name>`.
    pub dir: PathBuf,
    /// The file being written, if one is open.
    pub current: Option<PathBuf>,
    /// This capture's files in its directory, oldest first (the current one
    /// with the bytes written so far, buffered ones included).
    pub files: Vec<FileInfo>,
    /// Counters since the capture was created.
    pub stats: FileStats,
}

/// One file of a capture.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FileInfo {
    /// Full path.
    pub path: PathBuf,
    /// Size in bytes.
    pub bytes: u64,
}

/// State of a capture's files.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum FileState {
    /// No packet yet (no file, no directory created).
    Idle,
    /// Writing (a file is open, or is opened by the next packet after a
    /// time rotation closed the previous one).
    Writing,
    /// A stop condition was reached; later packets are not written.
    Stopped {
        /// Which one: `"packets"`, `"bytes"` or `"seconds"`.
        reason: String,
    },
    /// The last open, write or flush failed; packets are not written until
    /// a retry (at least a second later, from [`CaptureFiles::tick`]) opens a
    /// new file.
    Error {
        /// The failure, e.g. `"No space left on device (os error 28)
        /// writing /var/lib/vtap/captures/x/x-….pcapng"`.
        error: String,
        /// When it happened, milliseconds since the Unix epoch.
        since_unix_ms: u64,
    },
    /// The capture writes no files (`files: false`).
    Disabled,
}

/// Counters of a capture's files.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct FileStats {
    /// Packets handed to a file (those still buffered when a flush failed
    /// included).
    pub packets_written: u64,
    /// File bytes written (section headers and interface blocks included).
    pub bytes_written: u64,
    /// Files created.
    pub files_opened: u64,
    /// Old files deleted to honour `max_files`.
    pub files_deleted: u64,
    /// Packets dropped because of an I/O error (the failing one and every
    /// packet while in [`FileState::Error`]).
    pub not_written_error: u64,
    /// Packets dropped because a stop condition was reached.
    pub not_written_stopped: u64,
    /// I/O failures (each one moved the state to [`FileState::Error`], or
    /// happened while closing a file at a stop).
    pub write_errors: u64,
}

impl CaptureFiles {
    /// The files of capture `name` under `<state_dir>/captures/<name>/`,
    /// named `<name>-<UTC timestamp>.pcapng` (timestamp like
    /// `20261122T031500.123456Z`, so names sort in time order; `-1`, `-2`, …
    /// is appended when a name is taken). Nothing is created before the first
    /// packet; existing files of the capture are listed at once.
    ///
    /// `now` is the start of the capture (`stop_seconds` counts from it).
    /// Fails only for an invalid `name` (see [`validate_capture_name`]).
    pub fn new(
        state_dir: &Path,
        name: &str,
        cfg: CaptureConfig,
        now: SystemTime,
    ) -> Result<Self, String> {
        validate_capture_name(name)?;
        let dir = state_dir.join("captures").join(name);
        let state = if cfg.files {
            FileState::Idle
        } else {
            FileState::Disabled
        };
        let mut files = CaptureFiles {
            name: name.to_string(),
            dir,
            rotate_bytes: cfg.rotate_mib.saturating_mul(MIB),
            cfg,
            started: now,
            state,
            current: None,
            stats: FileStats::default(),
            captured_bytes: 0,
            last_failure: None,
            listing: Vec::new(),
            listed_at: None,
            last_name: None,
            #[cfg(test)]
            single: CaptureEncoder::new(),
        };
        if files.cfg.files {
            files.relist(now);
        }
        Ok(files)
    }

    /// Rotates at `n` bytes instead of `rotate_mib` MiB (0 = never); for tests.
    #[doc(hidden)]
    pub fn with_rotate_bytes(mut self, n: u64) -> Self {
        self.rotate_bytes = n;
        self
    }

    /// Writes one packet (encoded on its own; [`CaptureFiles::write_batch`]
    /// with a batch of one). For tests.
    #[cfg(test)]
    pub fn write(&mut self, pkt: &Packet, now: SystemTime) {
        let mut buf = BatchBuf::default();
        self.single.push_packet(&mut buf, pkt);
        let batch = buf.finish(0, self.single.ifaces());
        self.write_batch(&batch, now);
    }

    /// Writes the packets of a batch, in order.
    ///
    /// Opens a file if none is open (header first). A file describes the
    /// capture's interfaces it has not described yet before the packets
    /// that use them. Rotates before a packet that would take the current
    /// file past the rotation size (a file always gets at least one
    /// packet), or when `rotate_seconds` have passed since the file was
    /// opened; each new file is followed by deleting this capture's oldest
    /// files beyond `max_files`.
    ///
    /// A packet that would take the captured bytes past `stop_bytes` is not
    /// written and stops the capture; reaching `stop_packets` or exactly
    /// `stop_bytes` stops it after that packet; `stop_seconds` after
    /// [`CaptureFiles::new`] stops it too. Once stopped, packets are counted
    /// in `not_written_stopped`. Any I/O error moves to [`FileState::Error`]
    /// and the packets it lost (and every one until writing resumes) are
    /// counted in `not_written_error`.
    pub fn write_batch(&mut self, b: &Batch, now: SystemTime) {
        let n = b.len();
        let mut i = 0;
        let mut idbs = Vec::new();
        while i < n {
            let rest = (n - i) as u64;
            match self.state {
                FileState::Disabled => return,
                FileState::Stopped { .. } => {
                    self.stats.not_written_stopped += rest;
                    return;
                }
                _ => {}
            }
            if self.stop_seconds_due(now) {
                self.stop("seconds");
                self.stats.not_written_stopped += rest;
                return;
            }
            if matches!(self.state, FileState::Error { .. }) {
                self.stats.not_written_error += rest;
                return;
            }
            if self.time_rotation_due(now) && !self.close_current(now) {
                self.stats.not_written_error += rest;
                return;
            }
            if self.current.is_none() && !self.open_file(now) {
                self.stats.not_written_error += rest;
                return;
            }
            let Some(cur) = self.current.as_mut() else {
                return;
            };
            idbs.clear();
            cur.encoder.describe(&b.ifaces, &mut idbs);

            // The packets i..j that go to this file now.
            let (mut j, mut len, mut caplen) = (i, idbs.len() as u64, 0u64);
            let (mut rotate, mut over_bytes) = (false, false);
            let stop_bytes = self.cfg.stop_bytes;
            let stop_packets = self.cfg.stop_packets;
            while j < n {
                let block = (b.start(j + 1) - b.start(j)) as u64;
                let c = u64::from(b.index[j].caplen);
                if self.rotate_bytes > 0
                    && cur.packets + (j - i) as u64 > 0
                    && cur.bytes + len + block > self.rotate_bytes
                {
                    rotate = true;
                    break;
                }
                if stop_bytes > 0 && self.captured_bytes + caplen + c > stop_bytes {
                    over_bytes = true;
                    break;
                }
                len += block;
                caplen += c;
                j += 1;
                if (stop_packets > 0 && self.stats.packets_written + (j - i) as u64 >= stop_packets)
                    || (stop_bytes > 0 && self.captured_bytes + caplen >= stop_bytes)
                {
                    break;
                }
            }

            let written = (j - i) as u64;
            let r = cur
                .out
                .put(&idbs, 0)
                .and_then(|()| cur.out.put(b.blocks_of(i..j), written));
            if let Err(e) = r {
                let msg = format!("{e} writing {}", cur.path.display());
                self.fail(msg, now);
                self.stats.not_written_error += written;
                i = j;
                continue;
            }
            cur.bytes += len;
            cur.packets += written;
            self.stats.packets_written += written;
            self.stats.bytes_written += len;
            self.captured_bytes += caplen;
            i = j;

            if stop_packets > 0 && self.stats.packets_written >= stop_packets {
                self.stop("packets");
            } else if over_bytes || (stop_bytes > 0 && self.captured_bytes >= stop_bytes) {
                self.stop("bytes");
            } else if rotate {
                // The next round opens the next file (or counts the rest
                // as not written if this one cannot be closed).
                self.close_current(now);
            }
        }
    }

    /// Periodic work: applies `stop_seconds` and time rotation without
    /// traffic (a file whose time is up is closed; the next packet opens the
    /// next one), flushes the buffered writer, retries after an error
    /// (opening a new file, at least a second after the last failure), and
    /// refreshes the file listing (at most once a second).
    pub fn tick(&mut self, now: SystemTime) {
        match self.state {
            FileState::Disabled => return,
            FileState::Stopped { .. } => {}
            FileState::Error { .. } => {
                if self.stop_seconds_due(now) {
                    self.stop("seconds");
                } else if self.retry_due(now) && self.open_file(now) {
                    tracing::info!(capture = %self.name, dir = %self.dir.display(), "capture files: writing again");
                }
            }
            FileState::Idle | FileState::Writing => {
                if self.stop_seconds_due(now) {
                    self.stop("seconds");
                } else if self.time_rotation_due(now) {
                    self.close_current(now);
                } else if let Some(cur) = self.current.as_mut() {
                    match cur.out.flush() {
                        Ok(()) => {}
                        Err(e) => {
                            let msg = format!("{e} flushing {}", cur.path.display());
                            self.fail(msg, now);
                        }
                    }
                }
            }
        }
        let relist = match self.listed_at {
            None => true,
            Some(at) => now.duration_since(at).map_or(true, |d| d >= RELIST_EVERY),
        };
        if relist {
            self.relist(now);
        }
    }

    /// Current status (from the cached listing; no file system access).
    pub fn status(&self) -> FilesStatus {
        let mut files = self.listing.clone();
        if let Some(cur) = &self.current {
            match files.iter_mut().find(|f| f.path == cur.path) {
                Some(f) => f.bytes = cur.bytes,
                None => files.push(FileInfo {
                    path: cur.path.clone(),
                    bytes: cur.bytes,
                }),
            }
        }
        FilesStatus {
            state: self.state.clone(),
            dir: self.dir.clone(),
            current: self.current.as_ref().map(|c| c.path.clone()),
            files,
            stats: self.stats.clone(),
        }
    }

    fn stop_seconds_due(&self, now: SystemTime) -> bool {
        self.cfg.stop_seconds > 0
            && elapsed(self.started, now) >= Duration::from_secs(self.cfg.stop_seconds)
    }

    fn time_rotation_due(&self, now: SystemTime) -> bool {
        self.cfg.rotate_seconds > 0
            && self.current.as_ref().is_some_and(|c| {
                elapsed(c.opened, now) >= Duration::from_secs(self.cfg.rotate_seconds)
            })
    }

    fn retry_due(&self, now: SystemTime) -> bool {
        match self.last_failure {
            None => true,
            // A clock that went back does not postpone the retry.
            Some(at) => now.duration_since(at).map_or(true, |d| d >= RETRY_AFTER),
        }
    }

    /// Moves to Stopped, flushing and closing the current file.
    fn stop(&mut self, reason: &str) {
        if let Some(cur) = self.current.take() {
            let path = cur.path.clone();
            if let Err(e) = finish(cur) {
                self.stats.write_errors += 1;
                tracing::warn!(capture = %self.name, "capture files: {e} flushing {} at stop", path.display());
            }
        }
        tracing::info!(capture = %self.name, reason, "capture files: stop condition reached");
        self.state = FileState::Stopped {
            reason: reason.to_string(),
        };
    }

    /// Flushes and closes the current file; false (and Error) if the flush
    /// failed.
    fn close_current(&mut self, now: SystemTime) -> bool {
        let Some(cur) = self.current.take() else {
            return true;
        };
        let path = cur.path.clone();
        let (unflushed, buffered) = (cur.out.unflushed(), cur.out.unwritten());
        match finish(cur) {
            Ok(()) => true,
            Err(e) => {
                self.stats.packets_written -= unflushed.min(self.stats.packets_written);
                self.stats.bytes_written -= buffered.min(self.stats.bytes_written);
                self.stats.not_written_error += unflushed;
                self.fail(format!("{e} flushing {}", path.display()), now);
                false
            }
        }
    }

    /// Opens the next file (creating the directory), writes its header,
    /// prunes old files; false (and Error) on failure.
    fn open_file(&mut self, now: SystemTime) -> bool {
        if let Err(e) = fs::create_dir_all(&self.dir) {
            self.fail(
                format!("{e} creating directory {}", self.dir.display()),
                now,
            );
            return false;
        }
        let stamp = utc_stamp(now);
        let base = format!("{}-{stamp}", self.name);
        // Files opened within one microsecond (rotations inside one batch)
        // take increasing suffixes, never the name of one pruned meanwhile,
        // so names keep sorting in the order the files were written.
        let first = match &self.last_name {
            Some((s, n)) if *s == stamp => n + 1,
            _ => 0,
        };
        let mut opened = None;
        for n in first..first + MAX_SUFFIX {
            let file_name = if n == 0 {
                format!("{base}.pcapng")
            } else {
                format!("{base}-{n}.pcapng")
            };
            let path = self.dir.join(file_name);
            match DirectFile::create_new(&path) {
                Ok(file) => {
                    opened = Some((path, file));
                    self.last_name = Some((stamp.clone(), n));
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    self.fail(format!("{e} creating {}", path.display()), now);
                    return false;
                }
            }
        }
        let Some((path, file)) = opened else {
            let msg = format!(
                "no free file name for {base}.pcapng in {}",
                self.dir.display()
            );
            self.fail(msg, now);
            return false;
        };

        let mut encoder = PcapngEncoder::new();
        let header = encoder.header();
        let mut out = file;
        // Written at once: a disk that cannot take a header fails here, not
        // a packet later.
        if let Err(e) = out.put(&header, 0).and_then(|()| out.flush()) {
            drop(out);
            // The file holds no packet: remove it, or every retry during a
            // long outage would leave one more empty file behind.
            let _ = fs::remove_file(&path);
            self.fail(format!("{e} writing {}", path.display()), now);
            return false;
        }
        self.stats.files_opened += 1;
        self.stats.bytes_written += header.len() as u64;
        self.current = Some(OpenFile {
            path,
            out,
            encoder,
            bytes: header.len() as u64,
            packets: 0,
            opened: now,
        });
        self.state = FileState::Writing;
        self.prune();
        self.relist(now);
        true
    }

    /// Deletes this capture's oldest files beyond `max_files` (never the
    /// current one).
    fn prune(&mut self) {
        let max = self.cfg.max_files as usize;
        if max == 0 {
            return;
        }
        let files = list_files(&self.dir, &self.name);
        let excess = files.len().saturating_sub(max);
        let current = self.current.as_ref().map(|c| c.path.as_path());
        for f in files
            .iter()
            .filter(|f| Some(f.path.as_path()) != current)
            .take(excess)
        {
            match fs::remove_file(&f.path) {
                Ok(()) => self.stats.files_deleted += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(capture = %self.name, "capture files: {e} deleting {}", f.path.display());
                }
            }
        }
    }

    /// Enters Error: drops the current file unflushed (it stays on disk as
    /// far as it was written).
    fn fail(&mut self, error: String, now: SystemTime) {
        if let Some(cur) = self.current.take() {
            // The packets still buffered never reach the disk: they were
            // not written after all.
            let (unflushed, buffered) = (cur.out.unflushed(), cur.out.unwritten());
            self.stats.packets_written -= unflushed.min(self.stats.packets_written);
            self.stats.bytes_written -= buffered.min(self.stats.bytes_written);
            self.stats.not_written_error += unflushed;
            // The buffer is dropped, not written.
            drop(cur);
        }
        if !matches!(self.state, FileState::Error { .. }) {
            tracing::warn!(capture = %self.name, "capture files: {error}; packets are not written until a new file can be opened");
        }
        self.stats.write_errors += 1;
        self.last_failure = Some(now);
        self.state = FileState::Error {
            error,
            since_unix_ms: unix_ms(now),
        };
        self.relist(now);
    }

    fn relist(&mut self, now: SystemTime) {
        self.listing = list_files(&self.dir, &self.name);
        self.listed_at = Some(now);
    }
}

/// Flushes and closes a file.
fn finish(mut cur: OpenFile) -> io::Result<()> {
    // On error the unwritten rest is dropped with the file.
    cur.out.flush()
}

fn elapsed(from: SystemTime, now: SystemTime) -> Duration {
    now.duration_since(from).unwrap_or_default()
}

fn unix_ms(t: SystemTime) -> u64 {
    u64::try_from(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()).unwrap_or(u64::MAX)
}

/// `YYYYMMDDTHHMMSS.ffffffZ` (UTC, microseconds) of `t`.
fn utc_stamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days(secs / 86_400);
    let s = secs % 86_400;
    format!(
        "{y:04}{m:02}{day:02}T{:02}{:02}{:02}.{:06}Z",
        s / 3600,
        s % 3600 / 60,
        s % 60,
        d.subsec_micros()
    )
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01
/// (H. Hinnant's `civil_from_days`, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Sort key of a file name of capture `name` (`<name>-<stamp>.pcapng` or
/// `<name>-<stamp>-<n>.pcapng`), None for any other name.
fn file_key<'a>(name: &str, file_name: &'a str) -> Option<(&'a str, u64)> {
    let rest = file_name
        .strip_prefix(name)?
        .strip_prefix('-')?
        .strip_suffix(".pcapng")?;
    let (stamp, n) = match rest.split_once('-') {
        None => (rest, 0),
        Some((stamp, n)) => {
            let ok = !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && !n.starts_with('0');
            (stamp, if ok { n.parse().ok()? } else { return None })
        }
    };
    let b = stamp.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    let ok = b.len() == 23
        && digits(0..8)
        && b[8] == b'T'
        && digits(9..15)
        && b[15] == b'.'
        && digits(16..22)
        && b[22] == b'Z';
    ok.then_some((stamp, n))
}

/// This capture's files in `dir`, oldest first (missing directory: none).
fn list_files(dir: &Path, name: &str) -> Vec<FileInfo> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<((String, u64), FileInfo)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let file_name = entry.file_name();
            let (stamp, n) = file_key(name, file_name.to_str()?)?;
            let meta = entry.metadata().ok()?;
            meta.is_file().then(|| {
                (
                    (stamp.to_string(), n),
                    FileInfo {
                        path: entry.path(),
                        bytes: meta.len(),
                    },
                )
            })
        })
        .collect();
    files.sort_by(|a, b| a.0.cmp(&b.0));
    files.into_iter().map(|(_, f)| f).collect()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
    use pcap_file::pcapng::{Block, PcapNgReader};
    use vtap_abi::Dir;

    use super::super::IfaceDir;
    use super::*;

    /// A unique directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            static N: AtomicU64 = AtomicU64::new(0);
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let path = std::env::temp_dir().join(format!(
                "vtap-capture-files-{tag}-{}-{nanos}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// 2026-11-22T03:15:00.123456Z
    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::new(1_795_317_300, 123_456_000)
    }

    fn at(ms: u64) -> SystemTime {
        t0() + Duration::from_millis(ms)
    }

    fn cfg() -> CaptureConfig {
        CaptureConfig {
            rotate_mib: 0,
            rotate_seconds: 0,
            max_files: 0,
            stop_packets: 0,
            stop_bytes: 0,
            stop_seconds: 0,
            files: true,
        }
    }

    /// Packet `i`: `len` bytes of `i as u8`, alternating two interfaces.
    fn pkt(i: u64, len: usize) -> Packet {
        let (ifindex, dir) = if i.is_multiple_of(2) {
            (4, Dir::Ingress)
        } else {
            (5, Dir::Egress)
        };
        Packet {
            ts_ns: 1_795_317_300_000_000_000 + i * 1_000_001,
            orig_len: len as u32 + 10,
            data: vec![i as u8; len].into(),
            iface: IfaceDir {
                ifindex,
                ifname: format!("tap{ifindex}").into(),
                dir,
            },
            policies: vec![format!("pol{i}")].into(),
        }
    }

    /// (ts_ns, data, orig_len, if_name, comment) of every packet of a file.
    type Row = (u64, Vec<u8>, u32, String, String);

    fn read_pcapng(path: &Path) -> Vec<Row> {
        let bytes = fs::read(path).unwrap();
        let mut reader =
            PcapNgReader::new(&bytes[..]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut rows = Vec::new();
        while let Some(block) = reader.next_block() {
            let block = block
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                .into_owned();
            if let Block::EnhancedPacket(epb) = block {
                let idb = reader.packet_interface(&epb).expect("interface described");
                let if_name = idb
                    .options
                    .iter()
                    .find_map(|o| match o {
                        InterfaceDescriptionOption::IfName(n) => Some(n.to_string()),
                        _ => None,
                    })
                    .unwrap();
                let comment = match &epb.options[..] {
                    [
                        pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketOption::Comment(
                            c,
                        ),
                    ] => c.to_string(),
                    other => panic!("options {other:?}"),
                };
                rows.push((
                    epb.timestamp.as_nanos() as u64,
                    epb.data.to_vec(),
                    epb.original_len,
                    if_name,
                    comment,
                ));
            }
        }
        rows
    }

    fn row(p: &Packet) -> Row {
        (
            p.ts_ns,
            p.data.to_vec(),
            p.orig_len,
            format!("{}:{}", p.iface.ifname, p.iface.dir.as_str()),
            format!("policy: {}", p.policies.join(", ")),
        )
    }

    fn file_names(st: &FilesStatus) -> Vec<String> {
        st.files
            .iter()
            .map(|f| f.path.file_name().unwrap().to_str().unwrap().to_string())
            .collect()
    }

    /// Every file of the status, read back, in listing order.
    fn all_rows(st: &FilesStatus) -> Vec<Vec<Row>> {
        st.files.iter().map(|f| read_pcapng(&f.path)).collect()
    }

    fn writing_packets(
        files: &mut CaptureFiles,
        range: std::ops::Range<u64>,
        len: usize,
        now: SystemTime,
    ) -> Vec<Packet> {
        range
            .map(|i| {
                let p = pkt(i, len);
                files.write(&p, now);
                p
            })
            .collect()
    }

    /// Batches of `chunk` packets of the given lengths, encoded by one
    /// capture encoder (as the ring reader does).
    fn batches(lens: &[usize], chunk: usize) -> Vec<Batch> {
        let mut enc = CaptureEncoder::new();
        let mut out = Vec::new();
        let mut seq = 0;
        for c in lens.chunks(chunk) {
            let mut buf = BatchBuf::default();
            for &len in c {
                enc.push_packet(&mut buf, &pkt(seq, len));
                seq += 1;
            }
            out.push(buf.finish(seq - c.len() as u64, enc.ifaces()));
        }
        out
    }

    #[test]
    fn a_batch_is_written_as_its_packets_one_by_one() {
        let lens: Vec<usize> = (0..40).map(|i| 20 + (i * 37) % 90).collect();
        let configs: Vec<(&str, CaptureConfig, u64)> = vec![
            ("plain", cfg(), 0),
            ("rotate", cfg(), 700),
            ("rotate-tiny", cfg(), 1),
            (
                "stop-packets",
                CaptureConfig {
                    stop_packets: 13,
                    ..cfg()
                },
                500,
            ),
            (
                "stop-bytes",
                CaptureConfig {
                    stop_bytes: 1000,
                    ..cfg()
                },
                0,
            ),
            (
                "stop-bytes-exact",
                CaptureConfig {
                    stop_bytes: lens[..9].iter().sum::<usize>() as u64,
                    ..cfg()
                },
                900,
            ),
            (
                "max-files",
                CaptureConfig {
                    max_files: 2,
                    ..cfg()
                },
                600,
            ),
        ];
        for (tag, c, rotate) in configs {
            let one = TempDir::new(&format!("{tag}-one"));
            let mut files = CaptureFiles::new(&one.0, "cap", c.clone(), t0())
                .unwrap()
                .with_rotate_bytes(rotate);
            for (i, &len) in lens.iter().enumerate() {
                files.write(&pkt(i as u64, len), at(i as u64));
            }
            files.tick(at(1_000));
            let want = files.status();
            assert!(want.stats.packets_written > 0, "{tag}");
            for chunk in [2, 3, 7, 40] {
                let many = TempDir::new(&format!("{tag}-{chunk}"));
                let mut files = CaptureFiles::new(&many.0, "cap", c.clone(), t0())
                    .unwrap()
                    .with_rotate_bytes(rotate);
                for (k, b) in batches(&lens, chunk).iter().enumerate() {
                    files.write_batch(b, at((k * chunk) as u64));
                }
                files.tick(at(1_000));
                let got = files.status();
                assert_eq!(got.state, want.state, "{tag} chunk {chunk}");
                assert_eq!(got.stats, want.stats, "{tag} chunk {chunk}");
                assert_eq!(all_rows(&got), all_rows(&want), "{tag} chunk {chunk}");
            }
        }
    }

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(UNIX_EPOCH), "19700101T000000.000000Z");
        assert_eq!(utc_stamp(t0()), "20261122T031500.123456Z");
        assert_eq!(
            utc_stamp(UNIX_EPOCH + Duration::new(1_709_251_199, 999_999_999)),
            "20240229T235959.999999Z"
        );
        assert_eq!(
            utc_stamp(UNIX_EPOCH + Duration::from_secs(951_868_800)),
            "20000301T000000.000000Z"
        );
        assert_eq!(
            utc_stamp(UNIX_EPOCH + Duration::new(4_133_939_696, 1_000)),
            "21001231T123456.000001Z"
        );
        // Before the epoch: clamped, no panic.
        assert_eq!(
            utc_stamp(UNIX_EPOCH - Duration::from_secs(5)),
            "19700101T000000.000000Z"
        );
    }

    #[test]
    fn file_keys() {
        assert_eq!(
            file_key("cap", "cap-20261122T031500.123456Z.pcapng"),
            Some(("20261122T031500.123456Z", 0))
        );
        assert_eq!(
            file_key("cap", "cap-20261122T031500.123456Z-12.pcapng"),
            Some(("20261122T031500.123456Z", 12))
        );
        for other in [
            "cap-20261122T031500.123456Z.pcap",
            "cap-20261122T031500.123456Z-0.pcapng",
            "cap-20261122T031500.123456Z-01.pcapng",
            "cap-20261122T031500.123456Z-.pcapng",
            "cap-20261122T031500.123456Z-x.pcapng",
            "cap-20261122T031500.12345Z.pcapng",
            "cap-2026112xT031500.123456Z.pcapng",
            "capx-20261122T031500.123456Z.pcapng",
            "cap.x-20261122T031500.123456Z.pcapng",
            "other-20261122T031500.123456Z.pcapng",
            "cap-.pcapng",
            "cap.pcapng",
            "notes.txt",
        ] {
            assert_eq!(file_key("cap", other), None, "{other}");
        }
        // A name with '-' in it.
        assert_eq!(
            file_key("a-b", "a-b-20261122T031500.123456Z-3.pcapng"),
            Some(("20261122T031500.123456Z", 3))
        );
    }

    #[test]
    fn invalid_name_is_refused() {
        let tmp = TempDir::new("badname");
        for bad in ["../x", "/abs", "a/b", "", ".", "a..b"] {
            let err = CaptureFiles::new(&tmp.0, bad, cfg(), t0()).unwrap_err();
            assert!(err.starts_with("capture name"), "{bad}: {err}");
        }
        assert_eq!(fs::read_dir(&tmp.0).unwrap().count(), 0);
    }

    #[test]
    fn disabled_writes_nothing() {
        let tmp = TempDir::new("disabled");
        let mut files = CaptureFiles::new(
            &tmp.0,
            "cap",
            CaptureConfig {
                files: false,
                ..cfg()
            },
            t0(),
        )
        .unwrap();
        files.write(&pkt(0, 10), at(0));
        files.tick(at(2000));
        let st = files.status();
        assert_eq!(st.state, FileState::Disabled);
        assert_eq!(st.stats, FileStats::default());
        assert!(!tmp.0.join("captures").exists());
    }

    #[test]
    fn first_packet_creates_directory_and_file() {
        let tmp = TempDir::new("first");
        let mut files = CaptureFiles::new(&tmp.0, "web", CaptureConfig::default(), t0()).unwrap();
        let dir = tmp.0.join("captures").join("web");
        let st = files.status();
        assert_eq!(st.state, FileState::Idle);
        assert_eq!(st.dir, dir);
        assert_eq!(st.current, None);
        assert!(st.files.is_empty());
        files.tick(at(100));
        assert!(!dir.exists(), "directory is created lazily");

        let sent = writing_packets(&mut files, 0..5, 100, at(200));
        let st = files.status();
        assert_eq!(st.state, FileState::Writing);
        let current = st.current.clone().unwrap();
        assert_eq!(current, dir.join("web-20261122T031500.323456Z.pcapng"));
        assert_eq!(file_names(&st), ["web-20261122T031500.323456Z.pcapng"]);
        assert_eq!(st.stats.packets_written, 5);
        assert_eq!(st.stats.files_opened, 1);
        // The listing shows the bytes handed over, buffered ones included.
        assert_eq!(st.files[0].bytes, st.stats.bytes_written);
        files.tick(at(300));
        assert_eq!(
            fs::metadata(&current).unwrap().len(),
            st.stats.bytes_written
        );
        assert_eq!(
            read_pcapng(&current),
            sent.iter().map(row).collect::<Vec<_>>()
        );
        assert_eq!(files.status().files[0].bytes, st.stats.bytes_written);
    }

    #[test]
    fn rotation_by_size() {
        let tmp = TempDir::new("size");
        let mut files = CaptureFiles::new(&tmp.0, "cap", cfg(), t0())
            .unwrap()
            .with_rotate_bytes(1000);
        let mut sent = Vec::new();
        for i in 0..20u64 {
            let p = pkt(i, 150);
            files.write(&p, at(i * 10));
            sent.push(p);
        }
        files.tick(at(1000));
        let st = files.status();
        assert_eq!(st.state, FileState::Writing);
        assert!(st.files.len() >= 4, "{st:?}");
        assert_eq!(st.stats.files_opened as usize, st.files.len());
        assert_eq!(st.current.as_ref(), Some(&st.files.last().unwrap().path));
        for f in &st.files {
            assert!(f.bytes <= 1000, "{f:?}");
            assert_eq!(fs::metadata(&f.path).unwrap().len(), f.bytes);
        }
        assert_eq!(
            st.files.iter().map(|f| f.bytes).sum::<u64>(),
            st.stats.bytes_written
        );
        // Every file is a valid pcapng on its own; together they hold every
        // packet, in order.
        let rows = all_rows(&st);
        assert!(rows.iter().all(|r| !r.is_empty()));
        assert_eq!(rows.concat(), sent.iter().map(row).collect::<Vec<_>>());
        assert_eq!(st.stats.packets_written, 20);
        assert_eq!(st.stats.not_written_error + st.stats.not_written_stopped, 0);
    }

    #[test]
    fn rotation_by_size_keeps_at_least_one_packet_per_file() {
        let tmp = TempDir::new("onepkt");
        let mut files = CaptureFiles::new(&tmp.0, "cap", cfg(), t0())
            .unwrap()
            .with_rotate_bytes(1);
        // Same `now` for all: names collide and get -1, -2, … in order.
        let sent = writing_packets(&mut files, 0..4, 2000, at(0));
        let st = files.status();
        assert_eq!(
            file_names(&st),
            [
                "cap-20261122T031500.123456Z.pcapng",
                "cap-20261122T031500.123456Z-1.pcapng",
                "cap-20261122T031500.123456Z-2.pcapng",
                "cap-20261122T031500.123456Z-3.pcapng",
            ]
        );
        files.tick(at(10));
        let rows = all_rows(&files.status());
        assert_eq!(rows, sent.iter().map(|p| vec![row(p)]).collect::<Vec<_>>());
    }

    #[test]
    fn rotation_by_mib() {
        let tmp = TempDir::new("mib");
        let mut files = CaptureFiles::new(
            &tmp.0,
            "cap",
            CaptureConfig {
                rotate_mib: 1,
                ..cfg()
            },
            t0(),
        )
        .unwrap();
        // 3 × 400 KiB packets: the third would pass 1 MiB.
        writing_packets(&mut files, 0..3, 400 * 1024, at(0));
        let st = files.status();
        assert_eq!(st.files.len(), 2);
        assert!(st.files[0].bytes <= MIB && st.files[0].bytes > 800 * 1024);
        files.tick(at(1));
        assert_eq!(
            all_rows(&files.status())
                .iter()
                .map(Vec::len)
                .collect::<Vec<_>>(),
            [2, 1]
        );
    }

    #[test]
    fn rotation_by_time() {
        let tmp = TempDir::new("time");
        let mut files = CaptureFiles::new(
            &tmp.0,
            "cap",
            CaptureConfig {
                rotate_seconds: 10,
                ..cfg()
            },
            t0(),
        )
        .unwrap();
        let p0 = pkt(0, 60);
        let p1 = pkt(1, 60);
        let p2 = pkt(2, 60);
        let p3 = pkt(3, 60);
        files.write(&p0, at(1_000));
        files.write(&p1, at(10_999)); // 9.999 s after the open: same file
        files.tick(at(10_999));
        assert_eq!(files.status().files.len(), 1);
        files.write(&p2, at(11_000)); // 10 s: next file
        assert_eq!(files.status().files.len(), 2);

        // Without traffic, tick closes the file when its time is up.
        files.tick(at(20_999));
        assert!(files.status().current.is_some());
        files.tick(at(21_000));
        let st = files.status();
        assert_eq!(st.current, None);
        assert_eq!(st.state, FileState::Writing);
        assert_eq!(st.files.len(), 2);
        files.write(&p3, at(40_000));
        let st = files.status();
        assert_eq!(
            file_names(&st),
            [
                "cap-20261122T031501.123456Z.pcapng",
                "cap-20261122T031511.123456Z.pcapng",
                "cap-20261122T031540.123456Z.pcapng",
            ]
        );
        files.tick(at(40_001));
        assert_eq!(
            all_rows(&files.status()),
            [vec![row(&p0), row(&p1)], vec![row(&p2)], vec![row(&p3)]]
        );
        assert_eq!(files.status().stats.files_opened, 3);
    }

    #[test]
    fn clock_going_back_does_not_panic_or_rotate() {
        let tmp = TempDir::new("clock");
        let c = CaptureConfig {
            rotate_seconds: 10,
            stop_seconds: 100,
            ..cfg()
        };
        let mut files = CaptureFiles::new(&tmp.0, "cap", c, at(50_000)).unwrap();
        files.write(&pkt(0, 10), at(50_000));
        files.write(&pkt(1, 10), at(0));
        files.tick(at(0));
        files.write(&pkt(2, 10), at(1));
        let st = files.status();
        assert_eq!(st.state, FileState::Writing);
        assert_eq!(st.files.len(), 1);
        assert_eq!(st.stats.packets_written, 3);
    }

    #[test]
    fn max_files_deletes_the_oldest() {
        let tmp = TempDir::new("max");
        let dir = tmp.0.join("captures").join("cap");
        fs::create_dir_all(&dir).unwrap();
        // Foreign files in the directory are never touched.
        let foreign = [
            "notes.txt",
            "cap-19990101T000000.000000Z.pcap",
            "other-19990101T000000.000000Z.pcapng",
            "cap-old.pcapng",
        ];
        for f in foreign {
            fs::write(dir.join(f), b"x").unwrap();
        }
        // A file of a previous run of this capture counts (and is oldest).
        fs::write(dir.join("cap-20000101T000000.000000Z.pcapng"), b"old").unwrap();

        let c = CaptureConfig {
            max_files: 3,
            ..cfg()
        };
        let mut files = CaptureFiles::new(&tmp.0, "cap", c, t0())
            .unwrap()
            .with_rotate_bytes(1);
        assert_eq!(
            file_names(&files.status()),
            ["cap-20000101T000000.000000Z.pcapng"]
        );
        let mut sent = Vec::new();
        for i in 0..7u64 {
            let p = pkt(i, 100);
            files.write(&p, at(i * 1000));
            sent.push(p);
            assert!(files.status().files.len() <= 3);
        }
        files.tick(at(10_000));
        let st = files.status();
        assert_eq!(
            file_names(&st),
            [
                "cap-20261122T031504.123456Z.pcapng",
                "cap-20261122T031505.123456Z.pcapng",
                "cap-20261122T031506.123456Z.pcapng",
            ]
        );
        assert_eq!(st.stats.files_opened, 7);
        assert_eq!(st.stats.files_deleted, 5);
        assert_eq!(
            all_rows(&st),
            sent[4..].iter().map(|p| vec![row(p)]).collect::<Vec<_>>()
        );
        for f in foreign {
            assert!(dir.join(f).exists(), "{f}");
        }
    }

    #[test]
    fn stop_by_packets() {
        let tmp = TempDir::new("stoppkts");
        let mut files = CaptureFiles::new(
            &tmp.0,
            "cap",
            CaptureConfig {
                stop_packets: 3,
                ..cfg()
            },
            t0(),
        )
        .unwrap();
        let sent = writing_packets(&mut files, 0..2, 50, at(0));
        assert_eq!(files.status().state, FileState::Writing);
        let third = pkt(2, 50);
        files.write(&third, at(1));
        let st = files.status();
        assert_eq!(
            st.state,
            FileState::Stopped {
                reason: "packets".into()
            }
        );
        assert_eq!(st.current, None, "closed at the stop");
        writing_packets(&mut files, 3..5, 50, at(2));
        files.tick(at(5000));
        let st = files.status();
        assert_eq!(
            st.state,
            FileState::Stopped {
                reason: "packets".into()
            }
        );
        assert_eq!(st.stats.packets_written, 3);
        assert_eq!(st.stats.not_written_stopped, 2);
        assert_eq!(st.files.len(), 1);
        // Flushed at the stop, complete on disk.
        assert_eq!(
            fs::metadata(&st.files[0].path).unwrap().len(),
            st.stats.bytes_written
        );
        let mut want: Vec<_> = sent.iter().map(row).collect();
        want.push(row(&third));
        assert_eq!(all_rows(&st), [want]);
    }

    #[test]
    fn stop_by_bytes() {
        // 250 bytes, 100-byte packets: the third would pass the limit and
        // is not written.
        let tmp = TempDir::new("stopbytes");
        let mut files = CaptureFiles::new(
            &tmp.0,
            "cap",
            CaptureConfig {
                stop_bytes: 250,
                ..cfg()
            },
            t0(),
        )
        .unwrap();
        writing_packets(&mut files, 0..2, 100, at(0));
        assert_eq!(files.status().state, FileState::Writing);
        writing_packets(&mut files, 2..4, 100, at(1));
        let st = files.status();
        assert_eq!(
            st.state,
            FileState::Stopped {
                reason: "bytes".into()
            }
        );
        assert_eq!(
            (st.stats.packets_written, st.stats.not_written_stopped),
            (2, 2)
        );
        assert_eq!(all_rows(&st)[0].len(), 2);

        // Exactly reached: stopped right after the write.
        let tmp = TempDir::new("stopbytes2");
        let mut files = CaptureFiles::new(
            &tmp.0,
            "cap",
            CaptureConfig {
                stop_bytes: 200,
                ..cfg()
            },
            t0(),
        )
        .unwrap();
        writing_packets(&mut files, 0..2, 100, at(0));
        let st = files.status();
        assert_eq!(
            st.state,
            FileState::Stopped {
                reason: "bytes".into()
            }
        );
        assert_eq!(
            (st.stats.packets_written, st.stats.not_written_stopped),
            (2, 0)
        );
    }

    #[test]
    fn stop_by_seconds() {
        let tmp = TempDir::new("stopsecs");
        let mut files = CaptureFiles::new(
            &tmp.0,
            "cap",
            CaptureConfig {
                stop_seconds: 5,
                ..cfg()
            },
            t0(),
        )
        .unwrap();
        writing_packets(&mut files, 0..2, 10, at(4_999));
        files.tick(at(4_999));
        assert_eq!(files.status().state, FileState::Writing);
        files.tick(at(5_000));
        let st = files.status();
        assert_eq!(
            st.state,
            FileState::Stopped {
                reason: "seconds".into()
            }
        );
        assert_eq!(st.current, None);
        writing_packets(&mut files, 2..3, 10, at(5_001));
        assert_eq!(files.status().stats.not_written_stopped, 1);
        assert_eq!(all_rows(&files.status())[0].len(), 2);

        // Without a tick, the write itself notices.
        let tmp = TempDir::new("stopsecs2");
        let mut files = CaptureFiles::new(
            &tmp.0,
            "cap",
            CaptureConfig {
                stop_seconds: 5,
                ..cfg()
            },
            t0(),
        )
        .unwrap();
        writing_packets(&mut files, 0..1, 10, at(0));
        writing_packets(&mut files, 1..3, 10, at(6_000));
        let st = files.status();
        assert_eq!(
            st.state,
            FileState::Stopped {
                reason: "seconds".into()
            }
        );
        assert_eq!(
            (st.stats.packets_written, st.stats.not_written_stopped),
            (1, 2)
        );

        // Idle captures stop too.
        let tmp = TempDir::new("stopsecs3");
        let mut files = CaptureFiles::new(
            &tmp.0,
            "cap",
            CaptureConfig {
                stop_seconds: 1,
                ..cfg()
            },
            t0(),
        )
        .unwrap();
        files.tick(at(1_000));
        assert_eq!(
            files.status().state,
            FileState::Stopped {
                reason: "seconds".into()
            }
        );
        assert!(!tmp.0.join("captures").exists());
    }

    #[test]
    fn error_when_directory_cannot_be_created_then_resume() {
        let tmp = TempDir::new("notdir");
        let captures = tmp.0.join("captures");
        fs::create_dir_all(&captures).unwrap();
        let dir = captures.join("cap");
        fs::write(&dir, b"in the way").unwrap();

        let mut files = CaptureFiles::new(&tmp.0, "cap", cfg(), t0()).unwrap();
        files.write(&pkt(0, 10), at(0));
        let st = files.status();
        let FileState::Error {
            error,
            since_unix_ms,
        } = &st.state
        else {
            panic!("{st:?}")
        };
        assert!(
            error.contains(&format!("creating directory {}", dir.display())),
            "{error}"
        );
        assert_eq!(*since_unix_ms, 1_795_317_300_123);
        assert_eq!(st.current, None);
        assert_eq!(st.stats.not_written_error, 1);
        assert_eq!(st.stats.write_errors, 1);

        writing_packets(&mut files, 1..3, 10, at(100));
        assert_eq!(files.status().stats.not_written_error, 3);
        // Less than a second after the failure: no retry.
        fs::remove_file(&dir).unwrap();
        files.tick(at(999));
        assert!(matches!(files.status().state, FileState::Error { .. }));
        assert_eq!(files.status().stats.files_opened, 0);
        // A second later the retry opens a new file.
        files.tick(at(1_000));
        let st = files.status();
        assert_eq!(st.state, FileState::Writing);
        assert_eq!(st.stats.files_opened, 1);
        assert_eq!(st.stats.write_errors, 1);
        let p = pkt(3, 10);
        files.write(&p, at(1_100));
        files.tick(at(1_200));
        let st = files.status();
        assert_eq!(st.stats.packets_written, 1);
        assert_eq!(st.stats.not_written_error, 3);
        assert_eq!(all_rows(&st), [vec![row(&p)]]);
    }

    #[test]
    fn error_on_rotation_after_directory_removed_then_resume() {
        let tmp = TempDir::new("removed");
        let dir = tmp.0.join("captures").join("cap");
        let c = CaptureConfig {
            rotate_seconds: 10,
            ..cfg()
        };
        let mut files = CaptureFiles::new(&tmp.0, "cap", c, t0()).unwrap();
        let first = writing_packets(&mut files, 0..2, 100, at(0));
        let first_path = files.status().current.unwrap();

        // The directory goes away (moved aside) and a file takes its place.
        let moved = tmp.0.join("moved");
        fs::rename(&dir, &moved).unwrap();
        fs::write(&dir, b"in the way").unwrap();
        // The next packet needs a new file (time rotation): that fails.
        writing_packets(&mut files, 2..4, 100, at(10_000));
        let st = files.status();
        let FileState::Error { error, .. } = &st.state else {
            panic!("{st:?}")
        };
        assert!(
            error.starts_with("File exists (os error 17) creating directory"),
            "{error}"
        );
        assert_eq!(st.current, None);
        assert!(
            st.files.is_empty(),
            "listing of the (now missing) directory"
        );
        assert_eq!(
            (st.stats.packets_written, st.stats.not_written_error),
            (2, 2)
        );
        assert_eq!(st.stats.write_errors, 1);
        // The file closed at the rotation is complete where it went.
        let old = moved.join(first_path.file_name().unwrap());
        assert_eq!(read_pcapng(&old), first.iter().map(row).collect::<Vec<_>>());

        // Still broken at the retry: stays in Error, counts one more failure.
        files.tick(at(11_000));
        let st = files.status();
        assert!(
            matches!(st.state, FileState::Error { since_unix_ms, .. } if since_unix_ms == unix_ms(at(11_000)))
        );
        assert_eq!(st.stats.write_errors, 2);

        fs::remove_file(&dir).unwrap();
        files.tick(at(11_500)); // too early
        assert!(matches!(files.status().state, FileState::Error { .. }));
        files.tick(at(12_000));
        assert_eq!(files.status().state, FileState::Writing);
        let p = pkt(9, 100);
        files.write(&p, at(12_100));
        files.tick(at(12_200));
        let st = files.status();
        assert_eq!(st.files.len(), 1);
        assert_eq!(st.files[0].path.parent(), Some(dir.as_path()));
        assert_eq!(all_rows(&st), [vec![row(&p)]]);
        assert_eq!(st.stats.files_opened, 2);
    }

    /// Swaps the open file's writer for one on /dev/full: every write that
    /// reaches it fails with ENOSPC, like a full disk.
    fn fill_disk(files: &mut CaptureFiles, capacity: usize) -> bool {
        let Ok(full) = fs::OpenOptions::new().write(true).open("/dev/full") else {
            return false;
        };
        let cur = files.current.as_mut().unwrap();
        // What was buffered reached the disk before it filled up.
        cur.out.redirect(full, capacity).unwrap();
        true
    }

    #[test]
    fn enospc_on_write_and_flush_then_resume() {
        let tmp = TempDir::new("enospc");
        let mut files = CaptureFiles::new(&tmp.0, "cap", cfg(), t0()).unwrap();
        let p0 = pkt(0, 100);
        files.write(&p0, at(0));
        files.tick(at(1));
        let first = files.status().current.unwrap();
        if !fill_disk(&mut files, 16) {
            eprintln!("no /dev/full: skipped");
            return;
        }
        // The packet does not fit the buffer: the write itself fails.
        files.write(&pkt(1, 100), at(10));
        let st = files.status();
        let FileState::Error {
            error,
            since_unix_ms,
        } = &st.state
        else {
            panic!("{st:?}")
        };
        assert_eq!(
            error,
            &format!(
                "No space left on device (os error 28) writing {}",
                first.display()
            )
        );
        assert_eq!(*since_unix_ms, unix_ms(at(10)));
        assert_eq!(st.current, None);
        assert_eq!((st.stats.write_errors, st.stats.not_written_error), (1, 1));
        writing_packets(&mut files, 2..4, 100, at(20));
        assert_eq!(files.status().stats.not_written_error, 3);
        // The broken file is left as it was (here: complete up to p0).
        assert_eq!(read_pcapng(&first), [row(&p0)]);

        // Space is back: the retry opens a second file.
        files.tick(at(1_010));
        let st = files.status();
        assert_eq!(st.state, FileState::Writing);
        let second = st.current.clone().unwrap();
        assert_ne!(second, first);
        assert_eq!(st.files.len(), 2);

        // Now the flush at tick fails.
        let p4 = pkt(4, 100);
        files.write(&p4, at(1_020));
        assert!(fill_disk(&mut files, 64 * 1024));
        files.write(&pkt(5, 100), at(1_030)); // buffered
        files.tick(at(1_040));
        let st = files.status();
        let FileState::Error { error, .. } = &st.state else {
            panic!("{st:?}")
        };
        assert_eq!(
            error,
            &format!(
                "No space left on device (os error 28) flushing {}",
                second.display()
            )
        );
        assert_eq!(st.stats.write_errors, 2);
        // p5 was still buffered: lost with the file, so not written.
        assert_eq!(
            (st.stats.packets_written, st.stats.not_written_error),
            (2, 4)
        );
        files.tick(at(2_040));
        let p6 = pkt(6, 100);
        files.write(&p6, at(2_050));
        files.tick(at(2_060));
        let st = files.status();
        assert_eq!(st.state, FileState::Writing);
        assert_eq!(st.stats.files_opened, 3);
        assert_eq!(read_pcapng(st.current.as_ref().unwrap()), [row(&p6)]);
        // What reached the second file before the failure stays there.
        assert_eq!(read_pcapng(&second), [row(&p4)]);
    }

    #[test]
    fn file_names_stay_inside_the_capture_directory() {
        let tmp = TempDir::new("inside");
        for name in ["a", "x.y", "v-1_2", &"n".repeat(64)] {
            let mut files = CaptureFiles::new(&tmp.0, name, cfg(), t0())
                .unwrap()
                .with_rotate_bytes(1);
            writing_packets(&mut files, 0..3, 10, at(0));
            files.tick(at(1));
            let st = files.status();
            let dir = tmp.0.join("captures").join(name);
            assert_eq!(st.dir, dir);
            assert_eq!(st.files.len(), 3);
            for f in st.files.iter().map(|f| &f.path).chain(&st.current) {
                assert_eq!(f.parent(), Some(dir.as_path()), "{}", f.display());
                let file_name = f.file_name().unwrap().to_str().unwrap();
                assert!(file_name.starts_with(&format!("{name}-")), "{file_name}");
                assert!(file_key(name, file_name).is_some(), "{file_name}");
                assert_eq!(
                    fs::canonicalize(f).unwrap().parent(),
                    Some(fs::canonicalize(&dir).unwrap().as_path())
                );
            }
        }
        // Nothing outside captures/ was created.
        let top: Vec<_> = fs::read_dir(&tmp.0)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(top, ["captures"]);
    }

    #[test]
    fn status_serialises_with_state_tags() {
        let st = FileState::Stopped {
            reason: "bytes".into(),
        };
        assert_eq!(
            serde_json::to_value(&st).unwrap(),
            serde_json::json!({"state": "stopped", "reason": "bytes"})
        );
        assert_eq!(
            serde_json::to_value(FileState::Idle).unwrap(),
            serde_json::json!({"state": "idle"})
        );
        let err = FileState::Error {
            error: "boom".into(),
            since_unix_ms: 7,
        };
        assert_eq!(
            serde_json::to_value(&err).unwrap(),
            serde_json::json!({"state": "error", "error": "boom", "since_unix_ms": 7})
        );
    }
}
