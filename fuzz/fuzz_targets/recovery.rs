#![no_main]
//! libFuzzer target: `hongbao_fuzz::recovery` (fuzz/src/bodies.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| hongbao_fuzz::recovery(data));
