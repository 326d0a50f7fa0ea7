//! Hand-built images in every format the scanner reads, with planted secrets, whiteouts and config
//! fields; and the checks that each is read completely and presence is right.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use vouch_scan::stream::Limits;
use vouch_scan::{Input, Location, Presence, Report, RuleSet, ScanOptions, Scanner};

pub const AWS_ID: &str = "AKIAQ2RT5WZXYUVB7C3D";
pub const GITHUB: &str = "ghp_R8fK2mQ9xL4vN7pT1sW6yB3cD5hJ0gA2eZ8u";
pub const SLACK: &str = "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx";
pub const STRIPE: &str = "sk_live_4eC39HqLyjWDarjtT1zdp7dc";
pub const DB_PASSWORD: &str = "n7#Qw!x2Lp9Zr4";
pub const PEM: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\nQyNTUxOQAAACDn3i7PXkL2pO3x8n3nHwzYc1R2o8eQ6q9VvY1pP7bJrQAAAJgq2m7NKtpu\n-----END OPENSSH PRIVATE KEY-----\n";

pub fn sha(b: &[u8]) -> String {
    Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

/// Files of an archive or layout: (name, bytes).
pub type Files = Vec<(String, Vec<u8>)>;

/// A layer: (path, Some(content)) for files, (path, None) for directories.
pub fn layer_tar(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(1_700_000_000);
        match data {
            Some(d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(d.len() as u64);
                h.set_mode(0o644);
                b.append_data(&mut h, path, *d).unwrap();
            }
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                h.set_mode(0o755);
                b.append_data(&mut h, path, &[][..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// The three layers of the test image: a settings file deleted by a whiteout, a key under a directory
/// made opaque, a key that stays, a token and a Kubernetes manifest added later.
pub fn layers() -> Vec<Vec<u8>> {
    let settings = format!("import os\nAWS_ACCESS_KEY_ID = \"{AWS_ID}\"\n");
    let deploy = format!(
        "apiVersion: apps/v1\nkind: Deployment\nspec:\n  template:\n    spec:\n      containers:\n        - name: app\n          env:\n            - name: DB_PASSWORD\n              value: \"{DB_PASSWORD}\"\n"
    );
    let env = format!("APP_ENV=prod\nGITHUB_TOKEN={GITHUB}\n");
    let main_py = format!("SLACK_TOKEN = \"{SLACK}\"\nprint('hi')\n");
    let elf = b"\x7fELF\x02\x01\x01\0\0\0\0\0 ghp_R8fK2mQ9xL4vN7pT1sW6yB3cD5hJ0gA2eZ8u";
    vec![
        layer_tar(&[
            ("app/", None),
            ("app/config/", None),
            ("app/config/settings.py", Some(settings.as_bytes())),
            ("tmp/", None),
            ("tmp/build/", None),
            ("tmp/build/id_ed25519", Some(PEM.as_bytes())),
            ("etc/ssl/private/server.key", Some(PEM.as_bytes())),
            ("usr/bin/tool", Some(&elf[..])),
        ]),
        layer_tar(&[
            ("app/config/.wh.settings.py", Some(b"")),
            ("tmp/build/.wh..wh..opq", Some(b"")),
            ("tmp/build/log.txt", Some(b"build ok\n")),
            ("app/.env", Some(env.as_bytes())),
        ]),
        layer_tar(&[
            ("app/main.py", Some(main_py.as_bytes())),
            ("app/k8s/deploy.yaml", Some(deploy.as_bytes())),
        ]),
    ]
}

pub fn config(diff_ids: &[String]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": {
            "Env": ["PATH=/usr/bin", format!("STRIPE_API_KEY={STRIPE}")],
            "Labels": {"org.opencontainers.image.source": "https://example.invalid/demo"},
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [
            {"created_by": "COPY app/ /app/"},
            {"created_by": "RUN curl -fsSL -u deploy:Vq8xR2mN5tK7 https://artifacts.example.invalid/app.tgz"},
        ],
    }))
    .unwrap()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Codec {
    Gzip,
    Zstd,
    Plain,
}

pub fn compress(data: &[u8], codec: Codec) -> Vec<u8> {
    match codec {
        Codec::Gzip => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(data).unwrap();
            gz.finish().unwrap()
        }
        Codec::Zstd => ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest),
        Codec::Plain => data.to_vec(),
    }
}

/// Files of an OCI layout of the test image: (name, bytes).
pub fn oci_files(codec: Codec, ref_name: &str, attestation: bool, nested: bool) -> Vec<(String, Vec<u8>)> {
    oci_files_with(layers(), codec, ref_name, attestation, nested)
}

/// Files of an OCI layout with these layers (uncompressed tars), optionally an attestation manifest
/// beside the image and the image index nested in another index.
pub fn oci_files_with(
    raw: Vec<Vec<u8>>,
    codec: Codec,
    ref_name: &str,
    attestation: bool,
    nested: bool,
) -> Vec<(String, Vec<u8>)> {
    let diff_ids: Vec<String> = raw.iter().map(|l| format!("sha256:{}", sha(l))).collect();
    let cfg = config(&diff_ids);
    let blobs: Vec<Vec<u8>> = raw.iter().map(|l| compress(l, codec)).collect();
    let media = match codec {
        Codec::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        Codec::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        Codec::Plain => "application/vnd.oci.image.layer.v1.tar",
    };
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{}", sha(&cfg)), "size": cfg.len()},
        // The media type claims gzip for every codec: the scanner must go by magic bytes.
        "layers": blobs.iter().map(|b| json!({"mediaType": if codec == Codec::Plain { media } else { "application/vnd.oci.image.layer.v1.tar+gzip" }, "digest": format!("sha256:{}", sha(b)), "size": b.len()})).collect::<Vec<_>>(),
    }))
    .unwrap();
    let mut files: Vec<(String, Vec<u8>)> =
        vec![("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec())];
    let mut manifests = vec![json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": format!("sha256:{}", sha(&manifest)), "size": manifest.len(),
        "platform": {"architecture": "amd64", "os": "linux"},
    })];
    if attestation {
        // An attestation manifest whose "layer" holds a secret-looking in-toto statement: skipped.
        let att_layer = compress(&layer_tar(&[("statement.json", Some(GITHUB.as_bytes()))]), Codec::Gzip);
        let att_cfg = b"{}".to_vec();
        let att = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{}", sha(&att_cfg)), "size": 2},
            "layers": [{"mediaType": "application/vnd.in-toto+json", "digest": format!("sha256:{}", sha(&att_layer)), "size": att_layer.len()}],
        }))
        .unwrap();
        manifests.push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{}", sha(&att)), "size": att.len(),
            "platform": {"architecture": "unknown", "os": "unknown"},
            "annotations": {"vnd.docker.reference.type": "attestation-manifest", "vnd.docker.reference.digest": format!("sha256:{}", sha(&manifest))},
        }));
        for b in [att_layer, att_cfg, att] {
            files.push((format!("blobs/sha256/{}", sha(&b)), b));
        }
    }
    let index = if nested {
        let inner = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests})).unwrap();
        let outer = json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": format!("sha256:{}", sha(&inner)), "size": inner.len(),
            "annotations": {"io.containerd.image.name": ref_name},
        }]});
        files.push((format!("blobs/sha256/{}", sha(&inner)), inner));
        outer
    } else {
        manifests[0]["annotations"] = json!({"io.containerd.image.name": ref_name});
        json!({"schemaVersion": 2, "manifests": manifests})
    };
    files.push(("index.json".into(), serde_json::to_vec(&index).unwrap()));
    for b in std::iter::once(cfg).chain(std::iter::once(manifest)).chain(blobs) {
        files.push((format!("blobs/sha256/{}", sha(&b)), b));
    }
    files
}

/// `docker save` of Docker 25+: the OCI layout plus manifest.json, layers uncompressed.
pub fn docker_save_files() -> Vec<(String, Vec<u8>)> {
    let mut files = oci_files(Codec::Plain, "docker.io/library/demo:1", false, false);
    let index: Value =
        serde_json::from_slice(&files.iter().find(|(n, _)| n == "index.json").unwrap().1).unwrap();
    let mdigest = index["manifests"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_owned();
    let manifest: Value =
        serde_json::from_slice(&files.iter().find(|(n, _)| n.ends_with(&mdigest)).unwrap().1).unwrap();
    let dm = json!([{
        "Config": format!("blobs/sha256/{}", manifest["config"]["digest"].as_str().unwrap().trim_start_matches("sha256:")),
        "RepoTags": ["demo:1"],
        "Layers": manifest["layers"].as_array().unwrap().iter().map(|l| format!("blobs/sha256/{}", l["digest"].as_str().unwrap().trim_start_matches("sha256:"))).collect::<Vec<_>>(),
    }]);
    files.push(("manifest.json".into(), serde_json::to_vec(&dm).unwrap()));
    files
}

/// `docker save` before Docker 25: `<id>/layer.tar`, `<config>.json`, manifest.json, repositories.
pub fn docker_legacy_files() -> Vec<(String, Vec<u8>)> {
    let raw = layers();
    let diff_ids: Vec<String> = raw.iter().map(|l| format!("sha256:{}", sha(l))).collect();
    let cfg = config(&diff_ids);
    let mut files = Vec::new();
    let mut ids = Vec::new();
    for (i, l) in raw.into_iter().enumerate() {
        let id = sha(format!("layer{i}").as_bytes());
        files.push((format!("{id}/VERSION"), b"1.0".to_vec()));
        files.push((format!("{id}/json"), format!("{{\"id\":\"{id}\"}}").into_bytes()));
        files.push((format!("{id}/layer.tar"), l));
        ids.push(id);
    }
    let cfg_name = format!("{}.json", sha(&cfg));
    files.push((cfg_name.clone(), cfg));
    let dm = json!([{"Config": cfg_name, "RepoTags": ["demo:1"], "Layers": ids.iter().map(|i| format!("{i}/layer.tar")).collect::<Vec<_>>()}]);
    files.push(("manifest.json".into(), serde_json::to_vec(&dm).unwrap()));
    files
}

pub fn write_tar(path: &Path, files: &[(String, Vec<u8>)]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.finish().unwrap();
}

pub fn write_dir(dir: &Path, files: &[(String, Vec<u8>)]) {
    for (name, data) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
}

pub fn scan(paths: &[PathBuf]) -> Report {
    let scanner = Scanner::new(RuleSet::default_rules().unwrap(), ScanOptions::default());
    let inputs: Vec<Input> = paths.iter().cloned().map(Input::Path).collect();
    scanner.scan(&inputs, &Default::default())
}

/// (rule, path in layer or config field, presence) of every finding.
pub fn summary(r: &Report) -> Vec<(String, String, Option<Presence>)> {
    let mut v: Vec<_> = r
        .findings
        .iter()
        .map(|f| match &f.location {
            Location::Layer { path, presence, .. } => (f.rule_id.clone(), path.clone(), Some(*presence)),
            Location::Config { field, .. } => (f.rule_id.clone(), field.clone(), None),
            Location::File { path, .. } | Location::Commit { path, .. } => {
                (f.rule_id.clone(), path.clone(), None)
            }
        })
        .collect();
    v.sort();
    v
}

fn expected() -> Vec<(String, String, Option<Presence>)> {
    let d2 = Some(Presence::Deleted { in_layer: 2 });
    let p = Some(Presence::Present);
    let mut v = vec![
        ("aws-access-key-id", "app/config/settings.py", d2),
        ("private-key", "tmp/build/id_ed25519", d2),
        ("private-key", "etc/ssl/private/server.key", p),
        ("github-token", "app/.env", p),
        ("slack-token", "app/main.py", p),
        ("generic-password", "app/k8s/deploy.yaml", p),
        ("stripe-key", "Env[1]", None),
        ("cli-basic-auth", "history[1].created_by", None),
    ]
    .into_iter()
    .map(|(a, b, c)| (a.to_owned(), b.to_owned(), c))
    .collect::<Vec<_>>();
    v.sort();
    v
}

#[test]
fn every_image_format_is_read_completely_with_presence() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Files)> = vec![
        ("oci-gzip.tar", oci_files(Codec::Gzip, "demo:1", false, false)),
        ("oci-zstd.tar", oci_files(Codec::Zstd, "demo:1", false, false)),
        ("oci-index-attestation.tar", oci_files(Codec::Gzip, "demo:1", true, true)),
        ("docker-save.tar", docker_save_files()),
        ("docker-legacy.tar", docker_legacy_files()),
    ];
    for (name, files) in &cases {
        let p = dir.path().join(name);
        write_tar(&p, files);
        let r = scan(&[p]);
        assert!(r.errors.is_empty(), "{name}: {:?}", r.errors);
        assert_eq!(summary(&r), expected(), "{name}");
        assert_eq!(r.stats.images, 1, "{name}: attestation manifests are not images");
        assert_eq!(r.stats.binary_files, 1, "{name}: the ELF file is skipped as binary");
        assert_eq!(r.exit_code(), 1);
    }
    // The OCI layout as a directory, and a gzip-compressed docker save.
    let layout = dir.path().join("layout");
    write_dir(&layout, &oci_files(Codec::Gzip, "demo:1", true, false));
    assert_eq!(summary(&scan(&[layout])), expected());
    let plain = dir.path().join("docker-save.tar");
    let gz = dir.path().join("docker-save.tar.gz");
    std::fs::write(&gz, compress(&std::fs::read(&plain).unwrap(), Codec::Gzip)).unwrap();
    assert_eq!(summary(&scan(&[gz])), expected());
}

#[test]
fn legacy_layers_are_named_by_diff_id_and_images_by_tag() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("legacy.tar");
    write_tar(&p, &docker_legacy_files());
    let r = scan(&[p]);
    let diff1 = format!("sha256:{}", sha(&layers()[0]));
    let f = r.findings.iter().find(|f| f.rule_id == "aws-access-key-id").unwrap();
    match &f.location {
        Location::Layer { layer, layer_digest, image_ref, line, .. } => {
            assert_eq!(
                (*layer, layer_digest.as_str(), image_ref.as_deref(), *line),
                (1, diff1.as_str(), Some("demo:1"), 2)
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn corrupt_archives_name_the_entry_and_the_rest_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    // Layer 2 is a gzip header followed by garbage: layers 1 and 3 and the config are still scanned.
    let mut files = oci_files(Codec::Gzip, "demo:1", false, false);
    let raw = layers();
    let bad_digest = sha(&compress(&raw[1], Codec::Gzip));
    for (name, data) in files.iter_mut() {
        if name.ends_with(&bad_digest) {
            let keep = data.len() / 3;
            data.truncate(keep);
            data.extend_from_slice(&[0x55; 64]);
        }
    }
    let img = dir.path().join("bad-layer.tar");
    write_tar(&img, &files);
    let good = dir.path().join("good.env");
    std::fs::write(&good, format!("GITHUB_TOKEN={GITHUB}\n")).unwrap();
    let r = scan(&[img.clone(), good.clone()]);
    assert_eq!(r.exit_code(), 2);
    assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
    assert!(r.errors[0].source.contains("layer 2"), "{:?}", r.errors);
    let rules: Vec<_> = summary(&r).into_iter().map(|(rule, path, _)| (rule, path)).collect();
    assert!(rules.contains(&("slack-token".into(), "app/main.py".into())), "{rules:?}");
    assert!(rules.contains(&("aws-access-key-id".into(), "app/config/settings.py".into())), "{rules:?}");
    assert!(rules.contains(&("github-token".into(), good.display().to_string())), "{rules:?}");

    // A truncated archive: the outer tar ends in the middle of an entry.
    let whole = dir.path().join("whole.tar");
    write_tar(&whole, &docker_save_files());
    let bytes = std::fs::read(&whole).unwrap();
    let cut = dir.path().join("truncated.tar");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let r = scan(&[cut]);
    assert_eq!(r.exit_code(), 2);
    assert!(!r.errors.is_empty());
    for e in &r.errors {
        assert!(!e.message.is_empty() && !e.message.contains("panicked"), "{e:?}");
    }

    // A layer whose tar stops in the middle of an entry: the message names that entry, and what came
    // before it in the layer is still reported.
    let secret_file = format!("A=1\nGITHUB_TOKEN={GITHUB}\n");
    let big =
        layer_tar(&[("app/a.env", Some(secret_file.as_bytes())), ("app/b.txt", Some(&[b'y'; 30000][..]))]);
    let files = oci_files_with(vec![big[..big.len() - 20000].to_vec()], Codec::Gzip, "demo:1", false, false);
    let p = dir.path().join("cut-layer.tar");
    write_tar(&p, &files);
    let r = scan(&[p]);
    assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
    assert!(r.errors[0].message.contains("app/b.txt"), "{:?}", r.errors);
    assert!(summary(&r).iter().any(|(rule, path, _)| rule == "github-token" && path == "app/a.env"));
}

#[test]
fn decompression_bombs_are_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let zeros = vec![b'0'; 24 << 20];
    let packed = compress(&layer_tar(&[("zeros.txt", Some(&zeros[..]))]), Codec::Gzip);
    assert!(packed.len() < (24 << 20) / 300, "the test layer should compress past the ratio limit");
    let mut raw = layers();
    raw.push(layer_tar(&[("zeros.txt", Some(&zeros[..]))]));
    let files = oci_files_with(raw, Codec::Gzip, "demo:1", false, false);
    let p = dir.path().join("bomb.tar");
    write_tar(&p, &files);
    let opts = ScanOptions {
        limits: Limits { max_layer_bytes: 1 << 40, max_ratio: 250, ratio_floor: 4 << 20 },
        ..ScanOptions::default()
    };
    let scanner = Scanner::new(RuleSet::default_rules().unwrap(), opts);
    let r = scanner.scan(&[Input::Path(p.clone())], &Default::default());
    assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
    assert!(r.errors[0].message.contains("decompression bomb"), "{:?}", r.errors);
    assert!(r.errors[0].source.contains("layer 4"), "{:?}", r.errors);
    // The other layers were still scanned.
    assert_eq!(summary(&r).len(), expected().len());
    // The absolute cap too.
    let opts = ScanOptions {
        limits: Limits { max_layer_bytes: 1 << 20, max_ratio: 1 << 30, ratio_floor: 1 << 40 },
        ..ScanOptions::default()
    };
    let r =
        Scanner::new(RuleSet::default_rules().unwrap(), opts).scan(&[Input::Path(p)], &Default::default());
    assert!(r.errors.iter().any(|e| e.message.contains("--max-layer-bytes")), "{:?}", r.errors);
}

#[test]
fn plain_tars_are_scanned_entry_by_entry() {
    let dir = tempfile::tempdir().unwrap();
    // A web app tarball: its index.json and manifest.json are no image documents.
    let files = vec![
        ("index.json".to_owned(), br#"{"title": "my app"}"#.to_vec()),
        ("manifest.json".to_owned(), br#"{"name": "my app", "start_url": "/"}"#.to_vec()),
        ("app/.env".to_owned(), format!("GITHUB_TOKEN={GITHUB}\n").into_bytes()),
    ];
    let p = dir.path().join("webapp.tar");
    write_tar(&p, &files);
    let r = scan(std::slice::from_ref(&p));
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(summary(&r), vec![("github-token".to_owned(), format!("{}!/app/.env", p.display()), None)]);

    // An OCI layout directory whose manifest.json points outside the layout is refused, not followed.
    let layout = dir.path().join("evil");
    write_dir(&layout, &oci_files(Codec::Gzip, "demo:1", false, false));
    std::fs::write(dir.path().join("outside.env"), format!("GITHUB_TOKEN={GITHUB}\n")).unwrap();
    std::fs::write(
        layout.join("manifest.json"),
        serde_json::to_vec(&json!([{"Config": "../outside.env", "Layers": ["../outside.env"]}])).unwrap(),
    )
    .unwrap();
    let r = scan(&[layout]);
    assert!(r.findings.is_empty(), "{:?}", r.findings);
    assert!(r.errors.iter().any(|e| e.message.contains("is not a blob path")), "{:?}", r.errors);
}
