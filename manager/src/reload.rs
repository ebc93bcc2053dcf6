//! Reload without losing a request (SIGHUP, `charon reload`): rescan the
//! config dir and diff it against what runs (`plan`, pure); start new keys,
//! drain removed ones, and bring up a new generation beside each changed
//! one. A new generation binds at a temporary name, starts its prestarted
//! instances there, and only once they are ready is its socket renamed over
//! the key's path; the old generation is then drained (SIGUSR1: serve what
//! is queued on the old socket, finish the request in hand, exit 0) and
//! freed after its last instance (`runtime/drain.rs`). Statistics carry over by key.
//! Reading the files is `config`'s job; answering the control socket is
//! `control.rs`'s.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::AsFd;
use std::time::Instant;

use serde::Serialize;

use crate::config::{self as cfg, ServiceConfig};
use crate::generation;
use crate::log::{info, warning};
use crate::runtime::{remove_socket, Manager};
use crate::service::state::KillReason;
use crate::service::transition::Event;
use crate::services::Svc;
use crate::startup;
use crate::stats::Stats;
use crate::timers::Timer;

pub(crate) use crate::generation::{Gen, READY_DEADLINE, RECHECK};

/// What a reload did, as answered to `charon reload`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct ReloadReport {
    /// New keys now served.
    pub started: Vec<String>,
    /// Removed keys (their sockets are gone; old instances drain).
    pub stopped: Vec<String>,
    /// Changed keys whose new generation took over.
    pub changed: Vec<String>,
    /// Keys left alone.
    pub unchanged: Vec<String>,
    /// Keys whose change could not be applied: the old config runs on.
    pub failed: Vec<KeyFailure>,
    /// Config errors (`FILE:LINE: KEY: message`); those services keep
    /// their previous config.
    pub errors: Vec<String>,
}

/// A key a reload could not apply, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct KeyFailure {
    pub key: String,
    pub error: String,
}

/// A reload whose answer waits for new generations.
pub(crate) struct PendingReload {
    /// The control connection to answer (its serial), or None for SIGHUP.
    pub conn: Option<u64>,
    pub report: ReloadReport,
    /// Keys whose new generation has not yet taken over or failed.
    pub waiting: BTreeSet<String>,
}

/// The diff between what runs and what the config dir says.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    pub start: Vec<ServiceConfig>,
    pub stop: Vec<String>,
    pub change: Vec<ServiceConfig>,
    pub unchanged: Vec<String>,
}

/// Diffs the configs running (or about to run) per key against a scan.
/// A key whose file failed to load is kept as it runs (`failed`).
pub(crate) fn plan(
    current: &BTreeMap<String, ServiceConfig>,
    scanned: Vec<ServiceConfig>,
    failed: &BTreeSet<String>,
) -> Plan {
    let mut p = Plan::default();
    let mut seen = BTreeSet::new();
    for c in scanned {
        let key = c.key.as_str().to_string();
        seen.insert(key.clone());
        match current.get(&key) {
            None => p.start.push(c),
            // The whole validated config: any change is a new generation.
            Some(old) if *old == c => p.unchanged.push(key),
            Some(_) => p.change.push(c),
        }
    }
    for key in current.keys() {
        if !seen.contains(key) && !failed.contains(key) {
            p.stop.push(key.clone());
        }
    }
    p
}

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
        for e in &scan.errors {
            warning!(
                None,
                None,
                "unable to load config (the running service keeps its previous config): {e}"
            );
            report.errors.push(e.to_string());
        }
        self.broken.clone_from(&scan.errors);
        let failed: BTreeSet<String> = scan
            .failed_keys()
            .iter()
            .map(|k| k.as_str().to_string())
            .collect();
        let mut current = BTreeMap::new();
        for (_, svc) in self.services.iter() {
            if svc.gen == Gen::Live {
                // A change still coming up is what runs, for the diff.
                let c = self
                    .pending_of(svc.key())
                    .map_or(&svc.config, |p| &self.services[p].config);
                current.insert(svc.key().to_string(), c.clone());
            }
        }
        // Broken files of keys with no service are listed and answered for;
        // a fixed one leaves the list before its service binds the socket.
        let broken = crate::broken::wanted(&scan.errors, |k| current.contains_key(k));
        let run_dir = self.paths.run_dir.clone();
        self.broken_keys.set(self.poll.registry(), &run_dir, broken);
        let p = plan(&current, scan.services, &failed);
        report.unchanged = p.unchanged;
        for key in p.stop {
            self.remove_key(&key);
            info!(Some(&key), None, "reload: config file removed: stopping");
            report.stopped.push(key);
        }
        for c in p.start {
            let key = c.key.as_str().to_string();
            let path = self.paths.run_dir.join(c.key.socket_file_name());
            match startup::bind_generation(c, path) {
                Ok(b) => {
                    let now = Instant::now();
                    let generation = self.take_generation(&key);
                    let s = self
                        .services
                        .insert(Svc::new(b, Gen::Live, generation, now));
                    self.fdstore.store(&key, self.services[s].listen.as_fd());
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
        let mut waiting = BTreeSet::new();
        for c in p.change {
            let key = c.key.as_str().to_string();
            if let Some(old) = self.pending_of(&key) {
                self.pending_failed(old, "superseded by a later reload".into());
                // Back to what runs: nothing more to bring up.
                if self
                    .live_of(&key)
                    .is_some_and(|l| self.services[l].config == c)
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
        let pr = PendingReload {
            conn,
            report,
            waiting,
        };
        if pr.waiting.is_empty() {
            self.finish_reload(pr);
        } else {
            self.reloads.push(pr);
        }
    }

    /// The number of `key`'s next generation: one more than the newest it
    /// has (live, pending or draining), 1 for a key new to the manager.
    fn take_generation(&self, key: &str) -> u64 {
        self.services
            .iter()
            .filter(|(_, v)| v.key() == key)
            .map(|(_, v)| v.generation)
            .max()
            .unwrap_or(0)
            + 1
    }

    /// The pending generation of `key`, if one comes up.
    fn pending_of(&self, key: &str) -> Option<usize> {
        self.services
            .iter()
            .find(|(_, v)| v.key() == key && matches!(v.gen, Gen::Pending { .. }))
            .map(|(s, _)| s)
    }

    /// The live generation of `key`.
    pub(crate) fn live_of(&self, key: &str) -> Option<usize> {
        self.services
            .iter()
            .find(|(_, v)| v.key() == key && v.gen == Gen::Live)
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
        let s = self.services.insert(svc);
        self.timers.set(Timer::Generation(s), Some(now + RECHECK));
        self.events.push_back((s, Event::Begin));
        info!(
            Some(&key),
            None, "reload: config changed: starting generation {generation}"
        );
        Ok(())
    }

    /// Advances a pending or draining generation. False if it was freed.
    pub(crate) fn generation_step(&mut self, s: usize, now: Instant) -> bool {
        let Some(svc) = self.services.get(s) else {
            return false;
        };
        let look = match svc.gen {
            Gen::Pending { .. } => generation::Look {
                stopping: self.stopping,
                failure: svc.gen_failure.clone(),
                backoff: svc.state.mode.is_backoff().then(|| {
                    svc.stats
                        .last_exit
                        .as_ref()
                        .map_or_else(|| "no instance came up".to_string(), |e| e.reason())
                }),
                ready: self.services.is_ready(s, &self.procs),
            },
            Gen::Live | Gen::Draining { .. } => generation::Look::default(),
        };
        let action = generation::on_event(
            &mut self.services[s].gen,
            generation::Event::Look(look),
            now,
        );
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
            .join(self.services[p].config.key.socket_file_name());
        if let Err(e) = std::fs::rename(&self.services[p].sock_path, &path) {
            let why = format!(
                "unable to rename {} over {}: {e}",
                self.services[p].sock_path.display(),
                path.display()
            );
            self.pending_failed(p, why);
            return;
        }
        let old = self.live_of(&key);
        self.fdstore.store(&key, self.services[p].listen.as_fd());
        let svc = &mut self.services[p];
        svc.sock_path = path;
        let now = Instant::now();
        let action = generation::on_event(&mut svc.gen, generation::Event::Promoted, now);
        let generation = svc.generation;
        self.timers.set(Timer::Generation(p), None);
        self.generation_action(p, action, now);
        if let Some(o) = old {
            let carried = std::mem::replace(&mut self.services[o].stats, Stats::new());
            self.services[p].stats.absorb(carried, true);
            let og = self.services[o].generation;
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
        let path = std::mem::take(&mut self.services[p].sock_path);
        remove_socket(&path, &key);
        let now = Instant::now();
        // Drained at the next look (its instances are told to stop below).
        let _ = generation::on_event(
            &mut self.services[p].gen,
            generation::Event::Drain { linger_until: now },
            now,
        );
        self.timers.set(Timer::Generation(p), Some(now));
        self.events.push_back((p, Event::Shutdown));
        let ids: Vec<usize> = self
            .procs
            .iter()
            .filter(|(_, i)| i.service() == p)
            .map(|(id, _)| id)
            .collect();
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
            let path = std::mem::take(&mut self.services[s].sock_path);
            remove_socket(&path, key);
            self.begin_drain(s, true);
        }
    }

    /// The pending generation of `key` took over (Ok) or failed (Err):
    /// note it in every reload waiting on that key.
    fn key_resolved(&mut self, key: &str, outcome: Result<(), String>) {
        let mut done = Vec::new();
        for (i, r) in self.reloads.iter_mut().enumerate() {
            if r.waiting.remove(key) {
                match &outcome {
                    Ok(()) => r.report.changed.push(key.to_string()),
                    Err(e) => r.report.failed.push(KeyFailure {
                        key: key.to_string(),
                        error: e.clone(),
                    }),
                }
                if r.waiting.is_empty() {
                    done.push(i);
                }
            }
        }
        for i in done.into_iter().rev() {
            let r = self.reloads.remove(i);
            self.finish_reload(r);
        }
    }

    fn finish_reload(&mut self, r: PendingReload) {
        let rep = &r.report;
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
        let conn = r.conn;
        self.answer_reload(conn, Ok(r.report));
    }

    /// Answers every waiting reload at once (the manager is stopping).
    pub(crate) fn answer_reloads_now(&mut self, why: &str) {
        for r in std::mem::take(&mut self.reloads) {
            self.answer_reload(r.conn, Err(why.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use charon_protocol::ServiceKey;
    use std::path::PathBuf;

    fn conf(key: &str, exec: &str) -> ServiceConfig {
        let k: ServiceKey = key.parse().unwrap();
        ServiceConfig::defaults(
            k,
            PathBuf::from(format!("/c/{key}.toml")),
            vec![exec.to_string()],
        )
    }

    #[test]
    fn plan_sorts_new_removed_changed_unchanged_and_keeps_broken() {
        let mut current = BTreeMap::new();
        for (k, e) in [
            ("a.x.0.raw", "/bin/a"),
            ("b.x.0.raw", "/bin/b"),
            ("c.x.0.raw", "/bin/c"),
            ("d.x.0.raw", "/bin/d"),
        ] {
            current.insert(k.to_string(), conf(k, e));
        }
        let scanned = vec![
            conf("a.x.0.raw", "/bin/a"),
            conf("b.x.0.raw", "/bin/b2"),
            conf("e.x.0.raw", "/bin/e"),
        ];
        // c's file was removed; d's no longer parses.
        let failed: BTreeSet<String> = ["d.x.0.raw".to_string()].into();
        let p = plan(&current, scanned, &failed);
        assert_eq!(p.unchanged, vec!["a.x.0.raw"]);
        assert_eq!(
            p.change.iter().map(|c| c.key.as_str()).collect::<Vec<_>>(),
            vec!["b.x.0.raw"]
        );
        assert_eq!(
            p.start.iter().map(|c| c.key.as_str()).collect::<Vec<_>>(),
            vec!["e.x.0.raw"]
        );
        assert_eq!(p.stop, vec!["c.x.0.raw"]);
    }

    #[test]
    fn any_field_change_is_a_new_generation() {
        let mut current = BTreeMap::new();
        current.insert("a.x.0.raw".to_string(), conf("a.x.0.raw", "/bin/a"));
        let mut c = conf("a.x.0.raw", "/bin/a");
        c.maximum_processes += 1;
        let p = plan(&current, vec![c], &BTreeSet::new());
        assert_eq!(p.change.len(), 1);
        assert!(p.unchanged.is_empty() && p.stop.is_empty() && p.start.is_empty());
    }

    #[test]
    fn an_empty_dir_stops_everything_but_broken_files() {
        let mut current = BTreeMap::new();
        current.insert("a.x.0.raw".to_string(), conf("a.x.0.raw", "/bin/a"));
        current.insert("b.x.0.raw".to_string(), conf("b.x.0.raw", "/bin/b"));
        let failed: BTreeSet<String> = ["b.x.0.raw".to_string()].into();
        let p = plan(&current, Vec::new(), &failed);
        assert_eq!(p.stop, vec!["a.x.0.raw"]);
    }
}
