//! The live binlog stream's health as a server carries it (streaming.md §3): the state and
//! error, which are revisions of the server, and the progress, which the stream's holder keeps
//! current and readers see live.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::StreamState;

/// How long a stream may stay disconnected before its server's status says so.
pub const DISCONNECTED_GRACE: chrono::TimeDelta = chrono::TimeDelta::seconds(10);

/// A stream's progress: what the holder last wrote (never a revision).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamProgress {
    pub binlog_file: String,
    pub binlog_position: i64,
    pub gtid_set: String,
    pub source_server_uuid: String,
    #[serde(default, deserialize_with = "super::stored_time::optional")]
    pub last_event_at: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "super::stored_time::optional")]
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "super::stored_time::optional")]
    pub last_checkpoint_at: Option<DateTime<Utc>>,
    /// How far the index is behind the source, in milliseconds (0 when caught up).
    pub lag_millis: i64,
    pub events_indexed: i64,
    pub reconnects: i32,
    pub holder_agent_id: Option<Uuid>,
    /// Since when the stream is disconnected, while it is.
    #[serde(default, deserialize_with = "super::stored_time::optional")]
    pub disconnected_since: Option<DateTime<Utc>>,
}

/// A server's stream: null until onboarding reaches `streaming`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHealth {
    pub state: StreamState,
    pub error: Option<String>,
    pub progress: StreamProgress,
}

impl StreamHealth {
    /// A stream about to start.
    pub fn starting() -> StreamHealth {
        StreamHealth {
            state: StreamState::Starting,
            error: None,
            progress: StreamProgress::default(),
        }
    }
}

impl StreamState {
    /// Whether a replica should hold and run this stream.
    pub fn wants_a_reader(self) -> bool {
        !matches!(
            self,
            StreamState::LostPosition | StreamState::Failed | StreamState::Stopped
        )
    }
}
