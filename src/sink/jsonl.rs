//! JSONL: one event per line (schema in `schemas/event.schema.json`), to stdout or a file.
//!
//! A file is opened for appending and fsync'd on `flush`, so what the pipeline confirms to the
//! server is on disk. Standard output is flushed but cannot be made durable.
//!
//! Resuming a file (a permanent slot, `--output FILE` again after a stop or a crash): the file's
//! last line may be torn (the process died mid-write, or the disk filled); it is cut back to the
//! last whole line. Then the events of the last transaction in the file are counted, and the
//! sink skips what the replayed stream repeats (see [`super::resume`]), so the file holds every
//! change exactly once.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::resume::{Resume, Tally};
use super::{Batch, Sink};
use crate::error::{Error, Result};
use crate::event::{Event, Lsn};
use crate::event_read::{Envelope, parse_line, wrap};

enum Target {
    Stdout(BufWriter<io::Stdout>),
    File { path: PathBuf, out: BufWriter<File> },
}

pub struct JsonlSink {
    target: Target,
    line: Vec<u8>,
    envelope: Envelope,
    /// What the file held when it was opened for resuming.
    held: Option<Tally>,
    resume: Resume,
    /// Replayed events skipped because the file held them; logged once the replay is past.
    skipped: u64,
}

impl JsonlSink {
    pub fn stdout(envelope: Envelope) -> JsonlSink {
        JsonlSink {
            target: Target::Stdout(BufWriter::with_capacity(1 << 16, io::stdout())),
            line: Vec::with_capacity(512),
            envelope,
            held: None,
            resume: Resume::default(),
            skipped: 0,
        }
    }

    /// Opens (creating if needed) `path` for appending.
    pub fn file(path: &Path, envelope: Envelope) -> Result<JsonlSink> {
        let file = open_append(path)?;
        Ok(JsonlSink {
            target: Target::File {
                path: path.to_path_buf(),
                out: BufWriter::with_capacity(1 << 16, file),
            },
            line: Vec::with_capacity(512),
            envelope,
            held: None,
            resume: Resume::default(),
            skipped: 0,
        })
    }

    /// Opens `path` to continue it: repairs a torn last line, reads what the file holds, and
    /// skips those events when the stream replays them.
    pub fn resume_file(path: &Path, envelope: Envelope) -> Result<JsonlSink> {
        let file_err = |source| Error::File {
            path: path.to_path_buf(),
            source,
        };
        let held = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(mut f) => {
                repair_torn_tail(&mut f, path).map_err(file_err)?;
                last_tally(&mut f, path)?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Tally::default(),
            Err(e) => return Err(file_err(e)),
        };
        let mut sink = JsonlSink::file(path, envelope)?;
        if !held.is_empty() {
            tracing::info!(
                "{} holds events up to commit {} ({} of that transaction): skipping what the slot replays",
                path.display(),
                held.key,
                held.count
            );
            sink.held = Some(held);
            sink.resume = Resume::after(held);
        }
        Ok(sink)
    }

    fn sink_error(&self, source: io::Error) -> Error {
        Error::Sink {
            target: self.describe(),
            source,
        }
    }
}

/// Opens `path` for appending. A file created here has its directory entry fsync'd too: a
/// crash must not lose the file whose contents are about to be confirmed.
fn open_append(path: &Path) -> Result<File> {
    let err = |source| Error::File {
        path: path.to_path_buf(),
        source,
    };
    let existed = path.exists();
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(err)?;
    if !existed {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        // A directory that cannot be opened or synced (some special file systems) only
        // loses the extra guarantee.
        if let Ok(d) = File::open(dir)
            && let Err(e) = d.sync_all()
        {
            tracing::debug!("cannot fsync directory {}: {e}", dir.display());
        }
    }
    Ok(file)
}

/// Block size for reading a file backwards.
const BLOCK: u64 = 64 * 1024;

/// Cuts the file back to its last newline when the last line is incomplete.
fn repair_torn_tail(f: &mut File, path: &Path) -> io::Result<()> {
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    let mut last = [0u8; 1];
    f.seek(SeekFrom::Start(len - 1))?;
    f.read_exact(&mut last)?;
    if last[0] == b'\n' {
        return Ok(());
    }
    let mut end = len;
    let mut keep = 0;
    let mut buf = vec![0u8; BLOCK as usize];
    while end > 0 {
        let start = end.saturating_sub(BLOCK);
        let n = (end - start) as usize;
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut buf[..n])?;
        if let Some(i) = buf[..n].iter().rposition(|&b| b == b'\n') {
            keep = start + i as u64 + 1;
            break;
        }
        end = start;
    }
    tracing::warn!(
        "{}: the last line was cut off ({} bytes, the previous run stopped mid-write): removing it; the slot replays that event",
        path.display(),
        len - keep
    );
    f.set_len(keep)?;
    f.sync_all()
}

/// Reads whole lines backwards from the end and counts the events of the last key.
fn last_tally(f: &mut File, path: &Path) -> Result<Tally> {
    let io_err = |source| Error::File {
        path: path.to_path_buf(),
        source,
    };
    let len = f.metadata().map_err(io_err)?.len();
    let mut tally = Tally::default();
    // Bytes of lines not yet complete (their start lies in an earlier block), in file order.
    let mut carry: Vec<u8> = Vec::new();
    let mut end = len;
    let mut buf = vec![0u8; BLOCK as usize];
    let mut lines_from_end = 0u64;
    loop {
        let start = end.saturating_sub(BLOCK);
        let n = (end - start) as usize;
        f.seek(SeekFrom::Start(start)).map_err(io_err)?;
        f.read_exact(&mut buf[..n]).map_err(io_err)?;
        let mut chunk = buf[..n].to_vec();
        chunk.extend_from_slice(&carry);
        // Every line but the first is whole; the first is whole only at the file's start.
        let mut lines: Vec<&[u8]> = chunk.split(|&b| b == b'\n').collect();
        let first = if start > 0 {
            lines.remove(0).to_vec()
        } else {
            Vec::new()
        };
        for line in lines.iter().rev() {
            if line.is_empty() {
                continue;
            }
            lines_from_end += 1;
            let text = std::str::from_utf8(line).map_err(|_| unreadable(path, lines_from_end))?;
            let ev = parse_line(text).map_err(|e| {
                Error::Config(format!(
                    "{}: line {lines_from_end} from the end: {e}; walwatch cannot tell what this \
                     file already holds: write to a new file",
                    path.display()
                ))
            })?;
            let key = Tally::key_of(&ev);
            if tally.is_empty() {
                tally = Tally { key, count: 1 };
            } else if key == tally.key {
                tally.count += 1;
            } else {
                return Ok(tally);
            }
        }
        if start == 0 {
            return Ok(tally);
        }
        carry = first;
        end = start;
    }
}

fn unreadable(path: &Path, n: u64) -> Error {
    Error::Config(format!(
        "{}: line {n} from the end is not UTF-8: walwatch cannot tell what this file already \
         holds; write to a new file",
        path.display()
    ))
}

impl JsonlSink {
    /// Writes one event (buffered), or skips it when a resumed file already holds it.
    fn put(&mut self, event: &Event) -> Result<()> {
        if !self.resume.admit(event) {
            self.skipped += 1;
            return Ok(());
        }
        if self.skipped > 0 {
            tracing::info!(
                "{}: skipped {} replayed events the file already held",
                self.describe(),
                self.skipped
            );
            self.skipped = 0;
        }
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
}

impl Sink for JsonlSink {
    fn write(&mut self, batch: &Batch) -> Result<()> {
        batch.events.iter().try_for_each(|e| self.put(e))
    }

    /// A file is fsync'd (`sync_data`: the length is data too), so what it acknowledges
    /// survives a crash; standard output is flushed, which is all it can be.
    fn acknowledge(&mut self, written: Lsn) -> Result<Lsn> {
        let res = match &mut self.target {
            Target::Stdout(out) => out.flush(),
            Target::File { out, .. } => out.flush().and_then(|()| out.get_ref().sync_data()),
        };
        res.map_err(|e| self.sink_error(e))?;
        Ok(written)
    }

    fn describe(&self) -> String {
        match &self.target {
            Target::Stdout(_) => "standard output".to_string(),
            Target::File { path, .. } => path.display().to_string(),
        }
    }

    fn durable(&self) -> bool {
        matches!(self.target, Target::File { .. })
    }

    fn held(&self) -> Option<Tally> {
        self.held
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Op;

    fn ev(commit: u64, lsn: u64) -> Event {
        let mut e = Event::new(Op::Insert, Lsn(lsn));
        e.commit_lsn = Lsn(commit);
        e.schema = Some("public".into());
        e.table = Some("t".into());
        e
    }

    fn write_all(path: &Path, events: &[Event], resume: bool) {
        let mut s = if resume {
            JsonlSink::resume_file(path, Envelope::Native).unwrap()
        } else {
            JsonlSink::file(path, Envelope::Native).unwrap()
        };
        s.write(&Batch::new(events.to_vec(), Lsn::ZERO)).unwrap();
        s.acknowledge(Lsn::ZERO).unwrap();
    }

    fn lsns(path: &Path) -> Vec<(u64, u64)> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| {
                let e = parse_line(l).unwrap();
                (e.commit_lsn.0, e.lsn.0)
            })
            .collect()
    }

    #[test]
    fn resuming_repairs_a_torn_line_and_skips_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        // First run: txn 100 whole, two rows of txn 200 (sharing an lsn), then a torn line.
        write_all(
            &path,
            &[ev(100, 90), ev(100, 91), ev(200, 150), ev(200, 150)],
            false,
        );
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"type":"wal","op":"INS"#).unwrap();
        drop(f);
        // The slot replays from before txn 100.
        let replay = [
            ev(100, 90),
            ev(100, 91),
            ev(200, 150),
            ev(200, 150),
            ev(200, 150),
            ev(300, 250),
        ];
        write_all(&path, &replay, true);
        assert_eq!(
            lsns(&path),
            vec![
                (100, 90),
                (100, 91),
                (200, 150),
                (200, 150),
                (200, 150),
                (300, 250)
            ]
        );
        // A second resume with nothing new adds nothing.
        write_all(&path, &replay, true);
        assert_eq!(lsns(&path).len(), 6);
    }

    #[test]
    fn the_tally_spans_blocks_and_a_torn_file_of_one_line_empties() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.jsonl");
        let mut events: Vec<Event> = (0..50).map(|i| ev(10, i)).collect();
        events.extend((0..3000).map(|i| ev(20, 100 + i)));
        write_all(&path, &events, false);
        assert!(std::fs::metadata(&path).unwrap().len() > 2 * BLOCK);
        let s = JsonlSink::resume_file(&path, Envelope::Native).unwrap();
        assert_eq!(
            s.held(),
            Some(Tally {
                key: Lsn(20),
                count: 3000
            })
        );

        let torn = dir.path().join("torn.jsonl");
        std::fs::write(&torn, b"{\"type\":\"wal\"").unwrap();
        let s = JsonlSink::resume_file(&torn, Envelope::Native).unwrap();
        assert_eq!(s.held(), None);
        assert_eq!(std::fs::metadata(&torn).unwrap().len(), 0);
    }

    #[test]
    fn a_foreign_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.txt");
        std::fs::write(&path, "hello\n").unwrap();
        let err = JsonlSink::resume_file(&path, Envelope::Native)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("not a walwatch event") && err.contains("new file"),
            "{err}"
        );
    }
}
