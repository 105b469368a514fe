//! Native runs: a Tekton `TaskRun` or `PipelineRun` created on the hub
//! with `spec.managedBy: tekfed.io/hub` is federated as a
//! `Federated*Run` is, and its own `status` is Tekton's status from the
//! member it ran on, so Tekton's tools work on the hub unchanged.
//!
//! Where it may run and how it changes per cluster come from annotations
//! on the run (absent: any member):
//!
//! ```yaml
//! apiVersion: tekton.dev/v1
//! kind: PipelineRun
//! metadata:
//!   name: build-42
//!   annotations:
//!     tekfed.io/placement: '{"clusterSelector": {"matchLabels": {"region": "eu"}}}'
//!     tekfed.io/overrides: '[{"clusterName": "member-2", "clusterOverrides": [{"op": "add", "path": "/spec/timeouts", "value": {"pipeline": "2h"}}]}]'
//!     tekfed.io/on-cluster-lost: Reschedule
//! spec:
//!   managedBy: tekfed.io/hub
//!   pipelineRef: {name: build}
//! ```
//!
//! A namespace labelled [`LABEL_FEDERATE`]`=true` gets `managedBy` set on
//! every new run that does not name a manager, by the
//! `MutatingAdmissionPolicy` [`MUTATING_POLICY`] ([`mutating_policy`]), so
//! runs made by Tekton Triggers or any other tool federate unchanged.

use k8s_openapi::api::admissionregistration::v1::{
    MutatingAdmissionPolicy, MutatingAdmissionPolicyBinding,
};
use serde_json::json;

/// `spec.managedBy` of a run tekfed federates (Tekton's controller
/// ignores runs managed by someone else).
pub const MANAGED_BY_HUB: &str = "tekfed.io/hub";
/// The run's placement, a JSON `RunPlacement` (default: any member).
pub const ANNOTATION_PLACEMENT: &str = "tekfed.io/placement";
/// Its per-cluster overrides, a JSON list of `ClusterOverrides`.
pub const ANNOTATION_OVERRIDES: &str = "tekfed.io/overrides";
/// `Fail` (default) or `Reschedule`.
pub const ANNOTATION_ON_CLUSTER_LOST: &str = "tekfed.io/on-cluster-lost";
/// A namespace label: every new run there is federated unless it names
/// another manager.
pub const LABEL_FEDERATE: &str = "tekfed.io/federate";
/// On the `Federated*Run` that carries a native run through the hub: the
/// native run's kind (`TaskRun` or `PipelineRun`). Its name is the native
/// run's, and it is owned by it.
pub const LABEL_NATIVE: &str = "tekfed.io/native";
/// On a hub TaskRun that mirrors a child TaskRun of a native PipelineRun
/// (its status copied from the member, so `tkn pipelinerun describe`
/// finds it): the PipelineRun's name. tekfed does not federate these.
pub const LABEL_MIRROR_OF: &str = "tekfed.io/mirror-of";
/// The mutating admission policy (and its binding).
pub const MUTATING_POLICY: &str = "tekfed-native-runs";

/// Sets `spec.managedBy: tekfed.io/hub` on runs created without a manager,
/// in namespaces whose binding selects them ([`mutating_binding`]).
pub fn mutating_policy() -> MutatingAdmissionPolicy {
    serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingAdmissionPolicy",
        "metadata": {"name": MUTATING_POLICY},
        "spec": {
            "failurePolicy": "Fail",
            "reinvocationPolicy": "Never",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": ["tekton.dev"],
                "apiVersions": ["*"],
                "operations": ["CREATE"],
                "resources": ["taskruns", "pipelineruns"],
            }]},
            "matchConditions": [{
                "name": "no-manager",
                "expression": "!has(object.spec) || !has(object.spec.managedBy) || object.spec.managedBy == ''",
            }],
            "mutations": [{
                "patchType": "ApplyConfiguration",
                "applyConfiguration": {
                    "expression": format!("Object{{spec: Object.spec{{managedBy: \"{MANAGED_BY_HUB}\"}}}}"),
                },
            }],
        },
    }))
    .expect("the native-runs policy is a valid MutatingAdmissionPolicy")
}

/// Binds [`mutating_policy`] to namespaces labelled [`LABEL_FEDERATE`]`=true`.
pub fn mutating_binding() -> MutatingAdmissionPolicyBinding {
    serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingAdmissionPolicyBinding",
        "metadata": {"name": MUTATING_POLICY},
        "spec": {
            "policyName": MUTATING_POLICY,
            "matchResources": {"namespaceSelector": {"matchLabels": {LABEL_FEDERATE: "true"}}},
        },
    }))
    .expect("the native-runs binding is a valid MutatingAdmissionPolicyBinding")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_sets_the_hub_as_manager_only_where_a_namespace_opts_in() {
        let policy = serde_json::to_value(mutating_policy()).unwrap();
        assert_eq!(policy["spec"]["reinvocationPolicy"], "Never");
        assert!(
            policy["spec"]["mutations"][0]["applyConfiguration"]["expression"]
                .as_str()
                .unwrap()
                .contains("managedBy: \"tekfed.io/hub\"")
        );
        let binding = serde_json::to_value(mutating_binding()).unwrap();
        assert_eq!(binding["spec"]["policyName"], MUTATING_POLICY);
        assert_eq!(
            binding["spec"]["matchResources"]["namespaceSelector"]["matchLabels"][LABEL_FEDERATE],
            "true"
        );
    }
}
