//! The records that carry a run between the hub and one member's agent.
//!
//! Each member cluster has a namespace of its own on the hub,
//! `tekfed-cluster-<name>`, and its agent's hub identity may touch nothing
//! else: it reads the `RunAssignment`s there and writes their status, and
//! it writes the status of its `MemberReport` (heartbeat and load). The hub
//! writes assignments and folds what agents report into `MemberCluster`s
//! and federated runs. A compromised member can neither read nor touch
//! another cluster's runs, nor any template.
//!
//! A `RunAssignment` is also the fencing record: the agent may start a run
//! only after it has marked the record released with a conditional write
//! (resourceVersion precondition), and the hub may move a run only after it
//! has marked the record revoked, with the same kind of precondition, while
//! it was unreleased. The hub's store decides once whether a run may start
//! on a cluster. A revoked record stays until its federated run is deleted,
//! so nothing can mistake its absence for "not created yet".

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::common::any_value;
use crate::member_cluster::ClusterLoad;
use crate::runs::RunPhase;

/// The hub namespace that belongs to one member cluster.
pub fn cluster_namespace(cluster: &str) -> String {
    format!("tekfed-cluster-{cluster}")
}

// The fencing record's transitions, whoever writes (the hub, an agent, an
// administrator): rules on the whole object, so a status removed
// altogether is checked as well. Each guards its `has()` chain, because a
// missing field is not `false` in CEL.

/// `status.revoked`, once true, stays true.
const REVOKED_STAYS: &str = "!(has(oldSelf.status) && has(oldSelf.status.revoked) && oldSelf.status.revoked) || (has(self.status) && has(self.status.revoked) && self.status.revoked)";
/// `status.revokedReason`, once set, never changes.
const REVOKED_REASON_KEPT: &str = "!(has(oldSelf.status) && has(oldSelf.status.revokedReason)) || (has(self.status) && has(self.status.revokedReason) && self.status.revokedReason == oldSelf.status.revokedReason)";
/// `status.revokedTime`, once set, never changes.
const REVOKED_TIME_KEPT: &str = "!(has(oldSelf.status) && has(oldSelf.status.revokedTime)) || (has(self.status) && has(self.status.revokedTime) && self.status.revokedTime == oldSelf.status.revokedTime)";
/// `status.released`, once true, stays true.
const RELEASED_STAYS: &str = "!(has(oldSelf.status) && has(oldSelf.status.released) && oldSelf.status.released) || (has(self.status) && has(self.status.released) && self.status.released)";
/// A revoked record is never newly released (the hub revokes only while
/// unreleased, with a precondition; this holds without one).
const NO_RELEASE_AFTER_REVOKE: &str = "!(has(oldSelf.status) && has(oldSelf.status.revoked) && oldSelf.status.revoked) || (has(oldSelf.status.released) && oldSelf.status.released) || !(has(self.status) && has(self.status.released) && self.status.released)";

fn fencing_rule(rule: &str, message: &str) -> kube::core::Rule {
    kube::core::Rule::new(rule).message(message)
}

/// One run assigned to one member cluster.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tekfed.io",
    version = "v1alpha1",
    kind = "RunAssignment",
    plural = "runassignments",
    shortname = "ra",
    category = "tekfed",
    namespaced,
    status = "RunAssignmentStatus",
    validation = kube::core::Rule::new("self.spec == oldSelf.spec").message("spec is immutable: the hub revokes an assignment through status.revoked"),
    validation = fencing_rule(REVOKED_STAYS, "status.revoked: once true it stays true; a revoked assignment is never given back"),
    validation = fencing_rule(REVOKED_REASON_KEPT, "status.revokedReason: set once, when the hub revokes the assignment, and never changed"),
    validation = fencing_rule(REVOKED_TIME_KEPT, "status.revokedTime: set once, when the hub revokes the assignment, and never changed"),
    validation = fencing_rule(RELEASED_STAYS, "status.released: once true it stays true; a released run is not taken back by unreleasing it"),
    validation = fencing_rule(NO_RELEASE_AFTER_REVOKE, "status.released: a revoked assignment cannot be released"),
    printcolumn = r#"{"name":"Kind","type":"string","jsonPath":".spec.run.kind"}"#,
    printcolumn = r#"{"name":"Run","type":"string","jsonPath":".spec.run.name"}"#,
    printcolumn = r#"{"name":"Released","type":"boolean","jsonPath":".status.released"}"#,
    printcolumn = r#"{"name":"Revoked","type":"string","jsonPath":".status.revokedReason"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RunAssignmentSpec {
    /// The member cluster the run is assigned to.
    pub cluster: String,
    /// The federated run.
    pub run: RunRef,
    /// Which placement of the run this is (1 for the first; more when moved).
    #[serde(default = "first_attempt")]
    #[schemars(range(min = 1))]
    pub attempt: i32,
}

fn first_attempt() -> i32 {
    1
}

/// The label on a member run saying which placement of its federated run
/// it was made for ([`RunAssignmentSpec::attempt`]). A run moved off a
/// cluster and placed there again gets a new copy under the same name: the
/// old one, told apart by this label, is ended and removed first, and is
/// never taken for the new one.
pub const ATTEMPT_LABEL: &str = "tekfed.io/attempt";

/// The placement a member run was made for, from its labels: a copy made
/// before the label existed is the first.
pub fn attempt_of(labels: &std::collections::BTreeMap<String, String>) -> i32 {
    labels
        .get(ATTEMPT_LABEL)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1)
}

/// The federated run an assignment is for.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct RunRef {
    pub kind: RunKind,
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// The Tekton kind of a run.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum RunKind {
    TaskRun,
    PipelineRun,
}

impl RunKind {
    /// The Tekton kind's name: `TaskRun` or `PipelineRun`.
    pub fn tekton_kind(self) -> &'static str {
        match self {
            Self::TaskRun => "TaskRun",
            Self::PipelineRun => "PipelineRun",
        }
    }

    /// The federated kind's name: `FederatedTaskRun` or `FederatedPipelineRun`.
    pub fn federated_kind(self) -> &'static str {
        match self {
            Self::TaskRun => "FederatedTaskRun",
            Self::PipelineRun => "FederatedPipelineRun",
        }
    }

    /// The federated kind's API resource, for dynamic clients.
    pub fn federated_resource(self) -> kube::core::ApiResource {
        kube::core::ApiResource {
            group: crate::GROUP.into(),
            version: crate::VERSION.into(),
            api_version: format!("{}/{}", crate::GROUP, crate::VERSION),
            kind: self.federated_kind().into(),
            plural: crate::logs::plural(self).into(),
        }
    }
}

/// What the member's agent reports of an assignment.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunAssignmentStatus {
    /// Set once, by the agent, with a resourceVersion precondition: from
    /// then on the run may start on this cluster, and only here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_time: Option<Time>,
    /// The member run's phase as tekfed reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RunPhase>,
    /// The member run's own `status` (conditions, childReferences, results).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_value")]
    pub run_status: Option<Value>,
    /// When the agent last wrote this status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_time: Option<Time>,
    /// Set by the hub, with a resourceVersion precondition, when it takes
    /// the run off this cluster (drain, cluster lost). An unreleased run is
    /// then never released here; a released one is cancelled by the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<bool>,
    /// Why the hub took the run away: `Drained` or `ClusterLost`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_time: Option<Time>,
}

impl RunAssignmentStatus {
    pub fn is_released(&self) -> bool {
        self.released == Some(true)
    }
    pub fn is_revoked(&self) -> bool {
        self.revoked == Some(true)
    }
}

/// One member's heartbeat and load, written by its agent.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "tekfed.io",
    version = "v1alpha1",
    kind = "MemberReport",
    plural = "memberreports",
    category = "tekfed",
    namespaced,
    status = "MemberReportStatus",
    printcolumn = r#"{"name":"Heartbeat","type":"date","jsonPath":".status.heartbeatTime"}"#,
    printcolumn = r#"{"name":"Running","type":"integer","jsonPath":".status.load.running"}"#,
    printcolumn = r#"{"name":"Pending","type":"integer","jsonPath":".status.load.pending"}"#
)]
pub struct MemberReportSpec {
    /// The member cluster this report is for.
    pub cluster: String,
}

/// The agent's latest report.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberReportStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_time: Option<Time>,
    /// Runs tekfed created there, as the agent counts them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<ClusterLoad>,
    /// All TaskRuns and PipelineRuns on the member, tekfed's or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<ClusterLoad>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tekton_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// The agent's own hub credential: when its token expires, and why
    /// renewing it failed. The hub folds it into the `MemberCluster`'s
    /// `CredentialsExpiring` condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<AgentCredential>,
}

/// The longest renewal failure an agent may report.
pub const MAX_CREDENTIAL_MESSAGE: usize = 1024;

/// The agent's hub credential, as the agent sees it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentCredential {
    /// When the token the agent uses now expires (its `exp` claim);
    /// unset when its credential is not a token that says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration_time: Option<Time>,
    /// Why the last renewal of that token failed, while none has succeeded
    /// since; unset while renewal works.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_CREDENTIAL_MESSAGE))]
    pub renewal_failure: Option<String>,
}
