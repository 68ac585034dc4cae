//! A client of the evt hub protocol (`/v1/hub`, WebSocket): calls
//! (`subj#tok\n<json>`, answered `{"res": …}` or `{"err": "…"}`) and the
//! `evt.update` pushes that arrive between them, kept in order.

use std::collections::VecDeque;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::{Client, ClientError};

/// Any of the client's transports.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An open hub connection.
pub struct Hub {
    socket: WebSocketStream<Box<dyn Io>>,
    tok: u64,
    updates: VecDeque<serde_json::Value>,
    /// When a frame last arrived (the hub pings every 30 s).
    heard: std::time::Instant,
}

/// Messages and frames of at most this many bytes (a hub's updates may
/// carry several events of the largest payload).
const MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

impl Client {
    /// Opens the hub (`/v1/hub`) with this client's address and credentials.
    pub async fn hub(&self) -> Result<Hub, ClientError> {
        let (stream, host) = self.stream().await?;
        let mut request = format!("ws://{host}/v1/hub")
            .into_client_request()
            .map_err(|error| ClientError::Reply(error.to_string()))?;
        if let Some(authorization) = &self.authorization {
            let value = authorization.parse().map_err(|_| ClientError::Reply("bad credentials".to_owned()))?;
            request.headers_mut().insert("authorization", value);
        }
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(MESSAGE_BYTES_MAX))
            .max_frame_size(Some(MESSAGE_BYTES_MAX));
        let (socket, _) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await.map_err(|error| {
                ClientError::Api {
                    status: 0,
                    code: "hub".to_owned(),
                    message: format!("the hub refused the connection: {error}"),
                }
            })?;
        Ok(Hub { socket, tok: 0, updates: VecDeque::new(), heard: std::time::Instant::now() })
    }
}

impl Hub {
    /// Calls `subject` with `body`; its `res`, or its `err` as an error.
    pub async fn call(&mut self, subject: &str, body: &serde_json::Value) -> Result<serde_json::Value, ClientError> {
        self.tok += 1;
        let head = format!("{subject}#{}", self.tok);
        let hub_error = |message: String| ClientError::Api { status: 0, code: "hub".to_owned(), message };
        self.socket
            .send(Message::Text(format!("{head}\n{body}").into()))
            .await
            .map_err(|error| hub_error(error.to_string()))?;
        loop {
            let Some((reply_head, json)) = self.receive().await? else {
                return Err(hub_error("the hub closed the connection".to_owned()));
            };
            if reply_head == head {
                return match json.get("err") {
                    Some(err) => Err(hub_error(err.as_str().unwrap_or_default().to_owned())),
                    None => Ok(json.get("res").cloned().unwrap_or_default()),
                };
            }
            if reply_head == "evt.update" {
                self.updates.push_back(json);
            }
        }
    }

    /// The next `evt.update` push (`None` once the connection is closed).
    pub async fn update(&mut self) -> Result<Option<serde_json::Value>, ClientError> {
        if let Some(update) = self.updates.pop_front() {
            return Ok(Some(update));
        }
        loop {
            match self.receive().await? {
                None => return Ok(None),
                Some((head, json)) if head == "evt.update" => return Ok(Some(json)),
                Some(_) => {}
            }
        }
    }

    /// How long since the hub was last heard from (any frame, pings too).
    pub fn silent_for(&self) -> std::time::Duration {
        self.heard.elapsed()
    }

    async fn receive(&mut self) -> Result<Option<(String, serde_json::Value)>, ClientError> {
        loop {
            let Some(message) = self.socket.next().await else { return Ok(None) };
            self.heard = std::time::Instant::now();
            let message = message.map_err(|error| ClientError::Reply(error.to_string()))?;
            let Message::Text(text) = message else { continue };
            let (head, body) = text.split_once('\n').unwrap_or((text.as_str(), ""));
            let json = if body.is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::from_str(body).map_err(|error| ClientError::Reply(error.to_string()))?
            };
            return Ok(Some((head.to_owned(), json)));
        }
    }

    /// Closes the connection.
    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}
