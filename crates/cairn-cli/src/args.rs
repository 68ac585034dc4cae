//! Command-line arguments (clap). Each subcommand's help has an example.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// cairn: an event store. Append events, read them back in order, follow them live.
///
/// The store is a directory (--store, else $CAIRN_STORE, else ./cairn-data).
/// When a server runs on it (`cairn serve`), commands go through its socket
/// (<store>/cairn.sock); otherwise they open the store themselves. --remote
/// reaches a server over TCP. Output is NDJSON, one event per line, ready for jq.
#[derive(Parser, Debug)]
#[command(name = "cairn", version, propagate_version = true)]
#[command(
    after_help = "Examples:\n  cairn serve                               a server on ./cairn-data\n  echo hello | cairn append greetings\n  cairn cat greetings --content\n  cairn cat 'orders.>' --follow --threshold\n  CAIRN_TOKEN=... cairn --remote https://host:8080 cat"
)]
pub struct Cli {
    /// The store directory. [default: ./cairn-data]
    #[arg(long, global = true, env = "CAIRN_STORE", value_name = "DIR")]
    pub store: Option<PathBuf>,

    /// Durability of appends when opening the store: always (fdatasync
    /// before each acknowledgement), interval:<duration> (e.g.
    /// interval:100ms) or none. [default: always]
    #[arg(long, global = true, env = "CAIRN_SYNC", value_name = "MODE")]
    pub sync: Option<String>,

    /// Talk to the server at this URL (http://host:port or https://…)
    /// instead of a local store. Authenticate with --user (password in
    /// $CAIRN_PASSWORD) or a token in $CAIRN_TOKEN.
    #[arg(long, global = true, env = "CAIRN_REMOTE", value_name = "URL")]
    pub remote: Option<String>,

    /// The user for --remote (its password comes from $CAIRN_PASSWORD).
    #[arg(long, global = true, env = "CAIRN_USER", value_name = "NAME")]
    pub user: Option<String>,

    /// A PEM file of CA certificates to trust for https --remote (default:
    /// the system's).
    #[arg(long, global = true, env = "CAIRN_CACERT", value_name = "FILE")]
    pub cacert: Option<PathBuf>,

    /// Keep the events in this PostgreSQL database instead of the store
    /// directory (postgres://user:password@host:port/database or a key=value
    /// string); the directory then holds only a server's socket, lock and
    /// users. Commands open the database themselves when no server runs
    /// on the directory (`cairn --postgres URL import < export.ndjson`).
    /// Prefer $CAIRN_POSTGRES for a URL with a password.
    #[arg(long, global = true, env = "CAIRN_POSTGRES", value_name = "URL", hide_env_values = true)]
    pub postgres: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the store over HTTP: on <store>/cairn.sock (trusted, mode 0600)
    /// and, with --http, on TCP (authenticated). Stops cleanly on SIGINT/SIGTERM.
    #[command(
        after_help = "Examples:\n  cairn serve\n  cairn serve --http 127.0.0.1:8080\n  cairn serve --http 0.0.0.0:8443 --tls-cert cert.pem --tls-key key.pem\n  curl --unix-socket cairn-data/cairn.sock http://localhost/v1/events"
    )]
    Serve(Box<cairn_server::ServeArgs>),
    /// Users for TCP access: passwords (argon2id), per-topic read/write
    /// patterns, bearer tokens.
    #[command(subcommand)]
    User(UserCommand),
    /// Append one event (payload from stdin), or a batch of NDJSON events with --batch.
    #[command(
        after_help = "Examples:\n  echo '{\"sku\":42}' | cairn append orders.17 --type OrderPlaced --expect none\n  printf '{\"topic\":\"a\",\"content\":\"x\"}\\n{\"topic\":\"b\",\"content\":\"y\"}\\n' | cairn append --batch"
    )]
    Append(AppendArgs),
    /// Print events matching a pattern (default: all), oldest first.
    #[command(
        after_help = "Examples:\n  cairn cat                         everything\n  cairn cat 'orders.*' --last 10    the 10 newest events of orders.<x>\n  cairn cat orders.17 --from-seq 5  one topic from seq 5\n  cairn cat --follow --threshold    history, a threshold marker, then live events"
    )]
    Cat(CatArgs),
    /// Print one event by id.
    #[command(after_help = "Example:\n  cairn get 0v9z8sxa1jsk6wq3h1zfrm5hx --content")]
    Get {
        /// The event id.
        id: String,
        /// Include the payload (`content`, or `content_base64` when not UTF-8).
        #[arg(long)]
        content: bool,
    },
    /// Print the newest stored event of a topic.
    #[command(after_help = "Example:\n  cairn head config --content")]
    Head {
        /// The topic.
        topic: String,
        /// Include the payload.
        #[arg(long)]
        content: bool,
    },
    /// List topics with their event count, first and last seq, and last id.
    #[command(after_help = "Example:\n  cairn topics | jq -r .topic")]
    Topics,
    /// Remove one event by id (seqs of the others are unchanged).
    #[command(after_help = "Example:\n  cairn rm 0v9z8sxa1jsk6wq3h1zfrm5hx")]
    Rm {
        /// The event id.
        id: String,
    },
    /// The content store: payloads by sha256.
    #[command(subcommand)]
    Cas(CasCommand),
    /// Durable consumers: named cursors that resume after their last ack.
    #[command(subcommand)]
    Consumer(ConsumerCommand),
    /// Keyed records' latest state: a topic's keys, or one key's state (as
    /// of a revision with --rev).
    #[command(after_help = "Examples:\n  cairn state accounts\n  cairn state accounts alice --rev 1767225600000")]
    State {
        /// The topic.
        topic: String,
        /// One key.
        key: Option<String>,
        /// The state as of this revision (milliseconds; replayed).
        #[arg(long, requires = "key")]
        rev: Option<u64>,
    },
    /// Processors: programs a running server runs off the log (handlers,
    /// generators, commands), registered as events.
    #[command(subcommand)]
    Proc(ProcCommand),
    /// Check every record checksum, the order invariants and every content hash.
    #[command(after_help = "Example:\n  cairn verify && echo store is sound")]
    Verify,
    /// Write events (with content) as NDJSON for `cairn import`.
    #[command(after_help = "Example:\n  cairn export > backup.ndjson\n  cairn --store restored import < backup.ndjson")]
    Export {
        /// Topic or pattern (`*` one level, `>` the rest); default: everything.
        #[arg(default_value = ">")]
        pattern: String,
    },
    /// Read an export (NDJSON) from stdin, keeping ids, seqs and payloads.
    #[command(after_help = "Example:\n  cairn --store restored import < backup.ndjson")]
    Import,
    /// Copy a consistent snapshot of the store into DIR while it runs.
    ///
    /// The copy holds every event acknowledged before the backup began, with
    /// consumers, consumer groups and their snapshots, state records, users
    /// and tokens, and content files. Run it again into the same DIR and only
    /// what is new is copied. To restore, open DIR as a store (its index is
    /// rebuilt from its log the first time). Through a running server it
    /// needs an administrator, and DIR is a path on the server's machine.
    #[command(
        after_help = "Examples:\n  cairn backup /backups/cairn        # then again later: copies only what is new\n  cairn --store /backups/cairn verify\n  cairn --store /backups/cairn serve   # a restore is opening the copy"
    )]
    Backup {
        /// Where the copy goes: a new or empty directory, or an earlier backup of this store.
        dir: std::path::PathBuf,
    },
    /// Give back the disk that removed events hold, now.
    ///
    /// Removed events (rm, XDEL, trims, `last:` and `time:` retention) stay
    /// in the log's sealed segments until a segment is rewritten without
    /// them; `cairn serve` does that in the background once they make half
    /// a segment (--compact-ratio). This does it now, for every sealed
    /// segment holding at least RATIO of removed bytes. Ids and seqs do not
    /// change; readers and writers go on. Through a running server it needs
    /// an administrator.
    #[command(after_help = "Examples:\n  cairn compact\n  cairn compact --ratio 0.3")]
    Compact {
        /// Only segments at least this share of whose bytes are removed events (0 to 1).
        #[arg(long, default_value_t = 0.0)]
        ratio: f64,
    },
}

#[derive(Args, Debug)]
pub struct AppendArgs {
    /// The topic (1-255 bytes of printable UTF-8 but `*` `>` `,`; `.` separates levels). Not with --batch.
    #[arg(required_unless_present = "batch")]
    pub topic: Option<String>,
    /// Event type, e.g. OrderPlaced.
    #[arg(long = "type", value_name = "TYPE")]
    pub kind: Option<String>,
    /// Metadata: a JSON object.
    #[arg(long, value_name = "JSON")]
    pub meta: Option<String>,
    /// Expectation on the topic: any, none (empty topic), <seq> (last seq), unchanged-since:<id>.
    #[arg(long, value_name = "EXPECT")]
    pub expect: Option<String>,
    /// Retention: forever, ephemeral, time:<duration> (e.g. time:1h), last:<n>.
    #[arg(long, value_name = "TTL")]
    pub ttl: Option<String>,
    /// Idempotency key: a retry with the same key returns the original event(s).
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// Append an event with no payload (do not read stdin).
    #[arg(long, conflicts_with = "batch")]
    pub empty: bool,
    /// Read NDJSON events from stdin ({"topic", "type"?, "meta"?, "content"|"content_base64"?, "ttl"?, "expect"?}) and commit them atomically.
    #[arg(long, conflicts_with_all = ["topic", "kind", "meta", "ttl", "expect"])]
    pub batch: bool,
    /// Append the event now and its payload in pieces as stdin delivers
    /// them: followers see the event at once and read its content while it
    /// is written (`GET /v1/events/{id}/content`); hash and size are final
    /// at the end of stdin.
    #[arg(long, conflicts_with_all = ["batch", "expect", "key", "empty"])]
    pub chunked: bool,
}

#[derive(Args, Debug)]
pub struct CatArgs {
    /// Topic or pattern: `orders.17`, `orders.*` (one level), `orders.>` (the rest), `>` (all).
    #[arg(default_value = ">")]
    pub pattern: String,
    /// Only events after this id.
    #[arg(long, value_name = "ID")]
    pub after: Option<String>,
    /// Only events from this seq on (single topic).
    #[arg(long, value_name = "N")]
    pub from_seq: Option<u64>,
    /// Only the newest N events.
    #[arg(long, value_name = "N")]
    pub last: Option<u64>,
    /// At most N events.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// Newest first.
    #[arg(long, conflicts_with = "follow")]
    pub reverse: bool,
    /// After history, keep printing new events until interrupted.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// With --follow: print a cairn.threshold frame when history is over.
    #[arg(long, requires = "follow")]
    pub threshold: bool,
    /// With --follow: print a cairn.pulse frame after MS milliseconds without events.
    #[arg(long, value_name = "MS", requires = "follow")]
    pub pulse: Option<u64>,
    /// Include payloads (`content`, or `content_base64` when not UTF-8).
    #[arg(long)]
    pub content: bool,
    /// Resume after the last id this consumer acknowledged (see `cairn consumer`).
    #[arg(long, value_name = "NAME", conflicts_with_all = ["after", "from_seq", "last"])]
    pub consumer: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum CasCommand {
    /// Store stdin in the content store; print its hash (SRI).
    #[command(after_help = "Example:\n  cairn cas put < photo.jpg")]
    Put,
    /// Write the content with this hash (SRI or hex) to stdout, verified.
    #[command(after_help = "Example:\n  cairn cas get sha256-LCa0a2j/xo/5m0U8HTBBNBNCLXBkg7+g+YpeiGJm564= > out.bin")]
    Get {
        /// sha256-<base64> or 64 hex digits.
        hash: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum ProcCommand {
    /// Register (or replace) processor NAME; it runs in `cairn serve`.
    #[command(
        after_help = "A handler reads one event per line on stdin (the `cairn cat --content` form) and, for each,
prints its output events (the `cairn append --batch` line form; topic defaults to NAME.out)
and then one empty line. Its outputs and its position commit together: exactly once in effect.
A generator's stdout lines become events on NAME.recv; a command runs once per event on NAME.call
and answers on NAME.response (or NAME.error).

Examples:
  cairn proc create upper --kind handler --topics 'orders.>' -- \\
      jq -rc --unbuffered '{content: (.content | ascii_upcase)}, \"\"'
  cairn proc create ticker --kind generator --sh 'while sleep 1; do date; done'
  cairn proc create resize --kind command --concurrency 2 --timeout-ms 5000 -- ./resize.sh"
    )]
    Create(Box<ProcCreateArgs>),
    /// List processors: state, pid, restarts, position, lag.
    #[command(after_help = "Example:\n  cairn proc ls")]
    Ls,
    /// A processor's stderr lines (NAME.log).
    #[command(after_help = "Example:\n  cairn proc logs upper --follow")]
    Logs {
        /// Processor name.
        name: String,
        /// Keep printing new lines.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Stop a processor (it stays stopped until registered again).
    #[command(after_help = "Example:\n  cairn proc term upper")]
    Term {
        /// Processor name.
        name: String,
    },
}

/// `cairn proc create`.
#[derive(Args, Debug)]
pub struct ProcCreateArgs {
    /// Processor name: 1-64 ASCII letters, digits, `_`, `-`.
    pub name: String,
    /// handler, generator or command.
    #[arg(long)]
    pub kind: String,
    /// A handler's topic patterns.
    #[arg(long, num_args = 1.., value_name = "PATTERN")]
    pub topics: Vec<String>,
    /// Where a handler starts: new (default), first, or an event id.
    #[arg(long, value_name = "new|first|ID")]
    pub start: Option<String>,
    /// A generator also gets NAME.send payloads on stdin.
    #[arg(long)]
    pub duplex: bool,
    /// A generator's line form: text (each line a payload, default) or json (batch lines).
    #[arg(long, value_name = "text|json")]
    pub lines: Option<String>,
    /// Commands running at once (default 4).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// A command's longest run (default 60000).
    #[arg(long, value_name = "MS")]
    pub timeout_ms: Option<u64>,
    /// Environment variables to add.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory.
    #[arg(long)]
    pub cwd: Option<String>,
    /// A shell script instead of a program (run with `sh -c`).
    #[arg(long, conflicts_with = "run")]
    pub sh: Option<String>,
    /// The program and its arguments, after `--`.
    #[arg(last = true, value_name = "CMD ARGS")]
    pub run: Vec<String>,
}

impl ProcCreateArgs {
    /// The registration's JSON, checked as the server will check it.
    pub fn registration(&self) -> anyhow::Result<Vec<u8>> {
        let mut json = serde_json::json!({ "kind": self.kind });
        match (&self.sh, self.run.is_empty()) {
            (Some(script), _) => json["sh"] = script.clone().into(),
            (None, false) => json["run"] = self.run.clone().into(),
            (None, true) => anyhow::bail!(
                "give the program after `--` (cairn proc create NAME --kind KIND -- CMD ARGS…) or --sh SCRIPT"
            ),
        }
        if !self.topics.is_empty() {
            json["topics"] = self.topics.clone().into();
        }
        if let Some(start) = &self.start {
            json["start"] = start.clone().into();
        }
        if self.duplex {
            json["duplex"] = true.into();
        }
        if let Some(lines) = &self.lines {
            json["lines"] = lines.clone().into();
        }
        if let Some(concurrency) = self.concurrency {
            json["concurrency"] = concurrency.into();
        }
        if let Some(timeout) = self.timeout_ms {
            json["timeout_ms"] = timeout.into();
        }
        if let Some(cwd) = &self.cwd {
            json["cwd"] = cwd.clone().into();
        }
        if !self.env.is_empty() {
            let mut env = serde_json::Map::new();
            for pair in &self.env {
                let (key, value) =
                    pair.split_once('=').ok_or_else(|| anyhow::anyhow!("--env {pair:?}: expected KEY=VALUE"))?;
                env.insert(key.to_owned(), value.into());
            }
            json["env"] = env.into();
        }
        let bytes = serde_json::to_vec(&json)?;
        cairn_proc::Spec::parse(&bytes).map_err(|rule| anyhow::anyhow!("{rule}"))?;
        cairn_proc::check_name(&self.name).map_err(|rule| anyhow::anyhow!("{rule}"))?;
        Ok(bytes)
    }
}

#[derive(Subcommand, Debug)]
pub enum ConsumerCommand {
    /// Record that NAME handled everything up to ID (durable).
    #[command(after_help = "Example:\n  cairn consumer ack mailer 0v9z8sxa1jsk6wq3h1zfrm5hx")]
    Ack {
        /// Consumer name.
        name: String,
        /// The last handled event id.
        id: String,
    },
    /// Keep a snapshot (a projection's state, say) with NAME's position.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Show NAME's position (and its snapshot's, if it has one).
    #[command(after_help = "Example:\n  cairn consumer show mailer | jq -r .acked")]
    Show {
        /// Consumer name.
        name: String,
    },
    /// List consumers and their positions.
    #[command(after_help = "Example:\n  cairn consumer list")]
    List,
    /// Delete a consumer.
    #[command(after_help = "Example:\n  cairn consumer rm mailer")]
    Rm {
        /// Consumer name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Store stdin (at most 16 MiB) as NAME's snapshot made at event ID, and
    /// move NAME to ID: one atomic, durable step. A new snapshot replaces
    /// the old; a later `ack` moves the consumer, not the snapshot.
    #[command(
        after_help = "Example:\n  jq -c . state.json | cairn consumer snapshot put totals 0v9z8sxa1jsk6wq3h1zfrm5hx\n  cairn cat --consumer totals    # what came after the snapshot"
    )]
    Put {
        /// Consumer name.
        name: String,
        /// The last event the snapshot includes.
        id: String,
    },
    /// Write NAME's snapshot to stdout (`cairn consumer show NAME` tells
    /// the id it was made at).
    #[command(after_help = "Example:\n  cairn consumer snapshot get totals > state.json")]
    Get {
        /// Consumer name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Add a user; the password is read from $CAIRN_PASSWORD or the first line of stdin.
    #[command(
        after_help = "Examples:\n  echo s3cret | cairn user add alice\n  echo s3cret | cairn user add billing --read 'orders.>' --write 'invoices.>'"
    )]
    Add {
        /// User name (1-64 bytes of A-Z a-z 0-9 _ - .).
        name: String,
        /// Topic patterns the user may read (repeatable). [default: > (all)]
        #[arg(long, value_name = "PATTERN")]
        read: Vec<String>,
        /// Topic patterns the user may write (repeatable). [default: > (all)]
        #[arg(long, value_name = "PATTERN")]
        write: Vec<String>,
        /// May manage users and tokens, import, verify, and act on every owner's consumers.
        #[arg(long)]
        admin: bool,
    },
    /// Set a user's password (from $CAIRN_PASSWORD or the first line of
    /// stdin). With --remote --user NAME (not an admin) a user changes its
    /// own: $CAIRN_PASSWORD is the old password, stdin the new one.
    #[command(
        after_help = "Examples:\n  echo n3w | cairn user passwd alice\n  echo n3w | CAIRN_PASSWORD=old cairn --remote https://host:8080 --user alice user passwd alice"
    )]
    Passwd {
        /// User name.
        name: String,
    },
    /// Remove a user and its tokens.
    #[command(after_help = "Example:\n  cairn user rm alice")]
    Rm {
        /// User name.
        name: String,
    },
    /// List users, their patterns and their tokens' ids.
    #[command(after_help = "Example:\n  cairn user list | jq -r .name")]
    List,
    /// Issue or revoke bearer tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Issue a token for a user; it is printed once, keep it.
    #[command(after_help = "Example:\n  export CAIRN_TOKEN=$(cairn user token issue alice | jq -r .token)")]
    Issue {
        /// User name.
        name: String,
    },
    /// Revoke a token by its id (from `user list`) or by the token itself.
    #[command(after_help = "Example:\n  cairn user token revoke 3f2a9c0d1e2b")]
    Revoke {
        /// Token id or token.
        id: String,
    },
}
