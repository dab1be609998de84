//! `walwatch slots`: the server's replication slots and the WAL each holds back, walwatch's
//! publications and whether anything still uses them; `walwatch slots drop NAME` and
//! `walwatch slots prune`. A forgotten slot keeps WAL on the server's disk for ever and a
//! forgotten publication keeps a table's statements publishing, so this is what an operator
//! reaches for when disk usage grows or a test suite has killed many recorders.

use anyhow::Context;

use walwatch::cli::{SlotsAction, SlotsArgs, SlotsFormat};
use walwatch::pg::catalog::{self, SlotRow};
use walwatch::pg::publication::{self, Listed};

use crate::harness::{Verdict, connect};

pub async fn run(args: &SlotsArgs) -> anyhow::Result<Verdict> {
    let client = connect(args.dsn.as_deref()).await?;
    match &args.action {
        None => {
            let slots = catalog::list_slots(&client)
                .await
                .context("cannot list replication slots")?;
            let publications = publication::list(&client)
                .await
                .context("cannot list walwatch's publications")?;
            let out = match args.format {
                SlotsFormat::Json => {
                    let all = serde_json::json!({"slots": slots, "publications": publications});
                    serde_json::to_string_pretty(&all)? + "\n"
                }
                SlotsFormat::Table => table(&slots) + &publication_table(&publications),
            };
            use std::io::Write as _;
            let mut stdout = std::io::stdout().lock();
            match stdout.write_all(out.as_bytes()) {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                other => other?,
            }
        }
        Some(SlotsAction::Drop { name, force }) => {
            catalog::drop_slot(&client, name, *force).await?;
            tracing::info!("dropped replication slot {name}");
            // The publications walwatch made for a --slot run served only it.
            let main = publication::main_name(name);
            for p in [publication::companion_name(&main), main] {
                match catalog::drop_publication(&client, &p).await {
                    Ok(()) => tracing::info!("dropped publication {p} (if it existed)"),
                    Err(e) => tracing::warn!("could not drop publication {p}: {e}"),
                }
            }
        }
        Some(SlotsAction::Prune) => {
            let dropped = publication::prune(&client)
                .await
                .context("cannot look for orphaned walwatch publications")?;
            if dropped.is_empty() {
                tracing::info!("no orphaned walwatch publication");
            }
            for name in dropped {
                tracing::info!("dropped orphaned publication {name}");
            }
        }
    }
    Ok(Verdict::Done)
}

/// Bytes as a person reads them.
fn size(bytes: Option<i64>) -> String {
    let Some(b) = bytes else {
        return "-".into();
    };
    let b = b.max(0) as f64;
    match b {
        b if b >= (1u64 << 30) as f64 => format!("{:.1} GB", b / (1u64 << 30) as f64),
        b if b >= (1u64 << 20) as f64 => format!("{:.1} MB", b / (1u64 << 20) as f64),
        b if b >= 1024.0 => format!("{:.1} kB", b / 1024.0),
        b => format!("{b} B"),
    }
}

fn table(slots: &[SlotRow]) -> String {
    let header = [
        "SLOT",
        "TYPE",
        "DATABASE",
        "ACTIVE PID",
        "CONFIRMED",
        "RETAINED",
        "LAG",
        "WAL STATUS",
    ];
    let rows: Vec<[String; 8]> = slots
        .iter()
        .map(|s| {
            let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
            [
                s.name.clone() + if s.temporary { " (temp)" } else { "" },
                match &s.plugin {
                    Some(p) => format!("{} {p}", s.kind),
                    None => s.kind.clone(),
                },
                opt(s.database.clone()),
                opt(s.active_pid.map(|p| p.to_string())),
                opt(s.confirmed_flush_lsn.map(|l| l.to_string())),
                size(s.retained_bytes),
                size(s.lag_bytes),
                opt(s.wal_status.clone()),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "no replication slots\n".into();
    }
    columns(&header, &rows)
}

/// walwatch's publications, after the slots: which slot each serves, and whether anything
/// will use it again.
fn publication_table(publications: &[Listed]) -> String {
    if publications.is_empty() {
        return String::new();
    }
    let rows: Vec<[String; 3]> = publications
        .iter()
        .map(|p| {
            let status = if p.orphan {
                "orphan: its run is gone (walwatch slots prune drops it)".to_string()
            } else if p.slot_exists {
                "in use".to_string()
            } else if p.temporary {
                "its run is starting or stopping".to_string()
            } else {
                format!("slot gone (walwatch slots drop {} drops it)", p.slot)
            };
            let slot = p.slot.clone() + if p.temporary { " (temp)" } else { "" };
            [p.name.clone(), slot, status]
        })
        .collect();
    "\n".to_string() + &columns(&["PUBLICATION", "SLOT", "STATUS"], &rows)
}

/// Left-aligned columns, two spaces apart, under a header.
fn columns<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(header);
    for r in rows {
        line(&r.each_ref().map(String::as_str));
    }
    out
}
