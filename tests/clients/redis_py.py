"""redis-py against a real `cairn serve` (run by redis_clients.rs).

Usage: redis_py.py PORT TOKEN USER PASSWORD ADMIN_PASSWORD
A user USER (password PASSWORD, token TOKEN) may read and write `app.>`;
the user `admin` (ADMIN_PASSWORD) is an administrator; the server
requires AUTH. Prints `ok <step>` per step; any failure raises.
"""

import asyncio
import sys
import threading
import time

import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

PORT, TOKEN, USER, PASSWORD, ADMIN_PASSWORD = sys.argv[1:6]


def step(name):
    print("ok", name, flush=True)


def connect(**kwargs):
    return redis.Redis(host="127.0.0.1", port=int(PORT), **kwargs)


def sync_client(protocol):
    # A token as the only password (redis-py sends AUTH <token>), then as
    # the password of `default`, then user and password.
    r = connect(password=TOKEN, protocol=protocol)
    assert r.ping()
    assert connect(username="default", password=TOKEN, protocol=protocol).ping()
    assert connect(username=USER, password=PASSWORD, protocol=protocol).acl_whoami() in (USER, USER.encode())
    # One attempt (redis-py retries a failed connection by default, and
    # each retry is one more failed login for the server's backoff).
    try:
        connect(username=USER, password="wrong", protocol=protocol, retry=Retry(NoBackoff(), 0)).ping()
        raise AssertionError("a wrong password was accepted")
    except redis.exceptions.AuthenticationError:
        pass
    key = f"app.orders.{protocol}"

    # pipeline() is a transaction: its appends commit together at EXEC.
    with r.pipeline() as pipe:
        pipe.xadd(key, {"item": "1"})
        pipe.xadd(key, {"item": "2"})
        pipe.xlen(key)
        first, second, length = pipe.execute()
    assert first.endswith(b"-0") and second.endswith(b"-1") and length == 2, (first, second, length)
    # A queued error aborts the whole transaction; nothing is applied.
    with r.pipeline() as pipe:
        pipe.xadd(key, {"item": "3"})
        pipe.execute_command("NOSUCHCOMMAND")
        try:
            pipe.execute()
            raise AssertionError("EXEC ran despite a queued error")
        except (redis.exceptions.ExecAbortError, redis.exceptions.ResponseError):
            pass
    assert r.xlen(key) == 2
    # WATCH: a change by another client makes execute() raise WatchError.
    other = connect(password=TOKEN, protocol=protocol)
    with r.pipeline() as pipe:
        pipe.watch(key)
        other.xadd(key, {"item": "other"})
        pipe.multi()
        pipe.xadd(key, {"item": "4"})
        try:
            pipe.execute()
            raise AssertionError("a watched change did not abort")
        except redis.exceptions.WatchError:
            pass
    assert r.xlen(key) == 3
    # The transaction helper retries until it commits.
    def add_if_short(pipe):
        length = pipe.xlen(key)
        pipe.multi()
        if length < 10:
            pipe.xadd(key, {"item": "5"})

    r.transaction(add_if_short, key)
    assert r.xlen(key) == 4
    # Non-transactional pipelines too.
    with r.pipeline(transaction=False) as pipe:
        for n in range(100):
            pipe.xadd(key, {"n": str(n)})
        assert len(pipe.execute()) == 100
    step(f"transactions resp{protocol}")

    # Streams and consumer groups.
    entries = r.xrange(key, count=2)
    assert entries[0][1] == {b"item": b"1"}, entries
    assert r.xrevrange(key, count=1)[0][1] == {b"n": b"99"}
    r.xgroup_create(key, "workers", id="0")
    got = r.xreadgroup("workers", "w1", {key: ">"}, count=3)
    if protocol == 3:
        # redis-py's RESP3 form: {stream: [entries]}.
        got = [(stream, value[0]) for stream, value in got.items()]
    stream, messages = got[0]
    assert len(messages) == 3
    ids = [message[0] for message in messages]
    assert r.xack(key, "workers", ids[0]) == 1
    pending = r.xpending(key, "workers")
    assert pending["pending"] == 2, pending
    claimed = r.xclaim(key, "workers", "w2", 0, [ids[1]])
    assert claimed[0][0] == ids[1]
    auto = r.xautoclaim(key, "workers", "w3", 0, "0-0", count=10)
    assert len(auto[1]) == 2, auto
    groups = r.xinfo_groups(key)
    assert groups[0]["name"] == b"workers" and groups[0]["pending"] == 2, groups
    consumers = r.xinfo_consumers(key, "workers")
    assert {c["name"] for c in consumers} == {b"w1", b"w2", b"w3"}, consumers
    info = r.xinfo_stream(key)
    assert info["length"] == 104 and info["groups"] == 1, info
    full = r.xinfo_stream(key, full=True)
    assert full["length"] == 104 and full["groups"][0]["name"] == b"workers", full
    assert len(full["entries"]) == 10 and full["groups"][0]["pel-count"] == 2, full
    deleted = r.xrange(key, count=1)[0][0]
    assert r.xdel(key, deleted) == 1
    assert r.xinfo_stream(key)["max-deleted-entry-id"] == deleted
    r.xgroup_create(f"{key}.made", "g", id="$", mkstream=True)
    assert r.exists(f"{key}.made") == 1 and r.type(f"{key}.made") == b"stream"
    assert r.xinfo_stream(f"{key}.made")["length"] == 0
    assert f"{key}.made".encode() in r.keys("app.*")
    assert r.xtrim(key, maxlen=50) == 53
    step(f"streams resp{protocol}")

    # Blocking read woken by another client's append.
    # Appends keep coming until the read returns: one that lands before
    # the read reaches the server is before its `$`.
    done = threading.Event()

    def later():
        while not done.wait(0.2):
            other.xadd(f"{key}.live", {"x": "1"})

    threading.Thread(target=later).start()
    got = r.xread({f"{key}.live": "$"}, block=10000)
    done.set()
    assert got, "the blocking read timed out"
    step(f"blocking read resp{protocol}")

    # Pub/sub.
    p = r.pubsub()
    p.subscribe(f"app.chat.{protocol}")
    p.psubscribe("app.news.*")
    for _ in range(2):
        assert p.get_message(timeout=5)["type"] in ("subscribe", "psubscribe")
    assert other.publish(f"app.chat.{protocol}", "hi") == 1
    assert other.publish("app.news.today", "extra") == 1
    message = p.get_message(timeout=5)
    assert message["type"] == "message" and message["data"] == b"hi", message
    message = p.get_message(timeout=5)
    assert message["type"] == "pmessage" and message["channel"] == b"app.news.today", message
    assert other.pubsub_numsub(f"app.chat.{protocol}") == [(f"app.chat.{protocol}".encode(), 1)]
    p.ping()
    assert p.get_message(timeout=5)["type"] == "pong"
    p.close()
    step(f"pubsub resp{protocol}")

    # Server commands clients use.
    assert r.time()[0] > 1_700_000_000
    assert r.config_get("maxmemory") is not None
    assert "redis_version" in r.info()
    # Server-wide counters are an administrator's (SECURITY.md).
    assert "total_commands_processed" not in r.info()
    admin = connect(username="admin", password=ADMIN_PASSWORD, protocol=protocol)
    info = admin.info()
    assert info["total_commands_processed"] > 0 and info["used_memory"] > 0, info
    assert info["connected_clients"] >= 1 and info["blocked_clients"] == 0, info
    assert r.dbsize() >= 1
    try:
        r.set("k", "v")
        raise AssertionError("SET was accepted")
    except redis.exceptions.ResponseError:
        pass
    step(f"server resp{protocol}")


async def async_client():
    r = redis.asyncio.Redis(host="127.0.0.1", port=int(PORT), password=TOKEN)
    key = "app.async"
    async with r.pipeline() as pipe:
        pipe.xadd(key, {"a": "1"}).xadd(key, {"a": "2"})
        assert len(await pipe.execute()) == 2
    assert await r.xlen(key) == 2
    p = r.pubsub()
    await p.subscribe("app.async.chat")
    assert (await p.get_message(timeout=5))["type"] == "subscribe"
    publisher = redis.asyncio.Redis(host="127.0.0.1", port=int(PORT), password=TOKEN)
    assert await publisher.publish("app.async.chat", "hello") == 1
    message = None
    for _ in range(50):
        message = await p.get_message(ignore_subscribe_messages=True, timeout=1)
        if message:
            break
    assert message and message["data"] == b"hello", message
    await p.aclose()
    got = await r.xread({key: "0"}, count=10)
    assert len(got[0][1]) == 2
    await r.aclose()
    await publisher.aclose()
    step("asyncio")


for protocol in (2, 3):
    sync_client(protocol)
asyncio.run(async_client())
print("done", flush=True)
