//! `walwatch slots`: the server's replication slots and the WAL each holds back, and
//! `walwatch slots drop NAME`. A forgotten slot keeps WAL on the server's disk for ever, so this
//! is what an operator reaches for when disk usage grows.

use anyhow::Context;

use walwatch::cli::{SlotsAction, SlotsArgs, SlotsFormat};
use walwatch::pg::catalog::{self, SlotRow};

use crate::harness::{Verdict, connect};

pub async fn run(args: &SlotsArgs) -> anyhow::Result<Verdict> {
    match &args.action {
        None => {
            let client = connect(args.dsn.as_deref()).await?;
            let slots = catalog::list_slots(&client)
                .await
                .context("cannot list replication slots")?;
            let out = match args.format {
                SlotsFormat::Json => serde_json::to_string_pretty(&slots)? + "\n",
                SlotsFormat::Table => table(&slots),
            };
            use std::io::Write as _;
            let mut stdout = std::io::stdout().lock();
            match stdout.write_all(out.as_bytes()) {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                other => other?,
            }
        }
        Some(SlotsAction::Drop { name, force }) => {
            let client = connect(args.dsn.as_deref()).await?;
            catalog::drop_slot(&client, name, *force).await?;
            tracing::info!("dropped replication slot {name}");
            // The publication walwatch made for a --slot run (`walwatch_NAME`) served only it.
            let publication = format!("walwatch_{name}");
            match catalog::drop_publication(&client, &publication).await {
                Ok(()) => tracing::info!("dropped publication {publication} (if it existed)"),
                Err(e) => tracing::warn!("could not drop publication {publication}: {e}"),
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
    let mut widths = header.map(str::len);
    for r in &rows {
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
    line(&header);
    for r in &rows {
        line(&r.each_ref().map(String::as_str));
    }
    out
}
