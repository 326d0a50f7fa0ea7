//! Database credentials for workloads through their agent, on a real PostgreSQL: decided by the
//! grant `issue` on `DbRole::"<connection>/<template>"`; a refusal says why and creates nothing.

use super::*;
use vouch_store::test_postgres::PgCluster;

/// The roles named like vouch's dynamic roles.
async fn vouch_roles(pg: &tokio_postgres::Client) -> Vec<String> {
    pg.query("SELECT rolname::text FROM pg_roles WHERE rolname ~ '^vouch_[0-9a-f]{32}$' ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_database_credentials_are_decided_by_the_issue_grant() {
    let cluster = PgCluster::start();
    let (pg, conn) =
        tokio_postgres::connect(&cluster.socket_url("postgres"), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let state = state_with(&format!(
        r#"
[database.orders]
url = "{}"
[database.orders.roles.readonly]
statements = ["GRANT pg_read_all_data TO {{{{name}}}}"]
[database.orders.roles.writer]
statements = ["GRANT pg_write_all_data TO {{{{name}}}}"]
"#,
        cluster.socket_url("postgres")
    ))
    .await;
    let svid = attest_in_app(&state, "spiffe://example.org/agent/join/n1").await.unwrap();
    let other = attest_in_app(&state, "spiffe://example.org/agent/join/n2").await.unwrap();
    for (id, spiffe_id, parent) in [
        ("app", "spiffe://example.org/app", "spiffe://example.org/agent/join/n1"),
        ("elsewhere", "spiffe://example.org/app", "spiffe://example.org/agent/join/n2"),
    ] {
        let body =
            json!({"id": id, "spiffe_id": spiffe_id, "parent_id": parent, "selectors": ["unix:uid:1000"]});
        let (s, v) = call(&state, ROOT, "POST", "/v1/entries", Some(&body.to_string())).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let issue = |caller: Caller, entry: &str, role: &str| {
        let body = json!({"entry_id": entry, "role": role, "ttl": 60}).to_string();
        let state = state.clone();
        async move { call(&state, caller, "POST", "/v1/agent/db/creds", Some(&body)).await }
    };
    let leases = || {
        let state = state.clone();
        async move { call(&state, ROOT, "GET", "/v1/db/leases", None).await.1["leases"].clone() }
    };

    // No grant: refused with the reason; no lease, no role.
    let (s, v) = issue(agent_caller(&svid), "app", "orders/readonly").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(
            "`spiffe://example.org/app` may not have credentials issued for database role `orders/readonly`"
        ) && msg.contains("no policy permits"),
        "{msg}"
    );
    assert_eq!(leases().await, json!([]));
    assert!(vouch_roles(&pg).await.is_empty());

    // The grant: app may have orders/readonly issued, nothing else.
    let grant = r#"permit(principal == Workload::"spiffe://example.org/app", action == Action::"issue", resource == DbRole::"orders/readonly");"#;
    let (s, v) =
        call(&state, ROOT, "PUT", "/v1/policies/app-db", Some(&json!({ "text": grant }).to_string())).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = issue(agent_caller(&svid), "app", "orders/readonly").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["lease"]["identity"], "spiffe://example.org/app");
    assert_eq!(v["lease"]["template"], "readonly");
    let user = v["username"].as_str().unwrap().to_owned();
    assert_eq!(vouch_roles(&pg).await, std::slice::from_ref(&user));
    let member: bool =
        pg.query_one("SELECT pg_has_role($1, 'pg_read_all_data', 'MEMBER')", &[&user]).await.unwrap().get(0);
    assert!(member, "the template's grant holds");

    let (s, v) = issue(agent_caller(&svid), "app", "orders/writer").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("`orders/writer`: no policy permits"), "{v}");
    let (s, v) = issue(agent_caller(&other), "app", "orders/readonly").await;
    assert!(
        s == StatusCode::FORBIDDEN || s == StatusCode::NOT_FOUND,
        "an entry the agent does not serve: {s} {v}"
    );
    let (s, v) = issue(ROOT, "app", "orders/readonly").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "admins use the admin API: {v}");
    let (s, v) = issue(agent_caller(&svid), "app", "orders/../x").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(leases().await.as_array().unwrap().len(), 1, "refusals created nothing");
    assert_eq!(vouch_roles(&pg).await.len(), 1);

    // The admin revokes it: the role is gone.
    let id = v_id(&leases().await);
    let (s, v) = call(&state, ROOT, "POST", &format!("/v1/db/leases/{id}/revoke"), Some("{}")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(vouch_roles(&pg).await.is_empty());
    assert_eq!(leases().await, json!([]));
}

fn v_id(leases: &Value) -> String {
    leases[0]["id"].as_str().unwrap().to_owned()
}

/// The backends of the server's pooled connections (application name `vouch`).
async fn vouch_backends(pg: &tokio_postgres::Client) -> i64 {
    pg.query_one("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'vouch'", &[])
        .await
        .unwrap()
        .get(0)
}

/// Polls `check` every 50 ms for at most 10 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within 10 s");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_connections_are_pooled_and_replaced_when_they_break() {
    let cluster = PgCluster::start();
    let state = state_with(&format!(
        r#"
[database.orders]
url = "{}"
pool_size = 2
[database.orders.roles.readonly]
statements = ["GRANT pg_read_all_data TO {{{{name}}}}"]
"#,
        cluster.socket_url("postgres")
    ))
    .await;
    let issue = || {
        let state = state.clone();
        async move {
            let body = json!({"role": "orders/readonly", "ttl": 60}).to_string();
            call(&state, ROOT, "POST", "/v1/db/creds", Some(&body)).await
        }
    };
    let watcher = || async {
        let (pg, conn) =
            tokio_postgres::connect(&cluster.socket_url("postgres"), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        pg
    };

    // Issues one after another share one connection, kept open between them.
    for _ in 0..5 {
        let (s, v) = issue().await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let pg = watcher().await;
    assert_eq!(vouch_backends(&pg).await, 1, "one pooled connection served five issues");

    // Concurrent issues open at most pool_size connections.
    let many: Vec<_> = (0..6).map(|_| tokio::spawn(issue())).collect();
    for t in many {
        let (s, v) = t.await.unwrap();
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    assert!(vouch_backends(&pg).await <= 2, "bounded by pool_size");

    // Connections the database ends are replaced: the next issue works.
    pg.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'vouch'",
        &[],
    )
    .await
    .unwrap();
    eventually("the terminated backends are gone", || async { vouch_backends(&pg).await == 0 }).await;
    let (s, v) = issue().await;
    assert_eq!(s, StatusCode::CREATED, "after pg_terminate_backend: {v}");

    // A restart of PostgreSQL: the pooled connection broke while idle; the next issue reconnects.
    drop(pg);
    cluster.pause();
    cluster.resume();
    let (s, v) = issue().await;
    assert_eq!(s, StatusCode::CREATED, "after a restart: {v}");
    let pg = watcher().await;
    assert_eq!(vouch_backends(&pg).await, 1);

    // Every lease is revoked through the pool too; no role is left.
    let leases = call(&state, ROOT, "GET", "/v1/db/leases", None).await.1["leases"].clone();
    assert_eq!(leases.as_array().unwrap().len(), 13);
    for lease in leases.as_array().unwrap() {
        let id = lease["id"].as_str().unwrap();
        let (s, v) = call(&state, ROOT, "POST", &format!("/v1/db/leases/{id}/revoke"), Some("{}")).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    assert!(vouch_roles(&pg).await.is_empty());
}
