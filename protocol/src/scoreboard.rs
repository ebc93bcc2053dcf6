//! The scoreboard: per-service shared memory where instances say how busy
//! they are.
//!
//! The manager creates one sealed memfd per service generation
//! ([`Scoreboard::create`]) and passes it to every instance at
//! [`crate::managed::SCOREBOARD_FD`]; the instance maps it
//! ([`Scoreboard::map`]) and writes only its own slot. The manager reads all
//! slots to scale, to find stuck instances and to show `charon ps`.
//!
//! Every field is an atomic written with plain stores: no locks cross a
//! process boundary, and a reader treats every value as untrusted (an
//! instance can write anything into its slot). Times are `CLOCK_MONOTONIC`
//! nanoseconds, which all processes on the host share.
//!
//! Layout (native endianness; the file never leaves the host):
//!
//! ```text
//! offset 0    Header (64 bytes)
//! offset 64   Slot 0 (128 bytes)
//! offset 192  Slot 1 ...
//! ```
//!
//! This file is safe code: the mapping itself, and [`Scoreboard::map`]
//! whose caller vouches for the file, are in `sys.rs`.

use std::ffi::CStr;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::sys::Mapping;

/// `"CHRNSB01"`, the first 8 bytes of every scoreboard.
pub const MAGIC: u64 = u64::from_be_bytes(*b"CHRNSB01");
/// Layout version.
pub const LAYOUT_VERSION: u32 = 1;
/// Size of the header.
pub const HEADER_SIZE: usize = 64;
/// Size of one slot.
pub const SLOT_SIZE: usize = 128;
/// Most slots a scoreboard holds (the largest `maximum-processes` plus room
/// for a generation's replacements).
pub const MAX_SLOTS: u32 = 20_000;
/// Bytes of the client name kept in a slot.
pub const CLIENT_PREFIX: usize = 32;

/// The scoreboard header, written by the manager.
#[repr(C)]
#[derive(Debug)]
pub struct Header {
    /// [`MAGIC`].
    pub magic: AtomicU64,
    /// [`LAYOUT_VERSION`].
    pub version: AtomicU32,
    /// Number of slots.
    pub slot_count: AtomicU32,
    /// [`SLOT_SIZE`].
    pub slot_size: AtomicU32,
    /// Non-zero while the manager can start more instances and wants a
    /// [`crate::report::Message::Saturated`] hint when every instance is
    /// busy. Zero costs instances nothing per request.
    pub want_hints: AtomicU32,
    /// Monotonic time of the last hint any instance sent, to rate-limit
    /// hints across instances.
    pub last_hint_ns: AtomicU64,
    /// Slots `0..slots_in_use` may be occupied; scans stop there.
    pub slots_in_use: AtomicU32,
    _pad: AtomicU32,
    _reserved: [AtomicU64; 3],
}

/// What a slot's occupant is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotState {
    /// No instance.
    Empty,
    /// Forked, not yet waiting for a request.
    Starting,
    /// Waiting in `accept()`.
    Idle,
    /// Serving a request.
    Busy,
    /// Leaving (request limit reached, or told to stop).
    Exiting,
}

impl SlotState {
    /// The stored value.
    #[must_use]
    pub const fn code(self) -> u32 {
        match self {
            SlotState::Empty => 0,
            SlotState::Starting => 1,
            SlotState::Idle => 2,
            SlotState::Busy => 3,
            SlotState::Exiting => 4,
        }
    }

    /// Decodes a stored value; `None` if an instance wrote garbage.
    #[must_use]
    pub const fn from_code(c: u32) -> Option<SlotState> {
        Some(match c {
            0 => SlotState::Empty,
            1 => SlotState::Starting,
            2 => SlotState::Idle,
            3 => SlotState::Busy,
            4 => SlotState::Exiting,
            _ => return None,
        })
    }
}

/// One instance's slot.
#[repr(C)]
#[derive(Debug)]
pub struct Slot {
    /// A [`SlotState`] code.
    pub state: AtomicU32,
    /// The occupant's pid, written by the manager.
    pub pid: AtomicU32,
    /// Attempt number of the request in hand.
    pub attempt: AtomicU32,
    _pad: AtomicU32,
    /// Requests served (answered or not) since the instance started.
    pub requests: AtomicU64,
    /// Requests after which the instance stops accepting and leaves (0:
    /// no limit); written by the manager before the fork.
    pub request_limit: AtomicU64,
    /// Monotonic start time of the request in hand; 0 when not busy.
    pub busy_since_ns: AtomicU64,
    /// Total busy time, for occupancy.
    pub busy_total_ns: AtomicU64,
    /// Size of the request in hand, in bytes.
    pub request_bytes: AtomicU64,
    /// First bytes of the client name of the request in hand, NUL-padded.
    pub client: [AtomicU64; CLIENT_PREFIX / 8],
    /// Requests after which the instance tells the manager it is about to
    /// reach its limit, so the replacement is started ahead (0, or not
    /// below `request_limit`: at the limit); the manager may move it at
    /// any time.
    pub retire_notice: AtomicU64,
    _reserved: [AtomicU64; 4],
}

const _: () = assert!(std::mem::size_of::<Header>() == HEADER_SIZE);
const _: () = assert!(std::mem::size_of::<Slot>() == SLOT_SIZE);

/// A plain copy of a slot, read field by field (not atomically as a whole:
/// fields may come from two moments; readers must tolerate that).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotSnapshot {
    /// Decoded state; `None` if the stored value is garbage.
    pub state: Option<SlotState>,
    /// Pid.
    pub pid: u32,
    /// Attempt of the request in hand.
    pub attempt: u32,
    /// Requests served.
    pub requests: u64,
    /// Start of the request in hand (0: none).
    pub busy_since_ns: u64,
    /// Total busy time.
    pub busy_total_ns: u64,
    /// Size of the request in hand.
    pub request_bytes: u64,
    /// Client name prefix of the request in hand (lossy UTF-8).
    pub client: String,
}

impl Slot {
    /// Stores a new state.
    pub fn set_state(&self, s: SlotState) {
        self.state.store(s.code(), Ordering::Release);
    }

    /// Reads the state (`None` for garbage).
    #[must_use]
    pub fn state(&self) -> Option<SlotState> {
        SlotState::from_code(self.state.load(Ordering::Acquire))
    }

    /// Instance side: a connection has been accepted. The instance is busy
    /// from here until its answer is written or the connection ends, so a
    /// client that sends nothing still occupies it (and the manager sees
    /// it as busy); `busy_since_ns` waits for the request itself.
    pub fn accepted(&self) {
        self.set_state(SlotState::Busy);
    }

    /// Instance side: a request has been read.
    pub fn begin(&self, now_ns: u64, attempt: u8, request_bytes: u64, client: &str) {
        let mut name = [0u8; CLIENT_PREFIX];
        let n = client.len().min(CLIENT_PREFIX);
        name[..n].copy_from_slice(&client.as_bytes()[..n]);
        for (i, word) in self.client.iter().enumerate() {
            let mut w = [0u8; 8];
            w.copy_from_slice(&name[i * 8..i * 8 + 8]);
            word.store(u64::from_ne_bytes(w), Ordering::Relaxed);
        }
        self.attempt.store(u32::from(attempt), Ordering::Relaxed);
        self.request_bytes.store(request_bytes, Ordering::Relaxed);
        self.busy_since_ns.store(now_ns.max(1), Ordering::Relaxed);
        self.set_state(SlotState::Busy);
    }

    /// Instance side: the request in hand is done. Returns the new count of
    /// requests served.
    pub fn finish(&self, now_ns: u64) -> u64 {
        let since = self.busy_since_ns.swap(0, Ordering::Relaxed);
        if since != 0 {
            self.busy_total_ns
                .fetch_add(now_ns.saturating_sub(since), Ordering::Relaxed);
        }
        self.requests.fetch_add(1, Ordering::Release) + 1
    }

    /// Reads every field.
    #[must_use]
    pub fn snapshot(&self) -> SlotSnapshot {
        let mut name = Vec::with_capacity(CLIENT_PREFIX);
        for word in &self.client {
            name.extend_from_slice(&word.load(Ordering::Relaxed).to_ne_bytes());
        }
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        SlotSnapshot {
            state: self.state(),
            pid: self.pid.load(Ordering::Relaxed),
            attempt: self.attempt.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Acquire),
            busy_since_ns: self.busy_since_ns.load(Ordering::Relaxed),
            busy_total_ns: self.busy_total_ns.load(Ordering::Relaxed),
            request_bytes: self.request_bytes.load(Ordering::Relaxed),
            client: String::from_utf8_lossy(&name[..end]).into_owned(),
        }
    }

    /// Manager side: zeroes the slot for a new occupant.
    pub fn reset(&self, pid: u32, request_limit: u64) {
        self.requests.store(0, Ordering::Relaxed);
        self.busy_since_ns.store(0, Ordering::Relaxed);
        self.busy_total_ns.store(0, Ordering::Relaxed);
        self.request_bytes.store(0, Ordering::Relaxed);
        self.attempt.store(0, Ordering::Relaxed);
        for w in &self.client {
            w.store(0, Ordering::Relaxed);
        }
        self.request_limit.store(request_limit, Ordering::Relaxed);
        self.retire_notice.store(0, Ordering::Relaxed);
        self.pid.store(pid, Ordering::Relaxed);
        self.set_state(if pid == 0 {
            SlotState::Empty
        } else {
            SlotState::Starting
        });
    }
}

/// Monotonic time in nanoseconds, the scoreboard's clock.
#[must_use]
pub fn now_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => (ts.tv_sec() as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(ts.tv_nsec() as u64),
        // CLOCK_MONOTONIC cannot fail on Linux; 0 reads as "no time".
        Err(_) => 0,
    }
}

/// A mapped scoreboard.
#[derive(Debug)]
pub struct Scoreboard {
    mapping: Mapping,
    slots: u32,
}

fn size_for(slots: u32) -> usize {
    HEADER_SIZE + slots as usize * SLOT_SIZE
}

impl Scoreboard {
    /// Creates a scoreboard with `slots` zeroed slots in a new sealed memfd
    /// (it cannot be shrunk or grown afterwards, so a mapping can never
    /// fault). Returns the mapping and the fd to pass to instances.
    ///
    /// # Errors
    ///
    /// `InvalidInput` if `slots` is 0 or over [`MAX_SLOTS`]; otherwise the
    /// failing system call's error.
    pub fn create(name: &CStr, slots: u32) -> io::Result<(Scoreboard, OwnedFd)> {
        if slots == 0 || slots > MAX_SLOTS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("scoreboard slots must be 1 to {MAX_SLOTS}, not {slots}"),
            ));
        }
        let (mapping, fd) = Mapping::create_sealed(name, size_for(slots))?;
        let sb = Scoreboard { mapping, slots };
        let h = sb.header();
        h.version.store(LAYOUT_VERSION, Ordering::Relaxed);
        h.slot_count.store(slots, Ordering::Relaxed);
        h.slot_size.store(SLOT_SIZE as u32, Ordering::Relaxed);
        h.magic.store(MAGIC, Ordering::Release);
        Ok((sb, fd))
    }

    /// The length of a file [`Scoreboard::map`] may map, given its size:
    /// room for the header and at least one slot.
    pub(crate) fn check_file_size(size: i64) -> io::Result<usize> {
        let len = usize::try_from(size).unwrap_or(0);
        if len < HEADER_SIZE + SLOT_SIZE {
            return Err(invalid(format!(
                "scoreboard file of {len} bytes is too small"
            )));
        }
        Ok(len)
    }

    /// Checks that a mapping made by [`Scoreboard::map`] is a scoreboard of
    /// this layout, and takes the slot count from its header.
    pub(crate) fn adopt(mapping: Mapping) -> io::Result<Scoreboard> {
        let h = mapping.header();
        let magic = h.magic.load(Ordering::Acquire);
        if magic != MAGIC {
            return Err(invalid(format!("bad scoreboard magic {magic:#x}")));
        }
        let version = h.version.load(Ordering::Relaxed);
        if version != LAYOUT_VERSION {
            return Err(invalid(format!(
                "scoreboard layout {version} is not {LAYOUT_VERSION}"
            )));
        }
        let slots = h.slot_count.load(Ordering::Relaxed);
        let len = mapping.len();
        if slots == 0 || slots > MAX_SLOTS || size_for(slots) > len {
            return Err(invalid(format!(
                "scoreboard of {len} bytes cannot hold {slots} slots"
            )));
        }
        Ok(Scoreboard { mapping, slots })
    }

    /// The header.
    #[must_use]
    pub fn header(&self) -> &Header {
        self.mapping.header()
    }

    /// Number of slots.
    #[must_use]
    pub const fn slot_count(&self) -> u32 {
        self.slots
    }

    /// Slot `i`, if it exists.
    #[must_use]
    pub fn slot(&self, i: u32) -> Option<&Slot> {
        if i >= self.slots {
            return None;
        }
        let slot = self.mapping.slot(i);
        debug_assert!(
            slot.is_some(),
            "slot {i} of {} outside the mapping",
            self.slots
        );
        slot
    }

    /// True if any slot below `slots_in_use` is idle. Instances call this
    /// only while [`Header::want_hints`] is set.
    #[must_use]
    pub fn any_idle(&self) -> bool {
        let upto = self
            .header()
            .slots_in_use
            .load(Ordering::Relaxed)
            .min(self.slots);
        (0..upto).any(|i| {
            self.slot(i)
                .is_some_and(|s| s.state() == Some(SlotState::Idle))
        })
    }

    /// Claims the right to send a saturation hint: true at most once per
    /// `min_gap_ns` across all instances of the service.
    #[must_use]
    pub fn claim_hint(&self, now_ns: u64, min_gap_ns: u64) -> bool {
        let h = self.header();
        let last = h.last_hint_ns.load(Ordering::Relaxed);
        now_ns.saturating_sub(last) >= min_gap_ns
            && h.last_hint_ns
                .compare_exchange(last, now_ns, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

impl Scoreboard {
    /// Lets the next [`Scoreboard::claim_hint`] succeed at once: for the
    /// manager when it stops watching a service that a hint found not
    /// saturated after all, so the next real saturation is not lost in the
    /// gap.
    pub fn allow_next_hint(&self) {
        self.header().last_hint_ns.store(0, Ordering::Relaxed);
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_are_rate_limited() {
        let (sb, _fd) = Scoreboard::create(c"t", 1).unwrap();
        assert!(sb.claim_hint(10_000_000, 5_000_000));
        assert!(!sb.claim_hint(12_000_000, 5_000_000));
        assert!(sb.claim_hint(16_000_000, 5_000_000));
    }

    #[test]
    fn bad_slot_counts() {
        assert!(Scoreboard::create(c"t", 0).is_err());
        assert!(Scoreboard::create(c"t", MAX_SLOTS + 1).is_err());
    }
}
