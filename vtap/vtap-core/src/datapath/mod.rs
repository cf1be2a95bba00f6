//! The kernel side: load `ebpf/vtap_tc.c`, own its maps, attach it to taps,
//! write policy generations into its tables, read its counters.
//!
//! - [`sys`]: raw `bpf(2)` map operations (batch updates, RCU barrier).
//! - [`Datapath`]: the loaded object, its maps and its TCX links.
//! - [`reconcile`]: turns a resolved policy image into table writes for the
//!   inactive generation, then flips the active one.

pub mod reconcile;
pub mod stats;
pub mod sys;

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd};

use aya::maps::{Map, MapData};
use aya::programs::tc::SchedClassifierLinkId;
use aya::programs::xdp::{XdpLinkId, XdpMode};
use aya::programs::{ProgramError, SchedClassifier, TcAttachType, Xdp};
use aya::{Ebpf, EbpfLoader};
use vtap_abi::Dir;

/// The compiled TC datapath (built by `build.rs` from `ebpf/vtap_tc.c`).
pub static TC_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vtap_tc.o"));

/// Names of the two programs, by direction.
pub const PROG_INGRESS: &str = "vtap_tc_ingress";
/// See [`PROG_INGRESS`].
pub const PROG_EGRESS: &str = "vtap_tc_egress";
/// The XDP program (ingress only: counting and pcap captures).
pub const PROG_XDP: &str = "vtap_xdp_ingress";
/// TC egress of vtap's VXLAN device: sets the tunnel key of `vxlan:` copies.
pub const PROG_TUNNEL: &str = "vtap_tunnel_tx";

/// A live attachment.
enum LinkId {
    Tc(SchedClassifierLinkId),
    Xdp(XdpLinkId),
}

/// Errors of the datapath layer.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The object did not load (includes the verifier log).
    #[error("loading the BPF object failed: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    /// A program could not be loaded or attached.
    #[error("program {program}: {source}")]
    Program {
        /// Program name.
        program: &'static str,
        /// Cause.
        #[source]
        source: Box<ProgramError>,
    },
    /// A map the code expects is missing from the object.
    #[error("map {0} missing from the BPF object")]
    MissingMap(&'static str),
    /// A map operation failed.
    #[error("map {map}: {op}: {source}")]
    Map {
        /// Map name.
        map: &'static str,
        /// What was being done.
        op: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Attaching to an interface failed.
    #[error("attaching to {iface} ({dir}) failed: {source}")]
    Attach {
        /// Interface name.
        iface: String,
        /// Direction.
        dir: &'static str,
        /// Cause.
        #[source]
        source: Box<ProgramError>,
    },
    /// Anything else from the OS.
    #[error("{what}: {source}")]
    Os {
        /// What was being done.
        what: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// One BPF map: its name (for errors) and data (for the fd).
pub struct MapHandle {
    /// Name in the object.
    pub name: &'static str,
    data: MapData,
}

impl MapHandle {
    /// The map's fd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.data.fd().as_fd()
    }

    fn err(&self, op: &'static str, source: std::io::Error) -> DatapathError {
        DatapathError::Map {
            map: self.name,
            op,
            source,
        }
    }

    /// Updates one element.
    pub fn update<K: aya::Pod, V: aya::Pod>(&self, k: &K, v: &V) -> Result<(), DatapathError> {
        sys::update(self.fd(), sys::bytes_of(k), sys::bytes_of(v), 0)
            .map_err(|e| self.err("update", e))
    }

    /// Deletes one element (absent is fine).
    pub fn delete<K: aya::Pod>(&self, k: &K) -> Result<(), DatapathError> {
        sys::delete(self.fd(), sys::bytes_of(k))
            .map(|_| ())
            .map_err(|e| self.err("delete", e))
    }

    /// Looks one element up.
    pub fn lookup<K: aya::Pod, V: aya::Pod>(&self, k: &K) -> Result<Option<V>, DatapathError> {
        let mut buf = vec![0u8; std::mem::size_of::<V>()];
        match sys::lookup(self.fd(), sys::bytes_of(k), &mut buf) {
            Ok(true) => Ok(Some(sys::from_bytes(&buf))),
            Ok(false) => Ok(None),
            Err(e) => Err(self.err("lookup", e)),
        }
    }

    /// Writes array entries `(index, value)` with batch updates.
    pub fn update_array<V: aya::Pod>(&self, entries: &[(u32, V)]) -> Result<(), DatapathError> {
        for chunk in entries.chunks(8192) {
            let keys: Vec<u32> = chunk.iter().map(|(k, _)| *k).collect();
            let vals: Vec<V> = chunk.iter().map(|(_, v)| *v).collect();
            sys::update_batch(
                self.fd(),
                sys::bytes_of_slice(&keys),
                sys::bytes_of_slice(&vals),
                keys.len() as u32,
            )
            .map_err(|e| self.err("batch update", e))?;
        }
        Ok(())
    }
}

/// All maps of the TC object.
#[allow(missing_docs)]
pub struct Maps {
    pub global: MapHandle,
    pub gen_cfg: MapHandle,
    pub tap_sel: MapHandle,
    pub ether: MapHandle,
    pub cidr: MapHandle,
    pub src4: MapHandle,
    pub dst4: MapHandle,
    pub src6: MapHandle,
    pub dst6: MapHandle,
    pub proto: MapHandle,
    pub tcp_flags: MapHandle,
    pub sport: MapHandle,
    pub dport: MapHandle,
    pub actions: MapHandle,
    pub outputs: MapHandle,
    pub tap_stats: MapHandle,
    pub policy_stats: MapHandle,
    pub output_stats: MapHandle,
    pub policy_drops: MapHandle,
    pub copy_stats: MapHandle,
    /// Per pcap output id: records submitted, ring full (`vtap_capture_stats`).
    pub capture_stats: MapHandle,
    /// Token buckets of rate-limited policies (`vtap_rate`, by slot).
    pub rate: MapHandle,
    /// Parse results published for probes (`vtap_parse_pub`).
    pub parse_pub: MapHandle,
}

fn map_data(m: Map) -> Option<MapData> {
    match m {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::LpmTrie(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuHashMap(d) => Some(d),
        _ => None,
    }
}

/// A loaded datapath: programs (with their TCX links) and maps.
pub struct Datapath {
    ebpf: Ebpf,
    /// The maps.
    pub maps: Maps,
    /// Number of possible CPUs (per-CPU value stride).
    pub ncpus: usize,
    barrier: sys::RcuBarrier,
    links: BTreeMap<(String, Dir), LinkId>,
    /// `vtap_tunnel_tx` on the VXLAN device: (ifindex, link).
    tunnel: Option<(u32, SchedClassifierLinkId)>,
    pcap_ring: Option<crate::capture::ringbuf::PcapRing>,
    /// `vtap_global.flags` (kept across generation flips).
    flags: std::sync::atomic::AtomicU32,
}

/// Load-time settings of the datapath.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// Size of the pcap ring buffer in bytes (a power of two, at least a page).
    pub pcap_ring_bytes: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            pcap_ring_bytes: 64 << 20,
        }
    }
}

impl Datapath {
    /// Loads the TC object and its two programs (does not attach), with the
    /// default [`LoadOptions`].
    pub fn load() -> Result<Self, DatapathError> {
        Self::load_with(LoadOptions::default())
    }

    /// Loads the TC object and its two programs (does not attach).
    pub fn load_with(opts: LoadOptions) -> Result<Self, DatapathError> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("vtap_pcap_ring", opts.pcap_ring_bytes)
            .load(TC_OBJECT)
            .map_err(|e| DatapathError::Load(Box::new(e)))?;
        for name in [PROG_INGRESS, PROG_EGRESS, PROG_TUNNEL] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(DatapathError::MissingMap(name))?
                .try_into()
                .map_err(|e| DatapathError::Program {
                    program: name,
                    source: Box::new(e),
                })?;
            prog.load().map_err(|e| DatapathError::Program {
                program: name,
                source: Box::new(e),
            })?;
        }
        let xdp: &mut Xdp = ebpf
            .program_mut(PROG_XDP)
            .ok_or(DatapathError::MissingMap(PROG_XDP))?
            .try_into()
            .map_err(|e| DatapathError::Program {
                program: PROG_XDP,
                source: Box::new(e),
            })?;
        xdp.load().map_err(|e| DatapathError::Program {
            program: PROG_XDP,
            source: Box::new(e),
        })?;
        let mut take = |name: &'static str| -> Result<MapHandle, DatapathError> {
            let m = ebpf.take_map(name).ok_or(DatapathError::MissingMap(name))?;
            Ok(MapHandle {
                name,
                data: map_data(m).ok_or(DatapathError::MissingMap(name))?,
            })
        };
        let maps = Maps {
            global: take("vtap_global")?,
            gen_cfg: take("vtap_gen_cfg")?,
            tap_sel: take("vtap_tap_sel")?,
            ether: take("vtap_ether")?,
            cidr: take("vtap_cidr")?,
            src4: take("vtap_src4")?,
            dst4: take("vtap_dst4")?,
            src6: take("vtap_src6")?,
            dst6: take("vtap_dst6")?,
            proto: take("vtap_proto")?,
            tcp_flags: take("vtap_tcp_flags")?,
            sport: take("vtap_sport")?,
            dport: take("vtap_dport")?,
            actions: take("vtap_actions")?,
            outputs: take("vtap_outputs")?,
            tap_stats: take("vtap_tap_stats")?,
            policy_stats: take("vtap_policy_stats")?,
            output_stats: take("vtap_output_stats")?,
            policy_drops: take("vtap_policy_drops")?,
            copy_stats: take("vtap_copy_stats")?,
            capture_stats: take("vtap_capture_stats")?,
            rate: take("vtap_rate")?,
            parse_pub: take("vtap_parse_pub")?,
        };
        let ring = ebpf
            .take_map("vtap_pcap_ring")
            .ok_or(DatapathError::MissingMap("vtap_pcap_ring"))?;
        let Map::RingBuf(ring) = ring else {
            return Err(DatapathError::MissingMap("vtap_pcap_ring"));
        };
        let pcap_ring =
            crate::capture::ringbuf::PcapRing::new(ring).map_err(|source| DatapathError::Os {
                what: "mapping the pcap ring buffer",
                source,
            })?;
        let barrier =
            sys::RcuBarrier::new(maps.global.fd()).map_err(|source| DatapathError::Os {
                what: "creating the RCU barrier map",
                source,
            })?;
        let ncpus = aya::util::nr_cpus().map_err(|(_, source)| DatapathError::Os {
            what: "reading possible CPUs",
            source,
        })?;
        let dp = Datapath {
            ebpf,
            maps,
            ncpus,
            barrier,
            links: BTreeMap::new(),
            tunnel: None,
            pcap_ring: Some(pcap_ring),
            flags: std::sync::atomic::AtomicU32::new(0),
        };
        dp.maps.global.update(
            &0u32,
            &vtap_abi::Global {
                active_gen: 0,
                abi_version: vtap_abi::ABI_VERSION,
                flags: 0,
                _pad: 0,
            },
        )?;
        Ok(dp)
    }

    /// The pcap ring buffer, for its one reader (None after the first call).
    pub fn take_pcap_ring(&mut self) -> Option<crate::capture::ringbuf::PcapRing> {
        self.pcap_ring.take()
    }

    /// `vtap_global.flags` as user space last set them.
    pub fn global_flags(&self) -> u32 {
        self.flags.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sets or clears `vtap_global` flags (the active generation is kept).
    /// The engine serialises this with generation flips.
    pub fn set_global_flag(&self, flag: u32, on: bool) -> Result<(), DatapathError> {
        use std::sync::atomic::Ordering;
        let f = if on {
            self.flags.fetch_or(flag, Ordering::Relaxed) | flag
        } else {
            self.flags.fetch_and(!flag, Ordering::Relaxed) & !flag
        };
        let mut g: vtap_abi::Global = self.maps.global.lookup(&0u32)?.unwrap_or_default();
        g.abi_version = vtap_abi::ABI_VERSION;
        g.flags = f;
        self.maps.global.update(&0u32, &g)
    }

    /// Pins `vtap_parse_pub` at `path` (on a bpf filesystem) so probes
    /// loaded with that pin path share it.
    pub fn pin_parse_pub(&self, path: &std::path::Path) -> Result<(), DatapathError> {
        self.maps
            .parse_pub
            .data
            .pin(path)
            .map_err(|e| DatapathError::Os {
                what: "pinning vtap_parse_pub",
                source: std::io::Error::other(e.to_string()),
            })
    }

    /// The program for a direction (for attach, detach and test runs).
    pub fn program(&self, dir: Dir) -> &SchedClassifier {
        let name = match dir {
            Dir::Ingress => PROG_INGRESS,
            Dir::Egress => PROG_EGRESS,
        };
        self.ebpf.program(name).unwrap().try_into().unwrap()
    }

    fn program_mut(&mut self, dir: Dir) -> &mut SchedClassifier {
        let name = match dir {
            Dir::Ingress => PROG_INGRESS,
            Dir::Egress => PROG_EGRESS,
        };
        self.ebpf.program_mut(name).unwrap().try_into().unwrap()
    }

    /// Waits for an RCU grace period: no packet still uses what was active
    /// before the call.
    pub fn barrier(&self) -> Result<(), DatapathError> {
        self.barrier.wait().map_err(|source| DatapathError::Os {
            what: "RCU barrier",
            source,
        })
    }

    /// Attaches the program of `dir` to `iface` with TCX (appended after
    /// programs already there; ours return TC_ACT_UNSPEC so later ones run).
    /// Idempotent. The tap's table entries (policies, counter slot) are
    /// written by the reconciler before this is called.
    pub fn attach(&mut self, iface: &str, ifindex: u32, dir: Dir) -> Result<(), DatapathError> {
        if self.links.contains_key(&(iface.to_string(), dir)) {
            return Ok(());
        }
        let _ = ifindex;
        let tc = match dir {
            Dir::Ingress => TcAttachType::Ingress,
            Dir::Egress => TcAttachType::Egress,
        };
        let link = self
            .program_mut(dir)
            .attach(iface, tc)
            .map_err(|e| DatapathError::Attach {
                iface: iface.to_string(),
                dir: dir.as_str(),
                source: Box::new(e),
            })?;
        self.links
            .insert((iface.to_string(), dir), LinkId::Tc(link));
        Ok(())
    }

    /// Attaches the XDP program to `iface` (ingress; native mode when the
    /// driver has it — veth and tap do — else generic). Idempotent.
    pub fn attach_xdp(&mut self, iface: &str) -> Result<(), DatapathError> {
        let key = (iface.to_string(), Dir::Ingress);
        if self.links.contains_key(&key) {
            return Ok(());
        }
        let prog = self.xdp_mut();
        let link = match prog.attach(iface, XdpMode::Driver) {
            Ok(l) => l,
            Err(_) => prog
                .attach(iface, XdpMode::Skb)
                .map_err(|e| DatapathError::Attach {
                    iface: iface.to_string(),
                    dir: "ingress (xdp)",
                    source: Box::new(e),
                })?,
        };
        self.links.insert(key, LinkId::Xdp(link));
        Ok(())
    }

    /// Whether `iface`'s ingress is attached in XDP mode.
    pub fn is_xdp(&self, iface: &str) -> bool {
        matches!(
            self.links.get(&(iface.to_string(), Dir::Ingress)),
            Some(LinkId::Xdp(_))
        )
    }

    fn xdp_mut(&mut self) -> &mut Xdp {
        self.ebpf.program_mut(PROG_XDP).unwrap().try_into().unwrap()
    }

    /// The XDP program (test runs).
    pub fn xdp_program(&self) -> &Xdp {
        self.ebpf.program(PROG_XDP).unwrap().try_into().unwrap()
    }

    /// Detaches the program of `dir` from `iface`. A link whose interface is
    /// gone is already detached by the kernel; that is not an error.
    pub fn detach(&mut self, iface: &str, dir: Dir) -> Result<(), DatapathError> {
        let r = match self.links.remove(&(iface.to_string(), dir)) {
            Some(LinkId::Tc(link)) => self.program_mut(dir).detach(link),
            Some(LinkId::Xdp(link)) => self.xdp_mut().detach(link),
            None => Ok(()),
        };
        if let Err(e) = r {
            tracing::debug!(iface, dir = dir.as_str(), error = %e, "detach");
        }
        Ok(())
    }

    /// Interfaces (and directions) with a live link.
    pub fn attached(&self) -> impl Iterator<Item = &(String, Dir)> {
        self.links.keys()
    }

    /// Attaches `vtap_tunnel_tx` to the egress of vtap's VXLAN device
    /// `iface` (index `ifindex`); a link to an older index is replaced.
    pub fn attach_tunnel(&mut self, iface: &str, ifindex: u32) -> Result<(), DatapathError> {
        if matches!(self.tunnel, Some((i, _)) if i == ifindex) {
            return Ok(());
        }
        self.detach_tunnel();
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(PROG_TUNNEL)
            .ok_or(DatapathError::MissingMap(PROG_TUNNEL))?
            .try_into()
            .map_err(|e| DatapathError::Program {
                program: PROG_TUNNEL,
                source: Box::new(e),
            })?;
        let link = prog
            .attach(iface, TcAttachType::Egress)
            .map_err(|e| DatapathError::Attach {
                iface: iface.to_string(),
                dir: "egress (tunnel)",
                source: Box::new(e),
            })?;
        self.tunnel = Some((ifindex, link));
        Ok(())
    }

    /// The index of the VXLAN device `vtap_tunnel_tx` is attached to.
    pub fn tunnel_ifindex(&self) -> Option<u32> {
        self.tunnel.as_ref().map(|(i, _)| *i)
    }

    /// Detaches `vtap_tunnel_tx` (a link whose device is gone is already
    /// detached by the kernel).
    pub fn detach_tunnel(&mut self) {
        if let Some((_, link)) = self.tunnel.take()
            && let Some(p) = self.ebpf.program_mut(PROG_TUNNEL)
            && let Ok(p) = <&mut SchedClassifier>::try_from(p)
            && let Err(e) = p.detach(link)
        {
            tracing::debug!(error = %e, "detach tunnel program");
        }
    }

    /// Detaches everything.
    pub fn detach_all(&mut self) {
        self.detach_tunnel();
        let keys: Vec<(String, Dir)> = self.links.keys().cloned().collect();
        for (n, d) in keys {
            let _ = self.detach(&n, d);
        }
    }

    /// Bytes per CPU of a per-CPU value of type V.
    pub fn percpu_stride<V>(&self) -> usize {
        std::mem::size_of::<V>().div_ceil(8) * 8
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        self.detach_all();
    }
}
