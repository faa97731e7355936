//! Where checkpoints go: `file:///path` (a local or mounted folder) or `s3://bucket/prefix`
//! (aws-sdk-s3; credentials and endpoint from the standard AWS environment, e.g.
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL` for an S3-compatible
//! server, which is then addressed path-style).

use std::path::{Path, PathBuf};

use aws_sdk_s3::primitives::ByteStream;

/// Failures of checkpoint storage, with the object and what was done.
#[derive(Debug, thiserror::Error)]
#[error("storage {location}: {message}")]
pub struct StorageError {
    pub location: String,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, StorageError>;

/// An object store with the few operations checkpoints need. Keys are `/`-separated.
pub trait Storage: Send + Sync {
    fn put_file(&self, key: &str, path: &Path) -> Result<()>;
    fn put_bytes(&self, key: &str, bytes: Vec<u8>) -> Result<()>;
    fn get_to_file(&self, key: &str, path: &Path) -> Result<()>;
    fn get_bytes(&self, key: &str) -> Result<Vec<u8>>;
    /// Every key under `prefix`, sorted.
    fn list(&self, prefix: &str) -> Result<Vec<String>>;
    fn delete(&self, key: &str) -> Result<()>;
    /// Moves object `from` to `to` (a rename of a file; a copy and a delete on S3). Done again
    /// after it completed (`from` gone, `to` there), it succeeds.
    fn rename(&self, from: &str, to: &str) -> Result<()>;
    /// Whether `key` exists.
    fn exists(&self, key: &str) -> Result<bool>;
    /// Where `key` is, for messages.
    fn describe(&self, key: &str) -> String;
}

/// Opens `url` (`file:///path` or `s3://bucket[/prefix]`).
pub fn open(url: &str) -> Result<Box<dyn Storage>> {
    let bad = |message: &str| StorageError { location: url.to_string(), message: message.to_string() };
    if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(bad("a file:// location needs an absolute path, e.g. file:///var/lib/weir/checkpoints"));
        }
        return Ok(Box::new(FileStorage { root: PathBuf::from(path) }));
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("an s3:// location needs a bucket, e.g. s3://weir/checkpoints"));
        }
        return Ok(Box::new(S3Storage::new(bucket, prefix.trim_matches('/'))?));
    }
    Err(bad("expected file:///path or s3://bucket/prefix"))
}

/// The part of another storage under a key prefix (a folder), with keys relative to it.
pub struct Scoped {
    inner: std::sync::Arc<dyn Storage>,
    /// Ends in `/`.
    prefix: String,
}

impl Scoped {
    pub fn new(inner: std::sync::Arc<dyn Storage>, folder: &str) -> Scoped {
        Scoped { inner, prefix: format!("{}/", folder.trim_matches('/')) }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

impl Storage for Scoped {
    fn put_file(&self, key: &str, path: &Path) -> Result<()> {
        self.inner.put_file(&self.key(key), path)
    }
    fn put_bytes(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        self.inner.put_bytes(&self.key(key), bytes)
    }
    fn get_to_file(&self, key: &str, path: &Path) -> Result<()> {
        self.inner.get_to_file(&self.key(key), path)
    }
    fn get_bytes(&self, key: &str) -> Result<Vec<u8>> {
        self.inner.get_bytes(&self.key(key))
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let keys = self.inner.list(&self.key(prefix))?;
        Ok(keys.into_iter().filter_map(|k| k.strip_prefix(&self.prefix).map(str::to_string)).collect())
    }
    fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(&self.key(key))
    }

    fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.inner.rename(&self.key(from), &self.key(to))
    }

    fn exists(&self, key: &str) -> Result<bool> {
        self.inner.exists(&self.key(key))
    }
    fn describe(&self, key: &str) -> String {
        self.inner.describe(&self.key(key))
    }
}

/// A folder.
pub struct FileStorage {
    root: PathBuf,
}

impl FileStorage {
    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn err(&self, key: &str, e: impl std::fmt::Display) -> StorageError {
        StorageError { location: self.describe(key), message: e.to_string() }
    }

    /// Writes through a temporary name and renames, so a reader never sees a partial object.
    fn write_atomically(&self, key: &str, write: impl FnOnce(&Path) -> std::io::Result<()>) -> Result<()> {
        let to = self.path(key);
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir).map_err(|e| self.err(key, e))?;
        }
        let tmp = to.with_extension("weir-tmp");
        write(&tmp).and_then(|()| std::fs::rename(&tmp, &to)).map_err(|e| self.err(key, e))
    }
}

impl Storage for FileStorage {
    fn put_file(&self, key: &str, path: &Path) -> Result<()> {
        self.write_atomically(key, |tmp| std::fs::copy(path, tmp).map(|_| ()))
    }

    fn put_bytes(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        self.write_atomically(key, |tmp| std::fs::write(tmp, bytes))
    }

    fn get_to_file(&self, key: &str, path: &Path) -> Result<()> {
        std::fs::copy(self.path(key), path).map(|_| ()).map_err(|e| self.err(key, e))
    }

    fn get_bytes(&self, key: &str) -> Result<Vec<u8>> {
        std::fs::read(self.path(key)).map_err(|e| self.err(key, e))
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.err(prefix, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| self.err(prefix, e))?;
                let path = entry.path();
                if entry.file_type().map_err(|e| self.err(prefix, e))?.is_dir() {
                    stack.push(path);
                } else if let Ok(rel) = path.strip_prefix(&self.root) {
                    let key = rel.to_string_lossy().replace('\\', "/");
                    if key.starts_with(prefix) && !key.ends_with(".weir-tmp") {
                        out.push(key);
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        match std::fs::remove_file(self.path(key)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(self.err(key, e)),
            _ => Ok(()),
        }
    }

    fn rename(&self, from: &str, to: &str) -> Result<()> {
        let target = self.path(to);
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).map_err(|e| self.err(to, e))?;
        }
        match std::fs::rename(self.path(from), &target) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && target.exists() => Ok(()),
            r => r.map_err(|e| self.err(from, e)),
        }
    }

    fn exists(&self, key: &str) -> Result<bool> {
        self.path(key).try_exists().map_err(|e| self.err(key, e))
    }

    fn describe(&self, key: &str) -> String {
        format!("file://{}", self.path(key).display())
    }
}

/// `key` percent-encoded for a URL path (`/` kept), as S3's copy source must be.
fn url_encode(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A bucket (and key prefix) of S3 or an S3-compatible server.
pub struct S3Storage {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    rt: tokio::runtime::Runtime,
}

impl S3Storage {
    fn new(bucket: &str, prefix: &str) -> Result<S3Storage> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| StorageError {
            location: format!("s3://{bucket}"),
            message: format!("starting the S3 client's runtime: {e}"),
        })?;
        let client = rt.block_on(async {
            let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
            if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none() {
                loader = loader.region(aws_sdk_s3::config::Region::new("us-east-1"));
            }
            let shared = loader.load().await;
            let custom_endpoint =
                std::env::var_os("AWS_ENDPOINT_URL_S3").is_some() || std::env::var_os("AWS_ENDPOINT_URL").is_some();
            let cfg = aws_sdk_s3::config::Builder::from(&shared).force_path_style(custom_endpoint).build();
            aws_sdk_s3::Client::from_conf(cfg)
        });
        Ok(S3Storage { client, bucket: bucket.to_string(), prefix: prefix.to_string(), rt })
    }

    fn key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    fn err(&self, key: &str, e: impl std::error::Error) -> StorageError {
        // The whole chain of causes (e.g. "dispatch failure: io error: Connection refused").
        StorageError { location: self.describe(key), message: aws_sdk_s3::error::DisplayErrorContext(e).to_string() }
    }
}

impl Storage for S3Storage {
    fn put_file(&self, key: &str, path: &Path) -> Result<()> {
        self.rt.block_on(async {
            let body = ByteStream::from_path(path).await.map_err(|e| self.err(key, e))?;
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(self.key(key))
                .body(body)
                .send()
                .await
                .map_err(|e| self.err(key, e))?;
            Ok(())
        })
    }

    fn put_bytes(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        self.rt.block_on(async {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(self.key(key))
                .body(ByteStream::from(bytes))
                .send()
                .await
                .map_err(|e| self.err(key, e))?;
            Ok(())
        })
    }

    fn get_to_file(&self, key: &str, path: &Path) -> Result<()> {
        let bytes = self.get_bytes(key)?;
        std::fs::write(path, bytes).map_err(|e| self.err(key, e))
    }

    fn get_bytes(&self, key: &str) -> Result<Vec<u8>> {
        self.rt.block_on(async {
            let out = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(self.key(key))
                .send()
                .await
                .map_err(|e| self.err(key, e))?;
            let body = out.body.collect().await.map_err(|e| self.err(key, e))?;
            Ok(body.into_bytes().to_vec())
        })
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        self.rt.block_on(async {
            let mut out = Vec::new();
            let mut token = None;
            loop {
                let page = self
                    .client
                    .list_objects_v2()
                    .bucket(&self.bucket)
                    .prefix(self.key(prefix))
                    .set_continuation_token(token)
                    .send()
                    .await
                    .map_err(|e| self.err(prefix, e))?;
                let strip = if self.prefix.is_empty() { 0 } else { self.prefix.len() + 1 };
                out.extend(page.contents().iter().filter_map(|o| Some(o.key()?.get(strip..)?.to_string())));
                match page.next_continuation_token() {
                    Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                    _ => break,
                }
            }
            out.sort();
            Ok(out)
        })
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.rt.block_on(async {
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(self.key(key))
                .send()
                .await
                .map_err(|e| self.err(key, e))?;
            Ok(())
        })
    }

    fn rename(&self, from: &str, to: &str) -> Result<()> {
        let source = format!("{}/{}", self.bucket, url_encode(&self.key(from)));
        let copied = self.rt.block_on(async {
            self.client.copy_object().bucket(&self.bucket).key(self.key(to)).copy_source(source).send().await
        });
        if let Err(e) = copied {
            // Copied and deleted before: the source is gone and the target is there.
            let gone = e.as_service_error().is_some_and(|s| s.meta().code() == Some("NoSuchKey"));
            return match gone && self.exists(to)? {
                true => Ok(()),
                false => Err(self.err(from, e)),
            };
        }
        self.delete(from)
    }

    fn exists(&self, key: &str) -> Result<bool> {
        let head =
            self.rt.block_on(async { self.client.head_object().bucket(&self.bucket).key(self.key(key)).send().await });
        match head {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(false),
            Err(e) => Err(self.err(key, e)),
        }
    }

    fn describe(&self, key: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.key(key))
    }
}
