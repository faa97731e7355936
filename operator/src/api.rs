//! The operator's REST API, beside kubectl:
//!
//! - `GET /jobs[?namespace=]`: the StreamJobs with their phase.
//! - `POST /jobs[?namespace=]`: creates a StreamJob from a manifest (YAML or JSON); every error,
//!   with its path, in a 400 answer, a 409 when it exists.
//! - `GET /jobs/{name}[?namespace=]`: one StreamJob, spec and status.
//! - `GET /jobs/{name}/metrics[?namespace=]`: the job's figures gathered from its workers'
//!   metrics (events/s, capacity, lag, processing lag, checkpoints, busy ratio per worker,
//!   busy and backpressure ratios per operator).
//! - `GET /consumer-groups/{group}/lag`: per-partition lag of a job's consumer group, from Kafka.
//!
//! Every answer is JSON; errors are `{"error": "..."}` with a 4xx or 5xx status. With a token
//! configured (`WEIR_API_TOKEN`), every route but `/healthz`, `/metrics` (Prometheus) and
//! `/openapi.json` (this API described in OpenAPI 3) needs `Authorization: Bearer <token>`; with
//! `--api-token-review`, Kubernetes tokens too, each request authorized by RBAC.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde::Deserialize;
use serde_json::{json, Value};
use weir_crds::{Manifest, StreamJob};

use crate::workers::{self as w, savepoint_progress, total, Progress, TriggerError};
use crate::{build, kafka};

pub struct ApiState {
    pub metrics: Arc<crate::metrics::Metrics>,
    pub client: Client,
    /// Namespace of requests that name none.
    pub namespace: String,
    /// The namespaces served when the operator watches some (empty: all).
    pub watched: Vec<String>,
    pub token: Option<String>,
    /// Also accept bearer tokens the API server authenticates, authorized by RBAC.
    pub token_review: bool,
}

/// Who sent a request.
enum Caller {
    /// No token needed, or the configured token.
    Trusted,
    /// A Kubernetes user or ServiceAccount, authenticated by a TokenReview.
    User(UserInfo),
}

/// A JSON error answer.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

impl From<kube::Error> for ApiError {
    fn from(e: kube::Error) -> ApiError {
        match &e {
            kube::Error::Api(s) if s.code == 404 => ApiError(StatusCode::NOT_FOUND, s.message.clone()),
            kube::Error::Api(s) if s.code == 409 => ApiError(StatusCode::CONFLICT, s.message.clone()),
            kube::Error::Api(s) if (400..500).contains(&s.code) => {
                ApiError(StatusCode::from_u16(s.code).unwrap_or(StatusCode::BAD_REQUEST), s.message.clone())
            }
            _ => ApiError(StatusCode::BAD_GATEWAY, format!("Kubernetes API: {e}")),
        }
    }
}

type Res = Result<Json<Value>, ApiError>;

fn bad_request(message: String) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message)
}

/// `text` for an error message: at most 80 characters, control characters escaped.
fn shown(text: &str) -> String {
    let cut: String = text.chars().take(80).collect();
    let escaped = cut.escape_debug().to_string();
    if text.chars().count() > 80 {
        format!("{escaped}...")
    } else {
        escaped
    }
}

/// A DNS-1123 label (a namespace): lowercase letters, digits and `-`, at most 63, starting and
/// ending with a letter or digit.
fn is_dns_label(s: &str) -> bool {
    let ok = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|c| ok(c) || c == b'-')
        && s.bytes().next().is_some_and(ok)
        && s.bytes().last().is_some_and(ok)
}

/// A DNS-1123 subdomain (a StreamJob's name): dot-separated labels, at most 253 characters.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// A StreamJob name from a path, or a 400 that says what is wrong with it.
fn job_name(name: &str) -> Result<&str, ApiError> {
    match is_dns_subdomain(name) {
        true => Ok(name),
        false => Err(bad_request(format!(
            "`{}` is not a StreamJob name (lowercase letters, digits, `-` and `.`, at most 253)",
            shown(name)
        ))),
    }
}

/// Every error answer in JSON, including those axum makes itself (a body that is not UTF-8, an
/// unknown route, a wrong method): a plain-text one becomes `{"error": text}`.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).trim().to_string();
    let text = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_lowercase() } else { text };
    let mut out = (status, Json(json!({"error": text}))).into_response();
    if let Some(allow) = parts.headers.get(axum::http::header::ALLOW) {
        out.headers_mut().insert(axum::http::header::ALLOW, allow.clone());
    }
    out
}

#[derive(Deserialize)]
pub struct NsQuery {
    namespace: Option<String>,
}

impl ApiState {
    fn ns(&self, q: &NsQuery) -> Result<String, ApiError> {
        let ns = q.namespace.clone().unwrap_or_else(|| self.namespace.clone());
        if !is_dns_label(&ns) {
            return Err(bad_request(format!(
                "namespace `{}` is not a Kubernetes namespace name (a DNS label)",
                shown(&ns)
            )));
        }
        if !self.watched.is_empty() && !self.watched.contains(&ns) {
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                format!("this operator serves namespaces {}, not {ns}", self.watched.join(", ")),
            ));
        }
        Ok(ns)
    }

    fn jobs(&self, ns: &str) -> Api<StreamJob> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// Who sends the request: anyone when the API needs no token; else the bearer token must be
    /// the configured one or (with `--api-token-review`) one the API server authenticates
    /// (TokenReview), e.g. a ServiceAccount token.
    async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        if self.token.is_none() && !self.token_review {
            return Ok(Caller::Trusted);
        }
        let given = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        let Some(given) = given else {
            return Err(ApiError(StatusCode::UNAUTHORIZED, "send Authorization: Bearer <token>".into()));
        };
        if self.token.as_deref() == Some(given) {
            return Ok(Caller::Trusted);
        }
        if self.token_review {
            let review = TokenReview {
                spec: TokenReviewSpec { token: Some(given.to_string()), ..TokenReviewSpec::default() },
                ..TokenReview::default()
            };
            let done = Api::<TokenReview>::all(self.client.clone()).create(&PostParams::default(), &review).await?;
            let status = done.status.unwrap_or_default();
            if status.authenticated == Some(true) {
                return Ok(Caller::User(status.user.unwrap_or_default()));
            }
        }
        Err(ApiError(StatusCode::UNAUTHORIZED, "the bearer token is not valid".into()))
    }

    /// The namespace a request names (see [`ApiState::ns`]), once its sender is authenticated
    /// and permitted to `verb` StreamJobs there.
    async fn authorized_ns(&self, headers: &HeaderMap, q: &NsQuery, verb: &str) -> Result<String, ApiError> {
        let caller = self.authenticate(headers).await?;
        let ns = self.ns(q)?;
        self.permit(&caller, verb, Some(&ns)).await?;
        Ok(ns)
    }

    /// Whether `caller` may `verb` StreamJobs in `ns` (all watched namespaces when `None`),
    /// asked of the API server (SubjectAccessReview), so Kubernetes RBAC governs the REST API
    /// as it does kubectl.
    async fn permit(&self, caller: &Caller, verb: &str, ns: Option<&str>) -> Result<(), ApiError> {
        let Caller::User(user) = caller else { return Ok(()) };
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username.clone(),
                uid: user.uid.clone(),
                groups: user.groups.clone(),
                extra: user.extra.clone(),
                resource_attributes: Some(ResourceAttributes {
                    group: Some("weir.dev".into()),
                    resource: Some("streamjobs".into()),
                    verb: Some(verb.into()),
                    namespace: ns.map(str::to_string),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let done = Api::<SubjectAccessReview>::all(self.client.clone()).create(&PostParams::default(), &review).await?;
        let status = done.status.unwrap_or_default();
        if status.allowed {
            return Ok(());
        }
        let who = user.username.as_deref().unwrap_or("the caller");
        let place = ns.map_or_else(|| "all namespaces".to_string(), |n| format!("namespace {n}"));
        let why = status.reason.filter(|r| !r.is_empty()).map(|r| format!(": {r}")).unwrap_or_default();
        Err(ApiError(StatusCode::FORBIDDEN, format!("{who} may not {verb} streamjobs in {place}{why}")))
    }
}

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(|State(s): State<Arc<ApiState>>| async move { s.metrics.render() }))
        .route("/openapi.json", get(|| async { Json(openapi()) }))
        .route("/jobs", get(list_jobs).post(create_job))
        .route("/jobs/{name}", get(get_job))
        .route("/jobs/{name}/metrics", get(job_metrics))
        .route("/jobs/{name}/savepoints", axum::routing::post(trigger_savepoint))
        .route("/jobs/{name}/savepoints/{id}", get(savepoint_status))
        .route("/consumer-groups/{group}/lag", get(group_lag))
        .layer(axum::middleware::map_response(json_errors))
        .with_state(state)
}

/// The API's OpenAPI 3 description (served at `/openapi.json`).
pub fn openapi() -> Value {
    let ns = json!({"name": "namespace", "in": "query", "required": false,
        "schema": {"type": "string", "maxLength": 63, "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "description": "namespace (default: the watched one, else default)"});
    let name = json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string", "maxLength": 253,
        "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"}});
    let id = json!({"name": "id", "in": "path", "required": true,
        "schema": {"type": "string", "maxLength": 128, "pattern": "^[A-Za-z0-9._-]+$"}});
    let error = json!({"description": "what is wrong", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let ok = |what: &str| json!({"description": what, "content": {"application/json": {"schema": {"type": "object"}}}});
    json!({
        "openapi": "3.0.3",
        "info": {"title": "Weir operator API", "version": env!("CARGO_PKG_VERSION"),
            "description": "StreamJobs, their workers' figures, savepoints and consumer-group lag, beside kubectl."},
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}}
        },
        "paths": {
            "/jobs": {
                "get": {"summary": "List StreamJobs with their phase", "parameters": [ns],
                    "responses": {"200": ok("the jobs"), "400": error, "401": error, "403": error, "502": error}},
                "post": {"summary": "Create a StreamJob from a manifest (YAML or JSON)", "parameters": [ns],
                    "requestBody": {"required": true, "content": {"application/yaml": {"schema": {"type": "string"}}, "application/json": {"schema": {"type": "object"}}}},
                    "responses": {"201": ok("the created job"), "400": error, "401": error, "403": error, "409": error, "422": error, "502": error, "503": error}}
            },
            "/jobs/{name}": {"get": {"summary": "One StreamJob: summary, spec, status", "parameters": [name, ns],
                "responses": {"200": ok("the job"), "400": error, "401": error, "403": error, "404": error, "502": error}}},
            "/jobs/{name}/metrics": {"get": {"summary": "Events/s, capacity, lag, processing lag, checkpoints, per worker; busy and backpressure per operator", "parameters": [name, ns],
                "responses": {"200": ok("the job's figures"), "400": error, "401": error, "403": error, "404": error, "502": error}}},
            "/jobs/{name}/savepoints": {"post": {"summary": "Take a savepoint on every worker", "parameters": [name, ns],
                "responses": {"202": ok("the savepoint id"), "400": error, "401": error, "403": error, "404": error, "409": error, "502": error}}},
            "/jobs/{name}/savepoints/{id}": {"get": {"summary": "Progress of a savepoint", "parameters": [name, id, ns],
                "responses": {"200": ok("in-progress, failed or completed"), "400": error, "401": error, "403": error, "404": error, "502": error}}},
            "/consumer-groups/{group}/lag": {"get": {"summary": "Committed and end offsets and lag per partition", "parameters": [{"name": "group", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": ok("the lag"), "401": error, "403": error, "404": error, "502": error}}},
            "/healthz": {"get": {"summary": "Liveness", "security": [], "responses": {"200": {"description": "ok"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics of the operator", "security": [], "responses": {"200": {"description": "text exposition format"}}}}
        }
    })
}

fn summary(j: &StreamJob) -> Value {
    let st = j.status.clone().unwrap_or_default();
    json!({
        "namespace": j.namespace(),
        "name": j.name_any(),
        "phase": st.phase,
        "parallelism": {"desired": build::parallelism(&crate::scaling::autoscaled(j, &st)), "ready": st.parallelism},
        "observedGeneration": st.observed_generation,
        "generation": j.metadata.generation,
    })
}

async fn list_jobs(State(s): State<Arc<ApiState>>, headers: HeaderMap, Query(q): Query<NsQuery>) -> Res {
    let ns = s.authorized_ns(&headers, &q, "list").await?;
    let jobs = s.jobs(&ns).list(&ListParams::default()).await?;
    Ok(Json(json!({"jobs": jobs.items.iter().map(summary).collect::<Vec<_>>()})))
}

async fn create_job(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Query(q): Query<NsQuery>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let caller = s.authenticate(&headers).await?;
    let body = std::str::from_utf8(&body).map_err(|e| bad_request(format!("the manifest is not UTF-8 text: {e}")))?;
    // YAML is a superset of JSON: one parser for both, with the path of every error.
    let (m, header) = Manifest::parse(body, "").map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    if m.metadata.name.is_empty() {
        return Err(ApiError(StatusCode::BAD_REQUEST, "metadata.name: a StreamJob needs a name".into()));
    }
    let ns = match (&m.metadata.namespace, &q.namespace) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("metadata.namespace {a} differs from ?namespace={b}"),
            ))
        }
        (Some(a), _) => s.ns(&NsQuery { namespace: Some(a.clone()) })?,
        (None, _) => s.ns(&q)?,
    };
    s.permit(&caller, "create", Some(&ns)).await?;
    let mut job = StreamJob::new(&m.metadata.name, m.spec);
    job.metadata.namespace = Some(ns.clone());
    // The spec as the operator and its workers will validate it (Avro inputs against their
    // registry subjects), every error at once.
    let valid = crate::registry::validate(&s.client, &ns, &job).await.map_err(|crate::registry::Unreachable(e)| {
        ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("the job's schema registry cannot be asked: {e}"))
    })?;
    let mut errs = header;
    errs.0.extend(valid.err().map(|e| e.0).unwrap_or_default());
    if !errs.0.is_empty() {
        return Err(ApiError(StatusCode::BAD_REQUEST, format!("invalid StreamJob: {errs}")));
    }
    let created = s.jobs(&ns).create(&PostParams::default(), &job).await?;
    Ok((StatusCode::CREATED, Json(summary(&created))))
}

async fn get_job(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<NsQuery>,
) -> Res {
    job_name(&name)?;
    let ns = s.authorized_ns(&headers, &q, "get").await?;
    let job = s.jobs(&ns).get(&name).await?;
    let mut v = summary(&job);
    v["spec"] = serde_json::to_value(&job.spec).unwrap_or(Value::Null);
    v["status"] = serde_json::to_value(&job.status).unwrap_or(Value::Null);
    Ok(Json(v))
}

fn max_of(rows: &[w::Series], name: &str) -> Option<f64> {
    rows.iter().filter(|r| r.0 == name).map(|r| r.2).reduce(f64::max)
}

/// The job's worker Pods with their IPs.
async fn workers(s: &ApiState, ns: &str, job: &StreamJob) -> Result<Vec<(String, Option<String>)>, ApiError> {
    Ok(crate::workers::pods(&s.client, ns, job).await?)
}

/// `POST /jobs/{name}/savepoints`: asks every worker for a savepoint with a new id; 202 with
/// the id to poll, 409 when the job has no checkpoint storage or a worker refuses.
async fn trigger_savepoint(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<NsQuery>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    job_name(&name)?;
    let ns = s.authorized_ns(&headers, &q, "update").await?;
    let job = s.jobs(&ns).get(&name).await?;
    if job.spec.checkpoint_storage().is_none() {
        return Err(ApiError(StatusCode::CONFLICT, "savepoints need spec.checkpointing.storage".into()));
    }
    let pods = workers(&s, &ns, &job).await?;
    let token = w::admin_token(&s.client, &ns, &job).await?;
    let id = format!("sp-{}", chrono_millis());
    let answers = w::trigger_savepoint(&pods, &id, token.as_deref()).await.map_err(|e| match e {
        TriggerError::Refused(m) => ApiError(StatusCode::CONFLICT, m),
        TriggerError::Unreachable(m) => ApiError(StatusCode::BAD_GATEWAY, m),
    })?;
    Ok((StatusCode::ACCEPTED, Json(json!({"id": id, "state": "requested", "workers": answers}))))
}

fn chrono_millis() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis())
}

/// `GET /jobs/{name}/savepoints/{id}`: `completed` once every worker's part is stored (then it
/// is also the job's `status.lastSavepoint`), `failed` if one failed, else `in-progress`.
async fn savepoint_status(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((name, id)): Path<(String, String)>,
    Query(q): Query<NsQuery>,
) -> Res {
    job_name(&name)?;
    if id.is_empty() || id.len() > 128 || !id.bytes().all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c)) {
        return Err(bad_request(format!("`{}` is not a savepoint id (letters, digits, `-`, `_`, `.`)", shown(&id))));
    }
    let ns = s.authorized_ns(&headers, &q, "get").await?;
    let jobs = s.jobs(&ns);
    let job = jobs.get(&name).await?;
    let pods = workers(&s, &ns, &job).await?;
    if pods.is_empty() {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("savepoint {id}: the job has no workers")));
    }
    let token = w::admin_token(&s.client, &ns, &job).await?;
    let Progress { state, location, workers: states } = savepoint_progress(&pods, &id, token.as_deref()).await;
    if state == "unknown" {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no worker knows savepoint {id}")));
    }
    if state == "completed" {
        let path = location.clone().unwrap_or_default();
        let mut st = job.status.clone().unwrap_or_default();
        let time = Some(k8s_openapi::jiff::Timestamp::now().to_string());
        if st.record_savepoint(weir_crds::SavepointInfo { path, time, trigger: Some("api".into()) }) {
            let patch = json!({"status": {"lastSavepoint": st.last_savepoint, "savepoints": st.savepoints}});
            jobs.patch_status(&name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await?;
        }
    }
    Ok(Json(json!({"id": id, "state": state, "location": location, "workers": states})))
}

async fn job_metrics(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<NsQuery>,
) -> Res {
    job_name(&name)?;
    let ns = s.authorized_ns(&headers, &q, "get").await?;
    let job = s.jobs(&ns).get(&name).await?;
    let mut workers = Vec::new();
    let mut all: Vec<w::Series> = Vec::new();
    let mut per_worker = Vec::new();
    let pods = self::workers(&s, &ns, &job).await?;
    for ((pod, _), read) in pods.iter().zip(w::read_metrics(&pods).await) {
        match read {
            Ok(rows) => {
                workers.push(json!({
                    "pod": pod,
                    "eventsPerSecond": total(&rows, "weir_input_records_per_second"),
                    "capacityPerSecond": total(&rows, "weir_capacity_records_per_second"),
                    "busyRatio": total(&rows, "weir_busy_ratio"),
                    "consumerLag": total(&rows, "weir_consumer_lag"),
                }));
                all.extend(rows.iter().cloned());
                per_worker.push((pod.clone(), rows));
            }
            Err(e) => workers.push(json!({"pod": pod, "error": format!("{e:#}")})),
        }
    }
    let checkpoints = total(&all, "weir_checkpoint_duration_seconds_count");
    Ok(Json(json!({
        "namespace": ns,
        "name": name,
        "eventsPerSecond": total(&all, "weir_input_records_per_second"),
        "capacityPerSecond": total(&all, "weir_capacity_records_per_second"),
        "recordsIn": total(&all, "weir_records_in_total"),
        "recordsOut": total(&all, "weir_records_out_total"),
        "lateRecords": total(&all, "weir_late_records_total"),
        "deadLetters": total(&all, "weir_dead_letters_total"),
        "consumerLag": total(&all, "weir_consumer_lag"),
        "processingLagMs": max_of(&all, "weir_watermark_lag_ms"),
        "checkpoints": checkpoints,
        "meanCheckpointSeconds": (checkpoints > 0.0).then(|| total(&all, "weir_checkpoint_duration_seconds_sum") / checkpoints),
        "operators": w::operator_figures(&per_worker),
        "workers": workers,
    })))
}

async fn group_lag(State(s): State<Arc<ApiState>>, headers: HeaderMap, Path(group): Path<String>) -> Res {
    let caller = s.authenticate(&headers).await?;
    let mut all = Vec::new();
    if s.watched.is_empty() {
        s.permit(&caller, "list", None).await?;
        all = Api::<StreamJob>::all(s.client.clone()).list(&ListParams::default()).await?.items;
    } else {
        for ns in &s.watched {
            s.permit(&caller, "list", Some(ns)).await?;
            all.extend(s.jobs(ns).list(&ListParams::default()).await?.items);
        }
    }
    let mut sources = Vec::new();
    for j in all {
        if weir_crds::consumer_group(&j.spec.pipeline, &j.name_any(), j.namespace().as_deref()) == group {
            let ns = j.namespace().unwrap_or_default();
            for k in j.spec.pipeline.sources.values().filter_map(|src| src.kafka.as_ref()) {
                let properties = kafka::resolve(&s.client, &ns, &j, &k.properties)
                    .await
                    .map_err(|e| ApiError(StatusCode::BAD_GATEWAY, e))?;
                sources.push((k.brokers.clone(), k.topic.clone(), properties));
            }
        }
    }
    if sources.is_empty() {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no StreamJob reads Kafka with consumer group {group}")));
    }
    let g = group.clone();
    let topics = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Value>> {
        sources.iter().map(|(brokers, topic, properties)| topic_lag(brokers, &g, topic, properties)).collect()
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| ApiError(StatusCode::BAD_GATEWAY, format!("Kafka: {e:#}")))?;
    let lag: i64 = topics.iter().filter_map(|t| t["lag"].as_i64()).sum();
    Ok(Json(json!({"group": group, "lag": lag, "topics": topics})))
}

/// Committed offset, end offset and lag of every partition of `topic` for `group`.
fn topic_lag(
    brokers: &str,
    group: &str,
    topic: &str,
    properties: &std::collections::BTreeMap<String, String>,
) -> anyhow::Result<Value> {
    let partitions = kafka::topic_offsets(&kafka::offsets_client(brokers, group, properties)?, topic)?;
    let lag: i64 = partitions.iter().map(kafka::PartitionOffsets::lag).sum();
    let partitions: Vec<Value> = partitions
        .iter()
        .map(|p| json!({"partition": p.partition, "committed": p.committed, "end": p.end, "lag": p.lag()}))
        .collect();
    Ok(json!({"topic": topic, "brokers": brokers, "lag": lag, "partitions": partitions}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workers::parse_metrics;

    #[test]
    fn the_openapi_document_describes_every_route() {
        let doc = openapi();
        assert_eq!(doc["openapi"], "3.0.3");
        let paths: Vec<&str> = doc["paths"].as_object().unwrap().keys().map(String::as_str).collect();
        for route in [
            "/jobs",
            "/jobs/{name}",
            "/jobs/{name}/metrics",
            "/jobs/{name}/savepoints",
            "/jobs/{name}/savepoints/{id}",
            "/consumer-groups/{group}/lag",
            "/healthz",
            "/metrics",
        ] {
            assert!(paths.contains(&route), "{route} is documented");
        }
        assert!(doc["paths"]["/jobs"]["post"]["responses"]["400"].is_object());
    }

    #[test]
    fn prometheus_text_is_read_per_series() {
        let text = "# HELP x y\n# TYPE weir_consumer_lag gauge\nweir_consumer_lag{partition=\"0\",source=\"p\",streamjob=\"j\"} 5\nweir_consumer_lag{partition=\"1\",source=\"p\",streamjob=\"j\"} 7\nweir_busy_ratio{streamjob=\"j\"} 0.25\nweir_watermark_lag_ms{partition=\"0\"} 120\nweir_watermark_lag_ms{partition=\"1\"} 80\n";
        let rows = parse_metrics(text);
        assert_eq!(total(&rows, "weir_consumer_lag"), 12.0);
        assert_eq!(total(&rows, "weir_busy_ratio"), 0.25);
        assert_eq!(max_of(&rows, "weir_watermark_lag_ms"), Some(120.0));
        assert_eq!(max_of(&rows, "absent"), None);
        assert!(total(&rows, "absent").is_sign_positive());
    }
}
