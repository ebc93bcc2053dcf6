//! The loop's side of the control socket (`control.rs` owns the socket,
//! its connections and their buffers): take new connections, give each
//! ready one a few rounds of reading, answering and writing, answer each
//! request from what the manager knows (`snapshot`, `restart`, `reload`,
//! `health`), and close connections left idle.

use std::time::Instant;

use serde_json::{json, Value};

use super::Manager;
use crate::control::{error_answer, Request, ROUNDS};
use crate::reload::ReloadReport;
use crate::timers::Timer;

impl Manager {
    /// The control socket is readable: take every waiting connection.
    pub(crate) fn control_accept(&mut self) {
        let Some(ctl) = self.control.as_mut() else {
            return;
        };
        for c in ctl.accept(self.poll.registry(), &mut self.starvation) {
            self.timers.set(Timer::ControlIdle(c), ctl.idle_deadline(c));
        }
    }

    /// A control connection is readable or writable: a few rounds of
    /// reading, answering and writing; work left after them waits for the
    /// next turn of the loop, so a client that writes without pause cannot
    /// hold the manager. Its idle deadline moves with what it did.
    pub(crate) fn control_ready(&mut self, c: usize) {
        self.control_rounds(c);
        let idle = self.control.as_ref().and_then(|ctl| ctl.idle_deadline(c));
        self.timers.set(Timer::ControlIdle(c), idle);
    }

    fn control_rounds(&mut self, c: usize) {
        for _ in 0..ROUNDS {
            let reg = self.poll.registry();
            let Some(ctl) = self.control.as_mut() else {
                return;
            };
            ctl.flush(c, reg);
            let unread = ctl.read(c);
            self.control_serve(c);
            let reg = self.poll.registry();
            let Some(ctl) = self.control.as_mut() else {
                return;
            };
            ctl.flush(c, reg);
            if !ctl.has_more(c, unread) {
                return;
            }
        }
        if let Some(ctl) = self.control.as_mut() {
            ctl.again(c);
            self.timers.set(Timer::ControlAgain, Some(Instant::now()));
        }
    }

    /// Connections left with work by their budget get another turn.
    pub(crate) fn control_again(&mut self) {
        let again = self
            .control
            .as_mut()
            .map(crate::control::Control::take_again)
            .unwrap_or_default();
        for c in again {
            self.control_ready(c);
        }
    }

    /// Answers each complete request line of connection `c`, in order,
    /// until a reload must be answered first or too much output waits.
    fn control_serve(&mut self, c: usize) {
        while let Some((req, serial)) = self.control.as_mut().and_then(|ctl| ctl.next_request(c)) {
            if req == Request::Reload {
                self.reload(Some(serial));
                continue;
            }
            let answer = self.answer(req);
            if let Some(ctl) = self.control.as_mut() {
                ctl.push(c, &answer);
            }
        }
    }

    fn answer(&mut self, req: Request) -> Value {
        let r = match req {
            Request::Stats(key) => self.stats_json(key.as_deref()),
            Request::Ps(key) => self.ps_json(key.as_deref()),
            Request::Restart(key) => self.restart(&key),
            Request::Version => Ok(json!({ "ok": true, "version": env!("CARGO_PKG_VERSION") })),
            Request::Health => Ok(crate::health::answer(
                &self.services,
                &self.procs,
                self.stopping,
                &self.broken,
            )),
            Request::Reload => Err("reload is answered on its own".into()),
        };
        r.unwrap_or_else(|e| error_answer(&e))
    }

    /// Connection `c`'s idle deadline came: closed if it is still idle,
    /// else its deadline moves to what it is now.
    pub(crate) fn control_expire(&mut self, c: usize, now: Instant) {
        if let Some(ctl) = self.control.as_mut() {
            ctl.expire(c, now, self.poll.registry());
            self.timers.set(Timer::ControlIdle(c), ctl.idle_deadline(c));
        }
    }

    /// Sends a reload's answer to the connection that asked (if still
    /// there), then serves its later requests. systemd hears that the
    /// reload is over at the end of this turn.
    pub(crate) fn answer_reload(&mut self, serial: Option<u64>, r: Result<ReloadReport, String>) {
        self.notify_due = true;
        let Some(serial) = serial else { return };
        let c = self
            .control
            .as_mut()
            .and_then(|ctl| ctl.answer_reload(serial, r));
        if let Some(c) = c {
            // Reading stopped while the reload ran: resume it.
            self.control_ready(c);
        }
    }
}
