'use strict'
// One store format: a store written from Node opens with the cairn command
// line, and the other way round; one process holds it at a time.
const test = require('node:test')
const assert = require('node:assert')
const { cairn, tempDir, cli } = require('./helpers')

test('a store written from Node is read by the CLI, and the other way round', async (t) => {
  const dir = tempDir(t)
  const store = await cairn.open(dir)
  const written = await store.appendBatch([
    { topic: 'shared', content: 'from node', type: 'note' },
    { topic: 'shared', content: Buffer.from([0xc3, 0x28]) }
  ])
  await store.snapshotPut('projection', written[1].id, '{"n":2}')

  // While Node holds the store, the CLI says who does.
  const locked = await cli(['--store', dir, 'head', 'shared'])
  assert.notEqual(locked.code, 0)
  assert.match(locked.stderr, /locked/)
  assert.match(locked.stderr, new RegExp(`pid ${process.pid}\\b`))
  await store.close()

  const cat = await cli(['--store', dir, 'cat', 'shared', '--content'])
  assert.equal(cat.code, 0, cat.stderr)
  const lines = cat.stdout.trim().split('\n').map((line) => JSON.parse(line))
  assert.deepEqual(lines.map((e) => e.id), written.map((e) => e.id))
  assert.equal(lines[0].content, 'from node')
  assert.equal(lines[0].type, 'note')
  assert.equal(lines[1].content_base64, Buffer.from([0xc3, 0x28]).toString('base64'))
  const snapshot = await cli(['--store', dir, 'consumer', 'snapshot', 'get', 'projection'])
  assert.equal(snapshot.code, 0, snapshot.stderr)
  assert.match(snapshot.stdout, /"n":2/)

  const appended = await cli(['--store', dir, 'append', 'shared', '--type', 'cli'], 'from the CLI')
  assert.equal(appended.code, 0, appended.stderr)
  const cliEvent = JSON.parse(appended.stdout)

  const again = await cairn.open(dir)
  const events = []
  for await (const event of again.read({ topic: 'shared' })) events.push(event)
  assert.deepEqual(events.map((e) => [e.seq, e.content ?? e.content_base64]), [[0, 'from node'], [1, 'wyg='], [2, 'from the CLI']])
  assert.equal(events[2].id, cliEvent.id)
  assert.equal(events[2].type, 'cli')
  const head = await cli(['--store', dir, 'head', 'shared'])
  assert.notEqual(head.code, 0)
  await again.close()
  const free = await cli(['--store', dir, 'head', 'shared'])
  assert.equal(free.code, 0, free.stderr)
  assert.equal(JSON.parse(free.stdout).seq, 2)
})
