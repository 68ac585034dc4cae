//! One RESP connection: reads what the client sent, runs every complete
//! command in order, and writes all replies in one write. Consecutive
//! appends (`XADD`, `publish`) are submitted together and awaited in order,
//! so a pipelining client's appends share one commit (one fdatasync)
//! instead of waiting for one each. Subscription tasks send finished push
//! frames over a bounded channel; the connection writes them between
//! replies, so frames never interleave and a client that stops reading
//! holds back its subscriptions (which then wait, reading from storage
//! later), not the server.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use cairn_store::{Event, Pending};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use super::command::{self, Fail};
use super::frame::{self, Out, Request};
use crate::auth::Principal;
use crate::server::App;

/// Push frames waiting for a slow client, per connection.
const PUSH_QUEUE_FRAMES: usize = 256;
/// Input read per system call, at least.
const READ_CHUNK_BYTES: usize = 16 * 1024;

static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(1);

/// A connection's state, as commands see it.
pub(crate) struct Conn {
    pub(crate) app: Arc<App>,
    pub(crate) out: Out,
    pub(crate) id: u64,
    pub(crate) peer: SocketAddr,
    pub(crate) created: Instant,
    pub(crate) name: Option<Bytes>,
    pub(crate) lib_name: Option<Bytes>,
    pub(crate) lib_version: Option<Bytes>,
    /// Who is speaking; `None` until `AUTH` where authentication is required.
    pub(crate) principal: Option<Principal>,
    /// Where subscription tasks send push frames.
    pub(crate) pushes: mpsc::Sender<Bytes>,
    pub(crate) subscriptions: Vec<tokio::task::AbortHandle>,
    /// Close after writing the replies (QUIT, a cross-protocol request).
    pub(crate) closing: bool,
    pub(crate) stop: watch::Receiver<bool>,
}

/// A reply still waiting for the writer's acknowledgement.
pub(crate) enum Awaiting {
    /// An `XADD`: replies with the entry id.
    Entry(Pending<Vec<Event>>),
    /// A MeiliES `publish`: replies `+OK`.
    Published(Pending<Vec<Event>>),
    /// Decided already (an error).
    Failed(Fail),
}

impl Drop for Conn {
    fn drop(&mut self) {
        for subscription in &self.subscriptions {
            subscription.abort();
        }
    }
}

/// Serves one client until it leaves, breaks the framing, or the server stops.
pub(crate) async fn serve(app: Arc<App>, stream: TcpStream, peer: SocketAddr, stop: watch::Receiver<bool>) {
    let (mut reader, mut writer) = stream.into_split();
    let (pushes, mut push_queue) = mpsc::channel::<Bytes>(PUSH_QUEUE_FRAMES);
    let principal = if app.config.resp_require_auth { None } else { Some(Principal::Anonymous) };
    let mut conn = Conn {
        app,
        out: Out::new(),
        id: NEXT_CLIENT_ID.fetch_add(1, Relaxed),
        peer,
        created: Instant::now(),
        name: None,
        lib_name: None,
        lib_version: None,
        principal,
        pushes,
        subscriptions: Vec::new(),
        closing: false,
        stop: stop.clone(),
    };
    let bulk_max = usize::try_from(conn.app.store.options().payload_bytes_max).unwrap_or(usize::MAX);
    let mut input = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut stop = stop;
    loop {
        let mut commands = Vec::new();
        loop {
            match frame::parse(&input, bulk_max) {
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
                }
                Ok(None) => break,
                Err(error) => {
                    conn.out.error(&format!("ERR Protocol error: {}", error.0));
                    conn.closing = true;
                    break;
                }
            }
        }
        run(&mut conn, commands).await;
        if !conn.out.buf.is_empty() {
            if writer.write_all(&conn.out.buf).await.is_err() {
                return;
            }
            conn.out.buf.clear();
        }
        if conn.closing {
            let _ = writer.shutdown().await;
            return;
        }
        input.reserve(READ_CHUNK_BYTES);
        tokio::select! {
            read = reader.read_buf(&mut input) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            Some(push) = push_queue.recv() => {
                let mut frames = vec![push];
                while frames.len() < 64 && let Ok(more) = push_queue.try_recv() {
                    frames.push(more);
                }
                for frame in frames {
                    if writer.write_all(&frame).await.is_err() {
                        return;
                    }
                }
            }
            () = crate::server::stopped(&mut stop) => return,
        }
    }
}

/// Runs `commands` in order, appending their replies to `conn.out`.
async fn run(conn: &mut Conn, commands: Vec<Vec<Bytes>>) {
    let mut awaiting: VecDeque<Awaiting> = VecDeque::new();
    for args in commands {
        if conn.closing {
            break;
        }
        if let Some(started) = command::start_append(conn, &args) {
            awaiting.push_back(started);
            continue;
        }
        settle(conn, &mut awaiting).await;
        command::execute(conn, args).await;
    }
    settle(conn, &mut awaiting).await;
}

/// Writes the replies of submitted appends, in order, as they become durable.
async fn settle(conn: &mut Conn, awaiting: &mut VecDeque<Awaiting>) {
    while let Some(next) = awaiting.pop_front() {
        let result = match next {
            Awaiting::Entry(pending) => pending.await.map(|events| {
                let id = super::entry::StreamId::of(&events[0]);
                conn.out.bulk(id.to_string().as_bytes());
            }),
            Awaiting::Published(pending) => pending.await.map(|_| conn.out.simple("OK")),
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
