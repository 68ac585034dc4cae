//! Accepting connections: the Unix socket (trusted) and TCP (plain or TLS),
//! each served by hyper's HTTP/1 with a header read timeout (slow-loris
//! defence) and a bounded header buffer. A semaphore bounds open
//! connections; one over the limit gets a 503 and is closed. On shutdown
//! the loops stop accepting and every connection finishes its current
//! request and closes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use anyhow::{Context as _, Result, bail};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use crate::server::App;

/// The largest request head (request line and headers) accepted.
const HEAD_BYTES_MAX: usize = 64 * 1024;

/// Which door a request came through: decides how it is authenticated.
#[derive(Clone, Debug)]
pub(crate) enum Door {
    /// The Unix socket: trusted by its file mode.
    Unix,
    /// TCP (plain or TLS), from this peer.
    Tcp(SocketAddr),
}

/// The sockets a server accepts on.
pub(crate) struct Listeners {
    pub(crate) unix: UnixListener,
    pub(crate) tcp: Option<(TcpListener, Option<TlsAcceptor>)>,
}

/// Binds the Unix socket at `path`, replacing a stale file left by a killed
/// server but never a live one. The socket is created with its final mode
/// (0600): bound inside a fresh directory only this user can enter, given
/// its mode there, then moved into place, so it never exists at `path`
/// with another mode, whatever the umask.
pub(crate) fn bind_unix(path: &Path) -> Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!("{} exists and is not a socket; move it away or pick another --socket", path.display());
        }
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => bail!("a server is already listening on {}", path.display()),
            Err(_) => {
                tracing::info!("removing stale socket {}", path.display());
                std::fs::remove_file(path).with_context(|| format!("remove stale socket {}", path.display()))?;
            }
        }
    }
    let parent = path.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let staging = parent.join(format!(".cs{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .with_context(|| format!("create {} to bind the socket in", staging.display()))?;
    let staged = staging.join("s");
    let bound = (|| -> Result<UnixListener> {
        let listener = UnixListener::bind(&staged).with_context(|| {
            format!("listen on {} (socket paths are limited to 107 bytes; --socket picks another)", path.display())
        })?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("set mode 0600 on {}", staged.display()))?;
        std::fs::rename(&staged, path).with_context(|| format!("move the socket to {}", path.display()))?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    bound
}

/// Pending connections the kernel queues before `accept` (tokio's default
/// of 1,024 dropped SYNs in a burst of thousands, costing the clients a
/// one-second retransmit).
const LISTEN_BACKLOG: u32 = 4096;

/// Binds a TCP listener with a deep accept queue.
pub(crate) fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Loads a PEM certificate chain and key for HTTPS.
pub(crate) fn tls_acceptor(cert: &PathBuf, key: &PathBuf) -> Result<TlsAcceptor> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("read TLS certificate {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parse TLS certificate {}", cert.display()))?;
    if chain.is_empty() {
        bail!("{} holds no PEM certificate", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("read TLS key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("TLS certificate and key do not fit together")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts until `stop`, then waits (up to the grace period) for open
/// connections to finish.
pub(crate) async fn accept(app: Arc<App>, router: Router, listeners: Listeners, mut stop: watch::Receiver<bool>) {
    // The trusted socket has its own pool, so a flood of TCP clients cannot
    // lock out local tools.
    let limit = app.config.max_connections;
    let tcp_permits = Arc::new(Semaphore::new(limit));
    let unix_permits = Arc::new(Semaphore::new(limit));
    let (tcp, tls) = match listeners.tcp {
        Some((tcp, tls)) => (Some(tcp), tls),
        None => (None, None),
    };
    loop {
        let accepted = tokio::select! {
            () = crate::server::stopped(&mut stop) => break,
            accepted = listeners.unix.accept() => accepted.map(|(stream, _)| Accepted::Unix(stream)),
            accepted = accept_tcp(tcp.as_ref()) => accepted.map(|(stream, peer)| Accepted::Tcp(stream, peer)),
        };
        let accepted = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and friends: back off briefly rather than spin.
                tracing::warn!("accept failed: {error}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let permits = match accepted {
            Accepted::Unix(_) => &unix_permits,
            Accepted::Tcp(..) => &tcp_permits,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            app.metrics.refused_connections.fetch_add(1, Relaxed);
            tokio::spawn(refuse(accepted));
            continue;
        };
        let (app, router, stop) = (app.clone(), router.clone(), stop.clone());
        let tls = tls.clone();
        tokio::spawn(async move {
            app.metrics.open_connections.fetch_add(1, Relaxed);
            match accepted {
                Accepted::Unix(stream) => connection(&app, router, stream, Door::Unix, stop).await,
                Accepted::Tcp(stream, peer) => match tls {
                    None => connection(&app, router, stream, Door::Tcp(peer), stop).await,
                    Some(tls) => {
                        let timeout = app.config.header_timeout;
                        match tokio::time::timeout(timeout, tls.accept(stream)).await {
                            Ok(Ok(stream)) => connection(&app, router, stream, Door::Tcp(peer), stop).await,
                            Ok(Err(error)) => tracing::debug!("TLS handshake with {peer} failed: {error}"),
                            Err(_) => tracing::debug!("TLS handshake with {peer} timed out"),
                        }
                    }
                },
            }
            app.metrics.open_connections.fetch_sub(1, Relaxed);
            drop(permit);
        });
    }
    drop(listeners.unix);
    drop(tcp);
    let grace = app.config.shutdown_grace;
    let all = u32::try_from(limit).unwrap_or(u32::MAX);
    let drained = async {
        let _ = tcp_permits.acquire_many(all).await;
        let _ = unix_permits.acquire_many(all).await;
    };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!("connections still open after {grace:?}; closing them");
    }
}

enum Accepted {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream, SocketAddr),
}

async fn accept_tcp(tcp: Option<&TcpListener>) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match tcp {
        Some(listener) => {
            let (stream, peer) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            Ok((stream, peer))
        }
        None => std::future::pending().await,
    }
}

/// Tells a client over the connection limit why it is closed.
async fn refuse(accepted: Accepted) {
    let body = r#"{"error":{"code":"overloaded","message":"too many connections; retry later"}}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\nretry-after: 1\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let write = async {
        match accepted {
            Accepted::Unix(mut stream) => stream.write_all(response.as_bytes()).await,
            Accepted::Tcp(mut stream, _) => stream.write_all(response.as_bytes()).await,
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), write).await;
}

/// Serves one connection until it closes or the server stops.
async fn connection<I>(app: &Arc<App>, router: Router, io: I, door: Door, stop: watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handler_app = app.clone();
    let handle = move |request| {
        let (app, router, door) = (handler_app.clone(), router.clone(), door.clone());
        async move { crate::http::handle(app, router, door, request).await }
    };
    serve_http1(io, app.config.header_timeout, handle, stop).await;
}

/// Serves one HTTP/1 connection with `handle` until it closes or the server
/// stops (then it finishes its request): the head limit and read timeout
/// of every door, upgrades allowed (the hub's WebSocket). The API's doors,
/// the app's port and xs's socket all serve connections through here.
pub(crate) async fn serve_http1<I, H, F>(
    io: I,
    header_timeout: std::time::Duration,
    handle: H,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(hyper::Request<hyper::body::Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = hyper::Response<axum::body::Body>> + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let response = handle(request);
        async move { Ok::<_, Infallible>(response.await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(HEAD_BYTES_MAX)
        .serve_connection(TokioIo::new(io), service)
        // The hub (`/v1/hub`) upgrades to WebSocket.
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = crate::server::stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(error) = result {
        tracing::debug!("connection ended: {error}");
    }
}
