//! The Redis sink: each row upserted as a JSON string under a key made of its key fields
//! (`SET key value [PX ttl]`), pipelined over one connection and confirmed at every flush.
//!
//! A connection that fails (Redis restarted, a network blip) is replaced and the commands whose
//! replies were not read are sent again, with backoff while Redis is unreachable; the task waits
//! meanwhile, for up to ten minutes.
//!
//! Replayed rows after a recovery write the same keys again with the values the job computes
//! again, so the store converges to the results of an exactly-once run (an idempotent upsert,
//! as the window-results contract says: consumers keep the last value per key).

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use datafusion::arrow::array::BinaryArray;
use datafusion::arrow::record_batch::RecordBatch;
use weir_crds::RedisSinkSpec;

use super::{retrying, Result, Sink, SinkError};
use crate::codec::json::encode_json_lines;
use crate::metrics::Metrics;
use crate::value::Col;
use std::sync::Arc;

/// Replies left unread before a write waits for them: bounds the memory the pipeline holds.
const MAX_IN_FLIGHT: usize = 10_000;

/// A reply of the Redis protocol (RESP2).
#[derive(Debug, PartialEq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// One connection, commands written back to back and replies read in order.
pub struct Connection {
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
    in_flight: usize,
}

/// `redis://[:password@]host:port[/db]` as (address, password, database).
pub fn parse_url(url: &str) -> std::result::Result<(String, Option<String>, u32), String> {
    let rest = url.strip_prefix("redis://").ok_or_else(|| format!("`{url}` is not a redis:// URL"))?;
    let (auth, hostpart) = match rest.rsplit_once('@') {
        Some((a, h)) => (Some(a), h),
        None => (None, rest),
    };
    let (hostport, db) = match hostpart.split_once('/') {
        Some((h, "")) => (h, 0),
        Some((h, d)) => (h, d.parse().map_err(|_| format!("`{d}` in `{url}` is not a database number"))?),
        None => (hostpart, 0),
    };
    if hostport.is_empty() {
        return Err(format!("`{url}` has no host"));
    }
    let addr = if hostport.contains(':') { hostport.to_string() } else { format!("{hostport}:6379") };
    let password = auth.map(|a| a.rsplit(':').next().unwrap_or(a).to_string()).filter(|p| !p.is_empty());
    Ok((addr, password, db))
}

impl Connection {
    pub fn open(url: &str) -> std::result::Result<Connection, String> {
        let (addr, password, db) = parse_url(url)?;
        let stream = TcpStream::connect(&addr).map_err(|e| format!("connecting to {addr}: {e}"))?;
        stream.set_nodelay(true).ok();
        stream.set_read_timeout(Some(Duration::from_secs(30))).ok();
        let reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
        let mut c = Connection { reader, writer: BufWriter::with_capacity(1 << 16, stream), in_flight: 0 };
        if let Some(p) = password {
            c.command(&[b"AUTH", p.as_bytes()])?;
        }
        if db != 0 {
            c.command(&[b"SELECT", db.to_string().as_bytes()])?;
        }
        c.command(&[b"PING"])?;
        Ok(c)
    }

    /// Opens a connection named `name` (`CLIENT SETNAME`: what `CLIENT LIST` shows).
    pub fn open_named(url: &str, name: &str) -> std::result::Result<Connection, String> {
        let mut c = Connection::open(url)?;
        let name: String = name.chars().map(|ch| if ch.is_ascii_graphic() { ch } else { '_' }).collect();
        c.command(&[b"CLIENT", b"SETNAME", name.as_bytes()])?;
        Ok(c)
    }

    /// Queues a command; its reply is read by [`Connection::replies`].
    pub fn send(&mut self, args: &[&[u8]]) -> std::result::Result<(), String> {
        let w = &mut self.writer;
        let io = |e: std::io::Error| format!("writing to Redis: {e}");
        write!(w, "*{}\r\n", args.len()).map_err(io)?;
        for a in args {
            write!(w, "${}\r\n", a.len()).map_err(io)?;
            w.write_all(a).map_err(io)?;
            w.write_all(b"\r\n").map_err(io)?;
        }
        self.in_flight += 1;
        Ok(())
    }

    /// Sends what is queued and reads every outstanding reply, in order.
    pub fn replies(&mut self) -> std::result::Result<Vec<Reply>, String> {
        self.writer.flush().map_err(|e| format!("writing to Redis: {e}"))?;
        let mut out = Vec::with_capacity(self.in_flight);
        while self.in_flight > 0 {
            out.push(self.read_reply()?);
            self.in_flight -= 1;
        }
        Ok(out)
    }

    /// One command and its reply; an error reply is an error.
    pub fn command(&mut self, args: &[&[u8]]) -> std::result::Result<Reply, String> {
        self.send(args)?;
        let mut replies = self.replies()?;
        match replies.pop() {
            Some(Reply::Error(e)) => Err(format!("Redis: {e}")),
            Some(r) => Ok(r),
            None => Err("Redis sent no reply".into()),
        }
    }

    fn line(&mut self) -> std::result::Result<String, String> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).map_err(|e| format!("reading from Redis: {e}"))?;
        if n == 0 {
            return Err("Redis closed the connection".into());
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }

    fn read_reply(&mut self) -> std::result::Result<Reply, String> {
        let line = self.line()?;
        let (kind, rest) = line.split_at(line.len().min(1));
        let int = |s: &str| s.parse::<i64>().map_err(|_| format!("Redis sent `{line}`, not a number"));
        Ok(match kind {
            "+" => Reply::Status(rest.to_string()),
            "-" => Reply::Error(rest.to_string()),
            ":" => Reply::Int(int(rest)?),
            "$" => match int(rest)? {
                n if n < 0 => Reply::Bulk(None),
                n => {
                    let mut buf = vec![0; n as usize + 2];
                    self.reader.read_exact(&mut buf).map_err(|e| format!("reading from Redis: {e}"))?;
                    buf.truncate(n as usize);
                    Reply::Bulk(Some(buf))
                }
            },
            "*" => match int(rest)? {
                n if n < 0 => Reply::Array(None),
                n => Reply::Array(Some((0..n).map(|_| self.read_reply()).collect::<std::result::Result<_, _>>()?)),
            },
            _ => return Err(format!("Redis sent `{line}`, which is not a RESP reply")),
        })
    }
}

pub struct RedisSink {
    name: String,
    spec: RedisSinkSpec,
    /// `None` after the connection failed, until the next try reconnects.
    conn: Option<Connection>,
    ttl_ms: Option<String>,
    /// The commands sent since the last confirmed flush: sent again on a new connection when
    /// the old one fails before their replies are read (SET is idempotent; a late event or
    /// dead letter may be appended twice to its list, as at-least-once allows).
    unconfirmed: Vec<Vec<Vec<u8>>>,
    metrics: Arc<Metrics>,
    retry_budget: std::time::Duration,
}

impl RedisSink {
    pub fn new(name: &str, spec: &RedisSinkSpec, metrics: Arc<Metrics>) -> Result<RedisSink> {
        let err = |message: String| SinkError::Failed { sink: name.to_string(), message };
        let conn = Connection::open_named(&spec.url, &format!("weir-sink-{name}")).map_err(err)?;
        let ttl_ms = spec.ttl.as_ref().map(|d| d.millis().unwrap_or(0).to_string());
        Ok(RedisSink {
            name: name.to_string(),
            spec: spec.clone(),
            conn: Some(conn),
            ttl_ms,
            unconfirmed: Vec::new(),
            metrics,
            retry_budget: super::RETRY_BUDGET,
        })
    }

    fn err(&self, message: String) -> SinkError {
        SinkError::Failed { sink: self.name.clone(), message }
    }

    /// Sends a command; its reply is read at the next confirmation. A failing connection is
    /// dropped here and replaced there.
    fn send(&mut self, args: Vec<Vec<u8>>) -> Result<()> {
        if let Some(c) = self.conn.as_mut() {
            let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            if c.send(&refs).is_err() {
                self.conn = None;
            }
        }
        self.unconfirmed.push(args);
        if self.unconfirmed.len() >= MAX_IN_FLIGHT {
            self.confirm()?;
        }
        Ok(())
    }

    /// Reads the replies of every unconfirmed command; when the connection fails, reconnects
    /// and sends them again, with backoff while Redis is unreachable (the task waits). An error
    /// reply (a command Redis refuses) fails the sink.
    fn confirm(&mut self) -> Result<()> {
        let (name, metrics, budget) = (self.name.clone(), self.metrics.clone(), self.retry_budget);
        let replies = retrying(&name, "writing to Redis", &metrics, budget, || self.try_confirm())?;
        self.unconfirmed.clear();
        if let Some(Reply::Error(e)) = replies.iter().find(|r| matches!(r, Reply::Error(_))) {
            return Err(self.err(format!("Redis refused a write: {e}")));
        }
        Ok(())
    }

    fn try_confirm(&mut self) -> std::result::Result<Vec<Reply>, String> {
        let conn = match self.conn.take() {
            Some(c) => c,
            None => {
                let mut c = Connection::open_named(&self.spec.url, &format!("weir-sink-{}", self.name))?;
                for args in &self.unconfirmed {
                    let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
                    c.send(&refs)?;
                }
                c
            }
        };
        let mut conn = conn;
        let replies = conn.replies()?;
        self.conn = Some(conn);
        Ok(replies)
    }

    /// The key columns of `rows`: the configured fields, else the stream's key fields and, for
    /// window results, `window_start`.
    fn key_columns(&self, rows: &RecordBatch, keys: &[usize]) -> Result<Vec<usize>> {
        super::key_columns(rows, keys, self.spec.key.as_deref(), "redis.key").map_err(|e| self.err(e))
    }

    /// The key of `row`: `keyPrefix` and the values of `cols` joined by `:`.
    fn row_key(&self, cols: &[Col], row: usize) -> Vec<u8> {
        let mut key = self.spec.key_prefix.clone().unwrap_or_default().into_bytes();
        super::append_key(cols, row, &mut key);
        key
    }

    fn set(&mut self, key: Vec<u8>, value: &[u8]) -> Result<()> {
        let mut args = vec![b"SET".to_vec(), key, value.to_vec()];
        if let Some(ttl) = &self.ttl_ms {
            args.extend([b"PX".to_vec(), ttl.as_bytes().to_vec()]);
        }
        self.send(args)
    }
}

impl Sink for RedisSink {
    fn write_rows(&mut self, rows: &RecordBatch, keys: &[usize], raw: Option<&BinaryArray>) -> Result<()> {
        let key_cols = self.key_columns(rows, keys)?;
        let cols: Vec<Col> = key_cols.iter().map(|&c| Col::new(rows.column(c)).expect("engine types")).collect();
        let lines = match raw {
            Some(_) => Vec::new(),
            None => encode_json_lines(rows).map_err(|e| self.err(e.to_string()))?,
        };
        let mut json = lines.split(|b| *b == b'\n');
        for row in 0..rows.num_rows() {
            let value = match raw {
                Some(r) => r.value(row),
                None => json.next().unwrap_or_default(),
            };
            let key = self.row_key(&cols, row);
            self.set(key, value)?;
        }
        Ok(())
    }

    fn write_sessions(&mut self, rows: &RecordBatch, keys: &[usize], closed: &[bool], expiry_ms: i64) -> Result<()> {
        // One key per stream key (no window_start: a key's open session moves as it grows).
        let key_cols = match &self.spec.key {
            Some(_) => self.key_columns(rows, keys)?,
            None => keys.to_vec(),
        };
        let cols: Vec<Col> = key_cols.iter().map(|&c| Col::new(rows.column(c)).expect("engine types")).collect();
        let lines = encode_json_lines(rows).map_err(|e| self.err(e.to_string()))?;
        let expiry = expiry_ms.max(1).to_string().into_bytes();
        for (row, value) in lines.split(|b| *b == b'\n').take(rows.num_rows()).enumerate() {
            let key = self.row_key(&cols, row);
            match closed[row] {
                true => self.send(vec![b"DEL".to_vec(), key])?,
                false => self.send(vec![b"SET".to_vec(), key, value.to_vec(), b"PX".to_vec(), expiry.clone()])?,
            }
        }
        Ok(())
    }

    fn write_records(&mut self, records: &[Vec<u8>]) -> Result<()> {
        // Late events and dead letters have no key fields: a list per sink, appended in order.
        let list = format!("{}{}", self.spec.key_prefix.as_deref().unwrap_or_default(), self.name);
        for r in records {
            self.send(vec![b"RPUSH".to_vec(), list.as_bytes().to_vec(), r.clone()])?;
        }
        self.confirm()
    }

    fn flush(&mut self) -> Result<()> {
        self.confirm()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_the_server_the_password_and_the_database() {
        assert_eq!(parse_url("redis://127.0.0.1:6380/2"), Ok(("127.0.0.1:6380".into(), None, 2)));
        assert_eq!(parse_url("redis://:s3cret@cache"), Ok(("cache:6379".into(), Some("s3cret".into()), 0)));
        assert!(parse_url("http://x").unwrap_err().contains("not a redis:// URL"));
        assert!(parse_url("redis:///1").unwrap_err().contains("no host"));
        assert!(parse_url("redis://h/x").unwrap_err().contains("not a database number"));
    }
}
