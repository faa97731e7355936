//! A bounded source reading one JSON object per line from a local file; one partition, read in
//! file order, position = line number.

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use super::{Polled, Records, Result, Source, SourceError};

/// Bytes read from the file at a time.
const CHUNK: usize = 4 << 20;

pub struct FileSource {
    name: String,
    path: PathBuf,
    file: Option<File>,
    /// Bytes read and not yet split into records, from `consumed` on.
    buf: Vec<u8>,
    consumed: usize,
    eof: bool,
    chunk: usize,
    line: i64,
    skip_to: i64,
    done: bool,
}

impl FileSource {
    pub fn new(name: &str, path: PathBuf) -> FileSource {
        FileSource {
            name: name.to_string(),
            path,
            file: None,
            buf: Vec::new(),
            consumed: 0,
            eof: false,
            chunk: CHUNK,
            line: 0,
            skip_to: 0,
            done: false,
        }
    }

    fn err(&self, message: String) -> SourceError {
        SourceError::Failed { source_name: self.name.clone(), message }
    }

    /// Reads the next chunk after the unconsumed bytes; sets `eof` at the end of the file.
    fn refill(&mut self) -> Result<()> {
        self.buf.drain(..self.consumed);
        self.consumed = 0;
        let len = self.buf.len();
        self.buf.resize(len + self.chunk, 0);
        let file = self.file.as_mut().expect("opened before reading");
        let n = loop {
            match file.read(&mut self.buf[len..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.buf.truncate(len);
                    return Err(self.err(format!("reading {}: {e}", self.path.display())));
                }
            }
        };
        self.buf.truncate(len + n);
        self.eof = n == 0;
        Ok(())
    }

    /// The next line (without its newline), or `None` at the end of the file.
    fn next_line(&mut self) -> Result<Option<(usize, usize)>> {
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buf[self.consumed..]) {
                let at = (self.consumed, self.consumed + i);
                self.consumed += i + 1;
                return Ok(Some(at));
            }
            if self.eof {
                // A last line without a newline.
                if self.consumed < self.buf.len() {
                    let at = (self.consumed, self.buf.len());
                    self.consumed = self.buf.len();
                    return Ok(Some(at));
                }
                return Ok(None);
            }
            self.refill()?;
        }
    }
}

impl Source for FileSource {
    fn partitions(&self) -> Vec<u32> {
        vec![0]
    }

    fn seek(&mut self, _partition: u32, position: i64) -> Result<()> {
        self.skip_to = position;
        Ok(())
    }

    fn poll(&mut self, max: usize, _wait: Duration) -> Result<Polled> {
        if self.done {
            return Ok(Polled::default());
        }
        if self.file.is_none() {
            let f =
                File::open(&self.path).map_err(|e| self.err(format!("cannot open {}: {e}", self.path.display())))?;
            self.file = Some(f);
        }
        let now = chrono::Utc::now().timestamp_millis();
        let mut recs = Records::with_capacity(max, max * 512);
        while recs.len() < max {
            let Some((from, to)) = self.next_line()? else {
                self.done = true;
                break;
            };
            let line = self.line;
            self.line += 1;
            let text = self.buf[from..to].trim_ascii();
            if line < self.skip_to || text.is_empty() {
                continue;
            }
            recs.push(text, line, now);
        }
        Ok(Polled { batches: if recs.is_empty() { vec![] } else { vec![(0, recs)] } })
    }

    fn finished(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(src: &mut FileSource, max: usize) -> Vec<(i64, String)> {
        let mut out = Vec::new();
        while !src.finished() {
            for (_, recs) in src.poll(max, Duration::ZERO).unwrap().batches {
                for i in 0..recs.len() {
                    out.push((recs.positions[i], String::from_utf8(recs.payload(i).to_vec()).unwrap()));
                }
            }
        }
        out
    }

    #[test]
    fn splits_lines_across_chunks_and_skips_to_the_restored_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, "{\"a\":1}\n\n  {\"a\":22222222}  \r\n{\"a\":3}\n{\"a\":4}").unwrap();
        for chunk in [1, 3, 7, 1 << 20] {
            let mut src = FileSource::new("f", path.clone());
            src.chunk = chunk;
            let got = read_all(&mut src, 2);
            let want = [(0, r#"{"a":1}"#), (2, r#"{"a":22222222}"#), (3, r#"{"a":3}"#), (4, r#"{"a":4}"#)];
            assert_eq!(got, want.map(|(p, t)| (p, t.to_string())), "chunk {chunk}");
            let mut src = FileSource::new("f", path.clone());
            src.chunk = chunk;
            src.seek(0, 3).unwrap();
            assert_eq!(read_all(&mut src, 10).iter().map(|r| r.0).collect::<Vec<_>>(), [3, 4]);
        }
    }

    #[test]
    fn a_missing_file_is_a_clear_error() {
        let mut src = FileSource::new("f", PathBuf::from("/nonexistent/x.jsonl"));
        let e = src.poll(10, Duration::ZERO).err().unwrap().to_string();
        assert!(e.contains("source f: cannot open /nonexistent/x.jsonl"), "{e}");
    }
}
