//! An append-only capture file written with `O_DIRECT`: whole blocks go
//! from an aligned buffer straight to the device, past the page cache.
//!
//! A capture writes at line rate (1.5 GB/s of whole MTU frames) data nobody
//! reads soon. Through the page cache every byte is copied into a freshly
//! allocated page, dirtied, written back by a kernel thread and then
//! evicted — on a 2-core host that copy, the allocation and the write-back
//! cost about as much CPU as everything else the capture does, and the
//! dirty pages push the VMs' own cache out. With `O_DIRECT` the device reads
//! the buffer itself (BENCHMARKS.md §5).
//!
//! `O_DIRECT` needs block-aligned memory, lengths and offsets, so the
//! buffer is written in whole [`BLOCK`]s at block-aligned offsets; the last
//! partial block (the tail) is written through the page cache (a second,
//! ordinary descriptor of the same file) when the file is flushed, so the
//! file on disk is always exact, and rewritten with its continuation by the
//! next direct write (the kernel writes back and drops cached pages a direct
//! write covers). A file system that refuses `O_DIRECT` gets ordinary
//! writes of the same buffer.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Alignment and unit of direct writes (covers 512- and 4096-byte
/// logical blocks).
pub const BLOCK: usize = 4096;

/// Default buffer: 4 MiB, a direct write per 4 MiB of capture.
pub const CAPACITY: usize = 4 << 20;

/// `capacity` zeroed bytes aligned to [`BLOCK`], from the allocator's
/// zeroed path: the pages become resident only as the capture fills them,
/// so a quiet capture does not hold 4 MiB.
struct Aligned {
    ptr: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
}

impl Aligned {
    fn new(capacity: usize) -> Aligned {
        let layout =
            std::alloc::Layout::from_size_align(capacity.max(BLOCK), BLOCK).expect("buffer layout");
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(ptr) = std::ptr::NonNull::new(p) else {
            std::alloc::handle_alloc_error(layout)
        };
        Aligned { ptr, layout }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `layout.size()` initialised (zeroed) bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, borrowed mutably through &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

impl std::fmt::Debug for Aligned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Aligned({} bytes)", self.layout.size())
    }
}

// SAFETY: Aligned owns its allocation like a Box<[u8]>.
unsafe impl Send for Aligned {}
// SAFETY: shared access only reads.
unsafe impl Sync for Aligned {}

/// A capture file being appended to.
#[derive(Debug)]
pub struct DirectFile {
    /// `O_DIRECT` descriptor (the ordinary one when refused).
    direct: File,
    /// Ordinary descriptor, for the tail.
    plain: File,
    is_direct: bool,
    mem: Aligned,
    /// Bytes in the buffer.
    len: usize,
    /// Most bytes the buffer holds (a multiple of [`BLOCK`] when direct).
    capacity: usize,
    /// File offset of the buffer's first byte.
    base: u64,
    /// End of what reached the file (the tail written by a flush included).
    written: u64,
    /// (end offset, packets) of data not in the file yet, in order.
    pending: VecDeque<(u64, u64)>,
    /// Sum of the pending packets.
    unflushed: u64,
}

impl DirectFile {
    /// Creates `path` (it must not exist).
    pub fn create_new(path: &Path) -> io::Result<DirectFile> {
        let plain = OpenOptions::new().write(true).create_new(true).open(path)?;
        let direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path);
        let (direct, is_direct) = match direct {
            Ok(f) => (f, true),
            Err(_) => (plain.try_clone()?, false),
        };
        Ok(Self::with(direct, plain, is_direct, CAPACITY))
    }

    fn with(direct: File, plain: File, is_direct: bool, capacity: usize) -> DirectFile {
        let capacity = if is_direct {
            capacity.div_ceil(BLOCK).max(1) * BLOCK
        } else {
            capacity.max(1)
        };
        DirectFile {
            direct,
            plain,
            is_direct,
            mem: Aligned::new(capacity),
            len: 0,
            capacity,
            base: 0,
            written: 0,
            pending: VecDeque::new(),
            unflushed: 0,
        }
    }

    /// Whether whole blocks go past the page cache.
    pub fn is_direct(&self) -> bool {
        self.is_direct
    }

    /// Packets handed to [`DirectFile::put`] whose bytes are not all in the
    /// file yet (lost if the file fails now).
    pub fn unflushed(&self) -> u64 {
        self.unflushed
    }

    /// Bytes handed to [`DirectFile::put`] that are not in the file yet.
    pub fn unwritten(&self) -> u64 {
        (self.base + self.len as u64).saturating_sub(self.written)
    }

    fn buf(&self) -> &[u8] {
        &self.mem.bytes()[..self.len]
    }

    fn spare(&mut self) -> &mut [u8] {
        let (len, cap) = (self.len, self.capacity);
        &mut self.mem.bytes_mut()[len..cap]
    }

    /// Appends `bytes`, which complete `packets` packets. Whole blocks are
    /// written whenever the buffer fills. On error the packets of `bytes`
    /// are not counted in [`DirectFile::unflushed`] (the caller counts
    /// them), and what was buffered may not have reached the file.
    pub fn put(&mut self, mut bytes: &[u8], packets: u64) -> io::Result<()> {
        while !bytes.is_empty() {
            if self.len == self.capacity {
                self.write_blocks()?;
            }
            let spare = self.spare();
            let n = spare.len().min(bytes.len());
            spare[..n].copy_from_slice(&bytes[..n]);
            self.len += n;
            bytes = &bytes[n..];
        }
        if packets > 0 {
            self.pending
                .push_back((self.base + self.len as u64, packets));
            self.unflushed += packets;
        }
        Ok(())
    }

    /// Writes the buffer's whole blocks (all of it when not direct).
    fn write_blocks(&mut self) -> io::Result<()> {
        let n = if self.is_direct {
            self.len / BLOCK * BLOCK
        } else {
            self.len
        };
        if n == 0 {
            return Ok(());
        }
        if let Err(e) = self.direct.write_all_at(&self.buf()[..n], self.base) {
            if !(self.is_direct && e.raw_os_error() == Some(libc::EINVAL)) {
                return Err(e);
            }
            // The file system took O_DIRECT at open but refuses these
            // writes (alignment): ordinary writes from now on.
            tracing::info!(
                "capture file: O_DIRECT write refused ({e}); writing through the page cache"
            );
            self.direct = self.plain.try_clone()?;
            self.is_direct = false;
            return self.write_blocks();
        }
        let base = self.base;
        // The tail moves to the front (less than a block).
        let len = self.len;
        self.mem.bytes_mut().copy_within(n..len, 0);
        self.len -= n;
        self.base = base + n as u64;
        self.written = self.written.max(self.base);
        self.retire();
        Ok(())
    }

    /// Drops the pending packets that are now wholly in the file.
    fn retire(&mut self) {
        while let Some(&(end, n)) = self.pending.front() {
            if end > self.written {
                break;
            }
            self.pending.pop_front();
            self.unflushed -= n;
        }
    }

    /// Writes everything handed over so far into the file (the partial last
    /// block through the page cache).
    pub fn flush(&mut self) -> io::Result<()> {
        self.write_blocks()?;
        if self.len > 0 && self.written < self.base + self.len as u64 {
            self.plain.write_all_at(self.buf(), self.base)?;
            self.written = self.base + self.len as u64;
            self.retire();
        }
        Ok(())
    }

    /// Replaces the file by `file` (ordinary writes, `capacity` bytes of
    /// buffer), keeping what is buffered: tests point it at `/dev/full`.
    #[cfg(test)]
    pub(crate) fn redirect(&mut self, file: File, capacity: usize) -> io::Result<()> {
        self.flush()?;
        let buffered = self.buf().to_vec();
        let (base, written) = (self.base, self.written);
        *self = Self::with(file.try_clone()?, file, false, capacity);
        // The bytes already in the old file stay counted as written.
        self.len = 0;
        self.base = base + buffered.len() as u64;
        self.written = written.max(self.base);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("vtap-direct-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A fresh directory and a new direct file `f` in it (ext4 and tmpfs,
    /// kernel ≥ 6.6, take O_DIRECT).
    fn direct_file(tag: &str) -> (std::path::PathBuf, std::path::PathBuf, DirectFile) {
        let d = tmp(tag);
        let path = d.join("f");
        let f = DirectFile::create_new(&path).unwrap();
        assert!(f.is_direct(), "no O_DIRECT on {}", d.display());
        (d, path, f)
    }

    #[test]
    fn file_holds_exactly_what_was_put_at_every_flush() {
        let (d, path, mut f) = direct_file("exact");
        let mut want = Vec::new();
        let mut seed = 7u32;
        // Pieces of every size around the block and buffer sizes.
        for (k, len) in [
            1usize,
            4095,
            1,
            4096,
            3,
            CAPACITY - 5,
            10,
            2 * CAPACITY + 17,
            0,
            9000,
        ]
        .into_iter()
        .enumerate()
        {
            let piece: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    (seed >> 16) as u8
                })
                .collect();
            f.put(&piece, 1).unwrap();
            want.extend_from_slice(&piece);
            if k % 3 == 2 {
                f.flush().unwrap();
                assert_eq!(std::fs::read(&path).unwrap(), want, "after piece {k}");
                assert_eq!((f.unflushed(), f.unwritten()), (0, 0));
            }
        }
        f.flush().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), want);
        assert_eq!(f.unflushed(), 0);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn unflushed_counts_packets_until_their_last_byte_is_written() {
        let (d, _, mut f) = direct_file("count");
        f.put(&[1; 100], 1).unwrap();
        f.put(&[2; 100], 2).unwrap();
        assert_eq!((f.unflushed(), f.unwritten()), (3, 200));
        // Fill the buffer: the first packets go out with the first blocks,
        // the one straddling the written part stays pending.
        f.put(&vec![3; CAPACITY], 1).unwrap();
        assert_eq!(f.unflushed(), 1);
        assert!(f.unwritten() > 0);
        f.flush().unwrap();
        assert_eq!((f.unflushed(), f.unwritten()), (0, 0));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_refused_direct_write_falls_back_to_ordinary_writes() {
        let (d, path, mut f) = direct_file("einval");
        // A misaligned offset: the kernel refuses the direct write (EINVAL).
        f.base = 1;
        f.written = 1;
        f.put(&vec![7; 3 * BLOCK], 1).unwrap();
        f.flush().unwrap();
        assert!(!f.is_direct());
        let mut want = vec![0u8];
        want.extend_from_slice(&[7; 3 * BLOCK]);
        assert_eq!(std::fs::read(&path).unwrap(), want);
        assert_eq!(f.unflushed(), 0);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn an_existing_file_is_refused() {
        let d = tmp("exists");
        std::fs::write(d.join("f"), b"x").unwrap();
        let e = DirectFile::create_new(&d.join("f")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        let _ = std::fs::remove_dir_all(&d);
    }
}
