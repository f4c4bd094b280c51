#![no_main]
//! libFuzzer target: `hongbao_fuzz::manifest` (fuzz/src/bodies.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| hongbao_fuzz::manifest(data));
