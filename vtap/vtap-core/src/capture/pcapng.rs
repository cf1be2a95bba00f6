//! pcapng encoding of captured packets (little-endian, nanosecond timestamps).
//!
//! Encoding is split along what depends on the output:
//! - [`CaptureEncoder`], one per capture (used by the ring reader), turns
//!   each packet into an enhanced packet block, once, into a [`BatchBuf`].
//!   Interface ids are the capture's: each (ifindex, direction) gets the
//!   next id the first time the capture sees it, and keeps it.
//! - [`PcapngEncoder`], one per output (a file or a live subscriber),
//!   starts a section ([`PcapngEncoder::header`]) and writes the interface
//!   description blocks of the capture's interfaces that section has not
//!   described yet ([`PcapngEncoder::describe`]), in id order, before the
//!   blocks that use them; the blocks themselves are written as they are.
//!
//! Section headers and interface blocks are built and serialised with the
//! `pcap-file` crate; the enhanced packet block, the hot path, field by
//! field.

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

use super::{Batch, BlockRef, IfaceDir, Packet};

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

/// Bytes of an enhanced packet block besides its data and options.
const EPB_OVERHEAD: usize = 32;

/// The writer of one pcapng output (a file or a live stream): how many of
/// the capture's interfaces its current section has described.
#[derive(Debug, Default)]
pub struct PcapngEncoder {
    described: usize,
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
    /// Interface descriptions are per section: calling this again starts a
    /// new section, which describes the interfaces again from id 0.
    pub fn header(&mut self) -> Vec<u8> {
        self.described = 0;
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

    /// Appends to `out` an interface description block for each interface
    /// of `ifaces` (a capture's, in id order) this section has not
    /// described yet: `if_name` `"<ifname>:<dir>"`, e.g. `"tap0:ingress"`;
    /// `if_description` `"vtap tap <ifname> ifindex <n> direction <dir>"`;
    /// Ethernet; snaplen [`SNAPLEN`]; `if_tsresol` 9.
    pub fn describe(&mut self, ifaces: &[IfaceDir], out: &mut Vec<u8>) {
        for iface in ifaces.iter().skip(self.described) {
            put(&Block::InterfaceDescription(idb(iface)), out);
        }
        self.described = self.described.max(ifaces.len());
    }

    /// Appends the interface blocks `batch` needs and the blocks of its
    /// packets `range`.
    pub fn encode_batch(
        &mut self,
        batch: &Batch,
        range: std::ops::Range<usize>,
        out: &mut Vec<u8>,
    ) {
        self.describe(&batch.ifaces, out);
        out.extend_from_slice(batch.blocks_of(range));
    }
}

/// Enhanced packet blocks being collected for one batch of a capture.
#[derive(Debug, Default)]
pub struct BatchBuf {
    /// The blocks, back to back.
    pub blocks: Vec<u8>,
    /// Per packet, the end of its block and its caplen.
    pub index: Vec<BlockRef>,
    /// Timestamp of the last packet pushed.
    pub last_ts_ns: u64,
}

impl BatchBuf {
    /// An empty buffer with room for `bytes` of blocks and `packets` packets.
    pub fn with_capacity(bytes: usize, packets: usize) -> Self {
        BatchBuf {
            blocks: Vec::with_capacity(bytes),
            index: Vec::with_capacity(packets),
            last_ts_ns: 0,
        }
    }

    /// Packets pushed.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Nothing pushed.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Appends one enhanced packet block: interface `interface_id`, `ts_ns`
    /// as the timestamp, `data` as the captured bytes, `orig_len` as the
    /// original length (raised to the captured length if smaller, which a
    /// valid file never has), then `options` (as [`policy_comment`] encodes
    /// them, or empty).
    pub fn push(
        &mut self,
        interface_id: u32,
        ts_ns: u64,
        orig_len: u32,
        data: &[u8],
        options: &[u8],
    ) {
        // Layout (little-endian): type 6, total length, interface id,
        // timestamp high and low (in the interface's 1e-9 resolution),
        // captured and original length, data padded to 4, options, total
        // length.
        let data_len = data.len();
        let padded = data_len.div_ceil(4) * 4;
        let total = EPB_OVERHEAD + padded + options.len();
        let total32 = u32::try_from(total).unwrap_or(u32::MAX);
        let caplen = u32::try_from(data_len).unwrap_or(u32::MAX);
        let out = &mut self.blocks;
        out.reserve(total);
        let mut head = [0u8; 28];
        for (i, v) in [
            6u32,
            total32,
            interface_id,
            (ts_ns >> 32) as u32,
            ts_ns as u32,
            caplen,
            orig_len.max(caplen),
        ]
        .into_iter()
        .enumerate()
        {
            head[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&head);
        out.extend_from_slice(data);
        out.extend_from_slice(&[0u8; 3][..padded - data_len]);
        out.extend_from_slice(options);
        out.extend_from_slice(&total32.to_le_bytes());
        self.index.push(BlockRef {
            end: u32::try_from(out.len()).unwrap_or(u32::MAX),
            caplen,
        });
        self.last_ts_ns = ts_ns;
    }

    /// The batch, for delivery.
    pub fn finish(mut self, first_seq: u64, ifaces: Arc<[IfaceDir]>) -> Batch {
        // A small batch does not keep a whole drain's worth of memory
        // while it waits in queues.
        if self.blocks.capacity() - self.blocks.len() > 64 << 10 {
            self.blocks.shrink_to_fit();
        }
        Batch {
            first_seq,
            ifaces,
            blocks: self.blocks.into(),
            index: self.index,
            last_ts_ns: self.last_ts_ns,
        }
    }
}

/// The encoding state of one capture: its interfaces, by id.
#[derive(Debug, Default)]
pub struct CaptureEncoder {
    ids: HashMap<(u32, Dir), u32>,
    /// The last lookup (consecutive packets mostly share their interface).
    last: Option<((u32, Dir), u32)>,
    /// The interfaces in id order, shared with the batches (rebuilt when
    /// one is added).
    ifaces: Arc<[IfaceDir]>,
    /// The last policy list seen by [`CaptureEncoder::push_packet`] and its
    /// option bytes.
    comment: Option<(Arc<[String]>, Vec<u8>)>,
}

impl CaptureEncoder {
    /// No interfaces yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The id of (ifindex, dir), assigning the next one (named by `name`)
    /// the first time.
    pub fn interface_id(&mut self, ifindex: u32, dir: Dir, name: impl FnOnce() -> Arc<str>) -> u32 {
        let key = (ifindex, dir);
        if let Some((k, id)) = self.last
            && k == key
        {
            return id;
        }
        let id = match self.ids.get(&key) {
            Some(&id) => id,
            None => {
                let id = u32::try_from(self.ifaces.len()).unwrap_or(u32::MAX);
                let mut all = self.ifaces.to_vec();
                all.push(IfaceDir {
                    ifindex,
                    ifname: name(),
                    dir,
                });
                self.ifaces = all.into();
                self.ids.insert(key, id);
                id
            }
        };
        self.last = Some((key, id));
        id
    }

    /// The capture's interfaces so far, in id order.
    pub fn ifaces(&self) -> Arc<[IfaceDir]> {
        self.ifaces.clone()
    }

    /// Encodes `pkt` into `out` (its interface keeps or gets its id; the
    /// comment names its policies).
    pub fn push_packet(&mut self, out: &mut BatchBuf, pkt: &Packet) {
        let id = self.interface_id(pkt.iface.ifindex, pkt.iface.dir, || {
            pkt.iface.ifname.clone()
        });
        let cached = matches!(&self.comment, Some((p, _)) if Arc::ptr_eq(p, &pkt.policies));
        if !cached {
            self.comment = Some((pkt.policies.clone(), policy_comment(&pkt.policies)));
        }
        let opts = self.comment.as_ref().map_or(&[][..], |(_, o)| o);
        out.push(id, pkt.ts_ns, pkt.orig_len, &pkt.data, opts);
    }
}

/// The options of a packet sent by `policies`: an `opt_comment` `"policy:
/// a, b"` and the end of options; nothing for an empty list.
pub fn policy_comment<S: AsRef<str>>(policies: &[S]) -> Vec<u8> {
    if policies.is_empty() {
        return Vec::new();
    }
    let names: Vec<&str> = policies.iter().map(AsRef::as_ref).collect();
    comment_option(&truncate(format!("policy: {}", names.join(", "))))
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

    /// One capture's packets in one batch, written as one stream.
    fn encode_all(input: &[Packet]) -> Vec<u8> {
        let mut cap = CaptureEncoder::new();
        let mut buf = BatchBuf::default();
        for p in input {
            cap.push_packet(&mut buf, p);
        }
        let b = buf.finish(0, cap.ifaces());
        assert_eq!(b.len(), input.len());
        let mut enc = PcapngEncoder::new();
        let mut out = enc.header();
        enc.encode_batch(&b, 0..b.len(), &mut out);
        out
    }

    #[test]
    fn packets_on_two_interfaces_round_trip() {
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
        let out = encode_all(&input);
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
    fn a_section_describes_each_interface_once() {
        let mut cap = CaptureEncoder::new();
        let mut buf = BatchBuf::default();
        cap.push_packet(
            &mut buf,
            &pkt(5, 1, "eth0", Dir::Ingress, &[0; 14], 14, &["p"]),
        );
        let b1 = buf.finish(0, cap.ifaces());
        let mut buf = BatchBuf::default();
        cap.push_packet(
            &mut buf,
            &pkt(5, 1, "eth0", Dir::Ingress, &[0; 14], 14, &["p"]),
        );
        let b2 = buf.finish(1, cap.ifaces());
        let mut enc = PcapngEncoder::new();
        let mut first = Vec::new();
        enc.encode_batch(&b1, 0..1, &mut first);
        let mut second = Vec::new();
        enc.encode_batch(&b2, 0..1, &mut second);
        // The second is exactly one EPB.
        assert_eq!(&second[0..4], &6u32.to_le_bytes());
        assert_eq!(
            u32::from_le_bytes(second[4..8].try_into().unwrap()) as usize,
            second.len()
        );
        // The first one starts with an IDB.
        assert_eq!(&first[0..4], &1u32.to_le_bytes());
        assert!(first.len() > second.len());
        assert!(first.ends_with(&second));
        // A new section describes it again.
        let mut third = enc.header();
        enc.encode_batch(&b2, 0..1, &mut third);
        let (idbs, packets) = decode(&third);
        assert_eq!((idbs.len(), packets.len()), (1, 1));
    }

    #[test]
    fn interface_ids_are_the_captures_in_every_output() {
        let a = pkt(10, 3, "tap3", Dir::Ingress, &[1; 20], 20, &["x"]);
        let b = pkt(20, 4, "tap4", Dir::Egress, &[2; 30], 30, &["y"]);
        let mut cap = CaptureEncoder::new();
        let mut buf = BatchBuf::default();
        cap.push_packet(&mut buf, &a);
        cap.push_packet(&mut buf, &b);
        let b1 = buf.finish(0, cap.ifaces());
        let mut buf = BatchBuf::default();
        cap.push_packet(&mut buf, &b);
        let b2 = buf.finish(2, cap.ifaces());

        // A file that saw both batches, and a stream that joined for the
        // second: b is interface 1 in both, and the stream describes
        // interface 0 too so the ids resolve.
        let mut enc1 = PcapngEncoder::new();
        let mut file1 = enc1.header();
        enc1.encode_batch(&b1, 0..2, &mut file1);
        enc1.encode_batch(&b2, 0..1, &mut file1);
        let mut enc2 = PcapngEncoder::new();
        let mut file2 = enc2.header();
        enc2.encode_batch(&b2, 0..1, &mut file2);

        let (idbs1, p1) = decode(&file1);
        let (idbs2, p2) = decode(&file2);
        assert_eq!(idbs1.len(), 2);
        assert_eq!(idbs2.len(), 2);
        assert_eq!(
            p1.iter()
                .map(|p| (p.interface_id, p.if_name.as_str()))
                .collect::<Vec<_>>(),
            [(0, "tap3:ingress"), (1, "tap4:egress"), (1, "tap4:egress")]
        );
        assert_eq!(
            p2.iter()
                .map(|p| (p.interface_id, p.if_name.as_str(), p.ts_ns))
                .collect::<Vec<_>>(),
            [(1, "tap4:egress", 20)]
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
            ["tap3:ingress", "tap4:egress", "tap4:egress", "tap4:egress"]
        );
    }

    #[test]
    fn batch_ranges_are_whole_blocks() {
        let input: Vec<Packet> = (0..5u8)
            .map(|i| {
                pkt(
                    i as u64,
                    1,
                    "t",
                    Dir::Egress,
                    &vec![i; i as usize * 3],
                    100,
                    &["p"],
                )
            })
            .collect();
        let mut cap = CaptureEncoder::new();
        let mut buf = BatchBuf::default();
        for p in &input {
            cap.push_packet(&mut buf, p);
        }
        let b = buf.finish(0, cap.ifaces());
        assert_eq!(b.caplen_bytes(), (0..5).map(|i| i * 3).sum::<u64>());
        assert_eq!(b.last_ts_ns, 4);
        for (from, to) in [(0, 5), (1, 3), (4, 5), (2, 2)] {
            let mut enc = PcapngEncoder::new();
            let mut out = enc.header();
            enc.encode_batch(&b, from..to, &mut out);
            let (_, packets) = decode(&out);
            let data: Vec<Vec<u8>> = packets.into_iter().map(|p| p.data).collect();
            let want: Vec<Vec<u8>> = input[from..to].iter().map(|p| p.data.to_vec()).collect();
            assert_eq!(data, want, "{from}..{to}");
        }
    }

    #[test]
    fn odd_lengths_are_padded_and_orig_len_never_below_caplen() {
        // orig_len 1 < caplen for len > 1: raised to caplen.
        let input: Vec<Packet> = (0..9usize)
            .map(|len| {
                let data: Vec<u8> = (0..len as u8).collect();
                pkt(len as u64, 1, "t", Dir::Egress, &data, 1, &["p"])
            })
            .collect();
        let out = encode_all(&input);
        assert_eq!(out.len() % 4, 0);
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
        let out = encode_all(&[pkt(1, 1, "t", Dir::Ingress, &[1, 2], 2, &many)]);
        let (_, packets) = decode(&out);
        let comment = &packets[0].comments[0];
        assert!(comment.starts_with("policy: policy-é0, policy-é1, "));
        assert!(comment.len() <= MAX_OPTION_BYTES);
        assert!(comment.len() > MAX_OPTION_BYTES - 4);
    }
}
