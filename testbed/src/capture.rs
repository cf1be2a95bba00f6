//! Capturing on a monitor (or any interface of the testbed) with `tcpdump`,
//! and decoding the resulting pcap into [`Frame`]s: 802.1Q VLAN ids,
//! EtherType, IP addresses, protocol, ports, ICMP type, TCP flags.
//!
//! The capture is confirmed running (tcpdump said "listening on") before
//! [`Testbed::capture`] returns, and it is stopped with SIGINT after a short
//! settle time so that frames still in flight are written.

use std::fmt;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use pcap_file::DataLink;
use pcap_file::pcap::PcapReader;

use crate::cmd::{self, BgProcess};
use crate::testbed::Testbed;

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// The IP part of a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpInfo {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Transport protocol (after IPv6 extension headers).
    pub proto: u8,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    /// ICMP or ICMPv6 type.
    pub icmp_type: Option<u8>,
    pub tcp_flags: Option<u8>,
    /// VNI, for UDP to port 4789 carrying a VXLAN header.
    pub vxlan_vni: Option<u32>,
    /// Bytes of transport payload present in the capture.
    pub payload_len: usize,
}

/// One captured Ethernet frame, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// VLAN ids of the 802.1Q/802.1ad tags, outermost first.
    pub vids: Vec<u16>,
    /// EtherType after the tags.
    pub ethertype: u16,
    pub ip: Option<IpInfo>,
    /// Bytes captured and bytes on the wire.
    pub caplen: usize,
    pub origlen: usize,
}

impl Frame {
    /// Outermost VLAN id, if tagged.
    pub fn vid(&self) -> Option<u16> {
        self.vids.first().copied()
    }
    pub fn proto(&self) -> Option<u8> {
        self.ip.as_ref().map(|i| i.proto)
    }
    pub fn is_icmp_echo(&self) -> bool {
        matches!(
            self.ip.as_ref(),
            Some(IpInfo {
                proto: IPPROTO_ICMP,
                icmp_type: Some(0 | 8),
                ..
            })
        )
    }
    pub fn is_icmpv6_echo(&self) -> bool {
        matches!(
            self.ip.as_ref(),
            Some(IpInfo {
                proto: IPPROTO_ICMPV6,
                icmp_type: Some(128 | 129),
                ..
            })
        )
    }
    /// Source and destination IP addresses.
    pub fn addrs(&self) -> Option<(IpAddr, IpAddr)> {
        self.ip.as_ref().map(|i| (i.src, i.dst))
    }
    pub fn is_between(&self, src: IpAddr, dst: IpAddr) -> bool {
        self.addrs() == Some((src, dst))
    }
}

fn mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl fmt::Display for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} > {}", mac(&self.src_mac), mac(&self.dst_mac))?;
        for v in &self.vids {
            write!(f, " vlan {v}")?;
        }
        write!(
            f,
            " ethertype 0x{:04x} len {}",
            self.ethertype, self.origlen
        )?;
        if let Some(ip) = &self.ip {
            write!(f, " {} > {} proto {}", ip.src, ip.dst, ip.proto)?;
            if let (Some(s), Some(d)) = (ip.sport, ip.dport) {
                write!(f, " ports {s} > {d}")?;
            }
            if let Some(t) = ip.icmp_type {
                write!(f, " icmp type {t}")?;
            }
            if let Some(fl) = ip.tcp_flags {
                write!(f, " flags 0x{fl:02x}")?;
            }
        }
        Ok(())
    }
}

fn be16(b: &[u8], off: usize) -> Option<u16> {
    b.get(off..off + 2)
        .map(|s| u16::from_be_bytes([s[0], s[1]]))
}

fn l4(proto: u8, b: &[u8], src: IpAddr, dst: IpAddr) -> IpInfo {
    let mut info = IpInfo {
        src,
        dst,
        proto,
        sport: None,
        dport: None,
        icmp_type: None,
        tcp_flags: None,
        vxlan_vni: None,
        payload_len: 0,
    };
    match proto {
        IPPROTO_TCP => {
            info.sport = be16(b, 0);
            info.dport = be16(b, 2);
            info.tcp_flags = b.get(13).copied();
            let doff = b.get(12).map(|x| (x >> 4) as usize * 4).unwrap_or(20);
            info.payload_len = b.len().saturating_sub(doff);
        }
        IPPROTO_UDP => {
            info.sport = be16(b, 0);
            info.dport = be16(b, 2);
            info.payload_len = b.len().saturating_sub(8);
            if info.dport == Some(4789) && b.len() >= 16 && b[8] & 0x08 != 0 {
                info.vxlan_vni = Some(u32::from_be_bytes([0, b[12], b[13], b[14]]));
            }
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            info.icmp_type = b.first().copied();
            info.payload_len = b.len().saturating_sub(8);
        }
        _ => info.payload_len = b.len(),
    }
    info
}

/// Decodes one Ethernet frame. Truncated headers give `None` fields rather
/// than an error.
pub fn parse_frame(data: &[u8], origlen: usize) -> Frame {
    let mut fr = Frame {
        dst_mac: [0; 6],
        src_mac: [0; 6],
        vids: Vec::new(),
        ethertype: 0,
        ip: None,
        caplen: data.len(),
        origlen,
    };
    if data.len() < 14 {
        return fr;
    }
    fr.dst_mac.copy_from_slice(&data[0..6]);
    fr.src_mac.copy_from_slice(&data[6..12]);
    let mut off = 12;
    let mut et = be16(data, off).unwrap_or(0);
    while et == ETH_P_8021Q || et == ETH_P_8021AD {
        let Some(tci) = be16(data, off + 2) else {
            break;
        };
        fr.vids.push(tci & 0x0fff);
        off += 4;
        et = be16(data, off).unwrap_or(0);
    }
    fr.ethertype = et;
    let l3 = &data[(off + 2).min(data.len())..];
    match et {
        ETH_P_IPV4 if l3.len() >= 20 => {
            let ihl = (l3[0] & 0x0f) as usize * 4;
            let src = IpAddr::V4(Ipv4Addr::new(l3[12], l3[13], l3[14], l3[15]));
            let dst = IpAddr::V4(Ipv4Addr::new(l3[16], l3[17], l3[18], l3[19]));
            let frag_off = be16(l3, 6).unwrap_or(0) & 0x1fff;
            let tot = be16(l3, 2).unwrap_or(0) as usize;
            let end = if tot >= ihl {
                tot.min(l3.len())
            } else {
                l3.len()
            };
            let body = l3.get(ihl..end).unwrap_or(&[]);
            let mut info = if frag_off == 0 {
                l4(l3[9], body, src, dst)
            } else {
                l4(255, body, src, dst)
            };
            info.proto = l3[9];
            fr.ip = Some(info);
        }
        ETH_P_IPV6 if l3.len() >= 40 => {
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            s.copy_from_slice(&l3[8..24]);
            d.copy_from_slice(&l3[24..40]);
            let (src, dst) = (IpAddr::V6(Ipv6Addr::from(s)), IpAddr::V6(Ipv6Addr::from(d)));
            let mut nh = l3[6];
            let mut p = 40;
            // Hop-by-hop, routing, destination options: skip them.
            while matches!(nh, 0 | 43 | 60) && p + 8 <= l3.len() {
                nh = l3[p];
                p += (l3[p + 1] as usize + 1) * 8;
            }
            fr.ip = Some(l4(nh, l3.get(p..).unwrap_or(&[]), src, dst));
        }
        _ => {}
    }
    fr
}

/// Reads an Ethernet pcap file into frames.
pub fn read_pcap(path: &Path) -> Result<Vec<Frame>> {
    let f = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut r =
        PcapReader::new(f).with_context(|| format!("read pcap header of {}", path.display()))?;
    let dl = r.header().datalink;
    if dl != DataLink::ETHERNET {
        bail!("{}: datalink {dl:?}, expected ETHERNET", path.display());
    }
    let mut v = Vec::new();
    while let Some(p) = r.next_packet() {
        let p = p.with_context(|| format!("read packet {} of {}", v.len() + 1, path.display()))?;
        v.push(parse_frame(&p.data, p.orig_len as usize));
    }
    Ok(v)
}

/// A running `tcpdump -i IFACE -w FILE` inside a namespace.
#[derive(Debug)]
pub struct Capture<'a> {
    proc: BgProcess<'a>,
    pub path: PathBuf,
    pub ns: String,
    pub iface: String,
}

/// What a stopped capture got.
#[derive(Debug, Clone)]
pub struct Captured {
    pub frames: Vec<Frame>,
    pub path: PathBuf,
    /// "N packets dropped by kernel" as tcpdump reported it (always 0:
    /// [`Capture::stop`] fails on an incomplete capture).
    pub dropped_by_kernel: u64,
}

impl Captured {
    /// Frames whose outermost VLAN id is `vid`.
    pub fn with_vid(&self, vid: u16) -> Vec<&Frame> {
        self.frames
            .iter()
            .filter(|f| f.vid() == Some(vid))
            .collect()
    }
    /// Count of frames per outermost VLAN id (`None` = untagged).
    pub fn per_vid(&self) -> std::collections::BTreeMap<Option<u16>, usize> {
        let mut m = std::collections::BTreeMap::new();
        for f in &self.frames {
            *m.entry(f.vid()).or_insert(0) += 1;
        }
        m
    }
    /// Frames matching `pred`.
    pub fn filter(&self, pred: impl Fn(&Frame) -> bool) -> Vec<&Frame> {
        self.frames.iter().filter(|f| pred(f)).collect()
    }
    /// One line per frame, for assertion messages.
    pub fn dump(&self) -> String {
        let mut s = format!("{} frames in {}:\n", self.frames.len(), self.path.display());
        for (i, f) in self.frames.iter().enumerate().take(60) {
            s.push_str(&format!("  {i:3}: {f}\n"));
        }
        if self.frames.len() > 60 {
            s.push_str("  ...\n");
        }
        s
    }
}

impl<'a> Capture<'a> {
    /// Stops the capture (SIGINT after `settle`) and decodes the pcap.
    pub fn stop(mut self) -> Result<Captured> {
        std::thread::sleep(Duration::from_millis(300));
        let st = self.proc.stop_with(libc::SIGINT, Duration::from_secs(10))?;
        let stderr = self.proc.stderr();
        if !st.success() {
            bail!(
                "tcpdump on {}/{} ended with {}: {}",
                self.ns,
                self.iface,
                cmd::describe_status(&st),
                stderr.trim()
            );
        }
        let dropped_by_kernel = stderr
            .lines()
            .find(|l| l.contains("dropped by kernel"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if dropped_by_kernel > 0 {
            bail!(
                "capture on {}/{} is incomplete: {} (pcap {})",
                self.ns,
                self.iface,
                stderr.trim().replace('\n', "; "),
                self.path.display()
            );
        }
        let frames = read_pcap(&self.path)?;
        Ok(Captured {
            frames,
            path: self.path.clone(),
            dropped_by_kernel,
        })
    }
}

impl Testbed {
    /// Starts `tcpdump` on `iface` in `ns` and waits until it is capturing.
    pub fn capture(&self, ns: &str, iface: &str) -> Result<Capture<'_>> {
        let path = self.path(
            &format!("{}-{iface}", ns.rsplit('-').next().unwrap_or(ns)),
            "pcap",
        );
        let p = path.to_string_lossy().into_owned();
        let mut c = cmd::ns_command(ns, "tcpdump");
        // A 64 MiB ring of 64 KiB slots (snaplen 65600 holds a whole GSO
        // super-packet with its tag), so bursts of mirrored copies are not
        // dropped by the capture itself; stop() fails if any were.
        c.args([
            "-i",
            iface,
            "-w",
            &p,
            "-U",
            "-n",
            "-s",
            "65600",
            "-B",
            "65536",
            "-Z",
            "root",
            "--immediate-mode",
        ]);
        let mut proc = self.spawn_command(c, "tcpdump")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if proc.stderr().contains("listening on") {
                break;
            }
            if let Some(st) = proc.try_wait()? {
                bail!(
                    "tcpdump on {ns}/{iface} exited ({}) before capturing: {}",
                    cmd::describe_status(&st),
                    proc.stderr()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "tcpdump on {ns}/{iface} did not start capturing within 10s: {}",
                    proc.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Capture {
            proc,
            path,
            ns: ns.to_string(),
            iface: iface.to_string(),
        })
    }

    /// Capture on monitor `k` (inside its namespace, on `eth0`).
    pub fn capture_monitor(&self, k: usize) -> Result<Capture<'_>> {
        let m = self.monitor(k);
        self.capture(&m.ns.clone(), &m.ifname.clone())
    }

    /// Capture on the remote host's VXLAN device (decapsulated frames).
    pub fn capture_remote(&self) -> Result<Capture<'_>> {
        let r = self.remote();
        self.capture(&r.ns.clone(), &r.vxlan.clone())
    }
}

/// Builds an Ethernet frame carrying an ICMP echo request (`icmp_type` 8) or
/// reply (0) between two IPv4 addresses, with the given 802.1Q tags
/// (outermost first). Checksums are computed, so the frame is valid.
pub fn icmp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    vids: &[u16],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    icmp_type: u8,
    seq: u16,
) -> Vec<u8> {
    fn csum(b: &[u8]) -> u16 {
        let mut s: u32 = 0;
        for c in b.chunks(2) {
            s += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
        }
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    for v in vids {
        f.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
        f.extend_from_slice(&(v & 0x0fff).to_be_bytes());
    }
    f.extend_from_slice(&ETH_P_IPV4.to_be_bytes());
    let mut icmp = vec![icmp_type, 0, 0, 0, 0x12, 0x34];
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(b"vtap-testbed-probe-frame");
    let c = csum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let tot = (20 + icmp.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&tot.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, IPPROTO_ICMP, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = csum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&icmp);
    f
}

/// Sends raw Ethernet `frames` out of `iface` in namespace `ns` through an
/// AF_PACKET socket (as if a program on the host transmitted them).
pub fn inject(ns: &str, iface: &str, frames: Vec<Vec<u8>>) -> Result<()> {
    let iface = iface.to_string();
    crate::netns::in_netns(ns, move || -> Result<()> {
        let name = std::ffi::CString::new(iface.clone())?;
        // SAFETY: plain libc calls with valid, owned arguments; the socket fd
        // is closed before returning.
        unsafe {
            let idx = libc::if_nametoindex(name.as_ptr());
            if idx == 0 {
                bail!("no interface {iface}");
            }
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            if fd < 0 {
                bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
            }
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_ifindex = idx as i32;
            sll.sll_halen = 6;
            let mut res = Ok(());
            for f in &frames {
                sll.sll_addr[..6].copy_from_slice(&f[..6]);
                let n = libc::sendto(
                    fd,
                    f.as_ptr() as *const libc::c_void,
                    f.len(),
                    0,
                    &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                if n < 0 {
                    res = Err(anyhow::anyhow!(
                        "sendto {iface}: {}",
                        std::io::Error::last_os_error()
                    ));
                    break;
                }
            }
            libc::close(fd);
            res
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn icmp_frame(vids: &[u16]) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
        for v in vids {
            f.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
            f.extend_from_slice(&v.to_be_bytes());
        }
        f.extend_from_slice(&ETH_P_IPV4.to_be_bytes());
        // IPv4 header, 20 bytes, proto ICMP, 10.0.0.1 -> 10.0.0.2, total 28.
        f.extend_from_slice(&[
            0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 1, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ]);
        f.extend_from_slice(&[8, 0, 0, 0, 0, 1, 0, 1]);
        f
    }

    #[test]
    fn parses_tagged_icmp() {
        let d = icmp_frame(&[100]);
        let f = parse_frame(&d, d.len());
        assert_eq!(f.vids, vec![100]);
        assert_eq!(f.ethertype, ETH_P_IPV4);
        assert!(f.is_icmp_echo());
        assert!(f.is_between("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()));
    }

    #[test]
    fn parses_double_tag_and_untagged() {
        let d = icmp_frame(&[10, 20]);
        assert_eq!(parse_frame(&d, d.len()).vids, vec![10, 20]);
        let d = icmp_frame(&[]);
        let f = parse_frame(&d, d.len());
        assert!(f.vids.is_empty());
        assert_eq!(f.vid(), None);
        assert_eq!(f.ip.unwrap().icmp_type, Some(8));
    }

    #[test]
    fn parses_ipv6_tcp() {
        let mut d = vec![0u8; 12];
        d.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
        let mut ip6 = vec![0x60, 0, 0, 0, 0, 20, IPPROTO_TCP, 64];
        ip6.extend_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets());
        ip6.extend_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
        d.extend_from_slice(&ip6);
        d.extend_from_slice(&[
            0x9c, 0x40, 0x13, 0x89, 0, 0, 0, 0, 0, 0, 0, 0, 0x50, 0x02, 0, 0, 0, 0, 0, 0,
        ]);
        let f = parse_frame(&d, d.len());
        let ip = f.ip.unwrap();
        assert_eq!(
            (ip.proto, ip.sport, ip.dport, ip.tcp_flags),
            (IPPROTO_TCP, Some(40000), Some(5001), Some(0x02))
        );
    }

    #[test]
    fn truncated_frames_do_not_panic() {
        for n in 0..40 {
            let d = icmp_frame(&[7]);
            let _ = parse_frame(&d[..n.min(d.len())], 100);
        }
    }
}
