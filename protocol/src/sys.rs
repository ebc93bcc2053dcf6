//! The one home of `unsafe` in this crate: the scoreboard's shared memory.
//!
//! [`Mapping`] owns a shared read-write mapping of a scoreboard file and
//! hands out its memory only as the atomics of a [`Header`] and of
//! [`Slot`]s, bounds-checked against the mapping's length; Drop unmaps it.
//! [`Mapping::create_sealed`] makes the sealed memfd the manager passes to
//! instances, and [`Scoreboard::map`], the public entry point for an
//! inherited fd, is here because its contract is the mapping's.
//!
//! What the bytes mean (magic, version, slot count, the slot protocol) is
//! left to `scoreboard.rs`, which is safe code over this module.

#![allow(unsafe_code)]

use std::ffi::CStr;
use std::io;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
use nix::sys::stat::fstat;
use nix::unistd::ftruncate;

use crate::scoreboard::{Header, Scoreboard, Slot, HEADER_SIZE, SLOT_SIZE};

/// A shared read-write mapping of a scoreboard file, at least
/// [`HEADER_SIZE`] bytes long; unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    base: NonNull<u8>,
    len: NonZeroUsize,
}

// SAFETY: the mapped memory is only ever reached through `header()` and
// `slot()`, as shared references to `Header` and `Slot`, which hold atomics
// and nothing else (atomics are Sync); the pointer is owned by this value
// and unmapped once, in Drop. Moving the value to another thread moves
// nothing but the pointer and the length.
unsafe impl Send for Mapping {}
// SAFETY: as above: shared access goes through atomics only.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Creates a memfd of `len` bytes (zeroed), seals it against shrinking
    /// and growing (and against further seal changes), and maps it.
    /// Returns the mapping and the fd to pass to other processes.
    ///
    /// # Errors
    ///
    /// `InvalidData` if `len` is below [`HEADER_SIZE`], `InvalidInput` if
    /// it does not fit a file size; otherwise the failing system call's
    /// error.
    pub(crate) fn create_sealed(name: &CStr, len: usize) -> io::Result<(Mapping, OwnedFd)> {
        if len < HEADER_SIZE {
            return Err(too_small(len));
        }
        let size = i64::try_from(len).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a scoreboard of {len} bytes is too large"),
            )
        })?;
        let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
        ftruncate(&fd, size)?;
        fcntl(
            &fd,
            FcntlArg::F_ADD_SEALS(
                SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
            ),
        )?;
        // SAFETY: `fd` is the memfd made just above, truncated to exactly
        // `len` bytes and sealed against shrinking; F_SEAL_SEAL means no
        // process can lift that seal, so the file stays `len` bytes long
        // for as long as it exists, and the contract of `map` holds.
        let mapping = unsafe { Mapping::map(fd.as_fd(), len)? };
        Ok((mapping, fd))
    }

    /// Maps the first `len` bytes of `fd`, shared and read-write.
    ///
    /// # Safety
    ///
    /// `fd` must be at least `len` bytes long and stay so while mapped
    /// (shrinking it would turn accesses into SIGBUS).
    ///
    /// # Errors
    ///
    /// `InvalidData` if `len` is below [`HEADER_SIZE`]; otherwise mmap's
    /// error.
    pub(crate) unsafe fn map(fd: BorrowedFd<'_>, len: usize) -> io::Result<Mapping> {
        if len < HEADER_SIZE {
            return Err(too_small(len));
        }
        let nz = NonZeroUsize::new(len).ok_or_else(|| too_small(len))?;
        // SAFETY: a fresh shared mapping at an address the kernel chooses
        // aliases no Rust object; the caller guarantees the file's length.
        let ptr = unsafe {
            mmap(
                None,
                nz,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd,
                0,
            )?
        };
        let base = ptr.cast::<u8>();
        debug_assert_eq!(base.align_offset(std::mem::align_of::<Header>()), 0);
        Ok(Mapping { base, len: nz })
    }

    /// Length of the mapping in bytes.
    pub(crate) const fn len(&self) -> usize {
        self.len.get()
    }

    /// The header, at offset 0.
    pub(crate) fn header(&self) -> &Header {
        // SAFETY: the mapping is page-aligned (so aligned for Header's
        // align of 8) and at least HEADER_SIZE bytes long (checked in
        // `map`); Header is repr(C) of atomics only, valid for every bit
        // pattern, and shared access to atomics is sound even when other
        // processes write them. The reference borrows `self`, so it cannot
        // outlive the mapping.
        unsafe { &*self.base.as_ptr().cast::<Header>() }
    }

    /// Slot `i`, at `HEADER_SIZE + i * SLOT_SIZE`, if it lies wholly
    /// inside the mapping. What the header says about the slot count is
    /// for the caller to check.
    pub(crate) fn slot(&self, i: u32) -> Option<&Slot> {
        let off = (i as usize)
            .checked_mul(SLOT_SIZE)
            .and_then(|o| o.checked_add(HEADER_SIZE))?;
        if off.checked_add(SLOT_SIZE)? > self.len() {
            return None;
        }
        // SAFETY: `off + SLOT_SIZE <= len`, checked just above, so the slot
        // lies inside the mapping; `off` is a multiple of 64 from a
        // page-aligned base, so aligned for Slot (align 8); Slot is atomics
        // only (see header()), and the reference borrows `self`.
        Some(unsafe { &*self.base.as_ptr().add(off).cast::<Slot>() })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: base/len are exactly what mmap returned, and no reference
        // into the mapping outlives `self` (they all borrow it).
        let _ = unsafe { munmap(self.base.cast(), self.len.get()) };
    }
}

impl Scoreboard {
    /// Maps a scoreboard created by [`Scoreboard::create`] in another
    /// process (an instance maps the fd it inherited).
    ///
    /// # Safety
    ///
    /// `fd` must refer to a file that no process will shrink while it is
    /// mapped (shrinking would turn accesses into SIGBUS). A memfd made by
    /// [`Scoreboard::create`] is sealed against that; this function checks
    /// the size, magic and version but cannot check the seals of an
    /// arbitrary file.
    ///
    /// # Errors
    ///
    /// `InvalidData` if the file is not a scoreboard of this layout.
    pub unsafe fn map(fd: BorrowedFd<'_>) -> io::Result<Scoreboard> {
        let st = fstat(fd)?;
        let len = Scoreboard::check_file_size(st.st_size)?;
        // SAFETY: `len` is the file's size as fstat(2) just reported it,
        // and the caller promises nobody shrinks the file while it is
        // mapped.
        let mapping = unsafe { Mapping::map(fd, len)? };
        Scoreboard::adopt(mapping)
    }
}

fn too_small(len: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("a scoreboard mapping of {len} bytes cannot hold its {HEADER_SIZE}-byte header"),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::scoreboard::SlotState;

    #[test]
    fn create_then_map_shares_memory() {
        let (a, fd) = Scoreboard::create(c"test", 4).unwrap();
        // SAFETY: fd is a sealed scoreboard memfd made just above.
        let b = unsafe { Scoreboard::map(fd.as_fd()).unwrap() };
        assert_eq!(b.slot_count(), 4);
        a.slot(2).unwrap().reset(1234, 5);
        a.header().slots_in_use.store(3, Ordering::Relaxed);
        let s = b.slot(2).unwrap();
        assert_eq!(s.state(), Some(SlotState::Starting));
        s.begin(1_000, 2, 77, "a-client-with-a-rather-long-name-indeed");
        let snap = a.slot(2).unwrap().snapshot();
        assert_eq!(snap.pid, 1234);
        assert_eq!(snap.state, Some(SlotState::Busy));
        assert_eq!(snap.attempt, 2);
        assert_eq!(snap.request_bytes, 77);
        assert_eq!(snap.client, "a-client-with-a-rather-long-name");
        assert!(!a.any_idle());
        assert_eq!(s.finish(4_000), 1);
        s.set_state(SlotState::Idle);
        assert!(a.any_idle());
        assert_eq!(a.slot(2).unwrap().snapshot().busy_total_ns, 3_000);
        assert!(a.slot(4).is_none());
    }

    #[test]
    fn seals_refuse_resizing() {
        let (_sb, fd) = Scoreboard::create(c"t", 2).unwrap();
        assert!(ftruncate(&fd, 1).is_err());
        assert!(ftruncate(&fd, 1 << 20).is_err());
    }

    #[test]
    fn map_refuses_foreign_files() {
        let f = memfd_create(c"x", MFdFlags::MFD_CLOEXEC).unwrap();
        ftruncate(&f, 4096).unwrap();
        // SAFETY: the file is ours and nobody resizes it during the test.
        let err = unsafe { Scoreboard::map(f.as_fd()) }.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn map_refuses_files_too_small() {
        let f = memfd_create(c"x", MFdFlags::MFD_CLOEXEC).unwrap();
        ftruncate(&f, (HEADER_SIZE + SLOT_SIZE - 1) as i64).unwrap();
        // SAFETY: the file is ours and nobody resizes it during the test.
        let err = unsafe { Scoreboard::map(f.as_fd()) }.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("too small"), "{err}");
    }

    #[test]
    fn slots_past_the_mapping_are_refused() {
        let (m, _fd) = Mapping::create_sealed(c"t", HEADER_SIZE + 2 * SLOT_SIZE).unwrap();
        assert!(m.slot(1).is_some());
        assert!(m.slot(2).is_none());
        assert!(m.slot(u32::MAX).is_none());
    }
}
