//! `kubectl-tekfed`: the operator's command line (works as `kubectl tekfed`
//! when on PATH): `crds`, `cordon`, `uncordon`, `drain`, `status`.

mod drain;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tekfed_crds::connect::Target;
use tekfed_crds::{
    DRAIN_ANNOTATION, FederatedPipelineRun, FederatedTaskRun, MemberCluster, RunPhase,
};

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
    /// One table of members (ready, schedulable, load, assigned, heartbeat age) and the run queue.
    #[command(after_help = "Example:\n  kubectl tekfed status --context hub")]
    Status,
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
            let docs: Vec<String> = tekfed_crds::manifests::manifests()
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
fn queued_reason(status: Option<&tekfed_crds::RunStatus>) -> Option<String> {
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
