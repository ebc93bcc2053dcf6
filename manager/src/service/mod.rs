//! A service's lifecycle: its state (`state.rs`), the automaton that moves
//! it (`transition.rs`), backoff pacing with the crash tally
//! (`backoff.rs`), and the pacing of replacement forks (`pacing.rs`). Pure; the event loop performs what they decide.

pub(crate) mod backoff;
pub(crate) mod pacing;
pub(crate) mod state;
pub(crate) mod transition;
