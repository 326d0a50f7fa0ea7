//! Decisions on the node: the agent receives the policy set on its sync stream, like entries, and
//! answers `authorize` on its admin socket for the workloads it serves, following every change.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use vouch_api::explain::{AdminAnswer, AdminRequest};
use vouch_api::policy::{AccessRequest, AuthorizeResponse};

use crate::workload_api::Stack;

async fn authorize(socket: &Path, principal: &str, path: &str) -> AdminAnswer<AuthorizeResponse> {
    let req: AccessRequest = serde_json::from_value(json!({
        "principal": principal, "action": "read", "resource": {"type": "secret", "id": path},
    }))
    .unwrap();
    let exchange = async {
        let mut s = tokio::net::UnixStream::connect(socket).await.unwrap();
        let mut line = serde_json::to_vec(&AdminRequest::Authorize(req)).unwrap();
        line.push(b'\n');
        s.write_all(&line).await.unwrap();
        let mut answer = String::new();
        tokio::io::BufReader::new(s).read_line(&mut answer).await.unwrap();
        answer
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), exchange).await.expect("admin socket answers");
    serde_json::from_str(&answer).unwrap()
}

/// Asks until the answer's explanation is `want` (a change takes a sync line to arrive).
async fn until(socket: &Path, principal: &str, path: &str, want: &str) -> AuthorizeResponse {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let last = authorize(socket, principal, path).await;
        if let AdminAnswer::Answer(a) = &last {
            if a.explanation == want {
                return a.clone();
            }
        }
        assert!(Instant::now() < deadline, "the agent still answers {last:?}, not `{want}`");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_decides_locally_from_policies_synced_like_entries() {
    let stack = Stack::start().await;
    let socket = stack.agent_config.data_dir.join("admin.sock");
    let web = format!("spiffe://{}/web", stack.td);
    stack.entry_for_me("web", "/web", json!({})).await;
    stack.wait_entries(1).await;

    // The set synced with the snapshot is empty: nothing is permitted, and the answer says so.
    let a = until(&socket, &web, "web/db", "no policy permits").await;
    assert!(!a.allow && a.reasons.is_empty());

    let policies = stack.admin.policies();
    policies
        .put("own-path", r#"permit(principal, action == Action::"read", resource is Secret) when { resource.dirs.contains(principal.path) };"#, None)
        .await
        .unwrap();
    let a = until(&socket, &web, "web/db", "permitted by `own-path`").await;
    assert!(a.allow);
    // Deny wins on the node as on the server.
    policies.put("no-db", r#"forbid(principal, action, resource == Secret::"web/db");"#, None).await.unwrap();
    let a = until(&socket, &web, "web/db", "denied by `no-db`").await;
    assert_eq!((a.allow, a.reasons), (false, vec!["no-db".to_owned()]));
    let other = until(&socket, &web, "web/api", "permitted by `own-path`").await;
    assert!(other.allow);
    // The same question to the server gets the same answer.
    let req: AccessRequest = serde_json::from_value(json!({
        "principal": web, "action": "read", "resource": {"type": "secret", "id": "web/db"},
    }))
    .unwrap();
    let server = stack.admin.authorize(&req).await.unwrap();
    assert_eq!((server.allow, server.reasons), (false, vec!["no-db".to_owned()]));

    // Only about the workloads this agent serves.
    match authorize(&socket, &format!("spiffe://{}/elsewhere", stack.td), "elsewhere/x").await {
        AdminAnswer::Refused(r) => {
            assert!(r.error.contains("not a workload this agent serves"), "{}", r.error)
        }
        other => panic!("answered {other:?}"),
    }
    policies.delete("own-path").await.unwrap();
    policies.delete("no-db").await.unwrap();
    until(&socket, &web, "web/db", "no policy permits").await;
}
