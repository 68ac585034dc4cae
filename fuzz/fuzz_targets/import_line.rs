//! Fuzz target: one NDJSON line as `cairn import` reads it.

#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    cairn_store::fuzzing::import_line(bytes);
});
