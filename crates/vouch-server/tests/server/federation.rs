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
