//! `weir-operator`: the Kubernetes operator for StreamJobs. It reconciles every StreamJob (in the
//! namespaces given with `--namespace`, else in all) into a ConfigMap with its manifest, a headless
//! Service, a StatefulSet of workers and a PodDisruptionBudget, and reports its status.
//! Kubernetes access comes from `KUBECONFIG` or the in-cluster service account.

mod api;
mod autoscaler;
mod build;
mod kafka;
mod lease;
mod lifecycle;
mod metrics;
mod reconcile;
mod registry;
mod scaling;
mod workers;

use std::net::SocketAddr;
use std::sync::Arc;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{Api, Client};

#[derive(Parser)]
#[command(name = "weir-operator", version, about = "The Weir StreamJob operator")]
struct Cli {
    /// Watch only these namespaces, comma-separated or repeated (default: all namespaces).
    #[arg(long, env = "WEIR_NAMESPACE", value_delimiter = ',')]
    namespace: Vec<String>,
    /// Address of the REST API.
    #[arg(long, env = "WEIR_API_ADDR", default_value = "127.0.0.1:8080")]
    api_addr: SocketAddr,
    /// Bearer token the REST API requires (required unless it listens on loopback only).
    #[arg(long, env = "WEIR_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// Also accept bearer tokens the Kubernetes API server authenticates (TokenReview, e.g. a
    /// ServiceAccount's), each request authorized by RBAC on streamjobs (SubjectAccessReview).
    #[arg(long, env = "WEIR_API_TOKEN_REVIEW")]
    api_token_review: bool,
    /// Namespace of the leader-election Lease (default: the watched namespace, else `default`).
    #[arg(long, env = "WEIR_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    #[arg(long, env = "WEIR_LEASE_NAME", default_value = "weir-operator")]
    lease_name: String,
    /// Seconds without renewal after which another replica takes the lead.
    #[arg(long, env = "WEIR_LEASE_SECONDS", default_value_t = 15)]
    lease_seconds: u64,
    /// Seconds between the autoscaler's observations of a job (`spec.autoscaler.enabled`).
    #[arg(long, env = "WEIR_AUTOSCALER_PERIOD", default_value_t = 15)]
    autoscaler_period: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir-operator: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // kube's TLS needs one process-wide crypto provider; ring is the one it is built with.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::try_default().await.context("connecting to the Kubernetes API server (KUBECONFIG)")?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.get_opt("streamjobs.weir.dev")
        .await
        .context("looking up the StreamJob CRD")?
        .context("the StreamJob CRD is not installed; run `kubectl apply -f crds/streamjob.yaml`")?;
    if cli.api_token.is_none() && !cli.api_token_review && !cli.api_addr.ip().is_loopback() {
        anyhow::bail!(
            "the REST API on {} would be open to anyone: set WEIR_API_TOKEN or --api-token-review (or listen on 127.0.0.1)",
            cli.api_addr
        );
    }
    let metrics = Arc::new(metrics::Metrics::new());
    let scaling = Arc::new(scaling::Scaling::new(std::time::Duration::from_secs(cli.autoscaler_period)));
    let state = Arc::new(api::ApiState {
        metrics: metrics.clone(),
        client: client.clone(),
        namespace: cli.namespace.first().cloned().unwrap_or_else(|| "default".into()),
        watched: cli.namespace.clone(),
        token: cli.api_token.clone(),
        token_review: cli.api_token_review,
    });
    let listener = tokio::net::TcpListener::bind(cli.api_addr)
        .await
        .with_context(|| format!("listening for the REST API on {}", cli.api_addr))?;
    tracing::info!("REST API on http://{}", listener.local_addr()?);
    let api = tokio::spawn(async move { axum::serve(listener, api::router(state)).await });
    // Only the replica holding the Lease reconciles; every replica serves the API.
    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let lease_ns =
        cli.lease_namespace.clone().or_else(|| cli.namespace.first().cloned()).unwrap_or_else(|| "default".into());
    let elector = lease::Elector::new(
        client.clone(),
        &lease_ns,
        &cli.lease_name,
        &identity,
        std::time::Duration::from_secs(cli.lease_seconds.max(1)),
    );
    elector.acquire().await;
    let watched = if cli.namespace.is_empty() { "(all)".to_string() } else { cli.namespace.join(",") };
    tracing::info!(namespaces = %watched, "watching StreamJobs");
    let outcome = tokio::select! {
        () = reconcile::run(client, cli.namespace, metrics, scaling) => Ok(()),
        lost = elector.hold() => Err(anyhow::anyhow!("stopping: {lost}")),
    };
    api.abort();
    tracing::info!("stopped");
    outcome
}
