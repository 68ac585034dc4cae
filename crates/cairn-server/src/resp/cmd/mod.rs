//! Command handlers, one file per family: `connection.rs` (PING, HELLO,
//! AUTH, CLIENT…), `server.rs` (COMMAND, INFO), `keys.rs` (topics as
//! keys), `meilies.rs` (MeiliES's commands), `pubsub.rs` (Redis pub/sub), `streams.rs` (XADD, XRANGE,
//! XREAD…), `groups.rs` (consumer groups), `transactions.rs` (MULTI,
//! EXEC, WATCH). Each parses its arguments,
//! calls the service as the connection's principal, and writes the reply;
//! the table (`table.rs`) binds them to their names.

pub(crate) mod connection;
pub(crate) mod groups;
pub(crate) mod keys;
pub(crate) mod meilies;
pub(crate) mod pubsub;
pub(crate) mod server;
pub(crate) mod streams;
pub(crate) mod transactions;

use cairn_service::Topic;

use super::error::{Fail, err};

/// The topic named by a key.
pub(crate) fn topic(key: &[u8]) -> Result<Topic, Fail> {
    let name = std::str::from_utf8(key).map_err(|_| err("invalid key: topic names are UTF-8"))?;
    Topic::new(name).map_err(|error| err(error.to_string()))
}

/// A non-negative integer argument.
pub(crate) fn parse_count(arg: &[u8]) -> Result<u64, Fail> {
    std::str::from_utf8(arg)
        .ok()
        .and_then(|text| text.parse::<u64>().ok())
        .ok_or_else(|| err("value is not an integer or out of range"))
}

/// An argument as lower-case text (for options and subcommands).
pub(crate) fn word(arg: &[u8]) -> String {
    String::from_utf8_lossy(arg).to_lowercase()
}
