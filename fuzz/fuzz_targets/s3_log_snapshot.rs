#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| aetherflow_fuzz_targets::s3_log_snapshot(data));
