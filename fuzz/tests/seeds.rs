//! Regenerates the seed corpora under `corpus/` from real inputs, made the way production makes
//! them: a JWT-SVID minted by vouch-ca, CSRs made by vouch and by OpenSSL, cgroup and /proc files in
//! the layouts of Docker, podman, containerd and Kubernetes, the recorded kubelet pod list of the
//! agent's tests, small images in every format the scanner reads. The HTTP/2 seeds are recorded from
//! a real gRPC C-core client by `seeds/capture_grpc.py`; the header blocks of `h2_rewrite_block` are
//! cut from those recordings here.
//!
//! Run: `VOUCH_FUZZ_WRITE_SEEDS=1 cargo test --manifest-path fuzz/Cargo.toml --no-default-features
//! --test seeds` (writes only when the variable is set; otherwise checks that every target has seeds).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use serde_json::json;

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target)
}

fn put(target: &str, name: &str, data: impl AsRef<[u8]>) {
    let dir = corpus(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), data).unwrap();
}

const ID: &str = "3f6b0c9a8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a";
const POD: &str = "1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d";

#[test]
fn seeds() {
    if std::env::var_os("VOUCH_FUZZ_WRITE_SEEDS").is_none() {
        for (target, _) in vouch_fuzz::TARGETS {
            let n = std::fs::read_dir(corpus(target)).map(|d| d.count()).unwrap_or(0);
            assert!(n > 0, "no seeds for {target}: run with VOUCH_FUZZ_WRITE_SEEDS=1");
        }
        return;
    }
    h2();
    jwt();
    bundles();
    csr();
    ids();
    attestation();
    scanner();
}

/// Header blocks cut from the recorded gRPC requests, each with a 2-byte length, in order: the
/// later blocks refer to the dynamic-table entries of the earlier ones.
fn h2() {
    let mut all = Vec::new();
    for name in ["grpc-python-x509", "grpc-python-jwt", "grpc-python-bundles"] {
        let data = std::fs::read(corpus("h2_filter").join(name)).expect("the recorded gRPC requests");
        let mut rest = &data[..];
        let mut blocks = Vec::new();
        while rest.len() >= 9 {
            let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            let (kind, flags) = (rest[3], rest[4]);
            let payload = &rest[9..9 + len];
            if kind == 0x1 {
                let pad = if flags & 0x8 != 0 { payload[0] as usize } else { 0 };
                let start = usize::from(flags & 0x8 != 0) + if flags & 0x20 != 0 { 5 } else { 0 };
                let block = &payload[start..payload.len() - pad];
                blocks.extend_from_slice(&(block.len() as u16).to_be_bytes());
                blocks.extend_from_slice(block);
            }
            rest = &rest[9 + len..];
        }
        put("h2_rewrite_block", name, &blocks);
        all.extend(blocks);
    }
    put("h2_rewrite_block", "grpc-python-three-blocks", &all);
    // The filter's own re-encoding (literal, never indexed) of a request with a valid authority.
    let literal = vouch_agent::h2_authority_filter::encode_literal_block(&[
        (b":method".to_vec(), b"POST".to_vec()),
        (b":authority".to_vec(), b"localhost".to_vec()),
        (b":path".to_vec(), b"/SpiffeWorkloadAPI/FetchX509SVID".to_vec()),
    ]);
    let mut one = (literal.len() as u16).to_be_bytes().to_vec();
    one.extend(&literal);
    put("h2_rewrite_block", "literal", &one);
}

fn jwt() {
    use vouch_ca::keys::{KeyAlg, KeyUse, SigningKey};
    let sub = vouch_core::SpiffeId::parse("spiffe://example.org/ns/payments/sa/api").unwrap();
    let t = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
    for (name, alg, aud) in [
        ("es256-one-audience", KeyAlg::EcP256, vec!["db".to_owned()]),
        ("es256-two-audiences", KeyAlg::EcP256, vec!["db".to_owned(), "cache".to_owned()]),
        ("es384", KeyAlg::EcP384, vec!["db".to_owned()]),
    ] {
        let key = SigningKey::generate(alg, KeyUse::Jws).unwrap();
        let kid = if alg == KeyAlg::EcP256 { "k1" } else { "k2" };
        let minted = vouch_ca::jwt::mint(
            &key,
            kid,
            &sub,
            &aud,
            Some("https://vouch.example.org"),
            Duration::from_secs(300),
            t(1_800_000_000),
            t(1_699_999_900),
        )
        .unwrap();
        put("jwt", name, &minted.token);
        // For jwt_signed: the token's header and claims JSON, which the harness signs again.
        let mut parts = minted.token.split('.');
        let header = B64.decode(parts.next().unwrap()).unwrap();
        let claims = B64.decode(parts.next().unwrap()).unwrap();
        if alg == KeyAlg::EcP256 {
            put("jwt_signed", name, [&header[..], b"\n", &claims[..]].concat());
        }
    }
    let validated = json!({"sub": "spiffe://example.org/web", "aud": ["db"], "exp": 1_700_000_300,
        "iat": 1_700_000_000, "iss": null, "jti": "abc", "kid": "k1"});
    put("jwt", "validated-claims.json", validated.to_string());
    for (name, header, claims) in [
        (
            "nbf",
            json!({"alg": "ES256", "kid": "k1"}),
            json!({"sub": "spiffe://example.org/a", "aud": "db", "exp": 1_800_000_000, "nbf": 1_600_000_000}),
        ),
        (
            "crit",
            json!({"alg": "ES256", "kid": "k1", "crit": ["exp"]}),
            json!({"sub": "spiffe://example.org/a", "aud": "db", "exp": 1_800_000_000}),
        ),
        (
            "rs256-alg",
            json!({"alg": "RS256", "kid": "r1", "typ": "JOSE"}),
            json!({"sub": "spiffe://example.org/a", "aud": ["db", "x"], "exp": 1_800_000_000}),
        ),
    ] {
        put("jwt_signed", name, format!("{header}\n{claims}"));
    }
    put("jwt_signed", "duplicate-sub", "{\"alg\":\"ES256\",\"kid\":\"k1\"}\n{\"sub\":\"spiffe://example.org/a\",\"sub\":\"spiffe://example.org/b\",\"aud\":\"db\",\"exp\":1800000000}");
}

fn csr() {
    let key = vouch_ca::keys::WorkloadKey::generate().unwrap();
    put("csr", "vouch-p256.der", key.csr_der().unwrap());
    put("csr", "vouch-p256.pem", key.csr_pem().unwrap());
    // OpenSSL's, as an admin would make them: P-384, RSA 2048, Ed25519, with a subject and SANs.
    let dir = tempfile::tempdir().unwrap();
    for (name, args) in [
        ("openssl-p384.der", &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"][..]),
        ("openssl-rsa2048.der", &["-newkey", "rsa:2048"][..]),
        ("openssl-ed25519.der", &["-newkey", "ed25519"][..]),
    ] {
        let out = dir.path().join(name);
        let status = std::process::Command::new("openssl")
            .args(["req", "-new", "-nodes", "-outform", "DER", "-subj", "/CN=api/O=example"])
            .args(["-addext", "subjectAltName=URI:spiffe://example.org/api,DNS:api.example.org"])
            .args(["-keyout", dir.path().join("key").to_str().unwrap(), "-out", out.to_str().unwrap()])
            .args(args)
            .status()
            .expect("openssl");
        assert!(status.success());
        put("csr", name, std::fs::read(out).unwrap());
    }
}

/// Bundles as vouch's bundle endpoint serves them (a fresh authority's, and one mid-rotation with
/// two roots and RSA JWT keys), and small edge cases of the format.
fn bundles() {
    let td = vouch_core::TrustDomain::new("b.org").unwrap();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let mut a =
        vouch_ca::authority::Authority::new(vouch_ca::authority::AuthorityConfig::new(td.clone()), None);
    a.tick(now).unwrap();
    put("bundle_jwks", "vouch-es256", a.bundle().to_jwks().unwrap());
    a.prepare_root(now).unwrap();
    put("bundle_jwks", "vouch-two-roots", a.bundle().to_jwks().unwrap());
    let mut config = vouch_ca::authority::AuthorityConfig::new(td);
    config.jwt_key_alg = Some(vouch_ca::KeyAlg::Rsa2048);
    let mut rsa = vouch_ca::authority::Authority::new(config, None);
    rsa.tick(now).unwrap();
    put("bundle_jwks", "vouch-rs256", rsa.bundle().to_jwks().unwrap());
    put("bundle_jwks", "empty", r#"{"keys":[],"spiffe_sequence":1,"spiffe_refresh_hint":300}"#);
    put("bundle_jwks", "unknown-use", r#"{"keys":[{"kty":"EC","use":"enc","crv":"P-256"}]}"#);
}

fn ids() {
    for (i, id) in [
        "spiffe://example.org/ns/payments/sa/api",
        "spiffe://example.org",
        "spiffe://prod.example-1.org/vouch/agent/k8s_psat/cluster/0f0e",
        "example.org\n/ns/default/sa/web",
    ]
    .iter()
    .enumerate()
    {
        put("spiffe_id", &format!("id-{i}"), id);
    }
    let digest = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    for (i, s) in [
        "unix:uid:1000".to_owned(),
        "k8s:ns:payments".to_owned(),
        "k8s:pod-label:app:api".to_owned(),
        format!("docker:image_id:{digest}"),
        "docker:image_id:repo.example/app@sha256:aa".to_owned(),
        format!("docker:image_config_digest:{digest}"),
        "k8s:container-image:docker.io/envoyproxy/envoy-alpine@sha256:bf86".to_owned(),
        "k8s:pod-image-count:2".to_owned(),
        "unix:sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".to_owned(),
    ]
    .iter()
    .enumerate()
    {
        put("selector", &format!("selector-{i}"), s);
    }
    for (i, d) in ["600", "1h30m", "2w3d4h5m6s", "1d", "0s", " 45s "].iter().enumerate() {
        put("duration", &format!("duration-{i}"), d);
    }
}

fn attestation() {
    let pod_sd = POD.replace('-', "_");
    let files = [
        ("docker-v1", format!("12:pids:/docker/{ID}\n11:memory:/docker/{ID}\n1:name=systemd:/docker/{ID}\n0::/\n")),
        ("docker-v2", format!("0::/system.slice/docker-{ID}.scope\n")),
        ("podman", format!("0::/machine.slice/libpod-{ID}.scope\n")),
        ("crio", format!("0::/system.slice/crio-{ID}.scope\n")),
        ("k8s-systemd", format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{pod_sd}.slice/cri-containerd-{ID}.scope\n")),
        ("k8s-cgroupfs", format!("0::/kubepods/besteffort/pod{POD}/{ID}\n")),
        ("containerd-namespace", "0::/ci/ci-ctr\n".to_owned()),
        ("host", std::fs::read_to_string("/proc/self/cgroup").unwrap_or_else(|_| "0::/init.scope\n".into())),
    ];
    for (name, text) in files {
        put("cgroup", name, text);
    }
    put("procfs", "status", std::fs::read("/proc/self/status").unwrap());
    put("procfs", "stat", std::fs::read("/proc/self/stat").unwrap());
    put("procfs", "stat-odd-name", "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1234 56 18446744073709551615\n");
    put("procfs", "passwd", "root:x:0:0:root:/root:/bin/bash\n# comment\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n");
    put("procfs", "group", "root:x:0:\ndocker:x:999:alice,bob\n");
    put(
        "procfs",
        "fdinfo-pidfd",
        "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nPid:\t4242\nNSpid:\t4242\n",
    );

    let pods = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/vouch-agent/tests/fixtures/kubelet-pods.json"),
    )
    .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&pods).unwrap();
    // The first container of each pod of the recorded list, looked for by its UID and runtime id.
    for (i, pod) in list["items"].as_array().unwrap().iter().enumerate() {
        let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
        let cid = pod["status"]["containerStatuses"][0]["containerID"].as_str().unwrap_or_default();
        let cid = cid.split_once("://").map_or(cid, |(_, id)| id);
        let mut seed = format!("{uid}\n{cid}\n").into_bytes();
        seed.extend(&pods);
        put("kubelet", &format!("pod-{i}"), seed);
    }
    put("kubelet", "empty-list", "x\ny\n{\"kind\":\"PodList\",\"apiVersion\":\"v1\",\"items\":[]}");

    let docker = json!({
        "Id": ID, "Created": "2026-01-01T00:00:00Z", "Name": "/payments-1",
        "Image": format!("sha256:{}", "ab".repeat(32)),
        "State": {"Status": "running", "Running": true, "Pid": 4242},
        "Config": {"Hostname": "3f6b0c9a8d7e", "Image": "registry.example/payments:1.2",
            "Env": ["PATH=/usr/bin"], "Cmd": ["/app"],
            "Labels": {"app": "payments", "tier": "back end", "com.docker.compose.project": "shop"}},
    });
    put("runtime", "docker-inspect.json", serde_json::to_vec_pretty(&docker).unwrap());
    let podman = json!({"Id": ID, "Name": "web", "Image": "ab".repeat(32),
        "Config": {"Image": "docker.io/library/nginx:latest", "Labels": null}});
    put("runtime", "podman-inspect.json", serde_json::to_vec_pretty(&podman).unwrap());
}

fn sha(b: &[u8]) -> String {
    vouch_ca::keys::sha256_hex(b)
}

fn layer_tar(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
}

fn archive(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let entries: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
    layer_tar(&entries)
}

fn scanner() {
    let env = b"APP_ENV=prod\nGITHUB_TOKEN=ghp_R8fK2mQ9xL4vN7pT1sW6yB3cD5hJ0gA2eZ8u\n";
    let layer1 = layer_tar(&[("app/.env", env), ("app/main.py", b"print('hi')\n")]);
    let layer2 = layer_tar(&[("app/.wh..env", b""), ("tmp/.wh..wh..opq", b"")]);
    put("scan_layer", "plain.tar", &layer1);
    put("scan_layer", "whiteouts.tar", &layer2);
    put("scan_layer", "layer.tar.gz", gzip(&layer1));
    put("scan_layer", "layer.tar.zst", zstd(&layer1));
    put("scan_layer", "two-zstd-frames.zst", [zstd(&layer1[..512]), zstd(&layer1[512..])].concat());

    // An OCI layout (as `docker save` of Docker 25+ writes it, with manifest.json), one archive per
    // layer codec; and the legacy `docker save` format.
    let raw = [layer1.clone(), layer2.clone()];
    let diff_ids: Vec<String> = raw.iter().map(|l| format!("sha256:{}", sha(l))).collect();
    let cfg = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/usr/bin", "STRIPE_API_KEY=sk_live_4eC39HqLyjWDarjtT1zdp7dc"], "Labels": {"a": "b"}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "COPY app/ /app/"}, {"created_by": "RUN rm app/.env"}],
    }))
    .unwrap();
    for (name, codec) in [("oci-plain.tar", 0), ("oci-gzip.tar", 1), ("oci-zstd.tar", 2)] {
        let blobs: Vec<Vec<u8>> = raw
            .iter()
            .map(|l| match codec {
                1 => gzip(l),
                2 => zstd(l),
                _ => l.clone(),
            })
            .collect();
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{}", sha(&cfg)), "size": cfg.len()},
            "layers": blobs.iter().map(|b| json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": format!("sha256:{}", sha(b)), "size": b.len()})).collect::<Vec<_>>(),
        }))
        .unwrap();
        let index = json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{}", sha(&manifest)), "size": manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": "docker.io/library/demo:1"},
        }]});
        let mut files = vec![
            ("oci-layout".to_owned(), br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
            ("index.json".to_owned(), serde_json::to_vec(&index).unwrap()),
        ];
        if codec == 0 {
            let dm = json!([{"Config": format!("blobs/sha256/{}", sha(&cfg)), "RepoTags": ["demo:1"],
                "Layers": blobs.iter().map(|b| format!("blobs/sha256/{}", sha(b))).collect::<Vec<_>>()}]);
            files.push(("manifest.json".to_owned(), serde_json::to_vec(&dm).unwrap()));
        }
        for b in [cfg.clone(), manifest].into_iter().chain(blobs) {
            files.push((format!("blobs/sha256/{}", sha(&b)), b));
        }
        put("scan_image", name, archive(&files));
        if codec == 1 {
            put("scan_image", "oci-gzip.tar.gz", gzip(&archive(&files)));
        }
    }
    let mut files = Vec::new();
    let mut ids = Vec::new();
    for (i, l) in raw.iter().enumerate() {
        let id = sha(format!("layer{i}").as_bytes());
        files.push((format!("{id}/layer.tar"), l.clone()));
        ids.push(format!("{id}/layer.tar"));
    }
    let cfg_name = format!("{}.json", sha(&cfg));
    files.push((cfg_name.clone(), cfg.clone()));
    files.push((
        "manifest.json".to_owned(),
        serde_json::to_vec(&json!([{"Config": cfg_name, "RepoTags": ["demo:1"], "Layers": ids}])).unwrap(),
    ));
    put("scan_image", "docker-legacy.tar", archive(&files));
    put("scan_image", "plain-files.tar", &layer1);
    put("scan_image", "text.env", env);
}
