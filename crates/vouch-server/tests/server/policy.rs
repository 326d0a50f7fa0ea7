//! Grants: the policy admin API and the decision API `POST /v1/authorize`.

use super::*;

const OWN_PATH: &str = r#"permit(principal, action == Action::"read", resource is Secret)
  when { resource.dirs.contains(principal.path) };"#;
const NO_PROD_DB: &str = r#"forbid(principal, action, resource == Secret::"web/db")
  when { principal.k8s_namespaces.contains("prod") };"#;

async fn put(state: &Arc<AppState>, id: &str, text: &str) -> (StatusCode, Value) {
    let body = json!({ "text": text }).to_string();
    call(state, ROOT, "PUT", &format!("/v1/policies/{id}"), Some(&body)).await
}

fn ask(who: &str, action: &str, kind: &str, id: &str) -> String {
    json!({
        "principal": format!("spiffe://example.org/{who}"),
        "action": action,
        "resource": {"type": kind, "id": id},
    })
    .to_string()
}

async fn authorize(state: &Arc<AppState>, caller: Caller, body: &str) -> (StatusCode, Value) {
    call(state, caller, "POST", "/v1/authorize", Some(body)).await
}

async fn create_entry(state: &Arc<AppState>, spec: Value) {
    let (s, v) = call(state, ROOT, "POST", "/v1/entries", Some(&spec.to_string())).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

/// Policies are written in versions, listed, shown with their history and deleted; decisions
/// follow them at once: no permit means deny ("no policy permits"), a permit allows and is named,
/// a forbid wins over it and is named.
#[tokio::test]
async fn policies_are_versioned_and_decide_with_reasons() {
    let state = state_in_memory(ManualClock::new()).await;
    create_entry(
        &state,
        json!({"spiffe_id": "spiffe://example.org/web", "parent_id": "spiffe://example.org/vouch/agent/a",
               "selectors": ["k8s:ns:prod", "k8s:sa:web"], "owner": "team-web"}),
    )
    .await;
    let read_db = ask("web", "read", "secret", "web/db");

    let (s, v) = authorize(&state, ROOT, &read_db).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!((v["allow"].as_bool(), v["explanation"].as_str()), (Some(false), Some("no policy permits")));
    assert_eq!(v["reasons"], json!([]));

    let (s, v) = put(&state, "own-path", OWN_PATH).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["version"].as_u64(), v["effect"].as_str(), v["author"].as_str()),
        (Some(1), Some("permit"), Some("local:uid:0"))
    );
    let (_, v) = authorize(&state, ROOT, &read_db).await;
    assert_eq!((v["allow"].as_bool(), v["reasons"].clone()), (Some(true), json!(["own-path"])), "{v}");
    assert_eq!(v["explanation"], "permitted by `own-path`");
    // Another workload's path is not granted.
    let (_, v) = authorize(&state, ROOT, &ask("web", "read", "secret", "payments/db")).await;
    assert_eq!(v["allow"], false);

    // Deny wins, and says which policy denied.
    put(&state, "no-prod-db", NO_PROD_DB).await;
    let (_, v) = authorize(&state, ROOT, &read_db).await;
    assert_eq!((v["allow"].as_bool(), v["reasons"].clone()), (Some(false), json!(["no-prod-db"])), "{v}");
    assert_eq!(v["explanation"], "denied by `no-prod-db`");

    // A new version replaces the old one; the history keeps both.
    let narrowed = NO_PROD_DB.replace("\"prod\"", "\"staging\"");
    let (_, v) = put(&state, "no-prod-db", &narrowed).await;
    assert_eq!(v["version"], 2);
    let (_, v) = authorize(&state, ROOT, &read_db).await;
    assert_eq!(v["allow"], true, "{v}");
    let (s, h) = call(&state, ROOT, "GET", "/v1/policies/no-prod-db", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["versions"].as_array().unwrap().len(), 2);
    assert_eq!(h["current"]["text"].as_str(), Some(narrowed.as_str()));
    let (_, l) = call(&state, ROOT, "GET", "/v1/policies", None).await;
    let ids: Vec<&str> =
        l["policies"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["no-prod-db", "own-path"]);

    // Deletion: a version without text; the policy no longer decides.
    let (s, v) = call(&state, ROOT, "DELETE", "/v1/policies/own-path", None).await;
    assert_eq!((s, v["version"].as_u64()), (StatusCode::OK, Some(2)), "{v}");
    let (_, v) = authorize(&state, ROOT, &read_db).await;
    assert_eq!(v["explanation"], "no policy permits");
    let (s, h) = call(&state, ROOT, "GET", "/v1/policies/own-path", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(h.get("current").is_none() && h["versions"][1].get("text").is_none(), "{h}");
    let (s, v) = call(&state, ROOT, "DELETE", "/v1/policies/own-path", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, _) = call(&state, ROOT, "GET", "/v1/policies/never", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

/// `validate` checks without storing; `test` decides a what-if request with policies added,
/// replaced or left out, and stores nothing.
#[tokio::test]
async fn validate_and_test_store_nothing() {
    let state = state_in_memory(ManualClock::new()).await;
    put(&state, "no-prod-db", NO_PROD_DB).await;
    create_entry(
        &state,
        json!({"spiffe_id": "spiffe://example.org/web", "parent_id": "spiffe://example.org/vouch/agent/a",
               "selectors": ["k8s:ns:prod"]}),
    )
    .await;
    let writes = state.store.write_transactions();

    let (s, v) =
        call(&state, ROOT, "POST", "/v1/policies/validate", Some(&json!({"text": OWN_PATH}).to_string()))
            .await;
    assert_eq!((s, v["valid"].as_bool()), (StatusCode::OK, Some(true)), "{v}");
    let bad = r#"permit(principal, action, resource) when { principal.colour == "red" };"#;
    let (s, v) =
        call(&state, ROOT, "POST", "/v1/policies/validate", Some(&json!({"text": bad}).to_string())).await;
    assert_eq!((s, v["valid"].as_bool()), (StatusCode::OK, Some(false)), "{v}");
    assert!(v["errors"][0].as_str().unwrap().contains("colour"), "{v}");

    let request: Value = serde_json::from_str(&ask("web", "read", "secret", "web/db")).unwrap();
    let test = |with: Value, without: Value| {
        json!({"request": request, "with": with, "without": without}).to_string()
    };
    let (s, v) = call(
        &state,
        ROOT,
        "POST",
        "/v1/policies/test",
        Some(&test(json!([{"id": "own-path", "text": OWN_PATH}]), json!([]))),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!((v["allow"].as_bool(), v["reasons"].clone()), (Some(false), json!(["no-prod-db"])));
    let (_, v) = call(
        &state,
        ROOT,
        "POST",
        "/v1/policies/test",
        Some(&test(json!([{"id": "own-path", "text": OWN_PATH}]), json!(["no-prod-db"]))),
    )
    .await;
    assert_eq!((v["allow"].as_bool(), v["reasons"].clone()), (Some(true), json!(["own-path"])), "{v}");
    assert_eq!(state.store.write_transactions(), writes, "validate and test wrote nothing");
    let (_, l) = call(&state, ROOT, "GET", "/v1/policies", None).await;
    assert_eq!(l["policies"].as_array().unwrap().len(), 1);
}

/// Bad input gets a 400 that says what is wrong, and nothing is written: a policy that does not
/// parse, one that fails the schema (an unknown attribute, action or entity type), two policies in
/// one, a template, a bad id or one that names a route, an oversized text or body; decisions with an unknown
/// action or resource type, or an action that does not apply to the resource.
#[tokio::test]
async fn bad_policies_and_requests_are_refused_and_change_nothing() {
    let state = state_in_memory(ManualClock::new()).await;
    let writes = state.store.write_transactions();
    let huge = format!(
        r#"permit(principal, action, resource) when {{ principal.path == "{}" }};"#,
        "a".repeat(20_000)
    );
    for (id, text, want) in [
        ("p", "permit(principal, action, resource", "does not parse"),
        (
            "p",
            r#"permit(principal, action, resource) when { principal.colour == "red" };"#,
            "fails validation",
        ),
        ("p", r#"permit(principal, action == Action::"fly", resource);"#, "fails validation"),
        ("p", "permit(principal, action, resource is Bucket);", "fails validation"),
        ("p", "permit(principal, action, resource); permit(principal, action, resource);", "exactly one"),
        ("p", "permit(principal == ?principal, action, resource);", "template"),
        ("bad%20id", OWN_PATH, "policy id `bad id`"),
        ("p", huge.as_str(), "at most 16384"),
    ] {
        let (s, v) = put(&state, id, text).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{id}: {v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(want), "{id}: {message}");
    }
    // An id that names a route is the route's: no policy can be written under it.
    let (s, _) = put(&state, "validate", OWN_PATH).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    // A body over the route's limit is refused before it is parsed.
    let body = json!({ "text": "x".repeat(vouch_server::MAX_POLICY_BODY + 1) }).to_string();
    let (s, v) = call(&state, ROOT, "PUT", "/v1/policies/p", Some(&body)).await;
    assert!(s == StatusCode::BAD_REQUEST || s == StatusCode::PAYLOAD_TOO_LARGE, "{s}: {v}");
    let (s, v) = call(&state, ROOT, "PUT", "/v1/policies/p", Some(r#"{"text": 1}"#)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(state.store.write_transactions(), writes, "nothing was written");
    assert!(state.store.list_policies().await.unwrap().is_empty());

    for (body, want) in [
        (ask("web", "fly", "secret", "a"), "unknown action `fly`"),
        (ask("web", "read", "bucket", "a"), "unknown resource type `bucket`"),
        (ask("web", "read", "secret", "../etc"), "`..`"),
        (ask("web", "read", "service", "spiffe://example.org/db"), "does not apply to a service"),
        (
            r#"{"principal":"not-an-id","action":"read","resource":{"type":"secret","id":"a"}}"#.to_owned(),
            "principal",
        ),
    ] {
        let (s, v) = authorize(&state, ROOT, &body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(want), "{body}: {message}");
    }
}

/// An agent may ask about the workloads it serves and no other; a caller that is neither admin
/// nor agent is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_ask_only_about_their_own_workloads() {
    let state = state_in_memory(ManualClock::new()).await;
    let svid = attest_in_app(&state, "spiffe://example.org/agent/a").await.unwrap();
    create_entry(
        &state,
        json!({"spiffe_id": "spiffe://example.org/web", "parent_id": "spiffe://example.org/agent/a", "selectors": ["unix:uid:1"]}),
    )
    .await;
    create_entry(
        &state,
        json!({"spiffe_id": "spiffe://example.org/other", "parent_id": "spiffe://example.org/agent/b", "selectors": ["unix:uid:1"]}),
    )
    .await;
    put(&state, "own-path", OWN_PATH).await;
    let agent = agent_caller(&svid);

    let (s, v) = authorize(&state, agent.clone(), &ask("web", "read", "secret", "web/key")).await;
    assert_eq!((s, v["allow"].as_bool()), (StatusCode::OK, Some(true)), "{v}");
    let (s, v) = authorize(&state, agent.clone(), &ask("other", "read", "secret", "other/key")).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("only about the workloads it serves"), "{v}");
    // The agent is no admin: the policy API stays closed to it.
    let (s, _) = call(&state, agent, "GET", "/v1/policies", None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = authorize(&state, Caller::Anonymous, &ask("web", "read", "secret", "web/key")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) =
        authorize(&state, Caller::Local { uid: 4321 }, &ask("web", "read", "secret", "web/key")).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

/// A stored policy that no longer loads (a hand edit, a schema change) stops decisions with a
/// reason rather than being skipped: skipping a `forbid` would allow what it forbids.
#[tokio::test]
async fn a_stored_policy_that_no_longer_loads_fails_decisions_closed() {
    let state = state_in_memory(ManualClock::new()).await;
    put(&state, "own-path", OWN_PATH).await;
    state
        .store
        .put_policy("broken", &Default::default(), "forbid(principal, action, resource", "hand", 1)
        .await
        .unwrap();
    // Written around the server, and before its first decision read the policies.
    let (s, v) = authorize(&state, ROOT, &ask("web", "read", "secret", "web/key")).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("stored policy `broken`"), "{v}");
}
