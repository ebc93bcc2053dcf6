//! The services the loop runs: each generation (`svc.rs`), kept in a
//! slab. Each configured key has one live generation, and for a while
//! after a reload also the generation it replaced (draining) or the one
//! about to replace it (pending). An index names one generation for its
//! whole life (its instances, its socket token and its deadlines refer to
//! it), and is reused only after the generation is gone. What a generation
//! does is the loop's and `reload.rs`'s business.

use std::ops::{Index, IndexMut};

use charon_protocol::scoreboard::SlotState;

use crate::process_table::ProcessTable;
use crate::service::state::Mode;
pub(crate) use crate::svc::{Bound, Svc, Watch};

/// The slab.
#[derive(Default)]
pub(crate) struct Services {
    slab: Vec<Option<Svc>>,
}

impl Services {
    /// Adds a generation, returning its index.
    pub(crate) fn insert(&mut self, svc: Svc) -> usize {
        if let Some(i) = self.slab.iter().position(Option::is_none) {
            self.slab[i] = Some(svc);
            i
        } else {
            self.slab.push(Some(svc));
            self.slab.len() - 1
        }
    }

    /// Removes a generation (its socket and scoreboard close with it).
    pub(crate) fn remove(&mut self, s: usize) -> Option<Svc> {
        self.slab.get_mut(s).and_then(Option::take)
    }

    pub(crate) fn get(&self, s: usize) -> Option<&Svc> {
        self.slab.get(s).and_then(Option::as_ref)
    }

    pub(crate) fn get_mut(&mut self, s: usize) -> Option<&mut Svc> {
        self.slab.get_mut(s).and_then(Option::as_mut)
    }

    /// The indices in use, in order.
    pub(crate) fn ids(&self) -> Vec<usize> {
        self.iter().map(|(s, _)| s).collect()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (usize, &Svc)> {
        self.slab
            .iter()
            .enumerate()
            .filter_map(|(s, v)| v.as_ref().map(|v| (s, v)))
    }

    /// Generations in use.
    pub(crate) fn len(&self) -> usize {
        self.slab.iter().filter(|v| v.is_some()).count()
    }

    /// No generation is left (the last one drained at stop).
    pub(crate) fn is_empty(&self) -> bool {
        self.slab.iter().all(Option::is_none)
    }

    /// Every wanted instance of generation `s` is up and waiting (or, on
    /// demand, none is wanted yet).
    pub(crate) fn is_ready(&self, s: usize, procs: &ProcessTable) -> bool {
        let svc = &self[s];
        match svc.mode() {
            Mode::Watching => true,
            Mode::Running => {
                let mut up = 0;
                for (_, i) in procs.of(s) {
                    let st = svc.slot_state(i.slot());
                    if i.is_leaving() {
                        continue;
                    }
                    if !matches!(st, Some(SlotState::Idle | SlotState::Busy)) {
                        return false;
                    }
                    up += 1;
                }
                up >= svc.wanted()
            }
            Mode::Backoff { .. } | Mode::Trial { .. } | Mode::Stopped => false,
        }
    }
}

impl Index<usize> for Services {
    type Output = Svc;

    /// Indexing is for generations known to be alive: an index comes from
    /// an instance, a token or a deadline of a generation, and every one of
    /// those is gone before the generation is removed (`reload.rs`
    /// `free_generation`). Uncertain callers use [`Services::get`].
    #[allow(clippy::expect_used)]
    fn index(&self, s: usize) -> &Svc {
        self.get(s)
            .expect("a generation is removed only after its last user")
    }
}

impl IndexMut<usize> for Services {
    #[allow(clippy::expect_used)]
    fn index_mut(&mut self, s: usize) -> &mut Svc {
        self.get_mut(s)
            .expect("a generation is removed only after its last user")
    }
}
