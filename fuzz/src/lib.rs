//! Harness functions of vouch's fuzz targets: one function per parser of untrusted input, taking the
//! fuzzer's bytes. Each target in `fuzz_targets/` is one line calling its function here, so the same
//! code runs under libFuzzer (`scripts/fuzz`) and in the corpus replay tests (`tests/corpus.rs`, run
//! by `scripts/test`).
//!
//! A harness panics only when a parser breaks a property it promises (a round trip, a bound, a
//! refusal); every refusal of bad input is an ordinary `Err` and uninteresting.
//!
//! Inputs are what an attacker controls in production: the bytes a local process writes to the
//! Workload API socket (`h2_*`), a JWT-SVID presented for validation (`jwt*`), a CSR sent by an
//! agent or admin (`csr`), a SPIFFE bundle served by another trust domain's bundle endpoint
//! (`bundle_jwks`), SPIFFE IDs, selectors and durations typed by admins or synced from the
//! server (`spiffe_id`, `selector`, `duration`), `/proc` and cgroup files of any local process
//! (`cgroup`, `procfs`), answers of the kubelet and container runtimes (`kubelet`, `runtime`), and
//! container images handed to the scanner (`scan_*`).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;

/// A harness: the fuzzer's bytes in, a panic when a property breaks.
pub type Harness = fn(&[u8]);

/// Every target, by name: the names of `fuzz_targets/*.rs`, `corpus/*` and the functions below.
pub const TARGETS: &[(&str, Harness)] = &[
    ("h2_filter", h2_filter),
    ("h2_rewrite_block", h2_rewrite_block),
    ("jwt", jwt),
    ("jwt_signed", jwt_signed),
    ("bundle_jwks", bundle_jwks),
    ("csr", csr),
    ("spiffe_id", spiffe_id),
    ("selector", selector),
    ("duration", duration),
    ("cgroup", cgroup),
    ("procfs", procfs),
    ("kubelet", kubelet),
    ("runtime", runtime),
    ("scan_layer", scan_layer),
    ("scan_image", scan_image),
];

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

// ---------------------------------------------------------------------------------------------
// The agent's HTTP/2 header filter (Workload API socket, reachable by every local user).

/// The HTTP/2 client preface the filter expects first.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
}

/// Frames after the preface (`data`) through `filter_client_to_server`, then checks what it let
/// through: every header block it wrote decodes with a fresh HPACK decoder (it re-encodes without
/// indexing), stays within the header-list bound, and carries only valid `:authority` values.
pub fn h2_filter(data: &[u8]) {
    let mut input = PREFACE.to_vec();
    input.extend_from_slice(data);
    let mut out = Vec::new();
    let filter = vouch_agent::h2_authority_filter::filter_client_to_server(
        &input[..],
        &mut out,
        Duration::from_secs(3600),
    );
    // The result does not matter: an error only drops the connection. What went out does.
    let _ = RUNTIME.with(|rt| rt.block_on(filter));
    assert_eq!(&out[..24], PREFACE, "the preface is forwarded");
    let mut rest = &out[24..];
    let mut block = Vec::new();
    while !rest.is_empty() {
        assert!(rest.len() >= 9, "a frame header was cut");
        let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        let (kind, flags) = (rest[3], rest[4]);
        assert!(rest.len() >= 9 + len, "a frame payload was cut");
        let payload = &rest[9..9 + len];
        rest = &rest[9 + len..];
        if kind == 0x1 || kind == 0x9 {
            assert!(len <= 16_384, "a written header frame is larger than the default frame size");
            // Written HEADERS carry no padding; the priority fields come first when flagged.
            let start = if kind == 0x1 && flags & 0x20 != 0 { 5 } else { 0 };
            block.extend_from_slice(&payload[start..]);
            if flags & 0x4 != 0 {
                check_rewritten(&block);
                block.clear();
            }
        }
    }
    assert!(block.is_empty(), "a header block was written without END_HEADERS");
}

/// A block the filter wrote: decodable alone, within the list bound, authority valid.
fn check_rewritten(block: &[u8]) {
    let headers = loona_hpack::Decoder::new().decode(block).expect("a rewritten block decodes alone");
    let size: usize = headers.iter().map(|(n, v)| n.len() + v.len() + 32).sum();
    assert!(size <= vouch_agent::h2_authority_filter::MAX_HEADER_LIST, "list of {size} bytes let through");
    for (name, value) in &headers {
        if name == b":authority" {
            let ok = !value.is_empty()
                && value.iter().all(|b| b.is_ascii_alphanumeric() || b"-._~:[]@!$&'()*+,;=".contains(b));
            assert!(ok, "invalid authority {value:?} let through");
        }
    }
}

/// Several header blocks (each prefixed by a 2-byte big-endian length) through `rewrite_block` with
/// one `client_decoder()`, as on one connection: the dynamic table carries over between blocks.
pub fn h2_rewrite_block(data: &[u8]) {
    let mut decoder = vouch_agent::h2_authority_filter::client_decoder();
    let mut rest = data;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let (block, tail) = rest[2..].split_at(len);
        rest = tail;
        match vouch_agent::h2_authority_filter::rewrite_block(&mut decoder, block) {
            Ok(out) => check_rewritten(&out),
            // A connection is dropped at its first bad block.
            Err(_) => return,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// JWT-SVIDs.

/// What validation is asked about: trust domain, audience, and the clock.
const TRUST_DOMAIN: &str = "example.org";
const AUDIENCE: &str = "db";
const NOW: u64 = 1_700_000_000;

struct JwtFixture {
    /// The key behind `k1`; `jwt_signed` signs with it.
    key: vouch_ca::keys::SigningKey,
    keys: BTreeMap<String, vouch_ca::jwt::JwtPublicKey>,
    td: vouch_core::TrustDomain,
}

fn jwt_fixture() -> &'static JwtFixture {
    static FIXTURE: OnceLock<JwtFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        use vouch_ca::keys::{KeyAlg, KeyUse, SigningKey};
        let key = SigningKey::generate(KeyAlg::EcP256, KeyUse::Jws).expect("a P-256 key");
        let p384 = SigningKey::generate(KeyAlg::EcP384, KeyUse::Jws).expect("a P-384 key");
        let mut keys = BTreeMap::new();
        keys.insert(
            "k1".to_owned(),
            vouch_ca::jwt::JwtPublicKey::Ec { crv: "P-256".into(), point: key.public_point().to_vec() },
        );
        keys.insert(
            "k2".to_owned(),
            vouch_ca::jwt::JwtPublicKey::Ec { crv: "P-384".into(), point: p384.public_point().to_vec() },
        );
        // An RSA key as a bundle could publish one (the modulus need not be a real one: no
        // signature by it is ever expected, only the RSA branches of algorithm checks).
        let mut n = vec![0xc3; 256];
        n[255] |= 1;
        keys.insert("r1".to_owned(), vouch_ca::jwt::JwtPublicKey::Rsa { n, e: vec![1, 0, 1] });
        JwtFixture { key, keys, td: vouch_core::TrustDomain::new(TRUST_DOMAIN).expect("a trust domain") }
    })
}

/// Checks what `validate` accepted against what it promises.
fn check_claims(claims: &vouch_core::JwtSvidClaims) {
    assert_eq!(claims.sub.trust_domain().as_str(), TRUST_DOMAIN, "a foreign subject accepted");
    assert!(!claims.sub.is_trust_domain_id(), "the bare trust-domain ID accepted as a subject");
    assert!(claims.exp > NOW as i64, "an expired token accepted");
    assert!(claims.aud.iter().any(|a| a == AUDIENCE), "a token for another audience accepted");
    assert!(jwt_fixture().keys.contains_key(&claims.kid));
}

/// A token as presented by a workload or a relying party: `peek_kid`, then `validate` with a fixed
/// key set; also the validated-claims JSON the server answers and clients read back.
pub fn jwt(data: &[u8]) {
    let f = jwt_fixture();
    if let Some(token) = text(data) {
        let _ = vouch_ca::jwt::peek_kid(token);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(NOW);
        if let Ok(claims) = vouch_ca::jwt::validate(token, &f.keys, &f.td, AUDIENCE, now) {
            // No fuzzer forges a P-256 signature: reaching here is itself a finding.
            panic!("a token not signed by the fixture's keys validated: {claims:?}");
        }
    }
    if let Ok(claims) = serde_json::from_slice::<vouch_core::JwtSvidClaims>(data) {
        let _ = vouch_core::jwt::check_audiences(&claims.aud);
    }
}

/// A SPIFFE bundle (JWKS) as another trust domain's bundle endpoint answers it (SPIFFE federation)
/// or a sync line carries it: parsed, and a parsed bundle that vouch can write again must read back
/// the same (what the federation refresher stores is what it parsed).
pub fn bundle_jwks(data: &[u8]) {
    let Some(json) = text(data) else { return };
    let td = vouch_core::TrustDomain::new("b.org").expect("a valid trust domain");
    let _ = vouch_ca::bundle::jwks_keys(json);
    let Ok(bundle) = vouch_ca::Bundle::from_jwks(td.clone(), json) else { return };
    if let Ok(written) = bundle.to_jwks() {
        let again = vouch_ca::Bundle::from_jwks(td, &written).expect("a written bundle reads back");
        assert_eq!(again, bundle, "a bundle changed in a round trip");
    }
    let _ = bundle.oidc_jwks();
}

/// Header and claims JSON (split at the first newline), signed by the fixture's `k1` key, then
/// validated: reaches the header and claims checks a forged signature never gets past.
pub fn jwt_signed(data: &[u8]) {
    let f = jwt_fixture();
    let (header, claims) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&br#"{"alg":"ES256","kid":"k1","typ":"JWT"}"#[..], data),
    };
    let body = format!("{}.{}", B64.encode(header), B64.encode(claims));
    let sig = f.key.sign(body.as_bytes()).expect("signing");
    let token = format!("{body}.{}", B64.encode(sig));
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(NOW);
    if let Ok(c) = vouch_ca::jwt::validate(&token, &f.keys, &f.td, AUDIENCE, now) {
        check_claims(&c);
        let _ = vouch_core::jwt::check_audiences(&c.aud);
    }
    let _ = vouch_ca::jwt::verify_jws(&token, &f.keys);
}

// ---------------------------------------------------------------------------------------------
// CSRs (agents' and admins' signing requests).

/// A CSR as PEM or DER: parse, check its self-signature, read its key.
pub fn csr(data: &[u8]) {
    let _ = vouch_ca::x509::verify_csr_pem_or_der(data);
    if let Some(t) = text(data) {
        for (_, der) in vouch_ca::pem::decode_all(t) {
            let _ = vouch_ca::x509::verify_csr(&der);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// SPIFFE IDs, selectors, durations.

/// SPIFFE IDs and trust domains: whatever parses prints back to itself and parses again the same.
pub fn spiffe_id(data: &[u8]) {
    use vouch_core::{SpiffeId, TrustDomain};
    let Some(s) = text(data) else { return };
    if let Ok(id) = SpiffeId::parse(s) {
        assert_eq!(SpiffeId::parse(&id.to_string()).as_ref(), Ok(&id), "round trip of {s:?}");
        assert!(id.path().is_empty() || id.path().starts_with('/'));
        assert_eq!(id.is_trust_domain_id(), id.path().is_empty());
        assert_eq!(TrustDomain::new(id.trust_domain().as_str()).as_ref(), Ok(id.trust_domain()));
        let json = serde_json::to_string(&id).expect("serialize");
        assert_eq!(serde_json::from_str::<SpiffeId>(&json).ok().as_ref(), Some(&id));
    }
    if let Ok(td) = TrustDomain::new(s) {
        assert!(td.id().is_trust_domain_id());
        assert_eq!(td.id().trust_domain(), &td);
    }
    // `<trust domain>\n<path>`, as the CLI and join tokens build IDs.
    if let Some((td, path)) = s.split_once('\n') {
        if let Ok(td) = TrustDomain::new(td) {
            if let Ok(id) = td.id_with_path(path) {
                assert_eq!(SpiffeId::parse(id.as_str()).as_ref(), Ok(&id));
            }
        }
    }
    let _ = serde_json::from_str::<SpiffeId>(s);
}

/// Selectors, with SPIRE's spellings: a parsed selector prints back to itself; `canonical` is
/// idempotent (a stored selector canonicalises to itself).
pub fn selector(data: &[u8]) {
    use vouch_core::spire::{canonical, spelling_of};
    use vouch_core::Selector;
    let Some(s) = text(data) else { return };
    let _ = spelling_of(s);
    if let Ok(sel) = Selector::parse(s) {
        assert_eq!(Selector::parse(&sel.to_string()).as_ref(), Ok(&sel), "round trip of {s:?}");
        assert_eq!(Selector::new(sel.kind(), sel.value()).as_ref(), Ok(&sel));
        if let Ok(c) = canonical(sel) {
            assert_eq!(canonical(c.clone()).as_ref(), Ok(&c), "canonical is idempotent");
        }
    }
    let _ = serde_json::from_str::<Selector>(s);
}

/// Durations: whatever parses prints in the compound form, which parses to the same value.
pub fn duration(data: &[u8]) {
    use vouch_core::duration::{parse, Compound};
    let Some(s) = text(data) else { return };
    if let Ok(d) = parse(s) {
        let printed = Compound(d).to_string();
        assert_eq!(parse(&printed), Ok(d), "{s:?} printed as {printed:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// The agent's workload attestation: /proc, cgroups, kubelet and container runtime answers.

/// `/proc/<pid>/cgroup` text, and each of its paths alone.
pub fn cgroup(data: &[u8]) {
    use vouch_agent::attest::cgroup::{container_from_cgroup_file, container_from_path};
    let Some(s) = text(data) else { return };
    let from_file = container_from_cgroup_file(s);
    for line in s.lines() {
        if let Some(c) = container_from_path(line) {
            assert!(!c.id.is_empty(), "an empty container id from {line:?}");
        }
    }
    if let Ok(Some(c)) = from_file {
        assert!(!c.id.is_empty());
    }
}

/// `/proc/<pid>/status`, `/proc/<pid>/stat`, `/etc/passwd`, fdinfo text.
pub fn procfs(data: &[u8]) {
    use vouch_agent::attest::procfs::{parse_fdinfo_pid, parse_id_names, parse_start_time, parse_status};
    let Some(s) = text(data) else { return };
    let _ = parse_status(s);
    let _ = parse_start_time(s);
    let _ = parse_id_names(s);
    let _ = parse_fdinfo_pid(s);
}

/// A kubelet `GET /pods` answer after two lines naming the pod UID and container id looked for
/// (they come from the caller's cgroup).
pub fn kubelet(data: &[u8]) {
    let mut parts = data.splitn(3, |&b| b == b'\n');
    let (Some(uid), Some(cid), Some(body)) = (parts.next(), parts.next(), parts.next()) else { return };
    let (Some(uid), Some(cid)) = (text(uid), text(cid)) else { return };
    let Ok(list) = vouch_agent::attest::kubelet::parse_pod_list("http://127.0.0.1:10255", body) else {
        return;
    };
    if let Ok(selectors) = vouch_agent::attest::k8s::k8s_selectors(&list, uid, cid) {
        assert!(selectors.iter().all(|s| s.kind() == "k8s"));
    }
}

/// A Docker or podman `containers/<id>/json` answer.
pub fn runtime(data: &[u8]) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    for kind in ["docker", "podman"] {
        let selectors = vouch_agent::attest::runtime::docker_selectors(kind, &v);
        assert!(selectors.iter().all(|s| s.kind() == kind || s.kind() == "container"));
    }
}

// ---------------------------------------------------------------------------------------------
// The scanner: tar, OCI layouts and docker-save archives, gzip and zstd layers.

/// Bounds that keep a decompression bomb from spending the fuzzer's time (production allows more).
fn fuzz_limits() -> vouch_scan::stream::Limits {
    vouch_scan::stream::Limits { max_layer_bytes: 8 << 20, max_ratio: 250, ratio_floor: 1 << 20 }
}

fn rules() -> &'static vouch_scan::RuleSet {
    static RULES: OnceLock<vouch_scan::RuleSet> = OnceLock::new();
    RULES.get_or_init(|| vouch_scan::RuleSet::default_rules().expect("the default rules"))
}

thread_local! {
    /// Where inputs are written for the scanner, which reads files: one directory per thread.
    static SCRATCH: tempfile::TempDir = tempfile::tempdir().expect("a scratch directory");
}

/// One layer blob (plain, gzip or zstd tar) through `scan_layer`, then the presence of every path
/// it found.
pub fn scan_layer(data: &[u8]) {
    use vouch_scan::image::{presence, scan_layer, Blobs};
    SCRATCH.with(|dir| {
        let path = dir.path().join("layer");
        std::fs::File::create(&path).and_then(|mut f| f.write_all(data)).expect("write the input");
        let blobs = Blobs::Dir(dir.path().to_owned());
        let progress = vouch_scan::stream::Progress::default();
        let scan = scan_layer(&blobs, "layer", rules(), fuzz_limits(), &progress);
        for (path, _) in &scan.found {
            let _ = presence(&[&scan, &scan], 0, path);
        }
    });
}

/// One file as `vouch scan` reads it: a plain or compressed tar, an OCI archive, a `docker save`
/// archive (current or legacy), or text.
pub fn scan_image(data: &[u8]) {
    thread_local! {
        // One scanner: compiling the rules for every input would dominate the run.
        static SCANNER: vouch_scan::Scanner = vouch_scan::Scanner::new(
            vouch_scan::RuleSet::default_rules().expect("the default rules"),
            vouch_scan::ScanOptions { threads: 1, limits: fuzz_limits(), ..Default::default() },
        );
    }
    SCRATCH.with(|dir| {
        let path = dir.path().join("image.tar");
        std::fs::File::create(&path).and_then(|mut f| f.write_all(data)).expect("write the input");
        let progress = vouch_scan::stream::Progress::default();
        let _ = SCANNER.with(|s| s.scan(&[vouch_scan::Input::Path(path)], &progress));
    });
}
