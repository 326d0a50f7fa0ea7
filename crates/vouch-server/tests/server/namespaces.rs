//! Namespaces end to end over mTLS: two admins limited to one namespace each, a full admin, and
//! the owner/purpose rule.

use super::*;

const TD: &str = "spiffe://example.org";

/// An admin client over mTLS for `path`, with an admin entry limited to `namespaces` (all if
/// empty), created through the local socket.
async fn admin_for(local: &AdminClient, addr: &str, path: &str, namespaces: &[&str]) -> AdminClient {
    let id = format!("{TD}{path}");
    let (chain, key, bundle) = mint_files(local, &id).await;
    let entry = json!({"spiffe_id": id, "parent_id": format!("{TD}/vouch/server"),
        "selectors": [format!("vouch:admin:{}", path.trim_start_matches('/').replace('/', "-"))],
        "admin": true, "admin_namespaces": namespaces});
    let _: Value = local.call("POST", "/v1/entries", Some(&entry)).await.unwrap();
    let td = vouch_core::TrustDomain::new("example.org").unwrap();
    AdminClient::tls(addr, &td, &bundle, Some((&chain, &key))).unwrap().with_timeout(Duration::from_secs(20))
}

fn workload(id: &str, path: &str, ns: &str) -> Value {
    json!({"id": id, "spiffe_id": format!("{TD}{path}"), "parent_id": format!("{TD}/agent/node-1"),
        "selectors": [format!("unix:uid:{}", 1000 + id.len())], "namespace": ns})
}

fn ids(list: &Value) -> Vec<String> {
    let mut ids: Vec<String> =
        list["entries"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
    ids.sort();
    ids
}

async fn refused(
    client: &AdminClient,
    method: &str,
    path: &str,
    body: Option<&Value>,
    status: u16,
) -> String {
    refusal(client.call::<Value>(method, path, body).await, status).1
}

async fn decide(client: &AdminClient, who: &str, secret: &str) -> bool {
    let ask = json!({"principal": format!("{TD}{who}"), "action": "read", "resource": {"type": "secret", "id": secret}});
    let v: Value = client.call("POST", "/v1/authorize", Some(&ask)).await.unwrap();
    v["allow"].as_bool().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_admins_touch_only_their_namespaces_and_cannot_escalate() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.tcp_addr.unwrap().to_string();
    let local = AdminClient::unix(&server.admin_socket);
    let a = admin_for(&local, &addr, "/admin/a", &["team-a"]).await;
    let b = admin_for(&local, &addr, "/admin/b", &["team-b"]).await;
    let root = admin_for(&local, &addr, "/admin/root", &[]).await;

    // Each creates in its own namespace; neither in the other's, nor in `default` by omission.
    let _: Value =
        a.call("POST", "/v1/entries", Some(&workload("wa", "/team-a/web", "team-a"))).await.unwrap();
    let _: Value =
        b.call("POST", "/v1/entries", Some(&workload("wb", "/team-b/web", "team-b"))).await.unwrap();
    let msg = refused(&a, "POST", "/v1/entries", Some(&workload("x1", "/team-a/x", "team-b")), 403).await;
    assert!(msg.contains("may manage entries and policies of namespace `team-a`"), "{msg}");
    let mut no_ns = workload("x2", "/team-a/y", "team-a");
    no_ns.as_object_mut().unwrap().remove("namespace");
    let msg = refused(&a, "POST", "/v1/entries", Some(&no_ns), 403).await;
    assert!(msg.contains("namespace `default`") && msg.contains("`team-a`"), "{msg}");

    // Listing: each sees its own only; asking for another namespace is refused.
    assert_eq!(ids(&a.call::<Value>("GET", "/v1/entries", None).await.unwrap()), ["wa"]);
    assert_eq!(ids(&b.call::<Value>("GET", "/v1/entries", None).await.unwrap()), ["wb"]);
    refused(&a, "GET", "/v1/entries?namespace=team-b", None, 403).await;
    let all = ids(&root.call::<Value>("GET", "/v1/entries", None).await.unwrap());
    assert!(all.contains(&"wa".to_owned()) && all.contains(&"wb".to_owned()) && all.len() == 5, "{all:?}");

    // The other's entry: not readable, changeable or deletable, and the refusal does not say where
    // it is; it stays as it was.
    let before: Value = root.call("GET", "/v1/entries/wb", None).await.unwrap();
    let msg = refused(&a, "GET", "/v1/entries/wb", None, 403).await;
    assert!(msg.contains("not in a namespace") && !msg.contains("team-b"), "{msg}");
    let patch = json!({"expected_revision": 0, "hint": "mine now"});
    refused(&a, "PATCH", "/v1/entries/wb", Some(&patch), 403).await;
    refused(&a, "PUT", "/v1/entries/wb", Some(&workload("wb", "/team-b/web", "team-a")), 403).await;
    refused(&a, "DELETE", "/v1/entries/wb", None, 403).await;
    assert_eq!(root.call::<Value>("GET", "/v1/entries/wb", None).await.unwrap(), before);
    // Moving its own entry to b's namespace needs both: refused, and the entry stays.
    refused(
        &a,
        "PATCH",
        "/v1/entries/wa",
        Some(&json!({"expected_revision": 0, "namespace": "team-b"})),
        403,
    )
    .await;
    let wa: Value = a.call("GET", "/v1/entries/wa", None).await.unwrap();
    assert_eq!((wa["namespace"].as_str(), wa["revision"].as_u64()), (Some("team-a"), Some(0)));
    // Registering b's identity for its own workloads: an identity belongs to one namespace.
    let msg =
        refused(&a, "POST", "/v1/entries", Some(&workload("steal", "/team-b/web", "team-a")), 409).await;
    assert!(msg.contains("another namespace"), "{msg}");

    // No escalation: an admin of all, or of more than its own, is refused; a narrower one is not.
    let admin_entry = |id: &str, path: &str, namespaces: Value| {
        json!({"id": id, "spiffe_id": format!("{TD}{path}"), "parent_id": format!("{TD}/vouch/server"),
            "selectors": ["vouch:admin:x"], "namespace": "team-a", "admin": true, "admin_namespaces": namespaces})
    };
    let msg = refused(&a, "POST", "/v1/entries", Some(&admin_entry("e1", "/admin/a2", json!([]))), 403).await;
    assert!(msg.contains("admin entry of all namespaces"), "{msg}");
    refused(
        &a,
        "POST",
        "/v1/entries",
        Some(&admin_entry("e2", "/admin/a2", json!(["team-a", "team-b"]))),
        403,
    )
    .await;
    let _: Value = a
        .call("POST", "/v1/entries", Some(&admin_entry("e3", "/admin/a2", json!(["team-a"]))))
        .await
        .unwrap();
    // ... and an entry that would hand it the full admin's (or b's) SPIFFE ID is refused.
    let msg = refused(&a, "POST", "/v1/entries", Some(&workload("e4", "/admin/root", "team-a")), 403).await;
    assert!(msg.contains("identity of an admin"), "{msg}");
    refused(&a, "POST", "/v1/entries", Some(&workload("e5", "/admin/b", "team-a")), 403).await;
    // Its own entry cannot be turned into an admin of all.
    let wa_rev = wa["revision"].as_u64().unwrap();
    refused(&a, "PATCH", "/v1/entries/wa", Some(&json!({"expected_revision": wa_rev, "admin": true})), 403)
        .await;

    // Everything outside entries and policies is for admins of all namespaces.
    for (method, path, body) in [
        ("GET", "/v1/authority/keys", None),
        ("POST", "/v1/svids/x509", Some(json!({"spiffe_id": format!("{TD}/admin/root")}))),
        ("POST", "/v1/join-tokens", Some(json!({}))),
        ("GET", "/v1/agents", None),
        ("GET", "/v1/secrets", None),
        ("GET", "/v1/audit/records", None),
        (
            "POST",
            "/v1/authorize",
            Some(
                json!({"principal": format!("{TD}/team-a/web"), "action": "read", "resource": {"type": "secret", "id": "team-a/x"}}),
            ),
        ),
    ] {
        let msg = refused(&a, method, path, body.as_ref(), 403).await;
        assert!(msg.contains("limited to namespace `team-a`"), "{method} {path}: {msg}");
    }

    // Policies: a writes in team-a; `default` is for admins of all; b cannot see or touch a's.
    let all_of = "permit(principal, action, resource);";
    let put = |ns: Option<&str>| match ns {
        Some(ns) => json!({"text": all_of, "namespace": ns}),
        None => json!({"text": all_of}),
    };
    let p: Value = a.call("PUT", "/v1/policies/a-all", Some(&put(Some("team-a")))).await.unwrap();
    assert_eq!(p["namespace"], "team-a");
    let msg = refused(&a, "PUT", "/v1/policies/a-default", Some(&put(None)), 403).await;
    assert!(msg.contains("namespace `default`") && msg.contains("`team-a`"), "{msg}");
    refused(&b, "GET", "/v1/policies/a-all", None, 403).await;
    refused(&b, "PUT", "/v1/policies/a-all", Some(&put(Some("team-b"))), 403).await;
    refused(&b, "DELETE", "/v1/policies/a-all", None, 403).await;
    let listed: Value = b.call("GET", "/v1/policies", None).await.unwrap();
    assert!(listed["policies"].as_array().unwrap().is_empty(), "{listed}");
    // What a's permit-everything policy grants stays inside team-a.
    assert!(decide(&root, "/team-a/web", "team-a/db").await);
    assert!(!decide(&root, "/team-a/web", "team-b/db").await, "not b's secrets");
    assert!(!decide(&root, "/team-a/web", "shared/db").await, "nor anyone else's");
    assert!(!decide(&root, "/team-b/web", "team-a/db").await, "nor to b's workloads");

    // The full admin can do all of it.
    let wb: Value = root.call("GET", "/v1/entries/wb", None).await.unwrap();
    let moved: Value = root
        .call(
            "PATCH",
            "/v1/entries/wb",
            Some(&json!({"expected_revision": wb["revision"], "namespace": "team-a"})),
        )
        .await
        .unwrap();
    assert_eq!(moved["namespace"], "team-a");
    assert!(ids(&a.call::<Value>("GET", "/v1/entries", None).await.unwrap()).contains(&"wb".to_owned()));
    let _: Value = root.call("DELETE", "/v1/policies/a-all", None).await.unwrap();
    let _: Value = root.call("PUT", "/v1/policies/everyone", Some(&put(None))).await.unwrap();
    let _: Value = root.call("GET", "/v1/authority/keys", None).await.unwrap();
    // The local socket is a full admin too.
    let _: Value = local.call("DELETE", "/v1/entries/wb", None).await.unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_and_purpose_rule_refuses_new_gaps_and_reports_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (server, local, _) = start_with(dir.path(), "").await;
    let bare = workload("old", "/old", "default");
    let _: Value = local.call("POST", "/v1/entries", Some(&bare)).await.unwrap();
    let listed: Value = local.call("GET", "/v1/entries", None).await.unwrap();
    assert!(listed.get("rule_violations").is_none(), "the rule is off by default: {listed}");
    server.shutdown().await;

    let (server, local, _) = start_with(dir.path(), "require_owner_and_purpose = true\n").await;
    let msg = refused(&local, "POST", "/v1/entries", Some(&workload("n1", "/n1", "default")), 400).await;
    assert!(msg.starts_with("owner and purpose: this server requires"), "{msg}");
    let mut owned = workload("n1", "/n1", "default");
    owned["owner"] = json!("alice");
    let msg = refused(&local, "POST", "/v1/entries", Some(&owned), 400).await;
    assert!(msg.starts_with("purpose:"), "{msg}");
    owned["purpose"] = json!("   ");
    refused(&local, "POST", "/v1/entries", Some(&owned), 400).await;
    owned["purpose"] = json!("storefront");
    let _: Value = local.call("POST", "/v1/entries", Some(&owned)).await.unwrap();

    // The entry from before the rule is kept and reported, not deleted.
    let listed: Value = local.call("GET", "/v1/entries", None).await.unwrap();
    assert_eq!(ids(&listed), ["n1", "old"]);
    assert_eq!(listed["rule_violations"], json!([{"id": "old", "reason": "no owner and purpose"}]));
    // An update must supply what is missing.
    refused(&local, "PATCH", "/v1/entries/old", Some(&json!({"expected_revision": 0, "hint": "x"})), 400)
        .await;
    let fixed = json!({"expected_revision": 0, "owner": "bob", "purpose": "legacy batch job"});
    let _: Value = local.call("PATCH", "/v1/entries/old", Some(&fixed)).await.unwrap();
    let listed: Value = local.call("GET", "/v1/entries", None).await.unwrap();
    assert!(listed.get("rule_violations").is_none(), "{listed}");
    server.shutdown().await;
}
