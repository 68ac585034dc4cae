//! Consumers: durable positions in the log, kept by the service in state
//! records (one mechanism, written through the storage seam like events,
//! sharing their commit), of two kinds layered on it:
//! - cursors (`/v1/consumers`, `cairn consumer`): a named position, the
//!   last acknowledged event id, that reads resume after. A cursor belongs
//!   to whoever acknowledged it first: names are per owner (`alice`'s
//!   `billing` is not `bob`'s), so no user lists, moves or deletes
//!   another's. The socket and admin users see every cursor and may name
//!   an owner to act on another's;
//! - consumer groups (Redis `XGROUP`): a position per topic and group plus
//!   the pending entries, with Redis's semantics (`group.rs`, a pure state
//!   machine; `groups.rs`, its service operations). A group belongs to its
//!   topic: whoever may read and write the topic may use its groups, as
//!   competing workers of one stream do.
//!
//! A cursor may keep a snapshot: opaque bytes (a projection's state, say)
//! stored together with the position they were made at, in one atomic
//! durable step, so a consumer that restarts loads its state and resumes
//! after that position (simple-event-sourcing's consumers keep theirs so).
//!
//! Cursor records: `C<owner scope>\0<name>` → the acknowledged id (16
//! bytes); `S<owner scope>\0<name>\0` → the snapshot's id (16 bytes) then
//! its bytes (the last `\0` ends the name, so a scan finds one snapshot);
//! `I<owner scope>\0<name>\0` → the snapshot's id and size (8 bytes).

pub(crate) mod group;
pub(crate) mod groups;

use cairn_store::{EventId, StateOp, Store};

use crate::error::{Result, ServiceError};
use crate::principal::Principal;
use crate::service::Service;

/// Longest consumer name, in bytes.
pub const CONSUMER_NAME_BYTES_MAX: usize = 255;

/// Longest consumer group name, and longest name of a group's member, in
/// bytes (Redis has no bound; these become part of state keys).
pub const GROUP_NAME_BYTES_MAX: usize = 255;

/// A cursor and where it stands.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Cursor {
    /// Who it belongs to: `local`, `anonymous` or `user:<name>`.
    pub owner: String,
    /// Its name (per owner).
    pub name: String,
    /// The last acknowledged event id.
    pub acked: EventId,
}

fn cursor_prefix(owner: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + owner.len());
    key.push(b'C');
    key.extend_from_slice(owner.as_bytes());
    key.push(0);
    key
}

fn cursor_key(owner: &str, name: &str) -> Vec<u8> {
    let mut key = cursor_prefix(owner);
    key.extend_from_slice(name.as_bytes());
    key
}

fn snapshot_key(owner: &str, name: &str) -> Vec<u8> {
    let mut key = cursor_key(owner, name);
    key[0] = b'S';
    key.push(0);
    key
}

/// What `show` tells of a snapshot (its id and size), kept apart so that
/// telling it does not load the snapshot.
fn snapshot_info_key(owner: &str, name: &str) -> Vec<u8> {
    let mut key = snapshot_key(owner, name);
    key[0] = b'I';
    key
}

/// Largest consumer snapshot, in bytes (it is written as one log record).
pub const SNAPSHOT_BYTES_MAX: usize = 16 * 1024 * 1024;

/// A consumer's snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The position it was made at: the consumer resumes after it.
    pub at: EventId,
    /// Its bytes, as given.
    pub bytes: Vec<u8>,
}

fn parse_cursor(key: &[u8], value: &[u8]) -> Option<Cursor> {
    let rest = key.strip_prefix(b"C")?;
    let split = rest.iter().position(|&b| b == 0)?;
    let owner = std::str::from_utf8(&rest[..split]).ok()?.to_owned();
    let name = std::str::from_utf8(&rest[split + 1..]).ok()?.to_owned();
    let acked = EventId::from_bytes(value.try_into().ok()?);
    Some(Cursor { owner, name, acked })
}

/// Validates a consumer name.
pub fn check_consumer_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= CONSUMER_NAME_BYTES_MAX
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | ':'));
    if !valid {
        return Err(ServiceError::invalid(
            "consumer",
            format!("{name:?}: names are 1-{CONSUMER_NAME_BYTES_MAX} bytes of A-Z a-z 0-9 _ - . / :"),
        ));
    }
    Ok(())
}

/// Whose cursor `who` means: its own, or (socket and admins only) the named
/// owner's.
fn owner_of(who: &Principal, owner: Option<&str>) -> Result<String> {
    let own = who.scope();
    match owner {
        None => Ok(own),
        Some(owner) if owner == own => Ok(own),
        Some(owner) if who.is_admin() => {
            let valid = owner == "local"
                || owner == "anonymous"
                || owner.strip_prefix("user:").is_some_and(|name| crate::users::check_name(name).is_ok());
            if !valid {
                return Err(ServiceError::invalid("owner", "is local, anonymous or user:<name>"));
            }
            Ok(owner.to_owned())
        }
        Some(_) => Err(ServiceError::forbidden("only admins act on another owner's consumers")),
    }
}

impl Service {
    /// Records durably that cursor `name` has handled everything up to
    /// `id` (which must not be after the newest event).
    pub async fn consumer_ack(&self, who: &Principal, owner: Option<&str>, name: &str, id: EventId) -> Result<Cursor> {
        self.admit(who)?;
        check_consumer_name(name)?;
        let owner = owner_of(who, owner)?;
        if id > self.storage().last_id() {
            return Err(ServiceError::invalid(
                "id",
                format!("{id} is after the newest event; acks name events that exist"),
            ));
        }
        let ops = vec![StateOp::Put(cursor_key(&owner, name), id.to_bytes().to_vec())];
        self.storage().state_submit(ops).await?.await?;
        Ok(Cursor { owner, name: name.to_owned(), acked: id })
    }

    /// Where cursor `name` stands, if it exists.
    pub async fn consumer(&self, who: &Principal, owner: Option<&str>, name: &str) -> Result<Option<Cursor>> {
        self.admit(who)?;
        check_consumer_name(name)?;
        let owner = owner_of(who, owner)?;
        let key = cursor_key(&owner, name);
        Ok(self.state_get(key.clone()).await?.and_then(|value| parse_cursor(&key, &value)))
    }

    /// `who`'s cursors (every cursor, for the socket and admins), by owner and name.
    pub async fn consumers(&self, who: &Principal) -> Result<Vec<Cursor>> {
        self.admit(who)?;
        let prefix = if who.is_admin() { b"C".to_vec() } else { cursor_prefix(&who.scope()) };
        let entries = self.storage().state_scan(prefix).await?;
        Ok(entries.iter().filter_map(|(key, value)| parse_cursor(key, value)).collect())
    }

    /// Stores `bytes` as cursor `name`'s snapshot made at `at`, and moves
    /// the cursor to `at`, in one atomic durable step (a new snapshot
    /// replaces the old one; a later ack moves the cursor, not the snapshot).
    pub async fn consumer_snapshot_put(
        &self,
        who: &Principal,
        owner: Option<&str>,
        name: &str,
        at: EventId,
        bytes: &[u8],
    ) -> Result<Cursor> {
        self.admit(who)?;
        check_consumer_name(name)?;
        let owner = owner_of(who, owner)?;
        // Storing bytes is writing: a read-only user stores none (as with
        // content put on its own).
        if !who.writes_something() {
            return Err(ServiceError::forbidden("a user who may write nothing keeps no snapshots"));
        }
        if bytes.len() > SNAPSHOT_BYTES_MAX {
            return Err(ServiceError::TooLarge {
                what: "consumer snapshot",
                bytes: bytes.len() as u64,
                max: SNAPSHOT_BYTES_MAX as u64,
            });
        }
        if at > self.storage().last_id() {
            return Err(ServiceError::invalid(
                "id",
                format!("{at} is after the newest event; a snapshot is made at an event that exists"),
            ));
        }
        let mut value = Vec::with_capacity(16 + bytes.len());
        value.extend_from_slice(&at.to_bytes());
        value.extend_from_slice(bytes);
        let mut info = at.to_bytes().to_vec();
        info.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        let ops = vec![
            StateOp::Put(cursor_key(&owner, name), at.to_bytes().to_vec()),
            StateOp::Put(snapshot_key(&owner, name), value),
            StateOp::Put(snapshot_info_key(&owner, name), info),
        ];
        self.storage().state_submit(ops).await?.await?;
        Ok(Cursor { owner, name: name.to_owned(), acked: at })
    }

    /// Cursor `name`'s snapshot, if it has one.
    pub async fn consumer_snapshot(
        &self,
        who: &Principal,
        owner: Option<&str>,
        name: &str,
    ) -> Result<Option<Snapshot>> {
        self.admit(who)?;
        check_consumer_name(name)?;
        let owner = owner_of(who, owner)?;
        Ok(self.state_get(snapshot_key(&owner, name)).await?.and_then(|mut value| {
            let at = EventId::from_bytes(value.get(..16)?.try_into().ok()?);
            value.drain(..16);
            Some(Snapshot { at, bytes: value })
        }))
    }

    /// The id cursor `name`'s snapshot was made at and its size in bytes,
    /// without loading it.
    pub async fn consumer_snapshot_info(
        &self,
        who: &Principal,
        owner: Option<&str>,
        name: &str,
    ) -> Result<Option<(EventId, u64)>> {
        self.admit(who)?;
        check_consumer_name(name)?;
        let owner = owner_of(who, owner)?;
        Ok(self.state_get(snapshot_info_key(&owner, name)).await?.and_then(|value| {
            let at = EventId::from_bytes(value.get(..16)?.try_into().ok()?);
            Some((at, u64::from_be_bytes(value.get(16..24)?.try_into().ok()?)))
        }))
    }

    /// Deletes every cursor and snapshot of `owner` (when its user is
    /// removed: a later user of the same name must not inherit them).
    pub(crate) async fn consumers_forget(&self, owner: &str) -> Result<()> {
        let mut ops = Vec::new();
        for (key, _) in self.storage().state_scan(cursor_prefix(owner)).await? {
            ops.push(StateOp::Delete(key));
        }
        // Snapshots found by their small info records (scanning the
        // snapshots themselves would load every one of them).
        let mut info_prefix = cursor_prefix(owner);
        info_prefix[0] = b'I';
        for (mut key, _) in self.storage().state_scan(info_prefix).await? {
            ops.push(StateOp::Delete(key.clone()));
            key[0] = b'S';
            ops.push(StateOp::Delete(key));
        }
        if !ops.is_empty() {
            self.storage().state_submit(ops).await?.await?;
        }
        Ok(())
    }

    /// Deletes cursor `name` and its snapshot; false if there was none.
    pub async fn consumer_delete(&self, who: &Principal, owner: Option<&str>, name: &str) -> Result<bool> {
        let Some(cursor) = self.consumer(who, owner, name).await? else { return Ok(false) };
        let ops = vec![
            StateOp::Delete(cursor_key(&cursor.owner, &cursor.name)),
            StateOp::Delete(snapshot_key(&cursor.owner, &cursor.name)),
            StateOp::Delete(snapshot_info_key(&cursor.owner, &cursor.name)),
        ];
        self.storage().state_submit(ops).await?.await?;
        Ok(true)
    }

    /// Moves positions older versions kept in the engine's own cursors
    /// into cursors owned by the socket, then drops the engine's.
    pub(crate) async fn adopt_engine_cursors(&self, store: &Store, legacy: Vec<(String, EventId)>) -> Result<()> {
        let existing = self.consumers(&Principal::Local).await?;
        let mut ops = Vec::new();
        for (name, id) in &legacy {
            if !existing.iter().any(|cursor| cursor.owner == "local" && cursor.name == *name) {
                ops.push(StateOp::Put(cursor_key("local", name), id.to_bytes().to_vec()));
            }
        }
        if !ops.is_empty() {
            self.storage().state_submit(ops).await?.await?;
        }
        let store = store.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            for (name, _) in legacy {
                store.consumer_delete(&name)?;
            }
            Ok(())
        })
        .await
        .map_err(|error| ServiceError::invalid("store", error.to_string()))??;
        tracing::info!("moved consumer positions of an older version into the service's consumers");
        Ok(())
    }
}
