//! Generations: how a new policy set reaches the datapath atomically.
//!
//! Every classification table is keyed by a generation (0 or 1). The datapath
//! reads `vtap_global.active_gen` once per packet and uses only that
//! generation's entries. [`Reconciler::apply`] writes the complete new
//! [`Image`] into the *inactive* generation — only the entries that differ
//! from what that generation held — then flips `active_gen` with one map
//! update, then waits an RCU grace period ([`super::sys::RcuBarrier`]) so the
//! old generation is idle before the next change rewrites it. A packet is
//! therefore classified against exactly one complete policy set, never a
//! half-written one. If writing fails, the flip does not happen and the
//! running set stays active; the inactive generation is marked unknown and
//! rewritten in full next time.

use std::collections::BTreeMap;

use vtap_abi::{
    Bitmap, CidrKey, EtherKey, GenConfig, Lpm4Key, Lpm6Key, MAX_OUTPUTS, MAX_POLICIES, Output,
    PORTS, PolicyAction, TapKey, TapSel,
};

use super::{Datapath, DatapathError, MapHandle, sys};

/// Everything one generation of the tables holds: a compiled policy set
/// resolved against the interfaces that exist now.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Image {
    /// `vtap_gen_cfg[gen]`.
    pub cfg: GenConfig,
    /// `vtap_tap_sel`: (ifindex, dir) → policies and counter slot.
    pub taps: BTreeMap<(u32, u8), TapSel>,
    /// `vtap_ether`.
    pub ether: BTreeMap<u16, Bitmap>,
    /// `vtap_cidr`: (table, prefix length, masked address) → policies, for
    /// the address tables that use exact-match hashes (see `cfg.lens`).
    pub cidr: BTreeMap<(u8, u8, [u8; 16]), Bitmap>,
    /// `vtap_src4`: (prefix length, address) → policies.
    pub src4: BTreeMap<(u8, [u8; 4]), Bitmap>,
    /// `vtap_dst4`.
    pub dst4: BTreeMap<(u8, [u8; 4]), Bitmap>,
    /// `vtap_src6`.
    pub src6: BTreeMap<(u8, [u8; 16]), Bitmap>,
    /// `vtap_dst6`.
    pub dst6: BTreeMap<(u8, [u8; 16]), Bitmap>,
    /// `vtap_proto` (256 entries).
    pub proto: Vec<Bitmap>,
    /// `vtap_tcp_flags` (256 entries).
    pub tcp_flags: Vec<Bitmap>,
    /// `vtap_sport` (65536 entries).
    pub sport: Vec<Bitmap>,
    /// `vtap_dport` (65536 entries).
    pub dport: Vec<Bitmap>,
    /// `vtap_actions` (MAX_POLICIES entries).
    pub actions: Vec<PolicyAction>,
    /// `vtap_outputs` (MAX_OUTPUTS entries).
    pub outputs: Vec<Output>,
}

fn zero_action() -> PolicyAction {
    PolicyAction {
        out_ids: [0; 8],
        sample_one_in: 0,
        ..PolicyAction::default()
    }
}

impl Image {
    /// What freshly created maps hold: nothing fires.
    pub fn empty() -> Image {
        Image {
            cfg: GenConfig::default(),
            taps: BTreeMap::new(),
            ether: BTreeMap::new(),
            cidr: BTreeMap::new(),
            src4: BTreeMap::new(),
            dst4: BTreeMap::new(),
            src6: BTreeMap::new(),
            dst6: BTreeMap::new(),
            proto: vec![Bitmap::EMPTY; 256],
            tcp_flags: vec![Bitmap::EMPTY; 256],
            sport: vec![Bitmap::EMPTY; PORTS],
            dport: vec![Bitmap::EMPTY; PORTS],
            actions: vec![zero_action(); MAX_POLICIES],
            outputs: vec![Output::default(); MAX_OUTPUTS],
        }
    }
}

/// Writes generations and flips between them.
pub struct Reconciler {
    /// What each generation holds now (`None` = unknown after a failed write).
    written: [Option<Image>; 2],
    active: u32,
    flips: u64,
}

impl Default for Reconciler {
    fn default() -> Self {
        Self::new()
    }
}

impl Reconciler {
    /// For freshly loaded maps (both generations empty, 0 active).
    pub fn new() -> Self {
        Reconciler {
            written: [Some(Image::empty()), Some(Image::empty())],
            active: 0,
            flips: 0,
        }
    }

    /// The active generation.
    pub fn active(&self) -> u32 {
        self.active
    }

    /// Number of flips so far.
    pub fn flips(&self) -> u64 {
        self.flips
    }

    /// The image the datapath classifies with now.
    pub fn active_image(&self) -> Option<&Image> {
        self.written[self.active as usize].as_ref()
    }

    /// Makes `img` the active policy set, atomically (see the module docs).
    pub fn apply(&mut self, dp: &Datapath, img: &Image) -> Result<(), DatapathError> {
        if self.active_image() == Some(img) {
            return Ok(());
        }
        let g = 1 - self.active;
        let old = self.written[g as usize].take();
        write_generation(dp, g, old.as_ref(), img)?;
        self.written[g as usize] = Some(img.clone());
        dp.maps.global.update(
            &0u32,
            &vtap_abi::Global {
                active_gen: g,
                abi_version: vtap_abi::ABI_VERSION,
                flags: dp.global_flags(),
                _pad: 0,
            },
        )?;
        self.active = g;
        self.flips += 1;
        // After this no packet uses the old generation: it may be rewritten.
        dp.barrier()
    }
}

fn write_generation(
    dp: &Datapath,
    g: u32,
    old: Option<&Image>,
    new: &Image,
) -> Result<(), DatapathError> {
    let m = &dp.maps;
    let g8 = g as u8;
    let empty;
    // With unknown content every array entry is rewritten and every hash/LPM
    // entry of this generation is dropped first.
    let (old, full) = match old {
        Some(o) => (o, false),
        None => {
            purge(&m.tap_sel, 8, |k| k[5] as u32 == g)?;
            purge(&m.ether, 4, |k| k[2] as u32 == g)?;
            purge(&m.cidr, 20, |k| k[0] as u32 == g)?;
            for lpm in [&m.src4, &m.dst4] {
                purge(lpm, 12, |k| {
                    u32::from_ne_bytes(k[4..8].try_into().unwrap()) == g
                })?;
            }
            for lpm in [&m.src6, &m.dst6] {
                purge(lpm, 24, |k| {
                    u32::from_ne_bytes(k[4..8].try_into().unwrap()) == g
                })?;
            }
            empty = Image::empty();
            (&empty, true)
        }
    };

    m.gen_cfg.update(&g, &new.cfg)?;
    diff_hash(&m.tap_sel, &old.taps, &new.taps, |&(ifindex, dir)| TapKey {
        ifindex,
        dir,
        generation: g8,
        _pad: 0,
    })?;
    diff_hash(&m.ether, &old.ether, &new.ether, |&ether_type| EtherKey {
        ether_type,
        generation: g8,
        _pad: 0,
    })?;
    diff_hash(&m.cidr, &old.cidr, &new.cidr, |&(table, len, addr)| {
        CidrKey {
            generation: g8,
            table,
            len,
            _pad: 0,
            addr,
        }
    })?;
    let k4 = |&(len, addr): &(u8, [u8; 4])| Lpm4Key {
        prefixlen: 32 + len as u32,
        generation: g,
        addr,
    };
    let k6 = |&(len, addr): &(u8, [u8; 16])| Lpm6Key {
        prefixlen: 32 + len as u32,
        generation: g,
        addr,
    };
    diff_hash(&m.src4, &old.src4, &new.src4, k4)?;
    diff_hash(&m.dst4, &old.dst4, &new.dst4, k4)?;
    diff_hash(&m.src6, &old.src6, &new.src6, k6)?;
    diff_hash(&m.dst6, &old.dst6, &new.dst6, k6)?;
    diff_array(&m.proto, g, full, &old.proto, &new.proto)?;
    diff_array(&m.tcp_flags, g, full, &old.tcp_flags, &new.tcp_flags)?;
    diff_array(&m.sport, g, full, &old.sport, &new.sport)?;
    diff_array(&m.dport, g, full, &old.dport, &new.dport)?;
    diff_array(&m.actions, g, full, &old.actions, &new.actions)?;
    diff_array(&m.outputs, g, full, &old.outputs, &new.outputs)?;
    Ok(())
}

/// Deletes then inserts/updates so the map holds `new` for this generation.
fn diff_hash<K: Ord, MK: aya::Pod, V: aya::Pod + PartialEq>(
    map: &MapHandle,
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
    key: impl Fn(&K) -> MK,
) -> Result<(), DatapathError> {
    for k in old.keys().filter(|k| !new.contains_key(*k)) {
        map.delete(&key(k))?;
    }
    for (k, v) in new {
        if old.get(k) != Some(v) {
            map.update(&key(k), v)?;
        }
    }
    Ok(())
}

/// Writes the changed entries of generation `g` of an array table (index
/// `g * len + i`), in batches.
fn diff_array<V: aya::Pod + PartialEq>(
    map: &MapHandle,
    g: u32,
    full: bool,
    old: &[V],
    new: &[V],
) -> Result<(), DatapathError> {
    let base = g * new.len() as u32;
    let changed: Vec<(u32, V)> = new
        .iter()
        .enumerate()
        .filter(|(i, v)| full || old.get(*i) != Some(*v))
        .map(|(i, v)| (base + i as u32, *v))
        .collect();
    map.update_array(&changed)
}

/// Deletes every key of a hash/LPM map for which `pick` is true.
fn purge(
    map: &MapHandle,
    key_size: usize,
    pick: impl Fn(&[u8]) -> bool,
) -> Result<(), DatapathError> {
    let mut keys = Vec::new();
    let mut cur: Option<Vec<u8>> = None;
    loop {
        let mut next = vec![0u8; key_size];
        let more = sys::next_key(map.fd(), cur.as_deref(), &mut next)
            .map_err(|e| map.err("iterate", e))?;
        if !more {
            break;
        }
        if pick(&next) {
            keys.push(next.clone());
        }
        cur = Some(next);
    }
    for k in keys {
        sys::delete(map.fd(), &k).map_err(|e| map.err("delete", e))?;
    }
    Ok(())
}
