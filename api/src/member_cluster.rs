//! `MemberCluster`: one joined member cluster, as the hub sees it.
//!
//! The spec is the operator's (`kubectl tekfed join`, `cordon`, …): where
//! the member's credentials are, its taints, whether new runs may land, and
//! an optional cap on concurrent runs. The status is tekfed's: whether the
//! hub reaches the member, whether its agent's heartbeat is fresh, and the
//! load the agent last reported. Labels on `metadata` are what placements
//! select on.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Taint, conditions};

/// Set (to the RFC 3339 time the drain began) by `kubectl tekfed drain` on a
/// cordoned `MemberCluster`: the hub moves the runs there that have not
/// started to other clusters. `uncordon` removes it.
pub const DRAIN_ANNOTATION: &str = "tekfed.io/drain";

/// A member cluster joined to the federation.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "tekfed.io",
    version = "v1alpha1",
    kind = "MemberCluster",
    plural = "memberclusters",
    shortname = "mc",
    category = "tekfed",
    status = "MemberClusterStatus",
    validation = crate::common::member_cluster_name_rule(),
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Schedulable","type":"boolean","jsonPath":".status.schedulable"}"#,
    printcolumn = r#"{"name":"Running","type":"integer","jsonPath":".status.load.running"}"#,
    printcolumn = r#"{"name":"Assigned","type":"integer","jsonPath":".status.assignedRuns"}"#,
    printcolumn = r#"{"name":"Capacity","type":"integer","jsonPath":".spec.maxConcurrentRuns"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MemberClusterSpec {
    /// The hub Secret that holds this member's kubeconfig.
    pub secret_ref: SecretRef,
    /// The hub Secret holding the kubeconfig of the member identity that
    /// reads run logs there (pods and `pods/log`, nothing else; `kubectl
    /// tekfed join` creates it). Without it the hub serves no logs of this
    /// member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs_secret_ref: Option<SecretRef>,
    /// Taints: runs and templates that do not tolerate them stay off.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub taints: Vec<Taint>,
    /// Cordon: when true, no new runs land here (`kubectl tekfed cordon`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unschedulable: bool,
    /// At most this many runs at once on this cluster; unset means no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_concurrent_runs: Option<i32>,
    /// What this member lets the hub do there: the namespaces it may write
    /// in, the Pod Security level of the namespaces it creates and of what
    /// runs ask for, and the privileged ServiceAccounts runs may name
    /// ([`crate::guard`]). `kubectl tekfed join` writes it from its flags,
    /// and the same into the member's guard.
    #[serde(default)]
    pub tenancy: crate::guard::Tenancy,
}

/// Where a member's kubeconfig is kept on the hub.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct SecretRef {
    /// The Secret's name.
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
    /// The Secret's namespace; `tekfed-system` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub namespace: Option<String>,
    /// The key holding the kubeconfig; `kubeconfig` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub key: Option<String>,
}

/// What tekfed knows of a member right now.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberClusterStatus {
    /// `Reachable` (the hub reaches the member's API server with its
    /// credentials), `AgentReady` (the heartbeat is fresh), `Ready` (both),
    /// and `CredentialsExpiring` (`True` when a token of the member's, the
    /// hub's, its log reader's or the agent's, was due for renewal and
    /// could not be renewed; it does not change `Ready`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions")]
    pub conditions: Vec<Condition>,
    /// Whether new runs may land here now (not cordoned, and Ready).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedulable: Option<bool>,
    /// When the hub last saw a new heartbeat from the member's agent, on
    /// the hub's own clock (the agent's clock is never trusted for this; a
    /// hub that starts counts from its first look).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_time: Option<Time>,
    /// The member's Kubernetes version, as its API server reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<String>,
    /// The Tekton Pipelines version installed on the member, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tekton_version: Option<String>,
    /// Load as the agent last reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<ClusterLoad>,
    /// Runs the hub has assigned here that have not finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_runs: Option<i64>,
}

impl MemberClusterStatus {
    /// Whether the hub judges the member `Ready` (reachable, and its
    /// agent's heartbeat fresh): what runs need.
    pub fn is_ready(&self) -> bool {
        self.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    }
}

/// The most runs or pods an agent may report in one figure: far above
/// what one cluster holds (Kubernetes is tested to 150,000 pods), far
/// below any sum that could overflow.
pub const MAX_RUNS: i64 = 1_000_000;
/// The largest CPU (millicores) or memory (bytes) figure an agent may
/// report: 2^50, a pebibyte of memory, or a million cores' worth of
/// millicores a thousand times over.
pub const MAX_QUANTITY: i64 = 1 << 50;

/// Load on a member, as its agent measures it. Every figure is bounded at
/// admission (non-negative, at most [`MAX_RUNS`] or [`MAX_QUANTITY`]): an
/// agent's report is input the hub must not trust.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterLoad {
    /// TaskRuns and PipelineRuns started and not finished.
    #[serde(default)]
    #[schemars(range(min = 0, max = MAX_RUNS))]
    pub running: i64,
    /// TaskRuns and PipelineRuns created and not started.
    #[serde(default)]
    #[schemars(range(min = 0, max = MAX_RUNS))]
    pub pending: i64,
    /// Pods waiting to be scheduled.
    #[serde(default)]
    #[schemars(range(min = 0, max = MAX_RUNS))]
    pub pending_pods: i64,
    /// Allocatable CPU over all nodes, in millicores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_QUANTITY))]
    pub cpu_allocatable_millis: Option<i64>,
    /// CPU requested by scheduled pods, in millicores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_QUANTITY))]
    pub cpu_requested_millis: Option<i64>,
    /// Allocatable memory over all nodes, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_QUANTITY))]
    pub memory_allocatable_bytes: Option<i64>,
    /// Memory requested by scheduled pods, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_QUANTITY))]
    pub memory_requested_bytes: Option<i64>,
}
