//! BTF-driven decoding of map keys and values into JSON.
//!
//! A probe is a BPF object compiled with `-g`, so its `.BTF` section
//! describes every map key and value: [`Btf`] parses that section (from the
//! blob or straight from the ELF object) and finds each map's key and value
//! types in the `.maps` definitions ([`Btf::map`]). [`Layout::new`] then
//! compiles one type, once, into a small decode plan — offsets, widths,
//! signedness and enum names resolved in advance, typedefs and qualifiers
//! gone — so decoding a map of a million entries never walks BTF again.
//!
//! What a layout turns into JSON:
//! - structs → objects (members of anonymous struct/union members are lifted
//!   into the parent, as C lets you name them; unnamed bitfield padding is
//!   skipped), unions → objects with *every* member decoded;
//! - integers of 1, 2, 4, 8 and 16 bytes, signed or not → numbers (128-bit
//!   values that do not fit in 64 bits → decimal strings); `_Bool` → bool;
//!   pointers → numbers; `float`/`double` → numbers;
//! - enums (32 and 64 bit, signed or not) → the enumerator's name, or the
//!   number when no enumerator has that value;
//! - bitfields, in both BTF encodings (`kind_flag` set: the member carries
//!   the bit size; unset: the member's type is an `INT` with fewer bits) →
//!   numbers (or enum names for enum bitfields);
//! - integers typed `__be16`/`__be32`/`__be64` hold network byte order and
//!   are shown by value (a `__be16` port 80 is `80`, a `__be32` address
//!   10.0.0.1 is `167772161`);
//! - arrays → arrays (nested for multi-dimensional ones); arrays of plain
//!   `char` → a string when the bytes before the first NUL are printable
//!   ASCII and there is a NUL, otherwise an array of numbers.
//!
//! [`Layout::decode`] builds a `serde_json::Value` (objects are serde_json
//! maps: without its `preserve_order` feature their keys come out sorted);
//! [`Layout::write_json`] writes the same JSON as text straight from the
//! bytes, members in declaration order and without a heap allocation per
//! member — the fast path for exporting whole maps.
//!
//! Labels: [`Layout::field`] resolves a member path (`"flow.daddr"`,
//! `"pairs[1].k"`) to a [`Field`] that formats its bytes as an IPv4/IPv6
//! address, a MAC, a decimal or hexadecimal number or an enum name
//! ([`LabelFormat`]). Per-CPU values: [`Layout::decode_per_cpu`] gives one
//! value per CPU, [`Layout::aggregate`] sums / averages / takes the minimum
//! or maximum of every integer and float field across CPUs.
//!
//! Malformed BTF (truncated, dangling type ids, cycles, members outside their
//! struct, absurd sizes) is an error, never a panic. Only BTF in the host's
//! byte order is accepted (the maps it describes hold host-order data).

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Arc;

use serde_json::{Map, Value};

const BTF_MAGIC: u16 = 0xeb9f;
/// Nesting limit for types (structs in arrays in structs …) and for chains
/// of typedefs/qualifiers: real programs stay far below; cyclic BTF hits it.
const MAX_DEPTH: usize = 64;
/// No map key or value is larger than this (the kernel caps values at
/// KMALLOC_MAX_SIZE; this is a sanity bound against absurd array sizes).
const MAX_TYPE_SIZE: u64 = 1 << 32;
/// Size of a pointer in a BPF object.
const PTR_SIZE: usize = 8;
/// Most plan nodes one layout may have: BTF declares struct sizes, it does
/// not derive them from members, so a hostile blob could otherwise describe
/// an exponentially large plan within a small size.
const MAX_NODES: usize = 1 << 20;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

const INT_SIGNED: u8 = 1;
const INT_CHAR: u8 = 2;
const INT_BOOL: u8 = 4;

/// Errors of BTF parsing, layout compilation, decoding and formatting.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The object is not an ELF file this module can read.
    #[error("not a readable BPF ELF object: {0}")]
    Elf(&'static str),
    /// The object has no `.BTF` section (compiled without `-g`?).
    #[error("the object has no .BTF section (compile it with -g)")]
    NoBtf,
    /// The BTF blob is malformed.
    #[error("malformed BTF: {0}")]
    Malformed(String),
    /// A type id that the BTF does not define.
    #[error("BTF type id {0} does not exist")]
    NoSuchType(u32),
    /// No map of that name in the `.maps` section.
    #[error("no map named {0:?} in the object's .maps section")]
    NoSuchMap(String),
    /// A type that cannot be decoded from map bytes.
    #[error("type {ty} cannot be decoded: {why}")]
    Unsupported {
        /// The type, as far as it could be named.
        ty: String,
        /// Why.
        why: String,
    },
    /// Types nest deeper than the limit (cyclic BTF).
    #[error("type {0} nests deeper than {MAX_DEPTH} levels (cyclic BTF?)")]
    TooDeep(u32),
    /// The bytes given are shorter than the layout.
    #[error("{got} bytes given, the layout needs {need}")]
    ShortBuffer {
        /// Bytes the layout reads.
        need: usize,
        /// Bytes given.
        got: usize,
    },
    /// A per-CPU value of the wrong length.
    #[error("per-CPU value of {got} bytes, expected {ncpus} CPUs × {stride} bytes")]
    PerCpuLength {
        /// Bytes given.
        got: usize,
        /// CPUs asked for.
        ncpus: usize,
        /// Bytes per CPU.
        stride: usize,
    },
    /// A field path that does not name a member of the layout.
    #[error("no field {path:?}: {why}")]
    NoSuchField {
        /// The path asked for.
        path: String,
        /// Where it went wrong.
        why: String,
    },
    /// A field cannot be formatted that way.
    #[error("field {path:?} cannot be formatted as {format}: {why}")]
    Format {
        /// The field.
        path: String,
        /// The format asked for.
        format: LabelFormat,
        /// Why.
        why: String,
    },
    /// An unknown label format or aggregation name.
    #[error("unknown {what} {name:?} (expected one of {expected})")]
    UnknownName {
        /// What kind of name.
        what: &'static str,
        /// The name given.
        name: String,
        /// The accepted names.
        expected: &'static str,
    },
}

type Result<T, E = BtfError> = std::result::Result<T, E>;

fn malformed(what: impl Into<String>) -> BtfError {
    BtfError::Malformed(what.into())
}

// ------------------------------------------------------------------ parsing

/// A parsed BTF blob (the `.BTF` section of a BPF object).
#[derive(Debug, Clone)]
pub struct Btf {
    /// Indexed by type id; `types[0]` is `void`.
    types: Vec<BtfType>,
    strings: Vec<u8>,
}

#[derive(Debug, Clone)]
struct BtfType {
    name_off: u32,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Void,
    Int {
        size: u32,
        encoding: u8,
        offset: u8,
        bits: u8,
    },
    Ptr(u32),
    Array {
        elem: u32,
        len: u32,
    },
    Record {
        size: u32,
        union: bool,
        members: Vec<RawMember>,
    },
    /// ENUM and ENUM64; values sign-extended when the enum is signed.
    Enum {
        size: u32,
        signed: bool,
        values: Vec<(u32, u64)>,
    },
    Fwd,
    Typedef(u32),
    /// const, volatile, restrict, type tag.
    Qualifier(u32),
    Func,
    FuncProto,
    Var(u32),
    Datasec(Vec<SecVar>),
    Float {
        size: u32,
    },
    DeclTag,
}

#[derive(Debug, Clone)]
struct RawMember {
    name_off: u32,
    ty: u32,
    bit_offset: u32,
    /// 0: not a bitfield (or the old encoding: see the member's INT type).
    bitfield_size: u32,
}

#[derive(Debug, Clone, Copy)]
struct SecVar {
    ty: u32,
}

fn ne_u16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn ne_u32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn ne_u64(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// Reads consecutive `u32`s of the type section.
struct Words<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Words<'_> {
    fn next(&mut self) -> Result<u32> {
        let v = ne_u32(self.data, self.pos)
            .ok_or_else(|| malformed(format!("type section truncated at byte {}", self.pos)))?;
        self.pos += 4;
        Ok(v)
    }
}

impl Btf {
    /// Parses a raw BTF blob (what the `.BTF` section holds).
    pub fn parse(data: &[u8]) -> Result<Btf> {
        let magic = ne_u16(data, 0).ok_or_else(|| malformed("shorter than its header"))?;
        if magic == BTF_MAGIC.swap_bytes() {
            return Err(malformed(
                "BTF of the other byte order than this host's; its maps cannot be decoded here",
            ));
        }
        if magic != BTF_MAGIC {
            return Err(malformed(format!("bad magic {magic:#06x}")));
        }
        if data.get(2) != Some(&1) {
            return Err(malformed(format!("unsupported version {:?}", data.get(2))));
        }
        let field = |off| ne_u32(data, off).ok_or_else(|| malformed("shorter than its header"));
        let hdr_len = field(4)? as usize;
        let (type_off, type_len) = (field(8)? as usize, field(12)? as usize);
        let (str_off, str_len) = (field(16)? as usize, field(20)? as usize);
        if hdr_len < 24 {
            return Err(malformed(format!("header length {hdr_len}")));
        }
        let section = |off: usize, len: usize, what: &str| {
            hdr_len
                .checked_add(off)
                .and_then(|start| Some(start..start.checked_add(len)?))
                .and_then(|r| data.get(r))
                .ok_or_else(|| malformed(format!("{what} section out of bounds")))
        };
        let type_data = section(type_off, type_len, "type")?;
        let strings = section(str_off, str_len, "string")?.to_vec();
        if !strings.is_empty() && (strings[0] != 0 || strings[strings.len() - 1] != 0) {
            return Err(malformed("string section not NUL-delimited"));
        }

        let mut types = vec![BtfType {
            name_off: 0,
            kind: Kind::Void,
        }];
        let mut w = Words {
            data: type_data,
            pos: 0,
        };
        while w.pos < type_data.len() {
            let id = types.len();
            let name_off = w.next()?;
            let info = w.next()?;
            let size_or_type = w.next()?;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            let kind = match (info >> 24) & 0x1f {
                KIND_INT => {
                    let enc = w.next()?;
                    let (encoding, offset, bits) = (
                        ((enc >> 24) & 0xf) as u8,
                        ((enc >> 16) & 0xff) as u8,
                        enc as u8,
                    );
                    if bits == 0 || offset as u32 + bits as u32 > size_or_type.saturating_mul(8) {
                        return Err(malformed(format!(
                            "INT type {id}: {bits} bits at offset {offset} in {size_or_type} bytes"
                        )));
                    }
                    Kind::Int {
                        size: size_or_type,
                        encoding,
                        offset,
                        bits,
                    }
                }
                KIND_PTR => Kind::Ptr(size_or_type),
                KIND_ARRAY => {
                    let elem = w.next()?;
                    let _index_type = w.next()?;
                    let len = w.next()?;
                    Kind::Array { elem, len }
                }
                k @ (KIND_STRUCT | KIND_UNION) => {
                    let mut members = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        let name_off = w.next()?;
                        let ty = w.next()?;
                        let off = w.next()?;
                        members.push(if kind_flag {
                            RawMember {
                                name_off,
                                ty,
                                bit_offset: off & 0xff_ffff,
                                bitfield_size: off >> 24,
                            }
                        } else {
                            RawMember {
                                name_off,
                                ty,
                                bit_offset: off,
                                bitfield_size: 0,
                            }
                        });
                    }
                    Kind::Record {
                        size: size_or_type,
                        union: k == KIND_UNION,
                        members,
                    }
                }
                KIND_ENUM => {
                    let mut values = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        let name = w.next()?;
                        let v = w.next()?;
                        let v = if kind_flag {
                            v as i32 as i64 as u64
                        } else {
                            v as u64
                        };
                        values.push((name, v));
                    }
                    Kind::Enum {
                        size: size_or_type,
                        signed: kind_flag,
                        values,
                    }
                }
                KIND_ENUM64 => {
                    let mut values = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        let name = w.next()?;
                        let lo = w.next()? as u64;
                        let hi = w.next()? as u64;
                        values.push((name, hi << 32 | lo));
                    }
                    Kind::Enum {
                        size: size_or_type,
                        signed: kind_flag,
                        values,
                    }
                }
                KIND_FWD => Kind::Fwd,
                KIND_TYPEDEF => Kind::Typedef(size_or_type),
                KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    Kind::Qualifier(size_or_type)
                }
                KIND_FUNC => Kind::Func,
                KIND_FUNC_PROTO => {
                    for _ in 0..vlen {
                        w.next()?;
                        w.next()?;
                    }
                    Kind::FuncProto
                }
                KIND_VAR => {
                    let _linkage = w.next()?;
                    Kind::Var(size_or_type)
                }
                KIND_DATASEC => {
                    let mut vars = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        let ty = w.next()?;
                        let _offset = w.next()?;
                        let _size = w.next()?;
                        vars.push(SecVar { ty });
                    }
                    Kind::Datasec(vars)
                }
                KIND_FLOAT => Kind::Float { size: size_or_type },
                KIND_DECL_TAG => {
                    let _component = w.next()?;
                    Kind::DeclTag
                }
                k => return Err(malformed(format!("type {id} has unknown kind {k}"))),
            };
            types.push(BtfType { name_off, kind });
        }
        let btf = Btf { types, strings };
        // Every name must resolve, so later lookups cannot fail on strings.
        for t in &btf.types {
            btf.str_at(t.name_off)?;
            if let Kind::Record { members, .. } = &t.kind {
                for m in members {
                    btf.str_at(m.name_off)?;
                }
            }
            if let Kind::Enum { values, .. } = &t.kind {
                for (n, _) in values {
                    btf.str_at(*n)?;
                }
            }
        }
        Ok(btf)
    }

    /// Parses the `.BTF` section of a BPF ELF object (64-bit, host byte
    /// order, as clang emits for `-target bpf` on this host).
    pub fn from_elf(elf: &[u8]) -> Result<Btf> {
        Btf::parse(elf_section(elf, ".BTF")?.ok_or(BtfError::NoBtf)?)
    }

    /// Number of types, `void` (id 0) included; valid ids are `0..len()`.
    pub fn len(&self) -> usize {
        self.types.len()
    }

    /// Whether the BTF defines no type besides `void`.
    pub fn is_empty(&self) -> bool {
        self.types.len() <= 1
    }

    fn str_at(&self, off: u32) -> Result<&str> {
        let rest = self
            .strings
            .get(off as usize..)
            .filter(|r| !r.is_empty() || off == 0)
            .ok_or_else(|| malformed(format!("string offset {off} out of bounds")))?;
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end])
            .map_err(|_| malformed(format!("string at offset {off} is not UTF-8")))
    }

    fn ty(&self, id: u32) -> Result<&BtfType> {
        self.types.get(id as usize).ok_or(BtfError::NoSuchType(id))
    }

    /// The name of a type (empty for anonymous types).
    pub fn type_name(&self, id: u32) -> Result<&str> {
        self.str_at(self.ty(id)?.name_off)
    }

    /// Ids of the types with this name (structs, typedefs, enums, …).
    pub fn ids_by_name(&self, name: &str) -> Vec<u32> {
        (0..self.types.len() as u32)
            .filter(|&id| self.type_name(id).is_ok_and(|n| n == name))
            .collect()
    }

    /// A readable name for errors: `struct foo`, `__u32`, `enum e`, `[4]`.
    pub fn describe(&self, id: u32) -> String {
        let Ok(t) = self.ty(id) else {
            return format!("#{id}");
        };
        let name = self.str_at(t.name_off).unwrap_or("");
        let kind = match &t.kind {
            Kind::Void => return "void".into(),
            Kind::Record { union: false, .. } => "struct ",
            Kind::Record { union: true, .. } => "union ",
            Kind::Enum { .. } => "enum ",
            Kind::Ptr(_) => "pointer",
            Kind::Array { .. } => "array",
            Kind::Fwd => "forward-declared ",
            Kind::Func | Kind::FuncProto => "function ",
            Kind::Var(_) => "variable ",
            Kind::Datasec(_) => "section ",
            _ => "",
        };
        if name.is_empty() {
            format!("{}(anonymous, id {id})", kind)
        } else {
            format!("{kind}{name}")
        }
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Result<u32> {
        let start = id;
        for _ in 0..MAX_DEPTH {
            match self.ty(id)?.kind {
                Kind::Typedef(t) | Kind::Qualifier(t) => id = t,
                _ => return Ok(id),
            }
        }
        Err(BtfError::TooDeep(start))
    }

    /// Like `resolve`, and tells whether a `__be16`/`__be32`/`__be64`
    /// typedef (a network-order integer) was on the way.
    fn resolve_noting_be(&self, mut id: u32) -> Result<(u32, bool)> {
        let start = id;
        let mut be = false;
        for _ in 0..MAX_DEPTH {
            let t = self.ty(id)?;
            match t.kind {
                Kind::Typedef(next) => {
                    be |= matches!(self.str_at(t.name_off)?, "__be16" | "__be32" | "__be64");
                    id = next;
                }
                Kind::Qualifier(next) => id = next,
                _ => return Ok((id, be)),
            }
        }
        Err(BtfError::TooDeep(start))
    }

    /// Follows qualifiers (not typedefs): `const char` is `char`, `__u8`
    /// stays `__u8`.
    fn strip_qualifiers(&self, mut id: u32) -> Result<u32> {
        let start = id;
        for _ in 0..MAX_DEPTH {
            match self.ty(id)?.kind {
                Kind::Qualifier(t) => id = t,
                _ => return Ok(id),
            }
        }
        Err(BtfError::TooDeep(start))
    }

    /// The size in bytes of a type as stored in a map.
    pub fn size_of(&self, id: u32) -> Result<usize> {
        self.size_at(id, 0)
    }

    fn size_at(&self, id: u32, depth: usize) -> Result<usize> {
        if depth > MAX_DEPTH {
            return Err(BtfError::TooDeep(id));
        }
        let rid = self.resolve(id)?;
        let size = match &self.ty(rid)?.kind {
            Kind::Int { size, .. }
            | Kind::Record { size, .. }
            | Kind::Enum { size, .. }
            | Kind::Float { size } => *size as u64,
            Kind::Ptr(_) => PTR_SIZE as u64,
            Kind::Array { elem, len } => {
                (self.size_at(*elem, depth + 1)? as u64).saturating_mul(*len as u64)
            }
            _ => {
                return Err(BtfError::Unsupported {
                    ty: self.describe(rid),
                    why: "it has no size".into(),
                });
            }
        };
        if size > MAX_TYPE_SIZE {
            return Err(BtfError::Unsupported {
                ty: self.describe(rid),
                why: format!("size {size} is absurd"),
            });
        }
        Ok(size as usize)
    }

    /// The maps declared in the `.maps` section, in declaration order.
    pub fn maps(&self) -> Result<Vec<MapDef>> {
        let Some(sec) = self.types.iter().find(|t| {
            matches!(t.kind, Kind::Datasec(_))
                && self.str_at(t.name_off).is_ok_and(|n| n == ".maps")
        }) else {
            return Ok(Vec::new());
        };
        let Kind::Datasec(vars) = &sec.kind else {
            return Ok(Vec::new());
        };
        vars.iter().map(|v| self.map_def(v.ty)).collect()
    }

    /// The definition of the map named `name` in the `.maps` section.
    pub fn map(&self, name: &str) -> Result<MapDef> {
        self.maps()?
            .into_iter()
            .find(|m| m.name == name)
            .ok_or_else(|| BtfError::NoSuchMap(name.to_string()))
    }

    fn map_def(&self, var_id: u32) -> Result<MapDef> {
        let var = self.ty(var_id)?;
        let Kind::Var(def_ty) = var.kind else {
            return Err(malformed(format!(".maps entry {var_id} is not a variable")));
        };
        let name = self.str_at(var.name_off)?.to_string();
        let def_id = self.resolve(def_ty)?;
        let Kind::Record { members, .. } = &self.ty(def_id)?.kind else {
            return Err(malformed(format!("map {name}: definition is not a struct")));
        };
        let mut def = MapDef {
            name,
            ..MapDef::default()
        };
        for m in members {
            // Every member is a pointer: `__uint(x, N)` is `int (*x)[N]`,
            // `__type(x, T)` is `T *x`.
            let Kind::Ptr(pointee) = self.ty(self.resolve(m.ty)?)?.kind else {
                continue;
            };
            let number = || -> Result<u32> {
                match self.ty(self.resolve(pointee)?)?.kind {
                    Kind::Array { len, .. } => Ok(len),
                    _ => Err(malformed(format!(
                        "map {}: member {} is not __uint()",
                        def.name,
                        self.str_at(m.name_off).unwrap_or("?")
                    ))),
                }
            };
            match self.str_at(m.name_off)? {
                "type" => def.map_type = Some(number()?),
                "max_entries" => def.max_entries = Some(number()?),
                "map_flags" => def.map_flags = Some(number()?),
                "key_size" => def.key_size = Some(number()?),
                "value_size" => def.value_size = Some(number()?),
                "key" => def.key_type = Some(pointee),
                "value" => def.value_type = Some(pointee),
                _ => {}
            }
        }
        Ok(def)
    }
}

/// The contents of the named section of a 64-bit ELF object in host byte
/// order; `Ok(None)` when there is no such section.
fn elf_section<'a>(elf: &'a [u8], name: &str) -> Result<Option<&'a [u8]>> {
    const SHT_NOBITS: u32 = 8;
    if elf.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err(BtfError::Elf("no ELF magic"));
    }
    if elf.get(4) != Some(&2) {
        return Err(BtfError::Elf("not a 64-bit ELF object"));
    }
    let host = if cfg!(target_endian = "little") { 1 } else { 2 };
    if elf.get(5) != Some(&host) {
        return Err(BtfError::Elf("ELF byte order differs from the host's"));
    }
    let bad = || BtfError::Elf("section headers out of bounds");
    let as_usize = |v: u64| usize::try_from(v).ok();
    let shoff = ne_u64(elf, 0x28).and_then(as_usize).ok_or_else(bad)?;
    let shentsize = ne_u16(elf, 0x3a).unwrap_or(0) as usize;
    if shentsize < 64 {
        return Err(BtfError::Elf("bad section header size"));
    }
    let header = |i: usize| -> Option<&[u8]> {
        let start = shoff.checked_add(i.checked_mul(shentsize)?)?;
        elf.get(start..start.checked_add(64)?)
    };
    let mut shnum = ne_u16(elf, 0x3c).ok_or_else(bad)? as usize;
    let mut shstrndx = ne_u16(elf, 0x3e).ok_or_else(bad)? as usize;
    if shnum == 0 && shoff != 0 {
        // More sections than fit in e_shnum: the count is in section 0.
        shnum = header(0)
            .and_then(|h| ne_u64(h, 32))
            .and_then(as_usize)
            .ok_or_else(bad)?;
    }
    if shstrndx == 0xffff {
        shstrndx = header(0).and_then(|h| ne_u32(h, 40)).ok_or_else(bad)? as usize;
    }
    let data_of = |h: &[u8]| -> Option<&'a [u8]> {
        if ne_u32(h, 4)? == SHT_NOBITS {
            return Some(&[]);
        }
        let off = as_usize(ne_u64(h, 24)?)?;
        let size = as_usize(ne_u64(h, 32)?)?;
        elf.get(off..off.checked_add(size)?)
    };
    let names = header(shstrndx)
        .and_then(data_of)
        .ok_or(BtfError::Elf("no section name table"))?;
    for i in 0..shnum {
        let h = header(i).ok_or_else(bad)?;
        let Some(rest) = ne_u32(h, 0).and_then(|n| names.get(n as usize..)) else {
            continue;
        };
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        if &rest[..end] == name.as_bytes() {
            return data_of(h)
                .map(Some)
                .ok_or(BtfError::Elf("section data out of bounds"));
        }
    }
    Ok(None)
}

// ------------------------------------------------------------ map definitions

/// A map as declared in the object's `.maps` section (`__uint(...)` and
/// `__type(...)` members; absent ones are `None`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapDef {
    /// The map's name (the variable's name).
    pub name: String,
    /// `BPF_MAP_TYPE_*`.
    pub map_type: Option<u32>,
    /// `max_entries`.
    pub max_entries: Option<u32>,
    /// `map_flags`.
    pub map_flags: Option<u32>,
    /// An explicit `key_size` (maps declared without a key type).
    pub key_size: Option<u32>,
    /// An explicit `value_size`.
    pub value_size: Option<u32>,
    /// BTF id of the key type (`__type(key, T)`).
    pub key_type: Option<u32>,
    /// BTF id of the value type (`__type(value, T)`).
    pub value_type: Option<u32>,
}

impl MapDef {
    /// The key's layout: from its BTF type, else opaque bytes of the
    /// declared `key_size`, else empty (queues and stacks have no key).
    pub fn key_layout(&self, btf: &Btf) -> Result<Layout> {
        match (self.key_type, self.key_size) {
            (Some(t), _) => Layout::new(btf, t),
            (None, size) => Ok(Layout::opaque(size.unwrap_or(0) as usize)),
        }
    }

    /// The value's layout: from its BTF type, else opaque bytes of the
    /// declared `value_size`.
    pub fn value_layout(&self, btf: &Btf) -> Result<Layout> {
        match (self.value_type, self.value_size) {
            (Some(t), _) => Layout::new(btf, t),
            (None, size) => Ok(Layout::opaque(size.unwrap_or(0) as usize)),
        }
    }
}

// ------------------------------------------------------------------ layouts

/// A type compiled into a decode plan: decodes any number of entries of
/// that type without looking at BTF again.
#[derive(Debug, Clone)]
pub struct Layout {
    size: usize,
    ty: String,
    root: Node,
}

/// How an integer leaf is shown.
#[derive(Debug, Clone)]
enum Show {
    Number,
    Bool,
    Pointer,
    Enum(Arc<Names>),
}

/// One step of a decode plan. Offsets are relative to the start of the
/// nearest enclosing array element (or of the whole layout).
#[derive(Debug, Clone)]
enum Node {
    Int {
        off: usize,
        size: u8,
        signed: bool,
        /// Stored in network byte order (`__be16`/`__be32`/`__be64`).
        be: bool,
        show: Show,
    },
    Bits {
        bit_off: usize,
        bits: u8,
        signed: bool,
        show: Show,
    },
    Float {
        off: usize,
        size: u8,
    },
    Chars {
        off: usize,
        len: usize,
        signed: bool,
    },
    Array {
        off: usize,
        stride: usize,
        len: usize,
        elem: Box<Node>,
    },
    Record {
        off: usize,
        size: usize,
        fields: Vec<(Key, Node)>,
        shape: Arc<Shape>,
    },
}

/// The JSON object of a record, prepared once: its keys with null values
/// (cloning it is cheaper than inserting key by key) and, in the object's
/// (sorted) key order, the index of the field that fills each slot.
#[derive(Debug)]
struct Shape {
    template: Map<String, Value>,
    order: Vec<usize>,
}

impl Shape {
    fn new(fields: &[(Key, Node)]) -> Shape {
        // The last of equally named fields wins, as with inserts.
        let mut last: Map<String, Value> = Map::new();
        for (i, (k, _)) in fields.iter().enumerate() {
            last.insert(k.name.clone(), Value::from(i));
        }
        let order = last
            .values()
            .map(|v| v.as_u64().unwrap_or(0) as usize)
            .collect();
        let template = last.into_iter().map(|(k, _)| (k, Value::Null)).collect();
        Shape { template, order }
    }
}

/// A member name, and the same already written as a JSON object key.
#[derive(Debug, Clone)]
struct Key {
    name: String,
    json: Box<str>,
}

impl Key {
    fn new(name: &str) -> Key {
        let mut json = String::with_capacity(name.len() + 3);
        write_str(name, &mut json);
        json.push(':');
        Key {
            name: name.to_string(),
            json: json.into(),
        }
    }
}

/// Enumerators sorted by value (the first name wins for duplicates).
#[derive(Debug)]
struct Names(Vec<(u64, String)>);

impl Names {
    fn get(&self, v: u64) -> Option<&str> {
        self.0
            .binary_search_by_key(&v, |(k, _)| *k)
            .ok()
            .map(|i| self.0[i].1.as_str())
    }
}

impl Layout {
    /// Compiles the type `type_id` of `btf` into a decode plan.
    pub fn new(btf: &Btf, type_id: u32) -> Result<Layout> {
        let size = btf.size_of(type_id)?;
        let mut c = Compiler {
            btf,
            names: HashMap::new(),
            budget: MAX_NODES,
        };
        let root = c.node(type_id, 0, 0)?;
        if root.end_bits() > size as u64 * 8 {
            return Err(malformed(format!(
                "{} extends beyond its size",
                btf.describe(type_id)
            )));
        }
        Ok(Layout {
            size,
            ty: btf.describe(type_id),
            root,
        })
    }

    /// A layout for `size` bytes without type information: decoded as an
    /// array of byte values.
    pub fn opaque(size: usize) -> Layout {
        Layout {
            size,
            ty: format!("{size} opaque bytes"),
            root: Node::Array {
                off: 0,
                stride: 1,
                len: size,
                elem: Box::new(Node::Int {
                    off: 0,
                    size: 1,
                    signed: false,
                    be: false,
                    show: Show::Number,
                }),
            },
        }
    }

    /// Size in bytes of one value of this layout.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The type the layout was compiled from, for messages.
    pub fn type_name(&self) -> &str {
        &self.ty
    }

    /// Decodes one value; `bytes` must be exactly [`Layout::size`] long.
    pub fn decode(&self, bytes: &[u8]) -> Result<Value> {
        if bytes.len() != self.size {
            return Err(BtfError::ShortBuffer {
                need: self.size,
                got: bytes.len(),
            });
        }
        self.root.decode(bytes, 0)
    }

    /// Writes one value as JSON text, straight from the bytes (no
    /// intermediate `Value`; struct members in declaration order). The text
    /// parses to exactly what [`Layout::decode`] returns. On error `out`
    /// holds a partial document.
    pub fn write_json(&self, bytes: &[u8], out: &mut String) -> Result<()> {
        if bytes.len() != self.size {
            return Err(BtfError::ShortBuffer {
                need: self.size,
                got: bytes.len(),
            });
        }
        self.root.write(bytes, 0, out)
    }

    /// Writes a per-CPU value as a JSON array with one value per CPU (what
    /// [`Layout::decode_per_cpu`] returns).
    pub fn write_json_per_cpu(&self, value: &[u8], ncpus: usize, out: &mut String) -> Result<()> {
        out.push('[');
        for (i, base) in self.cpu_bases(value, ncpus)?.into_iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            self.root.write(value, base, out)?;
        }
        out.push(']');
        Ok(())
    }

    /// Bytes per CPU in a per-CPU map value: the size rounded up to 8.
    pub fn per_cpu_stride(&self) -> usize {
        self.size.div_ceil(8) * 8
    }

    fn cpu_bases(&self, value: &[u8], ncpus: usize) -> Result<Vec<usize>> {
        let stride = self.per_cpu_stride();
        if ncpus == 0 || Some(value.len()) != stride.checked_mul(ncpus) {
            return Err(BtfError::PerCpuLength {
                got: value.len(),
                ncpus,
                stride,
            });
        }
        Ok((0..ncpus).map(|cpu| cpu * stride).collect())
    }

    /// Decodes a per-CPU value (`ncpus` slots of [`Layout::per_cpu_stride`]
    /// bytes): one JSON value per CPU.
    pub fn decode_per_cpu(&self, value: &[u8], ncpus: usize) -> Result<Vec<Value>> {
        self.cpu_bases(value, ncpus)?
            .into_iter()
            .map(|base| self.root.decode(value, base))
            .collect()
    }

    /// Decodes a per-CPU value into one JSON value where every integer and
    /// float field is aggregated across CPUs; enums, bools, pointers and
    /// strings are taken from CPU 0.
    pub fn aggregate(&self, value: &[u8], ncpus: usize, how: Aggregation) -> Result<Value> {
        let bases = self.cpu_bases(value, ncpus)?;
        self.root.aggregate(value, &bases, how)
    }

    /// Resolves a member path: names separated by dots, array indices in
    /// brackets (`"flow.daddr"`, `"pairs[1].k"`, `"[3]"`); `""` is the whole
    /// value. Members of anonymous structs/unions are named directly.
    pub fn field(&self, path: &str) -> Result<Field> {
        let no = |why: String| BtfError::NoSuchField {
            path: path.to_string(),
            why,
        };
        let mut node = self.root.clone();
        for seg in parse_path(path).map_err(no)? {
            node = match (seg, node) {
                (Seg::Name(n), Node::Record { fields, .. }) => fields
                    .into_iter()
                    .find(|(k, _)| k.name == n)
                    .map(|(_, node)| node)
                    .ok_or_else(|| no(format!("no member {n:?}")))?,
                (Seg::Name(n), _) => return Err(no(format!("{n:?}: not a struct or union"))),
                (
                    Seg::Index(i),
                    Node::Array {
                        off,
                        stride,
                        len,
                        elem,
                    },
                ) if i < len => elem.shifted(off + i * stride),
                (Seg::Index(i), Node::Chars { off, len, signed }) if i < len => Node::Int {
                    off: off + i,
                    size: 1,
                    signed,
                    be: false,
                    show: Show::Number,
                },
                (Seg::Index(i), _) => {
                    return Err(no(format!("[{i}]: not an array or out of bounds")));
                }
            };
        }
        Ok(Field {
            path: path.to_string(),
            node,
        })
    }
}

enum Seg {
    Name(String),
    Index(usize),
}

fn parse_path(path: &str) -> Result<Vec<Seg>, String> {
    let mut segs = Vec::new();
    if path.is_empty() {
        return Ok(segs);
    }
    for (i, part) in path.split('.').enumerate() {
        let (name, mut rest) = part.split_at(part.find('[').unwrap_or(part.len()));
        if !name.is_empty() {
            segs.push(Seg::Name(name.to_string()));
        } else if i > 0 || rest.is_empty() {
            return Err("empty member name".into());
        }
        while !rest.is_empty() {
            let close = rest.find(']').ok_or("unclosed '['")?;
            let idx = rest[1..close]
                .parse()
                .map_err(|_| format!("bad index {:?}", &rest[1..close]))?;
            segs.push(Seg::Index(idx));
            rest = &rest[close + 1..];
            if !rest.is_empty() && !rest.starts_with('[') {
                return Err(format!("unexpected {rest:?} after an index"));
            }
        }
    }
    Ok(segs)
}

struct Compiler<'a> {
    btf: &'a Btf,
    names: HashMap<u32, Arc<Names>>,
    /// Plan nodes still allowed (see [`MAX_NODES`]).
    budget: usize,
}

fn byte_off(bit_off: u64, btf: &Btf, id: u32) -> Result<usize> {
    if !bit_off.is_multiple_of(8) {
        return Err(BtfError::Unsupported {
            ty: btf.describe(id),
            why: format!("placed at bit {bit_off}, not on a byte boundary"),
        });
    }
    usize::try_from(bit_off / 8).map_err(|_| malformed("offset overflow"))
}

impl Compiler<'_> {
    fn names(&mut self, id: u32) -> Result<Arc<Names>> {
        if let Some(n) = self.names.get(&id) {
            return Ok(n.clone());
        }
        let &Kind::Enum {
            ref values,
            size,
            signed,
        } = &self.btf.ty(id)?.kind
        else {
            return Err(malformed(format!("type {id} is not an enum")));
        };
        // Unsigned enums compare as their stored width (an old BTF may say
        // 0xfffffffb for -5 in a one-byte enum).
        let width = if signed {
            u64::MAX
        } else {
            mask(size.saturating_mul(8)) as u64
        };
        let mut v = values
            .iter()
            .map(|(n, v)| Ok((*v & width, self.btf.str_at(*n)?.to_string())))
            .collect::<Result<Vec<_>>>()?;
        v.sort_by_key(|(k, _)| *k);
        v.dedup_by_key(|(k, _)| *k);
        let names = Arc::new(Names(v));
        self.names.insert(id, names.clone());
        Ok(names)
    }

    fn is_char(&self, elem: u32) -> Result<Option<bool>> {
        let id = self.btf.strip_qualifiers(elem)?;
        let t = self.btf.ty(id)?;
        Ok(match t.kind {
            Kind::Int {
                size: 1,
                encoding,
                bits: 8,
                ..
            } if encoding & INT_CHAR != 0 || self.btf.str_at(t.name_off)? == "char" => {
                Some(encoding & INT_SIGNED != 0)
            }
            _ => None,
        })
    }

    /// The plan for type `id` placed `bit_off` bits into the current base.
    fn node(&mut self, id: u32, bit_off: u64, depth: usize) -> Result<Node> {
        if depth > MAX_DEPTH {
            return Err(BtfError::TooDeep(id));
        }
        self.budget = self
            .budget
            .checked_sub(1)
            .ok_or_else(|| BtfError::Unsupported {
                ty: self.btf.describe(id),
                why: format!("its decode plan would exceed {MAX_NODES} steps"),
            })?;
        let btf = self.btf;
        let (rid, be) = btf.resolve_noting_be(id)?;
        let unsupported = |why: &str| BtfError::Unsupported {
            ty: btf.describe(rid),
            why: why.to_string(),
        };
        Ok(match &btf.ty(rid)?.kind {
            &Kind::Int {
                size,
                encoding,
                offset,
                bits,
            } => {
                let signed = encoding & INT_SIGNED != 0;
                if size.checked_mul(8) != Some(bits as u32) || offset != 0 {
                    // An INT narrower than its storage: a bitfield in the
                    // encoding without kind_flag.
                    let show = if encoding & INT_BOOL != 0 {
                        Show::Bool
                    } else {
                        Show::Number
                    };
                    return self.bits(rid, bit_off + offset as u64, bits as u32, signed, show);
                }
                if !matches!(size, 1 | 2 | 4 | 8 | 16) {
                    return Err(unsupported("integer size is not 1, 2, 4, 8 or 16 bytes"));
                }
                Node::Int {
                    off: byte_off(bit_off, btf, rid)?,
                    size: size as u8,
                    signed,
                    be: be && size > 1,
                    show: if encoding & INT_BOOL != 0 {
                        Show::Bool
                    } else {
                        Show::Number
                    },
                }
            }
            Kind::Ptr(_) => Node::Int {
                off: byte_off(bit_off, btf, rid)?,
                size: PTR_SIZE as u8,
                signed: false,
                be: false,
                show: Show::Pointer,
            },
            &Kind::Enum { size, signed, .. } => {
                if !matches!(size, 1 | 2 | 4 | 8) {
                    return Err(unsupported("enum size is not 1, 2, 4 or 8 bytes"));
                }
                Node::Int {
                    off: byte_off(bit_off, btf, rid)?,
                    size: size as u8,
                    signed,
                    be: false,
                    show: Show::Enum(self.names(rid)?),
                }
            }
            &Kind::Float { size } => {
                if !matches!(size, 4 | 8) {
                    return Err(unsupported("only 4- and 8-byte floats are decoded"));
                }
                Node::Float {
                    off: byte_off(bit_off, btf, rid)?,
                    size: size as u8,
                }
            }
            &Kind::Array { elem, len } => {
                let off = byte_off(bit_off, btf, rid)?;
                let stride = btf.size_at(elem, depth + 1)?;
                // Bounds the whole array (size_at of the array checks it).
                btf.size_at(rid, depth)?;
                // Zero-sized elements (empty GNU C structs) carry nothing:
                // do not produce billions of empty values for them.
                let len = if stride == 0 { 0 } else { len as usize };
                match self.is_char(elem)? {
                    Some(signed) => Node::Chars { off, len, signed },
                    None => Node::Array {
                        off,
                        stride,
                        len,
                        elem: Box::new(self.node(elem, 0, depth + 1)?),
                    },
                }
            }
            Kind::Record { size, members, .. } => {
                let off = byte_off(bit_off, btf, rid)?;
                let end = bit_off + *size as u64 * 8;
                let mut fields = Vec::with_capacity(members.len());
                for m in members {
                    let name = btf.str_at(m.name_off)?;
                    let at = bit_off + m.bit_offset as u64;
                    let node = if m.bitfield_size > 0 {
                        let mid = btf.resolve(m.ty)?;
                        match btf.ty(mid)?.kind {
                            Kind::Int { encoding, .. } => {
                                let show = if encoding & INT_BOOL != 0 {
                                    Show::Bool
                                } else {
                                    Show::Number
                                };
                                let signed = encoding & INT_SIGNED != 0;
                                self.bits(mid, at, m.bitfield_size, signed, show)?
                            }
                            Kind::Enum { signed, .. } => {
                                let show = Show::Enum(self.names(mid)?);
                                self.bits(mid, at, m.bitfield_size, signed, show)?
                            }
                            _ => return Err(unsupported("a bitfield of a non-integer type")),
                        }
                    } else {
                        self.node(m.ty, at, depth + 1)?
                    };
                    if node.end_bits() > end {
                        return Err(malformed(format!(
                            "member {name:?} of {} extends beyond its size",
                            btf.describe(rid)
                        )));
                    }
                    match (name, node) {
                        ("", Node::Record { fields: inner, .. }) => fields.extend(inner),
                        ("", _) => {} // unnamed bitfield padding
                        (name, node) => fields.push((Key::new(name), node)),
                    }
                }
                Node::Record {
                    off,
                    size: *size as usize,
                    shape: Arc::new(Shape::new(&fields)),
                    fields,
                }
            }
            Kind::Void => return Err(unsupported("void has no value")),
            Kind::Fwd => return Err(unsupported("the type is only forward-declared")),
            _ => return Err(unsupported("not a data type")),
        })
    }

    fn bits(&mut self, id: u32, bit_off: u64, bits: u32, signed: bool, show: Show) -> Result<Node> {
        if bits == 0 || bits > 64 {
            return Err(BtfError::Unsupported {
                ty: self.btf.describe(id),
                why: format!("bitfield of {bits} bits (1 to 64 are decoded)"),
            });
        }
        Ok(Node::Bits {
            bit_off: usize::try_from(bit_off).map_err(|_| malformed("offset overflow"))?,
            bits: bits as u8,
            signed,
            show,
        })
    }
}

// ------------------------------------------------------------------ decoding

/// An integer read from map bytes: its bits (zero-extended) and width.
#[derive(Debug, Clone, Copy)]
struct Scalar {
    raw: u128,
    width: u32,
    signed: bool,
}

fn mask(bits: u32) -> u128 {
    if bits >= 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    }
}

impl Scalar {
    fn signed_value(self) -> i128 {
        let s = 128 - self.width.clamp(1, 128);
        ((self.raw << s) as i128) >> s
    }

    fn json(self) -> Value {
        if self.signed {
            int_json(self.signed_value())
        } else {
            uint_json(self.raw)
        }
    }

    fn decimal(self) -> String {
        if self.signed {
            self.signed_value().to_string()
        } else {
            self.raw.to_string()
        }
    }

    /// Writes [`Scalar::json`] as JSON text.
    fn write(self, out: &mut String) {
        if self.signed {
            let v = self.signed_value();
            match i64::try_from(v) {
                Ok(v) if v < 0 => {
                    out.push('-');
                    push_u64(v.unsigned_abs(), out);
                }
                Ok(v) => push_u64(v as u64, out),
                Err(_) => {
                    let _ = write!(out, "\"{v}\"");
                }
            }
        } else {
            match u64::try_from(self.raw) {
                Ok(v) => push_u64(v, out),
                Err(_) => {
                    let _ = write!(out, "\"{}\"", self.raw);
                }
            }
        }
    }

    fn enum_key(self) -> u64 {
        if self.signed {
            self.signed_value() as i64 as u64
        } else {
            self.raw as u64
        }
    }
}

fn uint_json(v: u128) -> Value {
    match u64::try_from(v) {
        Ok(v) => Value::from(v),
        Err(_) => Value::String(v.to_string()),
    }
}

fn int_json(v: i128) -> Value {
    match i64::try_from(v) {
        Ok(v) => Value::from(v),
        Err(_) => Value::String(v.to_string()),
    }
}

fn short(need: usize, b: &[u8]) -> BtfError {
    BtfError::ShortBuffer { need, got: b.len() }
}

/// Reads an integer of `size` bytes, in host order or, when `be`, in
/// network order.
fn read_uint(b: &[u8], off: usize, size: usize, be: bool) -> Result<u128> {
    let s = off
        .checked_add(size)
        .and_then(|end| b.get(off..end))
        .ok_or_else(|| short(off.saturating_add(size), b))?;
    let mut buf = [0u8; 16];
    Ok(match size {
        1 => s[0] as u128,
        2 | 4 | 8 | 16 => {
            if cfg!(target_endian = "little") && !be {
                buf[..size].copy_from_slice(s);
                u128::from_le_bytes(buf)
            } else {
                buf[16 - size..].copy_from_slice(s);
                u128::from_be_bytes(buf)
            }
        }
        _ => return Err(malformed(format!("integer of {size} bytes"))),
    })
}

/// Reads `bits` (1..=64) bits at bit offset `bit_off`, in the host's
/// bitfield order (LSB first on little-endian, MSB first on big-endian).
fn read_bits(b: &[u8], bit_off: usize, bits: u32) -> Result<u128> {
    let start = bit_off / 8;
    let shift = bit_off % 8;
    let n = (shift + bits as usize).div_ceil(8);
    let s = b.get(start..start + n).ok_or_else(|| short(start + n, b))?;
    let mut v: u128 = 0;
    if cfg!(target_endian = "little") {
        for (i, &x) in s.iter().enumerate() {
            v |= (x as u128) << (8 * i);
        }
        v >>= shift;
    } else {
        for &x in s {
            v = v << 8 | x as u128;
        }
        v >>= n * 8 - shift - bits as usize;
    }
    Ok(v & mask(bits))
}

fn shown(s: Scalar, show: &Show) -> Value {
    match show {
        Show::Number | Show::Pointer => s.json(),
        Show::Bool => Value::Bool(s.raw != 0),
        Show::Enum(names) => match names.get(s.enum_key()) {
            Some(n) => Value::String(n.to_string()),
            None => s.json(),
        },
    }
}

impl Node {
    /// The integer at this node, if it is one.
    fn scalar(&self, b: &[u8], base: usize) -> Result<Option<(Scalar, &Show)>> {
        Ok(match *self {
            Node::Int {
                off,
                size,
                signed,
                be,
                ref show,
            } => Some((
                Scalar {
                    raw: read_uint(b, base + off, size as usize, be)?,
                    width: size as u32 * 8,
                    signed,
                },
                show,
            )),
            Node::Bits {
                bit_off,
                bits,
                signed,
                ref show,
            } => Some((
                Scalar {
                    raw: read_bits(b, base * 8 + bit_off, bits as u32)?,
                    width: bits as u32,
                    signed,
                },
                show,
            )),
            _ => None,
        })
    }

    fn float(b: &[u8], at: usize, size: u8) -> Result<f64> {
        let raw = read_uint(b, at, size as usize, false)?;
        Ok(if size == 4 {
            f32::from_bits(raw as u32) as f64
        } else {
            f64::from_bits(raw as u64)
        })
    }

    fn decode(&self, b: &[u8], base: usize) -> Result<Value> {
        Ok(match self {
            Node::Int { .. } | Node::Bits { .. } => match self.scalar(b, base)? {
                Some((s, show)) => shown(s, show),
                None => Value::Null,
            },
            &Node::Float { off, size } => Value::from(Self::float(b, base + off, size)?),
            &Node::Chars { off, len, signed } => {
                let at = base + off;
                let s = b.get(at..at + len).ok_or_else(|| short(at + len, b))?;
                match s.iter().position(|&c| c == 0) {
                    Some(nul) if s[..nul].iter().all(|c| (0x20..0x7f).contains(c)) => {
                        Value::String(s[..nul].iter().map(|&c| c as char).collect())
                    }
                    _ => Value::Array(
                        s.iter()
                            .map(|&c| {
                                if signed {
                                    Value::from(c as i8)
                                } else {
                                    Value::from(c)
                                }
                            })
                            .collect(),
                    ),
                }
            }
            Node::Array {
                off,
                stride,
                len,
                elem,
            } => {
                let mut v = Vec::with_capacity(*len);
                for i in 0..*len {
                    v.push(elem.decode(b, base + off + i * stride)?);
                }
                Value::Array(v)
            }
            Node::Record { fields, shape, .. } => {
                let mut m = shape.template.clone();
                for (slot, &i) in m.values_mut().zip(&shape.order) {
                    if let Some((_, node)) = fields.get(i) {
                        *slot = node.decode(b, base)?;
                    }
                }
                Value::Object(m)
            }
        })
    }

    /// [`Node::decode`], written as JSON text.
    fn write(&self, b: &[u8], base: usize, out: &mut String) -> Result<()> {
        match self {
            Node::Int { .. } | Node::Bits { .. } => {
                if let Some((s, show)) = self.scalar(b, base)? {
                    match show {
                        Show::Bool => out.push_str(if s.raw != 0 { "true" } else { "false" }),
                        Show::Enum(names) => match names.get(s.enum_key()) {
                            Some(n) => write_str(n, out),
                            None => s.write(out),
                        },
                        Show::Number | Show::Pointer => s.write(out),
                    }
                }
            }
            &Node::Float { off, size } => {
                match serde_json::Number::from_f64(Self::float(b, base + off, size)?) {
                    Some(n) => {
                        let _ = write!(out, "{n}");
                    }
                    None => out.push_str("null"),
                }
            }
            &Node::Chars { off, len, signed } => {
                let at = base + off;
                let s = b.get(at..at + len).ok_or_else(|| short(at + len, b))?;
                match s.iter().position(|&c| c == 0) {
                    Some(nul) if s[..nul].iter().all(|c| (0x20..0x7f).contains(c)) => {
                        // Printable ASCII: valid UTF-8 as it is.
                        write_str(std::str::from_utf8(&s[..nul]).unwrap_or(""), out)
                    }
                    _ => {
                        out.push('[');
                        for (i, &c) in s.iter().enumerate() {
                            if i > 0 {
                                out.push(',');
                            }
                            let _ = if signed {
                                write!(out, "{}", c as i8)
                            } else {
                                write!(out, "{c}")
                            };
                        }
                        out.push(']');
                    }
                }
            }
            Node::Array {
                off,
                stride,
                len,
                elem,
            } => {
                out.push('[');
                for i in 0..*len {
                    if i > 0 {
                        out.push(',');
                    }
                    elem.write(b, base + off + i * stride, out)?;
                }
                out.push(']');
            }
            Node::Record { fields, .. } => {
                out.push('{');
                for (i, (k, node)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&k.json);
                    node.write(b, base, out)?;
                }
                out.push('}');
            }
        }
        Ok(())
    }

    fn aggregate(&self, b: &[u8], bases: &[usize], how: Aggregation) -> Result<Value> {
        let first = *bases.first().ok_or_else(|| malformed("no CPU"))?;
        match self {
            Node::Int {
                show: Show::Number, ..
            }
            | Node::Bits {
                show: Show::Number, ..
            } => {
                let mut vals = Vec::with_capacity(bases.len());
                for &base in bases {
                    if let Some((s, _)) = self.scalar(b, base)? {
                        vals.push(s);
                    }
                }
                Ok(combine_ints(&vals, how))
            }
            &Node::Float { off, size } => {
                let vals = bases
                    .iter()
                    .map(|&base| Self::float(b, base + off, size))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Value::from(match how {
                    Aggregation::Sum => vals.iter().sum(),
                    Aggregation::Avg => vals.iter().sum::<f64>() / vals.len() as f64,
                    Aggregation::Min => vals.iter().copied().fold(f64::INFINITY, f64::min),
                    Aggregation::Max => vals.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                }))
            }
            Node::Array {
                off,
                stride,
                len,
                elem,
            } => {
                let mut v = Vec::with_capacity(*len);
                let mut sub = Vec::with_capacity(bases.len());
                for i in 0..*len {
                    sub.clear();
                    sub.extend(bases.iter().map(|base| base + off + i * stride));
                    v.push(elem.aggregate(b, &sub, how)?);
                }
                Ok(Value::Array(v))
            }
            Node::Record { fields, .. } => {
                let mut m = Map::new();
                for (k, node) in fields {
                    m.insert(k.name.clone(), node.aggregate(b, bases, how)?);
                }
                Ok(Value::Object(m))
            }
            _ => self.decode(b, first),
        }
    }

    /// One past the last bit this node reads, relative to its base.
    fn end_bits(&self) -> u64 {
        match self {
            Node::Int { off, size, .. } | Node::Float { off, size } => {
                (*off as u64 + *size as u64) * 8
            }
            Node::Bits { bit_off, bits, .. } => *bit_off as u64 + *bits as u64,
            Node::Chars { off, len, .. } => (*off as u64 + *len as u64) * 8,
            Node::Array {
                off, stride, len, ..
            } => (*off as u64)
                .saturating_add((*stride as u64).saturating_mul(*len as u64))
                .saturating_mul(8),
            Node::Record { off, size, .. } => (*off as u64 + *size as u64) * 8,
        }
    }

    /// Byte range `(offset, length)` of a byte-aligned node.
    fn span(&self) -> Option<(usize, usize)> {
        match self {
            Node::Int { off, size, .. } | Node::Float { off, size } => Some((*off, *size as usize)),
            Node::Chars { off, len, .. } => Some((*off, *len)),
            Node::Array {
                off, stride, len, ..
            } => Some((*off, stride * len)),
            Node::Record { off, size, .. } => Some((*off, *size)),
            Node::Bits { .. } => None,
        }
    }

    /// The same node `d` bytes further (an array element made absolute).
    fn shifted(&self, d: usize) -> Node {
        let mut n = self.clone();
        match &mut n {
            Node::Int { off, .. }
            | Node::Float { off, .. }
            | Node::Chars { off, .. }
            | Node::Array { off, .. } => *off += d,
            Node::Bits { bit_off, .. } => *bit_off += d * 8,
            Node::Record { off, fields, .. } => {
                *off += d;
                for (_, f) in fields.iter_mut() {
                    *f = f.shifted(d);
                }
            }
        }
        n
    }
}

fn combine_ints(vals: &[Scalar], how: Aggregation) -> Value {
    let signed = vals.first().is_some_and(|s| s.signed);
    if how == Aggregation::Avg {
        let sum: f64 = vals
            .iter()
            .map(|s| {
                if signed {
                    s.signed_value() as f64
                } else {
                    s.raw as f64
                }
            })
            .sum();
        return Value::from(sum / vals.len().max(1) as f64);
    }
    if signed {
        let it = vals.iter().map(|s| s.signed_value());
        int_json(match how {
            Aggregation::Sum => it.fold(0i128, i128::saturating_add),
            Aggregation::Min => it.min().unwrap_or(0),
            _ => it.max().unwrap_or(0),
        })
    } else {
        let it = vals.iter().map(|s| s.raw);
        uint_json(match how {
            Aggregation::Sum => it.fold(0u128, u128::saturating_add),
            Aggregation::Min => it.min().unwrap_or(0),
            _ => it.max().unwrap_or(0),
        })
    }
}

// ------------------------------------------------------- per-CPU aggregation

/// How the per-CPU slots of a value are combined into one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregation {
    /// Sum over CPUs (saturating).
    Sum,
    /// Arithmetic mean over CPUs (a float).
    Avg,
    /// Smallest value of any CPU.
    Min,
    /// Largest value of any CPU.
    Max,
}

impl fmt::Display for Aggregation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Aggregation::Sum => "sum",
            Aggregation::Avg => "avg",
            Aggregation::Min => "min",
            Aggregation::Max => "max",
        })
    }
}

impl FromStr for Aggregation {
    type Err = BtfError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "sum" => Aggregation::Sum,
            "avg" => Aggregation::Avg,
            "min" => Aggregation::Min,
            "max" => Aggregation::Max,
            _ => {
                return Err(BtfError::UnknownName {
                    what: "aggregation",
                    name: s.to_string(),
                    expected: "sum, avg, min, max",
                });
            }
        })
    }
}

// ------------------------------------------------------------------ labels

/// How a key field is turned into a label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelFormat {
    /// 4 bytes in memory (network) order → `192.0.2.1`.
    Ipv4,
    /// 16 bytes in memory order → RFC 5952 text (`2001:db8::1`).
    Ipv6,
    /// 6 bytes → `02:00:00:00:00:01`.
    Mac,
    /// An integer (or enum, or bitfield) as a decimal number.
    Decimal,
    /// An integer as `0x…` (two's complement for negative values), or an
    /// array of bytes as `0x` followed by its bytes in memory order.
    Hex,
    /// An enum's enumerator name (the number when no name matches).
    #[serde(alias = "enum")]
    EnumName,
}

impl fmt::Display for LabelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LabelFormat::Ipv4 => "ipv4",
            LabelFormat::Ipv6 => "ipv6",
            LabelFormat::Mac => "mac",
            LabelFormat::Decimal => "decimal",
            LabelFormat::Hex => "hex",
            LabelFormat::EnumName => "enum_name",
        })
    }
}

impl FromStr for LabelFormat {
    type Err = BtfError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "ipv4" => LabelFormat::Ipv4,
            "ipv6" => LabelFormat::Ipv6,
            "mac" => LabelFormat::Mac,
            "decimal" => LabelFormat::Decimal,
            "hex" => LabelFormat::Hex,
            "enum" | "enum_name" => LabelFormat::EnumName,
            _ => {
                return Err(BtfError::UnknownName {
                    what: "label format",
                    name: s.to_string(),
                    expected: "ipv4, ipv6, mac, decimal, hex, enum_name",
                });
            }
        })
    }
}

/// One member of a layout, resolved from a path by [`Layout::field`].
#[derive(Debug, Clone)]
pub struct Field {
    path: String,
    node: Node,
}

impl Field {
    /// The path this field was resolved from.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Decodes just this field from a whole value's bytes.
    pub fn decode(&self, bytes: &[u8]) -> Result<Value> {
        self.node.decode(bytes, 0)
    }

    /// Checks, without data, that the field can be formatted as `format`
    /// (e.g. when a probe spec is loaded).
    pub fn check(&self, format: LabelFormat) -> Result<()> {
        let end = self.node.end_bits().div_ceil(8);
        if end > 1 << 20 {
            return Err(BtfError::Format {
                path: self.path.clone(),
                format,
                why: "it lies beyond the first MiB of the value".into(),
            });
        }
        let zeros = vec![0u8; end as usize];
        self.format(&zeros, format).map(|_| ())
    }

    /// Formats the field, read from a whole value's bytes, as a label.
    pub fn format(&self, bytes: &[u8], format: LabelFormat) -> Result<String> {
        let err = |why: &str| BtfError::Format {
            path: self.path.clone(),
            format,
            why: why.to_string(),
        };
        let raw = |len: usize| -> Result<&[u8]> {
            match self.node.span() {
                Some((off, l)) if l == len && !matches!(self.node, Node::Float { .. }) => bytes
                    .get(off..off + len)
                    .ok_or_else(|| short(off + len, bytes)),
                Some((_, l)) => Err(err(&format!("it is {l} bytes, not {len}"))),
                None => Err(err("it is a bitfield")),
            }
        };
        let scalar = self.node.scalar(bytes, 0)?;
        match format {
            LabelFormat::Ipv4 => {
                let b = raw(4)?;
                Ok(Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string())
            }
            LabelFormat::Ipv6 => {
                let b: [u8; 16] = raw(16)?.try_into().map_err(|_| err("length"))?;
                Ok(Ipv6Addr::from(b).to_string())
            }
            LabelFormat::Mac => Ok(raw(6)?
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")),
            LabelFormat::Decimal => match scalar {
                Some((s, Show::Bool)) => Ok(u8::from(s.raw != 0).to_string()),
                Some((s, _)) => Ok(s.decimal()),
                None => Err(err("it is not an integer")),
            },
            LabelFormat::Hex => match (scalar, &self.node) {
                (Some((s, _)), _) => Ok(format!("{:#x}", s.raw)),
                (None, Node::Chars { len, .. }) => Ok(hex_bytes(raw(*len)?)),
                (None, Node::Array { stride: 1, len, .. }) => Ok(hex_bytes(raw(*len)?)),
                _ => Err(err("it is neither an integer nor an array of bytes")),
            },
            LabelFormat::EnumName => match scalar {
                Some((s, Show::Enum(names))) => Ok(names
                    .get(s.enum_key())
                    .map_or_else(|| s.decimal(), str::to_string)),
                _ => Err(err("it is not an enum")),
            },
        }
    }
}

fn hex_bytes(b: &[u8]) -> String {
    let mut s = String::with_capacity(2 + 2 * b.len());
    s.push_str("0x");
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

/// Appends the decimal digits of `v` (without the `fmt` machinery: this is
/// the hot loop of exporting a big map).
fn push_u64(mut v: u64, out: &mut String) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    out.push_str(std::str::from_utf8(&buf[i..]).unwrap_or("0"));
}

/// Writes `s` as a JSON string literal.
fn write_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}
