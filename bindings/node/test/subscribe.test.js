'use strict'
const test = require('node:test')
const assert = require('node:assert')
const { cairn, tempDir, openTemp } = require('./helpers')

test('history then live, no gap and no duplicate', async (t) => {
  const store = await openTemp(t)
  await store.appendBatch(Array.from({ length: 500 }, (_, n) => ({ topic: 'feed', content: String(n) })))
  const subscription = store.subscribe('feed')
  let caughtUpAt = null
  // Fired once the history is read from the store: what of it was not
  // handed out yet waits in the buffer.
  subscription.on('caughtUp', () => { caughtUpAt = seen.length + subscription.readableLength })
  const seen = []
  // Appends race the catch-up.
  const writing = (async () => {
    for (let n = 500; n < 1000; n += 10) {
      await store.appendBatch(Array.from({ length: 10 }, (_, k) => ({ topic: 'feed', content: String(n + k) })))
    }
  })()
  for await (const event of subscription) {
    seen.push(event)
    if (seen.length === 1000) break
  }
  await writing
  assert.deepEqual(seen.map((e) => e.seq), Array.from({ length: 1000 }, (_, n) => n))
  assert.deepEqual(seen.map((e) => e.content), Array.from({ length: 1000 }, (_, n) => String(n)))
  assert.ok(caughtUpAt !== null && caughtUpAt >= 500, `caught up at ${caughtUpAt}`)
  await subscription.caughtUp
})

test('from a seq, after an id, and of a pattern', async (t) => {
  const store = await openTemp(t)
  const events = await store.appendBatch([
    { topic: 'a.1', content: 'x' }, { topic: 'b.1', content: 'y' }, { topic: 'a.2', content: 'z' }, { topic: 'a.1', content: 'w' }
  ])
  const take = async (subscription, n) => {
    const out = []
    for await (const event of subscription) { out.push(event.content); if (out.length === n) break }
    return out
  }
  assert.deepEqual(await take(store.subscribe('a.1', { fromSeq: 1 }), 1), ['w'])
  assert.deepEqual(await take(store.subscribe('>', { after: events[1].id }), 2), ['z', 'w'])
  assert.deepEqual(await take(store.subscribe('a.*'), 3), ['x', 'z', 'w'])
  const empty = store.subscribe('nobody')
  await empty.caughtUp
  empty.close()
})

test('a subscription reads ahead only as far as its buffer allows', async (t) => {
  const store = await openTemp(t)
  for (let n = 0; n < 10; n++) {
    await store.appendBatch(Array.from({ length: 1000 }, (_, k) => ({ topic: 'lots', content: String(n * 1000 + k) })))
  }
  const subscription = store.subscribe('lots', { highWaterMark: 16 })
  const first = await new Promise((resolve) => subscription.once('data', resolve))
  subscription.pause()
  await new Promise((resolve) => setTimeout(resolve, 300))
  // At most the buffer plus one page of 1,024 was fetched, not all 10,000.
  assert.ok(subscription.readableLength <= 16 + 1024, `buffered ${subscription.readableLength}`)
  let count = 1
  let last = first
  subscription.on('data', (event) => { count += 1; last = event })
  subscription.resume()
  while (count < 10000) await new Promise((resolve) => setTimeout(resolve, 10))
  assert.equal(last.seq, 9999)
  subscription.close()
})

test('closing the store ends its subscriptions', async (t) => {
  const store = await cairn.open(tempDir(t))
  const subscription = store.subscribe('quiet')
  await subscription.caughtUp
  const ended = (async () => { for await (const _ of subscription) ; return 'ended' })()
  await store.close()
  assert.equal(await ended, 'ended')
})
