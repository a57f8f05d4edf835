//! What the connection path's leaves share: why reaching or querying a customer's MySQL failed,
//! sorted by what to do about it, and the one wording for an endpoint that cannot be reached.

/// Why connecting or querying failed, sorted by what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MysqlFailure {
    /// Worth another attempt (network, timeouts, too many connections).
    Transient(String),
    /// Needs the operator (credentials, privileges, configuration).
    Permanent(String),
}

/// Why a customer's endpoint could not be reached, in one wording whatever happened (refused,
/// silent, reset, or not speaking the protocol), so the messages do not make the agent a port
/// scanner; what happened goes to the log.
pub const UNREACHABLE: &str =
    "it refused the connection, did not answer in time, or did not speak the expected protocol";

/// What to say of an endpoint that could not be reached; `detail` is logged, not shown.
pub fn unreachable(what: &str, detail: &dyn std::fmt::Display) -> String {
    tracing::info!(%detail, "{what} unreachable");
    format!("cannot reach {what}: {UNREACHABLE}")
}
