//! B1–B5: unary calls against the SQL they come down to, over plain tokio-postgres.

use std::{sync::Arc, time::Duration};

use dbtrail_servers::proto;

use crate::{
    client::{self, parked_server},
    load::{self, Call, call, ms},
    replica::{Replica, pg_connect},
    report::Row,
};

/// Every column the service reads for a server (store::rows::ServerRow).
const SERVER_COLUMNS: &str = "id, tenant_id, name, host, port, mysql_user, mysql_password_sealed, \
    mysql_password_key_id, connection_method, ssh_host, ssh_port, ssh_user, \
    ssh_private_key_sealed, ssh_private_key_key_id, ssh_host_key_fingerprint, stream_schemas, \
    stream_tables, ssl_mode, labels, status, steps, revision, version, agent_id, \
    agent_outbound_ip, runnable, created_at, updated_at, decommissioned_at";

/// gRPC GetServer of one server, on `connections` HTTP/2 connections.
async fn grpc_get(replica: &Replica, key: &str, server_id: &str, connections: usize) -> Call {
    let mut clients = Vec::new();
    for _ in 0..connections {
        clients.push(client::client(replica.channel().await, key));
    }
    let clients = Arc::new(clients);
    let server_id = server_id.to_owned();
    call(move |worker| {
        let mut client = clients[worker % clients.len()].clone();
        let request = proto::GetServerRequest {
            server_id: server_id.clone(),
        };
        async move {
            client.get_server(request).await.expect("GetServer");
        }
    })
}

/// The same row by a prepared SELECT, on `connections` connections.
async fn pg_get(replica: &Replica, server_id: &str, connections: usize) -> Call {
    let sql = format!("SELECT {SERVER_COLUMNS} FROM servers WHERE id = ($1::text)::uuid");
    let mut clients = Vec::new();
    for _ in 0..connections {
        let client = pg_connect(&replica.database_url).await;
        let statement = client.prepare(&sql).await.expect("prepare the SELECT");
        clients.push((client, statement));
    }
    let clients = Arc::new(clients);
    let server_id = server_id.to_owned();
    call(move |worker| {
        let clients = clients.clone();
        let server_id = server_id.clone();
        async move {
            let (client, statement) = &clients[worker % clients.len()];
            client
                .query_one(statement, &[&server_id])
                .await
                .expect("the baseline SELECT");
        }
    })
}

/// REST GET /servers/{id} on a pool of HTTP/1.1 keep-alive connections.
fn rest_get(replica: &Replica, key: &str, server_id: &str) -> Call {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .tcp_nodelay(true)
        .build()
        .expect("an HTTP client");
    let url = format!("http://{}/servers/{server_id}", replica.http_addr);
    let authorization = format!("Bearer {key}");
    call(move |_| {
        let request = http
            .get(&url)
            .header("authorization", &authorization)
            .send();
        async move {
            let response = request.await.expect("REST GetServer");
            assert!(
                response.status().is_success(),
                "REST GetServer: {}",
                response.status()
            );
            response.bytes().await.expect("REST GetServer body");
        }
    })
}

/// gRPC health Check on one connection: the same listener and call layers as GetServer (the
/// layers pass it through), no key and no database. What a unary call costs before its work.
async fn health_check(replica: &Replica) -> Call {
    let client = tonic_health::pb::health_client::HealthClient::new(replica.channel().await);
    call(move |_| {
        let mut client = client.clone();
        async move {
            client
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .expect("health Check");
        }
    })
}

/// B1, B2 and B5 on one parked server.
pub async fn get_server(replica: &Replica, key: &str, rows: &mut Vec<Row>) {
    let mut client = client::client(replica.channel().await, key);
    let server = client::register(&mut client, parked_server("bench-get")).await;
    client::wait_parked(&mut client, &server.server_id).await;

    let grpc_one = grpc_get(replica, key, &server.server_id, 1).await;
    let pg_one = pg_get(replica, &server.server_id, 1).await;
    let (measured, baseline) = load::compare_latency(&grpc_one, &pg_one, 4, 1000).await;
    let (p50, base_p50) = (
        measured.value_at_quantile(0.5),
        baseline.value_at_quantile(0.5),
    );
    let health = health_check(replica).await;
    // Alternating with GetServer again, so that both see the same machine; only the floor is kept.
    let (floor, _) = load::compare_latency(&health, &grpc_one, 2, 1000).await;
    rows.push(Row {
        id: "B1",
        measurement: "GetServer latency, 1 in flight, p50 / p99".to_owned(),
        value: format!("{} / {}", ms(p50), ms(measured.value_at_quantile(0.99))),
        baseline: format!(
            "{} / {} (prepared SELECT, 1 connection)",
            ms(base_p50),
            ms(baseline.value_at_quantile(0.99))
        ),
        ratio: format!("p50 +{}", ms(p50.saturating_sub(base_p50))),
        target: "p50 ≤ baseline + 0.25 ms".to_owned(),
        met: p50 <= base_p50 + 250,
        detail: Some(format!(
            "a gRPC health Check on the same listener and layers (no key, no database): p50 {} \
             / p99 {}",
            ms(floor.value_at_quantile(0.5)),
            ms(floor.value_at_quantile(0.99))
        )),
    });

    let grpc_many = grpc_get(replica, key, &server.server_id, 4).await;
    let pg_many = pg_get(replica, &server.server_id, 16).await;
    let round = Duration::from_secs(2);
    let throughput =
        load::compare_throughput(&grpc_many, &pg_many, 16, 5, round, replica.pid()).await;
    let (median, min, max) = throughput.ratio_summary();
    rows.push(Row {
        id: "B2",
        measurement: "GetServer throughput, 16 in flight (4 HTTP/2 connections)".to_owned(),
        value: format!("{:.0}/s", load::median(&throughput.measured)),
        baseline: format!(
            "{:.0}/s (prepared SELECT, 16 connections)",
            load::median(&throughput.baseline)
        ),
        ratio: format!("{median:.2} (min {min:.2}, max {max:.2})"),
        target: "≥ 0.5".to_owned(),
        met: median >= 0.5,
        detail: Some(throughput.detail("gRPC GetServer", "the SELECT")),
    });

    let rest = rest_get(replica, key, &server.server_id);
    let throughput = load::compare_throughput(&rest, &grpc_many, 16, 5, round, replica.pid()).await;
    let (median, min, max) = throughput.ratio_summary();
    rows.push(Row {
        id: "B5",
        measurement: "REST GetServer throughput, 16 in flight (HTTP/1.1 keep-alive)".to_owned(),
        value: format!("{:.0}/s", load::median(&throughput.measured)),
        baseline: format!(
            "{:.0}/s (gRPC GetServer)",
            load::median(&throughput.baseline)
        ),
        ratio: format!("{median:.2} (min {min:.2}, max {max:.2})"),
        target: "≥ 0.8".to_owned(),
        met: median >= 0.8,
        detail: Some(throughput.detail("REST GetServer", "gRPC GetServer")),
    });
}

/// B4: RegisterServer and UpdateServer against raw transactions of the same statements.
pub async fn mutations(replica: &Replica, key: &str, rows: &mut Vec<Row>) {
    let mut client = client::client(replica.channel().await, key);
    let template = client::register(&mut client, parked_server("bench-template")).await;
    client::wait_parked(&mut client, &template.server_id).await;
    let channel = replica.channel().await;
    let names = Arc::new(std::sync::atomic::AtomicU64::new(0));

    let register = {
        let client = client::client(channel.clone(), key);
        let names = names.clone();
        call(move |_| {
            let mut client = client.clone();
            let name = format!(
                "bench-register-{}",
                names.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            );
            async move {
                client::register(&mut client, parked_server(&name)).await;
            }
        })
    };
    let raw_register = raw_register(replica, &template.server_id, names.clone()).await;
    let round = Duration::from_secs(2);
    let throughput =
        load::compare_throughput(&register, &raw_register, 8, 3, round, replica.pid()).await;
    let (median, min, max) = throughput.ratio_summary();
    rows.push(Row {
        id: "B4",
        measurement: "RegisterServer, 8 in flight".to_owned(),
        value: format!("{:.0}/s", load::median(&throughput.measured)),
        baseline: format!(
            "{:.0}/s (raw transaction: limit read, INSERT, history row, 2 NOTIFY)",
            load::median(&throughput.baseline)
        ),
        ratio: format!("{median:.2} (min {min:.2}, max {max:.2})"),
        target: "≥ 0.5".to_owned(),
        met: median >= 0.5,
        detail: Some(throughput.detail("RegisterServer", "the raw transaction")),
    });

    let mut targets = Vec::new();
    for worker in 0..8 {
        let server = client::register(
            &mut client,
            parked_server(&format!("bench-update-{worker}")),
        )
        .await;
        client::wait_parked(&mut client, &server.server_id).await;
        targets.push(server.server_id);
    }
    let targets = Arc::new(targets);
    let update = {
        let client = client::client(channel.clone(), key);
        let targets = targets.clone();
        let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
        call(move |worker| {
            let mut client = client.clone();
            let value = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let request = proto::UpdateServerRequest {
                server: Some(proto::Server {
                    server_id: targets[worker].clone(),
                    labels: [("run".to_owned(), value.to_string())].into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["labels".to_owned()],
                }),
                ..Default::default()
            };
            async move {
                client.update_server(request).await.expect("UpdateServer");
            }
        })
    };
    let raw_update = raw_update(replica, targets.clone()).await;
    let throughput =
        load::compare_throughput(&update, &raw_update, 8, 3, round, replica.pid()).await;
    let (median, min, max) = throughput.ratio_summary();
    rows.push(Row {
        id: "B4",
        measurement: "UpdateServer (labels), 8 in flight, one server each".to_owned(),
        value: format!("{:.0}/s", load::median(&throughput.measured)),
        baseline: format!(
            "{:.0}/s (raw transaction: SELECT … FOR UPDATE, UPDATE)",
            load::median(&throughput.baseline)
        ),
        ratio: format!("{median:.2} (min {min:.2}, max {max:.2})"),
        target: "≥ 0.5".to_owned(),
        met: median >= 0.5,
        detail: Some(throughput.detail("UpdateServer", "the raw transaction")),
    });
}

/// What RegisterServer writes, as one raw transaction per call on 8 connections: the
/// tenant's limit, the server row (copied from a registered one), its first history row, and
/// the two NOTIFYs.
async fn raw_register(
    replica: &Replica,
    template_id: &str,
    names: Arc<std::sync::atomic::AtomicU64>,
) -> Call {
    let copy_columns = SERVER_COLUMNS
        .split(", ")
        .map(|column| match column {
            "id" => "($1::text)::uuid",
            "name" => "$2",
            // As registered: no agent yet (the template's engine run assigned one).
            "agent_id" | "agent_outbound_ip" => "NULL",
            "runnable" => "false",
            "created_at" | "updated_at" => "now()",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(", ");
    let insert = format!(
        "INSERT INTO servers ({SERVER_COLUMNS}) SELECT {copy_columns} FROM servers \
         WHERE id = ($3::text)::uuid"
    );
    let history = "INSERT INTO onboarding_history (server_id, revision, status) \
        SELECT ($1::text)::uuid, 1, status FROM onboarding_history \
        WHERE server_id = ($2::text)::uuid AND revision = 1";
    let mut connections = Vec::new();
    for _ in 0..8 {
        let client = pg_connect(&replica.database_url).await;
        let statements = [
            "SELECT server_limit FROM tenants WHERE id = (SELECT tenant_id FROM servers WHERE id = ($1::text)::uuid)",
            insert.as_str(),
            history,
            "SELECT pg_notify('dbtrail_onboarding', $1 || ':1')",
            "SELECT pg_notify('dbtrail_runnable', $1)",
        ];
        let mut prepared = Vec::new();
        for sql in statements {
            prepared.push(client.prepare(sql).await.expect("prepare"));
        }
        connections.push(Arc::new(tokio::sync::Mutex::new((client, prepared))));
    }
    let connections = Arc::new(connections);
    let template_id = template_id.to_owned();
    call(move |worker| {
        let connection = connections[worker % connections.len()].clone();
        let template_id = template_id.clone();
        let name = format!(
            "bench-raw-{}",
            names.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        async move {
            let mut guard = connection.lock().await;
            let (client, prepared) = &mut *guard;
            let id = uuid::Uuid::now_v7().to_string();
            let transaction = client.transaction().await.expect("BEGIN");
            transaction
                .query(&prepared[0], &[&template_id])
                .await
                .expect("limit");
            transaction
                .execute(&prepared[1], &[&id, &name, &template_id])
                .await
                .expect("INSERT server");
            transaction
                .execute(&prepared[2], &[&id, &template_id])
                .await
                .expect("INSERT history");
            transaction
                .query(&prepared[3], &[&id])
                .await
                .expect("NOTIFY");
            transaction
                .query(&prepared[4], &[&id])
                .await
                .expect("NOTIFY");
            transaction.commit().await.expect("COMMIT");
        }
    })
}

/// What a labels-only UpdateServer writes, as one raw transaction per call.
async fn raw_update(replica: &Replica, targets: Arc<Vec<String>>) -> Call {
    let lock =
        format!("SELECT {SERVER_COLUMNS} FROM servers WHERE id = ($1::text)::uuid FOR UPDATE");
    let update = "UPDATE servers SET labels = jsonb_build_object('run', $2::text), \
        version = version + 1, updated_at = now() WHERE id = ($1::text)::uuid";
    let mut connections = Vec::new();
    for _ in 0..8 {
        let client = pg_connect(&replica.database_url).await;
        let lock = client.prepare(&lock).await.expect("prepare");
        let update = client.prepare(update).await.expect("prepare");
        connections.push(Arc::new(tokio::sync::Mutex::new((client, lock, update))));
    }
    let connections = Arc::new(connections);
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
    call(move |worker| {
        let connection = connections[worker].clone();
        let target = targets[worker].clone();
        let value = counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .to_string();
        async move {
            let mut guard = connection.lock().await;
            let (client, lock, update) = &mut *guard;
            let transaction = client.transaction().await.expect("BEGIN");
            transaction
                .query_one(&*lock, &[&target])
                .await
                .expect("lock");
            transaction
                .execute(&*update, &[&target, &value])
                .await
                .expect("UPDATE");
            transaction.commit().await.expect("COMMIT");
        }
    })
}

/// B3: page 900 of 100,000 servers against page 1.
pub async fn list_servers(replica: &Replica, rows: &mut Vec<Row>) {
    replica.cli(&["tenants", "create", "bench-list"]).await;
    let key = replica
        .cli(&[
            "keys",
            "create",
            "--tenant",
            "bench-list",
            "--permissions",
            "servers:read,servers:write",
        ])
        .await;
    let mut client = client::client(replica.channel().await, &key);
    let template = client::register(&mut client, parked_server("bench-list")).await;
    client::wait_parked(&mut client, &template.server_id).await;
    seed_copies(replica, &template.server_id, 99_999).await;

    let page = |token: String| proto::ListServersRequest {
        page_size: 100,
        page_token: token,
        ..Default::default()
    };
    let mut token = String::new();
    for _ in 1..900 {
        token = client
            .list_servers(page(token))
            .await
            .expect("ListServers")
            .into_inner()
            .next_page_token;
    }
    let first = {
        let client = client.clone();
        call(move |_| {
            let mut client = client.clone();
            async move {
                let page = client
                    .list_servers(page(String::new()))
                    .await
                    .expect("page 1");
                assert_eq!(page.into_inner().servers.len(), 100);
            }
        })
    };
    let later = {
        let client = client.clone();
        call(move |_| {
            let mut client = client.clone();
            let token = token.clone();
            async move {
                let page = client.list_servers(page(token)).await.expect("page 900");
                assert_eq!(page.into_inner().servers.len(), 100);
            }
        })
    };
    let (measured, baseline) = load::compare_latency(&later, &first, 4, 100).await;
    let (p50, p99) = (
        measured.value_at_quantile(0.5),
        measured.value_at_quantile(0.99),
    );
    let base_p50 = baseline.value_at_quantile(0.5);
    let ratio = p50 as f64 / base_p50 as f64;
    rows.push(Row {
        id: "B3",
        measurement: "ListServers page 900 of 100,000 servers, page size 100, p50 / p99".to_owned(),
        value: format!("{} / {}", ms(p50), ms(p99)),
        baseline: format!(
            "{} / {} (page 1)",
            ms(base_p50),
            ms(baseline.value_at_quantile(0.99))
        ),
        ratio: format!("{ratio:.2}"),
        target: "≤ 1.2, p99 ≤ 10 ms".to_owned(),
        met: ratio <= 1.2 && p99 <= 10_000,
        detail: None,
    });
}

/// Copies a registered server `count` times, older than it by a millisecond each, parked.
pub async fn seed_copies(replica: &Replica, template_id: &str, count: i64) {
    let copy_columns = SERVER_COLUMNS
        .split(", ")
        .map(|column| match column {
            "id" => "gen_random_uuid()".to_owned(),
            "name" => "name || '-' || i".to_owned(),
            "runnable" => "false".to_owned(),
            "created_at" | "updated_at" => format!("{column} - i * interval '1 millisecond'"),
            other => other.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "INSERT INTO servers ({SERVER_COLUMNS}) SELECT {copy_columns} \
         FROM servers, generate_series(1, $2::bigint) AS i WHERE id = ($1::text)::uuid"
    );
    let client = pg_connect(&replica.database_url).await;
    client
        .execute(&sql, &[&template_id, &count])
        .await
        .expect("seed the servers");
    client
        .batch_execute("ANALYZE servers")
        .await
        .expect("ANALYZE");
}
