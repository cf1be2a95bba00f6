//! Validation: every rule of `mirror-policies/README.md`, collecting **every**
//! error, each with the path of the field it is about (`match.src[1]`,
//! `outputs[0].vlan`, `policies[web].taps[0]`).
//!
//! [`validate_policy`] checks one policy on its own; [`validate_set`] checks
//! each policy (prefixing its errors with `policies[NAME].`) and then the rules
//! that involve several policies: unique names, the number of policies and of
//! distinct outputs the datapath can hold, and mirror loops (an output that is
//! also tapped).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ipnet::IpNet;
use serde::Serialize;
use vtap_abi::{MAX_OUTPUTS, MAX_POLICIES, MAX_POLICY_OUTPUTS, PCAP_MAX_CAPLEN};

use super::compile::OutputKey;
use super::model::{
    ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, IFNAME_MAX, IntSpec, Output, POLICY_VERSION, Policy,
    ether_type_name, parse_cidr, parse_ether_type, parse_port_spec, parse_protocol, parse_tcp_flag,
    protocol_name,
};
use super::shaping::{MAX_RATE_BPS, MAX_RATE_PPS, MAX_SAMPLE_ONE_IN};

/// One validation error.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct FieldError {
    /// Path of the field: `match.src[1]`, `outputs[0].vlan`,
    /// `policies[web].taps[0]`.
    pub field: String,
    /// What is wrong, for a human.
    pub message: String,
}

impl FieldError {
    /// A new error.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Whether `c` may appear in a Linux interface name (printable ASCII except
/// '/', ':' and space; the kernel's `dev_valid_name`).
pub fn is_ifname_char(c: char) -> bool {
    c.is_ascii_graphic() && c != '/' && c != ':'
}

/// Checks an interface name (not a glob): 1..=15 valid characters.
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("an interface name cannot be empty".into());
    }
    if name.len() > IFNAME_MAX {
        return Err(format!(
            "{name:?} is longer than {IFNAME_MAX} characters (the limit of a Linux interface name)"
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a valid interface name"));
    }
    if let Some(c) = name.chars().find(|c| !is_ifname_char(*c)) {
        return Err(format!(
            "{name:?} contains {c:?}, which cannot appear in an interface name (no '/', ':', whitespace or non-ASCII)"
        ));
    }
    Ok(())
}

fn check_tap_pattern(pat: &str) -> Result<glob::Pattern, String> {
    check_ifname(pat)?;
    glob::Pattern::new(pat).map_err(|e| format!("{pat:?} is not a valid glob: {}", e.msg))
}

fn check_name(name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid policy name: use 1 to 63 characters a-z, 0-9, '_' and '-', starting with a letter or a digit"
        ))
    }
}

/// Validates one policy on its own. Returns every error (empty = valid).
pub fn validate_policy(p: &Policy) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut err = |field: String, message: String| errs.push(FieldError { field, message });

    if p.version != POLICY_VERSION {
        err(
            "version".into(),
            format!(
                "unsupported version {} (this build reads version {POLICY_VERSION})",
                p.version
            ),
        );
    }
    if let Err(m) = check_name(&p.name) {
        err("name".into(), m);
    }
    if p.priority > 65535 {
        err(
            "priority".into(),
            format!("{} is outside 0..65535", p.priority),
        );
    }

    // taps
    if p.taps.is_empty() {
        err(
            "taps".into(),
            "at least one tap (an interface name or glob such as \"vm*-tap\") is required".into(),
        );
    }
    for (i, t) in p.taps.iter().enumerate() {
        if let Err(m) = check_tap_pattern(t) {
            err(format!("taps[{i}]"), m);
        }
    }

    // match
    let m = &p.r#match;
    let ether_type = match &m.ether_type {
        None => None,
        Some(s) => match parse_ether_type(s) {
            Ok(v) => Some(v),
            Err(e) => {
                err("match.ether_type".into(), e);
                None
            }
        },
    };
    let mut nets_of = |side: &str, list: &Option<Vec<String>>| -> Option<Vec<IpNet>> {
        let list = list.as_ref()?;
        if list.is_empty() {
            err(
                format!("match.{side}"),
                "an empty list matches nothing; omit the field to match any address".into(),
            );
            return None;
        }
        let mut nets = Vec::new();
        for (i, s) in list.iter().enumerate() {
            match parse_cidr(s) {
                Ok(n) => nets.push(n),
                Err(e) => {
                    err(format!("match.{side}[{i}]"), e);
                }
            }
        }
        // The valid entries: family checks below use them.
        Some(nets)
    };
    let src = nets_of("src", &m.src);
    let dst = nets_of("dst", &m.dst);
    let protocol = match &m.protocol {
        None => None,
        Some(s) => match parse_protocol(s) {
            Ok(v) => Some(v),
            Err(e) => {
                err("match.protocol".into(), e);
                None
            }
        },
    };
    for (side, list) in [("src_ports", &m.src_ports), ("dst_ports", &m.dst_ports)] {
        let Some(list) = list else { continue };
        if list.is_empty() {
            err(
                format!("match.{side}"),
                "an empty list matches nothing; omit the field to match any port".into(),
            );
        }
        for (i, ps) in list.iter().enumerate() {
            if let Err(e) = parse_port_spec(ps) {
                err(format!("match.{side}[{i}]"), e);
            }
        }
        if let Some(proto) = protocol
            && proto != 6
            && proto != 17
        {
            err(
                format!("match.{side}"),
                format!(
                    "ports need protocol tcp or udp (or no protocol), but protocol is {}",
                    protocol_name(proto)
                ),
            );
        }
    }
    if let Some(flags) = &m.tcp_flags {
        if flags.is_empty() {
            err(
                "match.tcp_flags".into(),
                "an empty list matches nothing; omit the field to match any flags".into(),
            );
        }
        let mut seen: BTreeMap<u8, (usize, bool)> = BTreeMap::new();
        for (i, f) in flags.iter().enumerate() {
            match parse_tcp_flag(f) {
                Ok((bit, set)) => {
                    if let Some((j, set_j)) = seen.get(&bit) {
                        let msg = if *set_j == set {
                            format!("{f:?} is already named by match.tcp_flags[{j}]")
                        } else {
                            format!(
                                "{f:?} contradicts match.tcp_flags[{j}] ({:?}): a flag cannot be both set and clear",
                                flags[*j]
                            )
                        };
                        err(format!("match.tcp_flags[{i}]"), msg);
                    } else {
                        seen.insert(bit, (i, set));
                    }
                }
                Err(e) => err(format!("match.tcp_flags[{i}]"), e),
            }
        }
        if let Some(proto) = protocol
            && proto != 6
        {
            err(
                "match.tcp_flags".into(),
                format!(
                    "TCP flags need protocol tcp (or no protocol), but protocol is {}",
                    protocol_name(proto)
                ),
            );
        }
    }

    // Combinations that can never match.
    if let Some(et) = ether_type {
        let is_ip = et == ETH_P_IP || et == ETH_P_IPV6;
        let mut given: Vec<&str> = Vec::new();
        if !is_ip && et != ETH_P_ARP {
            if m.src.is_some() {
                given.push("src");
            }
            if m.dst.is_some() {
                given.push("dst");
            }
        }
        if !is_ip {
            if m.protocol.is_some() {
                given.push("protocol");
            }
            if m.src_ports.is_some() {
                given.push("src_ports");
            }
            if m.dst_ports.is_some() {
                given.push("dst_ports");
            }
            if m.tcp_flags.is_some() {
                given.push("tcp_flags");
            }
        }
        if !given.is_empty() {
            let what = if et == ETH_P_ARP {
                "ARP packets have no IP protocol, ports or TCP flags"
            } else {
                "it carries no IP header"
            };
            err(
                "match.ether_type".into(),
                format!(
                    "ether_type {} cannot be combined with {}: {what}, so no packet could match",
                    ether_type_name(et),
                    given
                        .iter()
                        .map(|g| format!("match.{g}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
        // Address family against the EtherType (ARP addresses are IPv4).
        let want_v4 = et == ETH_P_IP || et == ETH_P_ARP;
        if want_v4 || et == ETH_P_IPV6 {
            for (side, nets) in [("src", &src), ("dst", &dst)] {
                let Some(nets) = nets else { continue };
                if !nets.is_empty() && nets.iter().all(|n| n.addr().is_ipv4() != want_v4) {
                    err(
                        format!("match.{side}"),
                        format!(
                            "every {side} prefix is {} but ether_type is {}: no packet could match",
                            if want_v4 { "IPv6" } else { "IPv4" },
                            ether_type_name(et)
                        ),
                    );
                }
            }
        }
    }
    if let (Some(s), Some(d)) = (&src, &dst) {
        let fams = |v: &Vec<IpNet>| {
            (
                v.iter().any(|n| n.addr().is_ipv4()),
                v.iter().any(|n| n.addr().is_ipv6()),
            )
        };
        let ((s4, s6), (d4, d6)) = (fams(s), fams(d));
        let share_a_family = (s4 && d4) || (s6 && d6);
        if !s.is_empty() && !d.is_empty() && !share_a_family {
            err(
                "match.dst".into(),
                format!(
                    "every dst prefix is {} but every src prefix is {}: no packet could match",
                    if d4 { "IPv4" } else { "IPv6" },
                    if s4 { "IPv4" } else { "IPv6" }
                ),
            );
        }
    }

    // Shaping: 1-in-N sampling and rate limits.
    check_sample_one_in(&p.sample_one_in, &mut err);
    if p.snaplen != 0 {
        if p.snaplen < 14 || p.snaplen > PCAP_MAX_CAPLEN {
            err(
                "snaplen".into(),
                format!(
                    "snaplen {} is outside 14..{PCAP_MAX_CAPLEN} (bytes kept of each captured packet; 0 = the whole packet)",
                    p.snaplen
                ),
            );
        } else if !p.outputs.iter().all(|o| matches!(o, Output::Pcap { .. })) {
            err(
                "snaplen".into(),
                format!(
                    "snaplen {} applies to pcap outputs only in this build (copies to interfaces are whole packets); use 0, or pcap outputs only",
                    p.snaplen
                ),
            );
        }
    }
    if let Some(w) = &p.when {
        for (f, m) in super::when::validate(w) {
            err(f, m);
        }
    }
    check_rate(
        "rate_limit.pps",
        &p.rate_limit.pps,
        "packet",
        MAX_RATE_PPS,
        &mut err,
    );
    check_rate(
        "rate_limit.bps",
        &p.rate_limit.bps,
        "bit",
        MAX_RATE_BPS,
        &mut err,
    );

    // outputs
    if p.outputs.is_empty() {
        err(
            "outputs".into(),
            "at least one output (such as {interface: mon0, vlan: 100}) is required".into(),
        );
    } else if p.outputs.len() > MAX_POLICY_OUTPUTS {
        err(
            "outputs".into(),
            format!(
                "{} outputs, at most {MAX_POLICY_OUTPUTS} per policy",
                p.outputs.len()
            ),
        );
    }
    let mut seen: BTreeMap<(String, u32), usize> = BTreeMap::new();
    for (i, o) in p.outputs.iter().enumerate() {
        match o {
            Output::Interface { interface, vlan } => {
                let name_ok = match check_ifname(interface) {
                    Err(e) => {
                        err(format!("outputs[{i}].interface"), e);
                        false
                    }
                    Ok(()) if interface.contains(['*', '?', '[', ']']) => {
                        err(
                            format!("outputs[{i}].interface"),
                            format!(
                                "{interface:?} looks like a glob; an output is one interface, named exactly"
                            ),
                        );
                        false
                    }
                    Ok(()) if interface == crate::tunnel::DEVICE => {
                        err(
                            format!("outputs[{i}].interface"),
                            format!(
                                "{interface} is vtap's own VXLAN device; use `vxlan: {{remote: IP, vni: N}}` to send copies through it"
                            ),
                        );
                        false
                    }
                    Ok(()) => true,
                };
                let vlan_ok = match vlan {
                    Some(v) if !(1..=4094).contains(v) => {
                        err(
                            format!("outputs[{i}].vlan"),
                            format!("VLAN {v} is outside 1..4094"),
                        );
                        false
                    }
                    _ => true,
                };
                if name_ok && vlan_ok {
                    let key = (interface.clone(), vlan.unwrap_or(0));
                    if let Some(j) = seen.get(&key) {
                        err(
                            format!("outputs[{i}]"),
                            format!(
                                "duplicate of outputs[{j}] ({}): a policy sends at most one copy to an output",
                                describe_output(interface, *vlan)
                            ),
                        );
                    } else {
                        seen.insert(key, i);
                    }
                }
            }
            Output::Pcap { pcap } => match crate::capture::name::validate_capture_name(pcap) {
                Err(e) => err(format!("outputs[{i}].pcap"), e),
                Ok(()) => {
                    let key = (format!("pcap:{pcap}"), 0);
                    if let Some(j) = seen.get(&key) {
                        err(
                            format!("outputs[{i}]"),
                            format!(
                                "duplicate of outputs[{j}] (capture {pcap}): a policy sends at most one copy to an output"
                            ),
                        );
                    } else {
                        seen.insert(key, i);
                    }
                }
            },
            Output::Vxlan { vxlan, vlan } => {
                let mut ok = true;
                if vxlan.vni > 0x00ff_ffff {
                    err(
                        format!("outputs[{i}].vxlan.vni"),
                        format!("VNI {} is outside 0..16777215 (24 bits)", vxlan.vni),
                    );
                    ok = false;
                }
                let r = vxlan.remote;
                let bad = match r {
                    std::net::IpAddr::V4(a) => {
                        a.is_unspecified() || a.is_multicast() || a.is_broadcast()
                    }
                    std::net::IpAddr::V6(a) => a.is_unspecified() || a.is_multicast(),
                };
                if bad {
                    err(
                        format!("outputs[{i}].vxlan.remote"),
                        format!("{r} is not a unicast address: the remote is one VXLAN endpoint"),
                    );
                    ok = false;
                }
                if let Some(v) = vlan
                    && !(1..=4094).contains(v)
                {
                    err(
                        format!("outputs[{i}].vlan"),
                        format!("VLAN {v} is outside 1..4094"),
                    );
                    ok = false;
                }
                if ok {
                    let key = (format!("vxlan:{r}/{}", vxlan.vni), vlan.unwrap_or(0));
                    if let Some(j) = seen.get(&key) {
                        err(
                            format!("outputs[{i}]"),
                            format!(
                                "duplicate of outputs[{j}] (VXLAN {r} VNI {}): a policy sends at most one copy to an output",
                                vxlan.vni
                            ),
                        );
                    } else {
                        seen.insert(key, i);
                    }
                }
            }
        }
    }
    errs
}

fn check_sample_one_in(v: &IntSpec, err: &mut impl FnMut(String, String)) {
    let field = "sample_one_in".to_string();
    let hint = "sample_one_in is a whole number N >= 1: one packet (or flow) in N is mirrored, 1 = every packet";
    match v {
        IntSpec::Int(n) if *n >= 1 && *n <= MAX_SAMPLE_ONE_IN as i128 => {}
        IntSpec::Int(0) => err(field, format!("0 is not a valid N: {hint}")),
        IntSpec::Int(n) if *n < 0 => err(field, format!("{n} is negative: {hint}")),
        IntSpec::Int(n) => err(
            field,
            format!("1-in-{n} is more than this build samples (at most 1-in-{MAX_SAMPLE_ONE_IN})"),
        ),
        IntSpec::Float(_) => err(field, format!("{v} is not a whole number: {hint}")),
    }
}

/// `rate_limit.pps` / `rate_limit.bps`: 0 (unlimited) or a whole number
/// 1..=max of `unit`s per second.
fn check_rate(
    field: &str,
    v: &IntSpec,
    unit: &str,
    max: u64,
    err: &mut impl FnMut(String, String),
) {
    let hint =
        format!("use a whole number of {unit}s per second from 1 to {max}, or 0 for no limit");
    let x = v.as_f64();
    match v {
        IntSpec::Int(n) if *n >= 0 && *n <= max as i128 => {}
        IntSpec::Int(n) if *n < 0 => err(field.into(), format!("{n} is negative: {hint}")),
        IntSpec::Int(n) => err(
            field.into(),
            format!("{n} {unit}s per second is more than this build limits to: {hint}"),
        ),
        IntSpec::Float(_) if x > 0.0 && x < 1.0 => err(
            field.into(),
            format!(
                "{v}: a rate below 1 {unit} per second cannot be set (rates are whole numbers); {hint}"
            ),
        ),
        IntSpec::Float(_) if x < 0.0 => err(field.into(), format!("{v} is negative: {hint}")),
        IntSpec::Float(_) => err(field.into(), format!("{v} is not a whole number: {hint}")),
    }
}

fn describe_output(interface: &str, vlan: Option<u32>) -> String {
    match vlan {
        Some(v) => format!("{interface} VLAN {v}"),
        None => format!("{interface} untagged"),
    }
}

/// `policies[NAME]` (or `policies[#i]` when the name is empty).
fn policy_label(p: &Policy, i: usize) -> String {
    if p.name.is_empty() {
        format!("policies[#{i}]")
    } else {
        format!("policies[{}]", p.name)
    }
}

/// Validates a whole policy set: each policy (errors prefixed with
/// `policies[NAME].`) and the cross-policy rules. Returns every error.
pub fn validate_set(ps: &[Policy]) -> Vec<FieldError> {
    validate_set_indexed(ps)
        .into_iter()
        .map(|(_, e)| e)
        .collect()
}

/// Like [`validate_set`], with the index of the policy each error belongs to
/// (`None` for errors about the whole set). Used by the loader to name files.
pub(crate) fn validate_set_indexed(ps: &[Policy]) -> Vec<(Option<usize>, FieldError)> {
    let mut out = Vec::new();
    for (i, p) in ps.iter().enumerate() {
        let label = policy_label(p, i);
        for e in validate_policy(p) {
            out.push((
                Some(i),
                FieldError::new(format!("{label}.{}", e.field), e.message),
            ));
        }
    }

    // Unique names.
    let mut first: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, p) in ps.iter().enumerate() {
        if let Some(j) = first.get(p.name.as_str()) {
            out.push((
                Some(i),
                FieldError::new(
                    format!("{}.name", policy_label(p, i)),
                    format!(
                        "policy name {:?} is used more than once (policies #{j} and #{i} of the set)",
                        p.name
                    ),
                ),
            ));
        } else {
            first.insert(&p.name, i);
        }
    }

    if ps.len() > MAX_POLICIES {
        out.push((
            None,
            FieldError::new(
                "policies",
                format!("{} policies, at most {MAX_POLICIES}", ps.len()),
            ),
        ));
    }
    let distinct: BTreeSet<OutputKey> = ps.iter().flat_map(|p| p.output_keys()).collect();
    if distinct.len() > MAX_OUTPUTS {
        out.push((
            None,
            FieldError::new(
                "policies",
                format!(
                    "{} distinct outputs ((interface, VLAN) pairs and captures) in the set, at most {MAX_OUTPUTS}",
                    distinct.len()
                ),
            ),
        ));
    }

    // Mirror loops: an output interface that some tap pattern selects.
    let patterns: Vec<(usize, usize, &str, glob::Pattern)> =
        ps.iter()
            .enumerate()
            .flat_map(|(i, p)| {
                p.taps.iter().enumerate().filter_map(move |(j, t)| {
                    glob::Pattern::new(t).ok().map(|g| (i, j, t.as_str(), g))
                })
            })
            .collect();
    for (i, p) in ps.iter().enumerate() {
        for (k, o) in p.outputs.iter().enumerate() {
            let Output::Interface { interface, .. } = o else {
                continue;
            };
            for (ti, tj, tstr, g) in &patterns {
                if g.matches(interface) {
                    out.push((
                        Some(i),
                        FieldError::new(
                            format!("{}.outputs[{k}].interface", policy_label(p, i)),
                            format!(
                                "{interface} is also tapped by {}.taps[{tj}] ({tstr:?}): that would mirror copies of copies",
                                policy_label(&ps[*ti], *ti)
                            ),
                        ),
                    ));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Policy {
        serde_yaml::from_str(
            "version: 1\nname: p\ntaps: [vm1-tap]\noutputs: [{interface: mon0, vlan: 100}]\n",
        )
        .unwrap()
    }

    #[test]
    fn minimal_is_valid() {
        assert_eq!(validate_policy(&base()), vec![]);
        assert_eq!(validate_set(&[base()]), vec![]);
    }

    #[test]
    fn names() {
        for ok in ["a", "0", "web-to-ids", "a_b", &"a".repeat(63)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "A", "-a", "_a", "a.b", "a b", &"a".repeat(64), "é"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ifnames() {
        assert!(check_ifname("vm1-tap").is_ok());
        assert!(check_ifname("a234567890abcde").is_ok());
        assert!(check_ifname("a234567890abcdef").is_err());
        assert!(check_ifname("a/b").is_err());
        assert!(check_ifname("a b").is_err());
        assert!(check_ifname("a:b").is_err());
        assert!(check_ifname("").is_err());
        assert!(check_ifname("..").is_err());
        assert!(check_tap_pattern("vm[").is_err());
        assert!(check_tap_pattern("vm*-tap").is_ok());
    }

    #[test]
    fn display() {
        assert_eq!(FieldError::new("a.b", "bad").to_string(), "a.b: bad");
    }
}
