//! Templates: `FederatedTask`s, `FederatedPipeline`s and
//! `FederatedStepAction`s, each a Tekton object the hub keeps, patched per
//! cluster, on the member clusters its placement selects.
//!
//! - [`propagation`]: the reconciler: which clusters hold a copy and which
//!   should, copies made, kept and removed, the finalizer, the status.
//! - [`copies`]: one member's copy: apply it unless it is already in sync,
//!   or remove it. Runs use it too, to put what a run refers to on the
//!   run's cluster ([`crate::runs::dependencies`]).
//! - [`drift`]: pure: whether a member's copy still says what tekfed applied.
//! - [`status`]: pure: folding per-cluster results into a template's
//!   status (`status.clusters`, `readyClusters`, `Propagated`).
//!
//! Which clusters a placement selects ([`crate::placement`]) and the object
//! each one gets ([`crate::overrides`]) are shared with runs.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::NamespaceResourceScope;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tekfed_api::{
    ClusterOverrides, FederatedPipeline, FederatedStepAction, FederatedTask, MemberCluster,
    Placement, PropagationStatus, Template,
};

use crate::backoff::ErrorBackoff;
use crate::clusters::Members;
use crate::errors::one_line;
use crate::ownership::Owner;

pub mod copies;
pub mod drift;
pub mod propagation;
pub mod status;

pub use propagation::run;

/// The finalizer that lets the hub remove member copies before the
/// federated object goes.
pub const FINALIZER: &str = "tekfed.io/member-copies";

/// A federated template kind.
pub trait Federated:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + DeserializeOwned
    + Serialize
    + Send
    + Sync
    + 'static
{
    /// Its own kind (`FederatedTask`, …), as `&'static str`:
    /// `Resource::kind` gives a `Cow` borrowed from its argument.
    const FEDERATED_KIND: &'static str;
    /// The Tekton kind it puts on members.
    const TEKTON_KIND: &'static str;
    fn template(&self) -> &Template;
    fn placement(&self) -> &Placement;
    fn overrides(&self) -> &[ClusterOverrides];
    fn propagation(&self) -> Option<&PropagationStatus>;
}

macro_rules! federated {
    ($ty:ident, $tekton:literal) => {
        impl Federated for $ty {
            const FEDERATED_KIND: &'static str = stringify!($ty);
            const TEKTON_KIND: &'static str = $tekton;
            fn template(&self) -> &Template {
                &self.spec.template
            }
            fn placement(&self) -> &Placement {
                &self.spec.placement
            }
            fn overrides(&self) -> &[ClusterOverrides] {
                &self.spec.overrides
            }
            fn propagation(&self) -> Option<&PropagationStatus> {
                self.status.as_ref()
            }
        }
    };
}
federated!(FederatedTask, "Task");
federated!(FederatedPipeline, "Pipeline");
federated!(FederatedStepAction, "StepAction");

/// What the template controllers need.
pub struct TemplateContext {
    pub hub: Client,
    pub members: Arc<Members>,
    pub clusters: Store<MemberCluster>,
    pub recorder: Recorder,
    /// How long one member may take for one object before it is reported.
    pub member_timeout: Duration,
    /// How long deletion waits for unreachable members before it gives up
    /// on their copies (and says so in an event).
    pub deletion_timeout: Duration,
    pub resync: Duration,
    /// Failed reconciles: 2 s (the old flat retry), doubling to 5 minutes.
    pub retries: ErrorBackoff,
}

impl TemplateContext {
    pub fn new(
        hub: Client,
        members: Arc<Members>,
        clusters: Store<MemberCluster>,
        deletion_timeout: Duration,
        resync: Duration,
    ) -> Self {
        Self {
            recorder: crate::ownership::recorder(hub.clone()),
            hub,
            members,
            clusters,
            member_timeout: Duration::from_secs(15),
            deletion_timeout,
            resync,
            retries: ErrorBackoff::new(Duration::from_secs(2), Duration::from_secs(300)),
        }
    }
}

/// Something went wrong that a retry may fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing the status of {kind} {namespace}/{name}: {}", one_line(.source))]
    Status {
        kind: String,
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error(
        "{kind} {namespace}/{name}: copies still on {clusters}; retrying until the deletion timeout"
    )]
    CopiesLeft {
        kind: String,
        namespace: String,
        name: String,
        clusters: String,
    },
}

pub(crate) fn owner<K: Federated>(obj: &K) -> Owner<'_> {
    Owner {
        kind: K::FEDERATED_KIND,
        namespace: obj.meta().namespace.as_deref().unwrap_or_default(),
        name: obj.meta().name.as_deref().unwrap_or_default(),
        uid: obj.meta().uid.as_deref().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds<K: Federated>() -> (&'static str, String, &'static str) {
        (K::FEDERATED_KIND, K::kind(&()).into_owned(), K::TEKTON_KIND)
    }

    #[test]
    fn each_kind_names_itself_and_its_tekton_kind() {
        for (federated, kind, tekton) in [
            kinds::<FederatedTask>(),
            kinds::<FederatedPipeline>(),
            kinds::<FederatedStepAction>(),
        ] {
            assert_eq!(federated, kind);
            assert_eq!(federated, format!("Federated{tekton}"));
        }
    }
}
