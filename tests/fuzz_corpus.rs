//! Replays the committed fuzz corpus (fuzz/corpus/<target>/) through the fuzz targets' bodies
//! (fuzz/src/bodies.rs, included here by path): every input that once found something, and
//! the seeds, keep passing on the ordinary test build. Fuzzing itself is `bench/fuzz.sh`.

#[path = "../fuzz/src/bodies.rs"]
mod bodies;

use std::path::Path;

#[test]
fn every_corpus_input_replays_through_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (name, body) in bodies::TARGETS {
        let dir = root.join(name);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "{}: no corpus", dir.display());
        for input in inputs {
            let bytes = std::fs::read(&input).unwrap();
            eprintln!("{}", input.display());
            body(&bytes);
        }
    }
}

#[test]
fn every_target_has_a_libfuzzer_entry_point() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    for (name, _) in bodies::TARGETS {
        let target = root.join(format!("fuzz_targets/{name}.rs"));
        let text = std::fs::read_to_string(&target)
            .unwrap_or_else(|e| panic!("{}: {e}", target.display()));
        assert!(text.contains(&format!("hongbao_fuzz::{name}(data)")));
        assert!(manifest.contains(&format!("name = \"{name}\"")));
    }
}
