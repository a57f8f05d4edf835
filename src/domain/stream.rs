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
    /// Statement-format DML met since onboarding: rows the binlog does not carry as rows.
    #[serde(default)]
    pub statement_changes: StatementChanges,
}

/// Statement-format DML a stream met (a session with `binlog_format=STATEMENT` or MIXED): rows
/// changed that cannot be captured, counted so that their absence is never silent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatementChanges {
    /// How many statements.
    pub skipped: i64,
    /// When the first one was met.
    pub since: Option<DateTime<Utc>>,
    /// Where the last one is in the binlog (`file:position`).
    pub last_position: String,
}

impl StatementChanges {
    /// One more statement, at `position`.
    pub fn record(&mut self, position: String) {
        self.skipped += 1;
        self.since.get_or_insert_with(super::now);
        self.last_position = position;
    }

    /// Those of `later` after these.
    pub fn add(&mut self, later: StatementChanges) {
        if later.skipped == 0 {
            return;
        }
        self.skipped += later.skipped;
        self.since = self.since.or(later.since);
        self.last_position = later.last_position;
    }
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
