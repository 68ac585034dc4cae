//! cairn-server: the network front ends of a cairn store (HTTP over a Unix
//! socket and TCP; the Redis protocol on TCP), authentication, and the
//! server's lifecycle. Every front end is a thin view of one
//! [`cairn_store::Store`]; failures map to [`ApiError`] in one place.
//!
//! Code map:
//! - `server.rs`: `run`: open the store, bind, serve, shut down cleanly.
//! - `listen.rs`: accept loops, connection limits, header timeouts, TLS.
//! - `http/`: the router (`mod.rs`), one module per resource, `stream.rs`
//!   (NDJSON and SSE bodies), `compat.rs` (seed 004's routes), `openapi.rs`.
//! - `resp/`: the Redis protocol: `frame.rs` (wire format), `conn.rs`,
//!   `command.rs`, `meilies.rs`, `streams.rs`, `groups.rs`, `entry.rs`.
//! - `auth.rs`: users, passwords (argon2id), tokens, per-topic access.
//! - `config.rs`: flags, environment, TOML file.
//! - `error.rs`: [`ApiError`] and the mapping of engine errors.
//! - `metrics.rs`: counters for `/metrics`.

mod auth;
mod config;
mod error;
mod http;
mod listen;
mod metrics;
mod resp;
mod server;

pub use auth::{IssuedToken, NewUser, USERS_FILE, UserInfo, Users};
pub use config::{Config, ServeArgs};
pub use error::ApiError;
pub use server::{run, serve};

/// Entry points for fuzz targets (`fuzz/`); not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    /// Parses every command in `bytes` with the RESP parser, as a
    /// connection would, until it needs more input or the framing breaks.
    pub fn resp_parse(bytes: &[u8]) {
        let mut at = 0;
        while let Ok(Some((_, used))) = crate::resp::frame::parse(&bytes[at..], 1 << 20) {
            assert!(used > 0 && at + used <= bytes.len(), "the parser must make progress within the input");
            at += used;
        }
    }
}

/// The store directory when none is given.
pub const STORE_DEFAULT: &str = "./cairn-data";
/// The socket's file name in the store directory.
pub const SOCKET_NAME: &str = "cairn.sock";
