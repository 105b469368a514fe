//! The CRD and admission-policy documents generated from the types, as committed under
//! `api/manifests/` (`make crds` writes them; a test fails when stale).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::{
    FederatedPipeline, FederatedPipelineRun, FederatedStepAction, FederatedTask, FederatedTaskRun,
    MemberCluster, MemberReport, RunAssignment, admission,
};

/// Every tekfed CRD, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        MemberCluster::crd(),
        FederatedTask::crd(),
        FederatedPipeline::crd(),
        FederatedStepAction::crd(),
        FederatedTaskRun::crd(),
        FederatedPipelineRun::crd(),
        RunAssignment::crd(),
        MemberReport::crd(),
    ]
}

const HEADER: &str = "# Generated from api/src by `make crds`: do not edit.\n";

/// `(file name, YAML)` for each CRD and for the admission policies, as
/// written under `api/manifests/`. Apply them all with
/// `kubectl apply --server-side -f api/manifests/`.
pub fn manifests() -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = crds()
        .into_iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            (format!("{name}.yaml"), format!("{HEADER}{}", yaml(&crd)))
        })
        .collect();
    let policies = admission::policies();
    let bindings = admission::bindings();
    let docs: Vec<String> = (policies.iter().map(yaml))
        .chain(bindings.iter().map(yaml))
        .chain([
            yaml(&crate::native::mutating_policy()),
            yaml(&crate::native::mutating_binding()),
        ])
        .collect();
    files.push((
        "admission-policies.yaml".into(),
        format!("{HEADER}{}", docs.join("---\n")),
    ));
    files
}

fn yaml(value: &impl serde::Serialize) -> String {
    serde_saphyr::to_string(value).expect("API objects always serialize to YAML")
}
