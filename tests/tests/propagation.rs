//! Propagation end to end: a hub (the real `tekfed-hub` binary) and two
//! members on real API servers. What a user applies to the hub appears,
//! patched per cluster, on exactly the selected members, and stays right.
//! "Exactly" is what the member's Tekton admits of it: its webhook defaults
//! fields (`computeResources: {}`, `taskRef.kind`), as on a real cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tekfed_api::{
    FederatedPipeline, FederatedTask, MemberCluster, PropagationState, PropagationStatus,
};
use tekfed_runtime::connect::tekton_resource;
use tekfed_testbed::federation::{shared_federation, wait_reachable};
use tekfed_testbed::{HUB, TestBed, eventually};

const WAIT: Duration = Duration::from_secs(60);

fn task_spec(image: &str) -> Value {
    json!({
        "params": [{"name": "greeting", "type": "string", "default": "hello"}],
        "steps": [{"name": "echo", "image": image, "script": "echo $(params.greeting)"}],
    })
}

/// [`task_spec`] with a description.
fn described(description: &str) -> Value {
    let mut spec = task_spec("maven:3.9");
    spec["description"] = json!(description);
    spec
}

async fn create_task(hub: &Client, ns: &str, name: &str, spec: Value) -> FederatedTask {
    let api: Api<FederatedTask> = Api::namespaced(hub.clone(), ns);
    let object: FederatedTask = serde_json::from_value(json!({
        "apiVersion": "tekfed.io/v1alpha1",
        "kind": "FederatedTask",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }))
    .unwrap();
    api.create(&PostParams::default(), &object).await.unwrap()
}

/// The member's copy of a Tekton object, if any.
async fn member_copy(
    bed: &TestBed,
    member: &str,
    kind: &str,
    ns: &str,
    name: &str,
) -> Option<DynamicObject> {
    let client = bed.client(member).await.unwrap();
    let api: Api<DynamicObject> = Api::namespaced_with(client, ns, &tekton_resource(kind));
    api.get_opt(name).await.unwrap()
}

/// Wait until the federated task's status satisfies `check`.
async fn wait_status<F>(
    hub: &Client,
    ns: &str,
    name: &str,
    what: &str,
    check: F,
) -> PropagationStatus
where
    F: Fn(&PropagationStatus) -> bool,
{
    let api: Api<FederatedTask> = Api::namespaced(hub.clone(), ns);
    let check = &check;
    eventually(what, WAIT, || {
        let api = api.clone();
        async move {
            let status = api.get(name).await.ok()?.status?;
            check(&status).then_some(status)
        }
    })
    .await
}

fn state_of(status: &PropagationStatus, cluster: &str) -> Option<PropagationState> {
    status
        .clusters
        .iter()
        .find(|c| c.cluster == cluster)
        .map(|c| c.state)
}

fn propagated(status: &PropagationStatus) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == "Propagated" && c.status == "True")
}

#[tokio::test]
async fn a_task_placed_on_member_2_lands_only_there() {
    let bed = shared_federation();
    let hub = bed.client(HUB).await.unwrap();
    let ns = bed.namespace("only-m2", &[HUB]).await.unwrap();
    create_task(
        &hub,
        &ns,
        "git-clone",
        json!({
            "template": {"spec": task_spec("alpine/git")},
            "placement": {"clusters": [{"name": "member-2"}]},
        }),
    )
    .await;
    let status = wait_status(&hub, &ns, "git-clone", "Propagated on member-2", propagated).await;
    assert_eq!(status.ready_clusters.as_deref(), Some("1/1"));
    assert_eq!(
        state_of(&status, "member-2"),
        Some(PropagationState::Synced)
    );
    let copy = member_copy(bed, "member-2", "Task", &ns, "git-clone")
        .await
        .expect("the Task is on member-2");
    assert_eq!(
        copy.data["spec"],
        bed.admitted("member-2", &ns, "Task", &task_spec("alpine/git"))
            .await
    );
    assert_eq!(copy.labels()["tekfed.io/federated-name"], "git-clone");
    assert!(
        member_copy(bed, "member-1", "Task", &ns, "git-clone")
            .await
            .is_none(),
        "member-1 got a Task it was not selected for"
    );
    // The namespace was created on demand, labelled as tekfed's.
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> =
        Api::all(bed.client("member-2").await.unwrap());
    let created = namespaces.get(&ns).await.unwrap();
    assert_eq!(created.labels()["app.kubernetes.io/managed-by"], "tekfed");
}

#[tokio::test]
async fn a_selector_follows_member_labels() {
    let bed = shared_federation();
    let hub = bed.client(HUB).await.unwrap();
    let ns = bed.namespace("selector", &[HUB]).await.unwrap();
    // A label key only this test uses, so other tests' placements do not move.
    let key = format!("tekfed.test/{ns}");
    let clusters: Api<MemberCluster> = Api::all(hub.clone());
    let label = |member: &str, value: Option<&str>| {
        let clusters = clusters.clone();
        let patch = json!({"metadata": {"labels": {key.clone(): value}}});
        let member = member.to_owned();
        async move {
            clusters
                .patch(&member, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap()
        }
    };
    label("member-1", Some("on")).await;
    create_task(
        &hub,
        &ns,
        "lint",
        json!({
            "template": {"spec": task_spec("golangci/golangci-lint")},
            "placement": {"clusterSelector": {"matchLabels": {key.clone(): "on"}}},
        }),
    )
    .await;
    wait_status(&hub, &ns, "lint", "Propagated on member-1", |s| {
        propagated(s) && state_of(s, "member-1").is_some()
    })
    .await;
    assert!(
        member_copy(bed, "member-1", "Task", &ns, "lint")
            .await
            .is_some()
    );
    assert!(
        member_copy(bed, "member-2", "Task", &ns, "lint")
            .await
            .is_none()
    );

    // Move the label: the Task follows it.
    label("member-2", Some("on")).await;
    label("member-1", None).await;
    eventually(
        "the Task to move from member-1 to member-2",
        WAIT,
        || async {
            let on_2 = member_copy(bed, "member-2", "Task", &ns, "lint")
                .await
                .is_some();
            let on_1 = member_copy(bed, "member-1", "Task", &ns, "lint")
                .await
                .is_some();
            (on_2 && !on_1).then_some(())
        },
    )
    .await;
    let status = wait_status(&hub, &ns, "lint", "status to list member-2 only", |s| {
        propagated(s)
            && s.clusters.len() == 1
            && state_of(s, "member-2") == Some(PropagationState::Synced)
    })
    .await;
    assert_eq!(status.ready_clusters.as_deref(), Some("1/1"));
    label("member-2", None).await;
}

#[tokio::test]
async fn per_cluster_overrides_yield_exactly_the_expected_objects() {
    let bed = shared_federation();
    let hub = bed.client(HUB).await.unwrap();
    let ns = bed.namespace("overrides", &[HUB]).await.unwrap();
    create_task(&hub, &ns, "greet", json!({
        "template": {"metadata": {"labels": {"team": "payments"}}, "spec": task_spec("ubuntu")},
        "placement": {"clusters": [{"name": "member-1"}, {"name": "member-2"}]},
        "overrides": [
            {"clusterName": "member-1", "clusterOverrides": [{"path": "/spec/steps/0/image", "value": "mirror.member-1.local/ubuntu"}]},
            {"clusterName": "member-2", "clusterOverrides": [{"op": "replace", "path": "/spec/params/0/default", "value": "hej"}]},
        ],
    }))
    .await;
    wait_status(&hub, &ns, "greet", "Propagated on both members", |s| {
        propagated(s) && s.clusters.len() == 2
    })
    .await;

    let mut expected_1 = task_spec("mirror.member-1.local/ubuntu");
    let one = member_copy(bed, "member-1", "Task", &ns, "greet")
        .await
        .unwrap();
    assert_eq!(
        one.data["spec"],
        bed.admitted("member-1", &ns, "Task", &expected_1).await
    );
    assert_eq!(one.labels()["team"], "payments");

    expected_1 = task_spec("ubuntu");
    expected_1["params"][0]["default"] = json!("hej");
    let two = member_copy(bed, "member-2", "Task", &ns, "greet")
        .await
        .unwrap();
    assert_eq!(
        two.data["spec"],
        bed.admitted("member-2", &ns, "Task", &expected_1).await
    );
}

#[tokio::test]
async fn a_pipeline_with_three_tasks_arrives_intact() {
    let bed = shared_federation();
    let hub = bed.client(HUB).await.unwrap();
    let ns = bed.namespace("pipeline", &[HUB]).await.unwrap();
    let spec = json!({
        "params": [{"name": "image", "type": "string"}],
        "workspaces": [{"name": "source"}],
        "tasks": [
            {"name": "build", "taskRef": {"name": "maven-build"}, "workspaces": [{"name": "source", "workspace": "source"}]},
            {"name": "test", "taskRef": {"name": "maven-test"}, "runAfter": ["build"]},
            {"name": "deploy", "taskRef": {"name": "kubectl-deploy"}, "runAfter": ["test"], "params": [{"name": "image", "value": "$(params.image)"}]},
        ],
    });
    let api: Api<FederatedPipeline> = Api::namespaced(hub.clone(), &ns);
    let fp: FederatedPipeline = serde_json::from_value(json!({
        "apiVersion": "tekfed.io/v1alpha1",
        "kind": "FederatedPipeline",
        "metadata": {"name": "build-and-deploy", "namespace": ns},
        "spec": {"template": {"spec": spec}, "placement": {"clusters": [{"name": "member-1"}, {"name": "member-2"}]}},
    }))
    .unwrap();
    api.create(&PostParams::default(), &fp).await.unwrap();
    eventually("the FederatedPipeline to be Propagated", WAIT, || {
        let api = api.clone();
        async move {
            let status = api.get("build-and-deploy").await.ok()?.status?;
            propagated(&status).then_some(())
        }
    })
    .await;
    for member in ["member-1", "member-2"] {
        let copy = member_copy(bed, member, "Pipeline", &ns, "build-and-deploy")
            .await
            .unwrap();
        assert_eq!(
            copy.data["spec"],
            bed.admitted(member, &ns, "Pipeline", &spec).await,
            "the Pipeline on {member} differs"
        );
    }
}

#[tokio::test]
async fn drift_on_a_member_is_reverted() {
    let bed = shared_federation();
    let hub = bed.client(HUB).await.unwrap();
    let ns = bed.namespace("drift", &[HUB]).await.unwrap();
    create_task(
        &hub,
        &ns,
        "build",
        json!({
            "template": {"spec": described("built by the hub")},
            "placement": {"clusters": [{"name": "member-1"}]},
        }),
    )
    .await;
    wait_status(&hub, &ns, "build", "Propagated", propagated).await;
    let member = bed.client("member-1").await.unwrap();
    let api: Api<DynamicObject> = Api::namespaced_with(member, &ns, &tekton_resource("Task"));

    let wanted = bed
        .admitted("member-1", &ns, "Task", &described("built by the hub"))
        .await;
    // An edit by hand on the member…
    api.patch("build", &PatchParams::default(), &Patch::Merge(json!({"spec": {"steps": [{"name": "echo", "image": "evil/maven", "script": "curl evil"}]}})))
        .await
        .unwrap();
    eventually("the edit to be reverted", WAIT, || {
        let (api, wanted) = (api.clone(), wanted.clone());
        async move {
            let task = api.get("build").await.ok()?;
            (task.data["spec"] == wanted).then_some(())
        }
    })
    .await;

    // …and a delete.
    api.delete("build", &DeleteParams::default()).await.unwrap();
    eventually("the deleted Task to come back", WAIT, || {
        let (api, wanted) = (api.clone(), wanted.clone());
        async move {
            let task = api.get_opt("build").await.ok()??;
            (task.data["spec"] == wanted).then_some(())
        }
    })
    .await;

    // …a field added by hand (a subset check would keep it)…
    api.patch(
        "build",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"displayName": "added on the member"}})),
    )
    .await
    .unwrap();
    eventually("the added field to be taken out", WAIT, || {
        let (api, wanted) = (api.clone(), wanted.clone());
        async move {
            let task = api.get("build").await.ok()?;
            (task.data["spec"] == wanted).then_some(())
        }
    })
    .await;

    // …and a field removed from the template is removed on the member.
    let tasks: Api<FederatedTask> = Api::namespaced(hub.clone(), &ns);
    tasks
        .patch(
            "build",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"spec": {"description": null}}}})),
        )
        .await
        .unwrap();
    let without = bed
        .admitted("member-1", &ns, "Task", &task_spec("maven:3.9"))
        .await;
    eventually("the field removed from the template to go", WAIT, || {
        let (api, without) = (api.clone(), without.clone());
        async move {
            let task = api.get("build").await.ok()?;
            (task.data["spec"] == without).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn an_unmanaged_task_of_the_same_name_is_a_conflict_left_untouched() {
    let bed = shared_federation();
    let hub = bed.client(HUB).await.unwrap();
    let ns = bed.namespace("conflict", &[HUB, "member-1"]).await.unwrap();
    let member = bed.client("member-1").await.unwrap();
    let api: Api<DynamicObject> = Api::namespaced_with(member, &ns, &tekton_resource("Task"));
    let mut theirs = DynamicObject::new("shared-name", &tekton_resource("Task"));
    theirs.data = json!({"spec": task_spec("their/image")});
    api.create(&PostParams::default(), &theirs).await.unwrap();

    create_task(
        &hub,
        &ns,
        "shared-name",
        json!({
            "template": {"spec": task_spec("our/image")},
            "placement": {"clusters": [{"name": "member-1"}, {"name": "member-2"}]},
        }),
    )
    .await;
    let status = wait_status(&hub, &ns, "shared-name", "a Conflict on member-1", |s| {
        state_of(s, "member-1") == Some(PropagationState::Conflict)
            && state_of(s, "member-2") == Some(PropagationState::Synced)
    })
    .await;
    let message = status
        .clusters
        .iter()
        .find(|c| c.cluster == "member-1")
        .and_then(|c| c.message.clone())
        .unwrap();
    assert!(message.contains("not created by tekfed"), "{message}");
    let condition = &status.conditions[0];
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        ("False", "Conflict")
    );
    let untouched = api.get("shared-name").await.unwrap();
    assert_eq!(
        untouched.data["spec"],
        bed.admitted("member-1", &ns, "Task", &task_spec("their/image"))
            .await
    );
    assert!(!untouched.labels().contains_key("tekfed.io/federated-uid"));
}

#[tokio::test]
async fn deleting_a_federated_task_removes_its_copies() {
    let bed = shared_federation();
    let hub = bed.client(HUB).await.unwrap();
    let ns = bed.namespace("delete", &[HUB]).await.unwrap();
    create_task(
        &hub,
        &ns,
        "short-lived",
        json!({
            "template": {"spec": task_spec("ubuntu")},
            "placement": {"clusters": [{"name": "member-1"}, {"name": "member-2"}]},
        }),
    )
    .await;
    wait_status(&hub, &ns, "short-lived", "Propagated on both", |s| {
        propagated(s) && s.clusters.len() == 2
    })
    .await;
    let api: Api<FederatedTask> = Api::namespaced(hub.clone(), &ns);
    api.delete("short-lived", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the copies and the federated task to be gone", WAIT, || {
        let api = api.clone();
        let ns = ns.clone();
        async move {
            let gone_1 = member_copy(bed, "member-1", "Task", &ns, "short-lived")
                .await
                .is_none();
            let gone_2 = member_copy(bed, "member-2", "Task", &ns, "short-lived")
                .await
                .is_none();
            let gone_hub = api.get_opt("short-lived").await.ok()?.is_none();
            (gone_1 && gone_2 && gone_hub).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn a_bad_override_path_fails_one_cluster_and_says_what_to_fix() {
    let bed = shared_federation();
    let hub = bed.client(HUB).await.unwrap();
    let ns = bed.namespace("bad-override", &[HUB]).await.unwrap();
    create_task(&hub, &ns, "bad-path", json!({
        "template": {"spec": task_spec("ubuntu")},
        "placement": {"clusters": [{"name": "member-1"}, {"name": "member-2"}]},
        "overrides": [{"clusterName": "member-1", "clusterOverrides": [{"op": "replace", "path": "/spec/workspaces/0/name", "value": "src"}]}],
    }))
    .await;
    let status = wait_status(
        &hub,
        &ns,
        "bad-path",
        "member-1 Failed, member-2 Synced",
        |s| {
            state_of(s, "member-1") == Some(PropagationState::Failed)
                && state_of(s, "member-2") == Some(PropagationState::Synced)
        },
    )
    .await;
    let message = status
        .clusters
        .iter()
        .find(|c| c.cluster == "member-1")
        .and_then(|c| c.message.clone())
        .unwrap();
    assert!(
        message.contains("replace /spec/workspaces/0/name"),
        "{message}"
    );
    assert!(message.contains("fix spec.overrides"), "{message}");
    assert_eq!(status.ready_clusters.as_deref(), Some("1/2"));
    assert!(
        member_copy(bed, "member-1", "Task", &ns, "bad-path")
            .await
            .is_none()
    );
    assert!(
        member_copy(bed, "member-2", "Task", &ns, "bad-path")
            .await
            .is_some()
    );
}

#[tokio::test]
async fn a_broken_member_kubeconfig_is_reported_and_the_rest_keeps_working() {
    let bed = shared_federation();
    let hub = bed.client(HUB).await.unwrap();
    let ns = bed.namespace("broken", &[HUB]).await.unwrap();
    let name = format!("broken-{}", ns.rsplit('-').next().unwrap());
    bed.register_member_with(&name, "this: is: not a kubeconfig", BTreeMap::new())
        .await
        .unwrap();
    let clusters: Api<MemberCluster> = Api::all(hub.clone());
    let condition = eventually("the broken member to be Reachable=False", WAIT, || {
        let clusters = clusters.clone();
        let name = name.clone();
        async move {
            let mc = clusters.get(&name).await.ok()?;
            mc.status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Reachable" && c.status == "False")
        }
    })
    .await;
    assert_eq!(condition.reason, "KubeconfigInvalid");
    assert!(
        condition.message.contains("kubeconfig"),
        "{}",
        condition.message
    );

    create_task(
        &hub,
        &ns,
        "mixed",
        json!({
            "template": {"spec": task_spec("ubuntu")},
            "placement": {"clusters": [{"name": "member-1"}, {"name": name}]},
        }),
    )
    .await;
    let status = wait_status(
        &hub,
        &ns,
        "mixed",
        "member-1 Synced, the broken member Failed",
        |s| {
            state_of(s, "member-1") == Some(PropagationState::Synced)
                && state_of(s, &name) == Some(PropagationState::Failed)
        },
    )
    .await;
    let message = status
        .clusters
        .iter()
        .find(|c| c.cluster == name)
        .and_then(|c| c.message.clone())
        .unwrap();
    assert!(message.contains("KubeconfigInvalid"), "{message}");

    // Fixing the Secret is enough: the hub rebuilds the client and syncs.
    // member-3 is in the test bed but joined under no other name.
    let fixed = bed.cluster_kubeconfig("member-3").unwrap();
    bed.register_member_with(&name, &fixed, BTreeMap::new())
        .await
        .unwrap();
    wait_status(
        &hub,
        &ns,
        "mixed",
        "the repaired member to be Synced",
        |s| propagated(s) && state_of(s, &name) == Some(PropagationState::Synced),
    )
    .await;
    assert!(
        member_copy(bed, "member-3", "Task", &ns, "mixed")
            .await
            .is_some()
    );
    clusters
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_member_kubeconfig_that_would_run_a_command_on_the_hub_is_refused() {
    let bed = shared_federation();
    let hub = bed.client(HUB).await.unwrap();
    let kubeconfig = r#"
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1", certificate-authority-data: ""}}]
users: [{name: u, user: {exec: {apiVersion: client.authentication.k8s.io/v1, command: /bin/touch, args: [/tmp/tekfed-pwned]}}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
"#;
    bed.register_member_with("exec-plugin", kubeconfig, BTreeMap::new())
        .await
        .unwrap();
    let clusters: Api<MemberCluster> = Api::all(hub);
    let condition = eventually("the exec member to be refused", WAIT, || {
        let clusters = clusters.clone();
        async move {
            let mc = clusters.get("exec-plugin").await.ok()?;
            mc.status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Reachable" && c.status == "False")
        }
    })
    .await;
    assert_eq!(condition.reason, "KubeconfigInvalid");
    assert!(condition.message.contains("exec"), "{}", condition.message);
    assert!(!std::path::Path::new("/tmp/tekfed-pwned").exists());
    clusters
        .delete("exec-plugin", &DeleteParams::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_cluster_joined_twice_is_refused_the_second_time() {
    // Two names for one API server would each see the other's copies as
    // leftovers to remove: the hub refuses the second name.
    let bed = shared_federation();
    let hub = bed.client(HUB).await.unwrap();
    let alias = bed.cluster_kubeconfig("member-1").unwrap();
    bed.register_member_with("member-1-again", &alias, BTreeMap::new())
        .await
        .unwrap();
    let clusters: Api<MemberCluster> = Api::all(hub);
    let condition = eventually("the alias to be refused", WAIT, || {
        let clusters = clusters.clone();
        async move {
            let mc = clusters.get("member-1-again").await.ok()?;
            mc.status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Reachable" && c.status == "False")
        }
    })
    .await;
    assert_eq!(condition.reason, "DuplicateCluster");
    assert!(
        condition.message.contains("member-1"),
        "{}",
        condition.message
    );
    clusters
        .delete("member-1-again", &DeleteParams::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn both_members_are_reachable_with_their_versions() {
    let bed = shared_federation();
    let members = ["member-1".to_owned(), "member-2".to_owned()];
    wait_reachable(bed, &members, WAIT).await.unwrap();
    let clusters: Api<MemberCluster> = Api::all(bed.client(HUB).await.unwrap());
    for member in members {
        let mc = clusters.get(&member).await.unwrap();
        let status = mc.status.unwrap();
        assert!(status.kubernetes_version.unwrap().starts_with("v1.37."));
    }
}
