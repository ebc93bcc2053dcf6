//! The loop's side of a reload (`reload.rs` holds the diff, the report and
//! the reloads waiting for an answer): rescan the config dir, bind and
//! start new keys and new generations, advance each pending or draining
//! generation as its automaton (`generation.rs`) says, rename a ready one's
//! socket over the key's path, drain what it replaces, and answer the
//! reload once every changed key took over or failed.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::AsFd;
use std::time::Instant;

use super::Manager;
use crate::config::{self as cfg, ConfigError, ServiceConfig};
use crate::generation::{self, Gen, READY_DEADLINE, RECHECK};
use crate::log::{info, warning};
use crate::reload::{plan, KeyFailure, PendingReload, ReloadReport};
use crate::service::state::KillReason;
use crate::service::transition::Event;
use crate::services::Svc;
use crate::startup::{self, remove_socket};
use crate::timers::Timer;

impl Manager {
    /// Rescans the config dir and applies the difference. The answer goes
    /// to control connection `conn` (if any) once every changed key's new
    /// generation has taken over or failed.
    pub(crate) fn reload(&mut self, conn: Option<u64>) {
        self.notify.reload_begun();
        if self.stopping {
            self.answer_reload(conn, Err("the manager is stopping".into()));
            return;
        }
        let scan = match cfg::scan_dir(&self.paths.config_dir) {
            Ok(s) => s,
            Err(e) => {
                warning!(None, None, "unable to reload: {e}");
                self.answer_reload(conn, Err(format!("unable to reload: {e}")));
                return;
            }
        };
        let mut report = ReloadReport::default();
        let failed: BTreeSet<String> = scan
            .failed_keys()
            .iter()
            .map(|k| k.as_str().to_string())
            .collect();
        let current = self.running_configs();
        self.note_broken(&scan.errors, &current, &mut report);
        let p = plan(&current, scan.services, &failed);
        report.unchanged = p.unchanged;
        for key in p.stop {
            self.remove_key(&key);
            info!(Some(&key), None, "reload: config file removed: stopping");
            report.stopped.push(key);
        }
        self.start_keys(p.start, &mut report);
        let waiting = self.change_keys(p.change, &mut report);
        // Begin every generation now: the loop judges deadlines before it
        // feeds queued events to the automata, and a new generation not
        // yet begun is still watching, which reads as ready. Under load
        // its first look (20 ms on) came first and swapped it in before
        // any of its instances had started.
        self.process_events();
        let pr = PendingReload::new(conn, report, waiting);
        if pr.is_done() {
            self.finish_reload(pr);
        } else {
            self.reloads.push(pr);
        }
    }

    /// Logs and reports the config files a reload could not load, and
    /// keeps them as the broken files. Those of keys with no service are
    /// listed and answered for; a fixed one leaves the list before its
    /// service binds the socket.
    fn note_broken(
        &mut self,
        errors: &[ConfigError],
        current: &BTreeMap<String, ServiceConfig>,
        report: &mut ReloadReport,
    ) {
        for e in errors {
            warning!(
                None,
                None,
                "unable to load config (the running service keeps its previous config): {e}"
            );
            report.errors.push(e.to_string());
        }
        self.broken = errors.to_vec();
        let broken = crate::broken::wanted(errors, |k| current.contains_key(k));
        let run_dir = self.paths.run_dir.clone();
        self.broken_keys.set(self.poll.registry(), &run_dir, broken);
    }

    /// The config each key runs (or is about to run: a change still coming
    /// up), for the diff.
    fn running_configs(&self) -> BTreeMap<String, ServiceConfig> {
        let mut current = BTreeMap::new();
        for (_, svc) in self.services.iter() {
            if svc.gen() == Gen::Live {
                let c = self
                    .pending_of(svc.key())
                    .map_or(svc.config(), |p| self.services[p].config());
                current.insert(svc.key().to_string(), c.clone());
            }
        }
        current
    }

    /// Binds and starts the services of new keys.
    fn start_keys(&mut self, configs: Vec<ServiceConfig>, report: &mut ReloadReport) {
        for c in configs {
            let key = c.key.as_str().to_string();
            let path = self.paths.run_dir.join(c.key.socket_file_name());
            match startup::bind_generation(c, path) {
                Ok(b) => {
                    let now = Instant::now();
                    let generation = self.take_generation(&key);
                    let s = self
                        .services
                        .insert(Svc::new(b, Gen::Live, generation, now));
                    self.fdstore.store(&key, self.services[s].listen().as_fd());
                    self.events.push_back((s, Event::Begin));
                    info!(
                        Some(&key),
                        None, "reload: new service (generation {generation})"
                    );
                    report.started.push(key);
                }
                Err(e) => {
                    warning!(Some(&key), None, "unable to start new service: {e}");
                    report.failed.push(KeyFailure { key, error: e });
                }
            }
        }
    }

    /// Starts a new generation beside each changed key's running one.
    /// Returns the keys whose new generation comes up, for the answer to
    /// wait for.
    fn change_keys(
        &mut self,
        configs: Vec<ServiceConfig>,
        report: &mut ReloadReport,
    ) -> BTreeSet<String> {
        let mut waiting = BTreeSet::new();
        for c in configs {
            let key = c.key.as_str().to_string();
            if let Some(old) = self.pending_of(&key) {
                self.pending_failed(old, "superseded by a later reload".into());
                // Back to what runs: nothing more to bring up.
                if self
                    .live_of(&key)
                    .is_some_and(|l| self.services[l].config() == &c)
                {
                    report.unchanged.push(key);
                    continue;
                }
            }
            match self.start_pending(c) {
                Ok(()) => {
                    waiting.insert(key);
                }
                Err(e) => {
                    warning!(
                        Some(&key),
                        None,
                        "unable to reload: {e}; the running generation keeps serving"
                    );
                    report.failed.push(KeyFailure { key, error: e });
                }
            }
        }
        waiting
    }

    /// The number of `key`'s next generation: one more than the newest it
    /// has (live, pending or draining), 1 for a key new to the manager.
    fn take_generation(&self, key: &str) -> u64 {
        self.services
            .iter()
            .filter(|(_, v)| v.key() == key)
            .map(|(_, v)| v.generation())
            .max()
            .unwrap_or(0)
            + 1
    }

    /// The pending generation of `key`, if one comes up.
    fn pending_of(&self, key: &str) -> Option<usize> {
        self.services
            .iter()
            .find(|(_, v)| v.key() == key && matches!(v.gen(), Gen::Pending { .. }))
            .map(|(s, _)| s)
    }

    /// The live generation of `key`.
    pub(crate) fn live_of(&self, key: &str) -> Option<usize> {
        self.services
            .iter()
            .find(|(_, v)| v.key() == key && v.gen() == Gen::Live)
            .map(|(s, _)| s)
    }

    /// Binds a new generation at a temporary name and starts it.
    fn start_pending(&mut self, c: ServiceConfig) -> Result<(), String> {
        let key = c.key.as_str().to_string();
        let generation = self.take_generation(&key);
        // Short and unique: a long key must not push the temporary path
        // past the 107 bytes a Unix socket path may have.
        let tmp = self
            .paths
            .run_dir
            .join(format!(".gen{}.sock", self.next_temp_name));
        self.next_temp_name += 1;
        let b = startup::bind_generation(c, tmp)?;
        let now = Instant::now();
        let svc = Svc::new(
            b,
            Gen::Pending {
                deadline: now + READY_DEADLINE,
            },
            generation,
            now,
        );
        let on_demand = !svc.config().prestart_processes;
        let s = self.services.insert(svc);
        self.timers.set(Timer::Generation(s), Some(now + RECHECK));
        self.events.push_back((s, Event::Begin));
        info!(
            Some(&key),
            None, "reload: config changed: starting generation {generation}"
        );
        if on_demand && self.serving(&key) {
            // An on-demand generation has nothing to start, so it would
            // take over at once, and a program that cannot run would then
            // fail every client while the generation that serves drains.
            // One instance proves it first: the reload fails, and the
            // running generation keeps serving, if it cannot come up.
            self.events.push_back((s, Event::Demand));
            info!(
                Some(&key),
                None, "reload: generation {generation} starts one instance before it takes over"
            );
        }
        Ok(())
    }

    /// The live generation of `key` has an instance (one not leaving).
    fn serving(&self, key: &str) -> bool {
        self.live_of(key)
            .is_some_and(|l| self.procs.of(l).any(|(_, i)| !i.is_leaving()))
    }

    /// Advances a pending or draining generation. False if it was freed.
    pub(crate) fn generation_step(&mut self, s: usize, now: Instant) -> bool {
        let Some(svc) = self.services.get(s) else {
            return false;
        };
        let look = match svc.gen() {
            Gen::Pending { .. } => generation::Look {
                stopping: self.stopping,
                failure: svc.gen_failure().map(str::to_string),
                backoff: svc.mode().is_backoff().then(|| {
                    svc.stats()
                        .last_exit()
                        .map_or_else(|| "no instance came up".to_string(), |e| e.reason())
                }),
                ready: self.services.is_ready(s, &self.procs),
            },
            Gen::Live | Gen::Draining { .. } => generation::Look::default(),
        };
        let action = self.services[s].on_gen(generation::Event::Look(look), now);
        self.generation_action(s, action, now)
    }

    /// Carries out what a generation's automaton returned. False if the
    /// generation was freed.
    pub(crate) fn generation_action(
        &mut self,
        s: usize,
        action: generation::Action,
        now: Instant,
    ) -> bool {
        match action {
            generation::Action::None => {}
            generation::Action::Recheck(at) => self.timers.set(Timer::Generation(s), Some(at)),
            generation::Action::Promote => self.promote(s),
            generation::Action::Fail(why) => self.pending_failed(s, why),
            generation::Action::DrainStep(linger_until) => {
                return self.drain_step(s, now, linger_until)
            }
            generation::Action::Impossible(what) => warning!(
                Some(self.services[s].key()),
                None,
                "unable to follow the generation's life: {what} (can't happen; ignored)"
            ),
        }
        true
    }

    /// The pending generation `p` is ready: rename its socket over the
    /// key's path, then drain the old one.
    fn promote(&mut self, p: usize) {
        let key = self.services[p].key().to_string();
        let path = self
            .paths
            .run_dir
            .join(self.services[p].config().key.socket_file_name());
        if let Err(e) = std::fs::rename(self.services[p].sock_path(), &path) {
            let why = format!(
                "unable to rename {} over {}: {e}",
                self.services[p].sock_path().display(),
                path.display()
            );
            self.pending_failed(p, why);
            return;
        }
        let old = self.live_of(&key);
        self.fdstore.store(&key, self.services[p].listen().as_fd());
        let svc = &mut self.services[p];
        svc.moved_to(path);
        let now = Instant::now();
        let action = svc.on_gen(generation::Event::Promoted, now);
        let generation = svc.generation();
        self.timers.set(Timer::Generation(p), None);
        self.generation_action(p, action, now);
        if let Some(o) = old {
            let carried = self.services[o].take_stats();
            self.services[p].absorb_stats(carried, true);
            let og = self.services[o].generation();
            self.begin_drain(o, true);
            info!(
                Some(&key),
                None, "reload: generation {generation} serves; draining generation {og}"
            );
        }
        self.key_resolved(&key, Ok(()));
    }

    /// A pending generation cannot take over: the old one keeps serving.
    pub(crate) fn pending_failed(&mut self, p: usize, why: String) {
        let key = self.services[p].key().to_string();
        warning!(
            Some(&key),
            None,
            "unable to reload: {why}; the running generation keeps serving"
        );
        let path = self.services[p].take_sock_path();
        remove_socket(&path, &key);
        let now = Instant::now();
        // Drained at the next look (its instances are told to stop below).
        let _ = self.services[p].on_gen(generation::Event::Drain { linger_until: now }, now);
        self.timers.set(Timer::Generation(p), Some(now));
        self.events.push_back((p, Event::Shutdown));
        let ids = self.procs.ids_of(p, true);
        for id in ids {
            self.stop_instance(id, KillReason::Reload);
        }
        self.key_resolved(&key, Err(why));
    }

    /// A removed config file: the socket goes first (new clients get
    /// NotFound), then the instances drain.
    fn remove_key(&mut self, key: &str) {
        if let Some(p) = self.pending_of(key) {
            self.pending_failed(p, "the config file was removed".into());
        }
        if let Some(s) = self.live_of(key) {
            self.fdstore.remove(key);
            let path = self.services[s].take_sock_path();
            remove_socket(&path, key);
            self.begin_drain(s, true);
        }
    }

    /// The pending generation of `key` took over (Ok) or failed (Err):
    /// note it in every reload waiting on that key.
    fn key_resolved(&mut self, key: &str, outcome: Result<(), String>) {
        for r in self.reloads.resolved(key, &outcome) {
            self.finish_reload(r);
        }
    }

    fn finish_reload(&mut self, r: PendingReload) {
        let rep = r.report();
        info!(
            None,
            None,
            "reload done: {} started, {} stopped, {} changed, {} unchanged, {} failed, {} config error(s)",
            rep.started.len(),
            rep.stopped.len(),
            rep.changed.len(),
            rep.unchanged.len(),
            rep.failed.len(),
            rep.errors.len()
        );
        let conn = r.conn();
        self.answer_reload(conn, Ok(r.into_report()));
    }

    /// Answers every waiting reload at once (the manager is stopping).
    pub(crate) fn answer_reloads_now(&mut self, why: &str) {
        for r in self.reloads.take_all() {
            self.answer_reload(r.conn(), Err(why.to_string()));
        }
    }
}
