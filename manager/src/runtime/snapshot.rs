//! What operators read: per-service figures (`stats`) and per-instance
//! lines (`ps`) as JSON values, built from the counters (`stats.rs`), the
//! scoreboards and the accept queues at the moment of asking. A key's
//! generations (live, pending, draining after a reload) are reported as
//! one service. The field names are a contract (doc/control-protocol.md);
//! transport is `control.rs`'s job, formatting for people the CLI's.

use std::time::Instant;

use charon_protocol::scoreboard::{now_ns, SlotState};
use serde_json::{json, Value};

use super::Manager;
use crate::generation::Gen;
use crate::log::info;
use crate::service::state::Mode;
use crate::stats::Stats;

/// charond's own figures: its fd headroom (`null`s where `/proc` cannot be
/// read).
fn manager_json() -> Value {
    let fds = crate::starved::fd_use();
    json!({
        "pid": std::process::id(),
        "fds_open": fds.map(|f| f.0),
        "fds_limit": fds.map(|f| f.1),
        "fds_free": fds.map(|(open, limit)| limit.saturating_sub(open)),
    })
}

impl Manager {
    /// The periodic report: one `stats:` line per live service.
    pub(crate) fn log_stats(&self) {
        for (s, svc) in self.services.iter() {
            if svc.gen() != Gen::Live {
                continue;
            }
            let (mut busy, mut idle) = (0, 0);
            for (_, i) in self.procs.of(s) {
                match svc.slot_state(i.slot()) {
                    Some(SlotState::Busy) => busy += 1,
                    Some(SlotState::Idle) => idle += 1,
                    _ => {}
                }
            }
            info!(Some(svc.key()), None, "{}", svc.stats().summary(busy, idle));
        }
    }

    /// Hands fresh Prometheus text to the `/metrics` thread, if there is
    /// one. Never waits: when the thread has not taken the last one, this
    /// one is dropped and the next tick tries again.
    pub(crate) fn publish_metrics(&mut self) {
        if self.metrics.is_none() {
            return;
        }
        if let Ok(v) = self.stats_json(None) {
            let text = crate::metrics::prometheus(&v);
            if let Some(tx) = &self.metrics {
                let _ = tx.try_send(text);
            }
        }
    }

    /// `{"ok":true,"services":[...]}`, every live key or just `key`.
    ///
    /// # Errors
    ///
    /// `key` is not configured.
    pub(crate) fn stats_json(&mut self, key: Option<&str>) -> Result<Value, String> {
        // Keys whose config file is broken are listed too, as `broken`.
        let broken = self.broken_keys.stats(key);
        let keys = match self.keys(key) {
            Err(_) if !broken.is_empty() => Vec::new(),
            keys => keys?,
        };
        let mut out = Vec::with_capacity(keys.len() + broken.len());
        for (k, s) in keys {
            out.push(self.service_json(&k, s));
        }
        out.extend(broken);
        out.sort_by(|a, b| a["key"].as_str().cmp(&b["key"].as_str()));
        Ok(json!({ "ok": true, "manager": manager_json(), "services": out }))
    }

    /// Live keys (sorted) with their live generation; only `key` if given.
    fn keys(&self, key: Option<&str>) -> Result<Vec<(String, usize)>, String> {
        let mut keys: Vec<(String, usize)> = self
            .services
            .iter()
            .filter(|(_, v)| v.gen() == Gen::Live)
            .filter(|(_, v)| key.is_none_or(|k| v.key() == k))
            .map(|(s, v)| (v.key().to_string(), s))
            .collect();
        keys.sort();
        if let (Some(k), true) = (key, keys.is_empty()) {
            return Err(format!(
                "no service {k:?} is configured (`charon stats` without a key lists them all)"
            ));
        }
        Ok(keys)
    }

    fn service_json(&mut self, key: &str, live: usize) -> Value {
        let gens: Vec<usize> = self
            .services
            .iter()
            .filter(|(_, v)| v.key() == key)
            .map(|(s, _)| s)
            .collect();
        let stats = Stats::merged(
            self.services[live].stats(),
            gens.iter()
                .filter(|g| **g != live)
                .map(|&g| self.services[g].stats()),
        );
        let (running, busy, idle) = self.instance_counts(&gens);
        let mut queue_depth = 0u32;
        for &g in &gens {
            queue_depth += self.queue_depth(g).0;
        }
        let svc = &self.services[live];
        let (state, remaining) = state_name(svc.mode(), running, Instant::now());
        let mut out = stats.to_json();
        let instances = json!({
            "running": running,
            "busy": busy,
            "idle": idle,
            "max": svc.config().maximum_processes,
        });
        out.extend(
            [
                ("key", json!(key)),
                ("state", json!(state)),
                ("generation", json!(svc.generation())),
                ("instances", instances),
                ("queue_depth", json!(queue_depth)),
                (
                    "backoff_remaining_s",
                    json!((remaining * 1000.0).round() / 1000.0),
                ),
                ("manager_problem", json!(svc.starved())),
            ]
            .map(|(k, v)| (k.to_string(), v)),
        );
        Value::Object(out)
    }

    /// How many instances of generations `gens` run, and of those how
    /// many are busy and idle by their scoreboard slots.
    fn instance_counts(&self, gens: &[usize]) -> (u32, u32, u32) {
        let (mut running, mut busy, mut idle) = (0u32, 0u32, 0u32);
        for (_, i) in self
            .procs
            .iter()
            .filter(|(_, i)| gens.contains(&i.service()))
        {
            running += 1;
            match self.services[i.service()].slot_state(i.slot()) {
                Some(SlotState::Busy) => busy += 1,
                Some(SlotState::Idle) => idle += 1,
                _ => {}
            }
        }
        (running, busy, idle)
    }

    /// `{"ok":true,"instances":[...]}`, every instance or `key`'s.
    ///
    /// # Errors
    ///
    /// `key` is not configured.
    pub(crate) fn ps_json(&self, key: Option<&str>) -> Result<Value, String> {
        // An unknown key is an error, not an empty list; a broken one has
        // no instances, and its errors.
        let broken = self.broken_keys.ps(key);
        if broken.is_empty() {
            self.keys(key)?;
        }
        let now = Instant::now();
        let ns = now_ns();
        let mut out = Vec::new();
        for (_, i) in self.procs.iter() {
            let svc = &self.services[i.service()];
            // Without a key, also the instances of removed services that
            // are still draining.
            if key.is_some_and(|k| k != svc.key()) {
                continue;
            }
            let snap = svc.slot_snapshot(i.slot());
            let slot_state = snap.as_ref().and_then(|s| s.state);
            let state = match i.life().leaving_name() {
                Some(name) => name,
                None => match slot_state {
                    Some(SlotState::Idle) => "idle",
                    Some(SlotState::Busy) => "busy",
                    Some(SlotState::Exiting) => "exiting",
                    _ => "starting",
                },
            };
            let busy_since = snap.as_ref().map_or(0, |s| s.busy_since_ns);
            let request_age_ms =
                (busy_since != 0).then(|| ns.saturating_sub(busy_since) / 1_000_000);
            out.push(json!({
                "pid": i.pid(),
                "key": svc.key(),
                "generation": svc.generation(),
                "state": state,
                "requests": snap.as_ref().map_or(0, |s| s.requests),
                "age_s": (now.saturating_duration_since(i.started()).as_secs_f64() * 10.0).round() / 10.0,
                "request_age_ms": request_age_ms,
            }));
        }
        out.extend(self.template_rows(key, now));
        out.sort_by(|a, b| {
            (a["key"].as_str(), a["pid"].as_i64()).cmp(&(b["key"].as_str(), b["pid"].as_i64()))
        });
        Ok(json!({ "ok": true, "instances": out, "broken": broken }))
    }

    /// One `ps` row per running template, state "template".
    fn template_rows(&self, key: Option<&str>, now: Instant) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        for (_, t) in self.templates.iter() {
            let (Some(pid), Some(since)) = (t.pid(), t.since()) else {
                continue;
            };
            let Some(svc) = t.service().and_then(|s| self.services.get(s)) else {
                continue;
            };
            if key.is_some_and(|k| k != svc.key()) {
                continue;
            }
            out.push(json!({
                "pid": pid,
                "key": svc.key(),
                "generation": svc.generation(),
                "state": "template",
                "requests": 0,
                "age_s": (now.saturating_duration_since(since).as_secs_f64() * 10.0).round() / 10.0,
                "request_age_ms": null,
            }));
        }
        out
    }
}

/// The service's state as `stats` names it, and the seconds of backoff
/// left.
fn state_name(mode: Mode, running: u32, now: Instant) -> (&'static str, f64) {
    match mode {
        Mode::Backoff { until, .. } => (
            "backoff",
            until.saturating_duration_since(now).as_secs_f64(),
        ),
        _ if running > 0 => ("running", 0.0),
        _ => ("idle", 0.0),
    }
}
