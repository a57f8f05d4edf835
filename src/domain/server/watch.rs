//! WatchServers' view of the fleet: one change of a tenant's servers with the tenant-wide
//! revision it made, and what a watcher with a ListServers filter makes of it (ADDED when a
//! server comes into its list, MODIFIED while it stays, DELETED when it leaves).

use std::sync::Arc;

use super::Server;
use crate::domain::{ServerStatus, filter::Filter};

/// One committed change of a tenant's servers.
#[derive(Debug, Clone)]
pub struct ServerChange {
    /// The tenant's revision this change made: one more than the change before it.
    pub revision: i64,
    /// The server after the change (secrets as presence only).
    pub server: Arc<Server>,
    /// The server before it; none when the change registered it.
    pub previous: Option<Arc<Server>>,
}

/// What a change is to one watcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Added,
    Modified,
    Deleted,
}

/// The servers a watcher lists: ListServers' filter and its `show_decommissioned`.
#[derive(Debug, Clone, Default)]
pub struct FleetView {
    pub filter: Option<Filter>,
    pub show_decommissioned: bool,
}

impl FleetView {
    /// Whether ListServers with this view lists `server`.
    pub fn lists(&self, server: &Server) -> bool {
        (self.show_decommissioned || server.status != ServerStatus::Decommissioned)
            && self
                .filter
                .as_ref()
                .is_none_or(|filter| filter.matches(server))
    }

    /// What `change` is to a watcher of this view; none when the server is out of its list
    /// before and after.
    pub fn seen(&self, change: &ServerChange) -> Option<Seen> {
        let before = change
            .previous
            .as_deref()
            .is_some_and(|server| self.lists(server));
        match (before, self.lists(&change.server)) {
            (false, true) => Some(Seen::Added),
            (true, true) => Some(Seen::Modified),
            (true, false) => Some(Seen::Deleted),
            (false, false) => None,
        }
    }
}
