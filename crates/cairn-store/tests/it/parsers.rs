//! Property tests of every parser fed arbitrary input (the stable-Rust
//! counterparts of the cargo-fuzz targets in `fuzz/`): value parsers,
//! NDJSON import lines, and the on-disk record decoder, with and without a
//! valid frame around the bytes. None may panic; the corpus in
//! `fuzz/corpus` is replayed too.

use proptest::prelude::*;

use cairn_store::fuzzing;

proptest! {
    #[test]
    fn value_parsers_survive_any_text(text in ".{0,300}") {
        fuzzing::parse_values(&text);
    }

    #[test]
    fn value_parsers_survive_near_misses(text in "[a-z0-9:.>*_/ -]{0,40}") {
        fuzzing::parse_values(&text);
    }

    #[test]
    fn import_survives_any_line(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        fuzzing::import_line(&bytes);
    }

    #[test]
    fn import_survives_json_shaped_lines(
        id in "[0-9a-z]{0,30}", topic in ".{0,20}", seq in any::<u64>(), content in ".{0,40}", hash in ".{0,60}",
    ) {
        let line = serde_json::json!({ "id": id, "topic": topic, "seq": seq, "content": content, "hash": hash });
        fuzzing::import_line(line.to_string().as_bytes());
    }

    #[test]
    fn the_record_decoder_survives_any_body(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        prop_assert!(fuzzing::frame_and_unframe(&bytes) || bytes.len() < 2);
        let _ = fuzzing::decode_record(&bytes);
    }

    #[test]
    fn the_record_decoder_survives_plausible_headers(
        kind in 0u8..8, rest in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut body = vec![1, kind];
        body.extend(rest);
        let _ = fuzzing::decode_record(&body);
    }
}

#[test]
fn the_fuzz_corpora_replay_without_panic() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let mut n = 0;
    for (dir, run) in [
        ("parse_values", &(|bytes: &[u8]| fuzzing::parse_values(&String::from_utf8_lossy(bytes))) as &dyn Fn(&[u8])),
        ("import_line", &|bytes: &[u8]| fuzzing::import_line(bytes)),
        ("record_decode", &|bytes: &[u8]| {
            let _ = fuzzing::decode_record(bytes);
        }),
    ] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            run(&std::fs::read(entry.unwrap().path()).unwrap());
            n += 1;
        }
    }
    assert!(n >= 6, "the committed corpora are there");
}

/// Topic names as Redis users write keys: accepted with their punctuation
/// and letters of any script; wildcards, separators and what cannot be
/// seen refused; wildcard patterns still match them by level.
#[test]
fn topic_names_take_redis_key_conventions() {
    use cairn_store::{Pattern, Topic};
    for name in [
        "{user:1}.cart",
        "socket.io#/#",
        "user@example.com",
        "orders 2026",
        "café.menü",
        "日本.東京",
        "a/b:c-d_e~f!g$h%i&j(k)l+m;n=o?p[q]r^s`t|u'v\"w\\x",
    ] {
        let topic = Topic::new(name).unwrap_or_else(|error| panic!("{name:?}: {error}"));
        assert_eq!(topic.as_str(), name);
    }
    for name in [
        "a*b",
        "a>b",
        "a,b",
        "tab\there",
        "new\nline",
        "nul\0",
        "zero\u{200B}width",
        "arabic\u{061C}mark",
        "tag\u{E0041}",
        "filler\u{3164}",
        "bidi\u{202E}",
        " lead",
        "trail ",
        "a..b",
        ".a",
        "",
    ] {
        assert!(Topic::new(name).is_err(), "{name:?} was accepted");
    }
    let pattern = Pattern::parse("socket.>").unwrap();
    assert!(pattern.matches("socket.io#/#"));
    let pattern = Pattern::parse("{user:1}.*").unwrap();
    assert!(pattern.matches("{user:1}.cart") && !pattern.matches("{user:2}.cart"));
}

proptest! {
    /// Any accepted name is printable and free of the refused characters.
    #[test]
    fn accepted_topic_names_hold_the_rules(name in "\\PC{1,40}") {
        if let Ok(topic) = cairn_store::Topic::new(&name) {
            prop_assert!(topic.as_str().chars().all(|c| !c.is_control() && !matches!(c, '*' | '>' | ',')));
        }
    }
}
