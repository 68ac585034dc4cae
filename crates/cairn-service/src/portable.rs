//! What an export carries besides events, and importing it back.
//!
//! `cairn export` of the whole store writes its events, then one line per
//! piece of content stored on its own (`{"cairn_content":{"hash",
//! "content_base64"}}`) and one per service state record
//! (`{"cairn_state":{"key","value"}}`, both base64): consumers and their
//! snapshots, consumer groups with their pending entries, content claims,
//! Redis's `max-deleted-entry-id`. Import takes them in that order (state
//! refers to events and content). Users and tokens are not in an export:
//! they are secrets (a backup carries them).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use cairn_store::{Hash, Imported, StateOp};

use crate::error::{Result, ServiceError};
use crate::principal::Principal;
use crate::service::Service;

/// One line of an export.
pub enum ImportRecord {
    /// An event with its id and seq.
    Event(Imported),
    /// Content stored on its own, checked against its hash.
    Content(Vec<u8>),
    /// A service state record.
    State(Vec<u8>, Vec<u8>),
}

#[derive(serde::Deserialize)]
struct ContentLine {
    hash: String,
    content_base64: String,
}

#[derive(serde::Deserialize)]
struct StateLine {
    key: String,
    value: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtraLine {
    #[serde(default)]
    cairn_content: Option<ContentLine>,
    #[serde(default)]
    cairn_state: Option<StateLine>,
}

fn base64(field: &'static str, text: &str) -> Result<Vec<u8>> {
    STANDARD.decode(text).map_err(|error| ServiceError::invalid(field, format!("not base64: {error}")))
}

impl Service {
    /// One line of an export: an event, content or a state record.
    pub fn import_record(line: &[u8]) -> Result<ImportRecord> {
        let extra = line.starts_with(b"{\"cairn_content\"") || line.starts_with(b"{\"cairn_state\"");
        if !extra {
            return Service::import_line(line).map(ImportRecord::Event);
        }
        let extra: ExtraLine = serde_json::from_slice(line)
            .map_err(|error| ServiceError::invalid("body", format!("not an export line: {error}")))?;
        match (extra.cairn_content, extra.cairn_state) {
            (Some(content), None) => {
                let bytes = base64("content_base64", &content.content_base64)?;
                let hash = crate::service::parse_hash(&content.hash)?;
                if Hash::of(&bytes) != hash {
                    return Err(ServiceError::invalid("content_base64", format!("does not hash to {}", content.hash)));
                }
                Ok(ImportRecord::Content(bytes))
            }
            (None, Some(state)) => {
                let key = base64("key", &state.key)?;
                if key.is_empty() || key.len() > cairn_store::limits::STATE_KEY_BYTES_MAX {
                    return Err(ServiceError::invalid("key", "is 1 byte to 4 KiB"));
                }
                Ok(ImportRecord::State(key, base64("value", &state.value)?))
            }
            _ => Err(ServiceError::invalid("body", "a line has cairn_content or cairn_state, not both")),
        }
    }

    /// Applies the content and state records of an import, in order (admin).
    pub async fn import_extras(&self, who: &Principal, records: Vec<ImportRecord>) -> Result<()> {
        self.admit(who)?;
        who.check_admin()?;
        let mut ops = Vec::new();
        for record in records {
            match record {
                ImportRecord::Content(bytes) => {
                    self.storage().cas_put(bytes).await?;
                }
                ImportRecord::State(key, value) => {
                    // Users are not state an import may write: they are
                    // managed with the user commands, by admins.
                    if key.first() == Some(&crate::users::USER_RECORD_PREFIX) {
                        return Err(ServiceError::invalid("cairn_state", "user records are not imported"));
                    }
                    if key == crate::consumers::groups::VERSION_KEY {
                        return Err(ServiceError::invalid("cairn_state", "the groups' version record is not imported"));
                    }
                    ops.push(StateOp::Put(key, value));
                }
                ImportRecord::Event(_) => {
                    return Err(ServiceError::invalid("body", "events are imported with Service::import"));
                }
            }
        }
        if !ops.is_empty() {
            // Group records go in as a change of the groups (under their
            // locks, the version moved), so every server reads them again.
            self.import_group_records(ops).await?;
        }
        Ok(())
    }

    /// What an export of the whole store carries after its events (admin):
    /// the hashes of content stored on its own (each line made by
    /// [`Service::export_content`], one at a time), then every state record
    /// as a line.
    pub async fn export_extras(&self, who: &Principal) -> Result<(Vec<Hash>, Vec<serde_json::Value>)> {
        self.admit(who)?;
        who.check_admin()?;
        let mut state = self.storage().state_scan(Vec::new()).await?;
        // Users (password and token hashes, where storage keeps them) are
        // not exported, as `users.json` is not.
        state.retain(|(key, _)| {
            key.first() != Some(&crate::users::USER_RECORD_PREFIX) && key != crate::consumers::groups::VERSION_KEY
        });
        let mut hashes: Vec<Hash> = state
            .iter()
            .filter(|(key, _)| key.first() == Some(&b'o') && key.len() > 33)
            .map(|(key, _)| Hash(key[1..33].try_into().expect("32 bytes")))
            .collect();
        hashes.dedup();
        let lines = state
            .into_iter()
            .map(|(key, value)| {
                serde_json::json!({ "cairn_state": { "key": STANDARD.encode(key), "value": STANDARD.encode(value) } })
            })
            .collect();
        Ok((hashes, lines))
    }

    /// The export line of content stored on its own (admin); `None` once
    /// it is gone.
    pub async fn export_content(&self, who: &Principal, hash: Hash) -> Result<Option<serde_json::Value>> {
        self.admit(who)?;
        who.check_admin()?;
        Ok(self.storage().cas_get(hash).await?.map(|bytes| {
            serde_json::json!({ "cairn_content": { "hash": hash.to_string(), "content_base64": STANDARD.encode(bytes) } })
        }))
    }
}
