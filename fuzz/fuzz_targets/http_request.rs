//! Fuzz target: arbitrary bytes as an HTTP request to a real server in this
//! process (routes, headers, bodies, query strings, broken framing). The
//! server must answer or close, and never panic (a panic aborts).

#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    cairn_server::fuzzing::http_request(bytes);
});
