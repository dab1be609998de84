//! JSONL: one event per line (schema in `schemas/event.schema.json`), to stdout or a file.
//!
//! A file is opened for appending and fsync'd on `flush`, so what the pipeline confirms to the
//! server is on disk. Standard output is flushed but cannot be made durable.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use super::Sink;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::event_read::{Envelope, wrap};

enum Target {
    Stdout(BufWriter<io::Stdout>),
    File { path: PathBuf, out: BufWriter<File> },
}

pub struct JsonlSink {
    target: Target,
    line: Vec<u8>,
    envelope: Envelope,
}

impl JsonlSink {
    pub fn stdout(envelope: Envelope) -> JsonlSink {
        JsonlSink {
            target: Target::Stdout(BufWriter::with_capacity(1 << 16, io::stdout())),
            line: Vec::with_capacity(512),
            envelope,
        }
    }

    /// Opens (creating if needed) `path` for appending.
    pub fn file(path: &Path, envelope: Envelope) -> Result<JsonlSink> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| Error::File {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(JsonlSink {
            target: Target::File {
                path: path.to_path_buf(),
                out: BufWriter::with_capacity(1 << 16, file),
            },
            line: Vec::with_capacity(512),
            envelope,
        })
    }

    fn sink_error(&self, source: io::Error) -> Error {
        Error::Sink {
            target: self.describe(),
            source,
        }
    }
}

impl Sink for JsonlSink {
    fn write(&mut self, event: &Event) -> Result<()> {
        self.line.clear();
        event.write_json(&mut self.line);
        wrap(&mut self.line, self.envelope);
        self.line.push(b'\n');
        let res = match &mut self.target {
            Target::Stdout(out) => out.write_all(&self.line),
            Target::File { out, .. } => out.write_all(&self.line),
        };
        res.map_err(|e| self.sink_error(e))
    }

    fn flush(&mut self) -> Result<()> {
        let res = match &mut self.target {
            Target::Stdout(out) => out.flush(),
            Target::File { out, .. } => out.flush().and_then(|()| out.get_ref().sync_data()),
        };
        res.map_err(|e| self.sink_error(e))
    }

    fn describe(&self) -> String {
        match &self.target {
            Target::Stdout(_) => "standard output".to_string(),
            Target::File { path, .. } => path.display().to_string(),
        }
    }
}
