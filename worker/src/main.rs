//! `weir-worker`: runs a StreamJob manifest locally (`run -f job.yaml`), in a Pod (`pod`, config
//! from the mounted ConfigMap and the environment), or only checks it (`validate -f`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use weir_crds::{Manifest, ManifestError};
use weir_worker::checkpoint::Savepoints;
use weir_worker::codec::registry::Registry;
use weir_worker::metrics::Metrics;
use weir_worker::plan::JobPlan;
use weir_worker::runtime::{Runtime, RuntimeConfig, WorkerIdentity};

// Batches allocate and free megabytes at a time; jemalloc keeps freed pages for reuse (for
// seconds, then returns them) instead of handing them back to the kernel and faulting fresh
// zeroed pages in on the next batch, as glibc's malloc does with large blocks.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "weir-worker", version, about = "The Weir stream worker")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs a manifest in this process (exits when bounded sources are done).
    Run {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// State folder; a fresh temporary one when every source is bounded.
        #[arg(long, env = "WEIR_STATE_DIR")]
        state_dir: Option<PathBuf>,
        /// Admin HTTP address (metrics, health), e.g. 127.0.0.1:9249.
        #[arg(long, env = "WEIR_ADMIN_ADDR")]
        admin_addr: Option<SocketAddr>,
        /// A token the admin server's savepoint calls must carry (`Authorization: Bearer`).
        #[arg(long, env = "WEIR_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        /// Memory for the shared RocksDB block cache, in MiB.
        #[arg(long, default_value_t = 256)]
        state_memory_mib: usize,
        /// Keys per operator and task kept decoded in memory in front of RocksDB.
        #[arg(long, env = "WEIR_MAX_CACHED_KEYS", default_value_t = 100_000)]
        max_cached_keys: usize,
        /// Partitions without local state start from this savepoint: its id (under the
        /// storage's `savepoints/`) or its location.
        #[arg(long, env = "WEIR_RESTORE_SAVEPOINT")]
        restore_savepoint: Option<String>,
    },
    /// Runs as worker `ordinal` of `parallelism` in a Pod.
    Pod {
        #[arg(long, env = "WEIR_CONFIG", default_value = "/etc/weir/job.yaml")]
        config: PathBuf,
        /// Ordinal; taken from the Pod name's `-N` suffix when not set.
        #[arg(long, env = "WEIR_ORDINAL")]
        ordinal: Option<u32>,
        #[arg(long, env = "POD_NAME")]
        pod_name: Option<String>,
        #[arg(long, env = "WEIR_PARALLELISM")]
        parallelism: u32,
        #[arg(long, env = "WEIR_STATE_DIR", default_value = "/var/lib/weir/state")]
        state_dir: PathBuf,
        #[arg(long, env = "WEIR_ADMIN_ADDR", default_value = "0.0.0.0:9249")]
        admin_addr: SocketAddr,
        /// A token the admin server's savepoint calls must carry (the operator sets it from the
        /// job's Secret `<job>-admin`).
        #[arg(long, env = "WEIR_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        #[arg(long, env = "WEIR_STATE_MEMORY_MIB", default_value_t = 512)]
        state_memory_mib: usize,
        #[arg(long, env = "WEIR_MAX_CACHED_KEYS", default_value_t = 100_000)]
        max_cached_keys: usize,
        /// Partitions without local state start from this savepoint.
        #[arg(long, env = "WEIR_RESTORE_SAVEPOINT")]
        restore_savepoint: Option<String>,
        /// Folder of the checkpoint storage for this deployment's checkpoints (set by the
        /// operator; a stateless upgrade starts a new one).
        #[arg(long, env = "WEIR_STATE_GENERATION")]
        state_generation: Option<String>,
    },
    /// Checks a manifest and prints every error with its path.
    Validate {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match real_main(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir-worker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(file: &Path) -> anyhow::Result<(Manifest, JobPlan)> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("job").to_string();
    // Avro and JSON Schema inputs take (or check) their schemas from their registry subjects.
    let fetch = |l: &weir_crds::registry::SchemaLookup| {
        let v = Registry::for_spec(&l.registry)?.version(&l.subject, l.version)?;
        Ok(v.map(|v| weir_crds::registry::SubjectSchema { version: v.version, schema: v.schema }))
    };
    let manifest = Manifest::from_yaml_with_registry(&text, &stem, fetch).map_err(|e| match e {
        ManifestError::Invalid(errs) => anyhow::anyhow!("{}: {errs}", file.display()),
        e => anyhow::anyhow!("{}: {e}", file.display()),
    })?;
    let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let base = if base.as_os_str().is_empty() { PathBuf::from(".") } else { base };
    let plan = JobPlan::new(&manifest, &base).map_err(|errs| anyhow::anyhow!("{}: {errs}", file.display()))?;
    Ok((manifest, plan))
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Validate { file } => {
            load(&file)?;
            println!("{}: valid", file.display());
            Ok(())
        }
        Cmd::Run { file, state_dir, admin_addr, admin_token, state_memory_mib, max_cached_keys, restore_savepoint } => {
            let (_, mut plan) = load(&file)?;
            plan.max_cached_keys = max_cached_keys.max(1);
            let _temp;
            let state_dir = match state_dir {
                Some(d) => d,
                None if plan.bounded() => {
                    _temp = tempfile::tempdir().context("creating a temporary state folder")?;
                    _temp.path().to_path_buf()
                }
                None => std::env::temp_dir().join("weir").join("state").join(&plan.group),
            };
            let identity = WorkerIdentity { ordinal: 0, parallelism: 1 };
            let admin = admin_addr.map(|a| (a, admin_token));
            run(plan, identity, state_dir, admin, state_memory_mib, (restore_savepoint, None))
        }
        Cmd::Pod {
            config,
            ordinal,
            pod_name,
            parallelism,
            state_dir,
            admin_addr,
            admin_token,
            state_memory_mib,
            max_cached_keys,
            restore_savepoint,
            state_generation,
        } => {
            let ordinal = match (ordinal, pod_name) {
                (Some(o), _) => o,
                (None, Some(name)) => name
                    .rsplit('-')
                    .next()
                    .and_then(|s| s.parse().ok())
                    .with_context(|| format!("Pod name {name} does not end in -<ordinal>; set WEIR_ORDINAL"))?,
                (None, None) => anyhow::bail!("set WEIR_ORDINAL or POD_NAME to tell this worker its ordinal"),
            };
            if ordinal >= parallelism {
                anyhow::bail!("ordinal {ordinal} is not below parallelism {parallelism}");
            }
            let (_, mut plan) = load(&config)?;
            plan.max_cached_keys = max_cached_keys.max(1);
            let identity = WorkerIdentity { ordinal, parallelism };
            let restore = (restore_savepoint, state_generation);
            run(plan, identity, state_dir, Some((admin_addr, admin_token)), state_memory_mib, restore)
        }
    }
}

fn run(
    plan: JobPlan,
    identity: WorkerIdentity,
    state_dir: PathBuf,
    admin: Option<(SocketAddr, Option<String>)>,
    mem_mib: usize,
    (restore_savepoint, state_generation): (Option<String>, Option<String>),
) -> anyhow::Result<()> {
    let plan = Arc::new(plan);
    let metrics = Arc::new(Metrics::new(&plan.name));
    let ready = Arc::new(AtomicBool::new(false));
    let savepoints = Savepoints::default();
    if let Some((addr, token)) = admin {
        let storage = plan.checkpoint_storage.is_some();
        let bound =
            weir_worker::admin::serve(addr, metrics.clone(), ready.clone(), savepoints.clone(), storage, token)?;
        tracing::info!("admin server on http://{bound}");
    }
    let shutdown = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, shutdown.clone()).context("installing signal handlers")?;
    }
    let cfg = RuntimeConfig {
        identity,
        state_dir,
        state_memory_bytes: mem_mib << 20,
        savepoints,
        restore_savepoint,
        state_generation,
    };
    let mut rt = Runtime::open(plan.clone(), &cfg, metrics)?;
    ready.store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(job = %plan.name, "running");
    rt.run(&shutdown)?;
    tracing::info!(job = %plan.name, "stopped cleanly");
    Ok(())
}
