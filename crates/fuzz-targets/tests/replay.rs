//! Replays the checked-in corpus (`fuzz/corpus/TARGET/*`) through every target on stable Rust:
//! an input that once crashed a decoder fails here if the bug comes back.

use std::path::Path;

#[test]
fn every_corpus_input_decodes_without_panicking() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    for (name, target) in aetherflow_fuzz_targets::TARGETS {
        let folder = corpus.join(name);
        let mut inputs: Vec<_> = std::fs::read_dir(&folder)
            .unwrap_or_else(|e| panic!("{}: {e} (every target has a corpus)", folder.display()))
            .map(|e| e.unwrap().path())
            .collect();
        inputs.sort();
        assert!(inputs.len() >= 2, "{name}: corpus too small");
        for input in inputs {
            // A campaign (scripts/fuzz.sh) may be minimizing this corpus meanwhile: an input it
            // removed after the listing above is no longer part of the corpus.
            let bytes = match std::fs::read(&input) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => panic!("{}: {e}", input.display()),
            };
            let result = std::panic::catch_unwind(|| target(&bytes));
            assert!(result.is_ok(), "{name} panicked on {}", input.display());
        }
    }
}
