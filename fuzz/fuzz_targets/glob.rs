//! Fuzz target: Redis glob patterns (`KEYS`, `SCAN … MATCH`). Any pattern
//! compiles and matches any text without panicking, recursing or taking
//! more than bounded work. The first byte splits the input into pattern
//! and text. Run: `cargo +nightly fuzz run glob` from `fuzz/`.

#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let Some((&split, rest)) = bytes.split_first() else { return };
    let (pattern, text) = rest.split_at(usize::from(split).min(rest.len()));
    let _ = cairn_service::Glob::new(pattern).matches(text);
});
