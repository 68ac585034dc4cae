//! Managing users and tokens, with who may do what:
//! - admins (and the socket) list, add and remove users, set any password,
//!   issue tokens for anyone and revoke any token;
//! - a user changes its own password only by giving the old one, issues
//!   itself a token only from a session opened with its password (or by
//!   giving the password), and revokes its own tokens.
//!
//! So a stolen token cannot mint more tokens or take over the password,
//! and does not outlive its revocation. The slow parts (argon2, the users
//! file's fsync) run on the blocking pool.

use crate::error::{Result, ServiceError};
use crate::principal::Principal;
use crate::service::Service;
use crate::users::{IssuedToken, NewUser, UserInfo, Users};

impl Service {
    async fn users_call<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Users) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let service = self.clone();
        tokio::task::spawn_blocking(move || work(&service.inner.users)).await.map_err(|_| ServiceError::ShuttingDown)?
    }

    /// Whether `who` is the user `name` itself.
    fn is_self(who: &Principal, name: &str) -> bool {
        who.user_name() == Some(name)
    }

    /// Every user (admin).
    pub async fn users_list(&self, who: &Principal) -> Result<Vec<UserInfo>> {
        self.admit(who)?;
        who.check_admin()?;
        Ok(self.inner.users.list())
    }

    /// Adds a user (admin).
    pub async fn user_add(&self, who: &Principal, new: NewUser) -> Result<UserInfo> {
        self.admit(who)?;
        who.check_admin()?;
        self.users_call(move |users| users.add(new)).await
    }

    /// Removes a user and its tokens, ending its sessions (admin).
    pub async fn user_remove(&self, who: &Principal, name: &str) -> Result<()> {
        self.admit(who)?;
        who.check_admin()?;
        let owner = format!("user:{name}");
        let name = name.to_owned();
        self.users_call(move |users| users.remove(&name)).await?;
        self.consumers_forget(&owner).await
    }

    /// Sets a password (ending the user's password sessions): admins for
    /// anyone; a user for itself, giving the old password.
    pub async fn user_passwd(&self, who: &Principal, name: &str, password: &str, old: Option<&str>) -> Result<()> {
        self.admit(who)?;
        if !who.is_admin() {
            if !Self::is_self(who, name) {
                who.check_admin()?;
            }
            let old = old.ok_or_else(|| {
                ServiceError::forbidden("changing your own password needs the old one (old_password), or an admin")
            })?;
            self.login_password(name, old, None).await.map_err(|error| match error {
                ServiceError::Unauthenticated { .. } => ServiceError::forbidden("the old password is wrong"),
                other => other,
            })?;
        }
        let (name, password) = (name.to_owned(), password.to_owned());
        self.users_call(move |users| users.passwd(&name, &password)).await
    }

    /// Issues a token: admins for anyone; a user for itself from a session
    /// opened with its password, or giving its password.
    pub async fn token_issue(&self, who: &Principal, name: &str, password: Option<&str>) -> Result<IssuedToken> {
        self.admit(who)?;
        if !who.is_admin() {
            let Principal::User(session) = who else {
                return Err(ServiceError::forbidden("issuing tokens needs a user or an admin"));
            };
            if !Self::is_self(who, name) {
                who.check_admin()?;
            }
            if !session.by_password() {
                let password = password.ok_or_else(|| {
                    ServiceError::forbidden(
                        "a token cannot issue tokens: log in with the password, or give it (password)",
                    )
                })?;
                self.login_password(name, password, None).await.map_err(|error| match error {
                    ServiceError::Unauthenticated { .. } => ServiceError::forbidden("the password is wrong"),
                    other => other,
                })?;
            }
        }
        let name = name.to_owned();
        self.users_call(move |users| users.issue_token(&name)).await
    }

    /// Revokes a token by its id (or itself), ending its sessions: admins
    /// any token, a user its own.
    pub async fn token_revoke(&self, who: &Principal, id: &str) -> Result<()> {
        self.admit(who)?;
        if !who.is_admin() {
            let owner = self.inner.users.token_owner(id);
            if owner.is_none() || owner.as_deref() != who.user_name() {
                // Another's token, or none: the same answer.
                return Err(ServiceError::not_found("token", id));
            }
        }
        let id = id.to_owned();
        self.users_call(move |users| users.revoke_token(&id)).await
    }
}
