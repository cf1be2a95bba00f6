//! pcapng encoding of captured packets (little-endian, nanosecond timestamps).
//!
//! One [`PcapngEncoder`] per output stream (a file or a live subscriber):
//! [`PcapngEncoder::header`] starts a section, and [`PcapngEncoder::encode`]
//! emits an interface description block the first time an (ifindex,
//! direction) appears in that section, then an enhanced packet block. The
//! blocks are built and serialised with the `pcap-file` crate.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use byteorder::LittleEndian;
use pcap_file::pcapng::Block;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::blocks::section_header::{SectionHeaderBlock, SectionHeaderOption};
use pcap_file::{DataLink, Endianness};
use vtap_abi::Dir;

use super::{IfaceDir, Packet};

/// `shb_userappl` of every section.
pub const USER_APPLICATION: &str = "vtap";

/// `if_tsresol` of every interface: 10^-9 s, timestamps are nanoseconds.
pub const TS_RESOL_NANOS: u8 = 9;

/// `snaplen` of every interface description block: 0, no limit (the
/// datapath decides how much of a packet is captured).
pub const SNAPLEN: u32 = 0;

/// Longest string option written, in bytes: an option's length field is 16
/// bits, longer text is cut (at a character boundary).
const MAX_OPTION_BYTES: usize = 65_000;

/// Encoder of one pcapng stream: remembers which interface id each
/// (ifindex, direction) got in the current section.
#[derive(Debug, Default)]
pub struct PcapngEncoder {
    interfaces: HashMap<(u32, Dir), u32>,
    /// The last policy list and its comment text.
    comment: Option<(Arc<[String]>, Vec<u8>)>,
}

impl PcapngEncoder {
    /// A fresh encoder: no section started, no interface described.
    pub fn new() -> Self {
        Self::default()
    }

    /// Section header block bytes (write once at the start of a file or
    /// stream). Little-endian, version 1.0, unspecified section length,
    /// `shb_userappl` = `"vtap"`.
    ///
    /// Interface ids are per section: calling this again starts a new
    /// section, and the next packets describe their interfaces again from
    /// id 0.
    pub fn header(&mut self) -> Vec<u8> {
        self.interfaces.clear();
        let shb = SectionHeaderBlock {
            endianness: Endianness::Little,
            major_version: 1,
            minor_version: 0,
            section_length: -1,
            options: vec![SectionHeaderOption::UserApplication(Cow::Borrowed(
                USER_APPLICATION,
            ))],
        };
        let mut out = Vec::with_capacity(64);
        put(&Block::SectionHeader(shb), &mut out);
        out
    }

    /// Appends `pkt` to `out`: first an interface description block if this
    /// encoder has not described `pkt.iface` (ifindex, direction) in the
    /// current section yet (`if_name` `"<ifname>:<dir>"`, e.g.
    /// `"tap0:ingress"`; `if_description` `"vtap tap <ifname> ifindex <n>
    /// direction <dir>"`; Ethernet; snaplen [`SNAPLEN`]; `if_tsresol` 9), then
    /// an enhanced packet block: `ts_ns` as the timestamp, `data` as the
    /// captured bytes, `orig_len` as the original length (raised to the
    /// captured length if smaller, which a valid file never has), and an
    /// `opt_comment` `"policy: a, b"` naming the packet's policies (none when
    /// the list is empty).
    pub fn encode(&mut self, pkt: &Packet, out: &mut Vec<u8>) {
        let mut trailer = Vec::new();
        self.encode_parts(pkt, out, &mut trailer);
        out.extend_from_slice(&pkt.data);
        out.extend_from_slice(&trailer);
    }

    /// [`PcapngEncoder::encode`] in three parts, so a writer can send the
    /// packet's bytes without copying them into the block first: appends to
    /// `prefix` what comes before the data (an interface description block
    /// if needed, the enhanced packet block's header) and to `trailer` what
    /// comes after it (padding, options, the block's total length).
    pub fn encode_parts(&mut self, pkt: &Packet, prefix: &mut Vec<u8>, trailer: &mut Vec<u8>) {
        let out = prefix;
        let next_id = u32::try_from(self.interfaces.len()).unwrap_or(u32::MAX);
        let key = (pkt.iface.ifindex, pkt.iface.dir);
        let interface_id = match self.interfaces.get(&key) {
            Some(&id) => id,
            None => {
                put(&Block::InterfaceDescription(idb(&pkt.iface)), out);
                self.interfaces.insert(key, next_id);
                next_id
            }
        };
        let caplen = u32::try_from(pkt.data.len()).unwrap_or(u32::MAX);
        // Consecutive packets mostly share their policy list (the same Arc):
        // the comment option is encoded once per list.
        if !pkt.policies.is_empty() {
            let cached = matches!(&self.comment, Some((p, _)) if Arc::ptr_eq(p, &pkt.policies));
            if !cached {
                let c = truncate(format!("policy: {}", pkt.policies.join(", ")));
                self.comment = Some((pkt.policies.clone(), comment_option(&c)));
            }
        }
        let opts: &[u8] = match &self.comment {
            Some((_, o)) if !pkt.policies.is_empty() => o,
            _ => &[],
        };
        // The enhanced packet block, written field by field (the hot path:
        // no allocation, one copy of the data). Layout (little-endian):
        // type 6, total length, interface id, timestamp high and low (in
        // the interface's 1e-9 resolution), captured and original length,
        // data padded to 4, options (comment, end of options), total length.
        let data_len = pkt.data.len();
        let padded = data_len.div_ceil(4) * 4;
        let total = 32 + padded + opts.len();
        let total32 = u32::try_from(total).unwrap_or(u32::MAX);
        out.reserve(28);
        out.extend_from_slice(&6u32.to_le_bytes());
        out.extend_from_slice(&total32.to_le_bytes());
        out.extend_from_slice(&interface_id.to_le_bytes());
        out.extend_from_slice(&((pkt.ts_ns >> 32) as u32).to_le_bytes());
        out.extend_from_slice(&(pkt.ts_ns as u32).to_le_bytes());
        out.extend_from_slice(&caplen.to_le_bytes());
        out.extend_from_slice(&pkt.orig_len.max(caplen).to_le_bytes());
        trailer.resize(trailer.len() + (padded - data_len), 0);
        trailer.extend_from_slice(opts);
        trailer.extend_from_slice(&total32.to_le_bytes());
    }
}

/// The interface description block of one tap and direction.
fn idb(iface: &IfaceDir) -> InterfaceDescriptionBlock<'static> {
    let dir = iface.dir.as_str();
    InterfaceDescriptionBlock {
        linktype: DataLink::ETHERNET,
        snaplen: SNAPLEN,
        options: vec![
            InterfaceDescriptionOption::IfName(Cow::Owned(truncate(format!(
                "{}:{dir}",
                iface.ifname
            )))),
            InterfaceDescriptionOption::IfDescription(Cow::Owned(truncate(format!(
                "vtap tap {} ifindex {} direction {dir}",
                iface.ifname, iface.ifindex
            )))),
            InterfaceDescriptionOption::IfTsResol(TS_RESOL_NANOS),
        ],
    }
}

/// Cuts `s` to at most [`MAX_OPTION_BYTES`] bytes at a character boundary.
fn truncate(mut s: String) -> String {
    if s.len() > MAX_OPTION_BYTES {
        let mut end = MAX_OPTION_BYTES;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// Serialises one block, little-endian, onto `out`.
/// An `opt_comment` option with `text`, followed by `opt_endofopt`.
fn comment_option(text: &str) -> Vec<u8> {
    let b = text.as_bytes();
    let mut o = Vec::with_capacity(8 + b.len() + 4);
    o.extend_from_slice(&1u16.to_le_bytes());
    o.extend_from_slice(&(b.len() as u16).to_le_bytes());
    o.extend_from_slice(b);
    o.resize(o.len() + (b.len().div_ceil(4) * 4 - b.len()), 0);
    o.extend_from_slice(&[0, 0, 0, 0]);
    o
}

fn put(block: &Block<'_>, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail.
    let _ = block.write_to::<LittleEndian, _>(out);
}

#[cfg(test)]
mod tests {
    use pcap_file::pcapng::PcapNgReader;
    use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketOption;

    use super::*;

    fn pkt(
        ts_ns: u64,
        ifindex: u32,
        ifname: &str,
        dir: Dir,
        data: &[u8],
        orig_len: u32,
        policies: &[&str],
    ) -> Packet {
        Packet {
            ts_ns,
            orig_len,
            data: data.to_vec().into(),
            iface: IfaceDir {
                ifindex,
                ifname: ifname.into(),
                dir,
            },
            policies: policies
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .into(),
        }
    }

    /// Everything one EPB says, with its interface resolved.
    #[derive(Debug, PartialEq)]
    struct Decoded {
        interface_id: u32,
        if_name: String,
        if_description: String,
        ts_ns: u128,
        caplen: usize,
        orig_len: u32,
        data: Vec<u8>,
        comments: Vec<String>,
    }

    fn idb_str(idb: &InterfaceDescriptionBlock<'_>, name: bool) -> String {
        idb.options
            .iter()
            .find_map(|o| match o {
                InterfaceDescriptionOption::IfName(s) if name => Some(s.to_string()),
                InterfaceDescriptionOption::IfDescription(s) if !name => Some(s.to_string()),
                _ => None,
            })
            .expect("option present")
    }

    /// Parses a whole stream; checks the section header and every IDB's
    /// fixed fields on the way.
    fn decode(bytes: &[u8]) -> (Vec<InterfaceDescriptionBlock<'static>>, Vec<Decoded>) {
        let mut reader = PcapNgReader::new(bytes).expect("section header");
        let shb = reader.section().clone();
        assert_eq!(shb.endianness, Endianness::Little);
        assert_eq!((shb.major_version, shb.minor_version), (1, 0));
        assert_eq!(shb.section_length, -1);
        assert_eq!(
            shb.options,
            vec![SectionHeaderOption::UserApplication(Cow::Borrowed("vtap"))]
        );
        let mut packets = Vec::new();
        let mut idbs = Vec::new();
        while let Some(block) = reader.next_block() {
            match block.expect("valid block") {
                Block::InterfaceDescription(idb) => {
                    assert_eq!(idb.linktype, DataLink::ETHERNET);
                    assert_eq!(idb.snaplen, SNAPLEN);
                    assert!(
                        idb.options
                            .contains(&InterfaceDescriptionOption::IfTsResol(9))
                    );
                    idbs.push(idb.into_owned());
                }
                Block::EnhancedPacket(epb) => {
                    let idb = &idbs[epb.interface_id as usize];
                    packets.push(Decoded {
                        interface_id: epb.interface_id,
                        if_name: idb_str(idb, true),
                        if_description: idb_str(idb, false),
                        ts_ns: epb.timestamp.as_nanos(),
                        caplen: epb.data.len(),
                        orig_len: epb.original_len,
                        data: epb.data.to_vec(),
                        comments: epb
                            .options
                            .iter()
                            .map(|o| match o {
                                EnhancedPacketOption::Comment(c) => c.to_string(),
                                other => panic!("unexpected option {other:?}"),
                            })
                            .collect(),
                    });
                }
                other => panic!("unexpected block {other:?}"),
            }
        }
        assert_eq!(reader.interfaces().len(), idbs.len());
        (idbs, packets)
    }

    #[test]
    fn header_is_little_endian_shb() {
        let h = PcapngEncoder::new().header();
        // Block type 0x0A0D0D0A, then the byte-order magic as written LE.
        assert_eq!(&h[0..4], &[0x0A, 0x0D, 0x0D, 0x0A]);
        assert_eq!(&h[8..12], &[0x4D, 0x3C, 0x2B, 0x1A]);
        let len = u32::from_le_bytes(h[4..8].try_into().unwrap()) as usize;
        assert_eq!(len, h.len());
        assert_eq!(len % 4, 0);
        assert_eq!(&h[len - 4..], &h[4..8], "trailing length");
        let (idbs, packets) = decode(&h);
        assert!(idbs.is_empty() && packets.is_empty());
    }

    #[test]
    fn packets_on_two_interfaces_round_trip() {
        let mut enc = PcapngEncoder::new();
        let mut out = enc.header();
        // Timestamps that need both 32-bit halves and odd nanoseconds.
        let t0: u64 = 1_763_781_300_123_456_789;
        let input = [
            pkt(t0, 7, "tap0", Dir::Ingress, &[1, 2, 3, 4, 5], 60, &["web"]),
            pkt(
                t0 + 1,
                9,
                "tap1",
                Dir::Egress,
                &[0xaa; 64],
                1514,
                &["web", "db-audit"],
            ),
            pkt(
                t0 + 1_000_000_007,
                7,
                "tap0",
                Dir::Ingress,
                &[9; 3],
                3,
                &["a", "b", "c"],
            ),
            // Same ifindex, other direction: its own interface.
            pkt(
                u64::MAX,
                7,
                "tap0",
                Dir::Egress,
                &[0x42; 128],
                65_536,
                &["web"],
            ),
            pkt(0, 9, "tap1", Dir::Egress, &[], 0, &[]),
        ];
        for p in &input {
            enc.encode(p, &mut out);
        }
        let (idbs, packets) = decode(&out);
        assert_eq!(idbs.len(), 3);
        let names: Vec<_> = idbs.iter().map(|i| idb_str(i, true)).collect();
        assert_eq!(names, ["tap0:ingress", "tap1:egress", "tap0:egress"]);
        let want = |i: usize, id: u32, name: &str, desc: &str, comments: &[&str]| Decoded {
            interface_id: id,
            if_name: name.to_string(),
            if_description: desc.to_string(),
            ts_ns: u128::from(input[i].ts_ns),
            caplen: input[i].data.len(),
            orig_len: input[i].orig_len,
            data: input[i].data.to_vec(),
            comments: comments.iter().map(|c| c.to_string()).collect(),
        };
        let d0 = "vtap tap tap0 ifindex 7 direction ingress";
        let d1 = "vtap tap tap1 ifindex 9 direction egress";
        let d2 = "vtap tap tap0 ifindex 7 direction egress";
        assert_eq!(
            packets,
            vec![
                want(0, 0, "tap0:ingress", d0, &["policy: web"]),
                want(1, 1, "tap1:egress", d1, &["policy: web, db-audit"]),
                want(2, 0, "tap0:ingress", d0, &["policy: a, b, c"]),
                want(3, 2, "tap0:egress", d2, &["policy: web"]),
                want(4, 1, "tap1:egress", d1, &[]),
            ]
        );
        assert_eq!(packets[3].ts_ns, u128::from(u64::MAX));
    }

    #[test]
    fn idb_is_written_once_per_interface() {
        let mut enc = PcapngEncoder::new();
        let p = pkt(5, 1, "eth0", Dir::Ingress, &[0; 14], 14, &["p"]);
        let mut first = Vec::new();
        enc.encode(&p, &mut first);
        let mut second = Vec::new();
        enc.encode(&p, &mut second);
        assert!(first.len() > second.len());
        // The second encoding is exactly one EPB.
        assert_eq!(&second[0..4], &6u32.to_le_bytes());
        assert_eq!(
            u32::from_le_bytes(second[4..8].try_into().unwrap()) as usize,
            second.len()
        );
        // The first one starts with an IDB.
        assert_eq!(&first[0..4], &1u32.to_le_bytes());
        assert!(first.ends_with(&second));
    }

    #[test]
    fn fresh_encoders_number_interfaces_independently() {
        let a = pkt(10, 3, "tap3", Dir::Ingress, &[1; 20], 20, &["x"]);
        let b = pkt(20, 4, "tap4", Dir::Egress, &[2; 30], 30, &["y"]);

        let mut enc1 = PcapngEncoder::new();
        let mut file1 = enc1.header();
        enc1.encode(&a, &mut file1);
        enc1.encode(&b, &mut file1);

        // A second stream that sees only `b`: b is its interface 0, with its
        // own IDB, whatever the first encoder did.
        let mut enc2 = PcapngEncoder::new();
        let mut file2 = enc2.header();
        enc2.encode(&b, &mut file2);
        enc1.encode(&a, &mut file1);

        let (idbs1, p1) = decode(&file1);
        let (idbs2, p2) = decode(&file2);
        assert_eq!(idbs1.len(), 2);
        assert_eq!(idbs2.len(), 1);
        assert_eq!(
            p1.iter()
                .map(|p| (p.interface_id, p.if_name.as_str()))
                .collect::<Vec<_>>(),
            [(0, "tap3:ingress"), (1, "tap4:egress"), (0, "tap3:ingress")]
        );
        assert_eq!(
            p2.iter()
                .map(|p| (p.interface_id, p.if_name.as_str(), p.ts_ns))
                .collect::<Vec<_>>(),
            [(0, "tap4:egress", 20)]
        );

        // Concatenated (two sections in one stream) both still parse: the
        // second section re-describes its interfaces.
        let mut both = file1.clone();
        both.extend_from_slice(&file2);
        let mut reader = PcapNgReader::new(&both[..]).unwrap();
        let mut seen = Vec::new();
        while let Some(block) = reader.next_block() {
            if let Block::EnhancedPacket(epb) = block.unwrap().into_owned() {
                let idb = reader.packet_interface(&epb).expect("known interface");
                seen.push(idb_str(idb, true));
            }
        }
        assert_eq!(
            seen,
            ["tap3:ingress", "tap4:egress", "tap3:ingress", "tap4:egress"]
        );
    }

    #[test]
    fn header_again_starts_a_new_section() {
        let mut enc = PcapngEncoder::new();
        let a = pkt(1, 3, "tap3", Dir::Ingress, &[1; 4], 4, &["x"]);
        let b = pkt(2, 4, "tap4", Dir::Ingress, &[1; 4], 4, &["x"]);
        let mut out = enc.header();
        enc.encode(&a, &mut out);
        let mut out2 = enc.header();
        enc.encode(&b, &mut out2);
        enc.encode(&a, &mut out2);
        let (_, packets) = decode(&out2);
        assert_eq!(
            packets
                .iter()
                .map(|p| (p.interface_id, p.if_name.as_str()))
                .collect::<Vec<_>>(),
            [(0, "tap4:ingress"), (1, "tap3:ingress")]
        );
    }

    #[test]
    fn odd_lengths_are_padded_and_orig_len_never_below_caplen() {
        let mut enc = PcapngEncoder::new();
        let mut out = enc.header();
        for len in 0..9usize {
            let data: Vec<u8> = (0..len as u8).collect();
            // orig_len 1 < caplen for len > 1: raised to caplen.
            enc.encode(
                &pkt(len as u64, 1, "t", Dir::Egress, &data, 1, &["p"]),
                &mut out,
            );
            assert_eq!(out.len() % 4, 0);
        }
        let (_, packets) = decode(&out);
        for (len, p) in packets.iter().enumerate() {
            assert_eq!(p.caplen, len);
            assert_eq!(p.data, (0..len as u8).collect::<Vec<_>>());
            assert_eq!(p.orig_len, (len as u32).max(1));
        }
    }

    #[test]
    fn huge_comment_is_cut_and_stays_valid() {
        let many: Vec<String> = (0..20_000).map(|i| format!("policy-é{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let mut enc = PcapngEncoder::new();
        let mut out = enc.header();
        enc.encode(&pkt(1, 1, "t", Dir::Ingress, &[1, 2], 2, &many), &mut out);
        let (_, packets) = decode(&out);
        let comment = &packets[0].comments[0];
        assert!(comment.starts_with("policy: policy-é0, policy-é1, "));
        assert!(comment.len() <= MAX_OPTION_BYTES);
        assert!(comment.len() > MAX_OPTION_BYTES - 4);
    }
}
