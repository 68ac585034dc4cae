//! Redis as client libraries use it, against a real `cairn serve`:
//! transactions (MULTI/EXEC/DISCARD/WATCH) and Redis pub/sub beside
//! MeiliES's commands over raw sockets, then the real libraries (redis-py,
//! ioredis, node-redis) where they are installed (`.ci/run` installs them).

use crate::Cairn;
use crate::resp::{Raw, Value};
use crate::serve::Server;

fn line(text: &str) -> Value {
    Value::Line(text.to_owned())
}

/// A connection authenticated as `user`.
fn login(server: &Server, user: &[u8], password: &[u8]) -> Raw {
    let mut raw = Raw::connect(server.resp());
    raw.command(&[b"AUTH", user, password]);
    raw.expect(b"+OK\r\n");
    raw
}

/// Waits (at most `seconds`) until `channel` has no subscriber.
fn wait_uncounted(raw: &mut Raw, channel: &[u8], seconds: u64, why: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        raw.command(&[b"PUBSUB", b"NUMSUB", channel]);
        if raw.frame() == Value::Array(vec![Value::Bulk(channel.to_vec()), line(":0")]) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{why}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn xlen(raw: &mut Raw, key: &[u8]) -> String {
    raw.command(&[b"XLEN", key]);
    raw.line()
}

#[test]
fn transactions_queue_then_commit_their_appends_as_one_batch() {
    let cairn = Cairn::new();
    let server = Server::start(&cairn, &[]);
    let mut raw = Raw::connect(server.resp());

    // Queued commands run at EXEC; a read placed before the first append
    // sees the store without the transaction's appends.
    raw.command(&[b"MULTI"]);
    raw.expect(b"+OK\r\n");
    raw.command(&[b"XLEN", b"orders"]);
    raw.expect(b"+QUEUED\r\n");
    raw.command(&[b"XADD", b"orders", b"*", b"item", b"1"]);
    raw.expect(b"+QUEUED\r\n");
    raw.command(&[b"publish", b"audit", b"ordered", b"{}"]);
    raw.expect(b"+QUEUED\r\n");
    raw.command(&[b"XADD", b"orders", b"MAXLEN", b"5", b"*", b"item", b"2"]);
    raw.expect(b"+QUEUED\r\n");
    raw.command(&[b"XLEN", b"orders"]);
    raw.expect(b"+QUEUED\r\n");
    // Nothing ran yet: another connection sees nothing.
    let mut other = Raw::connect(server.resp());
    assert_eq!(xlen(&mut other, b"orders"), ":0");
    raw.command(&[b"EXEC"]);
    let Value::Array(replies) = raw.frame() else { panic!("EXEC answers an array") };
    assert_eq!(replies.len(), 5, "{replies:?}");
    assert_eq!(replies[0], line(":0"));
    let (Value::Bulk(first), Value::Bulk(second)) = (&replies[1], &replies[3]) else { panic!("{replies:?}") };
    assert!(first.ends_with(b"-0") && second.ends_with(b"-1"), "{replies:?}");
    assert_eq!(replies[2], line("+OK"));
    assert_eq!(replies[4], line(":2"));
    // The three appends, and only they, are in the store.
    drop(raw);
    let all = cairn.ok(&["cat", "*"], b"");
    assert_eq!(all.len(), 3, "{all:?}");

    // A queued command with a syntax, arity or unknown-command error, or
    // one the user may not run, makes EXEC answer EXECABORT: nothing applied.
    let mut raw = Raw::connect(server.resp());
    for bad in [
        &[&b"XADD"[..], b"orders"][..],
        &[b"XADD", b"orders", b"MAXLEN", b"x", b"*", b"f", b"v"],
        &[b"XADD", b"orders", b"*", b"odd"],
        &[b"NOSUCHCOMMAND", b"x"],
        &[b"XADD", b"bad\nkey", b"*", b"f", b"v"],
        &[b"subscribe", b"orders"],
    ] {
        raw.command(&[b"MULTI"]);
        raw.expect(b"+OK\r\n");
        raw.command(&[b"XADD", b"orders", b"*", b"item", b"x"]);
        raw.expect(b"+QUEUED\r\n");
        raw.command(bad);
        assert!(raw.line().starts_with("-ERR"), "{bad:?}");
        raw.command(&[b"XADD", b"orders", b"*", b"item", b"y"]);
        raw.expect(b"+QUEUED\r\n");
        raw.command(&[b"EXEC"]);
        raw.expect(b"-EXECABORT Transaction discarded because of previous errors.\r\n");
        assert_eq!(xlen(&mut raw, b"orders"), ":2", "{bad:?}");
    }

    // An append refused at commit (an event name over 255 bytes) refuses
    // the whole batch: every append answers the error, none is applied.
    let long_name = vec![b'n'; 300];
    raw.command(&[b"MULTI"]);
    raw.expect(b"+OK\r\n");
    raw.command(&[b"XADD", b"orders", b"*", b"item", b"3"]);
    raw.expect(b"+QUEUED\r\n");
    raw.command(&[b"publish", b"audit", &long_name, b"{}"]);
    raw.expect(b"+QUEUED\r\n");
    raw.command(&[b"EXEC"]);
    let Value::Array(replies) = raw.frame() else { panic!("EXEC answers an array") };
    assert!(replies.iter().all(|reply| matches!(reply, Value::Line(text) if text.starts_with("-ERR"))), "{replies:?}");
    assert_eq!(xlen(&mut raw, b"orders"), ":2");

    // DISCARD drops the queue; control commands outside a transaction.
    raw.command(&[b"MULTI"]);
    raw.expect(b"+OK\r\n");
    raw.command(&[b"XADD", b"orders", b"*", b"item", b"4"]);
    raw.expect(b"+QUEUED\r\n");
    raw.command(&[b"MULTI"]);
    raw.expect(b"-ERR MULTI calls can not be nested\r\n");
    raw.command(&[b"WATCH", b"orders"]);
    raw.expect(b"-ERR WATCH inside MULTI is not allowed\r\n");
    raw.command(&[b"DISCARD"]);
    raw.expect(b"+OK\r\n");
    raw.command(&[b"EXEC"]);
    raw.expect(b"-ERR EXEC without MULTI\r\n");
    raw.command(&[b"DISCARD"]);
    raw.expect(b"-ERR DISCARD without MULTI\r\n");
    assert_eq!(xlen(&mut raw, b"orders"), ":2");

    // A blocking read inside EXEC answers at once; NOMKSTREAM onto a
    // missing stream answers null and does not stop the other appends.
    raw.command(&[b"MULTI"]);
    raw.expect(b"+OK\r\n");
    raw.command(&[b"XREAD", b"BLOCK", b"0", b"STREAMS", b"orders", b"$"]);
    raw.expect(b"+QUEUED\r\n");
    raw.command(&[b"XADD", b"missing", b"NOMKSTREAM", b"*", b"f", b"v"]);
    raw.expect(b"+QUEUED\r\n");
    raw.command(&[b"XADD", b"orders", b"NOMKSTREAM", b"*", b"item", b"5"]);
    raw.expect(b"+QUEUED\r\n");
    raw.command(&[b"EXEC"]);
    let Value::Array(replies) = raw.frame() else { panic!("EXEC answers an array") };
    assert_eq!(replies[0], line("*-1"));
    assert_eq!(replies[1], line("$-1"));
    assert!(matches!(&replies[2], Value::Bulk(id) if id.ends_with(b"-2")), "{replies:?}");
    raw.command(&[b"EXISTS", b"missing"]);
    raw.expect(b":0\r\n");

    // RESP3: the same shapes, null as `_`.
    raw.command(&[b"HELLO", b"3"]);
    let _ = raw.frame();
    raw.command(&[b"MULTI"]);
    raw.expect(b"+OK\r\n");
    raw.command(&[b"XLEN", b"orders"]);
    raw.expect(b"+QUEUED\r\n");
    raw.command(&[b"EXEC"]);
    raw.expect(b"*1\r\n:3\r\n");
}

#[test]
fn watch_aborts_exec_when_a_watched_topic_gained_or_lost_entries() {
    let cairn = Cairn::new();
    let server = Server::start(&cairn, &[]);
    let mut raw = Raw::connect(server.resp());
    let mut other = Raw::connect(server.resp());
    other.command(&[b"XADD", b"stock", b"*", b"n", b"1"]);
    let _ = other.frame();

    // Unchanged: EXEC runs.
    raw.command(&[b"WATCH", b"stock", b"never-written"]);
    raw.expect(b"+OK\r\n");
    raw.command(&[b"MULTI"]);
    raw.expect(b"+OK\r\n");
    raw.command(&[b"XADD", b"orders", b"*", b"n", b"1"]);
    raw.expect(b"+QUEUED\r\n");
    raw.command(&[b"EXEC"]);
    assert!(matches!(raw.frame(), Value::Array(replies) if replies.len() == 1));

    // Gained an entry from another connection: null, nothing applied.
    raw.command(&[b"WATCH", b"stock"]);
    raw.expect(b"+OK\r\n");
    other.command(&[b"XADD", b"stock", b"*", b"n", b"2"]);
    let Value::Bulk(second) = other.frame() else { panic!("XADD answers the id") };
    raw.command(&[b"MULTI"]);
    raw.expect(b"+OK\r\n");
    raw.command(&[b"XADD", b"orders", b"*", b"n", b"2"]);
    raw.expect(b"+QUEUED\r\n");
    raw.command(&[b"EXEC"]);
    raw.expect(b"*-1\r\n");
    assert_eq!(xlen(&mut raw, b"orders"), ":1");

    // Lost an entry: null too. EXEC forgot the watch, so the next runs.
    raw.command(&[b"WATCH", b"stock"]);
    raw.expect(b"+OK\r\n");
    other.command(&[b"XDEL", b"stock", &second]);
    other.expect(b":1\r\n");
    raw.command(&[b"MULTI"]);
    raw.expect(b"+OK\r\n");
    raw.command(&[b"XADD", b"orders", b"*", b"n", b"3"]);
    raw.expect(b"+QUEUED\r\n");
    raw.command(&[b"EXEC"]);
    raw.expect(b"*-1\r\n");
    raw.command(&[b"MULTI"]);
    raw.expect(b"+OK\r\n");
    raw.command(&[b"XADD", b"orders", b"*", b"n", b"4"]);
    raw.expect(b"+QUEUED\r\n");
    raw.command(&[b"EXEC"]);
    assert!(matches!(raw.frame(), Value::Array(replies) if replies.len() == 1));
    assert_eq!(xlen(&mut raw, b"orders"), ":2");

    // A watched topic that did not exist and now does; UNWATCH forgets.
    raw.command(&[b"WATCH", b"fresh"]);
    raw.expect(b"+OK\r\n");
    other.command(&[b"XADD", b"fresh", b"*", b"n", b"1"]);
    let _ = other.frame();
    raw.command(&[b"MULTI"]);
    raw.expect(b"+OK\r\n");
    raw.command(&[b"EXEC"]);
    raw.expect(b"*-1\r\n");
    raw.command(&[b"WATCH", b"fresh"]);
    raw.expect(b"+OK\r\n");
    other.command(&[b"XADD", b"fresh", b"*", b"n", b"2"]);
    let _ = other.frame();
    raw.command(&[b"UNWATCH"]);
    raw.expect(b"+OK\r\n");
    raw.command(&[b"MULTI"]);
    raw.expect(b"+OK\r\n");
    raw.command(&[b"EXEC"]);
    raw.expect(b"*0\r\n");
}

#[test]
fn transactions_are_authorized_per_command_and_bounded() {
    let cairn = Cairn::new();
    cairn.ok(&["user", "add", "admin", "--admin"], b"pw0\n");
    cairn.ok(&["user", "add", "alice", "--read", "alice.>", "--write", "alice.>"], b"pw1\n");
    let server = Server::start(&cairn, &["--resp-require-auth"]);
    let mut raw = Raw::connect(server.resp());
    // Before AUTH nothing queues.
    raw.command(&[b"MULTI"]);
    raw.expect(b"-NOAUTH Authentication required.\r\n");
    raw.command(&[b"AUTH", b"alice", b"pw1"]);
    raw.expect(b"+OK\r\n");
    // Another user's topic: NOPERM at queue time, EXECABORT, nothing applied.
    raw.command(&[b"MULTI"]);
    raw.expect(b"+OK\r\n");
    raw.command(&[b"XADD", b"alice.a", b"*", b"f", b"v"]);
    raw.expect(b"+QUEUED\r\n");
    raw.command(&[b"XADD", b"bob.a", b"*", b"f", b"v"]);
    assert!(raw.line().starts_with("-NOPERM"));
    raw.command(&[b"EXEC"]);
    raw.expect(b"-EXECABORT Transaction discarded because of previous errors.\r\n");
    raw.command(&[b"WATCH", b"bob.a"]);
    assert!(raw.line().starts_with("-NOPERM"));
    // A queued read of another user's topic fails inside EXEC, alone.
    raw.command(&[b"MULTI"]);
    raw.expect(b"+OK\r\n");
    raw.command(&[b"XADD", b"alice.a", b"*", b"f", b"v"]);
    raw.expect(b"+QUEUED\r\n");
    raw.command(&[b"XRANGE", b"bob.a", b"-", b"+"]);
    raw.expect(b"+QUEUED\r\n");
    raw.command(&[b"EXEC"]);
    let Value::Array(replies) = raw.frame() else { panic!("EXEC answers an array") };
    assert!(matches!(&replies[0], Value::Bulk(_)), "{replies:?}");
    assert!(matches!(&replies[1], Value::Line(error) if error.starts_with("-NOPERM")), "{replies:?}");
    // One EXEC's replies are bounded: reads past 64 MiB answer an error.
    let value = vec![b'v'; 4 * 1024 * 1024];
    for _ in 0..2 {
        raw.command(&[b"XADD", b"alice.large", b"*", b"f", &value]);
        assert!(matches!(raw.frame(), Value::Bulk(_)));
    }
    raw.command(&[b"MULTI"]);
    raw.expect(b"+OK\r\n");
    for _ in 0..12 {
        raw.command(&[b"XRANGE", b"alice.large", b"-", b"+"]);
        raw.expect(b"+QUEUED\r\n");
    }
    raw.command(&[b"EXEC"]);
    let Value::Array(replies) = raw.frame() else { panic!("EXEC answers an array") };
    assert_eq!(replies.len(), 12);
    assert!(matches!(&replies[0], Value::Array(entries) if entries.len() == 2));
    assert!(
        matches!(&replies[11], Value::Line(error) if error.contains("replies passed 64 MiB")),
        "{:?}",
        &replies[11]
    );
    // A queue that grows past its bound is refused and dropped.
    raw.command(&[b"MULTI"]);
    raw.expect(b"+OK\r\n");
    let big = vec![b'x'; 1024 * 1024];
    let mut refused = false;
    for _ in 0..80 {
        raw.command(&[b"XADD", b"alice.big", b"*", b"f", &big]);
        let reply = raw.line();
        if reply.starts_with("-ERR a transaction queues at most") {
            refused = true;
            break;
        }
        assert_eq!(reply, "+QUEUED");
    }
    assert!(refused, "a 80 MiB transaction was queued");
    raw.command(&[b"EXEC"]);
    raw.expect(b"-EXECABORT Transaction discarded because of previous errors.\r\n");
    raw.command(&[b"EXISTS", b"alice.big"]);
    raw.expect(b":0\r\n");
}

/// Reads one push and returns its parts as text.
fn push_parts(raw: &mut Raw) -> Vec<String> {
    let Value::Array(parts) = raw.frame() else { panic!("a push is an array") };
    parts
        .into_iter()
        .map(|part| match part {
            Value::Bulk(bytes) => String::from_utf8(bytes).unwrap(),
            Value::Line(line) => line,
            Value::Array(_) => panic!("nested"),
        })
        .collect()
}

#[test]
fn redis_pub_sub_beside_meilies_subscriptions() {
    let cairn = Cairn::new();
    let server = Server::start(&cairn, &[]);
    let mut sub = Raw::connect(server.resp());
    sub.command(&[b"SUBSCRIBE", b"news", b"chat"]);
    assert_eq!(push_parts(&mut sub), ["subscribe", "news", ":1"]);
    assert_eq!(push_parts(&mut sub), ["subscribe", "chat", ":2"]);
    sub.command(&[b"PSUBSCRIBE", b"n*"]);
    assert_eq!(push_parts(&mut sub), ["psubscribe", "n*", ":3"]);
    // Subscribed mode (RESP2): other commands are refused, PING answers.
    sub.command(&[b"XLEN", b"news"]);
    assert!(sub.line().starts_with("-ERR Can't execute 'xlen'"));
    sub.command(&[b"PING"]);
    assert_eq!(push_parts(&mut sub), ["pong", ""]);

    // A MeiliES client on its own connection: same names, its own replies.
    let mut meilies = Raw::connect(server.resp());
    meilies.command(&[b"subscribe", b"news"]);
    meilies.expect(b"*2\r\n+subscribed\r\n+news\r\n");

    let mut publisher = Raw::connect(server.resp());
    publisher.command(&[b"PUBLISH", b"news", b"hello"]);
    publisher.expect(b":2\r\n");
    assert_eq!(push_parts(&mut sub), ["message", "news", "hello"]);
    assert_eq!(push_parts(&mut sub), ["pmessage", "n*", "news", "hello"]);
    publisher.command(&[b"PUBLISH", b"nobody", b"x"]);
    publisher.expect(b":1\r\n"); // the pattern n*
    assert_eq!(push_parts(&mut sub), ["pmessage", "n*", "nobody", "x"]);
    publisher.command(&[b"PUBLISH", b"other", b"x"]);
    publisher.expect(b":0\r\n");
    // Pub/sub messages are not events: nothing was appended.
    publisher.command(&[b"EXISTS", b"news", b"nobody"]);
    publisher.expect(b":0\r\n");
    // MeiliES's publish (three arguments) appends, and its subscriber gets it.
    publisher.command(&[b"publish", b"news", b"posted", b"data"]);
    publisher.expect(b"+OK\r\n");
    meilies.expect(b"*5\r\n+event\r\n+news\r\n:0\r\n+posted\r\n$4\r\ndata\r\n");

    publisher.command(&[b"PUBSUB", b"CHANNELS"]);
    publisher.expect(b"*2\r\n$4\r\nchat\r\n$4\r\nnews\r\n");
    publisher.command(&[b"PUBSUB", b"CHANNELS", b"n*"]);
    publisher.expect(b"*1\r\n$4\r\nnews\r\n");
    publisher.command(&[b"PUBSUB", b"NUMSUB", b"news", b"other"]);
    publisher.expect(b"*4\r\n$4\r\nnews\r\n:1\r\n$5\r\nother\r\n:0\r\n");
    publisher.command(&[b"PUBSUB", b"NUMPAT"]);
    publisher.expect(b":1\r\n");

    sub.command(&[b"UNSUBSCRIBE", b"chat"]);
    assert_eq!(push_parts(&mut sub), ["unsubscribe", "chat", ":2"]);
    sub.command(&[b"PUNSUBSCRIBE"]);
    assert_eq!(push_parts(&mut sub), ["punsubscribe", "n*", ":1"]);
    sub.command(&[b"UNSUBSCRIBE"]);
    assert_eq!(push_parts(&mut sub), ["unsubscribe", "news", ":0"]);
    sub.command(&[b"UNSUBSCRIBE"]);
    assert_eq!(push_parts(&mut sub), ["unsubscribe", "$-1", ":0"]);
    // Out of subscribed mode: commands run again.
    sub.command(&[b"XLEN", b"news"]);
    sub.expect(b":1\r\n");

    // RESP3: pushes are `>`, and other commands run while subscribed.
    let mut resp3 = Raw::connect(server.resp());
    resp3.command(&[b"HELLO", b"3"]);
    let _ = resp3.frame();
    resp3.command(&[b"SUBSCRIBE", b"q"]);
    resp3.expect(b">3\r\n$9\r\nsubscribe\r\n$1\r\nq\r\n:1\r\n");
    resp3.command(&[b"XLEN", b"news"]);
    resp3.expect(b":1\r\n");
    publisher.command(&[b"PUBLISH", b"q", b"hi"]);
    publisher.expect(b":1\r\n");
    resp3.expect(b">3\r\n$7\r\nmessage\r\n$1\r\nq\r\n$2\r\nhi\r\n");

    // A connection that leaves is no longer counted.
    drop(resp3);
    wait_uncounted(&mut publisher, b"q", 10, "a closed subscriber stayed counted");

    // Channel names follow the topic rules; the bound on subscriptions.
    publisher.command(&[b"PUBLISH", b"bad\nname", b"x"]);
    assert!(publisher.line().starts_with("-ERR invalid channel"));
    let names: Vec<Vec<u8>> = (0..10_001).map(|n| format!("c{n}").into_bytes()).collect();
    let mut command: Vec<&[u8]> = vec![b"SUBSCRIBE"];
    command.extend(names.iter().map(Vec::as_slice));
    let mut many = Raw::connect(server.resp());
    many.command(&command);
    assert!(many.line().contains("at most 10000 channel and pattern subscriptions"));
}

#[test]
fn pub_sub_is_authorized_like_topics_and_never_waits_for_a_subscriber() {
    let cairn = Cairn::new();
    cairn.ok(&["user", "add", "alice", "--read", "alice.>", "--write", "alice.>"], b"pw1\n");
    cairn.ok(&["user", "add", "bob", "--read", "bob.>", "--write", "bob.>"], b"pw2\n");
    let server = Server::start(&cairn, &["--resp-require-auth"]);
    let login = |user: &[u8], password: &[u8]| login(&server, user, password);
    let mut alice = login(b"alice", b"pw1");
    let mut bob = login(b"bob", b"pw2");
    // Nothing before AUTH.
    let mut stranger = Raw::connect(server.resp());
    stranger.command(&[b"SUBSCRIBE", b"alice.news"]);
    stranger.expect(b"-NOAUTH Authentication required.\r\n");
    stranger.command(&[b"PUBLISH", b"alice.news", b"x"]);
    stranger.expect(b"-NOAUTH Authentication required.\r\n");
    // Another user's channels: refused, all or none.
    alice.command(&[b"SUBSCRIBE", b"alice.news", b"bob.news"]);
    assert!(alice.line().starts_with("-NOPERM"));
    alice.command(&[b"PUBLISH", b"bob.news", b"x"]);
    assert!(alice.line().starts_with("-NOPERM"));
    // A pattern receives only the channels its user may read.
    alice.command(&[b"PSUBSCRIBE", b"*"]);
    assert_eq!(push_parts(&mut alice), ["psubscribe", "*", ":1"]);
    bob.command(&[b"SUBSCRIBE", b"bob.news"]);
    assert_eq!(push_parts(&mut bob), ["subscribe", "bob.news", ":1"]);
    let mut bob_publisher = login(b"bob", b"pw2");
    bob_publisher.command(&[b"PUBLISH", b"bob.news", b"secret"]);
    bob_publisher.expect(b":1\r\n");
    assert_eq!(push_parts(&mut bob), ["message", "bob.news", "secret"]);
    let mut alice_publisher = login(b"alice", b"pw1");
    alice_publisher.command(&[b"PUBLISH", b"alice.news", b"mine"]);
    alice_publisher.expect(b":1\r\n");
    // The first thing alice's pattern delivers is her own channel's.
    assert_eq!(push_parts(&mut alice), ["pmessage", "*", "alice.news", "mine"]);
    // Bob's channels are not listed or counted for alice.
    alice_publisher.command(&[b"PUBSUB", b"CHANNELS"]);
    alice_publisher.expect(b"*0\r\n");
    alice_publisher.command(&[b"PUBSUB", b"NUMSUB", b"bob.news"]);
    alice_publisher.expect(b"*2\r\n$8\r\nbob.news\r\n:0\r\n");
    alice_publisher.command(&[b"PUBSUB", b"NUMPAT"]);
    alice_publisher.expect(b":1\r\n");
    bob_publisher.command(&[b"PUBSUB", b"NUMPAT"]);
    bob_publisher.expect(b":0\r\n");

    // A subscriber that never reads: the publisher is never held up, and
    // the subscriber is disconnected once its queue is full.
    alice.command(&[b"PUNSUBSCRIBE"]);
    assert_eq!(push_parts(&mut alice), ["punsubscribe", "*", ":0"]);
    let mut idle = login(b"alice", b"pw1");
    idle.command(&[b"SUBSCRIBE", b"alice.flood"]);
    assert_eq!(push_parts(&mut idle), ["subscribe", "alice.flood", ":1"]);
    let message = vec![b'm'; 64 * 1024];
    let started = std::time::Instant::now();
    let mut reached = Vec::new();
    for _ in 0..2_000 {
        alice_publisher.command(&[b"PUBLISH", b"alice.flood", &message]);
        reached.push(alice_publisher.line());
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert_eq!(reached[0], ":1");
    assert_eq!(reached.last().unwrap(), ":0", "the idle subscriber was not dropped");
    // It is disconnected (its queue overflowed; a write to it stalls at
    // most 10 s), so it is no longer counted.
    wait_uncounted(&mut alice_publisher, b"alice.flood", 20, "a subscriber that does not read stayed connected");
    drop(idle);

    // Authenticating as someone else ends what the connection subscribed
    // to: nothing of alice's reaches it after bob's AUTH.
    let mut switching = login(b"alice", b"pw1");
    // RESP3, where a subscribed connection runs any command.
    switching.command(&[b"HELLO", b"3"]);
    let _ = switching.frame();
    switching.command(&[b"SUBSCRIBE", b"alice.private"]);
    assert_eq!(push_parts(&mut switching), ["subscribe", "alice.private", ":1"]);
    for _ in 0..50 {
        alice_publisher.command(&[b"PUBLISH", b"alice.private", b"secret"]);
        let _ = alice_publisher.line();
    }
    switching.command(&[b"AUTH", b"bob", b"pw2"]);
    loop {
        match switching.frame() {
            Value::Line(reply) if reply == "+OK" => break,
            Value::Array(parts) => assert_eq!(parts[0], Value::Bulk(b"message".to_vec())),
            other => panic!("{other:?}"),
        }
    }
    alice_publisher.command(&[b"PUBLISH", b"alice.private", b"secret"]);
    alice_publisher.expect(b":0\r\n");
    switching.command(&[b"PING"]);
    switching.expect(b"+PONG\r\n");
}

/// Keys as Redis users name them, through every front end: RESP, HTTP
/// (percent-encoded paths), the command line, MeiliES, user patterns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_with_redis_punctuation_and_any_script_work_in_every_front_end() {
    let cairn = Cairn::new();
    cairn.ok(&["user", "add", "carol", "--read", "{user:1}.>", "--write", "{user:1}.>"], b"pw\n");
    let server = Server::start(&cairn, &[]);
    let names = ["{user:1}.cart", "socket.io#/#", "user@example.com", "orders 2026", "café.menü", "日本.東京"];
    let mut raw = Raw::connect(server.resp());
    for name in names {
        raw.command(&[b"XADD", name.as_bytes(), b"*", b"f", name.as_bytes()]);
        assert!(matches!(raw.frame(), Value::Bulk(_)), "{name}");
        raw.command(&[b"XRANGE", name.as_bytes(), b"-", b"+"]);
        let Value::Array(entries) = raw.frame() else { panic!("{name}") };
        assert_eq!(entries.len(), 1, "{name}");
    }
    raw.command(&[b"KEYS", b"*"]);
    let Value::Array(keys) = raw.frame() else { panic!() };
    assert_eq!(keys.len(), names.len());
    raw.command(&[b"XADD", b"a*b", b"*", b"f", b"v"]);
    let refused = raw.line();
    assert!(refused.contains("'*'") && refused.contains("pattern wildcards"), "{refused}");
    raw.command(&[b"stream-names"]);
    let Value::Array(streams) = raw.frame() else { panic!() };
    assert_eq!(streams.len(), names.len() + 1);

    // HTTP: the name percent-encoded in the path (the socket's trusted door).
    let http = server.unix();
    for name in names {
        let path = format!("/v1/topics/{}/events?content=true", cairn_client::encode(name));
        let reply = crate::serve::call(&http, "GET", &path, &[], Vec::new()).await;
        assert_eq!(reply.status, 200, "{name}: {}", String::from_utf8_lossy(&reply.body));
        let lines = reply.lines();
        assert_eq!(lines.len(), 1, "{name}");
        assert_eq!(lines[0]["topic"], name);
    }
    // A user's patterns name such topics too.
    let carol = server.tcp().with_basic("carol", "pw");
    let reply = crate::serve::call(&carol, "GET", "/v1/events?topic=%7Buser%3A1%7D.%3E", &[], Vec::new()).await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(reply.lines().len(), 1);
    let reply = crate::serve::call(&carol, "GET", "/v1/topics/socket.io%23%2F%23/events", &[], Vec::new()).await;
    assert_eq!(reply.status, 403, "another user's topic");
    // The command line.
    drop(server);
    for name in names {
        let events = cairn.ok(&["cat", name], b"");
        assert_eq!(events.len(), 1, "{name}");
        assert_eq!(events[0]["topic"], name);
    }
    let appended = cairn.ok(&["append", "chat room #1"], b"hi");
    assert_eq!(appended[0]["topic"], "chat room #1");
}

/// `tests/clients`: the real client libraries' scripts and their pins.
fn clients_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/clients")
}

/// Installs the pinned client libraries once per test run (`install` does
/// nothing when they are in place).
fn install_clients() {
    static INSTALLED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let installed = INSTALLED.get_or_init(|| {
        let output = std::process::Command::new(clients_dir().join("install"))
            .output()
            .map_err(|error| format!("tests/clients/install could not run: {error}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "tests/clients/install failed (it needs node, npm and python3 with venv):\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    });
    if let Err(why) = installed {
        panic!("{why}");
    }
}

/// A server that requires AUTH, with an administrator `admin` (password
/// `adminpw`) and a user `app` (password `pw`, and a token) on `app.>`.
fn server_for_clients() -> (Cairn, Server, String) {
    let cairn = Cairn::new();
    cairn.ok(&["user", "add", "admin", "--admin"], b"adminpw\n");
    cairn.ok(&["user", "add", "app", "--read", "app.>", "--write", "app.>"], b"pw\n");
    let token = cairn.ok(&["user", "token", "issue", "app"], b"")[0]["token"].as_str().unwrap().to_owned();
    let server = Server::start(&cairn, &["--resp-require-auth"]);
    (cairn, server, token)
}

/// Runs a client script to its end (at most two minutes) and checks it
/// printed `done`.
fn run_client(program: &str, args: &[&str]) {
    let mut child = std::process::Command::new(program)
        .args(args)
        .current_dir(clients_dir())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("{program}: {error}"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.lines().last() == Some("done"),
        "{program} {args:?} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn redis_py_sync_asyncio_and_resp3() {
    install_clients();
    let (_cairn, server, token) = server_for_clients();
    let port = server.resp().port().to_string();
    let python = clients_dir().join(".venv/bin/python");
    run_client(python.to_str().unwrap(), &["redis_py.py", &port, &token, "app", "pw", "adminpw"]);
}

#[test]
fn ioredis_node_redis_and_the_socket_io_streams_adapter() {
    install_clients();
    let (_cairn, server, token) = server_for_clients();
    let port = server.resp().port().to_string();
    run_client("node", &["node.mjs", &port, &token]);
}

#[test]
fn monitor_info_client_and_command_docs_answer_what_tools_ask() {
    let cairn = Cairn::new();
    cairn.ok(&["user", "add", "admin", "--admin"], b"adminpw\n");
    cairn.ok(&["user", "add", "alice", "--read", "alice.>", "--write", "alice.>"], b"pw\n");
    let server = Server::start(&cairn, &["--resp-require-auth"]);
    let login = |user: &[u8], password: &[u8]| login(&server, user, password);
    // MONITOR: administrators only; secrets redacted; quoted as Redis does.
    let mut alice = login(b"alice", b"pw");
    alice.command(&[b"MONITOR"]);
    assert!(alice.line().starts_with("-NOPERM"));
    let mut admin = login(b"admin", b"adminpw");
    admin.command(&[b"MONITOR"]);
    admin.expect(b"+OK\r\n");
    let mut other = Raw::connect(server.resp());
    other.command(&[b"AUTH", b"alice", b"pw"]);
    other.expect(b"+OK\r\n");
    other.command(&[b"XADD", b"alice.a", b"*", b"say", b"a \"quoted\"\nline"]);
    let _ = other.frame();
    let auth = admin.line();
    assert!(auth.starts_with('+') && auth.ends_with(r#"] "AUTH" "(redacted)" "(redacted)""#), "{auth}");
    let xadd = admin.line();
    assert!(xadd.ends_with(r#"] "XADD" "alice.a" "*" "say" "a \"quoted\"\nline""#), "{xadd}");

    // INFO's counters for who sees the whole store (what `redis-cli --stat` reads).
    let mut admin = login(b"admin", b"adminpw");
    admin.command(&[b"INFO"]);
    let Value::Bulk(info) = admin.frame() else { panic!() };
    let info = String::from_utf8(info).unwrap();
    for field in [
        "connected_clients:",
        "blocked_clients:0",
        "used_memory:",
        "total_commands_processed:",
        "instantaneous_ops_per_sec:",
        "total_connections_received:",
    ] {
        assert!(info.contains(field), "{field} missing from {info}");
    }
    // Line-buffered (stdbuf), so what it printed survives its kill.
    let output = std::process::Command::new("stdbuf")
        .args([
            "-oL",
            "redis-cli",
            "-p",
            &server.resp().port().to_string(),
            "--user",
            "admin",
            "--pass",
            "adminpw",
            "--no-auth-warning",
        ])
        .args(["--stat", "-i", "0.2"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut output = crate::KillOnDrop(output);
    // Its start, its login and a few rows at 0.2 s.
    std::thread::sleep(std::time::Duration::from_millis(2000));
    let _ = output.0.kill();
    let mut text = String::new();
    std::io::Read::read_to_string(output.0.stdout.as_mut().unwrap(), &mut text).unwrap();
    assert!(text.contains("keys") && text.lines().count() >= 3, "{text}");
    assert!(!text.contains("-9223372036854775808"), "{text}");

    // CLIENT subcommands clients send on connect.
    for (command, reply) in [
        (&[&b"CLIENT"[..], b"NO-EVICT", b"on"][..], "+OK"),
        (&[b"CLIENT", b"NO-TOUCH", b"on"], "+OK"),
        (&[b"CLIENT", b"TRACKING", b"off"], "+OK"),
        (&[b"CLIENT", b"MAINT_NOTIFICATIONS", b"ON", b"moving-endpoint-type", b"none"], "-ERR unknown subcommand"),
        (&[b"CLIENT", b"TRACKING", b"on"], "-ERR client-side caching"),
    ] {
        admin.command(command);
        let line = admin.line();
        assert!(line.starts_with(reply), "{command:?}: {line}");
    }
    // COMMAND DOCS carries argument specs.
    admin.command(&[b"COMMAND", b"DOCS", b"XADD"]);
    let Value::Array(docs) = admin.frame() else { panic!() };
    let mut shown = Vec::new();
    texts(&Value::Array(docs), &mut shown);
    for word in ["arguments", "NOMKSTREAM", "+optional", "+multiple", "oneof"] {
        assert!(shown.iter().any(|text| text == word), "{word} not in {shown:?}");
    }
    // SET and GET stay out: an event store.
    admin.command(&[b"SET", b"k", b"v"]);
    assert!(admin.line().starts_with("-ERR unknown command 'set'"));
}

/// Every string in a reply, in order.
fn texts(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Line(line) => out.push(line.clone()),
        Value::Bulk(bytes) => out.push(String::from_utf8_lossy(bytes).into_owned()),
        Value::Array(items) => items.iter().for_each(|item| texts(item, out)),
    }
}
