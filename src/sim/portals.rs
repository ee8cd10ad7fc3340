//! The e-invoice portals. NIC runs two IRPs (e-invoice 1 and 2) that accept one token since
//! July 2024; a gateway that fails over between them must be tested against two portals that
//! share one state, and against one of them going down and coming back.
//!
//! The simulator serves the same routes and the same state on one listener per portal: the
//! main `--listen` address is `NIC1`, each `--irp-listen` the next. A portal can be taken
//! down — `refuse`: its listener closed and its connections dropped, so connections are
//! refused; `hang`: requests are accepted and never answered nor processed — and brought back
//! up on the same port. Which portal received a request travels with it as the [`Portal`]
//! request extension; which portal's documents a read searches is [`resolve_irp`]'s rule.
//! This module keeps the portals' state; `server.rs` starts and stops their accept loops.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A portal by its 1-based number: 1 is `NIC1`, the main listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Portal(pub usize);

impl Default for Portal {
    /// The main listener: requests that did not come through a portal's accept loop (none
    /// in practice) count as portal 1's.
    fn default() -> Self {
        Self(1)
    }
}

impl Portal {
    /// NIC's name for it, the `irp` header value: `NIC1`, `NIC2`, …
    pub fn name(self) -> String {
        format!("NIC{}", self.0)
    }
}

/// Whether a portal serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PortalState {
    /// Serving.
    Up,
    /// Listener closed: connections are refused.
    Refuse,
    /// Connections accepted, requests never answered nor processed.
    Hang,
}

/// An `irp` header that names no portal of this simulator (NIC's 3098).
#[derive(Debug, PartialEq, Eq)]
pub struct InvalidIrp;

/// The portal whose documents a request searches: the one named by its `irp` header
/// (`NIC1` … `NICn`, case-insensitive), or without one the portal that received it.
pub fn resolve_irp(
    header: Option<&str>,
    received: Portal,
    count: usize,
) -> Result<Portal, InvalidIrp> {
    let Some(value) = header else {
        return Ok(received);
    };
    let n = value
        .get(..3)
        .filter(|p| p.eq_ignore_ascii_case("NIC"))
        .and_then(|_| value.get(3..))
        .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()) && !d.starts_with('0'))
        .and_then(|d| d.parse::<usize>().ok())
        .ok_or(InvalidIrp)?;
    if (1..=count).contains(&n) {
        Ok(Portal(n))
    } else {
        Err(InvalidIrp)
    }
}

/// One portal's listener and state.
struct Slot {
    /// The address it listens on (re-bound when it comes back up after `refuse`).
    addr: SocketAddr,
    /// Whether it serves.
    state: PortalState,
    /// Closes its listener and connections when sent to (or dropped).
    down: Option<watch::Sender<bool>>,
    /// Its accept loop, while it has one.
    task: Option<JoinHandle<()>>,
}

/// What `GET /_sim/irps` shows of a portal.
#[derive(Clone, Debug, Serialize)]
pub struct PortalView {
    /// `NIC1`, `NIC2`, …
    pub irp: String,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// `up`, `refuse` or `hang`.
    pub state: PortalState,
}

/// Every portal, in number order.
pub struct Portals {
    /// Slot `i` is portal `i + 1`.
    slots: Vec<Slot>,
    /// The simulator's stop signal, handed to every accept loop started (again).
    shutdown: watch::Receiver<bool>,
}

impl Portals {
    /// Portals at `addrs` (already bound), none serving yet: `server::launch` starts each.
    pub fn new(addrs: &[SocketAddr], shutdown: watch::Receiver<bool>) -> Self {
        let slots = addrs
            .iter()
            .map(|&addr| Slot {
                addr,
                state: PortalState::Refuse,
                down: None,
                task: None,
            })
            .collect();
        Self { slots, shutdown }
    }

    /// How many portals there are.
    pub fn count(&self) -> usize {
        self.slots.len()
    }

    /// Whether `portal` serves (unknown portals count as refusing).
    pub fn state(&self, portal: Portal) -> PortalState {
        self.slot(portal).map_or(PortalState::Refuse, |s| s.state)
    }

    /// Every portal as `/_sim/irps` shows it.
    pub fn views(&self) -> Vec<PortalView> {
        self.slots
            .iter()
            .enumerate()
            .map(|(i, s)| PortalView {
                irp: Portal(i + 1).name(),
                addr: s.addr,
                state: s.state,
            })
            .collect()
    }

    /// The accept loops, taken out so that they can be awaited without the lock.
    pub fn take_tasks(&mut self) -> Vec<JoinHandle<()>> {
        self.slots
            .iter_mut()
            .filter_map(|s| s.task.take())
            .collect()
    }

    /// The stop signal to hand a new accept loop.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }

    /// Whether `portal` has no accept loop, so that one may be started for it.
    pub fn needs_listener(&self, portal: Portal) -> bool {
        self.slot(portal).is_some_and(|s| s.task.is_none())
    }

    /// Records `portal`'s new accept loop and its down switch, and its state (`up`, or
    /// `hang` for a refusing portal switched to hanging).
    pub fn serving(
        &mut self,
        portal: Portal,
        down: watch::Sender<bool>,
        task: JoinHandle<()>,
        state: PortalState,
    ) {
        if let Ok(slot) = self.slot_mut(portal) {
            slot.state = state;
            slot.down = Some(down);
            slot.task = Some(task);
        }
    }

    /// The address `portal` listens on (again).
    pub fn addr(&self, portal: Portal) -> Result<SocketAddr, PortalError> {
        self.slot(portal)
            .map(|s| s.addr)
            .ok_or(PortalError::Unknown(portal.0))
    }

    /// Takes `portal` down in `mode`; `received` is the portal the call came through, which
    /// must be another one. For `refuse`, signals its accept loop to stop and returns it, to
    /// be awaited. A refusing portal switched to `hang` needs a listener again (see
    /// [`Self::needs_listener`]).
    pub fn take_down(
        &mut self,
        portal: Portal,
        mode: PortalState,
        received: Portal,
    ) -> Result<Option<JoinHandle<()>>, PortalError> {
        let slot = self.slot_mut(portal)?;
        if portal == received {
            return Err(PortalError::ThroughItself(portal.0));
        }
        slot.state = mode;
        if mode != PortalState::Refuse {
            return Ok(None);
        }
        if let Some(down) = slot.down.take() {
            let _ = down.send(true);
        }
        Ok(slot.task.take())
    }

    /// Brings `portal` back up if it still has its listener (it was hanging); returns
    /// whether it needs one bound again (it was refusing).
    pub fn bring_up(&mut self, portal: Portal) -> Result<bool, PortalError> {
        let slot = self.slot_mut(portal)?;
        if slot.task.is_some() {
            slot.state = PortalState::Up;
        }
        Ok(slot.task.is_none())
    }

    fn slot(&self, portal: Portal) -> Option<&Slot> {
        portal.0.checked_sub(1).and_then(|i| self.slots.get(i))
    }

    fn slot_mut(&mut self, portal: Portal) -> Result<&mut Slot, PortalError> {
        portal
            .0
            .checked_sub(1)
            .and_then(|i| self.slots.get_mut(i))
            .ok_or(PortalError::Unknown(portal.0))
    }
}

/// Why a portal could not be taken down or brought up.
#[derive(Debug, thiserror::Error)]
pub enum PortalError {
    /// No portal has that number.
    #[error("no portal {0}: portals are numbered from 1 (NIC1)")]
    Unknown(usize),
    /// The call came through the portal it would take down.
    #[error("portal {0} cannot be taken down through itself: send this to another portal")]
    ThroughItself(usize),
    /// Its port could not be bound again.
    #[error("portal {portal} cannot listen on {addr} again: {source}")]
    Rebind {
        /// The portal number.
        portal: usize,
        /// Its address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_irp_header_searches_the_receiving_portal() {
        assert_eq!(resolve_irp(None, Portal(2), 2), Ok(Portal(2)));
    }

    #[test]
    fn an_irp_header_names_a_portal_case_insensitively() {
        assert_eq!(resolve_irp(Some("NIC2"), Portal(1), 2), Ok(Portal(2)));
        assert_eq!(resolve_irp(Some("nic1"), Portal(2), 2), Ok(Portal(1)));
    }

    #[test]
    fn an_irp_header_naming_no_portal_is_invalid() {
        for bad in [
            "NIC3", "NIC0", "NIC", "NIC01", "IRP1", "", "N", "NIC+1", "NIC२",
        ] {
            assert_eq!(
                resolve_irp(Some(bad), Portal(1), 2),
                Err(InvalidIrp),
                "{bad:?}"
            );
        }
        assert_eq!(resolve_irp(Some("NIC2"), Portal(1), 1), Err(InvalidIrp));
    }
}
