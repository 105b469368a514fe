//! Runs: `FederatedTaskRun`s and `FederatedPipelineRun`s, scheduled once,
//! created held, released by the member's agent, mirrored back.
//!
//! A run travels between the hub and a member's agent on a `RunAssignment`
//! in that cluster's hub namespace (`tekfed-cluster-<name>`, named after
//! the run's uid): the hub writes it, the agent writes its status.
//!
//! The life of a run, and the one writer of each step:
//!
//! 1. *Dispatcher* (one loop for both kinds, [`dispatch()`]): queued runs, in
//!    creation order, get a cluster from the [`scheduler`]. The decision
//!    is written to the run's status with a resourceVersion precondition
//!    *before* anything is created on a member, so a retry or a restarted
//!    hub never decides twice.
//! 2. *Run controller* ([`reconcile`]): for a decided run, the assignment,
//!    then what the run refers to ([`dependencies`]) and the member run
//!    under the federated run's own name, carrying tekfed's labels
//!    ([`member_run`]). A PipelineRun is created held (`spec.status:
//!    PipelineRunPending`); Tekton cannot hold a TaskRun, so a TaskRun is
//!    created only once its assignment is released.
//! 3. *Agent*: releases the assignment with a conditional write, starts the
//!    held run, and writes the run's status into the assignment.
//! 4. *Run controller*: folds the assignment into the run's status
//!    ([`status`]). A final phase is never left: a member run pruned later
//!    is not re-created.
//!
//! Every status write publishes an Event per transition a user looks for
//! in `kubectl describe` ([`events`]): scheduled, queued, moved, blocked,
//! started, finished.
//!
//! A run leaves a drained or lost cluster ([`moves`]) when the dispatcher
//! *revokes* its assignment: it sets the assignment's `status.revoked`
//! (with `revokedReason` and `revokedTime`) by a write conditional on the
//! resourceVersion it read, which fails if the agent released the run
//! meanwhile. It does not delete the assignment: a revoked assignment stays,
//! so a controller acting on an older view never re-creates it and the
//! agent never releases it. The run controller folds the revocation into
//! the run's status (back to `Queued` with the move in `attempts`, or
//! `Failed`/`ClusterLost`). The hub deletes an assignment only when its
//! federated run is deleted, or when the run, its move folded, is scheduled
//! onto that same cluster again: the revoked assignment then makes way
//! (deleted with uid and resourceVersion preconditions) for a new one with
//! the next `attempt`.
//!
//! Where each part lives: [`context`] (what the controllers and the
//! dispatcher share, fed by the [`assignments`] watch), [`reconcile`] (the
//! run controllers), [`member_run`], [`dependencies`],
//! [`dispatch`](mod@dispatch) (the scheduling loop and evacuation), and the
//! pure cores [`scheduler`], [`moves`] and [`status`].

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tekfed_api::runs::{OnClusterLost, RunStatus};
use tekfed_api::{
    ClusterOverrides, FederatedPipelineRun, FederatedTaskRun, RunKind, RunPlacement, Template,
};

use crate::errors::one_line;
use crate::ownership::Owner;

pub mod assignments;
pub mod context;
pub mod dependencies;
pub mod dispatch;
pub mod events;
pub mod member_run;
pub mod moves;
pub mod reconcile;
pub mod retention;
pub mod scheduler;
pub mod status;

pub use assignments::watch_assignments;
pub use context::RunContext;
pub use dispatch::dispatch;
pub use moves::Graces;
pub use reconcile::{controller, run};

/// The finalizer that lets the hub delete a run's member runs and
/// assignments before the run goes.
pub const FINALIZER: &str = "tekfed.io/member-runs";

/// A federated run kind.
pub trait FederatedRun:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + DeserializeOwned
    + Serialize
    + Send
    + Sync
    + 'static
{
    const KIND: RunKind;
    const FEDERATED_KIND: &'static str;
    fn template(&self) -> &Template;
    fn placement(&self) -> &RunPlacement;
    fn overrides(&self) -> &[ClusterOverrides];
    fn on_cluster_lost(&self) -> OnClusterLost;
    fn run_status(&self) -> Option<&RunStatus>;
    fn set_run_status(&mut self, status: RunStatus);

    /// The user's cancel (`spec.template.spec.status`, a value Tekton takes
    /// as a cancel for this kind), if any.
    fn cancel(&self) -> Option<&str> {
        self.template()
            .spec
            .get("status")
            .and_then(|s| s.as_str())
            .filter(|s| tekfed_api::tekton::cancel_values(Self::KIND).contains(s))
    }
}

macro_rules! federated_run {
    ($ty:ty, $kind:expr, $name:literal) => {
        impl FederatedRun for $ty {
            const KIND: RunKind = $kind;
            const FEDERATED_KIND: &'static str = $name;
            fn template(&self) -> &Template {
                &self.spec.template
            }
            fn placement(&self) -> &RunPlacement {
                &self.spec.placement
            }
            fn overrides(&self) -> &[ClusterOverrides] {
                &self.spec.overrides
            }
            fn on_cluster_lost(&self) -> OnClusterLost {
                self.spec.on_cluster_lost
            }
            fn run_status(&self) -> Option<&RunStatus> {
                self.status.as_ref()
            }
            fn set_run_status(&mut self, status: RunStatus) {
                self.status = Some(status);
            }
        }
    };
}
federated_run!(FederatedTaskRun, RunKind::TaskRun, "FederatedTaskRun");
federated_run!(
    FederatedPipelineRun,
    RunKind::PipelineRun,
    "FederatedPipelineRun"
);

pub(crate) fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// A run controller failed a step; it is retried.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} for {kind} {namespace}/{name}: {}", one_line(.source))]
    Kube {
        what: String,
        kind: &'static str,
        namespace: String,
        name: String,
        source: kube::Error,
    },
    /// What the run needs is not on the hub, or may not leave it.
    #[error("{message}")]
    DependenciesNotReady {
        /// The reason of the `DependenciesReady=False` condition it becomes.
        reason: &'static str,
        message: String,
    },
    #[error("{kind} {namespace}/{name}: {message}")]
    Waiting {
        /// The reason of the `MemberRunReady=False` condition it becomes.
        reason: &'static str,
        kind: &'static str,
        namespace: String,
        name: String,
        message: String,
    },
    /// The member refused to create the run (its admission webhooks,
    /// Tekton's among them; a quota; a namespace being deleted; a schema):
    /// made again it would be refused again, so the run ends there.
    #[error("{message}")]
    Rejected {
        /// `member-1 refused PipelineRun ns/name: …`
        message: String,
    },
}

impl Error {
    /// A write that lost a race (409 Conflict): the object changed since
    /// it was read.
    pub(crate) fn is_conflict(&self) -> bool {
        matches!(self, Error::Kube { source: kube::Error::Api(s), .. } if s.code == 409)
    }

    /// The False condition a wait becomes on the run (`DependenciesReady`
    /// or `MemberRunReady`); `None` for a failed request, which is retried.
    pub(crate) fn blocked(&self, now: Time) -> Option<Condition> {
        match self {
            Error::DependenciesNotReady { reason, message } => {
                Some(status::dependencies_not_ready(reason, message, now))
            }
            Error::Waiting {
                reason, message, ..
            } => Some(status::member_run_blocked(reason, message, now)),
            Error::Kube { .. } | Error::Rejected { .. } => None,
        }
    }
}

pub(crate) fn kube_error<K: FederatedRun>(
    run: &K,
    what: impl Into<String>,
) -> impl FnOnce(kube::Error) -> Error {
    let (namespace, name, what) = (
        run.namespace().unwrap_or_default(),
        run.name_any(),
        what.into(),
    );
    move |source| Error::Kube {
        what,
        kind: K::FEDERATED_KIND,
        namespace,
        name,
        source,
    }
}

pub(crate) fn owner<K: FederatedRun>(run: &K) -> Owner<'_> {
    Owner {
        kind: K::FEDERATED_KIND,
        namespace: run.meta().namespace.as_deref().unwrap_or_default(),
        name: run.meta().name.as_deref().unwrap_or_default(),
        uid: run.meta().uid.as_deref().unwrap_or_default(),
    }
}
