//! What a PostgreSQL error means for the rows and the run, read from its SQLSTATE: the sink
//! classifies its own errors, and the fate policy (`error::fate`) decides what each class does.

use tokio_postgres::error::SqlState;

/// The class of a PostgreSQL error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The table refused a row for reasons of its own, a data reason: data exceptions (22:
    /// value out of range, bad encoding; but not 22P03, a type that reads another binary
    /// form), integrity constraints (23: NOT NULL, CHECK, no partition for the row, foreign
    /// key, unique), triggered data change (27), WITH CHECK OPTION (44), errors raised by
    /// trigger code (P0, 39).
    RowRefused,
    /// Waiting for a lock: someone else holds the table or a row (another replica loading the
    /// same message), which says nothing about the rows.
    LockWait,
    /// Connection trouble, restarts, serialization failures, resource shortages, cancelled
    /// queries; and, without a SQLSTATE, any failure on the way to the server but TLS.
    Transient,
    /// Anything else (authentication, missing objects or columns, privileges, a column type
    /// that cannot read the rows' binary form), and a TLS failure (untrusted certificate,
    /// wrong host name): a structural refusal, an operator must change something.
    Permanent,
}

/// The class of `err`.
pub fn classify(err: &tokio_postgres::Error) -> ErrorClass {
    let Some(state) = err.code() else {
        return if crate::tls::is_tls_failure(err) {
            ErrorClass::Permanent
        } else {
            ErrorClass::Transient
        };
    };
    let code = state.code();
    // A value whose binary form the column's type cannot read: the table's type differs from
    // what the kind encodes (`check` names it). Structural, however few rows there are.
    if *state == SqlState::INVALID_BINARY_REPRESENTATION {
        return ErrorClass::Permanent;
    }
    if ["22", "23", "27", "44", "P0", "39"]
        .iter()
        .any(|class| code.starts_with(class))
    {
        return ErrorClass::RowRefused;
    }
    if *state == SqlState::LOCK_NOT_AVAILABLE {
        return ErrorClass::LockWait;
    }
    let transient = code.starts_with("08") // connection exception
        || code.starts_with("53") // insufficient resources
        || code.starts_with("57P") // admin shutdown, crash shutdown, cannot connect now
        || *state == SqlState::T_R_SERIALIZATION_FAILURE
        || *state == SqlState::T_R_DEADLOCK_DETECTED
        || *state == SqlState::QUERY_CANCELED;
    if transient {
        ErrorClass::Transient
    } else {
        ErrorClass::Permanent
    }
}
