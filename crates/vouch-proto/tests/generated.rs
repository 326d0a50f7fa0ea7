//! The checked-in generated code matches what the .proto files generate today.

// A test fails by panicking: unwrap and expect are how it says what broke. End-to-end tests run
// real processes on the wall clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::path::Path;

/// (.proto file, generated file name, checked-in file, whether a server is generated)
const PROTOS: [(&str, &str, &str, bool); 4] = [
    ("workload.proto", "_.rs", "src/workload.rs", true),
    (
        "containerd_containers.proto",
        "containerd.services.containers.v1.rs",
        "src/containerd_containers.rs",
        false,
    ),
    ("containerd_images.proto", "containerd.services.images.v1.rs", "src/containerd_images.rs", false),
    ("containerd_content.proto", "containerd.services.content.v1.rs", "src/containerd_content.rs", false),
];

#[test]
fn generated_code_is_up_to_date() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (proto, generated_name, checked_in, server) in PROTOS {
        let fds =
            protox::compile([root.join("proto").join(proto)], [root.join("proto")]).expect("valid .proto");
        let out = tempfile::tempdir().unwrap();
        tonic_prost_build::configure()
            .build_client(true)
            .build_server(server)
            .build_transport(false)
            .emit_rerun_if_changed(false)
            .out_dir(out.path())
            .compile_fds(fds)
            .expect("code generation");
        let generated = std::fs::read_to_string(out.path().join(generated_name)).expect("generated file");
        let checked_in = root.join(checked_in);
        if std::env::var_os("VOUCH_REGENERATE").is_some() {
            std::fs::write(&checked_in, &generated).unwrap();
        }
        let current = std::fs::read_to_string(&checked_in).unwrap_or_default();
        assert!(
            current == generated,
            "{} is out of date with proto/{proto}; run `VOUCH_REGENERATE=1 cargo test -p vouch-proto`",
            checked_in.display()
        );
    }
}
