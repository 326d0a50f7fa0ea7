//! The committed corpora replayed through the fuzz targets' harness functions, one test per target:
//! every seed under `corpus/<target>/` and every minimised crash under `regressions/<target>/`.
//! This is the fuzzing smoke run of `scripts/test`; `scripts/fuzz` does the real runs.

use std::path::Path;

fn replay(target: &str) {
    let (_, harness) = vouch_fuzz::TARGETS.iter().find(|(name, _)| *name == target).expect("a target");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut count = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
        let mut paths: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
        paths.sort();
        for path in paths {
            let data = std::fs::read(&path).unwrap();
            if let Err(panic) = std::panic::catch_unwind(|| harness(&data)) {
                eprintln!("{target}: {} failed", path.display());
                std::panic::resume_unwind(panic);
            }
            count += 1;
        }
    }
    assert!(count > 0, "no corpus for {target}");
}

macro_rules! replay_tests {
    ($($name:ident)*) => {
        $(#[test] fn $name() { replay(stringify!($name)); })*

        #[test]
        fn every_target_is_replayed() {
            let tested = [$(stringify!($name)),*];
            for (name, _) in vouch_fuzz::TARGETS {
                assert!(tested.contains(name), "{name} has no replay test");
            }
        }
    };
}

replay_tests! {
    h2_filter h2_rewrite_block jwt jwt_signed bundle_jwks csr spiffe_id selector duration cgroup procfs kubelet
    runtime scan_layer scan_image
}
