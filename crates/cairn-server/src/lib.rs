//! cairn-server: the network front ends of a cairn store (HTTP over a Unix
//! socket and TCP; the Redis protocol on TCP) and the server's lifecycle.
//! Every front end is a thin adapter over [`cairn_service::Service`]:
//! parse, call, render; authorization, users and storage are the
//! service's. Each protocol renders the service's errors in one place.
//!
//! Code map:
//! - `server.rs`: `run`: open the store and service, bind, serve, shut down cleanly.
//! - `listen.rs`: accept loops, connection limits, header timeouts, TLS.
//! - `http/`: the router and front door (`mod.rs`), one module per
//!   resource, `stream.rs` (NDJSON and SSE bodies), `compat.rs` (seed
//!   004's routes), `error.rs` (the one renderer), `openapi.rs`.
//! - `resp/`: the Redis protocol: `frame.rs` (wire format), `conn.rs`
//!   (a connection), `table.rs` (the command table), `cmd/` (one file per
//!   command family), `error.rs` (the one renderer), `entry.rs`.
//! - `config.rs`: flags, environment, TOML file.
//! - `metrics.rs`: counters for `/metrics`.

mod app;
mod config;
mod http;
mod listen;
mod metrics;
mod mounts;
mod pump;
mod resp;
mod satellite;
mod server;
mod xs;

pub use config::{Config, ServeArgs};
pub use server::{open_postgres_service, run, serve};

/// Entry points for fuzz targets (`fuzz/`); not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    /// Parses every command in `bytes` with the RESP parser, as a
    /// connection would, until it needs more input or the framing breaks.
    pub fn resp_parse(bytes: &[u8]) {
        let mut at = 0;
        let mut parser = crate::resp::frame::Parser::new(crate::resp::frame::Limits {
            bulk_bytes_max: 1 << 20,
            command_bytes_max: 4 << 20,
        });
        while let Ok(Some((_, used))) = parser.parse(&bytes[at..]) {
            assert!(used > 0 && at + used <= bytes.len(), "the parser must make progress within the input");
            at += used;
        }
    }

    /// Parses `bytes` as a MeiliES `subscribe` spec (`name[:from[:to]]`).
    pub fn meilies_spec(bytes: &[u8]) {
        let _ = crate::resp::cmd::meilies::Spec::parse(bytes);
    }

    /// Sends `bytes` as they are to an HTTP server running in this process
    /// (started on first use on a temporary store: TCP, no authentication,
    /// sync none) and reads its reply. (Under cargo-fuzz, libFuzzer's panic
    /// hook aborts on any panic, the server's tasks included.)
    pub fn http_request(bytes: &[u8]) {
        use std::io::{Read as _, Write as _};
        static SERVER: std::sync::OnceLock<std::net::SocketAddr> = std::sync::OnceLock::new();
        let addr = *SERVER.get_or_init(start_http);
        let mut stream = std::net::TcpStream::connect(addr).expect("the server answers");
        let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(5)));
        let _ = stream.write_all(bytes);
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let mut reply = Vec::new();
        let _ = stream.read_to_end(&mut reply);
    }

    fn start_http() -> std::net::SocketAddr {
        let dir = std::env::temp_dir().join(format!("cairn-fuzz-http-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let args = crate::ServeArgs {
            http: Some("127.0.0.1:0".parse().expect("an address")),
            insecure_no_auth: true,
            no_resp: true,
            header_timeout: Some("2s".to_owned()),
            // The corpus names the server `x`.
            allow_hosts: vec!["x".to_owned()],
            ..crate::ServeArgs::default()
        };
        let config = crate::Config::resolve(args, Some(dir), Some("none".to_owned())).expect("settings");
        let (ready, is_ready) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
            let served = runtime.block_on(crate::serve(config, std::future::pending(), move |addresses| {
                let http = addresses.iter().find_map(|a| a.strip_prefix("http://")).map(str::to_owned);
                let _ = ready.send(http);
            }));
            panic!("the fuzzing server stopped: {served:?}");
        });
        is_ready.recv().expect("the server starts").expect("it listens on TCP").parse().expect("an address")
    }

    #[cfg(test)]
    #[allow(clippy::unwrap_used)]
    mod tests {
        #[test]
        fn the_http_fuzz_corpus_replays_against_a_real_server() {
            let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/http_request");
            let mut n = 0;
            for entry in std::fs::read_dir(corpus).unwrap() {
                super::http_request(&std::fs::read(entry.unwrap().path()).unwrap());
                n += 1;
            }
            assert!(n >= 3, "the committed corpus is there");
            super::http_request(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        }
    }
}

/// The store directory when none is given.
pub const STORE_DEFAULT: &str = "./cairn-data";
/// The socket's file name in the store directory.
pub const SOCKET_NAME: &str = "cairn.sock";
