//! ListSchemaChanges: the DDL statements the server's stream met, oldest first, a keyset page at
//! a time, bounded in bytes as well as changes; checked as every list of captured changes is
//! (`changes`).

use tonic::Request;

use super::{
    changes::ChangesList,
    convert::schema_change_to_proto,
    errors::ApiError,
    paging::{PAGE_BYTES, item_bytes},
    service::ServersApi,
};
use crate::{domain::schema_change::SchemaChange, proto, store::PageBound};

impl ServersApi {
    /// One page of the server's schema changes.
    pub(super) async fn schema_changes(
        &self,
        request: Request<proto::ListSchemaChangesRequest>,
    ) -> Result<proto::ListSchemaChangesResponse, ApiError> {
        let query = self
            .changes_query(request, ChangesList::SchemaChanges)
            .await?;
        let bound = PageBound {
            rows: query.page_size,
            bytes: PAGE_BYTES,
            size: |change: &SchemaChange| item_bytes(&schema_change_to_proto(change)),
        };
        let (changes, more) = self
            .store()
            .schema_changes(query.id, &query.filter, query.after, &bound)
            .await?;
        let last = changes.last().map(|change| change.id);
        Ok(proto::ListSchemaChangesResponse {
            schema_changes: changes.iter().map(schema_change_to_proto).collect(),
            next_page_token: self.next_changes_token(&query, more, last),
        })
    }
}
