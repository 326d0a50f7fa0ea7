//! SPIFFE federation between two vouch deployments in two trust domains, federated both ways over
//! their `https_spiffe` bundle endpoints: a workload of each does mTLS with the other using only
//! what its own agent's Workload API gives it (the independent `spiffe` crate, and rustls through
//! vouch-tls), each validates the other's JWT-SVID through its own agent, a root rotation in one
//! reaches the other's workloads within the refresh hint on an open stream, py-spiffe (unchanged)
//! does mTLS and validates across trust domains the same way, and a workload whose
//! entry does not federate gets no bundle of the other trust domain and cannot validate its tokens.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use spiffe::{TrustDomain, WorkloadApiClient, X509Context};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use vouch_proto::workload::{X509svidRequest, X509svidResponse};

use crate::workload_api::{free_port, python_path, raw_client, run_py_spiffe, with_header, Stack};

/// The refresh hint both trust domains publish: how often each fetches the other's bundle.
const REFRESH_HINT: Duration = Duration::from_secs(10);
/// Beyond the hint: the refresher's wake-up (whole seconds), the fetch, and the push through the
/// server's sync stream and the agent's Workload API stream (milliseconds when the machine is idle).
const DELIVERY_SLACK: Duration = Duration::from_secs(4);

async fn federated_stack(td: &str, port: u16) -> Stack {
    let extra = format!(
        "[federation]\nbundle_endpoint_listen = \"127.0.0.1:{port}\"\nrefresh_hint = \"{}s\"\n",
        REFRESH_HINT.as_secs()
    );
    Stack::start_in(td, &extra, Arc::new(vouch_server::SystemClock), |_| {}).await
}

/// `from` federates with `to` (https_spiffe to `to`'s bundle endpoint on `port`), bootstrapped with
/// `to`'s bundle as PEM, as an operator would copy it out of band.
async fn federate(from: &Stack, to: &Stack, port: u16) {
    let (_, pem) = to.admin.request("GET", "/v1/bundle?format=pem", None).await.unwrap();
    let body = json!({
        "trust_domain": to.td, "bundle_endpoint_url": format!("https://127.0.0.1:{port}"), "profile": "https_spiffe",
        "endpoint_spiffe_id": format!("spiffe://{}/vouch/server", to.td),
        "bootstrap_bundle": String::from_utf8(pem.to_vec()).unwrap(),
    });
    let _: Value = from.admin.call("POST", "/v1/federation", Some(&body)).await.unwrap();
}

/// The caller's X.509 context once `done` holds for it, within `secs` seconds.
async fn context_when(
    client: &WorkloadApiClient,
    secs: u64,
    what: &str,
    done: impl Fn(&X509Context) -> bool,
) -> X509Context {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Ok(ctx) = client.fetch_x509_context().await {
            if done(&ctx) {
                return ctx;
            }
        }
        assert!(Instant::now() < deadline, "{what} within {secs} s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn td(name: &str) -> TrustDomain {
    TrustDomain::new(name).unwrap()
}

/// The roots of trust domain `name` in `ctx`, as DER.
fn roots(ctx: &X509Context, name: &str) -> Vec<Vec<u8>> {
    ctx.bundle_set()
        .get(&td(name))
        .map(|b| b.authorities().iter().map(|c| c.as_ref().to_vec()).collect())
        .unwrap_or_default()
}

/// The SVID of `ctx` as (chain DER, PKCS#8 key DER, SPIFFE ID).
fn svid_of(ctx: &X509Context) -> (Vec<Vec<u8>>, Vec<u8>, String) {
    let svid = ctx.default_svid().unwrap();
    let chain = svid.cert_chain().iter().map(|c| c.as_ref().to_vec()).collect();
    (chain, svid.private_key().as_ref().to_vec(), svid.spiffe_id().to_string())
}

/// An mTLS exchange between a server workload and a client workload, each trusting the other's
/// trust domain through the bundles its own Workload API gave it (`server_td`'s server trusts
/// `client_td`'s roots from its context, and the other way round). Returns the SPIFFE ID each side
/// saw, or the handshake's error.
async fn mtls(
    server: &X509Context,
    server_td: &str,
    client: &X509Context,
    client_td: &str,
) -> Result<(String, String), String> {
    let (acceptor, server_id) = acceptor(server, client_td);
    let (client_chain, client_key, _) = svid_of(client);
    let verifier = vouch_tls::SpiffeServerVerifier::new(
        &roots(client, server_td),
        vouch_core::SpiffeId::parse(&server_id).unwrap(),
    );
    let config = vouch_tls::client_config(verifier, Some((client_chain, client_key))).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));

    let (a, b) = tokio::io::duplex(64 * 1024);
    let serve = async move {
        let mut tls = acceptor.accept(a).await.map_err(|e| format!("server: {e}"))?;
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first().cloned())
            .ok_or("server: no client certificate")?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| format!("server read: {e}"))?;
        tls.write_all(b"pong").await.map_err(|e| format!("server write: {e}"))?;
        tls.flush().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(vouch_tls::spiffe_id_of(&peer).map_err(|e| e.to_string())?.to_string())
    };
    let call = async move {
        let name = rustls_pki_types::ServerName::try_from("workload.invalid").unwrap();
        let mut tls = connector.connect(name, b).await.map_err(|e| format!("client: {e}"))?;
        tls.write_all(b"ping").await.map_err(|e| format!("client write: {e}"))?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| format!("client read: {e}"))?;
        assert_eq!(&buf, b"pong");
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first().cloned())
            .ok_or("client: no server certificate")?;
        Ok::<_, String>(vouch_tls::spiffe_id_of(&peer).map_err(|e| e.to_string())?.to_string())
    };
    let (served, called) = tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(serve, call) })
        .await
        .map_err(|_| "mTLS timed out".to_owned())?;
    Ok((served?, called?))
}

/// A TLS acceptor for the workload of `server`: its SVID, and client SVIDs verified against the
/// roots of `client_td` from its own context. Also its SPIFFE ID.
fn acceptor(server: &X509Context, client_td: &str) -> (tokio_rustls::TlsAcceptor, String) {
    let (server_chain, server_key, server_id) = svid_of(server);
    let cert = Arc::new(vouch_tls::ServerCert::default());
    cert.set(server_chain, &server_key).unwrap();
    let clients = Arc::new(vouch_tls::SvidClientVerifier::default());
    clients.set_anchors(vouch_tls::Anchors::from_der(&roots(server, client_td)));
    (tokio_rustls::TlsAcceptor::from(Arc::new(vouch_tls::server_config(cert, clients).unwrap())), server_id)
}

/// How many roots of `name` a raw FetchX509SVID answer carries in `federated_bundles`.
fn federated_roots(resp: &X509svidResponse, name: &str) -> usize {
    resp.federated_bundles
        .get(&format!("spiffe://{name}"))
        .map_or(0, |der| spiffe::X509Bundle::parse_from_der(td(name), der).unwrap().authorities().len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_trust_domains_federated_both_ways_do_mtls_validate_jwts_and_follow_root_rotation() {
    let (port_a, port_b) = (free_port(), free_port());
    let a = federated_stack("a.org", port_a).await;
    let b = federated_stack("b.org", port_b).await;
    federate(&a, &b, port_b).await;
    federate(&b, &a, port_a).await;
    a.entry_for_me("web", "/web", json!({"federates_with": ["b.org"]})).await;
    b.entry_for_me("api", "/api", json!({"federates_with": ["a.org"]})).await;
    a.wait_entries(1).await;
    b.wait_entries(1).await;

    // Each workload gets the other trust domain's bundle from its own agent (the bootstrap bundle
    // at once, then the fetched one with the JWT keys).
    let client_a = WorkloadApiClient::connect_to(a.endpoint()).await.unwrap();
    let client_b = WorkloadApiClient::connect_to(b.endpoint()).await.unwrap();
    let jwt_keys = |c: &WorkloadApiClient, other: &'static str| {
        let c = c.clone();
        async move {
            c.fetch_jwt_bundles()
                .await
                .ok()
                .and_then(|s| s.get(&td(other)).map(|b| b.jwt_authorities().count()))
                .unwrap_or(0)
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while jwt_keys(&client_a, "b.org").await == 0 || jwt_keys(&client_b, "a.org").await == 0 {
        assert!(Instant::now() < deadline, "the federated JWT bundles did not arrive");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ctx_a = context_when(&client_a, 10, "B's bundle at A", |c| !roots(c, "b.org").is_empty()).await;
    let ctx_b = context_when(&client_b, 10, "A's bundle at B", |c| !roots(c, "a.org").is_empty()).await;
    assert_eq!(svid_of(&ctx_a).2, "spiffe://a.org/web");
    assert_eq!(svid_of(&ctx_b).2, "spiffe://b.org/api");
    let bundles_a = client_a.fetch_x509_bundles().await.unwrap();
    assert_eq!((bundles_a.get(&td("a.org")).is_some(), bundles_a.get(&td("b.org")).is_some()), (true, true));

    // mTLS both ways, each side trusting the other through its own Workload API only.
    assert_eq!(
        mtls(&ctx_a, "a.org", &ctx_b, "b.org").await.unwrap(),
        ("spiffe://b.org/api".into(), "spiffe://a.org/web".into())
    );
    assert_eq!(
        mtls(&ctx_b, "b.org", &ctx_a, "a.org").await.unwrap(),
        ("spiffe://a.org/web".into(), "spiffe://b.org/api".into())
    );
    // Without the federated bundle (B's roots replaced by A's own), A's server refuses B's client.
    let err = mtls(&ctx_a, "a.org", &ctx_b, "a.org").await.unwrap_err();
    assert!(err.contains("does not chain"), "{err}");

    // Each validates the other's JWT-SVID through its own agent.
    let jwt_a = client_a.fetch_jwt_svid(["b-service"], None).await.unwrap();
    let jwt_b = client_b.fetch_jwt_svid(["a-service"], None).await.unwrap();
    let seen = client_b.validate_jwt_token("b-service", jwt_a.token()).await.unwrap();
    assert_eq!(seen.spiffe_id().to_string(), "spiffe://a.org/web");
    let seen = client_a.validate_jwt_token("a-service", jwt_b.token()).await.unwrap();
    assert_eq!(seen.spiffe_id().to_string(), "spiffe://b.org/api");
    assert!(client_b.validate_jwt_token("other", jwt_a.token()).await.is_err(), "wrong audience");
    // A token of a trust domain nobody federates with is refused before any key is tried.
    let rogue = {
        let mut auth = vouch_ca::authority::Authority::new(
            vouch_ca::authority::AuthorityConfig::new(vouch_core::TrustDomain::new("c.org").unwrap()),
            None,
        );
        auth.tick(std::time::SystemTime::now()).unwrap();
        let id = vouch_core::SpiffeId::parse("spiffe://c.org/x").unwrap();
        auth.mint_jwt(&id, &["b-service".into()], Duration::from_secs(60), std::time::SystemTime::now())
            .unwrap()
            .token
    };
    let err = client_b.validate_jwt_token("b-service", &rogue).await.unwrap_err().to_string();
    assert!(err.contains("c.org"), "{err}");

    // py-spiffe, unchanged, as a second workload of A (a python process): mTLS with B's workload
    // through Python's ssl and the bundles its Workload API gives it, and B's JWT-SVID validated.
    let python = python_path();
    let uid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap();
    let py_entry = json!({"id": "py", "spiffe_id": "spiffe://a.org/python", "parent_id": "spiffe://a.org/agent/test-node",
        "selectors": [format!("unix:uid:{uid}"), format!("unix:path:{python}")], "federates_with": ["b.org"]});
    let _: Value = a.admin.call("POST", "/v1/entries", Some(&py_entry)).await.unwrap();
    a.wait_entries(2).await;
    let (b_acceptor, _) = acceptor(&ctx_b, "a.org");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = listener.local_addr().unwrap();
    let b_side = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = b_acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first().cloned())
            .ok_or("no client certificate")?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        tls.write_all(b"pong").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(vouch_tls::spiffe_id_of(&peer).map_err(|e| e.to_string())?.to_string())
    });
    let out_dir = tempfile::tempdir().unwrap();
    let env = [
        ("PEER_TD", "b.org".to_owned()),
        ("PEER_ADDR", peer_addr.to_string()),
        ("PEER_JWT", jwt_b.token().to_owned()),
        ("JWT_AUDIENCE", "a-service".to_owned()),
        ("OUT_DIR", out_dir.path().display().to_string()),
    ];
    let v = run_py_spiffe(&python, "py_spiffe_federated.py", &a.agent().socket, &env).await;
    assert_eq!(v["x509_spiffe_id"], "spiffe://a.org/python", "{v}");
    assert_eq!((v["peer_bundle"].as_bool(), v["answer"].as_str()), (Some(true), Some("pong")), "{v}");
    assert_eq!(v["peer_ids"], json!(["spiffe://b.org/api"]));
    assert_eq!(v["validated_spiffe_id"], "spiffe://b.org/api");
    let seen = tokio::time::timeout(Duration::from_secs(10), b_side).await.unwrap().unwrap().unwrap();
    assert_eq!(seen, "spiffe://a.org/python", "B's workload saw A's python workload");

    // A root rotation in B reaches A's workload on its open stream within the refresh hint.
    let mut raw = raw_client(&a.agent().socket).await;
    let mut stream = raw.fetch_x509svid(with_header(X509svidRequest {})).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(federated_roots(&first, "b.org"), 1);
    // The refresher of A fetched B's bundle just now or up to one hint ago: the new root must be
    // there by the end of the next hint.
    let rotated = Instant::now();
    // As an operator does it: B's admin API publishes a successor root now.
    let keys: Value = b.admin.call("POST", "/v1/authority/prepare-root", None).await.unwrap();
    let roots_b = keys["keys"].as_array().unwrap().iter().filter(|k| k["kind"] == "root").count();
    assert_eq!(roots_b, 2, "{keys}");
    loop {
        let left = (REFRESH_HINT + DELIVERY_SLACK).saturating_sub(rotated.elapsed());
        let msg = tokio::time::timeout(left, stream.message())
            .await
            .unwrap_or_else(|_| {
                panic!("B's new root did not reach A's workload within the refresh hint ({REFRESH_HINT:?})")
            })
            .unwrap()
            .unwrap();
        if federated_roots(&msg, "b.org") == 2 {
            break;
        }
    }
    eprintln!("B's root rotation reached A's workload after {:?}", rotated.elapsed());

    // B's entry stops federating with A: B's workload gets no A bundle any more, and A's tokens
    // are refused by B's agent.
    let entry: Value = b.admin.call("GET", "/v1/entries/api", None).await.unwrap();
    let patch = json!({"expected_revision": entry["revision"], "federates_with": []});
    let _: Value = b.admin.call("PATCH", "/v1/entries/api", Some(&patch)).await.unwrap();
    let ctx = context_when(&client_b, 10, "A's bundle gone at B", |c| roots(c, "a.org").is_empty()).await;
    assert!(!roots(&ctx, "b.org").is_empty());
    let jwt_bundles = client_b.fetch_jwt_bundles().await.unwrap();
    assert!(jwt_bundles.get(&td("a.org")).is_none() && jwt_bundles.get(&td("b.org")).is_some());
    let x509_bundles = client_b.fetch_x509_bundles().await.unwrap();
    assert!(x509_bundles.get(&td("a.org")).is_none());
    let err = client_b.validate_jwt_token("b-service", jwt_a.token()).await.unwrap_err().to_string();
    assert!(err.contains("a.org"), "{err}");
}
