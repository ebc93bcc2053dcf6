//! What charond's start (`daemon.rs`) hands the [`Manager`] between
//! building it and running it: the control socket, the `/metrics` channel,
//! the sockets systemd passed back, the config files that failed to load.
//! The start never reaches into the manager's parts; it calls these.

use crossbeam_channel::Sender;

use super::Manager;
use crate::config::ConfigError;
use crate::control::Control;
use crate::fdstore::Offered;

impl Manager {
    /// Watches the control socket and answers it from now on. On failure
    /// the socket comes back, for the caller to remove.
    pub(crate) fn attach_control(
        &mut self,
        mut control: Control,
    ) -> Result<(), (std::io::Error, Control)> {
        if let Err(e) = control.register(self.poll.registry()) {
            return Err((e, control));
        }
        self.control = Some(control);
        Ok(())
    }

    /// Fresh statistics go to the `/metrics` thread through `tx`.
    pub(crate) fn send_metrics_to(&mut self, tx: Option<Sender<String>>) {
        self.metrics = tx;
    }

    /// The sockets systemd passed back: one no key claimed has its file
    /// removed (`fdstore.rs`). Before the broken keys bind.
    pub(crate) fn settle_offered(&mut self, offered: Offered) {
        offered.settle(&self.paths.run_dir, &mut self.fdstore);
    }

    /// The config files that failed to load at start: a broken file's key
    /// has no service, so it is listed and answered for (`broken.rs`), and
    /// `charon health` names the errors.
    pub(crate) fn set_broken(&mut self, errors: Vec<ConfigError>) {
        let broken = crate::broken::wanted(&errors, |_| false);
        self.broken_keys
            .set(self.poll.registry(), &self.paths.run_dir, broken);
        self.broken = errors;
    }

    /// Hands every live socket to systemd's fd store, when it keeps them.
    pub(crate) fn store_live_sockets(&mut self) {
        self.fdstore.store_live(&self.services);
    }

    /// The services running and the broken config files, for the line
    /// that says charond started.
    pub(crate) fn counts(&self) -> (usize, usize) {
        (self.services.len(), self.broken_keys.len())
    }

    /// Removes the control socket's file, once the loop is over.
    pub(crate) fn remove_control_socket(&self) {
        if let Some(c) = &self.control {
            c.remove();
        }
    }
}
