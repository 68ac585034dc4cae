'use strict'
// cairn-store: the cairn event store embedded in Node.js (no server).
// The native addon (src/lib.rs) runs every call off the JS thread through
// the same service the cairn command line uses; this file is the API.

const path = require('node:path')
const { Readable } = require('node:stream')

function loadNative () {
  const file = process.env.CAIRN_NODE_ADDON || path.join(__dirname, 'cairn.node')
  const addon = { exports: {} }
  try {
    process.dlopen(addon, file)
  } catch (error) {
    throw new Error(`cairn-store: cannot load the native addon ${file} (run \`npm install\` in the package folder to build it): ${error.message}`)
  }
  return addon.exports
}

const native = loadNative()

// ---- Errors -------------------------------------------------------------

/** An error of the store; `code` is the engine's error kind. */
class CairnError extends Error {
  constructor (code, message) {
    super(message)
    this.name = new.target.name
    this.code = code
  }
}

const errorClasses = { }
for (const [code, name] of [
  ['invalid', 'InvalidError'],
  ['expectation_failed', 'ExpectationFailedError'],
  ['idempotency_conflict', 'IdempotencyConflictError'],
  ['too_large', 'TooLargeError'],
  ['not_found', 'NotFoundError'],
  ['in_use', 'InUseError'],
  ['locked', 'LockedError'],
  ['shutting_down', 'ShuttingDownError'],
  ['poisoned', 'PoisonedError'],
  ['corrupt', 'CorruptError'],
  ['index', 'IndexError'],
  ['io', 'IoError'],
  ['precondition_failed', 'PreconditionFailedError'],
  ['exists', 'ExistsError'],
  ['forbidden', 'ForbiddenError'],
  ['unauthorized', 'UnauthorizedError'],
  ['throttled', 'ThrottledError'],
  ['overloaded', 'OverloadedError'],
  ['closed', 'ClosedError']
]) {
  // A named class per kind, so `instanceof` and stack traces say which.
  errorClasses[code] = { [name]: class extends CairnError {} }[name]
}

/** The JS error for what the addon threw (`<code>\u0001<message>`). */
function coded (error) {
  if (error instanceof CairnError) return error
  // An argument of the wrong type, caught by napi before the call.
  if (error && typeof error.code === 'string' && /Expected$|^InvalidArg$/.test(error.code)) {
    return new errorClasses.invalid('invalid', `${error.message} (${error.code})`)
  }
  const match = /^([a-z_]+)\u0001([\s\S]*)$/.exec(error && error.message)
  if (!match) return error
  const Class = errorClasses[match[1]] || CairnError
  return new Class(match[1], match[2])
}

async function call (promise) {
  try {
    return await promise
  } catch (error) {
    throw coded(error)
  }
}

function invalid (message) {
  return new errorClasses.invalid('invalid', message)
}

// ---- Events in, events out ----------------------------------------------

const EVENT_FIELDS = new Set(['topic', 'content', 'content_base64', 'type', 'meta', 'expect', 'ttl', 'key'])

/**
 * One event in the `cairn append --batch` line form. `content` may also be
 * a Buffer or Uint8Array (stored as bytes) or any other JSON value (stored
 * as its JSON text); `expect` may be a number (a seq).
 */
function line (event, index) {
  if (event === null || typeof event !== 'object' || Array.isArray(event)) {
    throw invalid(`event ${index}: an event is an object like { topic, content }`)
  }
  for (const field of Object.keys(event)) {
    if (!EVENT_FIELDS.has(field)) throw invalid(`event ${index}: unknown field ${JSON.stringify(field)}`)
  }
  const out = { topic: event.topic }
  const content = event.content
  if (content !== undefined && content !== null) {
    if (typeof content === 'string') out.content = content
    else if (content instanceof Uint8Array) out.content_base64 = Buffer.from(content.buffer, content.byteOffset, content.byteLength).toString('base64')
    else out.content = JSON.stringify(content)
  }
  if (event.content_base64 !== undefined) out.content_base64 = event.content_base64
  if (event.type !== undefined) out.type = event.type
  if (event.meta !== undefined) out.meta = event.meta
  if (event.ttl !== undefined) out.ttl = event.ttl
  if (event.expect !== undefined) out.expect = String(event.expect)
  return out
}

/** Whether every line is only a topic and text content (the fast path). */
function columnar (lines) {
  if (lines.length < 64) return false
  for (const line of lines) {
    if (line === null || typeof line !== 'object' || typeof line.topic !== 'string' || typeof line.content !== 'string') return false
    let fields = 0
    for (const _ in line) fields += 1
    if (fields !== 2) return false
  }
  return true
}

/**
 * Topics and contents as two strings with the length of each piece; when
 * every event has the same topic, that topic and its one length.
 */
function columns (lines) {
  const contents = new Array(lines.length)
  const contentLengths = new Uint32Array(lines.length)
  const first = lines[0].topic
  let topics = null
  let topicLengths = null
  for (let n = 0; n < lines.length; n++) {
    const line = lines[n]
    contents[n] = line.content
    contentLengths[n] = line.content.length
    if (topics === null && line.topic !== first) {
      topics = new Array(lines.length).fill(first, 0, n)
      topicLengths = new Uint32Array(lines.length).fill(first.length, 0, n)
    }
    if (topics !== null) {
      topics[n] = line.topic
      topicLengths[n] = line.topic.length
    }
  }
  if (topics === null) return [first, Uint32Array.of(first.length), contents.join(''), contentLengths]
  return [topics.join(''), topicLengths, contents.join(''), contentLengths]
}

function parseEvents (text) {
  return JSON.parse(text)
}

/** The payload of an event read with its content, as a Buffer (or null). */
function contentOf (event) {
  if (typeof event.content === 'string') return Buffer.from(event.content, 'utf8')
  if (typeof event.content_base64 === 'string') return Buffer.from(event.content_base64, 'base64')
  return null
}

function bytesOf (value, what) {
  if (typeof value === 'string') return Buffer.from(value, 'utf8')
  // A copy: the addon reads it off the JS thread, while JS may change the original.
  if (value instanceof Uint8Array) return Buffer.from(value)
  throw invalid(`${what}: give a Buffer, a Uint8Array or a string`)
}

function optionalCount (value, name) {
  if (value === undefined || value === null) return undefined
  if (!Number.isSafeInteger(value) || value < 0) throw invalid(`${name}: a whole number >= 0`)
  return value
}

// ---- The store ----------------------------------------------------------

const openStores = new Set()
let exitHookInstalled = false

function installExitHook () {
  if (exitHookInstalled) return
  exitHookInstalled = true
  // Stores left open are closed when the process exits normally (their
  // appends were already durable; this flushes the index and frees the lock).
  process.on('exit', () => {
    for (const store of openStores) store._closeSync()
  })
}

/** An open store. Get one with `open(dir, options)`. */
class Store {
  constructor (handle, dir) {
    this._native = handle
    this.dir = dir
    this.closed = false
    // Calls made before close() finish before it closes the store.
    this._inFlight = new Set()
  }

  /** Starts a call of the addon (`start` makes it), tracked until it settles. */
  _call (start) {
    if (this.closed) return Promise.reject(new errorClasses.closed('closed', 'the store is closed'))
    let promise
    try {
      promise = start()
    } catch (error) {
      // napi checks argument types before the call starts.
      return Promise.reject(coded(error))
    }
    const tracked = call(promise)
    const settled = tracked.then(() => {}, () => {})
    this._inFlight.add(settled)
    settled.then(() => this._inFlight.delete(settled))
    return tracked
  }

  /**
   * Appends one event durably; resolves to where it landed: { id, topic,
   * seq, type?, hash? } (`get(id)` returns the whole event). `event.key` is
   * an idempotency key: a retry with the same key and the same event
   * resolves to the first append's id and seq.
   */
  async append (event) {
    const key = event && event.key
    const [stored] = await this._append([line(event, 0)], key)
    return stored
  }

  /**
   * Appends `events` as one atomic batch (all or none), durably; resolves
   * to where each landed ({ id, topic, seq, type? }), in order.
   * `options.key` is the batch's idempotency key.
   */
  async appendBatch (events, options = {}) {
    if (!Array.isArray(events)) throw invalid('events: give an array of events')
    // Topic and text content only: straight to the fast path.
    if (columnar(events)) return this._append(events, options.key)
    const lines = events.map((event, index) => {
      if (event && event.key !== undefined) throw invalid(`event ${index}: give a batch's idempotency key as appendBatch(events, { key })`)
      return line(event, index)
    })
    return this._append(lines, options.key)
  }

  async _append (lines, key) {
    if (key !== undefined && key !== null && typeof key !== 'string') throw invalid('key: a string')
    const landed = await this._call(() => columnar(lines)
      ? this._native.appendColumns(...columns(lines), key ?? undefined)
      : this._native.appendBatch(JSON.stringify(lines), key ?? undefined))
    if (landed.topics) {
      // An idempotent repeat answered with fewer events (some were removed).
      return landed.topics.map((topic, n) => ({ id: landed.ids.slice(n * 25, n * 25 + 25), topic, seq: landed.seqs[n] }))
    }
    const out = new Array(lines.length)
    for (let n = 0; n < lines.length; n++) {
      const event = { id: landed.ids.slice(n * 25, n * 25 + 25), topic: lines[n].topic, seq: landed.seqs[n] }
      if (lines[n].type !== undefined) event.type = lines[n].type
      out[n] = event
    }
    if (lines.length === 1 && landed.hash) out[0].hash = landed.hash
    return out
  }

  /**
   * The events matching `query`, oldest first, as an async iterator.
   * query: { topic | pattern (default every topic: '>'), after (an id),
   * fromSeq, last, limit, reverse, content (default true) }.
   */
  read (query = {}) {
    let reader
    try {
      reader = this._call(() => this._native.read(
        query.topic ?? query.pattern ?? '>',
        query.after ?? undefined,
        optionalCount(query.fromSeq, 'fromSeq'),
        optionalCount(query.last, 'last'),
        optionalCount(query.limit, 'limit'),
        Boolean(query.reverse),
        query.content !== false
      ))
    } catch (error) {
      // Bad input is reported by the first next(), like every other error.
      reader = Promise.reject(error)
    }
    return new Reading(reader)
  }

  /**
   * History of `pattern` (from `after` or `fromSeq`, else from the start),
   * then live events, with no gap and no duplicate: a Readable in object
   * mode (so also an async iterator) that reads ahead only as far as its
   * buffer allows. It emits 'caughtUp' (and resolves `caughtUp`) once the
   * history has been read from the store: the history's last events may
   * still wait in the stream's buffer (`readableLength` of them), and live
   * events follow them. `close()` or `destroy()` ends it.
   */
  subscribe (pattern, options = {}) {
    let handle
    let highWaterMark = 1024
    try {
      if (options.highWaterMark !== undefined) {
        highWaterMark = options.highWaterMark
        if (!Number.isSafeInteger(highWaterMark) || highWaterMark < 1 || highWaterMark > 65536) throw invalid('highWaterMark: a whole number from 1 to 65,536')
      }
      handle = this._call(() => this._native.subscribe(
        pattern,
        options.after ?? undefined,
        optionalCount(options.fromSeq, 'fromSeq'),
        options.content !== false
      ))
    } catch (error) {
      // Bad input is reported through the stream ('error'), like every other error.
      highWaterMark = 1024
      handle = Promise.reject(error)
    }
    return new Subscription(handle, highWaterMark)
  }

  /** A topic's head ({ topic, count, first_seq, last_seq, last_id }), or null. */
  async head (topic) {
    const head = await this._call(() => this._native.head(topic))
    return head === null ? null : JSON.parse(head)
  }

  /** Every topic's head. */
  async topics () {
    return JSON.parse(await this._call(() => this._native.topics()))
  }

  /** One event by id, with its content, or null. */
  async get (id) {
    const event = await this._call(() => this._native.get(id))
    return event === null ? null : parseEvents(event)[0]
  }

  /** Stores bytes by their sha256; resolves to the hash ('sha256-…'). */
  async contentPut (bytes) {
    return this._call(() => this._native.contentPut(bytesOf(bytes, 'content')))
  }

  /** The content with `hash` ('sha256-…' or hex) as a Buffer, or null. */
  async contentGet (hash) {
    return this._call(() => this._native.contentGet(hash))
  }

  /** Where consumer `name` stands ({ name, acked }), or null. */
  async consumer (name) {
    return this._call(() => this._native.consumer(name))
  }

  /** Moves consumer `name` to event `id`, durably. */
  async ack (name, id) {
    await this._call(() => this._native.ack(name, id))
  }

  /**
   * Stores `bytes` (a Buffer, Uint8Array or string) as consumer `name`'s
   * snapshot made at event `at`, and moves the consumer to `at`: one
   * atomic, durable step.
   */
  async snapshotPut (name, at, bytes) {
    await this._call(() => this._native.snapshotPut(name, at, bytesOf(bytes, 'snapshot')))
  }

  /** Consumer `name`'s snapshot ({ at, bytes }), or null. */
  async snapshotGet (name) {
    return this._call(() => this._native.snapshotGet(name))
  }

  /**
   * Closes the store: waits for calls in flight, ends reads and
   * subscriptions, and frees the store's lock before it resolves.
   */
  async close () {
    this.closed = true
    await Promise.all(this._inFlight)
    // The addon's close resolves once the store is released (also when
    // another close did it).
    await call(this._native.close())
    openStores.delete(this)
  }

  _closeSync () {
    this.closed = true
    openStores.delete(this)
    this._native.closeSync()
  }
}

/**
 * A read: an async iterator of events. The next page is fetched while the
 * current one is handed out, and events come from a plain array (an async
 * generator costs more per event than the read itself).
 */
class Reading {
  constructor (reader) {
    this._reader = reader
    // Failing to start is reported by the first next().
    reader.catch(() => {})
    this._events = []
    this._at = 0
    this._ahead = null
    this._done = false
    this._queue = Promise.resolve()
    this._queued = 0
  }

  [Symbol.asyncIterator] () {
    return this
  }

  // Calls are served one after another, as an async generator's are; one
  // with an event at hand and none before it is answered at once.
  next () {
    if (this._queued === 0 && !this._done && this._at < this._events.length) {
      return Promise.resolve({ value: this._events[this._at++], done: false })
    }
    return this._enqueue(() => this._next())
  }

  return () {
    this._done = true
    return this._enqueue(() => this._return())
  }

  _enqueue (step) {
    this._queued += 1
    const result = this._queue.then(step).finally(() => { this._queued -= 1 })
    this._queue = result.catch(() => {})
    return result
  }

  _fetch () {
    return this._reader.then((reader) => call(reader.next(1024)))
  }

  async _next () {
    if (this._done) return { value: undefined, done: true }
    if (this._at < this._events.length) return { value: this._events[this._at++], done: false }
    while (!this._done) {
      const page = await (this._ahead || this._fetch())
      this._ahead = null
      if (page.done) break
      this._ahead = this._fetch()
      this._ahead.catch(() => {})
      this._events = parseEvents(page.events)
      this._at = 0
      if (this._events.length > 0) return { value: this._events[this._at++], done: false }
    }
    return this._return()
  }

  async _return () {
    this._done = true
    this._events = []
    const reader = await this._reader.catch(() => null)
    if (reader) await reader.close()
    return { value: undefined, done: true }
  }
}

/** A subscription: see `Store.subscribe`. */
class Subscription extends Readable {
  constructor (handle, highWaterMark = 1024) {
    super({ objectMode: true, highWaterMark })
    this._handle = handle
    this._page = Math.min(highWaterMark, 1024)
    this._pulling = false
    this.isCaughtUp = false
    this.caughtUp = new Promise((resolve, reject) => { this._resolveCaughtUp = resolve; this._rejectCaughtUp = reject })
    this.caughtUp.catch(() => {})
    // Failing to start is reported through the stream, as an 'error'.
    handle.catch(() => {})
    // Start reading ahead (up to the buffer), so `caughtUp` resolves even
    // before anyone reads.
    process.nextTick(() => { if (!this.destroyed) this.read(0) })
  }

  _read () {
    if (this._pulling) return
    this._pulling = true
    this._pull().finally(() => { this._pulling = false })
  }

  async _pull () {
    try {
      const handle = await this._handle
      for (;;) {
        const page = await call(handle.next(this._page))
        if (this.destroyed) return
        let room = true
        for (const event of parseEvents(page.events)) room = this.push(event)
        if (page.caughtUp && !this.isCaughtUp) {
          this.isCaughtUp = true
          this._resolveCaughtUp()
          this.emit('caughtUp')
        }
        if (page.done) {
          this.push(null)
          return
        }
        if (!room) return
      }
    } catch (error) {
      this.destroy(coded(error))
    }
  }

  _destroy (error, callback) {
    // Ended before the history was over: say so to who waits for it.
    if (!this.isCaughtUp) this._rejectCaughtUp(error || new errorClasses.closed('closed', 'the subscription ended before it caught up'))
    this._handle.then((handle) => handle.close(), () => {}).finally(() => callback(error))
  }

  /** Ends the subscription. */
  close () {
    this.destroy()
  }
}

/**
 * Opens (creating if missing) the store in `dir`. options.sync: 'always'
 * (the default: every append is fdatasynced before it resolves), 'none',
 * or 'interval:<ms>'. One process at a time holds a store: a second open
 * fails with a LockedError naming the holder.
 */
async function open (dir, options = {}) {
  if (typeof dir !== 'string' || dir === '') throw invalid('dir: the store directory, a string')
  const handle = await call(native.open(path.resolve(dir), options.sync))
  const store = new Store(handle, path.resolve(dir))
  openStores.add(store)
  installExitHook()
  return store
}

// ---- simple-event-sourcing's shape --------------------------------------

/**
 * An event source in the shape simple-event-sourcing's users know: JSON
 * events stored on one topic, handed in order to subscribed consumers.
 */
class EventSource {
  /** Opens the store in `dir`; events go to `options.topic` (default 'events'). */
  static async open (dir, options = {}) {
    const { topic = 'events', ...storeOptions } = options
    return new EventSource(await open(dir, storeOptions), topic, true)
  }

  /** An event source over an open `store`, on `topic`. */
  constructor (store, topic = 'events', ownsStore = false) {
    this.store_ = store
    this.topic = topic
    this._ownsStore = ownsStore
    this._consumers = new Set()
  }

  /** Resolves at once: the store knows its head as soon as it is open. */
  async hasCaughtUp () {}

  /** Stores `event` (any JSON value) durably; resolves to the stored event. */
  store (event) {
    return this.store_.append({ topic: this.topic, content: JSON.stringify(event) })
  }

  /** Stores `events` atomically, durably. */
  storeBatch (events) {
    return this.store_.appendBatch(events.map((event) => ({ topic: this.topic, content: JSON.stringify(event) })))
  }

  /** Hands every event, from where `consumer`'s snapshot stands, to it. */
  subscribe (consumer) {
    this._consumers.add(consumer)
    consumer._attach(this)
    return consumer
  }

  /** Stops the consumers (each saves a last snapshot) and closes the store if this source opened it. */
  async close () {
    for (const consumer of this._consumers) await consumer.close()
    this._consumers.clear()
    if (this._ownsStore) await this.store_.close()
  }
}

/**
 * A consumer keeping a state and its position together: `handler(event,
 * index, consumer)` gets each event's JSON value and its seq, and updates
 * `consumer.state` (or returns the new state). Every `snapshotEvery`
 * events (default 1000) and whenever it is idle, state and position are
 * saved as consumer `snapshot`'s snapshot in one atomic step, so after a
 * crash it resumes from the last snapshot with no event's effect on the
 * state missing or doubled.
 */
class EventConsumer {
  constructor (snapshot, config = {}, defaultState = {}, handler = () => {}) {
    if (typeof snapshot !== 'string') throw invalid('snapshot: the consumer\'s name, a string')
    this.name = snapshot
    this.config = { snapshotEvery: 1000, ...config }
    this.defaultState = defaultState
    this.handler = handler
    this.state = undefined
    this.position = null
    this._caughtUp = new Promise((resolve, reject) => { this._resolveCaughtUp = resolve; this._rejectCaughtUp = reject })
    this._caughtUp.catch(() => {})
    this._subscription = null
    this._running = null
    this._closing = false
  }

  /** Resolves once the history is handled and saved (then live events follow). */
  hasCaughtUp () {
    return this._caughtUp
  }

  _attach (source) {
    this._running = this._run(source).then(
      () => this._rejectCaughtUp(new errorClasses.closed('closed', 'the consumer was closed before it caught up')),
      (error) => {
        this._rejectCaughtUp(error)
        this.error = error
      })
  }

  async _run (source) {
    const store = source.store_
    const saved = await store.snapshotGet(this.name)
    if (this._closing) return
    this.state = saved ? JSON.parse(saved.bytes.toString('utf8')) : structuredClone(this.defaultState)
    this.position = saved ? saved.at : null
    const subscription = store.subscribe(source.topic, this.position ? { after: this.position } : {})
    this._subscription = subscription
    let unsaved = 0
    let caughtUp = false
    let handling = false
    // Saves run one at a time, and a save takes state and position
    // together while no event is being handled (a handler may await).
    let saving = Promise.resolve()
    const save = () => {
      const step = async () => {
        if (handling || unsaved === 0 || this.position === null) return
        const [at, bytes, count] = [this.position, JSON.stringify(this.state), unsaved]
        await store.snapshotPut(this.name, at, bytes)
        unsaved -= count
      }
      const done = saving.then(step)
      saving = done.catch(() => {})
      return done
    }
    const idle = () => caughtUp && !handling && subscription.readableLength === 0
    subscription.on('caughtUp', () => {
      caughtUp = true
      // Nothing (more) to handle in the history: caught up once saved.
      if (idle()) save().then(() => this._resolveCaughtUp(), (error) => this._rejectCaughtUp(error))
    })
    try {
      for await (const event of subscription) {
        handling = true
        const next = await this.handler(valueOf(event), event.seq, this)
        if (next !== undefined) this.state = next
        this.position = event.id
        unsaved += 1
        handling = false
        // Enough handled, or idle (nothing more read ahead): save.
        if (unsaved >= this.config.snapshotEvery || idle()) await save()
        if (idle()) this._resolveCaughtUp()
      }
    } catch (error) {
      if (!this._closing) throw error
    } finally {
      handling = false
    }
    await save()
  }

  /** Stops after the event in hand, saving a last snapshot. */
  async close () {
    this._closing = true
    if (this._subscription) this._subscription.close()
    if (this._running) await this._running
  }
}

/** An event's content as a JSON value (its text when it is not JSON; null without content). */
function valueOf (event) {
  const content = event.content ?? (event.content_base64 === undefined ? undefined : Buffer.from(event.content_base64, 'base64').toString('utf8'))
  if (content === undefined) return null
  try {
    return JSON.parse(content)
  } catch {
    return content
  }
}

module.exports = {
  open,
  Store,
  Subscription,
  EventSource,
  EventConsumer,
  CairnError,
  contentOf,
  errors: errorClasses
}
// Each kind's class by its name too (InvalidError, ExpectationFailedError, …).
for (const Class of Object.values(errorClasses)) module.exports[Class.name] = Class
