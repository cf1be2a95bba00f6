//! `vtap-testbed`: the testbed library for scripts (demo, manual runs).
//!
//! ```text
//! vtap-testbed up --name demo --vms 2 [--monitors 1] [--remote-vni 42] [--json]
//! vtap-testbed down --name demo
//! vtap-testbed list
//! vtap-testbed ping --name demo --from 1 --to 2 [--count 5] [--ipv6]
//! vtap-testbed tcp  --name demo --from 1 --to 2 --port 5001 --bytes 4000000 [--ipv6]
//! vtap-testbed udp  --name demo --from 1 --to 2 --port 53 --count 20 --size 60 [--echo] [--ipv6]
//! vtap-testbed pcap-summary FILE
//! vtap-testbed vm-demo [--policies DIR] [--name NAME] [--keep DIR] [--timeout 180]
//! ```
//!
//! `vm-demo` is `scripts/demo.sh --vms`: two QEMU VMs, the vtap daemon with
//! the example policies, Suricata on the monitor, and the alerts it raised
//! on the mirrored traffic (see [`vm_demo`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use vtap_testbed::{Options, Testbed, Udp, read_pcap};

#[derive(Parser)]
#[command(
    name = "vtap-testbed",
    about = "Throwaway network-namespace testbeds for vtap"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a testbed that stays until `down`; prints its namespaces.
    Up {
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = 2)]
        vms: usize,
        #[arg(long, default_value_t = 1)]
        monitors: usize,
        #[arg(long)]
        mtu: Option<u32>,
        #[arg(long)]
        monitor_mtu: Option<u32>,
        /// tso/gso/gro on the VM ends: on | off
        #[arg(long)]
        offloads: Option<String>,
        /// Add a remote host behind VXLAN (vx0) with this VNI.
        #[arg(long)]
        remote_vni: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// Remove a testbed (its namespaces, processes inside them, work dir).
    Down {
        #[arg(long)]
        name: String,
    },
    /// List testbed namespaces.
    List,
    /// ping between two VMs.
    Ping {
        #[arg(long)]
        name: String,
        #[arg(long)]
        from: usize,
        #[arg(long)]
        to: usize,
        #[arg(long, default_value_t = 5)]
        count: u32,
        #[arg(long)]
        ipv6: bool,
    },
    /// TCP transfer of random bytes, checked by SHA-256.
    Tcp {
        #[arg(long)]
        name: String,
        #[arg(long)]
        from: usize,
        #[arg(long)]
        to: usize,
        #[arg(long, default_value_t = 5001)]
        port: u16,
        #[arg(long, default_value_t = 4_000_000)]
        bytes: usize,
        #[arg(long)]
        ipv6: bool,
    },
    /// UDP datagrams to a receiver in the other VM (optionally echoed back).
    Udp {
        #[arg(long)]
        name: String,
        #[arg(long)]
        from: usize,
        #[arg(long)]
        to: usize,
        #[arg(long, default_value_t = 53)]
        port: u16,
        #[arg(long, default_value_t = 10)]
        count: u32,
        #[arg(long, default_value_t = 60)]
        size: usize,
        #[arg(long)]
        echo: bool,
        #[arg(long)]
        ipv6: bool,
    },
    /// Per-VLAN / per-protocol counts of an Ethernet pcap file.
    PcapSummary { file: PathBuf },
    /// Two QEMU VMs talk; vtap mirrors them (example policies) to Suricata on
    /// the monitor; prints the taps, vtap's counters and Suricata's alerts,
    /// then removes everything. Fails when no alert arrived.
    VmDemo(vm_demo::Args),
}

fn check_vm(tb: &Testbed, i: usize) -> Result<()> {
    if i == 0 || i > tb.vms.len() {
        bail!("testbed {} has VMs 1..={}, not {i}", tb.name, tb.vms.len());
    }
    Ok(())
}

fn proto_name(p: Option<u8>, et: u16) -> String {
    match p {
        Some(1) => "icmp".into(),
        Some(6) => "tcp".into(),
        Some(17) => "udp".into(),
        Some(58) => "icmpv6".into(),
        Some(n) => format!("ip-proto-{n}"),
        None => format!("ethertype-0x{et:04x}"),
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::VmDemo(args) => {
            if let Err(e) = vm_demo::run(args) {
                if vm_demo::stopping() {
                    // The guard thread is removing the testbed (which is
                    // what made this fail) and exits with its own status.
                    loop {
                        std::thread::park();
                    }
                }
                return Err(e);
            }
        }
        Cmd::Up {
            name,
            vms,
            monitors,
            mtu,
            monitor_mtu,
            offloads,
            remote_vni,
            json,
        } => {
            let mut o = Options::default().name(&name).vms(vms).monitors(monitors);
            o.mtu = mtu;
            o.monitor_mtu = monitor_mtu;
            o.remote_vni = remote_vni;
            o.offloads = match offloads.as_deref() {
                None => None,
                Some("on") => Some(true),
                Some("off") => Some(false),
                Some(x) => bail!("--offloads on|off, not {x}"),
            };
            let tb = Testbed::new(o)?.persist();
            if json {
                println!("{}", serde_json::to_string_pretty(&tb.to_json())?);
            } else {
                println!("testbed {} is up", tb.name);
                println!("host      {:<22} bridge br0", tb.host_ns);
                for v in &tb.vms {
                    println!(
                        "vm{:<7} {:<22} {} <-> eth0 {} {}",
                        v.index, v.ns, v.tap, v.ipv4, v.ipv6
                    );
                }
                for m in &tb.monitors {
                    println!("monitor{} {:<22} {} <-> eth0", m.index, m.ns, m.iface);
                }
                if let Some(r) = &tb.remote {
                    println!(
                        "remote    {:<22} vx0 vni {} over ul0 {} <-> {}",
                        r.ns, r.vni, r.underlay_host, r.underlay_remote
                    );
                }
            }
        }
        Cmd::Down { name } => {
            let gone = Testbed::destroy(&name)?;
            println!("removed {} namespaces of testbed {name}", gone.len());
        }
        Cmd::List => {
            for ns in vtap_testbed::netns::list() {
                if ns.ends_with("-host")
                    || ns.contains("-vm")
                    || ns.contains("-mon")
                    || ns.ends_with("-rem")
                {
                    println!("{ns}");
                }
            }
        }
        Cmd::Ping {
            name,
            from,
            to,
            count,
            ipv6,
        } => {
            let tb = Testbed::open(&name)?;
            check_vm(&tb, from)?;
            check_vm(&tb, to)?;
            let r = tb.ping(from, to, count, ipv6)?;
            println!(
                "ping vm{from} -> vm{to} ({}): {} sent, {} received",
                tb.addr(to, ipv6),
                r.transmitted,
                r.received
            );
            if r.received != r.transmitted {
                bail!("ping lost packets");
            }
        }
        Cmd::Tcp {
            name,
            from,
            to,
            port,
            bytes,
            ipv6,
        } => {
            let tb = Testbed::open(&name)?;
            check_vm(&tb, from)?;
            check_vm(&tb, to)?;
            let r = tb.tcp_transfer(from, to, port, bytes, ipv6, Duration::from_secs(60))?;
            println!(
                "tcp vm{from}:{} -> vm{to} {}:{port}: sent {} bytes sha256 {}, received {} bytes sha256 {} in {:?}: {}",
                r.client_port,
                tb.addr(to, ipv6),
                r.bytes_sent,
                &r.sent_sha256[..16],
                r.bytes_received,
                &r.received_sha256[..16],
                r.elapsed,
                if r.intact() { "intact" } else { "CORRUPTED" }
            );
            if !r.intact() {
                bail!("TCP data differs");
            }
        }
        Cmd::Udp {
            name,
            from,
            to,
            port,
            count,
            size,
            echo,
            ipv6,
        } => {
            let tb = Testbed::open(&name)?;
            check_vm(&tb, from)?;
            check_vm(&tb, to)?;
            let r = tb.udp(Udp {
                from,
                to,
                port,
                count,
                size,
                ipv6,
                echo,
            })?;
            println!(
                "udp vm{from}:{} -> vm{to} {}:{port}: {} sent, {} received{}",
                r.client_port,
                tb.addr(to, ipv6),
                r.sent,
                r.received,
                if echo {
                    format!(", {} replies", r.replies)
                } else {
                    String::new()
                }
            );
        }
        Cmd::PcapSummary { file } => {
            let frames = read_pcap(&file)?;
            let mut per: BTreeMap<(String, String), usize> = BTreeMap::new();
            for f in &frames {
                let vlan = if f.vids.is_empty() {
                    "untagged".to_string()
                } else {
                    f.vids
                        .iter()
                        .map(|v| format!("vlan {v}"))
                        .collect::<Vec<_>>()
                        .join("/")
                };
                *per.entry((vlan, proto_name(f.proto(), f.ethertype)))
                    .or_insert(0) += 1;
            }
            println!("{} frames in {}", frames.len(), file.display());
            let mut per_vlan: BTreeMap<&str, usize> = BTreeMap::new();
            for ((vlan, _), n) in &per {
                *per_vlan.entry(vlan.as_str()).or_insert(0) += n;
            }
            for (vlan, n) in &per_vlan {
                println!("  {vlan:<14} {n:>6} frames");
                for ((v, proto), k) in &per {
                    if v == vlan {
                        println!("      {proto:<12} {k:>6}");
                    }
                }
            }
        }
    }
    Ok(())
}

/// `vtap-testbed vm-demo` (`scripts/demo.sh --vms`): mirrored traffic of two
/// real QEMU VMs, inspected by Suricata on the monitor.
///
/// 1. the guest image (`vm::ensure_image`, cached), a testbed without
///    namespace VMs and with monitor MTU 65535;
/// 2. Suricata on monitor 0 (`testbed/suricata/vtap-test.rules`);
/// 3. the vtap daemon with every policy of the policy directory, before any
///    VM exists: the taps `vm1-tap`/`vm2-tap` are attached by the glob
///    `vm*-tap` as QEMU's taps appear;
/// 4. two VMs; vm2 serves `/vtap-canary` with busybox httpd; vm1 pings vm2,
///    fetches the canary (MD5 checked), sends a DNS query carrying the UDP
///    marker, and 80 SYNs to a closed port;
/// 5. prints the taps, vtap's counters per policy and output, Suricata's
///    alerts (with the VLAN, i.e. the policy, each came from) and capture
///    counters.
///
/// Everything is removed at the end, on errors, on SIGINT/SIGTERM/SIGHUP
/// and after `--timeout` seconds. The vtap binary is `$VTAP_BIN`, else the
/// `vtap` next to this executable, else `target/debug/vtap`.
mod vm_demo {
    use std::collections::{BTreeMap, BTreeSet};
    use std::io::IsTerminal;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
    use std::time::{Duration, Instant};

    use anyhow::{Context, Result, anyhow, bail};
    use serde_json::Value;
    use vtap_testbed::daemon::http_request;
    use vtap_testbed::suricata::{self, Alert};
    use vtap_testbed::vm::{self, VmSet};
    use vtap_testbed::{Options, Testbed};

    const SEC: Duration = Duration::from_secs(1);
    /// Connection attempts of the SYN burst (the test rule fires above 50
    /// SYNs within 1 s).
    const SYN_BURST: u32 = 80;
    /// Size of the file vm2 serves at /vtap-canary.
    const CANARY_KIB: u32 = 256;

    #[derive(clap::Args)]
    pub struct Args {
        /// Policy directory (every *.yaml, *.yml, *.json in it); default:
        /// the repository's mirror-policies/.
        #[arg(long)]
        policies: Option<PathBuf>,
        /// Testbed name (2-16 of [a-z0-9]); default vmdemo + random hex.
        /// `vtap-testbed down --name NAME` removes it if this process is
        /// killed with SIGKILL.
        #[arg(long)]
        name: Option<String>,
        /// Before cleaning up, copy the testbed's work directory (eve.json,
        /// suricata.log, the daemon's and QEMU's logs, the pcap capture) to
        /// this directory.
        #[arg(long)]
        keep: Option<PathBuf>,
        /// Give up and clean up after this many seconds (not counting a
        /// first build of the guest image).
        #[arg(long, default_value_t = 180)]
        timeout: u64,
    }

    struct Show {
        t0: Instant,
        bold: bool,
    }

    impl Show {
        fn section(&self, title: &str) {
            let t = self.t0.elapsed().as_secs_f64();
            if self.bold {
                println!("\n\x1b[1m== {title}\x1b[0m  (t+{t:.1} s)");
            } else {
                println!("\n== {title}  (t+{t:.1} s)");
            }
        }
    }

    static SIGNALLED: AtomicI32 = AtomicI32::new(0);
    static STOPPING: AtomicBool = AtomicBool::new(false);

    /// True once the guard is tearing the testbed down (after a signal or
    /// the time limit): errors of the main thread are its consequence.
    pub fn stopping() -> bool {
        STOPPING.load(Ordering::SeqCst)
    }

    extern "C" fn on_signal(sig: libc::c_int) {
        SIGNALLED.store(sig, Ordering::SeqCst);
    }

    /// On SIGINT/SIGTERM/SIGHUP or after `limit`: removes testbed `name`
    /// (its namespaces and every process in them: QEMU, the daemon,
    /// Suricata) and exits (128 + signal, or 124). Drop handlers do not run
    /// on a signal; this does their work.
    fn guard(name: String, limit: Duration) {
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: the handler only stores into an atomic, which is
            // async-signal-safe; handlers are reset to the default in
            // exec'd children.
            unsafe {
                libc::signal(sig, handler);
            }
        }
        let t0 = Instant::now();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(50));
                let sig = SIGNALLED.load(Ordering::SeqCst);
                let late = t0.elapsed() > limit;
                if sig == 0 && !late {
                    continue;
                }
                STOPPING.store(true, Ordering::SeqCst);
                if sig != 0 {
                    let what = match sig {
                        libc::SIGINT => "SIGINT",
                        libc::SIGTERM => "SIGTERM",
                        _ => "SIGHUP",
                    };
                    eprintln!("\nvm-demo: {what}: removing testbed {name}");
                } else {
                    eprintln!("\nvm-demo: still running after {limit:?}: removing testbed {name}");
                }
                // What the main thread reports now (QEMU or the daemon
                // killed under it) is noise: silence stderr.
                // SAFETY: plain fd calls; fd 2 stays valid (now /dev/null).
                unsafe {
                    let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
                    if null >= 0 {
                        libc::dup2(null, 2);
                    }
                }
                let _ = Testbed::destroy(&name);
                std::process::exit(if sig != 0 { 128 + sig } else { 124 });
            }
        });
    }

    /// `(file name, text)` of every policy file of `dir`, as the daemon
    /// would load them.
    fn read_policies(dir: &Path) -> Result<Vec<(String, String)>> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
            let p = e?.path();
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            if name.starts_with('.')
                || name.starts_with("README")
                || !p.is_file()
                || !matches!(ext, "yaml" | "yml" | "json")
            {
                continue;
            }
            let text =
                std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?;
            v.push((name, text));
        }
        v.sort();
        if v.is_empty() {
            bail!(
                "no policy files (*.yaml, *.yml, *.json) in {}",
                dir.display()
            );
        }
        Ok(v)
    }

    fn get_json(tb: &Testbed, addr: std::net::SocketAddr, path: &str) -> Result<Value> {
        let r = http_request(&tb.host_ns, addr, "GET", path, None)?;
        if r.status != 200 {
            bail!("GET {path}: {} {}", r.status, r.body.trim());
        }
        serde_json::from_str(&r.body).with_context(|| format!("GET {path}: not JSON"))
    }

    fn strs(v: &Value) -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `mon0 VLAN 100`, `pcap web`, `vxlan 192.0.2.50 VNI 4000 VLAN 60`.
    fn output_text(o: &Value) -> String {
        let vlan = o["vlan"]
            .as_u64()
            .map(|v| format!(" VLAN {v}"))
            .unwrap_or_default();
        if let Some(i) = o["interface"].as_str() {
            format!("{i}{vlan}")
        } else if let Some(c) = o["pcap"].as_str() {
            format!("pcap capture {c}")
        } else if o["vxlan"].is_object() {
            format!(
                "vxlan {} VNI {}{vlan}",
                o["vxlan"]["remote"].as_str().unwrap_or("?"),
                o["vxlan"]["vni"]
            )
        } else {
            o.to_string()
        }
    }

    /// `04:47:13.812` of eve's `2026-11-22T04:47:13.812947+0000`.
    fn short_time(ts: &str) -> &str {
        ts.get(11..23).unwrap_or(ts)
    }

    fn endpoint(ip: &str, port: Option<u16>) -> String {
        match port {
            Some(p) => format!("{ip}:{p}"),
            None => ip.to_string(),
        }
    }

    fn vlan_text(a: &Alert) -> String {
        if a.vlan.is_empty() {
            "untagged".into()
        } else {
            a.vlan
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join("/")
        }
    }

    /// Copies the regular files under `from` to `to` (sockets etc. skipped).
    fn copy_tree(from: &Path, to: &Path) -> Result<usize> {
        std::fs::create_dir_all(to).with_context(|| format!("create {}", to.display()))?;
        let mut n = 0;
        for e in std::fs::read_dir(from)? {
            let e = e?;
            let ft = e.file_type()?;
            let dst = to.join(e.file_name());
            if ft.is_dir() {
                n += copy_tree(&e.path(), &dst)?;
            } else if ft.is_file() {
                std::fs::copy(e.path(), &dst)
                    .with_context(|| format!("copy {}", e.path().display()))?;
                n += 1;
            }
        }
        Ok(n)
    }

    #[derive(Default, Clone, Copy)]
    struct Seen {
        appeared: Option<Duration>,
        attached: Option<Duration>,
    }

    pub fn run(a: Args) -> Result<()> {
        let show = Show {
            t0: Instant::now(),
            bold: std::io::stdout().is_terminal(),
        };
        if !vtap_testbed::is_root() {
            bail!("vm-demo must run as root (network namespaces, eBPF, taps)");
        }
        if std::env::var_os("VTAP_BIN").is_none()
            && let Some(sib) = std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(|d| d.join("vtap")))
                .filter(|p| p.is_file())
        {
            // SAFETY: no other thread exists yet.
            unsafe { std::env::set_var("VTAP_BIN", sib) };
        }
        let policy_dir = a.policies.clone().unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("mirror-policies")
        });
        let policy_dir = policy_dir
            .canonicalize()
            .with_context(|| format!("policy directory {}", policy_dir.display()))?;
        let policies = read_policies(&policy_dir)?;
        let Some(suricata_version) = suricata::version() else {
            bail!(
                "{} cannot be run (scripts/install-deps.sh installs Suricata)",
                suricata::suricata_bin().display()
            );
        };

        show.section("guest image (testbed/vm/build-image.sh, cached)");
        let t = Instant::now();
        let img = vm::ensure_image()?;
        println!(
            "{} (kernel {}) in {:.1} s",
            img.dir.display(),
            img.kernel_release,
            t.elapsed().as_secs_f64()
        );

        let name = match &a.name {
            Some(n) => n.clone(),
            None => format!("vmdemo{:06x}", rand::random::<u32>() & 0xff_ffff),
        };
        guard(name.clone(), Duration::from_secs(a.timeout));

        show.section(&format!("testbed {name}"));
        let tb = Testbed::new(Options::default().name(&name).vms(0).monitor_mtu(65535))?;
        let mon = tb.monitor(0);
        println!(
            "host namespace {} with bridge br0 (the VMs' taps go here); monitor {} in {} (eth0, MTU 65535)",
            tb.host_ns, mon.iface, mon.ns
        );
        let r = demo(&show, &tb, &policy_dir, &policies, &suricata_version);
        if let Some(dir) = &a.keep {
            // Everything in the testbed has stopped (or been dropped, after
            // an error): the logs are complete.
            let n = copy_tree(&tb.workdir, dir)?;
            println!(
                "\nkept {n} files of {} in {} (eve.json, suricata.log, daemon and QEMU logs, pcap capture)",
                tb.workdir.display(),
                dir.display()
            );
        }
        r
    }

    /// The demo proper, on testbed `tb`.
    fn demo(
        show: &Show,
        tb: &Testbed,
        policy_dir: &Path,
        policies: &[(String, String)],
        suricata_version: &str,
    ) -> Result<()> {
        let mon = tb.monitor(0);
        let vtap = vtap_testbed::vtap_bin();
        show.section(&format!("Suricata on the monitor ({} eth0)", mon.ns));
        let rules = suricata::test_rules();
        let rules = if rules.is_file() {
            rules
        } else {
            let p = tb.path("vtap-test", "rules");
            std::fs::write(&p, suricata::TEST_RULES)?;
            p
        };
        let mut ids = tb.start_suricata(0, &rules)?;
        println!(
            "{suricata_version}: AF_PACKET TPACKET_V3, rules {}; engine started in {:.1} s",
            rules.display(),
            ids.startup.as_secs_f64()
        );

        show.section(&format!(
            "vtap daemon with {} ({} files), before any VM exists",
            policy_dir.display(),
            policies.len()
        ));
        let refs: Vec<(&str, &str)> = policies
            .iter()
            .map(|(n, t)| (n.as_str(), t.as_str()))
            .collect();
        let mut d = tb.start_daemon(&refs)?;
        let addr = d.addr;
        println!(
            "{} daemon in {}, API http://{addr}",
            vtap.display(),
            tb.host_ns
        );
        let plist = get_json(tb, addr, "/api/v1/policies")?;
        // VLAN on mon0 -> enabled policies sending there.
        let mut vlan_policy: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        let mut enabled_policy: BTreeMap<String, bool> = BTreeMap::new();
        println!(
            "  {:<14} {:<8} {:<16} {:<9} outputs",
            "policy", "enabled", "taps", "direction"
        );
        for p in plist["policies"].as_array().into_iter().flatten() {
            let p = &p["policy"];
            let pname = p["name"].as_str().unwrap_or("?").to_string();
            let enabled = p["enabled"].as_bool().unwrap_or(true);
            let outs = p["outputs"].as_array().cloned().unwrap_or_default();
            if enabled {
                for o in &outs {
                    if o["interface"].as_str() == Some(mon.iface.as_str())
                        && let Some(v) = o["vlan"].as_u64()
                    {
                        vlan_policy.entry(v).or_default().push(pname.clone());
                    }
                }
            }
            println!(
                "  {:<14} {:<8} {:<16} {:<9} {}",
                pname,
                if enabled { "yes" } else { "no" },
                strs(&p["taps"]).join(","),
                p["direction"].as_str().unwrap_or("both"),
                outs.iter().map(output_text).collect::<Vec<_>>().join(", ")
            );
            enabled_policy.insert(pname, enabled);
        }
        let taps0 = get_json(tb, addr, "/api/v1/taps")?;
        let n0 = taps0["taps"].as_array().map_or(0, |t| t.len());
        println!("taps attached now (GET /api/v1/taps): {n0} — no VM exists yet");

        show.section("booting 2 QEMU VMs (TCG); vtap attaches vm*-tap as QEMU's taps appear");
        let seen: Mutex<BTreeMap<String, Seen>> = Mutex::new(BTreeMap::new());
        let done = AtomicBool::new(false);
        let boot_t0 = Instant::now();
        let vms = std::thread::scope(|s| {
            s.spawn(|| {
                while !done.load(Ordering::SeqCst) {
                    if let Ok(v) = get_json(tb, addr, "/api/v1/taps") {
                        let now = boot_t0.elapsed();
                        let mut g = seen.lock().unwrap_or_else(|e| e.into_inner());
                        for t in v["taps"].as_array().into_iter().flatten() {
                            let e = g
                                .entry(t["name"].as_str().unwrap_or("?").to_string())
                                .or_default();
                            if t["ifindex"].as_u64().unwrap_or(0) != 0 {
                                e.appeared.get_or_insert(now);
                            }
                            if t["state"] == "attached" {
                                e.attached.get_or_insert(now);
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            });
            let r = VmSet::start(tb, 2);
            // One more look after the agents answered.
            std::thread::sleep(Duration::from_millis(50));
            done.store(true, Ordering::SeqCst);
            r
        })?;
        let (vm1, vm2) = (vms.vm(1), vms.vm(2));
        for v in [vm1, vm2] {
            println!(
                "{}: {} on {}, {} — booted in {:.1} s (QEMU start to agent answer)",
                v.name(),
                v.mac(),
                v.tap,
                v.config.ipv4.as_deref().unwrap_or("-"),
                v.boot_time.as_secs_f64()
            );
        }
        let seen = seen.into_inner().unwrap_or_else(|e| e.into_inner());
        let ms = |d: Option<Duration>| {
            d.map(|d| format!("+{:.2} s", d.as_secs_f64()))
                .unwrap_or_else(|| "never".into())
        };
        for (tap, s) in &seen {
            println!(
                "{tap}: seen by vtap at {}, attached at {} (after boot start; API polled every ~10 ms)",
                ms(s.appeared),
                ms(s.attached)
            );
        }
        let taps = get_json(tb, addr, "/api/v1/taps")?;
        println!("\nGET /api/v1/taps:");
        println!(
            "  {:<9} {:>7} {:<5} {:<9} {:<10} policies",
            "tap", "ifindex", "mode", "state", "attached"
        );
        let mut attached_taps = 0;
        for t in taps["taps"].as_array().into_iter().flatten() {
            if t["state"] == "attached" {
                attached_taps += 1;
            }
            println!(
                "  {:<9} {:>7} {:<5} {:<9} {:<10} {}",
                t["name"].as_str().unwrap_or("?"),
                t["ifindex"].as_u64().unwrap_or(0),
                t["mode"].as_str().unwrap_or("?"),
                t["state"].as_str().unwrap_or("?"),
                strs(&t["attached"]).join(","),
                strs(&t["policies"]).join(", ")
            );
        }

        show.section("traffic between the VMs (commands run in the guests)");
        let want = vm2
            .run_ok(
                &format!(
                    "mkdir -p /www && dd if=/dev/urandom of=/www/vtap-canary bs=1024 count={CANARY_KIB} 2>/dev/null && md5sum /www/vtap-canary"
                ),
                20 * SEC,
            )?
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string();
        vm2.spawn_bg("exec httpd -f -p 80 -h /www")?;
        vm2.wait_listening(80, false, 10 * SEC)?;
        println!(
            "vm2$ httpd -f -p 80 -h /www      # serves /vtap-canary: {CANARY_KIB} KiB of random bytes, md5 {want}"
        );
        let replies = vms.ping(1, 2, 5, false)?;
        println!("vm1$ ping -c 5 10.0.0.2          # {replies}/5 replies");
        let t = Instant::now();
        let got = vm1
            .run_ok(
                "set -o pipefail; wget -q -O - http://10.0.0.2/vtap-canary | md5sum",
                30 * SEC,
            )?
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string();
        let intact = !want.is_empty() && got == want;
        println!(
            "vm1$ wget -O - http://10.0.0.2/vtap-canary | md5sum   # {got} in {:.2} s: {}",
            t.elapsed().as_secs_f64(),
            if intact {
                "same as on vm2"
            } else {
                "DIFFERS from vm2"
            }
        );
        // busybox nc has no UDP mode: a DNS query whose name is the marker
        // carries it in one UDP datagram to port 53 (policy dns). vm2 runs
        // no DNS server (it answers ICMP port unreachable, which nslookup
        // ignores), so nslookup is stopped before its retry at 2.5 s.
        vm1.run(
            &format!(
                "timeout 1 nslookup -type=a {} 10.0.0.2 >/dev/null 2>&1; true",
                suricata::UDP_MARKER
            ),
            10 * SEC,
        )?;
        println!(
            "vm1$ nslookup -type=a {} 10.0.0.2   # one DNS query (UDP 53) whose name is the marker; vm2 has no DNS server",
            suricata::UDP_MARKER
        );
        let t = Instant::now();
        vm1.run(
            &format!(
                "n=0; while [ $n -lt {SYN_BURST} ]; do nc -w 1 10.0.0.2 81 </dev/null >/dev/null 2>&1 & n=$((n+1)); done; wait"
            ),
            20 * SEC,
        )?;
        println!(
            "vm1$ {SYN_BURST} x nc 10.0.0.2 81 (in parallel)   # {SYN_BURST} SYNs to a closed port, each answered by a reset, in {:.2} s",
            t.elapsed().as_secs_f64()
        );

        show.section("Suricata alerts (eve.json on the monitor)");
        let expected = [
            suricata::SID_ICMP_ECHO,
            suricata::SID_CANARY_TCP,
            suricata::SID_CANARY_HTTP,
            suricata::SID_UDP_MARKER,
            suricata::SID_SYN_FLOOD,
        ];
        let alerts = match ids.wait_alerts(15 * SEC, |al| {
            expected.iter().all(|sid| al.iter().any(|x| x.sid == *sid))
        }) {
            Ok(al) => al,
            Err(_) => ids.alerts(),
        };
        println!(
            "{:<12} {:>7} {:<34} {:<5} {:<21}    {:<21} vlan (policy)",
            "time", "sid", "message", "proto", "source", "destination"
        );
        let policy_of = |a: &Alert| {
            a.vlan
                .first()
                .and_then(|v| vlan_policy.get(&u64::from(*v)))
                .map(|p| p.join("+"))
                .unwrap_or_else(|| "?".into())
        };
        for al in &alerts {
            println!(
                "{:<12} {:>7} {:<34} {:<5} {:<21} -> {:<21} {} ({})",
                short_time(&al.timestamp),
                al.sid,
                al.msg.strip_prefix("VTAP-TEST ").unwrap_or(&al.msg),
                al.proto,
                endpoint(&al.src_ip, al.src_port),
                endpoint(&al.dest_ip, al.dest_port),
                vlan_text(al),
                policy_of(al)
            );
        }
        println!("\n{} alerts; per rule:", alerts.len());
        for sid in expected {
            let of: Vec<&Alert> = alerts.iter().filter(|x| x.sid == sid).collect();
            let vlans: BTreeSet<String> = of.iter().map(|x| vlan_text(x)).collect();
            let msg = suricata::TEST_RULES
                .lines()
                .find(|l| l.contains(&format!("sid:{sid};")))
                .and_then(|l| l.split("msg:\"").nth(1))
                .and_then(|m| m.split('"').next())
                .unwrap_or("");
            println!(
                "  {sid} {:<34} {:>3} {}",
                msg.strip_prefix("VTAP-TEST ").unwrap_or(msg),
                of.len(),
                if of.is_empty() {
                    "MISSING".to_string()
                } else {
                    format!("VLAN {}", vlans.into_iter().collect::<Vec<_>>().join(", "))
                }
            );
        }

        show.section("vtap counters (GET /metrics)");
        let m = d.metrics()?;
        let label =
            |s: &vtap_testbed::Sample, k: &str| s.labels.get(k).cloned().unwrap_or_default();
        println!(
            "  {:<14} {:>8} {:>8}   {:<26} {:>8}   not delivered",
            "policy", "matched", "", "output", "mirrored"
        );
        for (pname, enabled) in &enabled_policy {
            let matched = m.sum(
                "vtap_policy_matched_packets_total",
                &[("policy", pname.as_str())],
            );
            let outs: Vec<(String, f64)> = m
                .find(
                    "vtap_policy_mirrored_packets_total",
                    &[("policy", pname.as_str())],
                )
                .into_iter()
                .map(|s| (label(s, "output"), s.value))
                .collect();
            let dropped: Vec<String> = m
                .find(
                    "vtap_policy_dropped_copies_total",
                    &[("policy", pname.as_str())],
                )
                .into_iter()
                .filter(|s| s.value > 0.0)
                .map(|s| format!("{} {}", label(s, "reason"), s.value))
                .collect();
            let (o, n) = outs
                .first()
                .map(|(o, n)| (o.clone(), n.to_string()))
                .unwrap_or_else(|| ("-".into(), "-".into()));
            println!(
                "  {:<14} {:>8} {:>8}   {:<26} {:>8}   {}",
                pname,
                matched,
                if *enabled { "" } else { "disabled" },
                o,
                n,
                if dropped.is_empty() {
                    "0".to_string()
                } else {
                    dropped.join(", ")
                }
            );
            for (o, n) in outs.iter().skip(1) {
                println!("  {:<14} {:>8} {:>8}   {:<26} {:>8}", "", "", "", o, n);
            }
        }
        let mut to_mon = 0.0;
        println!("  per output (vtap_output_packets_total / _failed_):");
        for s in m.find("vtap_output_packets_total", &[]) {
            let o = label(s, "output");
            if o == mon.iface || o.starts_with(&format!("{}.", mon.iface)) {
                to_mon += s.value;
            }
            let failed = m
                .get(
                    "vtap_output_failed_packets_total",
                    &[("output", o.as_str())],
                )
                .ok()
                .flatten()
                .unwrap_or(0.0);
            println!("    {o:<26} {:>8} sent {:>6} failed", s.value, failed);
        }
        let tapped: Vec<String> = m
            .find("vtap_tap_packets_total", &[])
            .into_iter()
            .filter(|s| s.value > 0.0)
            .map(|s| format!("{} {} {}", label(s, "tap"), label(s, "direction"), s.value))
            .collect();
        println!(
            "  packets seen on the taps: {}",
            if tapped.is_empty() {
                "none".to_string()
            } else {
                tapped.join(", ")
            }
        );

        show.section("Suricata capture counters (eve.json stats)");
        let want_pkts = to_mon as u64;
        let st = match ids.wait_packets(want_pkts, 12 * SEC) {
            Ok(s) => Some(s),
            Err(e) => {
                println!("(not settled: {e:#})");
                ids.stats()
            }
        };
        let mut drops = 0;
        if let Some(st) = &st {
            drops = st.kernel_drops;
            println!(
                "kernel_packets {} (vtap sent {want_pkts} copies to {})  kernel_drops {}  trunc_pkt {}  decoder.vlan {}  max_pkt_size {}  detect.alert {}",
                st.kernel_packets,
                mon.iface,
                st.kernel_drops,
                st.trunc_pkt,
                st.decoder_vlan,
                st.max_pkt_size,
                st.alerts
            );
            if st.max_pkt_size > 1514 {
                println!(
                    "(max_pkt_size > 1514: GSO super-packets from the guests' virtio-net, mirrored whole)"
                );
            }
        } else {
            println!("no stats record yet");
        }

        show.section("stopping: VMs (poweroff), Suricata and vtap (SIGTERM)");
        d.check_alive()?;
        let t = Instant::now();
        vms.stop_all()?;
        ids.stop()?;
        d.stop()?;
        println!(
            "stopped in {:.1} s; vtap daemon exited with status 0",
            t.elapsed().as_secs_f64()
        );
        show.section("result");
        println!(
            "taps attached by glob: {attached_taps}/2; alerts: {} (rules hit: {}/{}); HTTP transfer through the taps: {}; Suricata kernel drops: {drops}",
            alerts.len(),
            expected
                .iter()
                .filter(|s| alerts.iter().any(|x| x.sid == **s))
                .count(),
            expected.len(),
            if intact {
                "intact (md5 equal)"
            } else {
                "CORRUPTED"
            }
        );
        if alerts.is_empty() {
            bail!("Suricata raised no alert on the mirrored VM traffic");
        }
        if !intact {
            bail!("the HTTP transfer between the VMs was not intact: md5 {got} != {want}");
        }
        if attached_taps != 2 {
            return Err(anyhow!("vtap attached {attached_taps} of the 2 VM taps"));
        }
        Ok(())
    }
}
