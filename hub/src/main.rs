//! `tekfed-hub`: the hub controller.
//!
//! This first cut connects to the hub cluster, checks that the tekfed CRDs
//! are installed, and then waits for a stop signal. Propagation, the
//! scheduler and status aggregation come in the following issues.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tekfed_crds::connect::{Target, require_apis, tekfed_apis};

/// The tekfed hub controller: keeps federated Tekton templates in sync on
/// member clusters and schedules federated runs onto them.
#[derive(Parser, Debug)]
#[command(
    version,
    after_help = "Example:\n  tekfed-hub --kubeconfig ~/.kube/hub.yaml --context hub"
)]
struct Args {
    /// Kubeconfig of the hub cluster (default: $KUBECONFIG, ~/.kube/config, then in-cluster).
    #[arg(long, env = "TEKFED_HUB_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Context in that kubeconfig (default: its current context).
    #[arg(long)]
    context: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tekfed-hub: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let target = Target {
        kubeconfig: args.kubeconfig,
        context: args.context,
    };
    let config = target.config().await?;
    let server = config.cluster_url.to_string();
    let client = kube::Client::try_from(config)?;
    require_apis(&client, &server, &tekfed_apis()).await?;
    tracing::info!(%server, "connected to the hub; tekfed CRDs are installed");
    tokio::signal::ctrl_c().await?;
    tracing::info!("stopping");
    Ok(())
}
