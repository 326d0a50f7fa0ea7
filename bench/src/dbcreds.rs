//! Short-lived database credentials: vouch's `POST /v1/db/creds` against OpenBao's database
//! secrets engine (`postgresql-database-plugin`, built into the `bao` binary), on the same private
//! PostgreSQL 15 cluster, in the same run, with the same client (8 keep-alive connections on one
//! thread) and the same role template: `CREATE ROLE … LOGIN PASSWORD … VALID UNTIL …` and one
//! `GRANT pg_read_all_data`, in one transaction, as the cluster's superuser over TCP with its
//! password (both sides connect the same way). vouch also records each lease in its store
//! (SQLite) before the role exists and activates it after; OpenBao keeps its leases in its dev
//! server's memory. Each run's roles are revoked before the next run starts (so every run meets a
//! catalog of the same size) and at the end the benchmark checks that no role is left.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use hyper::body::Bytes;
use serde_json::{json, Value};
use vouch_client::AdminClient;
use vouch_store::test_postgres::PgCluster;

use crate::api::{admin_tls_client, start_vouch_with, vouch_requests, Bao, Options, Run};

/// The configured connection and template (`DbRole::"bench/readonly"`).
const ROLE: &str = "bench/readonly";
/// The one GRANT of the template, on both sides.
const GRANT: &str = "GRANT pg_read_all_data TO";

fn issued(status: u16, bytes: &[u8]) -> Result<()> {
    if !(200..300).contains(&status) || memchr::memmem::find(bytes, b"\"password\"").is_none() {
        bail!("answered {status}: {}", String::from_utf8_lossy(bytes));
    }
    Ok(())
}

/// The port of the cluster (from its TCP URL).
fn port_of(cluster: &PgCluster) -> Result<u16> {
    let url = cluster.tcp_url("postgres");
    let after = url.rsplit_once(':').map(|(_, p)| p).ok_or_else(|| anyhow!("no port in the URL"))?;
    Ok(after.split('/').next().unwrap_or_default().parse()?)
}

/// Runs `sql` as the superuser over the cluster's Unix socket; the first column of each row.
async fn query(cluster: &PgCluster, sql: &str) -> Result<Vec<String>> {
    let (client, conn) =
        tokio_postgres::connect(&cluster.socket_url("postgres"), tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(conn);
    let rows = client.simple_query(sql).await?;
    drop(client);
    let _ = driver.await;
    Ok(rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect())
}

/// How many dynamic roles of either system exist.
async fn dynamic_roles(cluster: &PgCluster) -> Result<usize> {
    let n = query(
        cluster,
        "SELECT count(*) FROM pg_roles WHERE rolname ~ '^vouch_[0-9a-f]{32}$' OR rolname LIKE 'v-%'",
    )
    .await?;
    Ok(n.first().and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// Revokes every vouch lease through the admin API (8 at a time); how many, and how long it took.
async fn revoke_vouch(client: &AdminClient) -> Result<(usize, Duration)> {
    let start = Instant::now();
    let leases = client.db().leases().await?.leases;
    let n = leases.len();
    for batch in leases.chunks(8) {
        let mut set = tokio::task::JoinSet::new();
        for lease in batch {
            let (client, id) = (client.clone(), lease.id.clone());
            set.spawn(async move { client.db().revoke(&id).await });
        }
        while let Some(r) = set.join_next().await {
            r??;
        }
    }
    Ok((n, start.elapsed()))
}

/// Revokes every lease of OpenBao's `database/creds/readonly` (`revoke-prefix`, synchronous).
async fn revoke_bao(bao: &Bao) -> Result<Duration> {
    let start = Instant::now();
    let mut c = bao.connect().await?;
    let (status, v) = tokio::time::timeout(
        Duration::from_secs(600),
        c.call("PUT", "/v1/sys/leases/revoke-prefix/database/creds/readonly", &bao.token, &json!({})),
    )
    .await
    .context("OpenBao's revoke-prefix took over 600 s")??;
    if !(200..300).contains(&status) {
        bail!("OpenBao revoke-prefix answered {status}: {}", String::from_utf8_lossy(&v));
    }
    Ok(start.elapsed())
}

/// Configures OpenBao's database secrets engine on the cluster (`verify_connection`: the
/// connection is tried at once).
async fn bao_setup(bao: &Bao, port: u16, password: &str) -> Result<()> {
    bao.setup(&[
        ("POST", "/v1/sys/mounts/database", json!({"type": "database"})),
        (
            "POST",
            "/v1/database/config/bench",
            json!({
                "plugin_name": "postgresql-database-plugin",
                "connection_url": format!("postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{port}/postgres?sslmode=disable"),
                "username": "postgres",
                "password": password,
                "allowed_roles": "readonly",
                "verify_connection": true,
            }),
        ),
        (
            "POST",
            "/v1/database/roles/readonly",
            json!({
                "db_name": "bench",
                "creation_statements": [
                    "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';",
                    format!("{GRANT} \"{{{{name}}}}\";"),
                ],
                "default_ttl": "1h",
                "max_ttl": "24h",
            }),
        ),
    ])
    .await
}

/// What the benchmark measured of one system over one transport.
struct Measured {
    name: &'static str,
    run: Run,
    revoked: String,
}

async fn vouch_runs(o: &Options, cluster: &PgCluster, dir: &std::path::Path) -> Result<Vec<Measured>> {
    let config = dir.join("vouch.toml");
    std::fs::write(
        &config,
        format!(
            r#"[database.bench]
url = "postgres://postgres@127.0.0.1:{port}/postgres"
password_env = "VOUCH_BENCH_PG_PASSWORD"

[database.bench.roles.readonly]
statements = ["{GRANT} {{{{name}}}}"]
default_ttl = "1h"
max_ttl = "24h"
"#,
            port = port_of(cluster)?
        ),
    )?;
    let config = config.display().to_string();
    let env = [("VOUCH_CONFIG", config.as_str()), ("VOUCH_BENCH_PG_PASSWORD", cluster.password())];
    let (proc, local, data) = start_vouch_with(&o.vouch, &env).await?;
    let body = Bytes::from(serde_json::to_vec(&json!({ "role": ROLE }))?);
    let path = vouch_api::paths::DB_CREDS.to_owned();
    let request = move || Ok(("POST", path.clone(), Some(body.clone())));
    let mut out = Vec::new();
    let tls = admin_tls_client(&local, &data).await?;
    for (name, client) in
        [("vouch POST /v1/db/creds (mTLS)", &tls), ("vouch POST /v1/db/creds (Unix)", &local)]
    {
        let run = vouch_requests(o, proc.pid(), client, request.clone(), issued).await?;
        let (n, took) = revoke_vouch(&local).await?;
        out.push(Measured {
            name,
            run,
            revoked: format!("{n} leases revoked in {:.1} s", took.as_secs_f64()),
        });
    }
    Ok(out)
}

async fn bao_run(o: &Options, bao: &Bao, pid: Option<u32>, name: &'static str) -> Result<Measured> {
    let run = bao.requests(o, pid, "GET", "/v1/database/creds/readonly", Value::Null, issued).await?;
    let took = revoke_bao(bao).await?;
    Ok(Measured { name, run, revoked: format!("revoke-prefix took {:.1} s", took.as_secs_f64()) })
}

/// The `dbcreds` subcommand.
pub fn run(args: &[String]) -> Result<()> {
    let o = crate::api::options(args)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let cluster = tokio::task::spawn_blocking(PgCluster::start).await?;
        let port = port_of(&cluster)?;
        let dir = tempfile::tempdir()?;
        println!(
            "Database credentials (CREATE ROLE ... VALID UNTIL + one GRANT) on one PostgreSQL 15, {} clients, {} s each:",
            o.clients, o.seconds
        );
        let mut all = vouch_runs(&o, &cluster, dir.path()).await?;
        let mut bao_tls = None;
        if let (Some(url), Some(ca)) = (&o.bao_tls_addr, &o.bao_tls_ca) {
            let bao = Bao::new(&o, url, Some(ca))?;
            bao_setup(&bao, port, cluster.password()).await?;
            all.push(bao_run(&o, &bao, o.bao_tls_pid, "OpenBao database/creds (TLS)").await?);
            bao_tls = Some(all.len() - 1);
        }
        let mut bao_plain = None;
        if let Some(url) = &o.bao_addr {
            let bao = Bao::new(&o, url, None)?;
            bao_setup(&bao, port, cluster.password()).await?;
            all.push(bao_run(&o, &bao, o.bao_pid, "OpenBao database/creds (plain HTTP)").await?);
            bao_plain = Some(all.len() - 1);
        }
        for m in &all {
            m.run.print_as(m.name, "creds/s", "credentials");
            println!("  {:<34} {}", "", m.revoked);
        }
        let left = dynamic_roles(&cluster).await?;
        println!("  dynamic roles left in PostgreSQL after the revocations: {left}");
        if left != 0 {
            bail!("{left} dynamic roles were left behind");
        }
        let rate = |i: Option<usize>| i.and_then(|i| all.get(i)).map(|m| m.run.rate());
        let (vouch_mtls, vouch_unix) = (all[0].run.rate(), all[1].run.rate());
        if let Some(plain) = rate(bao_plain) {
            println!("    vouch Unix socket / OpenBao plain HTTP: {:>5.2}x", vouch_unix / plain);
        }
        match (rate(bao_tls), rate(bao_plain)) {
            (Some(bao), _) => println!("RESULT dbcreds_vs_openbao={:.2} (vouch mTLS / OpenBao TLS)", vouch_mtls / bao),
            (None, Some(bao)) => {
                println!("RESULT dbcreds_vs_openbao={:.2} (vouch mTLS / OpenBao plain HTTP)", vouch_mtls / bao)
            }
            (None, None) => println!("  OpenBao not measured (no --bao-addr / --bao-tls-addr); bench/run starts both"),
        }
        Ok(())
    })
}
