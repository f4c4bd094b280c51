#![no_main]
//! libFuzzer target: `hongbao_fuzz::tokens` (fuzz/src/bodies.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| hongbao_fuzz::tokens(data));
