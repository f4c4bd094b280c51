#![no_main]
//! libFuzzer target: `hongbao_fuzz::plan` (fuzz/src/bodies.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| hongbao_fuzz::plan(data));
