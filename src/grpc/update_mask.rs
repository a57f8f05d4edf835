//! UpdateServer's field mask: the fields an update touches are the mask's paths, or without a
//! mask the fields the request populated (AIP-134). Output-only and unknown paths are named.

use crate::{
    domain::{
        Violations,
        server::{UpdateField, is_output_only_path},
    },
    proto,
};

use super::convert::{populated_output_only, populated_paths};

/// The fields an update touches, each bad path recorded in `violations`.
pub fn update_fields(
    request: &proto::UpdateServerRequest,
    server: &proto::Server,
    violations: &mut Violations,
) -> Vec<UpdateField> {
    let paths: Vec<&str> = match &request.update_mask {
        Some(mask) if mask.paths.len() > UpdateField::PATHS.len() => {
            violations.add(
                "update_mask.paths",
                format!(
                    "has {} paths; at most {}, one per field of Server",
                    mask.paths.len(),
                    UpdateField::PATHS.len()
                ),
            );
            return Vec::new();
        }
        Some(mask) => mask.paths.iter().map(String::as_str).collect(),
        None => {
            for path in populated_output_only(server) {
                violations.add(format!("server.{path}"), "is output only and cannot be set");
            }
            populated_paths(server)
        }
    };
    let mut fields = Vec::new();
    for (index, path) in paths.into_iter().enumerate() {
        match field_of(path) {
            Ok(named) => fields.extend(named),
            Err(problem) => violations.add(format!("update_mask.paths[{index}]"), problem),
        }
    }
    if fields.is_empty() && violations.0.is_empty() {
        violations.add("update_mask", "names no field to update");
    }
    fields
}

/// The fields one mask path names (`*` is every settable field).
fn field_of(path: &str) -> Result<Vec<UpdateField>, String> {
    if path == "*" {
        return Ok(UpdateField::ALL_TOP_LEVEL.to_vec());
    }
    if let Some(field) = UpdateField::from_path(path) {
        return Ok(vec![field]);
    }
    if is_output_only_path(path) {
        Err(format!("{path:?} is output only and cannot be updated"))
    } else {
        Err(format!("{path:?} is not a field of Server"))
    }
}
