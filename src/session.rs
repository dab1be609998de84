//! One capture session: connect, check the server, set up the publication and the slot, stream
//! until told to stop, and clean up what this run created.
//!
//! Order matters (ARCHITECTURE.md, "Protocol facts"): the publication is created before the
//! slot, because pgoutput reads publications with the snapshot of the WAL it decodes, and a
//! publication created after the slot's start point would not be visible to it.

use std::future::Future;
use std::time::Duration;

use tokio_postgres::Client;

use crate::config::{Config, EndPos, SinkSpec, SlotMode, SnapshotMode};
use crate::decode::{Decoder, TypeRegistry};
use crate::error::{Error, Result};
use crate::event::Lsn;
use crate::filter::Filter;
use crate::pg::catalog::{self, ServerInfo};
use crate::pg::conn::ReplConn;
use crate::pg::publication::{self, Publications};
use crate::pg::slot;
use crate::pg::snapshot::{self, SnapshotReader};
use crate::pg::stream::ReplStream;
use crate::pipeline::{self, Reopen, Retry, StopReason, StreamSetup};
use crate::recording::{self, Recorder};
use crate::sink::{ArrowSink, Batch, JsonlSink, KafkaSink, Sink, SinkCatalog, TerminalSink};
use crate::spill;

pub use crate::pipeline::StreamOutcome;

/// How long slot creation may wait on open transactions before walwatch says why.
const SLOT_WAIT_NOTICE: Duration = Duration::from_secs(2);

/// What a session tells its caller once it streams: from here on, every transaction that
/// commits reaches the sinks.
#[derive(Clone, Debug)]
pub struct Started {
    pub slot: String,
    /// The publications the stream reads.
    pub publications: Vec<String>,
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

/// What a session does besides streaming: a signal once it streams, a raw recording.
struct Extras {
    started: Option<tokio::sync::oneshot::Sender<Started>>,
    recorder: Option<Recorder>,
}

/// What a finished session reports.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub reason: StopReason,
    pub events: u64,
    pub durable: Lsn,
    pub slot: String,
}

impl Outcome {
    /// A run that ends before streaming anything, at the slot's `start`.
    fn idle(reason: StopReason, start: Lsn, slot: String) -> Outcome {
        Outcome {
            reason,
            events: 0,
            durable: start,
            slot,
        }
    }
}

/// Opens the metadata connection and spawns its connection task.
pub async fn connect_meta(config: &Config) -> Result<Client> {
    let tls = crate::pg::tls::MakeRustls::new(&config.conn.tls)?;
    let (client, conn) = config.conn.tokio_postgres_config().connect(tls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("metadata connection closed: {e}");
        }
    });
    Ok(client)
}

/// Catalog queries from the decode thread (not a runtime thread, so blocking on them is
/// fine), each on a connection of its own: they are rare (a new type, a table's first change),
/// and a fresh connection survives a server restart.
struct BlockingCatalog {
    handle: tokio::runtime::Handle,
    config: Config,
    /// Kept between calls (one per Relation message can be many), remade once closed.
    client: Option<Client>,
}

impl BlockingCatalog {
    /// Must be created on the runtime.
    fn new(config: &Config) -> BlockingCatalog {
        BlockingCatalog {
            handle: tokio::runtime::Handle::current(),
            config: config.clone(),
            client: None,
        }
    }

    fn call<T>(&mut self, query: impl AsyncFnOnce(&Client) -> Result<T>) -> Result<T> {
        self.handle.block_on(async {
            if self.client.as_ref().is_none_or(Client::is_closed) {
                self.client = Some(connect_meta(&self.config).await?);
            }
            let client = self.client.as_ref().expect("connected above");
            query(client).await
        })
    }
}

/// One [`BlockingCatalog`] (one metadata connection) for every lookup of the decode thread:
/// types, partitions, primary keys. They all run on that thread, so the lock is never
/// contended.
#[derive(Clone)]
struct DecodeCatalog(std::sync::Arc<std::sync::Mutex<BlockingCatalog>>);

impl DecodeCatalog {
    fn new(config: &Config) -> DecodeCatalog {
        DecodeCatalog(std::sync::Arc::new(std::sync::Mutex::new(
            BlockingCatalog::new(config),
        )))
    }

    fn call<T>(&self, query: impl AsyncFnOnce(&Client) -> Result<T>) -> Result<T> {
        // A panic while holding it would have ended the decode thread already.
        let mut catalog = self.0.lock().unwrap_or_else(|p| p.into_inner());
        catalog.call(query)
    }
}

/// The partitions a relation belongs to, for `partition_of`.
fn partition_lookup(catalog: DecodeCatalog) -> pipeline::PartitionLookup {
    Box::new(move |oid| catalog.call(async |c| catalog::partition_ancestors(c, oid).await))
}

/// A table's primary key, for `key`.
fn key_lookup(catalog: DecodeCatalog) -> pipeline::KeyLookup {
    Box::new(move |oid| catalog.call(async |c| catalog::primary_key_of(c, oid).await))
}

/// What every sink of a run is opened with.
pub struct SinkOptions<'a> {
    pub envelope: crate::event_read::Envelope,
    /// The database (the Kafka sink names its messages' source after it).
    pub database: &'a str,
    pub kafka_props: &'a [(String, String)],
    /// A permanent slot: a JSONL file or Arrow directory is opened to continue (a torn last
    /// line is repaired, and what it holds is skipped when replayed).
    pub resume: bool,
}

/// Builds the sinks a config asks for, their lookups on the server (and recorded, with a raw
/// recording).
pub fn open_sinks(
    config: &Config,
    resume: bool,
    recorder: Option<&Recorder>,
) -> Result<Vec<Box<dyn Sink>>> {
    let options = SinkOptions {
        envelope: config.envelope,
        database: &config.conn.dbname,
        kafka_props: &config.kafka_props,
        resume,
    };
    let mut catalog = LiveCatalog {
        config,
        recorder: recorder.cloned(),
    };
    open_sinks_with(&config.sinks, &options, &mut catalog)
}

/// Builds the sinks `specs` name, their lookups from `catalog`.
pub fn open_sinks_with(
    specs: &[SinkSpec],
    options: &SinkOptions,
    catalog: &mut dyn SinkCatalog,
) -> Result<Vec<Box<dyn Sink>>> {
    let envelope = options.envelope;
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
                SinkSpec::Jsonl(path) if options.resume => {
                    Box::new(JsonlSink::resume_file(path, envelope)?)
                }
                SinkSpec::Jsonl(path) => Box::new(JsonlSink::file(path, envelope)?),
                SinkSpec::Kafka(spec) => Box::new(
                    KafkaSink::new(spec, options.database, options.kafka_props)?
                        .with_key_lookup(catalog.kafka_keys()),
                ),
                SinkSpec::Arrow(spec) => Box::new(
                    ArrowSink::files(spec, options.resume)?.with_dims_lookup(catalog.array_dims()),
                ),
            })
        })
        .collect()
}

/// The sinks' lookups on the server, each on a connection of its own.
struct LiveCatalog<'a> {
    config: &'a Config,
    recorder: Option<Recorder>,
}

impl SinkCatalog for LiveCatalog<'_> {
    fn kafka_keys(&mut self) -> crate::sink::kafka::KeyLookup {
        let mut catalog = BlockingCatalog::new(self.config);
        let lookup: crate::sink::kafka::KeyLookup = Box::new(move |schema, table| {
            catalog.call(async |c| catalog::primary_key(c, schema, table).await)
        });
        match &self.recorder {
            Some(r) => r.kafka_keys(lookup),
            None => lookup,
        }
    }

    fn array_dims(&mut self) -> crate::sink::arrow::DimsLookup {
        let mut catalog = BlockingCatalog::new(self.config);
        let lookup: crate::sink::arrow::DimsLookup = Box::new(move |schema, table| {
            catalog.call(async |c| catalog::array_dims(c, schema, table).await)
        });
        match &self.recorder {
            Some(r) => r.array_dims(lookup),
            None => lookup,
        }
    }
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
    let permanent = matches!(config.slot, SlotMode::Permanent(_));
    let recorder = config.raw.as_deref().map(Recorder::create).transpose()?;
    let mut sinks = open_sinks(&config, permanent, recorder.as_ref())?;
    if permanent {
        for sink in sinks.iter().filter(|s| !s.durable()) {
            tracing::warn!(
                "{} is not durable: with a permanent slot, a change counts as delivered once it \
                 is written there, and the slot will not send it again if the reader loses it; \
                 use --output FILE for capture that survives crashes",
                sink.describe()
            );
        }
    }
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
        catalog::check_select(&meta, &info, t).await?;
        let names: Vec<String> = t.iter().map(|(s, n)| format!("{s}.{n}")).collect();
        tracing::info!("watching {}", names.join(", "));
    }

    // The slot's name first: walwatch's publications record which slot they serve.
    let slot_name = match &config.slot {
        SlotMode::Temporary => slot::fresh_name(),
        SlotMode::Permanent(name) => name.clone(),
    };
    let publications = publications(&config, &meta, &info, &slot_name, tables.as_deref()).await?;

    let result = stream_with_publication(
        config,
        repl,
        &meta,
        &info,
        slot_name,
        &publications,
        tables,
        sinks,
        Extras {
            started: hooks.started,
            recorder,
        },
        shutdown,
    )
    .await;

    for name in &publications.created {
        if let Err(e) = catalog::drop_publication(&meta, name).await {
            tracing::warn!("could not drop publication {name}: {e}");
        }
    }
    result
}

/// The publications to stream from: the one given with --publication, or walwatch's own
/// (see [`publication`]). A permanent slot keeps its publications across runs (decoding old
/// WAL needs them); a temporary one's are dropped on exit, and those of temporary runs that
/// were killed before they could drop theirs are removed here.
async fn publications(
    config: &Config,
    meta: &Client,
    info: &ServerInfo,
    slot_name: &str,
    tables: Option<&[(String, String)]>,
) -> Result<Publications> {
    if let Some(name) = &config.publication {
        catalog::check_publication(meta, info, name, tables).await?;
        publication::warn_given(meta, name, tables, info.version_num, config.partitions).await?;
        return Ok(Publications {
            names: vec![name.clone()],
            ..Publications::default()
        });
    }
    match publication::prune(meta).await {
        Ok(dropped) => {
            for name in dropped {
                tracing::info!(
                    "dropped publication {name}: the temporary walwatch run that made it is gone"
                );
            }
        }
        Err(e) => tracing::warn!("could not look for orphaned walwatch publications: {e}"),
    }
    let temporary = matches!(config.slot, SlotMode::Temporary);
    if !temporary && slot_name.len() > publication::MAX_SLOT_FOR_PUBLICATION {
        return Err(Error::Config(format!(
            "--slot `{slot_name}`: walwatch names its publications after the slot, and a slot \
             name of more than {} bytes makes them longer than PostgreSQL's 63: use a shorter \
             name, or pass an existing publication with --publication",
            publication::MAX_SLOT_FOR_PUBLICATION
        )));
    }
    let main = if temporary {
        slot_name.to_string()
    } else {
        publication::main_name(slot_name)
    };
    publication::ensure(
        meta,
        info,
        &publication::Want {
            main: &main,
            slot: slot_name,
            temporary,
            tables,
            ops: config.ops,
            via_root: config.partitions == crate::config::Partitions::Root,
            server_version: info.version_num,
        },
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn stream_with_publication(
    config: Config,
    mut repl: ReplConn,
    meta: &std::sync::Arc<Client>,
    info: &ServerInfo,
    slot_name: String,
    publications: &Publications,
    tables: Option<Vec<(String, String)>>,
    sinks: Vec<Box<dyn Sink>>,
    extras: Extras,
    shutdown: impl Future<Output = ()>,
) -> Result<Outcome> {
    let Extras { started, recorder } = extras;
    let (types, remembered) = start_types(&config, meta, publications).await?;
    let record = remembered.map(|r| std::sync::Arc::new(tokio::sync::Mutex::new(r)));
    let server_version = repl.server_version_num();
    let OpenSlot {
        name: slot_name,
        start,
        created,
        snapshot,
    } = open_slot(
        &config,
        &mut repl,
        (meta, record.as_ref().map(|r| (r, &publications.names[..]))),
        info,
        slot_name,
        held_by(&sinks),
    )
    .await?;
    // The exported snapshot must be imported before the replication connection's next
    // command (START_REPLICATION below).
    let feed = match &snapshot {
        Some(name) => Some(
            snapshot_feed(
                &config,
                name,
                start,
                &types,
                publications,
                tables.as_deref(),
            )
            .await?,
        ),
        None => None,
    };
    let backfill = match backfill_for(
        &config,
        (meta, record.as_ref()),
        publications,
        (&slot_name, created),
        feed.as_ref(),
        (&types, server_version),
        tables.as_deref(),
    )
    .await?
    {
        Continue::With(b) => *b,
        Continue::Taken => return Ok(Outcome::idle(StopReason::SnapshotTaken, start, slot_name)),
    };
    let Some(endpos) = end_position(&config, meta, (created, feed.is_some()), start).await? else {
        tracing::info!("slot {slot_name} created at {start}; --endpos now: done");
        return Ok(Outcome::idle(StopReason::EndPos, start, slot_name));
    };
    let plan = Plan {
        options: slot::start_options(server_version, &publications.names),
        slot: slot_name,
        start,
        endpos,
        server_version,
        types,
        remembered: record,
        tables,
    };
    let stream = repl
        .start_replication(&plan.slot, start, &plan.options)
        .await?;
    let mut sinks = sinks;
    if config.recorder_line && matches!(config.slot, SlotMode::Temporary) {
        write_recorder_line(&config, &plan.slot, start, &mut sinks)?;
    }
    plan.announce(&config, publications, &info.database, started)?;
    if let Some(r) = &recorder {
        r.begin(&plan.recording_header(&config, &info.database))?;
    }
    let retry = match &config.slot {
        SlotMode::Permanent(_) => Some(Retry {
            reopen: reopener(config.clone(), plan.slot.clone(), plan.options.clone()),
            retry_for: config.retry_for,
        }),
        SlotMode::Temporary => None,
    };
    let monitor = tokio::spawn(watch_retained_wal(
        config.clone(),
        plan.slot.clone(),
        config.warn_retained_wal,
    ));
    let slot = plan.slot.clone();
    let mut setup = plan.setup(&config, publications, sinks, recorder);
    setup.snapshot = feed;
    setup.backfill = Some(backfill);
    let outcome = pipeline::run_stream(stream, setup, retry, shutdown).await;
    monitor.abort();
    let outcome = outcome?;
    Ok(Outcome {
        reason: outcome.reason,
        events: outcome.events,
        durable: outcome.durable,
        slot,
    })
}

/// Writes who is recording as the sinks' first line, before the ready file says the stream
/// started: `walwatch mark --input` addresses its marks with it, `walwatch assert` reads the
/// envelope and checks the recorder is alive with it (`crate::marker::RecorderInfo`).
fn write_recorder_line(
    config: &Config,
    slot: &str,
    start: Lsn,
    sinks: &mut [Box<dyn Sink>],
) -> Result<()> {
    let info = crate::marker::RecorderInfo {
        slot: slot.to_string(),
        temporary: true,
        pid: std::process::id(),
        host: crate::marker::this_host(),
        pid_ns: crate::marker::this_pid_namespace(),
        envelope: config.envelope.name().into(),
    };
    let line = Batch::new(vec![info.to_event(start)], start);
    for sink in sinks.iter_mut() {
        sink.write(&line)?;
        sink.acknowledge(start)?;
    }
    Ok(())
}

/// The type registry to start with, and on a permanent slot the record of what it resolved
/// before (kept for types dropped since: their changes may still be ahead in the slot), with
/// today's types added to it.
async fn start_types(
    config: &Config,
    meta: &Client,
    publications: &Publications,
) -> Result<(TypeRegistry, Option<publication::Record>)> {
    let permanent = matches!(config.slot, SlotMode::Permanent(_));
    let mut remembered = publications.record.clone().filter(|_| permanent);
    let mut types = catalog::load_types(meta).await?;
    if let Some(record) = &mut remembered {
        if record.remember_types(&types) {
            publication::write_record(meta, &publications.names, record).await?;
        }
        record.restore_types(&mut types);
    }
    Ok((types, remembered))
}

/// The slot opened for a run.
struct OpenSlot {
    name: String,
    /// Where the stream starts: the slot's confirmed position, or its consistent point.
    start: Lsn,
    /// Whether this run created it.
    created: bool,
    /// The snapshot it exported at creation (`--snapshot`), until the next replication command.
    snapshot: Option<String>,
}

/// The slot to stream from, where to start, and whether this run created it: a temporary slot
/// is created; a permanent one is resumed where it was confirmed (after checking it and what
/// the resumed sinks hold, `held`), or created. With `--snapshot`, a slot this run creates
/// exports its snapshot.
async fn open_slot(
    config: &Config,
    repl: &mut ReplConn,
    (meta, record): (&Client, Option<(&pipeline::SharedRecord, &[String])>),
    info: &ServerInfo,
    slot_name: String,
    held: Vec<(String, Lsn)>,
) -> Result<OpenSlot> {
    let server_version = repl.server_version_num();
    let export = config.snapshot != SnapshotMode::Never;
    let name = match &config.slot {
        SlotMode::Temporary => {
            let made =
                create_slot_noisily(repl, meta, &slot_name, true, server_version, export).await?;
            return Ok(OpenSlot {
                name: slot_name,
                start: made.point,
                created: true,
                snapshot: made.snapshot,
            });
        }
        SlotMode::Permanent(name) => name,
    };
    match slot_when_free(meta, name).await? {
        Some(existing) => {
            check_existing_slot(name, &existing, info)?;
            // Resume where the slot was confirmed (0/0 says the same). Never from
            // IDENTIFY_SYSTEM's position, which would skip whatever the slot still holds.
            let from = existing.confirmed_flush_lsn.unwrap_or(Lsn::ZERO);
            check_held(held, name, meta, true).await?;
            tracing::info!("resuming slot {name} from {from}");
            Ok(OpenSlot {
                name: name.clone(),
                start: from,
                created: false,
                snapshot: None,
            })
        }
        None => {
            check_held(held, name, meta, false).await?;
            if let Some((record, publications)) = record.filter(|_| export) {
                // Before the slot exists: a stop from its creation on leaves its snapshot to
                // be read, not a slot that looks like it never had one.
                let mut r = record.lock().await;
                r.backfill = Some(publication::BackfillRecord {
                    initial: true,
                    ..Default::default()
                });
                publication::write_record(meta, publications, &r).await?;
            }
            tracing::info!("creating replication slot {name}");
            let made = create_slot_noisily(repl, meta, name, false, server_version, export).await?;
            Ok(OpenSlot {
                name: name.clone(),
                start: made.point,
                created: true,
                snapshot: made.snapshot,
            })
        }
    }
}

/// What is decided before the stream starts.
struct Plan {
    slot: String,
    start: Lsn,
    endpos: Option<Lsn>,
    options: Vec<(String, String)>,
    server_version: u32,
    types: TypeRegistry,
    remembered: Option<pipeline::SharedRecord>,
    tables: Option<Vec<(String, String)>>,
}

impl Plan {
    /// Says that the stream started: the log line, the ready file, the caller's signal.
    fn announce(
        &self,
        config: &Config,
        publications: &Publications,
        database: &str,
        started: Option<tokio::sync::oneshot::Sender<Started>>,
    ) -> Result<()> {
        tracing::info!(
            "streaming from slot {} (publication {}, pgoutput protocol {}){}",
            self.slot,
            publications.names.join(", "),
            slot::proto_version(self.server_version),
            match self.endpos {
                Some(end) => format!(" until {end}"),
                None => String::new(),
            }
        );
        if let Some(path) = &config.ready_file {
            std::fs::write(path, format!("{}\n", self.slot)).map_err(|source| Error::File {
                path: path.clone(),
                source,
            })?;
        }
        if let Some(tx) = started {
            let _ = tx.send(Started {
                slot: self.slot.clone(),
                publications: publications.names.clone(),
                tables: self.tables.clone(),
                database: database.to_string(),
            });
        }
        Ok(())
    }

    /// A raw recording's header for this stream.
    fn recording_header(&self, config: &Config, database: &str) -> recording::Header {
        recording::Header {
            walwatch_recording: recording::FORMAT,
            walwatch: env!("CARGO_PKG_VERSION").to_string(),
            server_version_num: self.server_version,
            database: database.to_string(),
            protocol_version: slot::proto_version(self.server_version),
            options: self.options.clone(),
            slot: self.slot.clone(),
            start: self.start.to_string(),
            endpos: self.endpos.map(|e| e.to_string()),
            tables: self.tables.clone(),
            server_scoped: config.publication.is_none(),
            types: self.types.entries(),
        }
    }

    /// The decode thread's setup: the decoder, its catalog lookups on one connection (recorded
    /// with a raw recording), the filter and the sinks.
    fn setup(
        self,
        config: &Config,
        publications: &Publications,
        sinks: Vec<Box<dyn Sink>>,
        recorder: Option<Recorder>,
    ) -> StreamSetup {
        let decoder = Decoder::new(self.types)
            .with_protocol(slot::proto_version(self.server_version))
            .with_spill(spill::Spiller::new(
                config.spill_threshold,
                config.spill_dir.clone(),
            ));
        let catalog = DecodeCatalog::new(config);
        let mut partitions = partition_lookup(catalog.clone());
        let mut primary_keys = key_lookup(catalog.clone());
        let mut load_types = type_loader(catalog, self.remembered, publications.names.clone());
        if let Some(r) = &recorder {
            partitions = r.partitions(partitions);
            primary_keys = r.primary_keys(primary_keys);
            load_types = r.types(load_types);
        }
        StreamSetup {
            decoder,
            partitions: Some(partitions),
            primary_keys: Some(primary_keys),
            load_types: Some(load_types),
            tap: recorder.map(|r| Box::new(r) as Box<dyn pipeline::Tap>),
            filter: Filter::new(self.tables.as_deref(), config.ops)
                .server_scoped(config.publication.is_none())
                .with_where(config.filter.clone(), config.keep_markers)
                .marker_scope(config.keep_markers.then(|| self.slot.clone())),
            sinks,
            endpos: self.endpos,
            status_interval: config.status_interval,
            start: self.start,
            snapshot: None,
            backfill: None,
        }
    }
}

/// Opens the reader of the slot's exported snapshot `name` and lists what it reads: the
/// relations the publications publish, among the watched tables.
async fn snapshot_feed(
    config: &Config,
    name: &str,
    at: Lsn,
    types: &TypeRegistry,
    publications: &Publications,
    watched: Option<&[(String, String)]>,
) -> Result<pipeline::SnapshotFeed> {
    let mut readers = Vec::with_capacity(config.snapshot_parallel);
    for _ in 0..config.snapshot_parallel {
        let client = connect_meta(config).await?;
        readers.push(SnapshotReader::open(client, Some(name), at).await?);
    }
    let reader = &readers[0];
    let tables = snapshot_plan(
        config,
        reader.client(),
        reader.server_version(),
        types,
        publications,
        watched,
    )
    .await?;
    tracing::info!("snapshot at {at} of {}", describe_plan(&tables));
    Ok(pipeline::SnapshotFeed {
        readers,
        tables,
        chunk: config.snapshot_chunk,
        only: config.snapshot == SnapshotMode::Only,
        progress: config.progress,
    })
}

/// The relations a snapshot reads: those the publications publish, among the watched tables.
async fn snapshot_plan(
    config: &Config,
    client: &Client,
    server_version: u32,
    types: &TypeRegistry,
    publications: &Publications,
    watched: Option<&[(String, String)]>,
) -> Result<Vec<snapshot::SnapshotTable>> {
    // walwatch's own publications hold exactly the watched tables; a given one may hold more.
    let given = config.publication.is_some();
    let mut tables = snapshot::plan(
        client,
        &publications.names,
        server_version,
        types,
        |s, t| !given || watched.is_none_or(|w| w.iter().any(|(ws, wt)| ws == s && wt == t)),
    )
    .await?;
    // Tables without a key first: only the exported snapshot reads them exactly while they
    // change (a stopped run reads them again between watermarks, which cannot match their
    // changes to rows), so they are the first to be durable.
    tables.sort_by_key(|t| !t.key.is_empty());
    Ok(tables)
}

fn describe_plan(tables: &[snapshot::SnapshotTable]) -> String {
    let names: Vec<String> = tables
        .iter()
        .map(|t| {
            format!(
                "{}.{} (~{} rows)",
                t.relation.namespace,
                t.relation.name,
                t.estimate.max(0)
            )
        })
        .collect();
    names.join(", ")
}

/// Where the stream ends (`None` inside: it does not), or `None` when there is nothing to
/// stream: `--endpos now` on a slot this run `created`, with no snapshot rows to read first.
async fn end_position(
    config: &Config,
    meta: &Client,
    (created, snapshot): (bool, bool),
    start: Lsn,
) -> Result<Option<Option<Lsn>>> {
    Ok(match config.endpos {
        None => Some(None),
        Some(EndPos::At(lsn)) => Some(Some(lsn)),
        // A slot created by this run with --endpos now: no change can be before it, but a
        // snapshot's rows are: read them, then stop where the slot starts.
        Some(EndPos::Now) if created && snapshot => Some(Some(start)),
        Some(EndPos::Now) if created => None,
        Some(EndPos::Now) => Some(Some(catalog::current_wal_lsn(meta).await?)),
    })
}

/// What a run does about the slot's snapshot besides streaming.
enum Continue {
    /// Keep its progress (and read what is left of it), and take requests, with this.
    With(Box<pipeline::Backfill>),
    /// `--snapshot only`, and the slot's snapshot is complete: nothing to do.
    Taken,
}

/// What a run does about the slot's snapshot record.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Nothing to keep or read.
    Nothing,
    /// A new slot without a snapshot: forget one an older slot of this name had.
    Forget,
    /// `--snapshot only`, and the snapshot is complete.
    Taken,
    /// A new slot reads its exported snapshot: keep its progress.
    Keep,
    /// Read what is left between watermarks: of every table (`--snapshot` on a slot whose
    /// snapshot is unfinished), or of the tables asked for (`walwatch snapshot`) alone.
    Continue { all: bool },
}

/// The step for a slot this run `created` (with an `exported` snapshot) or found, whose record
/// holds `state`.
fn next_step(
    config: &Config,
    slot: &str,
    (created, exported): (bool, bool),
    state: Option<&publication::BackfillRecord>,
) -> Result<Step> {
    let wanted = config.snapshot != SnapshotMode::Never;
    let without = || no_snapshot_record(slot, "was created without a snapshot");
    Ok(match (created, state) {
        (true, _) if exported => Step::Keep,
        (true, Some(_)) => Step::Forget,
        (true, None) => Step::Nothing,
        (false, None) if wanted => return Err(without()),
        (false, None) => Step::Nothing,
        (false, Some(state)) if wanted && !state.initial => return Err(without()),
        (false, Some(state)) if state.complete() => {
            if wanted {
                tracing::info!("the snapshot of slot {slot} is complete");
            }
            if config.snapshot == SnapshotMode::Only {
                Step::Taken
            } else {
                Step::Nothing
            }
        }
        (false, Some(_)) if wanted => Step::Continue { all: true },
        (false, Some(state)) => {
            let own_left = state.initial
                && (!state.planned
                    || state
                        .tables
                        .iter()
                        .any(|t| t.requests.is_empty() && !t.done));
            if own_left {
                tracing::warn!(
                    "the snapshot of slot {slot} is not complete; run with --snapshot initial \
                     to read the rest of it while streaming"
                );
            }
            if state.requests_left() {
                Step::Continue { all: false }
            } else {
                Step::Nothing
            }
        }
    })
}

/// `--snapshot` on an existing slot that has no snapshot to continue: the error, with the fix.
fn no_snapshot_record(slot: &str, why: &str) -> Error {
    Error::Snapshot(format!(
        "--snapshot: slot {slot} already exists and {why}: the rows that meet its changes \
         exactly could only be read when it was created. To stream its changes, run without \
         --snapshot; to take a snapshot, drop the slot (walwatch slots drop {slot}) and start \
         again with a new output, or use a new --slot"
    ))
}

/// The run's backfill: the snapshot's progress to keep, for a permanent slot with walwatch's
/// own publications (their record holds it); for a slot whose snapshot a stopped run left
/// unfinished, or with tables asked for and not read yet, what is left to read while the
/// stream runs; and what a request heard while streaming is planned with.
async fn backfill_for(
    config: &Config,
    (meta, record): (&Client, Option<&pipeline::SharedRecord>),
    publications: &Publications,
    (slot, created): (&str, bool),
    feed: Option<&pipeline::SnapshotFeed>,
    (types, server_version): (&TypeRegistry, u32),
    watched: Option<&[(String, String)]>,
) -> Result<Continue> {
    let wanted = config.snapshot != SnapshotMode::Never;
    let mut b = new_backfill(config, publications, slot, server_version, watched);
    if let Some(feed) = feed {
        b.tables = feed.tables.clone();
        b.state = aligned_progress(&b.tables, Default::default());
    }
    let Some(record) = record else {
        if wanted && !created {
            return Err(no_snapshot_record(
                slot,
                "its publication (--publication) holds no record of a snapshot",
            ));
        }
        if wanted && matches!(config.slot, SlotMode::Permanent(_)) {
            tracing::warn!(
                "--snapshot with --publication: walwatch keeps a snapshot's progress in its \
                 own publications, so a run stopped before the snapshot is read cannot \
                 continue it; it would need a new slot"
            );
        }
        return Ok(Continue::With(Box::new(b)));
    };
    b.record = Some((record.clone(), publications.names.clone()));
    let old = record.lock().await.backfill.clone();
    let step = next_step(config, slot, (created, feed.is_some()), old.as_ref())?;
    let old = old.unwrap_or_default();
    (b.initial, b.planned, b.taken) = (old.initial, old.planned, Lsn(old.taken));
    b.requests = old.requests.clone();
    match step {
        Step::Taken => return Ok(Continue::Taken),
        Step::Nothing => {
            b.others = old.tables;
            return Ok(Continue::With(Box::new(b)));
        }
        Step::Forget => {
            let mut r = record.lock().await;
            r.backfill = None;
            publication::write_record(meta, &publications.names, &r).await?;
            (b.initial, b.planned, b.taken) = (false, false, Lsn::ZERO);
            b.requests.clear();
            return Ok(Continue::With(Box::new(b)));
        }
        Step::Keep => {
            (b.initial, b.planned, b.taken) = (true, true, Lsn::ZERO);
            b.requests.clear();
        }
        Step::Continue { all } => {
            if server_version < MESSAGES_SINCE {
                return Err(Error::Snapshot(format!(
                    "slot {slot} has a snapshot to continue, which needs PostgreSQL 14 or \
                     later: the rest is read between watermarks, logical messages that \
                     pgoutput sends from 14 on. Drop the slot and take the snapshot again \
                     without stopping (walwatch slots drop {slot})"
                )));
            }
            let reader = snapshot::ChunkReader::open(connect_meta(config).await?).await?;
            let client = reader.client();
            let mut tables =
                snapshot_plan(config, client, server_version, types, publications, watched).await?;
            if !all {
                tables.retain(|t| {
                    old.tables.iter().any(|o| {
                        !o.requests.is_empty()
                            && !o.done
                            && o.schema == *t.relation.namespace
                            && o.table == *t.relation.name
                    })
                });
            }
            b.state = aligned_progress(&tables, old.clone());
            b.others = others_of(old.tables, &b.state, all);
            b.tables = tables;
            b.reader = Some(reader);
            (b.read, b.planned) = (true, b.planned || all);
            log_continuation(slot, &b.state);
        }
    }
    // Before any row is read: a stop from here on leaves the snapshot unfinished.
    let mut r = record.lock().await;
    r.backfill = Some(publication::BackfillRecord {
        planned: b.planned,
        initial: b.initial,
        taken: b.taken.0,
        requests: b.requests.clone(),
        tables: [b.state.as_slice(), b.others.as_slice()].concat(),
    });
    publication::write_record(meta, &publications.names, &r).await?;
    drop(r);
    Ok(Continue::With(Box::new(b)))
}

/// The first server version whose pgoutput sends logical messages (`messages`, slot.rs): the
/// watermarks and requests a backfill needs.
const MESSAGES_SINCE: u32 = 140_000;

/// The record's tables a run continuing a snapshot does not read (not in `state`): kept as
/// they are when it reads the requests alone (`all` false: the slot's own unfinished snapshot
/// waits for a run with --snapshot), dropped when it reads everything; a requested one that is
/// not done is failed either way, for its table is no longer streamed (dropped, or no longer
/// in --tables), so whoever follows the request hears of it.
fn others_of(
    old: Vec<publication::TableBackfill>,
    state: &[publication::TableBackfill],
    all: bool,
) -> Vec<publication::TableBackfill> {
    old.into_iter()
        .filter(|o| {
            !state
                .iter()
                .any(|t| t.schema == o.schema && t.table == o.table)
        })
        .filter(|o| !all || !o.requests.is_empty())
        .map(|mut o| {
            if !o.requests.is_empty() && !o.done {
                tracing::warn!(
                    "a snapshot request asked for {}.{}, which this slot's walwatch no longer \
                     streams: it is left out",
                    o.schema,
                    o.table
                );
                o.failed = Some("no longer streamed by the slot's walwatch".into());
                o.done = true;
            }
            o
        })
        .collect()
}

/// A backfill with nothing to keep or read yet, ready to take requests.
fn new_backfill(
    config: &Config,
    publications: &Publications,
    slot: &str,
    server_version: u32,
    watched: Option<&[(String, String)]>,
) -> pipeline::Backfill {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let for_reader = config.clone();
    let connect: pipeline::Connect = std::sync::Arc::new(move || {
        let config = for_reader.clone();
        Box::pin(async move { connect_meta(&config).await })
    });
    pipeline::Backfill {
        record: None,
        reader: None,
        connect,
        publications: publications.names.clone(),
        // walwatch's own publications hold exactly the watched tables; a given one may hold
        // more.
        watched: watched
            .filter(|_| config.publication.is_some())
            .map(<[_]>::to_vec),
        server_version,
        tables: Vec::new(),
        state: Vec::new(),
        others: Vec::new(),
        initial: false,
        planned: false,
        taken: Lsn::ZERO,
        requests: Vec::new(),
        read: false,
        chunk: config.snapshot_chunk,
        only: config.snapshot == SnapshotMode::Only,
        progress: config.progress,
        slot: slot.to_string(),
        run: format!("{:x}-{nanos:x}", std::process::id()),
    }
}

/// Each of `tables`' progress as `old` records it (by name), or none yet.
fn aligned_progress(
    tables: &[snapshot::SnapshotTable],
    old: publication::BackfillRecord,
) -> Vec<publication::TableBackfill> {
    tables
        .iter()
        .map(|t| {
            let (schema, table) = (&*t.relation.namespace, &*t.relation.name);
            old.tables
                .iter()
                .find(|o| o.schema == schema && o.table == table)
                .cloned()
                .unwrap_or_else(|| publication::TableBackfill {
                    schema: schema.to_string(),
                    table: table.to_string(),
                    ..Default::default()
                })
        })
        .collect()
}

/// Says where a continued snapshot goes on from, table by table.
fn log_continuation(slot: &str, state: &[publication::TableBackfill]) {
    let left: Vec<String> = state
        .iter()
        .filter(|t| !t.done)
        .map(|t| match &t.after {
            Some(k) => format!("{}.{} after ({})", t.schema, t.table, k.join(", ")),
            None => format!("{}.{} from its start", t.schema, t.table),
        })
        .collect();
    tracing::info!(
        "continuing the snapshot of slot {slot}: {}",
        left.join("; ")
    );
}

/// Reloads the type registry for types created after start-up. On a permanent slot, new
/// types are remembered in its publications' record first, and remembered types the catalog
/// no longer has are kept (a change written before a `DROP TYPE` renders as it did).
fn type_loader(
    catalog: DecodeCatalog,
    remembered: Option<pipeline::SharedRecord>,
    publications: Vec<String>,
) -> pipeline::TypeLoader {
    Box::new(move || {
        let types = catalog.call(async |c| catalog::load_types(c).await)?;
        let Some(shared) = &remembered else {
            return Ok(types);
        };
        catalog.call(async |c| {
            let mut types = types;
            let mut record = shared.lock().await;
            if record.remember_types(&types)
                && let Err(e) = publication::write_record(c, &publications, &record).await
            {
                tracing::warn!("could not remember the slot's new types in its publication: {e}");
            }
            record.restore_types(&mut types);
            Ok(types)
        })
    })
}

/// How long start-up waits for a slot still held by a connection that is going away (after a
/// crash or `kill -9`, the server notices the dead client within moments).
const SLOT_RELEASE_WAIT: Duration = Duration::from_secs(10);

/// The slot's row, waiting a little while it is still active: a restart right after a crash
/// finds the old walsender not yet gone. Another live consumer still gets the error.
async fn slot_when_free(meta: &Client, name: &str) -> Result<Option<catalog::SlotRow>> {
    let deadline = std::time::Instant::now() + SLOT_RELEASE_WAIT;
    let mut said = false;
    loop {
        let slot = catalog::slot_row(meta, name).await?;
        match slot.as_ref().and_then(|s| s.active_pid) {
            Some(pid) if std::time::Instant::now() < deadline => {
                if !said {
                    tracing::info!(
                        "slot {name} is still in use by server process {pid}; waiting up to {}s for it to be released",
                        SLOT_RELEASE_WAIT.as_secs()
                    );
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ => return Ok(slot),
        }
    }
}

/// A permanent slot must be a pgoutput slot of this database and not in use.
fn check_existing_slot(name: &str, slot: &catalog::SlotRow, info: &ServerInfo) -> Result<()> {
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
        return Err(Error::SlotInUse(format!(
            "slot `{name}` is in use by another connection (server PID {pid}): stop that consumer, \
             or use another --slot"
        )));
    }
    if slot.wal_status.as_deref() == Some("lost") {
        return Err(invalidated(name));
    }
    Ok(())
}

fn invalidated(name: &str) -> Error {
    Error::SlotLost(format!(
        "slot `{name}` is invalidated (wal_status = lost): the server removed WAL it still \
         needed (max_slot_wal_keep_size), so changes were lost; drop it (`walwatch slots drop \
         {name}`) and start again with a fresh slot and a fresh output, or raise \
         max_slot_wal_keep_size"
    ))
}

/// What the resumed files hold must fit the slot: a file that holds changes while its slot is
/// gone lost whatever was committed after the slot was dropped, and a file ahead of the
/// server's WAL comes from another server.
async fn check_held(
    held: Vec<(String, Lsn)>,
    name: &str,
    meta: &Client,
    slot_exists: bool,
) -> Result<()> {
    if held.is_empty() {
        return Ok(());
    }
    let now = catalog::current_wal_lsn(meta).await?;
    for (file, key) in held {
        if !slot_exists {
            return Err(Error::SlotLost(format!(
                "replication slot `{name}` does not exist, but {file} holds changes up to commit \
                 {key} from an earlier run on it: the slot was dropped, so changes committed \
                 while it was gone are lost to walwatch. To start afresh from now, move {file} \
                 away (or write to a new file) and run again"
            )));
        }
        if key > now {
            return Err(Error::SlotLost(format!(
                "{file} holds changes up to commit {key}, beyond this server's WAL position \
                 {now}: the file comes from another server (or the cluster was re-created); \
                 write to a new file"
            )));
        }
    }
    Ok(())
}

/// What each resumed sink holds: (its name, the last commit it holds).
fn held_by(sinks: &[Box<dyn Sink>]) -> Vec<(String, Lsn)> {
    sinks
        .iter()
        .filter_map(|s| s.held().map(|t| (s.describe(), t.key)))
        .collect()
}

/// Reopens the stream of a permanent slot after a lost connection.
fn reopener(config: Config, slot: String, options: Vec<(String, String)>) -> Reopen {
    Box::new(move |from| {
        let (config, slot, options) = (config.clone(), slot.clone(), options.clone());
        Box::pin(async move { reopen(&config, &slot, &options, from).await })
    })
}

async fn reopen(
    config: &Config,
    slot: &str,
    options: &[(String, String)],
    from: Lsn,
) -> Result<ReplStream> {
    let meta = connect_meta(config).await?;
    match catalog::slot_row(&meta, slot).await? {
        None => {
            return Err(Error::SlotLost(format!(
                "replication slot `{slot}` was dropped while walwatch was disconnected: changes \
                 committed after {from} may be lost. Start again with a fresh slot and a fresh \
                 output"
            )));
        }
        Some(s) if s.wal_status.as_deref() == Some("lost") => return Err(invalidated(slot)),
        Some(s) if s.confirmed_flush_lsn.is_some_and(|c| c > from) => {
            return Err(Error::SlotLost(format!(
                "slot `{slot}` was moved to {} while walwatch had confirmed only {from} \
                 (pg_replication_slot_advance, or another consumer): the changes in between \
                 were skipped. Start again with a fresh slot and a fresh output",
                s.confirmed_flush_lsn.unwrap_or(Lsn::ZERO)
            )));
        }
        Some(s) if s.active_pid.is_some() => {
            // Usually our own walsender, not yet gone after the connection broke.
            return Err(Error::SlotInUse(format!(
                "slot `{slot}` is still in use by server process {}",
                s.active_pid.unwrap_or(0)
            )));
        }
        Some(_) => {}
    }
    let repl = ReplConn::connect(&config.conn).await?;
    Ok(repl.start_replication(slot, from, options).await?)
}

/// How often the slot's retained WAL is checked.
const RETAINED_WAL_EVERY: Duration = Duration::from_secs(30);

/// Warns when the slot holds back more WAL than `threshold`, and again each time that doubles
/// (ARCHITECTURE.md: idle slots must not pin WAL; a consumer that cannot keep up must be seen).
async fn watch_retained_wal(config: Config, slot: String, threshold: u64) {
    let mut warn_at = threshold;
    let mut client: Option<Client> = None;
    // The first look soon after start: a slot that already holds back a lot says so at once.
    let mut wait = Duration::from_secs(1);
    loop {
        tokio::time::sleep(wait).await;
        wait = RETAINED_WAL_EVERY;
        if client.as_ref().is_none_or(Client::is_closed) {
            client = connect_meta(&config).await.ok();
        }
        let Some(c) = &client else { continue };
        let Ok(Some(row)) = catalog::slot_row(c, &slot).await else {
            continue;
        };
        let retained = row.retained_bytes.unwrap_or(0).max(0) as u64;
        if retained > warn_at {
            tracing::warn!(
                "slot {slot} holds back {} MB of WAL on the server (wal_status {}, confirmed {}); \
                 the server cannot remove it until walwatch confirms it",
                retained >> 20,
                row.wal_status.as_deref().unwrap_or("?"),
                row.confirmed_flush_lsn.unwrap_or(Lsn::ZERO),
            );
            warn_at = retained.saturating_mul(2);
        } else if retained < threshold {
            warn_at = threshold;
        }
    }
}

/// Creates a slot; if that waits on open transactions, says so and names them.
async fn create_slot_noisily(
    repl: &mut ReplConn,
    meta: &Client,
    name: &str,
    temporary: bool,
    server_version: u32,
    export: bool,
) -> Result<slot::Created> {
    let create = slot::create_slot(repl, name, temporary, server_version, export);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::publication::{BackfillRecord, TableBackfill};

    fn config(snapshot: SnapshotMode) -> Config {
        let conn = crate::pg::params::ConnParams::resolve(Some("host=h"), &|_| None, None);
        Config {
            snapshot,
            ..Config::new(conn.expect("a DSN"))
        }
    }

    fn table(name: &str, done: bool, requests: &[&str]) -> TableBackfill {
        TableBackfill {
            schema: "public".into(),
            table: name.into(),
            done,
            requests: requests.iter().map(|r| r.to_string()).collect(),
            ..TableBackfill::default()
        }
    }

    fn record(initial: bool, tables: Vec<TableBackfill>) -> BackfillRecord {
        BackfillRecord {
            planned: true,
            initial,
            tables,
            ..BackfillRecord::default()
        }
    }

    /// What a run does with the record it finds: the slot's own unfinished snapshot only with
    /// --snapshot, requested tables with or without it, and --snapshot refused on a slot that
    /// never had one of its own, even when tables were requested on it.
    #[test]
    fn the_record_decides_what_a_run_continues() {
        use SnapshotMode::{Initial, Never, Only};
        let step = |mode, created, exported, r: Option<&BackfillRecord>| {
            next_step(&config(mode), "s", (created, exported), r)
        };
        let own_left = record(true, vec![table("a", false, &[]), table("b", true, &[])]);
        let asked_left = record(false, vec![table("a", false, &["r1"])]);
        let both_left = record(
            true,
            vec![table("a", false, &[]), table("b", false, &["r1"])],
        );
        let all_done = record(true, vec![table("a", true, &[]), table("b", true, &["r1"])]);
        let unplanned = BackfillRecord {
            initial: true,
            ..BackfillRecord::default()
        };
        assert_eq!(step(Initial, true, true, None).unwrap(), Step::Keep);
        assert_eq!(
            step(Never, true, false, Some(&own_left)).unwrap(),
            Step::Forget
        );
        assert_eq!(step(Never, false, false, None).unwrap(), Step::Nothing);
        assert!(step(Initial, false, false, None).is_err());
        assert!(step(Initial, false, false, Some(&asked_left)).is_err());
        assert_eq!(
            step(Never, false, false, Some(&own_left)).unwrap(),
            Step::Nothing
        );
        assert_eq!(
            step(Initial, false, false, Some(&own_left)).unwrap(),
            Step::Continue { all: true }
        );
        assert_eq!(
            step(Never, false, false, Some(&asked_left)).unwrap(),
            Step::Continue { all: false }
        );
        assert_eq!(
            step(Never, false, false, Some(&both_left)).unwrap(),
            Step::Continue { all: false }
        );
        assert_eq!(
            step(Only, false, false, Some(&all_done)).unwrap(),
            Step::Taken
        );
        assert_eq!(
            step(Initial, false, false, Some(&all_done)).unwrap(),
            Step::Nothing
        );
        assert_eq!(
            step(Initial, false, false, Some(&unplanned)).unwrap(),
            Step::Continue { all: true }
        );
    }

    /// The tables a continuing run does not read: kept when it reads the requests alone,
    /// dropped when it reads everything, and a requested one it cannot read (no longer
    /// streamed) failed either way, so that `--wait` hears of it.
    #[test]
    fn tables_no_longer_streamed_fail_their_requests() {
        let old = vec![
            table("read", false, &["r1"]),
            table("own", false, &[]),
            table("gone", false, &["r2"]),
            table("done", true, &["r0"]),
        ];
        let state = vec![table("read", false, &["r1"])];
        let kept = others_of(old.clone(), &state, false);
        let names: Vec<_> = kept.iter().map(|t| t.table.as_str()).collect();
        assert_eq!(names, ["own", "gone", "done"]);
        assert!(kept[0].failed.is_none() && !kept[0].done);
        assert!(kept[1].failed.is_some() && kept[1].done);
        assert!(kept[2].failed.is_none());
        let all = others_of(old, &state, true);
        let names: Vec<_> = all.iter().map(|t| t.table.as_str()).collect();
        assert_eq!(names, ["gone", "done"]);
        assert!(all[0].failed.is_some());
    }
}
