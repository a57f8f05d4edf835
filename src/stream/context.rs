//! What one connection of a stream works with: the server as the connection began, the stream's
//! lease, and how it reaches the customer's MySQL through `crate::source` under that lease.

use std::sync::Arc;

use async_trait::async_trait;

use crate::{
    agent::AgentSettings,
    domain::server::Server,
    secrets::SecretBox,
    source::connection::{self, ConnectContext, LeaseHolder},
    store::{Claim, Scope, Store, StoreError},
};

/// A stream connection's view of its server and lease.
pub struct StreamContext {
    /// The server as it was when the connection began (the holder's copy, shared).
    pub server: Arc<Server>,
    /// The stream's lease, for fenced writes.
    pub claim: Claim,
    pub store: Store,
    pub secrets: SecretBox,
    pub agent: AgentSettings,
}

impl StreamContext {
    /// What connecting to the stream's server needs: its secrets, the agent's reach, and the
    /// stream's lease, which fences the host key connecting records.
    pub fn source(&self) -> ConnectContext<'_> {
        ConnectContext {
            server: &self.server,
            secrets: &self.secrets,
            reach: self.agent.reach(),
            holder: self,
        }
    }
}

#[async_trait]
impl LeaseHolder for StreamContext {
    async fn record_host_key(&self, server: &Server, fingerprint: &str) -> Result<(), StoreError> {
        let fenced = Scope::Stream(self.claim.fence);
        connection::record_host_key(&self.store, fenced, server, fingerprint).await
    }
}
