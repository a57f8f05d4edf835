//! This replica's embedded agent: who it is (its id and the outbound IP customers allow), when
//! another agent counts as dead or replaced, and how it reaches customers' MySQL (the target
//! policy, time limits, attempts, snapshot bounds). Onboarding, the streams and the API share it.

use std::{net::IpAddr, sync::Arc, time::Duration};

use uuid::Uuid;

use crate::{
    domain::target::TargetPolicy,
    source::{connection::Reach, schema::SnapshotLimits},
};

/// How the embedded agent connects to customers' servers.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// This replica's agent: the servers assigned to it are the ones this replica runs.
    pub id: Uuid,
    /// The address customers allow on their jumphosts for this agent.
    pub outbound_ip: String,
    /// The local address connections to jumphosts leave from, when the host has several.
    pub source_address: Option<IpAddr>,
    /// How long an agent may miss its heartbeats before it counts as dead and its servers are
    /// adopted by live agents.
    pub dead_after: Duration,
    /// How long an agent may be silent before the active SSH-tunnel servers it streamed move to
    /// a live agent with another IP (and wait for the firewall again).
    pub replaced_after: Duration,
    /// Time limit of one connection attempt.
    pub connect_timeout: Duration,
    /// How long one MySQL request may go unanswered.
    pub query_timeout: Duration,
    /// How much of information_schema a snapshot may read.
    pub snapshot: SnapshotLimits,
    /// Attempts of a step that meets transient faults before it fails.
    pub connect_attempts: i32,
    /// The addresses the agent refuses to connect to.
    pub targets: Arc<TargetPolicy>,
}

impl AgentSettings {
    /// How this agent reaches customers' MySQL, as the connection path takes it.
    pub fn reach(&self) -> Reach {
        Reach {
            targets: self.targets.clone(),
            source_address: self.source_address,
            connect_timeout: self.connect_timeout,
            query_timeout: self.query_timeout,
        }
    }
}
