//! Redis-protocol errors: a failed command is one error line starting with
//! its code, as Redis words it. Service errors become lines here, in one
//! place (`From<ServiceError>`); the command-specific wordings Redis
//! clients match on (`NOGROUP`, `BUSYGROUP`, the stream id message) are
//! made by the commands from the service's kinds, never by reading text.

use cairn_service::ServiceError;

/// A failed command: the whole error line, starting with its code.
#[derive(Debug)]
pub(crate) struct Fail(pub(crate) String);

/// A command's result; replies are written to the connection as it runs.
pub(crate) type CmdResult = Result<(), Fail>;

/// `ERR <message>`.
pub(crate) fn err(message: impl std::fmt::Display) -> Fail {
    Fail(format!("ERR {message}"))
}

/// `ERR syntax error`.
pub(crate) fn syntax() -> Fail {
    Fail("ERR syntax error".to_owned())
}

/// Redis's wording for an unparseable stream id.
pub(crate) fn invalid_id() -> Fail {
    err("Invalid stream ID specified as stream command argument")
}

/// `ERR wrong number of arguments for '<name>' command`.
pub(crate) fn arity(name: &str) -> Fail {
    err(format!("wrong number of arguments for '{name}' command"))
}

/// Before AUTH where it is required.
pub(crate) fn noauth() -> Fail {
    Fail("NOAUTH Authentication required.".to_owned())
}

impl From<ServiceError> for Fail {
    fn from(error: ServiceError) -> Fail {
        match &error {
            ServiceError::Forbidden { .. } => Fail(format!("NOPERM {error}")),
            ServiceError::Unauthenticated { .. } => {
                Fail("WRONGPASS invalid username-password pair or user is disabled.".to_owned())
            }
            // A login refused without a check: clients file it with the
            // wrong passwords (redis-py raises AuthenticationError), and it
            // tells nothing about the password.
            ServiceError::Throttled { .. } => Fail(format!("WRONGPASS {error}")),
            ServiceError::Storage(_) => {
                tracing::error!("command failed: {error}");
                err(error)
            }
            _ => err(error),
        }
    }
}

impl From<cairn_service::StoreError> for Fail {
    fn from(error: cairn_service::StoreError) -> Fail {
        Fail::from(ServiceError::from(error))
    }
}
