//! `tekfed-test-executor`: for tests and the demo only, never in the hub
//! or agent. No kubelet or Tekton controller runs in the test bed, so this
//! moves a member's TaskRuns and PipelineRuns through Tekton's real v1
//! status shapes, as the Tekton controller would:
//!
//! - a held run (`spec.status: PipelineRunPending`) gets Tekton's pending
//!   condition and does not start until `spec.status` is cleared;
//! - a started run is `Running` (`Succeeded=Unknown`, reason `Running`,
//!   `startTime`), then after its duration `Succeeded` (or `Failed` when
//!   annotated `tekfed.io/test-outcome: Failed`), with `completionTime`;
//! - a cancelled run (`spec.status: Cancelled` / `TaskRunCancelled`, …)
//!   ends `Succeeded=False` with Tekton's cancel reason.
//!
//! The duration is `--duration-ms`, or a run's `tekfed.io/test-duration-ms`
//! annotation.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use futures::StreamExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tekfed_crds::RunKind;
use tekfed_crds::connect::{Target, tekton_resource};
use tekfed_crds::tekton::{PIPELINE_RUN_PENDING, cancel_values, succeeded_condition};

/// Move a member's Tekton runs through their life, as Tekton would (test bed only).
#[derive(Parser, Debug)]
#[command(
    after_help = "Example:\n  tekfed-test-executor --kubeconfig kubeconfig --context member-1 --duration-ms 500"
)]
struct Args {
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    #[arg(long)]
    context: Option<String>,
    /// How long a run stays Running before it ends.
    #[arg(long, default_value = "1000")]
    duration_ms: u64,
}

/// Runs this executor started (by uid), and those it finished. A watch
/// event can be older than the run's end (the loop is behind under load):
/// a run it finished is never started again, as Tekton would not.
#[derive(Default)]
struct Seen {
    started: HashSet<String>,
    finished: HashSet<String>,
}

type Running = Arc<Mutex<Seen>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = Target {
        kubeconfig: args.kubeconfig,
        context: args.context,
    }
    .client()
    .await?;
    let running: Running = Arc::default();
    let duration = Duration::from_millis(args.duration_ms);
    eprintln!("tekfed-test-executor: watching TaskRuns and PipelineRuns");
    let tasks = watch(client.clone(), RunKind::TaskRun, duration, running.clone());
    let pipelines = watch(client, RunKind::PipelineRun, duration, running);
    tokio::join!(tasks, pipelines);
    Ok(())
}

async fn watch(client: Client, kind: RunKind, duration: Duration, running: Running) {
    let resource = tekton_resource(kind.tekton_kind());
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .applied_objects();
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        let Ok(run) = event else { continue };
        step(&client, kind, run, duration, &running).await;
    }
}

/// RFC 3339 with milliseconds, so status latency can be measured finer
/// than Tekton's whole seconds.
fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Millisecond)
        .unwrap_or_default()
        .to_string()
}

fn condition(status: &str, reason: &str, message: &str) -> Value {
    json!([{"type": "Succeeded", "status": status, "reason": reason, "message": message, "lastTransitionTime": now()}])
}

async fn write(client: &Client, kind: RunKind, run: &DynamicObject, status: Value) {
    let api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &run.namespace().unwrap_or_default(),
        &tekton_resource(kind.tekton_kind()),
    );
    let patch = json!({"status": status});
    if let Err(e) = api
        .patch_status(
            &run.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        eprintln!(
            "tekfed-test-executor: {} {}: {e}",
            kind.tekton_kind(),
            run.name_any()
        );
    }
}

/// Take one step in a run's life, as the Tekton controller would.
async fn step(
    client: &Client,
    kind: RunKind,
    run: DynamicObject,
    duration: Duration,
    running: &Running,
) {
    let status = &run.data["status"];
    if let Some(c) = succeeded_condition(status)
        && c["status"] != "Unknown"
    {
        return; // Finished: never touched again.
    }
    let name = run.name_any();
    let spec_status = run.data["spec"]["status"].as_str().unwrap_or_default();
    if cancel_values(kind).contains(&spec_status) {
        let (reason, message) = match kind {
            RunKind::TaskRun => (
                "TaskRunCancelled",
                format!("TaskRun \"{name}\" was cancelled. "),
            ),
            RunKind::PipelineRun => ("Cancelled", format!("PipelineRun \"{name}\" was cancelled")),
        };
        write(
            client,
            kind,
            &run,
            json!({"conditions": condition("False", reason, &message), "completionTime": now()}),
        )
        .await;
        return;
    }
    if spec_status == PIPELINE_RUN_PENDING {
        if succeeded_condition(status).is_none() {
            let message = format!("PipelineRun \"{name}\" is pending");
            write(
                client,
                kind,
                &run,
                json!({"conditions": condition("Unknown", PIPELINE_RUN_PENDING, &message)}),
            )
            .await;
        }
        return;
    }
    let uid = run.uid().unwrap_or_default();
    {
        let mut seen = running.lock().unwrap_or_else(|p| p.into_inner());
        if seen.finished.contains(&uid) || !seen.started.insert(uid.clone()) {
            return; // Already on its way, or done.
        }
    }
    let message = match kind {
        RunKind::TaskRun => "Not all Steps in the Task have finished executing",
        RunKind::PipelineRun => {
            "Tasks Completed: 0 (Failed: 0, Cancelled 0), Incomplete: 1, Skipped: 0"
        }
    };
    let mut started =
        json!({"conditions": condition("Unknown", "Running", message), "startTime": now()});
    if kind == RunKind::TaskRun {
        started["podName"] = json!(format!("{name}-pod"));
    }
    write(client, kind, &run, started).await;
    let annotations = run.annotations().clone();
    let duration = annotations
        .get("tekfed.io/test-duration-ms")
        .and_then(|d| d.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(duration);
    let fails = annotations
        .get("tekfed.io/test-outcome")
        .map(String::as_str)
        == Some("Failed");
    let client = client.clone();
    let running = running.clone();
    tokio::spawn(async move {
        tokio::time::sleep(duration).await;
        // Read it again: it may have been cancelled or deleted meanwhile.
        let api: Api<DynamicObject> = Api::namespaced_with(
            client.clone(),
            &run.namespace().unwrap_or_default(),
            &tekton_resource(kind.tekton_kind()),
        );
        if let Ok(Some(now_run)) = api.get_opt(&run.name_any()).await
            && !cancel_values(kind)
                .contains(&now_run.data["spec"]["status"].as_str().unwrap_or_default())
        {
            let (state, reason, message) = match (kind, fails) {
                (RunKind::TaskRun, false) => {
                    ("True", "Succeeded", "All Steps have completed executing")
                }
                (RunKind::PipelineRun, false) => (
                    "True",
                    "Succeeded",
                    "Tasks Completed: 1 (Failed: 0, Cancelled 0), Skipped: 0",
                ),
                (RunKind::TaskRun, true) => ("False", "Failed", "\"step-run\" exited with code 1"),
                (RunKind::PipelineRun, true) => (
                    "False",
                    "Failed",
                    "Tasks Completed: 1 (Failed: 1, Cancelled 0), Skipped: 0",
                ),
            };
            write(
                &client,
                kind,
                &now_run,
                json!({"conditions": condition(state, reason, message), "completionTime": now()}),
            )
            .await;
        }
        let mut seen = running.lock().unwrap_or_else(|p| p.into_inner());
        seen.started.remove(&uid);
        seen.finished.insert(uid);
    });
}
