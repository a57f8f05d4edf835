//! Request ids of mutations: a retry with the same id and the same request gets the first
//! call's result; the same id with another request is refused. The key is the id with a digest
//! of the rest of the request, secrets left out so that they are never hashed into a table.

use prost::Message;
use sha2::{Digest, Sha256};

use super::errors::ApiError;
use crate::{domain::fields::MAX_REQUEST_ID_LENGTH, proto, store::IdempotencyKey};

/// A request that may carry a request id.
pub trait Idempotent: Message + Clone {
    /// The method the id belongs to: the same id on two methods is two keys.
    const METHOD: &'static str;

    /// The client's request id; empty when it sent none.
    fn request_id(&self) -> &str;

    /// Clears the request id and every secret, leaving what identifies the request.
    fn strip(&mut self);
}

/// The request's idempotency key, none without a request id.
pub fn idempotency_key<M: Idempotent>(request: &M) -> Result<Option<IdempotencyKey>, ApiError> {
    let request_id = request.request_id();
    if request_id.is_empty() {
        return Ok(None);
    }
    if request_id.chars().count() > MAX_REQUEST_ID_LENGTH
        || request_id.chars().any(char::is_control)
    {
        return Err(ApiError::invalid(
            "request_id",
            format!("must be 1 to {MAX_REQUEST_ID_LENGTH} printable characters (a UUID is best)"),
        ));
    }
    let mut stripped = request.clone();
    stripped.strip();
    Ok(Some(IdempotencyKey {
        request_id: request_id.to_owned(),
        method: M::METHOD,
        request_hash: Sha256::digest(stripped.encode_to_vec()).to_vec(),
    }))
}

fn strip_server_secrets(server: Option<&mut proto::Server>) {
    if let Some(server) = server {
        server.mysql_password.clear();
        if let Some(tunnel) = server.ssh_tunnel.as_mut() {
            tunnel.private_key.clear();
        }
    }
}

impl Idempotent for proto::RegisterServerRequest {
    const METHOD: &'static str = "RegisterServer";

    fn request_id(&self) -> &str {
        &self.request_id
    }

    fn strip(&mut self) {
        self.request_id.clear();
        strip_server_secrets(self.server.as_mut());
    }
}

impl Idempotent for proto::UpdateServerRequest {
    const METHOD: &'static str = "UpdateServer";

    fn request_id(&self) -> &str {
        &self.request_id
    }

    fn strip(&mut self) {
        self.request_id.clear();
        strip_server_secrets(self.server.as_mut());
    }
}

impl Idempotent for proto::DecommissionServerRequest {
    const METHOD: &'static str = "DecommissionServer";

    fn request_id(&self) -> &str {
        &self.request_id
    }

    fn strip(&mut self) {
        self.request_id.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(request_id: &str, password: &str) -> proto::RegisterServerRequest {
        proto::RegisterServerRequest {
            request_id: request_id.to_owned(),
            server: Some(proto::Server {
                name: "db".to_owned(),
                mysql_password: password.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_key_leaves_secrets_out_and_no_id_is_no_key() {
        let first = idempotency_key(&register("r-1", "one")).unwrap().unwrap();
        let second = idempotency_key(&register("r-1", "two")).unwrap().unwrap();
        assert_eq!(first.request_hash, second.request_hash);
        assert_eq!(first.method, "RegisterServer");
        assert!(idempotency_key(&register("", "one")).unwrap().is_none());
        assert!(idempotency_key(&register("bad\nid", "one")).is_err());
    }
}
