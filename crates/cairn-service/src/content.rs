//! Content by hash, with access rules: content is served only to a caller
//! who put it, or who may read an event whose payload it is (the trusted
//! socket and an unauthenticated server's clients see everything). To
//! everyone else it does not exist: `NotFound`, the same as for a hash
//! nobody stored, so a guessed secret cannot be confirmed.
//!
//! Who put what is kept in state records (`o` + hash + the putter's scope),
//! one per putter. Deleting drops the caller's claim; the bytes go only
//! when no claim is left and no event's payload is that content. Admins
//! (and the socket) delete whatever is not in use. Content put before
//! claims were recorded is readable through its events, and deleted by
//! admins.

use cairn_store::{Hash, StateOp};

use crate::error::{Result, ServiceError};
use crate::principal::Principal;
use crate::service::Service;

/// How many of the events referring to content are looked at to find one
/// the caller may read (content shared by very many events costs a
/// bounded amount; past this many, access needs a claim).
const REFERENCES_LOOKED_AT_MAX: usize = 10_000;

fn claims_prefix(hash: &Hash) -> Vec<u8> {
    let mut key = Vec::with_capacity(33 + 64);
    key.push(b'o');
    key.extend_from_slice(&hash.0);
    key
}

fn claim_key(hash: &Hash, who: &Principal) -> Vec<u8> {
    let mut key = claims_prefix(hash);
    key.extend_from_slice(who.scope().as_bytes());
    key
}

impl Service {
    /// Stores content on its own, claimed by `who` (who must be allowed to
    /// write something); returns its hash.
    pub async fn cas_put(&self, who: &Principal, bytes: Vec<u8>) -> Result<Hash> {
        self.admit(who)?;
        if !who.writes_something() {
            return Err(ServiceError::forbidden(format!(
                "user {} may not write anything, so may not store content",
                who.user_name().unwrap_or_default()
            )));
        }
        let max = self.limits().payload_bytes_max;
        if bytes.len() as u64 > max {
            return Err(ServiceError::TooLarge { what: "content", bytes: bytes.len() as u64, max });
        }
        let hash = self.storage().cas_put(bytes).await?;
        self.storage().state_submit(vec![StateOp::Put(claim_key(&hash, who), Vec::new())]).await?.await?;
        Ok(hash)
    }

    /// Whether `who` may see content `hash` (see the module docs).
    async fn may_see(&self, who: &Principal, hash: &Hash) -> Result<bool> {
        if who.sees_all() {
            return Ok(true);
        }
        if self.state_get(claim_key(hash, who)).await?.is_some() {
            return Ok(true);
        }
        let topics = self.storage().content_topics(*hash, REFERENCES_LOOKED_AT_MAX).await?;
        Ok(topics.iter().any(|topic| who.can_read_topic(topic)))
    }

    /// The content with `hash`, verified, if `who` may see it.
    pub async fn cas_get(&self, who: &Principal, hash: &Hash) -> Result<Vec<u8>> {
        self.admit(who)?;
        let not_found = || ServiceError::not_found("content", hash.sri());
        if !self.may_see(who, hash).await? {
            return Err(not_found());
        }
        self.storage().cas_get(*hash).await?.ok_or_else(not_found)
    }

    /// Whether content `hash` exists for `who` (false also when `who` may
    /// not see it).
    pub async fn cas_has(&self, who: &Principal, hash: &Hash) -> Result<bool> {
        match self.cas_get(who, hash).await {
            Ok(_) => Ok(true),
            Err(ServiceError::NotFound { .. }) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Deletes content: drops `who`'s claim, and the bytes once no claim is
    /// left (admins and the socket: every claim). `InUse` while an event's
    /// payload is that content (the claim is kept); `NotFound` when `who`
    /// has no claim (or, for admins, when there is no such content).
    pub async fn cas_delete(&self, who: &Principal, hash: &Hash) -> Result<()> {
        self.admit(who)?;
        let not_found = || ServiceError::not_found("content", hash.sri());
        let claims = self.storage().state_scan(claims_prefix(hash)).await?;
        let own = claim_key(hash, who);
        let (mine, others): (Vec<_>, Vec<_>) = claims.into_iter().map(|(key, _)| key).partition(|key| *key == own);
        let release = if who.is_admin() {
            [mine, others].concat()
        } else if mine.is_empty() {
            return Err(not_found());
        } else if !others.is_empty() {
            // Others still hold it: only this caller's claim goes.
            let ops = mine.into_iter().map(StateOp::Delete).collect();
            self.storage().state_submit(ops).await?.await?;
            return Ok(());
        } else {
            mine
        };
        // In use by an event: an error, and every claim stays.
        let deleted = self.storage().cas_delete(*hash).await?;
        if release.is_empty() {
            return if deleted { Ok(()) } else { Err(not_found()) };
        }
        let ops = release.into_iter().map(StateOp::Delete).collect();
        self.storage().state_submit(ops).await?.await?;
        Ok(())
    }
}
