//! Suricata 7 on a monitor interface, for the end-to-end tests, the demo and
//! benchmarks: a self-contained `suricata.yaml` written into a work
//! directory, Suricata run in IDS mode with AF_PACKET inside a namespace
//! (`ip netns exec NS suricata -c DIR/suricata.yaml --af-packet=IFACE`), and
//! its `eve.json` (alerts, and stats every second) read back.
//!
//! ```no_run
//! use std::time::Duration;
//! use vtap_testbed::suricata::{self, Suricata};
//! use vtap_testbed::{Options, Testbed};
//! # fn main() -> anyhow::Result<()> {
//! let tb = Testbed::new(Options::default().monitor_mtu(65535))?;
//! let ids = tb.start_suricata(0, &suricata::test_rules())?;
//! let d = tb.start_daemon(&[("p.yaml", "version: 1\nname: p\ntaps: [vm1-tap]\noutputs:\n  - interface: mon0\n    vlan: 100\n")])?;
//! tb.ping(1, 2, 3, false)?;
//! let alerts = ids.wait_alerts(Duration::from_secs(10), |a| {
//!     a.iter().filter(|a| a.sid == suricata::SID_ICMP_ECHO).count() >= 3
//! })?;
//! assert!(alerts.iter().all(|a| a.vlan == [100]));
//! let stats = ids.wait_settled(Duration::from_secs(15))?;
//! println!("{} packets, {} dropped, {} truncated", stats.kernel_packets, stats.kernel_drops, stats.trunc_pkt);
//! # drop(d); Ok(()) }
//! ```
//!
//! Capture settings, and why: AF_PACKET with TPACKET_V3 and 1 MiB blocks.
//! Over veth and taps, vtap mirrors GSO super-packets of up to ~64 KiB
//! whole. With TPACKET_V2 (what Suricata 7 uses when `tpacket-v3` is not
//! set) the ring's frame size, i.e. the snap length, comes from the
//! interface MTU: on a 1500-MTU monitor every super-packet is cut to 1530
//! bytes and counted in `decoder.event.afpacket.trunc_pkt`. With TPACKET_V3
//! a packet may fill a whole block, so 1 MiB blocks hold any super-packet
//! whatever the MTU; the testbed still raises the monitor MTU (65535) so
//! that a V2 consumer (or another tool sizing buffers from the MTU) gets
//! them whole too. See `testbed/suricata/README.md`.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use crate::cmd::{self, BgProcess};
use crate::daemon::{HttpResponse, http_request, tail};
use crate::netns::spawn_in_netns;
use crate::testbed::Testbed;

/// SIDs of `testbed/suricata/vtap-test.rules`.
pub const SID_CANARY_TCP: u64 = 9_000_001;
pub const SID_CANARY_HTTP: u64 = 9_000_002;
pub const SID_ICMP_ECHO: u64 = 9_000_003;
pub const SID_UDP_MARKER: u64 = 9_000_004;
pub const SID_SYN_FLOOD: u64 = 9_000_005;

/// URI marker matched by [`SID_CANARY_TCP`] and [`SID_CANARY_HTTP`].
pub const CANARY_URI: &str = "/vtap-canary";
/// UDP payload marker matched by [`SID_UDP_MARKER`].
pub const UDP_MARKER: &str = "vtap-udp-marker";
/// How far eve.json's counters may lag behind the packets: Suricata 7's
/// worker threads publish their counters when the stats "wake up" thread
/// asks, every 3 s, and records are written every `stats_interval` (1 s).
pub const STATS_LAG: Duration = Duration::from_secs(4);

/// SYNs per second from one source to one destination above which
/// [`SID_SYN_FLOOD`] fires (it fires at the 51st within 1 s).
pub const SYN_FLOOD_THRESHOLD: u32 = 50;

/// The test rule set, also compiled in (for binaries run away from the
/// source tree: write it to a file).
pub const TEST_RULES: &str = include_str!("../suricata/vtap-test.rules");

/// Path of `testbed/suricata/vtap-test.rules` in this source tree.
pub fn test_rules() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("suricata")
        .join("vtap-test.rules")
}

/// The Suricata binary: `$SURICATA` or `suricata` from `PATH`.
pub fn suricata_bin() -> PathBuf {
    std::env::var_os("SURICATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("suricata"))
}

/// Suricata's version line (`This is Suricata version 7.0.10 RELEASE`), or
/// `None` when it cannot be run.
pub fn version() -> Option<String> {
    let out = cmd::run(
        std::process::Command::new(suricata_bin()).arg("-V"),
        Duration::from_secs(20),
    )
    .ok()?;
    if !out.success() {
        return None;
    }
    Some(out.stdout.trim().to_string())
}

/// Gate for tests that need Suricata (call after [`crate::require_root`]):
/// `true` when it is installed. Otherwise prints `skipping: needs suricata`
/// and returns `false`, or panics under `CI=true`.
pub fn require_suricata(test: &str) -> bool {
    if version().is_some() {
        return true;
    }
    if crate::in_ci() {
        panic!("{test}: needs suricata (scripts/install-deps.sh), and CI=true forbids skipping");
    }
    eprintln!("{test}: skipping: needs suricata (scripts/install-deps.sh)");
    false
}

/// Capture and engine settings. `Config::default()` is what the tests use.
#[derive(Debug, Clone)]
pub struct Config {
    /// AF_PACKET worker threads (runmode workers).
    pub threads: u32,
    /// TPACKET_V3 (`true`, default) or V2 (`false`, Suricata 7's own default,
    /// whose snap length is the interface MTU + link header).
    pub tpacket_v3: bool,
    /// V3 block size in bytes (a packet must fit in one block; Suricata
    /// refuses to start below 65648 when the MTU is 65535). Power of two,
    /// multiple of the page size.
    pub block_size: u32,
    /// V3 block timeout in milliseconds.
    pub block_timeout_ms: u32,
    /// Ring size in frames. Suricata sizes a frame from the interface MTU
    /// (V3: a block holds block_size / frame-size frames, and the ring has
    /// ring_size / that + 1 blocks), so a fixed frame count gives a ring of
    /// 2 MiB on a 1500-MTU interface and 69 MiB on a 65535-MTU one. `None`:
    /// computed from the interface's MTU for about `ring_bytes`.
    pub ring_size: Option<u32>,
    /// Target ring memory when `ring_size` is `None` (default 64 MiB).
    pub ring_bytes: u64,
    /// AF_PACKET fanout group id; `None`: a fresh one per instance (two
    /// Suricatas on one interface then both see every packet).
    pub cluster_id: Option<u16>,
    /// Stats interval in seconds (stats go to eve.json).
    pub stats_interval: u32,
    /// `HOME_NET`.
    pub home_net: String,
    /// Extra top-level YAML appended to the generated suricata.yaml.
    pub extra_yaml: String,
    /// `stream.midstream` / `async-oneside`: pick up TCP sessions without a
    /// handshake (true, the default: one-way copies of real connections).
    /// False for one-way replays of crafted segments: without a session
    /// their payload is inspected packet by packet.
    pub midstream: bool,
    /// How long to wait for "Engine started".
    pub startup_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            threads: 1,
            tpacket_v3: true,
            block_size: 1 << 20,
            block_timeout_ms: 10,
            ring_size: None,
            ring_bytes: 64 << 20,
            cluster_id: None,
            stats_interval: 1,
            home_net: "[10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fd00::/8]".into(),
            extra_yaml: String::new(),
            midstream: true,
            startup_timeout: Duration::from_secs(60),
        }
    }
}

impl Config {
    /// TPACKET_V2, Suricata 7's default when `tpacket-v3` is not set: the
    /// snap length is the interface's MTU + link header.
    pub fn tpacket_v2(mut self) -> Self {
        self.tpacket_v3 = false;
        self
    }
}

static NEXT_CLUSTER: AtomicU16 = AtomicU16::new(0);

fn next_cluster_id() -> u16 {
    // Fanout groups are per network namespace; distinct ids only matter
    // for two instances in one namespace. Start at a per-process offset.
    let n = NEXT_CLUSTER.fetch_add(1, Ordering::Relaxed);
    200 + ((std::process::id() as u16).wrapping_mul(7).wrapping_add(n) % 60000)
}

/// `classification.config` with the classtypes the test rules use (and a few
/// common ones), so no file outside the work directory is read.
/// `classification.config` written next to a generated config.
pub const CLASSIFICATION: &str = "\
config classification: not-suspicious,Not Suspicious Traffic,3
config classification: unknown,Unknown Traffic,3
config classification: bad-unknown,Potentially Bad Traffic,2
config classification: misc-activity,Misc activity,3
config classification: attempted-recon,Attempted Information Leak,2
config classification: attempted-dos,Attempted Denial of Service,2
config classification: policy-violation,Potential Corporate Privacy Violation,1
";

/// `reference.config` written next to a generated config.
pub const REFERENCE: &str = "\
config reference: url http://
";

fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).expect("string to JSON")
}

/// Frames for a ring of about `ring_bytes` on an interface with `mtu`
/// (Suricata's frame: MTU + link header + tpacket header, ~MTU + 128).
pub fn ring_frames(mtu: u32, ring_bytes: u64) -> u32 {
    (ring_bytes / (mtu as u64 + 128)).clamp(64, 1 << 20) as u32
}

/// MTU of `iface` in namespace `ns`.
pub fn iface_mtu(ns: &str, iface: &str) -> Result<u32> {
    let out = cmd::ip(Some(ns), &["-j", "link", "show", "dev", iface])?;
    let v: Value = serde_json::from_str(&out.stdout)?;
    v.get(0)
        .and_then(|l| l.get("mtu"))
        .and_then(Value::as_u64)
        .map(|m| m as u32)
        .ok_or_else(|| anyhow!("no MTU for {iface} in {ns}: {}", out.stdout))
}

/// The generated `suricata.yaml`; `ring_size` frames per ring.
pub fn config_yaml(
    iface: &str,
    rules: &Path,
    work_dir: &Path,
    c: &Config,
    ring_size: u32,
) -> String {
    let w = |name: &str| yaml_str(&work_dir.join(name).to_string_lossy());
    let cluster = c.cluster_id.unwrap_or_else(next_cluster_id);
    let v3 = if c.tpacket_v3 {
        format!(
            "    tpacket-v3: yes\n    block-size: {}\n    block-timeout: {}\n",
            c.block_size, c.block_timeout_ms
        )
    } else {
        "    tpacket-v3: no\n".to_string()
    };
    format!(
        r#"%YAML 1.1
---
# Generated by vtap-testbed (testbed/src/suricata.rs). Self-contained: no
# setting is taken from /etc/suricata.
vars:
  address-groups:
    HOME_NET: {home_net}
    EXTERNAL_NET: "any"
  port-groups:
    HTTP_PORTS: "80"
default-log-dir: {log_dir}
rule-files:
  - {rules}
classification-file: {classification}
reference-config-file: {reference}
threshold-file: {threshold}
runmode: workers
host-mode: sniffer-only
max-pending-packets: 1024
unix-command:
  enabled: no
threading:
  set-cpu-affinity: no
stats:
  enabled: yes
  interval: {interval}
  decoder-events: true
  decoder-events-prefix: "decoder.event"
  stream-events: false
outputs:
  - eve-log:
      enabled: yes
      filetype: regular
      filename: eve.json
      types:
        - alert:
            tagged-packets: no
        - stats:
            totals: yes
            threads: no
            deltas: no
logging:
  default-log-level: info
  outputs:
    - console:
        enabled: no
    - file:
        enabled: yes
        level: info
        filename: suricata.log
af-packet:
  - interface: {iface}
    threads: {threads}
    cluster-id: {cluster}
    cluster-type: cluster_flow
    defrag: yes
    use-mmap: yes
{v3}    ring-size: {ring}
    checksum-checks: no
vlan:
  use-for-tracking: true
stream:
  memcap: 64mb
  checksum-validation: no
  midstream: {midstream}
  async-oneside: {midstream}
  reassembly:
    memcap: 256mb
    depth: 1mb
app-layer:
  protocols:
    http:
      enabled: yes
      libhtp:
        default-config:
          personality: IDS
    tls:
      enabled: yes
    dns:
      tcp:
        enabled: yes
      udp:
        enabled: yes
{extra}
"#,
        home_net = yaml_str(&c.home_net),
        log_dir = yaml_str(&work_dir.to_string_lossy()),
        rules = yaml_str(&rules.to_string_lossy()),
        classification = w("classification.config"),
        reference = w("reference.config"),
        threshold = w("threshold.config"),
        interval = c.stats_interval.max(1),
        iface = yaml_str(iface),
        threads = c.threads.max(1),
        ring = ring_size,
        extra = c.extra_yaml,
        midstream = c.midstream,
    )
}

/// One `alert` event of eve.json.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub sid: u64,
    pub gid: u64,
    pub rev: u64,
    pub msg: String,
    pub category: String,
    pub src_ip: String,
    pub dest_ip: String,
    pub src_port: Option<u16>,
    pub dest_port: Option<u16>,
    /// `TCP`, `UDP`, `ICMP`, ...
    pub proto: String,
    /// VLAN ids of the packet, outermost first (empty: untagged).
    pub vlan: Vec<u16>,
    pub app_proto: Option<String>,
    pub flow_id: Option<u64>,
    pub in_iface: String,
    /// eve's timestamp, e.g. `2026-11-22T04:47:13.812947+0000`.
    pub timestamp: String,
    /// The whole event.
    pub raw: Value,
}

impl Alert {
    fn from_eve(v: &Value) -> Option<Alert> {
        let a = v.get("alert")?;
        let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let port = |k: &str| v.get(k).and_then(Value::as_u64).map(|p| p as u16);
        Some(Alert {
            sid: a.get("signature_id")?.as_u64()?,
            gid: a.get("gid").and_then(Value::as_u64).unwrap_or(1),
            rev: a.get("rev").and_then(Value::as_u64).unwrap_or(0),
            msg: s(a, "signature"),
            category: s(a, "category"),
            src_ip: s(v, "src_ip"),
            dest_ip: s(v, "dest_ip"),
            src_port: port("src_port"),
            dest_port: port("dest_port"),
            proto: s(v, "proto"),
            vlan: v
                .get("vlan")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_u64)
                        .map(|x| x as u16)
                        .collect()
                })
                .unwrap_or_default(),
            app_proto: v.get("app_proto").and_then(Value::as_str).map(String::from),
            flow_id: v.get("flow_id").and_then(Value::as_u64),
            in_iface: s(v, "in_iface"),
            timestamp: s(v, "timestamp"),
            raw: v.clone(),
        })
    }
}

impl std::fmt::Display for Alert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ep = |ip: &str, p: Option<u16>| match p {
            Some(p) => format!("{ip}:{p}"),
            None => ip.to_string(),
        };
        write!(
            f,
            "{} [{}:{}:{}] {} {} {} -> {} vlan {:?}",
            self.timestamp,
            self.gid,
            self.sid,
            self.rev,
            self.msg,
            self.proto,
            ep(&self.src_ip, self.src_port),
            ep(&self.dest_ip, self.dest_port),
            self.vlan
        )
    }
}

/// Counter names in eve.json `stats` records (Suricata 7), as dotted paths.
pub mod counters {
    /// Packets the kernel handed to (or dropped for) the AF_PACKET sockets
    /// (`PACKET_STATISTICS` tp_packets, drops included).
    pub const KERNEL_PACKETS: &str = "capture.kernel_packets";
    /// Packets the kernel dropped because the ring was full.
    pub const KERNEL_DROPS: &str = "capture.kernel_drops";
    pub const CAPTURE_ERRORS: &str = "capture.errors";
    /// Packets captured shorter than on the wire (snap length < length).
    pub const TRUNC_PKT: &str = "decoder.event.afpacket.trunc_pkt";
    pub const DECODER_PKTS: &str = "decoder.pkts";
    pub const DECODER_BYTES: &str = "decoder.bytes";
    /// Packets with an 802.1Q tag (from the packet or AF_PACKET metadata).
    pub const DECODER_VLAN: &str = "decoder.vlan";
    pub const DECODER_INVALID: &str = "decoder.invalid";
    pub const MAX_PKT_SIZE: &str = "decoder.max_pkt_size";
    /// Alerts raised.
    pub const DETECT_ALERT: &str = "detect.alert";
    pub const UPTIME: &str = "uptime";
}

/// One eve.json `stats` record (totals).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// `timestamp` of the record.
    pub timestamp: String,
    pub uptime: u64,
    pub kernel_packets: u64,
    pub kernel_drops: u64,
    pub capture_errors: u64,
    /// `decoder.event.afpacket.trunc_pkt`.
    pub trunc_pkt: u64,
    pub decoder_pkts: u64,
    pub decoder_bytes: u64,
    pub decoder_vlan: u64,
    pub decoder_invalid: u64,
    pub max_pkt_size: u64,
    /// `detect.alert`.
    pub alerts: u64,
    /// The whole `stats` object.
    pub raw: Value,
}

impl Stats {
    fn from_eve(v: &Value) -> Option<Stats> {
        let st = v.get("stats")?;
        let g = |p: &str| get_path(st, p).unwrap_or(0);
        Some(Stats {
            timestamp: v
                .get("timestamp")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            uptime: g(counters::UPTIME),
            kernel_packets: g(counters::KERNEL_PACKETS),
            kernel_drops: g(counters::KERNEL_DROPS),
            capture_errors: g(counters::CAPTURE_ERRORS),
            trunc_pkt: g(counters::TRUNC_PKT),
            decoder_pkts: g(counters::DECODER_PKTS),
            decoder_bytes: g(counters::DECODER_BYTES),
            decoder_vlan: g(counters::DECODER_VLAN),
            decoder_invalid: g(counters::DECODER_INVALID),
            max_pkt_size: g(counters::MAX_PKT_SIZE),
            alerts: g(counters::DETECT_ALERT),
            raw: st.clone(),
        })
    }

    /// Any counter by dotted path (`"capture.afpacket.polls"`).
    pub fn get(&self, path: &str) -> Option<u64> {
        get_path(&self.raw, path)
    }

    /// One line: the counters the tests look at.
    pub fn summary(&self) -> String {
        format!(
            "uptime {}s kernel_packets {} kernel_drops {} trunc_pkt {} decoder.pkts {} decoder.vlan {} invalid {} max_pkt_size {} alerts {}",
            self.uptime,
            self.kernel_packets,
            self.kernel_drops,
            self.trunc_pkt,
            self.decoder_pkts,
            self.decoder_vlan,
            self.decoder_invalid,
            self.max_pkt_size,
            self.alerts
        )
    }
}

fn get_path(v: &Value, path: &str) -> Option<u64> {
    let mut cur = v;
    for k in path.split('.') {
        cur = cur.get(k)?;
    }
    cur.as_u64()
}

/// What has been read from eve.json so far.
#[derive(Debug, Default)]
struct Eve {
    offset: u64,
    partial: Vec<u8>,
    alerts: Vec<Alert>,
    stats: Vec<Stats>,
}

impl Eve {
    fn read_more(&mut self, path: &Path) -> Result<()> {
        let mut f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("open {}", path.display())),
        };
        let len = f.metadata()?.len();
        if len < self.offset {
            // Replaced by a new run: start over.
            *self = Eve::default();
        }
        f.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        self.offset += buf.len() as u64;
        self.partial.extend_from_slice(&buf);
        let Some(last_nl) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return Ok(());
        };
        let rest = self.partial.split_off(last_nl + 1);
        let complete = std::mem::replace(&mut self.partial, rest);
        for line in complete.split(|&b| b == b'\n') {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let Ok(v) = serde_json::from_slice::<Value>(line) else {
                continue;
            };
            match v.get("event_type").and_then(Value::as_str) {
                Some("alert") => {
                    if let Some(a) = Alert::from_eve(&v) {
                        self.alerts.push(a);
                    }
                }
                Some("stats") => {
                    if let Some(s) = Stats::from_eve(&v) {
                        self.stats.push(s);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// A Suricata process capturing on one interface. Dropping the handle ends
/// it (SIGTERM, then SIGKILL after 2 s) and prints the end of its log if
/// the thread is panicking.
#[derive(Debug)]
pub struct Suricata {
    proc: BgProcess<'static>,
    pub ns: String,
    pub iface: String,
    pub work_dir: PathBuf,
    pub eve_path: PathBuf,
    pub log_path: PathBuf,
    pub config_path: PathBuf,
    /// From spawning to "Engine started" in suricata.log.
    pub startup: Duration,
    /// AF_PACKET `ring-size` used (frames).
    pub ring_size: u32,
    eve: Mutex<Eve>,
}

impl Suricata {
    /// Starts Suricata with [`Config::default`] on `iface` inside network
    /// namespace `ns`, with the rules file `rules`, writing its
    /// configuration, logs and eve.json into `work_dir` (created; a
    /// previous eve.json/suricata.log there are removed). Returns once
    /// Suricata logs "Engine started" (its capture threads are running),
    /// bounded by 60 s.
    pub fn start(ns: &str, iface: &str, rules: &Path, work_dir: &Path) -> Result<Suricata> {
        Self::start_with(ns, iface, rules, work_dir, &Config::default())
    }

    /// Like [`Suricata::start`] with explicit settings.
    pub fn start_with(
        ns: &str,
        iface: &str,
        rules: &Path,
        work_dir: &Path,
        c: &Config,
    ) -> Result<Suricata> {
        if !rules.is_file() {
            bail!("rules file {} not found", rules.display());
        }
        let rules = rules
            .canonicalize()
            .with_context(|| format!("resolve {}", rules.display()))?;
        std::fs::create_dir_all(work_dir)
            .with_context(|| format!("create {}", work_dir.display()))?;
        let work_dir = work_dir
            .canonicalize()
            .with_context(|| format!("resolve {}", work_dir.display()))?;
        let eve_path = work_dir.join("eve.json");
        let log_path = work_dir.join("suricata.log");
        for p in [&eve_path, &log_path] {
            match std::fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("remove {}", p.display())),
            }
        }
        std::fs::write(work_dir.join("classification.config"), CLASSIFICATION)?;
        std::fs::write(work_dir.join("reference.config"), REFERENCE)?;
        std::fs::write(work_dir.join("threshold.config"), "")?;
        let ring_size = match c.ring_size {
            Some(r) => r,
            None => ring_frames(iface_mtu(ns, iface)?, c.ring_bytes),
        };
        let config_path = work_dir.join("suricata.yaml");
        std::fs::write(
            &config_path,
            config_yaml(iface, &rules, &work_dir, c, ring_size),
        )?;

        let mut command = cmd::ns_command(ns, suricata_bin());
        command
            .arg("-c")
            .arg(&config_path)
            .arg(format!("--af-packet={iface}"));
        let started = Instant::now();
        let proc = BgProcess::spawn(command, &work_dir.join("suricata-process"))?;
        let mut s = Suricata {
            proc,
            ns: ns.to_string(),
            iface: iface.to_string(),
            work_dir,
            eve_path,
            log_path,
            config_path,
            startup: Duration::ZERO,
            ring_size,
            eve: Mutex::new(Eve::default()),
        };
        let deadline = started + c.startup_timeout;
        loop {
            let log = s.log();
            if log.contains("Engine started") {
                s.startup = started.elapsed();
                return Ok(s);
            }
            if let Some(st) = s.proc.try_wait()? {
                bail!(
                    "suricata in {ns} on {iface} exited during startup ({}):\n{}",
                    cmd::describe_status(&st),
                    s.diagnostics()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "suricata in {ns} on {iface} did not log \"Engine started\" within {:?}:\n{}",
                    c.startup_timeout,
                    s.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// suricata.log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The end of suricata.log and whatever the process printed.
    pub fn diagnostics(&self) -> String {
        format!(
            "---- {} (last 40 lines) ----\n{}\n---- stdout/stderr ----\n{}{}",
            self.log_path.display(),
            tail(&self.log(), 40),
            tail(&self.proc.stdout(), 20),
            tail(&self.proc.stderr(), 20)
        )
    }

    fn with_eve<T>(&self, f: impl FnOnce(&Eve) -> T) -> Result<T> {
        let mut eve = self.eve.lock().unwrap_or_else(|e| e.into_inner());
        eve.read_more(&self.eve_path)?;
        Ok(f(&eve))
    }

    /// All alerts so far, in eve.json order.
    pub fn alerts(&self) -> Vec<Alert> {
        self.with_eve(|e| e.alerts.clone()).unwrap_or_default()
    }

    /// Alerts of one signature.
    pub fn alerts_for(&self, sid: u64) -> Vec<Alert> {
        self.alerts().into_iter().filter(|a| a.sid == sid).collect()
    }

    /// Polls eve.json (every 100 ms) until `pred(all alerts so far)` holds;
    /// returns the alerts then. Fails after `timeout` (with the alerts and
    /// the latest stats in the message) or if Suricata has exited.
    pub fn wait_alerts(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&[Alert]) -> bool,
    ) -> Result<Vec<Alert>> {
        let deadline = Instant::now() + timeout;
        loop {
            let alerts = self.with_eve(|e| e.alerts.clone())?;
            if pred(&alerts) {
                return Ok(alerts);
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "alert condition not met within {timeout:?}; {} alerts:\n{}\nstats: {}",
                    alerts.len(),
                    alerts
                        .iter()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join("\n"),
                    self.stats().map(|s| s.summary()).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The latest stats record, if one was written yet.
    pub fn stats(&self) -> Option<Stats> {
        self.with_eve(|e| e.stats.last().cloned()).ok().flatten()
    }

    /// Number of stats records so far.
    pub fn stats_records(&self) -> usize {
        self.with_eve(|e| e.stats.len()).unwrap_or(0)
    }

    /// Waits for a stats record written after this call (so it counts
    /// everything that happened before) for which `pred` holds.
    pub fn wait_stats(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&Stats) -> bool,
    ) -> Result<Stats> {
        let seen = self.stats_records();
        let deadline = Instant::now() + timeout;
        loop {
            let (n, last) = self.with_eve(|e| (e.stats.len(), e.stats.last().cloned()))?;
            if let Some(s) = last.filter(|_| n > seen)
                && pred(&s)
            {
                return Ok(s);
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "stats condition not met within {timeout:?}; latest: {}",
                    self.stats()
                        .map(|s| s.summary())
                        .unwrap_or_else(|| "none".into())
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until Suricata has counted at least `n` packets from the
    /// kernel and decoded all of them (`decoder.pkts + kernel_drops >=
    /// kernel_packets`), e.g. with `n` = what vtap mirrored. Returns that
    /// record. Counters in eve.json lag by up to [`STATS_LAG`].
    pub fn wait_packets(&self, n: u64, timeout: Duration) -> Result<Stats> {
        self.wait_stats(timeout, |s| {
            s.kernel_packets >= n && s.decoder_pkts + s.kernel_drops >= s.kernel_packets
        })
        .with_context(|| format!("waiting for suricata to count {n} packets"))
    }

    /// Waits until the counters settle once traffic has ended: fresh stats
    /// records with the same `kernel_packets`, `kernel_drops` and
    /// `decoder.pkts` for at least [`STATS_LAG`], every packet the kernel
    /// handed over decoded. Returns the last record. Takes at least
    /// `STATS_LAG` + one interval; prefer [`Suricata::wait_packets`] when
    /// the number of packets is known.
    pub fn wait_settled(&self, timeout: Duration) -> Result<Stats> {
        let lag = STATS_LAG.as_secs();
        let key = |s: &Stats| (s.kernel_packets, s.kernel_drops, s.decoder_pkts);
        let mut since: Option<Stats> = None;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "suricata stats did not settle within {timeout:?}; latest: {}",
                    self.stats()
                        .map(|s| s.summary())
                        .unwrap_or_else(|| "none".into())
                );
            }
            let s = self.wait_stats(left, |_| true)?;
            match &since {
                Some(first) if key(first) == key(&s) => {
                    if s.uptime >= first.uptime + lag
                        && s.decoder_pkts + s.kernel_drops >= s.kernel_packets
                    {
                        return Ok(s);
                    }
                }
                _ => since = Some(s),
            }
        }
    }

    /// Fails if Suricata has exited.
    pub fn check_alive(&self) -> Result<()> {
        // try_wait needs &mut; the pid is ours until reaped, so probe /proc.
        if let Some(pid) = self.proc.pid() {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next())
                .unwrap_or("X");
            if state == "Z" || state == "X" {
                bail!("suricata has exited:\n{}", self.diagnostics());
            }
        }
        Ok(())
    }

    /// SIGTERM, then waits (bounded, 20 s) for a clean exit. Alerts and
    /// stats stay readable afterwards.
    pub fn stop(&mut self) -> Result<()> {
        let st = self
            .proc
            .stop_with(libc::SIGTERM, Duration::from_secs(20))
            .with_context(|| format!("stop suricata:\n{}", self.diagnostics()))?;
        if !st.success() {
            bail!(
                "suricata exited with {} after SIGTERM:\n{}",
                cmd::describe_status(&st),
                self.diagnostics()
            );
        }
        Ok(())
    }
}

impl Drop for Suricata {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- suricata in {} on {} (pid {:?}, work dir {}) ----\n{}\nlatest stats: {}\n----",
                self.ns,
                self.iface,
                self.proc.pid(),
                self.work_dir.display(),
                self.diagnostics(),
                self.stats()
                    .map(|s| s.summary())
                    .unwrap_or_else(|| "none".into())
            );
        }
        // BgProcess's own drop: SIGTERM to the group, SIGKILL after 2 s.
    }
}

/// Result of [`Testbed::syn_burst`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynBurstReport {
    /// Connection attempts made (one SYN each).
    pub attempts: u32,
    /// Attempts answered with a reset (`ECONNREFUSED`).
    pub refused: u32,
    pub elapsed: Duration,
}

impl Testbed {
    /// Starts Suricata ([`Config::default`]) on monitor `k`'s interface
    /// inside its namespace, work directory under the testbed's.
    pub fn start_suricata(&self, k: usize, rules: &Path) -> Result<Suricata> {
        self.start_suricata_with(k, rules, &Config::default())
    }

    /// Like [`Testbed::start_suricata`] with explicit settings.
    pub fn start_suricata_with(&self, k: usize, rules: &Path, c: &Config) -> Result<Suricata> {
        let m = self.monitor(k);
        Suricata::start_with(&m.ns, &m.ifname, rules, &self.path("suricata", "d"), c)
    }

    /// One HTTP/1.1 GET of `path` from VM `from` to a one-shot server in VM
    /// `to` on `port` (answers `200 OK`, body `vtap\n`). Bounded (~15 s).
    pub fn http_get(&self, from: usize, to: usize, port: u16, path: &str) -> Result<HttpResponse> {
        let addr = SocketAddr::new(self.addr(to, false), port);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let server = spawn_in_netns(&self.vm(to).ns, move || -> Result<String> {
            use std::io::Write;
            let l = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
            l.set_nonblocking(true)?;
            let _ = ready_tx.send(());
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut s = loop {
                match l.accept() {
                    Ok((s, _)) => break s,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if Instant::now() > deadline {
                            bail!("no HTTP connection on {addr}");
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            s.set_nonblocking(false)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
            }
            s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: close\r\n\r\nvtap\n",
            )?;
            Ok(String::from_utf8_lossy(&req).into_owned())
        })?;
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| anyhow!("HTTP server on {addr} did not start"))?;
        let resp = http_request(&self.vm(from).ns, addr, "GET", path, None);
        let req = server
            .join()
            .map_err(|_| anyhow!("HTTP server panicked"))??;
        let resp = resp?;
        if !req.contains(path) {
            bail!("HTTP server got {req:?}, not a request for {path}");
        }
        Ok(resp)
    }

    /// Sends `count` UDP datagrams carrying `payload` from VM `from` to a
    /// receiver in VM `to`:`port` (so no ICMP error comes back), 1 ms apart.
    /// Returns how many the receiver got.
    pub fn udp_send(
        &self,
        from: usize,
        to: usize,
        port: u16,
        payload: &[u8],
        count: u32,
    ) -> Result<u32> {
        let dst = SocketAddr::new(self.addr(to, false), port);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let receiver = spawn_in_netns(&self.vm(to).ns, move || -> Result<u32> {
            let s = UdpSocket::bind(dst).with_context(|| format!("bind udp {dst}"))?;
            s.set_read_timeout(Some(Duration::from_millis(500)))?;
            let _ = ready_tx.send(());
            let mut n = 0;
            let mut buf = [0u8; 2048];
            while n < count && s.recv(&mut buf).is_ok() {
                n += 1;
            }
            Ok(n)
        })?;
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| anyhow!("UDP receiver on {dst} did not start"))?;
        let payload = payload.to_vec();
        let sender = spawn_in_netns(&self.vm(from).ns, move || -> Result<()> {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.connect(dst)?;
            for _ in 0..count {
                s.send(&payload)?;
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(())
        })?;
        sender
            .join()
            .map_err(|_| anyhow!("UDP sender panicked"))??;
        receiver
            .join()
            .map_err(|_| anyhow!("UDP receiver panicked"))?
    }

    /// A bounded SYN burst: `count` TCP connection attempts from VM `from`
    /// to VM `to`:`port`, `every` apart (zero: back to back). Point it at a
    /// port nobody listens on: each attempt is then one SYN answered by a
    /// RST, and no connection is left behind. `count` > 50 within 1 s
    /// triggers [`SID_SYN_FLOOD`].
    pub fn syn_burst(
        &self,
        from: usize,
        to: usize,
        port: u16,
        count: u32,
        every: Duration,
    ) -> Result<SynBurstReport> {
        let dst = SocketAddr::new(self.addr(to, false), port);
        let h = spawn_in_netns(&self.vm(from).ns, move || -> Result<SynBurstReport> {
            let started = Instant::now();
            let mut refused = 0;
            let mut next = Instant::now();
            for _ in 0..count {
                match TcpStream::connect_timeout(&dst, Duration::from_millis(500)) {
                    Ok(s) => drop(s),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => refused += 1,
                    Err(_) => {}
                }
                if !every.is_zero() {
                    next += every;
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    }
                }
            }
            Ok(SynBurstReport {
                attempts: count,
                refused,
                elapsed: started.elapsed(),
            })
        })?;
        h.join().map_err(|_| anyhow!("SYN burst panicked"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_eve_alerts_and_stats_incrementally() {
        let dir = std::env::temp_dir().join(format!("vtap-suricata-eve-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("eve.json");
        let alert = r#"{"timestamp":"2026-11-22T04:47:13.812947+0000","flow_id":395357233274748,"in_iface":"eth0","event_type":"alert","vlan":[100],"src_ip":"10.0.0.1","dest_ip":"10.0.0.2","proto":"ICMP","icmp_type":8,"icmp_code":0,"alert":{"action":"allowed","gid":1,"signature_id":9000003,"rev":1,"signature":"VTAP-TEST ICMP echo request","category":"Misc activity","severity":3}}"#;
        let stats = r#"{"timestamp":"2026-11-22T04:47:15.1+0000","event_type":"stats","stats":{"uptime":3,"capture":{"kernel_packets":6,"kernel_drops":1,"errors":0},"decoder":{"pkts":5,"vlan":5,"max_pkt_size":98,"event":{"afpacket":{"trunc_pkt":2}}},"detect":{"alert":3}}}"#;
        // A record cut in the middle is kept until its end arrives.
        let (head, rest) = stats.split_at(40);
        std::fs::write(&p, format!("{alert}\n{head}")).unwrap();
        let mut eve = Eve::default();
        eve.read_more(&p).unwrap();
        assert_eq!(eve.alerts.len(), 1);
        assert!(eve.stats.is_empty());
        let a = &eve.alerts[0];
        assert_eq!(a.sid, SID_ICMP_ECHO);
        assert_eq!(a.vlan, vec![100]);
        assert_eq!(
            (a.src_ip.as_str(), a.dest_ip.as_str()),
            ("10.0.0.1", "10.0.0.2")
        );
        assert_eq!(a.proto, "ICMP");
        assert_eq!(a.src_port, None);
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        writeln!(f, "{rest}").unwrap();
        eve.read_more(&p).unwrap();
        assert_eq!(eve.alerts.len(), 1);
        let s = eve.stats.last().unwrap();
        assert_eq!(
            (
                s.kernel_packets,
                s.kernel_drops,
                s.trunc_pkt,
                s.decoder_pkts
            ),
            (6, 1, 2, 5)
        );
        assert_eq!((s.decoder_vlan, s.alerts, s.uptime), (5, 3, 3));
        assert_eq!(s.get("decoder.max_pkt_size"), Some(98));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn config_is_self_contained() {
        let y = config_yaml(
            "eth0",
            Path::new("/x/rules"),
            Path::new("/w"),
            &Config::default(),
            1000,
        );
        for want in [
            "tpacket-v3: yes",
            "block-size: 1048576",
            "checksum-checks: no",
            "\"/w/classification.config\"",
            "\"/x/rules\"",
            "decoder-events-prefix: \"decoder.event\"",
            "ring-size: 1000",
        ] {
            assert!(y.contains(want), "{want} missing in\n{y}");
        }
        let v2 = config_yaml(
            "eth0",
            Path::new("/x/rules"),
            Path::new("/w"),
            &Config::default().tpacket_v2(),
            1000,
        );
        assert!(v2.contains("tpacket-v3: no") && !v2.contains("block-size"));
        // Valid YAML (after the %YAML directive).
        let body = y.split_once("---\n").unwrap().1;
        let v: serde_yaml::Value = serde_yaml::from_str(body).unwrap();
        assert_eq!(v["af-packet"][0]["interface"].as_str(), Some("eth0"));
        assert_eq!(ring_frames(65535, 64 << 20), 1022);
        assert_eq!(ring_frames(1500, 64 << 20), 41221);
    }

    #[test]
    fn test_rules_are_compiled_in() {
        for sid in [
            SID_CANARY_TCP,
            SID_CANARY_HTTP,
            SID_ICMP_ECHO,
            SID_UDP_MARKER,
            SID_SYN_FLOOD,
        ] {
            assert!(TEST_RULES.contains(&format!("sid:{sid};")), "sid {sid}");
        }
        assert!(test_rules().is_file());
    }
}
