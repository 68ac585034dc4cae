//! One RESP connection: reads what the client sent, runs every complete
//! command in order, and writes all replies in one write. Consecutive
//! appends (`XADD`, `publish`) are submitted one after another (each
//! queued before the next, so their order holds) and awaited after, so a
//! pipelining client's appends share one commit (one fdatasync) instead of
//! waiting for one each. Subscription tasks send finished push frames over
//! a bounded channel; the connection writes them between replies, so
//! frames never interleave and a client that stops reading holds back its
//! subscriptions (which then wait, reading from storage later), not the
//! server.
//!
//! Bounds: a command is limited in total, far more tightly before the
//! client authenticated (where AUTH is required). Sessions: when the
//! connection's credential is revoked, the connection is told and closed.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use cairn_service::{Appending, Principal};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use super::error::Fail;
use super::frame::{self, Out, Parser, Request};
use super::table;
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

impl Conn {
    /// The principal a command runs as (commands that need none are let
    /// through before it is known; the others are refused earlier).
    pub(crate) fn who(&self) -> Result<&Principal, Fail> {
        self.principal.as_ref().ok_or_else(super::error::noauth)
    }

    /// What an unauthenticated connection starts as.
    pub(crate) fn initial_principal(app: &App) -> Option<Principal> {
        (!app.config.resp_require_auth).then_some(Principal::Anonymous)
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
    let mut sessions = app.service.session_changes();
    let mut conn = Conn {
        principal: Conn::initial_principal(&app),
        app,
        out: Out::new(),
        id: NEXT_CLIENT_ID.fetch_add(1, Relaxed),
        peer,
        created: Instant::now(),
        name: None,
        lib_name: None,
        lib_version: None,
        pushes,
        subscriptions: Vec::new(),
        closing: false,
        stop: stop.clone(),
    };
    let mut parser = Parser::new(conn.limits());
    let mut input = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut stop = stop;
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
        run(&mut conn, commands).await;
        parser.set_limits(conn.limits());
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
            // Only a user's session can be revoked.
            changed = sessions.changed(), if matches!(conn.principal, Some(Principal::User(_))) => {
                if changed.is_ok() && revoked(&conn) {
                    let _ = writer.write_all(b"-NOAUTH the connection's credentials were revoked\r\n").await;
                    let _ = writer.shutdown().await;
                    return;
                }
            }
            () = crate::server::stopped(&mut stop) => return,
        }
    }
}

/// Whether the connection's user session ended (token revoked, password
/// changed, user removed).
fn revoked(conn: &Conn) -> bool {
    conn.principal.as_ref().is_some_and(|principal| !conn.app.service.is_current(principal))
}

/// Runs `commands` in order, appending their replies to `conn.out`.
async fn run(conn: &mut Conn, commands: Vec<Vec<Bytes>>) {
    let mut awaiting: VecDeque<Awaiting> = VecDeque::new();
    for args in commands {
        if conn.closing {
            break;
        }
        if revoked(conn) {
            settle(conn, &mut awaiting).await;
            conn.out.error("NOAUTH the connection's credentials were revoked");
            conn.closing = true;
            break;
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
                conn.out.bulk(id.to_string().as_bytes());
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
