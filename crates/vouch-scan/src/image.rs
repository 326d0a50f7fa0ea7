//! Offline container images: OCI image layout directories, OCI archives, `docker save` tarballs (current
//! format with `manifest.json` over an OCI layout, and the legacy `<id>/layer.tar` one). Indexes are
//! followed to every platform's image (attestation manifests skipped); the config's Env, Labels and
//! history are scanned; every layer is streamed once, and whiteouts decide whether a file found in a
//! layer is still present in the final filesystem.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::detect::{scan_text, Candidate, FileClass, TextKind};
use crate::report::Presence;
use crate::rules::RuleSet;
use crate::stream::{decompressed, scan_stream, Limits, Progress, TextOutcome};

/// Manifests, indexes and configs larger than this are refused (they are JSON documents of kilobytes).
const MAX_JSON: u64 = 32 << 20;

/// Where blobs come from: a tar archive (entries located once, then read by offset) or a directory.
#[derive(Debug)]
pub enum Blobs {
    /// An archive file and its entries: name -> (data offset, size).
    Archive {
        /// The archive.
        path: PathBuf,
        /// Entries by normalised name.
        entries: HashMap<String, (u64, u64)>,
    },
    /// An OCI image layout directory.
    Dir(PathBuf),
}

/// Normalises a path inside an archive or layer: no `./`, no leading `/`.
pub fn normalise(p: &str) -> String {
    let mut s = p;
    loop {
        if let Some(rest) = s.strip_prefix("./") {
            s = rest;
        } else if let Some(rest) = s.strip_prefix('/') {
            s = rest;
        } else {
            break;
        }
    }
    s.trim_end_matches('/').to_owned()
}

impl Blobs {
    /// Indexes a tar archive: one pass over its headers, seeking over the data.
    pub fn index_archive(path: &Path) -> io::Result<Blobs> {
        let file = File::open(path)?;
        let mut archive = tar::Archive::new(file);
        let mut entries = HashMap::new();
        for entry in archive.entries_with_seek()? {
            let entry = entry?;
            let name = normalise(&entry.path()?.to_string_lossy());
            if entry.header().entry_type().is_file() {
                entries.insert(name, (entry.raw_file_position(), entry.size()));
            }
        }
        Ok(Blobs::Archive { path: path.to_owned(), entries })
    }

    /// True when the blob or file exists.
    pub fn has(&self, name: &str) -> bool {
        match self {
            Blobs::Archive { entries, .. } => entries.contains_key(name),
            Blobs::Dir(dir) => dir.join(name).is_file(),
        }
    }

    /// Opens a blob for streaming; returns its size too.
    pub fn open(&self, name: &str) -> io::Result<(Box<dyn Read + Send>, u64)> {
        match self {
            Blobs::Archive { path, entries } => {
                let &(offset, size) = entries.get(name).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, format!("`{name}` is not in the archive"))
                })?;
                let mut f = File::open(path)?;
                f.seek(SeekFrom::Start(offset))?;
                Ok((Box::new(f.take(size)), size))
            }
            Blobs::Dir(dir) => {
                // Names come from the image's own manifests: never let one leave the layout.
                if name.split('/').any(|c| c == ".." || c.is_empty()) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("`{name}` is not a blob path"),
                    ));
                }
                let p = dir.join(name);
                let f = File::open(&p).map_err(|e| io::Error::new(e.kind(), format!("`{name}`: {e}")))?;
                let size = f.metadata()?.len();
                Ok((Box::new(f), size))
            }
        }
    }

    /// Reads a small JSON document.
    fn json<T: for<'de> Deserialize<'de>>(&self, name: &str) -> Result<T, String> {
        let (r, size) = self.open(name).map_err(|e| e.to_string())?;
        if size > MAX_JSON {
            return Err(format!(
                "`{name}` is {size} bytes; a manifest or config this large is not plausible"
            ));
        }
        let mut buf = Vec::with_capacity(size as usize);
        r.take(MAX_JSON).read_to_end(&mut buf).map_err(|e| format!("`{name}`: {e}"))?;
        serde_json::from_slice(&buf)
            .map_err(|e| format!("`{name}` is not valid JSON of the expected shape: {e}"))
    }

    /// True when this looks like an image (rather than a plain tar of files).
    pub fn is_image(&self) -> bool {
        self.has("manifest.json") || self.has("index.json")
    }
}

/// Docker's `manifest.json` entry.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    annotations: HashMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigFile {
    #[serde(default)]
    config: Option<ContainerConfig>,
    #[serde(default)]
    rootfs: Option<RootFs>,
    #[serde(default)]
    history: Vec<History>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerConfig {
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    labels: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
struct History {
    #[serde(default)]
    created_by: Option<String>,
}

/// One image found in an archive or layout.
#[derive(Debug, Clone)]
pub struct ImageRef {
    /// Name from the archive (`RepoTags`, `io.containerd.image.name`, `org.opencontainers.image.ref.name`).
    pub name: Option<String>,
    /// Blob name of the config.
    pub config_blob: String,
    /// `sha256:...` of the config (the image ID).
    pub config_digest: String,
    /// Layers in order: (blob name, digest to report).
    pub layers: Vec<(String, String)>,
}

fn blob_name(digest: &str) -> Option<String> {
    let (alg, hex) = digest.split_once(':')?;
    let ok = !alg.is_empty()
        && alg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'.' || b == b'_' || b == b'-')
        && !hex.is_empty()
        && hex.bytes().all(|b| b.is_ascii_alphanumeric());
    ok.then(|| format!("blobs/{alg}/{hex}"))
}

fn digest_of_blob(name: &str) -> Option<String> {
    let rest = name.strip_prefix("blobs/")?;
    let (alg, hex) = rest.split_once('/')?;
    Some(format!("{alg}:{hex}"))
}

const INDEX_TYPES: &[&str] =
    &["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"];

/// Finds the images of an archive or layout. Problems with single images come back as messages; the
/// other images are still returned.
pub fn discover(blobs: &Blobs) -> (Vec<ImageRef>, Vec<String>) {
    let mut images = Vec::new();
    let mut problems = Vec::new();
    // Docker's manifest.json is a list; a web app's manifest.json (an object) is not an image.
    let docker = if blobs.has("manifest.json") {
        blobs.json::<serde_json::Value>("manifest.json").ok().filter(serde_json::Value::is_array)
    } else {
        None
    };
    if let Some(list) = docker {
        let parsed = serde_json::from_value::<Vec<DockerManifest>>(list)
            .map_err(|e| format!("`manifest.json` is not valid JSON of the expected shape: {e}"));
        match parsed {
            Ok(list) => {
                for m in list {
                    let config_blob = normalise(&m.config);
                    let config_digest = digest_of_blob(&config_blob)
                        .or_else(|| {
                            // Legacy: `<hex>.json`.
                            config_blob.strip_suffix(".json").map(|hex| format!("sha256:{hex}"))
                        })
                        .unwrap_or_else(|| config_blob.clone());
                    let diff_ids = blobs
                        .json::<ConfigFile>(&config_blob)
                        .ok()
                        .and_then(|c| c.rootfs)
                        .map(|r| r.diff_ids)
                        .unwrap_or_default();
                    let layers = m
                        .layers
                        .iter()
                        .enumerate()
                        .map(|(i, l)| {
                            let name = normalise(l);
                            let digest = digest_of_blob(&name)
                                .or_else(|| diff_ids.get(i).cloned())
                                .unwrap_or_else(|| name.clone());
                            (name, digest)
                        })
                        .collect();
                    let name = m.repo_tags.and_then(|t| t.into_iter().next());
                    images.push(ImageRef { name, config_blob, config_digest, layers });
                }
            }
            Err(e) => problems.push(e),
        }
        return (images, problems);
    }
    match blobs.json::<Index>("index.json") {
        Ok(index) => walk_index(blobs, index, None, 0, &mut images, &mut problems),
        Err(e) => problems.push(e),
    }
    (images, problems)
}

fn walk_index(
    blobs: &Blobs,
    index: Index,
    inherited_name: Option<&str>,
    depth: usize,
    images: &mut Vec<ImageRef>,
    problems: &mut Vec<String>,
) {
    if depth > 4 {
        problems.push("image indexes nest more than 4 deep; not followed further".to_owned());
        return;
    }
    for d in index.manifests {
        // BuildKit stores provenance/SBOM attestations as manifests of platform unknown/unknown.
        if d.annotations.get("vnd.docker.reference.type").is_some_and(|t| t == "attestation-manifest") {
            continue;
        }
        let name = d
            .annotations
            .get("io.containerd.image.name")
            .or_else(|| d.annotations.get("org.opencontainers.image.ref.name"))
            .map(String::as_str)
            .or(inherited_name);
        let Some(blob) = blob_name(&d.digest) else {
            problems.push(format!("descriptor digest `{}` is malformed", d.digest));
            continue;
        };
        if !blobs.has(&blob) {
            // Partial pulls keep the index of every platform but the blobs of one.
            continue;
        }
        if INDEX_TYPES.contains(&d.media_type.as_str()) {
            match blobs.json::<Index>(&blob) {
                Ok(inner) => walk_index(blobs, inner, name, depth + 1, images, problems),
                Err(e) => problems.push(e),
            }
            continue;
        }
        match blobs.json::<Manifest>(&blob) {
            Ok(m) => {
                let Some(config_blob) = blob_name(&m.config.digest) else {
                    problems.push(format!("manifest `{blob}`: config digest is malformed"));
                    continue;
                };
                let layers = m
                    .layers
                    .iter()
                    .filter_map(|l| blob_name(&l.digest).map(|b| (b, l.digest.clone())))
                    .collect();
                images.push(ImageRef {
                    name: name.map(str::to_owned),
                    config_blob,
                    config_digest: m.config.digest,
                    layers,
                });
            }
            Err(e) => problems.push(e),
        }
    }
}

/// A secret found in the image config.
#[derive(Debug)]
pub struct ConfigFinding {
    /// `Env[1]`, `Labels[ci.token]`, `history[3].created_by`.
    pub field: String,
    /// The finding.
    pub candidate: Candidate,
}

/// Scans the config's Env, Labels and history `created_by`.
pub fn scan_config(blobs: &Blobs, image: &ImageRef, rules: &RuleSet) -> Result<Vec<ConfigFinding>, String> {
    let cfg: ConfigFile = blobs.json(&image.config_blob)?;
    let mut fields: Vec<(String, String)> = Vec::new();
    if let Some(c) = cfg.config {
        for (i, e) in c.env.unwrap_or_default().into_iter().enumerate() {
            fields.push((format!("Env[{i}]"), e));
        }
        for (k, v) in c.labels.unwrap_or_default() {
            fields.push((format!("Labels[{k}]"), format!("{k}={v}")));
        }
    }
    for (i, h) in cfg.history.into_iter().enumerate() {
        if let Some(c) = h.created_by {
            fields.push((format!("history[{i}].created_by"), c));
        }
    }
    let mut out = Vec::new();
    for (field, text) in fields {
        for candidate in scan_text(rules, TextKind::Config, text.as_bytes()) {
            out.push(ConfigFinding { field: field.clone(), candidate });
        }
    }
    Ok(out)
}

/// What streaming one layer produced.
#[derive(Debug, Default)]
pub struct LayerScan {
    /// Findings: (path in the layer, candidate).
    pub found: Vec<(String, Candidate)>,
    /// Every path the layer adds or changes (whiteout markers excluded).
    pub paths: HashSet<String>,
    /// Paths removed by `.wh.<name>` markers.
    pub whiteouts: HashSet<String>,
    /// Directories made opaque by `.wh..wh..opq`.
    pub opaque: HashSet<String>,
    /// Files scanned, binary files skipped, bytes scanned.
    pub files: u64,
    /// Binary files skipped.
    pub binary: u64,
    /// Bytes scanned.
    pub bytes: u64,
    /// `vouch:allow` suppressions.
    pub suppressed_inline: u64,
    /// Findings dropped as test data.
    pub suppressed_test_data: u64,
    /// Why the layer could not be read to the end, naming the entry.
    pub error: Option<String>,
}

/// Streams one layer: decompresses by magic bytes, walks its tar, scans every regular file.
pub fn scan_layer(
    blobs: &Blobs,
    blob: &str,
    rules: &RuleSet,
    limits: Limits,
    progress: &Progress,
) -> LayerScan {
    let mut out = LayerScan::default();
    let (reader, size) = match blobs.open(blob) {
        Ok(r) => r,
        Err(e) => {
            out.error = Some(format!("cannot open layer: {e}"));
            return out;
        }
    };
    let reader = match decompressed(reader, size, limits) {
        Ok((_, r)) => r,
        Err(e) => {
            out.error = Some(format!("cannot read layer: {e}"));
            return out;
        }
    };
    let mut archive = tar::Archive::new(reader);
    let entries = match archive.entries() {
        Ok(e) => e,
        Err(e) => {
            out.error = Some(format!("not a tar layer: {e}"));
            return out;
        }
    };
    let mut last = String::from("(first entry)");
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                out.error = Some(format!("corrupt or truncated after entry `{last}`: {e}"));
                return out;
            }
        };
        let path = match entry.path() {
            Ok(p) => normalise(&p.to_string_lossy()),
            Err(e) => {
                out.error = Some(format!("entry after `{last}` has an unreadable name: {e}"));
                return out;
            }
        };
        last.clone_from(&path);
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (d.to_owned(), n),
            None => (String::new(), path.as_str()),
        };
        if name == ".wh..wh..opq" {
            out.opaque.insert(dir);
            continue;
        }
        if let Some(target) = name.strip_prefix(".wh.") {
            out.whiteouts.insert(if dir.is_empty() { target.to_owned() } else { format!("{dir}/{target}") });
            continue;
        }
        out.paths.insert(path.clone());
        if !entry.header().entry_type().is_file() || rules.allowlist.allows_path(&path) {
            continue;
        }
        match scan_stream(rules, FileClass::of_path(&path), entry, progress) {
            Ok(TextOutcome::Text { found, suppressed, bytes }) => {
                out.files += 1;
                out.bytes += bytes;
                out.suppressed_inline += suppressed.inline as u64;
                out.suppressed_test_data += suppressed.test_data as u64;
                out.found.extend(found.into_iter().map(|c| (path.clone(), c)));
            }
            Ok(TextOutcome::Binary) => out.binary += 1,
            Err(e) => {
                out.error = Some(format!("corrupt or truncated in entry `{path}`: {e}"));
                return out;
            }
        }
    }
    out
}

/// Whether a file seen at `path` in layer `index` (0-based) survives the later layers.
pub fn presence(layers: &[&LayerScan], index: usize, path: &str) -> Presence {
    let ancestors: Vec<&str> =
        path.match_indices('/').map(|(i, _)| &path[..i]).chain(std::iter::once("")).collect();
    for (j, later) in layers.iter().enumerate().skip(index + 1) {
        let in_layer = j + 1;
        let whited_out = later.whiteouts.contains(path)
            || ancestors.iter().any(|a| !a.is_empty() && later.whiteouts.contains(*a));
        let opaque = ancestors.iter().any(|a| later.opaque.contains(*a));
        if whited_out || opaque {
            return Presence::Deleted { in_layer };
        }
        if later.paths.contains(path) {
            return Presence::Replaced { in_layer };
        }
    }
    Presence::Present
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(paths: &[&str], whiteouts: &[&str], opaque: &[&str]) -> LayerScan {
        LayerScan {
            paths: paths.iter().map(|s| s.to_string()).collect(),
            whiteouts: whiteouts.iter().map(|s| s.to_string()).collect(),
            opaque: opaque.iter().map(|s| s.to_string()).collect(),
            ..LayerScan::default()
        }
    }

    #[test]
    fn whiteouts_decide_presence() {
        let l1 = layer(&["app/config/settings.py", "tmp/build/id_rsa", "etc/ssl/key", "a/b/c"], &[], &[]);
        let l2 =
            layer(&["tmp/build/log.txt", "etc/ssl/key"], &["app/config/settings.py", "a"], &["tmp/build"]);
        let l3 = layer(&["app/main.py"], &[], &[]);
        let layers = [&l1, &l2, &l3];
        assert_eq!(presence(&layers, 0, "app/config/settings.py"), Presence::Deleted { in_layer: 2 });
        assert_eq!(presence(&layers, 0, "tmp/build/id_rsa"), Presence::Deleted { in_layer: 2 });
        assert_eq!(presence(&layers, 0, "etc/ssl/key"), Presence::Replaced { in_layer: 2 });
        assert_eq!(presence(&layers, 0, "a/b/c"), Presence::Deleted { in_layer: 2 });
        // An opaque directory hides lower layers only, not its own layer's files.
        assert_eq!(presence(&layers, 1, "tmp/build/log.txt"), Presence::Present);
        assert_eq!(presence(&layers, 2, "app/main.py"), Presence::Present);
    }

    #[test]
    fn paths_are_normalised() {
        assert_eq!(normalise("./app/x"), "app/x");
        assert_eq!(normalise("/etc/"), "etc");
        assert_eq!(blob_name("sha256:abc").as_deref(), Some("blobs/sha256/abc"));
        assert_eq!(blob_name("sha256:../../etc"), None);
    }
}
