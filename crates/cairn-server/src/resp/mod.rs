//! The Redis protocol front end (RESP2, RESP3 after `HELLO 3`) on TCP.
//!
//! Code map:
//! - `frame.rs`: parsing commands (resumable, bounded) and writing
//!   replies, sans IO.
//! - `conn.rs`: one connection: read, run every complete command (a run
//!   of appends is submitted at once so it shares one commit), write the
//!   replies in one go; subscription pushes arrive on a channel and are
//!   written between replies, never inside one.
//! - `table.rs`: the one command table (name, arity, flags, docs for
//!   COMMAND, handler); `cmd/`: the handlers, one file per family.
//! - `docs.rs`: each command's argument syntax, as `COMMAND DOCS` gives it
//!   (redis-cli's hints).
//! - `error.rs`: failed commands as error lines, service errors rendered
//!   in one place.
//! - `entry.rs`: events as stream entries (field-value pairs).
//! - `pubsub.rs`: Redis pub/sub's broker (channels, patterns; in memory,
//!   fire and forget).
//!
//! Every command calls the service (`cairn_service::Service`) as the
//! connection's principal: authorization, users, groups and storage are
//! the service's.

pub(crate) mod cmd;
mod conn;
mod docs;
mod entry;
mod error;
pub(crate) mod frame;
pub(crate) mod pubsub;
mod table;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::server::App;

/// Accepts RESP connections until the server stops.
pub(crate) async fn accept(app: Arc<App>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(app.config.max_connections));
    let awaiting = Arc::new(conn::AwaitingAuth::default());
    loop {
        let (stream, peer) = tokio::select! {
            () = crate::server::stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!("accept failed: {error}");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            app.metrics.refused_connections.fetch_add(1, Relaxed);
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt as _;
                let mut stream = stream;
                let refuse = stream.write_all(b"-ERR max number of clients reached\r\n");
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), refuse).await;
            });
            continue;
        };
        let (app, stop, awaiting) = (app.clone(), stop.clone(), awaiting.clone());
        app.metrics.resp_connections.fetch_add(1, Relaxed);
        tokio::spawn(async move {
            app.metrics.open_connections.fetch_add(1, Relaxed);
            conn::serve(app.clone(), stream, peer, stop, awaiting).await;
            app.metrics.open_connections.fetch_sub(1, Relaxed);
            drop(permit);
        });
    }
    let grace = app.config.shutdown_grace;
    let all = u32::try_from(app.config.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(grace, permits.acquire_many(all)).await.is_err() {
        tracing::warn!("Redis-protocol connections still open after {grace:?}; closing them");
    }
}
