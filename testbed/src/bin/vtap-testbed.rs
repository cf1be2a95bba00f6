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
//! ```

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
