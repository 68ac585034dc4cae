//! Bad input at every entry point: a clear one-line error naming the field
//! and the rule, exit 1 (2 for usage), and nothing written.

use crate::Cairn;

#[track_caller]
fn check(args: &[&str], stdin: &[u8], needle: &str) {
    let cairn = Cairn::new();
    let stderr = cairn.fails(args, stdin, 1);
    assert!(stderr.contains(needle), "cairn {args:?}: expected {needle:?} in {stderr:?}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(cairn.ok(&["cat"], b"").is_empty(), "nothing written by {args:?}");
}

#[test]
fn topics() {
    check(&["append", "has*star"], b"x", "invalid topic");
    check(&["append", &"a".repeat(256)], b"x", "the maximum is 255");
    check(&["append", "a..b"], b"x", "empty level");
    check(&["append", "cairn.start"], b"x", "reserved");
}

#[test]
fn fields() {
    check(&["append", "t", "--meta", "[1]"], b"x", "invalid meta: must be a JSON object");
    check(&["append", "t", "--meta", "{oops"], b"x", "invalid meta");
    check(&["append", "t", "--ttl", "time:5x"], b"x", "invalid ttl");
    check(&["append", "t", "--ttl", "sometimes"], b"x", "invalid ttl");
    check(&["append", "t", "--expect", "maybe"], b"x", "invalid expect");
    check(&["append", "t", "--type", ""], b"x", "invalid type");
    check(&["append", "t", "--key", ""], b"x", "invalid key");
    check(&["append", "--batch"], b"{\"topic\":\"t\",\"content\":\"x\",\"color\":1}\n", "line 1");
    check(&["append", "--batch"], b"", "no events");
}

#[test]
fn ids_hashes_patterns() {
    check(&["get", "nope"], b"", "invalid id");
    check(&["rm", "0123"], b"", "invalid id");
    check(&["cas", "get", "sha256-abc"], b"", "invalid hash");
    check(&["cas", "get", "ABCDEF"], b"", "invalid hash");
    check(&["cat", "a.>.b"], b"", "invalid pattern");
    check(&["cat", "a.*", "--from-seq", "1"], b"", "needs a single topic");
    check(&["consumer", "ack", "bad name", "03hbgvf8dibdqvucz8j9cjjyu"], b"", "invalid consumer");
    check(&["--sync", "sometimes", "topics"], b"", "invalid sync");
}

#[test]
fn payload_too_large() {
    let big = vec![0u8; 8 * 1024 * 1024 + 1];
    check(&["append", "t"], &big, "payload too large");
}

#[test]
fn usage_errors_exit_2() {
    let cairn = Cairn::new();
    cairn.fails(&["append"], b"", 2);
    cairn.fails(&["frobnicate"], b"", 2);
    cairn.fails(&["cat", "--limit", "many"], b"", 2);
    cairn.fails(&["cat", "--threshold"], b"", 2);
}
