//! The mio tokens of the manager's poll: which owner (the signalfd, a
//! service's socket, an instance's stderr pipe or report channel, a
//! template's stderr pipe or control channel, the
//! control socket and its connections, a broken key's socket) each token
//! names, both ways. The loop maps every readiness event to its owner here.

use mio::Token;

pub(crate) const SIGNALS: Token = Token(0);
const LISTEN_BASE: usize = 1;
const TEMPLATE_BASE: usize = 1 << 22;
const BROKEN_BASE: usize = CONTROL_BASE - (1 << 16);
const CONTROL_BASE: usize = 1 << 23;
const INSTANCE_BASE: usize = 1 << 24;

/// What a token names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Owner {
    Signals,
    Listener(usize),
    Stderr(usize),
    Report(usize),
    ControlListen,
    ControlConn(usize),
    /// The socket of a key whose config file is broken (`broken.rs`).
    Broken(usize),
    /// A template's stderr pipe (`templates.rs`).
    TemplateStderr(usize),
    /// A template's control channel.
    TemplateControl(usize),
}

pub(crate) fn token(o: Owner) -> Token {
    Token(match o {
        Owner::Signals => 0,
        Owner::Listener(s) => LISTEN_BASE + s,
        Owner::TemplateStderr(t) => TEMPLATE_BASE + 2 * t,
        Owner::TemplateControl(t) => TEMPLATE_BASE + 2 * t + 1,
        Owner::Broken(b) => BROKEN_BASE + b,
        Owner::ControlListen => CONTROL_BASE,
        Owner::ControlConn(c) => CONTROL_BASE + 1 + c,
        Owner::Stderr(i) => INSTANCE_BASE + 2 * i,
        Owner::Report(i) => INSTANCE_BASE + 2 * i + 1,
    })
}

pub(crate) fn owner(t: Token) -> Owner {
    match t.0 {
        0 => Owner::Signals,
        n if n < TEMPLATE_BASE => Owner::Listener(n - LISTEN_BASE),
        n if n < BROKEN_BASE => {
            let t = n - TEMPLATE_BASE;
            if t % 2 == 0 {
                Owner::TemplateStderr(t / 2)
            } else {
                Owner::TemplateControl(t / 2)
            }
        }
        n if n < CONTROL_BASE => Owner::Broken(n - BROKEN_BASE),
        CONTROL_BASE => Owner::ControlListen,
        n if n < INSTANCE_BASE => Owner::ControlConn(n - CONTROL_BASE - 1),
        n => {
            let i = n - INSTANCE_BASE;
            if i % 2 == 0 {
                Owner::Stderr(i / 2)
            } else {
                Owner::Report(i / 2)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for o in [
            Owner::Signals,
            Owner::Listener(0),
            Owner::Listener(41),
            Owner::Stderr(0),
            Owner::Report(0),
            Owner::Stderr(977),
            Owner::Report(977),
            Owner::ControlListen,
            Owner::ControlConn(0),
            Owner::ControlConn(63),
            Owner::Listener(5000),
            Owner::TemplateStderr(0),
            Owner::TemplateControl(0),
            Owner::TemplateControl(4000),
            Owner::Broken(3),
        ] {
            assert_eq!(owner(token(o)), o);
        }
    }
}
