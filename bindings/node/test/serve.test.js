'use strict'
// One store format with the server too: a store written from Node is
// served by `cairn serve`, and what the server appended opens in Node.
const test = require('node:test')
const assert = require('node:assert')
const fs = require('node:fs')
const path = require('node:path')
const { spawn } = require('node:child_process')
const { cairn, tempDir, cli } = require('./helpers')

test('a store written from Node is served by cairn serve, and back', async (t) => {
  const dir = tempDir(t)
  const store = await cairn.open(dir)
  const [written] = await store.appendBatch([{ topic: 'served', content: 'from node' }])
  await store.close()

  const server = spawn(process.env.CAIRN_BIN, ['--store', dir, 'serve', '--no-resp'], { stdio: ['ignore', 'pipe', 'pipe'] })
  t.after(() => server.kill('SIGKILL'))
  let output = ''
  server.stdout.on('data', (chunk) => { output += chunk })
  server.stderr.on('data', (chunk) => { output += chunk })
  const socket = path.join(dir, 'cairn.sock')
  for (let waited = 0; !(fs.existsSync(socket) && output.includes('listening')); waited += 20) {
    if (waited > 20000) throw new Error(`cairn serve did not start: ${output}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  // While the server holds the store, Node is told who does.
  await assert.rejects(cairn.open(dir), (error) => error.code === 'locked' && error.message.includes(`pid ${server.pid}`))
  // The CLI goes through the server's socket.
  const appended = await cli(['--store', dir, 'append', 'served'], 'through the server')
  assert.equal(appended.code, 0, appended.stderr)
  const cat = await cli(['--store', dir, 'cat', 'served', '--content'])
  assert.deepEqual(cat.stdout.trim().split('\n').map((line) => JSON.parse(line).content), ['from node', 'through the server'])
  assert.equal(JSON.parse(cat.stdout.split('\n')[0]).id, written.id)

  server.kill('SIGTERM')
  await new Promise((resolve) => server.on('exit', resolve))
  const again = await cairn.open(dir)
  const events = []
  for await (const event of again.read({ topic: 'served' })) events.push(event.content)
  assert.deepEqual(events, ['from node', 'through the server'])
  await again.close()
})
