//! What tekfed says about a run is what the member's real Tekton did: a
//! three-task PipelineRun passing results to `finally`, a failing step,
//! cancel, timeouts and retries, each created on the hub and run by Tekton's
//! own controller on a member (pods played by kwok, see
//! `testbed/kwok/tekton-pods.yaml`), and a Task Tekton's webhook must default
//! before the member's API server accepts it.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tekfed_api::runs::{RunPhase, RunStatus};
use tekfed_api::{
    FederatedPipelineRun, FederatedTask, FederatedTaskRun, MemberReport, PropagationState,
    cluster_namespace,
};
use tekfed_runtime::connect::tekton_resource;
use tekfed_testbed::federation::run_federation;
use tekfed_testbed::member::{ANNOTATION_DURATION, ANNOTATION_EXIT_CODE, ANNOTATION_FAIL_STEP};
use tekfed_testbed::{HUB, eventually_logged};

const WAIT: Duration = Duration::from_secs(180);

async fn create<K>(hub: &Client, ns: &str, object: Value) -> K
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(hub.clone(), ns);
    let object: K = serde_json::from_value(object).expect("a valid object");
    api.create(&PostParams::default(), &object)
        .await
        .expect("creating on the hub")
}

/// Wait until the run's phase is final; its status then.
async fn finished<K>(api: &Api<K>, name: &str, status: fn(&K) -> Option<RunStatus>) -> RunStatus
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + 'static,
{
    let bed = run_federation();
    eventually_logged(bed, &format!("{name} to finish"), WAIT, || {
        let api = api.clone();
        async move {
            let s = status(&api.get(name).await.ok()?)?;
            s.phase
                .is_some_and(|p| {
                    matches!(
                        p,
                        RunPhase::Succeeded | RunPhase::Failed | RunPhase::Cancelled
                    )
                })
                .then_some(s)
        }
    })
    .await
}

fn succeeded(status: &RunStatus) -> (String, String, String) {
    let c = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Succeeded")
        .expect("a Succeeded condition");
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

fn pipeline_run_status(r: &FederatedPipelineRun) -> Option<RunStatus> {
    r.status.clone()
}

fn task_run_status(r: &FederatedTaskRun) -> Option<RunStatus> {
    r.status.clone()
}

#[tokio::test]
async fn a_three_task_pipeline_passes_results_runs_finally_and_shows_them_on_the_hub() {
    let bed = run_federation();
    let hub = bed.client(HUB).await.unwrap();
    let ns = bed.namespace("tkn-results", &[HUB]).await.unwrap();
    // Each task's result is computed by Tekton's own substitution: kwok
    // writes the value of TEKFED_RESULT_<name>, in which Tekton has put the
    // previous task's result.
    let step = |result: &str, value: &str| {
        json!({"name": "work", "image": "busybox", "script": format!("echo -n ... > $(results.{result}.path)"),
               "env": [{"name": format!("TEKFED_RESULT_{result}"), "value": value}]})
    };
    create::<FederatedPipelineRun>(&hub, &ns, json!({
        "apiVersion": "tekfed.io/v1alpha1", "kind": "FederatedPipelineRun",
        "metadata": {"name": "release", "namespace": ns},
        "spec": {
            "placement": {"clusters": [{"name": "member-2"}]},
            "template": {"spec": {"pipelineSpec": {
                "results": [{"name": "version", "value": "$(tasks.tag.results.version)"}],
                "tasks": [
                    {"name": "build", "taskSpec": {"results": [{"name": "digest"}], "steps": [step("digest", "sha256:abc")]}},
                    {"name": "test", "runAfter": ["build"],
                     "params": [{"name": "digest", "value": "$(tasks.build.results.digest)"}],
                     "taskSpec": {"params": [{"name": "digest"}], "results": [{"name": "verdict"}],
                                  "steps": [step("verdict", "passed-$(params.digest)")]}},
                    {"name": "tag",
                     "params": [{"name": "verdict", "value": "$(tasks.test.results.verdict)"}],
                     "taskSpec": {"params": [{"name": "verdict"}], "results": [{"name": "version"}],
                                  "steps": [step("version", "v1+$(params.verdict)")]}},
                ],
                "finally": [
                    {"name": "notify",
                     "params": [{"name": "version", "value": "$(tasks.tag.results.version)"}],
                     "taskSpec": {"params": [{"name": "version"}],
                                  "steps": [{"name": "send", "image": "busybox", "script": "echo $(params.version)"}]}},
                ],
            }}},
        },
    }))
    .await;
    let api: Api<FederatedPipelineRun> = Api::namespaced(hub.clone(), &ns);
    let status = finished(&api, "release", pipeline_run_status).await;
    assert_eq!(status.phase, Some(RunPhase::Succeeded), "{status:?}");
    let (state, reason, _) = succeeded(&status);
    assert_eq!((state.as_str(), reason.as_str()), ("True", "Succeeded"));
    let member = status
        .member_status
        .clone()
        .expect("Tekton's status on the hub");
    assert_eq!(
        member["results"],
        json!([{"name": "version", "value": "v1+passed-sha256:abc"}]),
        "the pipeline's result, computed by Tekton from three tasks, is on the hub: {member}"
    );
    let children: Vec<&str> = member["childReferences"]
        .as_array()
        .expect("childReferences on the hub")
        .iter()
        .filter_map(|c| c["pipelineTaskName"].as_str())
        .collect();
    assert_eq!(children, ["build", "test", "tag", "notify"], "{member}");
    // The finally task got the result too: Tekton substituted it.
    let task_runs: Api<DynamicObject> = Api::namespaced_with(
        bed.client("member-2").await.unwrap(),
        &ns,
        &tekton_resource("TaskRun"),
    );
    let notify = task_runs
        .list(&ListParams::default().labels("tekton.dev/pipelineTask=notify"))
        .await
        .unwrap();
    assert_eq!(
        notify.items[0].data["spec"]["params"],
        json!([{"name": "version", "value": "v1+passed-sha256:abc"}])
    );
    // What a member of the test bed costs (printed, not asserted).
    let figures: Vec<String> = bed
        .memory()
        .into_iter()
        .filter(|(name, _)| name.contains("member-2"))
        .map(|(name, bytes)| format!("{name} {} MiB", bytes >> 20))
        .collect();
    eprintln!("FIGURES member-2 resident memory: {}", figures.join(", "));
}

#[tokio::test]
async fn a_failing_step_fails_the_run_on_the_hub_with_tekton_s_reason() {
    let bed = run_federation();
    let hub = bed.client(HUB).await.unwrap();
    let ns = bed.namespace("tkn-fail", &[HUB]).await.unwrap();
    create::<FederatedTaskRun>(&hub, &ns, json!({
        "apiVersion": "tekfed.io/v1alpha1", "kind": "FederatedTaskRun",
        "metadata": {"name": "unit-tests", "namespace": ns},
        "spec": {
            "placement": {"clusters": [{"name": "member-1"}]},
            "template": {
                "metadata": {"annotations": {ANNOTATION_FAIL_STEP: "test", ANNOTATION_EXIT_CODE: "3"}},
                "spec": {"taskSpec": {"steps": [
                    {"name": "compile", "image": "golang", "script": "go build ./..."},
                    {"name": "test", "image": "golang", "script": "go test ./..."},
                ]}},
            },
        },
    }))
    .await;
    let api: Api<FederatedTaskRun> = Api::namespaced(hub.clone(), &ns);
    let status = finished(&api, "unit-tests", task_run_status).await;
    assert_eq!(status.phase, Some(RunPhase::Failed), "{status:?}");
    let (state, reason, message) = succeeded(&status);
    assert_eq!((state.as_str(), reason.as_str()), ("False", "Failed"));
    assert!(
        message.contains("\"step-test\" exited with code 3"),
        "Tekton's own message reaches the hub: {message}"
    );
    let steps = &status.member_status.expect("Tekton's status")["steps"];
    assert_eq!(steps[0]["terminated"]["exitCode"], 0, "{steps}");
    assert_eq!(steps[1]["terminated"]["exitCode"], 3, "{steps}");
}

#[tokio::test]
async fn cancelling_a_running_pipeline_run_stops_its_pods_and_shows_cancelled() {
    let bed = run_federation();
    let hub = bed.client(HUB).await.unwrap();
    let ns = bed.namespace("tkn-cancel", &[HUB]).await.unwrap();
    create::<FederatedPipelineRun>(&hub, &ns, json!({
        "apiVersion": "tekfed.io/v1alpha1", "kind": "FederatedPipelineRun",
        "metadata": {"name": "nightly", "namespace": ns},
        "spec": {
            "placement": {"clusters": [{"name": "member-3"}]},
            "template": {
                "metadata": {"annotations": {ANNOTATION_DURATION: "10m"}},
                "spec": {"pipelineSpec": {"tasks": [
                    {"name": "a", "taskSpec": {"steps": [{"name": "s", "image": "busybox", "script": "sleep 600"}]}},
                    {"name": "b", "taskSpec": {"steps": [{"name": "s", "image": "busybox", "script": "sleep 600"}]}},
                ]}},
            },
        },
    }))
    .await;
    let api: Api<FederatedPipelineRun> = Api::namespaced(hub.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(bed.client("member-3").await.unwrap(), &ns);
    eventually_logged(bed, "both tasks' pods to run on member-3", WAIT, || {
        let pods = pods.clone();
        async move {
            let list = pods.list(&ListParams::default()).await.ok()?;
            let running = list
                .items
                .iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .count();
            (running == 2).then_some(())
        }
    })
    .await;
    // Tekton copies the PipelineRun's labels, tekfed's among them, to its
    // two TaskRuns: the agent counts one run on member-3, not three.
    let reports: Api<MemberReport> = Api::namespaced(hub.clone(), &cluster_namespace("member-3"));
    eventually_logged(
        bed,
        "member-3 to report one running run, its TaskRuns not counted",
        WAIT,
        || {
            let reports = reports.clone();
            async move {
                let status = reports.get("member-3").await.ok()?.status?;
                let (load, total) = (status.load?, status.total?);
                (load.running == 1 && load.pending == 0 && total.running == 1).then_some(())
            }
        },
    )
    .await;
    api.patch(
        "nightly",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"template": {"spec": {"status": "Cancelled"}}}})),
    )
    .await
    .unwrap();
    let status = finished(&api, "nightly", pipeline_run_status).await;
    assert_eq!(status.phase, Some(RunPhase::Cancelled), "{status:?}");
    assert_eq!(succeeded(&status).1, "Cancelled");
    eventually_logged(bed, "the cancelled run's pods to be gone", WAIT, || {
        let pods = pods.clone();
        async move {
            pods.list(&ListParams::default())
                .await
                .ok()?
                .items
                .is_empty()
                .then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn timeouts_and_retries_behave_as_tekton_defines_them() {
    let bed = run_federation();
    let hub = bed.client(HUB).await.unwrap();
    let ns = bed.namespace("tkn-timeouts", &[HUB]).await.unwrap();
    let slow = json!({ANNOTATION_DURATION: "10m"});
    // A TaskRun past its spec.timeout.
    create::<FederatedTaskRun>(&hub, &ns, json!({
        "apiVersion": "tekfed.io/v1alpha1", "kind": "FederatedTaskRun",
        "metadata": {"name": "slow-task", "namespace": ns},
        "spec": {
            "placement": {"clusters": [{"name": "member-1"}]},
            "template": {"metadata": {"annotations": slow},
                         "spec": {"timeout": "3s", "taskSpec": {"steps": [{"name": "s", "image": "busybox", "script": "sleep 600"}]}}},
        },
    }))
    .await;
    // A PipelineRun past timeouts.pipeline.
    create::<FederatedPipelineRun>(&hub, &ns, json!({
        "apiVersion": "tekfed.io/v1alpha1", "kind": "FederatedPipelineRun",
        "metadata": {"name": "slow-pipeline", "namespace": ns},
        "spec": {
            "placement": {"clusters": [{"name": "member-2"}]},
            "template": {"metadata": {"annotations": slow},
                         "spec": {"timeouts": {"pipeline": "3s"}, "pipelineSpec": {"tasks": [
                             {"name": "a", "taskSpec": {"steps": [{"name": "s", "image": "busybox", "script": "sleep 600"}]}}]}}},
        },
    }))
    .await;
    // A task that fails every attempt, retried twice.
    create::<FederatedPipelineRun>(&hub, &ns, json!({
        "apiVersion": "tekfed.io/v1alpha1", "kind": "FederatedPipelineRun",
        "metadata": {"name": "flaky", "namespace": ns},
        "spec": {
            "placement": {"clusters": [{"name": "member-3"}]},
            "template": {"metadata": {"annotations": {ANNOTATION_FAIL_STEP: "s"}},
                         "spec": {"pipelineSpec": {"tasks": [
                             {"name": "a", "retries": 2, "taskSpec": {"steps": [{"name": "s", "image": "busybox", "script": "exit 1"}]}}]}}},
        },
    }))
    .await;

    let task_runs: Api<FederatedTaskRun> = Api::namespaced(hub.clone(), &ns);
    let status = finished(&task_runs, "slow-task", task_run_status).await;
    assert_eq!(status.phase, Some(RunPhase::Failed), "{status:?}");
    assert_eq!(succeeded(&status).1, "TaskRunTimeout");

    let pipeline_runs: Api<FederatedPipelineRun> = Api::namespaced(hub.clone(), &ns);
    let status = finished(&pipeline_runs, "slow-pipeline", pipeline_run_status).await;
    assert_eq!(status.phase, Some(RunPhase::Failed), "{status:?}");
    assert_eq!(succeeded(&status).1, "PipelineRunTimeout");

    let status = finished(&pipeline_runs, "flaky", pipeline_run_status).await;
    assert_eq!(status.phase, Some(RunPhase::Failed), "{status:?}");
    let member_runs: Api<DynamicObject> = Api::namespaced_with(
        bed.client("member-3").await.unwrap(),
        &ns,
        &tekton_resource("TaskRun"),
    );
    let child = member_runs
        .list(&ListParams::default().labels("tekton.dev/pipelineTask=a"))
        .await
        .unwrap();
    assert_eq!(child.items.len(), 1, "one TaskRun, retried in place");
    assert_eq!(
        child.items[0].data["status"]["retriesStatus"]
            .as_array()
            .map(Vec::len),
        Some(2),
        "Tekton ran it three times: {}",
        child.items[0].data["status"]
    );
}

#[tokio::test]
async fn a_task_whose_steps_have_no_names_reaches_members_through_tekton_s_webhook() {
    // From Tekton's own examples/v1/pipelineruns/optional-workspaces.yaml:
    // the v1 schema requires a step's name, and on a real cluster Tekton's
    // defaulting webhook supplies it.
    let bed = run_federation();
    let hub = bed.client(HUB).await.unwrap();
    let ns = bed.namespace("tkn-webhook", &[HUB]).await.unwrap();
    create::<FederatedTask>(&hub, &ns, json!({
        "apiVersion": "tekfed.io/v1alpha1", "kind": "FederatedTask",
        "metadata": {"name": "check-workspaces", "namespace": ns},
        "spec": {
            "placement": {"clusterSelector": {"matchExpressions": [{"key": "tekfed.io/test-member", "operator": "Exists"}]}},
            "template": {"spec": {
                "workspaces": [{"name": "source-code", "optional": true}],
                "steps": [{"image": "alpine", "script": "if [ \"$(workspaces.source-code.bound)\" == \"true\" ]; then\n  printf \"Source code workspace was provided\"\nfi\n"}],
            }},
        },
    }))
    .await;
    let api: Api<FederatedTask> = Api::namespaced(hub.clone(), &ns);
    eventually_logged(bed, "the Task to be in sync on every member", WAIT, || {
        let api = api.clone();
        async move {
            let status = api.get("check-workspaces").await.ok()?.status?;
            (status.clusters.len() == 3
                && status
                    .clusters
                    .iter()
                    .all(|c| c.state == PropagationState::Synced))
            .then_some(())
        }
    })
    .await;
    let copy: Api<DynamicObject> = Api::namespaced_with(
        bed.client("member-1").await.unwrap(),
        &ns,
        &tekton_resource("Task"),
    );
    let copy = copy.get("check-workspaces").await.unwrap();
    // Tekton's defaulting webhook writes every field of its Go types back,
    // `name` among them (empty: Tekton names the container `step-unnamed-0`).
    assert_eq!(
        copy.data["spec"]["steps"][0]["name"], "",
        "Tekton's webhook defaulted the step: {}",
        copy.data["spec"]
    );
    assert!(copy.labels().contains_key("tekfed.io/federated-uid"));
}
