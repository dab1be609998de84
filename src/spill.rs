//! Spill files for large in-progress transactions (the file-backed [`Spill`] the decoder is
//! given; the decoder itself does no I/O).
//!
//! A streamed transaction (protocol v2+) arrives in pieces long before it commits, and nothing
//! of it may be written to a sink before the commit. Kept in memory, a 5,000,000-row
//! transaction would need about 500 MB; above the threshold its full chunks go to an anonymous
//! temporary file instead (created unlinked, so nothing is left behind however walwatch ends),
//! and are read back one chunk at a time at commit.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use crate::decode::{Spill, SpillStore};

/// Spill policy: the threshold, and the directory for spill files.
#[derive(Clone, Debug)]
pub struct Spiller {
    threshold: usize,
    dir: Option<PathBuf>,
}

impl Spiller {
    /// `dir: None` is the system temp dir ($TMPDIR, else /tmp).
    pub fn new(threshold: usize, dir: Option<PathBuf>) -> Spiller {
        Spiller { threshold, dir }
    }
}

impl Spill for Spiller {
    fn threshold(&self) -> usize {
        self.threshold
    }

    fn create(&self) -> io::Result<Box<dyn SpillStore>> {
        let dir = self.dir.clone().unwrap_or_else(std::env::temp_dir);
        let file = tempfile::tempfile_in(&dir)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
        Ok(Box::new(SpillFile { file, len: 0, dir }))
    }
}

/// One transaction's spill file: chunks appended at the end, read back by offset.
#[derive(Debug)]
struct SpillFile {
    file: File,
    len: u64,
    dir: PathBuf,
}

impl SpillStore for SpillFile {
    fn append(&mut self, chunk: &[u8]) -> io::Result<u64> {
        let at = self.len;
        self.file
            .write_all_at(chunk, at)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.dir.display())))?;
        self.len += chunk.len() as u64;
        Ok(at)
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_come_back_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spiller::new(1, Some(dir.path().to_path_buf()));
        let mut store = s.create().unwrap();
        let a = store.append(b"hello").unwrap();
        let b = store.append(b"world!").unwrap();
        let mut buf = [0u8; 6];
        store.read_at(b, &mut buf).unwrap();
        assert_eq!(&buf, b"world!");
        store.read_at(a, &mut buf[..5]).unwrap();
        assert_eq!(&buf[..5], b"hello");
        // The file is unlinked: nothing is left in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let missing = Spiller::new(1, Some(dir.path().join("nope")));
        let err = missing.create().unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
    }
}
