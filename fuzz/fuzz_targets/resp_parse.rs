//! Fuzz target: the RESP parser over arbitrary bytes must return (a command,
//! "incomplete", or a protocol error) without panicking, hanging or
//! allocating without bound. Run: `cargo +nightly fuzz run resp_parse`
//! from `fuzz/` (corpus in `fuzz/corpus/resp_parse`).

#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    cairn_server::fuzzing::resp_parse(bytes);
});
