//! Fuzz target: MeiliES `subscribe` specs (`name[:from[:to]]`, `$all…`)
//! parse or fail cleanly on any bytes. Run: `cargo +nightly fuzz run
//! meilies_spec` from `fuzz/`.

#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    cairn_server::fuzzing::meilies_spec(bytes);
});
