//! WatchServers: the request checked (ListServers' filter, since_revision against the tenant's
//! revision and the kept history), the watch opened on the fleet hub, and its items as messages:
//! a list larger than a page goes out in several LIST messages, only the last carrying the
//! revision (so a client resuming mid-list never skips the rest of it).

use std::sync::Arc;

use futures_util::{Stream, StreamExt, stream};
use tonic::Status;

use super::{
    codec::within_message_limit,
    convert::server_to_proto,
    errors::ApiError,
    paging::{PAGE_BYTES, item_bytes},
    service::{ServersApi, check_since_revision},
};
use crate::{
    auth::Principal,
    domain::{
        filter,
        server::{FleetView, Seen, Server},
    },
    proto::{self, ServerEventType, WatchServersResponse},
    watch::fleet::{FleetItem, FleetRequest, watch_fleet},
};

/// The stream type of WatchServers.
pub type FleetResponseStream =
    std::pin::Pin<Box<dyn Stream<Item = Result<WatchServersResponse, Status>> + Send>>;

impl ServersApi {
    /// Opens a watch of the caller's servers.
    pub(super) async fn fleet_watch(
        &self,
        principal: Principal,
        request: &proto::WatchServersRequest,
    ) -> Result<FleetResponseStream, ApiError> {
        let view = fleet_view(request)?;
        let tenant = principal.tenant_id;
        let since = request.since_revision;
        let opened = self.hubs().fleet.open(tenant, since).await?;
        if let Some(since) = since {
            let current = opened.1.revision;
            check_since_revision(since, current)?;
            self.store()
                .check_fleet_history_kept(tenant, since, current)
                .await?;
        }
        let request = FleetRequest {
            view,
            since_revision: since,
        };
        let items = watch_fleet(
            &self.hubs().fleet,
            self.authenticator().clone(),
            principal,
            opened,
            request,
        );
        Ok(Box::pin(
            items.flat_map(|item| stream::iter(messages(item))),
        ))
    }
}

/// ListServers' filter and show_decommissioned, checked.
fn fleet_view(request: &proto::WatchServersRequest) -> Result<FleetView, ApiError> {
    let filter = filter::parse(&request.filter)
        .map_err(|error| ApiError::invalid("filter", error.message))?;
    Ok(FleetView {
        filter,
        show_decommissioned: request.show_decommissioned,
    })
}

/// The messages of one item, made as the client takes them: an event is one message, a list
/// one per page of [`PAGE_BYTES`] (a listed server is encoded when its page is sent, so a watch
/// of a large tenant holds pointers to its servers, not their messages).
fn messages(item: Result<FleetItem, crate::watch::WatchError>) -> Messages {
    match item {
        Ok(FleetItem::Event {
            seen,
            revision,
            server,
        }) => Messages::One(Some(Box::new(within_message_limit(WatchServersResponse {
            r#type: event_type(seen) as i32,
            revision,
            server: Some(server_to_proto(&server)),
            servers: Vec::new(),
            more: false,
        })))),
        Ok(FleetItem::List { revision, servers }) => Messages::List {
            revision,
            servers: servers.into_iter().peekable(),
            sent_one: false,
        },
        Err(error) => Messages::One(Some(Box::new(Err(error.into())))),
    }
}

fn event_type(seen: Seen) -> ServerEventType {
    match seen {
        Seen::Added => ServerEventType::Added,
        Seen::Modified => ServerEventType::Modified,
        Seen::Deleted => ServerEventType::Deleted,
    }
}

enum Messages {
    One(Option<Box<Result<WatchServersResponse, Status>>>),
    /// The list's pages still to send; the last (the only one, for most tenants) carries the
    /// revision, the others 0. An empty list is one empty page.
    List {
        revision: i64,
        servers: std::iter::Peekable<std::vec::IntoIter<Arc<Server>>>,
        sent_one: bool,
    },
}

impl Iterator for Messages {
    type Item = Result<WatchServersResponse, Status>;

    fn next(&mut self) -> Option<Self::Item> {
        let (revision, servers, sent_one) = match self {
            Messages::One(message) => return message.take().map(|message| *message),
            Messages::List {
                revision,
                servers,
                sent_one,
            } => (*revision, servers, sent_one),
        };
        if *sent_one && servers.peek().is_none() {
            return None;
        }
        let (mut page, mut bytes) = (Vec::new(), 0);
        while let Some(server) = servers.peek() {
            let server = server_to_proto(server);
            let size = item_bytes(&server);
            if !page.is_empty() && bytes + size > PAGE_BYTES {
                break;
            }
            servers.next();
            bytes += size;
            page.push(server);
        }
        *sent_one = true;
        let more = servers.peek().is_some();
        Some(Ok(WatchServersResponse {
            r#type: ServerEventType::List as i32,
            revision: if more { 0 } else { revision },
            server: None,
            servers: page,
            more,
        }))
    }
}
