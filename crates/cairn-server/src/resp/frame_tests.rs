//! Tests of the RESP wire format: examples, broken framing, and properties
//! over random and truncated frames.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use super::*;

/// One command from a fresh parser with a bulk bound of `bulk_max`.
fn parse(buf: &[u8], bulk_max: usize) -> Result<Option<(Request, usize)>, ProtocolError> {
    Parser::new(Limits { bulk_bytes_max: bulk_max, command_bytes_max: 64 << 20 }).parse(buf)
}

fn args(buf: &[u8]) -> Vec<Vec<u8>> {
    match parse(buf, 1024).unwrap().unwrap() {
        (Request::Args(ranges), _) => ranges.into_iter().map(|r| buf[r].to_vec()).collect(),
        (Request::Inline(args), _) => args,
    }
}

#[test]
fn multibulk_is_binary_safe_and_reports_its_length() {
    let frame = b"*2\r\n$3\r\nSET\r\n$4\r\na\r\n\0\r\n*1\r\n";
    let (request, used) = parse(frame, 1024).unwrap().unwrap();
    assert_eq!(used, 23);
    assert_eq!(request, Request::Args(vec![8..11, 17..21]));
    assert_eq!(args(frame), vec![b"SET".to_vec(), b"a\r\n\0".to_vec()]);
}

#[test]
fn every_prefix_of_a_frame_is_incomplete() {
    let frame = b"*3\r\n$7\r\npublish\r\n$1\r\ns\r\n$0\r\n\r\n";
    for end in 0..frame.len() {
        assert_eq!(parse(&frame[..end], 1024), Ok(None), "prefix of {end} bytes");
    }
    assert!(parse(frame, 1024).unwrap().is_some());
}

#[test]
fn inline_commands_split_and_unquote_like_redis() {
    assert_eq!(args(b"PING\r\n"), vec![b"PING".to_vec()]);
    assert_eq!(args(b"  set  k  v\n"), vec![b"set".to_vec(), b"k".to_vec(), b"v".to_vec()]);
    assert_eq!(args(b"echo \"a b\\n\\x41\" 'c d'\r\n"), vec![b"echo".to_vec(), b"a b\nA".to_vec(), b"c d".to_vec()]);
    assert_eq!(parse(b"\r\n", 1024).unwrap().unwrap().0, Request::Inline(vec![]));
    assert!(parse(b"echo \"open\r\n", 1024).is_err());
    assert!(parse(b"echo \"a\"b\r\n", 1024).is_err());
}

#[test]
fn broken_framing_is_an_error_not_a_wait() {
    for frame in
        [&b"*x\r\n"[..], b"*1\r\n+OK\r\n", b"*1\r\n$-1\r\n", b"*1\r\n$2000\r\n", b"*1\r\n$1\r\nab\r\n", b"*1\r\n$1\nx"]
    {
        assert!(parse(frame, 1024).is_err(), "{:?}", String::from_utf8_lossy(frame));
    }
    assert!(parse(format!("*{}\r\n", ARGS_MAX + 1).as_bytes(), 1024).is_err());
    assert!(parse(&vec![b'a'; INLINE_BYTES_MAX + 2], 1024).is_err());
    assert!(parse(b"*12345678901234567890123456789012345", 1024).is_err());
}

/// Feeds `frame` to one parser in pieces of `step` bytes, as reads would
/// deliver it; returns the command's arguments.
fn parse_in_pieces(parser: &mut Parser, frame: &[u8], step: usize) -> Vec<Vec<u8>> {
    let mut end = 0;
    loop {
        end = (end + step).min(frame.len());
        if let Some((request, used)) = parser.parse(&frame[..end]).unwrap() {
            assert_eq!(used, frame.len());
            return match request {
                Request::Args(ranges) => ranges.into_iter().map(|r| frame[r].to_vec()).collect(),
                Request::Inline(args) => args,
            };
        }
        assert!(end < frame.len(), "the whole frame is a command");
    }
}

#[test]
fn a_command_arriving_in_small_pieces_is_parsed_once_not_once_per_piece() {
    // 200,000 one-byte arguments, a byte at a time: resuming, the parser
    // looks at each byte a bounded number of times (re-parsing from the
    // start on every read took minutes here).
    let n = 200_000;
    let mut frame = format!("*{n}\r\n").into_bytes();
    for _ in 0..n {
        frame.extend_from_slice(b"$1\r\na\r\n");
    }
    let started = std::time::Instant::now();
    let mut parser = Parser::new(Limits { bulk_bytes_max: 1024, command_bytes_max: 64 << 20 });
    assert_eq!(parse_in_pieces(&mut parser, &frame, 1).len(), n);
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "took {:?}", started.elapsed());
    // The same for a long inline line.
    let line = [b"echo ".as_slice(), &vec![b'x'; 60_000], b"\r\n"].concat();
    assert_eq!(parse_in_pieces(&mut parser, &line, 1)[1].len(), 60_000);
    // And the parser is ready for the next command.
    assert_eq!(parse_in_pieces(&mut parser, b"*1\r\n$4\r\nPING\r\n", 3), vec![b"PING".to_vec()]);
}

#[test]
fn a_command_is_bounded_in_total_before_its_bytes_arrive() {
    let limits = Limits { bulk_bytes_max: 1 << 20, command_bytes_max: 16 * 1024 };
    // Declared lengths over the total fail at once, with only headers read.
    assert!(Parser::new(limits).parse(b"*2\r\n$10000\r\n").unwrap().is_none());
    let mut parser = Parser::new(limits);
    assert!(parser.parse(b"*2\r\n$10000\r\n").unwrap().is_none());
    let mut two = b"*2\r\n$10000\r\n".to_vec();
    two.extend(vec![b'a'; 10_000]);
    two.extend_from_slice(b"\r\n$10000\r\n");
    assert!(parser.parse(&two).is_err(), "20,000 declared bytes over a 16 KiB bound");
    // Many empty arguments count too.
    assert!(Parser::new(limits).parse(b"*100000\r\n").is_err());
    let mut many = b"*1500\r\n".to_vec();
    for _ in 0..1500 {
        many.extend_from_slice(b"$0\r\n\r\n");
    }
    assert!(Parser::new(limits).parse(&many).is_err());
    assert!(Parser::new(Limits { command_bytes_max: 1 << 20, ..limits }).parse(&many).unwrap().is_some());
    // An inline line is bounded by the total too.
    assert!(Parser::new(limits).parse(&vec![b'a'; 16 * 1024 + 2]).is_err());
}

#[test]
fn replies_follow_the_protocol_version() {
    let mut out = Out::new();
    out.map(1);
    out.simple("a\r\nb");
    out.null();
    out.set(0);
    assert_eq!(&out.buf[..], b"*2\r\n+a  b\r\n$-1\r\n*0\r\n");
    let mut out = Out::new();
    out.proto = 3;
    out.map(1);
    out.null();
    out.null_array();
    out.set(0);
    out.error("ERR x");
    out.int(-3);
    out.bulk(b"\0");
    assert_eq!(&out.buf[..], b"%1\r\n_\r\n_\r\n~0\r\n-ERR x\r\n:-3\r\n$1\r\n\0\r\n");
}

#[test]
fn the_fuzz_corpus_parses_without_panic() {
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/resp_parse");
    let mut n = 0;
    for entry in std::fs::read_dir(corpus).unwrap() {
        crate::fuzzing::resp_parse(&std::fs::read(entry.unwrap().path()).unwrap());
        n += 1;
    }
    assert!(n >= 3, "the committed corpus is there");
}

proptest! {
    /// Arbitrary bytes never panic, and a reported frame fits the buffer.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(Some((request, used))) = parse(&bytes, 64) {
            prop_assert!(used <= bytes.len());
            if let Request::Args(ranges) = request {
                prop_assert!(ranges.iter().all(|r| r.end <= used));
            }
        }
    }

    /// Arbitrary bytes fed in pieces to one parser never panic either.
    #[test]
    fn arbitrary_bytes_in_pieces_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256), step in 1usize..8) {
        let mut parser = Parser::new(Limits { bulk_bytes_max: 64, command_bytes_max: 1024 });
        let mut start = 0;
        let mut end = 0;
        while end < bytes.len() {
            end = (end + step).min(bytes.len());
            match parser.parse(&bytes[start..end]) {
                Ok(Some((_, used))) => {
                    prop_assert!(used > 0 && start + used <= end);
                    start += used;
                    end = start;
                }
                Ok(None) => {}
                Err(_) => break,
            }
        }
    }

    /// Any command encoded as multibulk parses back to itself, whole or
    /// split anywhere (a truncated frame is incomplete, never an error),
    /// and fed in pieces.
    #[test]
    fn encoded_commands_round_trip(
        command in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..6),
        cut in 0usize..400,
    ) {
        let mut frame = format!("*{}\r\n", command.len()).into_bytes();
        for arg in &command {
            frame.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            frame.extend_from_slice(arg);
            frame.extend_from_slice(b"\r\n");
        }
        prop_assert_eq!(args(&frame), command.clone());
        let cut = cut.min(frame.len() - 1);
        prop_assert_eq!(parse(&frame[..cut], 1024), Ok(None));
        let mut parser = Parser::new(Limits { bulk_bytes_max: 1024, command_bytes_max: 1 << 20 });
        prop_assert_eq!(parse_in_pieces(&mut parser, &frame, cut % 7 + 1), command);
    }
}

#[test]
fn numbers_of_lengths() {
    let parse = |text: &[u8]| line_number(text, 1, "length").map_err(|error| error.0);
    assert_eq!(parse(b"*3\r\n"), Ok(Some((3, 4))));
    assert_eq!(parse(b"$-1\r\n"), Ok(Some((-1, 5))));
    assert_eq!(parse(b"$0\r\nrest"), Ok(Some((0, 4))));
    assert_eq!(parse(b"$123456789012345678\r\n"), Ok(Some((123_456_789_012_345_678, 21))));
    // What `i64`'s `from_str` takes: leading zeros, "-0", its whole range.
    assert_eq!(parse(b"$0000000000000000004\r\n"), Ok(Some((4, 22))));
    assert_eq!(parse(b"$-0\r\n"), Ok(Some((0, 5))));
    assert_eq!(parse(b"*-1000000000000000000\r\n"), Ok(Some((-1_000_000_000_000_000_000, 23))));
    assert_eq!(parse(b"$9223372036854775807\r\n"), Ok(Some((i64::MAX, 22))));
    assert_eq!(parse(b"$-9223372036854775808\r\n"), Ok(Some((i64::MIN, 23))));
    // Not complete yet.
    assert_eq!(parse(b"$12"), Ok(None));
    assert_eq!(parse(b"$12\r"), Ok(None));
    // Malformed.
    for bad in [
        &b"$+3\r\n"[..],
        b"$\r\n",
        b"$-\r\n",
        b"$3x\r\n",
        b"$ 3\r\n",
        b"$3\n",
        b"$3\rx",
        b"$9223372036854775808\r\n",
        b"$-9223372036854775809\r\n",
        b"$--3\r\n",
        b"$-+3\r\n",
    ] {
        assert_eq!(parse(bad), Err("invalid length".to_owned()), "{}", String::from_utf8_lossy(bad));
    }
    assert_eq!(parse(&[b'1'; 40]), Err("invalid length".to_owned()));
}

#[test]
fn lengths_are_written_in_decimal_at_every_width() {
    for len in [0, 1, 9, 10, 11, 42, 99, 100, 101, 512, 999, 1000, 1001, 65_536, 123_456_789] {
        let mut out = Out::new();
        out.array(len);
        out.bulk(&vec![b'x'; len.min(1001)]);
        let mut want = format!("*{len}\r\n${}\r\n", len.min(1001)).into_bytes();
        want.extend(vec![b'x'; len.min(1001)]);
        want.extend(b"\r\n");
        assert_eq!(out.buf[..], want[..], "{len}");
    }
}
