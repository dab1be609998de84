//! Kafka: one message per change, on a topic per table, keyed by the row's replica identity so
//! that a row's changes stay in order within their partition.
//!
//! Delivery (ARCHITECTURE.md, "Delivery"): the producer is idempotent with `acks=all`, and
//! `acknowledge` returns the end of a batch only once every message of it and of the batches
//! before has a successful delivery report (each message carries its batch's number as its
//! delivery opaque, and the sink counts what each batch still awaits), so a transaction counts
//! as durable only when all of its messages are acknowledged. While the broker is away, the
//! position stays (logged every 5 s) and librdkafka keeps retrying; its bounded queue
//! (`queue.buffering.max.*`) fills and `write` blocks, which fills this sink's bounded queue in
//! the pipeline, which stops the decoder and, through the bounded frame hand-off, the reads
//! from the replication socket: memory does not grow and the slot does not advance. A message
//! that still fails after librdkafka's retries (`message.timeout.ms`) stops walwatch with an
//! error; nothing after the last acknowledged transaction was confirmed.
//!
//! The producer is driven from the sink's own thread (a `BaseProducer` polled in `write` and
//! `acknowledge`), so delivery reports are served exactly where they are needed, and a broker
//! that is slow or away holds up only this sink's acknowledgements (and, once its queue is
//! full, the stream), never the other sinks' output.

mod debezium;
mod spec;

pub use debezium::VERSION as DEBEZIUM_SOURCE_VERSION;
pub use spec::{DEFAULT_TOPIC, KafkaEnvelope, KafkaSpec};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};

use super::{Batch, Sink};
use crate::error::{Error, Result};
use crate::event::{Event, Lsn, Op, Row};
use crate::event_json::string;

/// librdkafka callbacks: logs to tracing, the first failed delivery, and the deliveries still
/// awaited per batch.
struct Context {
    failed: Arc<Mutex<Option<String>>>,
    /// Messages produced and not yet reported delivered, by the sequence number of the batch
    /// they belong to (each message's delivery opaque). Delivery reports are served by
    /// `poll`, on the sink's own thread.
    awaited: Mutex<HashMap<usize, u64>>,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!("kafka: {fac}: {message}"),
            RDKafkaLogLevel::Warning => tracing::warn!("kafka: {fac}: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!("kafka: {fac}: {message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!("kafka: {fac}: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Broker connection errors are retried by librdkafka; say so once per occurrence.
        tracing::warn!("kafka: {error}: {reason}");
    }
}

impl ProducerContext for Context {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, batch: usize) {
        if result.is_ok() {
            let mut awaited = self.awaited.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = awaited.get_mut(&batch) {
                *n = n.saturating_sub(1);
            }
        }
        if let Err((e, msg)) = result {
            let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
            if failed.is_none() {
                use rdkafka::Message as _;
                *failed = Some(format!(
                    "delivery to topic `{}` failed after librdkafka's retries: {e}",
                    msg.topic()
                ));
            }
        }
    }
}

/// Looks up a table's primary-key columns (`schema`, `table`); called once per table, from the
/// sink's thread.
pub type KeyLookup = Box<dyn FnMut(&str, &str) -> Result<Vec<String>> + Send>;

/// How long `write` may wait on a full producer queue, and `flush` on acknowledgements, before
/// saying so (then again at this interval).
const WAIT_NOTICE: Duration = Duration::from_secs(5);

pub struct KafkaSink {
    producer: BaseProducer<Context>,
    spec: KafkaSpec,
    db: String,
    failed: Arc<Mutex<Option<String>>>,
    key: Vec<u8>,
    value: Vec<u8>,
    /// Changes per table in the open transaction, for Debezium's END event.
    tx_counts: Vec<(String, u64)>,
    sent: u64,
    /// Per table, worked out on its first change: topic, name and primary key.
    tables: HashMap<(Arc<str>, Arc<str>), Arc<TableOut>>,
    key_lookup: Option<KeyLookup>,
    /// The batches written and not yet acknowledged, oldest first: sequence number, `end`,
    /// and when it was written.
    unacked: std::collections::VecDeque<(usize, Lsn, Instant)>,
    /// The sequence number of the batch being written (every message's delivery opaque).
    batch: usize,
    /// The position acknowledged last, and when it was last said that the sink waits.
    acked: Lsn,
    noticed: Instant,
}

/// What the sink needs of one table, computed once rather than for every change.
struct TableOut {
    topic: String,
    /// `schema.table`, as Debezium's transaction events and the `table` header name it.
    name: String,
    /// Under REPLICA IDENTITY FULL the server marks every column as key, but a row's messages
    /// must share one Kafka key (its partition, hence its order): the primary key. Empty when
    /// the table has none.
    primary_key: Vec<String>,
}

impl KafkaSink {
    /// Creates the producer (no connection yet: librdkafka connects in the background).
    /// `props` are librdkafka properties (`-X key=value`); they override walwatch's defaults
    /// except the two the delivery promise rests on.
    pub fn new(spec: &KafkaSpec, db: &str, props: &[(String, String)]) -> Result<KafkaSink> {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &spec.brokers)
            .set("client.id", "walwatch")
            .set("linger.ms", "5")
            .set("compression.type", "none")
            // Bounded buffering: while the broker is slow or away, at most this much waits in
            // the producer (librdkafka's default is 1 GB); past it `write` blocks, which is
            // the backpressure on the replication stream.
            .set("queue.buffering.max.messages", "50000")
            .set("queue.buffering.max.kbytes", "65536");
        for (k, v) in props {
            if matches!(k.as_str(), "enable.idempotence" | "acks") {
                return Err(Error::Config(format!(
                    "-X {k}: walwatch sets enable.idempotence=true and acks=all itself; the \
                     no-loss promise depends on them"
                )));
            }
            cfg.set(k, v);
        }
        cfg.set("enable.idempotence", "true").set("acks", "all");
        let failed = Arc::new(Mutex::new(None));
        let producer = cfg
            .create_with_context(Context {
                failed: Arc::clone(&failed),
                awaited: Mutex::new(HashMap::new()),
            })
            .map_err(|e| Error::Config(format!("--sink kafka://{}: {e}", spec.brokers)))?;
        Ok(KafkaSink {
            producer,
            spec: spec.clone(),
            db: db.to_string(),
            failed,
            key: Vec::with_capacity(64),
            value: Vec::with_capacity(512),
            tx_counts: Vec::new(),
            sent: 0,
            tables: HashMap::new(),
            key_lookup: None,
            unacked: std::collections::VecDeque::new(),
            batch: 0,
            acked: Lsn::ZERO,
            noticed: Instant::now(),
        })
    }

    /// Keys rows by their primary key when the table has one (see `TableOut`).
    pub fn with_key_lookup(mut self, lookup: KeyLookup) -> KafkaSink {
        self.key_lookup = Some(lookup);
        self
    }

    /// The table's topic, name and primary key, looked up on its first change.
    fn table(&mut self, ev: &Event) -> Result<Arc<TableOut>> {
        let id = (
            ev.schema.clone().unwrap_or_else(|| Arc::from("")),
            ev.table.clone().unwrap_or_else(|| Arc::from("")),
        );
        if let Some(t) = self.tables.get(&id) {
            return Ok(Arc::clone(t));
        }
        let primary_key = match &mut self.key_lookup {
            Some(lookup) => lookup(&id.0, &id.1)?,
            None => Vec::new(),
        };
        let t = Arc::new(TableOut {
            topic: self.spec.topic_for(&id.0, &id.1),
            name: format!("{}.{}", id.0, id.1),
            primary_key,
        });
        self.tables.insert(id, Arc::clone(&t));
        Ok(t)
    }

    /// The message key of a row change: its primary-key columns when the table has a primary
    /// key and the row carries them all, else the replica-identity key the server sent.
    fn write_row_key(&mut self, ev: &Event, table: &TableOut) {
        if !table.primary_key.is_empty()
            && let Some(row) = ev.data.as_ref()
        {
            let cols: Option<Vec<crate::event::Column>> = table
                .primary_key
                .iter()
                .map(|name| row.columns.iter().find(|c| &*c.name == name).cloned())
                .collect();
            if let Some(columns) = cols {
                write_key(Some(&Row { columns }), &mut self.key);
                return;
            }
        }
        write_key(ev.key.as_ref(), &mut self.key);
    }

    fn kafka_error(&self, what: String) -> Error {
        Error::Kafka(format!(
            "{what} (brokers {}); nothing after the last acknowledged transaction was confirmed \
             to PostgreSQL: fix the broker or the topic and run walwatch again",
            self.spec.brokers
        ))
    }

    fn check_failed(&self) -> Result<()> {
        let failed = self
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match failed {
            Some(f) => Err(self.kafka_error(f)),
            None => Ok(()),
        }
    }

    /// Sends one message, waiting while the producer's queue is full (backpressure).
    /// `table` is the `schema.table` header ("" for BEGIN, COMMIT and MESSAGE).
    fn send(&mut self, topic: &str, table: &str, ev: &Event, key: bool, value: bool) -> Result<()> {
        let headers = headers(ev, table);
        let mut record: BaseRecord<'_, [u8], [u8], usize> =
            BaseRecord::with_opaque_to(topic, self.batch).headers(headers);
        if key {
            record = record.key(&self.key[..]);
        }
        if value {
            record = record.payload(&self.value[..]);
        }
        let mut waiting_since: Option<Instant> = None;
        let mut noticed = Instant::now();
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    let since = *waiting_since.get_or_insert_with(Instant::now);
                    if noticed.elapsed() >= WAIT_NOTICE {
                        tracing::warn!(
                            "Kafka's producer queue has been full for {:.0?}: waiting for the \
                             broker ({}) to take messages",
                            since.elapsed(),
                            self.spec.brokers
                        );
                        noticed = Instant::now();
                    }
                    self.producer.poll(Duration::from_millis(50));
                    self.check_failed()?;
                }
                Err((e, _)) => {
                    return Err(self.kafka_error(format!("cannot send to topic `{topic}`: {e}")));
                }
            }
        }
        self.sent += 1;
        *self
            .producer
            .context()
            .awaited
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(self.batch)
            .or_default() += 1;
        if self.sent.is_multiple_of(1024) {
            self.producer.poll(Duration::ZERO);
        }
        Ok(())
    }
}

/// `lsn`, `commit_lsn`, `xid`, `op` and `table` (schema-qualified) as message headers.
fn headers(ev: &Event, table: &str) -> OwnedHeaders {
    let lsn = ev.lsn.to_string();
    let commit = ev.commit_lsn.to_string();
    let xid = ev.xid.map(|x| x.to_string()).unwrap_or_default();
    OwnedHeaders::new_with_capacity(5)
        .insert(Header {
            key: "lsn",
            value: Some(&lsn),
        })
        .insert(Header {
            key: "commit_lsn",
            value: Some(&commit),
        })
        .insert(Header {
            key: "xid",
            value: Some(&xid),
        })
        .insert(Header {
            key: "op",
            value: Some(ev.op.as_str()),
        })
        .insert(Header {
            key: "table",
            value: Some(table),
        })
}

/// The row's key as a JSON object (replica identity / primary key columns).
fn write_key(key: Option<&Row>, out: &mut Vec<u8>) {
    out.clear();
    match key {
        Some(r) => crate::event_json::opt_row(out, Some(r)),
        None => out.extend_from_slice(b"null"),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl KafkaSink {
    /// Produces the messages of one event (queued in librdkafka).
    fn put(&mut self, ev: &Event) -> Result<()> {
        match ev.op {
            // Proxy events are for assertions; no pipeline hands one to a sink.
            Op::Proxy => Ok(()),
            Op::Begin | Op::Commit => {
                if ev.op == Op::Begin {
                    self.tx_counts.clear();
                }
                let Some(topic) = self.spec.tx_topic.clone() else {
                    return Ok(());
                };
                self.value.clear();
                match self.spec.envelope {
                    KafkaEnvelope::Native => ev.write_json(&mut self.value),
                    KafkaEnvelope::Debezium => {
                        debezium::write_tx(ev, &self.tx_counts, &mut self.value)
                    }
                }
                self.key.clear();
                string(&mut self.key, &format!("{}", ev.xid.unwrap_or(0)));
                self.send(&topic, "", ev, true, true)
            }
            Op::Message => {
                let Some(topic) = self.spec.message_topic.clone() else {
                    return Ok(());
                };
                self.value.clear();
                match self.spec.envelope {
                    KafkaEnvelope::Native => ev.write_json(&mut self.value),
                    KafkaEnvelope::Debezium => {
                        debezium::write(ev, &self.db, &self.spec.name, now_ms(), &mut self.value);
                    }
                }
                self.key.clear();
                let prefix = ev.message.as_ref().map_or("", |m| m.prefix.as_str());
                string(&mut self.key, prefix);
                self.send(&topic, "", ev, true, true)
            }
            Op::Insert | Op::Update | Op::Delete | Op::Truncate | Op::Read => {
                let table = self.table(ev)?;
                // A snapshot's rows belong to no transaction: the transaction topic's counts
                // are of changes.
                if ev.op != Op::Read {
                    match self.tx_counts.iter_mut().find(|(t, _)| *t == table.name) {
                        Some((_, n)) => *n += 1,
                        None => self.tx_counts.push((table.name.clone(), 1)),
                    }
                }
                self.value.clear();
                match self.spec.envelope {
                    KafkaEnvelope::Native => ev.write_json(&mut self.value),
                    KafkaEnvelope::Debezium => {
                        debezium::write(ev, &self.db, &self.spec.name, now_ms(), &mut self.value);
                    }
                }
                // TRUNCATE concerns the whole table: no row key.
                let keyed = ev.op != Op::Truncate;
                if keyed {
                    self.write_row_key(ev, &table);
                }
                self.send(&table.topic, &table.name, ev, keyed, true)?;
                if ev.op == Op::Delete && self.spec.tombstones {
                    // A tombstone: the same key, no value, so log compaction can drop the row.
                    self.send(&table.topic, &table.name, ev, true, false)?;
                }
                Ok(())
            }
        }
    }

    /// Waits until every message produced so far has a successful delivery report.
    fn flush(&mut self) -> Result<()> {
        let started = Instant::now();
        loop {
            self.check_failed()?;
            match self.producer.flush(WAIT_NOTICE) {
                Ok(()) => break,
                Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)) => {
                    tracing::warn!(
                        "waiting {:.0?} so far for Kafka ({}) to acknowledge {} message(s); \
                         the slot is not advanced meanwhile",
                        started.elapsed(),
                        self.spec.brokers,
                        self.producer.in_flight_count()
                    );
                }
                Err(e) => return Err(self.kafka_error(format!("flush failed: {e}"))),
            }
        }
        self.check_failed()
    }
}

impl KafkaSink {
    /// Takes the batches whose every message has a successful delivery report, oldest first,
    /// and the `end` of the last one: acknowledged in order, never past a batch still awaited.
    fn delivered(&mut self) -> Lsn {
        let mut awaited = self
            .producer
            .context()
            .awaited
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        while let Some(&(batch, end, _)) = self.unacked.front() {
            if awaited.get(&batch).is_some_and(|n| *n > 0) {
                break;
            }
            awaited.remove(&batch);
            self.unacked.pop_front();
            self.acked = self.acked.max(end);
        }
        self.acked
    }

    /// Says (every [`WAIT_NOTICE`]) that the oldest batch has waited long for the broker.
    fn notice_waiting(&mut self) {
        let Some(&(_, _, since)) = self.unacked.front() else {
            return;
        };
        if since.elapsed() >= WAIT_NOTICE && self.noticed.elapsed() >= WAIT_NOTICE {
            tracing::warn!(
                "waiting {:.0?} so far for Kafka ({}) to acknowledge {} message(s); the slot is \
                 not advanced meanwhile",
                since.elapsed(),
                self.spec.brokers,
                self.producer.in_flight_count()
            );
            self.noticed = Instant::now();
        }
    }
}

impl Sink for KafkaSink {
    fn write(&mut self, batch: &Batch) -> Result<()> {
        self.batch = self.batch.wrapping_add(1);
        self.unacked
            .push_back((self.batch, batch.end, Instant::now()));
        batch.events.iter().try_for_each(|e| self.put(e))
    }

    /// Acknowledged is acknowledged by the broker (`acks=all`): the position is the end of the
    /// last batch all of whose messages (and all earlier ones') have a successful delivery
    /// report. It does not wait for the rest: the next batches are produced meanwhile, so a
    /// broker round trip delays the confirmation, never the messages behind it.
    fn acknowledge(&mut self, written: Lsn) -> Result<Lsn> {
        self.producer.poll(Duration::ZERO);
        self.check_failed()?;
        let acked = self.delivered();
        self.notice_waiting();
        Ok(if self.unacked.is_empty() {
            written.max(acked)
        } else {
            acked
        })
    }

    fn held_from(&self) -> Option<u64> {
        // `batch` counts write calls from 1 (wrapping at usize::MAX, never reached).
        self.unacked.front().map(|&(batch, _, _)| batch as u64)
    }

    /// The end: waits for every delivery report.
    fn finish(&mut self, written: Lsn) -> Result<Lsn> {
        self.flush()?;
        self.delivered();
        Ok(written)
    }

    fn describe(&self) -> String {
        format!("kafka://{}", self.spec.brokers)
    }

    fn durable(&self) -> bool {
        true
    }
}
