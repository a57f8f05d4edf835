//! The replica's periodic jobs (src/housekeeping.rs) that run from its start: dead agents that
//! no server names are forgotten, and so are the key checks of secrets keys that are retired
//! (held by no replica here, sealing nothing); what is still in use stays.

use crate::common::*;
use std::time::Duration;

/// The key ids of the stored key checks, sorted.
async fn key_checks(sql: &tokio_postgres::Client) -> Vec<String> {
    let rows = sql
        .query("SELECT key_id FROM secrets_key_checks ORDER BY key_id", &[])
        .await
        .expect("key checks");
    rows.iter().map(|row| row.get(0)).collect()
}

/// The names of the stored agents, sorted.
async fn agents(sql: &tokio_postgres::Client) -> Vec<String> {
    let rows = sql
        .query("SELECT name FROM agents ORDER BY name", &[])
        .await
        .expect("agents");
    rows.iter().map(|row| row.get(0)).collect()
}

async fn add_agent(sql: &tokio_postgres::Client, name: &str, silent_for: &str) -> String {
    let id = uuid::Uuid::now_v7().to_string();
    sql.execute(
        &format!(
            "INSERT INTO agents (id, name, outbound_ip, capacity, heartbeat_at) \
             VALUES ($1::text::uuid, $2, '192.0.2.7', 10, now() - interval '{silent_for}')"
        ),
        &[&id, &name],
    )
    .await
    .expect("insert an agent");
    id
}

#[test]
fn a_replica_forgets_dead_agents_without_servers_and_retired_key_checks() {
    block_on(async {
        let db = TestDatabase::create().await;
        let old_key = random_secrets_key();
        let first = ServiceProcess::serve(
            "first",
            &db.url,
            &ReplicaOptions {
                secrets_key: old_key.clone(),
                ..ReplicaOptions::default()
            },
        )
        .await;
        let mut client = first
            .client(&db.create_tenant("kept", None).await.key)
            .await;
        let sealed_old = register(&mut client, direct_server("sealed-old")).await;
        let sealed_other = register(&mut client, direct_server("sealed-other")).await;
        drop(client);
        drop(first);

        let sql = db.connect().await;
        let old_key_id: String = sql
            .query_one(
                "SELECT mysql_password_key_id FROM servers WHERE id = $1::text::uuid",
                &[&sealed_old.server_id],
            )
            .await
            .expect("the sealed password's key")
            .get(0);
        // Agents: one long dead with no server, one long dead that a server still names, one
        // dead only a minute (its servers may not have moved yet).
        add_agent(&sql, "dead-empty", "2 days").await;
        let named = add_agent(&sql, "dead-named", "2 days").await;
        add_agent(&sql, "dead-recently", "1 minute").await;
        sql.execute(
            "UPDATE servers SET agent_id = $1::text::uuid WHERE id = $2::text::uuid",
            &[&named, &sealed_old.server_id],
        )
        .await
        .expect("a server names the dead agent");
        // Key checks: a retired key that seals nothing, and one no replica holds that still
        // seals a stored secret.
        sql.execute(
            "INSERT INTO secrets_key_checks (key_id, check_value) \
             VALUES ('retired', '\\x00'), ('sealing', '\\x00')",
            &[],
        )
        .await
        .expect("insert key checks");
        sql.execute(
            "UPDATE servers SET mysql_password_key_id = 'sealing' WHERE id = $1::text::uuid",
            &[&sealed_other.server_id],
        )
        .await
        .expect("a secret sealed with the other key");
        let before = key_checks(&sql).await;
        assert_eq!(before.len(), 3, "{before:?}");

        // A replica on a new key, the old one kept for decryption (a rotation).
        let new_key = random_secrets_key();
        let second = ServiceProcess::serve(
            "second",
            &db.url,
            &ReplicaOptions {
                secrets_key: new_key,
                extra_args: vec!["--secrets-old-keys".to_owned(), old_key],
                ..ReplicaOptions::default()
            },
        )
        .await;
        wait_until(
            "the retired key's check is removed",
            Duration::from_secs(10),
            || async { !key_checks(&sql).await.contains(&"retired".to_owned()) },
        )
        .await;
        let after = key_checks(&sql).await;
        assert!(
            after.contains(&old_key_id),
            "the old key seals secrets: {after:?}"
        );
        assert!(after.contains(&"sealing".to_owned()), "{after:?}");
        assert_eq!(
            after.len(),
            3,
            "the new key's check, the old and the sealing: {after:?}"
        );

        wait_until(
            "the dead agent is forgotten",
            Duration::from_secs(10),
            || async { !agents(&sql).await.contains(&"dead-empty".to_owned()) },
        )
        .await;
        let left = agents(&sql).await;
        assert!(left.contains(&"dead-named".to_owned()), "{left:?}");
        assert!(left.contains(&"dead-recently".to_owned()), "{left:?}");
        // The log line follows the delete through the log writer and the pipe.
        wait_until(
            "the replica says what it forgot",
            Duration::from_secs(10),
            || async {
                second
                    .stderr()
                    .contains("forgot dead agents that no server names")
            },
        )
        .await;
    });
}
