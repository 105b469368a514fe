//! Runs leaving a member, on a federation of its own (hub, two members with
//! the real Tekton, agents: real processes on real API servers):
//! - a started run whose member is lost, and which asks to be rescheduled,
//!   runs again on that same member once it is back: the old copy is
//!   ended and removed first, the new one carries the next attempt, and
//!   only one copy is ever there;
//! - a `mode: All` run whose copy's member is lost fails that copy with
//!   `ClusterLost` (its `onClusterLost: Fail`), while the other copy runs;
//! - deleting a `MemberCluster` takes its runs off it (a started one fails
//!   `ClusterRemoved`), then its hub namespace goes and the object with it.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tekfed_api::runs::{RunPhase, RunStatus};
use tekfed_api::{FederatedTaskRun, MemberCluster, cluster_namespace};
use tekfed_runtime::connect::tekton_resource;
use tekfed_testbed::federation::{federate, task_run_template, wait_condition};
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
    api.create(
        &PostParams::default(),
        &run(&ns, "all", "20s", everywhere, json!({})),
    )
    .await
    .unwrap();
    wait_status(&bed, &api, "all", "both copies running", |s| {
        s.clusters.len() == 2 && s.clusters.iter().all(|c| c.phase == RunPhase::Running)
    })
    .await;
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
    bed.restart("agent-member-2").unwrap();
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
}
