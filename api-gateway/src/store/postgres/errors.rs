//! What a PostgreSQL error means for the caller: try again later (the connection, the server
//! or the pool is in trouble), a conflict with stored data (a constraint), data the database
//! cannot keep (classes 22 and 54: the input is at fault), or a bug (a query the server refuses
//! whatever happens). The cause is kept as the error's source.

use std::sync::Arc;

use tokio_postgres::error::SqlState;

use super::super::StoreError;

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> Self {
        let transient = match error.code() {
            // No SQLSTATE: the connection broke, timed out or was closed.
            None => true,
            Some(code) => is_transient(code),
        };
        let constraint = error
            .code()
            .is_some_and(|code| code.code().starts_with("23"));
        if let Some(db) = error.as_db_error()
            && matches!(&db.code().code()[..2], "22" | "54")
        {
            return Self::BadData(db.message().to_owned());
        }
        let misconfigured = error.code().is_some_and(|code| {
            matches!(&code.code()[..2], "28" | "3D" | "3F") || code.code() == "42501"
        });
        let cause = Arc::new(Described::of(error));
        if misconfigured {
            Self::Misconfigured(cause)
        } else if transient {
            Self::Unavailable(cause)
        } else if constraint {
            Self::Conflict(cause)
        } else {
            Self::Query(cause)
        }
    }
}

/// A PostgreSQL error with its own words: the server's message, detail and hint for a database
/// error (tokio-postgres's `Display` says only "db error"), or the chain of causes for a
/// connection error (e.g. "error connecting to server: Connection refused"). The original stays
/// the source.
#[derive(Debug)]
pub(super) struct Described {
    text: String,
    error: tokio_postgres::Error,
}

impl Described {
    pub(super) fn of(error: tokio_postgres::Error) -> Self {
        let text = match error.as_db_error() {
            Some(db) => {
                let mut text = format!("PostgreSQL said: {} ({})", db.message(), db.code().code());
                if let Some(detail) = db.detail() {
                    text.push_str("; ");
                    text.push_str(detail);
                }
                if let Some(hint) = db.hint() {
                    text.push_str("; hint: ");
                    text.push_str(hint);
                }
                text
            }
            None => {
                let mut text = error.to_string();
                let mut source = std::error::Error::source(&error);
                while let Some(cause) = source {
                    let cause_text = cause.to_string();
                    if !text.contains(&cause_text) {
                        text.push_str(": ");
                        text.push_str(&cause_text);
                    }
                    source = cause.source();
                }
                text
            }
        };
        let text = match warren_shared::tls::explain(&text, "WARREN_DATABASE_URL") {
            Some(why) => format!("{why} ({text})"),
            None => text,
        };
        Self { text, error }
    }
}

impl std::fmt::Display for Described {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for Described {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// SQLSTATE classes that say "not now" rather than "never": connection exceptions (08),
/// insufficient resources (53), operator intervention such as a shutdown (57), system errors
/// (58), and transaction rollbacks such as serialisation failures and deadlocks (40).
fn is_transient(code: &SqlState) -> bool {
    matches!(&code.code()[..2], "08" | "40" | "53" | "57" | "58")
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        match error {
            deadpool_postgres::PoolError::Backend(error) => error.into(),
            other => Self::Unavailable(Arc::new(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_and_resource_classes_are_transient_and_query_bugs_are_not() {
        for code in [
            SqlState::CONNECTION_FAILURE,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::TOO_MANY_CONNECTIONS,
        ] {
            assert!(is_transient(&code), "{code:?}");
        }
        for code in [
            SqlState::UNDEFINED_COLUMN,
            SqlState::SYNTAX_ERROR,
            SqlState::UNIQUE_VIOLATION,
        ] {
            assert!(!is_transient(&code), "{code:?}");
        }
    }
}
