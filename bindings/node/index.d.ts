// Types of cairn-store (index.js).

import { Readable } from 'node:stream'

/** An event as stored and read back (the `cairn` command line's JSON form). */
export interface StoredEvent {
  /** Global position: a time-ordered SCRU128 id; ids sort in append order. */
  id: string
  topic: string
  /** Gapless position within the topic, from 0. */
  seq: number
  type?: string
  meta?: Record<string, unknown>
  /** `sha256-<base64>` of the payload, with its size in bytes. */
  hash?: string
  size?: number
  ttl?: string
  user?: string
  /** The payload, when read with content and valid UTF-8. */
  content?: string
  /** The payload, when read with content and not UTF-8. */
  content_base64?: string
}

/** Where an appended event landed. */
export interface Landed {
  id: string
  topic: string
  seq: number
  type?: string
  /** The payload's hash (`append` of one event). */
  hash?: string
}

/** An event to append (the `cairn append --batch` line form). */
export interface NewEvent {
  topic: string
  /** Text, bytes, or any other JSON value (stored as its JSON text). */
  content?: string | Uint8Array | unknown
  content_base64?: string
  type?: string
  meta?: Record<string, unknown>
  /** `none`, `exists`, `any`, or the topic's current last seq. */
  expect?: string | number
  /** `forever`, `ephemeral`, `time:<duration>` or `last:<n>`. */
  ttl?: string
  /** Idempotency key (`append` only; a batch's goes in its options). */
  key?: string
}

export interface OpenOptions {
  /** `always` (default: durable before it resolves), `none`, `interval:<ms>`. */
  sync?: string
}

export interface Query {
  topic?: string
  /** `orders.*`, `orders.>`, `>` (every topic, the default). */
  pattern?: string
  /** Start after this id. */
  after?: string
  /** Start at this seq (with an exact topic). */
  fromSeq?: number
  /** Only the newest `last`. */
  last?: number
  limit?: number
  reverse?: boolean
  /** Load payloads (default true). */
  content?: boolean
}

export interface SubscribeOptions {
  after?: string
  fromSeq?: number
  content?: boolean
  /** Events buffered ahead of the reader (default 1024). */
  highWaterMark?: number
}

export interface TopicHead {
  topic: string
  count: number
  first_seq: number | null
  last_seq: number
  last_id: string
}

/** History, then live events: a Readable in object mode and an async iterable. */
export declare class Subscription extends Readable implements AsyncIterable<StoredEvent> {
  /** Resolves once the history has been read from the store. */
  readonly caughtUp: Promise<void>
  readonly isCaughtUp: boolean
  close(): void
  [Symbol.asyncIterator](): AsyncIterableIterator<StoredEvent>
}

export declare class Store {
  readonly dir: string
  readonly closed: boolean
  append(event: NewEvent): Promise<Landed>
  appendBatch(events: NewEvent[], options?: { key?: string }): Promise<Landed[]>
  read(query?: Query): AsyncIterableIterator<StoredEvent>
  subscribe(pattern: string, options?: SubscribeOptions): Subscription
  head(topic: string): Promise<TopicHead | null>
  topics(): Promise<TopicHead[]>
  get(id: string): Promise<StoredEvent | null>
  contentPut(bytes: Uint8Array | string): Promise<string>
  contentGet(hash: string): Promise<Buffer | null>
  consumer(name: string): Promise<{ name: string, acked: string } | null>
  ack(name: string, id: string): Promise<void>
  snapshotPut(name: string, at: string, bytes: Uint8Array | string): Promise<void>
  snapshotGet(name: string): Promise<{ at: string, bytes: Buffer } | null>
  close(): Promise<void>
}

export declare function open(dir: string, options?: OpenOptions): Promise<Store>

/** The payload of an event read with its content, as bytes. */
export declare function contentOf(event: StoredEvent): Buffer | null

export declare class EventSource {
  static open(dir: string, options?: OpenOptions & { topic?: string }): Promise<EventSource>
  constructor(store: Store, topic?: string)
  readonly topic: string
  hasCaughtUp(): Promise<void>
  store(event: unknown): Promise<Landed>
  storeBatch(events: unknown[]): Promise<Landed[]>
  subscribe<S>(consumer: EventConsumer<S>): EventConsumer<S>
  close(): Promise<void>
}

export declare class EventConsumer<S = any> {
  constructor(
    snapshot: string,
    config?: { snapshotEvery?: number },
    defaultState?: S,
    handler?: (event: any, index: number, consumer: EventConsumer<S>) => S | void | Promise<S | void>
  )
  readonly name: string
  state: S
  /** Id of the last event handled. */
  position: string | null
  /** Set if the consumer stopped on an error. */
  error?: Error
  hasCaughtUp(): Promise<void>
  close(): Promise<void>
}

/** An error of the store; `code` is the engine's error kind. */
export declare class CairnError extends Error {
  readonly code: string
}

export declare const errors: {
  invalid: typeof CairnError
  expectation_failed: typeof CairnError
  idempotency_conflict: typeof CairnError
  too_large: typeof CairnError
  not_found: typeof CairnError
  in_use: typeof CairnError
  locked: typeof CairnError
  shutting_down: typeof CairnError
  poisoned: typeof CairnError
  corrupt: typeof CairnError
  closed: typeof CairnError
}
