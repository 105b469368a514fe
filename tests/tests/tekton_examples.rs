//! Tekton's own examples (`examples/v1` of the pinned
//! `github.com/tektoncd/pipeline` module, copied by `hack/k8s-bins.sh`),
//! each file's Tasks, Pipelines, StepActions and runs wrapped as
//! `Federated*` objects placed on every member, its ServiceAccounts,
//! ConfigMaps and Secrets created on the hub as they are (in a namespace
//! that lets Secrets travel), run by the real Tekton of whichever member
//! the hub picks, and checked for their outcome there.
//!
//! Left out, by what they need that the test bed or tekfed does not give
//! yet (29 of the 86 files):
//! - a PersistentVolumeClaim (a `volumeClaimTemplate` or claim workspace):
//!   no volume provisioner runs, so the pod never schedules (17 files);
//! - a step with `args` but no `command` or `script`: Tekton would look the
//!   image's entrypoint up in a registry, and nothing is reachable (5, one
//!   of them `pipelineruns/stepaction-params.yaml`, whose StepAction is
//!   such a step: carried, but its TaskRun fails `PodCreationFailed`);
//! - `array` or `object` results: kwok writes each result as a string (4);
//! - a privileged sidecar (`dind-sidecar`): the member API servers do not
//!   allow privileged pods (1);
//! - a volume whose ConfigMap or Secret is named by a parameter
//!   (`secretName: $(params.SCNAME)`, `taskruns/secret-volume-params.yaml`
//!   and `taskruns/task-volume-args.yaml`): tekfed leaves such a name to
//!   Tekton's substitution on the member and does not carry the object (it
//!   says so in `DependenciesReady`); since kwok mounts nothing, the run
//!   would succeed without it, checking nothing (2).
//!
//! kwok ends every step with exit code 0, so every run here is expected to
//! succeed (`Completed` where a `when` skips tasks, as Tekton says). It
//! does not mount volumes either: a carried ConfigMap or Secret volume is
//! checked only in that the run is not held back waiting for it; a carried
//! ServiceAccount is read by Tekton itself to build the pod.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, ServiceAccount};
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;
use serde_json::{Value, json};
use tekfed_api::dependencies::LABEL_CARRY_SECRETS;
use tekfed_api::runs::RunPhase;
use tekfed_testbed::federation::run_federation;
use tekfed_testbed::{HUB, TestBed, eventually_logged};

const WAIT: Duration = Duration::from_secs(300);

/// The example files run, and the reason of the `Succeeded` condition
/// Tekton ends each run with.
const EXAMPLES: &[(&str, &str)] = &[
    ("taskruns/5080-entrypoint-init-regression.yaml", "Succeeded"),
    ("taskruns/custom-env.yaml", "Succeeded"),
    ("taskruns/custom-volume.yaml", "Succeeded"),
    ("taskruns/default_task_params.yaml", "Succeeded"),
    ("taskruns/home-is-set.yaml", "Succeeded"),
    ("taskruns/home-volume.yaml", "Succeeded"),
    ("taskruns/ignore-step-error.yaml", "Succeeded"),
    ("taskruns/optional-workspaces.yaml", "Succeeded"),
    ("taskruns/propagating_params_implicit.yaml", "Succeeded"),
    ("taskruns/propagating_workspaces.yaml", "Succeeded"),
    ("taskruns/readonly-internal-dir.yaml", "Succeeded"),
    ("taskruns/run-steps-as-non-root.yaml", "Succeeded"),
    ("taskruns/sidecar-interp.yaml", "Succeeded"),
    ("taskruns/sidecar-ready-script.yaml", "Succeeded"),
    ("taskruns/sidecar-ready.yaml", "Succeeded"),
    ("taskruns/step-script.yaml", "Succeeded"),
    ("taskruns/steptemplate-env-merge.yaml", "Succeeded"),
    ("taskruns/steptemplate-variable-interop.yaml", "Succeeded"),
    ("taskruns/task-result.yaml", "Succeeded"),
    ("taskruns/template-volume.yaml", "Succeeded"),
    ("taskruns/unnamed-steps.yaml", "Succeeded"),
    ("taskruns/using_context_variables.yaml", "Succeeded"),
    ("taskruns/workingdir.yaml", "Succeeded"),
    ("taskruns/workspace-in-sidecar.yaml", "Succeeded"),
    ("taskruns/workspace-volume.yaml", "Succeeded"),
    ("taskruns/authenticating-git-commands.yaml", "Succeeded"),
    ("taskruns/configmap.yaml", "Succeeded"),
    (
        "taskruns/creds-init-only-mounts-provided-credentials.yaml",
        "Succeeded",
    ),
    ("taskruns/secret-volume.yaml", "Succeeded"),
    ("taskruns/secret-env.yaml", "Succeeded"),
    ("taskruns/stepaction.yaml", "Succeeded"),
    ("taskruns/stepaction-params.yaml", "Succeeded"),
    ("taskruns/stepaction-passing-results.yaml", "Succeeded"),
    ("taskruns/stepaction-results.yaml", "Succeeded"),
    ("taskruns/stepactions-steptemplate.yaml", "Succeeded"),
    ("pipelineruns/optional-workspaces.yaml", "Succeeded"),
    (
        "pipelineruns/using-optional-workspaces-in-when-expressions.yaml",
        "Completed",
    ),
    ("pipelineruns/4808-regression.yaml", "Succeeded"),
    ("pipelineruns/6139-regression.yaml", "Completed"),
    ("pipelineruns/pipeline-with-displayname.yaml", "Succeeded"),
    (
        "pipelineruns/pipelinerun-param-array-indexing.yaml",
        "Succeeded",
    ),
    (
        "pipelineruns/pipelinerun-results-with-params.yaml",
        "Succeeded",
    ),
    ("pipelineruns/pipelinerun-results.yaml", "Succeeded"),
    (
        "pipelineruns/pipelinerun-task-execution-status.yaml",
        "Completed",
    ),
    (
        "pipelineruns/pipelinerun-with-extra-params.yaml",
        "Succeeded",
    ),
    (
        "pipelineruns/pipelinerun-with-final-results.yaml",
        "Succeeded",
    ),
    ("pipelineruns/pipelinerun-with-params.yaml", "Succeeded"),
    (
        "pipelineruns/pipelinerun-with-pipelinespec-and-taskspec.yaml",
        "Succeeded",
    ),
    ("pipelineruns/task_results_example.yaml", "Succeeded"),
    (
        "pipelineruns/pipelinerun-with-pipelinespec.yaml",
        "Succeeded",
    ),
    (
        "pipelineruns/pipelinerun-with-task-timeout-override.yaml",
        "Succeeded",
    ),
    (
        "pipelineruns/propagating_params_implicit_parameters.yaml",
        "Succeeded",
    ),
    (
        "pipelineruns/propagating_params_in_pipeline.yaml",
        "Succeeded",
    ),
    (
        "pipelineruns/propagating_params_with_scope_precedence.yaml",
        "Succeeded",
    ),
    (
        "pipelineruns/propagating_params_with_scope_precedence_default_only.yaml",
        "Succeeded",
    ),
    (
        "pipelineruns/propagating_results_implicit_resultref.yaml",
        "Succeeded",
    ),
    ("pipelineruns/using_context_variables.yaml", "Succeeded"),
];

/// The runs an example file made: `(kind, name)`.
type Runs = Vec<(String, String)>;

fn federated(kind: &str) -> ApiResource {
    let (plural, kind) = match kind {
        "Task" => ("federatedtasks", "FederatedTask"),
        "Pipeline" => ("federatedpipelines", "FederatedPipeline"),
        "StepAction" => ("federatedstepactions", "FederatedStepAction"),
        "TaskRun" => ("federatedtaskruns", "FederatedTaskRun"),
        "PipelineRun" => ("federatedpipelineruns", "FederatedPipelineRun"),
        other => panic!("no federated kind for {other}"),
    };
    ApiResource {
        group: "tekfed.io".into(),
        version: "v1alpha1".into(),
        api_version: "tekfed.io/v1alpha1".into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// A plain `v1` object of an example (a ServiceAccount, Secret or
/// ConfigMap) as it is created on the hub, in `ns`: the hub keeps it and
/// tekfed carries it to the cluster of a run that needs it.
fn plain(doc: &Value, ns: &str) -> (ApiResource, String, Value) {
    let kind = doc["kind"].as_str().expect("every example has a kind");
    let resource = match kind {
        "ServiceAccount" => ApiResource::erase::<ServiceAccount>(&()),
        "Secret" => ApiResource::erase::<Secret>(&()),
        "ConfigMap" => ApiResource::erase::<ConfigMap>(&()),
        other => panic!("no plain kind {other} in the examples run"),
    };
    let name = doc["metadata"]["name"]
        .as_str()
        .expect("a plain object has a name")
        .to_owned();
    // Everything but the metadata as it is (data, stringData, type,
    // secrets, imagePullSecrets); of the metadata, what a user sets.
    let mut object = doc.clone();
    let mut metadata = json!({"name": name, "namespace": ns});
    for field in ["labels", "annotations"] {
        if doc["metadata"][field].is_object() {
            metadata[field] = doc["metadata"][field].clone();
        }
    }
    object["metadata"] = metadata;
    (resource, name, object)
}

/// One Tekton object wrapped as its `Federated*` kind, placed on every
/// member: its labels, annotations and spec become the template. A run's
/// `generateName` becomes a name.
fn wrap(doc: &Value, ns: &str, index: usize) -> (String, String, Value) {
    let kind = doc["kind"].as_str().expect("every example has a kind");
    let name = doc["metadata"]["name"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| {
            doc["metadata"]["generateName"]
                .as_str()
                .map(|g| format!("{g}{index}"))
        })
        .expect("a name or generateName");
    let mut metadata = json!({});
    for field in ["labels", "annotations"] {
        if doc["metadata"][field].is_object() {
            metadata[field] = doc["metadata"][field].clone();
        }
    }
    let resource = federated(kind);
    let object = json!({
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "template": {"metadata": metadata, "spec": doc["spec"]},
            "placement": {"clusterSelector": {"matchExpressions": [{"key": "tekfed.io/test-member", "operator": "Exists"}]}},
        },
    });
    (kind.to_owned(), name, object)
}

/// Create one example file's objects on the hub, in a namespace of its own
/// whose Secrets may travel: plain objects and templates first, then the
/// runs; the runs it made: `(kind, name)`.
async fn create_example(bed: &TestBed, hub: &Client, file: &str) -> (String, Runs) {
    let path = bed.bin_dir().join("tekton-examples").join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
        .unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
    let prefix: String = file
        .rsplit('/')
        .next()
        .unwrap_or(file)
        .trim_end_matches(".yaml")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(30)
        .collect();
    let ns = bed
        .namespace(prefix.trim_end_matches('-'), &[HUB])
        .await
        .unwrap();
    Api::<Namespace>::all(hub.clone())
        .patch(
            &ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {LABEL_CARRY_SECRETS: "true"}}})),
        )
        .await
        .unwrap_or_else(|e| panic!("{file}: labelling namespace {ns} on the hub: {e}"));
    let (plain_docs, tekton_docs): (Vec<&Value>, Vec<&Value>) = docs
        .iter()
        .filter(|d| d.is_object())
        .partition(|d| d["apiVersion"] == "v1");
    for doc in plain_docs {
        let (resource, name, object) = plain(doc, &ns);
        let api: Api<DynamicObject> = Api::namespaced_with(hub.clone(), &ns, &resource);
        let object: DynamicObject = serde_json::from_value(object).unwrap();
        api.create(&PostParams::default(), &object)
            .await
            .unwrap_or_else(|e| panic!("{file}: creating the {} {name}: {e}", resource.kind));
    }
    let mut wrapped: Vec<(String, String, Value)> = tekton_docs
        .into_iter()
        .enumerate()
        .map(|(i, d)| wrap(d, &ns, i))
        .collect();
    // Templates before the runs that refer to them.
    wrapped.sort_by_key(|(kind, _, _)| kind.ends_with("Run"));
    let mut runs = Vec::new();
    for (kind, name, object) in wrapped {
        let api: Api<DynamicObject> = Api::namespaced_with(hub.clone(), &ns, &federated(&kind));
        let object: DynamicObject = serde_json::from_value(object).unwrap();
        api.create(&PostParams::default(), &object)
            .await
            .unwrap_or_else(|e| panic!("{file}: creating the federated {kind} {name}: {e}"));
        if kind.ends_with("Run") {
            runs.push((kind, name));
        }
    }
    (ns, runs)
}

#[tokio::test]
async fn tektons_own_examples_run_to_their_outcome_through_the_hub() {
    let bed = run_federation();
    let hub = bed.client(HUB).await.unwrap();
    let created: Vec<(&str, &str, String, Runs)> =
        futures::stream::iter(EXAMPLES.iter().map(|(file, reason)| {
            let hub = hub.clone();
            async move {
                let (ns, runs) = create_example(bed, &hub, file).await;
                (*file, *reason, ns, runs)
            }
        }))
        .buffer_unordered(4)
        .collect()
        .await;
    let total: usize = created.iter().map(|c| c.3.len()).sum();
    eprintln!(
        "{} example files, {total} runs created on the hub",
        created.len()
    );

    let mut outcomes = Vec::new();
    for (file, reason, ns, runs) in &created {
        assert!(!runs.is_empty(), "{file} has no run");
        for (kind, name) in runs {
            let api: Api<DynamicObject> = Api::namespaced_with(hub.clone(), ns, &federated(kind));
            let status = eventually_logged(
                bed,
                &format!("{file}: {kind} {name} to finish"),
                WAIT,
                || {
                    let api = api.clone();
                    async move {
                        let run = api.get(name).await.ok()?;
                        let status: tekfed_api::runs::RunStatus =
                            serde_json::from_value(run.data["status"].clone()).ok()?;
                        status
                            .phase
                            .is_some_and(|p| {
                                matches!(
                                    p,
                                    RunPhase::Succeeded | RunPhase::Failed | RunPhase::Cancelled
                                )
                            })
                            .then_some(status)
                    }
                },
            )
            .await;
            let condition = status
                .conditions
                .iter()
                .find(|c| c.type_ == "Succeeded")
                .map(|c| (c.reason.clone(), c.message.clone()))
                .unwrap_or_default();
            outcomes.push((
                format!(
                    "{file} {kind}/{name} on {}",
                    status.cluster.clone().unwrap_or_default()
                ),
                status.phase,
                condition,
                *reason,
            ));
        }
    }
    let wrong: Vec<String> = outcomes
        .iter()
        .filter(|(_, phase, (reason, _), expected)| {
            *phase != Some(RunPhase::Succeeded) || reason != expected
        })
        .map(|(what, phase, (reason, message), expected)| {
            format!("{what}: {phase:?} {reason} ({message}), expected Succeeded {expected}")
        })
        .collect();
    for (what, phase, (reason, _), _) in &outcomes {
        eprintln!("{what}: {phase:?} {reason}");
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(outcomes.len() >= 57, "{} runs", outcomes.len());
}
