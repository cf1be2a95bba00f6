//! The one seam where vtap talks to the `bpf(2)` syscall directly.
//!
//! aya 0.14 loads and attaches programs, but has no batch map operations and
//! hands map values through typed wrappers that copy per element. The
//! reconciler writes tens of thousands of table entries per policy change, so
//! map element access goes through these small, safe wrappers over raw
//! `BPF_MAP_*` commands on a map's fd.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

/// `union bpf_attr` is 144+ bytes; every command reads a prefix of it.
#[repr(C, align(8))]
pub(crate) struct Attr([u8; 160]);

impl Attr {
    pub(crate) fn new() -> Self {
        Attr([0; 160])
    }
    pub(crate) fn put_u32(&mut self, off: usize, v: u32) {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    }
    pub(crate) fn put_u64(&mut self, off: usize, v: u64) {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
    }
    pub(crate) fn get_u32(&self, off: usize) -> u32 {
        u32::from_ne_bytes(self.0[off..off + 4].try_into().unwrap())
    }
}

/// Issues one `bpf(2)` command. Callers must store in `attr` only pointers
/// to live buffers of the lengths the kernel reads or writes for `cmd`.
pub(crate) fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: attr is a valid, zero-initialised bpf_attr of sufficient size;
    // every pointer stored in it refers to a live buffer of the length the
    // kernel will read or write for this command (checked by the callers).
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut Attr as *mut libc::c_void,
            std::mem::size_of::<Attr>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `BPF_MAP_UPDATE_ELEM`. `key` and `value` must have the map's sizes (for
/// per-CPU maps the value holds every possible CPU's slot).
pub fn update(fd: BorrowedFd<'_>, key: &[u8], value: &[u8], flags: u64) -> io::Result<()> {
    let mut a = Attr::new();
    a.put_u32(0, fd.as_raw_fd() as u32);
    a.put_u64(8, key.as_ptr() as u64);
    a.put_u64(16, value.as_ptr() as u64);
    a.put_u64(24, flags);
    bpf(BPF_MAP_UPDATE_ELEM, &mut a).map(|_| ())
}

/// `BPF_MAP_LOOKUP_ELEM`; `Ok(false)` when the key is absent.
pub fn lookup(fd: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    let mut a = Attr::new();
    a.put_u32(0, fd.as_raw_fd() as u32);
    a.put_u64(8, key.as_ptr() as u64);
    a.put_u64(16, value.as_mut_ptr() as u64);
    match bpf(BPF_MAP_LOOKUP_ELEM, &mut a) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `BPF_MAP_DELETE_ELEM`; `Ok(false)` when the key was absent.
pub fn delete(fd: BorrowedFd<'_>, key: &[u8]) -> io::Result<bool> {
    let mut a = Attr::new();
    a.put_u32(0, fd.as_raw_fd() as u32);
    a.put_u64(8, key.as_ptr() as u64);
    match bpf(BPF_MAP_DELETE_ELEM, &mut a) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `BPF_MAP_GET_NEXT_KEY`; `Ok(false)` at the end.
pub fn next_key(fd: BorrowedFd<'_>, key: Option<&[u8]>, next: &mut [u8]) -> io::Result<bool> {
    let mut a = Attr::new();
    a.put_u32(0, fd.as_raw_fd() as u32);
    a.put_u64(8, key.map_or(0, |k| k.as_ptr() as u64));
    a.put_u64(16, next.as_mut_ptr() as u64);
    match bpf(BPF_MAP_GET_NEXT_KEY, &mut a) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `BPF_MAP_UPDATE_BATCH`: `keys` holds `count` keys of `key_size` bytes,
/// `values` `count` values. Returns how many were written before an error.
pub fn update_batch(fd: BorrowedFd<'_>, keys: &[u8], values: &[u8], count: u32) -> io::Result<()> {
    if count == 0 {
        return Ok(());
    }
    let mut a = Attr::new();
    // struct { in_batch, out_batch, keys, values: u64; count, map_fd: u32; elem_flags, flags: u64 }
    a.put_u64(16, keys.as_ptr() as u64);
    a.put_u64(24, values.as_ptr() as u64);
    a.put_u32(32, count);
    a.put_u32(36, fd.as_raw_fd() as u32);
    let r = bpf(BPF_MAP_UPDATE_BATCH, &mut a);
    match r {
        Ok(_) if a.get_u32(32) == count => Ok(()),
        Ok(_) => Err(io::Error::other(format!(
            "batch update wrote {} of {count} entries",
            a.get_u32(32)
        ))),
        Err(e) => Err(e),
    }
}

/// `BPF_MAP_LOOKUP_BATCH` over a whole array map: fills `values` with the
/// first `count` entries (keys 0..count). For per-CPU arrays each value is
/// `possible_cpus * round_up(value_size, 8)` bytes.
pub fn lookup_batch_array(fd: BorrowedFd<'_>, count: u32, values: &mut [u8]) -> io::Result<()> {
    let mut keys = vec![0u32; count as usize];
    let mut out_batch = 0u32;
    let mut done = 0u32;
    let vsize = values.len() / count.max(1) as usize;
    while done < count {
        let mut a = Attr::new();
        if done > 0 {
            a.put_u64(0, &out_batch as *const u32 as u64);
        }
        a.put_u64(8, &mut out_batch as *mut u32 as u64);
        a.put_u64(16, keys[done as usize..].as_mut_ptr() as u64);
        a.put_u64(24, values[done as usize * vsize..].as_mut_ptr() as u64);
        a.put_u32(32, count - done);
        a.put_u32(36, fd.as_raw_fd() as u32);
        let r = bpf(BPF_MAP_LOOKUP_BATCH, &mut a);
        let got = a.get_u32(32);
        match r {
            Ok(_) => done += got,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                done += got;
                break;
            }
            Err(e) => return Err(e),
        }
        if got == 0 {
            break;
        }
    }
    if done != count {
        return Err(io::Error::other(format!(
            "batch lookup read {done} of {count} entries"
        )));
    }
    Ok(())
}

/// An RCU grace-period barrier for the datapath.
///
/// Updating an element of an `ARRAY_OF_MAPS` makes the kernel wait, before
/// the syscall returns, until every running non-sleepable BPF program has
/// finished (`maybe_wait_bpf_programs`). After a generation flip, one call
/// guarantees no packet is still being classified with the old generation,
/// so its tables may be rewritten.
pub struct RcuBarrier {
    outer: OwnedFd,
    inner: OwnedFd,
}

impl RcuBarrier {
    /// Creates the barrier map; `inner` is any small map used as the element.
    pub fn new(inner: BorrowedFd<'_>) -> io::Result<Self> {
        let inner = inner.try_clone_to_owned()?;
        let mut a = Attr::new();
        // map_type, key_size, value_size, max_entries, map_flags, inner_map_fd
        a.put_u32(0, BPF_MAP_TYPE_ARRAY_OF_MAPS);
        a.put_u32(4, 4);
        a.put_u32(8, 4);
        a.put_u32(12, 1);
        a.put_u32(16, 0);
        a.put_u32(20, inner.as_raw_fd() as u32);
        let fd = bpf(BPF_MAP_CREATE, &mut a)?;
        // SAFETY: the kernel returned a new file descriptor that we now own.
        let outer = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(RcuBarrier { outer, inner })
    }

    /// A barrier with its own tiny inner map (for users without a map of
    /// their own at hand, e.g. the probe manager).
    pub fn standalone() -> io::Result<Self> {
        let mut a = Attr::new();
        a.put_u32(0, 2); // BPF_MAP_TYPE_ARRAY
        a.put_u32(4, 4);
        a.put_u32(8, 4);
        a.put_u32(12, 1);
        let fd = bpf(BPF_MAP_CREATE, &mut a)?;
        // SAFETY: the kernel returned a new file descriptor that we now own.
        let inner = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Self::new(std::os::fd::AsFd::as_fd(&inner))
    }

    /// Returns after an RCU grace period (all running programs finished).
    pub fn wait(&self) -> io::Result<()> {
        use std::os::fd::AsFd;
        let key = 0u32.to_ne_bytes();
        let val = (self.inner.as_raw_fd() as u32).to_ne_bytes();
        update(self.outer.as_fd(), &key, &val, 0)
    }
}

/// Bytes of a Pod value.
pub fn bytes_of<T: aya::Pod>(v: &T) -> &[u8] {
    // SAFETY: T is Pod (repr(C), no padding, any bit pattern valid).
    unsafe { std::slice::from_raw_parts(v as *const T as *const u8, std::mem::size_of::<T>()) }
}

/// Bytes of a slice of Pod values.
pub fn bytes_of_slice<T: aya::Pod>(v: &[T]) -> &[u8] {
    // SAFETY: as above, for a contiguous slice.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

/// Reads a Pod value from the start of `b` (unaligned).
pub fn from_bytes<T: aya::Pod>(b: &[u8]) -> T {
    assert!(b.len() >= std::mem::size_of::<T>());
    // SAFETY: length checked; T is Pod so any bytes are a valid T.
    unsafe { std::ptr::read_unaligned(b.as_ptr() as *const T) }
}
