//! cairn-bench: throughput and latency of the engine, printed side by side
//! with a raw baseline written here (append + fdatasync on a plain file with
//! the same batch sizes), so every figure comes with its ratio to what the
//! disk itself can do. Numbers belong in the README, not in tests.

mod cli;
mod http;
mod hub;
mod measure;
mod postgres;
mod procs;
mod redis;
mod scenarios;

use clap::{Parser, Subcommand};

/// Benchmarks for cairn. Every run prints a markdown table.
#[derive(Parser, Debug)]
#[command(name = "cairn-bench", about)]
struct Args {
    /// Where to create the temporary stores (the disk under test).
    #[arg(long, default_value = ".", global = true)]
    dir: std::path::PathBuf,
    #[command(subcommand)]
    command: Option<Which>,
}

#[derive(Subcommand, Debug, Clone)]
enum Which {
    /// Everything below (the default).
    All,
    /// Durable appends: single from 1, 8, 64 tasks; batches of 64 and 1,024;
    /// 100,000 events in one go; with the raw baseline.
    Append,
    /// Only the 100,000 events in one durable batch, alternating with the
    /// raw write + fdatasync of as many bytes, `rounds` times (for
    /// profiling that path).
    Bulk {
        /// Rounds.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Only durable batches of `size` events from one caller, alternating
    /// with the raw write + fdatasync of as many bytes per batch, `rounds`
    /// times (for profiling that path).
    Batches {
        /// Events per batch.
        #[arg(long, default_value_t = 1024)]
        size: usize,
        /// Rounds.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Give each event a payload of its own (its number in the first 8
        /// bytes), as real content is: content hashes, and the content
        /// references' keys, then come in random order. Without it every
        /// event carries the same 100 bytes, as in the other benchmarks.
        #[arg(long)]
        distinct: bool,
    },
    /// Only single durable appends from `tasks` concurrent tasks, alternating
    /// with the raw write + fdatasync of batches of `tasks` events, `rounds`
    /// times (for profiling that path).
    Tasks {
        /// Concurrent tasks.
        #[arg(long, default_value_t = 64)]
        tasks: usize,
        /// Rounds.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Full scan, and scan of one topic, of 1 million events (instructions
    /// per event: `valgrind --tool=callgrind --toggle-collect='*scan_rounds*'`
    /// with `--events 100000`).
    Scan {
        /// Events in the store.
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
        /// Keep the store here and scan it as it is when it exists (so a
        /// profiler can skip the fill).
        #[arg(long)]
        store: Option<std::path::PathBuf>,
    },
    /// Only the HTTP NDJSON catch-up read of 1 million events, `rounds`
    /// times (for profiling that path).
    CatchUp {
        /// Rounds.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Keep the store here and read it as it is when it exists.
        #[arg(long)]
        store: Option<std::path::PathBuf>,
    },
    /// The CRC-32C of event frames (as every read checks one) next to the
    /// `crc32c` crate's, on frame-sized buffers, alternating.
    Crc,
    /// The content references' pending map: inserts of 262,144 keys (8
    /// bytes of a hash, then a 16-byte id) as bytes next to the same keys as
    /// two integers, in the order one payload gives (one hash, ids rising)
    /// and the order distinct payloads give (random hashes), alternating.
    RefsMap,
    /// Appends to a `last:10` topic whose events all carry the same stored
    /// content (8 KiB: a file), each indexed before the next (as when a
    /// client appends more slowly than the indexer batches), next to the
    /// same appends kept for ever, alternating: the indexer's CPU per event
    /// at each size. Each trim checks whether the file lost its last
    /// reference, which should not cost more as references pile up.
    Trims {
        /// Events per round (comma-separated sizes).
        #[arg(long, value_delimiter = ',', default_values_t = [5_000, 20_000])]
        events: Vec<usize>,
        /// Rounds.
        #[arg(long, default_value_t = 2)]
        rounds: usize,
    },
    /// Overlapping fdatasyncs: appends of 2 KiB to one file, each followed by
    /// an fdatasync, from 1 and from 2 threads (each with its own open file),
    /// alternating; the sync rate of each (what pipelined group commit needs).
    Syncs {
        /// Rounds of 2 s each.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Publish-to-subscriber latency.
    Latency,
    /// The HTTP server over its Unix socket: durable appends from 1 and 16
    /// clients, NDJSON catch-up of 1 million events, follow latency.
    Http,
    /// The Redis protocol next to a real redis-server (AOF always, and no
    /// persistence) in the same run: redis-benchmark XADD at 1, 50, and 50
    /// pipelined clients; XRANGE of 1 million entries; XREAD BLOCK latency.
    Redis,
    /// Compaction of a store whose log is half removed events: its rate,
    /// and single durable appends while it runs next to appends while
    /// nothing compacts.
    Compact {
        /// Events in the store.
        #[arg(long, default_value_t = 2_000_000)]
        events: usize,
        /// Rounds (each fills a fresh store).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Compressed segments: the ratio on JSON-like events, the rate of
    /// compressing, and a full scan of compressed segments next to the
    /// same scan of plain ones.
    Compress {
        /// Events in the store.
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
    },
    /// How cairn on PostgreSQL keeps a global order: durable appends from 1
    /// and 16 clients on a private cluster (Debian's postgresql package),
    /// unsafe bigserial inserts next to a sequencer row per append and a
    /// grouped sequencer (one per commit group, as cairn's writer does).
    PostgresOrder {
        /// Rounds (the ways alternate within each).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds per way and round.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
    },
    /// cairn on PostgreSQL: durable appends from 1 and 16 clients and
    /// batches of 100 through cairn's PostgreSQL backend next to raw
    /// bigserial inserts in the same run, a catch-up read, and the latency
    /// from an append through this process to delivery by a `cairn serve`
    /// process on the same database (needs target/release/cairn).
    Postgres {
        /// Rounds (cairn and the raw baseline alternate within each).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds per way and round.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
        /// Events in the catch-up read.
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
    },
    /// Processors: a handler's throughput with its checkpointed commits
    /// and a command's call-to-response latency, next to the same programs
    /// run without cairn.
    Proc {
        /// Rounds (each on a fresh store).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Keyed transactions through the evt hub from 1 and 16 clients with 1
    /// and 10 actions (next to plain batches of the same events), a key's
    /// state next to a point read, and publish -> update at 100
    /// subscribers.
    Hub,
    /// Open time of a store with 10 million events.
    Open {
        /// Events in the store.
        #[arg(long, default_value_t = 10_000_000)]
        events: usize,
    },
    /// The command line on stores of several sizes: `cairn head` and one
    /// durable `cairn append`, each its own process, next to the process's
    /// start alone (needs target/release/cairn).
    Cli {
        /// Store sizes, in events (comma-separated).
        #[arg(long, value_delimiter = ',', default_values_t = [0, 1_000_000, 10_000_000])]
        events: Vec<usize>,
    },
    /// (Used by `open`.) Fill a store, say so, and wait to be killed.
    #[command(hide = true)]
    FillAndWait {
        /// The store.
        store: std::path::PathBuf,
        /// Events to append.
        events: usize,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let which = args.command.unwrap_or(Which::All);
    if let Which::FillAndWait { store, events } = which {
        return scenarios::fill_and_wait(&store, events);
    }
    let bench = scenarios::Bench::new(&args.dir)?;
    println!("| benchmark | result | p50 | p99 | p99.9 | baseline | ratio |");
    println!("|---|---|---|---|---|---|---|");
    if matches!(which, Which::All | Which::Append) {
        bench.append()?;
    }
    match which {
        Which::All => bench.scan(1_000_000, None)?,
        Which::Scan { events, ref store } => bench.scan(events, store.as_deref())?,
        _ => {}
    }
    if matches!(which, Which::All | Which::Latency) {
        bench.latency()?;
    }
    if matches!(which, Which::All | Which::Http) {
        bench.http()?;
    }
    if matches!(which, Which::All | Which::Redis) {
        bench.redis()?;
    }
    match which {
        Which::All => bench.open(10_000_000)?,
        Which::Open { events } => bench.open(events)?,
        Which::Cli { events } => bench.cli(&events)?,
        Which::Bulk { rounds } => bench.bulk(rounds)?,
        Which::Batches { size, rounds, distinct } => bench.batches(size, rounds, distinct)?,
        Which::Tasks { tasks, rounds } => bench.tasks(tasks, rounds)?,
        Which::Crc => scenarios::crc(),
        Which::RefsMap => scenarios::refs_map(),
        Which::Trims { ref events, rounds } => bench.trims(events, rounds)?,
        Which::Syncs { rounds } => bench.syncs(rounds)?,
        Which::CatchUp { rounds, ref store } => bench.catch_up(rounds, store.as_deref())?,
        Which::Compact { events, rounds } => bench.compact(events, rounds)?,
        Which::Compress { events } => bench.compress(events)?,
        Which::Proc { rounds } => bench.procs(rounds)?,
        Which::Hub => bench.hub()?,
        Which::PostgresOrder { rounds, seconds } => postgres::order(rounds, seconds)?,
        Which::Postgres { rounds, seconds, events } => postgres::cairn(rounds, seconds, events)?,
        _ => {}
    }
    Ok(())
}
