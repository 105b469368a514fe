//! `kubectl tekfed drain`: cordon a member, let the hub move the runs that
//! have not started there, and wait for the started ones to finish.
//!
//! The CLI only marks the `MemberCluster` (cordon + [`DRAIN_ANNOTATION`])
//! and watches: the hub does the moving, with the same fenced revoke it
//! uses for a lost cluster, so a drain can never start a run twice, and a
//! drain interrupted with Ctrl-C goes on in the hub.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tekfed_api::runs::RunStatus;
use tekfed_api::tekton::{cancel_values, is_final};
use tekfed_api::{
    DRAIN_ANNOTATION, FederatedPipelineRun, FederatedTaskRun, MemberCluster, RunAssignment,
    RunKind, cluster_namespace,
};

/// Where the runs of a draining cluster stand.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Started there: they finish there.
    pub running: Vec<String>,
    /// Assigned there but not started: the hub is moving them.
    pub to_move: Vec<String>,
    /// Moved off it since the drain began.
    pub moved: usize,
}

impl Progress {
    pub fn done(&self) -> bool {
        self.running.is_empty() && self.to_move.is_empty()
    }

    pub fn line(&self, cluster: &str) -> String {
        format!(
            "draining {cluster}: {} running, {} moved, {} left to move",
            self.running.len(),
            self.moved,
            self.to_move.len()
        )
    }
}

/// One run as drain sees it.
pub struct RunView<'a> {
    pub key: String,
    pub status: Option<&'a RunStatus>,
    pub released: bool,
}

/// Where the runs stand, from the federated runs and the cluster's records.
pub fn progress<'a>(
    cluster: &str,
    since: &str,
    runs: impl IntoIterator<Item = RunView<'a>>,
) -> Progress {
    // Moves are recorded to the second.
    let since = since
        .parse::<k8s_openapi::jiff::Timestamp>()
        .ok()
        .and_then(|t| k8s_openapi::jiff::Timestamp::from_second(t.as_second()).ok());
    let mut p = Progress::default();
    for run in runs {
        let Some(status) = run.status else { continue };
        p.moved += status
            .attempts
            .iter()
            .filter(|a| a.cluster == cluster && since.is_none_or(|t| a.time.0 >= t))
            .count();
        if status.phase.is_some_and(is_final) {
            continue;
        }
        let here = status.cluster.as_deref() == Some(cluster);
        // `mode: All` copies belong to their cluster: they finish there.
        let copy_here = status
            .clusters
            .iter()
            .any(|c| c.cluster == cluster && !is_final(c.phase));
        if (here && run.released) || copy_here {
            p.running.push(run.key);
        } else if here {
            p.to_move.push(run.key);
        }
    }
    p.running.sort();
    p.to_move.sort();
    p
}

pub struct Options {
    pub timeout: Duration,
    pub cancel_remaining: bool,
}

pub async fn drain(client: &Client, name: &str, options: Options) -> anyhow::Result<()> {
    let clusters: Api<MemberCluster> = Api::all(client.clone());
    let mc = crate::member(&clusters, name).await?;
    let since = match mc.annotations().get(DRAIN_ANNOTATION) {
        // Draining already (an earlier drain timed out or was interrupted):
        // keep its start, so its moves count.
        Some(t) if mc.spec.unschedulable => t.clone(),
        _ => {
            let now = k8s_openapi::jiff::Timestamp::now().to_string();
            let patch = json!({
                "metadata": {"annotations": {DRAIN_ANNOTATION: now}},
                "spec": {"unschedulable": true},
            });
            clusters
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            println!(
                "{name} cordoned: no new runs will land there; moving the runs that have not started"
            );
            now
        }
    };
    let started = Instant::now();
    let tty = std::io::stdout().is_terminal();
    let mut last = String::new();
    loop {
        let p = read_progress(client, name, &since).await?;
        let line = p.line(name);
        if line != last {
            if tty {
                print!("\r\x1b[2K{line}");
                let _ = std::io::stdout().flush();
            } else {
                println!("{line}");
            }
            last = line;
        }
        if p.done() {
            if tty {
                println!();
            }
            println!(
                "{name} drained in {}s: {} run(s) moved to other clusters; nothing is running or waiting there.\n\
                 It stays cordoned; `kubectl tekfed uncordon {name}` lets runs land again.",
                started.elapsed().as_secs(),
                p.moved
            );
            return Ok(());
        }
        if started.elapsed() >= options.timeout {
            if tty {
                println!();
            }
            return timed_out(client, name, &p, &options).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn read_progress(client: &Client, cluster: &str, since: &str) -> anyhow::Result<Progress> {
    let records: Api<RunAssignment> = Api::namespaced(client.clone(), &cluster_namespace(cluster));
    let released: BTreeMap<String, bool> = match records.list(&ListParams::default()).await {
        Ok(list) => list
            .into_iter()
            .map(|r| {
                let released = r.status.as_ref().is_some_and(|s| s.is_released());
                (r.name_any(), released)
            })
            .collect(),
        Err(kube::Error::Api(s)) if s.code == 404 => BTreeMap::new(),
        Err(e) => return Err(e.into()),
    };
    let task_runs = Api::<FederatedTaskRun>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    let pipeline_runs = Api::<FederatedPipelineRun>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    let view = |kind: &str, meta: &kube::api::ObjectMeta, status| RunView {
        key: format!(
            "{kind}/{}/{}",
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default()
        ),
        status,
        released: released
            .get(meta.uid.as_deref().unwrap_or_default())
            .copied()
            .unwrap_or(false),
    };
    Ok(progress(
        cluster,
        since,
        task_runs
            .iter()
            .map(|r| view("ftr", &r.metadata, r.status.as_ref()))
            .chain(
                pipeline_runs
                    .iter()
                    .map(|r| view("fpr", &r.metadata, r.status.as_ref())),
            ),
    ))
}

async fn timed_out(
    client: &Client,
    name: &str,
    p: &Progress,
    options: &Options,
) -> anyhow::Result<()> {
    let list = |keys: &[String]| keys.join(", ");
    if !options.cancel_remaining {
        anyhow::bail!(
            "drain of {name} timed out after {}: {} run(s) still running there ({}), {} not moved yet ({}).\n\
             {name} stays cordoned and the hub keeps moving what has not started. \
             Run drain again to keep waiting, or add --cancel-remaining to cancel what still runs.",
            humantime::format_duration(options.timeout),
            p.running.len(),
            list(&p.running),
            p.to_move.len(),
            list(&p.to_move),
        );
    }
    for key in &p.running {
        let mut parts = key.splitn(3, '/');
        let (kind, ns, run) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        let (kind, result) = if kind == "ftr" {
            let api: Api<FederatedTaskRun> = Api::namespaced(client.clone(), ns);
            let patch = json!({"spec": {"template": {"spec": {"status": cancel_values(RunKind::TaskRun)[0]}}}});
            (
                kind,
                api.patch(run, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map(|_| ()),
            )
        } else {
            let api: Api<FederatedPipelineRun> = Api::namespaced(client.clone(), ns);
            let patch = json!({"spec": {"template": {"spec": {"status": cancel_values(RunKind::PipelineRun)[0]}}}});
            (
                kind,
                api.patch(run, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map(|_| ()),
            )
        };
        match result {
            Ok(()) => println!("cancelled {kind} {ns}/{run}"),
            Err(e) => eprintln!("could not cancel {kind} {ns}/{run}: {e}"),
        }
    }
    anyhow::bail!(
        "drain of {name} timed out after {}: cancelled {} run(s) still running there; {} not moved yet ({}).",
        humantime::format_duration(options.timeout),
        p.running.len(),
        p.to_move.len(),
        list(&p.to_move),
    )
}

#[cfg(test)]
mod tests {
    use tekfed_api::runs::{RunAttempt, RunPhase};

    use super::*;

    fn status(cluster: Option<&str>, phase: RunPhase, moved_off: &[(&str, i64)]) -> RunStatus {
        RunStatus {
            cluster: cluster.map(str::to_owned),
            phase: Some(phase),
            attempts: moved_off
                .iter()
                .map(|(c, t)| RunAttempt {
                    cluster: (*c).to_owned(),
                    reason: "Drained".into(),
                    time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        k8s_openapi::jiff::Timestamp::from_second(*t).unwrap(),
                    ),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn runs_are_counted_as_running_to_move_or_moved() {
        // The drain began within second 100; the move was recorded as 100.
        let since = k8s_openapi::jiff::Timestamp::from_millisecond(100_400)
            .unwrap()
            .to_string();
        let statuses = [
            ("held", status(Some("m2"), RunPhase::Scheduled, &[]), false),
            ("running", status(Some("m2"), RunPhase::Running, &[]), true),
            (
                "moved",
                status(None, RunPhase::Queued, &[("m2", 101)]),
                false,
            ),
            (
                "moved-before",
                status(Some("m1"), RunPhase::Running, &[("m2", 50)]),
                true,
            ),
            (
                "elsewhere",
                status(Some("m1"), RunPhase::Scheduled, &[]),
                false,
            ),
            ("done", status(Some("m2"), RunPhase::Succeeded, &[]), true),
        ];
        let p = progress(
            "m2",
            &since,
            statuses.iter().map(|(k, s, released)| RunView {
                key: (*k).to_owned(),
                status: Some(s),
                released: *released,
            }),
        );
        assert_eq!(p.running, vec!["running".to_owned()]);
        assert_eq!(p.to_move, vec!["held".to_owned()]);
        assert_eq!(p.moved, 1);
        assert!(!p.done());
        assert_eq!(
            p.line("m2"),
            "draining m2: 1 running, 1 moved, 1 left to move"
        );
    }
}
