//! A bounded source reading one JSON object per line from a local file; one partition, read in
//! file order, position = line number.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::time::Duration;

use super::{Polled, Records, Result, Source, SourceError};

pub struct FileSource {
    name: String,
    path: PathBuf,
    reader: Option<BufReader<File>>,
    line: i64,
    skip_to: i64,
    done: bool,
    buf: Vec<u8>,
}

impl FileSource {
    pub fn new(name: &str, path: PathBuf) -> FileSource {
        FileSource { name: name.to_string(), path, reader: None, line: 0, skip_to: 0, done: false, buf: Vec::new() }
    }

    fn err(&self, message: String) -> SourceError {
        SourceError::Failed { source_name: self.name.clone(), message }
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
        if self.reader.is_none() {
            let f =
                File::open(&self.path).map_err(|e| self.err(format!("cannot open {}: {e}", self.path.display())))?;
            self.reader = Some(BufReader::with_capacity(1 << 20, f));
        }
        let now = chrono::Utc::now().timestamp_millis();
        let mut recs = Records::default();
        while recs.len() < max {
            self.buf.clear();
            let reader = self.reader.as_mut().expect("opened above");
            let n = reader.read_until(b'\n', &mut self.buf).map_err(|e| SourceError::Failed {
                source_name: self.name.clone(),
                message: format!("reading {}: {e}", self.path.display()),
            })?;
            if n == 0 {
                self.done = true;
                break;
            }
            let line = self.line;
            self.line += 1;
            let text = self.buf.trim_ascii();
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
