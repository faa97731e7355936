//! Helpers for end-to-end tests against the local stack that `make stack-up` starts. A test
//! that needs a component fails with the command that starts it; nothing is skipped silently.

pub mod payments;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The cache folder the stack scripts use.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("WEIR_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").expect("HOME is set")).join(".cache/weir"))
}

/// The folder with the stack's data, logs and kubeconfig.
pub fn run_dir() -> PathBuf {
    std::env::var_os("WEIR_RUN").map(PathBuf::from).unwrap_or_else(|| cache_dir().join("run"))
}

pub fn kafka_brokers() -> String {
    format!("127.0.0.1:{}", std::env::var("KAFKA_PORT").unwrap_or_else(|_| "9092".into()))
}

pub fn s3_endpoint() -> String {
    format!("http://127.0.0.1:{}", std::env::var("S3_PORT").unwrap_or_else(|_| "7070".into()))
}

pub fn kubeconfig() -> PathBuf {
    run_dir().join("k8s/admin.kubeconfig")
}

/// The repository root.
pub fn repo_dir() -> PathBuf {
    // Cargo sets the package folder at run time too; the build-time value may name another
    // checkout that shared the target folder.
    let pkg = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    PathBuf::from(pkg).parent().expect("e2e is inside the repo").to_path_buf()
}

/// A debug binary of the workspace, as `make build` makes it.
pub fn debug_bin(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| cache_dir().join("target"));
    let bin = target.join("debug").join(name);
    assert!(bin.exists(), "{} is missing; run `make build` first", bin.display());
    bin
}

pub fn worker_bin() -> PathBuf {
    debug_bin("weir-worker")
}

/// Fails the test with how to start the stack when `port` is closed.
pub fn require_port(what: &str, port: u16) {
    if std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).is_err() {
        panic!("{what} is not reachable on 127.0.0.1:{port}; start the local stack with `make stack-up`");
    }
}

/// Polls `f` until it returns `Some`, or panics after `timeout` with `what`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Runs the stack's kubectl; panics with its output when it fails.
pub fn kubectl(args: &[&str]) -> String {
    let out = kubectl_raw(args);
    assert!(out.status.success(), "kubectl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Runs the stack's kubectl and returns its output whatever the exit status.
pub fn kubectl_raw(args: &[&str]) -> Output {
    Command::new(repo_dir().join("e2e/stack/k8s.sh"))
        .arg("kubectl")
        .args(args)
        .output()
        .expect("running e2e/stack/k8s.sh kubectl")
}

/// A name unique to this test run, for topics, buckets and objects.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos();
    format!("{prefix}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}
