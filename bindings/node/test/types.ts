// Type-checked by tests/node.rs (tsc --strict): how the package is used from TypeScript.
// Never run.
import * as cairn from '..'
async function main (): Promise<void> {
  const store: cairn.Store = await cairn.open('/tmp/x', { sync: 'always' })
  const landed: cairn.Landed = await store.append({ topic: 't', content: { a: 1 }, expect: 0, key: 'k' })
  const many: cairn.Landed[] = await store.appendBatch([{ topic: 't', content: 'x' }], { key: 'b' })
  for await (const e of store.read({ topic: 't', fromSeq: 0 })) { const s: number = e.seq; void s }
  const sub: cairn.Subscription = store.subscribe('t.>', { fromSeq: 1, highWaterMark: 16 })
  await sub.caughtUp
  for await (const e of sub) { const id: string = e.id; void id; break }
  const head: cairn.TopicHead | null = await store.head('t')
  const snap = await store.snapshotGet('c'); if (snap) { const b: Buffer = snap.bytes; void b }
  const es = await cairn.EventSource.open('/tmp/y', { topic: 'e' })
  const consumer = es.subscribe(new cairn.EventConsumer<{ n: number }>('c', { snapshotEvery: 5 }, { n: 0 }, (_v, _i, self) => ({ n: self.state.n + 1 })))
  await consumer.hasCaughtUp()
  try { await store.close() } catch (e) { if (e instanceof cairn.ExpectationFailedError || e instanceof cairn.errors.io) { console.log(e.code) } }
  void landed; void many; void head
}
void main()
