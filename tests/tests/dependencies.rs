//! Everything a run needs travels with it, to its cluster only, and leaves
//! when no run there needs it: Pipelines, Tasks and StepActions kept only
//! on the hub, a ServiceAccount with a git Secret and an image pull Secret,
//! ConfigMap and Secret workspaces; Secrets only by consent; a missing
//! dependency found before scheduling. All on real Tekton (pods played by
//! kwok), real API servers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, ServiceAccount};
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tekfed_api::runs::{RunPhase, RunStatus};
use tekfed_api::{FederatedPipelineRun, FederatedTaskRun, RunAssignment, cluster_namespace};
use tekfed_runtime::connect::tekton_resource;
use tekfed_testbed::federation::run_federation;
use tekfed_testbed::member::ANNOTATION_DURATION;
use tekfed_testbed::{HUB, TestBed, eventually, eventually_logged};

const WAIT: Duration = Duration::from_secs(180);
const MANAGED: &str = "app.kubernetes.io/managed-by=tekfed";

/// What a federated run's templates select: no member (they live only on
/// the hub until a run needs them).
fn nowhere() -> Value {
    json!({"clusterSelector": {"matchLabels": {"tekfed.io/no-such-member": "true"}}})
}

fn everywhere() -> Value {
    json!({"clusterSelector": {"matchExpressions": [{"key": "tekfed.io/test-member", "operator": "Exists"}]}})
}

/// The kinds a run can need, on a member.
fn member_resource(kind: &str) -> ApiResource {
    match kind {
        "Secret" => ApiResource::erase::<Secret>(&()),
        "ConfigMap" => ApiResource::erase::<ConfigMap>(&()),
        "ServiceAccount" => ApiResource::erase::<ServiceAccount>(&()),
        tekton => tekton_resource(tekton),
    }
}

const KINDS: [&str; 6] = [
    "Secret",
    "ConfigMap",
    "ServiceAccount",
    "StepAction",
    "Task",
    "Pipeline",
];

/// Create `object` on the hub in `ns` (its kind's resource from apiVersion/kind).
async fn create(hub: &Client, ns: &str, object: Value) {
    let kind = object["kind"].as_str().unwrap().to_owned();
    let resource = match object["apiVersion"].as_str().unwrap() {
        "v1" => member_resource(&kind),
        api_version => {
            let (group, version) = api_version.split_once('/').unwrap();
            ApiResource {
                group: group.into(),
                version: version.into(),
                api_version: api_version.into(),
                plural: format!("{}s", kind.to_lowercase()),
                kind: kind.clone(),
            }
        }
    };
    let api: Api<DynamicObject> = Api::namespaced_with(hub.clone(), ns, &resource);
    let object: DynamicObject = serde_json::from_value(object).unwrap();
    api.create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|e| panic!("creating {kind} {} on the hub: {e}", object.name_any()));
}

/// Every object with tekfed's labels that ever appeared in `ns` on each
/// member, from watches started before the run: (member, kind, name) →
/// the object as first seen.
type Seen = Arc<Mutex<BTreeMap<(String, String, String), DynamicObject>>>;

async fn record_member_objects(
    bed: &TestBed,
    ns: &str,
) -> (Seen, Vec<tokio::task::JoinHandle<()>>) {
    let seen: Seen = Arc::default();
    let mut tasks = Vec::new();
    for member in bed.members() {
        let client = bed.client(&member).await.unwrap();
        for kind in KINDS {
            let api: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), ns, &member_resource(kind));
            let (seen, member) = (seen.clone(), member.clone());
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
            tasks.push(tokio::spawn(async move {
                let mut ready = Some(ready_tx);
                let mut events =
                    std::pin::pin!(watcher(api, watcher::Config::default().labels(MANAGED)));
                while let Some(event) = events.next().await {
                    match event {
                        Ok(watcher::Event::InitDone) => {
                            if let Some(tx) = ready.take() {
                                let _ = tx.send(());
                            }
                        }
                        Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                            seen.lock()
                                .unwrap()
                                .entry((member.clone(), kind.to_owned(), o.name_any()))
                                .or_insert(o);
                        }
                        _ => {}
                    }
                }
            }));
            ready_rx.await.expect("the member watch started");
        }
    }
    (seen, tasks)
}

/// tekfed's objects of the six kinds in `ns` on `member` now.
async fn carried_now(bed: &TestBed, member: &str, ns: &str) -> BTreeSet<(String, String)> {
    let client = bed.client(member).await.unwrap();
    let mut now = BTreeSet::new();
    for kind in KINDS {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), ns, &member_resource(kind));
        for o in api
            .list(&ListParams::default().labels(MANAGED))
            .await
            .unwrap()
        {
            now.insert((kind.to_owned(), o.name_any()));
        }
    }
    now
}

async fn label_namespace(hub: &Client, ns: &str, key: &str) {
    let api: Api<Namespace> = Api::all(hub.clone());
    api.patch(
        ns,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {key: "true"}}})),
    )
    .await
    .unwrap();
}

fn condition(status: &RunStatus, type_: &str) -> Option<(String, String, String)> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn status_of<K>(api: &Api<K>, name: &str) -> Option<RunStatus>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + serde::Serialize,
{
    let run = api.get(name).await.ok()?;
    let v = serde_json::to_value(run).ok()?;
    serde_json::from_value(v.get("status")?.clone()).ok()
}

async fn reaches<K>(api: &Api<K>, name: &str, phase: RunPhase) -> RunStatus
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + serde::Serialize,
    K: 'static,
{
    let bed = run_federation();
    eventually_logged(bed, &format!("{name} to be {phase:?}"), WAIT, || {
        let api = api.clone();
        async move {
            let s = status_of(&api, name).await?;
            (s.phase == Some(phase)).then_some(s)
        }
    })
    .await
}

/// No RunAssignment for `uid` in any cluster's hub namespace: the run
/// holds no cluster's capacity.
async fn holds_no_cluster(bed: &TestBed, hub: &Client, uid: &str) -> bool {
    for member in bed.members() {
        let api: Api<RunAssignment> = Api::namespaced(hub.clone(), &cluster_namespace(&member));
        if api.get_opt(uid).await.unwrap().is_some() {
            return false;
        }
    }
    true
}

/// The pipeline, all of it on the hub: Pipeline → Tasks →
/// StepActions, a ServiceAccount with a git Secret and an image pull
/// Secret, a ConfigMap workspace and a Secret workspace.
async fn ci_on_the_hub(hub: &Client, ns: &str) {
    let objects = [
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "git-credentials", "annotations": {"tekton.dev/git-0": "https://github.com"}},
               "type": "kubernetes.io/basic-auth",
               "stringData": {"username": "ci-bot", "password": "not-a-real-token"}}),
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "registry"},
               "type": "kubernetes.io/dockerconfigjson",
               "stringData": {".dockerconfigjson": "{\"auths\":{\"registry.example\":{\"auth\":\"Y2k6cHc=\"}}}"}}),
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "signing-key"},
               "stringData": {"key.pem": "-----BEGIN KEY-----"}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": "builder"},
               "secrets": [{"name": "git-credentials"}],
               "imagePullSecrets": [{"name": "registry"}]}),
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "build-settings"},
               "data": {"GOFLAGS": "-mod=vendor"}}),
        json!({"apiVersion": "tekfed.io/v1alpha1", "kind": "FederatedStepAction",
               "metadata": {"name": "git-clone"},
               "spec": {"template": {"spec": {"image": "alpine/git", "script": "git clone $URL ."}}, "placement": nowhere()}}),
        json!({"apiVersion": "tekfed.io/v1alpha1", "kind": "FederatedStepAction",
               "metadata": {"name": "sign"},
               "spec": {"template": {"spec": {"image": "cosign", "script": "cosign sign"}}, "placement": nowhere()}}),
        json!({"apiVersion": "tekfed.io/v1alpha1", "kind": "FederatedTask",
               "metadata": {"name": "build"},
               "spec": {"template": {"spec": {
                   "workspaces": [{"name": "settings"}, {"name": "signing"}],
                   "steps": [
                       {"name": "clone", "ref": {"name": "git-clone"}},
                       {"name": "compile", "image": "golang", "script": "go build ./..."},
                   ]}}, "placement": nowhere()}}),
        json!({"apiVersion": "tekfed.io/v1alpha1", "kind": "FederatedTask",
               "metadata": {"name": "release"},
               "spec": {"template": {"spec": {
                   "workspaces": [{"name": "signing"}],
                   "steps": [{"name": "sign", "ref": {"name": "sign"}}]}}, "placement": nowhere()}}),
        json!({"apiVersion": "tekfed.io/v1alpha1", "kind": "FederatedPipeline",
               "metadata": {"name": "ci"},
               "spec": {"template": {"spec": {
                   "workspaces": [{"name": "settings"}, {"name": "signing"}],
                   "tasks": [{"name": "build", "taskRef": {"name": "build"},
                              "workspaces": [{"name": "settings", "workspace": "settings"}, {"name": "signing", "workspace": "signing"}]}],
                   "finally": [{"name": "release", "taskRef": {"name": "release"},
                                "workspaces": [{"name": "signing", "workspace": "signing"}]}],
               }}, "placement": nowhere()}}),
    ];
    for object in objects {
        create(hub, ns, object).await;
    }
}

fn ci_run(name: &str, placement: Value, annotations: Value) -> Value {
    json!({
        "apiVersion": "tekfed.io/v1alpha1", "kind": "FederatedPipelineRun",
        "metadata": {"name": name},
        "spec": {
            "template": {"metadata": {"annotations": annotations}, "spec": {
                "pipelineRef": {"name": "ci"},
                "taskRunTemplate": {"serviceAccountName": "builder"},
                "workspaces": [
                    {"name": "settings", "configMap": {"name": "build-settings"}},
                    {"name": "signing", "secret": {"secretName": "signing-key"}},
                ],
            }},
            "placement": placement,
        },
    })
}

#[tokio::test]
async fn everything_a_pipeline_run_needs_travels_to_its_cluster_only_and_leaves_after() {
    let bed = run_federation();
    let hub = bed.client(HUB).await.unwrap();
    let ns = bed.namespace("deps-ci", &[HUB]).await.unwrap();
    label_namespace(&hub, &ns, tekfed_api::dependencies::LABEL_CARRY_SECRETS).await;
    ci_on_the_hub(&hub, &ns).await;
    let (seen, watches) = record_member_objects(bed, &ns).await;

    create(&hub, &ns, ci_run("ci-1", everywhere(), json!({}))).await;
    let runs: Api<FederatedPipelineRun> = Api::namespaced(hub.clone(), &ns);
    let status = reaches(&runs, "ci-1", RunPhase::Succeeded).await;
    let cluster = status.cluster.clone().expect("the run's cluster");
    let (state, reason, message) = condition(&status, "DependenciesReady").unwrap();
    assert_eq!(
        (state.as_str(), reason.as_str()),
        ("True", "Resolved"),
        "{message}"
    );
    assert!(message.contains("FederatedPipeline ci"), "{message}");

    // Exactly the closure reached the run's cluster, and nothing else any member.
    let expected: BTreeSet<(String, String, String)> = [
        ("Pipeline", "ci"),
        ("Task", "build"),
        ("Task", "release"),
        ("StepAction", "git-clone"),
        ("StepAction", "sign"),
        ("ServiceAccount", "builder"),
        ("Secret", "git-credentials"),
        ("Secret", "registry"),
        ("Secret", "signing-key"),
        ("ConfigMap", "build-settings"),
    ]
    .iter()
    .map(|(k, n)| (cluster.clone(), k.to_string(), n.to_string()))
    .collect();
    let got: BTreeMap<_, _> = seen.lock().unwrap().clone();
    assert_eq!(got.keys().cloned().collect::<BTreeSet<_>>(), expected);

    // As they are on the hub: the git Secret's type, data and Tekton's
    // credential annotation; the ServiceAccount's Secrets; the ConfigMap.
    let hub_secret = Api::<Secret>::namespaced(hub.clone(), &ns)
        .get("git-credentials")
        .await
        .unwrap();
    let member_secret = &got[&(cluster.clone(), "Secret".into(), "git-credentials".into())];
    assert_eq!(member_secret.data["type"], "kubernetes.io/basic-auth");
    assert_eq!(
        member_secret.data["data"],
        serde_json::to_value(&hub_secret.data).unwrap()
    );
    assert_eq!(
        member_secret.annotations()["tekton.dev/git-0"],
        "https://github.com"
    );
    let member_sa = &got[&(cluster.clone(), "ServiceAccount".into(), "builder".into())];
    assert_eq!(
        member_sa.data["secrets"],
        json!([{"name": "git-credentials"}])
    );
    assert_eq!(
        member_sa.data["imagePullSecrets"],
        json!([{"name": "registry"}])
    );
    let member_cm = &got[&(cluster.clone(), "ConfigMap".into(), "build-settings".into())];
    assert_eq!(member_cm.data["data"], json!({"GOFLAGS": "-mod=vendor"}));

    // A Secret's data is in no status and no Event.
    let run_json = serde_json::to_string(&runs.get("ci-1").await.unwrap()).unwrap();
    for value in hub_secret.data.unwrap_or_default().values() {
        let encoded = serde_json::to_string(value).unwrap();
        assert!(
            !run_json.contains(encoded.trim_matches('"')),
            "a Secret's data in the run"
        );
    }
    assert!(!run_json.contains("not-a-real-token"));

    // No unfinished run on that cluster needs them: gone from it.
    eventually(
        "the carried objects to leave the member once no run needs them",
        WAIT,
        || async {
            carried_now(bed, &cluster, &ns)
                .await
                .is_empty()
                .then_some(())
        },
    )
    .await;
    // The hub keeps them.
    assert!(
        Api::<Secret>::namespaced(hub.clone(), &ns)
            .get_opt("git-credentials")
            .await
            .unwrap()
            .is_some()
    );
    for w in watches {
        w.abort();
    }
}

#[tokio::test]
async fn a_secret_without_consent_stays_on_the_hub_and_the_run_waits_saying_how_to_allow_it() {
    let bed = run_federation();
    let hub = bed.client(HUB).await.unwrap();
    let ns = bed.namespace("deps-consent", &[HUB]).await.unwrap();
    create(
        &hub,
        &ns,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "deploy-token"},
               "stringData": {"token": "s3cr3t-value"}}),
    )
    .await;
    create(
        &hub,
        &ns,
        json!({"apiVersion": "tekfed.io/v1alpha1", "kind": "FederatedTaskRun",
               "metadata": {"name": "deploy"},
               "spec": {"template": {"spec": {
                   "taskSpec": {"workspaces": [{"name": "token"}], "steps": [{"name": "deploy", "image": "kubectl", "script": "deploy"}]},
                   "workspaces": [{"name": "token", "secret": {"secretName": "deploy-token"}}]}},
                   "placement": everywhere()}}),
    )
    .await;
    let runs: Api<FederatedTaskRun> = Api::namespaced(hub.clone(), &ns);
    let (status, message) = eventually("DependenciesReady=False, SecretNotCarried", WAIT, || {
        let runs = runs.clone();
        async move {
            let s = status_of(&runs, "deploy").await?;
            let (state, reason, message) = condition(&s, "DependenciesReady")?;
            (state == "False" && reason == "SecretNotCarried").then_some((s, message))
        }
    })
    .await;
    assert!(
        message.contains("Secret deploy-token")
            && message.contains("tekfed.io/carry-secrets=true")
            && message.contains("tekfed.io/carry=true"),
        "{message}"
    );
    assert_eq!(status.phase, Some(RunPhase::Queued));
    assert_eq!(status.cluster, None, "no cluster decided");
    let uid = runs.get("deploy").await.unwrap().uid().unwrap();
    assert!(
        holds_no_cluster(bed, &hub, &uid).await,
        "a blocked run holds a cluster"
    );
    for member in bed.members() {
        assert!(
            carried_now(bed, &member, &ns).await.is_empty(),
            "something was carried to {member}"
        );
    }
    assert!(
        !serde_json::to_string(&runs.get("deploy").await.unwrap())
            .unwrap()
            .contains("s3cr3t")
    );

    // Consent on the Secret itself: it travels, the run runs.
    let secrets: Api<Secret> = Api::namespaced(hub.clone(), &ns);
    secrets
        .patch(
            "deploy-token",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"labels": {tekfed_api::dependencies::LABEL_CARRY: "true"}}}),
            ),
        )
        .await
        .unwrap();
    let status = reaches(&runs, "deploy", RunPhase::Succeeded).await;
    assert_eq!(condition(&status, "DependenciesReady").unwrap().0, "True");
}

#[tokio::test]
async fn a_run_whose_task_does_not_exist_waits_unscheduled_and_runs_once_it_does() {
    let bed = run_federation();
    let hub = bed.client(HUB).await.unwrap();
    let ns = bed.namespace("deps-missing", &[HUB]).await.unwrap();
    create(
        &hub,
        &ns,
        json!({"apiVersion": "tekfed.io/v1alpha1", "kind": "FederatedTaskRun",
               "metadata": {"name": "lint-run"},
               "spec": {"template": {"spec": {"taskRef": {"name": "lint"}}}, "placement": everywhere()}}),
    )
    .await;
    let runs: Api<FederatedTaskRun> = Api::namespaced(hub.clone(), &ns);
    let (status, message) = eventually("DependenciesReady=False, DependencyMissing", WAIT, || {
        let runs = runs.clone();
        async move {
            let s = status_of(&runs, "lint-run").await?;
            let (state, reason, message) = condition(&s, "DependenciesReady")?;
            (state == "False" && reason == "DependencyMissing").then_some((s, message))
        }
    })
    .await;
    assert!(message.contains("FederatedTask lint"), "{message}");
    assert_eq!(status.phase, Some(RunPhase::Queued));
    assert_eq!(status.cluster, None);
    let (_, reason, _) = condition(&status, "Scheduled").unwrap();
    assert_eq!(reason, "WaitingForDependencies");
    let uid = runs.get("lint-run").await.unwrap().uid().unwrap();
    assert!(
        holds_no_cluster(bed, &hub, &uid).await,
        "a blocked run holds a cluster"
    );

    create(
        &hub,
        &ns,
        json!({"apiVersion": "tekfed.io/v1alpha1", "kind": "FederatedTask",
               "metadata": {"name": "lint"},
               "spec": {"template": {"spec": {"steps": [{"name": "lint", "image": "golangci/golangci-lint", "script": "golangci-lint run"}]}},
                        "placement": nowhere()}}),
    )
    .await;
    reaches(&runs, "lint-run", RunPhase::Succeeded).await;
}

#[tokio::test]
async fn carried_objects_follow_the_hub_while_a_run_needs_them_and_a_members_own_is_left_alone() {
    let bed = run_federation();
    let hub = bed.client(HUB).await.unwrap();
    let ns = bed.namespace("deps-sync", &[HUB]).await.unwrap();
    create(
        &hub,
        &ns,
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"LEVEL": "1"}}),
    )
    .await;
    let run = |name: &str, cm: &str, member: &str, annotations: Value| {
        json!({"apiVersion": "tekfed.io/v1alpha1", "kind": "FederatedTaskRun",
               "metadata": {"name": name},
               "spec": {"template": {"metadata": {"annotations": annotations}, "spec": {
                   "taskSpec": {"workspaces": [{"name": "settings"}], "steps": [{"name": "s", "image": "alpine", "script": "cat"}]},
                   "workspaces": [{"name": "settings", "configMap": {"name": cm}}]}},
                   "placement": {"clusters": [{"name": member}]}}})
    };
    // Long enough to be running while the hub's ConfigMap changes; cancelled after.
    create(
        &hub,
        &ns,
        run(
            "long",
            "settings",
            "member-1",
            json!({ANNOTATION_DURATION: "600s"}),
        ),
    )
    .await;
    let runs: Api<FederatedTaskRun> = Api::namespaced(hub.clone(), &ns);
    reaches(&runs, "long", RunPhase::Running).await;
    let member_cms: Api<ConfigMap> = Api::namespaced(bed.client("member-1").await.unwrap(), &ns);
    assert_eq!(
        member_cms.get("settings").await.unwrap().data.unwrap()["LEVEL"],
        "1"
    );
    Api::<ConfigMap>::namespaced(hub.clone(), &ns)
        .patch(
            "settings",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"LEVEL": "2"}})),
        )
        .await
        .unwrap();
    eventually(
        "the member's copy to follow the hub's ConfigMap",
        WAIT,
        || {
            let member_cms = member_cms.clone();
            async move {
                let cm = member_cms.get("settings").await.ok()?;
                (cm.data?.get("LEVEL")? == "2").then_some(())
            }
        },
    )
    .await;

    // A ConfigMap of that name that tekfed did not make, on member-2: left
    // alone, and the run there says why it waits.
    create(
        &hub,
        &ns,
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shared"}, "data": {"FROM": "hub"}}),
    )
    .await;
    let member2 = bed.client("member-2").await.unwrap();
    Api::<Namespace>::all(member2.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .unwrap();
    let member2_cms: Api<ConfigMap> = Api::namespaced(member2, &ns);
    member2_cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "shared"}, "data": {"FROM": "member"}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    create(&hub, &ns, run("blocked", "shared", "member-2", json!({}))).await;
    let message = eventually("MemberRunReady=False, DependencyNotReady", WAIT, || {
        let runs = runs.clone();
        async move {
            let s = status_of(&runs, "blocked").await?;
            let (state, reason, message) = condition(&s, "MemberRunReady")?;
            (state == "False" && reason == "DependencyNotReady").then_some(message)
        }
    })
    .await;
    assert!(
        message.contains("ConfigMap")
            && message.contains("shared")
            && message.contains("not carried there by tekfed"),
        "{message}"
    );
    assert_eq!(
        member2_cms.get("shared").await.unwrap().data.unwrap()["FROM"],
        "member",
        "the member's own ConfigMap was changed"
    );

    // Cancel the long run: once it is over, its ConfigMap leaves member-1.
    runs.patch(
        "long",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"template": {"spec": {"status": "TaskRunCancelled"}}}})),
    )
    .await
    .unwrap();
    reaches(&runs, "long", RunPhase::Cancelled).await;
    eventually("the ConfigMap to leave member-1", WAIT, || {
        let member_cms = member_cms.clone();
        async move {
            member_cms
                .get_opt("settings")
                .await
                .ok()?
                .is_none()
                .then_some(())
        }
    })
    .await;
    runs.delete("blocked", &Default::default()).await.unwrap();
}
