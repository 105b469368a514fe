//! Native runs: a Tekton `PipelineRun` or `TaskRun` created on the hub
//! with `spec.managedBy: tekfed.io/hub` (or in a namespace labelled
//! `tekfed.io/federate=true`, where the hub's MutatingAdmissionPolicy sets
//! it) runs on one member, and its own status on the hub is Tekton's from
//! the member, so the real `tkn` (built by `hack/tkn-bin.sh`) lists,
//! describes and cancels it on the hub.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tekfed_api::native::{LABEL_FEDERATE, LABEL_NATIVE, MANAGED_BY_HUB};
use tekfed_runtime::connect::tekton_resource;
use tekfed_testbed::federation::federate;
use tekfed_testbed::{HUB, TestBed, eventually_logged};

const WAIT: Duration = Duration::from_secs(180);

/// Run `tkn` against the hub; `(success, stdout + stderr)`.
fn tkn(tkn: &Path, bed: &TestBed, args: &[&str]) -> (bool, String) {
    let kubeconfig = bed.kubeconfig().to_string_lossy();
    let output = std::process::Command::new(tkn)
        .args(args)
        .args(["--kubeconfig", &kubeconfig, "--context", HUB])
        .output()
        .expect("running tkn");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn runs(client: &Client, ns: &str, kind: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &tekton_resource(kind))
}

async fn create(api: &Api<DynamicObject>, object: Value) -> DynamicObject {
    let object: DynamicObject = serde_json::from_value(object).expect("a valid object");
    api.create(&PostParams::default(), &object)
        .await
        .expect("creating the run on the hub")
}

/// The `Succeeded` condition's `(status, reason)` of a run.
fn succeeded(run: &DynamicObject) -> (String, String) {
    let c = &run.data["status"]["conditions"][0];
    (
        c["status"].as_str().unwrap_or_default().to_owned(),
        c["reason"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Wait until the hub's run `name` has a `Succeeded` condition of `status`.
async fn wait_for(
    bed: &TestBed,
    api: &Api<DynamicObject>,
    name: &str,
    status: &str,
) -> DynamicObject {
    eventually_logged(
        bed,
        &format!("run {name} to be Succeeded={status} on the hub"),
        WAIT,
        || {
            let api = api.clone();
            async move {
                let run = api.get(name).await.ok()?;
                (succeeded(&run).0 == status).then_some(run)
            }
        },
    )
    .await
}

/// The members holding a run named `name` in `ns`, with that run.
async fn on_members(
    bed: &TestBed,
    ns: &str,
    kind: &str,
    name: &str,
) -> Vec<(String, DynamicObject)> {
    let mut found = Vec::new();
    for member in bed.members() {
        let client = bed.client(&member).await.unwrap();
        if let Ok(Some(run)) = runs(&client, ns, kind).get_opt(name).await {
            found.push((member, run));
        }
    }
    found
}

#[tokio::test]
async fn native_runs_on_the_hub_are_federated_and_tkn_reads_and_cancels_them() {
    let tkn_bin = tekfed_testbed::tkn();
    let bed = TestBed::start(2).await.unwrap();
    bed.install_tekton_on_hub().await.unwrap();
    federate(&bed, &[]).await.unwrap();
    // Tekton's own controller runs on the hub too: it must leave the runs
    // tekfed manages alone, and run the others.
    bed.start_hub_tekton_controller().await.unwrap();
    let hub = bed.client(HUB).await.unwrap();
    let ns = bed.namespace("native", &[HUB]).await.unwrap();
    let pipeline_runs = runs(&hub, &ns, "PipelineRun");

    // A PipelineRun managed by the hub: two tasks, a result passed on.
    create(
        &pipeline_runs,
        json!({
            "apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
            "metadata": {"name": "build", "namespace": ns},
            "spec": {
                "managedBy": MANAGED_BY_HUB,
                "pipelineSpec": {
                    "tasks": [
                        {"name": "compile", "taskSpec": {
                            "results": [{"name": "digest"}],
                            "steps": [{"name": "make", "image": "busybox", "script": "make",
                                       "env": [{"name": "TEKFED_RESULT_digest", "value": "sha256:abc"}]}]}},
                        {"name": "test", "runAfter": ["compile"], "taskSpec": {
                            "steps": [{"name": "unit", "image": "busybox", "script": "go test"}]}},
                    ],
                    "results": [{"name": "digest", "value": "$(tasks.compile.results.digest)"}],
                },
            },
        }),
    )
    .await;
    let done = wait_for(&bed, &pipeline_runs, "build", "True").await;
    assert_eq!(succeeded(&done).1, "Succeeded");
    assert_eq!(
        done.data["status"]["results"][0]["value"], "sha256:abc",
        "{:#}",
        done.data["status"]
    );
    assert!(
        done.data["status"]["startTime"].is_string()
            && done.data["status"]["completionTime"].is_string()
    );
    // It ran on exactly one member, as Tekton's own run there.
    let copies = on_members(&bed, &ns, "PipelineRun", "build").await;
    assert_eq!(copies.len(), 1, "one member ran it");
    assert!(
        copies[0].1.data["spec"]["managedBy"].is_null(),
        "the member's Tekton runs its copy"
    );
    // Carried by a FederatedPipelineRun of the same name, owned by it.
    let shadows: Api<tekfed_api::FederatedPipelineRun> = Api::namespaced(hub.clone(), &ns);
    let shadow = shadows.get("build").await.unwrap();
    assert_eq!(shadow.labels()[LABEL_NATIVE], "PipelineRun");
    assert_eq!(
        shadow.status.and_then(|s| s.cluster),
        Some(copies[0].0.clone())
    );

    // Its Events are on the native run (kubectl describe pipelinerun).
    let uid = done.metadata.uid.clone().unwrap();
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(hub.clone(), &ns);
    eventually_logged(&bed, "the native run's Events", WAIT, || {
        let (events, uid) = (events.clone(), uid.clone());
        async move {
            let list = events
                .list(
                    &kube::api::ListParams::default().fields(&format!("involvedObject.uid={uid}")),
                )
                .await
                .ok()?;
            let reasons: Vec<String> = list.items.iter().filter_map(|e| e.reason.clone()).collect();
            ["Scheduled", "Started", "Succeeded"]
                .iter()
                .all(|r| reasons.iter().any(|x| x == r))
                .then_some(())
        }
    })
    .await;

    // tkn on the hub, unchanged.
    let (ok, out) = tkn(&tkn_bin, &bed, &["pipelinerun", "list", "-n", &ns]);
    assert!(
        ok && out
            .lines()
            .any(|l| l.starts_with("build ") && l.contains("Succeeded")),
        "{out}"
    );
    let (ok, out) = tkn(
        &tkn_bin,
        &bed,
        &["pipelinerun", "describe", "build", "-n", &ns],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("Succeeded") && out.contains("digest") && out.contains("sha256:abc"),
        "{out}"
    );
    // Its TaskRuns: mirrored on the hub from the member, so the table is there.
    for task_run in ["build-compile", "build-test"] {
        assert!(
            out.lines()
                .any(|l| l.contains(task_run) && l.contains("Succeeded")),
            "{task_run}: {out}"
        );
    }
    let (ok, out) = tkn(
        &tkn_bin,
        &bed,
        &["taskrun", "describe", "build-compile", "-n", &ns],
    );
    assert!(
        ok && out.contains("make") && out.contains("digest"),
        "{out}"
    );

    // tkn cancel on the hub reaches the member.
    create(
        &pipeline_runs,
        json!({
            "apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
            "metadata": {"name": "long", "namespace": ns, "annotations": {"tekfed.io/test-duration": "10m"}},
            "spec": {"managedBy": MANAGED_BY_HUB, "pipelineSpec": {"tasks": [{"name": "wait", "taskSpec": {
                "steps": [{"name": "sleep", "image": "busybox", "script": "sleep 600"}]}}]}},
        }),
    )
    .await;
    eventually_logged(&bed, "the long run to start on a member", WAIT, || {
        let (bed, ns) = (&bed, ns.clone());
        async move {
            let copies = on_members(bed, &ns, "PipelineRun", "long").await;
            let started = copies.first()?.1.data["status"]["startTime"].is_string()
                && copies[0].1.data["spec"]["status"].is_null();
            started.then_some(())
        }
    })
    .await;
    let (ok, out) = tkn(
        &tkn_bin,
        &bed,
        &["pipelinerun", "cancel", "long", "-n", &ns],
    );
    assert!(ok, "{out}");
    let cancelled = wait_for(&bed, &pipeline_runs, "long", "False").await;
    assert_eq!(
        succeeded(&cancelled).1,
        "Cancelled",
        "{:#}",
        cancelled.data["status"]
    );
    let copies = on_members(&bed, &ns, "PipelineRun", "long").await;
    assert_eq!(copies[0].1.data["spec"]["status"], "Cancelled");

    // A namespace that opted in: runs made without managedBy get it from
    // the hub's admission policy and are federated; elsewhere, nothing.
    let opted = bed.namespace("federated", &[HUB]).await.unwrap();
    let label = json!({"metadata": {"labels": {LABEL_FEDERATE: "true"}}});
    Api::<Namespace>::all(hub.clone())
        .patch(&opted, &PatchParams::default(), &Patch::Merge(&label))
        .await
        .unwrap();
    let task_run = |ns: &str| {
        json!({
            "apiVersion": "tekton.dev/v1", "kind": "TaskRun",
            "metadata": {"name": "triggered", "namespace": ns},
            "spec": {"taskSpec": {"steps": [{"name": "echo", "image": "busybox", "script": "echo"}]}},
        })
    };
    let plain_runs = runs(&hub, &ns, "TaskRun");
    let plain = create(&plain_runs, task_run(&ns)).await;
    assert!(
        plain.data["spec"]["managedBy"].is_null(),
        "only opted-in namespaces"
    );
    let opted_runs = runs(&hub, &opted, "TaskRun");
    let created = create(&opted_runs, task_run(&opted)).await;
    assert_eq!(created.data["spec"]["managedBy"], MANAGED_BY_HUB);
    let done = wait_for(&bed, &opted_runs, "triggered", "True").await;
    assert_eq!(
        on_members(&bed, &opted, "TaskRun", "triggered").await.len(),
        1
    );
    assert!(done.data["status"]["podName"].is_string());
    let (ok, out) = tkn(&tkn_bin, &bed, &["taskrun", "list", "-n", &opted]);
    assert!(
        ok && out
            .lines()
            .any(|l| l.starts_with("triggered ") && l.contains("Succeeded")),
        "{out}"
    );

    // The hub left the other to Tekton: no finalizer and no shadow of
    // tekfed's, and the hub's own Tekton ran it (it fails there: the hub
    // has no `default` ServiceAccount, and no pods are played).
    let plain = eventually_logged(&bed, "the hub's Tekton to take the plain run", WAIT, || {
        let plain_runs = plain_runs.clone();
        async move {
            let run = plain_runs.get("triggered").await.ok()?;
            run.data["status"]["conditions"].is_array().then_some(run)
        }
    })
    .await;
    assert!(
        !plain
            .finalizers()
            .iter()
            .any(|f| f.starts_with("tekfed.io/"))
    );
    let shadows: Api<tekfed_api::FederatedTaskRun> = Api::namespaced(hub.clone(), &ns);
    assert!(shadows.get_opt("triggered").await.unwrap().is_none());
    // ...and the hub's Tekton made nothing for the runs tekfed manages:
    // no pod and no TaskRun of its own for them on the hub.
    for namespace in [&ns, &opted] {
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(hub.clone(), namespace);
        for pod in pods.list(&Default::default()).await.unwrap() {
            assert_eq!(
                pod.labels().get("tekton.dev/taskRun").map(String::as_str),
                Some("triggered"),
                "a pod on the hub for a run tekfed manages: {}",
                pod.name_any()
            );
            assert_eq!(pod.namespace().as_deref(), Some(ns.as_str()));
        }
    }
    let hub_task_runs = runs(&hub, &ns, "TaskRun")
        .list(&Default::default())
        .await
        .unwrap();
    for run in hub_task_runs
        .items
        .iter()
        .filter(|r| r.labels().contains_key("tekton.dev/pipelineRun"))
    {
        assert!(
            run.labels()
                .contains_key(tekfed_api::native::LABEL_MIRROR_OF),
            "the hub's Tekton made a TaskRun for a PipelineRun tekfed manages: {}",
            run.name_any()
        );
    }
}
