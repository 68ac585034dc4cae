'use strict'
// cairn-store from Node: 100,000 events appended durably (one batch, and
// batches of 1,000), then a read of 1,000,000 events, each `rounds` times;
// next to simple-event-sourcing's claim (100k records stored in under 1 s).
//   node bench.js [--dir DIR] [--rounds N]      (after `npm install`)

const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const cairn = require('.')

const args = process.argv.slice(2)
const option = (name, fallback) => { const at = args.indexOf(name); return at >= 0 ? args[at + 1] : fallback }
const root = fs.mkdtempSync(path.join(path.resolve(option('--dir', os.tmpdir())), 'cairn-node-bench-'))
const rounds = Number(option('--rounds', 3))
const payload = (n) => ({ topic: 'bench', content: JSON.stringify({ ts: 1733400000000 + n, name: 'event' + n }) })

function row (what, values, unit) {
  const sorted = [...values].sort((a, b) => a - b)
  const median = sorted[Math.floor(sorted.length / 2)]
  console.log(`| ${what} (median of ${values.length}; ${sorted.map((v) => v.toFixed(unit === 'ms' ? 1 : 0)).join(', ')}) | ${median.toFixed(unit === 'ms' ? 1 : 0)} ${unit} |`)
}

async function main () {
  const one = []
  const thousands = []
  const reads = []
  for (let round = 0; round < rounds; round++) {
    const store = await cairn.open(path.join(root, `append-${round}`))
    const events = Array.from({ length: 100000 }, (_, n) => payload(n))
    let started = process.hrtime.bigint()
    await store.appendBatch(events)
    one.push(Number(process.hrtime.bigint() - started) / 1e6)
    started = process.hrtime.bigint()
    for (let at = 0; at < 100000; at += 1000) await store.appendBatch(events.slice(at, at + 1000))
    thousands.push(Number(process.hrtime.bigint() - started) / 1e6)
    await store.close()
  }
  const store = await cairn.open(path.join(root, 'read'), { sync: 'none' })
  for (let at = 0; at < 1000000; at += 10000) await store.appendBatch(Array.from({ length: 10000 }, (_, n) => payload(at + n)))
  for (let round = 0; round < rounds; round++) {
    const started = process.hrtime.bigint()
    let count = 0
    for await (const event of store.read({ topic: 'bench' })) if (event.seq >= 0) count += 1
    if (count !== 1000000) throw new Error(`read ${count} events`)
    reads.push(1e6 / (Number(process.hrtime.bigint() - started) / 1e9))
  }
  await store.close()
  console.log('| benchmark | result |')
  console.log('|---|---|')
  row('node: 100,000 events appended durably in one appendBatch', one, 'ms')
  row('node: 100,000 events appended durably in batches of 1,000', thousands, 'ms')
  row('node: read of 1,000,000 events with their content (events/s)', reads, 'ev/s')
  console.log('| simple-event-sourcing\'s claim: 100k records stored | under 1000 ms |')
}

main().catch((error) => { console.error(error); process.exitCode = 1 }).finally(() => fs.rmSync(root, { recursive: true, force: true }))
