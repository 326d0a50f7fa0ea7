//! SPIFFE federation on the server: the bundle endpoint in both profiles.

use super::*;

/// A GET of `/` from a bundle endpoint at `addr` whose server is verified by `tls`.
async fn endpoint_get(
    addr: std::net::SocketAddr,
    tls: tokio_rustls::TlsConnector,
) -> Result<(u16, Value), String> {
    let url = vouch_http::Url::parse(&format!("https://{addr}/")).unwrap();
    let getter = vouch_http::Getter::with_connector(&url, tls).unwrap();
    let (status, body) =
        getter.get("/", None, 1 << 20, Duration::from_secs(10)).await.map_err(|e| e.to_string())?;
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

/// A client of an `https_spiffe` endpoint: the server's SVID must chain to `roots` and name `id`.
pub(crate) fn spiffe_connector(roots: &[Vec<u8>], id: &str) -> tokio_rustls::TlsConnector {
    let verifier = vouch_tls::SpiffeServerVerifier::new(roots, SpiffeId::parse(id).unwrap());
    tokio_rustls::TlsConnector::from(Arc::new(vouch_tls::client_config(verifier, None).unwrap()))
}

/// The bundle endpoint serves the trust domain's bundle as a SPIFFE bundle JWKS: `https_spiffe`
/// with the server's own X509-SVID (a client that checks it against the bundle and the SPIFFE ID
/// gets the bundle; one expecting another ID, or holding other roots, is refused in the handshake);
/// `https_web` with a configured certificate, checked by host name. Only `/` is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundle_endpoint_serves_the_spiffe_bundle_in_both_profiles() {
    let dir = tempfile::tempdir().unwrap();
    let extra = "[federation]\nbundle_endpoint_listen = \"127.0.0.1:0\"\nrefresh_hint = \"40s\"\n";
    let (server, _, _) = start_with(dir.path(), extra).await;
    let addr = server.bundle_endpoint_addr.unwrap();
    let bundle = server.state.with_authority(|a| a.bundle());

    let tls = spiffe_connector(&bundle.x509_authorities, "spiffe://example.org/vouch/server");
    let (status, jwks) = endpoint_get(addr, tls).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(jwks["spiffe_sequence"], json!(bundle.sequence));
    assert_eq!(jwks["spiffe_refresh_hint"], json!(40));
    let keys = jwks["keys"].as_array().unwrap();
    let x509: Vec<&Value> = keys.iter().filter(|k| k["use"] == "x509-svid").collect();
    let jwt: Vec<&Value> = keys.iter().filter(|k| k["use"] == "jwt-svid").collect();
    assert_eq!((x509.len(), jwt.len()), (1, 1), "{jwks}");
    assert_eq!(x509[0]["x5c"].as_array().unwrap().len(), 1);
    assert!(jwt[0]["kid"].is_string() && jwt[0].get("d").is_none());
    let td = vouch_core::TrustDomain::new("example.org").unwrap();
    let parsed = vouch_ca::Bundle::from_jwks(td, &jwks.to_string()).unwrap();
    assert_eq!(parsed, bundle);

    // Another SPIFFE ID, or other roots: refused in the handshake.
    let tls = spiffe_connector(&bundle.x509_authorities, "spiffe://example.org/someone-else");
    let err = endpoint_get(addr, tls).await.unwrap_err();
    assert!(err.contains("expected `spiffe://example.org/someone-else`"), "{err}");
    let mut other = vouch_ca::authority::Authority::new(
        vouch_ca::authority::AuthorityConfig::new(vouch_core::TrustDomain::new("example.org").unwrap()),
        None,
    );
    other.tick(SystemTime::now()).unwrap();
    let tls = spiffe_connector(&other.bundle().x509_authorities, "spiffe://example.org/vouch/server");
    let err = endpoint_get(addr, tls).await.unwrap_err();
    assert!(err.contains("does not chain"), "{err}");

    // Only the bundle, only GET.
    let app = vouch_server::bundle_endpoint_router(server.state.clone());
    for (method, path, want) in [
        ("GET", "/", StatusCode::OK),
        ("POST", "/", StatusCode::METHOD_NOT_ALLOWED),
        ("GET", "/v1/bundle", StatusCode::NOT_FOUND),
        ("GET", "/keys", StatusCode::NOT_FOUND),
    ] {
        let req = Request::builder().method(method).uri(path).body(Body::empty()).unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), want, "{method} {path}");
        if want == StatusCode::OK {
            assert_eq!(resp.headers()["cache-control"], "public, max-age=20");
        }
    }
    server.shutdown().await;

    // https_web: a configured certificate for the host name.
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = web_cert(dir.path(), "web");
    let extra = format!(
        "[federation]\nbundle_endpoint_listen = \"127.0.0.1:0\"\nbundle_endpoint_profile = \"https_web\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert_file.display(),
        key_file.display()
    );
    let (server, _, _) = start_with(dir.path(), &extra).await;
    let addr = server.bundle_endpoint_addr.unwrap();
    let tls = vouch_tls::tls_connector(&vouch_tls::Trust::CaFile(cert_file.clone())).unwrap();
    let (status, jwks) = endpoint_get(addr, tls).await.unwrap();
    assert_eq!((status, jwks["keys"].as_array().map(Vec::len)), (200, Some(2)));
    // A client that trusts only the trust domain's roots (https_spiffe) does not take a web certificate.
    let roots = server.state.with_authority(|a| a.bundle().x509_authorities);
    let err =
        endpoint_get(addr, spiffe_connector(&roots, "spiffe://example.org/vouch/server")).await.unwrap_err();
    assert!(err.contains("tls"), "{err}");
    server.shutdown().await;
}

/// A server of trust domain `td` in `dir` (admin socket only) with `extra` configuration.
pub(crate) async fn start_td(dir: &Path, td: &str, extra: &str) -> (Server, AdminClient) {
    let text = format!(
        "version = 1\ntrust_domain = \"{td}\"\ndata_dir = \"{}\"\n[server]\nlisten = \"off\"\n{extra}",
        dir.join("data").display()
    );
    let server =
        Server::start(Config::from_toml(&text, &no_env).unwrap(), Arc::new(vouch_server::SystemClock), None)
            .await
            .unwrap();
    let admin = AdminClient::unix(&server.admin_socket);
    (server, admin)
}

/// The relationship with `td` once `done` holds for it, within `secs` seconds.
async fn wait_relationship(
    admin: &AdminClient,
    td: &str,
    secs: u64,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let r: Value = admin.call("GET", &format!("/v1/federation/{td}"), None).await.unwrap();
        if done(&r) {
            return r;
        }
        assert!(std::time::Instant::now() < deadline, "{what} within {secs} s: {r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The bundle of a fresh authority of trust domain `td`, as a SPIFFE bundle JWKS.
pub(crate) fn foreign_bundle(td: &str) -> (vouch_ca::Bundle, String) {
    let mut a = vouch_ca::authority::Authority::new(
        vouch_ca::authority::AuthorityConfig::new(vouch_core::TrustDomain::new(td).unwrap()),
        None,
    );
    a.tick(SystemTime::now()).unwrap();
    let bundle = a.bundle();
    let jwks = bundle.to_jwks().unwrap();
    (bundle, jwks)
}

/// Relationships are created, listed, shown, changed and deleted through the API, bad ones refused
/// with the reason and nothing stored; an https_web endpoint's bundle is fetched (its certificate
/// checked against federation.web_ca_file), and a peer answering garbage, too much, an empty bundle
/// or nothing at all leaves the last good bundle served with the error in the state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_relationships_are_managed_and_a_bad_endpoint_keeps_the_last_good_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let web = vouch_http::testing::StaticHttps::start(None).await;
    let ca_file = dir.path().join("web-ca.pem");
    std::fs::write(&ca_file, &web.cert_pem).unwrap();
    let extra = format!("[federation]\nweb_ca_file = \"{}\"\n", ca_file.display());
    let (server, admin) = start_td(dir.path(), "example.org", &extra).await;
    let (b_bundle, b_jwks) = foreign_bundle("b.org");
    web.set("/bundle", b_jwks.clone());
    let url = format!("{}/bundle", web.base_url());

    // Bad input: refused with the reason, nothing stored.
    let good = json!({"trust_domain": "b.org", "bundle_endpoint_url": url, "profile": "https_web"});
    let spiffe = json!({"trust_domain": "b.org", "bundle_endpoint_url": url, "profile": "https_spiffe",
        "endpoint_spiffe_id": "spiffe://b.org/vouch/server", "bootstrap_bundle": b_bundle.x509_pem()});
    let with = |base: &Value, k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    let without = |base: &Value, k: &str| {
        let mut b = base.clone();
        b.as_object_mut().unwrap().remove(k);
        b
    };
    for (body, why) in [
        (with(&good, "trust_domain", json!("example.org")), "this server's own trust domain"),
        (with(&good, "trust_domain", json!("Bad Domain")), "trust_domain"),
        (with(&good, "bundle_endpoint_url", json!("http://127.0.0.1/")), "must be https"),
        (with(&good, "bundle_endpoint_url", json!("b.org")), "bundle_endpoint_url"),
        (with(&good, "profile", json!("https")), "unknown variant `https`"),
        (with(&good, "endpoint_spiffe_id", json!("spiffe://b.org/x")), "is for profile https_spiffe"),
        (without(&spiffe, "endpoint_spiffe_id"), "needs endpoint_spiffe_id"),
        (without(&spiffe, "bootstrap_bundle"), "needs bootstrap_bundle"),
        (
            with(&spiffe, "endpoint_spiffe_id", json!("spiffe://c.org/vouch/server")),
            "is not in trust domain `b.org`",
        ),
        (with(&spiffe, "bootstrap_bundle", json!("garbage")), "holds no authority"),
        (with(&spiffe, "bootstrap_bundle", json!("{\"keys\": 5}")), "not a JWKS document"),
        (with(&good, "colour", json!("blue")), "unknown field `colour`"),
    ] {
        let (status, message) =
            refusal(admin.call::<Value>("POST", "/v1/federation", Some(&body)).await, 400);
        assert!(message.contains(why), "{body}: {status} {message}");
    }
    let listed: Value = admin.call("GET", "/v1/federation", None).await.unwrap();
    assert_eq!(listed["relationships"], json!([]), "nothing stored by refused requests");

    // An https_web relationship: fetched at once, its state visible.
    let created: Value = admin.call("POST", "/v1/federation", Some(&good)).await.unwrap();
    assert_eq!(
        (created["profile"].as_str(), created["state"]["x509_authorities"].as_u64()),
        (Some("https_web"), Some(0))
    );
    let r =
        wait_relationship(&admin, "b.org", 10, "the first fetch", |r| r["state"]["last_refresh"].is_i64())
            .await;
    assert_eq!(
        (r["state"]["x509_authorities"].as_u64(), r["state"]["jwt_authorities"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(r["state"].get("last_error").is_none(), "{r}");
    let next = r["state"]["next_refresh"].as_i64().unwrap() - r["state"]["last_refresh"].as_i64().unwrap();
    assert_eq!(next, 300, "the bundle's refresh hint (5 min)");
    let served = vouch_ca::Bundle::from_jwks(
        vouch_core::TrustDomain::new("b.org").unwrap(),
        &r["state"]["bundle"].to_string(),
    )
    .unwrap();
    assert_eq!(served, b_bundle);
    assert_eq!(r, admin.call::<Value>("GET", "/v1/federation", None).await.unwrap()["relationships"][0]);
    let (status, _) = refusal(admin.call::<Value>("POST", "/v1/federation", Some(&good)).await, 409);
    assert!(status.contains("conflict"), "{status}");

    // A peer answering garbage, too much, an empty bundle, another trust domain's certificate:
    // each fetch (due at once after an update) records why, and the last good bundle stays.
    let untrusted = vouch_http::testing::StaticHttps::start(None).await;
    untrusted.set("/bundle", b_jwks.clone());
    for (body, other_url, why) in [
        (b"<html>not a bundle</html>".to_vec(), None, "not a SPIFFE bundle"),
        (vec![b' '; 2 << 20], None, "reading the answer"),
        (br#"{"keys":[]}"#.to_vec(), None, "holds no X.509 authority"),
        (b_jwks.clone().into_bytes(), Some(format!("{}/bundle", untrusted.base_url())), "tls"),
    ] {
        web.set("/bundle", body);
        let patch = json!({"bundle_endpoint_url": other_url.unwrap_or_else(|| url.clone())});
        let _: Value = admin.call("PATCH", "/v1/federation/b.org", Some(&patch)).await.unwrap();
        let r = wait_relationship(&admin, "b.org", 15, why, |r| {
            r["state"]["last_error"].as_str().is_some_and(|e| e.contains(why))
        })
        .await;
        assert_eq!(r["state"]["x509_authorities"].as_u64(), Some(1), "the last good bundle is kept: {r}");
        assert!(r["state"]["last_error"].as_str().unwrap().len() <= 512);
    }
    // A peer that accepts and never answers: the fetch ends at its deadline.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("https://{}/bundle", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            conns.push(c);
        }
    });
    let _: Value = admin
        .call("PATCH", "/v1/federation/b.org", Some(&json!({"bundle_endpoint_url": silent_url})))
        .await
        .unwrap();
    let r = wait_relationship(&admin, "b.org", 25, "a timeout", |r| {
        r["state"]["last_error"].as_str().is_some_and(|e| e.contains("did not answer within 10s"))
    })
    .await;
    assert_eq!(r["state"]["x509_authorities"].as_u64(), Some(1), "the last good bundle is kept: {r}");
    held.abort();

    // A good answer again clears the error.
    web.set("/bundle", b_jwks.clone());
    let _: Value = admin
        .call("PATCH", "/v1/federation/b.org", Some(&json!({"bundle_endpoint_url": url})))
        .await
        .unwrap();
    wait_relationship(&admin, "b.org", 10, "recovery", |r| r["state"].get("last_error").is_none()).await;

    // The refreshes and failures are counted; the bundle is served.
    let (_, metrics) = admin.request("GET", "/metrics", None).await.unwrap();
    let metrics = String::from_utf8(metrics.to_vec()).unwrap();
    let value = |name: &str| -> u64 {
        let line = metrics.lines().map(str::trim).find(|l| l.starts_with(&format!("{name} "))).unwrap();
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(value("vouch_federation_refreshes_total") >= 2, "{metrics}");
    assert!(value("vouch_federation_refresh_failures_total") >= 5, "{metrics}");
    assert_eq!(value("vouch_federated_bundles"), 1, "{metrics}");

    // Deleted: gone from the list, 404 after.
    let deleted: Value = admin.call("DELETE", "/v1/federation/b.org", None).await.unwrap();
    assert_eq!(deleted["trust_domain"], "b.org");
    refusal(admin.call::<Value>("DELETE", "/v1/federation/b.org", None).await, 404);
    refusal(admin.call::<Value>("GET", "/v1/federation/b.org", None).await, 404);
    server.shutdown().await;
}

/// Two vouch servers: A fetches B's bundle from B's https_spiffe bundle endpoint, authenticated by
/// the bootstrap bundle and B's server SPIFFE ID; an endpoint presenting another SPIFFE ID is
/// refused (the bootstrap bundle stays served).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_fetches_another_vouch_servers_bundle_over_https_spiffe() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (server_b, admin_b) = start_td(
        dir_b.path(),
        "b.org",
        "[federation]\nbundle_endpoint_listen = \"127.0.0.1:0\"\nrefresh_hint = \"20s\"\n",
    )
    .await;
    let (server_a, admin_a) = start_td(dir_a.path(), "example.org", "").await;
    let (_, b_pem) = admin_b.request("GET", "/v1/bundle?format=pem", None).await.unwrap();
    let url = format!("https://{}", server_b.bundle_endpoint_addr.unwrap());
    let spec = json!({"trust_domain": "b.org", "bundle_endpoint_url": url, "profile": "https_spiffe",
        "endpoint_spiffe_id": "spiffe://b.org/vouch/server", "bootstrap_bundle": String::from_utf8(b_pem.to_vec()).unwrap()});
    let created: Value = admin_a.call("POST", "/v1/federation", Some(&spec)).await.unwrap();
    assert_eq!(created["state"]["x509_authorities"], 1, "the bootstrap bundle is served at once");
    let r =
        wait_relationship(&admin_a, "b.org", 10, "the first fetch", |r| r["state"]["last_refresh"].is_i64())
            .await;
    let want = server_b.state.with_authority(|a| a.bundle());
    assert_eq!(r["state"]["bundle_sequence"], json!(want.sequence));
    assert_eq!(r["state"]["jwt_authorities"], 1, "B's JWT keys came with the fetch");
    let next = r["state"]["next_refresh"].as_i64().unwrap() - r["state"]["last_refresh"].as_i64().unwrap();
    assert_eq!(next, 20, "B's refresh hint");

    let patch = json!({"endpoint_spiffe_id": "spiffe://b.org/not-the-server"});
    let _: Value = admin_a.call("PATCH", "/v1/federation/b.org", Some(&patch)).await.unwrap();
    let r =
        wait_relationship(&admin_a, "b.org", 10, "a refusal", |r| r["state"]["last_error"].is_string()).await;
    assert!(
        r["state"]["last_error"].as_str().unwrap().contains("expected `spiffe://b.org/not-the-server`"),
        "{r}"
    );
    assert_eq!(r["state"]["jwt_authorities"], 1, "the last good bundle stays");
    server_a.shutdown().await;
    server_b.shutdown().await;
}
