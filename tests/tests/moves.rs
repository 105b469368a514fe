//! Runs leaving a member, on a federation of its own (hub, two members with
//! the real Tekton, agents: real processes on real API servers):
//! - a started run whose member is lost, and which asks to be rescheduled,
//!   runs again on that same member once it is back: the old copy is
//!   ended and removed first, the new one carries the next attempt, and
//!   only one copy is ever there;
//! - a `mode: All` run whose copy's member is lost fails that copy with
//!   `ClusterLost` (its `onClusterLost: Fail`), while the other copy runs;
//!   with `onClusterLost: Reschedule` the copy runs again there once the
//!   member is back, and the run succeeds;
//! - a run placed on a member the hub cannot reach, whose agent still
//!   reports, moves to another member once the grace has passed; it never
//!   ran where it was first placed;
//! - deleting a `MemberCluster` takes its runs off it (a started one fails
//!   `ClusterRemoved`), then its hub namespace goes and the object with it.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tekfed_api::runs::{RunPhase, RunStatus};
use tekfed_api::{FederatedPipelineRun, FederatedTaskRun, MemberCluster, cluster_namespace};
use tekfed_runtime::connect::tekton_resource;
use tekfed_testbed::federation::{
    HUB_NAMESPACE, UNANSWERED_WEBHOOK, federate, pipeline_run_template, task_run_template,
    unanswered_webhook, wait_condition,
};
use tekfed_testbed::{HUB, TestBed, eventually_logged};

const WAIT: Duration = Duration::from_secs(240);

/// A FederatedTaskRun whose step runs for `duration`.
fn run(ns: &str, name: &str, duration: &str, placement: Value, extra: Value) -> FederatedTaskRun {
    let mut run = json!({
        "apiVersion": "tekfed.io/v1alpha1",
        "kind": "FederatedTaskRun",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "template": task_run_template(Some(duration), json!({})),
            "placement": placement,
        },
    });
    if let (Some(spec), Some(extra)) = (run["spec"].as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    serde_json::from_value(run).unwrap()
}

async fn wait_status(
    bed: &TestBed,
    api: &Api<FederatedTaskRun>,
    name: &str,
    what: &str,
    done: impl Fn(&RunStatus) -> bool,
) -> RunStatus {
    eventually_logged(bed, &format!("{name}: {what}"), WAIT, || {
        let api = api.clone();
        let done = &done;
        async move {
            let s = api.get(name).await.ok()?.status.unwrap_or_default();
            done(&s).then_some(s)
        }
    })
    .await
}

/// The copies of `name` on `member`: their attempt labels.
async fn copies(bed: &TestBed, member: &str, ns: &str, name: &str) -> Vec<String> {
    let api: Api<DynamicObject> = Api::namespaced_with(
        bed.client(member).await.unwrap(),
        ns,
        &tekton_resource("TaskRun"),
    );
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|r| r.name_any() == name)
        .map(|r| {
            r.labels()
                .get("tekfed.io/attempt")
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

async fn cordon(clusters: &Api<MemberCluster>, name: &str, on: bool) {
    clusters
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": on}})),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn runs_leave_a_lost_or_removed_member_and_come_back_to_it() {
    let bed = TestBed::start(2).await.unwrap();
    federate(
        &bed,
        &["--heartbeat-grace", "30", "--started-run-grace", "10"],
    )
    .await
    .unwrap();
    let hub = bed.client(HUB).await.unwrap();
    let clusters: Api<MemberCluster> = Api::all(hub.clone());
    let ns = bed.namespace("moves", &[HUB]).await.unwrap();
    let api: Api<FederatedTaskRun> = Api::namespaced(hub.clone(), &ns);
    let only = |member: &str| json!({"clusters": [{"name": member}]});

    // --- rescheduled onto the member it left ------------------------------------
    api.create(
        &PostParams::default(),
        &run(
            &ns,
            "again",
            "20s",
            only("member-1"),
            json!({"onClusterLost": "Reschedule"}),
        ),
    )
    .await
    .unwrap();
    wait_status(&bed, &api, "again", "running on member-1", |s| {
        s.phase == Some(RunPhase::Running)
    })
    .await;
    bed.stop("agent-member-1");
    let moved = wait_status(&bed, &api, "again", "taken off the lost member-1", |s| {
        !s.attempts.is_empty()
    })
    .await;
    assert_eq!(
        (
            moved.attempts[0].cluster.as_str(),
            moved.attempts[0].reason.as_str()
        ),
        ("member-1", "ClusterLost")
    );
    bed.restart("agent-member-1").unwrap();
    let done = wait_status(&bed, &api, "again", "succeeded on member-1 again", |s| {
        s.phase == Some(RunPhase::Succeeded)
    })
    .await;
    assert_eq!(done.cluster.as_deref(), Some("member-1"), "{done:?}");
    assert_eq!(done.attempts.len(), 1, "{done:?}");
    assert_eq!(
        copies(&bed, "member-1", &ns, "again").await,
        ["2"],
        "one copy, the second placement's"
    );

    // --- a mode All copy on a lost member ----------------------------------------
    let everywhere = json!({"mode": "All", "clusterSelector": {"matchExpressions": [
        {"key": "tekfed.io/test-member", "operator": "Exists"}]}});
    // "all" fails the lost copy; "all-again" asks for it to run again.
    for (name, on_lost) in [("all", "Fail"), ("all-again", "Reschedule")] {
        api.create(
            &PostParams::default(),
            &run(
                &ns,
                name,
                "20s",
                everywhere.clone(),
                json!({"onClusterLost": on_lost}),
            ),
        )
        .await
        .unwrap();
    }
    for name in ["all", "all-again"] {
        wait_status(&bed, &api, name, "both copies running", |s| {
            s.clusters.len() == 2 && s.clusters.iter().all(|c| c.phase == RunPhase::Running)
        })
        .await;
    }
    bed.stop("agent-member-2");
    let all = wait_status(&bed, &api, "all", "ended", |s| {
        s.phase
            .is_some_and(|p| p != RunPhase::Running && p != RunPhase::Scheduled)
    })
    .await;
    assert_eq!(all.phase, Some(RunPhase::Failed), "{all:?}");
    let by_cluster: BTreeMap<&str, (RunPhase, Option<&str>)> = all
        .clusters
        .iter()
        .map(|c| (c.cluster.as_str(), (c.phase, c.reason.as_deref())))
        .collect();
    assert_eq!(by_cluster["member-1"].0, RunPhase::Succeeded, "{all:?}");
    assert_eq!(
        by_cluster["member-2"],
        (RunPhase::Failed, Some("ClusterLost")),
        "{all:?}"
    );
    let again = wait_status(&bed, &api, "all-again", "its lost copy recorded", |s| {
        s.attempts
            .iter()
            .any(|a| a.cluster == "member-2" && a.reason == "ClusterLost")
    })
    .await;
    assert!(
        !again.phase.is_some_and(tekfed_api::tekton::is_final),
        "a copy to run again keeps the run open: {again:?}"
    );
    bed.restart("agent-member-2").unwrap();
    wait_condition(&bed, &bed.members(), "Ready", Duration::from_secs(90))
        .await
        .unwrap();
    let again = wait_status(&bed, &api, "all-again", "succeeded on both", |s| {
        s.phase == Some(RunPhase::Succeeded)
    })
    .await;
    assert!(
        again
            .clusters
            .iter()
            .all(|c| c.phase == RunPhase::Succeeded),
        "{again:?}"
    );
    assert_eq!(
        copies(&bed, "member-2", &ns, "all-again").await,
        ["2"],
        "member-2's copy ran again, once, as the second attempt"
    );

    // --- a member the hub cannot reach, its agent still reporting ------------------
    // member-1 takes the run, but its API server fails every create of a
    // PipelineRun there (a webhook that cannot be called: a 500, which the
    // hub tries again): placed, never created, so never released. Then the
    // hub loses sight of member-1 (its kubeconfig points nowhere) while
    // member-1's agent goes on reporting.
    cordon(&clusters, "member-2", true).await;
    wait_schedulable(&bed, &clusters, "member-2", false).await;
    let member_1 = bed.client("member-1").await.unwrap();
    let webhooks: Api<ValidatingWebhookConfiguration> = Api::all(member_1.clone());
    webhooks
        .create(&PostParams::default(), &unanswered_webhook(&ns))
        .await
        .unwrap();
    let pipelines: Api<FederatedPipelineRun> = Api::namespaced(hub.clone(), &ns);
    let everyone = json!({"clusterSelector": {"matchExpressions": [
        {"key": "tekfed.io/test-member", "operator": "Exists"}]}});
    pipelines
        .create(
            &PostParams::default(),
            &pipeline_run(&ns, "partitioned", &everyone),
        )
        .await
        .unwrap();
    eventually_logged(&bed, "partitioned: placed on member-1", WAIT, || {
        let pipelines = pipelines.clone();
        async move {
            let s = pipelines.get("partitioned").await.ok()?.status?;
            (s.cluster.as_deref() == Some("member-1")).then_some(())
        }
    })
    .await;
    let server = partition(&bed, "member-1", None).await;
    cordon(&clusters, "member-2", false).await;
    let moved = eventually_logged(&bed, "partitioned: taken off member-1", WAIT, || {
        let pipelines = pipelines.clone();
        async move {
            let s = pipelines.get("partitioned").await.ok()?.status?;
            (!s.attempts.is_empty()).then_some(s)
        }
    })
    .await;
    assert_eq!(
        (
            moved.attempts[0].cluster.as_str(),
            moved.attempts[0].reason.as_str()
        ),
        ("member-1", "ClusterUnreachable"),
        "{moved:?}"
    );
    let member = clusters.get("member-1").await.unwrap().status.unwrap();
    let condition = |type_: &str| {
        member
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| (c.status.clone(), c.reason.clone()))
    };
    assert_eq!(
        condition("AgentReady").map(|c| c.0),
        Some("True".to_owned()),
        "member-1's agent still reports: {member:?}"
    );
    assert_eq!(
        condition("Reachable").map(|c| c.0),
        Some("False".to_owned())
    );
    eventually_logged(&bed, "partitioned: succeeded on member-2", WAIT, || {
        let pipelines = pipelines.clone();
        async move {
            let s = pipelines.get("partitioned").await.ok()?.status?;
            (s.phase == Some(RunPhase::Succeeded)).then_some(())
        }
    })
    .await;
    let done = pipelines.get("partitioned").await.unwrap().status.unwrap();
    assert_eq!(done.cluster.as_deref(), Some("member-2"), "{done:?}");
    partition(&bed, "member-1", server).await;
    webhooks
        .delete(UNANSWERED_WEBHOOK, &DeleteParams::default())
        .await
        .unwrap();
    wait_condition(&bed, &bed.members(), "Ready", Duration::from_secs(90))
        .await
        .unwrap();

    // --- a MemberCluster deleted with a run on it ------------------------------------
    cordon(&clusters, "member-1", true).await;
    api.create(
        &PostParams::default(),
        &run(&ns, "on-2", "300s", only("member-2"), json!({})),
    )
    .await
    .unwrap();
    wait_status(&bed, &api, "on-2", "running on member-2", |s| {
        s.phase == Some(RunPhase::Running)
    })
    .await;
    clusters
        .delete("member-2", &DeleteParams::default())
        .await
        .unwrap();
    let removed = wait_status(&bed, &api, "on-2", "failed with its member gone", |s| {
        s.phase == Some(RunPhase::Failed)
    })
    .await;
    let c = removed
        .conditions
        .iter()
        .find(|c| c.type_ == "Succeeded")
        .unwrap();
    assert_eq!(c.reason, "ClusterRemoved", "{c:?}");
    eventually_logged(&bed, "MemberCluster member-2 to be gone", WAIT, || {
        let clusters = clusters.clone();
        async move { matches!(clusters.get_opt("member-2").await, Ok(None)).then_some(()) }
    })
    .await;
    let namespaces: Api<Namespace> = Api::all(hub.clone());
    let left = namespaces
        .get_opt(&cluster_namespace("member-2"))
        .await
        .unwrap();
    assert!(
        left.is_none_or(|n| n.metadata.deletion_timestamp.is_some()),
        "the member's hub namespace goes with it"
    );
    // member-1 has been reachable again all this while: the run it lost
    // was never created there.
    let pipeline_runs: Api<DynamicObject> =
        Api::namespaced_with(member_1, &ns, &tekton_resource("PipelineRun"));
    assert!(
        pipeline_runs
            .get_opt("partitioned")
            .await
            .unwrap()
            .is_none(),
        "the run moved off member-1 never ran there"
    );
}

/// A FederatedPipelineRun of one short task, placed as `placement` says.
fn pipeline_run(ns: &str, name: &str, placement: &Value) -> FederatedPipelineRun {
    serde_json::from_value(json!({
        "apiVersion": "tekfed.io/v1alpha1",
        "kind": "FederatedPipelineRun",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "template": pipeline_run_template(Some("1s")),
            "placement": placement,
        },
    }))
    .unwrap()
}

/// Point the hub's kubeconfig for `member` at a port no one listens on
/// (`restore`: `None`), returning the server it pointed at; or point it back
/// at `restore`. The Secret is read fresh each time: the hub renews the
/// tokens in it.
async fn partition(bed: &TestBed, member: &str, restore: Option<String>) -> Option<String> {
    let secrets: Api<Secret> = Api::namespaced(bed.client(HUB).await.unwrap(), HUB_NAMESPACE);
    let name = format!("{member}-kubeconfig");
    let mut secret = secrets.get(&name).await.unwrap();
    let data = secret.data.get_or_insert_default();
    let text = String::from_utf8(data["kubeconfig"].0.clone()).unwrap();
    const NOWHERE: &str = "https://127.0.0.1:1";
    let (text, was) = match restore {
        None => {
            let server = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("server: "))
                .unwrap()
                .to_owned();
            (text.replace(&server, NOWHERE), Some(server))
        }
        Some(server) => (text.replace(NOWHERE, &server), None),
    };
    data.insert("kubeconfig".into(), ByteString(text.into_bytes()));
    secrets
        .replace(&name, &PostParams::default(), &secret)
        .await
        .unwrap();
    was
}

/// Wait until the hub's status says whether `member` takes new runs.
async fn wait_schedulable(bed: &TestBed, clusters: &Api<MemberCluster>, member: &str, is: bool) {
    eventually_logged(bed, &format!("{member} schedulable={is}"), WAIT, || {
        let clusters = clusters.clone();
        async move {
            let s = clusters.get(member).await.ok()?.status?;
            (s.schedulable == Some(is)).then_some(())
        }
    })
    .await;
}
