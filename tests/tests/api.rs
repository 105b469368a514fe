//! The tekfed API against a real hub API server: what a user applies is
//! accepted, what is malformed is refused with a message naming the field,
//! and a scheduled run's spec is frozen but for its cancel field.

use std::collections::BTreeMap;
use std::path::Path;

use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tekfed_api::admission::FROZEN_MESSAGE;
use tekfed_api::{
    FederatedPipeline, FederatedPipelineRun, FederatedTask, FederatedTaskRun, MemberCluster,
};
use tekfed_testbed::{HUB, shared};

fn resources() -> BTreeMap<&'static str, ApiResource> {
    BTreeMap::from([
        ("MemberCluster", ApiResource::erase::<MemberCluster>(&())),
        ("FederatedTask", ApiResource::erase::<FederatedTask>(&())),
        (
            "FederatedPipeline",
            ApiResource::erase::<FederatedPipeline>(&()),
        ),
        (
            "FederatedTaskRun",
            ApiResource::erase::<FederatedTaskRun>(&()),
        ),
        (
            "FederatedPipelineRun",
            ApiResource::erase::<FederatedPipelineRun>(&()),
        ),
        (
            "FederatedStepAction",
            ApiResource::erase::<tekfed_api::FederatedStepAction>(&()),
        ),
        (
            "Namespace",
            ApiResource::erase::<k8s_openapi::api::core::v1::Namespace>(&()),
        ),
        (
            "Secret",
            ApiResource::erase::<k8s_openapi::api::core::v1::Secret>(&()),
        ),
        (
            "ServiceAccount",
            ApiResource::erase::<k8s_openapi::api::core::v1::ServiceAccount>(&()),
        ),
        (
            "ConfigMap",
            ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&()),
        ),
    ])
}

fn api_for(client: &Client, kind: &str, namespace: &str) -> Api<DynamicObject> {
    let resources = resources();
    let resource = resources
        .get(kind)
        .unwrap_or_else(|| panic!("examples use an unexpected kind {kind}"));
    match kind {
        "MemberCluster" | "Namespace" => Api::all_with(client.clone(), resource),
        _ => Api::namespaced_with(client.clone(), namespace, resource),
    }
}

#[tokio::test]
async fn every_example_is_accepted_by_the_hub() {
    let bed = shared();
    let client = bed.client(HUB).await.unwrap();
    let ns = bed.namespace("examples", &[HUB]).await.unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut applied = 0;
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no examples found in {}", dir.display());
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", file.display()));
        for mut doc in docs.into_iter().filter(|d| !d.is_null()) {
            let kind = doc["kind"].as_str().unwrap().to_owned();
            let name = doc["metadata"]["name"].as_str().unwrap().to_owned();
            // Each test works in its own namespace: move namespaced objects there.
            if doc["metadata"].get("namespace").is_some() {
                doc["metadata"]["namespace"] = json!(ns);
            }
            let object: DynamicObject = serde_json::from_value(doc).unwrap();
            api_for(&client, &kind, &ns)
                .patch(
                    &name,
                    &PatchParams::apply("tekfed-tests"),
                    &Patch::Apply(&object),
                )
                .await
                .unwrap_or_else(|e| panic!("{} {kind}/{name} was refused: {e}", file.display()));
            applied += 1;
        }
    }
    assert!(
        applied >= 8,
        "expected the examples to hold at least 8 objects, applied {applied}"
    );
}

/// One malformed object and the field its refusal must name.
struct Case {
    what: &'static str,
    kind: &'static str,
    spec: Value,
    field: &'static str,
}

fn task_spec() -> Value {
    json!({"steps": [{"name": "echo", "image": "ubuntu", "script": "echo hi"}]})
}

fn cases() -> Vec<Case> {
    let template = json!({"spec": task_spec()});
    let placement = json!({"clusters": [{"name": "member-1"}]});
    let with = |patch: Value| {
        let mut spec = json!({"template": template, "placement": placement});
        json_patch::merge(&mut spec, &patch);
        spec
    };
    let override_ops = |ops: Value| {
        with(json!({"overrides": [{"clusterName": "member-1", "clusterOverrides": ops}]}))
    };
    let mc = |patch: Value| {
        let mut spec = json!({"secretRef": {"name": "member-1-kubeconfig"}});
        json_patch::merge(&mut spec, &patch);
        spec
    };
    vec![
        Case {
            what: "placement with neither clusters nor selector",
            kind: "FederatedTask",
            spec: with(json!({"placement": {"clusters": null}})),
            field: "spec.placement.clusters",
        },
        Case {
            what: "placement with an empty cluster list",
            kind: "FederatedTask",
            spec: with(json!({"placement": {"clusters": []}})),
            field: "spec.placement.clusters",
        },
        Case {
            what: "no placement",
            kind: "FederatedTask",
            spec: with(json!({"placement": null})),
            field: "spec.placement",
        },
        Case {
            what: "cluster name with upper case and _",
            kind: "FederatedTask",
            spec: with(json!({"placement": {"clusters": [{"name": "Member_1"}]}})),
            field: "spec.placement.clusters[0].name",
        },
        Case {
            what: "cluster name over 63 characters",
            kind: "FederatedPipeline",
            spec: with(json!({"placement": {"clusters": [{"name": "a".repeat(64)}]}})),
            field: "spec.placement.clusters[0].name",
        },
        Case {
            what: "cluster name that is empty",
            kind: "FederatedTaskRun",
            spec: with(json!({"placement": {"clusters": [{"name": ""}]}})),
            field: "spec.placement.clusters[0].name",
        },
        Case {
            what: "override for a cluster name that is not a DNS label",
            kind: "FederatedTask",
            spec: with(json!({"overrides": [{"clusterName": "member.1", "clusterOverrides": []}]})),
            field: "spec.overrides[0].clusterName",
        },
        Case {
            what: "override op that is not add/replace/remove",
            kind: "FederatedTask",
            spec: override_ops(
                json!([{"op": "move", "path": "/spec/steps/0/image", "value": "x"}]),
            ),
            field: "spec.overrides[0].clusterOverrides[0].op",
        },
        Case {
            what: "override path that is not a JSON pointer",
            kind: "FederatedTask",
            spec: override_ops(
                json!([{"op": "replace", "path": "spec/steps/0/image", "value": "x"}]),
            ),
            field: "spec.overrides[0].clusterOverrides[0].path",
        },
        Case {
            what: "override path that is empty",
            kind: "FederatedPipelineRun",
            spec: override_ops(json!([{"op": "replace", "path": "", "value": "x"}])),
            field: "spec.overrides[0].clusterOverrides[0].path",
        },
        Case {
            what: "remove that carries a value",
            kind: "FederatedTask",
            spec: override_ops(json!([{"op": "remove", "path": "/spec/steps/0", "value": "x"}])),
            field: "spec.overrides[clusterName=member-1].clusterOverrides[].value",
        },
        Case {
            what: "replace without a value",
            kind: "FederatedTaskRun",
            spec: override_ops(json!([{"op": "replace", "path": "/spec/params"}])),
            field: "spec.overrides[clusterName=member-1].clusterOverrides[].value",
        },
        Case {
            what: "add without a value",
            kind: "FederatedPipeline",
            spec: override_ops(json!([{"op": "add", "path": "/spec/params/-"}])),
            field: "spec.overrides[clusterName=member-1].clusterOverrides[].value",
        },
        Case {
            what: "replace (the default op) without a value",
            kind: "FederatedTask",
            spec: override_ops(json!([{"path": "/spec/steps/0/image"}])),
            field: "spec.overrides[clusterName=member-1].clusterOverrides[].value",
        },
        Case {
            what: "override without operations",
            kind: "FederatedPipeline",
            spec: with(json!({"overrides": [{"clusterName": "member-1"}]})),
            field: "spec.overrides[0].clusterOverrides",
        },
        Case {
            what: "template without spec",
            kind: "FederatedTask",
            spec: with(json!({"template": {"metadata": {"labels": {"a": "b"}}, "spec": null}})),
            field: "spec.template.spec",
        },
        Case {
            what: "no template",
            kind: "FederatedPipelineRun",
            spec: with(json!({"template": null})),
            field: "spec.template",
        },
        Case {
            what: "template spec that is not an object",
            kind: "FederatedTaskRun",
            spec: with(json!({"template": {"spec": "run it"}})),
            field: "spec.template.spec",
        },
        Case {
            what: "toleration with an unknown operator",
            kind: "FederatedTask",
            spec: with(
                json!({"placement": {"tolerations": [{"key": "gpu", "operator": "Maybe"}]}}),
            ),
            field: "spec.placement.tolerations[0].operator",
        },
        Case {
            what: "toleration Exists with a value",
            kind: "FederatedTaskRun",
            spec: with(
                json!({"placement": {"tolerations": [{"key": "gpu", "operator": "Exists", "value": "true"}]}}),
            ),
            field: "spec.placement.tolerations[0].value",
        },
        Case {
            what: "toleration with effect PreferNoSchedule",
            kind: "FederatedTask",
            spec: with(
                json!({"placement": {"tolerations": [{"key": "gpu", "effect": "PreferNoSchedule"}]}}),
            ),
            field: "spec.placement.tolerations[0].effect",
        },
        Case {
            what: "run placement mode that is not One/All",
            kind: "FederatedTaskRun",
            spec: with(json!({"placement": {"mode": "Some"}})),
            field: "spec.placement.mode",
        },
        Case {
            what: "cluster selector label value that is not a string",
            kind: "FederatedPipelineRun",
            spec: with(
                json!({"placement": {"clusters": null, "clusterSelector": {"matchLabels": {"pool": 7}}}}),
            ),
            field: "spec.placement.clusterSelector.matchLabels.pool",
        },
        Case {
            what: "maxConcurrentRuns of 0",
            kind: "MemberCluster",
            spec: mc(json!({"maxConcurrentRuns": 0})),
            field: "spec.maxConcurrentRuns",
        },
        Case {
            what: "taint with effect PreferNoSchedule",
            kind: "MemberCluster",
            spec: mc(json!({"taints": [{"key": "gpu", "effect": "PreferNoSchedule"}]})),
            field: "spec.taints[0].effect",
        },
        Case {
            what: "taint without effect",
            kind: "MemberCluster",
            spec: mc(json!({"taints": [{"key": "gpu"}]})),
            field: "spec.taints[0].effect",
        },
        Case {
            what: "no secretRef",
            kind: "MemberCluster",
            spec: mc(json!({"secretRef": null, "unschedulable": true})),
            field: "spec.secretRef",
        },
        Case {
            what: "secretRef name that is not a DNS name",
            kind: "MemberCluster",
            spec: mc(json!({"secretRef": {"name": "Member 1"}})),
            field: "spec.secretRef.name",
        },
    ]
}

#[tokio::test]
async fn malformed_objects_are_refused_naming_the_field() {
    let bed = shared();
    let client = bed.client(HUB).await.unwrap();
    let ns = bed.namespace("malformed", &[HUB]).await.unwrap();
    let resources = resources();
    let cases = cases();
    assert!(cases.len() >= 20);
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let resource = &resources[case.kind];
        let mut object = DynamicObject::new(&format!("bad-{i}"), resource);
        if case.kind != "MemberCluster" {
            object.metadata.namespace = Some(ns.clone());
        }
        object.data = json!({"spec": case.spec});
        let result = api_for(&client, case.kind, &ns)
            .create(&PostParams::default(), &object)
            .await;
        match result {
            Err(kube::Error::Api(status))
                if status.code == 422 && status.message.contains(case.field) => {}
            Err(kube::Error::Api(status)) => failures.push(format!(
                "{}: refused ({}), but the message does not name {}: {}",
                case.what, status.code, case.field, status.message
            )),
            Err(e) => failures.push(format!("{}: unexpected error {e}", case.what)),
            Ok(_) => failures.push(format!("{}: was accepted", case.what)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Create a run, then let "the hub" move it to `phase` through the status
/// subresource, as the hub does.
async fn run_in_phase(
    api: &Api<DynamicObject>,
    name: &str,
    kind_resource: &ApiResource,
    phase: &str,
    spec: Value,
) {
    let mut object = DynamicObject::new(name, kind_resource);
    object.data = json!({"spec": spec});
    api.create(&PostParams::default(), &object).await.unwrap();
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": phase}})),
    )
    .await
    .unwrap();
}

fn run_spec() -> Value {
    json!({
        "template": {"spec": {"taskRef": {"name": "build"}, "params": [{"name": "revision", "value": "main"}]}},
        "placement": {"clusters": [{"name": "member-1"}]},
    })
}

#[tokio::test]
async fn a_scheduled_run_is_frozen_except_for_cancel() {
    let bed = shared();
    let client = bed.client(HUB).await.unwrap();
    let ns = bed.namespace("frozen", &[HUB]).await.unwrap();
    for kind in ["FederatedTaskRun", "FederatedPipelineRun"] {
        let resource = &resources()[kind];
        let api = api_for(&client, kind, &ns);
        let name = format!("{}-scheduled", kind.to_lowercase());
        run_in_phase(&api, &name, resource, "Running", run_spec()).await;

        let edits = [
            (
                "a param",
                json!({"spec": {"template": {"spec": {"params": [{"name": "revision", "value": "v2"}]}}}}),
            ),
            (
                "a new field",
                json!({"spec": {"template": {"spec": {"timeout": "1h"}}}}),
            ),
            (
                "a removed field",
                json!({"spec": {"template": {"spec": {"params": null}}}}),
            ),
            (
                "the placement",
                json!({"spec": {"placement": {"clusters": [{"name": "member-2"}]}}}),
            ),
            (
                "the template labels",
                json!({"spec": {"template": {"metadata": {"labels": {"a": "b"}}}}}),
            ),
            (
                "the overrides",
                json!({"spec": {"overrides": [{"clusterName": "member-1", "clusterOverrides": [{"path": "/spec/timeout", "value": "2h"}]}]}}),
            ),
        ];
        for (what, patch) in edits {
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Err(kube::Error::Api(status)) => assert!(
                    status.code == 422 && status.message.contains(FROZEN_MESSAGE),
                    "{kind}: editing {what} was refused with an unexpected answer: {status:?}"
                ),
                other => {
                    panic!("{kind}: editing {what} of a scheduled run was not refused: {other:?}")
                }
            }
        }
        let cancelled = api
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"template": {"spec": {"status": "Cancelled"}}}})),
            )
            .await
            .unwrap_or_else(|e| panic!("{kind}: cancelling a scheduled run was refused: {e}"));
        assert_eq!(
            cancelled.data["spec"]["template"]["spec"]["status"],
            "Cancelled"
        );
        assert_eq!(
            cancelled.data["spec"]["template"]["spec"]["params"][0]["value"],
            "main"
        );

        // A queued run is not frozen yet: it may still be corrected.
        let queued = format!("{}-queued", kind.to_lowercase());
        run_in_phase(&api, &queued, resource, "Queued", run_spec()).await;
        let edited = api
            .patch(
                &queued,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"template": {"spec": {"params": [{"name": "revision", "value": "v2"}]}}}})),
            )
            .await
            .unwrap_or_else(|e| panic!("{kind}: editing a queued run was refused: {e}"));
        assert_eq!(
            edited.data["spec"]["template"]["spec"]["params"][0]["value"],
            "v2"
        );
    }
}

#[tokio::test]
async fn get_tekfed_lists_every_kind_with_its_columns() {
    let bed = shared();
    let ns = bed.namespace("columns", &[HUB]).await.unwrap();
    let client = bed.client(HUB).await.unwrap();
    let api = api_for(&client, "FederatedTaskRun", &ns);
    run_in_phase(
        &api,
        "listed",
        &resources()["FederatedTaskRun"],
        "Running",
        run_spec(),
    )
    .await;
    let tasks = api_for(&client, "FederatedTask", &ns);
    let mut task = DynamicObject::new("listed-task", &resources()["FederatedTask"]);
    task.data = json!({"spec": {"template": {"spec": task_spec()}, "placement": {"clusters": [{"name": "member-1"}]}}});
    tasks.create(&PostParams::default(), &task).await.unwrap();

    let output = std::process::Command::new(bed.bin_dir().join("kubectl"))
        .args(["--kubeconfig"])
        .arg(bed.kubeconfig())
        .args(["--context", HUB, "get", "tekfed", "-n", &ns])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "kubectl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("federatedtaskrun.tekfed.io/listed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("federatedtask.tekfed.io/listed-task"),
        "{stdout}"
    );
    let header = stdout
        .lines()
        .find(|l| l.starts_with("NAME") && l.contains("PHASE"))
        .unwrap_or_else(|| panic!("no run header in:\n{stdout}"));
    for column in ["PHASE", "CLUSTER", "SUCCEEDED", "REASON", "AGE"] {
        assert!(
            header.contains(column),
            "missing column {column} in {header}"
        );
    }
    let row = stdout
        .lines()
        .find(|l| l.contains("federatedtaskrun.tekfed.io/listed"))
        .unwrap();
    assert!(row.contains("Running"), "{row}");

    // Short names work too.
    for short in ["mc", "ft", "fp", "ftr", "fpr"] {
        let status = std::process::Command::new(bed.bin_dir().join("kubectl"))
            .arg("--kubeconfig")
            .arg(bed.kubeconfig())
            .args(["--context", HUB, "get", short, "-n", &ns])
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "kubectl get {short}: {}",
            String::from_utf8_lossy(&status.stderr)
        );
    }
}

#[tokio::test]
async fn every_api_server_reports_the_pinned_version() {
    let bed = shared();
    for cluster in bed.clusters() {
        let client = bed.client(&cluster.name).await.unwrap();
        let version = client.apiserver_version().await.unwrap();
        assert!(
            version.git_version.starts_with("v1.37."),
            "{} reports {}",
            cluster.name,
            version.git_version
        );
        assert_eq!(version.major, "1");
        assert_eq!(version.minor, "37");
    }
}
