//! What a client sends for a server, and its validation: every field checked at once, each
//! violation named by its field, into the settings of `super::ServerSpec` and the new secrets.

use std::{collections::BTreeMap, fmt};

use super::{NewSecrets, Secret, ServerSpec, SshTunnel, StreamOptions};

use crate::domain::{
    ConnectionMethod, SslMode, Violations,
    fields::{
        Host, HostKeyFingerprint, Identifier, Labels, Port, QualifiedTable, ServerName, UserName,
        check_text,
    },
};

/// Default MySQL port.
pub const DEFAULT_MYSQL_PORT: u16 = 3306;
/// Default SSH port.
pub const DEFAULT_SSH_PORT: u16 = 22;
/// Longest `mysql_user`, in characters.
pub const MAX_MYSQL_USER_LENGTH: usize = 80;
/// Longest `mysql_password`, in characters.
pub const MAX_MYSQL_PASSWORD_LENGTH: usize = 1024;
/// Longest `ssh_tunnel.user`, in characters.
pub const MAX_SSH_USER_LENGTH: usize = 64;

/// Raw SSH settings from a request, before validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SshTunnelInput {
    pub host: String,
    pub port: i32,
    pub user: String,
    pub private_key: Option<Secret>,
    pub host_key_fingerprint: Option<String>,
}

/// Raw stream options from a request, before validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamOptionsInput {
    pub schemas: Vec<String>,
    pub tables: Vec<String>,
    pub exclude_tables: Vec<String>,
    pub ssl_mode: Option<SslMode>,
}

/// A server as a request describes it, before validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerInput {
    pub name: String,
    pub host: String,
    pub port: i32,
    pub mysql_user: String,
    pub mysql_password: Option<Secret>,
    pub connection_method: Option<ConnectionMethod>,
    pub ssh_tunnel: Option<SshTunnelInput>,
    pub stream_options: Option<StreamOptionsInput>,
    pub labels: BTreeMap<String, String>,
}

/// A field's path: `prefix` followed by `name`, written out only when a violation names it (a
/// valid request formats no path: they were 17 `format!` calls of each UpdateServer).
#[derive(Clone, Copy)]
struct Path<'a>(&'a dyn fmt::Display, &'a str);

impl fmt::Display for Path<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(formatter)?;
        formatter.write_str(self.1)
    }
}

impl From<Path<'_>> for String {
    fn from(path: Path<'_>) -> String {
        path.to_string()
    }
}

/// What is already stored, which validation of an update needs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Existing {
    pub has_ssh_private_key: bool,
}

impl ServerInput {
    /// The validated settings and secrets, or every violation under `prefix` (e.g. `server.`).
    pub fn validate(
        self,
        prefix: &str,
        existing: Existing,
    ) -> Result<(ServerSpec, NewSecrets), Violations> {
        let mut violations = Violations::default();
        let validated = self.validate_each(prefix, existing, &mut violations);
        violations.into_result()?;
        // Every field that failed recorded why; this is never reached without a violation.
        validated.ok_or_else(|| Violations::one(prefix.trim_end_matches('.'), "is invalid"))
    }

    fn validate_each(
        self,
        prefix: &str,
        existing: Existing,
        violations: &mut Violations,
    ) -> Option<(ServerSpec, NewSecrets)> {
        let prefix: &dyn fmt::Display = &prefix;
        let field = |name| Path(prefix, name);
        let name = violations.check(field("name"), ServerName::parse(&self.name));
        let host = violations.check(field("host"), Host::parse(&self.host));
        let port = violations.check(field("port"), Port::parse(self.port, DEFAULT_MYSQL_PORT));
        let mysql_user = check_login(
            &self.mysql_user,
            self.mysql_password.as_ref(),
            prefix,
            violations,
        );
        if self.connection_method.is_none() {
            violations.add(
                field("connection_method"),
                "is required: one of direct, vpn, ssh_tunnel",
            );
        }
        let ssh_private_key = self
            .ssh_tunnel
            .as_ref()
            .and_then(|tunnel| tunnel.private_key.clone());
        let ssh_tunnel = tunnel_for(
            self.connection_method,
            self.ssh_tunnel,
            field("ssh_tunnel"),
            existing,
            violations,
        );
        let stream_options = validate_stream_options(
            self.stream_options.unwrap_or_default(),
            field("stream_options."),
            violations,
        );
        let labels = violations.check(field("labels"), Labels::parse(self.labels));
        let spec = ServerSpec {
            name: name?,
            host: host?,
            port: port?,
            mysql_user: mysql_user?,
            connection_method: self.connection_method?,
            ssh_tunnel,
            stream_options: stream_options?,
            labels: labels?,
        };
        let secrets = NewSecrets {
            mysql_password: self.mysql_password,
            ssh_private_key,
        };
        let complete =
            spec.connection_method != ConnectionMethod::SshTunnel || spec.ssh_tunnel.is_some();
        complete.then_some((spec, secrets))
    }
}

/// The MySQL user, checked, and the password's text when one is given (each named under the
/// request's `prefix`).
fn check_login(
    user: &str,
    password: Option<&Secret>,
    prefix: &dyn fmt::Display,
    violations: &mut Violations,
) -> Option<UserName> {
    let mysql_user = violations.check(
        Path(prefix, "mysql_user"),
        UserName::parse(user, "mysql_user", MAX_MYSQL_USER_LENGTH),
    );
    if let Some(password) = password {
        violations.check(
            Path(prefix, "mysql_password"),
            check_text(&password.0, MAX_MYSQL_PASSWORD_LENGTH),
        );
    }
    mysql_user
}

/// The tunnel of a server reached `method`: required for ssh_tunnel, refused for the others
/// (`field` names it).
fn tunnel_for(
    method: Option<ConnectionMethod>,
    tunnel: Option<SshTunnelInput>,
    field: Path<'_>,
    existing: Existing,
    violations: &mut Violations,
) -> Option<SshTunnel> {
    match (method, tunnel) {
        (Some(ConnectionMethod::SshTunnel), None) => {
            violations.add(field, "is required when connection_method is ssh_tunnel");
            None
        }
        (Some(ConnectionMethod::SshTunnel), Some(tunnel)) => {
            validate_ssh_tunnel(tunnel, Path(&field, "."), existing, violations)
        }
        (Some(method), Some(_)) => {
            violations.add(
                field,
                format!("must not be set when connection_method is {method}"),
            );
            None
        }
        (_, _) => None,
    }
}

fn validate_ssh_tunnel(
    tunnel: SshTunnelInput,
    prefix: Path<'_>,
    existing: Existing,
    violations: &mut Violations,
) -> Option<SshTunnel> {
    let field = |name| Path(&prefix, name);
    let host = violations.check(field("host"), Host::parse(&tunnel.host));
    let port = violations.check(field("port"), Port::parse(tunnel.port, DEFAULT_SSH_PORT));
    let user = violations.check(
        field("user"),
        UserName::parse(&tunnel.user, "user", MAX_SSH_USER_LENGTH),
    );
    match &tunnel.private_key {
        Some(key) => {
            violations.check(field("private_key"), validate_private_key(&key.0));
        }
        None if !existing.has_ssh_private_key => {
            violations.add(
                field("private_key"),
                "is required: the OpenSSH or PEM private key the agent logs in with",
            );
        }
        None => {}
    }
    let fingerprint = match tunnel.host_key_fingerprint {
        Some(text) if !text.is_empty() => violations
            .check(
                field("host_key_fingerprint"),
                HostKeyFingerprint::parse(&text),
            )
            .map(Some),
        _ => Some(None),
    };
    Some(SshTunnel {
        host: host?,
        port: port?,
        user: user?,
        host_key_fingerprint: fingerprint?,
    })
}

/// Most entries in each of `stream_options.schemas`, `.tables` and `.exclude_tables`.
pub const MAX_STREAM_OPTION_ENTRIES: usize = 1_000;

/// Whether a list is within [`MAX_STREAM_OPTION_ENTRIES`]; one violation, not one per entry, when
/// it is not, so that a huge list costs no more than a short one.
fn within_entry_limit(texts: &[String], field: Path<'_>, violations: &mut Violations) -> bool {
    if texts.len() <= MAX_STREAM_OPTION_ENTRIES {
        return true;
    }
    violations.add(
        field,
        format!(
            "has {} entries; at most {MAX_STREAM_OPTION_ENTRIES} allowed",
            texts.len()
        ),
    );
    false
}

fn validate_stream_options(
    options: StreamOptionsInput,
    prefix: Path<'_>,
    violations: &mut Violations,
) -> Option<StreamOptions> {
    let lists = [
        (&options.schemas, "schemas"),
        (&options.tables, "tables"),
        (&options.exclude_tables, "exclude_tables"),
    ];
    let mut within = true;
    for (texts, name) in lists {
        within &= within_entry_limit(texts, Path(&prefix, name), violations);
    }
    if !within {
        return None;
    }
    let schemas = parse_each(
        &options.schemas,
        Path(&prefix, "schemas"),
        Identifier::parse,
        violations,
    );
    let tables = parse_each(
        &options.tables,
        Path(&prefix, "tables"),
        QualifiedTable::parse,
        violations,
    );
    let exclude_tables = parse_each(
        &options.exclude_tables,
        Path(&prefix, "exclude_tables"),
        QualifiedTable::parse,
        violations,
    );
    Some(StreamOptions {
        schemas: schemas?,
        tables: tables?,
        exclude_tables: exclude_tables?,
        ssl_mode: options.ssl_mode.unwrap_or(SslMode::Preferred),
    })
}

/// Each text parsed, a violation for each that fails (`field[index]`); none if any failed.
fn parse_each<T>(
    texts: &[String],
    field: Path<'_>,
    parse: fn(&str) -> Result<T, String>,
    violations: &mut Violations,
) -> Option<Vec<T>> {
    let mut parsed = Vec::new();
    let mut valid = true;
    for (index, text) in texts.iter().enumerate() {
        match parse(text) {
            Ok(value) => parsed.push(value),
            Err(problem) => {
                violations.add(format!("{field}[{index}]"), problem);
                valid = false;
            }
        }
    }
    valid.then_some(parsed)
}

/// Parses a private key (OpenSSH or PEM: Ed25519, ECDSA, RSA); never echoes it.
fn validate_private_key(key: &str) -> Result<(), String> {
    match russh::keys::decode_secret_key(key, None) {
        Ok(_) => Ok(()),
        Err(russh::keys::Error::KeyIsEncrypted) => Err(
            "is encrypted with a passphrase; provide an unencrypted key (ssh-keygen -p -N '' -f KEY)"
                .into(),
        ),
        Err(_) => Err(
            "is not a valid private key: expected an unencrypted OpenSSH or PEM key (Ed25519, ECDSA or RSA)"
                .into(),
        ),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::domain::fields::texts;

    pub(in crate::domain::server) fn input() -> ServerInput {
        ServerInput {
            name: "orders-primary".into(),
            host: "10.0.3.17".into(),
            port: 0,
            mysql_user: "bintrail".into(),
            mysql_password: Some(Secret("pw".into())),
            connection_method: Some(ConnectionMethod::Direct),
            ..ServerInput::default()
        }
    }

    pub(in crate::domain::server) fn validate(
        input: ServerInput,
    ) -> Result<(ServerSpec, NewSecrets), Violations> {
        input.validate("server.", Existing::default())
    }

    fn fields(violations: &Violations) -> Vec<&str> {
        violations.0.iter().map(|v| v.field.as_str()).collect()
    }

    #[test]
    fn valid_input_gets_defaults() {
        let (spec, secrets) = validate(input()).unwrap();
        assert_eq!(spec.port.get(), 3306);
        assert_eq!(spec.stream_options.ssl_mode, SslMode::Preferred);
        assert_eq!(secrets.mysql_password, Some(Secret("pw".into())));
    }

    #[test]
    fn every_bad_field_is_reported_at_once() {
        let bad = ServerInput {
            name: String::new(),
            host: "bad host!".into(),
            port: 70000,
            mysql_user: String::new(),
            connection_method: None,
            labels: [("bad key".to_owned(), "v".to_owned())].into(),
            ..ServerInput::default()
        };
        let violations = validate(bad).unwrap_err();
        assert_eq!(
            fields(&violations),
            [
                "server.name",
                "server.host",
                "server.port",
                "server.mysql_user",
                "server.connection_method",
                "server.labels"
            ]
        );
    }

    #[test]
    fn ssh_tunnel_is_required_for_ssh_and_rejected_otherwise() {
        let mut ssh = input();
        ssh.connection_method = Some(ConnectionMethod::SshTunnel);
        assert_eq!(fields(&validate(ssh).unwrap_err()), ["server.ssh_tunnel"]);

        let mut direct = input();
        direct.ssh_tunnel = Some(SshTunnelInput::default());
        assert_eq!(
            fields(&validate(direct).unwrap_err()),
            ["server.ssh_tunnel"]
        );
    }

    #[test]
    fn ssh_tunnel_fields_are_checked() {
        let mut ssh = input();
        ssh.connection_method = Some(ConnectionMethod::SshTunnel);
        ssh.ssh_tunnel = Some(SshTunnelInput {
            host: String::new(),
            port: -1,
            user: String::new(),
            private_key: Some(Secret("not a key".into())),
            host_key_fingerprint: Some("MD5:aa".into()),
        });
        let violations = validate(ssh).unwrap_err();
        assert_eq!(
            fields(&violations),
            [
                "server.ssh_tunnel.host",
                "server.ssh_tunnel.port",
                "server.ssh_tunnel.user",
                "server.ssh_tunnel.private_key",
                "server.ssh_tunnel.host_key_fingerprint"
            ]
        );
        assert!(
            !violations.to_string().contains("not a key"),
            "a secret is never echoed"
        );
    }

    /// A throwaway Ed25519 key, encrypted with the passphrase "secret"; it opens nothing.
    const ENCRYPTED_KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAACmFlczI1Ni1jdHIAAAAGYmNyeXB0AAAAGAAAABDhgdCWTm\n3K/J6jDnbe7ZuCAAAAEAAAAAEAAAAzAAAAC3NzaC1lZDI1NTE5AAAAILCA7Hnm0Yw7/7aY\nPQYvFXKPoDhNtxHuLX4d/KwiZsR8AAAAkGTlS+LUVfL639bffAE5teFFt6c/J1U3o6y5/J\nMGojQ5XZ8BqITMgPNy4IjV74gUGpeB/XqlXjBjk2CgEhUJKtqVovD2XZ50SFVJ+DwUGfPK\nE11UlZoiDUK02VIHT4oNjclfUKvpcvST3RXikjyhbeQOIA5sUxDECeYR+j5aQJFE/daxZ3\n2G7RAjpj+fN/BB5Q==\n-----END OPENSSH PRIVATE KEY-----\n";

    #[test]
    fn private_keys_are_parsed_and_passphrases_refused() {
        let encrypted = validate_private_key(ENCRYPTED_KEY).unwrap_err();
        assert!(encrypted.contains("passphrase"), "{encrypted}");
        let garbage = validate_private_key(
            "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----",
        )
        .unwrap_err();
        assert!(garbage.contains("not a valid private key"), "{garbage}");
        assert!(!garbage.contains("AAAA"));
    }

    #[test]
    fn stream_option_lists_are_counted_before_their_entries_are_checked() {
        let mut input = input();
        input.stream_options = Some(StreamOptionsInput {
            tables: vec!["not a table".to_owned(); MAX_STREAM_OPTION_ENTRIES + 1],
            schemas: vec!["shop".to_owned(); MAX_STREAM_OPTION_ENTRIES],
            ..Default::default()
        });
        let violations = validate(input).unwrap_err();
        assert_eq!(
            violations.0,
            vec![crate::domain::FieldViolation {
                field: "server.stream_options.tables".into(),
                description: "has 1001 entries; at most 1000 allowed".into(),
            }]
        );
    }

    #[test]
    fn exclude_tables_are_validated_like_tables() {
        let mut bad = input();
        bad.stream_options = Some(StreamOptionsInput {
            tables: vec!["shop.orders".into(), "orders".into()],
            exclude_tables: vec!["shop.sessions".into(), "sessions".into(), "shop.".into()],
            ..StreamOptionsInput::default()
        });
        let violations = validate(bad).unwrap_err();
        assert_eq!(
            fields(&violations),
            [
                "server.stream_options.tables[1]",
                "server.stream_options.exclude_tables[1]",
                "server.stream_options.exclude_tables[2]"
            ]
        );
        assert_eq!(
            violations.0[1].description,
            "\"sessions\" must be schema.table"
        );

        let mut good = input();
        good.stream_options = Some(StreamOptionsInput {
            exclude_tables: vec!["shop.sessions".into()],
            ..StreamOptionsInput::default()
        });
        let (spec, _) = validate(good).unwrap();
        assert_eq!(
            texts(&spec.stream_options.exclude_tables),
            ["shop.sessions"]
        );
        let again = ServerInput::from_spec(&spec).stream_options.unwrap();
        assert_eq!(again.exclude_tables, ["shop.sessions"]);
    }
}
