//! `tekfed-agent`: the member agent. It connects to its member cluster and
//! to the hub, checks that the member serves Tekton's v1 API and the hub
//! tekfed's, then reports heartbeats and load and carries runs' release and
//! status (see the library).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tekfed_crds::connect::{Target, require_apis, tekton_apis};

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
    /// Seconds between heartbeats (load reports) to the hub.
    #[arg(long, default_value = "5")]
    heartbeat_interval: f64,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
    // The agent's hub identity may read only its own cluster's namespace.
    let namespace = tekfed_crds::cluster_namespace(&args.cluster_name);
    let records: kube::Api<tekfed_crds::RunAssignment> =
        kube::Api::namespaced(hub.clone(), &namespace);
    match records
        .list_metadata(&kube::api::ListParams::default().limit(1))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => anyhow::bail!(
            "the hub at {hub_server} does not serve runassignments.tekfed.io.\nInstall the tekfed CRDs on the hub: kubectl apply --server-side -f crds/manifests/"
        ),
        Err(e) => anyhow::bail!(
            "cannot read RunAssignments in {namespace} on the hub at {hub_server}: {e}\nCheck the agent's hub credentials (kubectl tekfed join creates them)"
        ),
    }
    tracing::info!(cluster = %args.cluster_name, %member_server, %hub_server, "connected to member and hub");
    let agent = Arc::new(tekfed_member_agent::agent::Agent {
        cluster: args.cluster_name,
        hub,
        member,
        heartbeat: Duration::from_secs_f64(args.heartbeat_interval.max(0.1)),
    });
    tokio::select! {
        _ = agent.run() => {}
        r = tokio::signal::ctrl_c() => { r?; tracing::info!("stopping"); }
    }
    Ok(())
}
