//! The kubelet client against a local HTTPS server that answers `GET /pods` with recorded kubelet JSON
//! (no kubelet runs on the development machines): token, TLS verification, refetch on a miss, refusal,
//! and `k8s:` selectors through the runtime attestor for a pod's container.

use std::path::Path;

use vouch_agent::attest::{ContainerRef, KubeletClient, KubeletConfig, Runtime, RuntimeAttestor};
use vouch_http::testing::StaticHttps;

const APP: &str = "3f6b0c9a8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a";
const POD: &str = "1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d";
const TOKEN: &str = "kubelet-reader-token-0f9e8d7c";

/// Serves the recorded pod list at `/pods` over TLS to requests that carry the bearer token.
async fn kubelet() -> StaticHttps {
    let k = StaticHttps::start(Some(TOKEN)).await;
    k.set(
        "/pods",
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kubelet-pods.json"))
            .unwrap(),
    );
    k
}

fn strings(s: &vouch_core::Selectors) -> Vec<String> {
    s.iter().map(ToString::to_string).collect()
}

#[tokio::test]
async fn pod_containers_get_k8s_selectors_from_the_kubelet() {
    let k = kubelet().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("kubelet-ca.pem");
    std::fs::write(&ca, &k.cert_pem).unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let config = KubeletConfig {
        url: format!("https://127.0.0.1:{}", k.port),
        token_file: Some(token.clone()),
        ca_file: Some(ca.clone()),
        insecure_skip_verify: false,
    };
    let client = KubeletClient::new(config.clone()).unwrap();
    let got = strings(&client.selectors(POD, APP).await.unwrap());
    for want in ["k8s:ns:prod", "k8s:sa:payments", "k8s:pod-label:app:payments", "k8s:container-name:app"] {
        assert!(got.iter().any(|g| g == want), "{want} in {got:?}");
    }
    // The fresh list is reused.
    client.selectors(POD, APP).await.unwrap();
    assert_eq!(k.requests(), 1);

    // A container the kubelet does not list: refetched a bounded number of times, then refused.
    let err = client.selectors(POD, "cccc").await.unwrap_err().to_string();
    assert!(err.contains("no container with id `cccc`"), "{err}");
    let n = k.requests();
    assert!((2..=5).contains(&n), "{n} requests");

    // Through the runtime attestor: a CRI-O container in a pod is confirmed by the kubelet alone.
    let c = ContainerRef {
        runtime: Runtime::CriO,
        id: APP.into(),
        namespace: None,
        pod_uid: Some(POD.into()),
        guessed: false,
    };
    let attestor =
        RuntimeAttestor::new(None, None, None).with_kubelet(KubeletClient::new(config.clone()).unwrap());
    let got = strings(&attestor.selectors(&c).await.unwrap());
    assert!(got.contains(&"k8s:sa:payments".to_owned()), "{got:?}");
    // A pod container the kubelet does not confirm gets nothing.
    let rogue = ContainerRef { id: "dddd".into(), ..c.clone() };
    let err = attestor.selectors(&rogue).await.unwrap_err().to_string();
    assert!(err.contains("kubelet does not confirm"), "{err}");
    // Without a kubelet, a CRI-O container is still refused (nobody can confirm it).
    assert!(RuntimeAttestor::new(None, None, None).selectors(&c).await.is_err());

    // A wrong token: the error says so, and does not contain the token.
    std::fs::write(&token, "wrong-token").unwrap();
    let err = KubeletClient::new(config.clone()).unwrap().fetch().await.unwrap_err().to_string();
    assert!(err.contains("401") && err.contains("token was not accepted"), "{err}");
    assert!(!err.contains("wrong-token"), "{err}");
    std::fs::write(&token, TOKEN).unwrap();

    // TLS: another CA is refused; skipping verification (self-signed kubelets) works.
    let other = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .self_signed(&rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let other_ca = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, other.pem()).unwrap();
    let err = KubeletClient::new(KubeletConfig { ca_file: Some(other_ca), ..config.clone() })
        .unwrap()
        .fetch()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("tls"), "{err}");
    let insecure = KubeletConfig { ca_file: None, insecure_skip_verify: true, ..config.clone() };
    KubeletClient::new(insecure).unwrap().fetch().await.unwrap();
}

#[test]
fn kubelet_settings_are_checked_at_start() {
    for (config, says) in [
        (
            KubeletConfig {
                url: "127.0.0.1:10250".into(),
                token_file: None,
                ca_file: None,
                insecure_skip_verify: false,
            },
            "use https://",
        ),
        (
            KubeletConfig {
                url: "https://127.0.0.1:10250".into(),
                token_file: None,
                ca_file: None,
                insecure_skip_verify: false,
            },
            "needs the CA",
        ),
        (
            KubeletConfig {
                url: "https://127.0.0.1/pods".into(),
                token_file: None,
                ca_file: None,
                insecure_skip_verify: true,
            },
            "host:port",
        ),
        (
            KubeletConfig {
                url: "http://127.0.0.1:10255".into(),
                token_file: Some("/t".into()),
                ca_file: None,
                insecure_skip_verify: false,
            },
            "only sent over https",
        ),
    ] {
        let err = KubeletClient::new(config).unwrap_err().to_string();
        assert!(err.contains(says), "{err}");
    }
    let env = |k: &str| match k {
        "VOUCH_AGENT_SERVER" => Some("127.0.0.1:1".to_owned()),
        "VOUCH_AGENT_KUBELET_URL" => Some("ftp://x".to_owned()),
        _ => None,
    };
    let err = vouch_agent::AgentConfig::load(None, &env).unwrap_err().to_string();
    assert!(err.contains("kubelet url"), "{err}");
}
