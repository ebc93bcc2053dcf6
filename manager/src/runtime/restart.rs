//! `charon restart KEY`: the operator fixed what kept a service failing.
//! The backoff and crash-loop tally reset, a backoff in effect ends now (a
//! trial instance starts), and the running instances are recycled
//! gracefully through the usual replacement-first path (`scaling.rs`).

use charon_protocol::ServiceKey;

use super::Manager;
use crate::log::info;
use crate::service::state::KillReason;
use crate::service::transition::Event;

impl Manager {
    /// `charon restart KEY`: end a backoff now and start afresh, and
    /// recycle the running instances (each replacement first).
    pub(crate) fn restart(&mut self, key: &str) -> Result<serde_json::Value, String> {
        let Some(s) = self.live_of(key) else {
            return Err(self.not_configured(key));
        };
        let was_backoff = self.services[s].mode().is_backoff();
        // The automaton resets the tallies and ends a backoff; the loop
        // performs its actions (a trial) once this turn's work is done.
        self.events.push_back((s, Event::Restart));
        // The program may have been replaced on disk: once the instances
        // recycled here have left, it must serve again to be proven.
        self.services[s].unprove();
        self.renew_template(s);
        let ids = self.procs.ids_of(s, false);
        let recycled = ids.len();
        for id in ids {
            self.retire(id, KillReason::Restart);
        }
        info!(
            Some(key),
            None,
            "restart: backoff {}, {recycled} instance(s) to recycle",
            if was_backoff {
                "ended"
            } else {
                "not in effect"
            }
        );
        Ok(serde_json::json!({
            "ok": true,
            "key": key,
            "backoff_ended": was_backoff,
            "recycled": recycled,
        }))
    }

    /// Why `key` cannot be restarted: it is not configured, and if its
    /// wildcard serves it, that is the service to restart.
    fn not_configured(&self, key: &str) -> String {
        let wildcard = ServiceKey::parse(key)
            .ok()
            .and_then(|k| k.wildcard())
            .filter(|w| self.live_of(w.as_str()).is_some());
        if let Some(b) = self.broken_keys.stats(Some(key)).first() {
            return format!(
                "no service {key:?} runs: its config file {} has errors (see charon stats {key})",
                b["config_file"].as_str().unwrap_or("")
            );
        }
        match wildcard {
            Some(w) => format!(
                "no service {key:?} is configured: the wildcard {w:?} serves it (charon restart {w})",
                w = w.as_str()
            ),
            None => format!("no service {key:?} is configured"),
        }
    }
}
