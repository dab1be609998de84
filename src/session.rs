//! One capture session: connect, check the server, set up the publication and the slot, stream
//! until told to stop, and clean up what this run created.
//!
//! Order matters (ARCHITECTURE.md, "Protocol facts"): the publication is created before the
//! slot, because pgoutput reads publications with the snapshot of the WAL it decodes, and a
//! publication created after the slot's start point would not be visible to it.

use std::future::Future;
use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use crate::config::{Config, EndPos, SinkSpec, SlotMode};
use crate::decode::Decoder;
use crate::error::{Error, Result};
use crate::event::Lsn;
use crate::event_read::Envelope;
use crate::filter::Filter;
use crate::pg::catalog::{self, ServerInfo};
use crate::pg::conn::ReplConn;
use crate::pg::slot;
use crate::pipeline::{self, StopReason, StreamSetup};
use crate::sink::{JsonlSink, Sink, TerminalSink};

pub use crate::pipeline::StreamOutcome;

/// How long slot creation may wait on open transactions before walwatch says why.
const SLOT_WAIT_NOTICE: Duration = Duration::from_secs(2);

/// What a session tells its caller once it streams: from here on, every transaction that
/// commits reaches the sinks.
#[derive(Clone, Debug)]
pub struct Started {
    pub slot: String,
    pub publication: String,
    /// The watched tables as `(schema, table)`; `None` for every table.
    pub tables: Option<Vec<(String, String)>>,
    pub database: String,
}

/// What a library caller adds to a session: sinks of its own (the assertion log) and a signal
/// once streaming has started.
#[derive(Default)]
pub struct Hooks {
    pub sinks: Vec<Box<dyn Sink>>,
    pub started: Option<tokio::sync::oneshot::Sender<Started>>,
}

/// What a finished session reports.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub reason: StopReason,
    pub events: u64,
    pub durable: Lsn,
    pub slot: String,
}

/// Opens the metadata connection and spawns its connection task.
pub async fn connect_meta(config: &Config) -> Result<Client> {
    let (client, conn) = config.conn.tokio_postgres_config().connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("metadata connection closed: {e}");
        }
    });
    Ok(client)
}

/// Builds the sinks a config asks for.
pub fn open_sinks(specs: &[SinkSpec], envelope: Envelope) -> Result<Vec<Box<dyn Sink>>> {
    specs
        .iter()
        .map(|spec| -> Result<Box<dyn Sink>> {
            Ok(match spec {
                SinkSpec::Stdout(crate::config::Format::Json) => {
                    Box::new(JsonlSink::stdout(envelope))
                }
                SinkSpec::Stdout(crate::config::Format::Terminal { color }) => {
                    Box::new(TerminalSink::stdout(*color))
                }
                SinkSpec::Jsonl(path) => Box::new(JsonlSink::file(path, envelope)?),
            })
        })
        .collect()
}

/// Runs a whole session. `shutdown` resolving stops it cleanly (CopyDone, cleanup, Ok).
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<Outcome> {
    run_with(config, Hooks::default(), shutdown).await
}

/// [`run`], with sinks of the caller's and a signal once streaming has started.
pub async fn run_with(
    config: Config,
    hooks: Hooks,
    shutdown: impl Future<Output = ()>,
) -> Result<Outcome> {
    // Sinks first: an unwritable output file is reported before anything is created.
    let mut sinks = open_sinks(&config.sinks, config.envelope)?;
    sinks.extend(hooks.sinks);
    let repl = ReplConn::connect(&config.conn).await?;
    let meta = std::sync::Arc::new(connect_meta(&config).await?);
    let info = catalog::check_server(&meta).await?;
    tracing::debug!(
        version = info.version_num,
        database = %info.database,
        user = %info.user,
        "connected"
    );

    let tables = if config.tables.is_empty() {
        None
    } else {
        Some(catalog::resolve_tables(&meta, &config.tables, &info.search_path).await?)
    };
    if let Some(t) = &tables {
        let names: Vec<String> = t.iter().map(|(s, n)| format!("{s}.{n}")).collect();
        tracing::info!("watching {}", names.join(", "));
    }

    // The publication: given, or ours. A permanent slot keeps its publication across runs
    // (decoding old WAL needs it); a temporary one gets a publication dropped on exit.
    let (publication, created_publication) = match (&config.publication, &config.slot) {
        (Some(name), _) => {
            catalog::check_publication(&meta, &info, name, tables.as_deref()).await?;
            (name.clone(), false)
        }
        (None, SlotMode::Permanent(slot_name)) => {
            let name = format!("walwatch_{slot_name}");
            catalog::ensure_publication(&meta, &info, &name, tables.as_deref(), config.ops).await?;
            (name, false)
        }
        (None, SlotMode::Temporary) => {
            let name = slot::fresh_name();
            catalog::ensure_publication(&meta, &info, &name, tables.as_deref(), config.ops).await?;
            (name, true)
        }
    };

    let result = stream_with_publication(
        config,
        repl,
        &meta,
        &info,
        &publication,
        tables,
        sinks,
        hooks.started,
        shutdown,
    )
    .await;

    if created_publication && let Err(e) = catalog::drop_publication(&meta, &publication).await {
        tracing::warn!("could not drop publication {publication}: {e}");
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn stream_with_publication(
    config: Config,
    mut repl: ReplConn,
    meta: &std::sync::Arc<Client>,
    info: &ServerInfo,
    publication: &str,
    tables: Option<Vec<(String, String)>>,
    sinks: Vec<Box<dyn Sink>>,
    started: Option<tokio::sync::oneshot::Sender<Started>>,
    shutdown: impl Future<Output = ()>,
) -> Result<Outcome> {
    let types = catalog::load_types(meta).await?;
    let server_version = repl.server_version_num();

    let (slot_name, start, created) = match &config.slot {
        SlotMode::Temporary => {
            let name = slot::fresh_name();
            let point = create_slot_noisily(&mut repl, meta, &name, true, server_version).await?;
            (name, point, true)
        }
        SlotMode::Permanent(name) => match catalog::slot_info(meta, name).await? {
            Some(existing) => {
                check_existing_slot(name, &existing, info)?;
                // 0/0: resume where the slot was confirmed. Never from IDENTIFY_SYSTEM's
                // position, which would skip whatever the slot still holds.
                (name.clone(), Lsn::ZERO, false)
            }
            None => {
                tracing::info!("creating replication slot {name}");
                let point =
                    create_slot_noisily(&mut repl, meta, name, false, server_version).await?;
                (name.clone(), point, true)
            }
        },
    };

    let endpos = match config.endpos {
        None => None,
        Some(EndPos::At(lsn)) => Some(lsn),
        Some(EndPos::Now) => {
            if created {
                // A slot created by this run with --endpos now: nothing can be before it.
                tracing::info!("slot {slot_name} created at {start}; --endpos now: done");
                return Ok(Outcome {
                    reason: StopReason::EndPos,
                    events: 0,
                    durable: start,
                    slot: slot_name,
                });
            }
            Some(catalog::current_wal_lsn(meta).await?)
        }
    };

    let options = slot::start_options(server_version, publication);
    let mut stream = repl.start_replication(&slot_name, start, &options).await?;
    tracing::info!(
        "streaming from slot {slot_name} (publication {publication}, pgoutput protocol {}){}",
        slot::proto_version(server_version),
        match endpos {
            Some(end) => format!(" until {end}"),
            None => String::new(),
        }
    );
    if let Some(path) = &config.ready_file {
        std::fs::write(path, format!("{slot_name}\n")).map_err(|source| Error::File {
            path: path.clone(),
            source,
        })?;
    }
    if let Some(tx) = started {
        let _ = tx.send(Started {
            slot: slot_name.clone(),
            publication: publication.to_string(),
            tables: tables.clone(),
            database: info.database.clone(),
        });
    }
    let decoder = Decoder::new(types).with_protocol(slot::proto_version(server_version));
    let handle = tokio::runtime::Handle::current();
    let catalog_conn = std::sync::Arc::clone(meta);
    let setup = StreamSetup {
        decoder,
        // Runs on the decode thread (not a runtime thread), so blocking on the query is fine.
        load_types: Some(Box::new(move || {
            handle.block_on(catalog::load_types(&catalog_conn))
        })),
        filter: Filter::new(tables.as_deref(), config.ops)
            .with_where(config.filter.clone(), config.keep_markers),
        sinks,
        endpos,
        status_interval: config.status_interval,
    };
    let outcome = pipeline::run_stream(&mut stream, setup, shutdown).await;
    // CopyDone, then close: a temporary slot is dropped by the server with the connection.
    match stream.finish().await {
        Ok(conn) => {
            let _ = conn.close().await;
        }
        Err(e) => tracing::debug!("ending the replication stream: {e}"),
    }
    let outcome = outcome?;
    Ok(Outcome {
        reason: outcome.reason,
        events: outcome.events,
        durable: outcome.durable,
        slot: slot_name,
    })
}

/// A permanent slot must be a pgoutput slot of this database and not in use.
fn check_existing_slot(name: &str, slot: &catalog::SlotInfo, info: &ServerInfo) -> Result<()> {
    if slot.plugin.as_deref() != Some("pgoutput") {
        return Err(Error::Setup(format!(
            "slot `{name}` uses the output plugin `{}`, not pgoutput: pick another --slot name",
            slot.plugin.as_deref().unwrap_or("(physical slot)")
        )));
    }
    if slot.database.as_deref() != Some(info.database.as_str()) {
        return Err(Error::Setup(format!(
            "slot `{name}` belongs to database `{}`, but --dsn connects to `{}`: a logical slot \
             can only be used from its own database",
            slot.database.as_deref().unwrap_or("?"),
            info.database
        )));
    }
    if let Some(pid) = slot.active_pid {
        return Err(Error::Setup(format!(
            "slot `{name}` is in use by another connection (server PID {pid}): stop that consumer, \
             or use another --slot"
        )));
    }
    if slot.wal_status.as_deref() == Some("lost") {
        return Err(Error::Setup(format!(
            "slot `{name}` is invalidated (wal_status = lost): the WAL it needed was removed, so \
             changes were lost; drop it and start again with a fresh slot"
        )));
    }
    Ok(())
}

/// Creates a slot; if that waits on open transactions, says so and names them.
async fn create_slot_noisily(
    repl: &mut ReplConn,
    meta: &Client,
    name: &str,
    temporary: bool,
    server_version: u32,
) -> Result<Lsn> {
    let create = slot::create_slot(repl, name, temporary, server_version);
    tokio::pin!(create);
    tokio::select! {
        res = &mut create => return res,
        _ = tokio::time::sleep(SLOT_WAIT_NOTICE) => {}
    }
    let writers = catalog::open_writers(meta).await.unwrap_or_default();
    tracing::warn!(
        "creating replication slot {name} is waiting for open transactions to finish \
         (a logical slot needs a consistent point): {}",
        if writers.is_empty() {
            "none visible in pg_stat_activity".to_string()
        } else {
            writers.join("; ")
        }
    );
    create.await
}
