//! Managed mode's side channels: the instance's scoreboard slot and the
//! report channel to the manager.
//!
//! Per-request records are batched and sent without blocking, so the
//! manager is woken about once a second per instance, never per request;
//! a batch that cannot be sent at once is dropped rather than delay a
//! request. The batch a service leaves behind when it calls `exit()` is
//! sent by an exit hook ([`Managed::flush_at_exit`]). Deciding *when* the instance is idle or leaving is left
//! to `core.rs`; this module only keeps the slot and the batch honest.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use charon_protocol::managed::REPORT_FD;
use charon_protocol::report::{encode_records, encode_signal, Message, Record, MAX_RECORDS};
use charon_protocol::scoreboard::{now_ns, Scoreboard, Slot, SlotState};
use nix::errno::Errno;
use nix::sys::socket::{recv, send, MsgFlags};

/// How old the oldest unsent record may grow before the batch is sent.
const FLUSH_AGE: Duration = Duration::from_secs(1);
/// Least gap between two saturation hints from all instances of a service.
const HINT_GAP_NS: u64 = 2_000_000;

/// The unsent records, shared with the exit hook.
#[derive(Debug)]
struct Batch {
    records: Vec<Record>,
    oldest: Option<Instant>,
    /// False once the report channel is closed (or the manager gone): the
    /// exit hook must not send then.
    open: bool,
}

/// The batch of the process's own managed instance, for the exit hook,
/// with the pid that registered it.
static AT_EXIT: OnceLock<(u32, Arc<Mutex<Batch>>)> = OnceLock::new();

/// Runs at `exit()`: sends what the instance still holds, so records of a
/// service that exits on its own are not lost. Never blocks, never panics
/// (it runs inside libc's `exit`).
extern "C" fn flush_batch_at_exit() {
    let Some((pid, shared)) = AT_EXIT.get() else {
        return;
    };
    // A child forked without exec inherits the hook and a copy of the
    // batch: only the instance itself may send its records.
    if *pid != std::process::id() {
        return;
    }
    // Held only if exit() was called from inside a batch update, which no
    // library code does; then the records are given up.
    let Ok(mut b) = shared.try_lock() else {
        return;
    };
    if !b.open || b.records.is_empty() {
        return;
    }
    let msg = encode_records(&b.records);
    b.records.clear();
    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
    // The channel is open (`open`), so it is still at the fd the manager
    // arranged: Managed adopted it there and closes it only after clearing
    // `open`.
    let _ = send(REPORT_FD, &msg, flags);
}

/// The scoreboard slot and report channel of a managed instance.
#[derive(Debug)]
pub(crate) struct Managed {
    scoreboard: Scoreboard,
    // Kept open (though the mapping does not need it) so the instance holds
    // fds 3, 4 and 5 exactly as the manager arranged them.
    _scoreboard_fd: OwnedFd,
    slot: u32,
    report: OwnedFd,
    batch: Arc<Mutex<Batch>>,
    retiring_sent: bool,
    /// The slot's request limit is reached: accept nothing more.
    at_limit: bool,
    manager_gone: bool,
}

impl Managed {
    /// `slot` was checked against the scoreboard's slot count by the caller.
    pub(crate) fn new(
        scoreboard: Scoreboard,
        scoreboard_fd: OwnedFd,
        slot: u32,
        report: OwnedFd,
    ) -> Managed {
        Managed {
            scoreboard,
            _scoreboard_fd: scoreboard_fd,
            slot,
            report,
            batch: Arc::new(Mutex::new(Batch {
                records: Vec::with_capacity(MAX_RECORDS),
                oldest: None,
                open: true,
            })),
            retiring_sent: false,
            at_limit: false,
            manager_gone: false,
        }
    }

    fn slot(&self) -> Option<&Slot> {
        self.scoreboard.slot(self.slot)
    }

    fn batch(&self) -> MutexGuard<'_, Batch> {
        // Nothing panics while holding it; a poisoned batch is still valid.
        self.batch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes `exit()` send the unsent batch: for the process's one managed
    /// instance, whose report channel is at [`REPORT_FD`].
    pub(crate) fn flush_at_exit(&self) -> io::Result<()> {
        debug_assert_eq!(self.report.as_raw_fd(), REPORT_FD);
        if AT_EXIT
            .set((std::process::id(), Arc::clone(&self.batch)))
            .is_ok()
        {
            crate::sys::at_exit(flush_batch_at_exit)?;
        }
        Ok(())
    }

    /// The report channel, to poll for the manager hanging up.
    pub(crate) fn report_fd(&self) -> BorrowedFd<'_> {
        self.report.as_fd()
    }

    /// True once the manager is known to be gone.
    pub(crate) const fn manager_gone(&self) -> bool {
        self.manager_gone
    }

    /// True once the request limit is reached: the instance must accept no
    /// further connection and leave (the limit is a hard bound).
    pub(crate) const fn at_limit(&self) -> bool {
        self.at_limit
    }

    /// Marks the slot.
    pub(crate) fn set_state(&self, state: SlotState) {
        if let Some(s) = self.slot() {
            s.set_state(state);
        }
    }

    /// A connection has been accepted: the instance is busy until it is
    /// answered or gone (a silent client occupies it too). If the manager
    /// asked for hints and no instance is idle, tell it we are saturated.
    pub(crate) fn accepted(&mut self) {
        let now = now_ns();
        if let Some(s) = self.slot() {
            s.accepted();
        }
        let sb = &self.scoreboard;
        if sb.header().want_hints.load(Ordering::Relaxed) != 0
            && !sb.any_idle()
            && sb.claim_hint(now, HINT_GAP_NS)
        {
            self.send_now(&encode_signal(&Message::Saturated));
        }
    }

    /// A request has been read: the slot says what it is.
    pub(crate) fn begin(&mut self, attempt: u8, request_bytes: u64, client: &str) {
        if let Some(s) = self.slot() {
            s.begin(now_ns(), attempt, request_bytes, client);
        }
    }

    /// The request in hand is done: count it, batch its record, say
    /// "retiring" once the notice point is reached, and stop accepting at
    /// the request limit.
    pub(crate) fn finish(&mut self, record: Record) {
        let served = self.slot().map_or(0, |s| s.finish(now_ns()));
        let due = {
            let mut b = self.batch();
            if b.records.is_empty() {
                b.oldest = Some(Instant::now());
            }
            b.records.push(record);
            b.records.len() >= MAX_RECORDS || b.oldest.is_some_and(|t| t.elapsed() >= FLUSH_AGE)
        };
        if due {
            self.flush();
        }
        let (limit, notice) = self.slot().map_or((0, 0), |s| {
            (
                s.request_limit.load(Ordering::Relaxed),
                s.retire_notice.load(Ordering::Relaxed),
            )
        });
        if limit == 0 {
            return;
        }
        self.at_limit = served >= limit;
        let notice = if notice == 0 {
            limit
        } else {
            notice.min(limit)
        };
        if served >= notice && !self.retiring_sent {
            self.retiring_sent = true;
            self.flush();
            self.send_now(&encode_signal(&Message::Retiring));
        }
    }

    /// A record for a connection refused before it became a request
    /// (garbage, timeout): batched, but not counted in the slot.
    pub(crate) fn note(&mut self, record: Record) {
        let full = {
            let mut b = self.batch();
            if b.records.is_empty() {
                b.oldest = Some(Instant::now());
            }
            b.records.push(record);
            b.records.len() >= MAX_RECORDS
        };
        if full {
            self.flush();
        }
    }

    /// When the oldest unsent record will be due for sending, if any.
    pub(crate) fn flush_due(&self) -> Option<Instant> {
        self.batch().oldest.map(|t| t + FLUSH_AGE)
    }

    /// Sends the batch now (going idle or leaving), or drops it if the
    /// channel is full.
    pub(crate) fn flush(&mut self) {
        let msg = {
            let mut b = self.batch();
            if b.records.is_empty() {
                return;
            }
            let msg = encode_records(&b.records);
            b.records.clear();
            b.oldest = None;
            msg
        };
        self.send_now(&msg);
    }

    fn send_now(&mut self, msg: &[u8]) {
        if self.manager_gone {
            return;
        }
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        loop {
            match send(self.report.as_raw_fd(), msg, flags) {
                Err(Errno::EINTR) => continue,
                Err(Errno::EPIPE | Errno::ECONNRESET | Errno::ENOTCONN | Errno::EBADF) => {
                    self.gone();
                }
                // Full (EAGAIN) or any other trouble: the batch is lost, the
                // request path never waits on the manager.
                Ok(_) | Err(_) => {}
            }
            return;
        }
    }

    /// Called when the report channel polled readable or hung up: the
    /// manager sends nothing, so this is its end closing.
    pub(crate) fn check_channel(&mut self) {
        let mut byte = [0u8; 16];
        match recv(self.report.as_raw_fd(), &mut byte, MsgFlags::MSG_DONTWAIT) {
            Ok(0) => self.gone(),
            Err(Errno::EAGAIN | Errno::EINTR) | Ok(_) => {}
            Err(_) => self.gone(),
        }
    }

    /// The manager is gone: drain, and stop writing to its stderr pipe.
    fn gone(&mut self) {
        self.manager_gone = true;
        crate::sys::quiet_stderr();
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        self.flush();
        // Before the channel's fd closes (fields drop after this body).
        self.batch().open = false;
        self.set_state(SlotState::Exiting);
    }
}

/// Checks that `fd` is a `SOCK_SEQPACKET` socket, as the report channel
/// must be.
pub(crate) fn check_report_fd(fd: BorrowedFd<'_>) -> io::Result<bool> {
    use nix::sys::socket::{getsockopt, sockopt, SockType};
    Ok(getsockopt(&fd, sockopt::SockType)? == SockType::SeqPacket)
}

#[cfg(test)]
mod tests {
    use super::*;
    use charon_protocol::report::{decode, Outcome, MAX_MESSAGE_LEN};
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

    fn setup(slots: u32, limit: u64) -> (Managed, OwnedFd) {
        let (sb, sb_fd) = Scoreboard::create(c"managed-test", slots).unwrap();
        sb.slot(0).unwrap().reset(1, limit);
        sb.header().slots_in_use.store(slots, Ordering::Relaxed);
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        (Managed::new(sb, sb_fd, 0, ours), theirs)
    }

    fn received(fd: &OwnedFd) -> Vec<Message> {
        let mut out = Vec::new();
        let mut buf = [0u8; MAX_MESSAGE_LEN];
        while let Ok(n) = recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            if n == 0 {
                break;
            }
            out.push(decode(&buf[..n]).unwrap());
        }
        out
    }

    fn rec(i: u32) -> Record {
        Record {
            elapsed_us: i,
            request_bytes: 10,
            response_bytes: 20,
            outcome: Outcome::Ok,
            attempt: 1,
        }
    }

    #[test]
    fn records_go_out_in_full_batches_not_one_by_one() {
        let (mut m, peer) = setup(1, 0);
        for i in 0..(MAX_RECORDS as u32 - 1) {
            m.begin(1, 10, "c");
            m.finish(rec(i));
        }
        assert!(
            received(&peer).is_empty(),
            "nothing before the batch is full"
        );
        m.begin(1, 10, "c");
        m.finish(rec(99));
        let msgs = received(&peer);
        assert_eq!(msgs.len(), 1);
        assert!(matches!(&msgs[0], Message::Records(r) if r.len() == MAX_RECORDS));
        assert_eq!(m.slot().unwrap().snapshot().requests, MAX_RECORDS as u64);
        m.note(rec(7));
        assert!(m.flush_due().is_some());
        m.flush();
        assert_eq!(received(&peer), vec![Message::Records(vec![rec(7)])]);
        assert!(m.flush_due().is_none());
    }

    #[test]
    fn retiring_is_said_once_after_flushing() {
        let (mut m, peer) = setup(1, 2);
        for i in 0..4 {
            assert_eq!(m.at_limit(), i >= 2, "at the limit after 2");
            m.begin(1, 10, "c");
            m.finish(rec(i));
        }
        m.flush();
        let msgs = received(&peer);
        assert_eq!(
            msgs,
            vec![
                Message::Records(vec![rec(0), rec(1)]),
                Message::Retiring,
                Message::Records(vec![rec(2), rec(3)]),
            ]
        );
    }

    #[test]
    fn retiring_is_said_at_the_notice_point_ahead_of_the_limit() {
        let (mut m, peer) = setup(1, 5);
        m.slot().unwrap().retire_notice.store(3, Ordering::Relaxed);
        for i in 0..3 {
            m.begin(1, 10, "c");
            m.finish(rec(i));
        }
        let msgs = received(&peer);
        assert_eq!(msgs.last(), Some(&Message::Retiring), "{msgs:?}");
        assert!(!m.at_limit());
        for i in 3..5 {
            m.begin(1, 10, "c");
            m.finish(rec(i));
        }
        assert!(m.at_limit());
        m.flush();
        assert!(!received(&peer).contains(&Message::Retiring), "said once");
    }

    #[test]
    fn saturation_hint_only_when_wanted_and_nobody_is_idle() {
        let (mut m, peer) = setup(2, 0);
        m.scoreboard.slot(1).unwrap().set_state(SlotState::Busy);
        m.accepted();
        assert!(received(&peer).is_empty(), "hints not wanted");
        m.scoreboard.header().want_hints.store(1, Ordering::Relaxed);
        m.scoreboard.slot(1).unwrap().set_state(SlotState::Idle);
        m.accepted();
        assert!(received(&peer).is_empty(), "another instance is idle");
        m.scoreboard.slot(1).unwrap().set_state(SlotState::Busy);
        m.accepted();
        assert_eq!(received(&peer), vec![Message::Saturated]);
    }

    #[test]
    fn a_closed_channel_means_the_manager_is_gone() {
        let (mut m, peer) = setup(1, 0);
        assert!(!m.manager_gone());
        drop(peer);
        m.check_channel();
        assert!(m.manager_gone());
        let (mut m, peer) = setup(1, 0);
        drop(peer);
        m.note(rec(1));
        m.flush();
        assert!(m.manager_gone(), "a failed send says so too");
    }

    #[test]
    fn dropping_flushes_the_batch() {
        let (mut m, peer) = setup(1, 0);
        m.note(rec(3));
        drop(m);
        assert_eq!(received(&peer), vec![Message::Records(vec![rec(3)])]);
    }
}
