//! `walwatch replay FILE`: a raw recording (`walwatch record --raw`) decoded offline, into any
//! sinks, the way the run that recorded it decoded it live: the same decoder (protocol, type
//! registry), the same watched tables, the catalog answers it got, so the same events come
//! out, byte for byte. No server is involved.

use std::time::Duration;

use crate::config::{DEFAULT_SPILL_THRESHOLD, ReplayConfig};
use crate::decode::Decoder;
use crate::error::{Error, Result};
use crate::event::Lsn;
use crate::filter::Filter;
use crate::pipeline::{self, StreamOutcome, StreamSetup};
use crate::recording::{Reading, Source};
use crate::session::{self, SinkOptions};
use crate::sink::SinkCatalog;
use crate::spill::Spiller;

impl SinkCatalog for Source {
    fn kafka_keys(&mut self) -> crate::sink::kafka::KeyLookup {
        Source::kafka_keys(self)
    }

    fn array_dims(&mut self) -> crate::sink::arrow::DimsLookup {
        Source::array_dims(self)
    }
}

/// Replays `config.input` into `config.sinks`. A damaged or truncated recording is an error
/// before anything is written.
pub fn run(config: &ReplayConfig) -> Result<StreamOutcome> {
    let reading = Reading::open(&config.input)?;
    let header = &reading.header;
    let position = |what: &str, text: &str| -> Result<Lsn> {
        text.parse().map_err(|e| Error::Recording {
            path: config.input.clone(),
            message: format!("the header's {what} `{text}` is not an LSN ({e})"),
        })
    };
    let start = position("start", &header.start)?;
    let endpos = header
        .endpos
        .as_deref()
        .map(|e| position("endpos", e))
        .transpose()?;
    let mut source = reading.source()?;
    let options = SinkOptions {
        envelope: config.envelope,
        database: &header.database,
        kafka_props: &config.kafka_props,
        resume: false,
    };
    let sinks = session::open_sinks_with(&config.sinks, &options, &mut source)?;
    // `streaming 'parallel'` changes what Stream Abort carries (pgoutput, protocol v4).
    let parallel = header
        .options
        .iter()
        .any(|(k, v)| k == "streaming" && v == "parallel");
    let decoder = Decoder::new(source.initial_types())
        .with_protocol(header.protocol_version)
        .with_parallel_streaming(parallel)
        .with_spill(Spiller::new(DEFAULT_SPILL_THRESHOLD, None));
    let setup = StreamSetup {
        decoder,
        load_types: Some(source.type_loader()),
        partitions: Some(source.partition_lookup()),
        primary_keys: Some(source.key_lookup()),
        tap: None,
        filter: Filter::new(header.tables.as_deref(), config.ops)
            .server_scoped(header.server_scoped)
            .with_where(config.filter.clone(), false),
        sinks,
        endpos,
        status_interval: Duration::from_secs(10),
        start,
        snapshot: None,
        backfill: None,
    };
    tracing::info!(
        "replaying {} (slot {}, PostgreSQL {}, pgoutput protocol {}, {} frames)",
        config.input.display(),
        header.slot,
        header.server_version_num,
        header.protocol_version,
        reading.end.frames
    );
    let outcome = pipeline::replay(setup, || source.next_frame())?;
    if let Some(e) = &reading.end.error {
        tracing::warn!("the recorded run ended with an error that this replay did not meet: {e}");
    }
    Ok(outcome)
}
