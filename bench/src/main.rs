//! vouch benchmarks. Run them with `bench/run` (which builds in release mode and starts OpenBao);
//! each prints absolute figures and the ratio against its reference measured in the same run.
//!
//! Subcommands:
//! - `issuance`: X509-SVID issuance from CSRs in process vs the raw limit of the crypto library
//!   (one ECDSA P-256 verify of the CSR + one sign per SVID), and JWT-SVID mint/validate rates.
//! - `api --vouch BIN [--bao-addr URL --bao-token T]`: X509-SVID issuance over HTTP with a fresh
//!   P-256 key per certificate, 8 concurrent clients, against OpenBao's `pki/issue`.
//! - `audit --vouch BIN [--seconds N]`: X509-SVID issuance over the admin socket with the audit log
//!   off against on, as a ratio; the log must verify afterwards.
//! - `agent --vouch BIN`: Workload API latency, entry propagation and agent memory per SVID.
//! - `flood --vouch BIN`: a legitimate agent's signing p99 during a flood of 10,000 bogus node
//!   attestations against the same without the flood, as a ratio.
//! - `exchange --vouch BIN --bao-addr URL [--count N]`: RFC 8693 token exchanges per second
//!   against OpenBao's JWT login, fresh ES256 tokens of one issuer for both, as a ratio.
//! - `secrets --vouch BIN [--bao-addr URL ...]`: secret reads per second over the admin API and
//!   through a real agent's secret socket against OpenBao's KV v2 reads, same value, as ratios.
//! - `dbcreds --vouch BIN [--bao-addr URL ...]`: PostgreSQL credentials per second from
//!   `POST /v1/db/creds` against OpenBao's database secrets engine on the same PostgreSQL.
//! - `policy [--vouch BIN --bao-addr URL]`: one grant decision in process (10,000 workloads, 1,000
//!   Cedar policies) against Cedar alone, and decisions per second over `POST /v1/authorize`
//!   against OpenBao's `sys/capabilities`.
//! - `scale --vouch BIN --entries N --agents M [--store sqlite|postgres|both]`: the cost curve of
//!   one server with N entries and M agents simulated over the real sync protocol (run by
//!   `bench/run scale`); `scale-agents` is its agent processes.

// A benchmark is a measuring tool, not a service: it stops loudly on the first surprise, and reads the
// wall clock to put issuance at the present.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

mod agent;
mod api;
mod audit;
mod dbcreds;
mod exchange;
mod flood;
mod policy;
mod procstat;
mod scale;
mod scale_agents;
mod secrets;

// The same allocator as the `vouch` binary, so the load generator takes as little CPU as it can from
// the servers it measures (vouch and OpenBao alike).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("issuance") => issuance(),
        Some("api") => api::run(&args[1..]),
        Some("audit") => audit::run(&args[1..]),
        Some("agent") => agent::run(&args[1..]),
        Some("flood") => flood::run(&args[1..]),
        Some("exchange") => exchange::run_exchange(&args[1..]),
        Some("secrets") => secrets::run(&args[1..]),
        Some("dbcreds") => dbcreds::run(&args[1..]),
        Some("scale") => scale::run(&args[1..]),
        Some("policy") => policy::run(&args[1..]),
        Some("scale-agents") => scale_agents::run(&args[1..]),
        _ => bail!(
            "usage: vouch-bench issuance | audit --vouch BIN [--seconds N] | api --vouch BIN [--bao-addr URL --bao-token TOKEN] [--seconds N] | agent --vouch BIN | flood --vouch BIN | exchange --vouch BIN --bao-addr URL [--count N] | secrets --vouch BIN [--bao-addr URL] | dbcreds --vouch BIN [--bao-addr URL] | policy [--vouch BIN --bao-addr URL] | scale --vouch BIN [--entries N --agents M --store sqlite|postgres|both]"
        ),
    }
}

/// Runs `f` repeatedly for about `budget` and returns operations per second.
fn rate(budget: Duration, mut f: impl FnMut()) -> f64 {
    // Warm up.
    for _ in 0..50 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..50 {
            f();
        }
        n += 50;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn issuance() -> Result<()> {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{self, EcdsaKeyPair, UnparsedPublicKey};
    use x509_parser::prelude::FromDer;

    let budget = Duration::from_secs(3);
    let now = std::time::SystemTime::now();
    let td = vouch_core::TrustDomain::new("example.org")?;
    let id = td.id_with_path("/bench/web")?;
    let mut authority = vouch_ca::Authority::new(vouch_ca::AuthorityConfig::new(td.clone()), None);
    authority.tick(now)?;

    // A pool of real CSRs from distinct P-256 keys.
    let csrs: Vec<Vec<u8>> = (0..64)
        .map(|_| {
            let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
            rcgen::CertificateParams::default().serialize_request(&kp).expect("csr").der().to_vec()
        })
        .collect();

    // The raw limit: per CSR, one ECDSA P-256 signature verification (over the CSR's signed bytes)
    // and one ECDSA P-256 signature (over a certificate-sized message), nothing else.
    let parsed: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> = csrs
        .iter()
        .map(|der| {
            let (_, csr) =
                x509_parser::certification_request::X509CertificationRequest::from_der(der).expect("csr");
            (
                csr.certification_request_info.raw.to_vec(),
                csr.signature_value.data.to_vec(),
                csr.certification_request_info.subject_pki.subject_public_key.data.to_vec(),
            )
        })
        .collect();
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("key");
    let ca_key =
        EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).expect("key");
    let tbs = vec![0x5au8; 420]; // about the size of an X509-SVID's to-be-signed part
    let mut i = 0usize;
    let raw = rate(budget, || {
        let (msg, sig, pk) = &parsed[i % parsed.len()];
        UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, pk).verify(msg, sig).expect("valid CSR");
        std::hint::black_box(ca_key.sign(&rng, &tbs).expect("sign"));
        i += 1;
    });

    let mut i = 0usize;
    let ours = rate(budget, || {
        let key = vouch_ca::verify_csr(&csrs[i % csrs.len()]).expect("valid CSR");
        let issued = authority.mint_x509(&id, &[], &key, Duration::from_secs(3600), now).expect("mint");
        std::hint::black_box(issued);
        i += 1;
    });

    // What the admin API does per request without a CSR: a fresh key, a certificate, PEM for both.
    let generated = rate(budget, || {
        let key = vouch_ca::WorkloadKey::generate().expect("key");
        let issued =
            authority.mint_x509(&id, &[], &key.public, Duration::from_secs(3600), now).expect("mint");
        std::hint::black_box((vouch_ca::pem::encode("CERTIFICATE", &issued.svid.cert_der), key.pkcs8_pem()));
    });
    let sign_only = rate(budget, || {
        std::hint::black_box(ca_key.sign(&rng, &tbs).expect("sign"));
    });
    let keygen_only = rate(budget, || {
        std::hint::black_box(
            EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_ASN1_SIGNING).expect("key"),
        );
    });

    let audiences = vec!["db".to_string()];
    let jwt_mint = rate(budget, || {
        std::hint::black_box(
            authority.mint_jwt(&id, &audiences, Duration::from_secs(300), now).expect("mint"),
        );
    });
    let token = authority.mint_jwt(&id, &audiences, Duration::from_secs(300), now)?.token;
    let jwt_validate = rate(budget, || {
        std::hint::black_box(authority.validate_jwt(&token, "db", now).expect("valid"));
    });

    println!("X509-SVID issuance from CSRs, in process, 1 thread:");
    println!("  raw crypto limit (1 P-256 verify + 1 P-256 sign): {raw:>10.0} /s");
    println!("  vouch (parse+verify CSR, build+sign certificate):  {ours:>10.0} /s");
    println!("  ratio vouch / raw limit: {:.1}% (target >= 60%)", 100.0 * ours / raw);
    println!("X509-SVID with a server-generated key (the admin API's work per request), 1 thread:");
    println!(
        "  raw limit (1 P-256 keygen + 1 P-256 sign):          {:>10.0} /s",
        1.0 / (1.0 / keygen_only + 1.0 / sign_only)
    );
    println!("  vouch (keygen, certificate, PEM):                   {generated:>10.0} /s");
    println!("JWT-SVID, in process, 1 thread:");
    println!("  mint (ES256):     {jwt_mint:>10.0} /s");
    println!("  validate (ES256): {jwt_validate:>10.0} /s");
    let ok = ours / raw >= 0.6;
    println!("RESULT issuance_vs_raw={:.3} {}", ours / raw, if ok { "PASS" } else { "BELOW TARGET" });
    if !ok {
        // Exit non-zero so a regression is visible to whoever runs the benchmark.
        std::process::exit(3);
    }
    Ok(())
}
