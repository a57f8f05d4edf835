//! UpdateServer's field mask: the paths it may name, and how the masked fields of a request merge
//! over the stored settings before the result is validated like a new server.

use super::{
    ServerSpec,
    input::{Existing, ServerInput, SshTunnelInput, StreamOptionsInput},
};
use crate::domain::{Violations, fields::texts};

/// Where UpdateServer's fields are, in its violations.
const PREFIX: &str = "server.";

/// The fields UpdateServer may change, as update_mask paths name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateField {
    Name,
    Host,
    Port,
    MysqlUser,
    MysqlPassword,
    ConnectionMethod,
    SshTunnel,
    SshTunnelHost,
    SshTunnelPort,
    SshTunnelUser,
    SshTunnelPrivateKey,
    SshTunnelHostKeyFingerprint,
    StreamOptions,
    StreamOptionsSchemas,
    StreamOptionsTables,
    StreamOptionsExcludeTables,
    StreamOptionsSslMode,
    Labels,
}

/// Whether a mask path names an output-only field (rejected with a specific message).
pub fn is_output_only_path(path: &str) -> bool {
    matches!(
        path,
        "server_id"
            | "has_mysql_password"
            | "status"
            | "onboarding_step"
            | "error"
            | "created_at"
            | "updated_at"
            | "decommissioned_at"
            | "etag"
            | "ssh_tunnel.has_private_key"
    )
}

impl UpdateField {
    /// Every path an update mask may name, besides `*`; a mask names at most this many paths.
    pub const PATHS: [&'static str; 18] = [
        "name",
        "host",
        "port",
        "mysql_user",
        "mysql_password",
        "connection_method",
        "ssh_tunnel",
        "ssh_tunnel.host",
        "ssh_tunnel.port",
        "ssh_tunnel.user",
        "ssh_tunnel.private_key",
        "ssh_tunnel.host_key_fingerprint",
        "stream_options",
        "stream_options.schemas",
        "stream_options.tables",
        "stream_options.exclude_tables",
        "stream_options.ssl_mode",
        "labels",
    ];

    /// Every settable field: what `*` means.
    pub const ALL_TOP_LEVEL: &'static [UpdateField] = &[
        UpdateField::Name,
        UpdateField::Host,
        UpdateField::Port,
        UpdateField::MysqlUser,
        UpdateField::MysqlPassword,
        UpdateField::ConnectionMethod,
        UpdateField::SshTunnel,
        UpdateField::StreamOptions,
        UpdateField::Labels,
    ];

    /// The field a mask path names.
    pub fn from_path(path: &str) -> Option<UpdateField> {
        Some(match path {
            "name" => UpdateField::Name,
            "host" => UpdateField::Host,
            "port" => UpdateField::Port,
            "mysql_user" => UpdateField::MysqlUser,
            "mysql_password" => UpdateField::MysqlPassword,
            "connection_method" => UpdateField::ConnectionMethod,
            "ssh_tunnel" => UpdateField::SshTunnel,
            "ssh_tunnel.host" => UpdateField::SshTunnelHost,
            "ssh_tunnel.port" => UpdateField::SshTunnelPort,
            "ssh_tunnel.user" => UpdateField::SshTunnelUser,
            "ssh_tunnel.private_key" => UpdateField::SshTunnelPrivateKey,
            "ssh_tunnel.host_key_fingerprint" => UpdateField::SshTunnelHostKeyFingerprint,
            "stream_options" => UpdateField::StreamOptions,
            "stream_options.schemas" => UpdateField::StreamOptionsSchemas,
            "stream_options.tables" => UpdateField::StreamOptionsTables,
            "stream_options.exclude_tables" => UpdateField::StreamOptionsExcludeTables,
            "stream_options.ssl_mode" => UpdateField::StreamOptionsSslMode,
            "labels" => UpdateField::Labels,
            _ => return None,
        })
    }

    /// The top-level field this one is (part of).
    fn top(self) -> UpdateField {
        match self {
            UpdateField::SshTunnelHost
            | UpdateField::SshTunnelPort
            | UpdateField::SshTunnelUser
            | UpdateField::SshTunnelPrivateKey
            | UpdateField::SshTunnelHostKeyFingerprint => UpdateField::SshTunnel,
            UpdateField::StreamOptionsSchemas
            | UpdateField::StreamOptionsTables
            | UpdateField::StreamOptionsExcludeTables
            | UpdateField::StreamOptionsSslMode => UpdateField::StreamOptions,
            top => top,
        }
    }

    /// Whether `request` sets this top-level field: a value other than proto3's default.
    fn sent_in(self, request: &ServerInput) -> bool {
        match self {
            UpdateField::Name => !request.name.is_empty(),
            UpdateField::Host => !request.host.is_empty(),
            UpdateField::Port => request.port != 0,
            UpdateField::MysqlUser => !request.mysql_user.is_empty(),
            UpdateField::MysqlPassword => request.mysql_password.is_some(),
            UpdateField::ConnectionMethod => request.connection_method.is_some(),
            UpdateField::SshTunnel => request.ssh_tunnel.is_some(),
            UpdateField::StreamOptions => request.stream_options.is_some(),
            UpdateField::Labels => !request.labels.is_empty(),
            _ => false,
        }
    }

    /// Whether a violation of `field` (`server.stream_options.tables[0]`) is of this field.
    fn names(self, field: &str) -> bool {
        let Some(path) = UpdateField::PATHS
            .iter()
            .find(|path| UpdateField::from_path(path) == Some(self))
        else {
            return false;
        };
        field
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.strip_prefix(path))
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
    }

    /// Copies this field from the request into the merged input.
    fn apply(self, merged: &mut ServerInput, request: &ServerInput) {
        fn ssh(input: &mut ServerInput) -> &mut SshTunnelInput {
            input.ssh_tunnel.get_or_insert_with(Default::default)
        }
        fn stream(input: &mut ServerInput) -> &mut StreamOptionsInput {
            input.stream_options.get_or_insert_with(Default::default)
        }
        let request_ssh = request.ssh_tunnel.clone().unwrap_or_default();
        let request_stream = request.stream_options.clone().unwrap_or_default();
        match self {
            UpdateField::Name => merged.name = request.name.clone(),
            UpdateField::Host => merged.host = request.host.clone(),
            UpdateField::Port => merged.port = request.port,
            UpdateField::MysqlUser => merged.mysql_user = request.mysql_user.clone(),
            UpdateField::MysqlPassword => merged.mysql_password = request.mysql_password.clone(),
            UpdateField::ConnectionMethod => merged.connection_method = request.connection_method,
            UpdateField::SshTunnel => merged.ssh_tunnel = request.ssh_tunnel.clone(),
            UpdateField::SshTunnelHost => ssh(merged).host = request_ssh.host,
            UpdateField::SshTunnelPort => ssh(merged).port = request_ssh.port,
            UpdateField::SshTunnelUser => ssh(merged).user = request_ssh.user,
            UpdateField::SshTunnelPrivateKey => ssh(merged).private_key = request_ssh.private_key,
            UpdateField::SshTunnelHostKeyFingerprint => {
                ssh(merged).host_key_fingerprint = request_ssh.host_key_fingerprint
            }
            UpdateField::StreamOptions => merged.stream_options = request.stream_options.clone(),
            UpdateField::StreamOptionsSchemas => stream(merged).schemas = request_stream.schemas,
            UpdateField::StreamOptionsTables => stream(merged).tables = request_stream.tables,
            UpdateField::StreamOptionsExcludeTables => {
                stream(merged).exclude_tables = request_stream.exclude_tables
            }
            UpdateField::StreamOptionsSslMode => stream(merged).ssl_mode = request_stream.ssl_mode,
            UpdateField::Labels => merged.labels = request.labels.clone(),
        }
    }
}

impl ServerInput {
    /// The input that would reproduce a stored spec (secrets left unset, meaning "keep").
    pub fn from_spec(spec: &ServerSpec) -> ServerInput {
        ServerInput {
            name: spec.name.to_string(),
            host: spec.host.to_string(),
            port: i32::from(spec.port),
            mysql_user: spec.mysql_user.to_string(),
            mysql_password: None,
            connection_method: Some(spec.connection_method),
            ssh_tunnel: spec.ssh_tunnel.as_ref().map(|tunnel| SshTunnelInput {
                host: tunnel.host.to_string(),
                port: i32::from(tunnel.port),
                user: tunnel.user.to_string(),
                private_key: None,
                host_key_fingerprint: tunnel
                    .host_key_fingerprint
                    .as_ref()
                    .map(ToString::to_string),
            }),
            stream_options: Some(StreamOptionsInput {
                schemas: texts(&spec.stream_options.schemas),
                tables: texts(&spec.stream_options.tables),
                exclude_tables: texts(&spec.stream_options.exclude_tables),
                ssl_mode: Some(spec.stream_options.ssl_mode),
            }),
            labels: spec.labels.as_map().clone(),
        }
    }

    /// The values an update request set outside its mask, checked as if masked: ignored by
    /// the merge, a value no server may have is still bad input, said as such. Only their own
    /// violations count (the masked fields are checked with the merged whole).
    pub fn check_unmasked(
        current: &ServerSpec,
        request: &ServerInput,
        fields: &[UpdateField],
        existing: Existing,
    ) -> Result<(), Violations> {
        let sent: Vec<UpdateField> = UpdateField::ALL_TOP_LEVEL
            .iter()
            .copied()
            .filter(|field| field.sent_in(request))
            .filter(|field| !fields.iter().any(|masked| masked.top() == *field))
            .collect();
        if sent.is_empty() {
            return Ok(());
        }
        let every: Vec<UpdateField> = fields.iter().chain(&sent).copied().collect();
        let Err(violations) =
            Self::merge_update(current, request, &every).validate(PREFIX, existing)
        else {
            return Ok(());
        };
        let own = violations
            .0
            .into_iter()
            .filter(|violation| sent.iter().any(|field| field.names(&violation.field)))
            .collect();
        Violations(own).into_result()
    }

    /// Merges the masked fields of an update request over the stored spec.
    pub fn merge_update(
        current: &ServerSpec,
        request: &ServerInput,
        fields: &[UpdateField],
    ) -> ServerInput {
        let mut merged = ServerInput::from_spec(current);
        for field in fields {
            field.apply(&mut merged, request);
        }
        merged
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::server::StreamOptionsInput;
    use crate::domain::server::input::tests::{input, validate};

    #[test]
    fn every_mask_path_names_a_field() {
        for path in UpdateField::PATHS {
            assert!(UpdateField::from_path(path).is_some(), "{path}");
        }
    }

    #[test]
    fn merge_update_takes_only_masked_fields() {
        let (current, _) = validate(input()).unwrap();
        let request = ServerInput {
            name: "renamed".into(),
            host: "ignored.example.com".into(),
            ..ServerInput::default()
        };
        let merged = ServerInput::merge_update(&current, &request, &[UpdateField::Name]);
        assert_eq!(merged.name, "renamed");
        assert_eq!(merged.host, "10.0.3.17");
        assert_eq!(merged.mysql_password, None);
    }

    #[test]
    fn bad_values_outside_the_mask_are_refused_and_good_ones_ignored() {
        let (current, _) = validate(input()).unwrap();
        let request = ServerInput {
            name: "renamed".into(),
            stream_options: Some(StreamOptionsInput {
                tables: vec!["".into()],
                ..StreamOptionsInput::default()
            }),
            ssh_tunnel: Some(SshTunnelInput::default()),
            labels: [("".to_owned(), "x".to_owned())].into(),
            ..ServerInput::default()
        };
        let fields_of = |mask: &[UpdateField]| {
            let checked =
                ServerInput::check_unmasked(&current, &request, mask, Existing::default());
            let mut fields: Vec<String> = checked
                .err()
                .unwrap_or_default()
                .0
                .into_iter()
                .map(|violation| violation.field)
                .collect();
            fields.sort();
            fields.dedup();
            fields
        };
        let unmasked = fields_of(&[UpdateField::Name]);
        assert!(
            unmasked.contains(&"server.labels".to_owned()),
            "{unmasked:?}"
        );
        assert!(
            unmasked.contains(&"server.stream_options.tables[0]".to_owned()),
            "{unmasked:?}"
        );
        assert!(
            unmasked
                .iter()
                .any(|field| field.starts_with("server.ssh_tunnel")),
            "{unmasked:?}"
        );
        assert!(
            !unmasked.iter().any(|field| field == "server.name"),
            "{unmasked:?}"
        );
        // Masked fields are checked with the merged whole, not here.
        let masked = fields_of(&[
            UpdateField::StreamOptionsTables,
            UpdateField::Labels,
            UpdateField::SshTunnel,
        ]);
        assert!(masked.is_empty(), "{masked:?}");
    }

    #[test]
    fn good_values_outside_the_mask_pass() {
        let (current, _) = validate(input()).unwrap();
        let good = ServerInput {
            name: "renamed".into(),
            host: "db.example.com".into(),
            ..ServerInput::default()
        };
        let checked =
            ServerInput::check_unmasked(&current, &good, &[UpdateField::Name], Existing::default());
        assert!(checked.is_ok(), "{checked:?}");
    }

    #[test]
    fn an_update_mask_may_name_exclude_tables_alone() {
        let mut current_input = input();
        current_input.stream_options = Some(StreamOptionsInput {
            schemas: vec!["shop".into()],
            ..StreamOptionsInput::default()
        });
        let (current, _) = validate(current_input).unwrap();
        let field = UpdateField::from_path("stream_options.exclude_tables").unwrap();
        let request = ServerInput {
            stream_options: Some(StreamOptionsInput {
                schemas: vec!["ignored".into()],
                exclude_tables: vec!["shop.sessions".into()],
                ..StreamOptionsInput::default()
            }),
            ..ServerInput::default()
        };
        let merged = ServerInput::merge_update(&current, &request, &[field]);
        let stream = merged.stream_options.unwrap();
        assert_eq!(stream.schemas, ["shop"]);
        assert_eq!(stream.exclude_tables, ["shop.sessions"]);
    }
}
