//! A request body into chunked content, for every door that takes one
//! (`POST …/events?chunked=true`, the app's streamed requests): frames are
//! gathered into pieces of up to 64 KiB, or of what came within 50 ms (so a
//! body of one-byte chunks is not one durable event per byte, and what a
//! slow stream sent is readable within 50 ms); each pause of the body must
//! end within `pause`, the whole body by `deadline`.

use std::time::Duration;

use bytes::Bytes;
use cairn_service::{ChunkedAppend, ServiceError};
use http_body_util::BodyExt as _;
use tokio::time::Instant;

/// A piece is appended once it holds this many bytes ...
const PIECE_BYTES: usize = 64 * 1024;
/// ... or once its first bytes waited this long.
const PIECE_EVERY: Duration = Duration::from_millis(50);

/// Why a body did not make it whole.
pub(crate) enum Stopped {
    /// A pause longer than allowed, or past the deadline.
    Stalled,
    /// The body failed (the client went away, broken framing).
    Broken,
    /// Storing a piece failed (too large, storage).
    Store(ServiceError),
}

impl Stopped {
    /// The abort record's words.
    pub(crate) fn reason(&self) -> String {
        match self {
            Stopped::Stalled => "the request body stalled or took too long".to_owned(),
            Stopped::Broken => "the request body failed (the client went away?)".to_owned(),
            Stopped::Store(error) => error.to_string(),
        }
    }
}

/// Appends `body`'s bytes to `chunked` in pieces, to its end.
pub(crate) async fn pump<B>(
    chunked: &mut ChunkedAppend,
    mut body: B,
    pause: Duration,
    deadline: Instant,
) -> Result<(), Stopped>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    let mut gathered: Vec<u8> = Vec::new();
    let mut since = Instant::now();
    loop {
        let stall_at = (Instant::now() + pause).min(deadline);
        let flush_at = (!gathered.is_empty()).then(|| since + PIECE_EVERY);
        let wake = flush_at.map_or(stall_at, |flush_at| flush_at.min(stall_at));
        let frame = match tokio::time::timeout_at(wake, body.frame()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(None) => break,
            Err(_) if flush_at.is_some_and(|flush_at| flush_at <= Instant::now()) => {
                chunked.piece(&gathered).await.map_err(Stopped::Store)?;
                gathered.clear();
                continue;
            }
            Ok(Some(Err(_))) => return Err(Stopped::Broken),
            Err(_) => return Err(Stopped::Stalled),
        };
        let Ok(data) = frame.into_data() else { continue };
        if gathered.is_empty() {
            since = Instant::now();
        }
        gathered.extend_from_slice(&data);
        if gathered.len() >= PIECE_BYTES {
            chunked.piece(&gathered).await.map_err(Stopped::Store)?;
            gathered.clear();
        }
    }
    chunked.piece(&gathered).await.map_err(Stopped::Store)
}
