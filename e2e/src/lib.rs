//! Helpers for end-to-end tests against the local stack that `make stack-up` starts. A test
//! that needs a component fails with the command that starts it; nothing is skipped silently.

pub mod gitops;
pub mod payments;
pub mod window_job;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
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

/// The brokers the tests use: `KAFKA_BROKERS` (a bootstrap list: the fault suite's three-broker
/// cluster), or the stack's broker on `KAFKA_PORT`.
pub fn kafka_brokers() -> String {
    std::env::var("KAFKA_BROKERS")
        .unwrap_or_else(|_| format!("127.0.0.1:{}", std::env::var("KAFKA_PORT").unwrap_or_else(|_| "9092".into())))
}

/// The replication factor of the topics the tests create: 1, or `WEIR_E2E_REPLICATION` (3 on the
/// three-broker cluster).
pub fn replication() -> i32 {
    std::env::var("WEIR_E2E_REPLICATION").ok().and_then(|r| r.parse().ok()).unwrap_or(1)
}

pub fn s3_endpoint() -> String {
    format!("http://127.0.0.1:{}", std::env::var("S3_PORT").unwrap_or_else(|_| "7070".into()))
}

/// The local stack's S3 credentials (e2e/stack/lib.sh).
pub const S3_KEY: &str = "weiradmin";
pub const S3_SECRET: &str = "weirsecret";

/// A client of the local stack's S3 server.
pub fn s3_client() -> aws_sdk_s3::Client {
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(s3_endpoint())
            .credentials_provider(Credentials::new(S3_KEY, S3_SECRET, None, None, "weir-e2e"))
            .force_path_style(true)
            .build(),
    )
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

/// Starts `weir-worker run` on `manifest` with `env` added, its log appended to `log`.
pub fn start_worker(manifest: &Path, state: &Path, log: &Path, env: &[(&str, String)]) -> Child {
    Command::new(worker_bin())
        .args(["run", "-f", manifest.to_str().unwrap(), "--state-dir", state.to_str().unwrap()])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap())
        .spawn()
        .expect("starting weir-worker")
}

/// Starts the worker `rounds` times and kills each with SIGKILL after a pseudo-random
/// `min_ms` to `min_ms + 900` ms (from `seed`); every third kill also loses the state folder,
/// so the next run restores a checkpoint.
pub fn kill_repeatedly(
    manifest: &Path,
    state: &Path,
    log: &Path,
    env: &[(&str, String)],
    (rounds, seed, min_ms): (u32, u64, u64),
) {
    let mut x = seed;
    for round in 0..rounds {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut w = start_worker(manifest, state, log, env);
        std::thread::sleep(Duration::from_millis(min_ms + x % 900));
        w.kill().unwrap();
        w.wait().unwrap();
        if round % 3 == 2 && state.exists() {
            std::fs::remove_dir_all(state).unwrap();
        }
    }
}

/// A worker in Pod mode: ordinal `ordinal` of `parallelism`, admin server on `port`.
pub fn start_pod(
    manifest: &Path,
    ordinal: u32,
    parallelism: u32,
    state: &Path,
    port: u16,
    restore: Option<&str>,
    log: &Path,
) -> Child {
    let mut c = Command::new(worker_bin());
    c.arg("pod")
        .env("WEIR_CONFIG", manifest)
        .env("POD_NAME", format!("job-{ordinal}"))
        .env("WEIR_PARALLELISM", parallelism.to_string())
        .env("WEIR_STATE_DIR", state)
        .env("WEIR_ADMIN_ADDR", format!("127.0.0.1:{port}"))
        .env_remove("WEIR_ORDINAL")
        .stdout(Stdio::null())
        .stderr(std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap());
    if let Some(id) = restore {
        c.env("WEIR_RESTORE_SAVEPOINT", id);
    }
    c.spawn().expect("starting weir-worker pod")
}

/// A port free on 127.0.0.1 now, for a server a test starts. Below the kernel's ephemeral range:
/// a port the kernel hands out (binding port 0) can be taken by any outgoing connection (a Kafka
/// client's) before the server binds it. Never the same port twice in one test process.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let (low, span) = (10_000, ephemeral.saturating_sub(10_000).max(1_000));
    // Test processes start far apart in this range (by process id), then walk it.
    let start = std::process::id().wrapping_mul(7_919) % span;
    loop {
        let port = (low + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// One HTTP/1.0 call: `method path` to `addr`, with a bearer `token` and a `body`; the whole
/// answer (status line, headers, body) as the server closed it.
pub fn http_raw(
    addr: impl std::net::ToSocketAddrs,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "{method} {path} HTTP/1.0\r\nHost: x\r\n{auth}Content-Length: {}\r\n\r\n{body}", body.len())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// [`http_raw`]'s status code and body.
pub fn http_call(
    addr: impl std::net::ToSocketAddrs,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let out = http_raw(addr, method, path, token, body)?;
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not an HTTP answer: {out:?}"));
    let (head, body) = out.split_once("\r\n\r\n").ok_or_else(bad)?;
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(bad)?;
    Ok((code, body.to_string()))
}

/// Runs a local-stack script (`e2e/stack/<script> ARGS`: `s3.sh stop`, `k8s.sh
/// restart_apiserver`, `kafka.sh cluster stop-node 1`), panicking with its output when it fails.
pub fn stack(script: &str, args: &[&str]) {
    let out = Command::new(repo_dir().join("e2e/stack").join(script)).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{script} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs iproute2's `ip ARGS` (the network cases need root), panicking with its error when it fails.
pub fn ip(args: &str) {
    let out = Command::new("ip").args(args.split_whitespace()).output().expect("iproute2's ip");
    assert!(out.status.success(), "ip {args} (the network cases need root): {}", String::from_utf8_lossy(&out.stderr));
}

/// Runs a stack script's start command when dropped (`s3.sh start`, `kafka.sh cluster
/// start-node 1`), so a server a test stopped runs again however the test ends.
pub struct StartAgain(pub &'static str, pub &'static [&'static str]);

impl Drop for StartAgain {
    fn drop(&mut self) {
        let _ = Command::new(repo_dir().join("e2e/stack").join(self.0)).args(self.1).output();
    }
}
