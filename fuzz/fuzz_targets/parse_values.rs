//! Fuzz target: every value parser (topic, pattern, duration, id, hash,
//! expectation, retention, meta, sync mode) on arbitrary text.

#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    cairn_store::fuzzing::parse_values(&String::from_utf8_lossy(bytes));
});
