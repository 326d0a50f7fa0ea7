//! The checked-in generated code matches what the .proto generates today.

use std::path::Path;

#[test]
fn generated_code_is_up_to_date() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fds =
        protox::compile([root.join("proto/workload.proto")], [root.join("proto")]).expect("valid .proto");
    let out = tempfile::tempdir().unwrap();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        .emit_rerun_if_changed(false)
        .out_dir(out.path())
        .compile_fds(fds)
        .expect("code generation");
    // A .proto without a package generates `_.rs`.
    let generated = std::fs::read_to_string(out.path().join("_.rs")).expect("generated file");
    let checked_in = root.join("src/workload.rs");
    if std::env::var_os("VOUCH_REGENERATE").is_some() {
        std::fs::write(&checked_in, &generated).unwrap();
    }
    let current = std::fs::read_to_string(&checked_in).unwrap_or_default();
    assert!(
        current == generated,
        "src/workload.rs is out of date with proto/workload.proto; run `VOUCH_REGENERATE=1 cargo test -p vouch-proto`"
    );
}
