//! `tekfed-hub`: the hub controller. It connects to the hub cluster, checks
//! that the tekfed CRDs are installed, and runs the controllers: member
//! clusters (credentials, reachability, heartbeats), propagation of
//! `FederatedTask`s, `FederatedPipeline`s and `FederatedStepAction`s, and
//! the scheduling and status of `FederatedTaskRun`s and
//! `FederatedPipelineRun`s.
//!
//! With `--leader-elect` it first waits for the leader Lease (serving only
//! metrics meanwhile), runs the controllers only while it holds it, exits
//! non-zero the moment it cannot be sure it still does, and releases it on
//! SIGTERM or Ctrl-C.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tekfed_api::{
    FederatedPipeline, FederatedPipelineRun, FederatedStepAction, FederatedTask, FederatedTaskRun,
};
use tekfed_hub::clusters::{self, ClusterContext, Members};
use tekfed_hub::dependencies;
use tekfed_hub::runs::{self, RunContext};
use tekfed_hub::templates::{self, TemplateContext};
use tekfed_runtime::connect::{Target, require_apis, tekfed_apis};
use tekfed_runtime::leader::{self, LeaderElector, LeaseSettings};

/// The tekfed hub controller: keeps federated Tekton templates in sync on
/// member clusters and schedules federated runs onto them.
#[derive(Parser, Debug)]
#[command(
    version,
    after_help = "Example:\n  tekfed-hub --kubeconfig ~/.kube/hub.yaml --context hub --namespace tekfed-system"
)]
struct Args {
    /// Kubeconfig of the hub cluster (default: $KUBECONFIG, ~/.kube/config, then in-cluster).
    #[arg(long, env = "TEKFED_HUB_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Context in that kubeconfig (default: its current context).
    #[arg(long)]
    context: Option<String>,
    /// Namespace of the member kubeconfig Secrets (when a MemberCluster's secretRef has none).
    #[arg(long, env = "TEKFED_NAMESPACE", default_value = "tekfed-system")]
    namespace: String,
    /// How often each member's reachability is checked again.
    #[arg(long, value_parser = humantime_secs, default_value = "30")]
    probe_interval: Duration,
    /// How long deleting a federated object waits for unreachable members
    /// before giving up on their copies (reported in an event).
    #[arg(long, value_parser = humantime_secs, default_value = "60")]
    deletion_timeout: Duration,
    /// Safety-net resync of every federated object, in seconds; changes
    /// are acted on at once without it.
    #[arg(long, value_parser = humantime_secs, default_value = "300")]
    resync: Duration,
    /// How old a member agent's last heartbeat may be for the member to
    /// stay Ready (and get new runs).
    #[arg(long, value_parser = humantime_secs, default_value = "30")]
    heartbeat_grace: Duration,
    /// How long a member must have been lost (no heartbeat past
    /// --heartbeat-grace) before runs that had started there are failed or
    /// moved as their spec.onClusterLost says. Runs that had not started
    /// move as soon as the member is lost. Kubernetes waits 5 minutes
    /// before evicting pods from a node that stopped reporting, for the
    /// same reason: an agent that restarts must not cost the builds running.
    #[arg(long, value_parser = humantime_secs, default_value = "300")]
    started_run_grace: Duration,
    /// Delete a finished federated run (with its member runs and records)
    /// this long after it finished (e.g. 24h, 30m); 0 keeps them until
    /// --finished-run-history removes them.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "24h")]
    finished_run_ttl: Duration,
    /// Keep at most this many finished runs of each kind per namespace,
    /// the newest; 0 for no limit.
    #[arg(long, default_value_t = 1000)]
    finished_run_history: usize,
    /// Renew a member token (the hub's own on each member, and its log
    /// reader's) when less than this is left of it (e.g. 2d, 9m30s).
    /// Default: when less than a third of the token's lifetime is left.
    #[arg(long, value_parser = humantime::parse_duration)]
    renew_before: Option<Duration>,
    /// Where to serve Prometheus metrics (`/metrics`) and the kubelet's
    /// probes (`/healthz`, `/readyz`); port 0 picks a free one.
    #[arg(long, default_value = "0.0.0.0:9090")]
    metrics_addr: std::net::SocketAddr,
    /// Where to serve run logs, the aggregated API `logs.tekfed.io` that
    /// `kubectl tekfed logs` reads (APIService `v1alpha1.logs.tekfed.io`),
    /// when --logs-cert and --logs-key are given. Served by every replica,
    /// leader or not. Port 0 picks a free one.
    #[arg(long, default_value = "0.0.0.0:8443")]
    logs_addr: std::net::SocketAddr,
    /// PEM serving certificate of the log API (the APIService's caBundle
    /// must verify it). Without it, no logs are served.
    #[arg(long, requires = "logs_key")]
    logs_cert: Option<PathBuf>,
    /// PEM private key of that certificate.
    #[arg(long, requires = "logs_cert")]
    logs_key: Option<PathBuf>,
    /// Take part in leader election: only the holder of a
    /// coordination.k8s.io Lease runs the controllers, so two replicas
    /// can run.
    #[arg(long)]
    leader_elect: bool,
    /// Name of that Lease.
    #[arg(long, default_value = "tekfed-hub")]
    leader_elect_lease_name: String,
    /// Namespace of that Lease (default: --namespace).
    #[arg(long)]
    leader_elect_namespace: Option<String>,
    /// Seconds the Lease stays valid without renewal. The leader renews
    /// every third of it and exits when it could not for two thirds; a
    /// standby takes over when it has seen no renewal for this long.
    #[arg(long, default_value_t = leader::DEFAULT_LEASE_SECONDS,
          value_parser = clap::value_parser!(u32).range(i64::from(leader::MIN_LEASE_SECONDS)..=3600))]
    leader_elect_lease_duration: u32,
}

/// Seconds, as a plain number (`30`) or with an `s` suffix (`30s`).
fn humantime_secs(text: &str) -> Result<Duration, String> {
    let digits = text.strip_suffix('s').unwrap_or(text);
    digits
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{text:?} is not a number of seconds (such as 30 or 30s)"))
}

#[tokio::main]
async fn main() -> ExitCode {
    tekfed_runtime::init_tracing();
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
        kubeconfig: args.kubeconfig.clone(),
        context: args.context.clone(),
    };
    let config = target.config().await?;
    let server = config.cluster_url.to_string();
    let client = kube::Client::try_from(config)?;
    require_apis(&client, &server, &tekfed_apis()).await?;
    tracing::info!(%server, "connected to the hub; tekfed CRDs are installed");

    // Metrics are served from the start, leader or not.
    let metrics = Arc::new(tekfed_hub::metrics::Metrics::default());
    let serving = tekfed_hub::metrics::serve(args.metrics_addr, metrics.clone());
    let logs = match (&args.logs_cert, &args.logs_key) {
        (Some(cert), Some(key)) => Some(tekfed_hub::logs::LogServerOptions {
            addr: args.logs_addr,
            cert: cert.clone(),
            key: key.clone(),
            namespace: args.namespace.clone(),
        }),
        _ => None,
    };
    let log_client = client.clone();
    let serving = async move {
        match logs {
            Some(options) => {
                tokio::try_join!(
                    async { serving.await.map_err(anyhow::Error::from) },
                    async {
                        tekfed_hub::logs::serve(log_client, options)
                            .await
                            .map_err(anyhow::Error::from)
                    },
                )?;
                Ok(())
            }
            None => Ok(serving.await?),
        }
    };
    let elector = args.leader_elect.then(|| {
        let settings = LeaseSettings {
            namespace: args
                .leader_elect_namespace
                .clone()
                .unwrap_or_else(|| args.namespace.clone()),
            name: args.leader_elect_lease_name.clone(),
            duration_seconds: args.leader_elect_lease_duration,
            identity: leader::identity(),
        };
        LeaderElector::new(client.clone(), &server, settings)
    });
    tekfed_runtime::run_while_leading(elector, serving, || controllers(client, args, metrics)).await
}

/// Every controller of the hub, run while leading. Whichever ends first
/// ends them all: they are dropped together, and nothing is written after.
async fn controllers(client: kube::Client, args: Args, metrics: Arc<tekfed_hub::metrics::Metrics>) {
    metrics.leader.set(1);
    let (members, mut requeue) = Members::new(metrics.template_syncs.clone());
    let members = Arc::new(members);
    let member_ctx = Arc::new(ClusterContext {
        hub: client.clone(),
        namespace: args.namespace,
        members: members.clone(),
        probe_interval: args.probe_interval,
        connect_timeout: Duration::from_secs(5),
        heartbeat_grace: args.heartbeat_grace,
        renew_before: args.renew_before,
        recorder: tekfed_hub::ownership::recorder(client.clone()),
        heartbeats: Default::default(),
    });
    let member_controller = clusters::controller::controller(&member_ctx);
    let run_ctx = Arc::new(RunContext::new(
        client.clone(),
        members.clone(),
        member_controller.store(),
        metrics.clone(),
        runs::Graces {
            unreachable: args.heartbeat_grace,
            started: args.started_run_grace,
        },
    ));
    let task_runs = runs::controller::<FederatedTaskRun>(&run_ctx);
    let pipeline_runs = runs::controller::<FederatedPipelineRun>(&run_ctx);
    let dispatcher = runs::dispatch(run_ctx.clone(), task_runs.store(), pipeline_runs.store());
    let sweep =
        dependencies::sweep::sweep(run_ctx.clone(), task_runs.store(), pipeline_runs.store());
    let retention = runs::retention::sweep(
        run_ctx.clone(),
        task_runs.store(),
        pipeline_runs.store(),
        runs::retention::Retention {
            ttl: (!args.finished_run_ttl.is_zero()).then_some(args.finished_run_ttl),
            keep: (args.finished_run_history > 0).then_some(args.finished_run_history),
        },
        Duration::from_secs(10),
    );
    let deps = run_ctx.deps.clone();
    // Native Tekton runs, when the hub cluster has Tekton's CRDs.
    let native = tekfed_hub::native::served(&client).await;
    if native {
        tracing::info!(
            "the hub serves Tekton's TaskRun and PipelineRun: federating those managed by tekfed.io/hub"
        );
    } else {
        tracing::info!(
            "the hub cannot list Tekton's TaskRuns and PipelineRuns (no Tekton CRDs on the hub, or no RBAC for them): native runs are off (Federated*Runs work as ever)"
        );
    }
    let native_runs = |kind| {
        let (client, members) = (client.clone(), run_ctx.members.clone());
        async move {
            if native {
                tekfed_hub::native::run(client, members, kind).await
            } else {
                std::future::pending().await
            }
        }
    };
    let native_task_runs = native_runs(tekfed_api::RunKind::TaskRun);
    let native_pipeline_runs = native_runs(tekfed_api::RunKind::PipelineRun);
    let ctx = Arc::new(TemplateContext::new(
        client,
        members,
        member_controller.store(),
        args.deletion_timeout,
        args.resync,
    ));
    let tasks = requeue
        .remove("FederatedTask")
        .expect("a channel per federated kind");
    let pipelines = requeue
        .remove("FederatedPipeline")
        .expect("a channel per federated kind");
    let step_actions = requeue
        .remove("FederatedStepAction")
        .expect("a channel per federated kind");
    tokio::select! {
        _ = clusters::controller::run(member_controller, member_ctx) => {}
        _ = templates::run::<FederatedTask>(ctx.clone(), tasks) => {}
        _ = templates::run::<FederatedPipeline>(ctx.clone(), pipelines) => {}
        _ = templates::run::<FederatedStepAction>(ctx, step_actions) => {}
        _ = runs::run(task_runs, run_ctx.clone()) => {}
        _ = runs::run(pipeline_runs, run_ctx.clone()) => {}
        _ = runs::watch_assignments(run_ctx) => {}
        _ = deps.watch() => {}
        _ = dispatcher => {}
        _ = sweep => {}
        _ = retention => {}
        _ = native_task_runs => {}
        _ = native_pipeline_runs => {}
    }
}
