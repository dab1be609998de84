//! Errors of the replication connection, grouped by what the user can do about them.
//!
//! Every server error (`ErrorResponse`) is kept whole ([`ServerError`]: severity, SQLSTATE, message,
//! detail, hint) and, for the failures users actually hit, carries advice saying what to change.
//! No message built here ever contains the password: the only connection facts it uses come from
//! [`ErrorContext`], which has no password field.

use std::fmt;
use std::io;
use std::time::Duration;

use super::params::ParamsError;

/// What the connection was opened with, for error messages. Deliberately has no password.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ErrorContext {
    /// `HOST:PORT`, or the unix socket path.
    pub target: String,
    pub user: String,
    pub dbname: String,
    /// The slot the failing command was about, when known.
    pub slot: Option<String>,
}

/// An `ErrorResponse` (or a FATAL during startup) from the server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerError {
    /// `ERROR`, `FATAL`, `PANIC` (the non-localized `V` field when sent, else `S`).
    pub severity: String,
    /// The SQLSTATE, e.g. `55000`.
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    /// What to do about it, in walwatch's terms (None when we have nothing better than the server).
    pub advice: Option<String>,
}

impl ServerError {
    /// Parses the body of an ErrorResponse / NoticeResponse ("Error and Notice Message Fields":
    /// a list of `Byte1 type, String value`, ended by a zero byte; `S`/`V` severity, `C` code,
    /// `M` message, `D` detail, `H` hint).
    pub fn parse(body: &[u8], ctx: &ErrorContext) -> Result<ServerError, PgError> {
        let mut e = ServerError::default();
        let mut localized_severity = None;
        let mut rest = body;
        loop {
            let (&ty, tail) = rest
                .split_first()
                .ok_or_else(|| PgError::protocol("error/notice fields are not terminated"))?;
            if ty == 0 {
                break;
            }
            let nul = tail
                .iter()
                .position(|&b| b == 0)
                .ok_or_else(|| PgError::protocol("error/notice field value is not terminated"))?;
            let value = String::from_utf8_lossy(&tail[..nul]).into_owned();
            rest = &tail[nul + 1..];
            match ty {
                b'S' => localized_severity = Some(value),
                b'V' => e.severity = value,
                b'C' => e.code = value,
                b'M' => e.message = value,
                b'D' => e.detail = Some(value),
                b'H' => e.hint = Some(value),
                _ => {}
            }
        }
        if e.severity.is_empty() {
            e.severity = localized_severity.unwrap_or_else(|| "ERROR".to_string());
        }
        e.advice = advice(&e.code, &e.message, ctx);
        Ok(e)
    }

    /// Builds an error from its parts (tests, and errors synthesized from server text).
    pub fn new(severity: &str, code: &str, message: &str, ctx: &ErrorContext) -> ServerError {
        ServerError {
            severity: severity.to_string(),
            code: code.to_string(),
            message: message.to_string(),
            detail: None,
            hint: None,
            advice: advice(code, message, ctx),
        }
    }

    /// True when retrying later may succeed: the server is shutting down / restarting
    /// (57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now).
    pub fn is_transient(&self) -> bool {
        matches!(self.code.as_str(), "57P01" | "57P02" | "57P03")
    }
}

impl fmt::Display for ServerError {
    /// One line, because the CLI prints errors as one line: what the server said, what to do,
    /// then the server's own detail and hint.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(a) = &self.advice {
            write!(f, ": {a}")?;
        }
        write!(f, " (server {} {}", self.severity, self.code)?;
        if let Some(d) = &self.detail {
            write!(f, "; detail: {}", d.replace('\n', " "))?;
        }
        if let Some(h) = &self.hint {
            write!(f, "; hint: {}", h.replace('\n', " "))?;
        }
        f.write_str(")")
    }
}

/// Maps a server error to advice. Matches on SQLSTATE first, then on the (English) message text,
/// since some codes are shared by unrelated failures. Both the PostgreSQL 15 wording and the
/// 16+ wording (quoted GUC names, "permission denied to start WAL sender") are recognized.
fn advice(code: &str, message: &str, ctx: &ErrorContext) -> Option<String> {
    let user = if ctx.user.is_empty() {
        "<user>"
    } else {
        ctx.user.as_str()
    };
    let db = if ctx.dbname.is_empty() {
        "<database>"
    } else {
        ctx.dbname.as_str()
    };
    let slot_from_msg = quoted(message);
    let slot = slot_from_msg
        .or(ctx.slot.as_deref())
        .unwrap_or("<slot>")
        .to_string();
    let m = message.to_ascii_lowercase();
    let a = match code {
        "55000" if m.contains("wal_level") => "logical decoding is off on this server: set \
             `wal_level = logical` in postgresql.conf (or run `ALTER SYSTEM SET wal_level = logical`) \
             and restart the server"
            .to_string(),
        "42501" | "28000"
            if m.contains("replication role")
                || m.contains("start wal sender")
                || m.contains("start walsender") =>
        {
            format!(
                "role \"{user}\" may not open a replication connection: run `ALTER ROLE \"{user}\" \
                 REPLICATION;` as a superuser"
            )
        }
        "28000" if m.contains("no pg_hba.conf entry") || m.contains("pg_hba.conf rejects") => {
            format!(
                "the server's pg_hba.conf does not admit this connection: add a line such as \
                 `host {db} {user} <client-address>/32 scram-sha-256` (logical replication matches \
                 the database column, not the `replication` keyword) and reload the server \
                 (`SELECT pg_reload_conf()`)"
            )
        }
        "55006" if m.contains("replication slot") => format!(
            "another consumer holds replication slot \"{slot}\": stop it, or use another --slot"
        ),
        "53400" if m.contains("replication slots") => "every replication slot is taken: raise \
             `max_replication_slots` in postgresql.conf (restart needed), or drop unused slots \
             (list them with `walwatch slots`)"
            .to_string(),
        "53300" if m.contains("max_wal_senders") => "too many replication connections: raise \
             `max_wal_senders` in postgresql.conf (restart needed) or stop another consumer"
            .to_string(),
        "3D000" => format!(
            "database \"{}\" does not exist on {}: name an existing database in --dsn \
             (postgres://user@host/DBNAME) or PGDATABASE",
            quoted(message).unwrap_or(db),
            ctx.target
        ),
        "28P01" => format!(
            "the server rejected the password for role \"{user}\": check the password given in \
             --dsn / PGPASSWORD, or the matching ~/.pgpass line"
        ),
        "42704" if m.contains("replication slot") => format!(
            "replication slot \"{slot}\" does not exist in database \"{db}\": pass `--slot {slot}` \
             to have walwatch create it, or check the slot name (`walwatch slots`)"
        ),
        "57P01" | "57P02" | "57P03" => {
            "the server is shutting down or starting up: walwatch can retry once it is back".to_string()
        }
        _ => return None,
    };
    Some(a)
}

/// The first double-quoted name in a server message (`replication slot "x" is active`).
fn quoted(message: &str) -> Option<&str> {
    let start = message.find('"')? + 1;
    let len = message[start..].find('"')?;
    Some(&message[start..start + len])
}

/// Errors of the replication connection.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The connection parameters are unusable (bad DSN, unreadable settings). Fix the input.
    #[error(transparent)]
    Params(#[from] ParamsError),

    /// Could not open the socket. Usually transient (server down or restarting).
    #[error(
        "cannot connect to {target}: {source}. Is the server running on {target} and accepting \
         {}?", if target.starts_with('/') {
            "connections on that unix socket (unix_socket_directories, port)"
        } else {
            "TCP connections (listen_addresses, port, firewall)"
        }
    )]
    Connect { target: String, source: io::Error },

    /// The socket did not open (or the server did not answer the startup) in time.
    #[error(
        "connecting to {target} timed out after {}s. Is the server running on {target} and \
         accepting TCP connections (listen_addresses, port, firewall)?",
        timeout.as_secs()
    )]
    ConnectTimeout { target: String, timeout: Duration },

    /// The connection broke while in use. Transient: reconnect and resume from the slot.
    #[error("connection to the server lost: {0}")]
    Io(#[from] io::Error),

    /// Authentication could not proceed on our side (no password, unsupported method).
    #[error("authentication failed: {0}")]
    Auth(String),

    /// The server reported an error; carries the server's text and our advice.
    #[error("{0}")]
    Server(Box<ServerError>),

    /// The server sent something we cannot make sense of. A bug or an incompatible server.
    #[error("replication protocol error: {0}")]
    Protocol(String),

    /// TLS could not be set up as `sslmode` asks (no TLS on the server, a certificate that
    /// does not verify, unreadable certificate files): the message says which.
    #[error("TLS: {0}")]
    Tls(String),
}

impl PgError {
    /// True when trying again later may succeed without changing anything: I/O errors, a lost
    /// connection, refused/timed-out connects, and the server shutting down or starting up
    /// (57P01, 57P02, 57P03). False for errors that need a change (config, permission, input).
    pub fn is_transient(&self) -> bool {
        match self {
            PgError::Io(_) | PgError::Connect { .. } | PgError::ConnectTimeout { .. } => true,
            PgError::Server(e) => e.is_transient(),
            PgError::Params(_) | PgError::Auth(_) | PgError::Protocol(_) | PgError::Tls(_) => false,
        }
    }

    /// The SQLSTATE when this is a server error.
    pub fn code(&self) -> Option<&str> {
        match self {
            PgError::Server(e) => Some(&e.code),
            _ => None,
        }
    }

    /// The server error, if any.
    pub fn server_error(&self) -> Option<&ServerError> {
        match self {
            PgError::Server(e) => Some(e),
            _ => None,
        }
    }

    pub(crate) fn protocol(msg: impl Into<String>) -> PgError {
        PgError::Protocol(msg.into())
    }
}

impl From<ServerError> for PgError {
    fn from(e: ServerError) -> Self {
        PgError::Server(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> ErrorContext {
        ErrorContext {
            target: "db.example:5432".into(),
            user: "alice".into(),
            dbname: "shop".into(),
            slot: Some("walwatch".into()),
        }
    }

    fn err(code: &str, msg: &str) -> PgError {
        ServerError::new("ERROR", code, msg, &ctx()).into()
    }

    #[test]
    fn wal_level_both_wordings() {
        for msg in [
            "logical decoding requires wal_level >= logical",
            "logical decoding requires \"wal_level\" >= \"logical\"",
        ] {
            let s = err("55000", msg).to_string();
            assert!(s.contains("wal_level = logical"), "{s}");
            assert!(s.contains("ALTER SYSTEM SET wal_level = logical"), "{s}");
            assert!(s.contains("restart the server"), "{s}");
            assert!(s.contains(msg), "server text kept: {s}");
            assert!(!err("55000", msg).is_transient());
        }
    }

    #[test]
    fn missing_replication_attribute() {
        for (code, msg) in [
            (
                "42501",
                "must be superuser or replication role to start walsender",
            ),
            ("42501", "permission denied to start WAL sender"),
            (
                "28000",
                "must be superuser or replication role to start walsender",
            ),
        ] {
            let s = err(code, msg).to_string();
            assert!(s.contains("ALTER ROLE \"alice\" REPLICATION"), "{s}");
        }
    }

    #[test]
    fn pg_hba_rejects() {
        for msg in [
            "no pg_hba.conf entry for replication connection from host \"10.0.0.1\", user \"alice\", no encryption",
            "no pg_hba.conf entry for host \"10.0.0.1\", user \"alice\", database \"shop\", no encryption",
            "pg_hba.conf rejects connection for host \"10.0.0.1\", user \"alice\", database \"shop\", no encryption",
        ] {
            let s = err("28000", msg).to_string();
            assert!(s.contains("pg_hba.conf"), "{s}");
            assert!(s.contains("host shop alice"), "{s}");
        }
    }

    #[test]
    fn slot_in_use() {
        let s = err(
            "55006",
            "replication slot \"orders_cdc\" is active for PID 4242",
        )
        .to_string();
        assert!(
            s.contains("another consumer holds replication slot \"orders_cdc\""),
            "{s}"
        );
        assert!(s.contains("another --slot"), "{s}");
    }

    #[test]
    fn too_many_slots() {
        let s = err("53400", "all replication slots are in use").to_string();
        assert!(s.contains("max_replication_slots"), "{s}");
        assert!(s.contains("walwatch slots"), "{s}");
    }

    #[test]
    fn database_missing() {
        let s = err("3D000", "database \"shopp\" does not exist").to_string();
        assert!(
            s.contains("database \"shopp\" does not exist on db.example:5432"),
            "{s}"
        );
        assert!(s.contains("--dsn"), "{s}");
    }

    #[test]
    fn bad_password() {
        let e = err("28P01", "password authentication failed for user \"alice\"");
        let s = e.to_string();
        assert!(s.contains("check the password"), "{s}");
        assert!(s.contains("~/.pgpass"), "{s}");
        assert!(!e.is_transient());
    }

    #[test]
    fn slot_missing() {
        let s = err("42704", "replication slot \"nope\" does not exist").to_string();
        assert!(s.contains("--slot nope"), "{s}");
        assert!(s.contains("check the slot name"), "{s}");
    }

    #[test]
    fn connect_refused_and_timeout() {
        let e = PgError::Connect {
            target: "db.example:5432".into(),
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        };
        let s = e.to_string();
        assert!(
            s.contains("Is the server running on db.example:5432 and accepting TCP connections"),
            "{s}"
        );
        assert!(e.is_transient());
        let e = PgError::ConnectTimeout {
            target: "db.example:5432".into(),
            timeout: Duration::from_secs(3),
        };
        assert!(e.to_string().contains("timed out after 3s"));
        assert!(e.is_transient());
    }

    #[test]
    fn parses_error_fields() {
        let body = b"SERROR\0VERROR\0C55006\0Mreplication slot \"s1\" is active for PID 7\0Dsome detail\0Hsome hint\0\0";
        let e = ServerError::parse(body, &ctx()).unwrap();
        assert_eq!(e.severity, "ERROR");
        assert_eq!(e.code, "55006");
        assert_eq!(e.detail.as_deref(), Some("some detail"));
        assert_eq!(e.hint.as_deref(), Some("some hint"));
        assert!(e.advice.unwrap().contains("\"s1\""));
        // Truncated bodies are protocol errors, not panics.
        for cut in [0, 1, 5, body.len() - 1] {
            assert!(matches!(
                ServerError::parse(&body[..cut], &ctx()),
                Err(PgError::Protocol(_))
            ));
        }
    }

    #[test]
    fn transient_classification() {
        assert!(
            err(
                "57P01",
                "terminating connection due to administrator command"
            )
            .is_transient()
        );
        assert!(
            err(
                "57P02",
                "terminating connection because of crash of another server process"
            )
            .is_transient()
        );
        assert!(err("57P03", "the database system is starting up").is_transient());
        assert!(PgError::Io(io::Error::from(io::ErrorKind::UnexpectedEof)).is_transient());
        assert!(!err("42601", "syntax error").is_transient());
        assert!(!PgError::Protocol("x".into()).is_transient());
        assert!(!PgError::Auth("x".into()).is_transient());
        // Unknown errors carry no advice but keep the server's text.
        let s = err("42601", "syntax error at or near \"x\"").to_string();
        assert!(!s.contains("what to do"));
        assert!(s.contains("42601"), "{s}");
    }
}
