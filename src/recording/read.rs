//! Reading a raw recording back: checked whole first, then streamed frame by frame, with the
//! catalog answers recorded after each frame served to the lookups that asked for them.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, Lines};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine;
use bytes::Bytes;

use super::{End, FORMAT, Header, Line, Lookup};
use crate::decode::{TypeKind, TypeRegistry};
use crate::error::{Error, Result};
use crate::event::TableName;
use crate::pg::stream::{ReplMessage, parse_copy_data};
use crate::pipeline::{Frame, KeyLookup, PartitionLookup, TypeLoader};
use crate::sink::arrow::DimsLookup;

/// A recording whose every line was read and checked: its header, and how it ended.
#[derive(Debug)]
pub struct Reading {
    path: PathBuf,
    pub header: Header,
    pub end: End,
    /// The sinks' lookups, in the order they were answered per table (see [`SinkAnswers`]).
    sink_answers: SinkAnswers,
}

/// The sinks' own lookups (the Kafka sink's keys, the Arrow sink's array dimensions), read
/// from the whole file before the replay. A sink runs on a thread of its own, so where its
/// answer lands among the frames depends on timing; what does not is the order of its asks
/// for one table. So the k-th ask for a table gets the k-th answer recorded for it (the last
/// one again past the end).
#[derive(Clone, Debug, Default)]
struct SinkAnswers {
    kafka_keys: HashMap<(String, String), VecDeque<Vec<String>>>,
    dims: HashMap<(String, String), VecDeque<HashMap<String, usize>>>,
}

impl SinkAnswers {
    fn add(&mut self, lookup: &Lookup) {
        match lookup {
            Lookup::KafkaKey {
                schema,
                table,
                answer,
            } => self
                .kafka_keys
                .entry((schema.clone(), table.clone()))
                .or_default()
                .push_back(answer.clone()),
            Lookup::ArrayDims {
                schema,
                table,
                answer,
            } => self
                .dims
                .entry((schema.clone(), table.clone()))
                .or_default()
                .push_back(answer.iter().map(|(k, v)| (k.clone(), *v)).collect()),
            _ => {}
        }
    }
}

/// The next answer of a queue: taken, except the last, which stays for later asks.
fn next_answer<T: Clone>(queue: &mut VecDeque<T>) -> Option<T> {
    if queue.len() > 1 {
        queue.pop_front()
    } else {
        queue.front().cloned()
    }
}

impl Reading {
    /// Reads the whole file once: the header first, every line well-formed, frames numbered
    /// without a gap, every payload a replication message, and the end line last. A recording
    /// cut anywhere fails here, before a replay writes anything.
    pub fn open(path: &Path) -> Result<Reading> {
        let mut lines = Numbered::open(path)?;
        let header = match lines.next()? {
            Some(Line::Header(h)) => h,
            Some(_) => return Err(lines.damaged("the first line is not a recording header")),
            None => return Err(lines.damaged("the file is empty")),
        };
        if header.walwatch_recording != FORMAT {
            return Err(lines.damaged(&format!(
                "it is in recording format {}, and this walwatch reads format {FORMAT}: \
                 replay it with the walwatch version that made it ({})",
                header.walwatch_recording, header.walwatch
            )));
        }
        let mut frames = 0;
        let mut sink_answers = SinkAnswers::default();
        loop {
            match lines.next()? {
                None => {
                    return Err(lines.damaged(&format!(
                        "it ends after {frames} frames without its end line: the recording is \
                         truncated (cut short, or walwatch was killed while recording)"
                    )));
                }
                Some(Line::Copy { n, data }) => {
                    frames = lines.numbered(frames, n)?;
                    lines.payload(&data)?;
                }
                Some(Line::Reset { n }) => frames = lines.numbered(frames, n)?,
                Some(Line::Lookup(l)) => sink_answers.add(&l),
                Some(Line::Header(_)) => return Err(lines.damaged("a second header")),
                Some(Line::End(end)) => {
                    if end.frames != frames {
                        return Err(lines.damaged(&format!(
                            "its end line counts {} frames, but {frames} came before it",
                            end.frames
                        )));
                    }
                    if lines.next()?.is_some() {
                        return Err(lines.damaged("lines follow its end line"));
                    }
                    return Ok(Reading {
                        path: path.to_path_buf(),
                        header,
                        end,
                        sink_answers,
                    });
                }
            }
        }
    }

    /// The frames, from the first, with the lookups they answer.
    pub fn source(&self) -> Result<Source> {
        let mut lines = Numbered::open(&self.path)?;
        lines.next()?; // the header, read by `open`
        let types = self.header.types.iter().cloned().collect();
        Ok(Source {
            lines,
            started: false,
            pending: None,
            answers: Arc::new(Mutex::new(Answers {
                sink: self.sink_answers.clone(),
                ..Answers::default()
            })),
            initial_types: Some(types),
        })
    }
}

/// The lines of a recording with their numbers, for errors that say where.
struct Numbered {
    path: PathBuf,
    lines: Lines<BufReader<File>>,
    at: u64,
}

impl Numbered {
    fn open(path: &Path) -> Result<Numbered> {
        let file = File::open(path).map_err(|source| Error::File {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Numbered {
            path: path.to_path_buf(),
            lines: BufReader::new(file).lines(),
            at: 0,
        })
    }

    fn next(&mut self) -> Result<Option<Line>> {
        let Some(text) = self.lines.next() else {
            return Ok(None);
        };
        self.at += 1;
        let text = text.map_err(|source| match source.kind() {
            std::io::ErrorKind::InvalidData => {
                self.damaged(&format!("line {} is not UTF-8 text", self.at))
            }
            _ => Error::File {
                path: self.path.clone(),
                source,
            },
        })?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| self.damaged(&format!("line {} is not a recording line ({e})", self.at)))
    }

    /// Checks that frame `n` follows frame `before`.
    fn numbered(&self, before: u64, n: u64) -> Result<u64> {
        if n != before + 1 {
            return Err(self.damaged(&format!(
                "line {} holds frame {n} where frame {} belongs: lines are missing or reordered",
                self.at,
                before + 1
            )));
        }
        Ok(n)
    }

    fn payload(&self, data: &str) -> Result<ReplMessage> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| {
                self.damaged(&format!(
                    "line {}: the payload is not base64 ({e})",
                    self.at
                ))
            })?;
        parse_copy_data(Bytes::from(bytes)).map_err(|e| {
            self.damaged(&format!(
                "line {}: the payload is not a replication message ({e})",
                self.at
            ))
        })
    }

    fn damaged(&self, what: &str) -> Error {
        Error::Recording {
            path: self.path.clone(),
            message: format!("not a usable walwatch recording: {what}"),
        }
    }
}

/// The recorded answers so far, the latest for each question: those of the frames handled.
#[derive(Default)]
struct Answers {
    types: Option<Vec<(u32, TypeKind)>>,
    partitions: HashMap<u32, Vec<(String, String)>>,
    keys: HashMap<u32, Vec<String>>,
    /// Read whole before the replay: not in frame order.
    sink: SinkAnswers,
    /// Tables an Arrow replay was told about without dimensions (warned once each).
    warned: std::collections::HashSet<(String, String)>,
}

impl Answers {
    fn add(&mut self, lookup: Lookup) {
        match lookup {
            Lookup::Types { answer } => self.types = Some(answer),
            Lookup::Partitions { oid, answer } => {
                self.partitions.insert(oid, answer);
            }
            Lookup::PrimaryKey { oid, answer } => {
                self.keys.insert(oid, answer);
            }
            // Answered from the whole file (`SinkAnswers`).
            Lookup::KafkaKey { .. } | Lookup::ArrayDims { .. } => {}
        }
    }
}

/// The frames of a recording, in order, and the lookups a replay's decoder and sinks make,
/// answered from it.
pub struct Source {
    lines: Numbered,
    started: bool,
    /// The next frame, read ahead so that the answers recorded after the current one are in.
    pending: Option<Frame>,
    answers: Arc<Mutex<Answers>>,
    initial_types: Option<TypeRegistry>,
}

impl Source {
    /// The type registry the recorded run started with.
    pub fn initial_types(&mut self) -> TypeRegistry {
        self.initial_types.take().unwrap_or_default()
    }

    /// The next frame, once the answers its handling needs are in; `None` after the last.
    pub fn next_frame(&mut self) -> Result<Option<Frame>> {
        if !self.started {
            self.started = true;
            self.pending = self.read_to_frame()?;
        }
        let Some(frame) = self.pending.take() else {
            return Ok(None);
        };
        self.pending = self.read_to_frame()?;
        Ok(Some(frame))
    }

    /// Reads the answers up to the next frame (kept) or the end.
    fn read_to_frame(&mut self) -> Result<Option<Frame>> {
        loop {
            match self.lines.next()? {
                Some(Line::Copy { data, .. }) => {
                    return Ok(Some(Frame::Message(self.lines.payload(&data)?)));
                }
                Some(Line::Reset { .. }) => return Ok(Some(Frame::Reset)),
                Some(Line::Lookup(l)) => lock(&self.answers).add(l),
                Some(Line::End(_)) | None => return Ok(None),
                Some(Line::Header(_)) => return Err(self.lines.damaged("a second header")),
            }
        }
    }

    /// Type registry reloads, as recorded.
    pub fn type_loader(&self) -> TypeLoader {
        let answers = self.answers.clone();
        let path = self.lines.path.clone();
        Box::new(move || match &lock(&answers).types {
            Some(t) => Ok(t.iter().cloned().collect()),
            None => Err(missing_at(&path, "a reload of the type registry".into())),
        })
    }

    /// Partition ancestors, as recorded.
    pub fn partition_lookup(&self) -> PartitionLookup {
        let answers = self.answers.clone();
        let path = self.lines.path.clone();
        Box::new(move |oid| match lock(&answers).partitions.get(&oid) {
            Some(list) => Ok(list
                .iter()
                .map(|(s, t)| TableName {
                    schema: s.as_str().into(),
                    table: t.as_str().into(),
                })
                .collect()),
            None => Err(missing_at(
                &path,
                format!("the partitions of relation OID {oid}"),
            )),
        })
    }

    /// Primary keys, as recorded.
    pub fn key_lookup(&self) -> KeyLookup {
        let answers = self.answers.clone();
        let path = self.lines.path.clone();
        Box::new(move |oid| match lock(&answers).keys.get(&oid) {
            Some(k) => Ok(k.clone()),
            None => Err(missing_at(
                &path,
                format!("the primary key of relation OID {oid}"),
            )),
        })
    }

    /// The Kafka sink's keys: as recorded, else none (its message key is then the event's
    /// `key`, which is the primary key already).
    pub fn kafka_keys(&self) -> crate::sink::kafka::KeyLookup {
        let answers = self.answers.clone();
        Box::new(move |schema, table| {
            let key = (schema.to_string(), table.to_string());
            Ok(lock(&answers)
                .sink
                .kafka_keys
                .get_mut(&key)
                .and_then(next_answer)
                .unwrap_or_default())
        })
    }

    /// The Arrow sink's array dimensions: as recorded, else one dimension per array column,
    /// with a warning (a recording made without an Arrow sink does not hold them).
    pub fn array_dims(&self) -> DimsLookup {
        let answers = self.answers.clone();
        Box::new(move |schema, table| {
            let key = (schema.to_string(), table.to_string());
            let mut answers = lock(&answers);
            if let Some(d) = answers.sink.dims.get_mut(&key).and_then(next_answer) {
                return Ok(d);
            }
            if answers.warned.insert(key) {
                tracing::warn!(
                    "the recording does not hold the array dimensions of {schema}.{table} (it \
                     was made without an Arrow sink): its array columns are written as lists of \
                     one dimension"
                );
            }
            Ok(HashMap::new())
        })
    }
}

fn missing_at(path: &Path, what: String) -> Error {
    Error::Recording {
        path: path.to_path_buf(),
        message: format!(
            "the replay needs {what}, which the recording does not hold: replay with the \
             walwatch version that recorded it, or record again and report the difference"
        ),
    }
}

fn lock(answers: &Mutex<Answers>) -> std::sync::MutexGuard<'_, Answers> {
    answers.lock().unwrap_or_else(|p| p.into_inner())
}
