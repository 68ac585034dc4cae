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
  /** Resolves once the history has been read from the store; rejects if the subscription ends first. */
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
  /** An async iterator; a read left early should be ended with `return()` (a `for await` does it). */
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

export declare class InvalidError extends CairnError {}
export declare class ExpectationFailedError extends CairnError {}
export declare class IdempotencyConflictError extends CairnError {}
export declare class TooLargeError extends CairnError {}
export declare class NotFoundError extends CairnError {}
export declare class InUseError extends CairnError {}
export declare class LockedError extends CairnError {}
export declare class ShuttingDownError extends CairnError {}
export declare class PoisonedError extends CairnError {}
export declare class CorruptError extends CairnError {}
export declare class IndexError extends CairnError {}
export declare class IoError extends CairnError {}
export declare class PreconditionFailedError extends CairnError {}
export declare class ExistsError extends CairnError {}
export declare class ForbiddenError extends CairnError {}
export declare class UnauthorizedError extends CairnError {}
export declare class ThrottledError extends CairnError {}
export declare class OverloadedError extends CairnError {}
export declare class ClosedError extends CairnError {}

/** Each kind's class by its code. */
export declare const errors: {
  invalid: typeof InvalidError
  expectation_failed: typeof ExpectationFailedError
  idempotency_conflict: typeof IdempotencyConflictError
  too_large: typeof TooLargeError
  not_found: typeof NotFoundError
  in_use: typeof InUseError
  locked: typeof LockedError
  shutting_down: typeof ShuttingDownError
  poisoned: typeof PoisonedError
  corrupt: typeof CorruptError
  index: typeof IndexError
  io: typeof IoError
  precondition_failed: typeof PreconditionFailedError
  exists: typeof ExistsError
  forbidden: typeof ForbiddenError
  unauthorized: typeof UnauthorizedError
  throttled: typeof ThrottledError
  overloaded: typeof OverloadedError
  closed: typeof ClosedError
}
