#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| aetherflow_fuzz_targets::af_entry_table(data));
