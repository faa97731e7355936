//! The fault-injection suite: a Kafka-to-Kafka window job (windows, a pattern, late events, a
//! dead letter) on the local stack, hit by one fault per case, and its output then checked
//! against the reference: every window, late event and alert exactly once, as a
//! `read_committed` consumer sees them.
//!
//! - A SIGKILL at the three most dangerous moments (`WEIR_CRASH_AT`, worker/src/fault.rs): with
//!   an epoch's records in an open transaction, after the epoch's transactions commit and before
//!   its state does, and in the middle of a checkpoint's upload (then the state folder is lost
//!   too, so the restore must skip the half-uploaded checkpoint).
//! - The newest checkpoint corrupted in storage, the state folder lost: the one before it is
//!   restored, with a warning naming the problem.
//! - The state folder's disk full: the worker stops with a clear error; when space returns, it
//!   recovers.
//! - The S3 server down (`WEIR_FAULT_OUTAGE_SECS`, 30 s in `make test`, 120 s in `make faults`):
//!   processing goes on, checkpoints fail visibly in the metrics and succeed again after.
//! - The Kafka broker stopped for that long and restarted: the worker, restarted whenever it
//!   exits as Kubernetes would, goes on where its last commit left it.
//!
//! The cases stop shared servers, so they run one at a time. Each prints its recovery time.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use weir_e2e::payments::{create_topics, events, feed, produce, producer, read_all, Ev};
use weir_e2e::window_job::{alerts_of, check_alerts, check_results, write_job, PARTITIONS};
use weir_e2e::{free_port, ip, require_port, run_dir, stack, start_worker, unique, wait_until, StartAgain};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How long the S3 server and the broker stay down.
fn outage() -> Duration {
    let secs = std::env::var("WEIR_FAULT_OUTAGE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    Duration::from_secs(secs)
}

/// A case's topics, folder, manifest and log.
struct Case {
    name: String,
    input: String,
    output: String,
    corrections: String,
    dir: tempfile::TempDir,
    manifest: PathBuf,
    state: PathBuf,
    log: PathBuf,
    evs: Vec<(i32, Ev)>,
}

impl Case {
    /// `checkpoints`: where checkpoints go (`None`: a folder beside the manifest).
    fn new(prefix: &str, interval: &str, checkpoints: Option<&str>) -> Case {
        require_port("Kafka", 9092);
        let name = unique(prefix);
        let (input, output, corrections) = (format!("{name}-in"), format!("{name}-out"), format!("{name}-late"));
        create_topics(&[(&input, PARTITIONS), (&output, PARTITIONS), (&corrections, 1), (&alerts_of(&output), 1)]);
        let dir = tempfile::tempdir().unwrap();
        let mut manifest = write_job(dir.path(), &name, "exactly-once", interval, &input, &output, &corrections);
        if let Some(storage) = checkpoints {
            let text = std::fs::read_to_string(&manifest).unwrap();
            let local = format!("storage: \"file://{}\"", dir.path().join("checkpoints").display());
            assert!(text.contains(&local), "{text}");
            manifest = dir.path().join("job-s3.yaml");
            std::fs::write(&manifest, text.replace(&local, &format!("storage: \"{storage}\""))).unwrap();
        }
        let state = dir.path().join("state");
        let log = run_dir().join("logs").join(format!("e2e-{name}.log"));
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        Case { name, input, output, corrections, dir, manifest, state, log, evs: events(PARTITIONS) }
    }

    fn produce(&self, evs: &[(i32, Ev)]) {
        produce(&producer(), &self.input, evs);
    }

    fn start(&self, env: &[(&str, String)]) -> Child {
        start_worker(&self.manifest, &self.state, &self.log, env)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until some results of the job are committed.
    fn wait_for_results(&self) {
        wait_until(&format!("first results (log: {})", self.log.display()), Duration::from_secs(90), || {
            (!read_all(&self.output, PARTITIONS).is_empty()).then_some(())
        });
    }

    /// Every window, late event and alert of the input, exactly once.
    fn check(&self) {
        check_results(&self.evs, &self.output, &self.corrections, true);
        check_alerts(&self.evs, PARTITIONS, &alerts_of(&self.output));
    }
}

/// Stops a worker with SIGKILL at the end of a case, however it ends.
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Half the input, a worker that kills itself at `point`, the other half, a second worker:
/// exactly-once results. `lose_state`: the state folder goes with the crash.
fn through_a_crash_at(prefix: &str, point: &str, lose_state: bool) {
    let _one = one_at_a_time();
    let case = Case::new(prefix, "300ms", None);
    let (first, second) = case.evs.split_at(case.evs.len() / 2);
    // The first half arrives over 3 s, so the crash comes while epochs have records to commit.
    let feeder = feed(&case.input, first, 20, Duration::from_millis(150));
    let mut w = Worker(case.start(&[("WEIR_CRASH_AT", point.to_string())]));
    let status =
        wait_until(&format!("the crash at {point} (log: {})", case.log.display()), Duration::from_secs(120), || {
            w.0.try_wait().unwrap()
        });
    feeder.join().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "killed by SIGKILL at {point}: {status:?}\n{}", case.log_text());
    assert!(case.log_text().contains(&format!("SIGKILL at {}", point.split(':').next().unwrap())));
    if lose_state {
        std::fs::remove_dir_all(&case.state).unwrap();
    }
    case.produce(second);
    let started = Instant::now();
    let _w = Worker(case.start(&[]));
    case.check();
    println!(
        "{}: crash at {point}: lost 0, duplicated 0, all results {:.1} s after the restart",
        case.name,
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn a_crash_with_the_epoch_in_an_open_transaction_loses_and_repeats_nothing() {
    through_a_crash_at("crash-flushed", "epoch-flushed:7", false);
}

#[test]
fn a_crash_after_the_epoch_commits_and_before_its_state_does_loses_and_repeats_nothing() {
    through_a_crash_at("crash-committed", "epoch-committed:3", false);
}

#[test]
fn a_crash_in_a_checkpoint_upload_with_the_state_lost_restores_the_one_before() {
    through_a_crash_at("crash-upload", "checkpoint-uploading:6", true);
}

/// The newest checkpoint of every partition has a manifest that is not JSON, and the state
/// folder is lost: the worker restores the checkpoint before it, says so, and the results stay
/// exactly once.
#[test]
fn a_corrupt_newest_checkpoint_falls_back_to_the_one_before() {
    let _one = one_at_a_time();
    let case = Case::new("corrupt", "300ms", None);
    let (first, second) = case.evs.split_at(case.evs.len() / 2);
    case.produce(first);
    let mut w = Worker(case.start(&[]));
    case.wait_for_results();
    let checkpoints = case.dir.path().join("checkpoints");
    wait_until("two checkpoints of every partition", Duration::from_secs(60), || {
        (0..PARTITIONS).all(|p| manifests(&checkpoints, p).len() >= 2).then_some(())
    });
    w.0.kill().unwrap();
    w.0.wait().unwrap();
    // Partition 0's newest manifest is garbage; the others' name a file outside the state folder.
    let escaped = case.dir.path().join("escaped");
    for p in 0..PARTITIONS {
        let newest = manifests(&checkpoints, p).pop().unwrap();
        if p == 0 {
            std::fs::write(&newest, b"{\"id\": 1, trailing garbage").unwrap();
        } else {
            let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&newest).unwrap()).unwrap();
            m["files"].as_array_mut().unwrap().push(escaped.to_str().unwrap().into());
            std::fs::write(&newest, serde_json::to_vec(&m).unwrap()).unwrap();
        }
    }
    std::fs::remove_dir_all(&case.state).unwrap();
    case.produce(second);
    let _w = Worker(case.start(&[]));
    case.check();
    let log = case.log_text();
    assert!(log.contains("unreadable manifest") && log.contains("trying the one before"), "{log}");
    assert!(log.contains("which is not a plain file name"), "{log}");
    assert!(!escaped.exists(), "nothing is written outside the state folder");
}

/// The completed checkpoints' manifests of partition `p`, oldest first.
fn manifests(checkpoints: &Path, p: i32) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(checkpoints.join(format!("p{p}"))) else { return Vec::new() };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("chk-"))
        .map(|e| e.path().join("_manifest.json"))
        .filter(|m| m.exists())
        .collect();
    found.sort();
    found
}

/// A tmpfs of `mib` MiB mounted on `at` (needs root), unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, mib: u32) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs", at.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the disk-full case mounts a small tmpfs (as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").args(["-l", self.0.to_str().unwrap()]).status();
    }
}

/// Fills the file system of `file` until it has no space left.
fn fill(file: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(file).unwrap();
    let block = vec![0u8; 1 << 16];
    while f.write_all(&block).is_ok() {}
    let _ = f.sync_all();
}

/// The state folder on a 48 MiB file system that fills up while the job runs: the worker stops
/// with an error that says so, and nothing it committed is damaged: with the space back, a new
/// worker goes on from its state and every result is exactly once.
#[test]
fn a_full_state_disk_stops_the_worker_clearly_and_it_recovers_with_space() {
    let _one = one_at_a_time();
    let case = Case::new("diskfull", "300ms", None);
    let _fs = Tmpfs::mount(&case.state, 48);
    let (first, rest) = case.evs.split_at(case.evs.len() / 3);
    let (second, third) = rest.split_at(rest.len() / 2);
    case.produce(first);
    let mut w = Worker(case.start(&[]));
    case.wait_for_results();
    let filler = case.state.join("filler");
    fill(&filler);
    case.produce(second);
    let status =
        wait_until("the worker to stop on the full disk", Duration::from_secs(120), || w.0.try_wait().unwrap());
    assert!(!status.success(), "{status:?}");
    let log = case.log_text();
    assert!(log.contains("No space left on device"), "the error says the disk is full: {log}");
    std::fs::remove_file(&filler).unwrap();
    case.produce(third);
    let started = Instant::now();
    let _w = Worker(case.start(&[]));
    case.check();
    println!(
        "{}: disk full: lost 0, duplicated 0, all results {:.1} s after space returned",
        case.name,
        started.elapsed().as_secs_f64()
    );
}

/// The sum of the worker's counter `name` over the series whose labels contain `labels`.
fn counter(port: u16, name: &str, labels: &str) -> Option<f64> {
    let (_, text) = weir_e2e::http_call(("127.0.0.1", port), "GET", "/metrics", None, "").ok()?;
    let series = text.lines().filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(labels));
    Some(series.filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum())
}

/// The S3 server down for `outage()`: results keep coming from the input produced meanwhile,
/// checkpoints fail (counted) and complete again when it is back; then a worker that lost its
/// state restores a checkpoint taken after the outage, and every result is exactly once.
#[test]
fn the_checkpoint_store_down_fails_checkpoints_visibly_and_processing_goes_on() {
    require_port("S3", 7070);
    let _one = one_at_a_time();
    let prefix = unique("s3-outage");
    let case = Case::new("s3down", "1s", Some(&format!("s3://weir/{prefix}")));
    let env = |port: u16| {
        vec![
            ("AWS_ACCESS_KEY_ID", weir_e2e::S3_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", weir_e2e::S3_SECRET.to_string()),
            ("AWS_ENDPOINT_URL", weir_e2e::s3_endpoint()),
            ("WEIR_ADMIN_ADDR", format!("127.0.0.1:{port}")),
        ]
    };
    let thirds: Vec<&[(i32, Ev)]> = case.evs.chunks(case.evs.len().div_ceil(3)).collect();
    case.produce(thirds[0]);
    let port = free_port();
    let mut w = Worker(case.start(&env(port)));
    let completed = || counter(port, "weir_checkpoints_total", "outcome=\"completed\"").unwrap_or(0.0);
    let failed = || counter(port, "weir_checkpoints_total", "outcome=\"failed\"").unwrap_or(0.0);
    wait_until("a completed checkpoint", Duration::from_secs(90), || (completed() >= 1.0).then_some(()));

    let restart = StartAgain("s3.sh", &["start"]);
    stack("s3.sh", &["stop"]);
    let down = Instant::now();
    let before = read_all(&case.output, PARTITIONS).len();
    case.produce(thirds[1]);
    wait_until("results of the input produced during the outage", outage(), || {
        (read_all(&case.output, PARTITIONS).len() > before).then_some(())
    });
    wait_until("a failed checkpoint counted", outage(), || (failed() >= 1.0).then_some(()));
    let completed_before = completed();
    std::thread::sleep(outage().saturating_sub(down.elapsed()));
    assert!(w.0.try_wait().unwrap().is_none(), "the worker runs through the outage: {}", case.log_text());
    let back = Instant::now();
    stack("s3.sh", &["start"]);
    drop(restart);
    wait_until("a checkpoint completed after the outage", Duration::from_secs(120), || {
        (completed() > completed_before).then_some(())
    });
    // From the command that starts the server (it returns once the server answers).
    let recovered = back.elapsed();
    let failures = failed();
    case.produce(thirds[2]);
    check_results(&case.evs, &case.output, &case.corrections, true);
    // A worker without its state folder restores from the bucket.
    w.0.kill().unwrap();
    w.0.wait().unwrap();
    std::fs::remove_dir_all(&case.state).unwrap();
    let _w = Worker(case.start(&env(free_port())));
    wait_until("the restore from S3", Duration::from_secs(60), || {
        case.log_text().contains("restored state from checkpoint").then_some(())
    });
    case.check();
    println!(
        "{}: S3 down {:.0} s: {} checkpoints failed, processing went on, a checkpoint completed {:.1} s after S3 was started again; lost 0, duplicated 0",
        case.name,
        outage().as_secs_f64(),
        failures,
        recovered.as_secs_f64()
    );
}

/// A worker restarted whenever it exits, as Kubernetes restarts a Pod's container.
struct Supervised {
    child: Option<Child>,
    restarts: u32,
}

impl Supervised {
    fn tend(&mut self, case: &Case) {
        if let Some(Some(_)) = self.child.as_mut().map(|c| c.try_wait().unwrap()) {
            self.child = None;
        }
        if self.child.is_none() {
            self.child = Some(case.start(&[]));
            self.restarts += 1;
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The broker stopped for `outage()` while input waits in it and then started again: the
/// worker (restarted when it gives up, as a Pod's container is) goes on from its last commit,
/// and every result is exactly once.
#[test]
fn a_broker_outage_and_restart_loses_and_repeats_nothing() {
    let _one = one_at_a_time();
    let case = Case::new("brokerdown", "300ms", None);
    let (first, second) = case.evs.split_at(case.evs.len() / 2);
    case.produce(first);
    let mut w = Supervised { child: None, restarts: 0 };
    w.tend(&case);
    case.wait_for_results();
    let restart = StartAgain("kafka.sh", &["start"]);
    stack("kafka.sh", &["stop"]);
    let down = Instant::now();
    while down.elapsed() < outage() {
        std::thread::sleep(Duration::from_millis(500));
        w.tend(&case);
    }
    stack("kafka.sh", &["start"]);
    drop(restart);
    let back = Instant::now();
    case.produce(second);
    let checked = std::thread::scope(|s| {
        let check = s.spawn(|| case.check());
        while !check.is_finished() {
            std::thread::sleep(Duration::from_millis(500));
            w.tend(&case);
        }
        check.join()
    });
    if let Err(panic) = checked {
        std::panic::resume_unwind(panic);
    }
    println!(
        "{}: broker down {:.0} s: the worker was started {} times; lost 0, duplicated 0, all results {:.1} s after the broker was back",
        case.name,
        outage().as_secs_f64(),
        w.restarts,
        back.elapsed().as_secs_f64()
    );
}

/// On the three-broker cluster (`kafka.sh cluster start`; the test runs with `KAFKA_BROKERS`
/// naming it and `WEIR_E2E_REPLICATION=3`: `make test` and `make faults` do both): one broker
/// stopped for 60 s while input arrives is a failover. The worker never stops (its
/// transactions and consumer move to the partitions' new leaders and the new transaction and
/// group coordinators), results keep coming during the outage, and every result is exactly once.
#[test]
#[ignore = "needs the three-broker cluster: make faults"]
fn a_broker_lost_in_a_three_broker_cluster_is_a_failover() {
    let brokers = weir_e2e::kafka_brokers();
    assert_eq!(brokers.split(',').count(), 3, "KAFKA_BROKERS names the three-broker cluster: {brokers}");
    assert_eq!(weir_e2e::replication(), 3, "WEIR_E2E_REPLICATION=3");
    let _one = one_at_a_time();
    let case = Case::new("failover", "300ms", None);
    let thirds: Vec<&[(i32, Ev)]> = case.evs.chunks(case.evs.len().div_ceil(3)).collect();
    case.produce(thirds[0]);
    let mut w = Worker(case.start(&[]));
    case.wait_for_results();
    // The broker of the first bootstrap address, which leads some partitions and may be a
    // coordinator.
    let restart = StartAgain("kafka.sh", &["cluster", "start-node", "1"]);
    stack("kafka.sh", &["cluster", "stop-node", "1"]);
    let down = Instant::now();
    let before = read_all(&case.output, PARTITIONS).len();
    case.produce(thirds[1]);
    let failed_over = wait_until("results of the input produced with a broker down", Duration::from_secs(60), || {
        (read_all(&case.output, PARTITIONS).len() > before).then(|| down.elapsed())
    });
    std::thread::sleep(Duration::from_secs(60).saturating_sub(down.elapsed()));
    assert!(w.0.try_wait().unwrap().is_none(), "the worker runs through the failover: {}", case.log_text());
    stack("kafka.sh", &["cluster", "start-node", "1"]);
    drop(restart);
    case.produce(thirds[2]);
    case.check();
    assert!(w.0.try_wait().unwrap().is_none(), "the worker never stopped");
    println!(
        "{}: broker 1 of 3 down 60 s: the worker never stopped, first results with it down {:.1} s after the stop; lost 0, duplicated 0",
        case.name,
        failed_over.as_secs_f64()
    );
}

/// A network namespace with a veth pair to the host (needs root and iproute2): a process in it
/// reaches the stack's broker at its second listener, 10.213.0.1:9095 (e2e/stack/kafka.sh), and
/// the link can be cut and healed. Removed on drop.
struct Netns {
    name: &'static str,
    host_if: &'static str,
}

impl Netns {
    fn create() -> Netns {
        let ns = Netns { name: "weir-np", host_if: "weirnp-h" };
        ns.remove();
        for cmd in [
            "netns add weir-np",
            "link add weirnp-h type veth peer name weirnp-n",
            "link set weirnp-n netns weir-np",
            "addr add 10.213.1.1/24 dev weirnp-h",
            "link set weirnp-h up",
            "-n weir-np addr add 10.213.1.2/24 dev weirnp-n",
            "-n weir-np link set weirnp-n up",
            "-n weir-np link set lo up",
            "-n weir-np route add default via 10.213.1.1",
        ] {
            ip(cmd);
        }
        ns
    }

    fn remove(&self) {
        let _ = Command::new("ip").args(["link", "del", self.host_if]).output();
        let _ = Command::new("ip").args(["netns", "del", self.name]).output();
    }

    fn cut(&self) {
        ip(&format!("link set {} down", self.host_if));
    }

    fn heal(&self) {
        ip(&format!("link set {} up", self.host_if));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.remove();
    }
}

/// A network partition between a worker and the broker: worker A runs in its own network
/// namespace and is cut off mid-job; worker B, started on the host as the partitions' new owner
/// (same job, same transactional ids), fences A and finishes the input; then the link heals and
/// A, a zombie with an open transaction, is refused by the broker (fenced) and stops without
/// committing anything: every result exactly once.
#[test]
fn a_partitioned_worker_is_fenced_by_its_successor_and_never_commits() {
    let _one = one_at_a_time();
    let case = Case::new("partition", "300ms", None);
    let net = Netns::create();
    let text = std::fs::read_to_string(&case.manifest).unwrap();
    let inside = case.dir.path().join("job-netns.yaml");
    std::fs::write(&inside, text.replace(&weir_e2e::kafka_brokers(), "10.213.0.1:9095")).unwrap();
    let (first, second) = case.evs.split_at(case.evs.len() / 2);
    // Input keeps arriving, so A has a transaction open when the link goes.
    let feeder = feed(&case.input, first, 20, Duration::from_millis(150));
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&case.log).unwrap();
    let a = Command::new("ip")
        .args(["netns", "exec", net.name])
        .arg(weir_e2e::worker_bin())
        .args(["run", "-f", inside.to_str().unwrap(), "--state-dir"])
        .arg(case.dir.path().join("state-a"))
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut a = Worker(a);
    case.wait_for_results();
    net.cut();
    let cut = Instant::now();
    feeder.join().unwrap();
    assert!(a.0.try_wait().unwrap().is_none(), "A runs until cut off: {}", case.log_text());
    // B takes the partitions over (its state from the shared checkpoints) and fences A.
    let _b = Worker(case.start(&[]));
    case.produce(second);
    check_results(&case.evs, &case.output, &case.corrections, true);
    let taken_over = cut.elapsed();
    net.heal();
    let healed = Instant::now();
    let status =
        wait_until("the zombie A to stop after the heal", Duration::from_secs(120), || a.0.try_wait().unwrap());
    assert!(!status.success(), "A stops with an error: {status:?}");
    let log = case.log_text();
    assert!(log.to_lowercase().contains("fenced"), "A was fenced: {log}");
    // Nothing A did after the heal reached the output.
    case.check();
    println!(
        "{}: partition: B had every result {:.1} s after the cut; A stopped, fenced, {:.1} s after the heal; lost 0, duplicated 0",
        case.name,
        taken_over.as_secs_f64(),
        healed.elapsed().as_secs_f64()
    );
}
