//! Who may call: the `CHARON_ALLOWED_UIDS` / `CHARON_ALLOWED_GIDS` lists
//! and the `SO_PEERCRED` check of an accepted connection against them.
//!
//! Answering a refused peer (an `ERROR NOT_PERMITTED`, counted as an error)
//! is left to `core.rs` and `service.rs`, which read the refused
//! request first so the client sees the answer, not a reset.

use std::os::fd::AsFd;

use charon_protocol::managed::{ENV_ALLOWED_GIDS, ENV_ALLOWED_UIDS};
use nix::sys::socket::{getsockopt, sockopt};

use crate::error::{Error, ErrorKind};

/// The peers allowed to call. With neither list set, everyone who can
/// reach the socket may; with both, a peer whose uid or gid is listed may.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Allowed {
    uids: Option<Vec<u32>>,
    gids: Option<Vec<u32>>,
}

/// A connection's peer, as `SO_PEERCRED` gave it at connect time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Peer {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

impl Allowed {
    /// Reads both lists from the environment.
    pub(crate) fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Allowed, Error> {
        Ok(Allowed {
            uids: ids(&env, ENV_ALLOWED_UIDS)?,
            gids: ids(&env, ENV_ALLOWED_GIDS)?,
        })
    }

    /// Whether any check applies at all (if not, no syscall per accept).
    pub(crate) const fn restricted(&self) -> bool {
        self.uids.is_some() || self.gids.is_some()
    }

    /// Whether `peer` may call.
    pub(crate) fn permits(&self, peer: Peer) -> bool {
        if !self.restricted() {
            return true;
        }
        let listed =
            |list: &Option<Vec<u32>>, id: u32| list.as_ref().is_some_and(|l| l.contains(&id));
        listed(&self.uids, peer.uid) || listed(&self.gids, peer.gid)
    }

    /// The peer of `conn` when a check applies and it fails; `None` when it
    /// may call. A peer whose credentials cannot be read is refused (as
    /// uid and gid `u32::MAX`, which no list holds by accident).
    pub(crate) fn refuses(&self, conn: impl AsFd) -> Option<Peer> {
        if !self.restricted() {
            return None;
        }
        let peer = getsockopt(&conn, sockopt::PeerCredentials).map_or(
            Peer {
                uid: u32::MAX,
                gid: u32::MAX,
            },
            |c| Peer {
                uid: c.uid(),
                gid: c.gid(),
            },
        );
        (!self.permits(peer)).then_some(peer)
    }
}

/// A comma-separated list of decimal ids; absent means no list.
fn ids(
    env: &impl Fn(&str) -> Option<String>,
    var: &'static str,
) -> Result<Option<Vec<u32>>, Error> {
    let Some(value) = env(var) else {
        return Ok(None);
    };
    let parsed: Result<Vec<u32>, _> = value.split(',').map(|s| s.trim().parse::<u32>()).collect();
    match parsed {
        Ok(list) if !list.is_empty() => Ok(Some(list)),
        _ => Err(Error::new(ErrorKind::BadEnv {
            var,
            value,
            expected: "a comma-separated list of decimal ids, such as \"0,1000\"",
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&'static str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(&'static str, String)> =
            pairs.iter().map(|(k, v)| (*k, (*v).to_string())).collect();
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn no_list_allows_everyone_without_a_check() {
        let a = Allowed::from_env(env_of(&[])).unwrap();
        assert!(!a.restricted());
        assert!(a.permits(Peer { uid: 12, gid: 34 }));
    }

    #[test]
    fn a_peer_is_allowed_by_its_uid_or_its_gid() {
        let a = Allowed::from_env(env_of(&[
            ("CHARON_ALLOWED_UIDS", "0, 1000"),
            ("CHARON_ALLOWED_GIDS", "100"),
        ]))
        .unwrap();
        assert!(a.permits(Peer { uid: 1000, gid: 5 }));
        assert!(a.permits(Peer { uid: 7, gid: 100 }));
        assert!(!a.permits(Peer { uid: 7, gid: 5 }));
        let only_gids = Allowed::from_env(env_of(&[("CHARON_ALLOWED_GIDS", "100")])).unwrap();
        assert!(!only_gids.permits(Peer { uid: 0, gid: 0 }));
    }

    #[test]
    fn the_own_process_is_checked_through_so_peercred() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let mine = Allowed::from_env(env_of(&[])).unwrap();
        assert_eq!(mine.refuses(&a), None);
        let other = me.wrapping_add(1).to_string();
        let refused = Allowed::from_env(env_of(&[("CHARON_ALLOWED_UIDS", &other)])).unwrap();
        assert_eq!(refused.refuses(&a).map(|p| p.uid), Some(me));
        let me_too = me.to_string();
        let allowed = Allowed::from_env(env_of(&[("CHARON_ALLOWED_UIDS", &me_too)])).unwrap();
        assert_eq!(allowed.refuses(&a), None);
    }

    #[test]
    fn bad_lists_name_the_variable_and_what_is_valid() {
        for bad in ["", "x", "1,,2", "-1", "4294967296"] {
            let msg = Allowed::from_env(env_of(&[("CHARON_ALLOWED_UIDS", bad)]))
                .unwrap_err()
                .to_string();
            assert!(
                msg.starts_with("CHARON_ALLOWED_UIDS must be a comma-separated list"),
                "{msg}"
            );
        }
    }
}
