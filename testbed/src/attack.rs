//! A fixed attack mix for the IDS benchmark (seed 003, Hong et al., Table
//! III): crafted frames from one VM to another, each kind matching exactly
//! one rule of `testbed/suricata/attack-mix.rules`, written as a pcap that
//! `tcpreplay` sends from inside the sender VM at a chosen rate.
//!
//! Per round: one frame of each kind in [`KINDS`] (web attacks to port 80,
//! a shellcode-like payload to 4444, a DNS query with a marker, a large
//! ICMP echo), padded with benign TCP data frames so the mix is mostly
//! ordinary traffic, as on a real link. Every frame is complete (valid IPv4
//! and TCP/UDP/ICMP checksums) and travels one way: the sender's kernel
//! does not track these connections, and the rules match single packets.

use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::Result;
use pcap_file::DataLink;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};

/// One kind of attack frame: the rule's SID, and what the frame is.
pub struct Kind {
    /// SID of the rule in `attack-mix.rules` that matches it.
    pub sid: u64,
    /// Short name.
    pub name: &'static str,
}

/// The attack kinds of one round, in order.
pub const KINDS: [Kind; 6] = [
    Kind {
        sid: 9100001,
        name: "http cmd.exe",
    },
    Kind {
        sid: 9100002,
        name: "http sql injection",
    },
    Kind {
        sid: 9100003,
        name: "http path traversal",
    },
    Kind {
        sid: 9100004,
        name: "shellcode to 4444",
    },
    Kind {
        sid: 9100005,
        name: "dns marker",
    },
    Kind {
        sid: 9100006,
        name: "large icmp echo",
    },
];

/// Benign frames per round (1400-byte TCP segments to port 8080).
pub const BENIGN_PER_ROUND: usize = 24;

/// What a written mix holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    /// Frames.
    pub frames: usize,
    /// Bytes of all frames.
    pub bytes: usize,
    /// Attack frames (one alert each).
    pub attacks: usize,
    /// Rounds.
    pub rounds: usize,
}

fn csum(parts: &[&[u8]]) -> u16 {
    let mut s: u32 = 0;
    for p in parts {
        for c in p.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from_be_bytes([c[0], 0])
            };
            s += w as u32;
        }
    }
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

struct Frames {
    smac: [u8; 6],
    dmac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ip_id: u16,
    seq: u32,
}

impl Frames {
    fn ip(&mut self, proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut f = Vec::with_capacity(34 + l4.len());
        f.extend_from_slice(&self.dmac);
        f.extend_from_slice(&self.smac);
        f.extend_from_slice(&[0x08, 0x00]);
        let total = (20 + l4.len()) as u16;
        self.ip_id = self.ip_id.wrapping_add(1);
        let mut h = [0u8; 20];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&total.to_be_bytes());
        h[4..6].copy_from_slice(&self.ip_id.to_be_bytes());
        h[6] = 0x40; // DF
        h[8] = 64;
        h[9] = proto;
        h[12..16].copy_from_slice(&self.src.octets());
        h[16..20].copy_from_slice(&self.dst.octets());
        let c = csum(&[&h]);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&h);
        f.extend_from_slice(l4);
        f
    }

    fn pseudo(&self, proto: u8, len: usize) -> [u8; 12] {
        let mut p = [0u8; 12];
        p[0..4].copy_from_slice(&self.src.octets());
        p[4..8].copy_from_slice(&self.dst.octets());
        p[9] = proto;
        p[10..12].copy_from_slice(&(len as u16).to_be_bytes());
        p
    }

    fn tcp(&mut self, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&sport.to_be_bytes());
        t[2..4].copy_from_slice(&dport.to_be_bytes());
        t[4..8].copy_from_slice(&self.seq.to_be_bytes());
        self.seq = self.seq.wrapping_add(payload.len() as u32);
        t[8..12].copy_from_slice(&1u32.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = 0x18; // PSH|ACK
        t[14..16].copy_from_slice(&64240u16.to_be_bytes());
        t.extend_from_slice(payload);
        let c = csum(&[&self.pseudo(6, t.len()), &t]);
        t[16..18].copy_from_slice(&c.to_be_bytes());
        self.ip(6, &t)
    }

    fn udp(&mut self, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut u = vec![0u8; 8];
        u[0..2].copy_from_slice(&sport.to_be_bytes());
        u[2..4].copy_from_slice(&dport.to_be_bytes());
        u[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        u.extend_from_slice(payload);
        let c = csum(&[&self.pseudo(17, u.len()), &u]);
        u[6..8].copy_from_slice(&c.to_be_bytes());
        self.ip(17, &u)
    }

    fn icmp_echo(&mut self, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut i = vec![8u8, 0, 0, 0];
        i.extend_from_slice(&id.to_be_bytes());
        i.extend_from_slice(&seq.to_be_bytes());
        i.extend_from_slice(payload);
        let c = csum(&[&i]);
        i[2..4].copy_from_slice(&c.to_be_bytes());
        self.ip(1, &i)
    }
}

fn http_get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: 10.0.0.2\r\nUser-Agent: vtap-bench\r\n\r\n").into_bytes()
}

/// Writes `rounds` rounds of the mix from (smac, src) to (dmac, dst) to
/// `path` (pcap, Ethernet, microsecond timestamps 100 µs apart; tcpreplay
/// paces by its own rate option).
pub fn write_mix(
    path: &Path,
    smac: [u8; 6],
    dmac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    rounds: usize,
) -> Result<Mix> {
    let mut g = Frames {
        smac,
        dmac,
        src,
        dst,
        ip_id: 0,
        seq: 1000,
    };
    let file = std::fs::File::create(path)?;
    let mut w = PcapWriter::with_header(
        file,
        PcapHeader {
            datalink: DataLink::ETHERNET,
            snaplen: 65535,
            ..Default::default()
        },
    )?;
    let mut mix = Mix {
        frames: 0,
        bytes: 0,
        attacks: 0,
        rounds,
    };
    let mut t_us: u64 = 0;
    let benign = vec![b'a'; 1400];
    for r in 0..rounds {
        let sp = 20000 + (r % 20000) as u16;
        let mut frames = vec![
            g.tcp(
                sp,
                80,
                &http_get("/scripts/..%c0%af../winnt/system32/cmd.exe?/c+dir"),
            ),
            g.tcp(
                sp,
                80,
                &http_get("/item.php?id=1%20UNION%20SELECT%20user,password%20FROM%20users"),
            ),
            g.tcp(sp, 80, &http_get("/download?file=../../../../etc/passwd")),
            {
                let mut p = vec![0x90u8; 64];
                p.extend_from_slice(b"\x31\xc0\x50\x68//sh\x68/bin\x89\xe3/bin/sh");
                g.tcp(sp, 4444, &p)
            },
            {
                // A DNS query for vtap-attack-exfil.example.
                let mut q = vec![0x12, 0x34, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0];
                for label in ["vtap-attack-exfil", "example"] {
                    q.push(label.len() as u8);
                    q.extend_from_slice(label.as_bytes());
                }
                q.extend_from_slice(&[0, 0, 1, 0, 1]);
                g.udp(sp, 53, &q)
            },
            {
                let mut p = b"vtap-attack-ping".to_vec();
                p.resize(1400, b'P');
                g.icmp_echo(0x7674, r as u16, &p)
            },
        ];
        mix.attacks += frames.len();
        for _ in 0..BENIGN_PER_ROUND {
            frames.push(g.tcp(sp.wrapping_add(1), 8080, &benign));
        }
        for f in frames {
            t_us += 100;
            mix.frames += 1;
            mix.bytes += f.len();
            w.write_packet(&PcapPacket::new(
                std::time::Duration::from_micros(t_us),
                f.len() as u32,
                &f,
            ))?;
        }
    }
    Ok(mix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_is_well_formed_and_counted() {
        let dir = std::env::temp_dir().join(format!("vtap-attack-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("mix.pcap");
        let m = write_mix(
            &p,
            [2, 0, 0, 0, 0, 1],
            [2, 0, 0, 0, 0, 2],
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            3,
        )
        .unwrap();
        assert_eq!(m.attacks, 3 * KINDS.len());
        assert_eq!(m.frames, 3 * (KINDS.len() + BENIGN_PER_ROUND));
        let frames = crate::read_pcap(&p).unwrap();
        assert_eq!(frames.len(), m.frames);
        // Every frame is IPv4 from .1 to .2; the checksums verify.
        for f in &frames {
            let ip = f.ip.as_ref().expect("ip");
            assert_eq!(
                (ip.src.to_string(), ip.dst.to_string()),
                ("10.0.0.1".into(), "10.0.0.2".into())
            );
        }
        let raw = std::fs::read(&p).unwrap();
        assert!(raw.windows(7).any(|w| w == b"cmd.exe"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
