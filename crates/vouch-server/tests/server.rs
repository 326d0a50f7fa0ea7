//! Integration tests of the server: handlers through tower `oneshot` (no sockets), and the real
//! listeners (admin socket, mTLS) started in process. One test binary for the crate.

// A test fails by panicking: unwrap and expect are how it says what broke. End-to-end tests run
// real processes on the wall clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use tower::ServiceExt as _;
use vouch_api::admin::JoinTokenRequest;
use vouch_api::agent::{
    AgentJwtRequest, JoinTokenAttestation, PsatAttestation, SignItem, SignOutcome, SignRequest, SyncLine,
    X509PopAttestation, X509PopChallengeRequest,
};
use vouch_api::{Der, EntryId, EntrySpec, SpiffeId};
use vouch_client::{AdminClient, ClientError};
use vouch_server::Caller;
use vouch_server::{AppState, Clock, Config, Server, FOLLOW_INTERVAL};
use vouch_store::{SqliteStore, Store};

/// A clock the test moves by hand.
struct ManualClock(Mutex<SystemTime>);

impl ManualClock {
    fn new() -> Arc<Self> {
        Arc::new(Self(Mutex::new(SystemTime::now())))
    }
    fn advance(&self, d: Duration) {
        *self.0.lock().unwrap() += d;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap()
    }
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn config(dir: &Path, listen: bool) -> Config {
    let text = format!(
        "version = 1\ntrust_domain = \"example.org\"\ndata_dir = \"{}\"\n[server]\nlisten = \"{}\"\n",
        dir.display(),
        if listen { "127.0.0.1:0" } else { "off" }
    );
    Config::from_toml(&text, &no_env).unwrap()
}

async fn state_in_memory(clock: Arc<dyn Clock>) -> Arc<AppState> {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
    let (kek, _) = vouch_ca::Kek::generate().unwrap();
    AppState::open(config(dir.path(), false), store, kek, clock, 4242).await.unwrap()
}

/// Sends one request through the full app (auth included) as `caller`.
async fn call(
    state: &Arc<AppState>,
    caller: Caller,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (StatusCode, Value) {
    let (status, _, v) = call_from(state, caller, None, method, path, body).await;
    (status, v)
}

/// [`call`] from a TCP peer at `peer` (as the mTLS listener marks requests); also the headers.
async fn call_from(
    state: &Arc<AppState>,
    caller: Caller,
    peer: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (StatusCode, axum::http::HeaderMap, Value) {
    let mut req = Request::builder().method(method).uri(path);
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let mut req = req.body(Body::from(body.unwrap_or("").to_owned())).unwrap();
    req.extensions_mut().insert(caller);
    if let Some(peer) = peer {
        req.extensions_mut().insert(vouch_server::PeerAddr(peer.parse().unwrap()));
    }
    let resp = vouch_server::app(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, headers, v)
}

const ROOT: Caller = Caller::Local { uid: 0 };

async fn entry_count(state: &Arc<AppState>) -> usize {
    let (s, v) = call(state, ROOT, "GET", "/v1/entries", None).await;
    assert_eq!(s, StatusCode::OK);
    v["entries"].as_array().unwrap().len()
}

#[tokio::test]
async fn bad_requests_get_4xx_with_reasons_and_change_nothing() {
    let state = state_in_memory(ManualClock::new()).await;
    let good = r#"{"spiffe_id":"spiffe://example.org/web","parent_id":"spiffe://example.org/agent/a","selectors":["unix:uid:1"]}"#;
    let cases: &[(&str, &str, &str, StatusCode, &str)] = &[
        ("POST", "/v1/entries", "{not json", StatusCode::BAD_REQUEST, "JSON"),
        (
            "POST",
            "/v1/entries",
            r#"{"spiffe_id":"spiffe://example.org/web","parent_id":"spiffe://example.org/a","selectors":["unix:uid:1"],"colour":"red"}"#,
            StatusCode::BAD_REQUEST,
            "unknown field `colour`",
        ),
        (
            "POST",
            "/v1/entries",
            r#"{"spiffe_id":"spiffe://example.org/web/","parent_id":"spiffe://example.org/a","selectors":["unix:uid:1"]}"#,
            StatusCode::BAD_REQUEST,
            "path must not end with `/`",
        ),
        (
            "POST",
            "/v1/entries",
            r#"{"spiffe_id":"http://example.org/web","parent_id":"spiffe://example.org/a","selectors":["unix:uid:1"]}"#,
            StatusCode::BAD_REQUEST,
            "must start with `spiffe://`",
        ),
        (
            "POST",
            "/v1/entries",
            r#"{"spiffe_id":"spiffe://example.org/web","parent_id":"spiffe://example.org/a","selectors":[]}"#,
            StatusCode::BAD_REQUEST,
            "at least one selector",
        ),
        (
            "POST",
            "/v1/entries",
            r#"{"spiffe_id":"spiffe://example.org/web","parent_id":"spiffe://example.org/a","selectors":["nocolon"]}"#,
            StatusCode::BAD_REQUEST,
            "type:value",
        ),
        (
            "POST",
            "/v1/entries",
            r#"{"spiffe_id":"spiffe://other.org/web","parent_id":"spiffe://example.org/a","selectors":["unix:uid:1"]}"#,
            StatusCode::BAD_REQUEST,
            "not in trust domain",
        ),
        (
            "POST",
            "/v1/entries",
            r#"{"parent_id":"spiffe://example.org/a","selectors":["unix:uid:1"]}"#,
            StatusCode::BAD_REQUEST,
            "missing field `spiffe_id`",
        ),
        ("POST", "/v1/entries/batch", r#"{"entries":[]}"#, StatusCode::BAD_REQUEST, "1 to 1000"),
        (
            "POST",
            "/v1/entries/batch",
            &format!(
                r#"{{"entries":[{good},{{"spiffe_id":"spiffe://example.org/x","parent_id":"spiffe://example.org/a","selectors":["unix:uid:1"],"x509_svid_ttl":1}}]}}"#
            ),
            StatusCode::BAD_REQUEST,
            "entries[1]: x509_svid_ttl",
        ),
        ("GET", "/v1/entries?spiffe_id=nope", "", StatusCode::BAD_REQUEST, "spiffe_id `nope`"),
        ("GET", "/v1/entries/bad%20id", "", StatusCode::BAD_REQUEST, "entry id"),
        ("GET", "/v1/entries/missing", "", StatusCode::NOT_FOUND, "no entry with id `missing`"),
        ("DELETE", "/v1/entries/missing", "", StatusCode::NOT_FOUND, "no entry"),
        ("POST", "/v1/join-tokens", r#"{"ttl":0}"#, StatusCode::BAD_REQUEST, "ttl"),
        (
            "POST",
            "/v1/join-tokens",
            r#"{"agent_id":"spiffe://other.org/a"}"#,
            StatusCode::BAD_REQUEST,
            "agent_id",
        ),
        (
            "POST",
            "/v1/svids/x509",
            r#"{"spiffe_id":"spiffe://example.org/w","csr":"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"}"#,
            StatusCode::BAD_REQUEST,
            "invalid CSR",
        ),
        (
            "POST",
            "/v1/svids/x509",
            r#"{"spiffe_id":"spiffe://other.org/w"}"#,
            StatusCode::BAD_REQUEST,
            "not in trust domain",
        ),
        (
            "POST",
            "/v1/svids/x509",
            r#"{"spiffe_id":"spiffe://example.org/w","ttl":5}"#,
            StatusCode::BAD_REQUEST,
            "ttl: 5s",
        ),
        (
            "POST",
            "/v1/svids/x509",
            r#"{"spiffe_id":"spiffe://example.org/w","common_name":"a\u0007b"}"#,
            StatusCode::BAD_REQUEST,
            "common_name: character 2 of the common name is a control character",
        ),
        (
            "POST",
            "/v1/entries",
            r#"{"spiffe_id":"spiffe://example.org/w","parent_id":"spiffe://example.org/a","selectors":["unix:uid:1"],"x509_common_name":" app"}"#,
            StatusCode::BAD_REQUEST,
            "x509_common_name: the common name must not begin or end with white space",
        ),
        (
            "POST",
            "/v1/svids/jwt",
            r#"{"spiffe_id":"spiffe://example.org/w","audience":[]}"#,
            StatusCode::BAD_REQUEST,
            "at least one audience",
        ),
        (
            "POST",
            "/v1/svids/jwt/validate",
            r#"{"token":"a.b.c","audience":"x"}"#,
            StatusCode::BAD_REQUEST,
            "token rejected",
        ),
        ("GET", "/v1/bundle?format=xml", "", StatusCode::BAD_REQUEST, "`jwks` or `pem`"),
    ];
    for (method, path, body, want_status, want_text) in cases {
        let (status, v) = call(&state, ROOT, method, path, (!body.is_empty()).then_some(*body)).await;
        assert_eq!(status, *want_status, "{method} {path} {body}: {v}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(want_text), "{method} {path}: {msg:?} should contain {want_text:?}");
    }
    assert_eq!(entry_count(&state).await, 0, "no bad request created anything");
    // Wrong content type.
    let req = Request::builder().method("POST").uri("/v1/entries").body(Body::from(good)).unwrap();
    let mut req = req;
    req.extensions_mut().insert(ROOT);
    let resp = vouch_server::app(state.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(entry_count(&state).await, 0);
}

#[tokio::test]
async fn entry_lifecycle_and_batch_atomicity() {
    let state = state_in_memory(ManualClock::new()).await;
    let body = r#"{"id":"web","spiffe_id":"spiffe://example.org/web","parent_id":"spiffe://example.org/agent/a","selectors":["unix:uid:1","docker:label:app:web"],"owner":"team-web","purpose":"frontend"}"#;
    let (s, e) = call(&state, ROOT, "POST", "/v1/entries", Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{e}");
    assert_eq!(
        (e["id"].as_str(), e["revision"].as_u64(), e["owner"].as_str()),
        (Some("web"), Some(0), Some("team-web"))
    );
    let (s, v) = call(&state, ROOT, "POST", "/v1/entries", Some(body)).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (s, v) = call(&state, ROOT, "GET", "/v1/entries?selector=docker:label:app:web", None).await;
    assert_eq!((s, v["entries"].as_array().unwrap().len()), (StatusCode::OK, 1));
    let update = r#"{"spiffe_id":"spiffe://example.org/web2","parent_id":"spiffe://example.org/agent/a","selectors":["unix:uid:2"]}"#;
    let (s, v) = call(&state, ROOT, "PUT", "/v1/entries/web", Some(update)).await;
    assert_eq!(
        (s, v["revision"].as_u64(), v["spiffe_id"].as_str()),
        (StatusCode::OK, Some(1), Some("spiffe://example.org/web2"))
    );
    let wrong_id = r#"{"id":"other","spiffe_id":"spiffe://example.org/w","parent_id":"spiffe://example.org/a","selectors":["unix:uid:2"]}"#;
    assert_eq!(call(&state, ROOT, "PUT", "/v1/entries/web", Some(wrong_id)).await.0, StatusCode::BAD_REQUEST);

    // PATCH changes only the named fields, and only at the revision the caller read.
    let (s, v) =
        call(&state, ROOT, "PATCH", "/v1/entries/web", Some(r#"{"expected_revision":0,"hint":"h"}"#)).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("revision_conflict")), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("read it again"), "{v}");
    let (s, v) = call(
        &state,
        ROOT,
        "PATCH",
        "/v1/entries/web",
        Some(r#"{"expected_revision":1,"hint":"h","x509_svid_ttl":600}"#),
    )
    .await;
    assert_eq!(
        (
            s,
            v["revision"].as_u64(),
            v["hint"].as_str(),
            v["spiffe_id"].as_str(),
            v["selectors"].as_array().map(Vec::len)
        ),
        (StatusCode::OK, Some(2), Some("h"), Some("spiffe://example.org/web2"), Some(1)),
        "{v}"
    );
    let (s, v) = call(
        &state,
        ROOT,
        "PATCH",
        "/v1/entries/web",
        Some(r#"{"expected_revision":2,"x509_svid_ttl":null}"#),
    )
    .await;
    assert_eq!(
        (s, v["x509_svid_ttl"].is_null(), v["hint"].as_str()),
        (StatusCode::OK, true, Some("h")),
        "{v}"
    );
    for bad in [
        r#"{"hint":"no revision"}"#,
        r#"{"expected_revision":3,"hnit":"typo"}"#,
        r#"{"expected_revision":3,"selectors":[]}"#,
    ] {
        let (s, v) = call(&state, ROOT, "PATCH", "/v1/entries/web", Some(bad)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }
    assert_eq!(
        call(&state, ROOT, "PATCH", "/v1/entries/nope", Some(r#"{"expected_revision":0}"#)).await.0,
        StatusCode::NOT_FOUND
    );
    // Two admins change the entry at once from the same revision: one wins, the other is told, and
    // the winner's change is not lost.
    for round in 0..10 {
        let rev = call(&state, ROOT, "GET", "/v1/entries/web", None).await.1["revision"].as_u64().unwrap();
        let a = format!(r#"{{"expected_revision":{rev},"owner":"a{round}"}}"#);
        let b = format!(r#"{{"expected_revision":{rev},"purpose":"b{round}"}}"#);
        let (ra, rb) = tokio::join!(
            call(&state, ROOT, "PATCH", "/v1/entries/web", Some(&a)),
            call(&state, ROOT, "PATCH", "/v1/entries/web", Some(&b))
        );
        let mut statuses = [ra.0, rb.0];
        statuses.sort();
        assert_eq!(statuses, [StatusCode::OK, StatusCode::CONFLICT], "round {round}");
        let now = call(&state, ROOT, "GET", "/v1/entries/web", None).await.1;
        assert_eq!(now["revision"].as_u64(), Some(rev + 1));
        let winner = if ra.0 == StatusCode::OK {
            ("owner", format!("a{round}"))
        } else {
            ("purpose", format!("b{round}"))
        };
        assert_eq!(now[winner.0].as_str(), Some(winner.1.as_str()));
    }
    // A batch whose second entry collides with an existing id creates nothing.
    let batch = r#"{"entries":[{"id":"new1","spiffe_id":"spiffe://example.org/n","parent_id":"spiffe://example.org/a","selectors":["unix:uid:3"]},{"id":"web","spiffe_id":"spiffe://example.org/n","parent_id":"spiffe://example.org/a","selectors":["unix:uid:3"]}]}"#;
    assert_eq!(call(&state, ROOT, "POST", "/v1/entries/batch", Some(batch)).await.0, StatusCode::CONFLICT);
    assert_eq!(entry_count(&state).await, 1);
    let (s, v) = call(&state, ROOT, "DELETE", "/v1/entries/web", None).await;
    assert_eq!((s, v["id"].as_str()), (StatusCode::OK, Some("web")));
    assert_eq!(entry_count(&state).await, 0);
}

#[tokio::test]
async fn admin_socket_uid_rules() {
    let state = state_in_memory(ManualClock::new()).await;
    for allowed in [0, 4242] {
        assert_eq!(
            call(&state, Caller::Local { uid: allowed }, "GET", "/v1/entries", None).await.0,
            StatusCode::OK
        );
    }
    let (s, v) = call(&state, Caller::Local { uid: 1000 }, "GET", "/v1/entries", None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(v["error"]["message"].as_str().unwrap().contains("uid 1000 may not use the admin socket"));
    // Public endpoints need nothing.
    for path in ["/healthz", "/readyz", "/metrics", "/v1/bundle", "/v1/openapi.json"] {
        assert_eq!(call(&state, Caller::Anonymous, "GET", path, None).await.0, StatusCode::OK, "{path}");
    }
    let (_, metrics) = call(&state, Caller::Anonymous, "GET", "/metrics", None).await;
    assert!(metrics.as_str().unwrap().contains("vouch_auth_denied_total 1"));
}

#[tokio::test]
async fn minting_and_metrics() {
    let state = state_in_memory(ManualClock::new()).await;
    let (s, v) = call(
        &state,
        ROOT,
        "POST",
        "/v1/svids/x509",
        Some(r#"{"spiffe_id":"spiffe://example.org/w","dns_names":["w.example.org"]}"#),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["private_key_pem"].as_str().unwrap().contains("BEGIN PRIVATE KEY"));
    assert_eq!(
        v["cert_chain_pem"].as_str().unwrap().matches("BEGIN CERTIFICATE").count(),
        2,
        "leaf and signing CA"
    );
    let (s, v) = call(
        &state,
        ROOT,
        "POST",
        "/v1/svids/jwt",
        Some(r#"{"spiffe_id":"spiffe://example.org/w","audience":["db"],"ttl":60}"#),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let token = v["token"].as_str().unwrap().to_owned();
    let body = json!({"token": token, "audience": "db"}).to_string();
    let (s, claims) = call(&state, ROOT, "POST", "/v1/svids/jwt/validate", Some(&body)).await;
    assert_eq!((s, claims["sub"].as_str()), (StatusCode::OK, Some("spiffe://example.org/w")));
    let body = json!({"token": token, "audience": "web"}).to_string();
    let (s, v) = call(&state, ROOT, "POST", "/v1/svids/jwt/validate", Some(&body)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"]["message"].as_str().unwrap().contains("audience `web`"));
    let (_, m) = call(&state, ROOT, "GET", "/metrics", None).await;
    let m = m.as_str().unwrap();
    assert!(m.contains("vouch_x509_svids_issued_total 1"), "{m}");
    assert!(m.contains("vouch_jwt_svids_issued_total 1"));
    assert!(m.contains("vouch_issuance_seconds_count{kind=\"x509\"} 1"));
}

#[tokio::test]
async fn rotation_with_a_test_clock_keeps_minted_svids_valid() {
    let clock = ManualClock::new();
    let state = state_in_memory(clock.clone()).await;
    let seq0 = state.with_authority(|a| a.sequence());
    let mut tokens = Vec::new();
    for _ in 0..60 {
        clock.advance(Duration::from_secs(1800));
        state.tick().await.unwrap();
        let (s, v) = call(
            &state,
            ROOT,
            "POST",
            "/v1/svids/jwt",
            Some(r#"{"spiffe_id":"spiffe://example.org/w","audience":["db"],"ttl":300}"#),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        tokens.push(v["token"].as_str().unwrap().to_owned());
        let body = json!({"token": tokens.last().unwrap(), "audience": "db"}).to_string();
        assert_eq!(call(&state, ROOT, "POST", "/v1/svids/jwt/validate", Some(&body)).await.0, StatusCode::OK);
    }
    assert!(
        state.with_authority(|a| a.sequence()) >= seq0 + 2,
        "JWT keys prepared and retired over 30 hours"
    );
    // Rotation was persisted.
    let stored: Value = serde_json::from_str(&state.store.load_authority().await.unwrap().unwrap()).unwrap();
    assert_eq!(stored["sequence"].as_u64(), Some(state.with_authority(|a| a.sequence())));
}

#[test]
fn openapi_describes_every_route() {
    let doc: Value = serde_json::from_str(vouch_server::OPENAPI).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/healthz", &["get"][..]),
        ("/readyz", &["get"]),
        ("/metrics", &["get"]),
        ("/v1/openapi.json", &["get"]),
        ("/v1/bundle", &["get"]),
        ("/v1/authority/keys", &["get"]),
        ("/v1/authority/prepare-root", &["post"]),
        ("/v1/entries", &["get", "post"]),
        ("/v1/entries/batch", &["post"]),
        ("/v1/entries/{id}", &["get", "put", "patch", "delete"]),
        ("/v1/groups", &["get", "post"]),
        ("/v1/groups/{name}", &["get", "delete"]),
        ("/v1/federation", &["get", "post"]),
        ("/v1/federation/{trust_domain}", &["get", "patch", "delete"]),
        ("/v1/join-tokens", &["post"]),
        ("/v1/svids/x509", &["post"]),
        ("/v1/svids/jwt", &["post"]),
        ("/v1/svids/jwt/validate", &["post"]),
        ("/v1/agent/attest/join-token", &["post"]),
        ("/v1/agent/attest/k8s-psat", &["post"]),
        ("/v1/agent/attest/x509pop/challenge", &["post"]),
        ("/v1/agent/attest/x509pop", &["post"]),
        ("/v1/agent/renew", &["post"]),
        ("/v1/agent/sync", &["get"]),
        ("/v1/agent/sign", &["post"]),
        ("/v1/agent/jwt", &["post"]),
        ("/v1/agents", &["get"]),
        ("/v1/agents/evict", &["post"]),
        ("/v1/agents/ban", &["post"]),
        ("/v1/secrets", &["get"]),
        ("/v1/secrets/{path}", &["get", "put"]),
        ("/v1/secrets/{path}/versions", &["get"]),
        ("/v1/secrets/{path}/delete", &["post"]),
        ("/v1/secrets/{path}/undelete", &["post"]),
        ("/v1/secrets/{path}/destroy", &["post"]),
        ("/v1/agent/secret", &["post"]),
        ("/v1/policies", &["get"]),
        ("/v1/policies/validate", &["post"]),
        ("/v1/policies/test", &["post"]),
        ("/v1/policies/{id}", &["put", "get", "delete"]),
        ("/v1/authorize", &["post"]),
        ("/v1/db/creds", &["post"]),
        ("/v1/db/leases", &["get"]),
        ("/v1/db/leases/{id}/renew", &["post"]),
        ("/v1/db/leases/{id}/revoke", &["post"]),
        ("/v1/agent/db/creds", &["post"]),
        ("/v1/audit/records", &["get"]),
        ("/v1/audit/checkpoints", &["get"]),
        ("/v1/audit/keys", &["get"]),
        ("/v1/audit/verify", &["get"]),
        ("/v1/audit/who", &["get"]),
        ("/v1/agent/delivered", &["post"]),
    ] {
        for m in methods {
            assert!(
                paths.get(path).and_then(|p| p.get(*m)).is_some(),
                "{m} {path} missing from openapi.json"
            );
        }
    }
    assert_eq!(paths.len(), 52, "a route in openapi.json that the test does not know");
    let codes =
        doc["components"]["schemas"]["ErrorDetail"]["properties"]["code"]["description"].as_str().unwrap();
    for code in vouch_api::ErrorCode::ALL {
        assert!(codes.contains(code.as_str()), "error code `{code}` missing from openapi.json");
    }
    // Every rate-limited route documents its 429 with Retry-After.
    for path in [
        "/v1/agent/attest/join-token",
        "/v1/agent/attest/k8s-psat",
        "/v1/agent/attest/x509pop",
        "/v1/agent/sign",
        "/v1/agent/jwt",
        "/v1/agent/secret",
        "/v1/agent/delivered",
    ] {
        assert_eq!(
            paths[path]["post"]["responses"]["429"]["$ref"], "#/components/responses/RateLimited",
            "{path}"
        );
    }
    assert!(doc["components"]["responses"]["RateLimited"]["headers"]["Retry-After"].is_object());
}

/// Starts a real server with both listeners in a temp dir.
async fn start(dir: &Path) -> Server {
    Server::start(config(dir, true), Arc::new(vouch_server::SystemClock), None).await.unwrap()
}

async fn mint_files(admin: &AdminClient, id: &str) -> (String, String, String) {
    let v: Value = admin.call("POST", "/v1/svids/x509", Some(&json!({"spiffe_id": id}))).await.unwrap();
    let s = |k: &str| v[k].as_str().unwrap().to_owned();
    (s("cert_chain_pem"), s("private_key_pem"), s("bundle_pem"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_listener_accepts_only_admin_svids() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.tcp_addr.unwrap().to_string();
    assert_eq!(std::fs::read_to_string(dir.path().join("server.addr")).unwrap().trim(), addr);
    let local = AdminClient::unix(&server.admin_socket);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&server.admin_socket).unwrap().permissions().mode() & 0o777, 0o600);
    let td = vouch_core::TrustDomain::new("example.org").unwrap();

    let (alice_chain, alice_key, bundle) = mint_files(&local, "spiffe://example.org/admin/alice").await;
    let (bob_chain, bob_key, _) = mint_files(&local, "spiffe://example.org/bob").await;
    let admin_entry = json!({"spiffe_id": "spiffe://example.org/admin/alice", "parent_id": "spiffe://example.org/vouch/server", "selectors": ["vouch:admin:alice"], "admin": true});
    let _: Value = local.call("POST", "/v1/entries", Some(&admin_entry)).await.unwrap();
    let bob_entry = json!({"spiffe_id": "spiffe://example.org/bob", "parent_id": "spiffe://example.org/vouch/server", "selectors": ["vouch:user:bob"]});
    let _: Value = local.call("POST", "/v1/entries", Some(&bob_entry)).await.unwrap();

    // No certificate: 401 with what to do.
    let anon = AdminClient::tls(&addr, &td, &bundle, None).unwrap();
    match anon.call::<Value>("GET", "/v1/entries", None).await {
        Err(ClientError::Api { status: 401, message, .. }) => {
            assert!(message.contains("client certificate is required"), "{message}")
        }
        other => panic!("expected 401, got {other:?}"),
    }
    // Public endpoint over TLS without a certificate works (bootstrap).
    assert_eq!(anon.request("GET", "/healthz", None).await.unwrap().0, 200);

    // A valid SVID that is not an admin: 403 naming the SPIFFE ID.
    let bob = AdminClient::tls(&addr, &td, &bundle, Some((&bob_chain, &bob_key))).unwrap();
    match bob.call::<Value>("GET", "/v1/entries", None).await {
        Err(ClientError::Api { status: 403, message, .. }) => {
            assert!(message.contains("`spiffe://example.org/bob` is not an admin"), "{message}")
        }
        other => panic!("expected 403, got {other:?}"),
    }
    // The admin SVID works.
    let alice = AdminClient::tls(&addr, &td, &bundle, Some((&alice_chain, &alice_key))).unwrap();
    let v: Value = alice.call("GET", "/v1/entries", None).await.unwrap();
    assert_eq!(v["entries"].as_array().unwrap().len(), 2);

    // Revoking admin takes effect on the next request (the admin cache is cleared on entry writes).
    let entries: Value =
        local.call("GET", "/v1/entries?spiffe_id=spiffe://example.org/admin/alice", None).await.unwrap();
    let alice_id = entries["entries"][0]["id"].as_str().unwrap().to_owned();
    let demoted = json!({"spiffe_id": "spiffe://example.org/admin/alice", "parent_id": "spiffe://example.org/vouch/server", "selectors": ["vouch:admin:alice"], "admin": false});
    let _: Value = local.call("PUT", &format!("/v1/entries/{alice_id}"), Some(&demoted)).await.unwrap();
    assert!(matches!(
        alice.call::<Value>("GET", "/v1/entries", None).await,
        Err(ClientError::Api { status: 403, .. })
    ));
    let _: Value = local.call("PUT", &format!("/v1/entries/{alice_id}"), Some(&admin_entry)).await.unwrap();
    let _: Value = alice.call("GET", "/v1/entries", None).await.unwrap();

    // A certificate from another CA does not even complete the handshake.
    let foreign_dir = tempfile::tempdir().unwrap();
    let foreign = start(foreign_dir.path()).await;
    let (f_chain, f_key, _) =
        mint_files(&AdminClient::unix(&foreign.admin_socket), "spiffe://example.org/admin/alice").await;
    let mallory = AdminClient::tls(&addr, &td, &bundle, Some((&f_chain, &f_key)))
        .unwrap()
        .with_timeout(Duration::from_secs(10));
    // Many times: with TLS 1.3 the refusal reaches the client after its handshake is done, and a
    // request racing the failing connection once waited forever (a hyper client race the client
    // now guards against). Every attempt must end in a refusal, never a timeout.
    for attempt in 0..300 {
        match mallory.call::<Value>("GET", "/v1/entries", None).await {
            Err(ClientError::Connect { .. }) => {}
            Err(ClientError::Protocol(message)) => {
                // The alert, or (when the reset overtook it) the bare close.
                assert!(
                    message.contains("refused") || message.contains("closed the connection"),
                    "attempt {attempt}: {message}"
                )
            }
            other => panic!("attempt {attempt}: expected a refusal, got {other:?}"),
        }
    }
    // And a client that trusts the wrong bundle refuses our server.
    let (_, _, foreign_bundle) =
        mint_files(&AdminClient::unix(&foreign.admin_socket), "spiffe://example.org/x").await;
    let confused = AdminClient::tls(&addr, &td, &foreign_bundle, Some((&alice_chain, &alice_key))).unwrap();
    let answer = confused.call::<Value>("GET", "/v1/entries", None).await;
    assert!(matches!(answer, Err(ClientError::Connect { .. })), "{answer:?}");
    foreign.shutdown().await;
    server.shutdown().await;
}

/// The scalar of a P-256 PKCS#8 key (the 32 bytes after `version 1, OCTET STRING(32)`).
fn p256_scalar(pkcs8: &[u8]) -> Vec<u8> {
    let marker = [0x02, 0x01, 0x01, 0x04, 0x20];
    let at = pkcs8.windows(5).position(|w| w == marker).expect("ECPrivateKey inside PKCS#8") + 5;
    pkcs8[at..at + 32].to_vec()
}

/// A database lost next to its key-encryption key must not silently become a new trust domain: every
/// agent and workload would stop trusting the server. The start is refused with what to do, and
/// changes nothing; moving the key away is the deliberate way to start afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_database_next_to_its_key_is_refused_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let client = AdminClient::unix(&server.admin_socket);
    let (_, bundle_before) = client.request("GET", "/v1/bundle", None).await.unwrap();
    server.shutdown().await;
    let kek_path = dir.path().join("kek");
    let kek_before = std::fs::read(&kek_path).unwrap();

    for damage in ["deleted", "emptied"] {
        for name in ["vouch.db", "vouch.db-wal", "vouch.db-shm"] {
            let _ = std::fs::remove_file(dir.path().join(name));
        }
        if damage == "emptied" {
            drop(SqliteStore::open(&dir.path().join("vouch.db")).unwrap());
        }
        let started = tokio::time::timeout(
            Duration::from_secs(30),
            Server::start(config(dir.path(), true), Arc::new(vouch_server::SystemClock), None),
        )
        .await
        .expect("start answers in time");
        let err =
            started.err().unwrap_or_else(|| panic!("{damage} database: the server started")).to_string();
        for want in ["kek", "vouch.db", "holds no trust domain", "Restore the database", "move"] {
            assert!(err.contains(want), "{damage}: {err:?} should say {want:?}");
        }
        assert_eq!(std::fs::read(&kek_path).unwrap(), kek_before, "the key is left alone");
        let db = dir.path().join("vouch.db");
        if damage == "deleted" {
            assert!(!db.exists(), "no new database was created");
        } else {
            let store = SqliteStore::open(&db).unwrap();
            assert_eq!(store.load_authority().await.unwrap(), None, "no new authority was stored");
        }
    }

    // Moving the key away is the deliberate choice: a new trust domain with a new key.
    std::fs::rename(&kek_path, dir.path().join("kek.old")).unwrap();
    let server = start(dir.path()).await;
    let (_, bundle_after) =
        AdminClient::unix(&server.admin_socket).request("GET", "/v1/bundle", None).await.unwrap();
    assert_ne!(bundle_before, bundle_after, "a new root");
    assert_ne!(std::fs::read(&kek_path).unwrap(), kek_before);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_entries_and_keys_and_the_database_holds_no_plaintext_key() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let client = AdminClient::unix(&server.admin_socket);
    let e = json!({"id": "keep", "spiffe_id": "spiffe://example.org/keep", "parent_id": "spiffe://example.org/a", "selectors": ["unix:uid:7"]});
    let _: Value = client.call("POST", "/v1/entries", Some(&e)).await.unwrap();
    let token: Value = client.call("POST", "/v1/join-tokens", Some(&json!({}))).await.unwrap();
    let token = token["token"].as_str().unwrap().to_owned();
    let (_, bundle_before) = client.request("GET", "/v1/bundle", None).await.unwrap();
    let stored = server.state.store.load_authority().await.unwrap().unwrap();
    server.shutdown().await;

    // Every private key, unsealed with the KEK from its file, must not appear in the database files.
    let kek = vouch_ca::Kek::from_base64(&std::fs::read_to_string(dir.path().join("kek")).unwrap()).unwrap();
    let state: vouch_ca::AuthorityState = serde_json::from_str(&stored).unwrap();
    let mut db_bytes = Vec::new();
    for name in ["vouch.db", "vouch.db-wal"] {
        if let Ok(b) = std::fs::read(dir.path().join(name)) {
            db_bytes.extend(b);
        }
    }
    assert!(db_bytes.len() > 4096);
    use base64::Engine as _;
    assert_eq!(state.keys.len(), 3, "root, signing CA and JWT key");
    for rec in &state.keys {
        let sealed = base64::engine::general_purpose::STANDARD.decode(&rec.sealed_key).unwrap();
        let pkcs8 = kek.open(&rec.id, &sealed).unwrap();
        let scalar = p256_scalar(&pkcs8);
        assert!(
            !db_bytes.windows(32).any(|w| w == scalar.as_slice()),
            "key {} in plaintext in the database",
            rec.id
        );
        let b64 = base64::engine::general_purpose::STANDARD.encode(&pkcs8);
        assert!(!db_bytes.windows(b64.len()).any(|w| w == b64.as_bytes()));
    }
    assert!(!db_bytes.windows(token.len()).any(|w| w == token.as_bytes()), "join tokens are stored hashed");

    let server = start(dir.path()).await;
    let client = AdminClient::unix(&server.admin_socket);
    let (_, bundle_after) = client.request("GET", "/v1/bundle", None).await.unwrap();
    assert_eq!(bundle_before, bundle_after, "same CA and JWT keys after a restart");
    let v: Value = client.call("GET", "/v1/entries/keep", None).await.unwrap();
    assert_eq!(v["spiffe_id"], "spiffe://example.org/keep");

    // A wrong KEK is refused with a clear error rather than silently replacing the CA.
    server.shutdown().await;
    let (_, other_kek) = vouch_ca::Kek::generate().unwrap();
    let err = Server::start(config(dir.path(), false), Arc::new(vouch_server::SystemClock), Some(&other_kek))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("wrong key-encryption key"), "{err}");
    std::fs::remove_file(dir.path().join("kek")).unwrap();
    let err = Server::start(config(dir.path(), false), Arc::new(vouch_server::SystemClock), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("key-encryption key") && err.to_string().contains("missing"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_socket_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let err = Server::start(config(dir.path(), false), Arc::new(vouch_server::SystemClock), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("another server is listening"), "{err}");
    server.shutdown().await;
}

/// A server with TCP and `extra` configuration (node attestation sections), its admin client, and
/// an anonymous TLS client (as an agent before attestation).
async fn start_with(dir: &Path, extra: &str) -> (Server, AdminClient, AdminClient) {
    start_with_top(dir, "", extra).await
}

/// [`start_with`], with `top` among the top-level keys.
async fn start_with_top(dir: &Path, top: &str, extra: &str) -> (Server, AdminClient, AdminClient) {
    let text = format!(
        "version = 1\ntrust_domain = \"example.org\"\ndata_dir = \"{}\"\n{top}[server]\nlisten = \"127.0.0.1:0\"\n{extra}",
        dir.join("data").display()
    );
    let server =
        Server::start(Config::from_toml(&text, &no_env).unwrap(), Arc::new(vouch_server::SystemClock), None)
            .await
            .unwrap();
    let local = AdminClient::unix(&server.admin_socket);
    let (_, bundle_pem) = local.request("GET", "/v1/bundle?format=pem", None).await.unwrap();
    let td = vouch_core::TrustDomain::new("example.org").unwrap();
    let anon = AdminClient::tls(
        &server.tcp_addr.unwrap().to_string(),
        &td,
        std::str::from_utf8(&bundle_pem).unwrap(),
        None,
    )
    .unwrap();
    (server, local, anon)
}

/// A CSR (DER) for a fresh P-256 key, and the key as PKCS#8 PEM.
fn csr_and_key() -> (Der, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = rcgen::CertificateParams::default().serialize_request(&key).unwrap().der().to_vec();
    (Der(csr), key.serialize_pem())
}

/// A certificate chain of the agent API as PEM, for a TLS client.
fn chain_pem(chain: &[Der]) -> String {
    chain.iter().map(|d| vouch_ca::pem::encode("CERTIFICATE", &d.0)).collect()
}

fn spiffe_id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn entry_spec(json: Value) -> EntrySpec {
    serde_json::from_value(json).unwrap()
}

/// The error code and message of a refused call.
fn refusal<T: std::fmt::Debug>(result: Result<T, ClientError>, status: u16) -> (String, String) {
    match result {
        Err(ClientError::Api { status: s, code, message }) if s == status => (code, message),
        other => panic!("expected HTTP {status}, got {other:?}"),
    }
}

/// One entry row damaged behind the server's back (disk fault, a hand edit) must not take down every
/// listing, every agent's sync and every remote admin call: the row is skipped, and reported by id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_entry_row_is_skipped_and_reported_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.tcp_addr.unwrap().to_string();
    let local = AdminClient::unix(&server.admin_socket);
    let td = vouch_core::TrustDomain::new("example.org").unwrap();
    let (alice_chain, alice_key, bundle) = mint_files(&local, "spiffe://example.org/admin/alice").await;
    for e in [
        json!({"id": "alice", "spiffe_id": "spiffe://example.org/admin/alice", "parent_id": "spiffe://example.org/vouch/server", "selectors": ["vouch:admin:alice"], "admin": true}),
        json!({"id": "web", "spiffe_id": "spiffe://example.org/web", "parent_id": "spiffe://example.org/agent/node-1", "selectors": ["unix:uid:1000"]}),
        json!({"id": "bad", "spiffe_id": "spiffe://example.org/db", "parent_id": "spiffe://example.org/agent/node-1", "selectors": ["unix:uid:1001"]}),
    ] {
        let _: Value = local.call("POST", "/v1/entries", Some(&e)).await.unwrap();
    }
    let t = local
        .create_join_token(&JoinTokenRequest {
            agent_id: Some(spiffe_id("spiffe://example.org/agent/node-1")),
            ..Default::default()
        })
        .await
        .unwrap();

    // Behind the server's back: one row's data no longer decodes as an entry.
    let conn = rusqlite::Connection::open(dir.path().join("vouch.db")).unwrap();
    let n = conn
        .execute(
            r#"UPDATE entries SET data = '{"id":"bad","spiffe_id":"secret-looking-value' WHERE id = 'bad'"#,
            [],
        )
        .unwrap();
    assert_eq!(n, 1);
    drop(conn);

    // The listing answers with the good entries and names the damaged row, without its content.
    let list: Value = tokio::time::timeout(Duration::from_secs(30), local.call("GET", "/v1/entries", None))
        .await
        .expect("the listing answers within 30 s")
        .unwrap();
    let ids: Vec<&str> =
        list["entries"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["alice", "web"]);
    let damaged = list["damaged"].as_array().unwrap();
    assert_eq!(damaged.len(), 1, "{list}");
    assert_eq!(damaged[0]["id"], "bad");
    let reason = damaged[0]["reason"].as_str().unwrap();
    assert!(reason.contains("not valid JSON"), "{reason}");
    assert!(!list.to_string().contains("secret-looking-value"), "the content is not echoed: {list}");

    // A remote admin call (its admin check reads every entry) works.
    let alice = AdminClient::tls(&addr, &td, &bundle, Some((&alice_chain, &alice_key))).unwrap();
    let v: Value = tokio::time::timeout(Duration::from_secs(30), alice.call("GET", "/v1/entries", None))
        .await
        .expect("the remote admin call answers within 30 s")
        .unwrap();
    assert_eq!(v["entries"].as_array().unwrap().len(), 2);

    // An agent's sync still starts, with its good entry.
    let anon = AdminClient::tls(&addr, &td, &bundle, None).unwrap();
    let (csr, key) = csr_and_key();
    let svid = anon.attest_join_token(&JoinTokenAttestation { token: t.token, csr }).await.unwrap();
    let agent = AdminClient::tls(&addr, &td, &bundle, Some((&chain_pem(&svid.cert_chain), &key))).unwrap();
    let mut sync = tokio::time::timeout(Duration::from_secs(30), agent.sync())
        .await
        .expect("the sync stream answers within 30 s")
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(30), sync.next())
        .await
        .expect("the snapshot answers within 30 s")
    {
        Some(Ok(SyncLine::Snapshot { entries, .. })) => {
            let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
            assert_eq!(ids, ["web"]);
        }
        other => panic!("expected a snapshot, got {other:?}"),
    }

    // Readiness stays honest: the server serves; the damage is counted for alerting.
    assert_eq!(local.request("GET", "/readyz", None).await.unwrap().0, 200);
    let (_, metrics) = local.request("GET", "/metrics", None).await.unwrap();
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("vouch_store_damaged_rows_skipped_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_attest_sync_changes_at_once_and_get_svids_for_their_entries_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.tcp_addr.unwrap().to_string();
    let local = AdminClient::unix(&server.admin_socket);
    let td = vouch_core::TrustDomain::new("example.org").unwrap();
    let bundle_pem = local.bundle_pem().await.unwrap();
    let anon = AdminClient::tls(&addr, &td, &bundle_pem, None).unwrap();
    let node_1 = spiffe_id("spiffe://example.org/agent/node-1");

    // Join token: attest once; the second use, an unknown and an expired token are refused.
    let t = local
        .create_join_token(&JoinTokenRequest { agent_id: Some(node_1.clone()), ..Default::default() })
        .await
        .unwrap();
    let (csr, key) = csr_and_key();
    let attest = |token: &str, csr: &Der| JoinTokenAttestation { token: token.to_owned(), csr: csr.clone() };
    let svid = anon.attest_join_token(&attest(&t.token, &csr)).await.unwrap();
    assert_eq!(svid.spiffe_id, node_1);
    assert!(svid.bundle_jwks["keys"].as_array().unwrap().len() >= 2);
    for (tok, want) in
        [(t.token.as_str(), "already used"), ("0123456789abcdef0123456789abcdef", "unknown token")]
    {
        let (_, message) = refusal(anon.attest_join_token(&attest(tok, &csr)).await, 401);
        assert!(message.contains(want), "{message}");
    }
    let agent =
        AdminClient::tls(&addr, &td, &bundle_pem, Some((&chain_pem(&svid.cert_chain), &key))).unwrap();
    let agents = local.agents().await.unwrap();
    assert_eq!(agents.agents[0].attestation, "join_token");

    // The sync stream: a snapshot, then each change as it happens.
    let mut sync = agent.sync().await.unwrap();
    match sync.next().await.unwrap().unwrap() {
        SyncLine::Snapshot { entries, bundle, .. } => {
            assert!(entries.is_empty());
            assert!(bundle["keys"].as_array().is_some());
        }
        other => panic!("expected a snapshot, got {other:?}"),
    }
    let other = entry_spec(
        json!({"id": "other", "spiffe_id": "spiffe://example.org/elsewhere", "parent_id": "spiffe://example.org/agent/node-2", "selectors": ["unix:uid:1"]}),
    );
    local.entries().create(&other).await.unwrap();
    let mine = entry_spec(
        json!({"id": "web", "spiffe_id": "spiffe://example.org/web", "parent_id": "spiffe://example.org/agent/node-1", "selectors": ["unix:uid:1000"], "dns_names": ["web.internal"], "x509_svid_ttl": 600}),
    );
    let started = std::time::Instant::now();
    local.entries().create(&mine).await.unwrap();
    let upsert = sync.next().await.unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(1), "pushed, not polled");
    match upsert {
        SyncLine::Upsert { entry } => {
            assert_eq!(entry.id.as_str(), "web", "entries of other agents are not sent")
        }
        other => panic!("expected an upsert, got {other:?}"),
    }

    // Signing answers per item: our entry yes (with its DNS name and TTL); an unknown entry,
    // another agent's entry and a bad CSR fail alone, each with its reason.
    let (csr2, _) = csr_and_key();
    let item = |id: &str, csr: &Der| SignItem { entry_id: EntryId::new(id).unwrap(), csr: csr.clone() };
    let batch = SignRequest {
        requests: vec![
            item("web", &csr2),
            item("nope", &csr2),
            item("other", &csr2),
            item("web", &Der(b"not a CSR".to_vec())),
            item("web", &csr2),
        ],
    };
    let signed = agent.sign(&batch).await.unwrap();
    let outcomes: Vec<(&str, &str)> = signed
        .results
        .iter()
        .map(|r| match &r.outcome {
            SignOutcome::Svid(_) => (r.entry_id.as_str(), "svid"),
            SignOutcome::Error(e) => (r.entry_id.as_str(), e.code.as_str()),
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("web", "svid"),
            ("nope", "not_found"),
            ("other", "permission_denied"),
            ("web", "invalid_request"),
            ("web", "svid")
        ]
    );
    let SignOutcome::Error(e) = &signed.results[2].outcome else { unreachable!() };
    assert!(e.message.contains("not parented to"), "{}", e.message);
    let SignOutcome::Svid(web) = &signed.results[0].outcome else { unreachable!() };
    assert_eq!(web.spiffe_id, spiffe_id("spiffe://example.org/web"));
    let info = vouch_ca::x509::cert_info(&web.cert_chain[0].0).unwrap();
    assert_eq!(info.uris, ["spiffe://example.org/web"]);
    let life = info.not_after.duration_since(info.not_before).unwrap().as_secs();
    assert!((600..=631).contains(&life), "entry TTL used (plus back-dating): {life}");
    assert_eq!(web.cert_chain.len(), 2, "leaf and signing CA");
    let jwt = agent
        .agent_jwt(&AgentJwtRequest { entry_id: EntryId::new("web").unwrap(), audience: vec!["db".into()] })
        .await
        .unwrap();
    assert_eq!(jwt.spiffe_id, spiffe_id("spiffe://example.org/web"));
    // A workload's mistake comes back as 400 `invalid_request` with the reason (the agent answers
    // INVALID_ARGUMENT), not as "unavailable", which SPIFFE clients retry forever.
    for (audience, reason) in [
        (vec!["a".to_owned(); 33], "33 audiences given; at most 32"),
        (
            vec!["db".to_owned(), "x\ny".to_owned()],
            "audience 1 (counting from 0) contains a control character",
        ),
        (vec![], "at least one audience"),
    ] {
        let req = AgentJwtRequest { entry_id: EntryId::new("web").unwrap(), audience };
        let (code, message) = refusal(agent.agent_jwt(&req).await, 400);
        assert_eq!(code, "invalid_request", "{message}");
        assert!(message.contains(reason), "{message}");
    }
    // The admin API is not for agents, and agent calls are not for admins.
    refusal(agent.entries().list(&Default::default()).await, 403);
    refusal(local.sign(&SignRequest { requests: vec![] }).await, 401);
    refusal(agent.sign(&SignRequest { requests: vec![] }).await, 400);

    // Delete reaches the stream too; signing for the deleted entry now fails that item alone.
    local.entries().delete("web").await.unwrap();
    match sync.next().await.unwrap().unwrap() {
        SyncLine::Delete { id } => assert_eq!(id.as_str(), "web"),
        other => panic!("expected a delete, got {other:?}"),
    }
    let after = agent.sign(&SignRequest { requests: vec![item("web", &csr2)] }).await.unwrap();
    assert!(matches!(&after.results[0].outcome, SignOutcome::Error(e) if e.code == "not_found"));

    // Evicted: the SVID stops working. Banned: a new token does not help.
    local.evict_agent(&node_1).await.unwrap();
    let jwt_req = AgentJwtRequest { entry_id: EntryId::new("other").unwrap(), audience: vec!["db".into()] };
    let (_, message) = refusal(agent.agent_jwt(&jwt_req).await, 403);
    assert!(message.contains("attest again"), "{message}");
    assert_eq!(local.ban_agent(&node_1).await.unwrap().banned, node_1);
    let t = local
        .create_join_token(&JoinTokenRequest { agent_id: Some(node_1.clone()), ..Default::default() })
        .await
        .unwrap();
    let (_, message) = refusal(anon.attest_join_token(&attest(&t.token, &csr)).await, 403);
    assert!(message.contains("banned"), "{message}");
    // An expired token.
    let t = local.create_join_token(&JoinTokenRequest { ttl: Some(1), ..Default::default() }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (_, message) = refusal(anon.attest_join_token(&attest(&t.token, &csr)).await, 401);
    assert!(message.contains("expired"), "{message}");
    server.shutdown().await;
}

use vouch_ca::testing::RsaJwtIssuer as TestCluster;

/// Claims of a projected service-account token as Kubernetes issues them.
pub fn psat_claims(exp_in: i64, ns: &str, sa: &str) -> Value {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    json!({"iss": "https://kubernetes.default.svc.cluster.local", "aud": ["vouch"], "iat": now, "nbf": now, "exp": now + exp_in,
        "sub": format!("system:serviceaccount:{ns}:{sa}"),
        "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": sa, "uid": "11111111-2222-3333-4444-555555555555"},
            "pod": {"name": "vouch-agent-x7k2p", "uid": "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"},
            "node": {"name": "worker-1", "uid": "99999999-8888-7777-6666-555555555555"}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_attest_with_kubernetes_psats_and_bad_tokens_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = TestCluster::new("sa-key-1");
    let jwks = dir.path().join("prod.jwks");
    std::fs::write(&jwks, cluster.jwks()).unwrap();
    let extra = format!(
        "[[node_attestation.k8s_psat]]\ncluster = \"prod\"\njwks_file = \"{}\"\nissuer = \"https://kubernetes.default.svc.cluster.local\"\n\
         audience = \"vouch\"\nservice_accounts = [\"vouch-system:vouch-agent\"]\n",
        jwks.display()
    );
    let (server, local, anon) = start_with(dir.path(), &extra).await;
    let (csr, _) = csr_and_key();
    let attest = |cluster_name: &str, token: String| {
        let anon = anon.clone();
        let body = PsatAttestation { cluster: cluster_name.to_owned(), token, csr: csr.clone() };
        async move { anon.attest_k8s_psat(&body).await }
    };

    let ok = attest("prod", cluster.sign(&psat_claims(600, "vouch-system", "vouch-agent"))).await.unwrap();
    assert_eq!(
        ok.spiffe_id,
        spiffe_id("spiffe://example.org/agent/k8s_psat/prod/99999999-8888-7777-6666-555555555555")
    );
    let agents = local.agents().await.unwrap();
    let selectors: Vec<String> = agents.agents[0].selectors.iter().map(ToString::to_string).collect();
    for want in [
        "k8s_psat:cluster:prod",
        "k8s_psat:agent_ns:vouch-system",
        "k8s_psat:agent_sa:vouch-agent",
        "k8s_psat:agent_pod_name:vouch-agent-x7k2p",
        "k8s_psat:agent_node_name:worker-1",
    ] {
        assert!(selectors.iter().any(|s| s == want), "{want} in {selectors:?}");
    }

    let other = TestCluster::new("sa-key-1"); // same kid, another key
    let stranger = TestCluster::new("elsewhere");
    let mut wrong_aud = psat_claims(600, "vouch-system", "vouch-agent");
    wrong_aud["aud"] = json!(["kubernetes"]);
    let mut wrong_iss = psat_claims(600, "vouch-system", "vouch-agent");
    wrong_iss["iss"] = json!("https://evil.example");
    let mut no_pod = psat_claims(600, "vouch-system", "vouch-agent");
    no_pod["kubernetes.io"].as_object_mut().unwrap().remove("pod");
    let cases = [
        ("prod", cluster.sign(&psat_claims(-5, "vouch-system", "vouch-agent")), "expired"),
        ("prod", other.sign(&psat_claims(600, "vouch-system", "vouch-agent")), "signature does not verify"),
        (
            "prod",
            stranger.sign(&psat_claims(600, "vouch-system", "vouch-agent")),
            "not a key of cluster `prod`",
        ),
        ("prod", cluster.sign(&wrong_aud), "not for audience `vouch`"),
        ("prod", cluster.sign(&wrong_iss), "issuer `https://evil.example`"),
        ("prod", cluster.sign(&psat_claims(600, "default", "default")), "`default:default` may not attest"),
        ("prod", cluster.sign(&no_pod), "bound to a pod"),
        ("prod", "not.a.jwt".to_owned(), "malformed"),
        (
            "staging",
            cluster.sign(&psat_claims(600, "vouch-system", "vouch-agent")),
            "cluster `staging` is not configured",
        ),
    ];
    for (name, token, want) in cases {
        match attest(name, token).await {
            Err(ClientError::Api { status: 401, message, .. }) => {
                assert!(message.contains(want), "{want}: {message}")
            }
            other => panic!("{want}: expected 401, got {other:?}"),
        }
    }
    // A banned agent cannot come back with a fresh, valid token.
    local.ban_agent(&ok.spiffe_id).await.unwrap();
    match attest("prod", cluster.sign(&psat_claims(600, "vouch-system", "vouch-agent"))).await {
        Err(ClientError::Api { status: 403, message, .. }) => {
            assert!(message.contains("banned"), "{message}")
        }
        other => panic!("expected 403, got {other:?}"),
    }
    server.shutdown().await;

    // Configuration mistakes are errors that name the problem.
    for (extra, want) in [
        ("cluster = \"p\"\njwks_file = \"/nonexistent\"\nissuer = \"i\"\naudience = \"a\"\nservice_accounts = []", "cannot read jwks_file /nonexistent"),
        (&format!("cluster = \"p\"\njwks_file = \"{}\"\nissuer = \"i\"\naudience = \"a\"\nservice_accounts = [\"nocolon\"]", jwks.display()), "must be `namespace:name`"),
    ] {
        let text = format!("[[node_attestation.k8s_psat]]\n{extra}\n");
        let err = Config::from_toml(&text, &no_env).unwrap_err().to_string();
        assert!(err.contains(want), "{err}");
    }
}

/// PSAT keys from the issuer's OIDC discovery document: fetched on first use, and again when a token
/// names a key the cache lacks (a key rotation in the cluster needs no server restart); a document for
/// another issuer is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psat_keys_come_from_oidc_discovery_and_follow_rotation() {
    const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
    let dir = tempfile::tempdir().unwrap();
    let api = vouch_http::testing::StaticHttps::start(None).await;
    let first = TestCluster::new("key-2026-01");
    api.set(
        "/.well-known/openid-configuration",
        json!({"issuer": ISSUER, "jwks_uri": format!("{}/openid/v1/jwks", api.base_url())}).to_string(),
    );
    api.set("/openid/v1/jwks", first.jwks());
    let ca = dir.path().join("cluster-ca.pem");
    std::fs::write(&ca, &api.cert_pem).unwrap();
    let extra = format!(
        "[[node_attestation.k8s_psat]]\ncluster = \"prod\"\ndiscovery_url = \"{}\"\ndiscovery_ca = \"{}\"\n\
         issuer = \"{ISSUER}\"\naudience = \"vouch\"\nservice_accounts = [\"vouch-system:vouch-agent\"]\n",
        api.base_url(),
        ca.display()
    );
    let (server, _local, anon) = start_with(dir.path(), &extra).await;
    assert_eq!(api.requests(), 0, "nothing is fetched before the first token");
    let (csr, _) = csr_and_key();
    let attest = |token: String| {
        let anon = anon.clone();
        let body = PsatAttestation { cluster: "prod".into(), token, csr: csr.clone() };
        async move { anon.attest_k8s_psat(&body).await }
    };
    attest(first.sign(&psat_claims(600, "vouch-system", "vouch-agent"))).await.unwrap();
    assert_eq!(api.requests(), 2, "discovery document, then JWKS");
    attest(first.sign(&psat_claims(600, "vouch-system", "vouch-agent"))).await.unwrap();
    assert_eq!(api.requests(), 2, "cached");

    // The cluster rotates its key: a token with the new kid makes the server fetch again.
    let second = TestCluster::new("key-2026-02");
    api.set("/openid/v1/jwks", second.jwks());
    tokio::time::sleep(vouch_server::PSAT_MIN_REFETCH).await;
    attest(second.sign(&psat_claims(600, "vouch-system", "vouch-agent"))).await.unwrap();
    assert_eq!(api.requests(), 4);
    // A key the cluster never had is refused, and cannot make the server fetch again at once.
    let stranger = TestCluster::new("forged");
    match attest(stranger.sign(&psat_claims(600, "vouch-system", "vouch-agent"))).await {
        Err(ClientError::Api { status: 401, message, .. }) => {
            assert!(message.contains("not a key of cluster `prod`"), "{message}")
        }
        other => panic!("expected 401, got {other:?}"),
    }
    assert_eq!(api.requests(), 4, "no refetch within MIN_REFETCH");
    server.shutdown().await;

    // A discovery document of another issuer gives no keys: the token is refused, saying why.
    let dir2 = tempfile::tempdir().unwrap();
    let other = vouch_http::testing::StaticHttps::start(None).await;
    other.set(
        "/.well-known/openid-configuration",
        json!({"issuer": "https://evil.example", "jwks_uri": format!("{}/jwks", other.base_url())})
            .to_string(),
    );
    std::fs::write(dir2.path().join("ca.pem"), &other.cert_pem).unwrap();
    let extra = format!(
        "[[node_attestation.k8s_psat]]\ncluster = \"prod\"\ndiscovery_url = \"{}/.well-known/openid-configuration\"\n\
         discovery_ca = \"{}\"\nissuer = \"{ISSUER}\"\naudience = \"vouch\"\nservice_accounts = [\"vouch-system:vouch-agent\"]\n",
        other.base_url(),
        dir2.path().join("ca.pem").display()
    );
    let (server, _local, anon) = start_with(dir2.path(), &extra).await;
    let token = first.sign(&psat_claims(600, "vouch-system", "vouch-agent"));
    match anon.attest_k8s_psat(&PsatAttestation { cluster: "prod".into(), token, csr }).await {
        Err(ClientError::Api { status: 503, message, .. }) => {
            assert!(message.contains("not the configured"), "{message}")
        }
        other => panic!("expected 503, got {other:?}"),
    }
    server.shutdown().await;

    // Configuration: one key source, and https needs a CA.
    for (extra, want) in [
        ("cluster = \"p\"\nissuer = \"i\"\naudience = \"a\"\nservice_accounts = []", "set either jwks_file"),
        ("cluster = \"p\"\ndiscovery_url = \"https://k8s.example\"\nissuer = \"i\"\naudience = \"a\"\nservice_accounts = []", "set discovery_ca"),
        ("cluster = \"p\"\ndiscovery_url = \"k8s.example\"\nissuer = \"i\"\naudience = \"a\"\nservice_accounts = []", "not an http:// or https:// URL"),
    ] {
        let text = format!("[[node_attestation.k8s_psat]]\n{extra}\n");
        let err = Config::from_toml(&text, &no_env).unwrap_err().to_string();
        assert!(err.contains(want), "{err}");
    }
}

/// A CA for node certificates and a node certificate (PEM chain, key) issued by it.
fn node_ca(name: &str) -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), rcgen::Issuer::new(params, key))
}

fn node_cert(ca: &rcgen::Issuer<'static, rcgen::KeyPair>, cn: &str) -> (String, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec![format!("{cn}.nodes.example")]).unwrap();
    let uri = rcgen::string::Ia5String::try_from(format!("spiffe://nodes.example/{cn}")).unwrap();
    params.subject_alt_names.push(rcgen::SanType::URI(uri));
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    (params.signed_by(&key, ca).unwrap().pem(), key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_attest_by_proof_of_possession_of_a_node_key() {
    use base64::Engine as _;
    use rcgen::SigningKey as _;
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, ca) = node_ca("node CA");
    std::fs::write(dir.path().join("node-ca.pem"), &ca_pem).unwrap();
    let extra = format!(
        "[[node_attestation.x509pop]]\nname = \"dc1\"\nca_bundle = \"{}\"\n",
        dir.path().join("node-ca.pem").display()
    );
    let (server, local, anon) = start_with(dir.path(), &extra).await;
    let (csr, _) = csr_and_key();
    let (cert, key) = node_cert(&ca, "node-1");
    let challenge = |chain: String| {
        let anon = anon.clone();
        async move { anon.x509pop_challenge(&X509PopChallengeRequest { cert_chain_pem: chain }).await }
    };
    let sign = |key: &rcgen::KeyPair, nonce: &str| {
        base64::engine::general_purpose::STANDARD
            .encode(key.sign(&vouch_api::agent::x509pop_message(nonce)).unwrap())
    };
    let attest = |chain: &str, nonce: &str, signature: String| {
        let anon = anon.clone();
        let body = X509PopAttestation {
            cert_chain_pem: chain.to_owned(),
            nonce: nonce.to_owned(),
            signature,
            csr: csr.clone(),
        };
        async move { anon.attest_x509pop(&body).await }
    };

    let nonce = challenge(cert.clone()).await.unwrap().nonce;
    let ok = attest(&cert, &nonce, sign(&key, &nonce)).await.unwrap();
    let id = ok.spiffe_id.to_string();
    assert!(id.starts_with("spiffe://example.org/agent/x509pop/") && id.len() > 60, "{id}");
    let agents = local.agents().await.unwrap();
    let sels: Vec<String> = agents.agents[0].selectors.iter().map(ToString::to_string).collect();
    for want in [
        "x509pop:subject:cn:node-1",
        "x509pop:ca:dc1",
        "x509pop:san:dns:node-1.nodes.example",
        "x509pop:san:uri:spiffe://nodes.example/node-1",
    ] {
        assert!(sels.iter().any(|s| s == want), "{want} in {sels:?}");
    }

    fn expect_401<T: std::fmt::Debug>(r: Result<T, ClientError>, want: &str) {
        let (_, message) = refusal(r, 401);
        assert!(message.contains(want), "{want}: {message}");
    }
    // The same challenge twice.
    expect_401(attest(&cert, &nonce, sign(&key, &nonce)).await, "already used");
    // A signature by another key: no proof of possession.
    let n = challenge(cert.clone()).await.unwrap().nonce;
    let (_, thief_key) = node_cert(&ca, "node-2");
    expect_401(attest(&cert, &n, sign(&thief_key, &n)).await, "proof of possession failed");
    // A challenge answered with another certificate of the same CA.
    let (cert2, key2) = node_cert(&ca, "node-2");
    let n = challenge(cert.clone()).await.unwrap().nonce;
    expect_401(attest(&cert2, &n, sign(&key2, &n)).await, "issued for another certificate");
    // A certificate from an unknown CA does not even get a challenge.
    let (_, rogue_ca) = node_ca("rogue CA");
    let (rogue, _) = node_cert(&rogue_ca, "node-1");
    expect_401(challenge(rogue).await, "does not chain");
    server.shutdown().await;
}

/// Outstanding x509pop challenges live in the store, bounded in number: past the bound a new one is
/// refused with 429 and the reason (nothing stored); an answer after the expiry is refused and the
/// challenge is gone; expired challenges are purged to make room. The store holds no nonce.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x509pop_challenges_are_bounded_and_expire_on_the_server_clock() {
    use base64::Engine as _;
    use rcgen::SigningKey as _;
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, ca) = node_ca("node CA");
    std::fs::write(dir.path().join("node-ca.pem"), &ca_pem).unwrap();
    let text = format!(
        "version = 1\ntrust_domain = \"example.org\"\ndata_dir = \"{0}\"\n[[node_attestation.x509pop]]\nname = \"dc1\"\nca_bundle = \"{1}\"\n[server]\nlisten = \"off\"\n",
        dir.path().display(),
        dir.path().join("node-ca.pem").display()
    );
    let db = dir.path().join("vouch.db");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&db).unwrap());
    let (kek, _) = vouch_ca::Kek::generate().unwrap();
    let clock = ManualClock::new();
    let state = AppState::open(Config::from_toml(&text, &no_env).unwrap(), store, kek, clock.clone(), 4242)
        .await
        .unwrap();
    let (cert, key) = node_cert(&ca, "node-1");
    let challenge_body =
        serde_json::to_string(&X509PopChallengeRequest { cert_chain_pem: cert.clone() }).unwrap();
    let challenge = || {
        call(&state, Caller::Anonymous, "POST", "/v1/agent/attest/x509pop/challenge", Some(&challenge_body))
    };
    let answer = |nonce: &str| {
        let signature = base64::engine::general_purpose::STANDARD
            .encode(key.sign(&vouch_api::agent::x509pop_message(nonce)).unwrap());
        let body = X509PopAttestation {
            cert_chain_pem: cert.clone(),
            nonce: nonce.to_owned(),
            signature,
            csr: csr_and_key().0,
        };
        serde_json::to_string(&body).unwrap()
    };
    let outstanding = || {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.query_row("SELECT COUNT(*) FROM x509pop_challenges", [], |r| r.get::<_, i64>(0)).unwrap()
    };

    // Other replicas' challenges fill the table up to one below the bound.
    let expires = vouch_core::ttl::unix_seconds(clock.now() + vouch_server::X509POP_CHALLENGE_TTL);
    let fill = i64::from(vouch_server::X509POP_MAX_CHALLENGES) - 1;
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
             INSERT INTO x509pop_challenges (nonce_hash, fingerprint, expires_at) SELECT 'other-' || i, 'fp', ?2 FROM n",
            rusqlite::params![fill, expires],
        )
        .unwrap();
    let (status, v) = challenge().await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let nonce = v["nonce"].as_str().unwrap().to_owned();
    let (status, v) = challenge().await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("challenges are outstanding") && message.contains("retry"), "{message}");
    assert_eq!(outstanding(), fill + 1, "a refused challenge is not stored");
    // The store has the nonce's hash, never the nonce.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let hashes: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM x509pop_challenges WHERE nonce_hash = ?1",
            [vouch_ca::keys::sha256_hex(nonce.as_bytes())],
            |r| r.get(0),
        )
        .unwrap();
    let plain: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM x509pop_challenges WHERE nonce_hash = ?1 OR fingerprint = ?1",
            [&nonce],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!((hashes, plain), (1, 0));
    drop(conn);

    // Answered too late: refused as expired, and gone (a second try is unknown).
    clock.advance(vouch_server::X509POP_CHALLENGE_TTL + Duration::from_secs(1));
    let path = "/v1/agent/attest/x509pop";
    let (status, v) = call(&state, Caller::Anonymous, "POST", path, Some(&answer(&nonce))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("expired"), "{v}");
    let (status, v) = call(&state, Caller::Anonymous, "POST", path, Some(&answer(&nonce))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("already used"), "{v}");
    // The expired challenges are purged when the next one is asked for; it is answered in time.
    let (status, v) = challenge().await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(outstanding(), 1);
    let nonce = v["nonce"].as_str().unwrap();
    let (status, v) = call(&state, Caller::Anonymous, "POST", path, Some(&answer(nonce))).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(outstanding(), 0);
}

/// The caller an agent is on the mTLS listener when it presents `svid`.
fn agent_caller(svid: &vouch_api::agent::AgentSvid) -> Caller {
    let (id, serial) = vouch_tls::svid_of(&svid.cert_chain[0].0).unwrap();
    assert_eq!(id, svid.spiffe_id);
    Caller::Svid { id, serial }
}

/// Attests `agent` through the app with a fresh join token; the SVID.
async fn attest_in_app(state: &Arc<AppState>, agent: &str) -> Result<vouch_api::agent::AgentSvid, Value> {
    attest_in_app_labelled(state, agent, json!({})).await
}

/// [`attest_in_app`] with a join token carrying `labels` (node selectors
/// `join_token:label:<key>:<value>`).
async fn attest_in_app_labelled(
    state: &Arc<AppState>,
    agent: &str,
    labels: Value,
) -> Result<vouch_api::agent::AgentSvid, Value> {
    let token = json!({"agent_id": agent, "labels": labels}).to_string();
    let (s, t) = call(state, ROOT, "POST", "/v1/join-tokens", Some(&token)).await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    let (csr, _) = csr_and_key();
    let body =
        serde_json::to_string(&JoinTokenAttestation { token: t["token"].as_str().unwrap().into(), csr })
            .unwrap();
    match call(state, Caller::Anonymous, "POST", "/v1/agent/attest/join-token", Some(&body)).await {
        (StatusCode::OK, v) => Ok(serde_json::from_value(v).unwrap()),
        (_, v) => Err(v),
    }
}

/// Renews through the app as the holder of `svid`.
async fn renew_in_app(
    state: &Arc<AppState>,
    svid: &vouch_api::agent::AgentSvid,
) -> Result<vouch_api::agent::AgentSvid, Value> {
    let (csr, _) = csr_and_key();
    let body = serde_json::to_string(&vouch_api::agent::RenewRequest { csr }).unwrap();
    match call(state, agent_caller(svid), "POST", "/v1/agent/renew", Some(&body)).await {
        (StatusCode::OK, v) => Ok(serde_json::from_value(v).unwrap()),
        (_, v) => Err(v),
    }
}

/// Whether the agent API accepts `svid` (an empty signing batch: 400 once the caller is accepted).
async fn svid_works(state: &Arc<AppState>, svid: &vouch_api::agent::AgentSvid) -> bool {
    let (s, v) = call(state, agent_caller(svid), "POST", "/v1/agent/sign", Some(r#"{"requests":[]}"#)).await;
    match s {
        StatusCode::BAD_REQUEST => true,
        StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => false,
        other => panic!("unexpected answer {other}: {v}"),
    }
}

/// A ban or an eviction that the admin was told is done holds, whatever the agent does at the same
/// moment: a renewal or an attestation racing with it never writes back the record it read before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ban_and_evict_win_races_with_renewal_and_attestation() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("race.db")).unwrap());
    let (kek, _) = vouch_ca::Kek::generate().unwrap();
    let state =
        AppState::open(config(dir.path(), false), store, kek, Arc::new(vouch_server::SystemClock), 4242)
            .await
            .unwrap();
    let mut lost = Vec::new();
    for trial in 0..48 {
        let id = format!("spiffe://example.org/agent/race-{trial}");
        let svid = attest_in_app(&state, &id).await.unwrap();
        let (ban, racer_attests) = (trial % 2 == 0, trial % 4 >= 2);
        let admin = {
            let (state, id) = (state.clone(), id.clone());
            tokio::spawn(async move {
                let path = if ban { "/v1/agents/ban" } else { "/v1/agents/evict" };
                call(&state, ROOT, "POST", path, Some(&json!({"spiffe_id": id}).to_string())).await
            })
        };
        let racer = {
            let (state, id, svid) = (state.clone(), id.clone(), svid.clone());
            tokio::spawn(async move {
                if racer_attests {
                    attest_in_app(&state, &id).await
                } else {
                    renew_in_app(&state, &svid).await
                }
            })
        };
        let (status, answer) = tokio::time::timeout(Duration::from_secs(10), admin).await.unwrap().unwrap();
        assert_eq!(status, StatusCode::OK, "{answer}");
        let raced = tokio::time::timeout(Duration::from_secs(10), racer).await.unwrap().unwrap();
        let what = format!(
            "trial {trial}: {} vs {}",
            if ban { "ban" } else { "evict" },
            if racer_attests { "attest" } else { "renew" }
        );
        // The SVID held before the admin's decision never works after it.
        if svid_works(&state, &svid).await {
            lost.push(format!("{what}: the SVID from before still works"));
        }
        let (_, agents) = call(&state, ROOT, "GET", "/v1/agents", None).await;
        let record =
            agents["agents"].as_array().unwrap().iter().find(|a| a["spiffe_id"] == id.as_str()).cloned();
        if ban {
            // Banned stays banned, and no SVID the racer obtained works.
            if record.as_ref().is_none_or(|r| r["banned"] != true) {
                lost.push(format!("{what}: the ban was lost: {record:?}"));
            }
            if let Ok(new) = &raced {
                if svid_works(&state, new).await {
                    lost.push(format!("{what}: the racer's new SVID works for a banned agent"));
                }
            }
        } else if let (false, Ok(new)) = (racer_attests, &raced) {
            // A renewal never brings an evicted agent back.
            if record.is_some() || svid_works(&state, new).await {
                lost.push(format!("{what}: the eviction was undone by the renewal: {record:?}"));
            }
        }
    }
    assert!(lost.is_empty(), "{} of 48 trials lost the admin's decision:\n{}", lost.len(), lost.join("\n"));
}

/// An attested agent's TLS client, over a real server: its SVID and client.
async fn attested_agent(
    server: &Server,
    local: &AdminClient,
    id: &SpiffeId,
) -> (vouch_api::agent::AgentSvid, String, AdminClient) {
    let addr = server.tcp_addr.unwrap().to_string();
    let td = vouch_core::TrustDomain::new("example.org").unwrap();
    let bundle_pem = local.bundle_pem().await.unwrap();
    let anon = AdminClient::tls(&addr, &td, &bundle_pem, None).unwrap();
    let t = local
        .create_join_token(&JoinTokenRequest { agent_id: Some(id.clone()), ..Default::default() })
        .await
        .unwrap();
    let (csr, key) = csr_and_key();
    let svid = anon.attest_join_token(&JoinTokenAttestation { token: t.token, csr }).await.unwrap();
    let client =
        AdminClient::tls(&addr, &td, &bundle_pem, Some((&chain_pem(&svid.cert_chain), &key))).unwrap();
    (svid, key, client)
}

/// Ban or evict ends the agent's open sync stream at once with a typed reason; nothing created
/// afterwards reaches it, and reconnecting is refused with a code that says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ban_and_evict_close_the_agents_sync_stream() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let local = AdminClient::unix(&server.admin_socket);
    let wait = Duration::from_secs(5);
    for (n, ban) in [(1, true), (2, false)] {
        let id = spiffe_id(&format!("spiffe://example.org/agent/closing-{n}"));
        let (_, _, agent) = attested_agent(&server, &local, &id).await;
        let mut sync = agent.sync().await.unwrap();
        let first = tokio::time::timeout(wait, sync.next()).await.unwrap().unwrap().unwrap();
        assert!(matches!(first, SyncLine::Snapshot { .. }), "{first:?}");
        if ban {
            local.ban_agent(&id).await.unwrap();
        } else {
            local.evict_agent(&id).await.unwrap();
        }
        // The stream ends within a bounded time: a closing line with the reason, then the end.
        let mut lines = Vec::new();
        let ended = tokio::time::timeout(wait, async {
            while let Some(line) = sync.next().await {
                lines.push(line);
            }
        })
        .await;
        assert!(
            ended.is_ok(),
            "the stream of a {} agent stayed open: {lines:?}",
            if ban { "banned" } else { "evicted" }
        );
        let want =
            if ban { vouch_api::agent::CloseReason::Banned } else { vouch_api::agent::CloseReason::Evicted };
        match lines.as_slice() {
            [Ok(SyncLine::Closed { reason, message })] => {
                assert_eq!(*reason, want);
                assert!(message.contains(&id.to_string()), "{message}");
            }
            other => panic!("expected one closing line, got {other:?}"),
        }
        // A new entry for the agent reaches nobody; reconnecting is refused with a typed code.
        local
            .entries()
            .create(&entry_spec(json!({"spiffe_id": format!("spiffe://example.org/after-{n}"), "parent_id": id.to_string(), "selectors": ["unix:uid:1"]})))
            .await
            .unwrap();
        let refused = tokio::time::timeout(wait, agent.sync()).await.unwrap().map(|_| ());
        let (code, message) = refusal(refused, 403);
        if ban {
            assert_eq!(code, "agent_banned", "{message}");
        } else {
            assert_eq!(code, "agent_not_attested", "{message}");
            assert!(message.contains("attest again"), "{message}");
        }
    }
    server.shutdown().await;
}

/// The server's ID, the agents' namespace and admin IDs cannot be had through an entry, a join
/// token or the minting API; an agent is known by its current SVID, not by its SPIFFE ID alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_ids_are_refused_and_agents_are_known_by_their_current_svid() {
    let state = state_in_memory(ManualClock::new()).await;
    let entry = |id: &str| {
        json!({"spiffe_id": id, "parent_id": "spiffe://example.org/agent/a", "selectors": ["unix:uid:1"]})
            .to_string()
    };
    let before = entry_count(&state).await;
    for id in [
        "spiffe://example.org/vouch/server",
        "spiffe://example.org/agent/node-1",
        "spiffe://example.org/agent/k8s_psat/c/u",
    ] {
        for (method, path, body) in [
            ("POST", "/v1/entries".to_owned(), entry(id)),
            ("POST", "/v1/entries/batch".to_owned(), format!(r#"{{"entries":[{}]}}"#, entry(id))),
            ("POST", "/v1/svids/x509".to_owned(), json!({"spiffe_id": id}).to_string()),
            ("POST", "/v1/svids/jwt".to_owned(), json!({"spiffe_id": id, "audience": ["x"]}).to_string()),
        ] {
            let (s, v) = call(&state, ROOT, method, &path, Some(&body)).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{method} {path} {id}: {v}");
            assert_eq!(v["error"]["code"], "reserved_id", "{v}");
            assert!(v["error"]["message"].as_str().unwrap().contains("reserved"), "{v}");
        }
    }
    // Updating an entry to a reserved ID, by PUT or PATCH, changes nothing.
    let (s, e) = call(&state, ROOT, "POST", "/v1/entries", Some(&entry("spiffe://example.org/web"))).await;
    assert_eq!(s, StatusCode::CREATED);
    let path = format!("/v1/entries/{}", e["id"].as_str().unwrap());
    let (s, v) = call(&state, ROOT, "PUT", &path, Some(&entry("spiffe://example.org/vouch/server"))).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("reserved_id")), "{v}");
    let patch = json!({"expected_revision": e["revision"], "spiffe_id": "spiffe://example.org/agent/node-1"})
        .to_string();
    let (s, v) = call(&state, ROOT, "PATCH", &path, Some(&patch)).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("reserved_id")), "{v}");
    let (_, now) = call(&state, ROOT, "GET", &path, None).await;
    assert_eq!(now, e, "a refused update changes nothing");
    assert_eq!(entry_count(&state).await, before + 1);
    // Join tokens give IDs in the agents' namespace only: not the server's, not an admin's.
    let (s, _) = call(&state, ROOT, "POST", "/v1/entries", Some(&json!({"spiffe_id": "spiffe://example.org/admin/ops", "parent_id": "spiffe://example.org/vouch/server", "selectors": ["vouch:admin:ops"], "admin": true}).to_string())).await;
    assert_eq!(s, StatusCode::CREATED);
    for id in
        ["spiffe://example.org/vouch/server", "spiffe://example.org/admin/ops", "spiffe://example.org/web"]
    {
        let (s, v) =
            call(&state, ROOT, "POST", "/v1/join-tokens", Some(&json!({"agent_id": id}).to_string())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{id}: {v}");
        assert_eq!(v["error"]["code"], "reserved_id", "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("/agent/"), "{v}");
    }

    // The normal path: attest, renew, use the new SVID.
    let old = attest_in_app(&state, "spiffe://example.org/agent/node-1").await.unwrap();
    assert!(svid_works(&state, &old).await);
    let new = renew_in_app(&state, &old).await.unwrap();
    assert!(svid_works(&state, &new).await);
    // Once the agent uses its new SVID, a copy of the old one is refused, though it has not expired.
    let (s, v) = call(&state, agent_caller(&old), "POST", "/v1/agent/sign", Some(r#"{"requests":[]}"#)).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("stale_svid")), "{v}");
    assert!(renew_in_app(&state, &old).await.is_err(), "a stale SVID cannot renew");
    assert!(svid_works(&state, &new).await, "the current SVID keeps working");
}

/// Log lines of this test binary, for checks of what they must (not) hold. A process has one global
/// subscriber, so the tests that look at logs share it, and each looks for what only it causes.
#[derive(Clone, Default)]
struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLogs {
    fn install() -> Self {
        static LOGS: std::sync::OnceLock<CapturedLogs> = std::sync::OnceLock::new();
        LOGS.get_or_init(|| {
            let logs = Self::default();
            let writer = logs.clone();
            let subscriber =
                tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
            tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
            logs
        })
        .clone()
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// The server on a real PostgreSQL (a private cluster, over TCP with a password): entries, a join
/// token consumed by an agent, an SVID signed for the agent's entry, all kept across a restart;
/// the password shows in no log line and no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_postgresql_keeps_entries_and_issues_svids() {
    let logs = CapturedLogs::install();
    let cluster = vouch_store::test_postgres::PgCluster::start();
    cluster.create_database("vouch").await;
    let url = cluster.tcp_url("vouch");
    let dir = tempfile::tempdir().unwrap();
    let store = format!("store = \"{url}\"\n");
    let (server, local, anon) = start_with_top(dir.path(), &store, "").await;
    assert!(!dir.path().join("data/vouch.db").exists(), "no SQLite file");
    let addr = server.tcp_addr.unwrap().to_string();
    let td = vouch_core::TrustDomain::new("example.org").unwrap();
    let bundle_pem = local.bundle_pem().await.unwrap();

    let node_1 = spiffe_id("spiffe://example.org/agent/node-1");
    let web = entry_spec(
        json!({"id": "web", "spiffe_id": "spiffe://example.org/web", "parent_id": "spiffe://example.org/agent/node-1", "selectors": ["unix:uid:1000"]}),
    );
    local.entries().create(&web).await.unwrap();
    let t = local
        .create_join_token(&JoinTokenRequest { agent_id: Some(node_1.clone()), ..Default::default() })
        .await
        .unwrap();
    let (csr, key) = csr_and_key();
    let attest = JoinTokenAttestation { token: t.token.clone(), csr: csr.clone() };
    let svid = anon.attest_join_token(&attest).await.unwrap();
    assert_eq!(svid.spiffe_id, node_1);
    let (_, message) = refusal(anon.attest_join_token(&attest).await, 401);
    assert!(message.contains("already used"), "{message}");
    let agent =
        AdminClient::tls(&addr, &td, &bundle_pem, Some((&chain_pem(&svid.cert_chain), &key))).unwrap();
    let (csr, _) = csr_and_key();
    let signed = agent
        .sign(&SignRequest { requests: vec![SignItem { entry_id: EntryId::new("web").unwrap(), csr }] })
        .await
        .unwrap();
    match &signed.results[0].outcome {
        SignOutcome::Svid(s) => assert_eq!(s.spiffe_id.to_string(), "spiffe://example.org/web"),
        SignOutcome::Error(e) => panic!("no SVID: {e:?}"),
    }
    assert_eq!(local.agents().await.unwrap().agents.len(), 1);
    server.shutdown().await;

    // A restart finds everything in PostgreSQL.
    let (server, local, _) = start_with_top(dir.path(), &store, "").await;
    assert_eq!(local.bundle_pem().await.unwrap(), bundle_pem, "same CA after a restart");
    let v: Value = local.call("GET", "/v1/entries/web", None).await.unwrap();
    assert_eq!(v["spiffe_id"], "spiffe://example.org/web");
    server.shutdown().await;

    // A wrong password: the start fails saying where and why, without the password.
    let secret = cluster.password().to_owned();
    let wrong = url.replace(&secret, "hunter2-wrong");
    let text =
        format!("version = 1\ndata_dir = \"{}\"\nstore = \"{wrong}\"\n", dir.path().join("data").display());
    let err =
        Server::start(Config::from_toml(&text, &no_env).unwrap(), Arc::new(vouch_server::SystemClock), None)
            .await
            .unwrap_err()
            .to_string();
    assert!(
        err.contains("password authentication failed") && err.contains("postgres://postgres:***@"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
    // A TOML error quotes the line it is on; a store URL there is shown without its password.
    let err = Config::from_toml(&format!("stroe = \"{url}\""), &no_env).unwrap_err().to_string();
    assert!(err.contains("unknown field `stroe`") && err.contains("postgresql://postgres:***@"), "{err}");
    assert!(!err.contains(&secret), "{err}");

    let logs = logs.text();
    assert!(
        logs.contains("store=postgres://postgres:***@127.0.0.1:"),
        "the ready line names the store: {logs}"
    );
    assert!(!logs.contains(&secret), "the password is in the logs:\n{logs}");
}

/// A metric's value in the server's exposition (0 when absent).
async fn metric(state: &Arc<AppState>, series: &str) -> u64 {
    let (_, text) = call(state, ROOT, "GET", "/metrics", None).await;
    let text = text.as_str().unwrap().to_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// An app on an in-memory store with extra configuration (`[limits]`, say).
async fn state_with(extra: &str) -> Arc<AppState> {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "version = 1\ntrust_domain = \"example.org\"\ndata_dir = \"{}\"\n{extra}",
        dir.path().display()
    );
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
    let (kek, _) = vouch_ca::Kek::generate().unwrap();
    let config = Config::from_toml(&text, &no_env).unwrap();
    AppState::open(config, store, kek, Arc::new(vouch_server::SystemClock), 4242).await.unwrap()
}

/// The IdP-DDoS case (issue 9 §3): one client flooding node attestation with bogus tokens gets 429
/// with Retry-After after its burst, before anything of its request is read; the refusals that do
/// reach the handlers write nothing to the database; the log gets a bounded number of lines (the
/// refusals are counted in metrics instead); and an agent attesting from another address is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bogus_attestations_is_refused_cheaply_and_logged_boundedly() {
    let state = state_in_memory(Arc::new(vouch_server::SystemClock)).await;
    let (csr, _) = csr_and_key();
    let bogus = |i: usize| {
        serde_json::to_string(&JoinTokenAttestation { token: format!("bogus-{i}"), csr: csr.clone() })
            .unwrap()
    };
    let writes_before = state.store.write_transactions();
    let started = std::time::Instant::now();
    let (mut limited, mut refused) = (0, 0);
    for i in 0..2_000 {
        let (status, headers, v) = call_from(
            &state,
            Caller::Anonymous,
            Some("10.0.0.1"),
            "POST",
            "/v1/agent/attest/join-token",
            Some(&bogus(i)),
        )
        .await;
        match status {
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(v["error"]["code"], "rate_limited", "{v}");
                let wait: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
                assert!((1..=2).contains(&wait), "Retry-After {wait}");
                limited += 1;
            }
            StatusCode::UNAUTHORIZED => refused += 1,
            other => panic!("unexpected {other}: {v}"),
        }
    }
    // The default burst (20) reached the handler, plus what refilled (10/s) during the flood.
    let allowed = 20 + 10 * (started.elapsed().as_secs() as usize + 1);
    assert!(refused >= 20 && refused <= allowed, "{refused} refusals reached the handler");
    assert_eq!(limited + refused, 2_000);
    // The flooding address stays limited. A token comes back every 100 ms, so on a loaded machine
    // a stall before the next call can let one through: of 20 more calls at once, most are refused.
    let mut again = 0;
    for _ in 0..20 {
        let (s, _, _) = call_from(
            &state,
            Caller::Anonymous,
            Some("10.0.0.1"),
            "POST",
            "/v1/agent/attest/join-token",
            Some(&bogus(0)),
        )
        .await;
        if s == StatusCode::TOO_MANY_REQUESTS {
            again += 1;
        }
    }
    assert!(again >= 10, "the flooding address stays limited: {again} of 20 refused");
    limited += again;
    refused += 20 - again;
    // Many sources, one bogus token each: all reach the store, none writes to it.
    for i in 0..300 {
        let peer = format!("10.1.{}.{}", i / 250, i % 250);
        let (status, _, v) = call_from(
            &state,
            Caller::Anonymous,
            Some(&peer),
            "POST",
            "/v1/agent/attest/join-token",
            Some(&bogus(i)),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
    }
    assert_eq!(
        state.store.write_transactions(),
        writes_before,
        "bogus tokens must not write to the database"
    );

    // A legitimate agent on another address attests while the flooder is still limited.
    let (s, t) = call(
        &state,
        ROOT,
        "POST",
        "/v1/join-tokens",
        Some(r#"{"agent_id": "spiffe://example.org/agent/good"}"#),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    let good = serde_json::to_string(&JoinTokenAttestation {
        token: t["token"].as_str().unwrap().into(),
        csr: csr.clone(),
    })
    .unwrap();
    let (s, _, v) = call_from(
        &state,
        Caller::Anonymous,
        Some("10.0.0.2"),
        "POST",
        "/v1/agent/attest/join-token",
        Some(&good),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["spiffe_id"], "spiffe://example.org/agent/good");

    // Every refusal is counted; log lines are one per reason per interval (10 s), not one each.
    assert_eq!(metric(&state, "vouch_rate_limited_total{limit=\"attest\"}").await, limited as u64);
    assert_eq!(metric(&state, "vouch_attestations_refused_total").await, refused as u64 + 300);
    let suppressed = metric(&state, "vouch_log_lines_suppressed_total").await;
    let lines = (limited as u64 + refused as u64 + 300) - suppressed;
    let intervals = started.elapsed().as_secs() / 10 + 1;
    assert!(lines <= 2 * intervals, "{lines} log lines for {} refusals", limited + refused + 300);
}

/// Per agent limits on signing and JWT minting: over them, 429 `rate_limited` with Retry-After;
/// another agent is not affected. Node attestation over the local admin socket has no peer address
/// and is not limited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_and_jwt_minting_are_limited_per_agent() {
    let state =
        state_with("[limits]\nsign_per_second = 1\nsign_burst = 500\njwt_per_second = 1\njwt_burst = 2\n")
            .await;
    let mut svids = Vec::new();
    for name in ["busy", "calm"] {
        let id = format!("spiffe://example.org/agent/{name}");
        let svid = attest_in_app(&state, &id).await.unwrap();
        let entry = json!({"id": name, "spiffe_id": format!("spiffe://example.org/w/{name}"), "parent_id": id, "selectors": ["unix:uid:1"]});
        let (s, v) = call(&state, ROOT, "POST", "/v1/entries", Some(&entry.to_string())).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        svids.push(svid);
    }
    let (csr, _) = csr_and_key();
    let batch = |n: usize, entry: &str| {
        let requests =
            (0..n).map(|_| SignItem { entry_id: EntryId::new(entry).unwrap(), csr: csr.clone() }).collect();
        serde_json::to_string(&SignRequest { requests }).unwrap()
    };
    let busy = agent_caller(&svids[0]);
    let (s, _, v) =
        call_from(&state, busy.clone(), None, "POST", "/v1/agent/sign", Some(&batch(500, "busy"))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["results"].as_array().unwrap().len(), 500);
    let (s, headers, v) =
        call_from(&state, busy.clone(), None, "POST", "/v1/agent/sign", Some(&batch(1, "busy"))).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited")),
        "{v}"
    );
    assert_eq!(headers["retry-after"], "1");
    assert!(v["error"]["message"].as_str().unwrap().contains("spiffe://example.org/agent/busy"), "{v}");
    let calm = agent_caller(&svids[1]);
    let (s, _, v) =
        call_from(&state, calm.clone(), None, "POST", "/v1/agent/sign", Some(&batch(1, "calm"))).await;
    assert_eq!(s, StatusCode::OK, "another agent has its own budget: {v}");

    let jwt = |entry: &str| {
        serde_json::to_string(&AgentJwtRequest {
            entry_id: EntryId::new(entry).unwrap(),
            audience: vec!["a".into()],
        })
        .unwrap()
    };
    for _ in 0..2 {
        let (s, _, v) =
            call_from(&state, busy.clone(), None, "POST", "/v1/agent/jwt", Some(&jwt("busy"))).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let (s, headers, v) =
        call_from(&state, busy.clone(), None, "POST", "/v1/agent/jwt", Some(&jwt("busy"))).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(metric(&state, "vouch_rate_limited_total{limit=\"sign\"}").await, 1);
    assert_eq!(metric(&state, "vouch_rate_limited_total{limit=\"jwt\"}").await, 1);
    // The budget refills at its rate.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (s, _, v) = call_from(&state, busy, None, "POST", "/v1/agent/jwt", Some(&jwt("busy"))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

/// Over the real mTLS listener: the flooding client sees the typed error with its wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_a_rate_limited_attestation_is_a_typed_client_error() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _local, anon) =
        start_with(dir.path(), "[limits]\nattest_per_second = 0.5\nattest_burst = 3\n").await;
    let (csr, _) = csr_and_key();
    let bogus = JoinTokenAttestation { token: "bogus".into(), csr };
    let attempt = || anon.attest_join_token(&bogus);
    for _ in 0..3 {
        refusal(attempt().await, 401);
    }
    match attempt().await {
        Err(ClientError::RateLimited { retry_after, message }) => {
            assert_eq!(retry_after, Duration::from_secs(2), "{message}");
            assert!(message.contains("127.0.0.1"), "{message}");
        }
        other => panic!("expected a rate-limited refusal, got {other:?}"),
    }
    server.shutdown().await;
}

/// A store that pauses the first entry read of one agent (what the sign and JWT handlers do after
/// the auth layer has admitted the agent, before signing) until the test lets it go, so a ban or
/// an eviction can be committed, and answered, exactly inside a request.
struct PausingStore {
    inner: SqliteStore,
    pause: Mutex<Option<Pause>>,
}

/// An armed pause: the agent, "reached" to the test, "go" from the test.
type Pause = (SpiffeId, tokio::sync::oneshot::Sender<()>, tokio::sync::oneshot::Receiver<()>);

impl PausingStore {
    /// Arms the pause for `agent`: the returned receiver fires when a request reaches it, the
    /// sender lets the request go on.
    fn arm(
        &self,
        agent: &SpiffeId,
    ) -> (tokio::sync::oneshot::Receiver<()>, tokio::sync::oneshot::Sender<()>) {
        let (reached_tx, reached_rx) = tokio::sync::oneshot::channel();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel();
        *self.pause.lock().unwrap() = Some((agent.clone(), reached_tx, go_rx));
        (reached_rx, go_tx)
    }

    async fn maybe_pause(&self, agent: Option<&SpiffeId>) {
        let armed = {
            let mut pause = self.pause.lock().unwrap();
            match (&*pause, agent) {
                (Some((a, _, _)), Some(b)) if a == b => pause.take(),
                _ => None,
            }
        };
        if let Some((_, reached, go)) = armed {
            let _ = reached.send(());
            let _ = go.await;
        }
    }
}

#[async_trait::async_trait]
impl Store for PausingStore {
    async fn create_entries(&self, entries: &[vouch_core::Entry]) -> Result<(), vouch_store::StoreError> {
        self.inner.create_entries(entries).await
    }
    async fn get_entry(&self, id: &EntryId) -> Result<Option<vouch_core::Entry>, vouch_store::StoreError> {
        let entry = self.inner.get_entry(id).await?;
        self.maybe_pause(entry.as_ref().map(|e| &e.parent_id)).await;
        Ok(entry)
    }
    async fn scan_entries(
        &self,
        filter: &vouch_store::EntryFilter,
    ) -> Result<vouch_store::EntryListing, vouch_store::StoreError> {
        self.maybe_pause(filter.parent_id.as_ref()).await;
        self.inner.scan_entries(filter).await
    }
    fn damaged_rows_skipped(&self) -> u64 {
        self.inner.damaged_rows_skipped()
    }
    fn write_transactions(&self) -> u64 {
        self.inner.write_transactions()
    }
    async fn update_entry(&self, entry: &vouch_core::Entry) -> Result<(), vouch_store::StoreError> {
        self.inner.update_entry(entry).await
    }
    async fn delete_entry(&self, id: &EntryId) -> Result<vouch_core::Entry, vouch_store::StoreError> {
        self.inner.delete_entry(id).await
    }
    async fn create_join_token(
        &self,
        t: &vouch_store::JoinTokenRecord,
    ) -> Result<(), vouch_store::StoreError> {
        self.inner.create_join_token(t).await
    }
    async fn consume_join_token(
        &self,
        hash: &str,
        now: i64,
    ) -> Result<vouch_store::TokenUse, vouch_store::StoreError> {
        self.inner.consume_join_token(hash, now).await
    }
    async fn apply_agent_rule(
        &self,
        id: &SpiffeId,
        rule: vouch_store::AgentRule,
    ) -> Result<vouch_store::AgentRecord, vouch_store::StoreError> {
        self.inner.apply_agent_rule(id, rule).await
    }
    async fn attest_agent(
        &self,
        a: &vouch_store::AgentRecord,
    ) -> Result<vouch_store::AgentRecord, vouch_store::StoreError> {
        self.inner.attest_agent(a).await
    }
    async fn renew_agent(
        &self,
        r: &vouch_store::AgentRenewal,
    ) -> Result<vouch_store::AgentRecord, vouch_store::StoreError> {
        self.inner.renew_agent(r).await
    }
    async fn authenticate_agent(
        &self,
        id: &SpiffeId,
        serial: &str,
    ) -> Result<vouch_store::AgentRecord, vouch_store::StoreError> {
        self.inner.authenticate_agent(id, serial).await
    }
    async fn ban_agent(
        &self,
        id: &SpiffeId,
        now: i64,
    ) -> Result<vouch_store::AgentRecord, vouch_store::StoreError> {
        self.inner.ban_agent(id, now).await
    }
    async fn get_agent(
        &self,
        id: &SpiffeId,
    ) -> Result<Option<vouch_store::AgentRecord>, vouch_store::StoreError> {
        self.inner.get_agent(id).await
    }
    async fn list_agents(&self) -> Result<Vec<vouch_store::AgentRecord>, vouch_store::StoreError> {
        self.inner.list_agents().await
    }
    async fn delete_agent(&self, id: &SpiffeId) -> Result<bool, vouch_store::StoreError> {
        self.inner.delete_agent(id).await
    }
    async fn create_group(&self, g: &vouch_core::NodeGroup) -> Result<(), vouch_store::StoreError> {
        self.inner.create_group(g).await
    }
    async fn get_group(
        &self,
        id: &SpiffeId,
    ) -> Result<Option<vouch_core::NodeGroup>, vouch_store::StoreError> {
        self.inner.get_group(id).await
    }
    async fn list_groups(&self) -> Result<Vec<vouch_core::NodeGroup>, vouch_store::StoreError> {
        self.inner.list_groups().await
    }
    async fn delete_group(&self, id: &SpiffeId) -> Result<vouch_core::NodeGroup, vouch_store::StoreError> {
        self.inner.delete_group(id).await
    }
    async fn create_federation(
        &self,
        row: &vouch_store::FederationRow,
    ) -> Result<(), vouch_store::StoreError> {
        self.inner.create_federation(row).await
    }
    async fn get_federation(
        &self,
        td: &vouch_core::TrustDomain,
    ) -> Result<Option<vouch_store::FederationRow>, vouch_store::StoreError> {
        self.inner.get_federation(td).await
    }
    async fn list_federations(&self) -> Result<Vec<vouch_store::FederationRow>, vouch_store::StoreError> {
        self.inner.list_federations().await
    }
    async fn update_federation(
        &self,
        row: &vouch_store::FederationRow,
    ) -> Result<u64, vouch_store::StoreError> {
        self.inner.update_federation(row).await
    }
    async fn save_federation_state(
        &self,
        td: &vouch_core::TrustDomain,
        revision: u64,
        state: &str,
    ) -> Result<bool, vouch_store::StoreError> {
        self.inner.save_federation_state(td, revision, state).await
    }
    async fn put_secret_version(
        &self,
        v: &vouch_store::NewSecretVersion,
    ) -> Result<(), vouch_store::StoreError> {
        self.inner.put_secret_version(v).await
    }
    async fn get_secret(
        &self,
        path: &vouch_core::SecretPath,
    ) -> Result<Option<vouch_store::SecretRecord>, vouch_store::StoreError> {
        self.inner.get_secret(path).await
    }
    async fn list_secrets(&self) -> Result<Vec<vouch_store::SecretRecord>, vouch_store::StoreError> {
        self.inner.list_secrets().await
    }
    async fn list_secret_versions(
        &self,
        path: &vouch_core::SecretPath,
    ) -> Result<Vec<vouch_store::SecretVersionRecord>, vouch_store::StoreError> {
        self.inner.list_secret_versions(path).await
    }
    async fn get_secret_version(
        &self,
        path: &vouch_core::SecretPath,
        version: u64,
    ) -> Result<Option<vouch_store::SealedSecretVersion>, vouch_store::StoreError> {
        self.inner.get_secret_version(path, version).await
    }
    async fn change_secret_versions(
        &self,
        path: &vouch_core::SecretPath,
        versions: &[u64],
        change: vouch_store::VersionChange,
    ) -> Result<Vec<u64>, vouch_store::StoreError> {
        self.inner.change_secret_versions(path, versions, change).await
    }
    async fn delete_federation(
        &self,
        td: &vouch_core::TrustDomain,
    ) -> Result<vouch_store::FederationRow, vouch_store::StoreError> {
        self.inner.delete_federation(td).await
    }
    async fn put_policy(
        &self,
        id: &str,
        namespace: &vouch_core::Namespace,
        text: &str,
        author: &str,
        now: i64,
    ) -> Result<vouch_store::PolicyVersion, vouch_store::StoreError> {
        self.inner.put_policy(id, namespace, text, author, now).await
    }
    async fn delete_policy(
        &self,
        id: &str,
        author: &str,
        now: i64,
    ) -> Result<vouch_store::PolicyVersion, vouch_store::StoreError> {
        self.inner.delete_policy(id, author, now).await
    }
    async fn list_policies(&self) -> Result<Vec<vouch_store::PolicyVersion>, vouch_store::StoreError> {
        self.inner.list_policies().await
    }
    async fn policy_history(
        &self,
        id: &str,
    ) -> Result<Vec<vouch_store::PolicyVersion>, vouch_store::StoreError> {
        self.inner.policy_history(id).await
    }
    async fn policies_revision(&self) -> Result<u64, vouch_store::StoreError> {
        self.inner.policies_revision().await
    }
    async fn create_db_lease(&self, lease: &vouch_store::DbLease) -> Result<(), vouch_store::StoreError> {
        self.inner.create_db_lease(lease).await
    }
    async fn activate_db_lease(&self, id: &str) -> Result<bool, vouch_store::StoreError> {
        self.inner.activate_db_lease(id).await
    }
    async fn renew_db_lease(&self, id: &str, expires_at: i64) -> Result<bool, vouch_store::StoreError> {
        self.inner.renew_db_lease(id, expires_at).await
    }
    async fn get_db_lease(&self, id: &str) -> Result<Option<vouch_store::DbLease>, vouch_store::StoreError> {
        self.inner.get_db_lease(id).await
    }
    async fn list_db_leases(&self) -> Result<Vec<vouch_store::DbLease>, vouch_store::StoreError> {
        self.inner.list_db_leases().await
    }
    async fn delete_db_lease(&self, id: &str) -> Result<bool, vouch_store::StoreError> {
        self.inner.delete_db_lease(id).await
    }
    async fn load_authority_versioned(
        &self,
    ) -> Result<Option<vouch_store::StoredAuthority>, vouch_store::StoreError> {
        self.inner.load_authority_versioned().await
    }
    async fn authority_version(&self) -> Result<Option<u64>, vouch_store::StoreError> {
        self.inner.authority_version().await
    }
    async fn write_authority(
        &self,
        expected: Option<u64>,
        state: &str,
    ) -> Result<vouch_store::AuthorityWrite, vouch_store::StoreError> {
        self.inner.write_authority(expected, state).await
    }
    async fn issue_challenge(
        &self,
        challenge: &vouch_store::ChallengeRecord,
        now: i64,
        limit: u32,
    ) -> Result<vouch_store::ChallengeIssue, vouch_store::StoreError> {
        self.inner.issue_challenge(challenge, now, limit).await
    }
    async fn consume_challenge(
        &self,
        nonce_hash: &str,
        now: i64,
    ) -> Result<vouch_store::ChallengeUse, vouch_store::StoreError> {
        self.inner.consume_challenge(nonce_hash, now).await
    }
    async fn record_exchanged_tokens(
        &self,
        tokens: &[(String, i64)],
        now: i64,
    ) -> Result<Vec<bool>, vouch_store::StoreError> {
        self.inner.record_exchanged_tokens(tokens, now).await
    }
    async fn append_audit(
        &self,
        seal: vouch_store::AuditSeal,
    ) -> Result<vouch_store::AuditHead, vouch_store::StoreError> {
        self.inner.append_audit(seal).await
    }
    async fn audit_head(&self) -> Result<vouch_store::AuditHead, vouch_store::StoreError> {
        self.inner.audit_head().await
    }
    async fn audit_records(
        &self,
        q: &vouch_store::AuditQuery,
    ) -> Result<Vec<vouch_core::audit::AuditRecord>, vouch_store::StoreError> {
        self.inner.audit_records(q).await
    }
    async fn add_audit_checkpoint(
        &self,
        cp: &vouch_core::audit::AuditCheckpoint,
    ) -> Result<bool, vouch_store::StoreError> {
        self.inner.add_audit_checkpoint(cp).await
    }
    async fn audit_checkpoints(
        &self,
    ) -> Result<Vec<vouch_core::audit::AuditCheckpoint>, vouch_store::StoreError> {
        self.inner.audit_checkpoints().await
    }
    async fn audit_keys(
        &self,
        k: &vouch_store::AuditKeyRecord,
    ) -> Result<Vec<vouch_store::AuditKeyRecord>, vouch_store::StoreError> {
        self.inner.audit_keys(k).await
    }
    async fn ping(&self) -> Result<(), vouch_store::StoreError> {
        self.inner.ping().await
    }
}

/// A sign or JWT request that the auth layer admitted just before a ban or an eviction commits
/// must not answer an SVID: the ban (or eviction) is committed and answered to the admin while the
/// request is paused after its agent check and before signing; the request then finishes signing,
/// re-checks the agent, discards what it signed and is refused with the ban's (eviction's) code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_or_jwt_request_in_flight_when_the_agent_is_banned_or_evicted_answers_no_svid() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(PausingStore { inner: SqliteStore::in_memory().unwrap(), pause: Mutex::new(None) });
    let (kek, _) = vouch_ca::Kek::generate().unwrap();
    let state = AppState::open(
        config(dir.path(), false),
        store.clone(),
        kek,
        Arc::new(vouch_server::SystemClock),
        4242,
    )
    .await
    .unwrap();
    let (csr, _) = csr_and_key();
    for (i, (admin_path, route, code)) in [
        ("/v1/agents/ban", "/v1/agent/sign", "agent_banned"),
        ("/v1/agents/ban", "/v1/agent/jwt", "agent_banned"),
        ("/v1/agents/evict", "/v1/agent/sign", "agent_not_attested"),
        ("/v1/agents/evict", "/v1/agent/jwt", "agent_not_attested"),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("spiffe://example.org/agent/inflight-{i}");
        let svid = attest_in_app(&state, &id).await.unwrap();
        let entry = json!({"id": format!("inflight-{i}"), "spiffe_id": format!("spiffe://example.org/w/inflight-{i}"), "parent_id": id, "selectors": ["unix:uid:1"]});
        assert_eq!(
            call(&state, ROOT, "POST", "/v1/entries", Some(&entry.to_string())).await.0,
            StatusCode::CREATED
        );
        let entry_id = EntryId::new(&format!("inflight-{i}")).unwrap();
        let body = if route.ends_with("sign") {
            serde_json::to_string(&SignRequest { requests: vec![SignItem { entry_id, csr: csr.clone() }] })
                .unwrap()
        } else {
            serde_json::to_string(&AgentJwtRequest { entry_id, audience: vec!["db".into()] }).unwrap()
        };
        // Before: the agent is served.
        let (s, v) = call(&state, agent_caller(&svid), "POST", route, Some(&body)).await;
        assert_eq!(s, StatusCode::OK, "{v}");

        let (reached, go) = store.arm(&spiffe_id(&id));
        let request = {
            let (state, caller, body) = (state.clone(), agent_caller(&svid), body.clone());
            tokio::spawn(async move { call(&state, caller, "POST", route, Some(&body)).await })
        };
        tokio::time::timeout(Duration::from_secs(10), reached).await.unwrap().unwrap();
        // The admin's decision is committed and answered while the request is in flight.
        let (s, v) =
            call(&state, ROOT, "POST", admin_path, Some(&json!({"spiffe_id": id}).to_string())).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        go.send(()).unwrap();
        let (s, v) = tokio::time::timeout(Duration::from_secs(10), request).await.unwrap().unwrap();
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (StatusCode::FORBIDDEN, Some(code)),
            "{admin_path} during {route}: {v}"
        );
        assert!(v.get("results").is_none() && v.get("token").is_none(), "no SVID in the answer: {v}");
    }
}

/// Several servers on one PostgreSQL (issue 9 §5): one trust domain, key rotation by one of them,
/// changes reaching agents on every replica, single-use join tokens, restarts of the database.
mod replicas {
    use super::*;
    use vouch_store::test_postgres::PgCluster;

    /// The configuration file of a replica: its own data directory, the shared database.
    fn replica_toml(dir: &Path, url: &str, extra: &str) -> String {
        format!(
            "version = 1\ntrust_domain = \"example.org\"\ndata_dir = \"{}\"\nstore = \"{url}\"\n{extra}[server]\nlisten = \"127.0.0.1:0\"\n",
            dir.display()
        )
    }

    /// [`replica_toml`], parsed.
    fn replica_config(dir: &Path, url: &str, extra: &str) -> Config {
        Config::from_toml(&replica_toml(dir, url, extra), &no_env).unwrap()
    }

    /// A replica on the wall clock with the shared key-encryption key.
    async fn replica(dir: &Path, url: &str, kek: &str) -> Server {
        replica_with(dir, url, kek, "").await
    }

    /// [`replica`] with `extra` configuration (top-level keys and tables).
    async fn replica_with(dir: &Path, url: &str, kek: &str, extra: &str) -> Server {
        let start =
            Server::start(replica_config(dir, url, extra), Arc::new(vouch_server::SystemClock), Some(kek));
        tokio::time::timeout(Duration::from_secs(20), start).await.expect("started within 20 s").unwrap()
    }

    /// Federation on replicas: only the replica that leads fetches a relationship's bundle (one
    /// request at the endpoint per refresh, however many replicas), and every replica serves it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_the_leading_replica_fetches_federated_bundles_and_every_replica_serves_them() {
        let cluster = PgCluster::start();
        let url = database(&cluster, "federation").await;
        let (_, kek) = vouch_ca::Kek::generate().unwrap();
        let web = vouch_http::testing::StaticHttps::start(None).await;
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let ca_file = dirs[0].path().join("web-ca.pem");
        std::fs::write(&ca_file, &web.cert_pem).unwrap();
        let extra = format!("[federation]\nweb_ca_file = \"{}\"\n", ca_file.display());
        let s1 = replica_with(dirs[0].path(), &url, &kek, &extra).await;
        let s2 = replica_with(dirs[1].path(), &url, &kek, &extra).await;
        let (bundle, jwks) = crate::federation::foreign_bundle("b.org");
        web.set("/bundle", jwks);
        let spec = json!({"trust_domain": "b.org", "bundle_endpoint_url": format!("{}/bundle", web.base_url()), "profile": "https_web"});
        let _: Value =
            AdminClient::unix(&s2.admin_socket).call("POST", "/v1/federation", Some(&spec)).await.unwrap();
        let td = vouch_core::TrustDomain::new("b.org").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while [&s1, &s2].iter().any(|s| s.state.federation.bundles().get(&td) != Some(&bundle)) {
            assert!(std::time::Instant::now() < deadline, "both replicas serve the fetched bundle");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Several rounds of both refreshers later, still the one fetch of the leader.
        tokio::time::sleep(FOLLOW_INTERVAL * 2).await;
        assert_eq!(web.requests(), 1, "one fetch per refresh, by the leader only");
        assert_eq!([&s1, &s2].iter().filter(|s| s.state.is_leader()).count(), 1);
        s1.shutdown().await;
        s2.shutdown().await;
    }

    /// A cluster with an empty database `db`; its TCP URL (with the password).
    async fn database(cluster: &PgCluster, db: &str) -> String {
        cluster.create_database(db).await;
        cluster.tcp_url(db)
    }

    /// Two replicas, one after the other, on a new database `db` of `cluster` with one
    /// key-encryption key; their data directories last as long as the returned pair of them.
    async fn two_replicas(cluster: &PgCluster, db: &str) -> (Server, Server, [tempfile::TempDir; 2]) {
        let url = database(cluster, db).await;
        let (_, kek) = vouch_ca::Kek::generate().unwrap();
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let s1 = replica(dirs[0].path(), &url, &kek).await;
        let s2 = replica(dirs[1].path(), &url, &kek).await;
        (s1, s2, dirs)
    }

    /// Replicas that start at the same moment on an empty database end with one authority: one
    /// root, one bundle, whoever wins the race. (Before first creation was atomic, each created
    /// its own root and the last write won, so the replicas served different bundles.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_starting_together_on_an_empty_database_share_one_trust_domain() {
        let cluster = PgCluster::start();
        let (_, kek) = vouch_ca::Kek::generate().unwrap();
        for round in 0..3 {
            let url = database(&cluster, &format!("together{round}")).await;
            let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let (s1, s2) = tokio::join!(replica(d1.path(), &url, &kek), replica(d2.path(), &url, &kek));
            let b1 = AdminClient::unix(&s1.admin_socket).bundle_pem().await.unwrap();
            let b2 = AdminClient::unix(&s2.admin_socket).bundle_pem().await.unwrap();
            assert_eq!(b1, b2, "round {round}: the replicas serve different bundles");
            let stored: Value =
                serde_json::from_str(&s1.state.store.load_authority().await.unwrap().unwrap()).unwrap();
            let roots: Vec<&Value> =
                stored["keys"].as_array().unwrap().iter().filter(|k| k["kind"] == "root").collect();
            assert_eq!(roots.len(), 1, "round {round}: one root is stored: {roots:?}");
            assert_eq!(
                s1.state.with_authority(|a| a.sequence()),
                s2.state.with_authority(|a| a.sequence()),
                "round {round}"
            );
            s1.shutdown().await;
            s2.shutdown().await;
        }
    }

    /// The next sync line within `limit`.
    async fn line_within(sync: &mut vouch_client::SyncStream, limit: Duration) -> SyncLine<'static> {
        tokio::time::timeout(limit, sync.next())
            .await
            .expect("a sync line in time")
            .expect("the stream is open")
            .expect("a readable line")
    }

    /// Sync lines until one passes `want`, within `limit` in all; pings and snapshots (a resync)
    /// may come first.
    async fn until_line(
        sync: &mut vouch_client::SyncStream,
        limit: Duration,
        want: impl Fn(&SyncLine<'static>) -> bool,
    ) -> SyncLine<'static> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let line = line_within(sync, left).await;
            if want(&line) {
                return line;
            }
        }
    }

    fn entry_for(id: &str, parent: &SpiffeId) -> EntrySpec {
        entry_spec(
            json!({"id": id, "spiffe_id": format!("spiffe://example.org/{id}"), "parent_id": parent.to_string(), "selectors": ["unix:uid:1"]}),
        )
    }

    /// An entry created, changed or deleted through one replica reaches an agent syncing with
    /// another in under a second; a ban through one replica closes the agent's stream on the other.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn changes_through_one_replica_reach_agents_on_another_within_a_second() {
        let cluster = PgCluster::start();
        let (s1, s2, _dirs) = two_replicas(&cluster, "push").await;
        let admin1 = AdminClient::unix(&s1.admin_socket);
        // The agent gets its token from replica 1 and attests to and syncs with replica 2.
        let node = spiffe_id("spiffe://example.org/agent/far");
        let (_, _, agent) = attested_agent(&s2, &admin1, &node).await;
        let mut sync = agent.sync().await.unwrap();
        assert!(matches!(line_within(&mut sync, Duration::from_secs(5)).await, SyncLine::Snapshot { .. }));

        let started = std::time::Instant::now();
        admin1.entries().create(&entry_for("web", &node)).await.unwrap();
        match until_line(&mut sync, Duration::from_secs(1), |l| !matches!(l, SyncLine::Ping)).await {
            SyncLine::Upsert { entry } => assert_eq!(entry.id.as_str(), "web"),
            other => panic!("expected the new entry, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
        // Moved to another agent: a deletion for this one.
        let elsewhere = spiffe_id("spiffe://example.org/agent/other");
        admin1.entries().replace("web", &entry_for("web", &elsewhere)).await.unwrap();
        match until_line(&mut sync, Duration::from_secs(1), |l| !matches!(l, SyncLine::Ping)).await {
            SyncLine::Delete { id } => assert_eq!(id.as_str(), "web"),
            other => panic!("expected the entry's removal, got {other:?}"),
        }
        admin1.entries().create(&entry_for("db", &node)).await.unwrap();
        assert!(matches!(
            until_line(&mut sync, Duration::from_secs(1), |l| !matches!(l, SyncLine::Ping)).await,
            SyncLine::Upsert { .. }
        ));
        admin1.entries().delete("db").await.unwrap();
        match until_line(&mut sync, Duration::from_secs(1), |l| !matches!(l, SyncLine::Ping)).await {
            SyncLine::Delete { id } => assert_eq!(id.as_str(), "db"),
            other => panic!("expected the deletion, got {other:?}"),
        }

        // A ban through replica 1 ends the stream on replica 2 with the reason.
        let started = std::time::Instant::now();
        admin1.ban_agent(&node).await.unwrap();
        match until_line(&mut sync, Duration::from_secs(1), |l| !matches!(l, SyncLine::Ping)).await {
            SyncLine::Closed { reason, .. } => assert_eq!(reason, vouch_api::agent::CloseReason::Banned),
            other => panic!("expected the closing line, got {other:?}"),
        }
        let end = tokio::time::timeout(Duration::from_secs(5), sync.next()).await.unwrap();
        assert!(end.is_none(), "the stream ends: {end:?}");
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
        s1.shutdown().await;
        s2.shutdown().await;
    }

    /// A node group created through one replica, and a re-attestation through it that changes an
    /// agent's node selectors, reach the agent's sync stream on another replica within a second
    /// (the group's entries arrive, then leave).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn groups_and_reattestations_through_one_replica_reach_agents_on_another() {
        let cluster = PgCluster::start();
        let (s1, s2, _dirs) = two_replicas(&cluster, "groups").await;
        let admin1 = AdminClient::unix(&s1.admin_socket);
        let td = vouch_core::TrustDomain::new("example.org").unwrap();
        let bundle = admin1.bundle_pem().await.unwrap();
        let anon =
            |s: &Server| AdminClient::tls(&s.tcp_addr.unwrap().to_string(), &td, &bundle, None).unwrap();
        let node = spiffe_id("spiffe://example.org/agent/labelled");
        let token = |labels: Value| {
            let req = JoinTokenRequest {
                agent_id: Some(node.clone()),
                labels: serde_json::from_value(labels).unwrap(),
                ..Default::default()
            };
            let admin1 = &admin1;
            async move { admin1.create_join_token(&req).await.unwrap().token }
        };
        let (prod, plain) = (token(json!({"env": "prod"})).await, token(json!({})).await);
        // Attested and syncing on replica 2, labelled env=prod.
        let (csr, key) = csr_and_key();
        let svid = anon(&s2)
            .attest_join_token(&JoinTokenAttestation { token: prod, csr: csr.clone() })
            .await
            .unwrap();
        let addr2 = s2.tcp_addr.unwrap().to_string();
        let agent =
            AdminClient::tls(&addr2, &td, &bundle, Some((&chain_pem(&svid.cert_chain), &key))).unwrap();
        let mut sync = agent.sync().await.unwrap();
        assert!(snapshot_ids(&line_within(&mut sync, Duration::from_secs(5)).await).is_empty());

        // The group and an entry under it, through replica 1.
        let started = std::time::Instant::now();
        admin1
            .groups()
            .create(&group_spec(
                json!({"spiffe_id": "spiffe://example.org/vouch/group/prod", "selectors": ["join_token:label:env:prod"]}),
            ))
            .await
            .unwrap();
        admin1
            .entries()
            .create(&entry_for("p", &spiffe_id("spiffe://example.org/vouch/group/prod")))
            .await
            .unwrap();
        let has_p = |l: &SyncLine<'static>| match l {
            SyncLine::Snapshot { entries, .. } => entries.iter().any(|e| e.id.as_str() == "p"),
            SyncLine::Upsert { entry } => entry.id.as_str() == "p",
            _ => false,
        };
        until_line(&mut sync, Duration::from_secs(1), has_p).await;
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());

        // The agent attests again through replica 1 without the label: it leaves the group, and
        // its stream on replica 2 hears of it: the stream of the previous SVID ends (that SVID
        // no longer works), and a stream with the new one has the group's entry no more.
        let started = std::time::Instant::now();
        let again = anon(&s1).attest_join_token(&JoinTokenAttestation { token: plain, csr }).await.unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                match sync.next().await {
                    Some(Ok(SyncLine::Ping)) => continue,
                    None | Some(Err(_)) => return None,
                    Some(Ok(line)) => return Some(line),
                }
            }
        })
        .await
        .expect("the stream of the previous SVID ends within 1 s");
        assert!(ended.is_none(), "the stream of the previous SVID sent {ended:?}");
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
        let agent =
            AdminClient::tls(&addr2, &td, &bundle, Some((&chain_pem(&again.cert_chain), &key))).unwrap();
        let mut sync = agent.sync().await.unwrap();
        assert!(snapshot_ids(&line_within(&mut sync, Duration::from_secs(5)).await).is_empty());
        s1.shutdown().await;
        s2.shutdown().await;
    }

    /// One join token, presented to two replicas at the same moment: one attestation wins, the
    /// other is refused as a reuse.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_join_token_raced_through_two_replicas_attests_once() {
        let cluster = PgCluster::start();
        let (s1, s2, _dirs) = two_replicas(&cluster, "tokens").await;
        let admin1 = AdminClient::unix(&s1.admin_socket);
        let td = vouch_core::TrustDomain::new("example.org").unwrap();
        let bundle = admin1.bundle_pem().await.unwrap();
        let anon =
            |s: &Server| AdminClient::tls(&s.tcp_addr.unwrap().to_string(), &td, &bundle, None).unwrap();
        let (a1, a2) = (anon(&s1), anon(&s2));
        for round in 0..8 {
            let id = spiffe_id(&format!("spiffe://example.org/agent/race-{round}"));
            let t = admin1
                .create_join_token(&JoinTokenRequest { agent_id: Some(id), ..Default::default() })
                .await
                .unwrap();
            let attest = |token: &str| JoinTokenAttestation { token: token.to_owned(), csr: csr_and_key().0 };
            let (req1, req2) = (attest(&t.token), attest(&t.token));
            let (r1, r2) = tokio::join!(a1.attest_join_token(&req1), a2.attest_join_token(&req2));
            let (won, lost) = match (r1, r2) {
                (Ok(svid), Err(e)) | (Err(e), Ok(svid)) => (svid, e),
                (r1, r2) => panic!("round {round}: expected one success and one refusal: {r1:?} / {r2:?}"),
            };
            assert_eq!(won.spiffe_id.to_string(), format!("spiffe://example.org/agent/race-{round}"));
            let (_, message) = refusal::<()>(Err(lost), 401);
            assert!(message.contains("already used"), "round {round}: {message}");
        }
        s1.shutdown().await;
        s2.shutdown().await;
    }

    /// An x509pop challenge is kept in the shared database: one obtained from replica 1 is answered
    /// on replica 2 and the agent attests; the same answer replayed to either replica is refused;
    /// one answer sent to both replicas at the same moment attests once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_x509pop_challenge_from_one_replica_is_answered_on_another_once() {
        use base64::Engine as _;
        use rcgen::SigningKey as _;
        let cluster = PgCluster::start();
        let url = database(&cluster, "x509pop").await;
        let (_, kek) = vouch_ca::Kek::generate().unwrap();
        let (d1, d2, cas) =
            (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (ca_pem, ca) = node_ca("node CA");
        let ca_file = cas.path().join("node-ca.pem");
        std::fs::write(&ca_file, &ca_pem).unwrap();
        let extra =
            format!("[[node_attestation.x509pop]]\nname = \"dc1\"\nca_bundle = \"{}\"\n", ca_file.display());
        let s1 = replica_with(d1.path(), &url, &kek, &extra).await;
        let s2 = replica_with(d2.path(), &url, &kek, &extra).await;
        let td = vouch_core::TrustDomain::new("example.org").unwrap();
        let bundle = AdminClient::unix(&s1.admin_socket).bundle_pem().await.unwrap();
        let anon =
            |s: &Server| AdminClient::tls(&s.tcp_addr.unwrap().to_string(), &td, &bundle, None).unwrap();
        let (a1, a2) = (anon(&s1), anon(&s2));
        let (cert, key) = node_cert(&ca, "node-1");
        let answer = |nonce: &str| X509PopAttestation {
            cert_chain_pem: cert.clone(),
            nonce: nonce.to_owned(),
            signature: base64::engine::general_purpose::STANDARD
                .encode(key.sign(&vouch_api::agent::x509pop_message(nonce)).unwrap()),
            csr: csr_and_key().0,
        };
        let limit = Duration::from_secs(20);
        let request = X509PopChallengeRequest { cert_chain_pem: cert.clone() };

        let nonce = tokio::time::timeout(limit, a1.x509pop_challenge(&request)).await.unwrap().unwrap().nonce;
        let body = answer(&nonce);
        let svid = tokio::time::timeout(limit, a2.attest_x509pop(&body)).await.unwrap().unwrap();
        assert!(
            svid.spiffe_id.to_string().starts_with("spiffe://example.org/agent/x509pop/"),
            "{}",
            svid.spiffe_id
        );
        for (name, a) in [("replica 2", &a2), ("replica 1", &a1)] {
            let replayed = tokio::time::timeout(limit, a.attest_x509pop(&body)).await.unwrap();
            let (_, message) = refusal(replayed, 401);
            assert!(message.contains("already used"), "a replay on {name}: {message}");
        }

        // One answer raced through both replicas: exactly one attests.
        for round in 0..4 {
            let from = if round % 2 == 0 { &a1 } else { &a2 };
            let nonce =
                tokio::time::timeout(limit, from.x509pop_challenge(&request)).await.unwrap().unwrap().nonce;
            let (b1, b2) = (answer(&nonce), answer(&nonce));
            let (r1, r2) = tokio::time::timeout(limit, async {
                tokio::join!(a1.attest_x509pop(&b1), a2.attest_x509pop(&b2))
            })
            .await
            .unwrap();
            let lost = match (r1, r2) {
                (Ok(_), Err(e)) | (Err(e), Ok(_)) => e,
                (r1, r2) => panic!("round {round}: expected one success and one refusal: {r1:?} / {r2:?}"),
            };
            let (_, message) = refusal::<()>(Err(lost), 401);
            assert!(message.contains("already used"), "round {round}: {message}");
        }
        s1.shutdown().await;
        s2.shutdown().await;
    }

    /// Exactly one replica rotates keys; the other writes nothing, loads the leader's state as it
    /// is stored and tells its agents of the new bundle within a second.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_replica_rotates_keys_and_the_others_follow() {
        let cluster = PgCluster::start();
        let url = database(&cluster, "rotation").await;
        let (_, kek) = vouch_ca::Kek::generate().unwrap();
        let clock = ManualClock::new();
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let start = |dir: &Path| {
            let start = Server::start(replica_config(dir, &url, ""), clock.clone(), Some(&kek));
            tokio::time::timeout(Duration::from_secs(20), start)
        };
        let leader = start(d1.path()).await.expect("started within 20 s").unwrap();
        let follower = start(d2.path()).await.expect("started within 20 s").unwrap();
        assert!(leader.state.is_leader() && !follower.state.is_leader(), "the first replica took the lead");
        let admin = AdminClient::unix(&follower.admin_socket);
        let node = spiffe_id("spiffe://example.org/agent/follows");
        let (_, _, agent) = attested_agent(&follower, &admin, &node).await;
        let mut sync = agent.sync().await.unwrap();
        assert!(matches!(line_within(&mut sync, Duration::from_secs(5)).await, SyncLine::Snapshot { .. }));

        let writes = follower.state.store.write_transactions();
        let seq0 = leader.state.with_authority(|a| a.sequence());
        let mut steps = 0;
        while leader.state.with_authority(|a| a.sequence()) == seq0 {
            steps += 1;
            assert!(steps <= 60, "the leader rotated nothing in 30 hours");
            clock.advance(Duration::from_secs(1800));
            follower.state.tick().await.unwrap();
            leader.state.tick().await.unwrap();
        }
        let rotated = std::time::Instant::now();
        let wanted = leader.state.authority_version();
        // The follower's agent hears of the new bundle; the follower serves it.
        let line =
            until_line(&mut sync, Duration::from_secs(1), |l| matches!(l, SyncLine::Bundle { .. })).await;
        assert!(matches!(line, SyncLine::Bundle { .. }));
        assert!(rotated.elapsed() < Duration::from_secs(1), "{:?}", rotated.elapsed());
        assert!(follower.state.authority_version() >= wanted);
        assert_eq!(
            follower.state.with_authority(|a| a.sequence()),
            leader.state.with_authority(|a| a.sequence())
        );
        assert_eq!(follower.state.bundle_pem(), leader.state.bundle_pem());
        assert_eq!(follower.state.store.write_transactions(), writes, "the follower wrote nothing");
        assert_eq!(
            (metric(&leader.state, "vouch_leader").await, metric(&follower.state, "vouch_leader").await),
            (1, 0)
        );
        assert_eq!(
            metric(&follower.state, "vouch_authority_version").await,
            metric(&leader.state, "vouch_authority_version").await
        );
        // The follower signs with the leader's current keys: a JWT it mints validates at the leader.
        let jwt: Value = admin
            .call(
                "POST",
                "/v1/svids/jwt",
                Some(&json!({"spiffe_id": "spiffe://example.org/w", "audience": ["db"]})),
            )
            .await
            .unwrap();
        let check = json!({"token": jwt["token"], "audience": "db"});
        let _: Value = AdminClient::unix(&leader.admin_socket)
            .call("POST", "/v1/svids/jwt/validate", Some(&check))
            .await
            .unwrap();
        leader.shutdown().await;
        follower.shutdown().await;
    }

    /// Polls `check` every 50 ms until it holds; how long that took, or a panic after `limit`.
    async fn within(limit: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) -> Duration {
        let started = std::time::Instant::now();
        while !check().await {
            assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        started.elapsed()
    }

    /// A restart of PostgreSQL under two running replicas: while it is down they say they are not
    /// ready and refuse writes (with an error, at once, not a hang); afterwards they reconnect by
    /// themselves, every write committed before is there, new writes work, and changes reach
    /// agents across replicas again. The outage and the recovery are logged once, without the
    /// password.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_postgresql_restart_loses_no_committed_write_and_the_replicas_reconnect() {
        let logs = CapturedLogs::install();
        // A failure shows the servers' log, which says what the replicas saw of the outage.
        struct ShowOnFailure(CapturedLogs);
        impl Drop for ShowOnFailure {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    eprintln!("server log:\n{}", self.0.text());
                }
            }
        }
        let _show = ShowOnFailure(logs.clone());
        let cluster = PgCluster::start();
        let url = database(&cluster, "restart").await;
        let (_, kek) = vouch_ca::Kek::generate().unwrap();
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let s1 = replica(d1.path(), &url, &kek).await;
        let s2 = replica(d2.path(), &url, &kek).await;
        let (admin1, admin2) = (AdminClient::unix(&s1.admin_socket), AdminClient::unix(&s2.admin_socket));
        let node = spiffe_id("spiffe://example.org/agent/through-restart");
        let (_, _, agent) = attested_agent(&s2, &admin1, &node).await;
        let mut sync = agent.sync().await.unwrap();
        assert!(matches!(line_within(&mut sync, Duration::from_secs(5)).await, SyncLine::Snapshot { .. }));
        for i in 0..20 {
            admin1.entries().create(&entry_for(&format!("before-{i}"), &node)).await.unwrap();
        }
        let bundle = admin1.bundle_pem().await.unwrap();

        cluster.pause();
        for admin in [&admin1, &admin2] {
            let (status, body) =
                tokio::time::timeout(Duration::from_secs(30), admin.request("GET", "/readyz", None))
                    .await
                    .unwrap()
                    .unwrap();
            assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
        }
        let refused = tokio::time::timeout(
            Duration::from_secs(30),
            admin1.entries().create(&entry_for("during", &node)),
        )
        .await
        .expect("a write while the database is down fails in time");
        let message = format!("{:?}", refused.unwrap_err());
        assert!(!message.contains(cluster.password()), "{message}");
        cluster.resume();

        // Back by themselves: ready again, everything committed before is there, writes work.
        for admin in [&admin1, &admin2] {
            within(Duration::from_secs(10), "ready again", async || {
                matches!(admin.request("GET", "/readyz", None).await, Ok((200, _)))
            })
            .await;
            let listed = admin.entries().list(&Default::default()).await.unwrap();
            assert_eq!(listed.entries.len(), 20, "every entry written before the restart");
            assert_eq!(admin.bundle_pem().await.unwrap(), bundle);
        }
        // The notice connection is back within its retry pause (at most 2 s); then a change
        // through replica 1 reaches the agent on replica 2 at once (after the fresh snapshot that
        // the reconnection sends).
        within(Duration::from_secs(10), "the replicas listen again", async || {
            logs.text().matches("hearing other replicas' changes again").count() >= 2
        })
        .await;
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        admin1.entries().create(&entry_for("after", &node)).await.unwrap();
        let mut seen_after = false;
        while !seen_after {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            seen_after = match line_within(&mut sync, left).await {
                SyncLine::Upsert { entry } => entry.id.as_str() == "after",
                SyncLine::Snapshot { entries, .. } => entries.iter().any(|e| e.id.as_str() == "after"),
                _ => false,
            };
        }
        admin2.entries().create(&entry_for("after-2", &node)).await.unwrap();
        assert_eq!(admin1.entries().get("after-2").await.unwrap().id.as_str(), "after-2");

        let text = logs.text();
        assert!(text.contains("PostgreSQL is unreachable"), "the outage is logged: {text}");
        assert!(text.contains("reconnected to PostgreSQL"), "the recovery is logged: {text}");
        assert!(!text.contains(cluster.password()), "the password is in the logs");
        s1.shutdown().await;
        s2.shutdown().await;
    }

    /// Not a test on its own: the body of a replica that
    /// `a_replica_killed_with_sigkill_leaves_the_other_serving_and_its_lead_passes` runs as a
    /// separate process (this test binary again), to kill it with SIGKILL.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "run as a child process by another test"]
    async fn child_replica() {
        let Ok(config) = std::env::var("VOUCH_TEST_REPLICA_CONFIG") else { return };
        let kek = std::env::var("VOUCH_TEST_REPLICA_KEK").unwrap();
        let config = Config::from_toml(&std::fs::read_to_string(config).unwrap(), &no_env).unwrap();
        let _server = Server::start(config, Arc::new(vouch_server::SystemClock), Some(&kek)).await.unwrap();
        // Until killed; bounded, so that it never outlives a parent that died first.
        tokio::time::sleep(Duration::from_secs(60)).await;
    }

    /// A child process, killed when dropped (also when the test fails).
    struct ChildGuard(std::process::Child);

    impl Drop for ChildGuard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// The replica leading key rotation dies by SIGKILL (no shutdown, no goodbye to the database):
    /// the other keeps serving and takes the lead within a bounded time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replica_killed_with_sigkill_leaves_the_other_serving_and_its_lead_passes() {
        let cluster = PgCluster::start();
        let url = database(&cluster, "killed").await;
        let (_, kek) = vouch_ca::Kek::generate().unwrap();
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let toml = d1.path().join("replica.toml");
        std::fs::write(&toml, replica_toml(&d1.path().join("data"), &url, "")).unwrap();
        let mut child = ChildGuard(
            std::process::Command::new(std::env::current_exe().unwrap())
                .args(["replicas::child_replica", "--exact", "--ignored", "--test-threads=1"])
                .env("VOUCH_TEST_REPLICA_CONFIG", &toml)
                .env("VOUCH_TEST_REPLICA_KEK", &kek)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        // The child writes its address once it serves (and so holds the lead, having started first).
        let addr_file = d1.path().join("data/server.addr");
        within(Duration::from_secs(20), "the child replica starts", async || addr_file.exists()).await;
        let child_admin = AdminClient::unix(d1.path().join("data/admin.sock"));
        assert!(matches!(child_admin.request("GET", "/readyz", None).await, Ok((200, _))));

        let s2 = replica(d2.path(), &url, &kek).await;
        let admin2 = AdminClient::unix(&s2.admin_socket);
        assert!(!s2.state.is_leader(), "the child leads");
        assert_eq!(admin2.bundle_pem().await.unwrap(), child_admin.bundle_pem().await.unwrap());

        child.0.kill().unwrap();
        child.0.wait().unwrap();
        let took =
            within(FOLLOW_INTERVAL * 5, "the lead passes to the survivor", async || s2.state.is_leader())
                .await;
        assert!(took <= FOLLOW_INTERVAL * 2, "the lead passed after {took:?}");
        // The survivor serves: ready, writes, attestation.
        assert!(matches!(admin2.request("GET", "/readyz", None).await, Ok((200, _))));
        admin2
            .entries()
            .create(&entry_for("survives", &spiffe_id("spiffe://example.org/agent/x")))
            .await
            .unwrap();
        let node = spiffe_id("spiffe://example.org/agent/after-the-kill");
        let (svid, _, _) = attested_agent(&s2, &admin2, &node).await;
        assert_eq!(svid.spiffe_id, node);
        s2.shutdown().await;
    }
}

/// Attests an agent by x509pop with a fresh node certificate for `cn` from `ca`; its SVID and a
/// client that presents it.
async fn x509pop_agent(
    server: &Server,
    local: &AdminClient,
    ca: &rcgen::Issuer<'static, rcgen::KeyPair>,
    cn: &str,
) -> (vouch_api::agent::AgentSvid, AdminClient) {
    use base64::Engine as _;
    use rcgen::SigningKey as _;
    let addr = server.tcp_addr.unwrap().to_string();
    let td = vouch_core::TrustDomain::new("example.org").unwrap();
    let bundle_pem = local.bundle_pem().await.unwrap();
    let anon = AdminClient::tls(&addr, &td, &bundle_pem, None).unwrap();
    let (cert, node_key) = node_cert(ca, cn);
    let nonce = anon
        .x509pop_challenge(&X509PopChallengeRequest { cert_chain_pem: cert.clone() })
        .await
        .unwrap()
        .nonce;
    let signature = base64::engine::general_purpose::STANDARD
        .encode(node_key.sign(&vouch_api::agent::x509pop_message(&nonce)).unwrap());
    let (csr, key) = csr_and_key();
    let svid = anon
        .attest_x509pop(&X509PopAttestation { cert_chain_pem: cert, nonce, signature, csr })
        .await
        .unwrap();
    let client =
        AdminClient::tls(&addr, &td, &bundle_pem, Some((&chain_pem(&svid.cert_chain), &key))).unwrap();
    (svid, client)
}

/// The next line of a sync stream that is not a ping, within a bounded time.
async fn next_change(sync: &mut vouch_client::SyncStream) -> SyncLine<'static> {
    loop {
        let line = tokio::time::timeout(Duration::from_secs(5), sync.next())
            .await
            .expect("a sync line within 5 s")
            .expect("the stream is open")
            .expect("a valid line");
        if !matches!(line, SyncLine::Ping) {
            return line;
        }
    }
}

fn snapshot_ids(line: &SyncLine<'_>) -> Vec<String> {
    match line {
        SyncLine::Snapshot { entries, .. } => entries.iter().map(|e| e.id.to_string()).collect(),
        other => panic!("expected a snapshot, got {other:?}"),
    }
}

fn group_spec(json: Value) -> vouch_api::NodeGroupSpec {
    serde_json::from_value(json).unwrap()
}

/// Two agents whose node selectors match a group both receive and sign for an entry parented to the
/// group, at once over their open sync streams; an agent that does not match receives nothing and is
/// refused with the selector it lacks; creating and deleting the group reach open streams; a group
/// with entries under it cannot be deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_group_entries_reach_every_member_agent_and_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let (dc1_pem, dc1) = node_ca("dc1 CA");
    let (dc2_pem, dc2) = node_ca("dc2 CA");
    std::fs::write(dir.path().join("dc1.pem"), &dc1_pem).unwrap();
    std::fs::write(dir.path().join("dc2.pem"), &dc2_pem).unwrap();
    let extra = format!(
        "[[node_attestation.x509pop]]\nname = \"dc1\"\nca_bundle = \"{}\"\n[[node_attestation.x509pop]]\nname = \"dc2\"\nca_bundle = \"{}\"\n",
        dir.path().join("dc1.pem").display(),
        dir.path().join("dc2.pem").display()
    );
    let (server, local, _) = start_with(dir.path(), &extra).await;
    let (svid_1, agent_1) = x509pop_agent(&server, &local, &dc1, "node-1").await;
    let (svid_2, agent_2) = x509pop_agent(&server, &local, &dc1, "node-2").await;
    let (svid_3, agent_3) = x509pop_agent(&server, &local, &dc2, "node-3").await;
    let mut syncs = Vec::new();
    for agent in [&agent_1, &agent_2, &agent_3] {
        let mut sync = agent.sync().await.unwrap();
        assert!(snapshot_ids(&next_change(&mut sync).await).is_empty());
        syncs.push(sync);
    }

    // An entry may wait under a group that does not exist yet; nobody serves it.
    let web = entry_spec(
        json!({"id": "web", "spiffe_id": "spiffe://example.org/web", "parent_id": "spiffe://example.org/vouch/group/dc1", "selectors": ["unix:uid:1000"]}),
    );
    local.entries().create(&web).await.unwrap();
    // Creating the group brings its entries to the members' open streams at once.
    let started = std::time::Instant::now();
    let created = local
        .groups()
        .create(&group_spec(json!({"spiffe_id": "spiffe://example.org/vouch/group/dc1", "selectors": ["x509pop:ca:dc1"], "owner": "ops"})))
        .await
        .unwrap();
    assert_eq!(created.group.name.as_str(), "dc1");
    let mut want_members = vec![svid_1.spiffe_id.clone(), svid_2.spiffe_id.clone()];
    want_members.sort();
    assert_eq!((created.members.clone(), created.entries), (want_members.clone(), 1));
    for sync in &mut syncs[..2] {
        assert_eq!(snapshot_ids(&next_change(sync).await), ["web"]);
    }
    assert!(started.elapsed() < Duration::from_secs(1), "pushed, not polled");
    // Agent listings show each agent's node selectors and groups.
    let agents = local.agents().await.unwrap().agents;
    let groups_of = |id: &SpiffeId| agents.iter().find(|a| &a.spiffe_id == id).unwrap().groups.clone();
    assert_eq!(groups_of(&svid_1.spiffe_id), std::slice::from_ref(&created.group.spiffe_id));
    assert!(groups_of(&svid_3.spiffe_id).is_empty());

    // A new entry under the group reaches both members and not the third agent.
    let db = entry_spec(
        json!({"id": "db", "spiffe_id": "spiffe://example.org/db", "parent_id": "spiffe://example.org/vouch/group/dc1", "selectors": ["unix:uid:1001"]}),
    );
    local.entries().create(&db).await.unwrap();
    for sync in &mut syncs[..2] {
        match next_change(sync).await {
            SyncLine::Upsert { entry } => assert_eq!(entry.id.as_str(), "db"),
            other => panic!("expected an upsert, got {other:?}"),
        }
    }
    let own = entry_spec(
        json!({"id": "own-3", "spiffe_id": "spiffe://example.org/own-3", "parent_id": svid_3.spiffe_id.to_string(), "selectors": ["unix:uid:1"]}),
    );
    local.entries().create(&own).await.unwrap();
    match next_change(&mut syncs[2]).await {
        SyncLine::Upsert { entry } => {
            assert_eq!(entry.id.as_str(), "own-3", "the group's entries were not sent")
        }
        other => panic!("expected an upsert, got {other:?}"),
    }

    // Members sign and mint for the group's entries; the third agent is refused, told what it lacks.
    let (csr, _) = csr_and_key();
    let sign_web = SignRequest { requests: vec![SignItem { entry_id: EntryId::new("web").unwrap(), csr }] };
    for agent in [&agent_1, &agent_2] {
        match &agent.sign(&sign_web).await.unwrap().results[0].outcome {
            SignOutcome::Svid(svid) => assert_eq!(svid.spiffe_id, spiffe_id("spiffe://example.org/web")),
            SignOutcome::Error(e) => panic!("a member was refused: {e:?}"),
        }
        let jwt = agent
            .agent_jwt(&AgentJwtRequest { entry_id: EntryId::new("db").unwrap(), audience: vec!["x".into()] })
            .await
            .unwrap();
        assert_eq!(jwt.spiffe_id, spiffe_id("spiffe://example.org/db"));
    }
    match &agent_3.sign(&sign_web).await.unwrap().results[0].outcome {
        SignOutcome::Error(e) => {
            assert_eq!(e.code, "permission_denied");
            assert!(
                e.message.contains("node group `spiffe://example.org/vouch/group/dc1`")
                    && e.message.contains("lack `x509pop:ca:dc1`"),
                "{}",
                e.message
            );
        }
        SignOutcome::Svid(_) => panic!("a non-member signed for a group's entry"),
    }
    let jwt = agent_3
        .agent_jwt(&AgentJwtRequest { entry_id: EntryId::new("db").unwrap(), audience: vec!["x".into()] })
        .await;
    let (code, message) = refusal(jwt, 403);
    assert_eq!(code, "permission_denied", "{message}");

    // A group with entries under it is not deleted; the refusal says how to proceed.
    let (code, message) = refusal(local.groups().delete("dc1").await, 409);
    assert_eq!(code, "conflict");
    assert!(
        message.contains("has 2 entries parented to it") && message.contains("vouch entry list --parent-id"),
        "{message}"
    );
    assert_eq!(local.groups().get("dc1").await.unwrap().entries, 2, "nothing changed");
    // Moving an entry from the group to an agent: the other member is told to drop it.
    let moved = local
        .entries()
        .update(
            "db",
            &vouch_api::admin::EntryPatch {
                expected_revision: 0,
                parent_id: Some(svid_1.spiffe_id.clone()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(moved.parent_id, svid_1.spiffe_id);
    assert!(
        matches!(next_change(&mut syncs[0]).await, SyncLine::Upsert { entry } if entry.id.as_str() == "db")
    );
    assert!(matches!(next_change(&mut syncs[1]).await, SyncLine::Delete { id } if id.as_str() == "db"));
    local.entries().delete("web").await.unwrap();
    for sync in &mut syncs[..2] {
        assert!(matches!(next_change(sync).await, SyncLine::Delete { id } if id.as_str() == "web"));
    }
    // Deleting the emptied group reaches the members' streams: a snapshot without its entries.
    let deleted = local.groups().delete("dc1").await.unwrap();
    assert_eq!(deleted.spiffe_id, created.group.spiffe_id);
    assert_eq!(snapshot_ids(&next_change(&mut syncs[0]).await), ["db"], "its own entry stays");
    assert!(snapshot_ids(&next_change(&mut syncs[1]).await).is_empty());
    refusal(local.groups().get("dc1").await, 404);
    refusal(local.groups().delete("dc1").await, 404);
    server.shutdown().await;
}

/// A re-attestation that changes an agent's node selectors changes its groups, and its open sync
/// stream follows. Join-token agents have the selector `join_token:<first 16 hex of the token's
/// SHA-256>`, a new one for each token, and one `join_token:label:<key>:<value>` per label of the
/// token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reattestation_that_changes_node_selectors_moves_the_agent_between_groups() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let local = AdminClient::unix(&server.admin_socket);
    let addr = server.tcp_addr.unwrap().to_string();
    let td = vouch_core::TrustDomain::new("example.org").unwrap();
    let bundle_pem = local.bundle_pem().await.unwrap();
    let anon = AdminClient::tls(&addr, &td, &bundle_pem, None).unwrap();
    let id = spiffe_id("spiffe://example.org/agent/mover");
    let token = |labels: Value| {
        let req = JoinTokenRequest {
            agent_id: Some(id.clone()),
            labels: serde_json::from_value(labels).unwrap(),
            ..Default::default()
        };
        let local = &local;
        async move { local.create_join_token(&req).await.unwrap().token }
    };
    let (first, second) = (token(json!({})).await, token(json!({"env": "prod", "rack": "r1"})).await);
    local
        .groups()
        .create(&group_spec(
            json!({"spiffe_id": "spiffe://example.org/vouch/group/prod", "selectors": ["join_token:label:env:prod"]}),
        ))
        .await
        .unwrap();
    local.entries().create(&entry_spec(json!({"id": "p", "spiffe_id": "spiffe://example.org/p", "parent_id": "spiffe://example.org/vouch/group/prod", "selectors": ["unix:uid:1"]}))).await.unwrap();
    let selector = |t: &str| format!("join_token:{}", &vouch_ca::keys::sha256_hex(t.as_bytes())[..16]);
    local
        .groups()
        .create(&group_spec(
            json!({"spiffe_id": "spiffe://example.org/vouch/group/first", "selectors": [selector(&first)]}),
        ))
        .await
        .unwrap();
    local.entries().create(&entry_spec(json!({"id": "w", "spiffe_id": "spiffe://example.org/w", "parent_id": "spiffe://example.org/vouch/group/first", "selectors": ["unix:uid:1"]}))).await.unwrap();

    let (csr, key) = csr_and_key();
    let svid =
        anon.attest_join_token(&JoinTokenAttestation { token: first, csr: csr.clone() }).await.unwrap();
    let agent =
        AdminClient::tls(&addr, &td, &bundle_pem, Some((&chain_pem(&svid.cert_chain), &key))).unwrap();
    let mut sync = agent.sync().await.unwrap();
    assert_eq!(snapshot_ids(&next_change(&mut sync).await), ["w"]);
    // The same agent ID attests again with another token, labelled env=prod: other node selectors,
    // so it leaves group `first` and joins group `prod`.
    let again = anon.attest_join_token(&JoinTokenAttestation { token: second, csr }).await.unwrap();
    // The stream opened with the previous SVID ends (that SVID no longer works); the agent
    // reconnects with the new one and gets the other group's entry, not the first's.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match sync.next().await {
                Some(Ok(SyncLine::Ping)) => continue,
                None | Some(Err(_)) => return None,
                Some(Ok(line)) => return Some(line),
            }
        }
    })
    .await
    .expect("the stream of the previous SVID ends within 5 s");
    assert!(ended.is_none(), "the stream of the previous SVID sent {ended:?}");
    let agent =
        AdminClient::tls(&addr, &td, &bundle_pem, Some((&chain_pem(&again.cert_chain), &key))).unwrap();
    let mut sync = agent.sync().await.unwrap();
    assert_eq!(
        snapshot_ids(&next_change(&mut sync).await),
        ["p"],
        "one group's entry withdrawn, the other's sent"
    );
    assert!(local.groups().get("first").await.unwrap().members.is_empty());
    assert_eq!(local.groups().get("prod").await.unwrap().members, std::slice::from_ref(&id));
    let agents = local.agents().await.unwrap();
    let sels: Vec<String> = agents.agents[0].selectors.iter().map(ToString::to_string).collect();
    assert!(sels.contains(&"join_token:label:rack:r1".to_owned()), "{sels:?}");
    // Bad labels are refused when the token is made, with the rule.
    for (labels, want) in [(json!({"a:b": "x"}), "key `a:b`"), (json!({"env": ""}), "value of `env`")] {
        let req = JoinTokenRequest { labels: serde_json::from_value(labels).unwrap(), ..Default::default() };
        let (code, message) = refusal(local.create_join_token(&req).await, 400);
        assert!(code == "invalid_request" && message.contains(want), "{code}: {message}");
    }
    server.shutdown().await;
}

/// Bad node groups get a 400 that names the problem and change nothing; group IDs cannot be given
/// to workloads, but entries may be parented to them.
#[tokio::test]
async fn bad_node_groups_are_refused_with_reasons_and_change_nothing() {
    let state = state_in_memory(ManualClock::new()).await;
    let cases = [
        (
            json!({"spiffe_id": "spiffe://example.org/groups/prod", "selectors": ["x509pop:ca:dc1"]}),
            "is not a node group ID",
        ),
        (
            json!({"spiffe_id": "spiffe://example.org/vouch/group/a/b", "selectors": ["x509pop:ca:dc1"]}),
            "is not a node group ID",
        ),
        (
            json!({"spiffe_id": "spiffe://other.org/vouch/group/prod", "selectors": ["x509pop:ca:dc1"]}),
            "is not a node group ID",
        ),
        (
            json!({"spiffe_id": "spiffe://example.org/vouch/group/prod", "selectors": []}),
            "at least one node selector",
        ),
        (
            json!({"spiffe_id": "spiffe://example.org/vouch/group/prod", "selectors": ["unix:uid:0"]}),
            "`unix:uid:0` is not a node selector",
        ),
        (
            json!({"spiffe_id": "spiffe://example.org/vouch/group/prod", "selectors": ["nocolon"]}),
            "type:value",
        ),
        (
            json!({"spiffe_id": "spiffe://example.org/vouch/group/prod", "selectors": ["x509pop:ca:dc1"], "selector": []}),
            "unknown field `selector`",
        ),
    ];
    for (body, want) in cases {
        let (s, v) = call(&state, ROOT, "POST", "/v1/groups", Some(&body.to_string())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(want), "{want:?} in {message:?}");
    }
    let (s, v) = call(&state, ROOT, "GET", "/v1/groups", None).await;
    assert_eq!((s, v["groups"].as_array().unwrap().len()), (StatusCode::OK, 0), "nothing was created");
    let (s, _) = call(&state, ROOT, "GET", "/v1/groups/a%20b", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = call(&state, ROOT, "GET", "/v1/groups/prod", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // A group's ID is a parent, never an entry's identity; a malformed group parent is refused.
    let entry = |id: &str, parent: &str| {
        json!({"spiffe_id": id, "parent_id": parent, "selectors": ["unix:uid:1"]}).to_string()
    };
    let (s, v) = call(
        &state,
        ROOT,
        "POST",
        "/v1/entries",
        Some(&entry("spiffe://example.org/vouch/group/prod", "spiffe://example.org/agent/a")),
    )
    .await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("reserved_id")));
    assert!(v["error"]["message"].as_str().unwrap().contains("reserved for node groups"), "{v}");
    let (s, v) = call(
        &state,
        ROOT,
        "POST",
        "/v1/entries",
        Some(&entry("spiffe://example.org/w", "spiffe://example.org/vouch/group/a/b")),
    )
    .await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("reserved_id")), "{v}");
    assert_eq!(entry_count(&state).await, 0);
    let (s, v) = call(
        &state,
        ROOT,
        "POST",
        "/v1/entries",
        Some(&entry("spiffe://example.org/w", "spiffe://example.org/vouch/group/prod")),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // Agents may not manage groups.
    let (s, _) = call(
        &state,
        Caller::Anonymous,
        "POST",
        "/v1/groups",
        Some(
            &json!({"spiffe_id": "spiffe://example.org/vouch/group/prod", "selectors": ["x509pop:ca:dc1"]})
                .to_string(),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

/// A free loopback port (bound and released: the issuer URL must name the port before the start).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A self-signed web certificate for 127.0.0.1 and its key, written to `<name>.crt` and
/// `<name>.key` in `dir`.
fn web_cert(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap().self_signed(&key).unwrap();
    let (cert_file, key_file) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    (cert_file, key_file)
}

/// GETs `path` from the OIDC listener at `base` (http or https, trusting `ca`).
async fn oidc_get(base: &str, ca: Option<&Path>, path: &str) -> (u16, Value) {
    let url = vouch_http::Url::parse(base).unwrap();
    let trust = ca.map(|c| vouch_http::Trust::CaFile(c.to_owned()));
    let getter = vouch_http::Getter::new(&url, trust.as_ref()).unwrap();
    let (status, body) = getter.get(path, None, 64 * 1024, Duration::from_secs(10)).await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// The OIDC issuer listener, on plain HTTP (as behind an ingress) and on HTTPS with a configured
/// certificate: the discovery document names the configured issuer and the JWKS, the JWKS holds the
/// JWT keys of the bundle and nothing else (no X.509 authority, no private member), a JWT-SVID
/// carries the issuer as `iss` and validates with the served keys, and nothing but those two
/// documents is reachable (other paths 404, other methods 405).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_listener_serves_discovery_and_the_jwt_keys_only() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let issuer = format!("http://127.0.0.1:{port}");
    let extra = format!(
        "[ca]\njwt_issuer = \"{issuer}\"\n[oidc]\nlisten = \"127.0.0.1:{port}\"\nallow_http_issuer = true\n"
    );
    let (server, local, _) = start_with(dir.path(), &extra).await;
    assert_eq!(server.oidc_addr.unwrap().port(), port);

    let (status, doc) = oidc_get(&issuer, None, "/.well-known/openid-configuration").await;
    assert_eq!(status, 200);
    assert_eq!(doc["issuer"], json!(issuer));
    assert_eq!(doc["jwks_uri"], json!(format!("{issuer}/keys")));
    assert_eq!(doc["id_token_signing_alg_values_supported"], json!(["ES256"]));
    assert_eq!(doc["response_types_supported"], json!(["id_token"]));
    assert_eq!(doc["subject_types_supported"], json!(["public"]));

    let (status, jwks) = oidc_get(&issuer, None, "/keys").await;
    assert_eq!(status, 200);
    let bundle = server.state.with_authority(|a| a.bundle());
    let keys = jwks["keys"].as_array().unwrap();
    let kids: Vec<&str> = keys.iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert_eq!(kids, bundle.jwt_authorities.keys().map(String::as_str).collect::<Vec<_>>());
    for k in keys {
        assert!(k.get("d").is_none() && k.get("x5c").is_none(), "public JWT keys only: {k}");
        assert_eq!((k["use"].as_str(), k["alg"].as_str()), (Some("sig"), Some("ES256")));
    }

    // A JWT-SVID names the issuer and validates with the keys served.
    let v: Value = local
        .call(
            "POST",
            "/v1/svids/jwt",
            Some(&json!({"spiffe_id": "spiffe://example.org/web", "audience": ["bao"]})),
        )
        .await
        .unwrap();
    let token = v["token"].as_str().unwrap();
    let served = vouch_ca::bundle::jwks_keys(&jwks.to_string()).unwrap();
    let td = vouch_core::TrustDomain::new("example.org").unwrap();
    let claims = vouch_ca::jwt::validate(token, &served, &td, "bao", SystemTime::now()).unwrap();
    assert_eq!(claims.iss.as_deref(), Some(issuer.as_str()));

    // Nothing else is served here: not the admin API, not the SPIFFE bundle.
    for path in ["/v1/bundle", "/v1/entries", "/", "/keys/", "/.well-known/openid-configuration/x"] {
        assert_eq!(oidc_get(&issuer, None, path).await.0, 404, "{path}");
    }
    // Other methods, through the same router without a socket, with the caching headers.
    let app = vouch_server::oidc_router(server.state.clone()).unwrap();
    for (method, path, want) in [
        ("POST", "/keys", StatusCode::METHOD_NOT_ALLOWED),
        ("DELETE", "/.well-known/openid-configuration", StatusCode::METHOD_NOT_ALLOWED),
        ("PUT", "/v1/entries", StatusCode::NOT_FOUND),
        ("GET", "/keys", StatusCode::OK),
    ] {
        let req = Request::builder().method(method).uri(path).body(Body::from("{}")).unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), want, "{method} {path}");
        if want == StatusCode::OK {
            // A sixth of the JWT key life (24 h by default), at most five minutes.
            assert_eq!(resp.headers()["cache-control"], "public, max-age=300");
            assert_eq!(resp.headers()["content-type"], "application/json");
        }
    }
    server.shutdown().await;

    // HTTPS with a configured certificate.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (cert_file, key_file) = web_cert(dir.path(), "oidc");
    let issuer = format!("https://127.0.0.1:{port}");
    let extra = format!(
        "[ca]\njwt_issuer = \"{issuer}\"\n[oidc]\nlisten = \"127.0.0.1:{port}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert_file.display(),
        key_file.display()
    );
    let (server, _, _) = start_with(dir.path(), &extra).await;
    let (status, doc) = oidc_get(&issuer, Some(&cert_file), "/.well-known/openid-configuration").await;
    assert_eq!((status, doc["jwks_uri"].as_str()), (200, Some(format!("{issuer}/keys").as_str())));
    let (status, jwks) = oidc_get(&issuer, Some(&cert_file), "/keys").await;
    assert_eq!((status, jwks["keys"].as_array().map(Vec::len)), (200, Some(1)));
    server.shutdown().await;

    // A bad key file stops the start with an error naming it, not its content.
    std::fs::write(&key_file, "not a key").unwrap();
    let text = format!(
        "version = 1\ntrust_domain = \"example.org\"\ndata_dir = \"{}\"\n{extra}",
        dir.path().join("data2").display()
    );
    let err =
        Server::start(Config::from_toml(&text, &no_env).unwrap(), Arc::new(vouch_server::SystemClock), None)
            .await
            .unwrap_err()
            .to_string();
    assert!(err.contains("oidc.tls_key") && !err.contains("not a key"), "{err}");
}

/// Connections to the OIDC listener are bounded per source: past the bound, new ones are closed at
/// once while the held ones stay, and slots are given back when connections close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_listener_bounds_connections_per_source() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let extra = format!(
        "[ca]\njwt_issuer = \"http://127.0.0.1:{port}\"\n[oidc]\nlisten = \"127.0.0.1:{port}\"\nallow_http_issuer = true\n"
    );
    let (server, _, _) = start_with(dir.path(), &extra).await;
    let mut held = Vec::new();
    for _ in 0..32 {
        held.push(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    // The 33rd is accepted by the kernel and closed by the server without an answer.
    let mut extra_conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let _ = extra_conn.write_all(b"GET /keys HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(10), extra_conn.read_to_end(&mut buf)).await.unwrap();
    assert!(n.is_err() || buf.is_empty(), "over the bound: {}", String::from_utf8_lossy(&buf));
    // A held connection is still served.
    let conn = &mut held[0];
    conn.write_all(b"GET /keys HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut buf)).await.unwrap().unwrap();
    assert!(buf.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf));
    // Once connections are given back, new ones are served again.
    drop(held);
    let base = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let url = vouch_http::Url::parse(&base).unwrap();
        let got = vouch_http::Getter::new(&url, None)
            .unwrap()
            .get("/keys", None, 65536, Duration::from_secs(5))
            .await;
        if matches!(got, Ok((200, _))) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "slots were not given back: {got:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.shutdown().await;
}

/// Review (wt-r): an agent is authenticated by its current SVID, not by its SPIFFE ID alone. When a
/// join token for the same agent ID is used by another node (the identity moved, say to replace a
/// node), the first node's SVID is superseded: it can no longer sign. Its sync stream, opened with
/// that SVID, must not go on receiving the entries the new node's groups serve (nor any later
/// change): it is closed, and the first node would have to authenticate again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superseded_agent_svid_keeps_no_sync_stream_for_the_new_holders_groups() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let local = AdminClient::unix(&server.admin_socket);
    let addr = server.tcp_addr.unwrap().to_string();
    let td = vouch_core::TrustDomain::new("example.org").unwrap();
    let bundle_pem = local.bundle_pem().await.unwrap();
    let anon = AdminClient::tls(&addr, &td, &bundle_pem, None).unwrap();
    let id = spiffe_id("spiffe://example.org/agent/moved");
    let token = |labels: Value| {
        let req = JoinTokenRequest {
            agent_id: Some(id.clone()),
            labels: serde_json::from_value(labels).unwrap(),
            ..Default::default()
        };
        let local = &local;
        async move { local.create_join_token(&req).await.unwrap().token }
    };
    let (old_token, new_token) = (token(json!({"env": "dev"})).await, token(json!({"env": "prod"})).await);
    local
        .groups()
        .create(&group_spec(
            json!({"spiffe_id": "spiffe://example.org/vouch/group/prod", "selectors": ["join_token:label:env:prod"]}),
        ))
        .await
        .unwrap();
    local.entries().create(&entry_spec(json!({"id": "prod-db", "spiffe_id": "spiffe://example.org/prod-db", "parent_id": "spiffe://example.org/vouch/group/prod", "selectors": ["unix:uid:1"]}))).await.unwrap();

    // Node A attests (env=dev: not in `prod`) and opens its sync stream.
    let (csr_a, key_a) = csr_and_key();
    let svid_a =
        anon.attest_join_token(&JoinTokenAttestation { token: old_token, csr: csr_a }).await.unwrap();
    let node_a =
        AdminClient::tls(&addr, &td, &bundle_pem, Some((&chain_pem(&svid_a.cert_chain), &key_a))).unwrap();
    let mut sync_a = node_a.sync().await.unwrap();
    assert!(snapshot_ids(&next_change(&mut sync_a).await).is_empty());

    // Node B, with its own key, takes the agent ID with the env=prod token.
    let (csr_b, _key_b) = csr_and_key();
    anon.attest_join_token(&JoinTokenAttestation { token: new_token, csr: csr_b }).await.unwrap();
    // Node A's SVID is superseded: a new stream is refused (the server's own rule).
    assert!(node_a.sync().await.is_err(), "a superseded SVID opens no sync stream");
    // Its open stream must not now carry the prod group's entries, nor later changes.
    local.entries().create(&entry_spec(json!({"id": "prod-cache", "spiffe_id": "spiffe://example.org/prod-cache", "parent_id": "spiffe://example.org/vouch/group/prod", "selectors": ["unix:uid:1"]}))).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        match tokio::time::timeout_at(deadline, sync_a.next()).await {
            Err(_) | Ok(None) | Ok(Some(Err(_))) => break,
            Ok(Some(Ok(SyncLine::Ping))) => continue,
            Ok(Some(Ok(SyncLine::Closed { .. }))) => break,
            Ok(Some(Ok(line))) => {
                let text = format!("{line:?}");
                assert!(
                    !text.contains("prod-db") && !text.contains("prod-cache"),
                    "the stream of a superseded SVID received the new holder's group entries: {text}"
                );
            }
        }
    }
    server.shutdown().await;
}

/// An agent's sync stream opened through the app (no socket), read line by line with a bound.
struct AppSync {
    body: Body,
    buf: Vec<u8>,
}

impl AppSync {
    async fn open(state: &Arc<AppState>, svid: &vouch_api::agent::AgentSvid) -> Self {
        let mut req = Request::builder().method("GET").uri("/v1/agent/sync").body(Body::empty()).unwrap();
        req.extensions_mut().insert(agent_caller(svid));
        let resp =
            tokio::time::timeout(Duration::from_secs(10), vouch_server::app(state.clone()).oneshot(req))
                .await
                .expect("the sync stream answers within 10 s")
                .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        Self { body: resp.into_body(), buf: Vec::new() }
    }

    /// The next line that is not a ping, or `None` when none arrives within `limit`.
    async fn next_within(&mut self, limit: Duration) -> Option<SyncLine<'static>> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                match serde_json::from_slice::<SyncLine<'static>>(&line).expect("a valid sync line") {
                    SyncLine::Ping => continue,
                    other => return Some(other),
                }
            }
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Err(_) => return None,
                Ok(None) => panic!("the sync stream ended"),
                Ok(Some(frame)) => {
                    if let Ok(data) = frame.unwrap().into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// The next line that is not a ping, within 10 s.
    async fn next(&mut self) -> SyncLine<'static> {
        self.next_within(Duration::from_secs(10)).await.expect("a sync line within 10 s")
    }

    /// Asserts that nothing but pings arrives for a while.
    async fn quiet(&mut self, who: &str) {
        if let Some(line) = self.next_within(Duration::from_millis(300)).await {
            panic!("{who}'s stream received {line:?}, which does not concern it");
        }
    }
}

/// An admin call through the app that must answer `want`; its answer.
async fn admin_call(
    state: &Arc<AppState>,
    method: &str,
    path: &str,
    body: Option<Value>,
    want: StatusCode,
) -> Value {
    let (s, v) = call(state, ROOT, method, path, body.map(|b| b.to_string()).as_deref()).await;
    assert_eq!(s, want, "{method} {path}: {v}");
    v
}

fn upserted(line: &SyncLine<'_>) -> String {
    match line {
        SyncLine::Upsert { entry } => entry.id.to_string(),
        other => panic!("expected an upsert, got {other:?}"),
    }
}

fn deleted(line: &SyncLine<'_>) -> String {
    match line {
        SyncLine::Delete { id } => id.to_string(),
        other => panic!("expected a delete, got {other:?}"),
    }
}

/// Issue 9 §6: each change is routed to the sync streams it concerns, and queued for no other (the
/// server's count of routed changes shows it, not only the lines on the wire): an agent's entry to
/// that agent; an entry moved from agent A to agent B to both (a delete for A, an upsert for B); a
/// group's entry to every member; a bundle change to every stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_changes_are_routed_only_to_the_streams_they_concern() {
    let state = state_with("").await;
    let group = json!({"spiffe_id": "spiffe://example.org/vouch/group/prod", "selectors": ["join_token:label:env:prod"], "owner": "ops"});
    admin_call(&state, "POST", "/v1/groups", Some(group), StatusCode::CREATED).await;
    let (a, b, c) =
        ("spiffe://example.org/agent/a", "spiffe://example.org/agent/b", "spiffe://example.org/agent/c");
    let mut streams = Vec::new();
    for (agent, env) in [(a, "prod"), (b, "prod"), (c, "dev")] {
        let svid = attest_in_app_labelled(&state, agent, json!({ "env": env })).await.unwrap();
        let mut sync = AppSync::open(&state, &svid).await;
        assert!(snapshot_ids(&sync.next().await).is_empty());
        streams.push(sync);
    }
    let [sa, sb, sc] = &mut streams[..] else { unreachable!() };
    assert_eq!(metric(&state, "vouch_sync_streams").await, 3);
    // How many changes an admin call queued for streams.
    let routed = |method: &'static str, path: &'static str, body: Option<Value>, want: StatusCode| {
        let state = state.clone();
        async move {
            let before = metric(&state, "vouch_sync_events_routed_total").await;
            let answer = admin_call(&state, method, path, body, want).await;
            (answer, metric(&state, "vouch_sync_events_routed_total").await - before)
        }
    };

    // An agent's entry: queued for its stream alone.
    let own = json!({"id": "own", "spiffe_id": "spiffe://example.org/own", "parent_id": a, "selectors": ["unix:uid:1"]});
    let (created, n) = routed("POST", "/v1/entries", Some(own), StatusCode::CREATED).await;
    assert_eq!(upserted(&sa.next().await), "own");
    sb.quiet("b").await;
    sc.quiet("c").await;
    assert_eq!(n, 1, "only a's stream was given the change");

    // Moved from a to b: a deletes it, b gets it, c hears nothing.
    let patch = json!({"expected_revision": created["revision"], "parent_id": b});
    let (_, n) = routed("PATCH", "/v1/entries/own", Some(patch), StatusCode::OK).await;
    assert_eq!((deleted(&sa.next().await), upserted(&sb.next().await)), ("own".into(), "own".into()));
    sc.quiet("c").await;
    assert_eq!(n, 2);

    // A group's entry: every member, not c.
    let web = json!({"id": "web", "spiffe_id": "spiffe://example.org/web", "parent_id": "spiffe://example.org/vouch/group/prod", "selectors": ["unix:uid:2"]});
    let (_, n) = routed("POST", "/v1/entries", Some(web), StatusCode::CREATED).await;
    assert_eq!((upserted(&sa.next().await), upserted(&sb.next().await)), ("web".into(), "web".into()));
    sc.quiet("c").await;
    assert_eq!(n, 2);

    // Deleted under b: b alone.
    let (_, n) = routed("DELETE", "/v1/entries/own", None, StatusCode::OK).await;
    assert_eq!(deleted(&sb.next().await), "own");
    sa.quiet("a").await;
    sc.quiet("c").await;
    assert_eq!(n, 1);

    // A batch for a and c: each stream gets its own entries, in order, and nothing else; c's
    // stream was quiet above because nothing concerned it, not because it stopped.
    let batch = json!({"entries": [
        {"id": "a1", "spiffe_id": "spiffe://example.org/a1", "parent_id": a, "selectors": ["unix:uid:3"]},
        {"id": "c1", "spiffe_id": "spiffe://example.org/c1", "parent_id": c, "selectors": ["unix:uid:3"]},
        {"id": "a2", "spiffe_id": "spiffe://example.org/a2", "parent_id": a, "selectors": ["unix:uid:3"]},
    ]});
    let (_, n) = routed("POST", "/v1/entries/batch", Some(batch), StatusCode::CREATED).await;
    assert_eq!([upserted(&sa.next().await), upserted(&sa.next().await)], ["a1", "a2"]);
    assert_eq!(upserted(&sc.next().await), "c1");
    sb.quiet("b").await;
    assert_eq!(n, 3);

    // A closed stream is forgotten.
    streams.truncate(1);
    let gone = async {
        while metric(&state, "vouch_sync_streams").await != 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), gone).await.expect("closed streams unregister");
}

/// Issue 9 §6: a stream whose agent does not read falls behind; its queue is bounded (the server
/// holds at most `SYNC_QUEUE_BOUND` changes for it), and once it reads again it gets a fresh
/// snapshot with everything instead of the changes it missed, then live changes again. Another
/// agent's stream is not disturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_stream_that_falls_behind_gets_a_fresh_snapshot_not_unbounded_memory() {
    let state = state_with("").await;
    let slow_id = "spiffe://example.org/agent/slow";
    let slow_svid = attest_in_app_labelled(&state, slow_id, json!({})).await.unwrap();
    let other_svid =
        attest_in_app_labelled(&state, "spiffe://example.org/agent/other", json!({})).await.unwrap();
    // Opened, and then not read until the end: its connection's buffers fill, then its queue.
    let mut slow = AppSync::open(&state, &slow_svid).await;
    let mut other = AppSync::open(&state, &other_svid).await;
    assert!(snapshot_ids(&other.next().await).is_empty());
    let batches = vouch_server::SYNC_QUEUE_BOUND / 1000 + 2;
    for k in 0..batches {
        let entries: Vec<Value> = (0..1000)
            .map(|i| json!({"id": format!("s-{k}-{i}"), "spiffe_id": format!("spiffe://example.org/s/{k}/{i}"), "parent_id": slow_id, "selectors": ["unix:uid:1"]}))
            .collect();
        admin_call(
            &state,
            "POST",
            "/v1/entries/batch",
            Some(json!({ "entries": entries })),
            StatusCode::CREATED,
        )
        .await;
        assert!(
            state.sync.queued() <= vouch_server::SYNC_QUEUE_BOUND,
            "{} changes held for one stream",
            state.sync.queued()
        );
    }
    assert_eq!(metric(&state, "vouch_sync_overflows_total").await, 1);
    assert_eq!(state.sync.queued(), 0, "an overflowed stream holds nothing until it resyncs");
    other.quiet("other").await;

    // Reading again: the lines written before it fell behind, then a snapshot with every entry.
    assert!(snapshot_ids(&slow.next().await).is_empty());
    let total = batches * 1000;
    let mut upserts = 0;
    let resynced = loop {
        match slow.next().await {
            SyncLine::Upsert { .. } => upserts += 1,
            SyncLine::Snapshot { entries, .. } => break entries.len(),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(resynced, total);
    assert!(upserts < total, "the missed changes were not replayed one by one");
    // Live again.
    let late = json!({"id": "late", "spiffe_id": "spiffe://example.org/late", "parent_id": slow_id, "selectors": ["unix:uid:1"]});
    admin_call(&state, "POST", "/v1/entries", Some(late), StatusCode::CREATED).await;
    assert_eq!(upserted(&slow.next().await), "late");
}

// Federation tests live beside this file; one test binary still (link time).
#[path = "server/federation.rs"]
mod federation;
#[path = "server/namespaces.rs"]
mod namespaces;
#[path = "server/policy.rs"]
mod policy;
#[path = "server/secrets.rs"]
mod secrets;

/// A form body (application/x-www-form-urlencoded) of these parameters.
fn form(params: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    params.iter().map(|(k, v)| format!("{}={}", enc(k), enc(v))).collect::<Vec<_>>().join("&")
}

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

/// `POST /v1/token` through the OIDC listener's router: the status, the JSON answer and its
/// Cache-Control.
async fn exchange(app: &axum::Router, params: &[(&str, &str)]) -> (StatusCode, Value, String) {
    let req = Request::builder()
        .method("POST")
        .uri("/v1/token")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(form(params)))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let cache =
        resp.headers().get("cache-control").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null), cache)
}

/// A standard exchange of `token` for a JWT-SVID with audience `bao`.
async fn exchange_token(app: &axum::Router, token: &str) -> (StatusCode, Value, String) {
    exchange(
        app,
        &[
            ("grant_type", EXCHANGE),
            ("subject_token", token),
            ("subject_token_type", JWT_TYPE),
            ("audience", "bao"),
        ],
    )
    .await
}

fn exchanged_count(dir: &Path) -> i64 {
    let conn = rusqlite::Connection::open(dir.join("data").join("vouch.db")).unwrap();
    conn.query_row("SELECT COUNT(*) FROM exchanged_tokens", [], |r| r.get(0)).unwrap()
}

const CI: &str = "https://ci.example";

fn ci_claims(sub: &str, jti: Option<&str>, exp_in: i64, extra: Value) -> Value {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
    let mut c = json!({"iss": CI, "sub": sub, "aud": ["vouch", "other"], "iat": now, "exp": now + exp_in});
    if let Some(j) = jti {
        c["jti"] = j.into();
    }
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

/// A test directory, an external issuer with its JWKS file in it, and a free port for the OIDC listener.
fn ci_issuer() -> (tempfile::TempDir, vouch_ca::testing::EcJwtIssuer, std::path::PathBuf, u16) {
    let dir = tempfile::tempdir().unwrap();
    let ci = vouch_ca::testing::EcJwtIssuer::new("ci-1");
    let jwks_file = dir.path().join("ci-jwks.json");
    std::fs::write(&jwks_file, ci.jwks()).unwrap();
    (dir, ci, jwks_file, free_port())
}

/// RFC 8693 token exchange on the OIDC listener: a CI system's ES256 token (its JWKS in a file)
/// maps by rule to a SPIFFE ID, and the answer is a JWT-SVID for the requested audience that
/// validates with vouch's JWKS; each subject token is accepted once (also after a restart); bad
/// tokens and requests are refused with the RFC 6749 error and a reason, and store nothing; the
/// issuer's JWKS file is read again when it changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_exchange_maps_external_tokens_to_jwt_svids_once() {
    let (dir, ci, jwks_file, port) = ci_issuer();
    let issuer = format!("http://127.0.0.1:{port}");
    let extra = format!(
        "[ca]\njwt_issuer = \"{issuer}\"\n[oidc]\nlisten = \"127.0.0.1:{port}\"\nallow_http_issuer = true\n\
         [[token_exchange.issuer]]\nissuer = \"{CI}\"\njwks_file = \"{}\"\n\
         [[token_exchange.rule]]\nname = \"deploy\"\nissuer = \"{CI}\"\naudience = \"vouch\"\nsubject = \"repo:acme/*\"\n\
         claims = {{ environment = \"prod\" }}\nspiffe_id = \"spiffe://example.org/ci/deploy\"\n\
         [[token_exchange.rule]]\nname = \"runner\"\nissuer = \"{CI}\"\naudience = \"vouch\"\nclaims = {{ runner = \"yes\" }}\n\
         spiffe_id = \"spiffe://example.org/runner/{{sub}}\"\n",
        jwks_file.display()
    );
    let (server, _, _) = start_with(dir.path(), &extra).await;
    let app = vouch_server::oidc_router(server.state.clone()).unwrap();

    // A deploy token: a JWT-SVID for `bao`, valid with the keys of vouch's OIDC JWKS.
    let deploy = ci.sign(&ci_claims("repo:acme/app", Some("j-1"), 300, json!({"environment": "prod"})));
    let (status, answer, cache) = exchange_token(&app, &deploy).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(cache, "no-store");
    assert_eq!(answer["issued_token_type"], JWT_TYPE);
    assert_eq!(answer["token_type"], "N_A");
    let expires_in = answer["expires_in"].as_i64().unwrap();
    assert!((1..=300).contains(&expires_in), "{answer}");
    let keys_req = Request::builder().uri("/keys").body(Body::empty()).unwrap();
    let jwks = app.clone().oneshot(keys_req).await.unwrap().into_body().collect().await.unwrap().to_bytes();
    let served = vouch_ca::bundle::jwks_keys(std::str::from_utf8(&jwks).unwrap()).unwrap();
    let td = vouch_core::TrustDomain::new("example.org").unwrap();
    let svid = answer["access_token"].as_str().unwrap();
    let claims = vouch_ca::jwt::validate(svid, &served, &td, "bao", SystemTime::now()).unwrap();
    assert_eq!(claims.sub.to_string(), "spiffe://example.org/ci/deploy");
    assert_eq!(claims.iss.as_deref(), Some(issuer.as_str()));
    assert!(vouch_ca::jwt::validate(svid, &served, &td, "vouch", SystemTime::now()).is_err(), "only `bao`");

    // The same token again: a replay.
    let (status, answer, _) = exchange_token(&app, &deploy).await;
    assert_eq!((status, answer["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")));
    assert!(answer["error_description"].as_str().unwrap().contains("exchanged already"), "{answer}");

    // `{sub}` in the rule's SPIFFE ID; without `jti`, the token's hash is its key.
    let runner = ci.sign(&ci_claims("build-7", None, 300, json!({"runner": "yes"})));
    let (status, answer, _) = exchange_token(&app, &runner).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let claims = server
        .state
        .with_authority(|a| {
            a.validate_jwt(answer["access_token"].as_str().unwrap(), "bao", SystemTime::now())
        })
        .unwrap();
    assert_eq!(claims.sub.to_string(), "spiffe://example.org/runner/build-7");
    assert_eq!(exchange_token(&app, &runner).await.0, StatusCode::BAD_REQUEST, "replay without jti");
    // A subject that cannot stand in a SPIFFE ID path.
    let bad_sub = ci.sign(&ci_claims("../admin", None, 300, json!({"runner": "yes"})));
    let (_, answer, _) = exchange_token(&app, &bad_sub).await;
    assert!(answer["error_description"].as_str().unwrap().contains("rule `runner`"), "{answer}");
    assert_eq!(exchanged_count(dir.path()), 2);

    // Bad tokens: refused with the reason, nothing stored.
    let b64 = |v: Value| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let good_claims = || ci_claims("repo:acme/app", Some("j-2"), 300, json!({"environment": "prod"}));
    let mut evil = good_claims();
    evil["iss"] = "https://evil.example".into();
    let stranger = vouch_ca::testing::EcJwtIssuer::new("ci-1");
    let none = format!("{}.{}.", b64(json!({"alg": "none", "kid": "ci-1"})), b64(good_claims()));
    let hmac = ci.sign_with_header(&json!({"alg": "HS256"}), &good_claims());
    let oversize = ci.sign(&ci_claims(
        "repo:acme/app",
        Some("j-3"),
        300,
        json!({"environment": "prod", "pad": "x".repeat(17 * 1024)}),
    ));
    for (token, want) in [
        (ci.sign(&evil), "issuer `https://evil.example` is not trusted"),
        (
            ci.sign(&ci_claims("repo:acme/app", Some("j-4"), -120, json!({"environment": "prod"}))),
            "expired at",
        ),
        (stranger.sign(&good_claims()), "signature does not verify"),
        (none, "alg `none`"),
        (hmac, "HMAC"),
        (oversize, "larger than 16384 bytes"),
        (
            ci.sign(&ci_claims("repo:acme/app", Some("j-5"), 300, json!({"environment": "dev"}))),
            "closest is rule `deploy` (3 of 4 conditions met): claim `environment` is not `prod`",
        ),
        ("not-a-jwt".to_owned(), "not a JWT"),
        (
            ci.sign(&ci_claims(
                "repo:acme/app",
                Some("j-7"),
                300,
                json!({"environment": "prod", "nbf": i64::MAX}),
            )),
            "not valid before",
        ),
        (
            ci.sign(&ci_claims(
                "repo:acme/app",
                Some("j-8"),
                300,
                json!({"environment": "prod", "iat": i64::MAX}),
            )),
            "issued in the future",
        ),
    ] {
        let (status, answer, cache) = exchange_token(&app, &token).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_request")),
            "{want}"
        );
        let why = answer["error_description"].as_str().unwrap();
        assert!(why.contains(want), "{want}: {why}");
        assert!(!why.contains(&token[..token.len().min(40)]), "the token is never echoed: {why}");
        assert_eq!(cache, "no-store");
    }
    // Bad requests, with a good token that is then still unused.
    let fresh = ci.sign(&good_claims());
    for (params, error, want) in [
        (
            vec![
                ("grant_type", EXCHANGE),
                ("subject_token", fresh.as_str()),
                ("subject_token_type", JWT_TYPE),
            ],
            "invalid_request",
            "`audience` is missing",
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("subject_token", &fresh),
                ("subject_token_type", JWT_TYPE),
                ("audience", "bao"),
            ],
            "unsupported_grant_type",
            "grant_type must be",
        ),
        (
            vec![
                ("grant_type", EXCHANGE),
                ("subject_token", &fresh),
                ("subject_token_type", "urn:x"),
                ("audience", "bao"),
            ],
            "invalid_request",
            "subject_token_type must be",
        ),
        (
            vec![
                ("grant_type", EXCHANGE),
                ("subject_token", &fresh),
                ("subject_token_type", JWT_TYPE),
                ("audience", ""),
            ],
            "invalid_target",
            "audience",
        ),
        (
            vec![
                ("grant_type", EXCHANGE),
                ("grant_type", EXCHANGE),
                ("subject_token", &fresh),
                ("subject_token_type", JWT_TYPE),
                ("audience", "bao"),
            ],
            "invalid_request",
            "more than once",
        ),
    ] {
        let (status, answer, _) = exchange(&app, &params).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some(error)),
            "{want}: {answer}"
        );
        assert!(answer["error_description"].as_str().unwrap().contains(want), "{want}: {answer}");
    }
    assert_eq!(exchanged_count(dir.path()), 2, "refusals store nothing");
    // The ID token type is accepted too; the token refused above for its request is unused.
    let (status, answer, _) = exchange(
        &app,
        &[
            ("grant_type", EXCHANGE),
            ("subject_token", &fresh),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:id_token"),
            ("audience", "bao"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");

    // The issuer rotates its key: the file is read again.
    let rotated = vouch_ca::testing::EcJwtIssuer::new("ci-2");
    std::fs::write(&jwks_file, rotated.jwks()).unwrap();
    let (status, answer, _) = exchange_token(
        &app,
        &rotated.sign(&ci_claims("repo:acme/web", Some("j-6"), 300, json!({"environment": "prod"}))),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");

    // Concurrent exchanges are recorded together: of 16 presentations of one token exactly one
    // succeeds, and 16 distinct tokens at once all do.
    let once = rotated.sign(&ci_claims("repo:acme/web", Some("j-10"), 300, json!({"environment": "prod"})));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (app, once) = (app.clone(), once.clone());
            tokio::spawn(async move { exchange_token(&app, &once).await.0 })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        ok += usize::from(t.await.unwrap() == StatusCode::OK);
    }
    assert_eq!(ok, 1, "one token, one exchange");
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let app = app.clone();
            let token = rotated.sign(&ci_claims(
                "repo:acme/web",
                Some(&format!("c-{i}")),
                300,
                json!({"environment": "prod"}),
            ));
            tokio::spawn(async move { exchange_token(&app, &token).await.0 })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }

    // The largest `exp` a token can carry is no overflow.
    let mut forever = ci_claims("repo:acme/web", Some("j-9"), 300, json!({"environment": "prod"}));
    forever["exp"] = i64::MAX.into();
    let (status, answer, _) = exchange_token(&app, &rotated.sign(&forever)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");

    // After a restart (with the first key back), a replay is still refused.
    server.shutdown().await;
    std::fs::write(&jwks_file, ci.jwks()).unwrap();
    let (server, _, _) = start_with(dir.path(), &extra).await;
    let app = vouch_server::oidc_router(server.state.clone()).unwrap();
    let (status, answer, _) = exchange_token(&app, &deploy).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(answer["error_description"].as_str().unwrap().contains("exchanged already"), "{answer}");
    server.shutdown().await;

    // Configuration is checked at start.
    let base = format!("version = 1\ndata_dir = \"{}\"\n", dir.path().display());
    let issuer_section =
        format!("[[token_exchange.issuer]]\nissuer = \"{CI}\"\njwks_file = \"{}\"\n", jwks_file.display());
    for (text, want) in [
        (issuer_section.clone() + "[[token_exchange.rule]]\nname = \"r\"\nissuer = \"" + CI + "\"\naudience = \"v\"\nspiffe_id = \"spiffe://example.org/x\"\n", "token_exchange needs [oidc]"),
        (format!("[ca]\njwt_issuer = \"https://x.example\"\n[oidc]\nlisten = \"127.0.0.1:0\"\n{issuer_section}"), "has no [[token_exchange.rule]]"),
        (format!("[[token_exchange.issuer]]\nissuer = \"{CI}\"\njwks_file = \"/nonexistent\"\n"), "cannot read jwks_file /nonexistent"),
        (issuer_section.clone() + "[[token_exchange.rule]]\nname = \"r\"\nissuer = \"https://other\"\naudience = \"v\"\nspiffe_id = \"spiffe://example.org/x\"\n", "is not a [[token_exchange.issuer]]"),
        (issuer_section.clone() + "[[token_exchange.rule]]\nname = \"r\"\nissuer = \"" + CI + "\"\nspiffe_id = \"spiffe://example.org/x\"\n", "needs a condition"),
        (issuer_section.clone() + "algorithms = [\"HS256\"]\n", "algorithm `HS256`"),
    ] {
        let err = Config::from_toml(&(base.clone() + &text), &no_env).unwrap_err().to_string();
        assert!(err.contains(want), "{want}: {err}");
    }
}

/// Exchanges are limited per issuer, and only tokens whose signature verifies are charged: forged
/// tokens naming the issuer cannot spend its budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_exchange_is_rate_limited_per_issuer_on_verified_tokens() {
    let (dir, ci, jwks_file, port) = ci_issuer();
    let extra = format!(
        "[ca]\njwt_issuer = \"http://127.0.0.1:{port}\"\n[oidc]\nlisten = \"127.0.0.1:{port}\"\nallow_http_issuer = true\n\
         [token_exchange]\nper_second = 0.01\nburst = 2\n\
         [[token_exchange.issuer]]\nissuer = \"{CI}\"\njwks_file = \"{}\"\n\
         [[token_exchange.rule]]\nname = \"ci\"\nissuer = \"{CI}\"\naudience = \"vouch\"\nspiffe_id = \"spiffe://example.org/ci\"\n",
        jwks_file.display()
    );
    let (server, _, _) = start_with(dir.path(), &extra).await;
    let app = vouch_server::oidc_router(server.state.clone()).unwrap();
    let forger = vouch_ca::testing::EcJwtIssuer::new("ci-1");
    for i in 0..5 {
        let forged = forger.sign(&ci_claims("x", Some(&format!("f-{i}")), 300, json!({})));
        assert_eq!(exchange_token(&app, &forged).await.0, StatusCode::BAD_REQUEST);
    }
    for i in 0..2 {
        let (status, answer, _) =
            exchange_token(&app, &ci.sign(&ci_claims("x", Some(&format!("g-{i}")), 300, json!({})))).await;
        assert_eq!(status, StatusCode::OK, "the burst is whole after forged tokens: {answer}");
    }
    let req = Request::builder()
        .method("POST")
        .uri("/v1/token")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(form(&[
            ("grant_type", EXCHANGE),
            ("subject_token", &ci.sign(&ci_claims("x", Some("g-3"), 300, json!({})))),
            ("subject_token_type", JWT_TYPE),
            ("audience", "bao"),
        ])))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["error"], "temporarily_unavailable");
    assert_eq!(exchanged_count(dir.path()), 2, "a limited exchange stores nothing");
    server.shutdown().await;
}

/// Token exchange with an issuer's keys from its OIDC discovery document: nothing fetched before
/// the first token; a document of another issuer, a malformed document and a JWKS without a usable
/// key give 503 with the reason and store nothing; once fetched, an endpoint that starts answering
/// garbage leaves the last good keys in use, and a token with an unknown `kid` asks again at most
/// every MIN_REFETCH.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_exchange_issuer_keys_come_from_oidc_discovery() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let idp = vouch_http::testing::StaticHttps::start(None).await;
    let ca = dir.path().join("idp-ca.pem");
    std::fs::write(&ca, &idp.cert_pem).unwrap();
    let discovery =
        |issuer: &str| json!({"issuer": issuer, "jwks_uri": format!("{}/jwks", idp.base_url())}).to_string();
    let ci = vouch_ca::testing::EcJwtIssuer::new("ci-1");
    let extra = format!(
        "[ca]\njwt_issuer = \"http://127.0.0.1:{port}\"\n[oidc]\nlisten = \"127.0.0.1:{port}\"\nallow_http_issuer = true\n\
         [[token_exchange.issuer]]\nissuer = \"{CI}\"\ndiscovery_url = \"{}\"\ndiscovery_ca = \"{}\"\n\
         [[token_exchange.rule]]\nname = \"ci\"\nissuer = \"{CI}\"\naudience = \"vouch\"\nspiffe_id = \"spiffe://example.org/ci\"\n",
        idp.base_url(),
        ca.display()
    );
    let (server, _, _) = start_with(dir.path(), &extra).await;
    let app = vouch_server::oidc_router(server.state.clone()).unwrap();
    assert_eq!(idp.requests(), 0, "nothing is fetched before the first token");
    let token = |jti: &str| ci.sign(&ci_claims("repo:acme/app", Some(jti), 300, json!({})));

    // Unusable endpoints: the fetch says why, and an exchange meanwhile gets 503 and records
    // nothing (the same token works later); the endpoint is asked at most every MIN_REFETCH.
    let pending = token("j-1");
    for (doc, jwks, want) in [
        (discovery("https://evil.example"), ci.jwks(), "not the configured"),
        ("{\"issuer\": 7".to_owned(), ci.jwks(), "not a JSON discovery document"),
        (
            discovery(CI),
            r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}"#.to_owned(),
            "unsupported key type",
        ),
        (discovery(CI), r#"{"keys":[]}"#.to_owned(), "no signing keys"),
    ] {
        idp.set("/.well-known/openid-configuration", doc);
        idp.set("/jwks", jwks);
        let issuer = &server.state.config.token_exchange.as_ref().unwrap().issuers[0];
        let vouch_server::IssuerKeySource::Discovery(d) = &issuer.keys else { panic!("discovery") };
        let err = vouch_server::fetch_issuer_keys(CI, d).await.unwrap_err().to_string();
        assert!(err.contains(want), "{err}");
    }
    let before = idp.requests();
    for _ in 0..3 {
        let (status, answer, _) = exchange_token(&app, &pending).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
        assert_eq!(answer["error"], "temporarily_unavailable");
        assert!(answer["error_description"].as_str().unwrap().contains("cannot be fetched now"), "{answer}");
    }
    assert_eq!(idp.requests(), before + 2, "one fetch (document and JWKS) for three tokens");
    assert_eq!(exchanged_count(dir.path()), 0);
    tokio::time::sleep(vouch_server::PSAT_MIN_REFETCH).await;

    // A good endpoint: the token that waited is exchanged now.
    idp.set("/.well-known/openid-configuration", discovery(CI));
    idp.set("/jwks", ci.jwks());
    let (status, answer, _) = exchange_token(&app, &pending).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let fetched = idp.requests();
    let (status, _, _) = exchange_token(&app, &token("j-2")).await;
    assert_eq!((status, idp.requests()), (StatusCode::OK, fetched), "cached");

    // The endpoint breaks: tokens of the known key go on working; an unknown kid asks once.
    idp.set("/jwks", "garbage");
    tokio::time::sleep(vouch_server::PSAT_MIN_REFETCH).await;
    let stranger = vouch_ca::testing::EcJwtIssuer::new("ci-2");
    let forged = stranger.sign(&ci_claims("repo:acme/app", Some("f-1"), 300, json!({})));
    assert_eq!(exchange_token(&app, &forged).await.0, StatusCode::BAD_REQUEST);
    let asked = idp.requests();
    assert!(asked > fetched, "an unknown kid makes the server ask again");
    assert_eq!(exchange_token(&app, &forged).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(idp.requests(), asked, "not again within MIN_REFETCH");
    let (status, answer, _) = exchange_token(&app, &token("j-3")).await;
    assert_eq!(status, StatusCode::OK, "the last good keys stay in use: {answer}");
    assert_eq!(exchanged_count(dir.path()), 3);
    server.shutdown().await;

    // Configuration: one key source; discovery_ca only with discovery_url.
    for (issuer, want) in [
        ("issuer = \"https://a\"".to_owned(), "set either jwks_file"),
        (
            format!("issuer = \"https://a\"\njwks_file = \"/x\"\ndiscovery_url = \"{}\"", idp.base_url()),
            "set either jwks_file",
        ),
        (
            "issuer = \"https://a\"\ndiscovery_url = \"idp.example\"".to_owned(),
            "not an http:// or https:// URL",
        ),
        (
            "issuer = \"https://a\"\ndiscovery_url = \"https://a\"\ndiscovery_ca = \"/nonexistent\""
                .to_owned(),
            "/nonexistent",
        ),
    ] {
        let text = format!(
            "version = 1\ntrust_domain = \"example.org\"\ndata_dir = \"/tmp/x\"\n[ca]\njwt_issuer = \"https://oidc.example.org\"\n[oidc]\nlisten = \"127.0.0.1:0\"\n\
             [[token_exchange.issuer]]\n{issuer}\n[[token_exchange.rule]]\nname = \"r\"\nissuer = \"https://a\"\naudience = \"v\"\n\
             spiffe_id = \"spiffe://example.org/x\"\n"
        );
        let err = Config::from_toml(&text, &no_env).unwrap_err().to_string();
        assert!(err.contains(want), "{issuer}: {err}");
    }
}

/// Token exchange for an X509-SVID: with `requested_token_type` vouch's X509-SVID type and a CSR,
/// the answer is a certificate chain for the rule's SPIFFE ID and the CSR's key, which `openssl
/// verify` accepts against the returned roots; a bad CSR is refused without spending the token, and
/// the parameters that do not go together are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_exchange_gives_an_x509_svid_for_a_csr() {
    const X509_TYPE: &str = "urn:vouch:params:oauth:token-type:x509-svid";
    let (dir, ci, jwks_file, port) = ci_issuer();
    let extra = format!(
        "[ca]\njwt_issuer = \"http://127.0.0.1:{port}\"\n[oidc]\nlisten = \"127.0.0.1:{port}\"\nallow_http_issuer = true\n\
         [[token_exchange.issuer]]\nissuer = \"{CI}\"\njwks_file = \"{}\"\n\
         [[token_exchange.rule]]\nname = \"ci\"\nissuer = \"{CI}\"\naudience = \"vouch\"\nspiffe_id = \"spiffe://example.org/ci/{{sub}}\"\n",
        jwks_file.display()
    );
    let (server, _, _) = start_with(dir.path(), &extra).await;
    let app = vouch_server::oidc_router(server.state.clone()).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr_pem = rcgen::CertificateParams::default().serialize_request(&key).unwrap().pem().unwrap();
    let token = ci.sign(&ci_claims("build-9", Some("x-1"), 300, json!({})));
    let ask = |token: String, csr: String, extra: Vec<(&'static str, &'static str)>| {
        let app = app.clone();
        async move {
            let mut params = vec![
                ("grant_type", EXCHANGE),
                ("subject_token", token.as_str()),
                ("subject_token_type", JWT_TYPE),
                ("requested_token_type", X509_TYPE),
                ("csr", csr.as_str()),
            ];
            params.extend(extra);
            exchange(&app, &params).await
        }
    };

    // Bad CSRs and mixed parameters: refused, the token not spent.
    let mut tampered = csr_pem.clone().into_bytes();
    let at = tampered.len() / 2;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    for (csr, extra, want) in [
        ("not a csr".to_owned(), vec![], "csr:"),
        (String::from_utf8(tampered).unwrap(), vec![], "csr:"),
        (String::new(), vec![], "parameter `csr` is missing"),
        (csr_pem.clone(), vec![("audience", "bao")], "no audience"),
    ] {
        let (status, answer, _) = ask(token.clone(), csr, extra).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert!(answer["error_description"].as_str().unwrap().contains(want), "{want}: {answer}");
    }
    let (status, answer, _) = exchange(
        &app,
        &[
            ("grant_type", EXCHANGE),
            ("subject_token", &token),
            ("subject_token_type", JWT_TYPE),
            ("audience", "bao"),
            ("csr", &csr_pem),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(answer["error_description"].as_str().unwrap().contains("`csr` goes with"), "{answer}");
    assert_eq!(exchanged_count(dir.path()), 0);

    // The exchange: a chain for spiffe://example.org/ci/build-9 and the CSR's key.
    let (status, answer, cache) = ask(token.clone(), csr_pem.clone(), vec![]).await;
    assert_eq!((status, cache.as_str()), (StatusCode::OK, "no-store"), "{answer}");
    assert_eq!(answer["issued_token_type"], X509_TYPE);
    assert_eq!(answer["token_type"], "N_A");
    let chain = answer["access_token"].as_str().unwrap();
    let ders: Vec<Vec<u8>> = vouch_ca::pem::decode_all(chain)
        .into_iter()
        .filter(|(label, _)| label == "CERTIFICATE")
        .map(|(_, der)| der)
        .collect();
    assert_eq!(ders.len(), 2, "leaf and signing CA");
    let leaf = vouch_ca::x509::cert_info(&ders[0]).unwrap();
    assert_eq!(leaf.uris, vec!["spiffe://example.org/ci/build-9".to_owned()]);
    assert_eq!(leaf.public_key, key.public_key_raw());
    let expires_in = answer["expires_in"].as_i64().unwrap();
    assert!((1..=3600).contains(&expires_in), "{answer}");
    let files = tempfile::tempdir().unwrap();
    let path = |n: &str| files.path().join(n);
    std::fs::write(path("leaf.pem"), vouch_ca::pem::encode("CERTIFICATE", &ders[0])).unwrap();
    std::fs::write(path("ca.pem"), vouch_ca::pem::encode("CERTIFICATE", &ders[1])).unwrap();
    std::fs::write(path("roots.pem"), answer["x509_bundle"].as_str().unwrap()).unwrap();
    let out = std::process::Command::new("timeout")
        .args(["20", "openssl", "verify", "-CAfile"])
        .arg(path("roots.pem"))
        .arg("-untrusted")
        .arg(path("ca.pem"))
        .arg(path("leaf.pem"))
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl verify: {}", String::from_utf8_lossy(&out.stderr));
    // Once only.
    let (status, answer, _) = ask(token, csr_pem, vec![]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(answer["error_description"].as_str().unwrap().contains("exchanged already"), "{answer}");
    server.shutdown().await;
}

/// A server that cannot load the authority state another replica stored (here: a state sealed under
/// another key-encryption key, then a damaged row, written behind its back as another replica
/// would) signs nothing and is not ready, rather than go on with the keys it had; once the stored
/// state loads again, it signs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_cannot_load_the_stored_authority_signs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (server, local, _) = start_with(dir.path(), "").await;
    let mint = || {
        let local = local.clone();
        async move {
            local
                .mint_jwt(&vouch_api::admin::MintJwtRequest {
                    spiffe_id: spiffe_id("spiffe://example.org/web"),
                    audience: vec!["db".into()],
                    ttl: None,
                })
                .await
        }
    };
    mint().await.unwrap();
    // Another deployment's authority: the same trust domain, another key-encryption key.
    let other_dir = tempfile::tempdir().unwrap();
    let (other, _, _) = start_with(other_dir.path(), "").await;
    other.shutdown().await;
    let read = |dir: &Path| {
        let db = rusqlite::Connection::open(dir.join("data").join("vouch.db")).unwrap();
        db.query_row("SELECT version, state FROM authority", [], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })
        .unwrap()
    };
    let (version, good) = read(dir.path());
    let (_, foreign) = read(other_dir.path());
    let db = rusqlite::Connection::open(dir.path().join("data").join("vouch.db")).unwrap();
    let mut next = version;
    for state in [foreign, "{\"damaged\": true".to_owned()] {
        next += 1;
        db.execute("UPDATE authority SET state = ?1, version = ?2", rusqlite::params![state, next]).unwrap();
        assert!(server.state.tick().await.is_err());
        let fault = server.state.authority_fault().expect("a fault");
        assert!(fault.contains(&format!("version {next}")), "{fault}");
        match mint().await {
            Err(ClientError::Api { status: 503, message, .. }) => {
                assert!(message.contains("cannot load the authority state"), "{message}")
            }
            other => panic!("expected 503, got {other:?}"),
        }
        let (status, body) = local.request("GET", "/readyz", None).await.unwrap();
        assert_eq!(status, 503);
        assert!(String::from_utf8_lossy(&body).contains("another replica stored"));
        let (_, metrics) = local.request("GET", "/metrics", None).await.unwrap();
        assert!(String::from_utf8_lossy(&metrics).contains("\nvouch_authority_fault 1\n"));
    }
    // The stored state is readable again (a later version, as a replica would write it).
    db.execute("UPDATE authority SET state = ?1, version = ?2", rusqlite::params![good, next + 1]).unwrap();
    server.state.tick().await.unwrap();
    assert_eq!(server.state.authority_fault(), None);
    mint().await.unwrap();
    assert_eq!(local.request("GET", "/readyz", None).await.unwrap().0, 200);
    let (_, metrics) = local.request("GET", "/metrics", None).await.unwrap();
    assert!(String::from_utf8_lossy(&metrics).contains("\nvouch_authority_fault 0\n"));
    server.shutdown().await;
}
#[path = "server/db_creds.rs"]
mod db_creds;
