//! The clouds' SDKs, unchanged (PyPI botocore, azure-identity, google-auth), obtain credentials
//! with the token files `vouch helper` writes: each SDK is pointed by its own documented settings
//! (AWS_ENDPOINT_URL_STS, AZURE_AUTHORITY_HOST, the external_account's token_url) at a loopback
//! stand-in of the cloud's token service (cloud_standin.py) that verifies the JWT-SVID's signature,
//! issuer, audience and subject through vouch's OIDC discovery, as the clouds do; a JWT-SVID for
//! another audience is refused by each; the token files are renewed before they expire.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{entry_for_vouch, json, output_within, start_agent, KillOnDrop, ServerProcess, VOUCH};

/// The PyPI releases scripts/test installs (the SDKs' own dependencies come with them; the
/// stand-in uses PyJWT, which azure-identity's msal brings).
const SDKS: &str = "botocore==1.43.11 azure-identity==1.27.0 google-auth==2.63.0";
const SUBJECT: &str = "spiffe://example.org/app";
const GCP_PROVIDER: &str =
    "//iam.googleapis.com/projects/123456789/locations/global/workloadIdentityPools/vouch/providers/example-org";

/// The Python interpreter's own path (the SDK runs get a clean environment, without pyenv's).
fn python() -> PathBuf {
    let out = Command::new("python3")
        .args(["-c", "import sys, botocore, azure.identity, google.auth, jwt; print(sys.executable)"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the cloud SDKs are not installed (scripts/test installs {SDKS}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// `KEY=value` lines of an env file the helper wrote.
fn env_file(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// Runs cloud_sdk.py for `cloud` with only `env` (and PATH), within 60 s: its JSON answer.
fn sdk(python: &Path, cloud: &str, env: &BTreeMap<String, String>) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cli/cloud_sdk.py");
    let mut cmd = Command::new(python);
    cmd.arg(script).arg(cloud).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).envs(env);
    let out = output_within(&mut cmd, b"", Duration::from_secs(60))
        .unwrap_or_else(|| panic!("the {cloud} SDK did not finish within 60 s"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "cloud_sdk.py {cloud}: {text}{}", String::from_utf8_lossy(&out.stderr));
    json(text.trim())
}

/// The stand-in's decisions so far, for `cloud`.
fn events(path: &Path, cloud: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(json)
        .filter(|e| e["cloud"] == cloud)
        .collect()
}

#[test]
fn cloud_sdks_exchange_the_helpers_token_files_at_loopback_token_services() {
    let python = python();
    let tmp = tempfile::tempdir().unwrap();
    let oidc_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let issuer = format!("http://127.0.0.1:{oidc_port}");
    // 10 s JWT-SVIDs (the shortest allowed with 60 s keys), so the test sees them renewed.
    let server = ServerProcess::start_configured(
        tmp.path(),
        &format!(
            "[ca]\njwt_issuer = \"{issuer}\"\njwt_key_ttl = \"60s\"\njwt_svid_ttl = \"10s\"\n\
             [oidc]\nlisten = \"127.0.0.1:{oidc_port}\"\nallow_http_issuer = true\n"
        ),
    );
    let agent_id = "spiffe://example.org/agent/cloud-node";
    let (agent, agent_dir) = start_agent(tmp.path(), &server, agent_id, &[]);
    let _agent = KillOnDrop(agent);
    let socket = format!("unix://{}", agent_dir.join("api.sock").display());
    entry_for_vouch(&server, SUBJECT, agent_id, &[]);
    // A JWT-SVID for an audience no cloud takes, once the entry has reached the agent.
    let fetch_wrong = || {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = Command::new(VOUCH)
                .args(["agent", "api", "fetch", "jwt", "-a", "not-for-clouds", "--socket", &socket])
                .output()
                .unwrap();
            if out.status.success() {
                break String::from_utf8(out.stdout).unwrap().trim().to_owned();
            }
            assert!(Instant::now() < deadline, "no JWT-SVID: {}", String::from_utf8_lossy(&out.stderr));
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    fetch_wrong();
    let wrong_file = tmp.path().join("wrong-audience.jwt");

    // The stand-in's TLS certificate (the SDKs take only https token services), trusted by the
    // SDKs through their documented CA settings.
    let (cert, key) = (tmp.path().join("standin.pem"), tmp.path().join("standin.key"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
        ])
        .args(["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let (port_file, events_file) = (tmp.path().join("standin.port"), tmp.path().join("standin.events"));
    let standin = Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cli/cloud_standin.py"))
        .args(["--issuer", &issuer, "--subject", SUBJECT, "--aws-audience", "sts.amazonaws.com"])
        .args(["--azure-audience", "api://AzureADTokenExchange", "--azure-client-id", "vouch-app-client"])
        .args(["--gcp-audience", GCP_PROVIDER, "--gcp-token-audience", GCP_PROVIDER])
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .arg("--port-file")
        .arg(&port_file)
        .arg("--events")
        .arg(&events_file)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(tmp.path().join("standin.log")).unwrap())
        .spawn()
        .unwrap();
    let _standin = KillOnDrop(standin);
    let deadline = Instant::now() + Duration::from_secs(20);
    let port = loop {
        if let Ok(p) = std::fs::read_to_string(&port_file) {
            break p.trim().parse::<u16>().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "the stand-in did not start: {}",
            std::fs::read_to_string(tmp.path().join("standin.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let service = format!("https://127.0.0.1:{port}");

    // The helper: only cloud token files (and the files that tell the SDKs where they are).
    let dir = tmp.path().join("cloud");
    let config = tmp.path().join("helper.toml");
    std::fs::write(
        &config,
        format!(
            "version = 1\ndir = \"{}\"\nx509 = false\n\
             [aws]\nrole_arn = \"arn:aws:iam::111122223333:role/app\"\nenv_file = \"aws.env\"\n\
             [azure]\nclient_id = \"vouch-app-client\"\ntenant_id = \"vouch-tenant\"\nauthority_host = \"{service}\"\nenv_file = \"azure.env\"\n\
             [gcp]\naudience = \"{GCP_PROVIDER}\"\ncredential_config_file = \"gcp.json\"\ntoken_url = \"{service}/v1/token\"\n",
            dir.display()
        ),
    )
    .unwrap();
    let (_helper, helper_log) =
        super::helper::spawn_helper(tmp.path(), &socket, &["--config", config.to_str().unwrap()]);
    let files = [
        "aws-web-identity-token",
        "azure-federated-token",
        "gcp-subject-token",
        "aws.env",
        "azure.env",
        "gcp.json",
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    while !files.iter().all(|f| dir.join(f).exists()) {
        assert!(Instant::now() < deadline, "the helper did not write the cloud files: {}", helper_log());
        std::thread::sleep(Duration::from_millis(50));
    }
    use std::os::unix::fs::PermissionsExt as _;
    for f in &files[..3] {
        assert_eq!(std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777, 0o600, "{f}");
    }
    assert!(!dir.join("svid.key").exists(), "x509 = false writes no key");

    // AWS: botocore's web identity provider, from the helper's env file.
    let mut aws = env_file(&dir.join("aws.env"));
    assert_eq!(aws["AWS_WEB_IDENTITY_TOKEN_FILE"], dir.join("aws-web-identity-token").display().to_string());
    for (k, v) in [
        ("AWS_ENDPOINT_URL_STS", service.as_str()),
        ("AWS_CA_BUNDLE", cert.to_str().unwrap()),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ROLE_SESSION_NAME", "app"),
        ("AWS_CONFIG_FILE", "/nonexistent"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ] {
        aws.insert(k.into(), v.into());
    }
    // Azure: azure-identity's WorkloadIdentityCredential, from the helper's env file.
    let mut azure = env_file(&dir.join("azure.env"));
    assert_eq!(azure["AZURE_AUTHORITY_HOST"], service);
    azure.insert("REQUESTS_CA_BUNDLE".into(), cert.display().to_string());
    // GCP: google-auth's identity pool credentials, from the helper's external_account file.
    let gcp_json = dir.join("gcp.json");
    let gcp: BTreeMap<String, String> = [
        ("GOOGLE_APPLICATION_CREDENTIALS".to_owned(), gcp_json.display().to_string()),
        ("REQUESTS_CA_BUNDLE".to_owned(), cert.display().to_string()),
    ]
    .into();

    let audiences =
        [("aws", "sts.amazonaws.com"), ("azure", "api://AzureADTokenExchange"), ("gcp", GCP_PROVIDER)];
    for ((cloud, env), (_, aud)) in
        [("aws", &aws), ("azure", &azure), ("gcp", &gcp)].into_iter().zip(audiences)
    {
        let got = sdk(&python, cloud, env);
        assert_eq!(got["ok"], true, "{cloud}: {got}\nhelper: {}", helper_log());
        let seen = events(&events_file, cloud);
        let accepted = seen.last().unwrap_or_else(|| panic!("the {cloud} stand-in saw nothing"));
        assert_eq!(accepted["accepted"], true, "{accepted}");
        assert_eq!(
            (accepted["sub"].as_str(), accepted["aud"].as_str()),
            (Some(SUBJECT), Some(aud)),
            "{accepted}"
        );
        assert_eq!(got["credential"], accepted["issued"], "{cloud}: the SDK holds what the stand-in issued");
        if cloud == "aws" {
            assert_eq!(got["method"], "assume-role-with-web-identity", "{got}");
        }
    }

    // A JWT-SVID for another audience: each stand-in refuses it, and each SDK gets no credentials.
    let mut wrong_gcp: serde_json::Value = json(&std::fs::read_to_string(&gcp_json).unwrap());
    wrong_gcp["credential_source"]["file"] = wrong_file.display().to_string().into();
    let wrong_gcp_json = tmp.path().join("gcp-wrong.json");
    std::fs::write(&wrong_gcp_json, wrong_gcp.to_string()).unwrap();
    let wrong_path = wrong_file.display().to_string();
    let mut refused = [aws.clone(), azure.clone(), gcp.clone()];
    refused[0].insert("AWS_WEB_IDENTITY_TOKEN_FILE".into(), wrong_path.clone());
    refused[1].insert("AZURE_FEDERATED_TOKEN_FILE".into(), wrong_path);
    refused[2].insert("GOOGLE_APPLICATION_CREDENTIALS".into(), wrong_gcp_json.display().to_string());
    for (cloud, env) in ["aws", "azure", "gcp"].into_iter().zip(&refused) {
        // Fresh each time: the 10 s token should be refused for its audience, not its age.
        std::fs::write(&wrong_file, fetch_wrong()).unwrap();
        let before = events(&events_file, cloud).len();
        let got = sdk(&python, cloud, env);
        assert_eq!(got["ok"], false, "{cloud} accepted a token for another audience: {got}");
        let seen = events(&events_file, cloud);
        assert!(seen.len() > before, "{cloud}: the stand-in was not asked");
        assert!(seen[before..].iter().all(|e| e["accepted"] == false), "{seen:?}");
        let reason = seen[before]["reason"].as_str().unwrap();
        assert!(reason.contains("InvalidAudience"), "{cloud}: {reason}");
    }

    // The helper renews the token files before they expire (10 s JWT-SVIDs, at half life).
    let token_file = dir.join("aws-web-identity-token");
    let first = std::fs::read_to_string(&token_file).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(&token_file).unwrap() == first {
        assert!(Instant::now() < deadline, "the AWS token file was not renewed: {}", helper_log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let got = sdk(&python, "aws", &aws);
    assert_eq!(got["ok"], true, "after renewal: {got}");
    let log = helper_log();
    assert!(!log.contains(&first) && !log.contains("eyJ"), "no token in the helper's log: {log}");
    server.stop();
}
