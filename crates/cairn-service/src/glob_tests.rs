//! Glob examples (Redis's behaviour), hostile patterns, and a proptest
//! against a plain recursive reference on small inputs.

use proptest::prelude::*;

use super::Glob;

#[track_caller]
fn check(pattern: &str, text: &str, expected: bool) {
    assert_eq!(Glob::new(pattern.as_bytes()).matches(text.as_bytes()), expected, "{pattern:?} vs {text:?}");
}

#[test]
fn matches_like_redis() {
    check("*", "anything", true);
    check("*", "", true);
    check("", "", true);
    check("", "a", false);
    check("orders:*", "orders:12", true);
    check("orders:*", "order", false);
    check("h?llo", "hello", true);
    check("h?llo", "hllo", false);
    check("h[ae]llo", "hallo", true);
    check("h[^e]llo", "hello", false);
    check("h[^e]llo", "hallo", true);
    check("h[a-b]llo", "hbllo", true);
    check("h[b-a]llo", "hallo", true);
    check("a\\*", "a*", true);
    check("a\\*", "ab", false);
    check("[\\]]", "]", true);
    check("[abc", "b", true);
    check("[]", "a", false);
    check("*a*b*c", "xaybzc", true);
    check("*a*b*c", "xaybz", false);
    check("a*", "a", true);
    check("**a**", "bab", true);
    check("\\", "\\", true);
}

#[test]
fn classes_are_sets_of_bytes() {
    let glob = Glob::new(&[b'[', 0x3f, b'-', 0x41, b']']);
    for byte in 0..=255u8 {
        assert_eq!(glob.matches(&[byte]), (0x3f..=0x41).contains(&byte), "{byte}");
    }
    let all = Glob::new(&[b'[', 0, b'-', 255, b']']);
    let none = Glob::new(&[b'[', b'^', 0, b'-', 255, b']']);
    let high = Glob::new(&[b'[', 200, b'-', 255, b']']);
    for byte in 0..=255u8 {
        assert!(all.matches(&[byte]));
        assert!(!none.matches(&[byte]));
        assert_eq!(high.matches(&[byte]), byte >= 200, "{byte}");
    }
}

#[test]
fn hostile_patterns_cost_little() {
    let started = std::time::Instant::now();
    let stars = "*".repeat(30_000);
    let text = "a".repeat(255);
    assert!(Glob::new(stars.as_bytes()).matches(text.as_bytes()));
    let mut alternating = "*a".repeat(200);
    alternating.push('b');
    assert!(!Glob::new(alternating.as_bytes()).matches(text.as_bytes()));
    let long = "*a".repeat(500_000);
    assert!(!Glob::new(long.as_bytes()).matches(text.as_bytes()), "more fixed bytes than a topic has");
    let classes = "[a-z]".repeat(100_000);
    assert!(!Glob::new(classes.as_bytes()).matches(text.as_bytes()));
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "took {:?}", started.elapsed());
}

#[test]
fn a_huge_class_is_one_lookup() {
    // Nine million bytes of one class (the size of a RESP command): linear
    // to compile, then one lookup per byte matched, so a thousand topics
    // cost no more than with `[a]`.
    let mut huge = b"*[".to_vec();
    huge.extend(std::iter::repeat_n(1u8, 9_000_000));
    huge.extend(b"]x");
    let glob = Glob::new(&huge);
    let text = "a".repeat(255);
    let started = std::time::Instant::now();
    for _ in 0..1000 {
        assert!(!glob.matches(text.as_bytes()));
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "took {:?}", started.elapsed());
}

#[test]
fn the_fuzz_corpus_replays() {
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/glob");
    let mut n = 0;
    for entry in std::fs::read_dir(corpus).expect("the committed corpus") {
        let bytes = std::fs::read(entry.expect("an entry").path()).expect("readable");
        // As the fuzz target splits its input: the first byte is the pattern's length.
        let Some((&split, rest)) = bytes.split_first() else { continue };
        let (pattern, text) = rest.split_at(usize::from(split).min(rest.len()));
        let _ = Glob::new(pattern).matches(text);
        n += 1;
    }
    assert!(n >= 3, "the committed corpus is there");
}

/// The plain definition, recursive: fine for the small inputs below.
fn reference(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.first() {
        None => text.is_empty(),
        Some(b'*') => (0..=text.len()).any(|skip| reference(&pattern[1..], &text[skip..])),
        Some(b'?') => !text.is_empty() && reference(&pattern[1..], &text[1..]),
        Some(b'\\') if pattern.len() > 1 => text.first() == Some(&pattern[1]) && reference(&pattern[2..], &text[1..]),
        Some(b'[') => {
            let Some(&byte) = text.first() else { return false };
            let mut at = 1;
            let negate = pattern.get(at) == Some(&b'^');
            if negate {
                at += 1;
            }
            let mut found = false;
            loop {
                match pattern.get(at) {
                    None => break,
                    Some(b']') => {
                        at += 1;
                        break;
                    }
                    Some(b'\\') if at + 1 < pattern.len() => {
                        found |= pattern[at + 1] == byte;
                        at += 2;
                    }
                    Some(&lo) if at + 2 < pattern.len() && pattern[at + 1] == b'-' => {
                        let hi = pattern[at + 2];
                        found |= (lo.min(hi)..=lo.max(hi)).contains(&byte);
                        at += 3;
                    }
                    Some(&other) => {
                        found |= other == byte;
                        at += 1;
                    }
                }
            }
            found != negate && reference(&pattern[at..], &text[1..])
        }
        Some(&literal) => text.first() == Some(&literal) && reference(&pattern[1..], &text[1..]),
    }
}

fn glob_bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        prop_oneof![
            Just(b'*'),
            Just(b'?'),
            Just(b'['),
            Just(b']'),
            Just(b'^'),
            Just(b'-'),
            Just(b'\\'),
            Just(b'a'),
            Just(b'b')
        ],
        0..10,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn agrees_with_the_reference(pattern in glob_bytes(), text in proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'b'), Just(b'-'), Just(b']')], 0..8)) {
        prop_assert_eq!(Glob::new(&pattern).matches(&text), reference(&pattern, &text));
    }

    #[test]
    fn any_bytes_compile_and_match_without_panic(pattern in proptest::collection::vec(any::<u8>(), 0..300), text in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = Glob::new(&pattern).matches(&text);
    }
}
