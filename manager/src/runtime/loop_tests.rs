//! The event loop's bookkeeping without forking: a recording [`Spawner`]
//! stands in for fork/exec and kill, exits are fed to `on_reaped` by hand,
//! and real sockets, pipes and a real scoreboard carry the rest. What the
//! automaton decides is tested in `service/transition.rs`; here, that the
//! loop carries it out (slots, signals, fast fail, recycling, shutdown, a
//! reload's swap of generations).

use std::cell::RefCell;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use charon_protocol::report::{encode_records, encode_signal, Message, Outcome, Record};
use charon_protocol::scoreboard::{now_ns, Scoreboard, SlotState};
use charon_protocol::{decode_response, Limits, Response, ServiceKey, HEADER_LEN};
use nix::fcntl::OFlag;
use nix::sys::signal::Signal;
use nix::sys::socket::{send, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};

use super::{Manager, Paths};
use crate::config::ServiceConfig;
use crate::generation::Gen;
use crate::instance::Replacement;
use crate::service::state::KillReason;
use crate::service::transition::{Event, StartWhy};
use crate::services::{Bound, Watch};
use crate::signals::Signals;
use crate::spawn::{Launch, Spawned, Spawner};
use crate::startup;
use crate::sys::{Reaped, WaitStatus};
use crate::timers::Timer;

/// What the stand-in saw, and the far ends of each fake instance's fds.
#[derive(Default)]
struct Seen {
    spawned: Vec<(i32, u32)>,
    signals: Vec<(i32, Signal)>,
    stderr: Vec<OwnedFd>,
    report: Vec<OwnedFd>,
    /// What the manager's children look like (instances and orphans).
    children: Vec<i32>,
    /// Make each spawn fail with this errno.
    fail: Option<i32>,
    /// Templates started (`template = true`): pid and the far end of the
    /// control channel, which the test plays.
    templates: Vec<(i32, OwnedFd)>,
}

struct Recorder {
    seen: Rc<RefCell<Seen>>,
    next_pid: i32,
}

impl Spawner for Recorder {
    fn spawn(&mut self, l: &Launch<'_>) -> std::io::Result<Spawned> {
        if let Some(errno) = self.seen.borrow().fail {
            return Err(std::io::Error::from_raw_os_error(errno));
        }
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )?;
        // Far above any real pid: nothing is ever signalled for real here.
        self.next_pid += 1;
        let pid = 40_000_000 + self.next_pid;
        let mut seen = self.seen.borrow_mut();
        if l.template {
            seen.templates.push((pid, theirs));
            drop(w);
            return Ok(Spawned {
                pid,
                stderr: r,
                report: ours,
            });
        }
        seen.spawned.push((pid, l.slot));
        seen.stderr.push(w);
        seen.report.push(theirs);
        Ok(Spawned {
            pid,
            stderr: r,
            report: ours,
        })
    }

    fn signal(&mut self, pid: i32, sig: Signal) {
        self.seen.borrow_mut().signals.push((pid, sig));
    }

    /// The test process's own children are not the manager's.
    fn children(&self) -> Vec<i32> {
        self.seen.borrow().children.clone()
    }
}

struct Rig {
    m: Manager,
    seen: Rc<RefCell<Seen>>,
    dir: tempfile::TempDir,
}

fn rig(edit: impl FnOnce(&mut ServiceConfig)) -> Rig {
    let dir = tempfile::Builder::new()
        .prefix("cl")
        .tempdir_in("/tmp")
        .unwrap();
    let conf = dir.path().join("conf");
    let run = dir.path().join("run");
    std::fs::create_dir_all(&conf).unwrap();
    let key = ServiceKey::parse_config("system.echo.0.raw").unwrap();
    let mut c = ServiceConfig::defaults(
        key,
        conf.join("system.echo.0.raw.toml"),
        vec!["/bin/true".into()],
    );
    c.maximum_requests_jitter = 0;
    edit(&mut c);
    let lock = startup::lock_run_dir(&run).unwrap();
    let (listen, sock_path) =
        startup::bind_socket_at(&c, run.join(c.key.socket_file_name())).unwrap();
    let (board, board_fd) = Scoreboard::create(c"test", 16).unwrap();
    let seen = Rc::new(RefCell::new(Seen::default()));
    let m = Manager::new(
        Paths {
            config_dir: conf,
            run_dir: run,
            stats_interval: Duration::from_secs(600),
        },
        lock,
        Signals::new().unwrap(),
        vec![Bound::new(c, (listen, sock_path), (board, board_fd))],
        startup::devnull().unwrap(),
        Box::new(Recorder {
            seen: Rc::clone(&seen),
            next_pid: 0,
        }),
    )
    .unwrap();
    Rig { m, seen, dir }
}

impl Rig {
    fn begin(&mut self) {
        self.m.events.push_back((0, Event::Begin));
        self.m.process_events();
    }

    fn pids(&self) -> Vec<i32> {
        self.seen.borrow().spawned.iter().map(|&(p, _)| p).collect()
    }

    /// The first service's figures as `charon stats` shows them.
    fn stats(&self) -> serde_json::Map<String, serde_json::Value> {
        self.m.services[0].stats().to_json()
    }

    fn exit(&mut self, pid: i32, status: WaitStatus) {
        self.m.on_reaped(Reaped {
            pid,
            status,
            cpu_us: 1000,
            maxrss_kib: 10,
        });
        self.m.process_events();
    }

    fn id_of(&self, pid: i32) -> usize {
        self.m.procs.id_of(pid).unwrap()
    }

    /// Sends `msg` on fake instance `i`'s report channel, as its library
    /// would.
    fn report(&self, i: usize, msg: &[u8]) {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.seen.borrow().report[i]);
        send(fd, msg, MsgFlags::empty()).unwrap();
    }

    fn connect(&self) -> UnixStream {
        UnixStream::connect(self.dir.path().join("run/system.echo.0.raw.sock")).unwrap()
    }
}

#[test]
fn prestart_fills_slots_in_order_with_limits_and_pids() {
    let mut r = rig(|c| {
        c.prestart_processes = true;
        c.minimum_processes = 3;
        c.maximum_requests = 100;
    });
    r.begin();
    let seen = r.seen.borrow();
    assert_eq!(
        seen.spawned.iter().map(|&(_, s)| s).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    let board = r.m.services[0].board();
    assert_eq!(board.header().slots_in_use.load(Ordering::Relaxed), 3);
    for (i, &(pid, slot)) in seen.spawned.iter().enumerate() {
        let s = board.slot(slot).unwrap();
        assert_eq!(s.pid.load(Ordering::Relaxed), pid as u32, "slot {i}");
        assert_eq!(s.request_limit.load(Ordering::Relaxed), 100);
        assert_eq!(s.state(), Some(SlotState::Starting));
    }
    assert_eq!(r.stats()["launches"], 3);
}

#[test]
fn on_demand_spawns_on_the_first_connect_and_stops_watching() {
    let mut r = rig(|_| {});
    r.begin();
    assert!(r.pids().is_empty());
    assert_eq!(r.m.services[0].watch(), Watch::Demand);
    let _client = r.connect();
    r.m.on_listener(0);
    r.m.process_events();
    assert_eq!(r.pids().len(), 1);
    assert_eq!(r.m.services[0].watch(), Watch::Off);
}

#[test]
fn a_failed_exit_enters_backoff_and_fast_fails_with_the_reason() {
    let mut r = rig(|c| c.prestart_processes = true);
    r.begin();
    let pid = r.pids()[0];
    nix::unistd::write(&r.seen.borrow().stderr[0], b"config missing\n").unwrap();
    r.exit(pid, WaitStatus::Exited(1));
    let svc = &r.m.services[0];
    assert_eq!(svc.watch(), Watch::FastFail);
    assert_eq!(svc.stats().to_json()["backoffs"], 1);
    assert_eq!(svc.board().header().slots_in_use.load(Ordering::Relaxed), 0);
    let mut client = r.connect();
    client.write_all(b"anything").unwrap();
    r.m.on_listener(0);
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).unwrap();
    let payload = answer.get(HEADER_LEN..).unwrap_or_default();
    match decode_response(payload, &Limits::default()).unwrap() {
        Response::Unavailable {
            retry_after,
            reason,
        } => {
            assert_eq!(retry_after, 1);
            assert!(reason.contains("exit 1 (nonzero)"), "{reason}");
            assert!(
                reason.contains("last stderr line: config missing"),
                "{reason}"
            );
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert_eq!(r.stats()["fast_failed"], 1);
    assert_eq!(r.pids().len(), 1, "no fork during backoff");
}

#[test]
fn a_stopped_instance_gets_sigterm_then_sigkill_and_counts_under_its_reason() {
    let mut r = rig(|c| {
        c.prestart_processes = true;
        c.stop_grace = Duration::from_millis(5);
    });
    r.begin();
    let first = r.pids()[0];
    r.m.spawn_one(0, StartWhy::Grow);
    let id = r.id_of(first);
    r.m.stop_instance(id, KillReason::Idle);
    assert_eq!(r.seen.borrow().signals, [(first, Signal::SIGTERM)]);
    r.m.check_life(id, Instant::now() + Duration::from_secs(1));
    assert_eq!(
        r.seen.borrow().signals,
        [(first, Signal::SIGTERM), (first, Signal::SIGKILL)]
    );
    r.exit(first, WaitStatus::Signaled(9));
    let svc = &r.m.services[0];
    assert_eq!(svc.stats().to_json()["exits"]["idle"], 1);
    assert_eq!(svc.stats().to_json()["exits"]["crashed"], 0);
    assert_eq!(r.pids().len(), 2, "one left, no replacement needed");
}

#[test]
fn a_crash_is_replaced_and_reports_are_counted() {
    let mut r = rig(|c| c.prestart_processes = true);
    r.begin();
    let pid = r.pids()[0];
    let rec = Record {
        elapsed_us: 250,
        request_bytes: 10,
        response_bytes: 12,
        outcome: Outcome::Ok,
        attempt: 1,
    };
    r.report(0, &encode_records(&[rec, rec]));
    let id = r.id_of(pid);
    r.m.read_reports(id);
    assert_eq!(r.stats()["requests"], 2);
    r.exit(pid, WaitStatus::Signaled(11));
    assert_eq!(r.stats()["exits"]["crashed"], 1);
    assert_eq!(r.pids().len(), 2, "replaced");
}

#[test]
fn sigkill_from_outside_makes_a_crash_loop_only_before_ready() {
    // The default crash loop: 5 young crashes within 10 s. An instance
    // SIGKILLed once ready is not young, however often it happens.
    for (ready, loop_expected) in [(true, false), (false, true)] {
        let mut r = rig(|c| c.prestart_processes = true);
        r.begin();
        for kill in 0..5 {
            let (pid, slot) = *r.seen.borrow().spawned.last().unwrap();
            if ready {
                r.m.services[0]
                    .board()
                    .slot(slot)
                    .unwrap()
                    .set_state(SlotState::Idle);
            }
            r.exit(pid, WaitStatus::Signaled(9));
            if kill < 4 || ready {
                assert_eq!(r.pids().len(), kill + 2, "replaced (ready: {ready})");
                assert!(!r.m.services[0].mode().is_backoff());
            }
        }
        let svc = &r.m.services[0];
        assert_eq!(svc.stats().to_json()["exits"]["crashed"], 5);
        assert_eq!(svc.mode().is_backoff(), loop_expected, "ready: {ready}");
    }
}

#[test]
fn a_fresh_instance_killed_by_a_retry_is_the_requests_victim_not_the_programs() {
    // A poison request's retry lands on a fresh replacement and kills it
    // (exit 1, before it completed any request). With the retry in hand
    // that death is the request's: no backoff. The same death on a first
    // attempt still is young, and backs off at once.
    for (attempt, backoff) in [(2u8, false), (1, true)] {
        let mut r = rig(|c| c.prestart_processes = true);
        r.begin();
        let (pid, slot) = *r.seen.borrow().spawned.last().unwrap();
        let board = r.m.services[0].board();
        board.slot(slot).unwrap().accepted();
        board
            .slot(slot)
            .unwrap()
            .begin(now_ns(), attempt, 10, "poison");
        r.exit(pid, WaitStatus::Exited(1));
        let svc = &r.m.services[0];
        assert_eq!(svc.stats().to_json()["exits"]["nonzero"], 1);
        assert_eq!(svc.mode().is_backoff(), backoff, "attempt {attempt}");
        if !backoff {
            assert_eq!(r.pids().len(), 2, "replaced (attempt {attempt})");
        }
    }
}

#[test]
fn a_first_attempt_death_once_another_instance_has_served_is_the_requests() {
    // Two instances (the pool's shape); one has completed a request, so
    // the program is proven. A poison request's first attempt kills the
    // other, which has served nothing: the request's victim, replaced, no
    // backoff. Without the served request, the same death backs off.
    for proven in [true, false] {
        let mut r = rig(|c| {
            c.prestart_processes = true;
            c.minimum_processes = 2;
        });
        r.begin();
        let spawned = r.seen.borrow().spawned.clone();
        let [(_, served_slot), (victim, victim_slot)] = spawned[..] else {
            panic!("two instances: {spawned:?}");
        };
        let board = r.m.services[0].board();
        if proven {
            let sl = board.slot(served_slot).unwrap();
            sl.accepted();
            sl.begin(now_ns(), 1, 10, "good");
            sl.finish(now_ns());
        }
        board.slot(victim_slot).unwrap().accepted();
        board
            .slot(victim_slot)
            .unwrap()
            .begin(now_ns(), 1, 10, "poison");
        r.exit(victim, WaitStatus::Exited(1));
        let svc = &r.m.services[0];
        assert_eq!(svc.stats().to_json()["exits"]["nonzero"], 1);
        assert_eq!(svc.mode().is_backoff(), !proven, "proven={proven}");
        if proven {
            assert_eq!(r.pids().len(), 3, "replaced");
        }
    }
}

#[test]
fn a_client_waiting_while_every_instance_is_busy_grows_the_pool_at_the_tick() {
    // The instance's saturation hint is lost (sent before the flag said
    // hints were wanted, or rate-limited) and nothing watches the socket:
    // the tick sees the client waiting with no instance idle and grows.
    let mut r = rig(|_| {});
    r.begin();
    let _first = r.connect();
    r.m.on_listener(0);
    r.m.process_events();
    assert_eq!(r.pids().len(), 1);
    assert_eq!(r.m.services[0].watch(), Watch::Off);
    // The instance is busy (on another connection, say a kept
    // conversation), and this client still waits.
    let (_, slot) = r.seen.borrow().spawned[0];
    r.m.services[0].board().slot(slot).unwrap().accepted();
    r.m.tick(Instant::now());
    r.m.process_events();
    assert_eq!(r.pids().len(), 2, "grew at the tick");
}

#[test]
fn retiring_starts_the_replacement_and_the_old_one_serves_to_its_limit() {
    let mut r = rig(|c| c.prestart_processes = true);
    r.begin();
    let old = r.pids()[0];
    r.report(0, &encode_signal(&Message::Retiring));
    let id = r.id_of(old);
    r.m.read_reports(id);
    let spawned = r.seen.borrow().spawned.clone();
    assert_eq!(spawned.len(), 2, "replacement first");
    assert!(r.seen.borrow().signals.is_empty(), "old one still serves");
    // The replacement is not ready yet: nothing happens.
    r.m.recycle_step(0);
    assert!(r.seen.borrow().signals.is_empty());
    let board = r.m.services[0].board();
    board.slot(spawned[1].1).unwrap().set_state(SlotState::Idle);
    r.m.recycle_step(0);
    // The replacement is ready, but the old one, busy lately, serves on to
    // its limit and leaves by itself.
    assert!(r.seen.borrow().signals.is_empty());
    r.exit(old, WaitStatus::Exited(0));
    assert_eq!(r.stats()["exits"]["max_requests"], 1);
    assert_eq!(r.pids().len(), 2, "no extra replacement");
}

#[test]
fn a_retiree_left_without_a_slot_for_its_replacement_is_stopped_once_idle() {
    // Every slot in use (retirees, and instances that refilled the pool
    // when others reached their limit): no replacement can start, and
    // none of these would ever leave by itself once the load went away.
    let mut r = rig(|c| c.prestart_processes = true);
    r.begin();
    while r.m.services[0].has_free_slot() {
        r.m.spawn_one(0, StartWhy::Grow);
    }
    let spawned = r.seen.borrow().spawned.clone();
    let board = r.m.services[0].board();
    for &(_, slot) in &spawned {
        board.slot(slot).unwrap().set_state(SlotState::Idle);
    }
    let (old, _) = spawned[0];
    let id = r.id_of(old);
    r.m.retire(id, KillReason::MaxRequests);
    assert_eq!(r.seen.borrow().spawned.len(), spawned.len(), "no slot");
    // Busy lately: it serves on while it waits.
    r.m.recycle_step(0);
    assert!(r.seen.borrow().signals.is_empty());
    if let Some(i) = r.m.procs.get_mut(id) {
        i.set_idle_since(Instant::now() - Duration::from_secs(2));
    }
    r.m.recycle_step(0);
    assert_eq!(r.seen.borrow().signals, [(old, Signal::SIGTERM)]);
    r.exit(old, WaitStatus::Exited(0));
    assert_eq!(r.stats()["exits"]["max_requests"], 1);
}

#[test]
fn a_retiree_idle_for_a_while_is_stopped_once_its_replacement_is_ready() {
    let mut r = rig(|c| c.prestart_processes = true);
    r.begin();
    let old = r.pids()[0];
    let id = r.id_of(old);
    r.m.retire(id, KillReason::MaxRequests);
    let spawned = r.seen.borrow().spawned.clone();
    assert_eq!(spawned.len(), 2, "replacement first");
    let board = r.m.services[0].board();
    board.slot(spawned[1].1).unwrap().set_state(SlotState::Idle);
    if let Some(i) = r.m.procs.get_mut(id) {
        i.set_idle_since(Instant::now() - Duration::from_secs(2));
    }
    r.m.recycle_step(0);
    assert_eq!(r.seen.borrow().signals, [(old, Signal::SIGTERM)]);
    r.exit(old, WaitStatus::Exited(0));
    assert_eq!(r.stats()["exits"]["max_requests"], 1);
    assert_eq!(r.pids().len(), 2, "no extra replacement");
}

/// Starts every launch owed: the refill paced by the fork pacer, and any
/// replacement a retiree still waits for.
fn settle(r: &mut Rig) {
    r.m.replace_owed(0);
    r.m.recycle_step(0);
}

#[test]
fn a_retiree_that_reaches_its_limit_before_its_replacement_started_is_replaced_once() {
    // Three at the minimum, so that the third retiree's replacement waits
    // for the recycling cap while the pool needs refilling when it leaves.
    let mut r = rig(|c| {
        c.prestart_processes = true;
        c.minimum_processes = 3;
    });
    r.begin();
    let first = r.pids();
    assert_eq!(first.len(), 3);
    for &pid in &first {
        let id = r.id_of(pid);
        r.m.retire(id, KillReason::MaxRequests);
    }
    assert_eq!(r.pids().len(), 5, "two replacements under way, one waits");
    let waiting =
        r.m.procs
            .get(r.id_of(first[2]))
            .map(|i| i.life().retiring());
    assert_eq!(
        waiting,
        Some(Some((KillReason::MaxRequests, Replacement::Wanted)))
    );
    // The waiting retiree reaches its limit and leaves by itself.
    r.exit(first[2], WaitStatus::Exited(0));
    settle(&mut r);
    assert_eq!(
        r.pids().len(),
        6,
        "one start for the third retiree, not two"
    );
    assert_eq!(r.stats()["exits"]["max_requests"], 1);
    assert_eq!(r.m.live_count(0), 3);
}

#[test]
fn a_retirement_notice_read_with_the_exit_is_replaced_once() {
    // The notice and the exit at the limit come in one turn: the notice is
    // read as the instance is reaped.
    let mut r = rig(|c| c.prestart_processes = true);
    r.begin();
    let old = r.pids()[0];
    r.report(0, &encode_signal(&Message::Retiring));
    r.exit(old, WaitStatus::Exited(0));
    settle(&mut r);
    assert_eq!(r.pids().len(), 2, "one start for the retiree, not two");
    assert_eq!(r.stats()["exits"]["max_requests"], 1);
    assert_eq!(r.m.live_count(0), 1);
}

#[test]
fn a_replacement_lost_before_its_retiree_left_is_started_again_once() {
    let mut r = rig(|c| c.prestart_processes = true);
    r.begin();
    let old = r.pids()[0];
    let id = r.id_of(old);
    r.m.retire(id, KillReason::MaxRequests);
    let spawned = r.seen.borrow().spawned.clone();
    assert_eq!(spawned.len(), 2, "replacement first");
    let board = r.m.services[0].board();
    board.slot(spawned[1].1).unwrap().set_state(SlotState::Idle);
    r.m.recycle_step(0);
    // Killed from outside while the retiree serves on to its limit.
    r.exit(spawned[1].0, WaitStatus::Signaled(Signal::SIGKILL as i32));
    settle(&mut r);
    assert_eq!(
        r.pids().len(),
        3,
        "one start for the lost replacement, not two"
    );
    r.exit(old, WaitStatus::Exited(0));
    settle(&mut r);
    assert_eq!(r.m.live_count(0), 1, "the pool back at its minimum");
}

#[test]
fn shutdown_drains_every_group_removes_the_socket_and_starts_nothing() {
    let mut r = rig(|c| {
        c.prestart_processes = true;
        c.minimum_processes = 2;
    });
    r.begin();
    let pids = r.pids();
    let spawned = r.seen.borrow().spawned.clone();
    r.m.begin_shutdown();
    assert!(!r.dir.path().join("run/system.echo.0.raw.sock").exists());
    // Not up yet: SIGUSR1 would kill them before their handler is in.
    assert!(r.seen.borrow().signals.is_empty());
    for (_, slot) in &spawned {
        r.m.services[0]
            .board()
            .slot(*slot)
            .unwrap()
            .set_state(SlotState::Idle);
    }
    assert!(r.m.generation_step(0, Instant::now()));
    let sigs = r.seen.borrow().signals.clone();
    assert_eq!(sigs.len(), 2);
    assert!(sigs
        .iter()
        .all(|&(p, s)| pids.contains(&p) && s == Signal::SIGUSR1));
    // A second stop signal does not wait for stop-grace.
    r.m.begin_shutdown();
    let sigs = r.seen.borrow().signals.clone();
    assert_eq!(
        sigs.iter().filter(|&&(_, s)| s == Signal::SIGKILL).count(),
        2
    );
    for p in pids {
        r.exit(p, WaitStatus::Exited(0));
    }
    assert!(r.m.procs.is_empty());
    assert_eq!(r.stats()["exits"]["shutdown"], 2);
    assert_eq!(r.pids().len(), 2, "nothing restarted");
    // The queue is empty: the generation is freed, and the loop may end.
    assert!(!r.m.generation_step(0, Instant::now()));
    assert!(r.m.services.is_empty());
}

#[test]
fn shutdown_serves_a_queue_left_with_no_instance() {
    // On demand, a client queued and no instance yet when the stop comes.
    let mut r = rig(|_| {});
    r.begin();
    let _client = UnixStream::connect(r.dir.path().join("run/system.echo.0.raw.sock")).unwrap();
    r.m.begin_shutdown();
    assert!(r.seen.borrow().spawned.is_empty());
    assert!(r.m.generation_step(0, Instant::now()));
    assert_eq!(r.seen.borrow().spawned.len(), 1, "one instance serves it");
    // It is waited for while it starts, but not past stop-grace.
    assert!(r.m.generation_step(0, Instant::now()));
    assert!(r.seen.borrow().signals.is_empty());
    let late = Instant::now() + r.m.services[0].config().stop_grace;
    assert!(r.m.generation_step(0, late));
    let pid = r.pids()[0];
    assert_eq!(r.seen.borrow().signals, [(pid, Signal::SIGTERM)]);
}

#[test]
fn a_second_stop_signal_kills_every_instance_and_closes_the_queue_unserved() {
    let mut r = rig(|c| c.prestart_processes = true);
    r.begin();
    let pids = r.pids();
    let mut client = UnixStream::connect(r.dir.path().join("run/system.echo.0.raw.sock")).unwrap();
    r.m.begin_shutdown();
    r.m.begin_shutdown();
    let kills: Vec<_> = pids.iter().map(|&p| (p, Signal::SIGKILL)).collect();
    assert_eq!(r.seen.borrow().signals, kills);
    // Every instance was asked (killed): nothing more is sent while they go.
    assert!(r.m.generation_step(0, Instant::now()));
    assert_eq!(r.seen.borrow().signals.len(), pids.len());
    for &p in &pids {
        r.exit(p, WaitStatus::Signaled(9));
    }
    // The queue is left with no instance: closed, not served.
    assert!(r.m.generation_step(0, Instant::now()));
    assert_eq!(r.seen.borrow().spawned.len(), pids.len(), "nothing started");
    let mut b = [0u8; 1];
    assert_eq!(
        std::io::Read::read(&mut client, &mut b).unwrap(),
        0,
        "closed"
    );
    assert!(!r.m.generation_step(0, Instant::now()), "then freed");
}

#[test]
fn shutdown_leaves_the_queue_and_file_of_a_socket_systemd_keeps() {
    // The same stop, but systemd keeps the socket (fd store or socket
    // activation): the next charond serves the queue; nothing is spawned
    // for it or closed, and the file stays.
    let mut r = rig(|_| {});
    r.m.fdstore = crate::fdstore::FdStore::passed("system.echo.0.raw");
    r.begin();
    let path = r.dir.path().join("run/system.echo.0.raw.sock");
    // systemd's copy of the socket.
    let _systemd = r.m.services[0].listen().try_clone().unwrap();
    let mut client = UnixStream::connect(&path).unwrap();
    r.m.begin_shutdown();
    assert!(!r.m.generation_step(0, Instant::now()), "freed at once");
    assert!(r.seen.borrow().spawned.is_empty());
    assert!(path.exists());
    // Still queued, not closed: a read would block, not see EOF.
    client.set_nonblocking(true).unwrap();
    let mut b = [0u8; 1];
    let e = std::io::Read::read(&mut client, &mut b).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
}

#[test]
fn a_request_past_unresponsive_timeout_is_killed_and_a_young_one_gets_a_deadline() {
    let mut r = rig(|c| {
        c.prestart_processes = true;
        c.minimum_processes = 2;
        c.unresponsive_timeout = Some(Duration::from_secs(1));
    });
    r.begin();
    let pids = r.pids();
    let board = r.m.services[0].board();
    let now_ns = charon_protocol::scoreboard::now_ns();
    board
        .slot(0)
        .unwrap()
        .begin(now_ns - 2_000_000_000, 1, 42, "stuck-client");
    board.slot(1).unwrap().begin(now_ns, 1, 7, "fresh-client");
    let now = Instant::now();
    let (stuck, fresh) = (r.id_of(pids[0]), r.id_of(pids[1]));
    assert!(r.m.check_unresponsive(stuck, now, now_ns));
    assert!(!r.m.check_unresponsive(fresh, now, now_ns));
    assert_eq!(r.seen.borrow().signals, [(pids[0], Signal::SIGKILL)]);
    let due =
        r.m.timers
            .get(crate::timers::Timer::Unresponsive(fresh))
            .expect("a deadline for the fresh request");
    assert!(due > now + Duration::from_millis(900) && due < now + Duration::from_millis(1100));
    r.exit(pids[0], WaitStatus::Signaled(9));
    assert_eq!(r.stats()["exits"]["unresponsive"], 1);
    assert_eq!(r.pids().len(), 3, "replaced up to the minimum");
}

#[test]
fn garbage_reports_are_counted_not_trusted() {
    let mut r = rig(|c| c.prestart_processes = true);
    r.begin();
    let pid = r.pids()[0];
    for junk in [&b"\x01\x01\x00\x05"[..], b"\x09", b"\x01\x07\x00\x00"] {
        r.report(0, junk);
    }
    let rec = Record {
        elapsed_us: 1,
        request_bytes: 1,
        response_bytes: 1,
        outcome: Outcome::Fault,
        attempt: 2,
    };
    r.report(0, &encode_records(&[rec]));
    let id = r.id_of(pid);
    r.m.read_reports(id);
    let stats = r.stats();
    let n = |k: &str| stats[k].as_u64();
    assert_eq!(
        (n("requests"), n("faults"), n("retried")),
        (Some(1), Some(1), Some(1))
    );
    assert_eq!(r.m.procs.get(id).map(|i| i.bad_reports()), Some(3));
}

fn inode(p: &std::path::Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap())
}

/// A reload with the service's file changed: (old index, pending index).
fn reload_changed(r: &mut Rig) -> (usize, usize) {
    std::fs::write(
        r.dir.path().join("conf/system.echo.0.raw.toml"),
        "exec = \"/bin/true\"\nprestart-processes = true\nminimum-processes = 1\n",
    )
    .unwrap();
    r.m.reload(None);
    r.m.process_events();
    let pending =
        r.m.services
            .iter()
            .find(|(_, v)| matches!(v.gen(), Gen::Pending { .. }))
            .map(|(s, _)| s)
            .expect("a pending generation");
    (0, pending)
}

#[test]
fn a_new_generation_is_not_swapped_in_before_it_has_begun() {
    let mut r = rig(|c| {
        c.prestart_processes = true;
        c.minimum_processes = 1;
    });
    r.begin();
    std::fs::write(
        r.dir.path().join("conf/system.echo.0.raw.toml"),
        "exec = \"/bin/true\"\nprestart-processes = true\nminimum-processes = 1\n",
    )
    .unwrap();
    r.m.reload(None);
    // A slow turn: the generation's first look is due before the loop
    // gets to the events the reload queued.
    r.m.on_deadlines(Instant::now() + Duration::from_secs(1));
    let pending = r.m.services.iter().find(|(s, _)| *s != 0).map(|(s, _)| s);
    let p = pending.expect("the new generation");
    assert!(
        matches!(r.m.services[p].gen(), Gen::Pending { .. }),
        "not up, so not swapped in: {:?}",
        r.m.services[p].gen()
    );
    assert_eq!(r.m.services[0].gen(), Gen::Live, "the old one serves on");
    assert_eq!(r.pids().len(), 2, "the new generation's instance started");
}

#[test]
fn a_changed_file_swaps_generations_once_the_new_one_is_up_then_drains_the_old() {
    let mut r = rig(|c| {
        c.prestart_processes = true;
        c.minimum_processes = 1;
    });
    r.begin();
    let old = r.pids()[0];
    r.m.services[0]
        .board()
        .slot(0)
        .unwrap()
        .set_state(SlotState::Idle);
    let path = r.dir.path().join("run/system.echo.0.raw.sock");
    let old_ino = inode(&path);
    let (o, p) = reload_changed(&mut r);
    let new = r.pids()[1];
    let tmp = r.m.services[p].sock_path().to_path_buf();
    assert!(tmp.exists() && tmp != path, "bound at a temporary name");
    let new_ino = inode(&tmp);
    // Not up yet: the old generation keeps the path and its instance.
    let now = Instant::now();
    assert!(r.m.generation_step(p, now));
    assert!(matches!(r.m.services[p].gen(), Gen::Pending { .. }));
    assert_eq!(inode(&path), old_ino);
    assert!(r.seen.borrow().signals.is_empty());
    // Up: renamed over the path, and the old instance is told to drain.
    let slot = r.m.procs.get(r.id_of(new)).unwrap().slot();
    r.m.services[p]
        .board()
        .slot(slot)
        .unwrap()
        .set_state(SlotState::Idle);
    assert!(r.m.generation_step(p, now));
    assert_eq!(r.m.services[p].gen(), Gen::Live);
    assert_eq!(inode(&path), new_ino);
    assert!(!tmp.exists());
    assert!(matches!(r.m.services[o].gen(), Gen::Draining { .. }));
    r.m.process_events();
    assert!(r.m.generation_step(o, Instant::now()));
    assert_eq!(
        r.seen.borrow().signals,
        [(old, charon_protocol::managed::DRAIN_SIGNAL)]
    );
    // The old instance leaves; once the linger is over the generation is
    // freed and its figures carried over.
    r.exit(old, WaitStatus::Exited(0));
    assert!(!r
        .m
        .generation_step(o, Instant::now() + Duration::from_secs(2)));
    assert!(r.m.services.get(o).is_none());
    let stats = r.m.services[p].stats().to_json();
    assert_eq!(stats["exits"]["reload"], 1);
    assert_eq!(stats["launches"], 2, "both generations' launches");
}

#[test]
fn a_new_generation_that_exits_before_it_is_up_leaves_the_old_one() {
    let mut r = rig(|c| {
        c.prestart_processes = true;
        c.minimum_processes = 1;
    });
    r.begin();
    let path = r.dir.path().join("run/system.echo.0.raw.sock");
    let old_ino = inode(&path);
    let (o, p) = reload_changed(&mut r);
    let new = r.pids()[1];
    let tmp = r.m.services[p].sock_path().to_path_buf();
    r.exit(new, WaitStatus::Exited(2));
    assert!(r.m.generation_step(p, Instant::now()));
    assert_eq!(r.m.services[o].gen(), Gen::Live, "the old one serves on");
    assert_eq!(inode(&path), old_ino);
    assert!(!tmp.exists(), "the temporary socket is removed");
    assert!(
        !r.m.generation_step(p, Instant::now()),
        "and the failed one freed"
    );
    assert!(r.m.services.get(p).is_none());
    assert!(
        r.seen.borrow().signals.is_empty(),
        "nothing signalled the old one"
    );
}

#[test]
fn a_hint_that_finds_an_idle_instance_lets_the_next_through_and_waiting_clients_keep_the_watch() {
    let mut r = rig(|c| {
        c.prestart_processes = true;
        c.minimum_processes = 1;
        c.maximum_processes = 8;
    });
    r.begin();
    let slot = r.seen.borrow().spawned[0].1;
    let set = |r: &Rig, st| r.m.services[0].board().slot(slot).unwrap().set_state(st);
    set(&r, SlotState::Idle);
    // A hint from a request that ended before the manager looked: the
    // instance is idle, nobody waits. Not saturated, and the next hint
    // must not be held back by the rate limit.
    const SECOND: u64 = 1_000_000_000;
    assert!(r.m.services[0].board().claim_hint(now_ns(), 0));
    assert!(
        !r.m.services[0].board().claim_hint(now_ns(), SECOND),
        "rate-limited"
    );
    r.m.on_saturated(0);
    assert_eq!(r.m.services[0].watch(), Watch::Off);
    assert!(
        r.m.services[0].board().claim_hint(now_ns(), SECOND),
        "the next saturation is reported at once"
    );
    // Clients waiting while the instance is still idle (about to accept
    // one of them): keep watching and re-check soon.
    let _clients: Vec<UnixStream> = (0..3).map(|_| r.connect()).collect();
    r.m.on_saturated(0);
    assert_eq!(r.m.services[0].watch(), Watch::Saturated);
    assert!(r
        .m
        .timers
        .get(crate::timers::Timer::Saturation(0))
        .is_some());
    // Once it is busy with one, the rest get new instances.
    set(&r, SlotState::Busy);
    r.m.on_listener(0);
    assert!(r.pids().len() > 1, "grew: {:?}", r.pids());
}

#[test]
fn a_process_left_behind_is_stopped_killed_after_stop_grace_and_reaped() {
    let mut r = rig(|c| {
        c.prestart_processes = true;
        c.stop_grace = Duration::from_secs(5);
    });
    r.begin();
    let p = r.pids()[0];
    // Far above any real pid, with no /proc entry: attributed to the
    // instance reaped when it shows up.
    let left = 50_000_001;
    r.seen.borrow_mut().children = vec![p, left];
    r.m.find_orphans(None);
    assert!(
        r.m.orphans.is_empty(),
        "no environment, no instance gone: not ours"
    );
    // Reaped, the instance is no longer a child; what it left is.
    r.seen.borrow_mut().children = vec![left];
    r.exit(p, WaitStatus::Exited(0));
    assert!(r.seen.borrow().signals.contains(&(left, Signal::SIGTERM)));
    let due = r.m.timers.get(Timer::Orphan(left)).unwrap();
    assert!(due > Instant::now() + Duration::from_secs(4));
    r.m.orphan_due(left, due);
    assert!(r.seen.borrow().signals.contains(&(left, Signal::SIGKILL)));
    assert!(!r.m.forced, "not stopping: not a forced stop");
    r.seen.borrow_mut().children.clear();
    r.m.on_reaped(Reaped {
        pid: left,
        status: WaitStatus::Signaled(9),
        cpu_us: 0,
        maxrss_kib: 0,
    });
    assert!(r.m.orphans.is_empty());
}

#[test]
fn out_of_fds_is_no_launch_failure_no_backoff_and_retried() {
    let mut r = rig(|c| c.prestart_processes = true);
    r.seen.borrow_mut().fail = Some(libc::EMFILE);
    r.begin();
    let svc = &r.m.services[0];
    assert_eq!(svc.stats().launch_failures(), 0);
    assert!(!svc.mode().is_backoff());
    assert!(svc.starved().unwrap().contains("EMFILE"));
    assert_eq!(
        svc.watch(),
        Watch::Starved,
        "no instance: its clients are answered"
    );
    let retry = r.m.timers.get(Timer::Retry).unwrap();
    r.seen.borrow_mut().fail = None;
    r.m.starved_retry(retry);
    r.m.process_events();
    assert_eq!(r.pids().len(), 1, "the retry starts the wanted instance");
    let svc = &r.m.services[0];
    assert!(svc.starved().is_none());
    assert_eq!(svc.watch(), Watch::Off);
    assert_eq!(svc.stats().to_json()["backoffs"], 0);
}

#[test]
fn a_child_out_of_fds_before_exec_is_the_managers_problem() {
    let mut r = rig(|c| c.prestart_processes = true);
    r.begin();
    let p = r.pids()[0];
    r.exit(p, WaitStatus::Exited(crate::sys::code::RESOURCES));
    let svc = &r.m.services[0];
    assert_eq!(svc.stats().launch_failures(), 0);
    assert_eq!(svc.stats().to_json()["exits"]["launch_failed"], 0);
    assert!(!svc.mode().is_backoff());
    assert!(svc.starved().is_some());
    assert_eq!(svc.watch(), Watch::Starved);
    assert_eq!(r.pids().len(), 1, "nothing started before the retry");
}

#[test]
fn the_loop_runs_only_the_timers_that_are_due_and_they_drive_retry_tick_and_orphan_kill() {
    let ms = Duration::from_millis;
    let mut r = rig(|c| {
        c.prestart_processes = true;
        c.stop_grace = Duration::from_secs(5);
    });
    r.seen.borrow_mut().fail = Some(libc::EMFILE);
    r.begin();
    let retry = r.m.timers.get(Timer::Retry).expect("the retry is a timer");
    assert!(r.m.timers.get(Timer::Tick).is_some(), "the tick is a timer");
    r.seen.borrow_mut().fail = None;
    r.m.on_deadlines(retry - ms(1));
    r.m.process_events();
    assert!(r.pids().is_empty(), "the retry is not due yet");
    r.m.on_deadlines(retry);
    r.m.process_events();
    assert_eq!(r.pids().len(), 1, "the retry's timer started the instance");
    assert_eq!(r.m.timers.get(Timer::Retry), None);
    // What the instance left behind is SIGKILLed by its own timer, once.
    let left = 50_000_001;
    r.seen.borrow_mut().children = vec![left];
    r.exit(r.pids()[0], WaitStatus::Exited(0));
    let due = r.m.timers.get(Timer::Orphan(left)).expect("its SIGKILL");
    let kills = |r: &Rig| {
        let seen = r.seen.borrow();
        seen.signals
            .iter()
            .filter(|&&s| s == (left, Signal::SIGKILL))
            .count()
    };
    r.m.on_deadlines(due - ms(1));
    assert_eq!(kills(&r), 0, "its grace is not over");
    r.m.on_deadlines(due);
    r.m.on_deadlines(due + ms(1));
    assert_eq!(kills(&r), 1);
    // The tick, overdue at the first of those turns, ran there only and
    // is due again one period after it.
    assert_eq!(r.m.timers.get(Timer::Tick), Some(due - ms(1) + super::TICK));
}

// ---- Templates (`template = true`): the test plays the template on its
// control channel; starts it cannot take are done by exec.

impl Rig {
    /// Template `i` says `reply`, and the loop reads it.
    fn template_says(&mut self, i: usize, reply: &charon_protocol::template::Reply) {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.seen.borrow().templates[i].1);
        send(
            fd,
            &charon_protocol::template::encode_reply(reply),
            MsgFlags::empty(),
        )
        .unwrap();
        self.m.read_template(0);
        self.m.process_events();
    }

    /// The START template `i` was sent: its slot and the fds with it.
    fn template_start(&self, i: usize) -> (u32, usize) {
        use charon_protocol::template::{decode_command, Command};
        use nix::sys::socket::{recvmsg, ControlMessageOwned};
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.seen.borrow().templates[i].1);
        let mut buf = [0u8; 64];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 4]);
        let m = recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_DONTWAIT).unwrap();
        let mut fds = 0;
        for c in m.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmRights(raw) = c {
                fds += raw.len();
                for r in raw {
                    nix::unistd::close(r).unwrap();
                }
            }
        }
        let n = m.bytes;
        let Command::Start { slot } = decode_command(&buf[..n]).unwrap();
        (slot, fds)
    }

    fn template_pid(&self, i: usize) -> i32 {
        self.seen.borrow().templates[i].0
    }

    /// A ready template and one start sent to it: its slot and instance id.
    fn start_one_via_template(&mut self) -> (u32, usize) {
        use charon_protocol::template::Reply;
        self.template_says(0, &Reply::Ready);
        let execs = self.pids().len();
        let id = self.m.spawn_one(0, StartWhy::Grow).unwrap();
        assert_eq!(self.pids().len(), execs, "no exec: the template forks it");
        let (slot, fds) = self.template_start(0);
        assert_eq!(fds, 2, "its stderr and report channel go with the start");
        assert_eq!(self.m.procs.get(id).unwrap().pid(), 0, "pid unknown yet");
        (slot, id)
    }
}

fn template_rig() -> Rig {
    let mut r = rig(|c| {
        // The knob under test.
        c.template = true;
        c.prestart_processes = true;
    });
    r.begin();
    r
}

#[test]
fn a_template_not_ready_yet_leaves_the_start_to_exec_and_a_ready_one_forks() {
    use charon_protocol::template::Reply;
    let mut r = template_rig();
    assert_eq!(r.seen.borrow().templates.len(), 1, "started with the first");
    assert_eq!(r.pids().len(), 1, "the first instance is exec'd meanwhile");
    let (slot, id) = r.start_one_via_template();
    assert_eq!(slot, 1);
    assert_eq!(r.m.live_count(0), 2, "the start counts as capacity at once");
    // A stop asked before the pid is known is sent once it is.
    r.m.stop_instance(id, KillReason::Idle);
    assert!(r.seen.borrow().signals.is_empty());
    r.template_says(
        0,
        &Reply::Started {
            slot,
            pid: 60_000_001,
        },
    );
    assert_eq!(r.m.procs.id_of(60_000_001), Some(id));
    let board = r.m.services[0].board();
    assert_eq!(
        board.slot(slot).unwrap().pid.load(Ordering::Relaxed),
        60_000_001
    );
    assert_eq!(r.seen.borrow().signals, [(60_000_001, Signal::SIGTERM)]);
    assert_eq!(r.stats()["launches"], 2);
}

#[test]
fn a_failed_fork_is_redone_by_exec_in_the_same_slot() {
    use charon_protocol::template::Reply;
    let mut r = template_rig();
    let (slot, id) = r.start_one_via_template();
    r.template_says(
        0,
        &Reply::Failed {
            slot,
            errno: libc::EAGAIN,
        },
    );
    let seen = r.seen.borrow().spawned.clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].1, slot, "exec'd in the slot it was given");
    assert_eq!(r.m.procs.id_of(seen[1].0), Some(id), "the same instance");
    assert_eq!(
        r.stats()["exits"]["launch_failed"],
        0,
        "not the service's failure"
    );
}

#[test]
fn a_template_that_dies_with_starts_pending_has_them_exec_d_and_is_restarted() {
    let mut r = template_rig();
    let (slot, id) = r.start_one_via_template();
    r.exit(r.template_pid(0), WaitStatus::Signaled(libc::SIGKILL));
    let seen = r.seen.borrow().spawned.clone();
    assert_eq!(seen.last().unwrap().1, slot);
    assert_eq!(r.m.procs.id_of(seen.last().unwrap().0), Some(id));
    assert_eq!(r.stats()["exits"]["launch_failed"], 0);
    assert_eq!(r.m.services[0].mode(), crate::service::state::Mode::Running);
    // Restarted after its pace, by its own timer.
    let due =
        r.m.timers
            .get(Timer::Template(0))
            .expect("a restart is due");
    r.m.on_deadlines(due);
    assert_eq!(r.seen.borrow().templates.len(), 2, "a new template");
}

#[test]
fn a_child_reaped_before_its_started_is_matched_when_it_comes() {
    use charon_protocol::template::Reply;
    let mut r = template_rig();
    let (slot, id) = r.start_one_via_template();
    let pid = 60_000_002;
    // SIGCHLD read before the control channel: not an orphan, kept.
    r.exit(pid, WaitStatus::Exited(3));
    assert!(r.m.procs.get(id).is_some(), "still waiting for its pid");
    r.template_says(
        0,
        &Reply::Started {
            slot,
            pid: pid as u32,
        },
    );
    assert!(r.m.procs.get(id).is_none(), "its exit is taken now");
    assert_eq!(r.stats()["exits"]["nonzero"], 1, "{:?}", r.stats()["exits"]);
}

#[test]
fn a_template_that_cannot_fork_is_given_up_and_exec_serves() {
    use charon_protocol::template::Reply;
    let mut r = template_rig();
    r.template_says(0, &Reply::NotForkable("2 threads".into()));
    r.exit(r.template_pid(0), WaitStatus::Exited(1));
    let execs = r.pids().len();
    r.m.spawn_one(0, StartWhy::Grow).unwrap();
    assert_eq!(r.pids().len(), execs + 1, "exec'd");
    assert_eq!(r.m.timers.get(Timer::Template(0)), None, "not restarted");
    assert_eq!(r.seen.borrow().templates.len(), 1);
    assert_eq!(r.stats()["exits"]["launch_failed"], 0);
}

#[test]
fn a_restart_stops_the_template_and_starts_a_new_one() {
    let mut r = template_rig();
    let old = r.template_pid(0);
    r.m.restart("system.echo.0.raw").unwrap();
    r.m.process_events();
    assert!(r.seen.borrow().signals.contains(&(old, Signal::SIGTERM)));
    assert_eq!(r.seen.borrow().templates.len(), 2, "a new template");
    // The old one, reaped later, is not restarted.
    r.exit(old, WaitStatus::Exited(0));
    assert_eq!(r.seen.borrow().templates.len(), 2);
}
