//! The services the loop runs, as a slab of generations: each configured
//! key has one live generation, and for a while after a reload also the
//! generation it replaced (draining) or the one about to replace it
//! (pending). An index names one generation for its whole life (its
//! instances, its socket token and its deadlines refer to it), and is
//! reused only after the generation is gone. What a generation does is
//! the loop's and `reload.rs`'s business.

use std::ops::{Index, IndexMut};

use crate::event_loop::Svc;

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
