//! Integration tests of vouch-ca: SVIDs checked by independent verifiers (openssl, webpki,
//! x509-parser), rotation under a test clock, sealing at rest. One test binary for the crate.

// A test fails by panicking: unwrap and expect are how it says what broke. End-to-end tests run
// real processes on the wall clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::{CertificateDer, UnixTime};
use vouch_ca::authority::{Authority, AuthorityConfig};
use vouch_ca::{pem, verify_csr, Bundle, Ca, CsrPublicKey, Kek, KeyAlg, KeyUse, SigningKey};
use vouch_core::{DnsName, SpiffeId, TrustDomain};
use x509_parser::prelude::*;

fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// A realistic start time, so certificates carry sensible dates for openssl.
fn start() -> SystemTime {
    t(1_800_000_000)
}

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

fn id(path: &str) -> SpiffeId {
    td().id_with_path(path).unwrap()
}

/// A CSR made by rcgen with a fresh key (the requested subject/SANs are ignored by vouch).
fn csr(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
    let kp = rcgen::KeyPair::generate_for(alg).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["ignored.example".to_string()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.serialize_request(&kp).unwrap().der().to_vec()
}

fn p256_key() -> CsrPublicKey {
    verify_csr(&csr(&rcgen::PKCS_ECDSA_P256_SHA256)).unwrap()
}

fn authority(now: SystemTime) -> Authority {
    let mut a = Authority::new(AuthorityConfig::new(td()), None);
    assert!(a.tick(now).unwrap());
    a
}

fn webpki_verify(
    bundle: &Bundle,
    leaf: &[u8],
    intermediates: &[Vec<u8>],
    now: SystemTime,
) -> Result<(), String> {
    let anchors_der: Vec<CertificateDer> =
        bundle.x509_authorities.iter().map(|d| CertificateDer::from(d.as_slice())).collect();
    let anchors: Vec<_> = anchors_der.iter().map(|d| webpki::anchor_from_trusted_cert(d).unwrap()).collect();
    let inter: Vec<CertificateDer> =
        intermediates.iter().map(|d| CertificateDer::from(d.as_slice())).collect();
    let leaf = CertificateDer::from(leaf);
    let ee = webpki::EndEntityCert::try_from(&leaf).map_err(|e| e.to_string())?;
    let time = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap());
    for usage in [webpki::KeyUsage::client_auth(), webpki::KeyUsage::server_auth()] {
        ee.verify_for_usage(webpki::ALL_VERIFICATION_ALGS, &anchors, &inter, time, usage, None, None)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[test]
fn x509_svid_follows_every_rule_of_the_standard() {
    let now = start();
    let a = authority(now);
    let dns = [DnsName::new("web.example.org").unwrap()];
    let issued = a.mint_x509(&id("/web"), &dns, &p256_key(), Duration::from_secs(3600), now).unwrap();
    let (_, cert) = X509Certificate::from_der(&issued.svid.cert_der).unwrap();

    let sans = cert.subject_alternative_name().unwrap().unwrap().value;
    let uris: Vec<_> = sans.general_names.iter().filter(|n| matches!(n, GeneralName::URI(_))).collect();
    assert_eq!(uris.len(), 1, "exactly one URI SAN");
    assert!(matches!(uris[0], GeneralName::URI("spiffe://example.org/web")));
    assert!(sans.general_names.iter().any(|n| matches!(n, GeneralName::DNSName("web.example.org"))));
    assert!(
        !sans.general_names.iter().any(|n| matches!(n, GeneralName::DNSName("ignored.example"))),
        "CSR SANs ignored"
    );

    let bc = cert.basic_constraints().unwrap().expect("basicConstraints present");
    assert!(!bc.value.ca, "leaf cA=false even though the CSR asked for a CA");
    let ku = cert.key_usage().unwrap().expect("key usage present");
    assert!(ku.critical, "key usage is critical");
    assert!(ku.value.digital_signature());
    assert!(!ku.value.key_cert_sign() && !ku.value.crl_sign());
    let eku = cert.extended_key_usage().unwrap().expect("EKU present").value;
    assert!(eku.server_auth && eku.client_auth);

    let nb = cert.validity().not_before.timestamp();
    let na = cert.validity().not_after.timestamp();
    let now_s = now.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!(nb < now_s && nb >= now_s - 60, "NotBefore slightly back-dated");
    assert_eq!(na, now_s + 3600);
    assert!(!issued.svid.capped);

    // Signing CA rules.
    let (_, ca) = X509Certificate::from_der(&issued.intermediates[0]).unwrap();
    assert!(ca.basic_constraints().unwrap().unwrap().value.ca);
    assert!(ca.key_usage().unwrap().unwrap().value.key_cert_sign());
    webpki_verify(&a.bundle(), &issued.svid.cert_der, &issued.intermediates, now).unwrap();
}

#[test]
fn openssl_verifies_svids_against_the_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let a = authority(now);
    // A CSR made by openssl itself, so the request side is independent too.
    let key = dir.path().join("key.pem");
    let csr_path = dir.path().join("csr.der");
    let st = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=whatever",
        ])
        .args([
            "-keyout".as_ref(),
            key.as_os_str(),
            "-outform".as_ref(),
            "DER".as_ref(),
            "-out".as_ref(),
            csr_path.as_os_str(),
        ])
        .output()
        .expect("openssl is installed");
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let pk = verify_csr(&std::fs::read(&csr_path).unwrap()).unwrap();
    let issued = a.mint_x509(&id("/payments"), &[], &pk, Duration::from_secs(600), now).unwrap();
    std::fs::write(dir.path().join("leaf.pem"), pem::encode("CERTIFICATE", &issued.svid.cert_der)).unwrap();
    std::fs::write(dir.path().join("chain.pem"), pem::encode("CERTIFICATE", &issued.intermediates[0]))
        .unwrap();
    std::fs::write(dir.path().join("bundle.pem"), a.bundle().x509_pem()).unwrap();
    let verify = |bundle: &str| {
        Command::new("openssl")
            .current_dir(dir.path())
            .args([
                "verify",
                "-CAfile",
                bundle,
                "-untrusted",
                "chain.pem",
                "-purpose",
                "sslclient",
                "leaf.pem",
            ])
            .output()
            .unwrap()
    };
    let out = verify("bundle.pem");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The certificate and the openssl key belong together.
    let m1 = Command::new("openssl")
        .current_dir(dir.path())
        .args(["x509", "-in", "leaf.pem", "-noout", "-pubkey"])
        .output()
        .unwrap();
    let m2 = Command::new("openssl")
        .current_dir(dir.path())
        .args(["pkey", "-in", "key.pem", "-pubout"])
        .output()
        .unwrap();
    assert_eq!(m1.stdout, m2.stdout);
    let text = Command::new("openssl")
        .current_dir(dir.path())
        .args(["x509", "-in", "leaf.pem", "-noout", "-text"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("URI:spiffe://example.org/payments"), "{text}");
    assert!(text.contains("X509v3 Key Usage: critical"), "{text}");
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(text.contains("TLS Web Server Authentication, TLS Web Client Authentication"), "{text}");

    // After the signing CA and JWT key rotate (21 h later, past five sixths of the 24 h CA life), a new
    // SVID chains through the new signing CA, and openssl accepts both the old and the new one with
    // the bundle of that moment.
    let mut a = a;
    let later = now + Duration::from_secs(21 * 3600);
    a.tick(now + Duration::from_secs(13 * 3600)).unwrap();
    a.tick(later).unwrap();
    let rotated = a.mint_x509(&id("/payments"), &[], &pk, Duration::from_secs(600), later).unwrap();
    assert_ne!(rotated.intermediates, issued.intermediates, "the signing CA rotated");
    std::fs::write(dir.path().join("leaf2.pem"), pem::encode("CERTIFICATE", &rotated.svid.cert_der)).unwrap();
    std::fs::write(dir.path().join("chain2.pem"), pem::encode("CERTIFICATE", &rotated.intermediates[0]))
        .unwrap();
    std::fs::write(dir.path().join("bundle2.pem"), a.bundle().x509_pem()).unwrap();
    let at = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs().to_string();
    let verify_at = |leaf: &str, chain: &str, t: SystemTime| {
        Command::new("openssl")
            .current_dir(dir.path())
            .args(["verify", "-attime", &at(t), "-CAfile", "bundle2.pem", "-untrusted", chain, leaf])
            .output()
            .unwrap()
    };
    let out = verify_at("leaf2.pem", "chain2.pem", later + Duration::from_secs(60));
    assert!(out.status.success(), "rotated CA: {}", String::from_utf8_lossy(&out.stderr));
    let out = verify_at("leaf.pem", "chain.pem", now + Duration::from_secs(60));
    assert!(out.status.success(), "old SVID with the new bundle: {}", String::from_utf8_lossy(&out.stderr));

    // Another trust domain's bundle does not verify it.
    let other = Authority::new(AuthorityConfig::new(TrustDomain::new("other.org").unwrap()), None);
    let mut other = other;
    other.tick(now).unwrap();
    std::fs::write(dir.path().join("other.pem"), other.bundle().x509_pem()).unwrap();
    assert!(!verify("other.pem").status.success());
}

#[test]
fn csr_key_types_and_bad_csrs() {
    for alg in [&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519] {
        assert!(verify_csr(&csr(alg)).is_ok());
    }
    let good = csr(&rcgen::PKCS_ECDSA_P256_SHA256);
    let mut tampered = good.clone();
    let n = tampered.len();
    tampered[n - 5] ^= 0x55;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![], "not a DER"),
        (b"hello".to_vec(), "not a DER"),
        (good[..good.len() / 2].to_vec(), "not a DER"),
        (tampered, "signature does not verify"),
        ([good.clone(), vec![0]].concat(), "trailing bytes"),
        (vec![0u8; 20_000], "larger than"),
    ];
    for (input, want) in cases {
        let err = verify_csr(&input).unwrap_err().to_string();
        assert!(err.contains(want), "{err:?} should contain {want:?}");
    }
    let pem_text = pem::encode("CERTIFICATE REQUEST", &good);
    assert!(vouch_ca::verify_csr_pem_or_der(pem_text.as_bytes()).is_ok());
    assert!(vouch_ca::verify_csr_pem_or_der(b"-----BEGIN NOTHING-----\n-----END NOTHING-----\n").is_err());
}

#[test]
fn lifetime_cap_is_reported() {
    let now = start();
    let a = authority(now);
    // The signing CA lives 24 h; ask for far more than is left late in its life.
    let late = now + Duration::from_secs(23 * 3600);
    let issued = a.mint_x509(&id("/web"), &[], &p256_key(), Duration::from_secs(7200), late).unwrap();
    assert!(issued.svid.capped);
    assert_eq!(issued.svid.not_after, now + Duration::from_secs(24 * 3600));
    let jwt = a.mint_jwt(&id("/web"), &["db".into()], Duration::from_secs(7200), late).unwrap();
    assert!(jwt.capped);
}

#[test]
fn refuses_other_trust_domains_and_bare_domain_ids() {
    let a = authority(start());
    let foreign = SpiffeId::parse("spiffe://other.org/web").unwrap();
    assert!(a
        .mint_x509(&foreign, &[], &p256_key(), Duration::from_secs(60), start())
        .unwrap_err()
        .to_string()
        .contains("not in trust domain"));
    assert!(a.mint_jwt(&foreign, &["a".into()], Duration::from_secs(60), start()).is_err());
    assert!(a.mint_x509(&td().id(), &[], &p256_key(), Duration::from_secs(60), start()).is_err());
    assert!(a.mint_jwt(&td().id(), &["a".into()], Duration::from_secs(60), start()).is_err());
}

/// With a test clock stepping through several rotations of every key, at no moment does a freshly
/// minted SVID fail validation with the bundle of that moment, and every SVID minted earlier keeps
/// validating with the current bundle until it expires.
#[test]
fn rotation_never_breaks_validation() {
    let mut config = AuthorityConfig::new(td());
    config.root_ttl = Duration::from_secs(12 * 3600);
    config.ca_ttl = Duration::from_secs(2 * 3600);
    config.jwt_key_ttl = Duration::from_secs(2 * 3600);
    let svid_ttl = Duration::from_secs(20 * 60);
    let mut a = Authority::new(config, None);
    let mut now = start();
    let mut live_x509: Vec<(Vec<u8>, Vec<Vec<u8>>, SystemTime)> = Vec::new();
    let mut live_jwt: Vec<(String, i64)> = Vec::new();
    let mut sequences = Vec::new();
    let mut root_ids = std::collections::BTreeSet::new();
    let mut jwt_kids = std::collections::BTreeSet::new();
    let key = p256_key();
    for _step in 0..(3 * 12 * 6) {
        a.tick(now).unwrap();
        // Validators see only the published bundle, round-tripped through its JWKS form.
        let bundle = Bundle::from_jwks(td(), &a.bundle().to_jwks().unwrap()).unwrap();
        sequences.push(bundle.sequence);
        let issued = a.mint_x509(&id("/web"), &[], &key, svid_ttl, now).unwrap();
        assert!(!issued.svid.capped, "with CA life >= 6x SVID life no SVID is ever cut short");
        live_x509.push((issued.svid.cert_der, issued.intermediates, issued.svid.not_after));
        let jwt = a.mint_jwt(&id("/web"), &["db".into()], Duration::from_secs(300), now).unwrap();
        live_jwt.push((jwt.token, jwt.expires_at));
        live_x509.retain(|(_, _, na)| *na > now);
        live_jwt.retain(|(_, exp)| *exp > vouch_core::ttl::unix_seconds(now));
        for (leaf, chain, _) in &live_x509 {
            webpki_verify(&bundle, leaf, chain, now).unwrap_or_else(|e| panic!("at {now:?}: {e}"));
        }
        for (token, _) in &live_jwt {
            vouch_ca::jwt::validate(token, &bundle.jwt_authorities, &td(), "db", now).unwrap();
        }
        for k in a.keys() {
            match k.kind {
                "root" => root_ids.insert(k.id),
                "jwt" => jwt_kids.insert(k.id),
                _ => false,
            };
        }
        now += Duration::from_secs(600);
    }
    assert!(root_ids.len() >= 4, "roots rotated: {root_ids:?}");
    assert!(jwt_kids.len() >= 15, "JWT keys rotated: {}", jwt_kids.len());
    assert!(sequences.windows(2).all(|w| w[0] <= w[1]), "sequence never decreases");
    assert!(sequences.last().unwrap() > &20);
}

#[test]
fn state_survives_export_and_import_with_keys_sealed() {
    let now = start();
    let a = authority(now);
    let (kek, _) = Kek::generate().unwrap();
    let state = a.export(&kek).unwrap();
    let json = serde_json::to_string(&state).unwrap();
    // No private key appears in the persisted form: check each key's PKCS#8 bytes are absent.
    for rec in &state.keys {
        let sealed = base64_decode(&rec.sealed_key);
        let pkcs8 = kek.open(&rec.id, &sealed).unwrap();
        assert!(!json.contains(&base64_encode(&pkcs8)));
        assert!(!json.as_bytes().windows(pkcs8.len()).any(|w| w == pkcs8.as_slice()));
    }
    let b = Authority::import(AuthorityConfig::new(td()), serde_json::from_str(&json).unwrap(), &kek, None)
        .unwrap();
    assert_eq!(a.bundle(), b.bundle());
    // The imported authority signs with the same keys: its SVIDs verify with the old bundle.
    let issued = b.mint_x509(&id("/web"), &[], &p256_key(), Duration::from_secs(60), now).unwrap();
    webpki_verify(&a.bundle(), &issued.svid.cert_der, &issued.intermediates, now).unwrap();
    let jwt = b.mint_jwt(&id("/web"), &["x".into()], Duration::from_secs(60), now).unwrap();
    assert!(a.validate_jwt(&jwt.token, "x", now).is_ok());

    let (wrong, _) = Kek::generate().unwrap();
    let err = Authority::import(AuthorityConfig::new(td()), state.clone(), &wrong, None).unwrap_err();
    assert!(err.to_string().contains("wrong key-encryption key"), "{err}");
    let other_td = AuthorityConfig::new(TrustDomain::new("other.org").unwrap());
    assert!(Authority::import(other_td, state, &kek, None)
        .unwrap_err()
        .to_string()
        .contains("belong to trust domain"));
}

#[test]
fn upstream_root_signs_intermediates_and_is_not_exported() {
    let now = start();
    let root_key = SigningKey::generate(KeyAlg::EcP256, KeyUse::X509).unwrap();
    let root =
        Ca::self_signed_root(&td(), root_key, "up", now, now + Duration::from_secs(90 * 86400)).unwrap();
    let root_der = root.der().to_vec();
    let mut a = Authority::new(AuthorityConfig::new(td()), Some(root));
    a.tick(now).unwrap();
    assert_eq!(a.bundle().x509_authorities, vec![root_der]);
    let issued = a.mint_x509(&id("/w"), &[], &p256_key(), Duration::from_secs(60), now).unwrap();
    webpki_verify(&a.bundle(), &issued.svid.cert_der, &issued.intermediates, now).unwrap();
    let (kek, _) = Kek::generate().unwrap();
    assert!(a.export(&kek).unwrap().keys.iter().all(|k| k.kind != vouch_ca::authority::RecordKind::Root));
    // A key that does not belong to a certificate is refused.
    let wrong = SigningKey::generate(KeyAlg::EcP256, KeyUse::X509).unwrap();
    assert!(Ca::from_parts(issued.intermediates[0].clone(), wrong)
        .unwrap_err()
        .to_string()
        .contains("does not belong"));
    let leaf_key = SigningKey::generate(KeyAlg::EcP256, KeyUse::X509).unwrap();
    assert!(Ca::from_parts(issued.svid.cert_der.clone(), leaf_key)
        .unwrap_err()
        .to_string()
        .contains("not a CA"));
}

#[test]
fn bundle_jwks_format() {
    let a = authority(start());
    let text = a.bundle().to_jwks().unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["spiffe_sequence"], 1);
    assert_eq!(v["spiffe_refresh_hint"], 300);
    let keys = v["keys"].as_array().unwrap();
    let x509: Vec<_> = keys.iter().filter(|k| k["use"] == "x509-svid").collect();
    let jwt: Vec<_> = keys.iter().filter(|k| k["use"] == "jwt-svid").collect();
    assert_eq!((x509.len(), jwt.len()), (1, 1));
    assert_eq!(x509[0]["kty"], "EC");
    assert_eq!(x509[0]["crv"], "P-256");
    assert_eq!(x509[0]["x5c"].as_array().unwrap().len(), 1);
    assert!(jwt[0]["kid"].as_str().unwrap().len() >= 16);
    assert_eq!(Bundle::from_jwks(td(), &text).unwrap(), a.bundle());

    let bad = [
        ("{", "not a JWKS"),
        (r#"{"keys":[{"use":"x509-svid"}]}"#, "exactly one `x5c`"),
        (r#"{"keys":[{"use":"x509-svid","x5c":["AAAA"]}]}"#, "invalid certificate"),
        (r#"{"keys":[{"use":"jwt-svid","kty":"EC","crv":"P-256","x":"AA","y":"AA"}]}"#, "`kid`"),
        (
            r#"{"keys":[{"use":"jwt-svid","kid":"a","kty":"EC","crv":"P-256","x":"AA","y":"AA"}]}"#,
            "wrong length",
        ),
        (r#"{"keys":[{"use":"jwt-svid","kid":"a","kty":"oct","k":"AA"}]}"#, "unsupported key type"),
    ];
    for (doc, want) in bad {
        let err = Bundle::from_jwks(td(), doc).unwrap_err().to_string();
        assert!(err.contains(want), "{doc}: {err}");
    }
    // Unknown uses are skipped, as the standard asks.
    let b = Bundle::from_jwks(td(), r#"{"keys":[{"use":"future-svid","kty":"X"}]}"#).unwrap();
    assert!(b.x509_authorities.is_empty() && b.jwt_authorities.is_empty());
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[test]
fn generated_workload_keys_sign_valid_svids() {
    let a = authority(start());
    let wk = vouch_ca::WorkloadKey::generate().unwrap();
    let issued = a.mint_x509(&id("/legacy"), &[], &wk.public, Duration::from_secs(60), start()).unwrap();
    let info = vouch_ca::x509::cert_info(&issued.svid.cert_der).unwrap();
    // The certificate carries the generated key's public half.
    let kp = rcgen::KeyPair::from_pem(&wk.pkcs8_pem()).unwrap();
    assert_eq!(info.public_key, kp.public_key_raw());
    assert!(wk.pkcs8_pem().starts_with("-----BEGIN PRIVATE KEY-----"));
}

#[test]
fn workload_key_csrs_verify_and_keys_reload() {
    let wk = vouch_ca::WorkloadKey::generate().unwrap();
    let public = verify_csr(&wk.csr_der().unwrap()).unwrap();
    let a = authority(start());
    let issued = a.mint_x509(&id("/w"), &[], &public, Duration::from_secs(60), start()).unwrap();
    let again = vouch_ca::WorkloadKey::from_pkcs8_pem(&wk.pkcs8_pem()).unwrap();
    let info = vouch_ca::x509::cert_info(&issued.svid.cert_der).unwrap();
    let kp = rcgen::KeyPair::from_pem(&again.pkcs8_pem()).unwrap();
    assert_eq!(info.public_key, kp.public_key_raw());
    assert!(vouch_ca::verify_csr_pem_or_der(wk.csr_pem().unwrap().as_bytes()).is_ok());
}

/// The OIDC JWKS (what relying parties such as OpenBao fetch): the JWT keys only, public members
/// only, each with `use` = `sig` and its `alg`; a key is in it from when it is prepared (before it
/// signs anything) until after the last token it signed has expired.
#[test]
fn oidc_jwks_publishes_keys_before_they_sign_and_until_their_tokens_expire() {
    let mut config = AuthorityConfig::new(td());
    config.jwt_key_ttl = Duration::from_secs(3600);
    let mut a = Authority::new(config, None);
    let mut now = start();
    // kid -> the step at which it was first published.
    let mut first_seen: std::collections::BTreeMap<String, usize> = Default::default();
    let mut live: Vec<(String, String, i64)> = Vec::new();
    let mut signers = std::collections::BTreeSet::new();
    for step in 0..(4 * 60) {
        a.tick(now).unwrap();
        let text = a.bundle().oidc_jwks().unwrap();
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        for k in doc["keys"].as_array().unwrap() {
            assert_eq!(
                (k["use"].as_str(), k["alg"].as_str(), k["kty"].as_str()),
                (Some("sig"), Some("ES256"), Some("EC"))
            );
            assert!(k.get("d").is_none() && k.get("x5c").is_none(), "public JWT keys only: {k}");
            first_seen.entry(k["kid"].as_str().unwrap().to_owned()).or_insert(step);
        }
        assert!(doc.get("spiffe_sequence").is_none(), "a plain JWKS");
        let keys = vouch_ca::bundle::jwks_keys(&text).unwrap();
        let jwt = a.mint_jwt(&id("/web"), &["db".into()], Duration::from_secs(600), now).unwrap();
        let header = vouch_ca::jwt::validate(&jwt.token, &keys, &td(), "db", now).unwrap();
        // Every key but the very first was published at least one step (a minute) before it signed.
        if signers.insert(header.kid.clone()) && signers.len() > 1 {
            assert!(
                first_seen[&header.kid] < step,
                "key {} signed at step {step} when first published",
                header.kid
            );
        }
        live.push((jwt.token, header.kid, jwt.expires_at));
        live.retain(|(_, _, exp)| *exp > vouch_core::ttl::unix_seconds(now));
        for (token, kid, _) in &live {
            assert!(keys.contains_key(kid), "key {kid} left the JWKS before its token expired");
            vouch_ca::jwt::validate(token, &keys, &td(), "db", now).unwrap();
        }
        now += Duration::from_secs(60);
    }
    assert!(signers.len() >= 4, "JWT keys rotated: {signers:?}");
    // Expired keys leave: never more than the active, the prepared and the retired one.
    let text = a.bundle().oidc_jwks().unwrap();
    assert!(vouch_ca::bundle::jwks_keys(&text).unwrap().len() <= 3);
}

/// With `jwt_key_alg` RSA-2048, JWT-SVIDs are RS256 (for relying parties that take only RSA): the
/// token's header says so, the OIDC JWKS publishes the RSA key (`kty` RSA, `alg` RS256, `n` of 2048
/// bits, no private member) and validates the token, CAs stay ECDSA, and the sealed key survives
/// export and import.
#[test]
fn rs256_jwt_keys_sign_validate_and_survive_sealing() {
    use base64::Engine as _;
    let now = start();
    let mut config = AuthorityConfig::new(td());
    config.jwt_key_alg = Some(KeyAlg::Rsa2048);
    let mut a = Authority::new(config.clone(), None);
    a.tick(now).unwrap();
    let jwt = a.mint_jwt(&id("/web"), &["bao".into()], Duration::from_secs(60), now).unwrap();
    let header = jwt.token.split('.').next().unwrap();
    let header: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).unwrap())
            .unwrap();
    assert_eq!(header["alg"], "RS256");
    let text = a.bundle().oidc_jwks().unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let key = &doc["keys"][0];
    assert_eq!((key["kty"].as_str(), key["alg"].as_str()), (Some("RSA"), Some("RS256")));
    assert_eq!(key["e"], "AQAB");
    assert!(key.get("d").is_none() && key.get("p").is_none(), "public members only: {key}");
    let n = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(key["n"].as_str().unwrap()).unwrap();
    assert_eq!(n.len(), 256, "RSA-2048");
    let keys = vouch_ca::bundle::jwks_keys(&text).unwrap();
    vouch_ca::jwt::validate(&jwt.token, &keys, &td(), "bao", now).unwrap();
    // The X.509 side is unchanged: ECDSA CAs, SVIDs that webpki verifies.
    let issued = a.mint_x509(&id("/web"), &[], &p256_key(), Duration::from_secs(60), now).unwrap();
    webpki_verify(&a.bundle(), &issued.svid.cert_der, &issued.intermediates, now).unwrap();
    // Sealed and reopened, the RSA key signs tokens the old bundle validates.
    let (kek, _) = Kek::generate().unwrap();
    let b = Authority::import(config, a.export(&kek).unwrap(), &kek, None).unwrap();
    let again = b.mint_jwt(&id("/web"), &["bao".into()], Duration::from_secs(60), now).unwrap();
    assert!(a.validate_jwt(&again.token, "bao", now).is_ok());
}

/// A root prepared ahead of schedule is published at once (the sequence grows), is not prepared
/// twice, takes over at the usual point of the active root's life, and SVIDs minted before and
/// after keep validating with the bundle.
#[test]
fn a_root_prepared_ahead_of_schedule_is_published_at_once_and_takes_over_on_schedule() {
    let mut config = AuthorityConfig::new(td());
    config.root_ttl = Duration::from_secs(12 * 3600);
    config.ca_ttl = Duration::from_secs(2 * 3600);
    let mut a = Authority::new(config, None);
    let now = start();
    a.tick(now).unwrap();
    let (before, sequence) = (a.bundle().x509_authorities, a.sequence());
    assert!(a.prepare_root(now).unwrap());
    assert_eq!((a.bundle().x509_authorities.len(), a.sequence()), (2, sequence + 1));
    assert!(a.bundle().x509_authorities.contains(&before[0]), "the active root stays published");
    assert!(!a.prepare_root(now).unwrap(), "one successor at a time");
    let svid = a.mint_x509(&id("/web"), &[], &p256_key(), Duration::from_secs(600), now).unwrap();
    assert_eq!(svid.intermediates.len(), 1);
    // Nothing changes before the active root's five sixths; at them the prepared root takes over.
    let later = now + Duration::from_secs(9 * 3600);
    a.tick(later).unwrap();
    let active_roots: Vec<_> =
        a.keys().into_iter().filter(|k| k.kind == "root" && k.state == vouch_ca::KeyState::Active).collect();
    assert_eq!(active_roots.len(), 1);
    let after = now + Duration::from_secs(10 * 3600 + 60);
    a.tick(after).unwrap();
    let new_active: Vec<_> =
        a.keys().into_iter().filter(|k| k.kind == "root" && k.state == vouch_ca::KeyState::Active).collect();
    assert_ne!(new_active[0].id, active_roots[0].id, "the prepared root took over");
}
