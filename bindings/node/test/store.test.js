'use strict'
const test = require('node:test')
const assert = require('node:assert')
const { cairn, tempDir, openTemp } = require('./helpers')

test('append, read back, head, topics, get, content', async (t) => {
  const store = await openTemp(t)
  const first = await store.append({ topic: 'orders', content: { total: 5 }, type: 'created', meta: { by: 'test' } })
  assert.equal(first.topic, 'orders')
  assert.equal(first.seq, 0)
  assert.equal(first.type, 'created')
  const batch = await store.appendBatch([
    { topic: 'orders', content: 'second' },
    { topic: 'bytes', content: Buffer.from([0xff, 0x00, 0xfe]) },
    { topic: 'orders', ttl: 'last:100' }
  ])
  assert.deepEqual(batch.map((e) => [e.topic, e.seq]), [['orders', 1], ['bytes', 0], ['orders', 2]])
  // Ids are the global order.
  assert.ok(first.id < batch[0].id && batch[0].id < batch[1].id)

  const all = []
  for await (const event of store.read()) all.push(event)
  assert.deepEqual(all.map((e) => e.id), [first.id, ...batch.map((e) => e.id)])
  assert.equal(all[0].content, '{"total":5}')
  assert.deepEqual(all[0].meta, { by: 'test' })
  assert.deepEqual(cairn.contentOf(all[2]), Buffer.from([0xff, 0x00, 0xfe]))
  assert.equal(all[3].content, undefined)

  const orders = []
  for await (const event of store.read({ topic: 'orders', fromSeq: 1 })) orders.push(event.seq)
  assert.deepEqual(orders, [1, 2])
  const newest = []
  for await (const event of store.read({ topic: 'orders', last: 2, reverse: true })) newest.push(event.seq)
  assert.deepEqual(newest, [2, 1])
  const limited = []
  for await (const event of store.read({ pattern: '>', after: first.id, limit: 2, content: false })) limited.push(event)
  assert.deepEqual(limited.map((e) => e.id), [batch[0].id, batch[1].id])
  assert.equal(limited[0].content, undefined)

  assert.deepEqual(await store.head('orders'), { topic: 'orders', count: 3, first_seq: 0, last_seq: 2, last_id: batch[2].id })
  assert.equal(await store.head('nothing'), null)
  assert.deepEqual((await store.topics()).map((h) => h.topic).sort(), ['bytes', 'orders'])
  assert.equal((await store.get(first.id)).content, '{"total":5}')
  assert.equal(await store.get('03hd81qqdhucrz6ptrnrghvkr'), null)

  const hash = await store.contentPut('some bytes')
  assert.match(hash, /^sha256-/)
  assert.equal((await store.contentGet(hash)).toString(), 'some bytes')
  assert.equal((await store.contentGet(first.hash)).toString(), '{"total":5}')
  assert.equal(await store.contentGet('sha256-' + Buffer.alloc(32).toString('base64')), null)
})

test('expectations and idempotency keys', async (t) => {
  const store = await openTemp(t)
  await store.append({ topic: 'acct', content: 'open', expect: 'none' })
  await assert.rejects(store.append({ topic: 'acct', content: 'again', expect: 'none' }), { name: 'ExpectationFailedError', code: 'expectation_failed' })
  await store.append({ topic: 'acct', content: 'deposit', expect: 0 })
  await assert.rejects(store.append({ topic: 'acct', content: 'stale', expect: 0 }), (error) => error instanceof cairn.CairnError && error instanceof cairn.errors.expectation_failed)

  const once = await store.append({ topic: 'pay', content: 'ten', key: 'payment-1' })
  const retry = await store.append({ topic: 'pay', content: 'ten', key: 'payment-1' })
  assert.equal(retry.id, once.id)
  await assert.rejects(store.append({ topic: 'pay', content: 'eleven', key: 'payment-1' }), { code: 'idempotency_conflict' })
  const [a] = await store.appendBatch([{ topic: 'pay', content: 'x' }, { topic: 'pay', content: 'y' }], { key: 'batch-1' })
  const [b] = await store.appendBatch([{ topic: 'pay', content: 'x' }, { topic: 'pay', content: 'y' }], { key: 'batch-1' })
  assert.equal(a.id, b.id)
  assert.equal((await store.head('pay')).count, 3)

  // A failed batch leaves nothing.
  await assert.rejects(store.appendBatch([{ topic: 'atomic', content: '1' }, { topic: 'acct', content: '2', expect: 99 }]), { code: 'expectation_failed' })
  assert.equal(await store.head('atomic'), null)
})

test('bad input is refused with coded errors and loses nothing', async (t) => {
  const store = await openTemp(t)
  await store.append({ topic: 'kept', content: 'safe' })
  const invalid = { name: 'InvalidError', code: 'invalid' }
  await assert.rejects(store.append({ topic: '', content: 'x' }), invalid)
  await assert.rejects(store.append({ topic: 'a..b', content: 'x' }), invalid)
  await assert.rejects(store.append({ topic: 't', content: 'x', colour: 'red' }), invalid)
  await assert.rejects(store.append(null), invalid)
  await assert.rejects(store.append({ topic: 't', content: 'x', ttl: 'forever-ish' }), invalid)
  await assert.rejects(store.append({ topic: 't', content: 'x', meta: 'not an object' }), invalid)
  await assert.rejects(store.append({ topic: 't', content_base64: '***' }), invalid)
  await assert.rejects(store.appendBatch([]), invalid)
  await assert.rejects(store.appendBatch('nope'), invalid)
  await assert.rejects(store.appendBatch([{ topic: 't', key: 'k' }]), invalid)
  await assert.rejects(store.get('not-an-id'), invalid)
  await assert.rejects(async () => { for await (const _ of store.read({ topic: 'kept', limit: -1 })) ; }, invalid)
  await assert.rejects(async () => { for await (const _ of store.read({ pattern: 'a.>.b' })) ; }, invalid)
  await assert.rejects(store.snapshotPut('bad name!', '03hd81qqdhucrz6ptrnrghvkr', 'x'), invalid)
  await assert.rejects(store.ack('c', 'zzzzzzzzzzzzzzzzzzzzzzzzz'), invalid)
  await assert.rejects(store.append({ topic: 'big', content: Buffer.alloc(65 << 20) }), { code: 'too_large' })
  // The same checks on a large batch of topics and texts (sent as columns).
  const many = (n) => Array.from({ length: n }, (_, k) => ({ topic: 'many', content: `text ${k}` }))
  const badTopic = many(100)
  badTopic[50] = { topic: 'a..b', content: 'x' }
  await assert.rejects(store.appendBatch(badTopic), (error) => error.code === 'invalid' && /event 51/.test(error.message))
  const loneSurrogate = many(100)
  loneSurrogate[7] = { topic: 'many', content: 'broken \ud800 text' }
  await assert.rejects(store.appendBatch(loneSurrogate), invalid)
  assert.deepEqual((await store.topics()).map((h) => [h.topic, h.count]), [['kept', 1]])
})

test('a large batch of texts keeps every character and its order', async (t) => {
  const store = await openTemp(t)
  const texts = Array.from({ length: 300 }, (_, k) => ['', 'plain', 'é漢字', '😀 emoji', 'line\nbreak "quoted"'][k % 5] + k)
  const topics = texts.map((_, k) => (k % 3 === 0 ? 'mixed.a' : 'mixed.bé'))
  const landed = await store.appendBatch(texts.map((content, k) => ({ topic: topics[k], content })))
  assert.deepEqual(landed.map((e) => e.topic), topics)
  const read = []
  for await (const event of store.read({ pattern: 'mixed.>' })) read.push([event.id, event.topic, event.content])
  assert.deepEqual(read, landed.map((e, k) => [e.id, topics[k], texts[k]]))
  // One topic for a long run, then another (the run is sent as one topic
  // until the switch); and a bad topic shared by every event.
  const runs = Array.from({ length: 264 }, (_, k) => ({ topic: k < 200 ? 'run.a' : 'run.b', content: 'r' + k }))
  assert.deepEqual((await store.appendBatch(runs)).map((e) => [e.topic, e.seq]), runs.map((e, k) => [e.topic, k < 200 ? k : k - 200]))
  assert.deepEqual((await store.topics()).filter((h) => h.topic.startsWith('run.')).map((h) => [h.topic, h.count]), [['run.a', 200], ['run.b', 64]])
  await assert.rejects(store.appendBatch(Array.from({ length: 100 }, () => ({ topic: 'bad..topic', content: 'x' }))), (error) => error.code === 'invalid' && error.message.includes('event 1'))
  // Across pages (of 1,024), with the next fetched while one is handed out,
  // and a read left early.
  await store.appendBatch(Array.from({ length: 3000 }, (_, k) => ({ topic: 'paged', content: String(k) })))
  let expected = 0
  for await (const event of store.read({ topic: 'paged' })) assert.equal(event.content, String(expected++))
  assert.equal(expected, 3000)
  for await (const event of store.read({ topic: 'paged', reverse: true })) {
    assert.equal(event.seq, 2999)
    break
  }
})

test('close frees the store; a second opener gets a LockedError naming the holder', async (t) => {
  const dir = tempDir(t)
  const store = await cairn.open(dir)
  await store.append({ topic: 'x', content: '1' })
  await assert.rejects(cairn.open(dir), (error) => error.code === 'locked' && error.message.includes(`pid ${process.pid}`))
  const reading = store.subscribe('x')
  const pending = store.head('x')
  await store.close()
  assert.deepEqual((await pending).count, 1, 'a call in flight finished before the close')
  for await (const _ of reading) ; // the subscription ended
  await assert.rejects(store.head('x'), { name: 'ClosedError', code: 'closed' })
  await store.close() // twice is fine
  const again = await cairn.open(dir)
  assert.equal((await again.head('x')).count, 1)
  await again.close()
})

test('concurrent appends all land, gapless, and the event loop keeps running', async (t) => {
  const store = await openTemp(t)
  const appended = await Promise.all(Array.from({ length: 300 }, (_, n) => store.append({ topic: 'c', content: String(n) })))
  assert.deepEqual(appended.map((e) => e.seq).sort((a, b) => a - b), Array.from({ length: 300 }, (_, n) => n))
  // While a large durable batch is written, timers still fire: the work is
  // off the JS thread.
  let ticks = 0
  const timer = setInterval(() => { ticks += 1 }, 1)
  const events = Array.from({ length: 50000 }, (_, n) => ({ topic: 'big', content: `event ${n}` }))
  const pending = store.appendBatch(events)
  const stringified = Date.now()
  await pending
  clearInterval(timer)
  assert.ok(ticks >= 3, `only ${ticks} timer ticks during a batch that took ${Date.now() - stringified} ms`)
  assert.equal((await store.head('big')).count, 50000)
})

test('a store left open is closed when the process exits', async (t) => {
  const dir = tempDir(t)
  const { spawnSync } = require('node:child_process')
  // A subscription waits for live events and a read is half done when the
  // script ends: the exit still closes the store, promptly.
  const script = `
    const cairn = require(${JSON.stringify(require.resolve('..'))})
    ;(async () => {
      const store = await cairn.open(${JSON.stringify(dir)})
      await store.appendBatch(Array.from({ length: 3000 }, (_, n) => ({ topic: 'exit', content: String(n) })))
      const live = store.subscribe('exit')
      live.on('data', () => {})
      await live.caughtUp
      const reading = store.read({ topic: 'exit' })
      await reading.next()
      process.exit(0)
    })()`
  const child = spawnSync(process.execPath, ['-e', script], { timeout: 30000, encoding: 'utf8' })
  assert.equal(child.status, 0, child.stderr)
  // The engine marks a clean close in its index (a kill leaves no mark).
  assert.ok(require('node:fs').existsSync(require('node:path').join(dir, 'index', 'cairn-clean-close')), 'closed cleanly')
  const store = await cairn.open(dir)
  assert.equal((await store.head('exit')).count, 3000)
  await store.close()
})

test('reads: concurrent next() calls, a read cut short by close, wrong argument types', async (t) => {
  const dir = tempDir(t)
  const store = await cairn.open(dir)
  await store.appendBatch(Array.from({ length: 3000 }, (_, k) => ({ topic: 'r', content: String(k) })))
  const reading = store.read({ topic: 'r' })
  const seen = []
  for (;;) {
    const [a, b, c] = await Promise.all([reading.next(), reading.next(), reading.next()])
    for (const step of [a, b, c]) if (!step.done) seen.push(Number(step.value.content))
    if (c.done) break
  }
  assert.deepEqual(seen, Array.from({ length: 3000 }, (_, k) => k))
  await assert.rejects(store.get(123), { name: 'InvalidError', code: 'invalid' })
  const bad = store.subscribe('r', { highWaterMark: -1 })
  await assert.rejects(new Promise((resolve, reject) => { bad.on('error', reject); bad.on('data', resolve) }), { code: 'invalid' })

  const cut = store.read({ topic: 'r' })
  await cut.next()
  await store.close()
  await assert.rejects(async () => { for (;;) if ((await cut.next()).done) break }, { name: 'ClosedError' })
  await assert.rejects(store.append({ topic: 'r', content: 'late' }), { name: 'ClosedError' })
})

test('the fast path keeps a trailing NUL, and a repeat names the events it returns', async (t) => {
  const store = await openTemp(t)
  const events = Array.from({ length: 100 }, (_, k) => ({ topic: 'nul', content: `x${k}` }))
  events[99].content = 'ends with\u0000'
  events[0].content = ''
  await store.appendBatch(events)
  const read = []
  for await (const event of store.read({ topic: 'nul' })) read.push(event.content ?? '')
  assert.equal(read[99], 'ends with\u0000')
  assert.equal(read[0], '')

  const first = await store.appendBatch([{ topic: 'kept.last', content: 'a', ttl: 'last:1' }, { topic: 'other', content: 'b' }], { key: 'repeat-me' })
  await store.append({ topic: 'kept.last', content: 'c', ttl: 'last:1' }) // trims 'a'
  const again = await store.appendBatch([{ topic: 'kept.last', content: 'a', ttl: 'last:1' }, { topic: 'other', content: 'b' }], { key: 'repeat-me' })
  for (const event of again) {
    const original = first.find((e) => e.id === event.id)
    assert.ok(original, `${event.id} is one of the first append's`)
    assert.equal(event.topic, original.topic)
    assert.equal(event.seq, original.seq)
  }
})
