//! `weir-operator`: the Kubernetes operator for StreamJobs. It reconciles every StreamJob (in one
//! namespace with `--namespace`, else in all) into a ConfigMap with its manifest, a headless
//! Service, a StatefulSet of workers and a PodDisruptionBudget, and reports its status.
//! Kubernetes access comes from `KUBECONFIG` or the in-cluster service account.

mod api;
mod build;
mod reconcile;

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
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "WEIR_NAMESPACE")]
    namespace: Option<String>,
    /// Address of the REST API.
    #[arg(long, env = "WEIR_API_ADDR", default_value = "127.0.0.1:8080")]
    api_addr: SocketAddr,
    /// Bearer token the REST API requires (required unless it listens on loopback only).
    #[arg(long, env = "WEIR_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
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
    if cli.api_token.is_none() && !cli.api_addr.ip().is_loopback() {
        anyhow::bail!(
            "the REST API on {} would be open to anyone: set WEIR_API_TOKEN (or listen on 127.0.0.1)",
            cli.api_addr
        );
    }
    let state = Arc::new(api::ApiState {
        client: client.clone(),
        namespace: cli.namespace.clone().unwrap_or_else(|| "default".into()),
        restricted: cli.namespace.is_some(),
        token: cli.api_token.clone(),
    });
    let listener = tokio::net::TcpListener::bind(cli.api_addr)
        .await
        .with_context(|| format!("listening for the REST API on {}", cli.api_addr))?;
    tracing::info!("REST API on http://{}", listener.local_addr()?);
    let api = tokio::spawn(async move { axum::serve(listener, api::router(state)).await });
    tracing::info!(namespace = cli.namespace.as_deref().unwrap_or("(all)"), "watching StreamJobs");
    reconcile::run(client, cli.namespace).await;
    api.abort();
    tracing::info!("stopped");
    Ok(())
}
