//! cairn-client: a small Rust client for cairn's HTTP API, over the Unix
//! socket (`<store>/cairn.sock`) or TCP, with TLS (rustls) for `https://`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), cairn_client::ClientError> {
//! let client = cairn_client::Client::unix("cairn-data/cairn.sock");
//! let response = client.request("POST", "/v1/topics/greetings/events", &[], "hello".into()).await?;
//! let event = response.json::<serde_json::Value>().await?;
//! # Ok(()) }
//! ```
//!
//! A [`Client`] opens a connection per call of [`Client::request`]; a
//! [`Connection`] from [`Client::connect`] keeps one open for many requests.
//! Error replies (`{"error":{"code","message"}}`) become [`ClientError::Api`].

mod hub;
pub use hub::Hub;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_rustls::rustls;

/// A request body: whole, or streamed in chunks.
pub enum RequestBody {
    /// The whole body.
    Full(Bytes),
    /// Chunks as they come (import of a large file).
    Stream(tokio::sync::mpsc::Receiver<Bytes>),
}

impl From<Bytes> for RequestBody {
    fn from(bytes: Bytes) -> RequestBody {
        RequestBody::Full(bytes)
    }
}

impl From<&'static str> for RequestBody {
    fn from(text: &'static str) -> RequestBody {
        RequestBody::Full(Bytes::from_static(text.as_bytes()))
    }
}

impl From<Vec<u8>> for RequestBody {
    fn from(bytes: Vec<u8>) -> RequestBody {
        RequestBody::Full(Bytes::from(bytes))
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached.
    #[error("connect to {target}: {source}")]
    Connect {
        /// Where.
        target: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The URL given is not usable.
    #[error("invalid server URL {0:?}: use http://host:port or https://host:port")]
    Url(String),
    /// TLS setup failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// The HTTP exchange failed.
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    /// The server answered with an error.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The error's code (`invalid`, `not_found`, ...).
        code: String,
        /// The error's message.
        message: String,
    },
    /// A reply was not the JSON expected.
    #[error("unexpected reply: {0}")]
    Reply(String),
}

#[derive(Clone)]
enum Target {
    Unix(PathBuf),
    Tcp { host: String, port: u16, tls: Option<Arc<rustls::ClientConfig>> },
}

/// Where a server is, and how to authenticate.
#[derive(Clone)]
pub struct Client {
    target: Target,
    authorization: Option<String>,
}

impl Client {
    /// A client of the server on a Unix socket.
    pub fn unix(path: impl AsRef<Path>) -> Client {
        Client { target: Target::Unix(path.as_ref().to_path_buf()), authorization: None }
    }

    /// A client of `http://host:port` or `https://host:port`. For https,
    /// `ca_pem` is a PEM file of trusted certificates (default: the
    /// system's bundle).
    pub fn tcp(url: &str, ca_pem: Option<&Path>) -> Result<Client, ClientError> {
        let bad = || ClientError::Url(url.to_owned());
        let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(bad());
        };
        let authority = rest.trim_end_matches('/');
        if authority.contains('/') {
            return Err(bad());
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => {
                (host.trim_start_matches('[').trim_end_matches(']').to_owned(), port.parse().map_err(|_| bad())?)
            }
            _ => (authority.to_owned(), if tls { 443 } else { 80 }),
        };
        let tls = if tls { Some(tls_config(ca_pem)?) } else { None };
        Ok(Client { target: Target::Tcp { host, port, tls }, authorization: None })
    }

    /// Authenticates with a user name and password (HTTP Basic).
    pub fn with_basic(mut self, user: &str, password: &str) -> Client {
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.authorization = Some(format!("Basic {encoded}"));
        self
    }

    /// Authenticates with a bearer token.
    pub fn with_token(mut self, token: &str) -> Client {
        self.authorization = Some(format!("Bearer {token}"));
        self
    }

    /// Opens a connection for many requests.
    pub async fn connect(&self) -> Result<Connection, ClientError> {
        let (stream, host) = self.stream().await?;
        let sender = handshake(stream).await?;
        Ok(Connection { sender, host, authorization: self.authorization.clone() })
    }

    /// A new transport to the server (Unix socket, TCP, or TLS over TCP)
    /// and the host name its requests carry.
    pub(crate) async fn stream(&self) -> Result<(Box<dyn hub::Io>, String), ClientError> {
        match &self.target {
            Target::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(|source| ClientError::Connect { target: path.display().to_string(), source })?;
                Ok((Box::new(stream), "localhost".to_owned()))
            }
            Target::Tcp { host, port, tls } => {
                let target = format!("{host}:{port}");
                let stream = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(|source| ClientError::Connect { target: target.clone(), source })?;
                let _ = stream.set_nodelay(true);
                match tls {
                    None => Ok((Box::new(stream), target)),
                    Some(config) => {
                        let name = rustls::pki_types::ServerName::try_from(host.clone())
                            .map_err(|error| ClientError::Tls(format!("server name {host:?}: {error}")))?;
                        let stream = tokio_rustls::TlsConnector::from(config.clone())
                            .connect(name, stream)
                            .await
                            .map_err(|source| ClientError::Connect { target: target.clone(), source })?;
                        Ok((Box::new(stream), target))
                    }
                }
            }
        }
    }

    /// One request on a new connection.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: RequestBody,
    ) -> Result<Response, ClientError> {
        self.connect().await?.request(method, path, headers, body).await
    }
}

async fn handshake<S>(stream: S) -> Result<hyper::client::conn::http1::SendRequest<Body>, ClientError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

fn tls_config(ca_pem: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    const SYSTEM_BUNDLES: &[&str] =
        &["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"];
    let path = match ca_pem {
        Some(path) => path.to_path_buf(),
        None => SYSTEM_BUNDLES
            .iter()
            .map(PathBuf::from)
            .find(|path| path.is_file())
            .ok_or_else(|| ClientError::Tls("no system CA bundle found; give one with --cacert".to_owned()))?,
    };
    let mut roots = rustls::RootCertStore::empty();
    let certificates = CertificateDer::pem_file_iter(&path)
        .map_err(|error| ClientError::Tls(format!("read {}: {error}", path.display())))?;
    for certificate in certificates {
        let certificate =
            certificate.map_err(|error| ClientError::Tls(format!("parse {}: {error}", path.display())))?;
        roots.add(certificate).map_err(|error| ClientError::Tls(format!("{}: {error}", path.display())))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| ClientError::Tls(error.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// An open connection (HTTP/1.1 keep-alive): one request at a time.
pub struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Body>,
    host: String,
    authorization: Option<String>,
}

impl Connection {
    /// Sends a request; error statuses become [`ClientError::Api`].
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: RequestBody,
    ) -> Result<Response, ClientError> {
        let response = self.send(method, path, headers, body).await?;
        if response.status >= 400 {
            return Err(response.into_error().await);
        }
        Ok(response)
    }

    /// Sends a request and returns whatever the status.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: RequestBody,
    ) -> Result<Response, ClientError> {
        let body: Body = match body {
            RequestBody::Full(bytes) => Full::new(bytes).boxed(),
            RequestBody::Stream(receiver) => {
                let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
                    receiver.recv().await.map(|chunk| (Ok(hyper::body::Frame::data(chunk)), receiver))
                });
                http_body_util::StreamBody::new(stream).boxed()
            }
        };
        let mut builder = hyper::Request::builder().method(method).uri(path).header("host", &self.host);
        if let Some(authorization) = &self.authorization {
            builder = builder.header("authorization", authorization);
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(body).map_err(|error| ClientError::Reply(format!("bad request: {error}")))?;
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let (parts, body) = response.into_parts();
        Ok(Response { status: parts.status.as_u16(), headers: parts.headers, body })
    }
}

/// A reply whose body is read on demand.
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Headers.
    pub headers: hyper::HeaderMap,
    body: Incoming,
}

impl Response {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// The next chunk of the body, or `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, ClientError> {
        loop {
            match self.body.frame().await {
                None => return Ok(None),
                Some(frame) => {
                    if let Ok(data) = frame?.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }

    /// The whole body.
    pub async fn bytes(self) -> Result<Bytes, ClientError> {
        Ok(self.body.collect().await?.to_bytes())
    }

    /// The body as JSON.
    pub async fn json<T: serde::de::DeserializeOwned>(self) -> Result<T, ClientError> {
        let bytes = self.bytes().await?;
        serde_json::from_slice(&bytes)
            .map_err(|error| ClientError::Reply(format!("{error}: {}", String::from_utf8_lossy(&bytes))))
    }

    /// The error this reply carries.
    pub async fn into_error(self) -> ClientError {
        let status = self.status;
        let bytes = match self.bytes().await {
            Ok(bytes) => bytes,
            Err(error) => return error,
        };
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let text = |pointer: &str| json.pointer(pointer).and_then(|value| value.as_str()).map(str::to_owned);
        ClientError::Api {
            status,
            code: text("/error/code").unwrap_or_else(|| "http".to_owned()),
            message: text("/error/message")
                .or_else(|| text("/errorMessage"))
                .unwrap_or_else(|| format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes).trim())),
        }
    }
}

/// Percent-encodes a path segment or query value (everything but
/// unreserved characters), so topics with `/` and hashes with `+` survive.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
