//! `kubectl-tekfed`: the operator's command line (works as `kubectl tekfed`
//! when on PATH): `join`, `unjoin`, `cordon`, `uncordon`, `drain`,
//! `status`, `crds`, and `dev up|down` for a local federation.

mod describe;
#[cfg(feature = "dev")]
mod dev;
mod drain;
mod join;
mod logs;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tekfed_api::{
    DRAIN_ANNOTATION, FederatedPipelineRun, FederatedTaskRun, MemberCluster, RunPhase,
};
use tekfed_runtime::connect::Target;

/// Operate a tekfed federation of Tekton clusters.
#[derive(Parser, Debug)]
#[command(name = "kubectl-tekfed", version)]
struct Args {
    /// Kubeconfig of the hub (default: $KUBECONFIG, ~/.kube/config, then in-cluster).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// Context of the hub in that kubeconfig (default: its current context).
    #[arg(long, global = true)]
    context: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Join a cluster to the federation: least-privilege identities on both sides, its kubeconfig Secret and MemberCluster on the hub.
    #[command(
        after_help = "Creates on the member: namespace tekfed-system, ServiceAccount tekfed-hub bound to a ClusterRole \
for Tekton objects, namespaces, and by name the ServiceAccounts, ConfigMaps and Secrets runs need carried \
(never listing or watching a Secret), and Secret tekfed-hub-kubeconfig (the agent's hub identity). \
On the hub: Secret tekfed-member-NAME (server, CA, token; no key of yours), MemberCluster NAME, \
namespace tekfed-cluster-NAME and the agent's ServiceAccount with a Role confined to it. \
Tokens live --token-ttl (a week); the hub and the agent renew their own before expiry, and \
MemberCluster condition CredentialsExpiring=True says when one could not be. \
Running it again changes nothing (and renews tokens close to expiry).\n\n\
The member guard (ValidatingAdmissionPolicy tekfed-member-guard, holding these terms) \
refuses the hub's writes on the member outside --allow-namespaces/--deny-namespaces and the system namespaces, \
to objects not labelled app.kubernetes.io/managed-by=tekfed, and of runs or Tasks asking for more than \
--pod-security allows (host namespaces, hostPath, privileged, added capabilities) or naming a ServiceAccount \
with rights there not listed in --service-accounts. Namespaces tekfed creates get the Pod Security label.\n\n\
Examples:\n  kubectl tekfed join member-1 --cluster-context kind-member-1 --hub-context kind-hub --labels region=eu\n  \
kubectl tekfed join gpu-1 --cluster-context gpu-1 --install-agent --agent-image registry.example/tekfed:0.1.0"
    )]
    Join {
        /// The member's name on the hub (a DNS label, e.g. member-1).
        name: String,
        /// The member cluster's context in the kubeconfig.
        #[arg(long)]
        cluster_context: String,
        /// The hub's context (default: --context, else the current context).
        #[arg(long)]
        hub_context: Option<String>,
        /// Labels for the MemberCluster, which placements select on: k=v,k2=v2.
        #[arg(long, value_parser = join::parse_label, value_delimiter = ',')]
        labels: Vec<(String, String)>,
        /// Also create the agent's Deployment, ServiceAccount and RBAC on the member.
        #[arg(long, conflicts_with = "print_agent_helm")]
        install_agent: bool,
        /// Print how to install the agent with Helm (the default).
        #[arg(long)]
        print_agent_helm: bool,
        /// The agent image, with --install-agent.
        #[arg(long, default_value = concat!("tekfed:", env!("CARGO_PKG_VERSION")))]
        agent_image: String,
        /// The member API server as the hub reaches it (default: the context's server).
        #[arg(long)]
        member_server: Option<String>,
        /// The hub API server as the agent reaches it (default: the hub context's server).
        #[arg(long)]
        hub_server: Option<String>,
        /// Lifetime of the tokens join issues (at least 10m). The hub and the agent renew theirs before they expire (with a third of it left), so joining again is needed only after they were down that long; a later join also renews tokens that are due.
        #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
        token_ttl: std::time::Duration,
        /// Namespaces the hub may write in on this member: names, or prefixes ending in '*' (team-*); default: all but the denied and system ones (kube-*, tekton-*, tekfed-system, never allowed).
        #[arg(long, value_delimiter = ',')]
        allow_namespaces: Vec<String>,
        /// Namespaces the hub may not write in on this member, besides the system ones.
        #[arg(long, value_delimiter = ',')]
        deny_namespaces: Vec<String>,
        /// Pod Security level of the namespaces tekfed creates on the member, and the most a run or Task may ask of its pods: restricted, baseline or privileged.
        #[arg(long, default_value = "restricted")]
        pod_security: tekfed_api::guard::PodSecurityLevel,
        /// ServiceAccounts of the member (NAMESPACE/NAME, or NAME in any namespace) that runs may name although they hold rights there (read Secrets, create pods, bind roles, mint tokens).
        #[arg(long, value_delimiter = ',')]
        service_accounts: Vec<String>,
    },
    /// Remove what join created on the hub (and on the member with --cluster-context).
    #[command(
        after_help = "Refuses while runs are active on the member unless --force; drain it first. \
Revokes the tokens join issued by deleting their ServiceAccounts (the agent's on the hub; the hub's and the log \
reader's on the member, with --cluster-context), and exits non-zero naming any that may still be valid.\n\n\
Examples:\n  kubectl tekfed drain member-1 && kubectl tekfed unjoin member-1 --cluster-context kind-member-1"
    )]
    Unjoin {
        /// The MemberCluster to remove.
        name: String,
        /// The member's context, to remove tekfed's objects there too.
        #[arg(long)]
        cluster_context: Option<String>,
        /// The hub's context (default: --context, else the current context).
        #[arg(long)]
        hub_context: Option<String>,
        /// Unjoin even while runs are active there.
        #[arg(long)]
        force: bool,
    },
    /// A local federation on this machine for trying tekfed: real API servers, hub, agents.
    #[cfg(feature = "dev")]
    #[command(subcommand)]
    Dev(DevCommand),
    /// Print the tekfed CRDs and admission policies as YAML, to install them on a hub.
    #[command(after_help = "Example:\n  kubectl tekfed crds | kubectl apply --server-side -f -")]
    Crds,
    /// Stop new runs from landing on a member (runs already there go on).
    #[command(
        after_help = "Example:\n  kubectl tekfed cordon member-2\n  kubectl tekfed uncordon member-2"
    )]
    Cordon {
        /// The MemberCluster (kubectl get mc lists them).
        name: String,
    },
    /// Let new runs land on a cordoned member again.
    #[command(after_help = "Example:\n  kubectl tekfed uncordon member-2")]
    Uncordon {
        /// The MemberCluster (kubectl get mc lists them).
        name: String,
    },
    /// Cordon a member, move its runs that have not started to other clusters, and wait for the started ones to finish.
    #[command(
        after_help = "The hub moves held and not-yet-started runs with a fenced revoke, so nothing runs twice; \
started runs finish where they are. Progress: running / moved / left to move. Interrupting drain \
does not stop the hub from moving runs; the member stays cordoned until `uncordon`.\n\n\
Examples:\n  kubectl tekfed drain member-2\n  kubectl tekfed drain member-2 --timeout 30m --cancel-remaining"
    )]
    Drain {
        /// The MemberCluster (kubectl get mc lists them).
        name: String,
        /// How long to wait for started runs to finish (e.g. 90s, 10m, 1h).
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// At the timeout, cancel the runs still running there.
        #[arg(long)]
        cancel_remaining: bool,
    },
    /// Describe a federated run: where it ran and why there, why it waits, moves, conditions, its TaskRuns' steps, Events.
    #[command(
        after_help = "Steps come from the run's pods on its member, read through the hub (as for `logs`: you need get on \
the run and on federated*runs/steps in logs.tekfed.io, which the chart's tekfed-hub-logs-reader role grants).\n\n\
Examples:\n  kubectl tekfed describe fpr/build-42 -n ci\n  kubectl tekfed describe ftr/smoke"
    )]
    Describe {
        /// The run: fpr/NAME (FederatedPipelineRun), ftr/NAME (FederatedTaskRun), or NAME.
        #[arg(value_parser = logs::parse_run)]
        run: (Option<tekfed_api::RunKind>, String),
        /// The run's namespace (default: the context's namespace).
        #[arg(long, short = 'n')]
        namespace: Option<String>,
    },
    /// Print a federated run's step logs, read through the hub, in execution order, each line prefixed [task : step].
    #[command(
        after_help = "Only your hub credentials are needed: the hub reads the logs on the member the run went to. You need `get` on the run and on its `log` subresource in group logs.tekfed.io (the tekfed-hub chart's tekfed-logs-reader ClusterRole grants the latter; it is aggregated into `view`).\n\nExamples:\n  kubectl tekfed logs fpr/build-42 -n ci\n  kubectl tekfed logs -f fpr/build-42 --task test\n  kubectl tekfed logs ftr/smoke --cluster member-2 --step run\n  kubectl get --raw '/apis/logs.tekfed.io/v1alpha1/namespaces/ci/federatedpipelineruns/build-42/log?follow=true'"
    )]
    Logs {
        /// The run: fpr/NAME (FederatedPipelineRun), ftr/NAME (FederatedTaskRun), or NAME.
        #[arg(value_parser = logs::parse_run)]
        run: (Option<tekfed_api::RunKind>, String),
        /// The run's namespace (default: the context's namespace).
        #[arg(long, short = 'n')]
        namespace: Option<String>,
        /// Keep printing until the run finishes, including steps and tasks that start later.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Only this task (a pipeline task's name).
        #[arg(long)]
        task: Option<String>,
        /// Only this step.
        #[arg(long)]
        step: Option<String>,
        /// For a run with placement mode All: which cluster's copy.
        #[arg(long)]
        cluster: Option<String>,
    },
    /// One table of members (ready, schedulable, load, assigned, heartbeat age) and the run queue.
    #[command(after_help = "Example:\n  kubectl tekfed status --context hub")]
    Status,
}

#[cfg(feature = "dev")]
#[derive(Subcommand, Debug)]
enum DevCommand {
    /// Start a hub and N members (etcd + kube-apiserver each; on each member Tekton's controller and webhook, a scheduler and kwok), join them, run the hub and agents in the background.
    #[command(
        after_help = "Needs the binaries `make bins` builds (or TEKFED_K8S_BIN_DIR) and `cargo build --workspace --bins`. \
No kubelet runs: kwok plays the pods Tekton creates on a fake Node. A run's annotations say how its pods go: \
tekfed.io/test-duration: 5s (how long the steps run; default 100ms), tekfed.io/test-fail-step: NAME \
(that step exits 1, or tekfed.io/test-exit-code).\n\n\
Examples:\n  kubectl tekfed dev up --members 3\n  export KUBECONFIG=$PWD/.tekfed-dev/kubeconfig; kubectl --context hub get mc\n  kubectl tekfed dev down"
    )]
    Up {
        /// How many member clusters.
        #[arg(long, default_value = "3")]
        members: usize,
        /// Where the kubeconfig, logs and pids go.
        #[arg(long, default_value = ".tekfed-dev")]
        dir: PathBuf,
    },
    /// Stop everything `dev up` started and remove its folder.
    #[command(after_help = "Example:\n  kubectl tekfed dev down --dir .tekfed-dev")]
    Down {
        #[arg(long, default_value = ".tekfed-dev")]
        dir: PathBuf,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kubectl-tekfed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let target = Target {
        kubeconfig: args.kubeconfig,
        context: args.context,
    };
    match args.command {
        Command::Crds => {
            let docs: Vec<String> = tekfed_api::manifests::manifests()
                .into_iter()
                .map(|(_, yaml)| yaml)
                .collect();
            print!("{}", docs.join("---\n"));
            Ok(())
        }
        Command::Cordon { name } => set_unschedulable(&target.client().await?, &name, true).await,
        Command::Uncordon { name } => {
            set_unschedulable(&target.client().await?, &name, false).await
        }
        Command::Join {
            name,
            cluster_context,
            hub_context,
            labels,
            install_agent,
            print_agent_helm: _,
            agent_image,
            member_server,
            hub_server,
            token_ttl,
            allow_namespaces,
            deny_namespaces,
            pod_security,
            service_accounts,
        } => {
            join::join(join::JoinOptions {
                name,
                kubeconfig: target.kubeconfig.clone(),
                cluster_context,
                hub_context: hub_context.or(target.context.clone()),
                labels,
                install_agent,
                agent_image,
                member_server,
                hub_server,
                token_ttl,
                tenancy: tekfed_api::guard::Tenancy {
                    allow_namespaces,
                    deny_namespaces,
                    pod_security,
                    service_accounts,
                },
                quiet: false,
            })
            .await
        }
        Command::Unjoin {
            name,
            cluster_context,
            hub_context,
            force,
        } => {
            join::unjoin(join::UnjoinOptions {
                name,
                kubeconfig: target.kubeconfig.clone(),
                cluster_context,
                hub_context: hub_context.or(target.context.clone()),
                force,
            })
            .await
        }
        #[cfg(feature = "dev")]
        Command::Dev(DevCommand::Up { members, dir }) => dev::up(members, dir).await,
        #[cfg(feature = "dev")]
        Command::Dev(DevCommand::Down { dir }) => dev::down(&dir).await,
        Command::Drain {
            name,
            timeout,
            cancel_remaining,
        } => {
            drain::drain(
                &target.client().await?,
                &name,
                drain::Options {
                    timeout,
                    cancel_remaining,
                },
            )
            .await
        }
        Command::Status => status(&target.client().await?).await,
        Command::Describe { run, namespace } => {
            describe::describe(&target.client().await?, namespace, run).await
        }
        Command::Logs {
            run,
            namespace,
            follow,
            task,
            step,
            cluster,
        } => {
            let options = tekfed_api::logs::LogOptions {
                follow,
                task,
                step,
                cluster,
            };
            logs::logs(&target.client().await?, namespace, run, options).await
        }
    }
}

pub(crate) async fn member(
    clusters: &Api<MemberCluster>,
    name: &str,
) -> anyhow::Result<MemberCluster> {
    clusters.get_opt(name).await?.ok_or_else(|| {
        anyhow::anyhow!("there is no member cluster {name}; `kubectl get mc` lists them")
    })
}

/// Cordon or uncordon; saying so when there is nothing to change.
async fn set_unschedulable(client: &Client, name: &str, cordon: bool) -> anyhow::Result<()> {
    let clusters: Api<MemberCluster> = Api::all(client.clone());
    let mc = member(&clusters, name).await?;
    let draining = mc.annotations().contains_key(DRAIN_ANNOTATION);
    if mc.spec.unschedulable == cordon && (cordon || !draining) {
        let state = if cordon { "cordoned" } else { "schedulable" };
        println!("{name} is already {state}; nothing changed");
        return Ok(());
    }
    let patch = if cordon {
        json!({"spec": {"unschedulable": true}})
    } else {
        // Uncordon ends a drain too.
        json!({"metadata": {"annotations": {DRAIN_ANNOTATION: null}}, "spec": {"unschedulable": false}})
    };
    clusters
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    if cordon {
        println!(
            "{name} cordoned: no new runs will land there; runs already there go on.\nUndo with: kubectl tekfed uncordon {name}"
        );
    } else {
        println!("{name} uncordoned: new runs may land there again");
    }
    Ok(())
}

async fn status(client: &Client) -> anyhow::Result<()> {
    let clusters: Api<MemberCluster> = Api::all(client.clone());
    let now = k8s_openapi::jiff::Timestamp::now();
    let mut rows = vec![
        [
            "NAME",
            "READY",
            "SCHEDULABLE",
            "RUNNING",
            "PENDING",
            "ASSIGNED",
            "CAPACITY",
            "HEARTBEAT",
        ]
        .map(String::from),
    ];
    for mc in clusters.list(&ListParams::default()).await? {
        let status = mc.status.clone().unwrap_or_default();
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| {
                if c.status == "True" {
                    "True".to_owned()
                } else {
                    format!("False ({})", c.reason)
                }
            })
            .unwrap_or_else(|| "Unknown".into());
        let load = status.load.clone().unwrap_or_default();
        let heartbeat = status
            .last_heartbeat_time
            .map(|t| format!("{}s ago", now.duration_since(t.0).as_secs().max(0)))
            .unwrap_or_else(|| "never".into());
        rows.push([
            mc.name_any(),
            ready,
            status
                .schedulable
                .map(|s| s.to_string())
                .unwrap_or_else(|| "false".into()),
            load.running.to_string(),
            load.pending.to_string(),
            status.assigned_runs.unwrap_or(0).to_string(),
            mc.spec
                .max_concurrent_runs
                .map(|m| m.to_string())
                .unwrap_or_else(|| "-".into()),
            heartbeat,
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
    let mut queued = Vec::new();
    for run in Api::<FederatedTaskRun>::all(client.clone())
        .list(&ListParams::default())
        .await?
    {
        queued.extend(queued_reason(run.status.as_ref()));
    }
    for run in Api::<FederatedPipelineRun>::all(client.clone())
        .list(&ListParams::default())
        .await?
    {
        queued.extend(queued_reason(run.status.as_ref()));
    }
    let mut reasons: std::collections::BTreeMap<String, usize> = Default::default();
    for reason in &queued {
        *reasons.entry(reason.clone()).or_default() += 1;
    }
    let detail: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    println!(
        "\nqueue: {} run(s) waiting{}",
        queued.len(),
        if detail.is_empty() {
            String::new()
        } else {
            format!(" ({})", detail.join(", "))
        }
    );
    Ok(())
}

/// The reason a run waits, if it is queued.
fn queued_reason(status: Option<&tekfed_api::RunStatus>) -> Option<String> {
    let status = status?;
    // A run with no phase yet has not been looked at: it waits too.
    if status.phase.is_some_and(|p| p != RunPhase::Queued) {
        return None;
    }
    Some(
        status
            .conditions
            .iter()
            .find(|c| c.type_ == "Scheduled")
            .map(|c| c.reason.clone())
            .unwrap_or_else(|| "New".into()),
    )
}
