//! Why one connection of a stream ended, and how faults of the source and the store sort into
//! those endings.

use crate::{source::connection::MysqlFailure, store::StoreError};

/// Why a connection ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// Told to stop (after writing what was complete): lease lost, server changed, shutdown.
    Stopped,
    /// The connection is down; retry with backoff.
    Disconnected(String),
    /// The checkpoint cannot be resumed from.
    LostPosition(String),
    /// A permanent refusal.
    Failed(String),
}

impl From<MysqlFailure> for SessionEnd {
    fn from(failure: MysqlFailure) -> SessionEnd {
        match failure {
            MysqlFailure::Transient(message) => SessionEnd::Disconnected(message),
            MysqlFailure::Permanent(message) => SessionEnd::Failed(message),
        }
    }
}

impl From<StoreError> for SessionEnd {
    fn from(error: StoreError) -> SessionEnd {
        match error {
            StoreError::Fenced => SessionEnd::Stopped,
            other => {
                SessionEnd::Disconnected(format!("the change index cannot be written: {other}"))
            }
        }
    }
}
