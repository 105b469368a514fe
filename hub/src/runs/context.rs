//! What the run controllers and the dispatcher share: the hub client, the
//! member registry, the stores, and the hub's own memory of what it wrote
//! and has not seen come back yet.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::Client;
use kube::api::Api;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{self, ObjectRef, Store};
use tekfed_api::{MemberCluster, RunAssignment, RunKind, cluster_namespace};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::FederatedRun;
use crate::backoff::ErrorBackoff;
use crate::clusters::Members;
use crate::dependencies::Dependencies;
use crate::metrics::Metrics;

/// Wakes one federated run: `(name, namespace)`.
pub(super) type RunTrigger = mpsc::UnboundedSender<(String, String)>;

/// What the run controllers and the dispatcher share.
pub struct RunContext {
    pub hub: Client,
    pub members: Arc<Members>,
    pub clusters: Store<MemberCluster>,
    pub metrics: Arc<Metrics>,
    /// Every `RunAssignment`, from one watch ([`super::assignments`]): the
    /// run controllers and the dispatcher read assignments here instead of
    /// asking the API server per reconcile (a GET per step of every run was
    /// most of what the hub asked of its API server under a burst).
    pub(super) assignments: Store<RunAssignment>,
    pub(super) assignments_writer: Mutex<Option<reflector::store::Writer<RunAssignment>>>,
    /// Each run controller's trigger: a changed assignment wakes its run
    /// (`(name, namespace)` of the federated run), by run kind.
    pub(super) assignment_triggers: Mutex<Vec<(RunKind, RunTrigger)>>,
    /// Decisions written but not yet seen in the watch stores: uid → clusters.
    pub(super) decided: Mutex<HashMap<String, Vec<String>>>,
    /// Status writes not yet seen in the run stores: uid → the
    /// resourceVersion the write was made on. A reconcile of that version
    /// would fold onto a status already replaced and fail its precondition.
    pub(super) written: Mutex<HashMap<String, String>>,
    /// Failed reconciles: 1 s (the old flat retry), doubling to 5 minutes.
    pub(super) retries: ErrorBackoff,
    /// Publishes a run's Events (`kubectl describe ftr/NAME`).
    pub(super) recorder: Recorder,
    /// What runs need from the hub, and what was carried where.
    pub deps: Arc<Dependencies>,
    /// How long runs wait on a silent cluster before they move.
    pub graces: super::moves::Graces,
}

impl RunContext {
    pub fn new(
        hub: Client,
        members: Arc<Members>,
        clusters: Store<MemberCluster>,
        metrics: Arc<Metrics>,
        graces: super::moves::Graces,
    ) -> Self {
        let (assignments, writer) = reflector::store();
        Self {
            deps: Arc::new(Dependencies::new(hub.clone(), clusters.clone())),
            recorder: crate::ownership::recorder(hub.clone()),
            hub,
            members,
            clusters,
            metrics,
            assignments,
            assignments_writer: Mutex::new(Some(writer)),
            assignment_triggers: Mutex::default(),
            decided: Mutex::default(),
            written: Mutex::default(),
            retries: ErrorBackoff::new(Duration::from_secs(1), Duration::from_secs(30)),
            graces,
        }
    }

    /// The runs of kind `K` whose assignments changed, for its controller.
    pub(super) fn assignment_changes<K: FederatedRun>(
        &self,
    ) -> impl Stream<Item = ObjectRef<K>> + Send + 'static {
        let (tx, rx) = mpsc::unbounded_channel();
        self.assignment_triggers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((K::KIND, tx));
        UnboundedReceiverStream::new(rx)
            .map(|(name, namespace)| ObjectRef::new(&name).within(&namespace))
    }

    /// True while the store still shows the version of `run` that this
    /// hub's last status write replaced: the event for the write is on its
    /// way and will reconcile the run again.
    pub(super) fn behind_own_write(&self, uid: &str, resource_version: Option<&str>) -> bool {
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        match written.get(uid) {
            Some(v) if Some(v.as_str()) == resource_version => true,
            Some(_) => {
                written.remove(uid);
                false
            }
            None => false,
        }
    }

    /// An assignment as last seen: `None` when the store has not seen it
    /// (it may still exist: ask the API server before creating one).
    pub(super) fn assignment(&self, cluster: &str, uid: &str) -> Option<Arc<RunAssignment>> {
        self.assignments
            .get(&ObjectRef::new(uid).within(&cluster_namespace(cluster)))
    }

    /// The assignments in `cluster`'s hub namespace.
    pub(super) fn assignment_api(&self, cluster: &str) -> Api<RunAssignment> {
        Api::namespaced(self.hub.clone(), &cluster_namespace(cluster))
    }
}
