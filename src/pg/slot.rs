//! Replication slots and the START_REPLICATION options, on the replication connection.

use crate::error::{Error, Result};
use crate::event::Lsn;
use crate::pg::conn::ReplConn;
use crate::pg::quote::{quote_ident, quote_literal};

/// The highest pgoutput `proto_version` a server supports (PostgreSQL docs, 55.5 "Logical
/// Streaming Replication Parameters"): 1 from PostgreSQL 10, 2 (streaming of in-progress
/// transactions) from 14, 3 (two-phase) from 15, 4 (parallel streaming) from 16.
pub fn proto_version(server_version_num: u32) -> u32 {
    match server_version_num {
        v if v >= 160_000 => 4,
        v if v >= 150_000 => 3,
        v if v >= 140_000 => 2,
        _ => 1,
    }
}

/// The START_REPLICATION options for pgoutput: the negotiated protocol, the publication, and,
/// where the server supports them (14+), logical messages and streaming of large in-progress
/// transactions, so a transaction of millions of rows need not sit in server or client memory.
pub fn start_options(server_version_num: u32, publications: &[String]) -> Vec<(String, String)> {
    let proto = proto_version(server_version_num);
    // publication_names is a comma-separated list of identifiers: quote ours.
    let names: Vec<String> = publications.iter().map(|p| quote_ident(p)).collect();
    let mut opts = vec![
        ("proto_version".to_string(), proto.to_string()),
        ("publication_names".to_string(), names.join(",")),
    ];
    if server_version_num >= 140_000 {
        opts.push(("messages".to_string(), "true".to_string()));
    }
    if proto >= 2 {
        opts.push(("streaming".to_string(), "on".to_string()));
    }
    opts
}

/// A slot just created: its consistent point, and the name of the snapshot it exported when
/// asked to (valid until the replication connection runs its next command).
pub struct Created {
    pub point: Lsn,
    pub snapshot: Option<String>,
}

/// Creates a logical slot for pgoutput and returns its consistent point, and with `export`
/// the snapshot it exports: the database as of that point, for `--snapshot` to read.
///
/// The server waits here until every transaction that has already written finishes (it needs
/// a consistent snapshot point); the caller warns about that wait.
pub async fn create_slot(
    conn: &mut ReplConn,
    name: &str,
    temporary: bool,
    server_version_num: u32,
    export: bool,
) -> Result<Created> {
    let temp = if temporary { " TEMPORARY" } else { "" };
    // PostgreSQL 15 introduced the parenthesised option list; older servers take the bare
    // EXPORT_SNAPSHOT / NOEXPORT_SNAPSHOT keywords (docs, 55.4 "Streaming Replication
    // Protocol").
    let snapshot = match (server_version_num >= 150_000, export) {
        (true, true) => format!("(SNAPSHOT {})", quote_literal("export")),
        (true, false) => format!("(SNAPSHOT {})", quote_literal("nothing")),
        (false, true) => "EXPORT_SNAPSHOT".to_string(),
        (false, false) => "NOEXPORT_SNAPSHOT".to_string(),
    };
    let sql = format!(
        "CREATE_REPLICATION_SLOT {}{temp} LOGICAL pgoutput {snapshot}",
        quote_ident(name)
    );
    let rows = conn.simple_query(&sql).await?;
    // Result columns: slot_name, consistent_point, snapshot_name, output_plugin.
    let point = rows
        .first()
        .and_then(|r| r.get(1))
        .and_then(|v| v.as_deref())
        .ok_or_else(|| {
            Error::Setup("CREATE_REPLICATION_SLOT returned no consistent point".to_string())
        })?;
    let point = point
        .parse()
        .map_err(|e| Error::Setup(format!("CREATE_REPLICATION_SLOT returned a bad LSN: {e}")))?;
    let snapshot = rows
        .first()
        .and_then(|r| r.get(2))
        .and_then(|v| v.clone())
        .filter(|_| export);
    if export && snapshot.is_none() {
        return Err(Error::Setup(
            "CREATE_REPLICATION_SLOT exported no snapshot".to_string(),
        ));
    }
    Ok(Created { point, snapshot })
}

/// A fresh name for a temporary slot or publication: `walwatch_<pid>_<nanos>`, unique on this
/// host and within the 63-byte identifier limit.
pub fn fresh_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("walwatch_{}_{:x}", std::process::id(), nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_the_highest_protocol() {
        assert_eq!(proto_version(100_000), 1);
        assert_eq!(proto_version(140_005), 2);
        assert_eq!(proto_version(150_020), 3);
        assert_eq!(proto_version(170_000), 4);
    }

    #[test]
    fn options_follow_the_server_version() {
        let v15 = start_options(150_020, &["p".to_string()]);
        assert!(v15.contains(&("proto_version".into(), "3".into())));
        assert!(v15.contains(&("streaming".into(), "on".into())));
        assert!(v15.contains(&("messages".into(), "true".into())));
        assert!(v15.contains(&("publication_names".into(), "\"p\"".into())));
        let v13 = start_options(130_000, &["p".to_string(), "q r".to_string()]);
        assert!(v13.contains(&("publication_names".into(), "\"p\",\"q r\"".into())));
        assert_eq!(v13.len(), 2);
    }

    #[test]
    fn fresh_names_are_valid_slot_names() {
        let n = fresh_name();
        crate::config::validate_slot_name(&n).unwrap();
    }
}
