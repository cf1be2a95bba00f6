//! Reading the datapath's per-CPU counters and summing them.
//!
//! Every counter struct of the ABI is a sequence of `u64`, so a per-CPU value
//! (one slot per possible CPU, each rounded up to 8 bytes) is summed word by
//! word. Counters are read, never reset: Prometheus computes rates.

use vtap_abi::{Dir, TapStats};

use super::{Datapath, DatapathError, MapHandle, sys};

/// Sums the per-CPU slots of one element of a per-CPU map; `None` if absent.
pub fn sum_percpu<K: aya::Pod, V: aya::Pod + Default>(
    dp: &Datapath,
    map: &MapHandle,
    key: &K,
) -> Result<Option<V>, DatapathError> {
    let size = std::mem::size_of::<V>();
    debug_assert_eq!(size % 8, 0, "counter structs are u64 sequences");
    let stride = size.div_ceil(8) * 8;
    let mut buf = vec![0u8; stride * dp.ncpus];
    let found =
        sys::lookup(map.fd(), sys::bytes_of(key), &mut buf).map_err(|e| map.err("lookup", e))?;
    if !found {
        return Ok(None);
    }
    Ok(Some(sum_slots(&buf, size, stride, dp.ncpus)))
}

fn sum_slots<V: aya::Pod + Default>(buf: &[u8], size: usize, stride: usize, ncpus: usize) -> V {
    let words = size / 8;
    let mut acc = vec![0u64; words];
    for cpu in 0..ncpus {
        let slot = &buf[cpu * stride..cpu * stride + size];
        for (w, a) in acc.iter_mut().enumerate() {
            *a = a.wrapping_add(u64::from_ne_bytes(
                slot[w * 8..w * 8 + 8].try_into().unwrap(),
            ));
        }
    }
    let bytes: Vec<u8> = acc.iter().flat_map(|w| w.to_ne_bytes()).collect();
    sys::from_bytes(&bytes)
}

/// Reads `count` consecutive elements `first..first+count` of a per-CPU array.
pub fn sum_percpu_array<V: aya::Pod + Default>(
    dp: &Datapath,
    map: &MapHandle,
    indices: impl IntoIterator<Item = u32>,
) -> Result<Vec<(u32, V)>, DatapathError> {
    indices
        .into_iter()
        .map(|i| Ok((i, sum_percpu::<u32, V>(dp, map, &i)?.unwrap_or_default())))
        .collect()
}

/// Zeroes one element of a per-CPU array (a freshly allocated slot).
pub fn zero_percpu<V>(dp: &Datapath, map: &MapHandle, index: u32) -> Result<(), DatapathError> {
    let stride = std::mem::size_of::<V>().div_ceil(8) * 8;
    let zero = vec![0u8; stride * dp.ncpus];
    sys::update(map.fd(), &index.to_ne_bytes(), &zero, 0).map_err(|e| map.err("zero", e))
}

/// The counters of one tap slot + direction.
pub fn tap_stats(dp: &Datapath, slot: u32, dir: Dir) -> Result<TapStats, DatapathError> {
    let idx = slot * 2 + dir as u32;
    Ok(sum_percpu(dp, &dp.maps.tap_stats, &idx)?.unwrap_or_default())
}
