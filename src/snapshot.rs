//! `walwatch snapshot --slot S --tables t`: asks the walwatch streaming slot S to read the
//! rows t holds now, while it streams (`walwatch::snapshot_request`); with `--wait`, follows
//! the request in the slot's record until every table is durable in that walwatch's outputs.

use std::time::{Duration, Instant};

use anyhow::Context;

use walwatch::cli::{SnapshotArgs, duration_arg};
use walwatch::config::parse_tables;
use walwatch::pg::catalog;
use walwatch::pg::publication::TableBackfill;
use walwatch::snapshot_request;

use crate::harness::{Verdict, connect};

/// How often `--wait` reads the record (a catalog read: cheap).
const POLL: Duration = Duration::from_millis(200);

pub async fn run(args: &SnapshotArgs) -> anyhow::Result<Verdict> {
    let patterns = parse_tables(&args.tables)?;
    let timeout = args
        .timeout
        .as_deref()
        .map(|t| duration_arg("--timeout", t))
        .transpose()?;
    let client = connect(args.dsn.as_deref()).await?;
    let info = catalog::check_server(&client).await?;
    let tables = catalog::resolve_tables(&client, &patterns, &info.search_path).await?;
    let sent = snapshot_request::send(&client, &args.slot, &tables).await?;
    println!("{}", sent.lsn);
    let names: Vec<String> = tables.iter().map(|(s, t)| format!("{s}.{t}")).collect();
    tracing::info!(
        "asked slot {} for a snapshot of {} (request {})",
        args.slot,
        names.join(", "),
        sent.id
    );
    if !sent.active {
        tracing::warn!(
            "no walwatch streams slot {} now: the request waits in the slot, and the next \
             walwatch on it reads the tables",
            args.slot
        );
    }
    if !sent.recorded {
        tracing::warn!(
            "slot {} has no walwatch publication (its walwatch runs with --publication, or \
             the slot is temporary): nothing keeps the request if that walwatch stops before \
             the tables are read",
            args.slot
        );
    }
    if !args.wait {
        return Ok(Verdict::Done);
    }
    if !sent.recorded {
        anyhow::bail!(
            "--wait: slot {} has no walwatch publication to follow the request in (its \
             walwatch runs with --publication); the request was sent and is read all the same",
            args.slot
        );
    }
    wait(&client, args, &sent, timeout).await
}

/// Follows request `id` until its tables are done.
async fn wait(
    client: &tokio_postgres::Client,
    args: &SnapshotArgs,
    sent: &snapshot_request::Sent,
    timeout: Option<Duration>,
) -> anyhow::Result<Verdict> {
    let start = Instant::now();
    let mut said = String::new();
    loop {
        let progress = snapshot_request::progress(client, &args.slot, sent)
            .await
            .context("following the request")?;
        if progress.as_ref().is_some_and(Vec::is_empty) {
            anyhow::bail!(
                "the walwatch on slot {} took the request, but streams none of its tables \
                 (see its log)",
                args.slot
            );
        }
        if let Some(tables) = &progress {
            let line = describe(tables);
            if line != said {
                tracing::info!("{line}");
                said = line;
            }
            if tables.iter().all(|t| t.done) {
                return finished(tables);
            }
        }
        if let Some(limit) = timeout
            && start.elapsed() >= limit
        {
            anyhow::bail!(
                "the snapshot request was not done within {}: {}; the walwatch on slot {} goes \
                 on with it",
                walwatch::assert::human(limit),
                if progress.is_some() {
                    "it is being read"
                } else {
                    "no walwatch has taken it yet"
                },
                args.slot
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

fn describe(tables: &[TableBackfill]) -> String {
    let parts: Vec<String> = tables
        .iter()
        .map(|t| {
            let state = match (&t.failed, t.done) {
                (Some(_), _) => "failed".to_string(),
                (None, true) => format!("{} rows, done", t.rows),
                (None, false) => format!("{} rows", t.rows),
            };
            format!("{}.{}: {state}", t.schema, t.table)
        })
        .collect();
    parts.join("; ")
}

fn finished(tables: &[TableBackfill]) -> anyhow::Result<Verdict> {
    let failed: Vec<String> = tables
        .iter()
        .filter_map(|t| {
            t.failed
                .as_ref()
                .map(|why| format!("{}.{}: {why}", t.schema, t.table))
        })
        .collect();
    if !failed.is_empty() {
        anyhow::bail!("the snapshot left out {}", failed.join("; "));
    }
    Ok(Verdict::Done)
}
