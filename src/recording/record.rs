//! Writing a raw recording while a run streams (see the module above).
//!
//! Every write happens on the decode thread, in the order it handles frames and makes lookups,
//! which is the order a replay needs them in. The lock is never contended.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine;

use super::{End, Header, Line, Lookup};
use crate::decode::TypeRegistry;
use crate::error::{Error, Result};
use crate::pg::stream::encode_copy_data;
use crate::pipeline::{Frame, KeyLookup, PartitionLookup, Tap, TypeLoader};
use crate::sink::arrow::DimsLookup;

/// The writer of one recording; clones share it (the frame tap and each lookup hold one).
#[derive(Clone)]
pub struct Recorder(Arc<Mutex<Inner>>);

struct Inner {
    path: PathBuf,
    out: BufWriter<File>,
    frames: u64,
    begun: bool,
    ended: bool,
}

impl Recorder {
    /// Creates (or truncates) `path`: before anything else, so an unwritable path is
    /// reported before the run sets anything up on the server. [`Recorder::begin`] writes the
    /// header once the stream is about to start.
    pub fn create(path: &Path) -> Result<Recorder> {
        let file = File::create(path).map_err(|source| Error::File {
            path: path.to_path_buf(),
            source,
        })?;
        let recorder = Recorder(Arc::new(Mutex::new(Inner {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
            frames: 0,
            begun: false,
            ended: false,
        })));
        Ok(recorder)
    }

    /// Writes the header: the first line, before any frame.
    pub fn begin(&self, header: &Header) -> Result<()> {
        self.with(|inner| {
            inner.begun = true;
            inner.line(&Line::Header(header.clone()))
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> Result<T>) -> Result<T> {
        // A panic while holding it would have ended the decode thread already.
        let mut inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut inner)
    }

    fn lookup(&self, lookup: Lookup) -> Result<()> {
        self.with(|inner| inner.line(&Line::Lookup(lookup)))
    }

    /// The type loader, its answers recorded.
    pub fn types(&self, mut inner: TypeLoader) -> TypeLoader {
        let me = self.clone();
        Box::new(move || {
            let types: TypeRegistry = inner()?;
            me.lookup(Lookup::Types {
                answer: types.entries(),
            })?;
            Ok(types)
        })
    }

    /// The partition lookup, its answers recorded.
    pub fn partitions(&self, mut inner: PartitionLookup) -> PartitionLookup {
        let me = self.clone();
        Box::new(move |oid| {
            let answer = inner(oid)?;
            me.lookup(Lookup::Partitions {
                oid,
                answer: answer
                    .iter()
                    .map(|t| (t.schema.to_string(), t.table.to_string()))
                    .collect(),
            })?;
            Ok(answer)
        })
    }

    /// The primary-key lookup, its answers recorded.
    pub fn primary_keys(&self, mut inner: KeyLookup) -> KeyLookup {
        let me = self.clone();
        Box::new(move |oid| {
            let answer = inner(oid)?;
            me.lookup(Lookup::PrimaryKey {
                oid,
                answer: answer.clone(),
            })?;
            Ok(answer)
        })
    }

    /// The Kafka sink's key lookup, its answers recorded.
    pub fn kafka_keys(
        &self,
        mut inner: crate::sink::kafka::KeyLookup,
    ) -> crate::sink::kafka::KeyLookup {
        let me = self.clone();
        Box::new(move |schema, table| {
            let answer = inner(schema, table)?;
            me.lookup(Lookup::KafkaKey {
                schema: schema.to_string(),
                table: table.to_string(),
                answer: answer.clone(),
            })?;
            Ok(answer)
        })
    }

    /// The Arrow sink's dimensions lookup, its answers recorded.
    pub fn array_dims(&self, mut inner: DimsLookup) -> DimsLookup {
        let me = self.clone();
        Box::new(move |schema, table| {
            let answer = inner(schema, table)?;
            me.lookup(Lookup::ArrayDims {
                schema: schema.to_string(),
                table: table.to_string(),
                answer: answer.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            })?;
            Ok(answer)
        })
    }
}

impl Tap for Recorder {
    fn frame(&mut self, frame: &Frame) -> Result<()> {
        self.with(|inner| {
            inner.frames += 1;
            let n = inner.frames;
            let line = match frame {
                Frame::Message(msg) => Line::Copy {
                    n,
                    data: base64::engine::general_purpose::STANDARD.encode(encode_copy_data(msg)),
                },
                Frame::Reset => Line::Reset { n },
                // Config refuses --raw with --snapshot: a raw recording is the stream's bytes.
                Frame::Rows(_) => {
                    return Err(Error::Config(
                        "a raw recording holds the replication stream only: take the snapshot \
                         in a run without --raw"
                            .into(),
                    ));
                }
            };
            inner.line(&line)
        })
    }

    fn sync(&mut self) -> Result<()> {
        self.with(Inner::flush)
    }

    fn finish(&mut self, outcome: &Result<()>) -> Result<()> {
        self.with(|inner| {
            if inner.ended {
                return Ok(());
            }
            inner.ended = true;
            let end = End {
                frames: inner.frames,
                error: outcome.as_ref().err().map(ToString::to_string),
            };
            inner.line(&Line::End(end))?;
            inner.flush()?;
            inner.out.get_ref().sync_all().map_err(|e| inner.error(e))?;
            tracing::info!(
                "raw recording {} written: {} frames",
                inner.path.display(),
                inner.frames
            );
            Ok(())
        })
    }
}

impl Inner {
    fn line(&mut self, line: &Line) -> Result<()> {
        if !self.begun {
            // Nothing is looked up or streamed before the header is known.
            return Err(Error::Recording {
                path: self.path.clone(),
                message: "a line before the header: this is a bug in walwatch, please report it"
                    .into(),
            });
        }
        let json = serde_json::to_string(line).map_err(|e| Error::Recording {
            path: self.path.clone(),
            message: format!("cannot encode a line: {e}"),
        })?;
        self.out
            .write_all(json.as_bytes())
            .and_then(|()| self.out.write_all(b"\n"))
            .map_err(|e| self.error(e))
    }

    fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(|e| self.error(e))
    }

    fn error(&self, source: std::io::Error) -> Error {
        Error::File {
            path: self.path.clone(),
            source,
        }
    }
}
