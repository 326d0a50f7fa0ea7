//! Secret reads: vouch's `GET /v1/secrets/{path}` (admin API) and reads by a workload through a
//! real agent's secret socket, against OpenBao's KV v2 `GET secret/data/{path}`; the same 1 KiB
//! value, same run. vouch opens the version's sealed data key under its KEK and decrypts the value
//! (AES-256-GCM) on every read; OpenBao's dev server keeps KV in memory behind its barrier
//! encryption. The admin API is measured over its Unix socket and over mTLS with an admin SVID
//! (8 keep-alive HTTP/1.1 connections on one client thread, as for OpenBao over plain HTTP and
//! TLS). Through the agent, the benchmark process is the workload: attested by uid and binary path
//! on each connection (the socket's protocol is one request line per connection), an entry under
//! the agent and a grant permitting `read` on the secret; the agent asks the server over its mTLS
//! link, where the grant is decided.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Result};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
use vouch_api::paths;
use vouch_api::secrets::{encode_value, SecretPut};

use crate::api::{admin_tls_client, load, start_vouch_with, vouch_requests, Bao, Options, Run};

const PATH: &str = "bench/db/password";

/// An answer holding the value (`"value"` is in both systems' answers).
fn holds_value(status: u16, bytes: &[u8]) -> Result<()> {
    if status != 200 || memchr::memmem::find(bytes, b"\"value\"").is_none() {
        bail!("answered {status}: {}", String::from_utf8_lossy(bytes));
    }
    Ok(())
}

/// Reads the secret through `client` (the admin API), one keep-alive connection per worker.
async fn vouch_reads(o: &Options, pid: u32, client: &vouch_client::AdminClient) -> Result<Run> {
    let path = paths::secret(PATH, None);
    vouch_requests(o, pid, client, move || Ok(("GET", path.clone(), None)), holds_value).await
}

async fn vouch_runs(o: &Options, value: &[u8]) -> Result<(Run, Run)> {
    let (proc, local, data) = start_vouch_with(&o.vouch, &[]).await?;
    let put = SecretPut { value: encode_value(value), owner: None, purpose: None, rotation_due: None };
    local.secrets().put(PATH, &put).await?;
    let unix = vouch_reads(o, proc.pid(), &local).await?;
    let tls = admin_tls_client(&local, &data).await?;
    let mtls = vouch_reads(o, proc.pid(), &tls).await?;
    Ok((unix, mtls))
}

/// One read on the agent's secret socket: connect, one request line, one answer line.
async fn agent_read(socket: &Path, line: &[u8]) -> Result<()> {
    let stream = tokio::net::UnixStream::connect(socket).await?;
    let (rd, mut wr) = stream.into_split();
    wr.write_all(line).await?;
    let mut answer = String::new();
    tokio::io::BufReader::new(rd).read_line(&mut answer).await?;
    if !answer.contains("\"value\"") {
        bail!("the agent answered: {}", answer.trim_end());
    }
    Ok(())
}

/// Reads through a real agent: the server (pid for its costs too) and the agent started as the
/// agent benchmark does, an entry for this process under the agent and a grant to read.
async fn agent_runs(o: &Options, value: &[u8]) -> Result<(Run, crate::procstat::ProcStat)> {
    // Reads through agents are charged to the agent's JWT limit (100/s, burst 1,000 by default):
    // off, so the figure is capacity, not policy (as the flood and exchange benchmarks do).
    let stack = crate::agent::start_with(&o.vouch, &[("VOUCH_LIMITS_JWT_PER_SECOND", "0")]).await?;
    let put = SecretPut { value: encode_value(value), owner: None, purpose: None, rotation_due: None };
    stack.admin.secrets().put(PATH, &put).await?;
    let me = "spiffe://example.org/bench/reader";
    stack
        .admin
        .entries()
        .create(&crate::agent::spec(me, crate::agent::AGENT_ID, crate::agent::my_selectors()?)?)
        .await?;
    let grant = format!(
        r#"permit(principal == Workload::"{me}", action == Action::"read", resource == Secret::"{PATH}");"#
    );
    stack.admin.policies().put("bench-read", &grant, None).await?;
    // The secret socket is the Workload API socket's path with `.secrets` appended.
    let socket = {
        let mut name = stack.socket.clone().into_os_string();
        name.push(".secrets");
        std::path::PathBuf::from(name)
    };
    let line = Arc::new(format!("{}\n", json!({ "path": PATH })).into_bytes());
    // The agent serves the entry once its sync delivered it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while let Err(e) = agent_read(&socket, &line).await {
        if std::time::Instant::now() > deadline {
            bail!("no read through the agent within 30 s: {e}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let server_before = crate::procstat::ProcStat::read(Some(stack.server_pid()));
    let run = load(o.clients, o.seconds, Some(stack.agent_pid()), || {
        let (socket, line) = (socket.clone(), line.clone());
        move || {
            let (socket, line) = (socket.clone(), line.clone());
            async move { agent_read(&socket, &line).await }
        }
    })
    .await?;
    let server = server_before.until(&crate::procstat::ProcStat::read(Some(stack.server_pid())));
    Ok((run, server))
}

/// Writes the value to OpenBao's KV v2 (the dev server mounts `secret/` as KV v2) and reads it.
async fn openbao_reads(o: &Options, bao: &Bao, pid: Option<u32>, value: &[u8]) -> Result<Run> {
    let kv = format!("/v1/secret/data/{PATH}");
    bao.setup(&[("POST", kv.as_str(), json!({"data": {"value": encode_value(value)}}))]).await?;
    bao.requests(o, pid, "GET", &kv, Value::Null, holds_value).await
}

/// The `secrets` subcommand.
pub fn run(args: &[String]) -> Result<()> {
    let o = crate::api::options(args)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let value: Vec<u8> = (0..1024u32).map(|i| b'a' + (i % 26) as u8).collect();
        println!("Secret reads, a 1 KiB value, {} clients, {} s each:", o.clients, o.seconds);
        let (unix, mtls) = vouch_runs(&o, &value).await?;
        mtls.print_as("vouch GET /v1/secrets (TCP + mTLS)", "reads/s", "reads");
        unix.print_as("vouch GET /v1/secrets (Unix socket)", "reads/s", "reads");
        let (agent, agent_server) = agent_runs(&o, &value).await?;
        agent.print_for("vouch through the agent (secret socket)", "reads/s", "reads", "agent");
        println!("  {:<34} server {}", "", agent_server.per_request(agent.count()));
        let bao_tls = match (&o.bao_tls_addr, &o.bao_tls_ca) {
            (Some(url), Some(ca)) => {
                Some(openbao_reads(&o, &Bao::new(&o, url, Some(ca))?, o.bao_tls_pid, &value).await?)
            }
            _ => None,
        };
        if let Some(bao) = &bao_tls {
            bao.print_as("OpenBao KV v2 read (TLS)", "reads/s", "reads");
        }
        let bao_plain = match &o.bao_addr {
            Some(url) => Some(openbao_reads(&o, &Bao::new(&o, url, None)?, o.bao_pid, &value).await?),
            None => None,
        };
        if let Some(bao) = &bao_plain {
            bao.print_as("OpenBao KV v2 read (plain HTTP)", "reads/s", "reads");
        }
        let Some(bao) = bao_tls.as_ref().or(bao_plain.as_ref()) else {
            println!("  OpenBao not measured (no --bao-addr / --bao-tls-addr); bench/run starts both");
            return Ok(());
        };
        if let Some(plain) = &bao_plain {
            println!("    vouch Unix socket / OpenBao plain HTTP: {:>5.1}x", unix.rate() / plain.rate());
        }
        let ratio = mtls.rate() / bao.rate();
        println!(
            "    vouch through the agent / OpenBao {}: {:>5.1}x",
            if bao_tls.is_some() { "TLS" } else { "plain HTTP" },
            agent.rate() / bao.rate()
        );
        println!("RESULT secret_reads_agent_vs_openbao_kv2={:.2}", agent.rate() / bao.rate());
        println!(
            "RESULT secret_reads_vs_openbao_kv2={ratio:.2} (vouch mTLS / OpenBao {})",
            if bao_tls.is_some() { "TLS" } else { "plain HTTP" }
        );
        Ok(())
    })
}
