//! One RESP connection: reads what the client sent, runs every complete
//! command in order, and writes all replies in one write (a long XRANGE
//! reply goes out in parts while it is written: `write_reply_part`).
//! Consecutive appends (`XADD`, `publish`) are submitted one after another
//! (each queued before the next, so their order holds) and awaited after,
//! so a pipelining client's appends share one commit (one fdatasync)
//! instead of waiting for one each. Subscription tasks send finished push frames over
//! a bounded channel; the connection writes them between replies, so
//! frames never interleave and a client that stops reading holds back its
//! subscriptions (which then wait, reading from storage later), not the
//! server.
//!
//! Bounds: a command is limited in total, far more tightly before the
//! client authenticated (where AUTH is required). Sessions: when the
//! connection's credential is revoked, the connection is told and closed.

use std::collections::VecDeque;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use cairn_service::{Appending, Principal, Topic};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use super::cmd::pubsub;
use super::cmd::transactions::{self, Multi};
use super::error::Fail;
use super::frame::{self, Out, Parser, Request};
use super::table;
use crate::server::App;

/// Push frames waiting for a slow client, per connection.
const PUSH_QUEUE_FRAMES: usize = 256;
/// Bytes of push frames waiting for a slow client, per connection (a
/// larger frame waits for the queue to empty).
const PUSH_QUEUE_BYTES: usize = 8 * 1024 * 1024;
/// How long writing one push frame (or a subscriber's replies, or one
/// slice of a long reply) to a client may take before the client is taken
/// for one that stopped reading and is disconnected.
const PUSH_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may take to authenticate where AUTH is required.
const AUTH_DEADLINE: Duration = Duration::from_secs(10);
/// Connections from one address (an IPv6 /64) that may await AUTH at once.
const AWAITING_AUTH_PER_ADDRESS_MAX: usize = 64;
/// Reply bytes at which a pipeline's replies are written before its next
/// command runs: a pipeline of large reads holds one batch of replies, not
/// all of them.
const REPLY_FLUSH_BYTES: usize = 1024 * 1024;
/// A long reply goes out in parts of at least this size (as soon as one is
/// written), each in slices of this size taken within
/// [`PUSH_WRITE_TIMEOUT`] (`Conn::write_reply_part`).
pub(crate) const REPLY_PART_BYTES: usize = 64 * 1024;
/// Input read per system call, at least.
const READ_CHUNK_BYTES: usize = 16 * 1024;

static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(1);

/// A connection's state, as commands see it.
pub(crate) struct Conn {
    pub(crate) app: Arc<App>,
    pub(crate) out: Out,
    /// Where replies go (`Conn::write_out`).
    writer: OwnedWriteHalf,
    pub(crate) id: u64,
    pub(crate) peer: SocketAddr,
    pub(crate) created: Instant,
    pub(crate) name: Option<Bytes>,
    pub(crate) lib_name: Option<Bytes>,
    pub(crate) lib_version: Option<Bytes>,
    /// Who is speaking; `None` until `AUTH` where authentication is required.
    pub(crate) principal: Option<Principal>,
    /// Where subscription tasks send push frames.
    pub(crate) pushes: Pushes,
    /// The frames they sent, written between replies.
    push_queue: mpsc::Receiver<(Bytes, OwnedSemaphorePermit)>,
    pub(crate) subscriptions: Vec<tokio::task::AbortHandle>,
    /// Close after writing the replies (QUIT, a cross-protocol request).
    pub(crate) closing: bool,
    pub(crate) stop: watch::Receiver<bool>,
    /// The transaction being queued, between MULTI and EXEC.
    pub(crate) multi: Option<Multi>,
    /// Topics WATCH saw, with what it saw.
    pub(crate) watched: Vec<(Topic, Option<(u64, u64)>)>,
    /// Running EXEC's commands (blocking reads answer at once).
    pub(crate) in_exec: bool,
    /// Redis pub/sub channels and patterns subscribed.
    pub(crate) channels: HashSet<Bytes>,
    pub(crate) patterns: HashSet<Bytes>,
    /// The connection has sent something other than MeiliES's commands as
    /// MeiliES sends them: its `subscribe` is Redis's (`cmd/pubsub.rs`).
    pub(crate) redis_client: bool,
    /// In MONITOR.
    pub(crate) monitoring: bool,
}

impl Conn {
    /// The principal a command runs as (commands that need none are let
    /// through before it is known; the others are refused earlier).
    pub(crate) fn who(&self) -> Result<&Principal, Fail> {
        self.principal.as_ref().ok_or_else(super::error::noauth)
    }

    /// Writes the replies so far; false if the client is gone (or, for a
    /// subscriber or a monitor, stopped reading).
    pub(crate) async fn write_out(&mut self) -> bool {
        if self.out.buf.is_empty() {
            return true;
        }
        // Replies may carry push frames (moved ahead of them): for a
        // subscriber or a monitor, a write that stalls is a client that
        // stopped reading, closed as the push writes are.
        let written = if self.subscribed() || self.monitoring || !self.subscriptions.is_empty() {
            tokio::time::timeout(PUSH_WRITE_TIMEOUT, self.writer.write_all(&self.out.buf)).await
        } else {
            Ok(self.writer.write_all(&self.out.buf).await)
        };
        self.out.buf.clear();
        matches!(written, Ok(Ok(())))
    }

    /// Writes part of a long reply while the rest waits to be written, in
    /// slices of [`REPLY_PART_BYTES`]: a client that does not take one
    /// within [`PUSH_WRITE_TIMEOUT`] (a minimum rate, so a slow reader is
    /// served and one that stopped is not waited on) is treated as gone,
    /// since the rest's events wait on it.
    pub(crate) async fn write_reply_part(&mut self) -> bool {
        let mut written = true;
        for slice in self.out.buf.chunks(REPLY_PART_BYTES) {
            match tokio::time::timeout(PUSH_WRITE_TIMEOUT, self.writer.write_all(slice)).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => {}
                Err(_) => tracing::warn!("{}: closing a client that stopped reading a long reply", self.peer),
            }
            written = false;
            break;
        }
        self.out.buf.clear();
        written
    }

    /// What an unauthenticated connection starts as.
    pub(crate) fn initial_principal(app: &App) -> Option<Principal> {
        (!app.config.resp_require_auth).then_some(Principal::Anonymous)
    }

    /// Ends every subscription (MeiliES's, Redis channels and patterns) and
    /// MONITOR, and drops the frames they queued: after RESET, or when the
    /// connection authenticates as someone (what was granted to the old
    /// principal never reaches the new one's replies).
    pub(crate) fn drop_subscriptions(&mut self) {
        self.end_subscriptions();
        let (pushes, queue) = Pushes::new();
        self.pushes = pushes;
        self.push_queue = queue;
    }

    /// Ends every subscription and MONITOR (their queued frames stay).
    fn end_subscriptions(&mut self) {
        for subscription in self.subscriptions.drain(..) {
            subscription.abort();
        }
        for channel in self.channels.drain() {
            self.app.pubsub.unsubscribe(self.id, &channel);
        }
        for pattern in self.patterns.drain() {
            self.app.pubsub.punsubscribe(self.id, &pattern);
        }
        if std::mem::take(&mut self.monitoring) {
            self.app.pubsub.unmonitor(self.id);
        }
    }

    /// Authenticates the connection as `principal`, ending what a different
    /// previous principal subscribed to (the same one keeps it).
    pub(crate) fn become_principal(&mut self, principal: Principal) {
        if self.principal.as_ref().map(Principal::scope) != Some(principal.scope()) {
            self.drop_subscriptions();
        }
        self.principal = Some(principal);
    }

    /// Moves the push frames queued so far into the output, so they go
    /// out before the replies of commands that run after them (a client
    /// that unsubscribed sees no message after the confirmation).
    pub(crate) fn drain_pushes(&mut self) {
        while let Ok((frame, _room)) = self.push_queue.try_recv() {
            self.out.buf.extend_from_slice(&frame);
        }
    }

    /// Whether the connection is in Redis's subscribed mode (RESP2 then
    /// accepts only the pub/sub commands, PING, QUIT and RESET).
    pub(crate) fn subscribed(&self) -> bool {
        !self.channels.is_empty() || !self.patterns.is_empty()
    }

    /// The command bounds for the connection's state.
    fn limits(&self) -> frame::Limits {
        let config = &self.app.config;
        let bulk = usize::try_from(self.app.service.limits().payload_bytes_max).unwrap_or(usize::MAX);
        let total = if self.principal.is_some() {
            config.resp_command_bytes_max
        } else {
            config.resp_unauthenticated_bytes_max
        };
        frame::Limits { bulk_bytes_max: bulk.min(total), command_bytes_max: total }
    }
}

/// A reply still waiting for durability.
pub(crate) enum Awaiting {
    /// An `XADD`: replies with the entry id.
    Entry(Appending),
    /// A MeiliES `publish`: replies `+OK`.
    Published(Appending),
    /// Decided already (an error).
    Failed(Fail),
}

/// Where a connection's subscription tasks send push frames: bounded in
/// frames and in bytes, so a client that does not read holds its
/// subscriptions back instead of filling the server's memory.
#[derive(Clone)]
pub(crate) struct Pushes {
    frames: mpsc::Sender<(Bytes, OwnedSemaphorePermit)>,
    room: Arc<Semaphore>,
    /// A frame could not be queued without waiting ([`Pushes::try_send`]):
    /// the connection closes.
    overflowed: Arc<AtomicBool>,
}

impl Pushes {
    fn new() -> (Pushes, mpsc::Receiver<(Bytes, OwnedSemaphorePermit)>) {
        let (frames, queue) = mpsc::channel(PUSH_QUEUE_FRAMES);
        let pushes = Pushes {
            frames,
            room: Arc::new(Semaphore::new(PUSH_QUEUE_BYTES)),
            overflowed: Arc::new(AtomicBool::new(false)),
        };
        (pushes, queue)
    }

    /// Queues `frame` if there is room now (pub/sub never waits for a
    /// subscriber); otherwise marks the connection overflowed, to be
    /// closed. True when queued.
    pub(crate) fn try_send(&self, frame: Bytes) -> bool {
        let bytes = u32::try_from(frame.len().clamp(1, PUSH_QUEUE_BYTES)).expect("the queue's bytes fit a u32");
        let queued = match self.room.clone().try_acquire_many_owned(bytes) {
            Ok(permit) => self.frames.try_send((frame, permit)).is_ok(),
            Err(_) => false,
        };
        if !queued {
            self.overflowed.store(true, Relaxed);
        }
        queued
    }

    fn overflowed(&self) -> bool {
        self.overflowed.load(Relaxed)
    }

    /// Queues `frame` once there is room; false when the connection is gone.
    pub(crate) async fn send(&self, frame: Bytes) -> bool {
        let bytes = u32::try_from(frame.len().clamp(1, PUSH_QUEUE_BYTES)).expect("the queue's bytes fit a u32");
        let Ok(permit) = self.room.clone().acquire_many_owned(bytes).await else { return false };
        self.frames.send((frame, permit)).await.is_ok()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.end_subscriptions();
    }
}

/// Connections not yet authenticated, per address: an unauthenticated
/// peer holds at most [`AWAITING_AUTH_PER_ADDRESS_MAX`] connections, each
/// for at most [`AUTH_DEADLINE`], so it cannot take every connection slot.
#[derive(Default)]
pub(crate) struct AwaitingAuth {
    by_address: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection counted in [`AwaitingAuth`]; uncounted when dropped.
struct AwaitingTicket {
    awaiting: Arc<AwaitingAuth>,
    address: IpAddr,
}

impl AwaitingAuth {
    fn enter(self: &Arc<Self>, peer: IpAddr) -> Option<AwaitingTicket> {
        let address = match peer {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
            IpAddr::V6(v6) => IpAddr::V4(v6.to_ipv4_mapped().expect("checked")),
            v4 => v4,
        };
        let mut by_address = self.by_address.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = by_address.entry(address).or_default();
        if *count >= AWAITING_AUTH_PER_ADDRESS_MAX {
            return None;
        }
        *count += 1;
        Some(AwaitingTicket { awaiting: self.clone(), address })
    }
}

impl Drop for AwaitingTicket {
    fn drop(&mut self) {
        let mut by_address = self.awaiting.by_address.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = by_address.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                by_address.remove(&self.address);
            }
        }
    }
}

/// Serves one client until it leaves, breaks the framing, or the server stops.
pub(crate) async fn serve(
    app: Arc<App>,
    stream: TcpStream,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
    awaiting: Arc<AwaitingAuth>,
) {
    let (mut reader, writer) = stream.into_split();
    let (pushes, push_queue) = Pushes::new();
    let mut sessions = app.service.session_changes();
    let mut conn = Conn {
        principal: Conn::initial_principal(&app),
        app,
        out: Out::new(),
        writer,
        id: NEXT_CLIENT_ID.fetch_add(1, Relaxed),
        peer,
        created: Instant::now(),
        name: None,
        lib_name: None,
        lib_version: None,
        pushes,
        push_queue,
        subscriptions: Vec::new(),
        closing: false,
        stop: stop.clone(),
        multi: None,
        watched: Vec::new(),
        in_exec: false,
        channels: HashSet::new(),
        patterns: HashSet::new(),
        redis_client: false,
        monitoring: false,
    };
    let mut ticket = None;
    if conn.principal.is_none() {
        ticket = awaiting.enter(peer.ip());
        if ticket.is_none() {
            let _ = conn.writer.write_all(b"-ERR too many connections awaiting AUTH from this address\r\n").await;
            return;
        }
    }
    let auth_deadline = tokio::time::Instant::now() + AUTH_DEADLINE;
    let mut parser = Parser::new(conn.limits());
    let mut input = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut stop = stop;
    // One future for the whole connection, not one per read (it registers
    // with the watch each time it is made).
    let stopped = crate::server::stopped(&mut stop);
    tokio::pin!(stopped);
    loop {
        let mut commands = Vec::new();
        loop {
            match parser.parse(&input) {
                Ok(Some((request, used))) => {
                    let bytes = input.split_to(used).freeze();
                    let args: Vec<Bytes> = match request {
                        Request::Args(ranges) => ranges.into_iter().map(|range| bytes.slice(range)).collect(),
                        Request::Inline(args) => args.into_iter().map(Bytes::from).collect(),
                    };
                    if looks_like_http(&args) {
                        tracing::warn!(
                            "{peer} sent an HTTP request to the Redis port; closing (cross-protocol defence)"
                        );
                        conn.closing = true;
                        break;
                    }
                    if !args.is_empty() {
                        commands.push(args);
                    }
                    // Commands after an AUTH are bounded as its outcome says:
                    // run what is parsed so far before parsing on.
                    if conn.principal.is_none() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    conn.out.error(&format!("ERR Protocol error: {}", error.0));
                    conn.closing = true;
                    break;
                }
            }
        }
        let parsed_any = !commands.is_empty();
        let mut commands = VecDeque::from(commands);
        loop {
            run(&mut conn, &mut commands).await;
            if conn.principal.is_some() {
                // Authenticated: its place among those awaiting AUTH is
                // free before the client reads the reply.
                ticket = None;
            }
            if !conn.write_out().await {
                return;
            }
            if commands.is_empty() || conn.closing {
                break;
            }
        }
        parser.set_limits(conn.limits());
        if conn.closing {
            let _ = conn.writer.shutdown().await;
            return;
        }
        if parsed_any && !input.is_empty() {
            // More may be complete already (after an AUTH, say).
            continue;
        }
        input.reserve(READ_CHUNK_BYTES);
        tokio::select! {
            read = reader.read_buf(&mut input) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            Some(push) = conn.push_queue.recv() => {
                let mut frames = vec![push];
                while frames.len() < 64 && let Ok(more) = conn.push_queue.try_recv() {
                    frames.push(more);
                }
                for (frame, _room) in frames {
                    // A client that stops reading: the frames waiting for it
                    // filled its queue (pub/sub never waits), or one write
                    // does not finish in time.
                    let written = tokio::time::timeout(PUSH_WRITE_TIMEOUT, conn.writer.write_all(&frame)).await;
                    if conn.pushes.overflowed() || !matches!(written, Ok(Ok(()))) {
                        tracing::warn!("{peer}: closing a client that does not read what it subscribed to");
                        return;
                    }
                }
            }
            // Only a user's session can be revoked.
            changed = sessions.changed(), if matches!(conn.principal, Some(Principal::User(_))) => {
                if changed.is_ok() && revoked(&conn) {
                    let _ = conn.writer.write_all(b"-NOAUTH the connection's credentials were revoked\r\n").await;
                    let _ = conn.writer.shutdown().await;
                    return;
                }
            }
            () = tokio::time::sleep_until(auth_deadline), if ticket.is_some() => {
                let _ = conn.writer.write_all(b"-NOAUTH Authentication required within 10 seconds; closing\r\n").await;
                let _ = conn.writer.shutdown().await;
                return;
            }
            () = &mut stopped => return,
        }
    }
}

/// Whether the connection's user session ended (token revoked, password
/// changed, user removed).
fn revoked(conn: &Conn) -> bool {
    conn.principal.as_ref().is_some_and(|principal| !conn.app.service.is_current(principal))
}

/// Runs `commands` in order, appending their replies to `conn.out`, until
/// they are done or the replies pass [`REPLY_FLUSH_BYTES`].
async fn run(conn: &mut Conn, commands: &mut VecDeque<Vec<Bytes>>) {
    let mut awaiting: VecDeque<Awaiting> = VecDeque::new();
    while conn.out.buf.len() < REPLY_FLUSH_BYTES
        && let Some(args) = commands.pop_front()
    {
        if conn.closing {
            break;
        }
        if revoked(conn) {
            settle(conn, &mut awaiting).await;
            conn.out.error("NOAUTH the connection's credentials were revoked");
            conn.closing = true;
            break;
        }
        conn.app.metrics.resp_commands.fetch_add(1, Relaxed);
        if conn.app.pubsub.monitoring() {
            conn.app.pubsub.feed(conn.id, conn.peer, &args);
        }
        if !conn.redis_client && !pubsub::is_meilies_form(&args) {
            conn.redis_client = true;
        }
        if conn.pushes.overflowed() {
            conn.closing = true;
            break;
        }
        conn.drain_pushes();
        if conn.multi.is_some() && !transactions::is_control(&args[0]) {
            settle(conn, &mut awaiting).await;
            transactions::queue(conn, args);
            continue;
        }
        if let Some(submitted) = table::submit(conn, &args) {
            let awaiting_reply = submitted.await;
            awaiting.push_back(awaiting_reply);
            continue;
        }
        settle(conn, &mut awaiting).await;
        table::execute(conn, &args).await;
    }
    settle(conn, &mut awaiting).await;
}

/// Writes the replies of submitted appends, in order, as they become durable.
async fn settle(conn: &mut Conn, awaiting: &mut VecDeque<Awaiting>) {
    while let Some(next) = awaiting.pop_front() {
        let result = match next {
            Awaiting::Entry(appending) => appending.await.map(|events| {
                let id = cairn_service::StreamId::of(&events[0]);
                conn.out.bulk(id.text(&mut [0; cairn_service::StreamId::TEXT_MAX]));
            }),
            Awaiting::Published(appending) => appending.await.map(|_| conn.out.simple("OK")),
            Awaiting::Failed(fail) => {
                conn.out.error(&fail.0);
                Ok(())
            }
        };
        if let Err(error) = result {
            conn.out.error(&Fail::from(error).0);
        }
    }
}

/// Whether a command is really an HTTP request line or header (a browser
/// tricked into posting to this port): `POST ...`, `Host: ...`, or a line
/// ending in `HTTP/1.x`.
fn looks_like_http(args: &[Bytes]) -> bool {
    let Some(first) = args.first() else { return false };
    first.eq_ignore_ascii_case(b"post")
        || first.eq_ignore_ascii_case(b"host:")
        || (args.len() >= 2 && args.last().is_some_and(|last| last.starts_with(b"HTTP/")))
}
