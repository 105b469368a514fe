//! `tekfed-agent`: the member agent.
//!
//! This first cut connects to its member cluster and to the hub, checks
//! that the member serves Tekton's v1 API and the hub tekfed's, and then
//! waits for a stop signal. Heartbeats, load and run status come with the
//! runs issue.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tekfed_crds::connect::{Target, require_apis, tekfed_apis, tekton_apis};

/// The tekfed member agent: reports heartbeats, load and run status of one
/// member cluster to the hub.
#[derive(Parser, Debug)]
#[command(
    version,
    after_help = "Example:\n  tekfed-agent --cluster-name member-1 --hub-kubeconfig /etc/tekfed/hub.yaml"
)]
struct Args {
    /// The MemberCluster this agent reports for.
    #[arg(long, env = "TEKFED_CLUSTER_NAME")]
    cluster_name: String,
    /// Kubeconfig of the member cluster (default: $KUBECONFIG, ~/.kube/config, then in-cluster).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Context in the member kubeconfig.
    #[arg(long)]
    context: Option<String>,
    /// Kubeconfig of the hub cluster, holding this agent's hub identity.
    #[arg(long, env = "TEKFED_HUB_KUBECONFIG")]
    hub_kubeconfig: PathBuf,
    /// Context in the hub kubeconfig.
    #[arg(long)]
    hub_context: Option<String>,
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
            eprintln!("tekfed-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let member = Target {
        kubeconfig: args.kubeconfig,
        context: args.context,
    }
    .config()
    .await?;
    let member_server = member.cluster_url.to_string();
    let member = kube::Client::try_from(member)?;
    require_apis(&member, &member_server, &tekton_apis()).await?;

    let hub = Target {
        kubeconfig: Some(args.hub_kubeconfig),
        context: args.hub_context,
    }
    .config()
    .await?;
    let hub_server = hub.cluster_url.to_string();
    let hub = kube::Client::try_from(hub)?;
    require_apis(&hub, &hub_server, &tekfed_apis()).await?;
    tracing::info!(cluster = %args.cluster_name, %member_server, %hub_server, "connected to member and hub");
    tokio::signal::ctrl_c().await?;
    tracing::info!("stopping");
    Ok(())
}
