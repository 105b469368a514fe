//! Hostile cases against a member joined with `kubectl tekfed join`: what
//! a hub tenant (or whoever holds the hub's member token) asks of a member
//! beyond what its admin allows is refused, with a message saying why, and
//! nothing is created there. Two layers are shown: the hub refuses before
//! it creates anything (the run waits `NotAllowedOnMembers`, or its member
//! run is `NotAllowedOnMember`), and the member's guard
//! (`tekfed_api::guard::member_policy`) refuses the hub's own token used
//! directly, as it would a compromised hub. Namespaces tekfed creates carry
//! Pod Security `restricted` by default, and a run whose pods it does not
//! admit fails on the member.

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::{Value, json};
use tekfed_api::guard::{PSA_ENFORCE, restricted_security_context};
use tekfed_api::{FederatedTask, FederatedTaskRun, PropagationState};
use tekfed_runtime::connect::tekton_resource;
use tekfed_testbed::federation::wait_condition;
use tekfed_testbed::{HUB, TestBed, eventually_logged, kubectl_tekfed};

const WAIT: Duration = Duration::from_secs(180);
const MEMBER: &str = "member-1";

fn tekfed(bed: &TestBed, args: &[&str]) -> (bool, String) {
    let kubeconfig = bed.kubeconfig().to_string_lossy();
    let mut all = args.to_vec();
    all.extend(["--kubeconfig", &kubeconfig]);
    kubectl_tekfed(&all)
}

/// A client with the hub's own identity on the member: the kubeconfig join
/// stored on the hub, as the hub reads it.
async fn hub_member_client(hub: &Client) -> Client {
    let secret =
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(hub.clone(), "tekfed-system")
            .get(&format!("tekfed-member-{MEMBER}"))
            .await
            .unwrap();
    let text = String::from_utf8(secret.data.unwrap()["kubeconfig"].0.clone()).unwrap();
    let kubeconfig = Kubeconfig::from_yaml(&text).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

fn labelled(mut object: Value) -> Value {
    object["metadata"]["labels"] = json!({"app.kubernetes.io/managed-by": "tekfed"});
    object
}

fn task_run(ns: &str, name: &str, spec: Value) -> Value {
    labelled(json!({"apiVersion": "tekton.dev/v1", "kind": "TaskRun",
                    "metadata": {"name": name, "namespace": ns}, "spec": spec}))
}

fn safe_task_spec() -> Value {
    json!({"stepTemplate": {"securityContext": restricted_security_context()},
           "steps": [{"name": "s", "image": "alpine", "script": "true"}]})
}

/// The refusal of a write, or a panic saying it was let through.
fn refused<T: std::fmt::Debug>(case: &str, result: Result<T, kube::Error>, says: &str) {
    match result {
        Err(kube::Error::Api(status)) => {
            assert!(
                status.message.contains(says),
                "{case}: refused, but the message does not say {says:?}: {}",
                status.message
            );
            println!("refused  {case}: {}", status.message);
        }
        other => panic!("{case}: not refused: {other:?}"),
    }
}

async fn create(
    client: &Client,
    ns: &str,
    kind: &str,
    object: &Value,
) -> Result<DynamicObject, kube::Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &tekton_resource(kind));
    api.create(
        &PostParams::default(),
        &serde_json::from_value(object.clone()).unwrap(),
    )
    .await
}

/// Whether the member holds a TaskRun `name` in `ns` (tekfed's or not).
async fn on_member(member: &Client, ns: &str, name: &str) -> bool {
    let api: Api<DynamicObject> =
        Api::namespaced_with(member.clone(), ns, &tekton_resource("TaskRun"));
    api.get_opt(name).await.unwrap().is_some()
}

/// The run's condition `type_`, once it has `reason`.
async fn condition(
    bed: &TestBed,
    hub: &Client,
    ns: &str,
    name: &str,
    type_: &str,
    reason: &str,
) -> String {
    let runs: Api<FederatedTaskRun> = Api::namespaced(hub.clone(), ns);
    eventually_logged(bed, &format!("{ns}/{name} {type_}={reason}"), WAIT, || {
        let runs = runs.clone();
        async move {
            let run = runs.get(name).await.ok()?;
            run.status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == type_ && c.reason == reason)
                .map(|c| c.message)
        }
    })
    .await
}

async fn federated_run(hub: &Client, ns: &str, name: &str, spec: Value, overrides: Value) {
    Api::<Namespace>::all(hub.clone())
        .patch(
            ns,
            &PatchParams::apply("test"),
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            ),
        )
        .await
        .unwrap();
    let run: FederatedTaskRun = serde_json::from_value(json!({
        "apiVersion": "tekfed.io/v1alpha1", "kind": "FederatedTaskRun",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"template": {"spec": spec}, "placement": {"clusters": [{"name": MEMBER}]}, "overrides": overrides},
    }))
    .unwrap();
    Api::<FederatedTaskRun>::namespaced(hub.clone(), ns)
        .create(&PostParams::default(), &run)
        .await
        .unwrap();
}

#[tokio::test]
async fn what_a_member_does_not_allow_is_refused_by_the_hub_and_by_the_members_guard() {
    let bed = TestBed::start(1).await.unwrap();
    let join = [
        "join",
        MEMBER,
        "--cluster-context",
        MEMBER,
        "--hub-context",
        HUB,
        "--deny-namespaces",
        "secret-*",
        "--service-accounts",
        "team-a/builder",
    ];
    let (ok, out) = tekfed(&bed, &join);
    assert!(ok, "join: {out}");
    assert!(
        out.contains("ValidatingAdmissionPolicy tekfed-member-guard")
            && out.contains("Pod Security level restricted"),
        "join installs the guard: {out}"
    );
    let (ok, again) = tekfed(&bed, &join);
    assert!(
        ok && again.contains("nothing changed"),
        "a second join changes nothing: {again}"
    );
    bed.start_joined_agent(MEMBER).await.unwrap();
    bed.start_hub("tekfed-hub", &[]).unwrap();
    wait_condition(&bed, &[MEMBER.to_owned()], "Ready", WAIT)
        .await
        .unwrap();

    let hub = bed.client(HUB).await.unwrap();
    let member = bed.client(MEMBER).await.unwrap();
    let as_hub = hub_member_client(&hub).await;

    // The member's own objects, made by its admin.
    let apply = PatchParams::apply("member-admin");
    for ns in ["team-a", "secret-x"] {
        Api::<Namespace>::all(member.clone())
            .patch(
                ns,
                &apply,
                &Patch::Apply(
                    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                ),
            )
            .await
            .unwrap();
    }
    let config_maps: Api<ConfigMap> = Api::namespaced(member.clone(), "team-a");
    config_maps
        .patch("theirs", &apply, &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "theirs"}, "data": {"k": "v"}})))
        .await
        .unwrap();
    // Two ServiceAccounts of the member's, both able to read Secrets:
    // `builder`, which the member allows runs to use, and `deployer`.
    for sa in ["deployer", "builder"] {
        Api::<ServiceAccount>::namespaced(member.clone(), "team-a")
            .patch(
                sa,
                &apply,
                &Patch::Apply(
                    json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa}}),
                ),
            )
            .await
            .unwrap();
        Api::<Role>::namespaced(member.clone(), "team-a")
            .patch(
                sa,
                &apply,
                &Patch::Apply(json!({
                    "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": sa},
                    "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}]})),
            )
            .await
            .unwrap();
        Api::<RoleBinding>::namespaced(member.clone(), "team-a")
            .patch(
                sa,
                &apply,
                &Patch::Apply(json!({
                    "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": sa},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": sa},
                    "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": "team-a"}]})),
            )
            .await
            .unwrap();
    }

    // --- The hub's member token used directly (a compromised hub) ---
    let hub_cms = |ns: &str| Api::<ConfigMap>::namespaced(as_hub.clone(), ns);
    let cm = |name: &str| {
        serde_json::from_value::<ConfigMap>(labelled(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"x": "y"}}))).unwrap()
    };
    refused(
        "hub token writes into kube-system",
        hub_cms("kube-system")
            .create(&PostParams::default(), &cm("planted"))
            .await,
        "closed to the tekfed hub",
    );
    refused(
        "hub token runs in tekton-pipelines as the Tekton controller",
        create(&as_hub, "tekton-pipelines", "TaskRun", &task_run("tekton-pipelines", "escalate",
            json!({"serviceAccountName": "tekton-pipelines-controller", "taskSpec": safe_task_spec()}))).await,
        "closed to the tekfed hub",
    );
    refused(
        "hub token plants a ConfigMap in tekfed-system",
        hub_cms("tekfed-system")
            .create(&PostParams::default(), &cm("planted"))
            .await,
        "closed to the tekfed hub",
    );
    refused(
        "hub token writes in a namespace the member denies",
        hub_cms("secret-x")
            .create(&PostParams::default(), &cm("planted"))
            .await,
        "closed to the tekfed hub",
    );
    refused(
        "hub token edits a member object tekfed does not own",
        hub_cms("team-a")
            .patch(
                "theirs",
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {"k": "evil"}})),
            )
            .await,
        "labelled app.kubernetes.io/managed-by=tekfed",
    );
    refused(
        "hub token takes a member object over by labelling it",
        hub_cms("team-a")
            .patch(
                "theirs",
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": "tekfed"}}}),
                ),
            )
            .await,
        "labelled app.kubernetes.io/managed-by=tekfed",
    );
    refused(
        "hub token deletes a member object tekfed does not own",
        hub_cms("team-a")
            .delete("theirs", &DeleteParams::default())
            .await,
        "labelled app.kubernetes.io/managed-by=tekfed",
    );
    let namespaces: Api<Namespace> = Api::all(as_hub.clone());
    let ns_with = |labels: Value| {
        serde_json::from_value::<Namespace>(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "hostile-ns", "labels": labels}})).unwrap()
    };
    refused(
        "hub token creates a namespace without Pod Security",
        namespaces
            .create(
                &PostParams::default(),
                &ns_with(json!({"app.kubernetes.io/managed-by": "tekfed"})),
            )
            .await,
        "pod-security.kubernetes.io/enforce=restricted",
    );
    refused(
        "hub token creates a privileged namespace",
        namespaces
            .create(
                &PostParams::default(),
                &ns_with(
                    json!({"app.kubernetes.io/managed-by": "tekfed", PSA_ENFORCE: "privileged"}),
                ),
            )
            .await,
        "pod-security.kubernetes.io/enforce=restricted",
    );
    let pod_security = "Pod Security level restricted on this cluster forbids";
    let hostile_runs = [
        (
            "hostNetwork",
            json!({"podTemplate": {"hostNetwork": true}, "taskSpec": safe_task_spec()}),
        ),
        (
            "hostPath volume",
            json!({"podTemplate": {"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}, "taskSpec": safe_task_spec()}),
        ),
        (
            "privileged step",
            json!({"taskSpec": {"steps": [{"name": "s", "image": "alpine", "securityContext": {"privileged": true}}]}}),
        ),
        (
            "privileged sidecar",
            json!({"taskSpec": {"steps": [{"name": "s", "image": "alpine"}], "sidecars": [{"name": "dind", "image": "docker:dind", "securityContext": {"privileged": true}}]}}),
        ),
        (
            "added capability",
            json!({"taskSpec": {"steps": [{"name": "s", "image": "alpine", "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}]}}),
        ),
    ];
    for (i, (case, spec)) in hostile_runs.iter().enumerate() {
        refused(
            &format!("hub token creates a TaskRun with {case}"),
            create(
                &as_hub,
                "team-a",
                "TaskRun",
                &task_run("team-a", &format!("hostile-{i}"), spec.clone()),
            )
            .await,
            pod_security,
        );
    }
    refused(
        "hub token creates a Task with a privileged step",
        create(&as_hub, "team-a", "Task", &labelled(json!({"apiVersion": "tekton.dev/v1", "kind": "Task", "metadata": {"name": "root", "namespace": "team-a"},
            "spec": {"steps": [{"name": "s", "image": "alpine", "securityContext": {"privileged": true}}]}}))).await,
        pod_security,
    );
    refused(
        "hub token runs as a member ServiceAccount that holds rights",
        create(
            &as_hub,
            "team-a",
            "TaskRun",
            &task_run(
                "team-a",
                "as-deployer",
                json!({"serviceAccountName": "deployer", "taskSpec": safe_task_spec()}),
            ),
        )
        .await,
        "its ServiceAccount holds rights on this cluster (get secrets)",
    );
    refused(
        "hub token deletes the member guard",
        Api::<ValidatingAdmissionPolicy>::all(as_hub.clone())
            .delete("tekfed-member-guard", &DeleteParams::default())
            .await,
        "forbidden",
    );
    for name in ["escalate", "as-deployer"] {
        assert!(
            !on_member(&member, "team-a", name).await
                && !on_member(&member, "tekton-pipelines", name).await
        );
    }
    // What the guard lets through: a labelled, compliant run as `default`.
    let allowed = task_run("team-a", "allowed", json!({"taskSpec": safe_task_spec()}));
    let api: Api<DynamicObject> =
        Api::namespaced_with(as_hub.clone(), "team-a", &tekton_resource("TaskRun"));
    api.create(
        &PostParams {
            dry_run: true,
            ..Default::default()
        },
        &serde_json::from_value(allowed).unwrap(),
    )
    .await
    .expect("the guard admits what the member allows");

    // --- Through the hub: refused before anything is created ---
    Api::<Namespace>::all(hub.clone())
        .patch("tekton-pipelines", &apply, &Patch::Apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tekton-pipelines"}})))
        .await
        .unwrap();
    Api::<ServiceAccount>::namespaced(hub.clone(), "tekton-pipelines")
        .patch("tekton-pipelines-controller", &apply, &Patch::Apply(json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "tekton-pipelines-controller"}})))
        .await
        .unwrap();
    federated_run(
        &hub,
        "tekton-pipelines",
        "escalate",
        json!({"serviceAccountName": "tekton-pipelines-controller", "taskSpec": safe_task_spec()}),
        json!([]),
    )
    .await;
    let message = condition(
        &bed,
        &hub,
        "tekton-pipelines",
        "escalate",
        "Scheduled",
        "NotAllowedOnMembers",
    )
    .await;
    assert!(
        message.contains("namespace tekton-pipelines is a system namespace"),
        "{message}"
    );
    println!("queued   a run in hub namespace tekton-pipelines: {message}");

    let cases = [
        (
            "host-net",
            json!({"podTemplate": {"hostNetwork": true}, "taskSpec": safe_task_spec()}),
            "spec.podTemplate.hostNetwork",
        ),
        (
            "sidecar",
            json!({"taskSpec": {"steps": [{"name": "s", "image": "alpine"}], "sidecars": [{"name": "dind", "image": "docker:dind", "securityContext": {"privileged": true}}]}}),
            "spec.taskSpec.sidecars[0].securityContext.privileged",
        ),
        (
            "host-path",
            json!({"taskSpec": {"steps": [{"name": "s", "image": "alpine"}], "volumes": [{"name": "h", "hostPath": {"path": "/var/run/docker.sock"}}]}}),
            "spec.taskSpec.volumes[0].hostPath",
        ),
    ];
    for (name, spec, _) in &cases {
        federated_run(&hub, "hostile-hub", name, spec.clone(), json!([])).await;
    }
    for (name, _, field) in &cases {
        let message = condition(
            &bed,
            &hub,
            "hostile-hub",
            name,
            "Scheduled",
            "NotAllowedOnMembers",
        )
        .await;
        assert!(
            message.contains(field) && message.contains(MEMBER),
            "{message}"
        );
        println!("queued   {name}: {message}");
    }
    // A ServiceAccount neither carried from the hub nor allowed by the
    // member: the member's powerful `deployer` in a namespace of its name.
    federated_run(
        &hub,
        "team-a",
        "as-their-deployer",
        json!({"serviceAccountName": "deployer", "taskSpec": safe_task_spec()}),
        json!([]),
    )
    .await;
    let message = condition(
        &bed,
        &hub,
        "team-a",
        "as-their-deployer",
        "DependenciesReady",
        "DependencyMissing",
    )
    .await;
    assert!(message.contains("ServiceAccount deployer"), "{message}");
    println!("queued   a run as a ServiceAccount not carried nor allowed: {message}");
    assert!(!on_member(&member, "team-a", "as-their-deployer").await);
    // The member's own `builder`, which it allows: the run goes there as
    // it, and tekfed carries no ServiceAccount of that name.
    federated_run(
        &hub,
        "team-a",
        "as-builder",
        json!({"serviceAccountName": "builder", "taskSpec": safe_task_spec()}),
        json!([]),
    )
    .await;
    condition(&bed, &hub, "team-a", "as-builder", "Succeeded", "Succeeded").await;
    let copy: Api<DynamicObject> =
        Api::namespaced_with(member.clone(), "team-a", &tekton_resource("TaskRun"));
    let copy = copy.get("as-builder").await.unwrap();
    assert_eq!(copy.data["spec"]["serviceAccountName"], "builder");
    let builder = Api::<ServiceAccount>::namespaced(member.clone(), "team-a")
        .get("builder")
        .await
        .unwrap();
    assert!(
        !builder
            .metadata
            .labels
            .unwrap_or_default()
            .contains_key("app.kubernetes.io/managed-by"),
        "the member's own ServiceAccount was left as it is"
    );
    println!("ran      a run as the member's own ServiceAccount it allows (builder)");

    // An override that adds what the template does not: the member run is
    // checked as rendered for its cluster.
    federated_run(&hub, "hostile-hub", "via-override", json!({"taskSpec": safe_task_spec()}),
        json!([{"clusterName": MEMBER, "clusterOverrides": [{"op": "add", "path": "/spec/podTemplate", "value": {"hostNetwork": true}}]}])).await;
    let message = condition(
        &bed,
        &hub,
        "hostile-hub",
        "via-override",
        "MemberRunReady",
        "NotAllowedOnMember",
    )
    .await;
    assert!(
        message.contains("spec.podTemplate.hostNetwork"),
        "{message}"
    );
    println!("refused  a run made privileged by its override: {message}");

    // A template with a privileged step is not copied there.
    let task: FederatedTask = serde_json::from_value(json!({
        "apiVersion": "tekfed.io/v1alpha1", "kind": "FederatedTask",
        "metadata": {"name": "root", "namespace": "hostile-hub"},
        "spec": {"template": {"spec": {"steps": [{"name": "s", "image": "alpine", "securityContext": {"privileged": true}}]}},
                 "placement": {"clusters": [{"name": MEMBER}]}},
    }))
    .unwrap();
    let tasks: Api<FederatedTask> = Api::namespaced(hub.clone(), "hostile-hub");
    tasks.create(&PostParams::default(), &task).await.unwrap();
    let message = eventually_logged(
        &bed,
        "the privileged FederatedTask Failed on member-1",
        WAIT,
        || {
            let tasks = tasks.clone();
            async move {
                let status = tasks.get("root").await.ok()?.status?;
                status
                    .clusters
                    .into_iter()
                    .find(|c| c.cluster == MEMBER && c.state == PropagationState::Failed)?
                    .message
            }
        },
    )
    .await;
    assert!(message.contains("securityContext.privileged"), "{message}");
    println!("refused  a privileged FederatedTask: {message}");
    for (name, _, _) in &cases {
        assert!(
            !on_member(&member, "hostile-hub", name).await,
            "{name} reached the member"
        );
    }
    assert!(!on_member(&member, "hostile-hub", "via-override").await);
    assert!(!on_member(&member, "tekton-pipelines", "escalate").await);
    let member_tasks: Api<DynamicObject> =
        Api::namespaced_with(member.clone(), "hostile-hub", &tekton_resource("Task"));
    assert!(member_tasks.get_opt("root").await.unwrap().is_none());

    // --- Pod Security `restricted` on what tekfed creates ---
    federated_run(
        &hub,
        "tenant",
        "compliant",
        json!({"taskSpec": safe_task_spec()}),
        json!([]),
    )
    .await;
    condition(&bed, &hub, "tenant", "compliant", "Succeeded", "Succeeded").await;
    let ns = Api::<Namespace>::all(member.clone())
        .get("tenant")
        .await
        .unwrap();
    assert_eq!(ns.metadata.labels.unwrap()[PSA_ENFORCE], "restricted");
    federated_run(
        &hub,
        "tenant",
        "runs-as-root",
        json!({"taskSpec": {"steps": [{"name": "s", "image": "alpine", "script": "true"}]}}),
        json!([]),
    )
    .await;
    let runs: Api<FederatedTaskRun> = Api::namespaced(hub.clone(), "tenant");
    let message = eventually_logged(&bed, "runs-as-root to fail on the member", WAIT, || {
        let runs = runs.clone();
        async move {
            let status = runs.get("runs-as-root").await.ok()?.status?;
            let c = status
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Succeeded" && c.status == "False")?;
            Some(format!("{}: {}", c.reason, c.message))
        }
    })
    .await;
    assert!(message.contains("PodSecurity"), "{message}");
    println!("failed   a run whose pod Pod Security restricted refuses: {message}");
}
