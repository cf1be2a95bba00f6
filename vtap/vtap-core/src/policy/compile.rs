//! Compilation: a validated policy set → the contents of the classification
//! maps of one generation (pure; the reconciler writes them with the
//! generation in the keys and flips `active_gen`).
//!
//! # Table semantics (what the datapath computes)
//!
//! Every policy owns a slot (a bit of a [`Bitmap`]); the slots and output ids
//! come from an [`Assignment`] that the caller keeps stable across updates
//! ([`Assignment::assign`]). For each match field *f*:
//!
//! * `wildcard[f]` = the enabled policies that do not constrain *f*;
//! * every table entry for a value *v* = `wildcard[f]` ∪ the enabled policies
//!   that constrain *f* and accept *v*;
//! * `used_fields` bit *f* is set iff some enabled policy constrains *f*.
//!
//! The datapath starts with `tap_bitmap(ifindex, dir)` and, for every field in
//! `used_fields`, ANDs the entry for the packet's value — or `wildcard[f]` when
//! the packet has no value for the field (non-IP packet for SRC/DST/PROTO; no
//! ports for SPORT/DPORT; not TCP for TCP_FLAGS; see
//! [`reference`](super::reference)) or when the ether_type / LPM lookup misses.
//! The LPM tables hold one entry per prefix named by an enabled policy (per
//! side and family); its bitmap is `wildcard[side]` ∪ every policy with a prefix
//! on that side that *contains* the entry's prefix, so a longest-prefix match
//! yields exactly the policies having some prefix that contains the address.
//!
//! Bidirectional policies (`bidir`) also match with the addresses and ports
//! swapped:
//!
//! ```text
//! base    = tap & ether_type(et) & proto(p) & tcp_flags(fl)
//! matched = base & src(sa) & dst(da) & sport(sp) & dport(dp)
//!         | base & bidir & src(da) & dst(sa) & sport(dp) & dport(sp)
//! ```
//!
//! Disabled policies keep their slot (and their `actions` entry, so counters
//! can still be named) but appear in no bitmap.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Serialize;
use serde_json::{Value, json};
use vtap_abi::{Bitmap, Dir, MAX_OUTPUTS, MAX_POLICIES, PCAP_MAX_CAPLEN, field};

use super::model::{Direction, Policy};
use super::shaping::Shaping;
use super::validate::{FieldError, validate_set};

/// An output as the datapath knows it: an interface and the VLAN id to push,
/// or (with `capture` set, `interface` empty) a pcap capture, or (with
/// `vxlan` set, `interface` = vtap's VXLAN device) a remote VXLAN endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct OutputKey {
    /// Interface name (empty for a capture).
    pub interface: String,
    /// VLAN id to push, 0 = none.
    pub vlan: u16,
    /// The capture's name, for a pcap output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capture: Option<String>,
    /// The remote end, for a VXLAN output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vxlan: Option<VxlanKey>,
}

/// The remote end of a VXLAN output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct VxlanKey {
    /// Remote VTEP.
    pub remote: std::net::IpAddr,
    /// VNI.
    pub vni: u32,
}

impl OutputKey {
    /// An interface output.
    pub fn iface(interface: &str, vlan: u16) -> OutputKey {
        OutputKey {
            interface: interface.into(),
            vlan,
            capture: None,
            vxlan: None,
        }
    }

    /// A VXLAN output (through [`crate::tunnel::DEVICE`]).
    pub fn vxlan(remote: std::net::IpAddr, vni: u32, vlan: u16) -> OutputKey {
        OutputKey {
            interface: crate::tunnel::DEVICE.into(),
            vlan,
            capture: None,
            vxlan: Some(VxlanKey { remote, vni }),
        }
    }

    /// A pcap output.
    pub fn pcap(capture: &str) -> OutputKey {
        OutputKey {
            interface: String::new(),
            vlan: 0,
            capture: Some(capture.into()),
            vxlan: None,
        }
    }
}

impl fmt::Display for OutputKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(c) = &self.capture {
            write!(f, "pcap:{c}")
        } else if let Some(x) = &self.vxlan {
            match self.vlan {
                0 => write!(f, "vxlan:{}/{}", x.remote, x.vni),
                v => write!(f, "vxlan:{}/{}.{v}", x.remote, x.vni),
            }
        } else if self.vlan == 0 {
            write!(f, "{}", self.interface)
        } else {
            write!(f, "{}.{}", self.interface, self.vlan)
        }
    }
}

/// Slots of policies and ids of outputs, kept stable across updates by the
/// caller so that per-slot and per-output counters stay attached.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Assignment {
    /// Policy name → slot (0..MAX_POLICIES).
    pub policy_slots: BTreeMap<String, u16>,
    /// Output → id (0..MAX_OUTPUTS).
    pub output_ids: BTreeMap<OutputKey, u8>,
}

impl Assignment {
    /// Slots and output ids for `policies` (enabled or not): policies and
    /// outputs present in `previous` keep their slot/id; new ones get a free
    /// slot/id, preferring ones `previous` did not use (so a freed slot is not
    /// reused at once while the old generation may still be classifying).
    /// Entries of `previous` that are no longer used are dropped.
    pub fn assign(policies: &[Policy], previous: &Assignment) -> Result<Assignment, CompileError> {
        let names: BTreeSet<&str> = policies.iter().map(|p| p.name.as_str()).collect();
        if names.len() > MAX_POLICIES {
            return Err(CompileError::TooManyPolicies(names.len()));
        }
        let outputs: BTreeSet<OutputKey> = policies.iter().flat_map(|p| p.output_keys()).collect();
        if outputs.len() > MAX_OUTPUTS {
            return Err(CompileError::TooManyOutputs(outputs.len()));
        }
        let mut a = Assignment::default();
        let mut used_slots = BTreeSet::new();
        for (n, s) in &previous.policy_slots {
            if names.contains(n.as_str()) && (*s as usize) < MAX_POLICIES && used_slots.insert(*s) {
                a.policy_slots.insert(n.clone(), *s);
            }
        }
        let prev_slots: BTreeSet<u16> = previous.policy_slots.values().copied().collect();
        let mut free: Vec<u16> = (0..MAX_POLICIES as u16)
            .filter(|s| !used_slots.contains(s) && !prev_slots.contains(s))
            .chain(
                (0..MAX_POLICIES as u16)
                    .filter(|s| !used_slots.contains(s) && prev_slots.contains(s)),
            )
            .collect();
        free.reverse();
        for p in policies {
            if !a.policy_slots.contains_key(&p.name) {
                let s = free
                    .pop()
                    .ok_or(CompileError::TooManyPolicies(names.len()))?;
                a.policy_slots.insert(p.name.clone(), s);
            }
        }

        let mut used_ids = BTreeSet::new();
        for (k, id) in &previous.output_ids {
            if outputs.contains(k) && (*id as usize) < MAX_OUTPUTS && used_ids.insert(*id) {
                a.output_ids.insert(k.clone(), *id);
            }
        }
        let prev_ids: BTreeSet<u8> = previous.output_ids.values().copied().collect();
        let mut free: Vec<u8> = (0..MAX_OUTPUTS as u8)
            .filter(|i| !used_ids.contains(i) && !prev_ids.contains(i))
            .chain((0..MAX_OUTPUTS as u8).filter(|i| !used_ids.contains(i) && prev_ids.contains(i)))
            .collect();
        free.reverse();
        for k in outputs {
            if !a.output_ids.contains_key(&k) {
                let id = free
                    .pop()
                    .ok_or(CompileError::TooManyOutputs(a.output_ids.len() + 1))?;
                a.output_ids.insert(k, id);
            }
        }
        Ok(a)
    }
}

/// Which (interface, direction) hooks a policy applies to.
#[derive(Clone, Debug, PartialEq)]
pub struct TapRule {
    /// The policy's slot.
    pub slot: u16,
    /// Its tap globs.
    pub patterns: Vec<glob::Pattern>,
    /// Applies to ingress (from the VM).
    pub ingress: bool,
    /// Applies to egress (to the VM).
    pub egress: bool,
}

/// A pcap output of a compiled set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PcapOutput {
    /// Bytes kept of each packet: the largest `snaplen` of the policies
    /// naming the capture (0 there = [`PCAP_MAX_CAPLEN`]), so no policy gets
    /// less than it asked for.
    pub snaplen: u32,
    /// Enabled policies naming the capture.
    pub policies: Bitmap,
}

/// The contents of one generation's classification maps.
#[derive(Clone, Debug, PartialEq)]
pub struct CompiledSet {
    /// Bit `field::X` set when some enabled policy constrains field X.
    pub used_fields: u32,
    /// Enabled bidirectional policies.
    pub bidir: Bitmap,
    /// Per field: enabled policies that do not constrain it.
    pub wildcard: [Bitmap; field::COUNT],
    /// EtherType → bitmap (a miss uses `wildcard[ETHER_TYPE]`).
    pub ether_types: BTreeMap<u16, Bitmap>,
    /// Source IPv4 LPM entries.
    pub src4: BTreeMap<Ipv4Net, Bitmap>,
    /// Destination IPv4 LPM entries.
    pub dst4: BTreeMap<Ipv4Net, Bitmap>,
    /// Source IPv6 LPM entries.
    pub src6: BTreeMap<Ipv6Net, Bitmap>,
    /// Destination IPv6 LPM entries.
    pub dst6: BTreeMap<Ipv6Net, Bitmap>,
    /// Indexed by IP protocol (256 entries).
    pub proto: Vec<Bitmap>,
    /// Indexed by the TCP flags byte (256 entries).
    pub tcp_flags: Vec<Bitmap>,
    /// Indexed by source port (65536 entries).
    pub sport: Vec<Bitmap>,
    /// Indexed by destination port (65536 entries).
    pub dport: Vec<Bitmap>,
    /// Slot → output ids of its interface outputs, in the policy's order (every
    /// policy of the set, enabled or not).
    pub actions: BTreeMap<u16, Vec<u8>>,
    /// Slot → sampling and rate limit, for the policies that have some.
    pub shaping: BTreeMap<u16, Shaping>,
    /// Output id → output, for every output of the set.
    pub outputs: BTreeMap<u8, OutputKey>,
    /// Output id → what the datapath needs of a pcap output.
    pub pcap: BTreeMap<u8, PcapOutput>,
    /// Tap selection of the enabled policies.
    pub taps: Vec<TapRule>,
    /// Slot → policy name (every policy of the set, enabled or not).
    pub names: BTreeMap<u16, String>,
    /// Enabled policies.
    pub enabled: Bitmap,
}

/// Why a policy set could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// The set does not pass [`validate_set`].
    #[error("the policy set is invalid:\n{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<FieldError>),
    /// The assignment has no slot for a policy.
    #[error("policy {0:?} has no slot in the assignment")]
    NoSlot(String),
    /// A slot is outside 0..MAX_POLICIES.
    #[error("policy {policy:?}: slot {slot} is outside 0..{}", MAX_POLICIES - 1)]
    SlotOutOfRange {
        /// Policy name.
        policy: String,
        /// Its slot.
        slot: u16,
    },
    /// Two policies of the set have the same slot.
    #[error("slot {slot} is assigned to both {a:?} and {b:?}")]
    SlotShared {
        /// The slot.
        slot: u16,
        /// One policy.
        a: String,
        /// The other.
        b: String,
    },
    /// The assignment has no id for an output.
    #[error("policy {policy:?}: output {output} has no id in the assignment")]
    NoOutputId {
        /// Policy name.
        policy: String,
        /// The output.
        output: OutputKey,
    },
    /// An output id is outside 0..MAX_OUTPUTS.
    #[error("output {output}: id {id} is outside 0..{}", MAX_OUTPUTS - 1)]
    OutputIdOutOfRange {
        /// The output.
        output: Box<OutputKey>,
        /// Its id.
        id: u8,
    },
    /// Two outputs of the set have the same id.
    #[error("output id {id} is assigned to both {a} and {b}")]
    OutputIdShared {
        /// The id.
        id: u8,
        /// One output.
        a: Box<OutputKey>,
        /// The other.
        b: Box<OutputKey>,
    },
    /// More policies than slots.
    #[error("{0} policies, at most {MAX_POLICIES}")]
    TooManyPolicies(usize),
    /// More distinct outputs than ids.
    #[error("{0} distinct outputs, at most {MAX_OUTPUTS}")]
    TooManyOutputs(usize),
}

/// The parsed match of one enabled policy.
struct Compiled {
    slot: usize,
    ether_type: Option<u16>,
    src: Vec<IpNet>,
    dst: Vec<IpNet>,
    proto: Option<u8>,
    sports: Vec<(u16, u16)>,
    dports: Vec<(u16, u16)>,
    flags: Option<(u8, u8)>,
}

impl Compiled {
    fn constrains(&self, f: usize) -> bool {
        match f {
            field::ETHER_TYPE => self.ether_type.is_some(),
            field::SRC => !self.src.is_empty(),
            field::DST => !self.dst.is_empty(),
            field::PROTO => self.proto.is_some(),
            field::SPORT => !self.sports.is_empty(),
            field::DPORT => !self.dports.is_empty(),
            field::TCP_FLAGS => self.flags.is_some(),
            _ => false,
        }
    }
}

fn src_of(c: &Compiled) -> &[IpNet] {
    &c.src
}
fn dst_of(c: &Compiled) -> &[IpNet] {
    &c.dst
}
fn as_v4(n: &IpNet) -> Option<Ipv4Net> {
    match n {
        IpNet::V4(n) => Some(*n),
        IpNet::V6(_) => None,
    }
}
fn as_v6(n: &IpNet) -> Option<Ipv6Net> {
    match n {
        IpNet::V6(n) => Some(*n),
        IpNet::V4(_) => None,
    }
}

/// One LPM table: an entry per named prefix, holding `wildcard` and every
/// policy with a prefix (on this side, of this family) containing it (found by
/// walking the entry's ancestors: at most 33 or 129 lookups per entry).
fn lpm<N: Ord + Copy>(
    compiled: &[&Compiled],
    side: fn(&Compiled) -> &[IpNet],
    family: fn(&IpNet) -> Option<N>,
    ancestors: fn(&N) -> Vec<N>,
    wildcard: Bitmap,
) -> BTreeMap<N, Bitmap> {
    let mut named: BTreeMap<N, Bitmap> = BTreeMap::new();
    for c in compiled {
        for q in side(c).iter().filter_map(family) {
            named.entry(q).or_default().set(c.slot);
        }
    }
    named
        .keys()
        .map(|p| {
            let b = ancestors(p)
                .iter()
                .filter_map(|a| named.get(a))
                .fold(wildcard, |acc, b| acc.or(b));
            (*p, b)
        })
        .collect()
}

/// The prefix itself and every shorter prefix containing it.
fn ancestors4(p: &Ipv4Net) -> Vec<Ipv4Net> {
    (0..=p.prefix_len())
        .filter_map(|l| Ipv4Net::new(p.network(), l).ok().map(|n| n.trunc()))
        .collect()
}
fn ancestors6(p: &Ipv6Net) -> Vec<Ipv6Net> {
    (0..=p.prefix_len())
        .filter_map(|l| Ipv6Net::new(p.network(), l).ok().map(|n| n.trunc()))
        .collect()
}

/// Compiles a policy set with the slots and output ids of `a`. The set is
/// validated first ([`CompileError::Invalid`]).
pub fn compile(policies: &[Policy], a: &Assignment) -> Result<CompiledSet, CompileError> {
    let errors = validate_set(policies);
    if !errors.is_empty() {
        return Err(CompileError::Invalid(errors));
    }

    // Slots, names, actions, outputs.
    let mut names: BTreeMap<u16, String> = BTreeMap::new();
    let mut actions = BTreeMap::new();
    let mut shaping = BTreeMap::new();
    let mut outputs: BTreeMap<u8, OutputKey> = BTreeMap::new();
    let mut pcap: BTreeMap<u8, PcapOutput> = BTreeMap::new();
    let mut slots = Vec::with_capacity(policies.len());
    for p in policies {
        let slot = *a
            .policy_slots
            .get(&p.name)
            .ok_or_else(|| CompileError::NoSlot(p.name.clone()))?;
        if slot as usize >= MAX_POLICIES {
            return Err(CompileError::SlotOutOfRange {
                policy: p.name.clone(),
                slot,
            });
        }
        if let Some(other) = names.insert(slot, p.name.clone()) {
            return Err(CompileError::SlotShared {
                slot,
                a: other,
                b: p.name.clone(),
            });
        }
        let mut ids = Vec::new();
        for k in p.output_keys() {
            let id = *a
                .output_ids
                .get(&k)
                .ok_or_else(|| CompileError::NoOutputId {
                    policy: p.name.clone(),
                    output: k.clone(),
                })?;
            if id as usize >= MAX_OUTPUTS {
                return Err(CompileError::OutputIdOutOfRange {
                    output: Box::new(k),
                    id,
                });
            }
            if k.capture.is_some() {
                let e = pcap.entry(id).or_default();
                let snap = match p.snaplen {
                    0 => PCAP_MAX_CAPLEN,
                    n => n.min(PCAP_MAX_CAPLEN),
                };
                e.snaplen = e.snaplen.max(snap);
                if p.enabled {
                    e.policies.set(slot as usize);
                }
            }
            match outputs.get(&id) {
                Some(other) if *other != k => {
                    return Err(CompileError::OutputIdShared {
                        id,
                        a: Box::new(other.clone()),
                        b: Box::new(k),
                    });
                }
                _ => {
                    outputs.insert(id, k);
                }
            }
            ids.push(id);
        }
        actions.insert(slot, ids);
        let sh = Shaping::of(p);
        if !sh.is_none() {
            shaping.insert(slot, sh);
        }
        slots.push(slot);
    }

    // Parsed matches of the enabled policies.
    let enabled_policies: Vec<(&Policy, Compiled)> = policies
        .iter()
        .zip(&slots)
        .filter(|(p, _)| p.enabled)
        .map(|(p, slot)| {
            let m = &p.r#match;
            (
                p,
                Compiled {
                    slot: *slot as usize,
                    ether_type: m.ether_type(),
                    src: m.src_nets(),
                    dst: m.dst_nets(),
                    proto: m.protocol(),
                    sports: m.src_port_ranges(),
                    dports: m.dst_port_ranges(),
                    flags: m.tcp_flags(),
                },
            )
        })
        .collect();
    let compiled: Vec<&Compiled> = enabled_policies.iter().map(|(_, c)| c).collect();

    let mut enabled = Bitmap::EMPTY;
    let mut bidir = Bitmap::EMPTY;
    let mut wildcard = [Bitmap::EMPTY; field::COUNT];
    let mut used_fields = 0u32;
    for (p, c) in &enabled_policies {
        enabled.set(c.slot);
        if p.r#match.bidirectional {
            bidir.set(c.slot);
        }
        for (f, w) in wildcard.iter_mut().enumerate() {
            if c.constrains(f) {
                used_fields |= 1 << f;
            } else {
                w.set(c.slot);
            }
        }
    }

    // EtherType.
    let mut ether_types = BTreeMap::new();
    for c in &compiled {
        if let Some(et) = c.ether_type {
            ether_types
                .entry(et)
                .or_insert(wildcard[field::ETHER_TYPE])
                .set(c.slot);
        }
    }

    // LPM tables.
    let src4 = lpm(&compiled, src_of, as_v4, ancestors4, wildcard[field::SRC]);
    let dst4 = lpm(&compiled, dst_of, as_v4, ancestors4, wildcard[field::DST]);
    let src6 = lpm(&compiled, src_of, as_v6, ancestors6, wildcard[field::SRC]);
    let dst6 = lpm(&compiled, dst_of, as_v6, ancestors6, wildcard[field::DST]);

    // Arrays.
    let mut proto = vec![wildcard[field::PROTO]; 256];
    let mut tcp_flags = vec![wildcard[field::TCP_FLAGS]; 256];
    let mut sport = vec![wildcard[field::SPORT]; vtap_abi::PORTS];
    let mut dport = vec![wildcard[field::DPORT]; vtap_abi::PORTS];
    for c in &compiled {
        if let Some(v) = c.proto {
            proto[v as usize].set(c.slot);
        }
        if let Some((mask, value)) = c.flags {
            for (x, b) in tcp_flags.iter_mut().enumerate() {
                if x as u8 & mask == value {
                    b.set(c.slot);
                }
            }
        }
        for (ranges, table) in [(&c.sports, &mut sport), (&c.dports, &mut dport)] {
            for (lo, hi) in ranges {
                for b in &mut table[*lo as usize..=*hi as usize] {
                    b.set(c.slot);
                }
            }
        }
    }

    // Taps.
    let taps = enabled_policies
        .iter()
        .map(|(p, c)| TapRule {
            slot: c.slot as u16,
            patterns: p
                .taps
                .iter()
                .filter_map(|t| glob::Pattern::new(t).ok())
                .collect(),
            ingress: p.direction != Direction::Egress,
            egress: p.direction != Direction::Ingress,
        })
        .collect();

    Ok(CompiledSet {
        used_fields,
        bidir,
        wildcard,
        ether_types,
        src4,
        dst4,
        src6,
        dst6,
        proto,
        tcp_flags,
        sport,
        dport,
        actions,
        shaping,
        outputs,
        pcap,
        taps,
        names,
        enabled,
    })
}

/// Groups consecutive equal entries of a table: (first index, last index,
/// bitmap).
pub fn group_ranges(table: &[Bitmap]) -> Vec<(usize, usize, Bitmap)> {
    let mut out: Vec<(usize, usize, Bitmap)> = Vec::new();
    for (i, b) in table.iter().enumerate() {
        match out.last_mut() {
            Some((_, hi, last)) if last == b => *hi = i,
            _ => out.push((i, i, *b)),
        }
    }
    out
}

impl CompiledSet {
    /// Policies (enabled) whose tap patterns match `ifname` and whose direction
    /// includes `dir`: the `vtap_tap_sel` entry of (ifindex of `ifname`, dir).
    pub fn tap_bitmap(&self, ifname: &str, dir: Dir) -> Bitmap {
        let mut b = Bitmap::EMPTY;
        for t in &self.taps {
            let dir_ok = match dir {
                Dir::Ingress => t.ingress,
                Dir::Egress => t.egress,
            };
            if dir_ok && t.patterns.iter().any(|p| p.matches(ifname)) {
                b.set(t.slot as usize);
            }
        }
        b
    }

    /// The names of the policies in `b`, in slot order.
    pub fn names_of(&self, b: &Bitmap) -> Vec<String> {
        b.iter()
            .map(|s| {
                self.names
                    .get(&(s as u16))
                    .cloned()
                    .unwrap_or_else(|| format!("#{s}"))
            })
            .collect()
    }

    /// A readable JSON rendering of the non-trivial contents, for golden
    /// tests and explanations: bitmaps as space-separated policy names (`-` =
    /// none), one string per table entry, array tables of unused fields left
    /// out, the port and protocol arrays grouped into ranges of equal entries,
    /// the TCP flags table as a few named flag combinations plus the number
    /// of flag values selecting each distinct set of policies.
    pub fn summary(&self) -> Value {
        let names = |b: &Bitmap| {
            let v = self.names_of(b);
            if v.is_empty() {
                "-".to_owned()
            } else {
                v.join(" ")
            }
        };
        const FIELDS: [&str; field::COUNT] = [
            "ether_type",
            "src",
            "dst",
            "proto",
            "sport",
            "dport",
            "tcp_flags",
        ];
        let used = |f: usize| self.used_fields & (1 << f) != 0;
        let ranges = |t: &[Bitmap]| -> Vec<String> {
            group_ranges(t)
                .into_iter()
                .map(|(lo, hi, b)| {
                    if lo == hi {
                        format!("{lo}: {}", names(&b))
                    } else {
                        format!("{lo}-{hi}: {}", names(&b))
                    }
                })
                .collect()
        };
        let lpm = |entries: Vec<(String, &Bitmap)>| -> Vec<String> {
            entries
                .into_iter()
                .map(|(k, b)| format!("{k}: {}", names(b)))
                .collect()
        };
        let mut out = serde_json::Map::new();
        out.insert(
            "policies".into(),
            json!(
                self.names
                    .iter()
                    .map(|(s, n)| {
                        let ids: Vec<String> = self
                            .actions
                            .get(s)
                            .into_iter()
                            .flatten()
                            .map(|id| id.to_string())
                            .collect();
                        let shaped = self
                            .shaping
                            .get(s)
                            .map(|sh| format!(" ({})", sh.describe()))
                            .unwrap_or_default();
                        format!(
                            "slot {s}: {n}{} -> outputs [{}]{shaped}",
                            if self.enabled.test(*s as usize) {
                                ""
                            } else {
                                " (disabled)"
                            },
                            ids.join(", ")
                        )
                    })
                    .collect::<Vec<_>>()
            ),
        );
        out.insert(
            "outputs".into(),
            json!(
                self.outputs
                    .iter()
                    .map(|(id, k)| {
                        if let Some(c) = &k.capture {
                            format!("{id}: pcap {c}")
                        } else if let Some(x) = &k.vxlan {
                            format!("{id}: vxlan {} vni {} vlan {}", x.remote, x.vni, k.vlan)
                        } else if k.vlan == 0 {
                            format!("{id}: {} untagged", k.interface)
                        } else {
                            format!("{id}: {} vlan {}", k.interface, k.vlan)
                        }
                    })
                    .collect::<Vec<_>>()
            ),
        );
        out.insert(
            "taps".into(),
            json!(
                self.taps
                    .iter()
                    .map(|t| {
                        let dir = match (t.ingress, t.egress) {
                            (true, true) => "both",
                            (true, false) => "ingress",
                            _ => "egress",
                        };
                        let pats: Vec<&str> = t.patterns.iter().map(|p| p.as_str()).collect();
                        format!(
                            "{}: {} {dir}",
                            self.names.get(&t.slot).map_or("?", |s| s.as_str()),
                            pats.join(" ")
                        )
                    })
                    .collect::<Vec<_>>()
            ),
        );
        out.insert(
            "used_fields".into(),
            json!(
                (0..field::COUNT)
                    .filter(|f| used(*f))
                    .map(|f| FIELDS[f])
                    .collect::<Vec<_>>()
            ),
        );
        out.insert("bidir".into(), json!(names(&self.bidir)));
        out.insert(
            "wildcard".into(),
            Value::Object(
                FIELDS
                    .iter()
                    .zip(&self.wildcard)
                    .map(|(n, b)| ((*n).to_owned(), json!(names(b))))
                    .collect(),
            ),
        );
        out.insert(
            "ether_type".into(),
            json!(lpm(self
                .ether_types
                .iter()
                .map(|(k, b)| (format!("{k:#06x}"), b))
                .collect())),
        );
        out.insert(
            "src4".into(),
            json!(lpm(self
                .src4
                .iter()
                .map(|(k, b)| (k.to_string(), b))
                .collect())),
        );
        out.insert(
            "dst4".into(),
            json!(lpm(self
                .dst4
                .iter()
                .map(|(k, b)| (k.to_string(), b))
                .collect())),
        );
        out.insert(
            "src6".into(),
            json!(lpm(self
                .src6
                .iter()
                .map(|(k, b)| (k.to_string(), b))
                .collect())),
        );
        out.insert(
            "dst6".into(),
            json!(lpm(self
                .dst6
                .iter()
                .map(|(k, b)| (k.to_string(), b))
                .collect())),
        );
        if used(field::PROTO) {
            out.insert("proto".into(), json!(ranges(&self.proto)));
        }
        if used(field::SPORT) {
            out.insert("sport".into(), json!(ranges(&self.sport)));
        }
        if used(field::DPORT) {
            out.insert("dport".into(), json!(ranges(&self.dport)));
        }
        if used(field::TCP_FLAGS) {
            const COMBOS: [(&str, u8); 8] = [
                ("none", 0x00),
                ("syn", 0x02),
                ("syn+ack", 0x12),
                ("ack", 0x10),
                ("psh+ack", 0x18),
                ("fin+ack", 0x11),
                ("rst", 0x04),
                ("rst+ack", 0x14),
            ];
            let mut groups: BTreeMap<Bitmap, usize> = BTreeMap::new();
            for b in &self.tcp_flags {
                *groups.entry(*b).or_default() += 1;
            }
            let mut v: Vec<String> = COMBOS
                .iter()
                .map(|(n, x)| format!("{n} ({x:#04x}): {}", names(&self.tcp_flags[*x as usize])))
                .collect();
            v.extend(
                groups
                    .iter()
                    .map(|(b, n)| format!("{n} of 256 values: {}", names(b))),
            );
            out.insert("tcp_flags".into(), json!(v));
        }
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::load::parse_str;

    fn set(yaml: &str) -> Vec<Policy> {
        parse_str(yaml, "test").unwrap()
    }

    const TWO: &str = r#"
version: 1
name: a
taps: ["vm*-tap"]
direction: ingress
match: {src: [10.0.0.0/24], protocol: tcp, dst_ports: [80, "8000-8080"]}
outputs: [{interface: mon0, vlan: 100}]
---
version: 1
name: b
taps: [vm1-tap]
match: {src: [10.0.0.1, fd00::/64], bidirectional: true}
outputs: [{interface: mon0, vlan: 200}, {interface: mon0, vlan: 100}]
---
version: 1
name: c
enabled: false
taps: [vm2-tap]
match: {protocol: udp}
outputs: [{interface: mon1}]
"#;

    #[test]
    fn assign_is_stable() {
        let ps = set(TWO);
        let a = Assignment::assign(&ps, &Assignment::default()).unwrap();
        assert_eq!(
            a.policy_slots.values().copied().collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert_eq!(a.output_ids.len(), 3);
        // Drop "a", add "d": b and c keep theirs, d gets a never-used slot.
        let mut ps2: Vec<Policy> = ps[1..].to_vec();
        let mut d = ps[0].clone();
        d.name = "d".into();
        ps2.push(d);
        let a2 = Assignment::assign(&ps2, &a).unwrap();
        assert_eq!(a2.policy_slots["b"], 1);
        assert_eq!(a2.policy_slots["c"], 2);
        assert_eq!(a2.policy_slots["d"], 3);
        for (k, id) in &a2.output_ids {
            assert_eq!(a.output_ids.get(k), Some(id));
        }
    }

    #[test]
    fn tables() {
        let ps = set(TWO);
        let a = Assignment::assign(&ps, &Assignment::default()).unwrap();
        let c = compile(&ps, &a).unwrap();
        let (sa, sb, sc) = (0, 1, 2);
        assert_eq!(
            c.used_fields,
            (1 << field::SRC) | (1 << field::PROTO) | (1 << field::DPORT)
        );
        assert!(c.enabled.test(sa) && c.enabled.test(sb) && !c.enabled.test(sc));
        assert_eq!(c.bidir.iter().collect::<Vec<_>>(), vec![sb]);
        assert!(c.wildcard[field::SRC].is_empty());
        assert_eq!(
            c.wildcard[field::PROTO].iter().collect::<Vec<_>>(),
            vec![sb]
        );
        // 10.0.0.1/32 is inside a's /24: its entry selects both.
        let host = c.src4[&"10.0.0.1/32".parse().unwrap()];
        assert_eq!(host.iter().collect::<Vec<_>>(), vec![sa, sb]);
        let net = c.src4[&"10.0.0.0/24".parse().unwrap()];
        assert_eq!(net.iter().collect::<Vec<_>>(), vec![sa]);
        assert_eq!(c.src6.len(), 1);
        assert_eq!(c.proto[6].iter().collect::<Vec<_>>(), vec![sa, sb]);
        assert_eq!(c.proto[17].iter().collect::<Vec<_>>(), vec![sb]);
        assert_eq!(c.dport[8080].iter().collect::<Vec<_>>(), vec![sa, sb]);
        assert_eq!(c.dport[8081].iter().collect::<Vec<_>>(), vec![sb]);
        assert_eq!(c.actions[&(sb as u16)].len(), 2);
        assert_eq!(c.actions[&(sc as u16)].len(), 1);
        assert_eq!(c.outputs.len(), 3);
        assert_eq!(
            c.tap_bitmap("vm1-tap", Dir::Ingress)
                .iter()
                .collect::<Vec<_>>(),
            vec![sa, sb]
        );
        assert_eq!(
            c.tap_bitmap("vm1-tap", Dir::Egress)
                .iter()
                .collect::<Vec<_>>(),
            vec![sb]
        );
        assert!(c.tap_bitmap("vm2-tap", Dir::Egress).is_empty());
        assert!(c.summary().is_object());
    }

    #[test]
    fn errors() {
        let ps = set(TWO);
        let mut a = Assignment::assign(&ps, &Assignment::default()).unwrap();
        let full = a.clone();
        a.policy_slots.remove("b");
        assert_eq!(
            compile(&ps, &a).unwrap_err(),
            CompileError::NoSlot("b".into())
        );
        let mut a = full.clone();
        a.policy_slots.insert("b".into(), 0);
        assert!(matches!(
            compile(&ps, &a),
            Err(CompileError::SlotShared { .. })
        ));
        let mut a = full.clone();
        a.policy_slots.insert("b".into(), 256);
        assert!(matches!(
            compile(&ps, &a),
            Err(CompileError::SlotOutOfRange { .. })
        ));
        let mut a = full.clone();
        a.output_ids.clear();
        assert!(matches!(
            compile(&ps, &a),
            Err(CompileError::NoOutputId { .. })
        ));
        let mut a = full.clone();
        for v in a.output_ids.values_mut() {
            *v = 7;
        }
        assert!(matches!(
            compile(&ps, &a),
            Err(CompileError::OutputIdShared { .. })
        ));
        let mut bad = ps.clone();
        bad[0].version = 2;
        assert!(matches!(
            compile(&bad, &full),
            Err(CompileError::Invalid(_))
        ));
    }

    #[test]
    fn group() {
        let mut b = Bitmap::EMPTY;
        b.set(3);
        let t = [Bitmap::EMPTY, Bitmap::EMPTY, b, Bitmap::EMPTY];
        assert_eq!(
            group_ranges(&t),
            vec![(0, 1, Bitmap::EMPTY), (2, 2, b), (3, 3, Bitmap::EMPTY)]
        );
    }
}
