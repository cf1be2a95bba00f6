//! A small builder for crafted test frames.

/// Layer-4 header to put after IP.
#[derive(Clone, Debug)]
pub enum L4 {
    Tcp { sport: u16, dport: u16, flags: u8 },
    Udp { sport: u16, dport: u16 },
    Icmp,
    Icmpv6,
    Raw(u8, Vec<u8>),
}

impl L4 {
    fn proto(&self) -> u8 {
        match self {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::Icmp => 1,
            L4::Icmpv6 => 58,
            L4::Raw(p, _) => *p,
        }
    }
    fn bytes(&self) -> Vec<u8> {
        match self {
            L4::Tcp {
                sport,
                dport,
                flags,
            } => {
                let mut h = vec![0u8; 20];
                h[0..2].copy_from_slice(&sport.to_be_bytes());
                h[2..4].copy_from_slice(&dport.to_be_bytes());
                h[12] = 5 << 4;
                h[13] = *flags;
                h
            }
            L4::Udp { sport, dport } => {
                let mut h = vec![0u8; 8];
                h[0..2].copy_from_slice(&sport.to_be_bytes());
                h[2..4].copy_from_slice(&dport.to_be_bytes());
                h[4..6].copy_from_slice(&8u16.to_be_bytes());
                h
            }
            L4::Icmp | L4::Icmpv6 => vec![8, 0, 0, 0, 0, 1, 0, 1],
            L4::Raw(_, b) => b.clone(),
        }
    }
}

/// Ethernet header with optional tags (TPIDs given) and an ethertype.
pub fn eth(tags: &[(u16, u16)], ether_type: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    for (tpid, vid) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&ether_type.to_be_bytes());
    f
}

/// IPv4 packet options.
#[derive(Clone, Debug, Default)]
pub struct V4 {
    pub options: usize,   // bytes of options (multiple of 4)
    pub frag_offset: u16, // in 8-byte units
    pub more_fragments: bool,
}

/// An IPv4 frame.
pub fn ipv4(tags: &[(u16, u16)], src: [u8; 4], dst: [u8; 4], l4: &L4, o: &V4) -> Vec<u8> {
    let mut f = eth(tags, 0x0800);
    let payload = l4.bytes();
    let ihl = 5 + o.options / 4;
    let mut ip = vec![0u8; ihl * 4];
    ip[0] = 0x40 | ihl as u8;
    ip[2..4].copy_from_slice(&((ihl * 4 + payload.len()) as u16).to_be_bytes());
    let frag = (o.frag_offset & 0x1fff) | if o.more_fragments { 0x2000 } else { 0 };
    ip[6..8].copy_from_slice(&frag.to_be_bytes());
    ip[8] = 64;
    ip[9] = l4.proto();
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    for b in ip.iter_mut().skip(20) {
        *b = 1; // NOP options
    }
    f.extend_from_slice(&ip);
    f.extend_from_slice(&payload);
    f
}

/// IPv6 extension header kinds for [`ipv6`].
#[derive(Clone, Debug)]
pub enum Ext {
    HopByHop,
    Routing,
    DestOpts,
    Fragment { offset: u16, more: bool },
}

/// An IPv6 frame with extension headers.
pub fn ipv6(tags: &[(u16, u16)], src: [u8; 16], dst: [u8; 16], exts: &[Ext], l4: &L4) -> Vec<u8> {
    let mut f = eth(tags, 0x86dd);
    let payload = l4.bytes();
    let code = |e: &Ext| match e {
        Ext::HopByHop => 0u8,
        Ext::Routing => 43,
        Ext::DestOpts => 60,
        Ext::Fragment { .. } => 44,
    };
    let mut chain = Vec::new();
    for (i, e) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map(code).unwrap_or(l4.proto());
        match e {
            Ext::Fragment { offset, more } => {
                let mut h = vec![next, 0, 0, 0, 0, 0, 0, 1];
                let v = (offset << 3) | *more as u16;
                h[2..4].copy_from_slice(&v.to_be_bytes());
                chain.extend_from_slice(&h);
            }
            _ => {
                // 16 bytes: hdr ext len 1
                let mut h = vec![0u8; 16];
                h[0] = next;
                h[1] = 1;
                chain.extend_from_slice(&h);
            }
        }
    }
    let mut ip = vec![0u8; 40];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&((chain.len() + payload.len()) as u16).to_be_bytes());
    ip[6] = exts.first().map(code).unwrap_or(l4.proto());
    ip[7] = 64;
    ip[8..24].copy_from_slice(&src);
    ip[24..40].copy_from_slice(&dst);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&chain);
    f.extend_from_slice(&payload);
    f
}

/// An ARP request frame (Ethernet/IPv4).
pub fn arp(tags: &[(u16, u16)], sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut f = eth(tags, 0x0806);
    let mut a = vec![0, 1, 0x08, 0x00, 6, 4, 0, 1];
    a.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    a.extend_from_slice(&sender);
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&target);
    f.extend_from_slice(&a);
    f
}

/// An IPv6 address fd00::N.
pub fn v6(n: u8) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0xfd;
    a[15] = n;
    a
}

/// Pads a frame to at least 60 bytes (as an Ethernet NIC would).
pub fn pad(mut f: Vec<u8>) -> Vec<u8> {
    if f.len() < 60 {
        f.resize(60, 0);
    }
    f
}
