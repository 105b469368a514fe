//! `tekfed-agent`: the member agent. It connects to its member cluster and
//! to the hub, checks that the member serves Tekton's v1 API and the hub
//! tekfed's, then reports heartbeats and load and carries runs' release and
//! status (see the library).
//!
//! With `--leader-elect` it first waits for a Lease on the member, runs its
//! loops only while it holds it, exits non-zero the moment it cannot be
//! sure it still does, and releases it on SIGTERM or Ctrl-C.
//!
//! From the start it serves metrics and the kubelet's probes on
//! `--metrics-addr` (see the library's `health` for what they answer), and
//! uses a new token as soon as its hub kubeconfig file holds one; while
//! leading it renews that token itself (see the library's `credentials`).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tekfed_member_agent::credentials::{HubCredentials, SecretRef};
use tekfed_member_agent::health::Health;
use tekfed_member_agent::metrics::Metrics;
use tekfed_runtime::connect::{Target, require_apis, tekton_apis};
use tekfed_runtime::leader::{self, LeaderElector, LeaseSettings};
use tekfed_runtime::serve::{self, Endpoints};

/// `--metrics-addr` when none is given, the port of the hub's and the chart's.
const DEFAULT_METRICS_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 9090));

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
    /// The member Secret (NAMESPACE/NAME) holding the hub kubeconfig, as
    /// `kubectl tekfed join` makes it (tekfed-system/tekfed-hub-kubeconfig):
    /// the agent renews its hub token before it expires and writes the new
    /// one there. Without it the token is not renewed (a file it reads
    /// that changes is still used at once).
    #[arg(long, value_name = "NAMESPACE/NAME")]
    hub_kubeconfig_secret: Option<String>,
    /// The key of that Secret holding the kubeconfig.
    #[arg(long, default_value = "kubeconfig")]
    hub_kubeconfig_secret_key: String,
    /// Renew the hub token when less than this is left of it (e.g. 2d,
    /// 9m30s). Default: when less than a third of its lifetime is left.
    #[arg(long, value_parser = humantime::parse_duration)]
    renew_before: Option<Duration>,
    /// Seconds between heartbeats (load reports) to the hub.
    #[arg(long, default_value = "5")]
    heartbeat_interval: f64,
    /// Where to serve Prometheus metrics (`/metrics`) and the kubelet's
    /// probes (`/healthz`, `/readyz`); port 0 picks a free one. An address
    /// given here that cannot be listened on stops the agent. Without it
    /// the agent tries 0.0.0.0:9090 and, when that port is taken (several
    /// agents on one machine), goes on without them.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Take part in leader election: only the holder of a
    /// coordination.k8s.io Lease on the member acts, so two replicas can
    /// run.
    #[arg(long)]
    leader_elect: bool,
    /// Name of that Lease (default: tekfed-agent-<cluster name>).
    #[arg(long)]
    leader_elect_lease_name: Option<String>,
    /// Namespace of that Lease on the member; it must exist.
    #[arg(long, default_value = "tekfed-system")]
    leader_elect_namespace: String,
    /// Seconds the Lease stays valid without renewal. The leader renews
    /// every third of it and exits when it could not for two thirds; a
    /// standby takes over when it has seen no renewal for this long. Keep
    /// it well under the hub's --heartbeat-grace, or the hub declares the
    /// cluster lost while a standby takes over.
    #[arg(long, default_value_t = leader::DEFAULT_LEASE_SECONDS,
          value_parser = clap::value_parser!(u32).range(i64::from(leader::MIN_LEASE_SECONDS)..=3600))]
    leader_elect_lease_duration: u32,
    /// Test-only: seconds added to every time the agent writes (its
    /// heartbeat, release and report times), to play a member whose clock
    /// is off. The hub must judge the member by its own clock regardless.
    #[arg(long, hide = true, default_value_t = 0, allow_negative_numbers = true)]
    clock_offset: i64,
}

#[tokio::main]
async fn main() -> ExitCode {
    tekfed_runtime::init_tracing();
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
    let heartbeat = Duration::from_secs_f64(args.heartbeat_interval.max(0.1));
    let health = Arc::new(Health::new(heartbeat));
    let metrics = Arc::new(Metrics::new(&args.cluster_name));
    // Served before connecting, so a probe tells "connecting" from "dead".
    let listener = match args.metrics_addr {
        Some(addr) => Some(serve::bind(addr).await?),
        None => serve::bind(DEFAULT_METRICS_ADDR)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "metrics and probes not served: the default address is taken; pass --metrics-addr")
            })
            .ok(),
    };
    let serving = listener.map(|listener| {
        let (scraped, live, ready) = (metrics.clone(), health.clone(), health.clone());
        let endpoints = Endpoints {
            metrics: Arc::new(move || scraped.render()),
            live: Arc::new(move || live.live()),
            ready: Arc::new(move || ready.ready()),
        };
        tokio::spawn(serve::serve(listener, endpoints))
    });
    // The server's end (it never ends but by an error) ends the agent.
    let serving = async move {
        match serving {
            Some(task) => Ok(task.await??),
            None => std::future::pending().await,
        }
    };

    let member = Target {
        kubeconfig: args.kubeconfig,
        context: args.context,
    }
    .config()
    .await?;
    let member_server = member.cluster_url.to_string();
    let member = kube::Client::try_from(member)?;
    require_apis(&member, &member_server, &tekton_apis()).await?;

    let secret = args
        .hub_kubeconfig_secret
        .as_deref()
        .map(|s| SecretRef::parse(s, &args.hub_kubeconfig_secret_key))
        .transpose()
        .map_err(|e| anyhow::anyhow!("--hub-kubeconfig-secret: {e}"))?;
    let (credentials, hub) = HubCredentials::load(
        args.hub_kubeconfig.clone(),
        args.hub_context.clone(),
        secret,
        args.renew_before,
    )
    .await?;
    let hub_server = Target {
        kubeconfig: Some(args.hub_kubeconfig),
        context: args.hub_context,
    }
    .config()
    .await?
    .cluster_url
    .to_string();
    // A new token in the file is used from now on, leader or not.
    let watching = tokio::spawn(credentials.clone().watch_file());
    let serving = async move {
        let served = serving.await;
        watching.abort();
        served
    };
    // The agent's hub identity may read only its own cluster's namespace.
    let namespace = tekfed_api::cluster_namespace(&args.cluster_name);
    let assignments: kube::Api<tekfed_api::RunAssignment> =
        kube::Api::namespaced(hub.clone(), &namespace);
    match assignments
        .list_metadata(&kube::api::ListParams::default().limit(1))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => anyhow::bail!(
            "the hub at {hub_server} does not serve runassignments.tekfed.io.\nInstall the tekfed CRDs on the hub: kubectl apply --server-side -f api/manifests/"
        ),
        Err(e) => anyhow::bail!(
            "cannot read RunAssignments in {namespace} on the hub at {hub_server}: {e}\nCheck the agent's hub credentials (kubectl tekfed join creates them)"
        ),
    }
    tracing::info!(cluster = %args.cluster_name, %member_server, %hub_server, "connected to member and hub");
    if args.leader_elect {
        health.standby();
    }

    let elector = args.leader_elect.then(|| {
        let settings = LeaseSettings {
            namespace: args.leader_elect_namespace.clone(),
            name: args
                .leader_elect_lease_name
                .clone()
                .unwrap_or_else(|| tekfed_api::rbac::agent_lease(&args.cluster_name)),
            duration_seconds: args.leader_elect_lease_duration,
            identity: leader::identity(),
        };
        LeaderElector::new(member.clone(), &member_server, settings)
    });
    let agent = Arc::new(tekfed_member_agent::agent::Agent {
        cluster: args.cluster_name,
        hub,
        credentials,
        member,
        heartbeat,
        metrics,
        health,
        clock_offset: k8s_openapi::jiff::SignedDuration::from_secs(args.clock_offset),
    });
    tekfed_runtime::run_while_leading(elector, serving, move || agent.run()).await
}
