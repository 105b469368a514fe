//! The second half of `make demo`, against the federation `dev up` started:
//! a burst of runs spreading by load (a live table per cluster) and run by
//! each member's real Tekton, a drain of one member a third of the way in,
//! and a summary: runs per cluster, time to start, every run Succeeded, no
//! duplicates, how many runs the drain moved.
//!
//! So that the drain has runs to move, `member-2`'s agent is paused
//! (SIGSTOP, as during an agent upgrade) when the burst starts: the runs the
//! hub sends there are created held and cannot start, which is what a drain
//! moves. It is resumed once the drain has moved them.
//!
//! `cargo run -p tekfed-tests --example demo -- .tekfed-dev/kubeconfig [runs]`

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt};
use serde_json::json;
use tekfed_api::runs::RunPhase;
use tekfed_api::{FederatedTaskRun, MemberCluster};
use tekfed_runtime::connect::tekton_resource;

const NS: &str = "demo";
const DRAINED: &str = "member-2";

async fn client(kubeconfig: &Kubeconfig, context: &str) -> anyhow::Result<Client> {
    let options = KubeConfigOptions {
        context: Some(context.into()),
        ..Default::default()
    };
    Ok(Client::try_from(
        Config::from_custom_kubeconfig(kubeconfig.clone(), &options).await?,
    )?)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// The pid of `agent-<member>` from `dev up`'s `pids` file beside the kubeconfig.
fn agent_pid(kubeconfig: &str, member: &str) -> Option<u32> {
    let pids = std::path::Path::new(kubeconfig).with_file_name("pids");
    std::fs::read_to_string(pids).ok()?.lines().find_map(|l| {
        let (pid, name) = l.split_once(' ')?;
        (name == format!("agent-{member}")).then(|| pid.parse().ok())?
    })
}

fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
    Ok(())
}

/// Runs the drain moved: attempts on the drained member with reason `Drained`.
fn moved_off(list: &[FederatedTaskRun]) -> usize {
    list.iter()
        .filter_map(|r| r.status.as_ref())
        .flat_map(|s| s.attempts.iter())
        .filter(|a| a.cluster == DRAINED && a.reason == "Drained")
        .count()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .unwrap_or_else(|| ".tekfed-dev/kubeconfig".into());
    let count: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(240);
    let kubeconfig = Kubeconfig::read_from(&path)?;
    let hub = client(&kubeconfig, "hub").await?;
    let clusters: Api<MemberCluster> = Api::all(hub.clone());
    let members: Vec<String> = clusters
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|mc| mc.name_any())
        .collect();

    // A cap per member, so the hub queues and spreads the burst by load.
    for m in &members {
        let patch = json!({"spec": {"maxConcurrentRuns": 12}});
        clusters
            .patch(m, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(hub.clone());
    if namespaces.get_opt(NS).await?.is_none() {
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": NS}}))?,
            )
            .await?;
    }
    let runs: Api<FederatedTaskRun> = Api::namespaced(hub.clone(), NS);
    let agent = agent_pid(&path, DRAINED);
    if let Some(pid) = agent {
        signal(pid, "STOP")?;
        println!(
            "\n== {DRAINED}'s agent is paused (as during an agent upgrade): runs the hub sends there are created held and cannot start"
        );
    }
    let batch = format!(
        "b{}",
        k8s_openapi::jiff::Timestamp::now().as_second() % 100_000
    );
    println!(
        "\n== {count} FederatedTaskRuns at once (each 1-4 s), on {} members with maxConcurrentRuns 12",
        members.len()
    );
    let began = Instant::now();
    for i in 0..count {
        let run: FederatedTaskRun = serde_json::from_value(json!({
            "apiVersion": "tekfed.io/v1alpha1", "kind": "FederatedTaskRun",
            "metadata": {"name": format!("{batch}-{i:03}"), "namespace": NS, "labels": {"demo-batch": batch}},
            "spec": {
                "template": {
                    "metadata": {"annotations": {"tekfed.io/test-duration": format!("{}ms", 1000 + (i * 797) % 3000)}},
                    "spec": {"taskSpec": {
                        // What Pod Security `restricted` (the namespaces tekfed creates) admits.
                        "stepTemplate": {"securityContext": tekfed_api::guard::restricted_security_context()}, "steps": [{"name": "build", "image": "alpine", "script": "make"}]}},
                },
                "placement": {"clusterSelector": {"matchExpressions": [{"key": "tekfed.io/dev-member", "operator": "Exists"}]}},
            },
        }))?;
        runs.create(&PostParams::default(), &run).await?;
    }
    println!("created in {:.1}s\n", began.elapsed().as_secs_f64());

    let tty = std::io::stdout().is_terminal();
    let selector = ListParams::default().labels(&format!("demo-batch={batch}"));
    let mut drain: Option<(std::process::Child, Instant)> = None;
    let mut resumed = agent.is_none();
    let mut last = String::new();
    loop {
        let list = runs.list(&selector).await?.items;
        let mut table: BTreeMap<String, [usize; 3]> =
            members.iter().map(|m| (m.clone(), [0; 3])).collect();
        let mut queued = 0;
        for run in &list {
            let s = run.status.clone().unwrap_or_default();
            match (s.cluster, s.phase) {
                (Some(c), Some(p)) => {
                    let row = table.entry(c).or_default();
                    match p {
                        RunPhase::Scheduled => row[0] += 1,
                        RunPhase::Running => row[1] += 1,
                        _ => row[2] += 1,
                    }
                }
                _ => queued += 1,
            }
        }
        let done: usize = table.values().map(|r| r[2]).sum();
        let mut text = format!(
            "t={:>5.1}s  queued {queued:>3} |",
            began.elapsed().as_secs_f64()
        );
        for (c, [held, running, finished]) in &table {
            text.push_str(&format!(
                " {c}: {held:>2} starting {running:>2} running {finished:>3} done |"
            ));
        }
        if text != last {
            if tty {
                print!("\r\x1b[2K{text}");
                use std::io::Write;
                std::io::stdout().flush()?;
            } else {
                println!("{text}");
            }
            last = text;
        }
        if let (Some((_, drained_at)), Some(pid)) = (&drain, agent)
            && !resumed
        {
            // Resume the agent once nothing unstarted is left on member-2
            // (the drain moved it), well within the hub's heartbeat grace.
            let unstarted = list.iter().any(|r| {
                r.status.as_ref().is_some_and(|s| {
                    s.cluster.as_deref() == Some(DRAINED) && s.phase == Some(RunPhase::Scheduled)
                })
            });
            if !unstarted || drained_at.elapsed() > Duration::from_secs(20) {
                signal(pid, "CONT")?;
                resumed = true;
                let moved = moved_off(&list);
                if tty {
                    println!();
                }
                println!(
                    "\n== {moved} run(s) moved off {DRAINED}; its agent resumes (it releases none of them: the hub revoked their records)"
                );
            }
        }
        if drain.is_none() && done * 3 >= count && members.iter().any(|m| m == DRAINED) {
            // Half-way: drain member-2 with the real CLI.
            let cli = std::env::current_exe()?
                .parent()
                .and_then(|p| p.parent())
                .map(|p| p.join("kubectl-tekfed"))
                .ok_or_else(|| anyhow::anyhow!("kubectl-tekfed not found"))?;
            if tty {
                println!();
            }
            println!("\n== kubectl tekfed drain {DRAINED} (a third of the runs done)");
            let child = std::process::Command::new(cli)
                .args([
                    "drain",
                    DRAINED,
                    "--timeout",
                    "120s",
                    "--kubeconfig",
                    &path,
                    "--context",
                    "hub",
                ])
                .stdout(std::process::Stdio::piped())
                .spawn()?;
            drain = Some((child, Instant::now()));
        }
        if done == count {
            break;
        }
        if began.elapsed() > Duration::from_secs(240) {
            anyhow::bail!("not every run finished in 240 s; see .tekfed-dev/*.log");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if tty {
        println!();
    }
    if let (Some(pid), false) = (agent, resumed) {
        signal(pid, "CONT")?;
    }
    let drain_began = drain.as_ref().map(|(_, t)| *t);
    if let Some((child, _)) = drain {
        let out = child.wait_with_output()?;
        println!(
            "\n-- drain said:\n{}",
            String::from_utf8_lossy(&out.stdout).trim_end()
        );
    }

    // Summary.
    let list = runs.list(&selector).await?.items;
    let mut per_cluster: BTreeMap<String, usize> = BTreeMap::new();
    let mut phases: BTreeMap<String, usize> = BTreeMap::new();
    let mut to_start = Vec::new();
    let mut moved = 0;
    for run in &list {
        let s = run.status.clone().unwrap_or_default();
        *per_cluster
            .entry(s.cluster.clone().unwrap_or_default())
            .or_default() += 1;
        *phases
            .entry(format!("{:?}", s.phase.unwrap_or_default()))
            .or_default() += 1;
        moved += s.attempts.iter().filter(|a| a.reason == "Drained").count();
        if let (Some(created), Some(started)) = (
            run.metadata.creation_timestamp.as_ref(),
            s.start_time.as_ref(),
        ) {
            to_start.push(started.0.duration_since(created.0).as_secs_f64());
        }
    }
    to_start.sort_by(|a, b| a.total_cmp(b));
    // Exactly once: member TaskRuns of this batch, by federated uid, across members.
    let uids: BTreeSet<String> = list.iter().filter_map(|r| r.uid()).collect();
    let mut copies: BTreeMap<String, usize> = BTreeMap::new();
    let mut started_on_drained_after = 0;
    for m in &members {
        let api: Api<DynamicObject> = Api::namespaced_with(
            client(&kubeconfig, m).await?,
            NS,
            &tekton_resource("TaskRun"),
        );
        for tr in api.list(&ListParams::default()).await?.items {
            let uid = tr
                .labels()
                .get("tekfed.io/federated-uid")
                .cloned()
                .unwrap_or_default();
            if uids.contains(&uid) {
                *copies.entry(uid).or_default() += 1;
                let created = tr.metadata.creation_timestamp.as_ref().map(|t| t.0);
                if m == DRAINED
                    && let (Some(c), Some(d)) = (created, drain_began)
                    && c.as_second()
                        > k8s_openapi::jiff::Timestamp::now().as_second()
                            - d.elapsed().as_secs() as i64
                {
                    started_on_drained_after += 1;
                }
            }
        }
    }
    let duplicates = copies.values().filter(|n| **n > 1).count();
    let missing = uids.len() - copies.len();
    println!(
        "\n== summary: {} runs in {:.1}s",
        list.len(),
        began.elapsed().as_secs_f64()
    );
    for (c, n) in &per_cluster {
        println!("  {c:<10} {n:>4} runs");
    }
    println!(
        "  time to start (created on hub -> running on a member): p50 {:.2}s, p99 {:.2}s",
        percentile(&to_start, 0.5),
        percentile(&to_start, 0.99)
    );
    println!("  phases: {phases:?}");
    println!(
        "  member runs: {} for {} federated runs; duplicates {duplicates}, missing {missing}",
        copies.values().sum::<usize>(),
        uids.len()
    );
    println!(
        "  moved off {DRAINED} by the drain: {moved}; runs started on {DRAINED} after its drain began: {started_on_drained_after}"
    );
    println!(
        "\nThe federation is still running. Explore it:\n  export KUBECONFIG={path}\n  kubectl --context hub get ftr -n {NS}\n  \
         kubectl --context hub get mc\n  kubectl --context member-1 get taskruns -n {NS}\n  kubectl tekfed --context hub status\n  \
         kubectl tekfed --context hub uncordon {DRAINED}\nStop it: make demo-down (kubectl tekfed dev down)"
    );
    if duplicates > 0 || missing > 0 || phases.get("Succeeded") != Some(&list.len()) {
        anyhow::bail!("the demo did not end as it should: see the summary above");
    }
    Ok(())
}
