//! Pattern coverage, one example per line.

use cairn_store::Pattern;

use super::covers;

#[track_caller]
fn check(allowed: &str, requested: &str, expected: bool) {
    let parse = |text: &str| Pattern::parse(text).expect("valid pattern");
    assert_eq!(covers(&parse(allowed), &parse(requested)), expected, "{allowed} covers {requested}");
}

#[test]
fn coverage() {
    check(">", "a", true);
    check(">", "a.>", true);
    check("a.>", "a.b", true);
    check("a.>", "a.*.c", true);
    check("a.>", "a.>", true);
    check("a.>", "a", false);
    check("a.>", ">", false);
    check("a.*", "a.b", true);
    check("a.*", "a.*", true);
    check("a.*", "a.>", false);
    check("a.*", "a.b.c", false);
    check("a.b", "a.b", true);
    check("a.b", "a.*", false);
    check("a.b", "a.c", false);
}
