'use strict'
const test = require('node:test')
const assert = require('node:assert')
const path = require('node:path')
const { spawn } = require('node:child_process')
const { cairn, tempDir } = require('./helpers')

test("simple-event-sourcing's quick start, ported", async (t) => {
  const dir = tempDir(t)
  // create the event source, and wait for it to catch up
  const es = await cairn.EventSource.open(dir, { topic: 'bare-minimum' })
  await es.hasCaughtUp()
  // create the event consumer
  const seen = []
  const consumer = new cairn.EventConsumer(
    'bare-minimum-snapshot', // <- the consumer's snapshot, kept in the store
    {}, // <- configuration
    {}, // <- defaultState
    (event, index) => { seen.push([index, event.name]) } // <- event handler
  )
  // add the consumer to the event source, and wait for it to catch up
  es.subscribe(consumer)
  await consumer.hasCaughtUp()
  // then write some events
  for (let i = 0; i < 20; i++) await es.store({ ts: Date.now(), name: 'event' + i })
  while (seen.length < 20) await new Promise((resolve) => setTimeout(resolve, 5))
  assert.deepEqual(seen, Array.from({ length: 20 }, (_, i) => [i, 'event' + i]))
  await es.close()

  // Reopened, the consumer resumes after what it handled.
  const again = await cairn.EventSource.open(dir, { topic: 'bare-minimum' })
  await again.store({ name: 'event20' })
  const later = []
  const resumed = again.subscribe(new cairn.EventConsumer('bare-minimum-snapshot', {}, {}, (event, index) => { later.push([index, event.name]) }))
  await resumed.hasCaughtUp()
  assert.deepEqual(later, [[20, 'event20']])
  await again.close()
})

test('a consumer keeps its state and position together', async (t) => {
  const dir = tempDir(t)
  const es = await cairn.EventSource.open(dir, { topic: 'counts' })
  await es.storeBatch([{ n: 1 }, { n: 2 }, { n: 3 }])
  const consumer = es.subscribe(new cairn.EventConsumer('adder', { snapshotEvery: 2 }, { total: 0 }, (event, _index, self) => ({ total: self.state.total + event.n })))
  await consumer.hasCaughtUp()
  assert.deepEqual(consumer.state, { total: 6 })
  await es.close()
  const store = await cairn.open(dir)
  const snapshot = await store.snapshotGet('adder')
  assert.deepEqual(JSON.parse(snapshot.bytes), { total: 6 })
  assert.equal((await store.consumer('adder')).acked, snapshot.at)
  await store.close()
})

function run (dir, want, onLine) {
  const child = spawn(process.execPath, [path.join(__dirname, 'fixtures', 'sum.js'), dir, String(want)], { stdio: ['ignore', 'pipe', 'inherit'] })
  let buffered = ''
  child.stdout.on('data', (chunk) => {
    buffered += chunk
    let end
    while ((end = buffered.indexOf('\n')) >= 0) {
      onLine(buffered.slice(0, end), child)
      buffered = buffered.slice(end + 1)
    }
  })
  return new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })))
}

test('a consumer killed with SIGKILL mid-run resumes with no effect missing or doubled', async (t) => {
  const dir = tempDir(t)
  const N = 2000
  const store = await cairn.open(dir)
  await store.appendBatch(Array.from({ length: N }, (_, i) => ({ topic: 'numbers', content: { n: i + 1 } })))
  await store.close()

  let counted = 0
  const killed = await run(dir, N, (line, child) => {
    if (line.startsWith('COUNT ')) {
      counted = Number(line.slice(6))
      if (counted >= 500) child.kill('SIGKILL')
    }
  })
  assert.equal(killed.signal, 'SIGKILL')
  assert.ok(counted >= 500 && counted < N, `killed at ${counted}`)

  let final = null
  const finished = await run(dir, N, (line) => {
    if (line.startsWith('FINAL ')) final = JSON.parse(line.slice(6))
  })
  assert.equal(finished.code, 0)
  // Every event's effect exactly once: the sum of 1..N and N events.
  assert.deepEqual(final, { sum: N * (N + 1) / 2, count: N })
})

test('a consumer closed at once stops, and says it never caught up', async (t) => {
  const dir = tempDir(t)
  const es = await cairn.EventSource.open(dir, { topic: 'quiet' })
  const consumer = es.subscribe(new cairn.EventConsumer('soon-closed', {}, {}, () => {}))
  const closing = es.close()
  const timeout = new Promise((_resolve, reject) => setTimeout(() => reject(new Error('close hung')), 10000))
  await Promise.race([closing, timeout])
  await assert.rejects(consumer.hasCaughtUp(), { code: 'closed' })
  // Text that is not JSON reaches the handler as text.
  const again = await cairn.EventSource.open(dir, { topic: 'plain' })
  await again.store_.append({ topic: 'plain', content: 'not json' })
  const got = []
  const reader = again.subscribe(new cairn.EventConsumer('plain-reader', {}, {}, (value) => { got.push(value) }))
  await reader.hasCaughtUp()
  assert.deepEqual(got, ['not json'])
  await again.close()
})
