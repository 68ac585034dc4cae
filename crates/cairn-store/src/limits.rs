//! Every bound the engine enforces, with its unit, in one place.
//!
//! Defaults that a user may change live in [`crate::Options`]; the constants
//! here are hard ceilings that keep the on-disk format and memory use bounded.

/// Longest topic name, in bytes (design §2).
pub const TOPIC_BYTES_MAX: usize = 255;

/// Longest event type, in bytes.
pub const TYPE_BYTES_MAX: usize = 255;

/// Longest user name stamped on an event, in bytes.
pub const USER_BYTES_MAX: usize = 255;

/// Longest consumer name, in bytes.
pub const CONSUMER_NAME_BYTES_MAX: usize = 255;

/// Longest idempotency key the store keeps, in bytes. Services scope a
/// caller's key (at most 255 bytes) by who gave it, so stored keys are longer.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 512;

/// Longest state key, in bytes. The index's keys are limited to 64 KiB
/// (fjall asserts it), and a state key is stored under a short prefix;
/// front ends build state keys from names they bound themselves.
pub const STATE_KEY_BYTES_MAX: usize = 4 * 1024;

/// Largest `meta` JSON object, in bytes of its compact text.
pub const META_BYTES_MAX: usize = 64 * 1024;

/// Default largest payload of one event, in bytes (configurable).
pub const PAYLOAD_BYTES_MAX_DEFAULT: u64 = 8 * 1024 * 1024;

/// Ceiling for the configurable payload limit, in bytes.
pub const PAYLOAD_BYTES_MAX_CEILING: u64 = 1024 * 1024 * 1024;

/// Default payload size at or below which the bytes are kept inline in the
/// event record instead of in a content-store file.
pub const INLINE_PAYLOAD_BYTES_DEFAULT: u64 = 4 * 1024;

/// Ceiling for the inline threshold: inline payloads travel through the log
/// and the live ring, so they must stay small.
pub const INLINE_PAYLOAD_BYTES_CEILING: u64 = 64 * 1024;

/// Most events in one atomic batch.
pub const BATCH_EVENTS_MAX: usize = 100_000;

/// Largest encoded log record, in bytes. A batch bigger than this is refused.
/// Together with `GROUP_BYTES_MAX` it bounds how much of the log's end one
/// unacknowledged write can cover, which recovery uses to tell a torn tail
/// (cut it) from rot further back (refuse to open).
pub const RECORD_BYTES_MAX: usize = 32 * 1024 * 1024;

/// Default segment size at which the log rolls to a new file, in bytes.
pub const SEGMENT_BYTES_DEFAULT: u64 = 256 * 1024 * 1024;

/// Smallest configurable segment size, in bytes.
pub const SEGMENT_BYTES_MIN: u64 = 4 * 1024;

/// Largest segment: positions store the offset as a `u32`.
pub const SEGMENT_BYTES_MAX: u64 = u32::MAX as u64;

/// Requests the writer may have queued before appenders wait (backpressure).
pub const WRITER_QUEUE_DEPTH: usize = 16 * 1024;

/// Most bytes the writer gathers into one group before it commits.
pub const GROUP_BYTES_MAX: usize = 8 * 1024 * 1024;

/// How far (in log bytes) the index may fall behind the committed log
/// before the writer waits for it. Bounds read-barrier waits and the replay
/// after a crash.
pub const INDEX_LAG_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// Unindexed log bytes at which a commit wakes the indexer at once.
pub const INDEX_WAKE_BYTES: u64 = 1024 * 1024;

/// Otherwise the indexer catches up this long after a commit, in ms, or as
/// soon as a reader waits for it.
pub const INDEX_WAKE_DELAY_MS: u64 = 2;

/// Records the indexer applies per fjall batch.
pub const INDEX_RECORDS_PER_BATCH: usize = 4096;

/// Recently committed events kept in memory for live subscribers. A
/// subscriber further behind than this reads from storage instead.
pub const LIVE_RING_EVENTS: usize = 16 * 1024;

/// Events a subscriber reads from storage per step while catching up.
pub const SUBSCRIBER_CHUNK_EVENTS: usize = 512;

/// Payload bytes at which one step of a read stops loading more events
/// (it always returns at least one): a chunk of events of the largest
/// payloads stays a few MiB, not thousands of times the payload limit.
pub const READ_CHUNK_CONTENT_BYTES: usize = 4 * 1024 * 1024;

/// Expired events removed per retention sweep step, so the writer is never
/// held for long.
pub const EXPIRE_EVENTS_PER_STEP: usize = 4096;

/// Share of a sealed segment's bytes that removed events must make before
/// the background compaction rewrites it (`Options::compact_ratio`).
pub const COMPACT_RATIO_DEFAULT: f64 = 0.5;

/// Seconds a sealed segment waits before the background compaction
/// compresses it when nothing in it is removed (a bulk load keeps its cores).
pub const COMPRESS_AFTER_SECS: u64 = 30;

/// Default window in which an idempotency key returns the original events.
pub const IDEMPOTENCY_WINDOW_MS_DEFAULT: u64 = 24 * 60 * 60 * 1000;

const _: () = assert!(INLINE_PAYLOAD_BYTES_CEILING < RECORD_BYTES_MAX as u64);
const _: () = assert!(SEGMENT_BYTES_MIN < SEGMENT_BYTES_DEFAULT);
const _: () = assert!(SEGMENT_BYTES_DEFAULT <= SEGMENT_BYTES_MAX);
const _: () = assert!(SUBSCRIBER_CHUNK_EVENTS < LIVE_RING_EVENTS);
