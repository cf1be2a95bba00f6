//! The throwaway environment: a "host" namespace with a Linux bridge and one
//! veth "tap" per VM, a namespace per VM, monitor namespaces behind `monN`
//! veths, and optionally a "remote" namespace reached over a VXLAN tunnel.
//!
//! ```text
//!   NAME-vm1 [eth0 10.0.0.1/24 fd00::1/64]          NAME-mon0 [eth0 promisc, no IP]
//!         |                                                   |
//!   NAME-host:  vm1-tap --+                                 mon0
//!               vm2-tap --+-- br0              ul0 192.168.77.1/30 -- vx0 (VNI, dstport 4789)
//!                                                  |
//!   NAME-rem:                                  ul0 192.168.77.2/30 -- vx0 (promisc)
//! ```
//!
//! All interface names are fixed (`vmN-tap`, `br0`, `monN`, `vx0`, `eth0`):
//! they live inside namespaces whose names carry the unique per-run prefix,
//! so testbeds never collide. To make packet counts exact the environment is
//! kept silent: IPv6 is off in the host, monitor and remote namespaces; the
//! VMs have no link-local address, no DAD, no router solicitations; ARP/ND
//! and bridge learning are replaced by permanent entries.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::cmd::{self, BgProcess, SHORT};
use crate::netns;

/// Options of a testbed. `Options::default()` is two VMs, one monitor, no
/// remote host, MTU 1500, offloads left as the kernel sets them.
#[derive(Debug, Clone)]
pub struct Options {
    /// Testbed name (namespace prefix). `None` = unique per-run name.
    pub name: Option<String>,
    pub vms: usize,
    pub monitors: usize,
    /// MTU of the VM links and the bridge.
    pub mtu: Option<u32>,
    /// MTU of the monitor links (defaults to `mtu`).
    pub monitor_mtu: Option<u32>,
    /// `Some(on)`: `ethtool -K eth0 tso/gso/gro on|off` in every VM.
    pub offloads: Option<bool>,
    /// Remote host reached through VXLAN with this VNI.
    pub remote_vni: Option<u32>,
    /// Permanent ARP/ND and bridge FDB entries (no ARP/ND/flooding noise).
    pub static_neighbors: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            name: None,
            vms: 2,
            monitors: 1,
            mtu: None,
            monitor_mtu: None,
            offloads: None,
            remote_vni: None,
            static_neighbors: true,
        }
    }
}

impl Options {
    pub fn vms(mut self, n: usize) -> Self {
        self.vms = n;
        self
    }
    pub fn monitors(mut self, n: usize) -> Self {
        self.monitors = n;
        self
    }
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = Some(mtu);
        self
    }
    pub fn monitor_mtu(mut self, mtu: u32) -> Self {
        self.monitor_mtu = Some(mtu);
        self
    }
    pub fn offloads(mut self, on: bool) -> Self {
        self.offloads = Some(on);
        self
    }
    pub fn remote(mut self, vni: u32) -> Self {
        self.remote_vni = Some(vni);
        self
    }
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }
}

/// One namespace "VM".
#[derive(Debug, Clone)]
pub struct Vm {
    /// 1-based index: `vm1`, `vm2`, ...
    pub index: usize,
    pub ns: String,
    /// Host-side interface, the one vtap taps: `vmN-tap`.
    pub tap: String,
    /// VM-side interface name (`eth0`).
    pub ifname: String,
    pub mac: String,
    pub tap_mac: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

/// A monitor: `monN` in the host namespace, its peer `eth0` in `ns`.
#[derive(Debug, Clone)]
pub struct Monitor {
    pub index: usize,
    pub ns: String,
    /// Host-side interface name, the output of policies: `monN`.
    pub iface: String,
    /// Interface inside the monitor namespace to capture on (`eth0`).
    pub ifname: String,
}

/// The remote end of a VXLAN tunnel.
#[derive(Debug, Clone)]
pub struct Remote {
    pub ns: String,
    pub vni: u32,
    /// VXLAN device name on both ends (`vx0`).
    pub vxlan: String,
    pub dstport: u16,
    pub underlay_host: Ipv4Addr,
    pub underlay_remote: Ipv4Addr,
}

/// A running testbed. Dropping it deletes its namespaces (and with them every
/// interface it made) and its work directory, unless it was made persistent.
#[derive(Debug)]
pub struct Testbed {
    pub name: String,
    pub host_ns: String,
    pub vms: Vec<Vm>,
    pub monitors: Vec<Monitor>,
    pub remote: Option<Remote>,
    pub workdir: PathBuf,
    pub options: Options,
    created_ns: Mutex<Vec<String>>,
    persistent: bool,
    seq: AtomicU32,
}

static RUN_PREFIX: Mutex<Option<String>> = Mutex::new(None);
static TESTBED_SEQ: AtomicU32 = AtomicU32::new(0);
static SWEEP_AT_EXIT: Once = Once::new();

/// The prefix of every namespace this process creates: `vt` + 6 hex digits,
/// random per process.
pub fn run_prefix() -> String {
    let mut g = RUN_PREFIX.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = g.as_ref() {
        return p.clone();
    }
    let existing = netns::list();
    let p = loop {
        let r: u32 = rand::random::<u32>() ^ std::process::id();
        let p = format!("vt{:06x}", r & 0xff_ffff);
        if !existing.iter().any(|n| n.starts_with(&p)) {
            break p;
        }
    };
    *g = Some(p.clone());
    p
}

extern "C" fn sweep_at_exit() {
    let p = RUN_PREFIX.lock().ok().and_then(|g| g.clone());
    if let Some(p) = p {
        let gone = netns::sweep(&p);
        if !gone.is_empty() {
            eprintln!("vtap-testbed: removed leftover namespaces {gone:?}");
        }
    }
}

/// Root directory of testbed work directories (`$VTAP_TESTBED_DIR` or
/// `/tmp/vtap-testbed`).
pub fn work_root() -> PathBuf {
    std::env::var_os("VTAP_TESTBED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/vtap-testbed"))
}

/// Whether `name` can prefix our namespace names.
pub fn valid_name(name: &str) -> bool {
    (2..=16).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
}

fn vm_mac(i: usize) -> String {
    format!("02:76:74:00:00:{:02x}", i)
}
fn tap_mac(i: usize) -> String {
    format!("02:76:74:01:00:{:02x}", i)
}

const VM_SYSCTLS: &[&str] = &[
    "net.ipv6.conf.all.accept_ra=0",
    "net.ipv6.conf.default.accept_ra=0",
    "net.ipv6.conf.all.router_solicitations=0",
    "net.ipv6.conf.default.router_solicitations=0",
    "net.ipv6.conf.all.accept_dad=0",
    "net.ipv6.conf.default.accept_dad=0",
    "net.ipv6.conf.all.dad_transmits=0",
    "net.ipv6.conf.default.dad_transmits=0",
    "net.ipv6.conf.all.addr_gen_mode=1",
    "net.ipv6.conf.default.addr_gen_mode=1",
    "net.ipv6.conf.all.use_tempaddr=0",
    "net.ipv6.conf.default.use_tempaddr=0",
    // MLD reports for the solicited-node groups cannot be switched off;
    // with a zero interval all of them go out at once, while the testbed is
    // being built, instead of trickling in during a test.
    "net.ipv6.conf.all.mldv1_unsolicited_report_interval=0",
    "net.ipv6.conf.default.mldv1_unsolicited_report_interval=0",
    "net.ipv6.conf.all.mldv2_unsolicited_report_interval=0",
    "net.ipv6.conf.default.mldv2_unsolicited_report_interval=0",
    "net.ipv4.icmp_ratelimit=0",
    "net.ipv6.icmp.ratelimit=0",
];

const SILENT_SYSCTLS: &[&str] = &[
    "net.ipv6.conf.all.disable_ipv6=1",
    "net.ipv6.conf.default.disable_ipv6=1",
];

fn sysctl(ns: &str, settings: &[&str]) -> Result<()> {
    let mut args = vec!["-q", "-w"];
    args.extend_from_slice(settings);
    cmd::ns_run_ok(ns, "sysctl", &args, SHORT)?;
    Ok(())
}

fn ethtool_k(ns: &str, dev: &str, features: &[(&str, bool)]) -> Result<()> {
    let mut args = vec!["-K".to_string(), dev.to_string()];
    for (f, on) in features {
        args.push(f.to_string());
        args.push(if *on { "on" } else { "off" }.to_string());
    }
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    cmd::ns_run_ok(ns, "ethtool", &a, SHORT)?;
    Ok(())
}

impl Testbed {
    /// Creates a testbed. On any error everything created so far is removed.
    pub fn new(opts: Options) -> Result<Testbed> {
        // 0 VMs: just the host namespace with br0 and the monitors, e.g. for
        // QEMU VMs on taps (`vm::VmSet`).
        if opts.vms > 250 {
            bail!("vms must be 0..=250, got {}", opts.vms);
        }
        if opts.monitors > 9 {
            bail!("monitors must be 0..=9, got {}", opts.monitors);
        }
        let name = match &opts.name {
            Some(n) => {
                if !valid_name(n) {
                    bail!(
                        "testbed name {n:?} must be 2-16 chars of [a-z0-9], starting with a letter"
                    );
                }
                if netns::list()
                    .iter()
                    .any(|ns| ns.starts_with(&format!("{n}-")))
                {
                    bail!("a testbed named {n} already exists (`vtap-testbed down --name {n}`)");
                }
                n.clone()
            }
            None => {
                let p = run_prefix();
                SWEEP_AT_EXIT.call_once(|| {
                    // SAFETY: registers a plain extern "C" fn without captures.
                    unsafe {
                        libc::atexit(sweep_at_exit);
                    }
                });
                format!("{p}{}", TESTBED_SEQ.fetch_add(1, Ordering::SeqCst))
            }
        };
        let workdir = work_root().join(&name);
        let _ = std::fs::remove_dir_all(&workdir);
        std::fs::create_dir_all(&workdir)
            .with_context(|| format!("create {}", workdir.display()))?;
        let host_ns = format!("{name}-host");
        let vms = (1..=opts.vms)
            .map(|i| Vm {
                index: i,
                ns: format!("{name}-vm{i}"),
                tap: format!("vm{i}-tap"),
                ifname: "eth0".into(),
                mac: vm_mac(i),
                tap_mac: tap_mac(i),
                ipv4: Ipv4Addr::new(10, 0, 0, i as u8),
                ipv6: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, i as u16),
            })
            .collect();
        let monitors = (0..opts.monitors)
            .map(|k| Monitor {
                index: k,
                ns: format!("{name}-mon{k}"),
                iface: format!("mon{k}"),
                ifname: "eth0".into(),
            })
            .collect();
        let remote = opts.remote_vni.map(|vni| Remote {
            ns: format!("{name}-rem"),
            vni,
            vxlan: "vx0".into(),
            dstport: 4789,
            underlay_host: Ipv4Addr::new(192, 168, 77, 1),
            underlay_remote: Ipv4Addr::new(192, 168, 77, 2),
        });
        let tb = Testbed {
            name,
            host_ns,
            vms,
            monitors,
            remote,
            workdir,
            options: opts,
            created_ns: Mutex::new(Vec::new()),
            persistent: false,
            seq: AtomicU32::new(0),
        };
        // On error `tb` is dropped here, which removes what was made.
        tb.build()?;
        Ok(tb)
    }

    /// Re-opens a testbed made by another process (e.g. `vtap-testbed up`),
    /// from its namespace names. The handle is persistent: dropping it does
    /// not tear the testbed down (use [`Testbed::destroy`]).
    pub fn open(name: &str) -> Result<Testbed> {
        if !valid_name(name) {
            bail!("invalid testbed name {name:?}");
        }
        let all = netns::list();
        let host_ns = format!("{name}-host");
        if !all.contains(&host_ns) {
            bail!("no testbed named {name} (namespace {host_ns} not found)");
        }
        let mut n_vms = 0;
        while all.contains(&format!("{name}-vm{}", n_vms + 1)) {
            n_vms += 1;
        }
        let mut n_mon = 0;
        while all.contains(&format!("{name}-mon{n_mon}")) {
            n_mon += 1;
        }
        let rem = format!("{name}-rem");
        let remote_vni = if all.contains(&rem) {
            let out = cmd::ip(Some(&rem), &["-d", "link", "show", "vx0"])?;
            out.stdout
                .split_whitespace()
                .skip_while(|w| *w != "id")
                .nth(1)
                .and_then(|v| v.parse().ok())
        } else {
            None
        };
        let opts = Options {
            name: Some(name.into()),
            vms: n_vms,
            monitors: n_mon,
            remote_vni,
            ..Options::default()
        };
        let vms = (1..=n_vms)
            .map(|i| Vm {
                index: i,
                ns: format!("{name}-vm{i}"),
                tap: format!("vm{i}-tap"),
                ifname: "eth0".into(),
                mac: vm_mac(i),
                tap_mac: tap_mac(i),
                ipv4: Ipv4Addr::new(10, 0, 0, i as u8),
                ipv6: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, i as u16),
            })
            .collect();
        let monitors = (0..n_mon)
            .map(|k| Monitor {
                index: k,
                ns: format!("{name}-mon{k}"),
                iface: format!("mon{k}"),
                ifname: "eth0".into(),
            })
            .collect();
        let remote = remote_vni.map(|vni| Remote {
            ns: rem.clone(),
            vni,
            vxlan: "vx0".into(),
            dstport: 4789,
            underlay_host: Ipv4Addr::new(192, 168, 77, 1),
            underlay_remote: Ipv4Addr::new(192, 168, 77, 2),
        });
        let workdir = work_root().join(name);
        std::fs::create_dir_all(&workdir)?;
        Ok(Testbed {
            name: name.into(),
            host_ns,
            vms,
            monitors,
            remote,
            workdir,
            options: opts,
            created_ns: Mutex::new(Vec::new()),
            persistent: true,
            seq: AtomicU32::new(1000),
        })
    }

    /// Keep the testbed when the handle is dropped (`vtap-testbed up`).
    pub fn persist(mut self) -> Self {
        self.persistent = true;
        self
    }

    /// Tears down the testbed named `name`: its namespaces (killing what
    /// runs inside) and its work directory. Returns the namespaces removed.
    pub fn destroy(name: &str) -> Result<Vec<String>> {
        if !valid_name(name) {
            bail!("invalid testbed name {name:?}");
        }
        let gone = netns::sweep(&format!("{name}-"));
        let _ = std::fs::remove_dir_all(work_root().join(name));
        Ok(gone)
    }

    fn add_ns(&self, ns: &str) -> Result<()> {
        netns::add(ns)?;
        self.created_ns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(ns.to_string());
        cmd::ip(Some(ns), &["link", "set", "lo", "up"])?;
        Ok(())
    }

    fn build(&self) -> Result<()> {
        let o = &self.options;
        let h = self.host_ns.as_str();
        let mtu = o.mtu.unwrap_or(1500).to_string();
        let mon_mtu = o.monitor_mtu.or(o.mtu).unwrap_or(1500).to_string();

        // Host: bridge, silent (no IPv6, no STP, no multicast snooping).
        self.add_ns(h)?;
        sysctl(h, SILENT_SYSCTLS)?;
        cmd::ip(
            Some(h),
            &[
                "link",
                "add",
                "br0",
                "mtu",
                &mtu,
                "type",
                "bridge",
                "stp_state",
                "0",
                "forward_delay",
                "0",
                "mcast_snooping",
                "0",
            ],
        )?;
        cmd::ip(Some(h), &["link", "set", "br0", "up"])?;

        for vm in &self.vms {
            let ns = vm.ns.as_str();
            self.add_ns(ns)?;
            sysctl(ns, VM_SYSCTLS)?;
            cmd::ip(
                Some(h),
                &[
                    "link",
                    "add",
                    &vm.tap,
                    "mtu",
                    &mtu,
                    "address",
                    &vm.tap_mac,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "mtu",
                    &mtu,
                    "address",
                    &vm.mac,
                    "netns",
                    ns,
                ],
            )?;
            cmd::ip(Some(h), &["link", "set", &vm.tap, "master", "br0", "up"])?;
            if o.static_neighbors {
                // NOARP before the addresses exist: no solicited-node
                // multicast group is joined, so no MLD report is ever sent;
                // neighbours are permanent entries (below).
                cmd::ip(Some(ns), &["link", "set", "eth0", "arp", "off"])?;
            }
            cmd::ip(
                Some(ns),
                &["addr", "add", &format!("{}/24", vm.ipv4), "dev", "eth0"],
            )?;
            cmd::ip(
                Some(ns),
                &[
                    "-6",
                    "addr",
                    "add",
                    &format!("{}/64", vm.ipv6),
                    "dev",
                    "eth0",
                    "nodad",
                ],
            )?;
            if let Some(on) = o.offloads {
                ethtool_k(ns, "eth0", &[("tso", on), ("gso", on), ("gro", on)])?;
            }
            cmd::ip(Some(ns), &["link", "set", "eth0", "up"])?;
        }
        if o.static_neighbors {
            for vm in &self.vms {
                cmd::run_ok(
                    std::process::Command::new("bridge").args([
                        "-n", h, "fdb", "replace", &vm.mac, "dev", &vm.tap, "master", "static",
                    ]),
                    SHORT,
                )?;
                for other in self.vms.iter().filter(|v| v.index != vm.index) {
                    for addr in [other.ipv4.to_string(), other.ipv6.to_string()] {
                        cmd::ip(
                            Some(&vm.ns),
                            &[
                                "neigh",
                                "replace",
                                &addr,
                                "lladdr",
                                &other.mac,
                                "dev",
                                "eth0",
                                "nud",
                                "permanent",
                            ],
                        )?;
                    }
                }
            }
        }

        for m in &self.monitors {
            let ns = m.ns.as_str();
            self.add_ns(ns)?;
            sysctl(ns, SILENT_SYSCTLS)?;
            cmd::ip(
                Some(h),
                &[
                    "link", "add", &m.iface, "mtu", &mon_mtu, "type", "veth", "peer", "name",
                    "eth0", "mtu", &mon_mtu, "netns", ns,
                ],
            )?;
            cmd::ip(Some(h), &["link", "set", &m.iface, "up"])?;
            // Exact frame counts: no GRO merging of copies on the way in.
            let _ = ethtool_k(ns, "eth0", &[("gro", false)]);
            cmd::ip(Some(ns), &["link", "set", "eth0", "promisc", "on", "up"])?;
        }

        if let Some(r) = &self.remote {
            let ns = r.ns.as_str();
            self.add_ns(ns)?;
            sysctl(ns, SILENT_SYSCTLS)?;
            cmd::ip(
                Some(h),
                &[
                    "link", "add", "ul0", "mtu", "9000", "type", "veth", "peer", "name", "ul0",
                    "mtu", "9000", "netns", ns,
                ],
            )?;
            let (hmac, rmac) = ("02:76:74:77:00:01", "02:76:74:77:00:02");
            cmd::ip(Some(h), &["link", "set", "ul0", "address", hmac])?;
            cmd::ip(Some(ns), &["link", "set", "ul0", "address", rmac])?;
            let vni = r.vni.to_string();
            let port = r.dstport.to_string();
            for (side, local, peer, peer_mac) in [
                (h, r.underlay_host, r.underlay_remote, rmac),
                (ns, r.underlay_remote, r.underlay_host, hmac),
            ] {
                cmd::ip(
                    Some(side),
                    &["addr", "add", &format!("{local}/30"), "dev", "ul0"],
                )?;
                cmd::ip(Some(side), &["link", "set", "ul0", "up"])?;
                cmd::ip(
                    Some(side),
                    &[
                        "neigh",
                        "replace",
                        &peer.to_string(),
                        "lladdr",
                        peer_mac,
                        "dev",
                        "ul0",
                        "nud",
                        "permanent",
                    ],
                )?;
                cmd::ip(
                    Some(side),
                    &[
                        "link",
                        "add",
                        &r.vxlan,
                        "type",
                        "vxlan",
                        "id",
                        &vni,
                        "local",
                        &local.to_string(),
                        "remote",
                        &peer.to_string(),
                        "dev",
                        "ul0",
                        "dstport",
                        &port,
                        "nolearning",
                    ],
                )?;
                cmd::ip(
                    Some(side),
                    &["link", "set", &r.vxlan, "promisc", "on", "up"],
                )?;
            }
        }
        Ok(())
    }

    /// Namespaces of this testbed.
    pub fn namespaces(&self) -> Vec<String> {
        let mut v = vec![self.host_ns.clone()];
        v.extend(self.vms.iter().map(|m| m.ns.clone()));
        v.extend(self.monitors.iter().map(|m| m.ns.clone()));
        v.extend(self.remote.iter().map(|r| r.ns.clone()));
        v
    }

    /// VM by 1-based index.
    pub fn vm(&self, i: usize) -> &Vm {
        &self.vms[i - 1]
    }

    /// Monitor by 0-based index (`mon0` is `monitor(0)`).
    pub fn monitor(&self, k: usize) -> &Monitor {
        &self.monitors[k]
    }

    pub fn remote(&self) -> &Remote {
        self.remote
            .as_ref()
            .expect("testbed made without a remote host")
    }

    /// Address of VM `i`, IPv4 or IPv6.
    pub fn addr(&self, i: usize, v6: bool) -> IpAddr {
        let vm = self.vm(i);
        if v6 {
            IpAddr::V6(vm.ipv6)
        } else {
            IpAddr::V4(vm.ipv4)
        }
    }

    /// A fresh path in the work directory: `NNN-stem.ext`.
    pub fn path(&self, stem: &str, ext: &str) -> PathBuf {
        let n = self.seq.fetch_add(1, Ordering::SeqCst);
        self.workdir.join(format!("{n:03}-{stem}.{ext}"))
    }

    /// Runs `program args...` in `ns` with a time bound; fails on non-zero exit.
    pub fn exec(
        &self,
        ns: &str,
        program: &str,
        args: &[&str],
        timeout: Duration,
    ) -> Result<cmd::Output> {
        cmd::ns_run_ok(ns, program, args, timeout)
    }

    /// Starts `program args...` in `ns` in the background; it is ended when
    /// the returned handle is dropped. Output goes to the work directory.
    pub fn spawn(&self, ns: &str, program: &str, args: &[&str]) -> Result<BgProcess<'_>> {
        let mut c = cmd::ns_command(ns, program);
        c.args(args);
        let stem = Path::new(program)
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        BgProcess::spawn(c, &self.path(&stem, "log"))
    }

    /// Starts an arbitrary prepared command in the background.
    pub fn spawn_command(&self, c: std::process::Command, stem: &str) -> Result<BgProcess<'_>> {
        BgProcess::spawn(c, &self.path(stem, "log"))
    }

    /// Interfaces per namespace, for diagnostics.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for ns in self.namespaces() {
            s.push_str(&format!("== {ns}\n"));
            if let Ok(o) = cmd::ip(Some(&ns), &["-br", "link"]) {
                s.push_str(&o.stdout);
            }
        }
        s
    }

    /// The testbed as JSON (names of namespaces, interfaces and addresses).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "host_ns": self.host_ns,
            "bridge": "br0",
            "workdir": self.workdir,
            "vms": self.vms.iter().map(|v| serde_json::json!({
                "name": format!("vm{}", v.index),
                "ns": v.ns, "tap": v.tap, "ifname": v.ifname, "mac": v.mac,
                "ipv4": v.ipv4.to_string(), "ipv6": v.ipv6.to_string(),
            })).collect::<Vec<_>>(),
            "monitors": self.monitors.iter().map(|m| serde_json::json!({
                "ns": m.ns, "iface": m.iface, "ifname": m.ifname,
            })).collect::<Vec<_>>(),
            "remote": self.remote.as_ref().map(|r| serde_json::json!({
                "ns": r.ns, "vxlan": r.vxlan, "vni": r.vni, "dstport": r.dstport,
                "underlay_host": r.underlay_host.to_string(), "underlay_remote": r.underlay_remote.to_string(),
            })),
        })
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if self.persistent {
            return;
        }
        let created =
            std::mem::take(&mut *self.created_ns.lock().unwrap_or_else(|e| e.into_inner()));
        for ns in created.iter().rev() {
            if let Err(e) = netns::delete(ns) {
                eprintln!("vtap-testbed: cannot delete netns {ns}: {e:#}");
            }
        }
        // Anything of ours that slipped through (e.g. made by a helper).
        netns::sweep(&format!("{}-", self.name));
        let keep = std::thread::panicking() || std::env::var_os("VTAP_TESTBED_KEEP").is_some();
        if keep {
            eprintln!(
                "vtap-testbed: kept work directory {}",
                self.workdir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.workdir);
        }
    }
}
