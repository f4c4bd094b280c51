#![no_main]
//! libFuzzer target: `hongbao_fuzz::big` (fuzz/src/bodies.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| hongbao_fuzz::big(data));
