//! The rules the validators enforce on each request field, stated once as data from the same
//! constants the constructors use: the OpenAPI document is built from this table, so the
//! document and the server cannot drift apart (issue 32, part 6).
//!
//! Why a table here and not proto field options: the REST gateway is a generic gRPC→REST
//! translator that knows nothing of servers, and the rules are the domain's (its constants and
//! character sets). The wiring (`app.rs`) hands [`json_schemas`] to the gateway, keyed by proto
//! full names; the gateway merges each entry into the schema of that field (or message) in
//! request direction and knows nothing else about it. Proto options would be a second copy of
//! every number, kept equal only by a test.
//!
//! A key is a field's full name (`dbtrail.servers.v1.Server.name`): the rules hold wherever that
//! field is sent. A message-typed field's entry may require fields of its message in that request
//! only (`RegisterServerRequest.server` requires a name; `UpdateServerRequest.server` does not).
//! A message's full name keys rules across its fields (RestartStream's one start).
//!
//! What no schema can say stays in the validators alone: whether a private key parses, whether a
//! filter parses, whether a page token was issued, the target policy (configuration), uniqueness
//! of names, and whether a resource exists.

use std::collections::BTreeMap;

use serde_json::{Map, Value as Json, json};

use super::{
    ConnectionMethod, change,
    fields::{
        CONTROL_CHARACTERS, FINGERPRINT_DIGEST_LENGTH, INVISIBLE_OR_BIDIRECTIONAL,
        MAX_HOST_LABEL_LENGTH, MAX_HOST_LENGTH, MAX_IDENTIFIER_LENGTH, MAX_LABEL_LENGTH,
        MAX_LABELS, MAX_NAME_LENGTH, MAX_REQUEST_ID_LENGTH,
    },
    filter,
    server::{
        MAX_MYSQL_PASSWORD_LENGTH, MAX_MYSQL_USER_LENGTH, MAX_SSH_USER_LENGTH,
        MAX_STREAM_OPTION_ENTRIES, UpdateField,
    },
    stream::{MAX_BINLOG_FILE_LENGTH, MAX_GTID_SET_LENGTH},
    webhook,
};

/// The proto package the keys are in.
const PACKAGE: &str = "dbtrail.servers.v1";

/// One rule of a request field, in the terms of JSON Schema.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    /// A text of `min` to `max` characters.
    Length { min: usize, max: usize },
    /// A text matching this regular expression (ECMA-262, anchored).
    Pattern(String),
    /// A text of at least this many characters.
    MinLength(usize),
    /// A text of a JSON Schema format (`uuid`, `ipv4`, `ipv6`).
    Format(&'static str),
    /// An integer from `min` to `max`.
    Range { min: i64, max: i64 },
    /// An integer of at least this (at most what its type holds).
    Minimum(i64),
    /// A list of at most this many entries.
    MaxItems(usize),
    /// A map of at most this many entries.
    MaxProperties(usize),
    /// An enum of only these wire names.
    OneOf(Vec<String>),
    /// The rules of each entry of a list.
    Items(Vec<Rule>),
    /// The rules of each key of a map.
    Keys(Vec<Rule>),
    /// The rules of each value of a map.
    Values(Vec<Rule>),
    /// A text matching one of these sets of rules.
    AnyOf(Vec<Vec<Rule>>),
    /// A message with these fields set.
    Required(Vec<&'static str>),
    /// A rule across fields of a message, in JSON Schema as it is.
    Schema(Json),
}

/// The rules of one field (or, for rules across fields, one message).
#[derive(Debug, Clone, PartialEq)]
pub struct FieldRules {
    /// The proto full name of the field or message.
    pub name: String,
    pub rules: Vec<Rule>,
}

impl Rule {
    /// The JSON Schema keywords of this rule.
    pub fn keywords(&self) -> Map<String, Json> {
        let pairs: Vec<(&str, Json)> = match self {
            Rule::Length { min, max } => vec![("minLength", json!(min)), ("maxLength", json!(max))],
            Rule::MinLength(min) => vec![("minLength", json!(min))],
            Rule::Pattern(pattern) => vec![("pattern", json!(pattern))],
            Rule::Format(format) => vec![("format", json!(format))],
            Rule::Range { min, max } => vec![("minimum", json!(min)), ("maximum", json!(max))],
            Rule::Minimum(min) => vec![("minimum", json!(min))],
            Rule::MaxItems(max) => vec![("maxItems", json!(max))],
            Rule::MaxProperties(max) => vec![("maxProperties", json!(max))],
            Rule::OneOf(names) => vec![("enum", json!(names))],
            Rule::Items(rules) => vec![("items", Json::Object(keywords(rules)))],
            Rule::Keys(rules) => vec![("propertyNames", Json::Object(keywords(rules)))],
            Rule::Values(rules) => vec![("additionalProperties", Json::Object(keywords(rules)))],
            Rule::AnyOf(choices) => {
                let choices: Vec<Json> = choices
                    .iter()
                    .map(|rules| Json::Object(keywords(rules)))
                    .collect();
                vec![("anyOf", Json::Array(choices))]
            }
            Rule::Required(fields) => vec![("required", json!(fields))],
            Rule::Schema(Json::Object(schema)) => return schema.clone(),
            Rule::Schema(_) => Vec::new(),
        };
        pairs
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value))
            .collect()
    }
}

/// The keywords of several rules together.
pub fn keywords(rules: &[Rule]) -> Map<String, Json> {
    rules.iter().flat_map(Rule::keywords).collect()
}

/// Every request field's rules as JSON Schema keywords, by proto full name: what the gateway
/// merges into the OpenAPI document.
pub fn json_schemas() -> BTreeMap<String, Map<String, Json>> {
    requests()
        .into_iter()
        .map(|field| (field.name, keywords(&field.rules)))
        .collect()
}

/// A character class of the ranges, for a pattern: `\u0000-\u001F` and so on.
fn class_ranges(ranges: &[(char, char)]) -> String {
    ranges
        .iter()
        .map(|(first, last)| {
            let (first, last) = (u32::from(*first), u32::from(*last));
            if first == last {
                format!("\\u{first:04X}")
            } else {
                format!("\\u{first:04X}-\\u{last:04X}")
            }
        })
        .collect()
}

/// White space that `str::trim` removes and that is not a control character.
const SPACES: [(char, char); 7] = [
    (' ', ' '),
    ('\u{00A0}', '\u{00A0}'),
    ('\u{1680}', '\u{1680}'),
    ('\u{2000}', '\u{200A}'),
    ('\u{202F}', '\u{202F}'),
    ('\u{205F}', '\u{205F}'),
    ('\u{3000}', '\u{3000}'),
];

/// Text without control characters.
pub fn printable_pattern() -> String {
    format!("^[^{}]*$", class_ranges(&CONTROL_CHARACTERS))
}

/// A server name: printable, no invisible or bidirectional characters, no white space around.
pub fn name_pattern() -> String {
    let refused =
        class_ranges(&[&CONTROL_CHARACTERS[..], &INVISIBLE_OR_BIDIRECTIONAL[..]].concat());
    let edge = format!("[^{refused}{}]", class_ranges(&SPACES));
    format!("^{edge}([^{refused}]*{edge})?$")
}

/// A DNS name: labels of letters, digits, `_` and `-` (not at either end), not all numeric, an
/// optional trailing dot.
pub fn dns_name_pattern() -> String {
    let inner = MAX_HOST_LABEL_LENGTH - 2;
    let label = format!("[A-Za-z0-9_]([A-Za-z0-9_-]{{0,{inner}}}[A-Za-z0-9_])?");
    // At most MAX_HOST_LENGTH characters before the optional trailing dot.
    let too_long = format!(
        "(?!.{{{}}})(?!.{{{MAX_HOST_LENGTH}}}[^.]$)",
        MAX_HOST_LENGTH + 2
    );
    format!("^(?![0-9.]+$){too_long}{label}(\\.{label})*\\.?$")
}

/// An OpenSSH or PEM private key's first line.
pub const PRIVATE_KEY_PATTERN: &str = "^-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----";

/// A host: a DNS name or an IP address.
/// A host: never empty (said on its own, for a client that tells "" from a missing value),
/// and an address or a name.
fn host_rules() -> Vec<Rule> {
    vec![Rule::MinLength(1), host()]
}

fn host() -> Rule {
    Rule::AnyOf(vec![
        vec![Rule::Format("ipv4")],
        vec![Rule::Format("ipv6")],
        vec![Rule::Pattern(dns_name_pattern())],
    ])
}

/// A label key: 1 to 63 letters, digits, `_` and `-`, alphanumeric at both ends.
pub fn label_key_pattern() -> String {
    let inner = MAX_LABEL_LENGTH - 2;
    format!("^[A-Za-z0-9]([A-Za-z0-9_-]{{0,{inner}}}[A-Za-z0-9])?$")
}

/// A label value: empty, or 1 to 63 letters, digits, `_`, `-` and `.`, alphanumeric at both ends.
pub fn label_value_pattern() -> String {
    let inner = MAX_LABEL_LENGTH - 2;
    format!("^([A-Za-z0-9]([A-Za-z0-9_.-]{{0,{inner}}}[A-Za-z0-9])?)?$")
}

/// `schema.table`: two MySQL identifiers, the schema without a dot.
pub fn qualified_table_pattern() -> String {
    let control = class_ranges(&CONTROL_CHARACTERS);
    let max = MAX_IDENTIFIER_LENGTH;
    format!("^[^.{control}]{{1,{max}}}\\.[^{control}]{{1,{max}}}$")
}

/// An update mask: one to [`UpdateField::PATHS`] of the settable paths (or `*`), by commas.
pub fn update_mask_pattern() -> String {
    let paths: Vec<String> = UpdateField::PATHS
        .iter()
        .map(|path| path.replace('.', "\\."))
        .chain(["\\*".to_owned()])
        .collect();
    let path = format!("({})", paths.join("|"));
    format!("^{path}(,{path}){{0,{}}}$", UpdateField::PATHS.len() - 1)
}

/// A binlog file name as SHOW BINARY LOGS lists it, or empty.
pub fn binlog_file_pattern() -> String {
    "^([A-Za-z0-9_-][A-Za-z0-9._-]*)?$".to_owned()
}

/// A GTID set: MySQL members `uuid:N` (tags allowed, `uuid:tag:N`) or MariaDB's
/// `domain-server-sequence`, by commas. Intervals `N-M` are accepted too; the document states
/// the single transactions, whose order needs no check.
pub fn gtid_set_pattern() -> String {
    let uuid = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}";
    let number = "[1-9][0-9]{0,17}";
    let tag = "[a-z_][a-z0-9_]{0,31}";
    let mysql = format!("{uuid}(:({tag}:)?{number})+");
    let mariadb = "[0-9]{1,18}-[0-9]{1,18}-[0-9]{1,18}";
    let member = format!("({mysql}|{mariadb})");
    format!("^({member}(,{member})*)?$")
}

fn name(path: &str) -> String {
    format!("{PACKAGE}.{path}")
}

fn field(path: &str, rules: Vec<Rule>) -> FieldRules {
    FieldRules {
        name: name(path),
        rules,
    }
}

/// Printable text of at most `max` characters (empty allowed).
fn printable(max: usize) -> Vec<Rule> {
    vec![
        Rule::Length { min: 0, max },
        Rule::Pattern(printable_pattern()),
    ]
}

/// A required login of at most `max` characters.
fn login(max: usize) -> Vec<Rule> {
    vec![
        Rule::Length { min: 1, max },
        Rule::Pattern(printable_pattern()),
    ]
}

/// A port: 1 to 65535, or 0 for the default.
fn port() -> Vec<Rule> {
    vec![Rule::Range {
        min: 0,
        max: i64::from(u16::MAX),
    }]
}

/// A list of stream options.
fn stream_list(item: Vec<Rule>) -> Vec<Rule> {
    vec![Rule::MaxItems(MAX_STREAM_OPTION_ENTRIES), Rule::Items(item)]
}

/// RegisterServer's server: its required fields, and an SSH tunnel exactly when the connection
/// method is ssh_tunnel.
fn registration() -> Vec<Rule> {
    let tunnelled = json!({ "properties": { "connection_method": { "const": "ssh_tunnel" } } });
    vec![
        Rule::Required(vec!["name", "host", "mysql_user", "connection_method"]),
        Rule::Schema(json!({
            "if": tunnelled,
            "then": {
                "required": ["ssh_tunnel"],
                "properties": { "ssh_tunnel": { "type": "object" } },
            },
            "else": { "properties": { "ssh_tunnel": { "type": "null" } } },
        })),
    ]
}

/// RestartStream's start: exactly one of a binlog file and position (4 or more), a GTID set, or
/// the current position.
fn restart_start() -> Rule {
    let unset_file =
        json!({ "binlog_file": { "maxLength": 0 }, "binlog_position": { "const": 0 } });
    let unset_gtids = json!({ "gtid_set": { "maxLength": 0 } });
    let not_current = json!({ "current_position": { "const": false } });
    let merge = |parts: &[&Json]| {
        let mut merged = Map::new();
        for part in parts {
            if let Json::Object(object) = part {
                merged.extend(object.clone());
            }
        }
        Json::Object(merged)
    };
    Rule::Schema(json!({ "oneOf": [
        {
            "required": ["binlog_file", "binlog_position"],
            "properties": merge(&[
                &json!({ "binlog_file": { "minLength": 1 }, "binlog_position": { "minimum": 4 } }),
                &unset_gtids,
                &not_current,
            ]),
        },
        {
            "required": ["gtid_set"],
            "properties": merge(&[&json!({ "gtid_set": { "minLength": 1 } }), &unset_file, &not_current]),
        },
        {
            "required": ["current_position"],
            "properties": merge(&[&json!({ "current_position": { "const": true } }), &unset_file, &unset_gtids]),
        },
    ]}))
}

/// The rules of every request field the validators check. A table, one entry per field: long
/// because the request fields are many, and whole so a reader checks one place.
pub fn requests() -> Vec<FieldRules> {
    let uuid = || vec![Rule::Format("uuid")];
    let mut rules = vec![
        field("Server.server_id", uuid()),
        field(
            "Server.name",
            vec![
                Rule::Length {
                    min: 1,
                    max: MAX_NAME_LENGTH,
                },
                Rule::Pattern(name_pattern()),
            ],
        ),
        field("Server.host", host_rules()),
        field("Server.port", port()),
        field("Server.mysql_user", login(MAX_MYSQL_USER_LENGTH)),
        field(
            "Server.mysql_password",
            printable(MAX_MYSQL_PASSWORD_LENGTH),
        ),
        field(
            "Server.connection_method",
            vec![Rule::OneOf(
                ConnectionMethod::ALL
                    .iter()
                    .map(|method| method.as_str().to_owned())
                    .collect(),
            )],
        ),
        // A tunnel is sent whole, private key included: an update may keep the stored key by
        // leaving it out under a mask naming the tunnel's other fields, which the document does
        // not spell out.
        field(
            "SshTunnel",
            vec![Rule::Required(vec!["host", "user", "private_key"])],
        ),
        field(
            "Server.labels",
            vec![
                Rule::MaxProperties(MAX_LABELS),
                Rule::Keys(vec![Rule::Pattern(label_key_pattern())]),
                Rule::Values(vec![Rule::Pattern(label_value_pattern())]),
            ],
        ),
        field("SshTunnel.host", host_rules()),
        field("SshTunnel.port", port()),
        field("SshTunnel.user", login(MAX_SSH_USER_LENGTH)),
        // That it is an armoured key a schema can say; that it parses, only a format of the
        // service's own (`ssh-private-key`; the fuzz test teaches it to schemathesis).
        field(
            "SshTunnel.private_key",
            vec![
                Rule::Pattern(PRIVATE_KEY_PATTERN.to_owned()),
                Rule::Format("ssh-private-key"),
            ],
        ),
        field(
            "SshTunnel.host_key_fingerprint",
            vec![Rule::Pattern(format!(
                "^(SHA256:[A-Za-z0-9+/]{{{FINGERPRINT_DIGEST_LENGTH}}})?$"
            ))],
        ),
        field(
            "StreamOptions.schemas",
            stream_list(vec![
                Rule::Length {
                    min: 1,
                    max: MAX_IDENTIFIER_LENGTH,
                },
                Rule::Pattern(printable_pattern()),
            ]),
        ),
        field(
            "StreamOptions.tables",
            stream_list(vec![Rule::Pattern(qualified_table_pattern())]),
        ),
        field(
            "StreamOptions.exclude_tables",
            stream_list(vec![Rule::Pattern(qualified_table_pattern())]),
        ),
        field("RegisterServerRequest.server", registration()),
        // An update names at least one field (without a mask, the fields it sets).
        field(
            "UpdateServerRequest.server",
            vec![Rule::Schema(json!({ "minProperties": 1 }))],
        ),
        field(
            "UpdateServerRequest.update_mask",
            vec![Rule::Pattern(update_mask_pattern())],
        ),
        field(
            "ListServersRequest.filter",
            vec![
                Rule::Length {
                    min: 0,
                    max: filter::MAX_LENGTH,
                },
                Rule::Pattern(printable_pattern()),
            ],
        ),
        field("ListServersRequest.page_size", vec![Rule::Minimum(0)]),
        field(
            "WatchOnboardingRequest.since_revision",
            vec![Rule::Minimum(0)],
        ),
        field(
            "RestartStreamRequest.binlog_file",
            vec![
                Rule::Length {
                    min: 0,
                    max: MAX_BINLOG_FILE_LENGTH,
                },
                Rule::Pattern(binlog_file_pattern()),
            ],
        ),
        field(
            "RestartStreamRequest.binlog_position",
            vec![Rule::Minimum(0)],
        ),
        field(
            "RestartStreamRequest.gtid_set",
            vec![
                Rule::Length {
                    min: 0,
                    max: MAX_GTID_SET_LENGTH,
                },
                Rule::Pattern(gtid_set_pattern()),
            ],
        ),
        field("RestartStreamRequest", vec![restart_start()]),
        // CheckServer checks a RegisterServer body or a registered server: one of the two.
        field("CheckServerRequest.server", registration()),
        field(
            "CheckServerRequest",
            vec![Rule::Schema(json!({ "oneOf": [
                { "required": ["server"], "properties": { "server": { "type": "object" } } },
                {
                    "required": ["server_id"],
                    "properties": { "server_id": { "type": "string" } },
                },
            ]}))],
        ),
    ];
    for request in [
        "RegisterServerRequest",
        "UpdateServerRequest",
        "DecommissionServerRequest",
    ] {
        rules.push(field(
            &format!("{request}.request_id"),
            printable(MAX_REQUEST_ID_LENGTH),
        ));
    }
    for request in [
        "GetServerRequest",
        "DecommissionServerRequest",
        "GetOnboardingStatusRequest",
        "ConfirmFirewallRequest",
        "WatchOnboardingRequest",
        "RetryOnboardingRequest",
        "RestartStreamRequest",
        "ListChangeEventsRequest",
        "ListSchemaChangesRequest",
        "RevertChangesRequest",
        "GetRowHistoryRequest",
        "PauseStreamRequest",
        "ResumeStreamRequest",
        "CheckServerRequest",
    ] {
        rules.push(field(&format!("{request}.server_id"), uuid()));
    }
    rules.extend(webhook_rules());
    rules.push(field(
        "RevertChangesRequest.event_ids",
        vec![
            Rule::MaxItems(change::MAX_EVENT_IDS),
            Rule::Items(vec![Rule::Pattern(change::EVENT_ID_PATTERN.to_owned())]),
        ],
    ));
    rules.push(field(
        "GetRowHistoryRequest.key",
        vec![Rule::Length {
            min: 0,
            max: change::MAX_ROW_KEY_LENGTH,
        }],
    ));
    // The captured changes' lists share their filter's grammar and their pages.
    // RevertChanges selects with ListChangeEvents' filter.
    rules.push(field(
        "RevertChangesRequest.filter",
        vec![
            Rule::Length {
                min: 0,
                max: change::MAX_LENGTH,
            },
            Rule::Pattern(printable_pattern()),
        ],
    ));
    for request in [
        "ListChangeEventsRequest",
        "ListSchemaChangesRequest",
        "ListAuditEventsRequest",
    ] {
        rules.push(field(
            &format!("{request}.filter"),
            vec![
                Rule::Length {
                    min: 0,
                    max: change::MAX_LENGTH,
                },
                Rule::Pattern(printable_pattern()),
            ],
        ));
        rules.push(field(
            &format!("{request}.page_size"),
            vec![Rule::Minimum(0)],
        ));
    }
    rules
}

/// The webhook calls' rules: a URL's length and the event list's size. The URL's scheme, host
/// and target stay the validator's alone (no pattern: a URL parser forgives what a pattern
/// would refuse, such as surrounding spaces).
fn webhook_rules() -> Vec<FieldRules> {
    let uuid = || vec![Rule::Format("uuid")];
    let mut rules = vec![
        field(
            "Webhook.url",
            vec![Rule::Length {
                min: 0,
                max: webhook::MAX_URL_LENGTH,
            }],
        ),
        field(
            "Webhook.events",
            vec![Rule::MaxItems(webhook::EventType::ALL.len())],
        ),
        field(
            "CreateWebhookRequest.webhook",
            vec![Rule::Required(vec!["url", "events"])],
        ),
        field("ListWebhooksRequest.page_size", vec![Rule::Minimum(0)]),
        field(
            "ListWebhookDeliveriesRequest.page_size",
            vec![Rule::Minimum(0)],
        ),
        field("RedeliverWebhookRequest.delivery_id", uuid()),
    ];
    for request in [
        "GetWebhookRequest",
        "DeleteWebhookRequest",
        "ListWebhookDeliveriesRequest",
        "RedeliverWebhookRequest",
    ] {
        rules.push(field(&format!("{request}.webhook_id"), uuid()));
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules_of(path: &str) -> Map<String, Json> {
        let schemas = json_schemas();
        schemas
            .get(&name(path))
            .cloned()
            .unwrap_or_else(|| panic!("no rules for {path}"))
    }

    #[test]
    fn the_table_states_the_validators_constants() {
        let server_name = rules_of("Server.name");
        assert_eq!(server_name["minLength"], json!(1));
        assert_eq!(server_name["maxLength"], json!(MAX_NAME_LENGTH));
        assert_eq!(rules_of("Server.port")["maximum"], json!(65535));
        assert_eq!(
            rules_of("Server.mysql_user")["maxLength"],
            json!(MAX_MYSQL_USER_LENGTH)
        );
        assert_eq!(
            rules_of("SshTunnel.user")["maxLength"],
            json!(MAX_SSH_USER_LENGTH)
        );
        assert_eq!(
            rules_of("Server.labels")["maxProperties"],
            json!(MAX_LABELS)
        );
        for list in ["schemas", "tables", "exclude_tables"] {
            assert_eq!(
                rules_of(&format!("StreamOptions.{list}"))["maxItems"],
                json!(MAX_STREAM_OPTION_ENTRIES)
            );
        }
        assert_eq!(
            rules_of("ListServersRequest.filter")["maxLength"],
            json!(filter::MAX_LENGTH)
        );
        assert_eq!(
            rules_of("ListChangeEventsRequest.filter")["maxLength"],
            json!(change::MAX_LENGTH)
        );
        assert_eq!(
            rules_of("RestartStreamRequest.gtid_set")["maxLength"],
            json!(MAX_GTID_SET_LENGTH)
        );
        assert_eq!(
            rules_of("RestartStreamRequest.binlog_file")["maxLength"],
            json!(MAX_BINLOG_FILE_LENGTH)
        );
        assert_eq!(
            rules_of("RegisterServerRequest.request_id")["maxLength"],
            json!(MAX_REQUEST_ID_LENGTH)
        );
        assert_eq!(rules_of("GetServerRequest.server_id")["format"], "uuid");
        assert_eq!(
            rules_of("Server.connection_method")["enum"],
            json!(["direct", "vpn", "ssh_tunnel"])
        );
    }

    #[test]
    fn patterns_are_built_from_the_same_limits() {
        let mask = update_mask_pattern();
        assert!(mask.ends_with(&format!("{{0,{}}}$", UpdateField::PATHS.len() - 1)));
        for path in UpdateField::PATHS {
            assert!(mask.contains(&path.replace('.', "\\.")), "{path}");
        }
        assert!(label_key_pattern().contains(&format!("{{0,{}}}", MAX_LABEL_LENGTH - 2)));
        assert!(qualified_table_pattern().contains(&format!("{{1,{MAX_IDENTIFIER_LENGTH}}}")));
        assert!(dns_name_pattern().contains(&format!("{{0,{}}}", MAX_HOST_LABEL_LENGTH - 2)));
        // The name's refused characters are the validator's own sets.
        let name = name_pattern();
        assert!(name.contains("\\u0000-\\u001F\\u007F-\\u009F"));
        assert!(name.contains("\\u200B-\\u200F"));
        assert!(name.contains("\\uFEFF"));
        assert_eq!(printable_pattern(), "^[^\\u0000-\\u001F\\u007F-\\u009F]*$");
    }
}
