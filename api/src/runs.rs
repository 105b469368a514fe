//! `FederatedTaskRun` and `FederatedPipelineRun`: Tekton runs that the hub
//! schedules to exactly one member by load (or to every candidate with
//! `placement.mode: All`), and whose life it mirrors in `status`.
//!
//! Once a run is scheduled its spec is frozen: Tekton forbids updating a
//! started run, and a federated run must say one thing everywhere. The one
//! field that may still change is the cancel field,
//! `spec.template.spec.status`, which reaches the member run. The API
//! server enforces this with the admission policy in [`crate::admission`]
//! (CEL in the CRD schema cannot see the template's untyped fields).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::common::{ClusterOverrides, RunPlacement, Template, any_value, conditions};

/// A Tekton `TaskRun` the hub schedules onto member clusters.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "tekfed.io",
    version = "v1alpha1",
    kind = "FederatedTaskRun",
    plural = "federatedtaskruns",
    shortname = "ftr",
    category = "tekfed",
    namespaced,
    validation = crate::common::federated_name_rule(),
    status = "RunStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".status.cluster"}"#,
    printcolumn = r#"{"name":"Succeeded","type":"string","jsonPath":".status.conditions[?(@.type==\"Succeeded\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Succeeded\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct FederatedTaskRunSpec {
    /// The Tekton `TaskRun` (`tekton.dev/v1`) without `apiVersion` and `kind`.
    pub template: Template,
    /// The candidate clusters; the scheduler picks one (or all, `mode: All`).
    pub placement: RunPlacement,
    /// Per-cluster JSON-patch operations applied to the template.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub overrides: Vec<ClusterOverrides>,
    /// What happens when the run's cluster stops reporting after the run
    /// started there: `Fail` (default) marks it `Failed` with reason
    /// `ClusterLost`; `Reschedule` runs it again on another cluster (the
    /// lost copy is cancelled if its cluster comes back). A run that had
    /// not started always moves.
    #[serde(default, rename = "onClusterLost")]
    pub on_cluster_lost: OnClusterLost,
}

/// A Tekton `PipelineRun` the hub schedules onto member clusters.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "tekfed.io",
    version = "v1alpha1",
    kind = "FederatedPipelineRun",
    plural = "federatedpipelineruns",
    shortname = "fpr",
    category = "tekfed",
    namespaced,
    validation = crate::common::federated_name_rule(),
    status = "RunStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".status.cluster"}"#,
    printcolumn = r#"{"name":"Succeeded","type":"string","jsonPath":".status.conditions[?(@.type==\"Succeeded\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Succeeded\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct FederatedPipelineRunSpec {
    /// The Tekton `PipelineRun` (`tekton.dev/v1`) without `apiVersion` and `kind`.
    pub template: Template,
    /// The candidate clusters; the scheduler picks one (or all, `mode: All`).
    pub placement: RunPlacement,
    /// Per-cluster JSON-patch operations applied to the template.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub overrides: Vec<ClusterOverrides>,
    /// What happens when the run's cluster stops reporting after the run
    /// started there: `Fail` (default) marks it `Failed` with reason
    /// `ClusterLost`; `Reschedule` runs it again on another cluster (the
    /// lost copy is cancelled if its cluster comes back). A run that had
    /// not started always moves.
    #[serde(default, rename = "onClusterLost")]
    pub on_cluster_lost: OnClusterLost,
}

/// What to do with a started run whose cluster is lost.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum OnClusterLost {
    #[default]
    Fail,
    Reschedule,
}

/// Where a run stands in its life.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RunPhase {
    /// Waiting for a cluster with room; the `Scheduled` condition says why.
    #[default]
    Queued,
    /// A cluster was chosen; the member run is created or being created.
    Scheduled,
    /// The member run has started.
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunPhase {
    /// The phase as the API writes it (`status.phase`), for people.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "Queued",
            Self::Scheduled => "Scheduled",
            Self::Running => "Running",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
            Self::Cancelled => "Cancelled",
        }
    }
}

/// The state of a federated run, folded from its member run(s).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RunPhase>,
    /// The cluster the run was scheduled to (`mode: One`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// When the scheduling decision was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_time: Option<Time>,
    /// `Scheduled`, and `Succeeded` mirrored from the member run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// The member run's own `status` (conditions, childReferences, results).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_value")]
    pub member_status: Option<Value>,
    /// Earlier placements of this run, when it was moved off a cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<RunAttempt>,
    /// One entry per cluster with `placement.mode: All`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<RunClusterStatus>,
}

impl RunStatus {
    /// The status in a federated run's JSON (`{..., "status": {...}}`),
    /// for clients that read runs dynamically; the default when it has none
    /// or it does not read as one.
    pub fn of(object: &Value) -> Self {
        object
            .get("status")
            .cloned()
            .and_then(|s| serde_json::from_value(s).ok())
            .unwrap_or_default()
    }
}

/// A placement a run was moved off, and why.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct RunAttempt {
    pub cluster: String,
    pub reason: String,
    pub time: Time,
}

/// One cluster's copy of a `mode: All` run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunClusterStatus {
    pub cluster: String,
    pub phase: RunPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
}

#[cfg(test)]
mod phase_tests {
    use super::*;

    #[test]
    fn a_phase_reads_as_the_api_writes_it() {
        for phase in [
            RunPhase::Queued,
            RunPhase::Scheduled,
            RunPhase::Running,
            RunPhase::Succeeded,
            RunPhase::Failed,
            RunPhase::Cancelled,
        ] {
            assert_eq!(serde_json::to_value(phase).unwrap(), phase.as_str());
        }
    }
}
