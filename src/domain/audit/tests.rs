//! The changes a call makes of a server, and ListAuditEvents' filter.

use super::*;
use crate::domain::{
    ConnectionMethod, ServerStatus, SslMode,
    fields::{Host, Labels, Port, ServerName, UserName},
    server::{Sealed, ServerSpec, StoredSecrets},
};

fn server() -> Server {
    let spec = ServerSpec {
        name: ServerName::parse("orders").unwrap(),
        host: Host::parse("db.example.com").unwrap(),
        port: Port::parse(3306, 3306).unwrap(),
        mysql_user: UserName::parse("dbtrail", "mysql_user", 32).unwrap(),
        connection_method: ConnectionMethod::Direct,
        ssh_tunnel: None,
        stream_options: StreamOptions::default(),
        labels: Labels::parse([("env".into(), "prod".into())].into()).unwrap(),
    };
    let secrets = StoredSecrets {
        mysql_password: Some(sealed(b"first")),
        ssh_private_key: None,
    };
    Server::register(
        ServerId::generate(),
        TenantId::from_uuid(Uuid::now_v7()),
        spec,
        secrets,
        crate::domain::now(),
    )
}

fn sealed(ciphertext: &[u8]) -> Sealed {
    Sealed {
        key_id: "k1".into(),
        ciphertext: ciphertext.to_vec(),
    }
}

fn fields(changes: &[FieldChange]) -> Vec<&str> {
    changes.iter().map(|change| change.field.as_str()).collect()
}

#[test]
fn a_registration_sets_every_field_and_a_secret_only_as_set() {
    let server = server();
    let changes = server_changes(None, &server);
    let host = changes
        .iter()
        .find(|change| change.field == "host")
        .unwrap();
    assert_eq!(host.old, Some(Value::Null));
    assert_eq!(host.new, Some(json!("db.example.com")));
    let password = changes
        .iter()
        .find(|change| change.field == "mysql_password")
        .unwrap();
    assert_eq!(
        (password.old.clone(), password.new.clone(), password.secret),
        (None, None, Some(SecretChange::Set))
    );
    assert!(fields(&changes).contains(&"labels.env"));
    assert!(fields(&changes).contains(&"status"));
    // No tunnel: its fields are null before and after, so not changes.
    assert!(
        !fields(&changes)
            .iter()
            .any(|field| field.starts_with("ssh_tunnel"))
    );
}

#[test]
fn an_update_lists_what_moved_and_never_a_secrets_bytes() {
    let before = server();
    let mut after = before.clone();
    after.spec.port = Port::parse(3307, 3306).unwrap();
    after.spec.labels = Labels::parse([("team".into(), "core".into())].into()).unwrap();
    after.spec.stream_options.ssl_mode = SslMode::Required;
    after.secrets.mysql_password = Some(sealed(b"second"));
    let changes = server_changes(Some(&before), &after);
    assert_eq!(
        fields(&changes),
        [
            "port",
            "stream_options.ssl_mode",
            "labels.env",
            "labels.team",
            "mysql_password"
        ]
    );
    assert_eq!(changes[0].old, Some(json!(3306)));
    assert_eq!(changes[0].new, Some(json!(3307)));
    assert_eq!(changes[2].new, Some(Value::Null), "a removed label");
    assert_eq!(changes[4].secret, Some(SecretChange::Changed));
    let text = serde_json::to_string(&changes).unwrap();
    assert!(!text.contains("second") && !text.contains("k1"), "{text}");
    assert!(
        text.contains(r#"{"field":"mysql_password","secret":"changed"}"#),
        "{text}"
    );

    let mut removed = after.clone();
    removed.secrets.mysql_password = None;
    assert_eq!(
        server_changes(Some(&after), &removed)[0].secret,
        Some(SecretChange::Removed)
    );
    assert!(server_changes(Some(&after), &after).is_empty());
}

#[test]
fn a_lifecycle_change_is_its_status_and_step() {
    let before = server();
    let mut after = before.clone();
    after.decommission(crate::domain::now());
    let changes = server_changes(Some(&before), &after);
    assert_eq!(fields(&changes), ["status", "onboarding_step"]);
    assert_eq!(changes[0].old, Some(json!("pending")));
    assert_eq!(
        changes[0].new,
        Some(json!(ServerStatus::Decommissioned.as_str()))
    );
    assert_eq!(changes[1].new, Some(Value::Null));
}

#[test]
fn the_filter_reads_times_methods_ids_and_outcomes() {
    let key = Uuid::now_v7();
    let filter = AuditFilter::parse(&format!(
        r#"time >= "2026-12-01T00:00:00Z" AND method = UpdateServer AND key_id != {key} AND outcome = permission_denied"#
    ))
    .unwrap();
    assert_eq!(filter.conditions.len(), 4);
    assert!(matches!(
        filter.conditions[0],
        AuditCondition::Time(Comparison::GreaterOrEqual, _)
    ));
    assert_eq!(
        filter.conditions[2],
        AuditCondition::KeyId {
            equals: false,
            value: key
        }
    );
    assert_eq!(
        filter.conditions[3],
        AuditCondition::Outcome {
            equals: true,
            value: "PERMISSION_DENIED".into()
        }
    );
    assert!(AuditFilter::parse("").unwrap().conditions.is_empty());
}

#[test]
fn filter_errors_say_where_and_how_to_fix() {
    let error = AuditFilter::parse("method > A").unwrap_err();
    assert!(
        error.contains("method compares with = or != only"),
        "{error}"
    );
    let error = AuditFilter::parse("server_id = nope").unwrap_err();
    assert_eq!(error, "server_id \"nope\" at character 13 is not a UUID");
    let error = AuditFilter::parse("outcome = FINE").unwrap_err();
    assert!(error.contains("character 11"), "{error}");
    let error = AuditFilter::parse("time < yesterday").unwrap_err();
    assert!(error.contains("RFC 3339"), "{error}");
    let error = AuditFilter::parse("tenant_id = x").unwrap_err();
    assert!(
        error.contains("unknown field \"tenant_id\" at character 1"),
        "{error}"
    );
}
