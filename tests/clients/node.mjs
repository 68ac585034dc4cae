// ioredis, node-redis (6 and 4) and socket.io's Redis Streams adapter
// against a real `cairn serve` (run by redis_clients.rs).
//
// Usage: node node.mjs PORT TOKEN
// The token's user may read and write `app.>`; the server requires AUTH.
// Prints `ok <step>` per step; any failure exits non-zero.

import assert from "node:assert/strict";
import { once } from "node:events";
import { createServer } from "node:http";

import Redis from "ioredis";
import { createClient } from "redis";
import { createClient as createClient4 } from "redis4";
import { Server } from "socket.io";
import { io as connectSocket } from "socket.io-client";
import { createAdapter } from "@socket.io/redis-streams-adapter";

const [port, token] = process.argv.slice(2);
const url = `redis://default:${token}@127.0.0.1:${port}`;

function step(name) {
  console.log(`ok ${name}`);
}

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function ioredis() {
  const r = new Redis({ port: Number(port), host: "127.0.0.1", password: token, maxRetriesPerRequest: 1 });
  assert.equal(await r.ping(), "PONG");
  const key = "app.io.orders";
  // multi(): a transaction; its appends commit together at EXEC.
  const replies = await r.multi().xadd(key, "*", "item", "1").xadd(key, "*", "item", "2").xlen(key).exec();
  assert.equal(replies.length, 3);
  assert.equal(replies[2][1], 2);
  // A queued error aborts it all.
  await assert.rejects(r.multi().xadd(key, "*", "item", "3").call("NOSUCHCOMMAND").exec());
  assert.equal(await r.xlen(key), 2);
  // WATCH: a change by another client makes exec() answer null.
  const other = new Redis({ port: Number(port), host: "127.0.0.1", password: token });
  await r.watch(key);
  await other.xadd(key, "*", "item", "other");
  assert.equal(await r.multi().xadd(key, "*", "item", "4").exec(), null);
  assert.equal(await r.xlen(key), 3);
  // A plain pipeline.
  const pipeline = r.pipeline();
  for (let n = 0; n < 100; n++) pipeline.xadd(key, "*", "n", String(n));
  assert.equal((await pipeline.exec()).length, 100);
  step("ioredis transactions");

  await r.xgroup("CREATE", key, "workers", "0");
  const read = await r.xreadgroup("GROUP", "workers", "w1", "COUNT", 2, "STREAMS", key, ">");
  assert.equal(read[0][1].length, 2);
  assert.equal(await r.xack(key, "workers", read[0][1][0][0]), 1);
  // Appends keep coming until the read returns (one that lands before the
  // read reaches the server is before its `$`).
  const later = setInterval(() => other.xadd("app.io.live", "*", "x", "1"), 200);
  const woken = await r.xread("BLOCK", 10000, "STREAMS", "app.io.live", "$");
  clearInterval(later);
  assert.ok(woken, "the blocking read timed out");
  step("ioredis streams");

  // Pub/sub: ioredis writes command names in lower case and starts with INFO.
  const sub = new Redis({ port: Number(port), host: "127.0.0.1", password: token });
  await sub.subscribe("app.io.chat");
  await sub.psubscribe("app.io.news.*");
  const message = once(sub, "message");
  const pmessage = once(sub, "pmessage");
  assert.equal(await other.publish("app.io.chat", "hello"), 1);
  assert.deepEqual(await withTimeout(message, 5000, "message"), ["app.io.chat", "hello"]);
  assert.equal(await other.publish("app.io.news.today", "extra"), 1);
  assert.deepEqual(await withTimeout(pmessage, 5000, "pmessage"), ["app.io.news.*", "app.io.news.today", "extra"]);
  step("ioredis pubsub");
  sub.disconnect();
  other.disconnect();
  r.disconnect();
}

async function nodeRedis(create, name) {
  const client = create({ url });
  client.on("error", () => {});
  await client.connect();
  assert.equal(await client.ping(), "PONG");
  const key = `app.${name}.orders`;
  const replies = await client
    .multi()
    .xAdd(key, "*", { item: "1" })
    .xAdd(key, "*", { item: "2" })
    .xLen(key)
    .exec();
  assert.equal(replies.length, 3);
  assert.equal(replies[2], 2);
  await client.xGroupCreate(key, "workers", "0");
  const read = await client.xReadGroup("workers", "w1", { key, id: ">" }, { COUNT: 10 });
  const entries = Array.isArray(read) ? read[0].messages : Object.values(read)[0];
  assert.equal(entries.length, 2);
  const info = await client.xInfoStream(key);
  assert.equal(info.length, 2);
  step(`${name} streams`);

  const subscriber = client.duplicate();
  subscriber.on("error", () => {});
  await subscriber.connect();
  let deliver;
  const received = new Promise((resolve) => (deliver = resolve));
  // Resolves once the server confirmed the subscription.
  await subscriber.subscribe(`app.${name}.chat`, deliver);
  assert.equal(await client.publish(`app.${name}.chat`, "hello"), 1);
  assert.equal(await withTimeout(received, 5000, "message"), "hello");
  step(`${name} pubsub`);
  await subscriber.quit();
  await client.quit();
}

// Two socket.io servers share events through the Redis Streams adapter: a
// client of the first server receives what the second broadcasts.
async function socketIo() {
  const servers = [];
  for (let n = 0; n < 2; n++) {
    const redis = createClient({ url });
    redis.on("error", () => {});
    await redis.connect();
    const http = createServer();
    const io = new Server(http, { adapter: createAdapter(redis, { streamName: "app.socket.io", channelPrefix: "app.socket.io" }) });
    http.listen(0, "127.0.0.1");
    await once(http, "listening");
    servers.push({ redis, http, io, port: http.address().port });
  }
  const client = connectSocket(`http://127.0.0.1:${servers[0].port}`, { transports: ["websocket"] });
  await withTimeout(once(client, "connect"), 5000, "socket.io connect");
  const received = once(client, "relayed");
  // The adapter reads the stream from where its polling started: emit
  // until one arrives (a broadcast made before it polled is not relayed).
  const emitting = setInterval(() => servers[1].io.emit("relayed", "across servers"), 200);
  try {
    assert.deepEqual(await withTimeout(received, 10000, "relayed event"), ["across servers"]);
  } finally {
    clearInterval(emitting);
  }
  // And the number of sockets across servers.
  const sockets = await servers[1].io.fetchSockets();
  assert.equal(sockets.length, 1);
  step("socket.io redis-streams-adapter");
  client.close();
  for (const { redis, http, io } of servers) {
    io.close();
    http.close();
    await redis.quit().catch(() => {});
  }
}

await ioredis();
await nodeRedis(createClient, "redis6");
await nodeRedis(createClient4, "redis4");
await socketIo();
console.log("done");
process.exit(0);
