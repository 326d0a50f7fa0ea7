//! No input panics the scanner: arbitrary text, arbitrary archives, and valid images with bytes
//! flipped or cut.

use proptest::prelude::*;
use vouch_scan::detect::{scan_text, TextKind};
use vouch_scan::{Input, RuleSet, ScanOptions, Scanner};

use crate::images::{oci_files, write_tar, Codec};

fn scanner() -> Scanner {
    Scanner::new(RuleSet::default_rules().unwrap(), ScanOptions { threads: 1, ..ScanOptions::default() })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let rules = RuleSet::default_rules().unwrap();
        let _ = scan_text(&rules, TextKind::Config, &data);
        let _ = scan_text(&rules, TextKind::Code, &data);
    }

    #[test]
    fn secret_shaped_text_never_panics(s in "(password|token|secret|-----BEGIN |name: |value: |eyJ|://|AKIA|ghp_|[ =:\"'\n\\\\$%{}])+") {
        let rules = RuleSet::default_rules().unwrap();
        let _ = scan_text(&rules, TextKind::Config, s.as_bytes());
        let _ = scan_text(&rules, TextKind::Code, s.as_bytes());
    }

    #[test]
    fn damaged_images_never_panic(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
                                  cut in any::<prop::sample::Index>(), codec in 0..3u8) {
        let dir = tempfile::tempdir().unwrap();
        let codec = [Codec::Gzip, Codec::Zstd, Codec::Plain][usize::from(codec)];
        let good = dir.path().join("good.tar");
        write_tar(&good, &oci_files(codec, "demo:1", true, false));
        let mut bytes = std::fs::read(&good).unwrap();
        for (i, b) in flips {
            let at = i.index(bytes.len());
            bytes[at] ^= b | 1;
        }
        let p = dir.path().join("bad.tar");
        std::fs::write(&p, &bytes).unwrap();
        let _ = scanner().scan(&[Input::Path(p.clone())], &Default::default());
        bytes.truncate(cut.index(bytes.len()));
        std::fs::write(&p, &bytes).unwrap();
        let _ = scanner().scan(&[Input::Path(p)], &Default::default());
    }
}
