//! A job's workers, reached over their admin port: listing them, asking each for a savepoint,
//! and gathering the savepoint's progress. Used by the REST API and by the upgrade lifecycle.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_crds::StreamJob;

use crate::build;
use crate::reconcile::Error;

/// `method path` to `ip:port` over plain HTTP/1.0, with `token` as the bearer token: the
/// status code and the body.
pub async fn http_call(
    ip: &str,
    port: i32,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!("{method} {path} HTTP/1.0\r\nHost: {ip}\r\n{auth}Content-Length: 0\r\n\r\n");
    http_exchange(&format!("{ip}:{port}"), &req, Duration::from_secs(3)).await
}

/// Sends `request` (a whole HTTP/1.0 request) to `addr` (`host:port`) and reads the answer to
/// the connection's end: the status code and the body; an error after `timeout`.
pub async fn http_exchange(addr: &str, request: &str, timeout: Duration) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(request.as_bytes()).await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        let out = String::from_utf8_lossy(&out);
        let (head, body) = out.split_once("\r\n\r\n").ok_or_else(|| anyhow::anyhow!("no HTTP answer"))?;
        let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        Ok((code, body.to_string()))
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| anyhow::anyhow!("timed out after {timeout:?}"))?
}

/// GET `path` from `ip:port` (with `token`); the body of a 200 answer.
pub async fn http_get(ip: &str, port: i32, path: &str, token: Option<&str>) -> anyhow::Result<String> {
    match http_call(ip, port, "GET", path, token).await? {
        (200, body) => Ok(body),
        (code, body) => anyhow::bail!("answered {code}: {body}"),
    }
}

/// The job's worker Pods with their IPs (`None` before a Pod has one).
pub async fn pods(client: &Client, ns: &str, job: &StreamJob) -> Result<Vec<(String, Option<String>)>, kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods.list(&ListParams::default().labels(&build::selector(job))).await?;
    Ok(list.items.iter().map(|p| (p.name_any(), p.status.as_ref().and_then(|st| st.pod_ip.clone()))).collect())
}

/// One series of a Prometheus text body: metric name, labels (`a="x",b="y"`), value.
pub type Series = (String, String, f64);

/// A Prometheus text body as series.
pub fn parse_metrics(text: &str) -> Vec<Series> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (head, value) = l.rsplit_once(' ')?;
            let (name, labels) = match head.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (head, ""),
            };
            Some((name.to_string(), labels.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The sum of metric `name` over `rows`.
pub fn total(rows: &[Series], name: &str) -> f64 {
    // Adding 0.0 turns the empty sum's -0.0 into 0.
    rows.iter().filter(|r| r.0 == name).map(|r| r.2).sum::<f64>() + 0.0
}

/// The value of label `name` in a Prometheus label list (`a="x",b="y"`).
pub fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    labels.split("\",").find_map(|pair| {
        let (k, v) = pair.split_once("=\"")?;
        (k.trim_start_matches(',') == name).then(|| v.trim_end_matches('"'))
    })
}

/// Flink's backpressure levels of a share of time spent backpressured: up to 10 % `ok`, up
/// to 50 % `low`, above `high`.
pub fn backpressure_level(ratio: f64) -> &'static str {
    if ratio <= 0.1 {
        "ok"
    } else if ratio <= 0.5 {
        "low"
    } else {
        "high"
    }
}

/// Busy and backpressure ratios per operator (source, step, sink) over the job's workers, from
/// each worker's `weir_operator_busy_ratio` and `weir_operator_backpressure_ratio`: per
/// operator the highest ratio over the workers (the slowest worker sets the pace, as Flink
/// reports the highest over subtasks), its backpressure level, and each worker's figures.
pub fn operator_figures(workers: &[(String, Vec<Series>)]) -> Vec<Value> {
    /// A worker's figures for one operator: pod, busy, backpressure.
    type PerPod = Vec<(String, f64, f64)>;
    // By (kind's place, kind, name).
    let mut ops: std::collections::BTreeMap<(u8, String, String), PerPod> = Default::default();
    for (pod, rows) in workers {
        for (metric, labels, value) in rows {
            let busy = match metric.as_str() {
                "weir_operator_busy_ratio" => true,
                "weir_operator_backpressure_ratio" => false,
                _ => continue,
            };
            let (Some(name), Some(kind)) = (label(labels, "operator"), label(labels, "kind")) else { continue };
            let order = match kind {
                "source" => 0,
                "step" => 1,
                _ => 2,
            };
            let entries = ops.entry((order, kind.to_string(), name.to_string())).or_default();
            let at = match entries.iter().position(|e| &e.0 == pod) {
                Some(at) => at,
                None => {
                    entries.push((pod.clone(), 0.0, 0.0));
                    entries.len() - 1
                }
            };
            match busy {
                true => entries[at].1 = *value,
                false => entries[at].2 = *value,
            }
        }
    }
    ops.into_iter()
        .map(|((_, kind, name), per_pod)| {
            let busy = per_pod.iter().map(|e| e.1).fold(0.0, f64::max);
            let backpressure = per_pod.iter().map(|e| e.2).fold(0.0, f64::max);
            json!({
                "name": name,
                "kind": kind,
                "busyRatio": busy,
                "backpressureRatio": backpressure,
                "backpressureLevel": backpressure_level(backpressure),
                "workers": per_pod.iter().map(|(pod, b, bp)| json!({"pod": pod, "busyRatio": b, "backpressureRatio": bp})).collect::<Vec<_>>(),
            })
        })
        .collect()
}

/// How many workers the operator talks to at once: a job of 100 workers is read in a few round
/// trips, and one slow worker (each call times out after 3 s) does not hold up the others.
const FAN_OUT: usize = 32;

/// `call` on every worker of `pods`, up to [`FAN_OUT`] at a time; the answers in the order of
/// `pods`.
async fn each_worker<'a, T, F, Fut>(pods: &'a [(String, Option<String>)], call: F) -> Vec<T>
where
    F: Fn(&'a str, Option<&'a str>) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let mut calls = Vec::with_capacity(pods.len());
    for (pod, ip) in pods {
        calls.push(call(pod.as_str(), ip.as_deref()));
    }
    in_batches(calls).await
}

/// Runs `futures` [`FAN_OUT`] at a time; their outputs in order.
async fn in_batches<T, Fut: std::future::Future<Output = T>>(futures: Vec<Fut>) -> Vec<T> {
    let mut out = Vec::with_capacity(futures.len());
    let mut rest = futures.into_iter();
    loop {
        let batch: Vec<Fut> = rest.by_ref().take(FAN_OUT).collect();
        if batch.is_empty() {
            return out;
        }
        out.extend(futures::future::join_all(batch).await);
    }
}

/// Every worker's metrics, read together, in the order of `pods`: its series, or why they could
/// not be read.
pub async fn read_metrics(pods: &[(String, Option<String>)]) -> Vec<anyhow::Result<Vec<Series>>> {
    each_worker(pods, |pod, ip| async move {
        let ip = ip.ok_or_else(|| anyhow::anyhow!("worker {pod} has no Pod IP yet"))?;
        let text = http_get(ip, build::ADMIN_PORT, "/metrics", None)
            .await
            .map_err(|e| anyhow::anyhow!("worker {pod}: scraping {ip}: {e}"))?;
        Ok(parse_metrics(&text))
    })
    .await
}

/// Every worker's metrics, in the order of `pods`; an error naming the first worker that
/// cannot be read (a figure summed over the others would understate the job).
pub async fn scrape(pods: &[(String, Option<String>)]) -> anyhow::Result<Vec<Vec<Series>>> {
    read_metrics(pods).await.into_iter().collect()
}

/// The job's consumer lag in records (`weir_consumer_lag` over every worker's metrics), or
/// `None` without workers.
pub fn consumer_lag(workers: &[Vec<Series>]) -> Option<i64> {
    (!workers.is_empty()).then(|| workers.iter().map(|rows| total(rows, "weir_consumer_lag")).sum::<f64>() as i64)
}

/// The workers whose checkpoints are failing, with how many failed in a row
/// (`weir_checkpoint_consecutive_failures`), from metrics in the order of `pods`.
pub fn failing_checkpoints(pods: &[(String, Option<String>)], workers: &[Vec<Series>]) -> Vec<(String, i64)> {
    let failures = workers.iter().map(|rows| total(rows, "weir_checkpoint_consecutive_failures") as i64);
    pods.iter().zip(failures).filter(|(_, n)| *n > 0).map(|((pod, _), n)| (pod.clone(), n)).collect()
}

/// Deletes the job's Pods that are not ready (their StatefulSet makes them again from its
/// current template).
pub async fn delete_unready(client: &Client, ns: &str, job: &StreamJob) -> Result<(), kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    for p in pods.list(&ListParams::default().labels(&build::selector(job))).await?.items {
        let ready = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if !ready && p.metadata.deletion_timestamp.is_none() {
            tracing::info!(pod = %p.name_any(), "deleting a worker of the rolled-back spec");
            pods.delete(&p.name_any(), &DeleteParams::default()).await?;
        }
    }
    Ok(())
}

/// The worker count a Pod was started with (its `WEIR_PARALLELISM`).
fn pod_parallelism(p: &Pod) -> Option<i32> {
    let worker = p.spec.as_ref()?.containers.iter().find(|c| c.name == build::WORKER_CONTAINER)?;
    worker.env.as_ref()?.iter().find(|e| e.name == "WEIR_PARALLELISM")?.value.as_deref()?.parse().ok()
}

/// A rescale restarts every worker at once: deletes, all together, the job's Pods that run at
/// another worker count than `parallelism` (their StatefulSet, whose Pods are managed in
/// parallel, makes them again from the new template at once). A StatefulSet's own rolling update
/// replaces one Pod at a time, waiting for each to be ready: fine when every worker keeps its
/// partitions, but in a rescale most partitions move, and one by one a partition could wait the
/// whole rollout (minutes for 100 workers) for its new owner. Each stopping worker commits and
/// checkpoints on SIGTERM; a new owner that starts first fences it and replays, exactly once.
/// The number of Pods deleted.
pub async fn restart_rescaled(
    client: &Client,
    ns: &str,
    job: &StreamJob,
    parallelism: i32,
) -> Result<usize, kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let stale: Vec<String> = pods
        .list(&ListParams::default().labels(&build::selector(job)))
        .await?
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| pod_parallelism(p).is_some_and(|n| n != parallelism))
        .map(|p| p.name_any())
        .collect();
    let mut deletes = Vec::with_capacity(stale.len());
    for name in &stale {
        deletes.push(delete_pod(&pods, name));
    }
    in_batches(deletes).await.into_iter().collect::<Result<(), _>>()?;
    Ok(stale.len())
}

/// Deletes Pod `name`; one already gone is fine.
async fn delete_pod(pods: &Api<Pod>, name: &str) -> Result<(), kube::Error> {
    match pods.delete(name, &DeleteParams::default()).await {
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        other => other.map(|_| ()),
    }
}

/// The job's admin token, which its workers' savepoint calls need; `None` before the operator
/// made it (workers started without one take calls without it).
pub async fn admin_token(client: &Client, ns: &str, job: &StreamJob) -> Result<Option<String>, kube::Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = secrets.get_opt(&build::admin_secret(job)).await?;
    Ok(secret.and_then(|s| s.data?.remove(build::ADMIN_TOKEN_KEY)).map(|b| String::from_utf8_lossy(&b.0).into_owned()))
}

/// Makes the job's admin Secret with a random token unless it exists (it is kept across
/// reconciles and upgrades; owned by the job, it goes with it).
pub async fn ensure_admin_secret(client: &Client, ns: &str, job: &StreamJob) -> Result<(), Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let name = build::admin_secret(job);
    if secrets.get_opt(&name).await?.is_some() {
        return Ok(());
    }
    let mut random = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut random)?;
    let token: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let secret = Secret {
        metadata: ObjectMeta { name: Some(name), ..build::owned_meta(job) },
        string_data: Some([(build::ADMIN_TOKEN_KEY.to_string(), token)].into()),
        type_: Some("Opaque".into()),
        ..Secret::default()
    };
    match secrets.create(&PostParams::default(), &secret).await {
        // Another reconcile made it first.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        other => other.map(|_| ()).map_err(Error::from),
    }
}

/// Why a savepoint could not be requested.
#[derive(Debug)]
pub enum TriggerError {
    /// Not every worker runs, or one answered with a refusal.
    Refused(String),
    /// A worker could not be reached.
    Unreachable(String),
}

/// Asks every worker in `pods` for savepoint `id` (with the job's admin token); each worker's
/// answer.
pub async fn trigger_savepoint(
    pods: &[(String, Option<String>)],
    id: &str,
    token: Option<&str>,
) -> Result<Vec<Value>, TriggerError> {
    if pods.is_empty() || pods.iter().any(|(_, ip)| ip.is_none()) {
        return Err(TriggerError::Refused("not every worker is running; retry when the job is Running".into()));
    }
    let path = format!("/savepoints/{id}");
    each_worker(pods, |pod, ip| {
        let path = &path;
        async move {
            let ip = ip.unwrap_or_default();
            match http_call(ip, build::ADMIN_PORT, "POST", path, token).await {
                Ok((202, _)) => Ok(json!({"pod": pod, "state": "requested"})),
                Ok((code, body)) => {
                    Err(TriggerError::Refused(format!("worker {pod} refused the savepoint ({code}): {body}")))
                }
                Err(e) => Err(TriggerError::Unreachable(format!("worker {pod} ({ip}): {e}"))),
            }
        }
    })
    .await
    .into_iter()
    .collect()
}

/// A savepoint's progress over a job's workers.
pub struct Progress {
    /// `completed` once every worker's part is stored, `failed` if one failed, `in-progress`,
    /// or `unknown` when no worker knows it.
    pub state: &'static str,
    /// Where it is stored.
    pub location: Option<String>,
    /// Each worker's state and progress.
    pub workers: Vec<Value>,
}

/// Asks every worker in `pods` for the state of savepoint `id` (with the job's admin token).
pub async fn savepoint_progress(pods: &[(String, Option<String>)], id: &str, token: Option<&str>) -> Progress {
    let path = format!("/savepoints/{id}");
    let answers = each_worker(pods, |pod, ip| {
        let path = &path;
        async move {
            let answer = match ip {
                Some(ip) => http_get(ip, build::ADMIN_PORT, path, token).await,
                None => Err(anyhow::anyhow!("no Pod IP")),
            };
            (pod, answer.ok().and_then(|b| serde_json::from_str::<Value>(&b).ok()))
        }
    })
    .await;
    let mut workers = Vec::new();
    let mut location = None;
    for (pod, answer) in answers {
        match answer {
            Some(v) => {
                location = location.or_else(|| v["progress"]["location"].as_str().map(str::to_string));
                workers.push(json!({"pod": pod, "state": v["state"], "progress": v["progress"]}));
            }
            None => workers.push(json!({"pod": pod, "state": "unknown"})),
        }
    }
    let all = |st: &str| workers.iter().all(|w| w["state"] == st);
    let state = if workers.is_empty() || all("unknown") {
        "unknown"
    } else if all("completed") {
        "completed"
    } else if workers.iter().any(|w| w["state"] == "failed") {
        "failed"
    } else {
        "in-progress"
    };
    Progress { state, location, workers }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operators_are_reported_with_the_highest_ratio_over_workers() {
        let w0 = "weir_operator_busy_ratio{streamjob=\"j\",kind=\"step\",operator=\"sums\"} 0.25\n\
                  weir_operator_backpressure_ratio{streamjob=\"j\",kind=\"step\",operator=\"sums\"} 0.05\n\
                  weir_operator_busy_ratio{streamjob=\"j\",kind=\"sink\",operator=\"out\"} 0.1\n\
                  weir_operator_backpressure_ratio{streamjob=\"j\",kind=\"sink\",operator=\"out\"} 0.6\n\
                  weir_operator_busy_ratio{streamjob=\"j\",kind=\"source\",operator=\"pay\"} 0.3\n";
        let w1 = "weir_operator_busy_ratio{streamjob=\"j\",kind=\"step\",operator=\"sums\"} 0.5\n\
                  weir_operator_backpressure_ratio{streamjob=\"j\",kind=\"step\",operator=\"sums\"} 0.2\n\
                  weir_busy_ratio{streamjob=\"j\"} 0.9\n";
        let figures = operator_figures(&[("w-0".into(), parse_metrics(w0)), ("w-1".into(), parse_metrics(w1))]);
        let names: Vec<_> = figures.iter().map(|f| f["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["pay", "sums", "out"], "sources, then steps, then sinks");
        let sums = &figures[1];
        assert_eq!(sums["kind"], "step");
        assert_eq!(sums["busyRatio"], 0.5);
        assert_eq!(sums["backpressureRatio"], 0.2);
        assert_eq!(sums["backpressureLevel"], "low");
        assert_eq!(sums["workers"][0], json!({"pod": "w-0", "busyRatio": 0.25, "backpressureRatio": 0.05}));
        assert_eq!(figures[2]["backpressureLevel"], "high");
        assert_eq!(figures[0]["backpressureLevel"], "ok");
        assert_eq!(label("a=\"x\",operator=\"p,q\"", "operator"), Some("p,q"));
        assert_eq!(label("a=\"x\"", "b"), None);
    }

    #[test]
    fn workers_with_failing_checkpoints_are_named_with_their_count() {
        let pods = [("j-0".to_string(), None), ("j-1".to_string(), None), ("j-2".to_string(), None)];
        let metrics = [
            parse_metrics("weir_checkpoint_consecutive_failures{streamjob=\"j\"} 0\n"),
            parse_metrics("weir_checkpoint_consecutive_failures{streamjob=\"j\"} 3\n"),
            parse_metrics("weir_consumer_lag{streamjob=\"j\",partition=\"0\"} 5\n"),
        ];
        assert_eq!(failing_checkpoints(&pods, &metrics), [("j-1".to_string(), 3)]);
    }
}
