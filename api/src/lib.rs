//! tekfed's API: group `tekfed.io`, version `v1alpha1`.
//!
//! The Rust types here are the source of truth. `api/manifests/*.yaml` is
//! generated from them (`make crds`), and a test fails when the committed
//! YAML is stale. Validation a user relies on lives in the generated schema
//! (OpenAPI constraints and CEL `x-kubernetes-validations`), so the API
//! server itself refuses a malformed object with a message naming the field.
//!
//! - [`member_cluster`]: `MemberCluster`, one per joined member cluster.
//! - [`templates`]: `FederatedTask`, `FederatedPipeline`,
//!   `FederatedStepAction`, kept in sync on every selected member.
//! - [`runs`]: `FederatedTaskRun`, `FederatedPipelineRun`, each scheduled
//!   to one member (or to all selected ones with `mode: All`).
//! - [`assignment`]: `RunAssignment` and `MemberReport`, the records an
//!   agent and the hub exchange in the cluster's own hub namespace.
//! - [`logs`]: the aggregated API the hub serves run logs in.
//! - [`dependencies`]: what a run needs carried to its cluster, and the
//!   labels that let a Secret travel.
//! - [`common`]: what those share: template, placement, overrides,
//!   conditions.
//! - [`admission`]: admission policies for what a schema cannot check.
//! - [`guard`]: what a member lets the hub do there (`MemberCluster`
//!   `spec.tenancy`), checked by the hub and by a policy on the member.
//! - [`tekton`]: reading Tekton run status into tekfed phases.
//! - [`manifests`]: the generated documents.
//! - [`rbac`]: the RBAC rules of the hub's and the agent's identities,
//!   which `kubectl tekfed join` grants and the charts' rules are generated from.

pub mod admission;
pub mod assignment;
pub mod common;
pub mod dependencies;
pub mod guard;
pub mod logs;
pub mod manifests;
pub mod member_cluster;
pub mod native;
pub mod rbac;
pub mod runs;
pub mod tekton;
pub mod templates;

pub use assignment::{
    AgentCredential, MemberReport, MemberReportSpec, MemberReportStatus, RunAssignment,
    RunAssignmentSpec, RunAssignmentStatus, RunKind, RunRef, cluster_namespace,
};
pub use common::{
    ClusterOverrides, ClusterRef, OverrideOp, OverrideOperation, Placement, PlacementMode,
    RunPlacement, Taint, TaintEffect, Template, TemplateMetadata, Toleration, TolerationOperator,
};
pub use member_cluster::{
    ClusterLoad, DRAIN_ANNOTATION, MemberCluster, MemberClusterSpec, MemberClusterStatus, SecretRef,
};
pub use runs::{
    FederatedPipelineRun, FederatedPipelineRunSpec, FederatedTaskRun, FederatedTaskRunSpec,
    OnClusterLost, RunAttempt, RunClusterStatus, RunPhase, RunStatus,
};
pub use templates::{
    ClusterPropagation, FederatedPipeline, FederatedPipelineSpec, FederatedStepAction,
    FederatedStepActionSpec, FederatedTask, FederatedTaskSpec, PropagationState, PropagationStatus,
};

/// The API group of every tekfed kind.
pub const GROUP: &str = "tekfed.io";
/// The API version of every tekfed kind.
pub const VERSION: &str = "v1alpha1";
/// The `kubectl get` category that lists every tekfed kind (`kubectl get tekfed`).
pub const CATEGORY: &str = "tekfed";
