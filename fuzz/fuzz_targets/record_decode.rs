//! Fuzz target: the on-disk record decoder fed arbitrary bodies (as if
//! their crc matched), and the framing around them.

#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let _ = cairn_store::fuzzing::decode_record(bytes);
    let _ = cairn_store::fuzzing::frame_and_unframe(bytes);
});
