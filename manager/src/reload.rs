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
//!
//! This file holds what a reload decides and remembers: the diff
//! ([`plan`]), the report it answers, and the reloads still waiting for
//! their new generations ([`Waiting`]). Carrying it out (binding, starting,
//! promoting, draining) is the loop's work, in `runtime/reload.rs`.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::config::ServiceConfig;

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
#[derive(Debug)]
pub(crate) struct PendingReload {
    /// The control connection to answer (its serial), or None for SIGHUP.
    conn: Option<u64>,
    report: ReloadReport,
    /// Keys whose new generation has not yet taken over or failed.
    waiting: BTreeSet<String>,
}

impl PendingReload {
    /// A reload for `conn` that did what `report` says and waits for the
    /// new generations of `waiting`.
    pub(crate) const fn new(
        conn: Option<u64>,
        report: ReloadReport,
        waiting: BTreeSet<String>,
    ) -> PendingReload {
        PendingReload {
            conn,
            report,
            waiting,
        }
    }

    /// Nothing left to wait for: it can be answered.
    pub(crate) fn is_done(&self) -> bool {
        self.waiting.is_empty()
    }

    /// The control connection to answer (its serial), or None for SIGHUP.
    pub(crate) const fn conn(&self) -> Option<u64> {
        self.conn
    }

    /// The report, for the answer.
    pub(crate) const fn report(&self) -> &ReloadReport {
        &self.report
    }

    /// The report, taken for the answer.
    pub(crate) fn into_report(self) -> ReloadReport {
        self.report
    }

    /// Notes that `key`'s new generation took over (Ok) or failed (Err),
    /// if this reload waits for it. True if it did.
    fn resolve(&mut self, key: &str, outcome: &Result<(), String>) -> bool {
        if !self.waiting.remove(key) {
            return false;
        }
        match outcome {
            Ok(()) => self.report.changed.push(key.to_string()),
            Err(e) => self.report.failed.push(KeyFailure {
                key: key.to_string(),
                error: e.clone(),
            }),
        }
        true
    }
}

/// The reloads whose answer waits for new generations.
#[derive(Debug, Default)]
pub(crate) struct Waiting {
    reloads: Vec<PendingReload>,
}

impl Waiting {
    /// None waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.reloads.is_empty()
    }

    /// A reload that waits for new generations.
    pub(crate) fn push(&mut self, r: PendingReload) {
        self.reloads.push(r);
    }

    /// `key`'s new generation took over (Ok) or failed (Err): notes it in
    /// every reload waiting on that key and returns those it completed,
    /// the latest first, for their answers.
    pub(crate) fn resolved(
        &mut self,
        key: &str,
        outcome: &Result<(), String>,
    ) -> Vec<PendingReload> {
        let mut done = Vec::new();
        for (i, r) in self.reloads.iter_mut().enumerate() {
            if r.resolve(key, outcome) && r.is_done() {
                done.push(i);
            }
        }
        done.into_iter()
            .rev()
            .map(|i| self.reloads.remove(i))
            .collect()
    }

    /// Every waiting reload, taken (the manager is stopping).
    pub(crate) fn take_all(&mut self) -> Vec<PendingReload> {
        std::mem::take(&mut self.reloads)
    }
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

    fn waiting_for(conn: u64, keys: &[&str]) -> PendingReload {
        let keys = keys.iter().map(|k| (*k).to_string()).collect();
        PendingReload::new(Some(conn), ReloadReport::default(), keys)
    }

    #[test]
    fn a_reload_is_answered_once_every_key_it_waits_for_resolved() {
        let mut w = Waiting::default();
        w.push(waiting_for(1, &["a", "b"]));
        w.push(waiting_for(2, &["b"]));
        w.push(waiting_for(3, &["c"]));
        // b resolves the second reload (done) and half of the first.
        let done = w.resolved("b", &Ok(()));
        assert_eq!(
            done.iter().map(PendingReload::conn).collect::<Vec<_>>(),
            [Some(2)]
        );
        assert_eq!(done[0].report().changed, ["b"]);
        // A key nobody waits for changes nothing.
        assert!(w.resolved("zzz", &Ok(())).is_empty());
        let done = w.resolved("a", &Err("no".into()));
        assert_eq!(done.len(), 1);
        let rep = done.into_iter().next().unwrap().into_report();
        assert_eq!(rep.changed, ["b"]);
        assert_eq!(
            rep.failed,
            [KeyFailure {
                key: "a".into(),
                error: "no".into()
            }]
        );
        assert!(!w.is_empty());
        assert_eq!(w.take_all().len(), 1);
        assert!(w.is_empty());
    }

    #[test]
    fn reloads_completed_together_are_answered_latest_first() {
        let mut w = Waiting::default();
        w.push(waiting_for(1, &["a"]));
        w.push(waiting_for(2, &["a"]));
        let done = w.resolved("a", &Ok(()));
        assert_eq!(
            done.iter().map(PendingReload::conn).collect::<Vec<_>>(),
            [Some(2), Some(1)]
        );
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
