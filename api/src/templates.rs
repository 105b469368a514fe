//! `FederatedTask`, `FederatedPipeline` and `FederatedStepAction`: Tekton
//! templates kept in sync on every selected member cluster, patched per
//! cluster by `overrides`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{ClusterOverrides, Placement, Template, conditions};

/// A Tekton `Task` kept on every member cluster its placement selects.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "tekfed.io",
    version = "v1alpha1",
    kind = "FederatedTask",
    plural = "federatedtasks",
    shortname = "ft",
    category = "tekfed",
    namespaced,
    validation = crate::common::federated_name_rule(),
    status = "PropagationStatus",
    printcolumn = r#"{"name":"Propagated","type":"string","jsonPath":".status.conditions[?(@.type==\"Propagated\")].status"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","description":"Clusters in sync / clusters selected","jsonPath":".status.readyClusters"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct FederatedTaskSpec {
    /// The Tekton `Task` (`tekton.dev/v1`) without `apiVersion` and `kind`.
    pub template: Template,
    /// Which member clusters get the Task.
    pub placement: Placement,
    /// Per-cluster JSON-patch operations applied to the template.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub overrides: Vec<ClusterOverrides>,
}

/// A Tekton `Pipeline` kept on every member cluster its placement selects.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "tekfed.io",
    version = "v1alpha1",
    kind = "FederatedPipeline",
    plural = "federatedpipelines",
    shortname = "fp",
    category = "tekfed",
    namespaced,
    validation = crate::common::federated_name_rule(),
    status = "PropagationStatus",
    printcolumn = r#"{"name":"Propagated","type":"string","jsonPath":".status.conditions[?(@.type==\"Propagated\")].status"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","description":"Clusters in sync / clusters selected","jsonPath":".status.readyClusters"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct FederatedPipelineSpec {
    /// The Tekton `Pipeline` (`tekton.dev/v1`) without `apiVersion` and `kind`.
    pub template: Template,
    /// Which member clusters get the Pipeline.
    pub placement: Placement,
    /// Per-cluster JSON-patch operations applied to the template.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub overrides: Vec<ClusterOverrides>,
}

/// A Tekton `StepAction` kept on every member cluster its placement selects.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "tekfed.io",
    version = "v1alpha1",
    kind = "FederatedStepAction",
    plural = "federatedstepactions",
    shortname = "fsa",
    category = "tekfed",
    namespaced,
    validation = crate::common::federated_name_rule(),
    status = "PropagationStatus",
    printcolumn = r#"{"name":"Propagated","type":"string","jsonPath":".status.conditions[?(@.type==\"Propagated\")].status"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","description":"Clusters in sync / clusters selected","jsonPath":".status.readyClusters"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct FederatedStepActionSpec {
    /// The Tekton `StepAction` (`tekton.dev/v1beta1`) without `apiVersion` and `kind`.
    pub template: Template,
    /// Which member clusters get the StepAction.
    pub placement: Placement,
    /// Per-cluster JSON-patch operations applied to the template.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub overrides: Vec<ClusterOverrides>,
}

/// How far a template has reached its clusters.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PropagationStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Propagated`: True only when every selected cluster is `Synced`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions")]
    pub conditions: Vec<Condition>,
    /// Clusters in sync over clusters selected, such as `2/3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_clusters: Option<String>,
    /// One entry per selected cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<ClusterPropagation>,
}

/// The state of one member's copy of a template.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ClusterPropagation {
    pub cluster: String,
    pub state: PropagationState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The federated object's generation last applied to this cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
}

/// Where one member's copy of a template stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PropagationState {
    /// Applied at the current generation.
    Synced,
    /// Not applied yet.
    #[default]
    Pending,
    /// Could not be applied; the message says why.
    Failed,
    /// An object of the same name that tekfed did not create is in the way.
    Conflict,
}
