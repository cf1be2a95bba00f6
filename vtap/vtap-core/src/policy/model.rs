//! The policy file: one mirror policy as written in YAML (or sent as JSON over
//! REST).
//!
//! The model keeps user-written values in their raw form (CIDRs and port
//! ranges as strings, EtherType and protocol as "name or number") so that a
//! bad value reaches [`validate`](super::validate) and gets an error naming
//! its field path, instead of failing deserialization with a generic serde
//! message. Unknown fields are rejected everywhere (`deny_unknown_fields`).
//!
//! The `parse_*` functions turn one raw value into its typed form; the
//! accessors on [`Match`] and [`Output`] return typed values and are meant for
//! **validated** policies: an invalid entry is skipped by them.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use vtap_abi::Dir;

use super::compile::OutputKey;

/// The only policy file version this build reads.
pub const POLICY_VERSION: u32 = 1;
/// Default `priority`.
pub const DEFAULT_PRIORITY: u32 = 100;
/// Longest interface name (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

fn default_priority() -> u32 {
    DEFAULT_PRIORITY
}
fn default_true() -> bool {
    true
}
fn default_sample() -> IntSpec {
    IntSpec::Int(1)
}
fn is_false(b: &bool) -> bool {
    !*b
}

/// One mirror policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// File format version; must be [`POLICY_VERSION`].
    pub version: u32,
    /// `[a-z0-9][a-z0-9_-]{0,62}`, unique in a policy set.
    pub name: String,
    /// 0..=65535 (default 100). Does not change which policies fire.
    #[serde(default = "default_priority")]
    pub priority: u32,
    /// A disabled policy keeps its slot but matches nothing.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Interface names or globs the policy applies to (required, non-empty).
    #[serde(default)]
    pub taps: Vec<String>,
    /// Which direction(s) of the tapped interfaces.
    #[serde(default)]
    pub direction: Direction,
    /// What to select; every field optional, absent = any.
    #[serde(default)]
    pub r#match: Match,
    /// Mirror one packet in N (1 = every packet).
    #[serde(default = "default_sample")]
    pub sample_one_in: IntSpec,
    /// How the 1-in-N packets are chosen: at random per packet (default), or
    /// per flow (every packet of a conversation, both directions, or none).
    #[serde(default, skip_serializing_if = "SampleBy::is_packet")]
    pub sample_by: SampleBy,
    /// Bytes to keep of each packet written to a pcap output, 0 = the whole
    /// packet (up to the datapath's 9216-byte maximum). Interface outputs
    /// always get the whole packet in this build.
    #[serde(default)]
    pub snaplen: u32,
    /// Per-policy rate limit of the copies; {0, 0} = unlimited.
    #[serde(default)]
    pub rate_limit: RateLimit,
    /// Where copies go (required, 1..=8 entries).
    #[serde(default)]
    pub outputs: Vec<Output>,
    /// Adaptive mirroring: in effect only while this probe condition holds
    /// (see [`super::when`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<super::when::When>,
}

impl Policy {
    /// The keys of the outputs, in order (interface outputs with an invalid
    /// VLAN are skipped).
    pub fn output_keys(&self) -> Vec<OutputKey> {
        self.outputs.iter().filter_map(Output::key).collect()
    }

    /// Whether one of the tap patterns matches `ifname` (invalid patterns never
    /// match).
    pub fn taps_match(&self, ifname: &str) -> bool {
        self.taps
            .iter()
            .filter_map(|t| glob::Pattern::new(t).ok())
            .any(|p| p.matches(ifname))
    }
}

/// Direction of the tapped traffic, relative to the VM behind the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Packets from the VM (TC ingress of its tap).
    Ingress,
    /// Packets to the VM (TC egress of its tap).
    Egress,
    /// Both.
    #[default]
    Both,
}

impl Direction {
    /// Whether packets of datapath direction `dir` are selected.
    pub fn includes(&self, dir: Dir) -> bool {
        matches!(
            (self, dir),
            (Direction::Both, _)
                | (Direction::Ingress, Dir::Ingress)
                | (Direction::Egress, Dir::Egress)
        )
    }
}

/// How `sample_one_in` chooses its packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SampleBy {
    /// Each packet on its own, at random with probability 1/N.
    #[default]
    Packet,
    /// Whole flows: a symmetric hash of addresses, protocol and ports keeps
    /// 1 flow in N, both directions of it, and every packet of it.
    Flow,
}

impl SampleBy {
    /// The default (`packet`), left out when a policy is written back.
    pub fn is_packet(&self) -> bool {
        *self == SampleBy::Packet
    }
}

/// Per-policy rate limit of the copies. Either or both; 0 = no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Packets per second, 0 = unlimited.
    #[serde(default)]
    pub pps: IntSpec,
    /// Bits per second, 0 = unlimited.
    #[serde(default)]
    pub bps: IntSpec,
}

impl RateLimit {
    /// Packets per second of a validated policy (0 = unlimited).
    pub fn pps(&self) -> u64 {
        self.pps.as_u64().unwrap_or(0)
    }
    /// Bits per second of a validated policy (0 = unlimited).
    pub fn bps(&self) -> u64 {
        self.bps.as_u64().unwrap_or(0)
    }
    /// Whether neither limit is set.
    pub fn is_unlimited(&self) -> bool {
        self.pps() == 0 && self.bps() == 0
    }
}

/// A whole-number setting as written (`sample_one_in`, `rate_limit.pps`,
/// `rate_limit.bps`). Any number is accepted here — negative, fractional,
/// larger than 64 bits — so that validation can reject it with a message
/// naming its field, instead of a generic deserialization error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IntSpec {
    /// A whole number (a float with no fractional part counts as one).
    Int(i128),
    /// Anything else: the bits of an `f64` (fractional, huge, inf, NaN).
    Float(u64),
}

impl Default for IntSpec {
    fn default() -> Self {
        IntSpec::Int(0)
    }
}

impl IntSpec {
    /// The value when it is a whole number that fits a u64.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            IntSpec::Int(v) => u64::try_from(*v).ok(),
            IntSpec::Float(_) => None,
        }
    }
    /// The value as a float (for messages and range checks).
    pub fn as_f64(&self) -> f64 {
        match self {
            IntSpec::Int(v) => *v as f64,
            IntSpec::Float(b) => f64::from_bits(*b),
        }
    }
}

impl From<u64> for IntSpec {
    fn from(v: u64) -> Self {
        IntSpec::Int(v as i128)
    }
}

impl fmt::Display for IntSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntSpec::Int(v) => write!(f, "{v}"),
            IntSpec::Float(b) => write!(f, "{}", f64::from_bits(*b)),
        }
    }
}

impl Serialize for IntSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            IntSpec::Int(v) if v >= 0 && v <= u64::MAX as i128 => s.serialize_u64(v as u64),
            IntSpec::Int(v) if v >= i64::MIN as i128 && v < 0 => s.serialize_i64(v as i64),
            other => s.serialize_f64(other.as_f64()),
        }
    }
}

struct IntSpecVisitor;

impl Visitor<'_> for IntSpecVisitor {
    type Value = IntSpec;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a whole number")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<IntSpec, E> {
        Ok(IntSpec::Int(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<IntSpec, E> {
        Ok(IntSpec::Int(v.into()))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<IntSpec, E> {
        Ok(IntSpec::Int(v))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<IntSpec, E> {
        Ok(i128::try_from(v).map_or(IntSpec::Float((v as f64).to_bits()), IntSpec::Int))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<IntSpec, E> {
        // 1000.0 and 1e3 are whole numbers; 0.5 and 1e40 stay floats.
        if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e30 {
            Ok(IntSpec::Int(v as i128))
        } else {
            Ok(IntSpec::Float(v.to_bits()))
        }
    }
}

impl<'de> Deserialize<'de> for IntSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(IntSpecVisitor)
    }
}

/// What a policy selects. Every field is optional; an absent field matches
/// any packet. A present field never matches a packet that has no value for
/// it (e.g. `protocol` never matches ARP).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// EtherType after all VLAN tags: `ipv4`, `ipv6`, `arp` or a number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ether_type: Option<EtherTypeSpec>,
    /// Source prefixes (IPv4 and/or IPv6 CIDRs, bare address = host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<Vec<String>>,
    /// Destination prefixes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<Vec<String>>,
    /// IP protocol: `tcp`, `udp`, `icmp`, `icmpv6` or a number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<ProtocolSpec>,
    /// Source ports or ranges `"a-b"` (TCP/UDP only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_ports: Option<Vec<PortSpec>>,
    /// Destination ports or ranges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_ports: Option<Vec<PortSpec>>,
    /// TCP flags that must be set (`syn`) or clear (`!ack`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_flags: Option<Vec<String>>,
    /// Also match the reverse direction of the conversation (src/dst and
    /// src_ports/dst_ports swapped).
    #[serde(default, skip_serializing_if = "is_false")]
    pub bidirectional: bool,
}

/// A value written either as a name or as a number (`ether_type`,
/// `protocol`). Numbers are kept signed so that a negative value reaches
/// validation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum NameOrNumber {
    /// A YAML/JSON integer.
    Number(i64),
    /// A string: a name, or a number written as text (`"0x88cc"`).
    Name(String),
}

/// `match.ether_type`.
pub type EtherTypeSpec = NameOrNumber;
/// `match.protocol`.
pub type ProtocolSpec = NameOrNumber;

impl fmt::Display for NameOrNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameOrNumber::Number(n) => write!(f, "{n}"),
            NameOrNumber::Name(s) => write!(f, "{s:?}"),
        }
    }
}

/// One entry of `src_ports`/`dst_ports`: a number, or text `"a-b"` / `"a"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum PortSpec {
    /// A port number.
    Number(i64),
    /// `"a-b"` (inclusive range) or a number as text.
    Range(String),
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortSpec::Number(n) => write!(f, "{n}"),
            PortSpec::Range(s) => write!(f, "{s:?}"),
        }
    }
}

/// Accepts an integer or a string; anything else is a type error that names
/// what was expected.
struct IntOrStrVisitor(&'static str);

enum IntOrStr {
    Int(i64),
    Str(String),
}

impl Visitor<'_> for IntOrStrVisitor {
    type Value = IntOrStr;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<IntOrStr, E> {
        Ok(IntOrStr::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<IntOrStr, E> {
        i64::try_from(v)
            .map(IntOrStr::Int)
            .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<IntOrStr, E> {
        Ok(IntOrStr::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<IntOrStr, E> {
        Ok(IntOrStr::Str(v))
    }
}

impl<'de> Deserialize<'de> for NameOrNumber {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(
            match d.deserialize_any(IntOrStrVisitor("a name or a number"))? {
                IntOrStr::Int(n) => NameOrNumber::Number(n),
                IntOrStr::Str(s) => NameOrNumber::Name(s),
            },
        )
    }
}

impl<'de> Deserialize<'de> for PortSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(
            match d.deserialize_any(IntOrStrVisitor("a port number or a range \"a-b\""))? {
                IntOrStr::Int(n) => PortSpec::Number(n),
                IntOrStr::Str(s) => PortSpec::Range(s),
            },
        )
    }
}

/// Where a policy's copies go. In YAML `{interface: mon0, vlan: 100}`
/// (`vlan` optional), `{pcap: NAME}`, or
/// `{vxlan: {remote: 192.0.2.7, vni: 42}, vlan: 100}` (`vlan` optional).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Output {
    /// Clone-redirect to a local interface, optionally pushing an 802.1Q tag.
    Interface {
        /// Interface name (not a glob).
        interface: String,
        /// VLAN id to push, 1..=4094; absent = untagged.
        #[serde(skip_serializing_if = "Option::is_none")]
        vlan: Option<u32>,
    },
    /// A pcap capture (records through the ring buffer; see `capture`).
    Pcap {
        /// Capture name.
        pcap: String,
    },
    /// VXLAN to a remote host through vtap's own collect-metadata VXLAN
    /// device ([`crate::tunnel::DEVICE`]), optionally with an inner 802.1Q tag.
    Vxlan {
        /// Remote endpoint and VNI.
        vxlan: VxlanTarget,
        /// VLAN id pushed on the inner frame, 1..=4094; absent = untagged.
        #[serde(skip_serializing_if = "Option::is_none")]
        vlan: Option<u32>,
    },
}

/// The remote end of a `vxlan:` output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VxlanTarget {
    /// Remote VTEP address (IPv4 or IPv6, unicast).
    pub remote: std::net::IpAddr,
    /// VXLAN network identifier, 0..=16777215.
    pub vni: u32,
}

impl Output {
    /// The key of an output (None: an invalid VLAN).
    pub fn key(&self) -> Option<OutputKey> {
        let vid = |vlan: &Option<u32>| match vlan {
            None => Some(0),
            Some(v) => u16::try_from(*v).ok(),
        };
        match self {
            Output::Interface { interface, vlan } => Some(OutputKey::iface(interface, vid(vlan)?)),
            Output::Pcap { pcap } => Some(OutputKey::pcap(pcap)),
            Output::Vxlan { vxlan, vlan } => {
                Some(OutputKey::vxlan(vxlan.remote, vxlan.vni, vid(vlan)?))
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutput {
    interface: Option<String>,
    vlan: Option<u32>,
    pcap: Option<String>,
    vxlan: Option<VxlanTarget>,
}

impl<'de> Deserialize<'de> for Output {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawOutput::deserialize(d)?;
        match (raw.interface, raw.pcap, raw.vxlan) {
            (Some(interface), None, None) => Ok(Output::Interface {
                interface,
                vlan: raw.vlan,
            }),
            (None, Some(pcap), None) if raw.vlan.is_none() => Ok(Output::Pcap { pcap }),
            (None, Some(_), None) => Err(de::Error::custom(
                "`vlan` applies to interface and vxlan outputs, not to pcap outputs",
            )),
            (None, None, Some(vxlan)) => Ok(Output::Vxlan {
                vxlan,
                vlan: raw.vlan,
            }),
            (None, None, None) => Err(de::Error::custom(
                "an output needs `interface: NAME` (optionally `vlan: ID`), `pcap: NAME`, or `vxlan: {remote: IP, vni: N}` (optionally `vlan: ID`)",
            )),
            _ => Err(de::Error::custom(
                "an output has exactly one of `interface`, `pcap` and `vxlan`",
            )),
        }
    }
}

// ---------------------------------------------------------------------------
// Parsing of raw values (used by validation and by the accessors).

/// EtherType names.
pub const ETHER_TYPE_NAMES: [(&str, u16); 3] =
    [("ipv4", 0x0800), ("ipv6", 0x86dd), ("arp", 0x0806)];
/// IP protocol names.
pub const PROTOCOL_NAMES: [(&str, u8); 4] = [("tcp", 6), ("udp", 17), ("icmp", 1), ("icmpv6", 58)];
/// TCP flag names and their bit in the flags byte (byte 13 of the header).
pub const TCP_FLAG_NAMES: [(&str, u8); 8] = [
    ("fin", 0x01),
    ("syn", 0x02),
    ("rst", 0x04),
    ("psh", 0x08),
    ("ack", 0x10),
    ("urg", 0x20),
    ("ece", 0x40),
    ("cwr", 0x80),
];
/// EtherType of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// EtherType of ARP.
pub const ETH_P_ARP: u16 = 0x0806;

/// Parses an integer written as text: decimal or `0x` hexadecimal.
fn parse_int_text(s: &str) -> Option<i64> {
    let t = s.trim();
    if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        if h.is_empty() || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        i64::from_str_radix(h, 16).ok()
    } else if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        t.parse().ok()
    } else {
        None
    }
}

/// `match.ether_type` → EtherType (host order).
pub fn parse_ether_type(spec: &EtherTypeSpec) -> Result<u16, String> {
    let n = match spec {
        NameOrNumber::Number(n) => *n,
        NameOrNumber::Name(s) => {
            let lower = s.trim().to_ascii_lowercase();
            if let Some((_, v)) = ETHER_TYPE_NAMES.iter().find(|(n, _)| *n == lower) {
                return Ok(*v);
            }
            parse_int_text(s).ok_or_else(|| {
                format!("unknown EtherType {s:?}: use ipv4, ipv6, arp or a number 0x0600..0xffff")
            })?
        }
    };
    if n == 0x8100 || n == 0x88a8 {
        Err(format!(
            "EtherType {n:#06x} is a VLAN tag: tags are skipped before matching, so give the EtherType inside them (ipv4, ipv6, ...)"
        ))
    } else if (0x0600..=0xffff).contains(&n) {
        Ok(n as u16)
    } else if (0..0x0600).contains(&n) {
        Err(format!(
            "EtherType {n:#06x} is below 0x0600 (values below 0x0600 are 802.3 lengths): use ipv4, ipv6, arp or a number 0x0600..0xffff"
        ))
    } else {
        Err(format!("EtherType {n} is outside 0x0600..0xffff"))
    }
}

/// `match.protocol` → IP protocol number.
pub fn parse_protocol(spec: &ProtocolSpec) -> Result<u8, String> {
    let n = match spec {
        NameOrNumber::Number(n) => *n,
        NameOrNumber::Name(s) => {
            let lower = s.trim().to_ascii_lowercase();
            if let Some((_, v)) = PROTOCOL_NAMES.iter().find(|(n, _)| *n == lower) {
                return Ok(*v);
            }
            parse_int_text(s).ok_or_else(|| {
                format!("unknown protocol {s:?}: use tcp, udp, icmp, icmpv6 or a number 0..255")
            })?
        }
    };
    u8::try_from(n).map_err(|_| format!("protocol {n} is outside 0..255"))
}

/// Name of a protocol number for messages ("tcp", or the number).
pub fn protocol_name(p: u8) -> String {
    PROTOCOL_NAMES
        .iter()
        .find(|(_, v)| *v == p)
        .map(|(n, _)| (*n).to_owned())
        .unwrap_or_else(|| p.to_string())
}

/// Name of an EtherType for messages ("ipv4", or `0x88cc`).
pub fn ether_type_name(t: u16) -> String {
    ETHER_TYPE_NAMES
        .iter()
        .find(|(_, v)| *v == t)
        .map(|(n, _)| (*n).to_owned())
        .unwrap_or_else(|| format!("{t:#06x}"))
}

/// One `src`/`dst` entry → normalised prefix (host bits cleared). A bare
/// address is a host prefix (/32 or /128).
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let (addr_s, len_s) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr: IpAddr = addr_s.parse().map_err(|_| {
        format!("{s:?} is not an IPv4/IPv6 address or CIDR (like 10.0.0.0/24 or fd00::/64)")
    })?;
    let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len_s {
        None => max,
        Some(l) => {
            if l.is_empty() || l.len() > 3 || !l.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("{s:?}: prefix length {l:?} is not a number"));
            }
            let n: u32 = l
                .parse()
                .map_err(|_| format!("{s:?}: prefix length {l:?} is not a number"))?;
            if n > u32::from(max) {
                let fam = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
                return Err(format!(
                    "{s:?}: prefix length {n} is out of range for {fam} (0..{max})"
                ));
            }
            n as u8
        }
    };
    IpNet::new(addr, len)
        .map(|n| n.trunc())
        .map_err(|e| format!("{s:?}: {e}"))
}

/// One port entry → inclusive range.
pub fn parse_port_spec(p: &PortSpec) -> Result<(u16, u16), String> {
    fn port(n: i64) -> Result<u16, String> {
        u16::try_from(n).map_err(|_| format!("port {n} is outside 0..65535"))
    }
    match p {
        PortSpec::Number(n) => port(*n).map(|p| (p, p)),
        PortSpec::Range(s) => {
            let bad = || format!("{s:?} is not a port (0..65535) or a port range \"a-b\"");
            let t = s.trim();
            if let Some((a, b)) = t.split_once('-') {
                let a = parse_int_text(a).ok_or_else(bad)?;
                let b = parse_int_text(b).ok_or_else(bad)?;
                let (a, b) = (port(a)?, port(b)?);
                if a > b {
                    return Err(format!("port range {a}-{b} is reversed (write {b}-{a})"));
                }
                Ok((a, b))
            } else {
                let n = parse_int_text(t).ok_or_else(bad)?;
                port(n).map(|p| (p, p))
            }
        }
    }
}

/// One `tcp_flags` entry → (bit, must be set).
pub fn parse_tcp_flag(s: &str) -> Result<(u8, bool), String> {
    let t = s.trim();
    let (name, set) = match t.strip_prefix('!') {
        Some(rest) => (rest.trim(), false),
        None => (t, true),
    };
    let lower = name.to_ascii_lowercase();
    TCP_FLAG_NAMES
        .iter()
        .find(|(n, _)| *n == lower)
        .map(|(_, bit)| (*bit, set))
        .ok_or_else(|| {
            format!("unknown TCP flag {s:?}: use fin, syn, rst, psh, ack, urg, ece, cwr, each optionally prefixed with '!' (must be clear)")
        })
}

impl Match {
    /// The EtherType, if given and valid.
    pub fn ether_type(&self) -> Option<u16> {
        self.ether_type
            .as_ref()
            .and_then(|s| parse_ether_type(s).ok())
    }
    /// The IP protocol, if given and valid.
    pub fn protocol(&self) -> Option<u8> {
        self.protocol.as_ref().and_then(|s| parse_protocol(s).ok())
    }
    /// Source prefixes, normalised; empty = any source.
    pub fn src_nets(&self) -> Vec<IpNet> {
        nets(&self.src)
    }
    /// Destination prefixes, normalised; empty = any destination.
    pub fn dst_nets(&self) -> Vec<IpNet> {
        nets(&self.dst)
    }
    /// Source port ranges (inclusive); empty = any.
    pub fn src_port_ranges(&self) -> Vec<(u16, u16)> {
        ranges(&self.src_ports)
    }
    /// Destination port ranges (inclusive); empty = any.
    pub fn dst_port_ranges(&self) -> Vec<(u16, u16)> {
        ranges(&self.dst_ports)
    }
    /// TCP flags as (mask, value): a packet matches when
    /// `flags & mask == value`. `None` = any.
    pub fn tcp_flags(&self) -> Option<(u8, u8)> {
        let list = self.tcp_flags.as_ref()?;
        let (mut mask, mut value) = (0u8, 0u8);
        for (bit, set) in list.iter().filter_map(|f| parse_tcp_flag(f).ok()) {
            mask |= bit;
            if set {
                value |= bit;
            } else {
                value &= !bit;
            }
        }
        (mask != 0).then_some((mask, value))
    }
}

fn nets(v: &Option<Vec<String>>) -> Vec<IpNet> {
    v.iter()
        .flatten()
        .filter_map(|s| parse_cidr(s).ok())
        .collect()
}

fn ranges(v: &Option<Vec<PortSpec>>) -> Vec<(u16, u16)> {
    v.iter()
        .flatten()
        .filter_map(|p| parse_port_spec(p).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing() {
        assert_eq!(
            parse_cidr("10.0.0.5/24").unwrap().to_string(),
            "10.0.0.0/24"
        );
        assert_eq!(parse_cidr("10.0.0.5").unwrap().to_string(), "10.0.0.5/32");
        assert_eq!(parse_cidr("fd00::1").unwrap().to_string(), "fd00::1/128");
        assert_eq!(parse_cidr("fd00::1/64").unwrap().to_string(), "fd00::/64");
        assert_eq!(parse_cidr("0.0.0.0/0").unwrap().to_string(), "0.0.0.0/0");
        assert!(
            parse_cidr("10.0.0.0/33")
                .unwrap_err()
                .contains("out of range for IPv4 (0..32)")
        );
        assert!(
            parse_cidr("fd00::/129")
                .unwrap_err()
                .contains("out of range for IPv6 (0..128)")
        );
        assert!(parse_cidr("10.0.0.0/").is_err());
        assert!(parse_cidr("10.0.0.0/+8").is_err());
        assert!(parse_cidr("10.0.0.0/-1").is_err());
        assert!(
            parse_cidr("garbage")
                .unwrap_err()
                .contains("not an IPv4/IPv6 address")
        );
        assert!(parse_cidr("").is_err());
        assert!(parse_cidr("10.0.0/8").is_err());
    }

    #[test]
    fn port_parsing() {
        assert_eq!(parse_port_spec(&PortSpec::Number(80)), Ok((80, 80)));
        assert_eq!(
            parse_port_spec(&PortSpec::Range("1000-2000".into())),
            Ok((1000, 2000))
        );
        assert_eq!(parse_port_spec(&PortSpec::Range("53".into())), Ok((53, 53)));
        assert_eq!(
            parse_port_spec(&PortSpec::Range(" 1 - 2 ".into())),
            Ok((1, 2))
        );
        assert!(
            parse_port_spec(&PortSpec::Range("2000-1000".into()))
                .unwrap_err()
                .starts_with("port range 2000-1000 is reversed")
        );
        assert!(
            parse_port_spec(&PortSpec::Number(70000))
                .unwrap_err()
                .contains("outside 0..65535")
        );
        assert!(parse_port_spec(&PortSpec::Number(-1)).is_err());
        assert!(parse_port_spec(&PortSpec::Range("http".into())).is_err());
        assert!(parse_port_spec(&PortSpec::Range("1-2-3".into())).is_err());
        assert!(parse_port_spec(&PortSpec::Range("-5".into())).is_err());
    }

    #[test]
    fn names_and_numbers() {
        let n = |s: &str| NameOrNumber::Name(s.into());
        assert_eq!(parse_ether_type(&n("ipv4")), Ok(0x0800));
        assert_eq!(parse_ether_type(&n("IPv6")), Ok(0x86dd));
        assert_eq!(parse_ether_type(&n("0x88cc")), Ok(0x88cc));
        assert_eq!(parse_ether_type(&NameOrNumber::Number(0x88e5)), Ok(0x88e5));
        assert!(parse_ether_type(&NameOrNumber::Number(0x100)).is_err());
        assert!(parse_ether_type(&NameOrNumber::Number(0x10000)).is_err());
        assert!(parse_ether_type(&n("ipx")).is_err());
        assert!(
            parse_ether_type(&NameOrNumber::Number(0x8100))
                .unwrap_err()
                .contains("VLAN tag")
        );
        assert!(parse_ether_type(&n("0x88a8")).is_err());
        assert_eq!(parse_protocol(&n("icmpv6")), Ok(58));
        assert_eq!(parse_protocol(&NameOrNumber::Number(47)), Ok(47));
        assert_eq!(parse_protocol(&n("132")), Ok(132));
        assert!(parse_protocol(&NameOrNumber::Number(256)).is_err());
        assert!(parse_protocol(&NameOrNumber::Number(-1)).is_err());
    }

    #[test]
    fn tcp_flags_mask_value() {
        let m = Match {
            tcp_flags: Some(vec!["syn".into(), "!ack".into()]),
            ..Default::default()
        };
        assert_eq!(m.tcp_flags(), Some((0x12, 0x02)));
        assert_eq!(Match::default().tcp_flags(), None);
        assert!(parse_tcp_flag("!bogus").is_err());
    }

    #[test]
    fn yaml_shapes() {
        let p: Policy = serde_yaml::from_str(
            "version: 1\nname: a\ntaps: [x]\nmatch: {ether_type: 0x88cc, protocol: udp, dst_ports: [53, 1000-2000]}\noutputs: [{interface: mon0, vlan: 7}, {pcap: cap}]\n",
        )
        .unwrap();
        assert_eq!(p.r#match.ether_type, Some(NameOrNumber::Number(0x88cc)));
        assert_eq!(p.r#match.dst_port_ranges(), vec![(53, 53), (1000, 2000)]);
        assert_eq!(p.priority, 100);
        assert!(p.enabled);
        assert_eq!(p.direction, Direction::Both);
        assert_eq!(p.outputs[1], Output::Pcap { pcap: "cap".into() });
        // Round trip through JSON and YAML.
        let j = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Policy>(&j).unwrap(), p);
        let y = serde_yaml::to_string(&p).unwrap();
        assert_eq!(serde_yaml::from_str::<Policy>(&y).unwrap(), p);
    }

    #[test]
    fn output_shapes_rejected() {
        for bad in [
            "{interface: a, pcap: b}",
            "{pcap: b, vlan: 3}",
            "{}",
            "{interface: a, colour: red}",
        ] {
            assert!(serde_yaml::from_str::<Output>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn direction_includes() {
        assert!(Direction::Both.includes(Dir::Egress));
        assert!(Direction::Ingress.includes(Dir::Ingress));
        assert!(!Direction::Ingress.includes(Dir::Egress));
        assert!(!Direction::Egress.includes(Dir::Ingress));
    }
}
