//! RestartStream: the start is checked on the source, the holder is fenced off the checkpoint,
//! the checkpoint moves (with the gap recorded, or the overlap's end kept so that nothing is
//! stored twice), and the server says so in a revision and the audit log (with the move). The auth layer has already required
//! `servers:write`.

use serde_json::json;
use tonic::Request;

use super::{
    errors::ApiError,
    service::{ServersApi, audited_for, parse_server_id},
};
use crate::{
    domain::{
        audit::FieldChange,
        server::Server,
        stream::{BinlogPoint, RestartPlan, StreamStart},
    },
    proto,
    store::{StoreError, StreamGap, StreamPosition},
    stream::restart,
};

/// Epochs between the stream lease's and the fenced checkpoint's: the holder's is below, and
/// every later claim (which adds one) is above.
const FENCE_STEP: i64 = 2;

impl ServersApi {
    /// Restarts the server's stream from the requested start.
    pub(super) async fn restart(
        &self,
        request: Request<proto::RestartStreamRequest>,
    ) -> Result<Server, ApiError> {
        let call = audited_for(&request, &request.get_ref().server_id)?;
        let request = request.into_inner();
        let id = parse_server_id(&request.server_id, "server_id")?;
        let start = StreamStart::parse(
            &request.binlog_file,
            request.binlog_position,
            &request.gtid_set,
            request.current_position,
        )?;
        let tenant = call.actor().tenant_id;
        let server = self.store().get_server(tenant, id).await?;
        server.check_restartable()?;
        let point = restart::resolve(&server, self.secrets(), self.agent(), &start).await?;
        let epoch = self.store().stream_epoch(tenant, id).await? + FENCE_STEP;
        let index = self.index(id).await?;
        let checkpoint = index
            .fence_stream_checkpoint(id, epoch)
            .await?
            .ok_or(StoreError::NotFound)?;
        let old = BinlogPoint {
            file: checkpoint.position.binlog_file,
            position: u64::try_from(checkpoint.position.binlog_position).unwrap_or_default(),
        };
        // The checkpoint's positions are the old source's: on another server they compare
        // with nothing, and an earlier start there is no overlap.
        let plan = match checkpoint.position.source_identity.as_deref() {
            Some(identity) if identity != point.identity => {
                RestartPlan::onto_another_source(&old, identity, &point.position, &point.identity)
            }
            _ => RestartPlan::between(&old, &point.position),
        };
        let gap = plan.gap.as_ref().map(|(from, to)| StreamGap {
            from_file: from.file.clone(),
            from_position: i64::try_from(from.position).unwrap_or(i64::MAX),
            to_file: to.file.clone(),
            to_position: i64::try_from(to.position).unwrap_or(i64::MAX),
            reason: plan.description.clone(),
        });
        let position = restart::new_position(&point, &plan);
        index
            .restart_stream_at(id, epoch, &position, gap.as_ref())
            .await?;
        let moved = checkpoint_moved(&old, &position);
        let now = crate::domain::now();
        let server = self
            .store()
            .restart_stream(call.actor(), id, epoch, moved, |server| {
                server
                    .restart_stream(&plan.description, now)
                    .map_err(ApiError::from)
            })
            .await?;
        Ok(server)
    }
}

/// What the audit log records of the checkpoint's move, beside the server's own changes.
fn checkpoint_moved(old: &BinlogPoint, new: &StreamPosition) -> Vec<FieldChange> {
    let mut moved = Vec::new();
    if old.file != new.binlog_file {
        moved.push(FieldChange::value(
            "stream.binlog_file",
            json!(old.file),
            json!(new.binlog_file),
        ));
    }
    if i64::try_from(old.position).ok() != Some(new.binlog_position) {
        moved.push(FieldChange::value(
            "stream.binlog_position",
            json!(old.position),
            json!(new.binlog_position),
        ));
    }
    moved
}
