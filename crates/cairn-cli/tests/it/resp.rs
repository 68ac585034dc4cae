//! The Redis protocol of a real `cairn serve`: MeiliES golden transcripts
//! byte for byte over a raw TCP socket, connection handling (pipelining,
//! inline commands, limits, cross-protocol defence, AUTH, RESP3), the
//! `redis` crate (Streams, consumer groups, blocking reads, restarts),
//! `redis-cli`. (kill -9 during XADD load: `lifecycle.rs`'s crash harness.)

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::Cairn;
use crate::serve::Server;

/// A raw connection that checks replies byte for byte.
pub(crate) struct Raw {
    reader: BufReader<TcpStream>,
    pub(crate) writer: TcpStream,
}

impl Raw {
    pub(crate) fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Raw { reader: BufReader::new(stream.try_clone().unwrap()), writer: stream }
    }

    pub(crate) fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    /// Sends `args` as a multibulk command.
    pub(crate) fn command(&mut self, args: &[&[u8]]) {
        self.send(&encode(args));
    }

    /// Reads exactly `expected.len()` bytes and compares them.
    pub(crate) fn expect(&mut self, expected: &[u8]) {
        let mut got = vec![0u8; expected.len()];
        self.reader.read_exact(&mut got).unwrap_or_else(|error| {
            panic!("waiting for {:?}: {error}", String::from_utf8_lossy(expected));
        });
        assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(expected));
    }

    /// Reads one reply line (without CRLF).
    pub(crate) fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        line.trim_end_matches("\r\n").to_owned()
    }

    /// Reads one whole reply of any shape, as text (for logs and checks).
    pub(crate) fn frame(&mut self) -> Value {
        let line = self.line();
        let (kind, rest) = line.split_at(1);
        match kind {
            "+" | "-" | ":" | "_" => Value::Line(line.clone()),
            "$" => {
                let len: i64 = rest.parse().unwrap();
                if len < 0 {
                    return Value::Line(line);
                }
                let mut bytes = vec![0u8; len as usize + 2];
                self.reader.read_exact(&mut bytes).unwrap();
                bytes.truncate(len as usize);
                Value::Bulk(bytes)
            }
            "*" | ">" | "%" | "~" => {
                let n: i64 = rest.parse().unwrap();
                if n < 0 {
                    return Value::Line(line);
                }
                let n = if kind == "%" { n * 2 } else { n };
                Value::Array((0..n.max(0)).map(|_| self.frame()).collect())
            }
            other => panic!("unexpected reply type {other}: {line}"),
        }
    }

    /// True when the server closed the connection (EOF within the timeout).
    pub(crate) fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.reader.read(&mut byte), Ok(0) | Err(_))
    }
}

#[derive(Debug, PartialEq)]
pub(crate) enum Value {
    Line(String),
    Bulk(Vec<u8>),
    Array(Vec<Value>),
}

pub(crate) fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn push(stream: &str, n: u64, name: &str, data: &[u8]) -> Vec<u8> {
    let mut out = format!("*5\r\n+event\r\n+{stream}\r\n:{n}\r\n+{name}\r\n${}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

#[test]
fn meilies_commands_byte_for_byte() {
    let cairn = Cairn::new();
    let server = Server::start(&cairn, &[]);
    let mut raw = Raw::connect(server.resp());

    raw.command(&[b"last-event-number", b"my-little-stream"]);
    raw.expect(b"*3\r\n+last-event-number\r\n+my-little-stream\r\n$-1\r\n");
    raw.command(&[b"publish", b"my-little-stream", b"my-event-name", b"Hello World!"]);
    raw.expect(b"+OK\r\n");
    // Binary-safe: CRLF and NUL inside the data round-trip exactly.
    raw.command(&[b"publish", b"my-little-stream", b"my-event-name", b"a\r\n\0b"]);
    raw.expect(b"+OK\r\n");
    raw.command(&[b"publish", b"other", b"x", b""]);
    raw.expect(b"+OK\r\n");
    raw.command(&[b"last-event-number", b"my-little-stream"]);
    raw.expect(b"*3\r\n+last-event-number\r\n+my-little-stream\r\n:1\r\n");
    raw.command(&[b"stream-names"]);
    raw.expect(b"*3\r\n+stream-names\r\n+my-little-stream\r\n+other\r\n");

    // History from 0, then live.
    let mut follower = Raw::connect(server.resp());
    follower.command(&[b"subscribe", b"my-little-stream:0"]);
    follower.expect(b"*2\r\n+subscribed\r\n+my-little-stream\r\n");
    follower.expect(&push("my-little-stream", 0, "my-event-name", b"Hello World!"));
    follower.expect(&push("my-little-stream", 1, "my-event-name", b"a\r\n\0b"));
    raw.command(&[b"publish", b"my-little-stream", b"my-event-name", b"Hello Cathy!"]);
    raw.expect(b"+OK\r\n");
    follower.expect(&push("my-little-stream", 2, "my-event-name", b"Hello Cathy!"));

    // A range (to exclusive), a future start, live only, and $all, on one connection.
    let mut several = Raw::connect(server.resp());
    several.command(&[b"subscribe", b"my-little-stream:1:2", b"my-little-stream:4", b"other", b"$all:2"]);
    several.expect(b"*2\r\n+subscribed\r\n+my-little-stream\r\n");
    several.expect(b"*2\r\n+subscribed\r\n+my-little-stream\r\n");
    several.expect(b"*2\r\n+subscribed\r\n+other\r\n");
    several.expect(b"*2\r\n+subscribed\r\n+$all\r\n");
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(several.frame());
    }
    let pushed = |stream: &str, n: i64, data: &[u8]| {
        Value::Array(vec![
            Value::Line("+event".into()),
            Value::Line(format!("+{stream}")),
            Value::Line(format!(":{n}")),
            Value::Line("+my-event-name".into()),
            Value::Bulk(data.to_vec()),
        ])
    };
    // Event 1 (the range) and event 2 (from $all:2), in some order.
    assert!(got.contains(&pushed("my-little-stream", 1, b"a\r\n\0b")), "{got:?}");
    assert!(got.contains(&pushed("my-little-stream", 2, b"Hello Cathy!")), "{got:?}");
    raw.command(&[b"publish", b"my-little-stream", b"my-event-name", b"three"]);
    raw.expect(b"+OK\r\n");
    raw.command(&[b"publish", b"my-little-stream", b"my-event-name", b"four"]);
    raw.expect(b"+OK\r\n");
    raw.command(&[b"publish", b"new-stream", b"my-event-name", b"n0"]);
    raw.expect(b"+OK\r\n");
    raw.command(&[b"publish", b"new-stream", b"my-event-name", b"n1"]);
    raw.expect(b"+OK\r\n");
    raw.command(&[b"publish", b"new-stream", b"my-event-name", b"n2"]);
    raw.expect(b"+OK\r\n");
    let got: Vec<Value> = (0..4).map(|_| several.frame()).collect();
    // $all:2 sends 3 and 4 of my-little-stream and n2 of a stream created
    // after the subscription; my-little-stream:4 sends 4.
    for expected in [
        pushed("my-little-stream", 3, b"three"),
        pushed("my-little-stream", 4, b"four"),
        pushed("new-stream", 2, b"n2"),
    ] {
        assert!(got.contains(&expected), "{expected:?} not in {got:?}");
    }
    assert_eq!(got.iter().filter(|v| **v == pushed("my-little-stream", 4, b"four")).count(), 2);

    // Malformed specs get an error and the connection stays usable.
    for bad in [&b"a:"[..], b"a::1", b"a:x", b"a:5:2"] {
        raw.command(&[b"subscribe", bad]);
        let line = raw.line();
        assert!(line.starts_with("-ERR invalid stream spec"), "{line}");
    }
    raw.command(&[b"publish", b"s"]);
    assert_eq!(raw.line(), "-ERR wrong number of arguments for 'publish' command");
    raw.command(&[b"stream-names"]);
    raw.expect(b"*4\r\n+stream-names\r\n+my-little-stream\r\n+new-stream\r\n+other\r\n");

    // Pushes interleave with replies on the same connection, never inside one.
    follower.command(&[b"publish", b"my-little-stream", b"my-event-name", b"mine"]);
    let mut frames = vec![follower.frame(), follower.frame(), follower.frame(), follower.frame()];
    frames.retain(|frame| *frame != Value::Line("+OK".into()));
    assert_eq!(frames.len(), 3, "{frames:?}");
    assert_eq!(frames[2], pushed("my-little-stream", 5, b"mine"));
}

#[test]
fn meilies_history_switches_to_live_with_no_gap_under_a_concurrent_writer() {
    let cairn = Cairn::new();
    let server = Server::start(&cairn, &[]);
    let addr = server.resp();
    let total = 3000u64;
    let writer = std::thread::spawn(move || {
        let mut raw = Raw::connect(addr);
        // Pipelined in bursts of 50.
        for burst in 0..total / 50 {
            let mut bytes = Vec::new();
            for n in 0..50 {
                bytes.extend(encode(&[b"publish", b"s", b"e", format!("{}", burst * 50 + n).as_bytes()]));
            }
            raw.send(&bytes);
            for _ in 0..50 {
                raw.expect(b"+OK\r\n");
            }
        }
    });
    // Subscribe while the writer is in the middle.
    let mut follower = Raw::connect(addr);
    std::thread::sleep(Duration::from_millis(30));
    follower.command(&[b"subscribe", b"s:0"]);
    follower.expect(b"*2\r\n+subscribed\r\n+s\r\n");
    for n in 0..total {
        follower.expect(&push("s", n, "e", n.to_string().as_bytes()));
    }
    writer.join().unwrap();
}

#[test]
fn connections_pipeline_take_inline_commands_and_survive_bad_input() {
    let cairn = Cairn::new();
    let server = Server::start(&cairn, &[]);
    let mut raw = Raw::connect(server.resp());
    // Pipelining: many commands in one write, replies in order.
    let mut bytes = Vec::new();
    for n in 0..100 {
        bytes.extend(encode(&[b"ECHO", format!("m{n}").as_bytes()]));
    }
    bytes.extend(encode(&[b"PING"]));
    raw.send(&bytes);
    for n in 0..100 {
        raw.expect(format!("${}\r\nm{n}\r\n", format!("m{n}").len()).as_bytes());
    }
    raw.expect(b"+PONG\r\n");
    // Inline commands, with quotes, as telnet sends them.
    raw.send(b"PING\r\necho \"a b\\r\\n\"\r\n");
    raw.expect(b"+PONG\r\n$5\r\na b\r\n\r\n");
    // Bad commands and arguments get errors; the connection stays.
    raw.command(&[b"NOSUCH", b"x"]);
    raw.expect(b"-ERR unknown command 'nosuch', with args beginning with: 'x' \r\n");
    raw.command(&[b"XADD", b"s"]);
    raw.expect(b"-ERR wrong number of arguments for 'xadd' command\r\n");
    raw.command(&[b"XADD", b"bad\ttopic", b"*", b"f", b"v"]);
    assert!(raw.line().starts_with("-ERR invalid topic"));
    raw.command(&[b"XRANGE", b"s", b"x", b"+"]);
    raw.expect(b"-ERR Invalid stream ID specified as stream command argument\r\n");
    raw.command(&[b"SELECT", b"1"]);
    raw.expect(b"-ERR DB index is out of range\r\n");
    raw.command(&[b"DEL", b"s"]);
    assert!(raw.line().starts_with("-ERR DEL is refused"));
    raw.command(&[b"PING"]);
    raw.expect(b"+PONG\r\n");
    // Broken framing: an error, then the connection closes.
    raw.send(b"*1\r\n$x\r\n");
    raw.expect(b"-ERR Protocol error: invalid bulk length\r\n");
    assert!(raw.closed());
    let mut raw = Raw::connect(server.resp());
    raw.send(b"*1\r\n$99999999999\r\n");
    raw.expect(b"-ERR Protocol error: invalid bulk length\r\n");
    assert!(raw.closed());
    // A browser's request: closed at once, without a reply.
    for request in [&b"POST / HTTP/1.1\r\nHost: x\r\n\r\n"[..], b"GET / HTTP/1.1\r\n\r\n"] {
        let mut raw = Raw::connect(server.resp());
        raw.send(request);
        assert!(raw.closed());
    }
    // RESP3 after HELLO 3: maps and nulls change shape.
    let mut raw = Raw::connect(server.resp());
    raw.command(&[b"HELLO", b"3"]);
    let hello = raw.frame();
    let Value::Array(items) = &hello else { panic!("{hello:?}") };
    assert_eq!(items[4], Value::Bulk(b"proto".to_vec()));
    assert_eq!(items[5], Value::Line(":3".into()));
    assert!(raw.reader.buffer().is_empty());
    raw.command(&[b"XREAD", b"STREAMS", b"none", b"0"]);
    raw.expect(b"_\r\n");
    raw.command(&[b"HELLO", b"4"]);
    raw.expect(b"-NOPROTO unsupported protocol version\r\n");
    raw.command(&[b"QUIT"]);
    raw.expect(b"+OK\r\n");
    assert!(raw.closed());
}

#[test]
fn auth_is_required_where_configured_and_checks_users_and_tokens() {
    let cairn = Cairn::new();
    cairn.ok(&["user", "add", "default"], b"pw1\n");
    cairn.ok(&["user", "add", "reader", "--read", "public.>", "--write", "public.>"], b"pw2\n");
    let token = cairn.ok(&["user", "token", "issue", "reader"], b"")[0]["token"].as_str().unwrap().to_owned();
    let server = Server::start(&cairn, &["--resp-require-auth"]);
    let mut raw = Raw::connect(server.resp());
    raw.command(&[b"PING"]);
    raw.expect(b"-NOAUTH Authentication required.\r\n");
    raw.command(&[b"AUTH", b"wrong"]);
    raw.expect(b"-WRONGPASS invalid username-password pair or user is disabled.\r\n");
    raw.command(&[b"AUTH", b"pw1"]);
    raw.expect(b"+OK\r\n");
    raw.command(&[b"PING"]);
    raw.expect(b"+PONG\r\n");
    let mut raw = Raw::connect(server.resp());
    raw.command(&[b"AUTH", b"reader", b"pw2"]);
    raw.expect(b"+OK\r\n");
    raw.command(&[b"XADD", b"private", b"*", b"f", b"v"]);
    assert!(raw.line().starts_with("-NOPERM user reader may not write private"));
    raw.command(&[b"XADD", b"public.a", b"*", b"f", b"v"]);
    assert!(raw.line().starts_with('$'));
    let _ = raw.line();
    let mut raw = Raw::connect(server.resp());
    let token_args: Vec<&[u8]> = vec![b"AUTH", token.as_bytes()];
    raw.command(&token_args);
    raw.expect(b"+OK\r\n");
    raw.command(&[b"XLEN", b"public.a"]);
    raw.expect(b":1\r\n");
    raw.command(&[b"ACL", b"WHOAMI"]);
    raw.expect(b"$6\r\nreader\r\n");
    // A token as the password of `default` (what redis-py, ioredis and
    // node-redis send when given only a password) or of its own user, in
    // AUTH and in HELLO; never as another user's password.
    for user in [&b"default"[..], b"reader"] {
        let mut raw = Raw::connect(server.resp());
        raw.command(&[b"AUTH", user, token.as_bytes()]);
        raw.expect(b"+OK\r\n");
        raw.command(&[b"ACL", b"WHOAMI"]);
        raw.expect(b"$6\r\nreader\r\n");
        let mut raw = Raw::connect(server.resp());
        raw.command(&[b"HELLO", b"3", b"AUTH", user, token.as_bytes()]);
        assert!(matches!(raw.frame(), crate::resp::Value::Array(_)), "HELLO 3 AUTH {user:?} <token>");
        raw.command(&[b"PING"]);
        raw.expect(b"+PONG\r\n");
    }
    let mut raw = Raw::connect(server.resp());
    raw.command(&[b"AUTH", b"someone", token.as_bytes()]);
    raw.expect(b"-WRONGPASS invalid username-password pair or user is disabled.\r\n");
    raw.command(&[b"AUTH", b"default", b"cairn_0000"]);
    raw.expect(b"-WRONGPASS invalid username-password pair or user is disabled.\r\n");
    raw.command(&[b"AUTH", b"default", b"pw1"]);
    raw.expect(b"+OK\r\n");
    raw.command(&[b"ACL", b"WHOAMI"]);
    raw.expect(b"$7\r\ndefault\r\n");
    raw.command(&[b"ACL", b"SETUSER", b"x"]);
    assert!(raw.line().starts_with("-ERR unknown subcommand 'setuser'"));
    // The appending user is stamped on the event.
    drop(raw);
    drop(server);
    let events = cairn.ok(&["cat", "public.a"], b"");
    assert_eq!(events[0]["user"], "reader");
}

fn client(server: &Server) -> redis::Connection {
    let client = redis::Client::open(format!("redis://{}/", server.resp())).unwrap();
    client.get_connection_with_timeout(Duration::from_secs(10)).unwrap()
}

#[test]
fn redis_crate_streams_and_fields_round_trip() {
    use redis::Commands as _;
    use redis::streams::{StreamRangeReply, StreamReadOptions, StreamReadReply};
    let cairn = Cairn::new();
    let server = Server::start(&cairn, &[]);
    let mut con = client(&server);
    let first: String = con.xadd("orders:1", "*", &[("item", "book"), ("qty", "2")]).unwrap();
    let second: String = con.xadd("orders:1", "*", &[("item", "pen")]).unwrap();
    let (ms1, seq1) = first.split_once('-').unwrap();
    let (ms2, seq2) = second.split_once('-').unwrap();
    assert_eq!((seq1, seq2), ("0", "1"));
    assert!(ms2.parse::<u64>().unwrap() >= ms1.parse::<u64>().unwrap());
    let range: StreamRangeReply = con.xrange_all("orders:1").unwrap();
    assert_eq!(range.ids.len(), 2);
    assert_eq!(range.ids[0].id, first);
    assert_eq!(range.ids[0].get::<String>("item").as_deref(), Some("book"));
    assert_eq!(range.ids[0].get::<String>("qty").as_deref(), Some("2"));
    let exclusive: StreamRangeReply = con.xrange("orders:1", format!("({first}"), "+").unwrap();
    assert_eq!(exclusive.ids.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), vec![second.clone()]);
    let reversed: StreamRangeReply = con.xrevrange_count("orders:1", "+", "-", 1).unwrap();
    assert_eq!(reversed.ids[0].id, second);
    assert_eq!(con.xlen::<_, u64>("orders:1").unwrap(), 2);
    // The same event over HTTP: the fields are a JSON object payload.
    let shown = cairn.ok(&["cat", "orders:1", "--content"], b"");
    assert_eq!(shown[0]["content"], r#"{"item":"book","qty":"2"}"#);
    // An event appended elsewhere reads as type and data fields.
    cairn.ok(&["append", "orders:1", "--type", "Note"], b"plain text");
    let last: StreamRangeReply = con.xrevrange_count("orders:1", "+", "-", 1).unwrap();
    assert_eq!(last.ids[0].get::<String>("type").as_deref(), Some("Note"));
    assert_eq!(last.ids[0].get::<String>("data").as_deref(), Some("plain text"));
    // Binary values round-trip.
    let binary: Vec<u8> = vec![0, 255, 13, 10, 128];
    let id: String = con.xadd("bin", "*", &[(&b"k\xff"[..], &binary[..])]).unwrap();
    let value: redis::Value = redis::cmd("XRANGE").arg("bin").arg(&id).arg(&id).query(&mut con).unwrap();
    let expected = redis::Value::Array(vec![redis::Value::Array(vec![
        redis::Value::BulkString(id.into_bytes()),
        redis::Value::Array(vec![redis::Value::BulkString(b"k\xff".to_vec()), redis::Value::BulkString(binary)]),
    ])]);
    assert_eq!(value, expected);

    // XREAD BLOCK wakes on the commit of a new event (after 0-0 of the
    // empty stream, not `$`: the waiter may start after the XADD).
    let addr = server.resp();
    let waiter = std::thread::spawn(move || {
        let mut con = redis::Client::open(format!("redis://{addr}/")).unwrap().get_connection().unwrap();
        let started = Instant::now();
        let reply: StreamReadReply =
            con.xread_options(&["live"], &["0-0"], &StreamReadOptions::default().block(10_000)).unwrap();
        (reply, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    let _: String = con.xadd("live", "*", &[("n", "1")]).unwrap();
    let (reply, waited) = waiter.join().unwrap();
    assert_eq!(reply.keys.len(), 1);
    assert_eq!(reply.keys[0].ids[0].get::<String>("n").as_deref(), Some("1"));
    assert!(waited < Duration::from_secs(5), "woke after {waited:?}");
    // A timed-out block answers nil.
    let reply: Option<StreamReadReply> =
        con.xread_options(&["live"], &["$"], &StreamReadOptions::default().block(50)).unwrap();
    assert!(reply.is_none());
    // XDEL and XTRIM remove; seqs are never reused.
    let removed: u64 = con.xdel("orders:1", &[&first]).unwrap();
    assert_eq!(removed, 1);
    let trimmed: u64 = redis::cmd("XTRIM").arg("orders:1").arg("MAXLEN").arg(1).query(&mut con).unwrap();
    assert_eq!(trimmed, 1);
    let after: String = con.xadd("orders:1", "*", &[("item", "cup")]).unwrap();
    assert!(after.ends_with("-3"), "{after}");
    let keys: Vec<String> = con.keys("orders:*").unwrap();
    assert_eq!(keys, vec!["orders:1".to_owned()]);
    let kind: String = redis::cmd("TYPE").arg("orders:1").query(&mut con).unwrap();
    assert_eq!(kind, "stream");
}

/// Entry `n` of the stream `long`: its number, then `len` bytes.
fn long_value(n: usize, len: usize) -> String {
    format!("{n:06}-{}", "v".repeat(len))
}

/// Fills the stream `long` with 3,000 entries of field `n` (pipelined).
fn fill_long(con: &mut redis::Connection, len: usize) {
    let mut pipe = redis::pipe();
    for n in 0..3000 {
        pipe.cmd("XADD").arg("long").arg("*").arg("n").arg(long_value(n, len)).ignore();
    }
    pipe.query::<()>(con).unwrap();
}

/// A reply longer than what the server builds before it starts sending
/// (XRANGE writes as it goes): whole and in order, alone, pipelined, in
/// EXEC, and a client that leaves without reading ends only itself.
#[test]
fn long_ranges_go_out_whole_in_order_and_in_exec() {
    use redis::streams::StreamRangeReply;
    let cairn = Cairn::new();
    let server = Server::start(&cairn, &[]);
    let mut con = client(&server);
    let value = |n: usize| long_value(n, 200);
    fill_long(&mut con, 200);
    let check = |range: &StreamRangeReply, reversed: bool| {
        assert_eq!(range.ids.len(), 3000);
        for (i, entry) in range.ids.iter().enumerate() {
            let n = if reversed { 2999 - i } else { i };
            assert!(entry.id.ends_with(&format!("-{n}")), "{} at {i}", entry.id);
            assert_eq!(entry.get::<String>("n"), Some(value(n)));
        }
    };
    let range: StreamRangeReply = redis::cmd("XRANGE").arg("long").arg("-").arg("+").query(&mut con).unwrap();
    check(&range, false);
    let range: StreamRangeReply = redis::cmd("XREVRANGE").arg("long").arg("+").arg("-").query(&mut con).unwrap();
    check(&range, true);
    // Pipelined between other commands, and inside a transaction.
    for atomic in [false, true] {
        let mut pipe = redis::pipe();
        if atomic {
            pipe.atomic();
        }
        pipe.cmd("PING").cmd("XRANGE").arg("long").arg("-").arg("+").cmd("XLEN").arg("long");
        let (pong, range, len): (String, StreamRangeReply, u64) = pipe.query(&mut con).unwrap();
        assert_eq!((pong.as_str(), len), ("PONG", 3000));
        check(&range, false);
    }
    // Clients that ask for long replies and leave without reading them.
    for _ in 0..20 {
        let mut raw = Raw::connect(server.resp());
        raw.send(&encode(&[b"XRANGE", b"long", b"-", b"+"]).repeat(8));
    }
    let pong: String = redis::cmd("PING").query(&mut con).unwrap();
    assert_eq!(pong, "PONG");
    let range: StreamRangeReply =
        redis::cmd("XRANGE").arg("long").arg("-").arg("+").query(&mut client(&server)).unwrap();
    check(&range, false);
}

/// XRANGE and XREVRANGE between any two ids (inclusive or exclusive, of
/// entries that share a millisecond or not), with or without COUNT, give
/// exactly that slice of the stream, also where it spans the server's
/// reads of 4,096 events.
#[test]
fn ranges_are_exact_slices_of_the_stream() {
    use redis::streams::StreamRangeReply;
    let cairn = Cairn::new();
    let server = Server::start(&cairn, &[]);
    let mut con = client(&server);
    let mut pipe = redis::pipe();
    for n in 0..10_000 {
        pipe.cmd("XADD").arg("s").arg("*").arg("n").arg(n).ignore();
    }
    pipe.query::<()>(&mut con).unwrap();
    let all: StreamRangeReply = redis::cmd("XRANGE").arg("s").arg("-").arg("+").query(&mut con).unwrap();
    let ids: Vec<String> = all.ids.iter().map(|entry| entry.id.clone()).collect();
    assert_eq!(ids.len(), 10_000);
    let shared = ids.windows(2).filter(|w| w[0].split('-').next() == w[1].split('-').next()).count();
    assert!(shared > 1000, "only {shared} entries share a millisecond with the one before");
    // A fixed pseudo-random walk over the cases.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = |below: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % below as u64) as usize
    };
    for _ in 0..60 {
        let (a, b) = (next(10_000), next(10_000));
        let (low, high) = (a.min(b), a.max(b));
        let (open_low, open_high) = (next(2) == 1, next(2) == 1);
        let count = [None, Some(1), Some(next(6000) + 1)][next(3)];
        let bound = |at: usize, open: bool| if open { format!("({}", ids[at]) } else { ids[at].clone() };
        let mut want: Vec<&str> = ids[low..=high].iter().map(String::as_str).collect();
        if open_low {
            want.retain(|id| *id != ids[low]);
        }
        if open_high {
            want.retain(|id| *id != ids[high]);
        }
        let reverse = next(2) == 1;
        let mut cmd = if reverse {
            want.reverse();
            let mut cmd = redis::cmd("XREVRANGE");
            cmd.arg("s").arg(bound(high, open_high)).arg(bound(low, open_low));
            cmd
        } else {
            let mut cmd = redis::cmd("XRANGE");
            cmd.arg("s").arg(bound(low, open_low)).arg(bound(high, open_high));
            cmd
        };
        if let Some(count) = count {
            cmd.arg("COUNT").arg(count);
            want.truncate(count);
        }
        let got: StreamRangeReply = cmd.query(&mut con).unwrap();
        let got: Vec<&str> = got.ids.iter().map(|entry| entry.id.as_str()).collect();
        assert_eq!(got, want, "{low}..={high} open {open_low}/{open_high}, count {count:?}, reverse {reverse}");
    }
}

/// A client that asks for long replies and stops reading them is closed
/// once 64 KiB of a reply wait on it too long (10 s), not kept open with
/// the rest of its entries; the other clients never wait on it.
#[test]
fn a_client_that_stops_reading_a_long_range_is_closed() {
    let cairn = Cairn::new();
    let server = Server::start(&cairn, &[]);
    let mut con = client(&server);
    fill_long(&mut con, 1000);
    let mut raw = Raw::connect(server.resp());
    // About 3 MB a reply, 96 MB asked for: far beyond what the sockets buffer.
    raw.send(&encode(&[b"XRANGE", b"long", b"-", b"+"]).repeat(32));
    std::thread::sleep(Duration::from_secs(3));
    let pong: String = redis::cmd("PING").query(&mut con).unwrap();
    assert_eq!(pong, "PONG");
    // The server closes it 10 s after the socket buffers fill (within
    // moments of the request); reading earlier would let it go on.
    std::thread::sleep(Duration::from_secs(13));
    let mut got = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    let started = Instant::now();
    loop {
        match raw.reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n as u64,
            Err(error) => panic!("not closed after {got} bytes ({:?} reading): {error}", started.elapsed()),
        }
    }
    assert!(got < 32 * 3_000_000, "{got} bytes: the whole replies were sent");
    let range: redis::streams::StreamRangeReply =
        redis::cmd("XRANGE").arg("long").arg("-").arg("+").query(&mut con).unwrap();
    assert_eq!(range.ids.len(), 3000);
}

#[test]
fn redis_crate_consumer_groups_compete_claim_and_survive_restart() {
    use redis::Commands as _;
    use redis::streams::{StreamPendingReply, StreamReadOptions, StreamReadReply};
    let cairn = Cairn::new();
    let server = Server::start(&cairn, &[]);
    let mut con = client(&server);
    let mut ids = Vec::new();
    for n in 0..10 {
        let id: String = con.xadd("jobs", "*", &[("n", n.to_string())]).unwrap();
        ids.push(id);
    }
    let created: String = con.xgroup_create("jobs", "workers", "0").unwrap();
    assert_eq!(created, "OK");
    let busy: redis::RedisResult<String> = con.xgroup_create("jobs", "workers", "0");
    assert_eq!(busy.unwrap_err().code(), Some("BUSYGROUP"));
    // Two competing consumers share the entries; none is delivered twice.
    let mut other = client(&server);
    let mut seen = Vec::new();
    for round in 0..5 {
        for (con, name) in [(&mut con, "alice"), (&mut other, "bob")] {
            let options = StreamReadOptions::default().group("workers", name).count(1);
            let reply: StreamReadReply = con.xread_options(&["jobs"], &[">"], &options).unwrap();
            assert_eq!(reply.keys[0].ids.len(), 1, "round {round}");
            seen.push(reply.keys[0].ids[0].id.clone());
        }
    }
    assert_eq!(seen, ids);
    let options = StreamReadOptions::default().group("workers", "alice").count(1);
    let none: Option<StreamReadReply> = con.xread_options(&["jobs"], &[">"], &options).unwrap();
    assert!(none.is_none());
    // Alice acks her first two; the rest stay pending.
    let acked: u64 = con.xack("jobs", "workers", &[&ids[0], &ids[2]]).unwrap();
    assert_eq!(acked, 2);
    let pending: StreamPendingReply = con.xpending("jobs", "workers").unwrap();
    assert_eq!(pending.count(), 8);
    // Bob's entries, idle long enough, are claimed by alice.
    std::thread::sleep(Duration::from_millis(60));
    let claimed: redis::streams::StreamClaimReply =
        con.xclaim("jobs", "workers", "alice", 50, &[&ids[1], &ids[3]]).unwrap();
    assert_eq!(claimed.ids.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), vec![ids[1].clone(), ids[3].clone()]);
    let auto: redis::Value = redis::cmd("XAUTOCLAIM")
        .arg("jobs")
        .arg("workers")
        .arg("carol")
        .arg(0)
        .arg("0")
        .arg("COUNT")
        .arg(2)
        .arg("JUSTID")
        .query(&mut con)
        .unwrap();
    let redis::Value::Array(parts) = auto else { panic!("{auto:?}") };
    assert_eq!(parts.len(), 3);
    // Blocking XREADGROUP wakes on a new entry.
    let addr = server.resp();
    let waiter = std::thread::spawn(move || {
        let mut con = redis::Client::open(format!("redis://{addr}/")).unwrap().get_connection().unwrap();
        let options = StreamReadOptions::default().group("workers", "bob").block(10_000).count(5);
        let reply: StreamReadReply = con.xread_options(&["jobs"], &[">"], &options).unwrap();
        reply.keys[0].ids.iter().map(|e| e.id.clone()).collect::<Vec<_>>()
    });
    std::thread::sleep(Duration::from_millis(200));
    let eleventh: String = con.xadd("jobs", "*", &[("n", "10")]).unwrap();
    assert_eq!(waiter.join().unwrap(), vec![eleventh.clone()]);
    let before: redis::Value =
        redis::cmd("XPENDING").arg("jobs").arg("workers").arg("-").arg("+").arg(100).query(&mut con).unwrap();
    let groups: redis::Value = redis::cmd("XINFO").arg("GROUPS").arg("jobs").query(&mut con).unwrap();
    drop((con, other));

    // After a restart (and after kill -9 below) the group is as it was.
    assert!(server.terminate().success());
    let server = Server::start(&cairn, &[]);
    let mut con = client(&server);
    let after: redis::Value =
        redis::cmd("XPENDING").arg("jobs").arg("workers").arg("-").arg("+").arg(100).query(&mut con).unwrap();
    assert_eq!(pending_ids(&after), pending_ids(&before));
    let acked: u64 = con.xack("jobs", "workers", &[&eleventh]).unwrap();
    assert_eq!(acked, 1);
    server.kill9();
    let server = Server::start(&cairn, &[]);
    let mut con = client(&server);
    let pending: StreamPendingReply = con.xpending("jobs", "workers").unwrap();
    assert_eq!(pending.count(), pending_ids(&before).len() - 1);
    let options = StreamReadOptions::default().group("workers", "alice");
    let none: Option<StreamReadReply> = con.xread_options(&["jobs"], &[">"], &options).unwrap();
    assert!(none.is_none(), "the last delivered id survived");
    let groups_after: redis::Value = redis::cmd("XINFO").arg("GROUPS").arg("jobs").query(&mut con).unwrap();
    let redis::Value::Array(rows) = groups_after else { panic!() };
    let redis::Value::Array(rows_before) = groups else { panic!() };
    assert_eq!(rows.len(), rows_before.len());
    let destroyed: u64 = redis::cmd("XGROUP").arg("DESTROY").arg("jobs").arg("workers").query(&mut con).unwrap();
    assert_eq!(destroyed, 1);
    let missing: redis::RedisResult<redis::Value> = redis::cmd("XPENDING").arg("jobs").arg("workers").query(&mut con);
    assert_eq!(missing.unwrap_err().code(), Some("NOGROUP"));
}

fn pending_ids(reply: &redis::Value) -> Vec<Vec<u8>> {
    let redis::Value::Array(rows) = reply else { panic!("{reply:?}") };
    rows.iter()
        .map(|row| match row {
            redis::Value::Array(fields) => match &fields[0] {
                redis::Value::BulkString(id) => id.clone(),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn redis_cli_session_covers_each_command_family() {
    let cairn = Cairn::new();
    let server = Server::start(&cairn, &[]);
    let port = server.resp().port().to_string();
    let cli = |args: &[&str]| -> String {
        let output = std::process::Command::new("redis-cli")
            .args(["-p", &port])
            .args(args)
            .output()
            .expect("redis-cli is installed (.ci/run installs redis-tools)");
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    assert_eq!(cli(&["PING"]), "PONG\n");
    assert_eq!(cli(&["publish", "ms", "created", "hello"]), "OK\n");
    assert_eq!(cli(&["last-event-number", "ms"]), "last-event-number\nms\n0\n");
    let id = cli(&["XADD", "s", "*", "f", "v"]);
    assert!(id.trim().ends_with("-0"), "{id}");
    assert_eq!(cli(&["XRANGE", "s", "-", "+"]), format!("{id}f\nv\n"));
    assert_eq!(cli(&["XLEN", "s"]), "1\n");
    assert_eq!(cli(&["XGROUP", "CREATE", "s", "g", "0"]), "OK\n");
    assert_eq!(cli(&["XREADGROUP", "GROUP", "g", "c", "STREAMS", "s", ">"]), format!("s\n{id}f\nv\n"));
    assert_eq!(cli(&["XACK", "s", "g", id.trim()]), "1\n");
    assert_eq!(cli(&["EXISTS", "s", "nope"]), "2\n".replace('2', "1"));
    assert_eq!(cli(&["CLIENT", "SETNAME", "me"]), "OK\n");
    assert!(cli(&["INFO", "server"]).contains("redis_version:"));
    assert!(cli(&["INFO", "server"]).contains(&format!("tcp_port:{port}\r\n")), "the port bound, not the 0 asked for");
    assert!(cli(&["COMMAND", "COUNT"]).trim().parse::<u32>().unwrap() > 30);
    // The store's own topics (cairn.start) are not listed, but are there by name.
    assert_eq!(cli(&["DBSIZE"]), "2\n");
    assert_eq!(cli(&["KEYS", "*"]).lines().filter(|key| key.starts_with("cairn.")).count(), 0);
    assert_eq!(cli(&["EXISTS", "cairn.start"]), "1\n");
    // CONFIG GET answers what clients ask, from cairn's settings; SET is refused.
    // (The test servers run with sync none: fdatasync "no".)
    assert_eq!(cli(&["CONFIG", "GET", "appendfsync"]), "appendfsync\nno\n");
    assert_eq!(cli(&["CONFIG", "GET", "databases", "save"]), "databases\n1\nsave\n\n");
    assert_eq!(cli(&["CONFIG", "GET", "port"]), format!("port\n{port}\n"));
    assert_eq!(cli(&["CONFIG", "GET", "nothing-like-it*"]).trim(), "");
    assert!(cli(&["CONFIG", "SET", "appendfsync", "no"]).starts_with("ERR CONFIG SET is not offered"));
    let time = cli(&["TIME"]);
    let parts: Vec<u64> = time.lines().map(|part| part.parse().unwrap()).collect();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(parts.len() == 2 && parts[0].abs_diff(now) < 60 && parts[1] < 1_000_000, "{time}");
    // A session through stdin, as a script would pipe it.
    let mut child = std::process::Command::new("redis-cli")
        .args(["-p", &port])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"PING\nXLEN s\nECHO done\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "PONG\n1\ndone\n");
}

#[test]
fn redis_cli_interactive_mode_starts_and_answers() {
    // redis-cli is interactive only on a terminal: `script` gives it one.
    if std::process::Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: script(1) is not installed");
        return;
    }
    let cairn = Cairn::new();
    let server = Server::start(&cairn, &[]);
    let command = format!("redis-cli -p {}", server.resp().port());
    let child = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut child = crate::KillOnDrop(child);
    let stdin = std::sync::Arc::new(std::sync::Mutex::new(child.0.stdin.take().unwrap()));
    let mut stdout = child.0.stdout.take().unwrap();
    // Line editing asks the terminal where the cursor is (ESC [6n) and
    // waits for the answer: answer as a terminal would.
    let answerer = {
        let stdin = stdin.clone();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let before = seen.windows(4).filter(|w| w == b"\x1b[6n").count();
                seen.extend_from_slice(&buf[..n]);
                let after = seen.windows(4).filter(|w| w == b"\x1b[6n").count();
                for _ in before..after {
                    let _ = stdin.lock().unwrap().write_all(b"\x1b[1;80R");
                }
            }
            String::from_utf8_lossy(&seen).into_owned()
        })
    };
    // Typing `XADD ` shows the hint COMMAND DOCS's argument specs make;
    // Ctrl-U clears the line.
    // (The first after its start and the server's COMMAND DOCS: typed
    // before its prompt, input is flushed away.)
    for (n, input) in [&b"XADD "[..], b"\x15", b"ECHO interactive\r", b"quit\r"].into_iter().enumerate() {
        std::thread::sleep(Duration::from_millis(if n == 0 { 2000 } else { 500 }));
        stdin.lock().unwrap().write_all(input).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "redis-cli did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(stdin);
    let output = answerer.join().unwrap();
    assert!(output.contains("\"interactive\""), "{output}");
    assert!(output.contains("key [NOMKSTREAM] [MAXLEN|MINID"), "no argument hint: {output}");
}

/// Sends one command and returns its whole reply.
pub(crate) fn ask(raw: &mut Raw, args: &[&[u8]]) -> Value {
    raw.command(args);
    raw.frame()
}

pub(crate) fn bulk(text: &str) -> Value {
    Value::Bulk(text.as_bytes().to_vec())
}

pub(crate) fn line(text: &str) -> Value {
    Value::Line(text.to_owned())
}

pub(crate) fn array(items: Vec<Value>) -> Value {
    Value::Array(items)
}

#[test]
fn the_rest_of_the_command_surface_answers_as_redis_does() {
    let cairn = Cairn::new();
    let server = Server::start(&cairn, &[]);
    let mut raw = Raw::connect(server.resp());
    // Connection commands.
    assert_eq!(ask(&mut raw, &[b"CLIENT", b"GETNAME"]), line("$-1"));
    assert_eq!(ask(&mut raw, &[b"CLIENT", b"SETNAME", b"worker-1"]), line("+OK"));
    assert_eq!(ask(&mut raw, &[b"CLIENT", b"GETNAME"]), bulk("worker-1"));
    assert!(ask(&mut raw, &[b"CLIENT", b"SETNAME", b"has space"]).to_string_lossy().starts_with("-ERR"));
    let Value::Line(id) = ask(&mut raw, &[b"CLIENT", b"ID"]) else { panic!() };
    let Value::Bulk(info) = ask(&mut raw, &[b"CLIENT", b"INFO"]) else { panic!() };
    assert!(String::from_utf8_lossy(&info).starts_with(&format!("id={} ", &id[1..])), "{info:?}");
    assert_eq!(ask(&mut raw, &[b"CLIENT", b"SETINFO", b"LIB-NAME", b"test"]), line("+OK"));
    assert_eq!(ask(&mut raw, &[b"RESET"]), line("+RESET"));
    assert_eq!(ask(&mut raw, &[b"CLIENT", b"GETNAME"]), line("$-1"));
    assert_eq!(ask(&mut raw, &[b"ECHO", b"a\r\nb"]), bulk("a\r\nb"));
    assert_eq!(ask(&mut raw, &[b"PING", b"hi"]), bulk("hi"));
    assert_eq!(ask(&mut raw, &[b"SELECT", b"0"]), line("+OK"));
    let Value::Array(info) = ask(&mut raw, &[b"COMMAND", b"INFO", b"xadd", b"nosuch"]) else { panic!() };
    assert_eq!(
        info[0],
        array(vec![
            bulk("xadd"),
            line(":-5"),
            array(vec![line("+write"), line("+fast")]),
            line(":1"),
            line(":1"),
            line(":1"),
            array(vec![]),
            array(vec![]),
            array(vec![]),
            array(vec![]),
        ])
    );
    assert_eq!(info[1], line("*-1"));

    // XADD options: NOMKSTREAM on a missing key, MAXLEN and MINID trims.
    assert_eq!(ask(&mut raw, &[b"XADD", b"s", b"NOMKSTREAM", b"*", b"f", b"v"]), line("$-1"));
    let mut ids = Vec::new();
    for n in 0..6 {
        let Value::Bulk(id) = ask(&mut raw, &[b"XADD", b"s", b"*", b"n", n.to_string().as_bytes()]) else { panic!() };
        ids.push(String::from_utf8(id).unwrap());
    }
    let Value::Bulk(id) = ask(&mut raw, &[b"XADD", b"s", b"MAXLEN", b"~", b"5", b"*", b"n", b"6"]) else { panic!() };
    ids.push(String::from_utf8(id).unwrap());
    assert_eq!(ask(&mut raw, &[b"XLEN", b"s"]), line(":5"));
    assert_eq!(ask(&mut raw, &[b"XTRIM", b"s", b"MINID", ids[4].as_bytes()]), line(":2"));
    let Value::Array(kept) = ask(&mut raw, &[b"XRANGE", b"s", b"-", b"+"]) else { panic!() };
    let kept: Vec<Value> = kept
        .into_iter()
        .map(|entry| match entry {
            Value::Array(mut parts) => parts.remove(0),
            other => other,
        })
        .collect();
    assert_eq!(kept, ids[4..].iter().map(|id| bulk(id)).collect::<Vec<_>>());
    // XREAD with + gives the last entry; XREVRANGE with exclusive bounds.
    let last =
        array(vec![array(vec![bulk("s"), array(vec![array(vec![bulk(&ids[6]), array(vec![bulk("n"), bulk("6")])])])])]);
    assert_eq!(ask(&mut raw, &[b"XREAD", b"STREAMS", b"s", b"+"]), last);
    let excl = format!("({}", ids[6]);
    let Value::Array(before) = ask(&mut raw, &[b"XREVRANGE", b"s", excl.as_bytes(), b"-"]) else { panic!() };
    assert_eq!(before.len(), 2);
    // Keys over topics.
    assert_eq!(ask(&mut raw, &[b"EXISTS", b"s", b"nope", b"s"]), line(":2"));
    assert_eq!(ask(&mut raw, &[b"TYPE", b"nope"]), line("+none"));
    let Value::Array(scan) = ask(&mut raw, &[b"SCAN", b"0", b"MATCH", b"s*", b"COUNT", b"100"]) else { panic!() };
    assert_eq!(scan, vec![bulk("0"), array(vec![bulk("s")])]);
    let Value::Bulk(info) = ask(&mut raw, &[b"INFO", b"keyspace"]) else { panic!() };
    // `s`; the store's own cairn.start is not counted, as DBSIZE does not.
    assert!(String::from_utf8_lossy(&info).contains("db0:keys=1,"), "{info:?}");

    // Groups: SETID, CREATECONSUMER, DELCONSUMER, XPENDING IDLE, XINFO.
    assert!(ask(&mut raw, &[b"XGROUP", b"CREATE", b"nope", b"g", b"$"]).to_string_lossy().contains("MKSTREAM"));
    assert_eq!(ask(&mut raw, &[b"XGROUP", b"CREATE", b"fresh", b"g", b"$", b"MKSTREAM"]), line("+OK"));
    assert_eq!(ask(&mut raw, &[b"XGROUP", b"CREATE", b"s", b"g", b"0"]), line("+OK"));
    assert_eq!(ask(&mut raw, &[b"XGROUP", b"CREATECONSUMER", b"s", b"g", b"c1"]), line(":1"));
    assert_eq!(ask(&mut raw, &[b"XGROUP", b"CREATECONSUMER", b"s", b"g", b"c1"]), line(":0"));
    let Value::Array(read) = ask(&mut raw, &[b"XREADGROUP", b"GROUP", b"g", b"c1", b"STREAMS", b"s", b">"]) else {
        panic!()
    };
    assert_eq!(read.len(), 1);
    let Value::Array(idle) = ask(&mut raw, &[b"XPENDING", b"s", b"g", b"IDLE", b"60000", b"-", b"+", b"10"]) else {
        panic!()
    };
    assert!(idle.is_empty(), "nothing has been idle for a minute");
    let Value::Array(all) = ask(&mut raw, &[b"XPENDING", b"s", b"g", b"-", b"+", b"10", b"c1"]) else { panic!() };
    assert_eq!(all.len(), 3);
    let Value::Array(consumers) = ask(&mut raw, &[b"XINFO", b"CONSUMERS", b"s", b"g"]) else { panic!() };
    assert_eq!(consumers.len(), 1);
    let Value::Array(stream) = ask(&mut raw, &[b"XINFO", b"STREAM", b"s"]) else { panic!() };
    assert_eq!(stream[0..2], [bulk("length"), line(":3")]);
    assert_eq!(stream[14..16], [bulk("groups"), line(":1")]);
    // History re-delivery of c1's own pending entries, then SETID back.
    let Value::Array(history) = ask(&mut raw, &[b"XREADGROUP", b"GROUP", b"g", b"c1", b"STREAMS", b"s", b"0"]) else {
        panic!()
    };
    let Value::Array(key_and_entries) = &history[0] else { panic!() };
    assert_eq!(key_and_entries[1].len(), 3);
    assert_eq!(ask(&mut raw, &[b"XGROUP", b"DELCONSUMER", b"s", b"g", b"c1"]), line(":3"));
    assert_eq!(
        ask(&mut raw, &[b"XPENDING", b"s", b"g"]),
        array(vec![line(":0"), line("$-1"), line("$-1"), line("*-1")])
    );
    assert_eq!(ask(&mut raw, &[b"XGROUP", b"SETID", b"s", b"g", b"0"]), line("+OK"));
    let Value::Array(again) =
        ask(&mut raw, &[b"XREADGROUP", b"GROUP", b"g", b"c2", b"COUNT", b"1", b"STREAMS", b"s", b">"])
    else {
        panic!()
    };
    assert_eq!(again.len(), 1);
    assert!(ask(&mut raw, &[b"XGROUP", b"SETID", b"s", b"nosuch", b"0"]).to_string_lossy().starts_with("-NOGROUP"));
    assert_eq!(ask(&mut raw, &[b"XGROUP", b"DESTROY", b"s", b"nosuch"]), line(":0"));
}

impl Value {
    fn to_string_lossy(&self) -> String {
        match self {
            Value::Line(line) => line.clone(),
            other => format!("{other:?}"),
        }
    }

    fn len(&self) -> usize {
        match self {
            Value::Array(items) => items.len(),
            _ => 0,
        }
    }
}

#[test]
fn del_removes_a_topics_events_only_when_deletes_are_enabled() {
    let cairn = Cairn::new();
    let server = Server::start(&cairn, &["--allow-delete"]);
    let mut raw = Raw::connect(server.resp());
    for n in 0..3 {
        assert!(matches!(ask(&mut raw, &[b"XADD", b"s", b"*", b"n", n.to_string().as_bytes()]), Value::Bulk(_)));
    }
    assert_eq!(ask(&mut raw, &[b"DEL", b"s", b"nope"]), line(":1"));
    assert_eq!(ask(&mut raw, &[b"XLEN", b"s"]), line(":0"));
    assert_eq!(ask(&mut raw, &[b"EXISTS", b"s"]), line(":0"));
    // Seqs are never reused.
    let Value::Bulk(id) = ask(&mut raw, &[b"XADD", b"s", b"*", b"n", b"3"]) else { panic!() };
    assert!(String::from_utf8(id).unwrap().ends_with("-3"));
}
