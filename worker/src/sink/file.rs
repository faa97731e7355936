//! A JSON-lines file sink; creates missing folders.

use std::fs::{create_dir_all, File};
use std::io::{BufWriter, Write};
use std::path::Path;

use datafusion::arrow::array::BinaryArray;
use datafusion::arrow::record_batch::RecordBatch;

use super::{Result, Sink, SinkError};
use crate::codec::encode_json_lines;

pub struct FileSink {
    name: String,
    out: BufWriter<File>,
}

impl FileSink {
    /// Opens `path`, appending when the job resumes from restored state (so earlier output
    /// stays) and truncating on a fresh start (so a re-run does not repeat it).
    pub fn create(name: &str, path: &Path, append: bool) -> Result<FileSink> {
        let err = |e: std::io::Error| SinkError::Failed {
            sink: name.to_string(),
            message: format!("{}: {e}", path.display()),
        };
        if let Some(dir) = path.parent() {
            create_dir_all(dir).map_err(err)?;
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(path)
            .map_err(err)?;
        Ok(FileSink { name: name.to_string(), out: BufWriter::with_capacity(1 << 20, f) })
    }

    fn err(&self, e: impl std::fmt::Display) -> SinkError {
        SinkError::Failed { sink: self.name.clone(), message: e.to_string() }
    }
}

impl Sink for FileSink {
    fn write_rows(&mut self, rows: &RecordBatch, _keys: &[usize], raw: Option<&BinaryArray>) -> Result<()> {
        match raw {
            Some(raw) => {
                for r in raw.iter().flatten() {
                    self.out.write_all(r).map_err(|e| self.err(e))?;
                    self.out.write_all(b"\n").map_err(|e| self.err(e))?;
                }
                Ok(())
            }
            None => {
                let lines = encode_json_lines(rows).map_err(|e| self.err(e))?;
                self.out.write_all(&lines).map_err(|e| self.err(e))
            }
        }
    }

    fn write_records(&mut self, records: &[Vec<u8>]) -> Result<()> {
        for r in records {
            self.out.write_all(r).map_err(|e| self.err(e))?;
            self.out.write_all(b"\n").map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(|e| self.err(e))
    }
}
