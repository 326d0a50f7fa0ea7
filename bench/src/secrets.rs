//! Secret reads over the API: vouch's `GET /v1/secrets/{path}` against OpenBao's KV v2
//! `GET secret/data/{path}`, the same 1 KiB value, the same client (8 keep-alive HTTP/1.1
//! connections on one thread), same run. vouch opens the version's sealed data key under its KEK
//! and decrypts the value (AES-256-GCM) on every read, and writes an audit line; OpenBao's dev
//! server keeps KV in memory behind its barrier encryption. vouch is measured over its admin Unix
//! socket and over mTLS with an admin SVID; OpenBao over plain HTTP and TLS.

use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value};
use vouch_api::secrets::{encode_value, SecretPut};
use vouch_api::{paths, EntrySpec, SpiffeId};
use vouch_client::AdminClient;

use crate::api::{load, start_vouch_with, BaoConn, Options, Run};

const PATH: &str = "bench/db/password";

/// Reads the secret through `client`, one keep-alive connection per worker.
async fn vouch_reads(o: &Options, pid: u32, client: &AdminClient) -> Result<Run> {
    let path = paths::secret(PATH, None);
    load(o.clients, o.seconds, Some(pid), || {
        let client = client.clone();
        let path = path.clone();
        let conn = Arc::new(tokio::sync::Mutex::new(None::<vouch_client::Connection>));
        move || {
            let (client, path, conn) = (client.clone(), path.clone(), conn.clone());
            async move {
                let mut guard = conn.lock().await;
                if guard.is_none() {
                    *guard = Some(client.connect().await?);
                }
                let c = guard.as_mut().ok_or_else(|| anyhow!("no connection"))?;
                let (status, bytes) = c.send("GET", &path, None).await?;
                if status != 200 || memchr::memmem::find(&bytes, b"\"value\"").is_none() {
                    bail!("vouch answered {status}: {}", String::from_utf8_lossy(&bytes));
                }
                Ok(())
            }
        }
    })
    .await
}

async fn vouch_runs(o: &Options, value: &[u8]) -> Result<(Run, Run)> {
    let (proc, local, data) = start_vouch_with(&o.vouch, &[]).await?;
    let put = SecretPut { value: encode_value(value), owner: None, purpose: None, rotation_due: None };
    local.secrets().put(PATH, &put).await?;
    let unix = vouch_reads(o, proc.pid(), &local).await?;
    let admin: EntrySpec = serde_json::from_value(
        json!({"spiffe_id": "spiffe://example.org/admin/bench", "parent_id": "spiffe://example.org/vouch/server", "selectors": ["vouch:admin:bench"], "admin": true}),
    )?;
    local.entries().create(&admin).await?;
    let req = vouch_api::admin::MintX509Request {
        spiffe_id: SpiffeId::parse("spiffe://example.org/admin/bench")?,
        csr: None,
        ttl: None,
        dns_names: vec![],
        common_name: None,
    };
    let svid = local.mint_x509(&req).await?;
    let addr = std::fs::read_to_string(data.join("server.addr"))?.trim().to_owned();
    let td = vouch_core::TrustDomain::new("example.org")?;
    let key = svid.private_key_pem.as_deref().ok_or_else(|| anyhow!("the server generated no key"))?;
    let tls = AdminClient::tls(&addr, &td, &svid.bundle_pem, Some((&svid.cert_chain_pem, key)))?;
    let mtls = vouch_reads(o, proc.pid(), &tls).await?;
    Ok((unix, mtls))
}

/// Writes the value to OpenBao's KV v2 (the dev server mounts `secret/` as KV v2) and reads it.
async fn openbao_reads(
    o: &Options,
    url: &str,
    tls_ca: Option<&std::path::PathBuf>,
    pid: Option<u32>,
    value: &[u8],
) -> Result<Run> {
    let addr =
        url.trim_start_matches("http://").trim_start_matches("https://").trim_end_matches('/').to_owned();
    let tls = match tls_ca {
        Some(ca) => Some(Arc::new(
            vouch_tls::tls_connector(&vouch_tls::Trust::CaFile(ca.clone())).map_err(|e| anyhow!(e))?,
        )),
        None => None,
    };
    let token = o.bao_token.clone();
    let mut c = BaoConn::connect(&addr, tls.as_deref()).await?;
    let body = json!({"data": {"value": encode_value(value)}});
    let kv = format!("/v1/secret/data/{PATH}");
    let (status, v) = c.call("POST", &kv, &token, &body).await?;
    if !(200..300).contains(&status) {
        bail!("OpenBao {kv} answered {status}: {}", String::from_utf8_lossy(&v));
    }
    load(o.clients, o.seconds, pid, || {
        let (addr, token, tls, kv) = (addr.clone(), token.clone(), tls.clone(), kv.clone());
        let shared = Arc::new(tokio::sync::Mutex::new(None::<BaoConn>));
        move || {
            let (addr, token, tls, kv, shared) =
                (addr.clone(), token.clone(), tls.clone(), kv.clone(), shared.clone());
            async move {
                let mut guard = shared.lock().await;
                if guard.is_none() {
                    *guard = Some(BaoConn::connect(&addr, tls.as_deref()).await?);
                }
                let c = guard.as_mut().ok_or_else(|| anyhow!("no connection"))?;
                let (status, v) = c.call("GET", &kv, &token, &Value::Null).await?;
                if status != 200 || memchr::memmem::find(&v, b"\"value\"").is_none() {
                    bail!("OpenBao KV v2 read answered {status}: {}", String::from_utf8_lossy(&v));
                }
                Ok(())
            }
        }
    })
    .await
}

/// The `secrets` subcommand.
pub fn run(args: &[String]) -> Result<()> {
    let o = crate::api::options(args)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let value: Vec<u8> = (0..1024u32).map(|i| b'a' + (i % 26) as u8).collect();
        println!("Secret reads over HTTP, a 1 KiB value, {} clients, {} s each:", o.clients, o.seconds);
        let (unix, mtls) = vouch_runs(&o, &value).await?;
        mtls.print_as("vouch GET /v1/secrets (TCP + mTLS)", "reads/s", "reads");
        unix.print_as("vouch GET /v1/secrets (Unix socket)", "reads/s", "reads");
        let bao_tls = match (&o.bao_tls_addr, &o.bao_tls_ca) {
            (Some(url), Some(ca)) => Some(openbao_reads(&o, url, Some(ca), o.bao_tls_pid, &value).await?),
            _ => None,
        };
        if let Some(bao) = &bao_tls {
            bao.print_as("OpenBao KV v2 read (TLS)", "reads/s", "reads");
        }
        let bao_plain = match &o.bao_addr {
            Some(url) => Some(openbao_reads(&o, url, None, o.bao_pid, &value).await?),
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
            "RESULT secret_reads_vs_openbao_kv2={ratio:.2} (vouch mTLS / OpenBao {})",
            if bao_tls.is_some() { "TLS" } else { "plain HTTP" }
        );
        Ok(())
    })
}
