//! Runs: `FederatedTaskRun`s and `FederatedPipelineRun`s, scheduled once,
//! created held, released by the member's agent, mirrored back.
//!
//! The life of a run, and the one writer of each step:
//!
//! 1. *Dispatcher* (one loop for both kinds, [`dispatch`]): queued runs, in
//!    creation order, get a cluster from the [`crate::scheduler`]. The
//!    decision is written to the run's status with a resourceVersion
//!    precondition *before* anything is created on a member, so a retry or
//!    a restarted hub never decides twice.
//! 2. *Run controller* ([`run`]): for a decided run, the `RunAssignment` in
//!    the cluster's hub namespace (name: the run's uid), then the member
//!    run under the federated run's own name, carrying tekfed's labels. A
//!    PipelineRun is created held (`spec.status: PipelineRunPending`);
//!    Tekton cannot hold a TaskRun, so a TaskRun is created only once its
//!    record is released.
//! 3. *Agent*: releases the record with a conditional write, starts the
//!    held run, and writes the run's status into the record.
//! 4. *Run controller*: folds the record into the run's status
//!    ([`crate::run_status`]). A final phase is never left: a member run
//!    pruned later is not re-created.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tekfed_api::runs::{OnClusterLost, RunPhase, RunStatus};
use tekfed_api::tekton::{PIPELINE_RUN_PENDING, cancel_values, is_final};
use tekfed_api::{
    ClusterOverrides, FederatedPipelineRun, FederatedTaskRun, MemberCluster, PlacementMode,
    RunAssignment, RunAssignmentSpec, RunKind, RunPlacement, RunRef, Template, cluster_namespace,
};
use tekfed_runtime::connect::{drop_managed_fields, tekton_resource};

use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::members::Members;
use crate::metrics::{ClusterLabel, Metrics, PhaseLabel};
use crate::moves;
use crate::overrides::{Source, render};
use crate::ownership::Owner;
use crate::placement::Member;
use crate::run_status;
use crate::scheduler::{ClusterView, Decision, RunRequest, Scheduler};

/// The finalizer that lets the hub delete member runs and records first.
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

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Wakes one federated run: `(name, namespace)`.
type RunTrigger = mpsc::UnboundedSender<(String, String)>;

/// What the run controllers and the dispatcher share.
pub struct RunContext {
    pub hub: Client,
    pub members: Arc<Members>,
    pub clusters: Store<MemberCluster>,
    pub metrics: Arc<Metrics>,
    /// Every `RunAssignment`, from one watch: the run controllers and the
    /// dispatcher read records here instead of asking the API server per
    /// reconcile (a GET per step of every run was most of what the hub
    /// asked of its API server under a burst).
    records: Store<RunAssignment>,
    records_writer: Mutex<Option<reflector::store::Writer<RunAssignment>>>,
    /// Each run controller's trigger: a changed record wakes its run
    /// (`(name, namespace)` of the federated run), by run kind.
    record_triggers: Mutex<Vec<(RunKind, RunTrigger)>>,
    /// Decisions written but not yet seen in the watch stores: uid → clusters.
    decided: Mutex<HashMap<String, Vec<String>>>,
    /// Status writes not yet seen in the run stores: uid → the
    /// resourceVersion the write was made on. A reconcile of that version
    /// would fold onto a status already replaced and fail its precondition.
    written: Mutex<HashMap<String, String>>,
}

impl RunContext {
    pub fn new(
        hub: Client,
        members: Arc<Members>,
        clusters: Store<MemberCluster>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (records, writer) = reflector::store();
        Self {
            hub,
            members,
            clusters,
            metrics,
            records,
            records_writer: Mutex::new(Some(writer)),
            record_triggers: Mutex::default(),
            decided: Mutex::default(),
            written: Mutex::default(),
        }
    }

    /// The runs of kind `K` whose records changed, for its controller.
    fn record_changes<K: FederatedRun>(&self) -> impl Stream<Item = ObjectRef<K>> + Send + 'static {
        let (tx, rx) = mpsc::unbounded_channel();
        self.record_triggers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((K::KIND, tx));
        UnboundedReceiverStream::new(rx)
            .map(|(name, namespace)| ObjectRef::new(&name).within(&namespace))
    }

    /// True while the store still shows the version of `run` that this
    /// hub's last status write replaced: the event for the write is on its
    /// way and will reconcile the run again.
    fn behind_own_write(&self, uid: &str, resource_version: Option<&str>) -> bool {
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

    /// A record as last seen: `None` when the store has not seen it (it
    /// may still exist: ask the API server before creating one).
    fn record(&self, cluster: &str, uid: &str) -> Option<Arc<RunAssignment>> {
        self.records
            .get(&ObjectRef::new(uid).within(&cluster_namespace(cluster)))
    }
}

/// Watch every `RunAssignment` into the store the run controllers and the
/// dispatcher read, and wake the run of each changed record; runs until
/// the hub stops. Call after [`controller`].
pub async fn watch_records(ctx: Arc<RunContext>) {
    let Some(writer) = ctx
        .records_writer
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    else {
        return;
    };
    let triggers = std::mem::take(
        &mut *ctx
            .record_triggers
            .lock()
            .unwrap_or_else(|p| p.into_inner()),
    );
    let api: Api<RunAssignment> = Api::all(ctx.hub.clone());
    // The store is updated before an object comes out of `reflect`: the
    // woken reconcile reads at least this version.
    watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(drop_managed_fields)
        .reflect(writer)
        .applied_objects()
        .for_each(|record| {
            match record {
                Ok(record) => {
                    let run = &record.spec.run;
                    for (_, tx) in triggers.iter().filter(|(kind, _)| *kind == run.kind) {
                        let _ = tx.send((run.name.clone(), run.namespace.clone()));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "watching assignments; retrying"),
            }
            futures::future::ready(())
        })
        .await;
}

/// A run controller failed a step; it is retried.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} for {kind} {namespace}/{name}: {source}")]
    Kube {
        what: String,
        kind: &'static str,
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("{0}")]
    DependencyMissing(String),
    #[error("{kind} {namespace}/{name}: {message}")]
    Waiting {
        /// The reason of the `MemberRunReady=False` condition it becomes.
        reason: &'static str,
        kind: &'static str,
        namespace: String,
        name: String,
        message: String,
    },
}

impl Error {
    /// The False condition a wait becomes on the run (`DependenciesReady`
    /// or `MemberRunReady`); `None` for a failed request, which is retried.
    fn blocked(&self, now: Time) -> Option<Condition> {
        match self {
            Error::DependencyMissing(message) => Some(run_status::dependency_missing(message, now)),
            Error::Waiting {
                reason, message, ..
            } => Some(run_status::member_run_blocked(reason, message, now)),
            Error::Kube { .. } => None,
        }
    }
}

fn kube_error<K: FederatedRun>(
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

/// The controller for one run kind (its store feeds the dispatcher).
pub fn controller<K: FederatedRun>(ctx: &RunContext) -> Controller<K> {
    let runs: Api<K> = Api::all(ctx.hub.clone());
    let (reader, writer) = reflector::store();
    let stream = watcher(runs, watcher::Config::default())
        .default_backoff()
        .modify(drop_managed_fields)
        .reflect(writer)
        .applied_objects();
    Controller::for_stream(stream, reader).reconcile_on(ctx.record_changes::<K>())
}

/// Run one kind's controller until the hub stops.
pub async fn run<K: FederatedRun>(controller: Controller<K>, ctx: Arc<RunContext>) {
    controller
        .run(reconcile::<K>, error_policy::<K>, ctx)
        .for_each(|result| {
            if let Err(e) = result {
                tracing::debug!(error = %e, "run reconcile did not finish");
            }
            futures::future::ready(())
        })
        .await;
}

fn error_policy<K: FederatedRun>(
    run: Arc<K>,
    error: &kube::runtime::finalizer::Error<Error>,
    _: Arc<RunContext>,
) -> Action {
    tracing::info!(kind = K::FEDERATED_KIND, ns = run.namespace().unwrap_or_default(), name = %run.name_any(), %error, "retrying");
    Action::requeue(Duration::from_secs(1))
}

async fn reconcile<K: FederatedRun>(
    run: Arc<K>,
    ctx: Arc<RunContext>,
) -> Result<Action, kube::runtime::finalizer::Error<Error>> {
    let api: Api<K> = Api::namespaced(ctx.hub.clone(), &run.namespace().unwrap_or_default());
    finalizer(&api, FINALIZER, run, |event| async {
        match event {
            Finalizer::Apply(run) => apply(run.as_ref(), &ctx).await,
            Finalizer::Cleanup(run) => cleanup(run.as_ref(), &ctx).await,
        }
    })
    .await
}

fn record_api(ctx: &RunContext, cluster: &str) -> Api<RunAssignment> {
    Api::namespaced(ctx.hub.clone(), &cluster_namespace(cluster))
}

fn owner<K: FederatedRun>(run: &K) -> Owner<'_> {
    Owner {
        kind: K::FEDERATED_KIND,
        namespace: run.meta().namespace.as_deref().unwrap_or_default(),
        name: run.meta().name.as_deref().unwrap_or_default(),
        uid: run.meta().uid.as_deref().unwrap_or_default(),
    }
}

async fn apply<K: FederatedRun>(run: &K, ctx: &RunContext) -> Result<Action, Error> {
    let uid = run.uid().unwrap_or_default();
    if ctx.behind_own_write(&uid, run.meta().resource_version.as_deref()) {
        return Ok(Action::await_change());
    }
    let status = run.run_status();
    if status.and_then(|s| s.phase).is_some_and(is_final) {
        // Finished: remembered here, never re-created or touched again.
        return Ok(Action::await_change());
    }
    let clusters = run_status::decided_clusters(status);
    if clusters.is_empty() {
        ctx.members.schedule.notify_one();
        return Ok(Action::requeue(Duration::from_secs(30)));
    }
    let mut records = Vec::new();
    for cluster in &clusters {
        let api = record_api(ctx, cluster);
        let stored = match ctx.record(cluster, &uid) {
            Some(record) => Some(record.as_ref().clone()),
            // Not seen yet: only the API server can say it does not exist.
            None => api.get_opt(&uid).await.map_err(kube_error(
                run,
                format!("reading the assignment on {cluster}"),
            ))?,
        };
        let record = match stored {
            Some(record) => record,
            None => {
                let record = RunAssignment::new(
                    &uid,
                    RunAssignmentSpec {
                        cluster: cluster.clone(),
                        run: RunRef {
                            kind: K::KIND,
                            namespace: run.namespace().unwrap_or_default(),
                            name: run.name_any(),
                            uid: uid.clone(),
                        },
                        attempt: status.map_or(0, |s| s.attempts.len() as i32) + 1,
                    },
                );
                match api.create(&PostParams::default(), &record).await {
                    Ok(created) => created,
                    Err(kube::Error::Api(s)) if s.code == 409 => api
                        .get(&uid)
                        .await
                        .map_err(kube_error(run, "reading the assignment"))?,
                    Err(e) => {
                        return Err(kube_error(
                            run,
                            format!("creating the assignment on {cluster}"),
                        )(e));
                    }
                }
            }
        };
        if let Some(revoked) = record.status.as_ref().filter(|s| s.is_revoked())
            && run.placement().mode == PlacementMode::One
        {
            let previous = status.cloned().unwrap_or_default();
            if previous.attempts.len() >= record.spec.attempt.max(1) as usize {
                // The move off this cluster is folded and the run was
                // scheduled here again: the old record (never released, or
                // its run cancelled) makes way for a new one.
                let params = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: record.uid(),
                        resource_version: record.resource_version(),
                    }),
                    ..Default::default()
                };
                record_api(ctx, cluster)
                    .delete(&record.name_any(), &params)
                    .await
                    .map_err(kube_error(
                        run,
                        format!("replacing the revoked assignment on {cluster}"),
                    ))?;
                return Ok(Action::requeue(Duration::from_millis(100)));
            }
            // Taken off this cluster by the dispatcher: fold the move.
            let next = run_status::revoked(
                &previous,
                cluster,
                record.spec.attempt,
                revoked,
                run.on_cluster_lost(),
                now(),
            );
            if run_status::changed(&previous, &next) {
                write_status(run, ctx, next).await?;
                ctx.members.schedule.notify_one();
            }
            return Ok(Action::await_change());
        }
        match ensure_member_run(run, cluster, &record, ctx).await {
            Ok(()) => {}
            Err(e) => {
                let Some(condition) = e.blocked(now()) else {
                    return Err(e);
                };
                // Something only the hub sees keeps the member run from
                // being made: say so on the run, and try again.
                tracing::info!(kind = K::FEDERATED_KIND, ns = run.namespace().unwrap_or_default(), name = %run.name_any(), %cluster, reason = %condition.reason, message = %condition.message, "member run waits");
                let mut status = status.cloned().unwrap_or_default();
                if run_status::set_blocked(&mut status, condition) {
                    write_status(run, ctx, status).await?;
                }
                return Ok(Action::requeue(Duration::from_secs(5)));
            }
        }
        records.push((cluster.clone(), record.status));
    }
    let previous = status.cloned().unwrap_or_default();
    let mut base = previous.clone();
    // Everything it refers to is there now, and its member copy: the wait is over.
    run_status::resolve(
        &mut base,
        &[
            (
                run_status::DEPENDENCIES_READY,
                "Resolved",
                "what the run refers to is on its cluster",
            ),
            (
                run_status::MEMBER_RUN_READY,
                "Created",
                "the member run is on its cluster",
            ),
        ],
        &now(),
    );
    let folded = run_status::fold(run.placement().mode, &base, &records, now());
    if run_status::changed(&previous, &folded) {
        write_status(run, ctx, folded.clone()).await?;
        if folded.phase.is_some_and(is_final) {
            ctx.members.schedule.notify_one();
        }
    }
    Ok(Action::requeue(Duration::from_secs(60)))
}

/// The member run exists as it should at this point of the protocol, and
/// carries the user's cancel.
async fn ensure_member_run<K: FederatedRun>(
    run: &K,
    cluster: &str,
    record: &RunAssignment,
    ctx: &RunContext,
) -> Result<(), Error> {
    let released = record
        .status
        .as_ref()
        .and_then(|s| s.released)
        .unwrap_or(false);
    let waiting = |reason: &'static str, message: String| Error::Waiting {
        reason,
        kind: K::FEDERATED_KIND,
        namespace: run.namespace().unwrap_or_default(),
        name: run.name_any(),
        message,
    };
    let cancel = run
        .template()
        .spec
        .get("status")
        .and_then(|s| s.as_str())
        .filter(|s| cancel_values(K::KIND).contains(s));
    let reported = record.status.as_ref().and_then(|s| s.phase).is_some();
    if reported && cancel.is_none() {
        // The agent has seen the member run, with this run's uid on it:
        // nothing to create or change there.
        return Ok(());
    }
    if K::KIND == RunKind::TaskRun && !released && cancel.is_none() {
        // Tekton cannot hold a TaskRun: it is created once released.
        return Ok(());
    }
    let conn = ctx.members.connection(cluster).map_err(|u| {
        waiting(
            "ClusterUnreachable",
            format!("cluster {cluster} is not reachable: {}", u.message),
        )
    })?;
    let name = run.name_any();
    let namespace = run.namespace().unwrap_or_default();
    let api: Api<DynamicObject> = Api::namespaced_with(
        conn.client.clone(),
        &namespace,
        &tekton_resource(K::KIND.tekton_kind()),
    );
    let existing = api.get_opt(&name).await.map_err(kube_error(
        run,
        format!("reading the member run on {cluster}"),
    ))?;
    let owner = owner(run);
    let conflict = || {
        waiting(
            "Conflict",
            format!(
                "a {} named {name} that tekfed did not create exists in {namespace} on {cluster}",
                K::KIND.tekton_kind()
            ),
        )
    };
    match existing {
        Some(member) if !owner.owns(member.labels()) => Err(conflict()),
        Some(member) => {
            if let Some(cancel) = cancel
                && member.data["spec"]["status"].as_str() != Some(cancel)
            {
                // The one change Tekton allows on a started run.
                let patch = json!({"spec": {"status": cancel}});
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(kube_error(
                        run,
                        format!("cancelling the member run on {cluster}"),
                    ))?;
            }
            Ok(())
        }
        // A TaskRun is created only once released; a PipelineRun is created held.
        None if K::KIND == RunKind::TaskRun && !released => Ok(()),
        None if record
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .is_some_and(is_final) =>
        {
            Ok(())
        }
        None => {
            let source = Source {
                kind: K::KIND.tekton_kind(),
                name: &name,
                owner: owner.clone(),
                template: run.template(),
                overrides: run.overrides(),
            };
            let mut desired = render(&source, cluster)
                .map_err(|e| waiting("OverrideFailed", format!("{e}; fix spec.overrides")))?;
            if K::KIND == RunKind::PipelineRun && !released && cancel.is_none() {
                desired["spec"]["status"] = json!(PIPELINE_RUN_PENDING);
            }
            ensure_dependencies(run, cluster, ctx).await?;
            ensure_namespace(&conn.client, &namespace)
                .await
                .map_err(|message| {
                    waiting(
                        "WaitingForServiceAccount",
                        format!("{message} on {cluster}"),
                    )
                })?;
            let object: DynamicObject = serde_json::from_value(desired).map_err(|e| {
                waiting("InvalidTemplate", format!("rendering the member run: {e}"))
            })?;
            match api.create(&PostParams::default(), &object).await {
                Ok(_) => Ok(()),
                // Created meanwhile: "already created" only if it is ours.
                Err(kube::Error::Api(s)) if s.code == 409 => match api.get_opt(&name).await {
                    Ok(Some(member)) if owner.owns(member.labels()) => Ok(()),
                    _ => Err(conflict()),
                },
                Err(e) => Err(kube_error(
                    run,
                    format!("creating the member run on {cluster}"),
                )(e)),
            }
        }
    }
}

/// How long after its creation a member namespace is checked for its
/// `default` ServiceAccount before a run is created in it.
const NEW_NAMESPACE: Duration = Duration::from_secs(120);

/// The member namespace exists and can run pods. Tekton reads the
/// namespace's `default` ServiceAccount for every run, and a run created
/// before the member's controller-manager made it fails at once
/// (`PodCreationFailed`); so in a namespace created moments ago (by tekfed
/// or anyone) a run is created only once that account exists. `Err` says
/// what is awaited.
async fn ensure_namespace(client: &Client, namespace: &str) -> Result<(), String> {
    use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
    let api: Api<Namespace> = Api::all(client.clone());
    let created = match api.get_metadata_opt(namespace).await {
        Ok(Some(ns)) => ns.metadata.creation_timestamp.map(|t| t.0),
        _ => {
            let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": {crate::ownership::LABEL_MANAGED_BY: crate::ownership::MANAGED_BY}}});
            let _ = api
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(ns).expect("a valid Namespace"),
                )
                .await;
            None
        }
    };
    let age = created.map(|t| k8s_openapi::jiff::Timestamp::now().duration_since(t));
    if age.is_some_and(|age| age.as_secs() >= NEW_NAMESPACE.as_secs() as i64) {
        return Ok(());
    }
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    match accounts.get_metadata_opt("default").await {
        Ok(None) => Err(format!(
            "namespace {namespace} has no default ServiceAccount yet (the member's controller-manager makes it; Tekton needs it for every run)"
        )),
        // Found, or not ours to read (a hub identity joined before it
        // could): go on as before.
        _ => Ok(()),
    }
}

/// Deleting a federated run deletes its member runs and records.
async fn cleanup<K: FederatedRun>(run: &K, ctx: &RunContext) -> Result<Action, Error> {
    let uid = run.uid().unwrap_or_default();
    ctx.written
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&uid);
    let mut clusters = run_status::decided_clusters(run.run_status());
    // Clusters it was moved off keep a revoked record (and maybe a copy).
    clusters.extend(
        run.run_status()
            .into_iter()
            .flat_map(|s| s.attempts.iter().map(|a| a.cluster.clone())),
    );
    clusters.sort();
    clusters.dedup();
    for cluster in clusters {
        if let Ok(conn) = ctx.members.connection(&cluster) {
            let api: Api<DynamicObject> = Api::namespaced_with(
                conn.client.clone(),
                &run.namespace().unwrap_or_default(),
                &tekton_resource(K::KIND.tekton_kind()),
            );
            if let Ok(Some(member)) = api.get_opt(&run.name_any()).await
                && owner(run).owns(member.labels())
            {
                let _ = api.delete(&run.name_any(), &DeleteParams::default()).await;
            }
        }
        match record_api(ctx, &cluster)
            .delete(&uid, &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                return Err(kube_error(
                    run,
                    format!("deleting the assignment on {cluster}"),
                )(e));
            }
        }
    }
    ctx.members.schedule.notify_one();
    Ok(Action::await_change())
}

/// Write a run's status with its resourceVersion as precondition: if the
/// run changed since it was read, nothing is written and it is read again.
async fn write_status<K: FederatedRun>(
    run: &K,
    ctx: &RunContext,
    status: RunStatus,
) -> Result<(), Error> {
    let api: Api<K> = Api::namespaced(ctx.hub.clone(), &run.namespace().unwrap_or_default());
    let mut updated = run.clone();
    updated.set_run_status(status);
    let written = api
        .replace_status(&run.name_any(), &PostParams::default(), &updated)
        .await
        .map_err(kube_error(run, "writing the status"))?;
    // A write the API server found changed nothing keeps the version: no
    // event follows it, so there is nothing to wait for.
    if let (Some(uid), Some(version)) = (run.uid(), run.resource_version())
        && written.resource_version().as_ref() != Some(&version)
    {
        ctx.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(uid, version);
    }
    Ok(())
}

/// What the dispatcher keeps of a run's status. It writes only runs still
/// waiting for a cluster, so only those need their whole status; of the
/// others (most of them, under a burst or with runs stored) it needs the
/// phase and clusters. Cloning every stored run's whole status (conditions,
/// the member run's status) each round was the hub's top cost under a
/// burst (perf: `RunStatus::clone`, `String::clone`, `BTreeMap::clone`).
fn dispatch_view(status: Option<&RunStatus>) -> Option<RunStatus> {
    let status = status?;
    if run_status::decided_clusters(Some(status)).is_empty() && !status.phase.is_some_and(is_final)
    {
        return Some(status.clone());
    }
    Some(RunStatus {
        phase: status.phase,
        cluster: status.cluster.clone(),
        clusters: status.clusters.clone(),
        ..Default::default()
    })
}

/// A run as the dispatcher sees it, whichever its kind.
struct Entry {
    key: String,
    uid: String,
    created: i64,
    placement: RunPlacement,
    status: Option<RunStatus>,
    deleting: bool,
    /// The run controller has added its finalizer. Until then the
    /// dispatcher leaves the run alone: that write changes the
    /// resourceVersion, so a decision written against the older one fails
    /// and must be made again (under a burst of thousands, most of them).
    ready: bool,
    write: Box<
        dyn Fn(RunStatus) -> futures::future::BoxFuture<'static, Result<(), Error>> + Send + Sync,
    >,
}

/// Runs by phase, counted for `tekfed_runs{phase}`.
#[derive(Default)]
struct PhaseCounts([i64; 6]);

impl PhaseCounts {
    const PHASES: [RunPhase; 6] = [
        RunPhase::Queued,
        RunPhase::Scheduled,
        RunPhase::Running,
        RunPhase::Succeeded,
        RunPhase::Failed,
        RunPhase::Cancelled,
    ];

    fn add(&mut self, phase: RunPhase) {
        if let Some(i) = Self::PHASES.iter().position(|p| *p == phase) {
            self.0[i] += 1;
        }
    }
}

/// The dispatcher's view of one kind's unfinished runs; finished runs are
/// only counted. With thousands of finished runs stored, building an entry
/// for each (key, placement, status) every round was nearly all the hub's
/// CPU at rest (perf).
fn entries<K: FederatedRun>(
    store: &Store<K>,
    ctx: &Arc<RunContext>,
    phases: &mut PhaseCounts,
) -> Vec<Entry> {
    let mut entries = Vec::new();
    for run in store.state() {
        let phase = run.run_status().and_then(|s| s.phase);
        phases.add(phase.unwrap_or(RunPhase::Queued));
        if phase.is_some_and(is_final) {
            continue;
        }
        let ctx = ctx.clone();
        let for_write = run.clone();
        entries.push(Entry {
            key: format!(
                "{}/{}/{}",
                K::FEDERATED_KIND,
                run.namespace().unwrap_or_default(),
                run.name_any()
            ),
            uid: run.uid().unwrap_or_default(),
            created: run
                .meta()
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_millisecond())
                .unwrap_or_default(),
            placement: run.placement().clone(),
            status: dispatch_view(run.run_status()),
            deleting: run.meta().deletion_timestamp.is_some(),
            ready: run.finalizers().iter().any(|f| f == FINALIZER),
            write: Box::new(move |status| {
                let ctx = ctx.clone();
                let run = for_write.clone();
                Box::pin(async move { write_status(run.as_ref(), &ctx, status).await })
            }),
        });
    }
    entries
}

/// The scheduling loop: woken by a new run, a finished run, or any change
/// in a member's status; at worst every two seconds.
pub async fn dispatch(
    ctx: Arc<RunContext>,
    task_runs: Store<FederatedTaskRun>,
    pipeline_runs: Store<FederatedPipelineRun>,
) {
    let _ = task_runs.wait_until_ready().await;
    let _ = pipeline_runs.wait_until_ready().await;
    let _ = ctx.clusters.wait_until_ready().await;
    loop {
        let mut phases = PhaseCounts::default();
        let mut all = entries(&task_runs, &ctx, &mut phases);
        all.extend(entries(&pipeline_runs, &ctx, &mut phases));
        round(&ctx, all, &phases).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), ctx.members.schedule.notified()).await;
    }
}

async fn round(ctx: &RunContext, all: Vec<Entry>, phases: &PhaseCounts) {
    // Unfinished runs per cluster: decided ones in the stores, plus decisions
    // written but not yet seen there.
    let mut active: BTreeMap<String, i64> = BTreeMap::new();
    let mut queue = Vec::new();
    {
        let mut decided = ctx.decided.lock().unwrap_or_else(|p| p.into_inner());
        let seen: BTreeSet<&str> = all.iter().map(|e| e.uid.as_str()).collect();
        decided.retain(|uid, _| seen.contains(uid.as_str()));
        for entry in &all {
            let clusters = run_status::decided_clusters(entry.status.as_ref());
            if !clusters.is_empty() {
                decided.remove(&entry.uid);
                let finished = entry
                    .status
                    .as_ref()
                    .and_then(|s| s.phase)
                    .is_some_and(is_final);
                if !finished {
                    for c in clusters {
                        *active.entry(c).or_default() += 1;
                    }
                }
            } else if let Some(clusters) = decided.get(&entry.uid) {
                for c in clusters {
                    *active.entry(c.clone()).or_default() += 1;
                }
            } else if !entry.deleting && entry.ready {
                queue.push(RunRequest {
                    key: entry.key.clone(),
                    created: entry.created,
                    placement: entry.placement.clone(),
                });
            }
        }
    }
    evacuate(ctx, &all).await;
    ctx.members.set_active_runs(&active);
    record_metrics(ctx, phases, &active);
    ctx.metrics.queue_depth.set(queue.len() as i64);
    if queue.is_empty() {
        return;
    }
    let clusters = ctx.clusters.state();
    let views = clusters.iter().map(|mc| {
        let name = mc.name_any();
        let status = mc.status.clone().unwrap_or_default();
        let reported = status
            .load
            .as_ref()
            .map(|l| (l.running + l.pending).max(0) as u64)
            .unwrap_or(0);
        let hub_count = active.get(&name).copied().unwrap_or(0).max(0) as u64;
        ClusterView {
            member: Member {
                name: name.clone(),
                labels: mc.labels().clone(),
                taints: mc.spec.taints.clone(),
            },
            ready: status
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True"),
            unschedulable: mc.spec.unschedulable,
            max_concurrent_runs: mc.spec.max_concurrent_runs.map(|m| m.max(1) as u64),
            reported,
            // The hub's own count of unfinished runs it assigned is at least
            // what the agent last saw: count the difference at once.
            assigned_since_report: hub_count.saturating_sub(reported),
        }
    });
    let mut scheduler = Scheduler::new(views.collect::<Vec<_>>());
    let decisions = scheduler.schedule(&queue);
    let by_key: HashMap<&str, &Entry> = all.iter().map(|e| (e.key.as_str(), e)).collect();
    let writes = decisions.into_iter().filter_map(|(key, decision)| {
        let entry = *by_key.get(key.as_str())?;
        let generation = None;
        match decision {
            Decision::Assign(clusters) => {
                let status = run_status::scheduled(
                    entry.status.as_ref(),
                    entry.placement.mode,
                    &clusters,
                    generation,
                    now(),
                );
                ctx.decided
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(entry.uid.clone(), clusters);
                Some((entry, status))
            }
            Decision::Queue(reason) => {
                let current = entry.status.as_ref().and_then(|s| {
                    s.conditions
                        .iter()
                        .find(|c| c.type_ == run_status::SCHEDULED)
                });
                if entry.status.as_ref().and_then(|s| s.phase) == Some(RunPhase::Queued)
                    && current.is_some_and(|c| c.reason == reason.reason())
                {
                    return None;
                }
                Some((
                    entry,
                    run_status::queued(
                        entry.status.as_ref(),
                        reason.reason(),
                        &reason.message(),
                        generation,
                        now(),
                    ),
                ))
            }
        }
    });
    let results = futures::stream::iter(writes)
        .map(|(entry, status)| async move {
            let assigned = status.phase == Some(RunPhase::Scheduled);
            let result = (entry.write)(status).await;
            if result.is_err() && assigned {
                // Not written (the run changed meanwhile): decide again next round.
                ctx.decided
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&entry.uid);
            }
            result
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    for e in results.into_iter().filter_map(Result::err) {
        tracing::debug!(error = %e, "scheduling write skipped");
    }
}

/// Revoke the records of runs on clusters being drained or lost (see
/// [`crate::moves`]); their run controllers then move or fail them.
async fn evacuate(ctx: &RunContext, all: &[Entry]) {
    let clusters = ctx.clusters.state();
    let leaving = moves::leaving(clusters.iter().map(|c| c.as_ref()));
    if leaving.is_empty() {
        return;
    }
    let targets = all.iter().filter_map(|entry| {
        let status = entry.status.as_ref()?;
        if entry.deleting
            || entry.placement.mode != PlacementMode::One
            || status.phase.is_some_and(is_final)
        {
            return None;
        }
        let cluster = status.cluster.clone()?;
        let why = *leaving.get(&cluster)?;
        Some((entry, cluster, why))
    });
    futures::stream::iter(targets)
        .for_each_concurrent(16, |(entry, cluster, why)| async move {
            let api = record_api(ctx, &cluster);
            // From the store: if it lags, the revoke's precondition fails
            // and the next round looks again.
            let record = ctx.record(&cluster, &entry.uid).map(|r| r.as_ref().clone());
            let step = moves::step(why, record.as_ref().map(|r| r.status.as_ref()));
            let Some(mut record) = record.filter(|_| step == moves::Step::Revoke) else {
                return;
            };
            let status = record.status.get_or_insert_with(Default::default);
            status.revoked = Some(true);
            status.revoked_reason = Some(why.reason().to_owned());
            status.revoked_time = Some(now());
            // The precondition is the resourceVersion read: if the agent
            // released the run meanwhile, this fails and the run stays.
            match api
                .replace_status(&record.name_any(), &PostParams::default(), &record)
                .await
            {
                Ok(_) => tracing::info!(run = %entry.key, %cluster, reason = why.reason(), "assignment revoked; the run moves"),
                Err(e) => tracing::debug!(run = %entry.key, %cluster, error = %e, "assignment not revoked; looked at again next round"),
            }
        })
        .await;
}

fn record_metrics(ctx: &RunContext, phases: &PhaseCounts, active: &BTreeMap<String, i64>) {
    for (phase, n) in PhaseCounts::PHASES.iter().zip(phases.0) {
        ctx.metrics
            .runs
            .get_or_create(&PhaseLabel {
                phase: format!("{phase:?}"),
            })
            .set(n);
    }
    for mc in ctx.clusters.state() {
        let cluster = ClusterLabel {
            cluster: mc.name_any(),
        };
        let status = mc.status.clone().unwrap_or_default();
        let load = status
            .load
            .as_ref()
            .map(|l| l.running + l.pending)
            .unwrap_or(0);
        let ready = status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        ctx.metrics.cluster_load.get_or_create(&cluster).set(load);
        ctx.metrics
            .cluster_ready
            .get_or_create(&cluster)
            .set(i64::from(ready));
        ctx.metrics
            .cluster_active
            .get_or_create(&cluster)
            .set(active.get(&cluster.cluster).copied().unwrap_or(0));
    }
}

/// The Tasks and Pipelines a run's spec refers to by name: `(kind, name)`.
/// Inline `taskSpec`/`pipelineSpec` need nothing, but the `taskRef`s inside
/// an inline `pipelineSpec` do. Refs through a resolver are not tekfed's.
pub fn references(
    kind: RunKind,
    spec: &serde_json::Map<String, serde_json::Value>,
) -> Vec<(&'static str, String)> {
    let by_name = |r: &serde_json::Value, want: &str| -> Option<String> {
        let kind_ok = r
            .get("kind")
            .and_then(|k| k.as_str())
            .is_none_or(|k| k == want);
        (kind_ok && r.get("resolver").is_none())
            .then(|| r.get("name")?.as_str().map(str::to_owned))
            .flatten()
    };
    let mut refs = Vec::new();
    match kind {
        RunKind::TaskRun => {
            if let Some(name) = spec.get("taskRef").and_then(|r| by_name(r, "Task")) {
                refs.push(("Task", name));
            }
        }
        RunKind::PipelineRun => {
            if let Some(name) = spec.get("pipelineRef").and_then(|r| by_name(r, "Pipeline")) {
                refs.push(("Pipeline", name));
            }
            if let Some(inline) = spec.get("pipelineSpec").and_then(|p| p.as_object()) {
                refs.extend(pipeline_task_refs(inline).into_iter().map(|n| ("Task", n)));
            }
        }
    }
    refs
}

/// The Tasks a Pipeline spec's tasks and finally tasks refer to by name.
pub fn pipeline_task_refs(spec: &serde_json::Map<String, serde_json::Value>) -> Vec<String> {
    let mut names: Vec<String> = ["tasks", "finally"]
        .iter()
        .filter_map(|k| spec.get(*k)?.as_array())
        .flatten()
        .filter_map(|t| {
            let r = t.get("taskRef")?;
            let kind_ok = r
                .get("kind")
                .and_then(|k| k.as_str())
                .is_none_or(|k| k == "Task");
            (kind_ok && r.get("resolver").is_none())
                .then(|| r.get("name")?.as_str().map(str::to_owned))
                .flatten()
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Put what `run` refers to on `cluster` before the run: a FederatedTask or
/// FederatedPipeline of that name in the run's namespace is applied there
/// (with that cluster's overrides); otherwise the member must already have
/// it. What exists nowhere is `DependencyMissing`.
async fn ensure_dependencies<K: FederatedRun>(
    run: &K,
    cluster: &str,
    ctx: &RunContext,
) -> Result<(), Error> {
    use crate::propagation::sync_cluster;
    use tekfed_api::{FederatedPipeline, FederatedTask, PropagationState};
    let ns = run.namespace().unwrap_or_default();
    let mut tasks = BTreeSet::new();
    let mut missing = Vec::new();
    let mut failed = Vec::new();
    let on_member = |kind: &'static str, name: String| {
        let members = ctx.members.clone();
        let (ns, cluster) = (ns.clone(), cluster.to_owned());
        async move {
            let conn = members.connection(&cluster).ok()?;
            let api: Api<DynamicObject> =
                Api::namespaced_with(conn.client.clone(), &ns, &tekton_resource(kind));
            api.get_metadata_opt(&name).await.ok().flatten().map(|_| ())
        }
    };
    for (kind, name) in references(K::KIND, &run.template().spec) {
        if kind == "Task" {
            tasks.insert(name);
            continue;
        }
        let pipelines: Api<FederatedPipeline> = Api::namespaced(ctx.hub.clone(), &ns);
        match pipelines.get_opt(&name).await {
            Ok(Some(fp)) => {
                tasks.extend(pipeline_task_refs(&fp.spec.template.spec));
                if let (state, Some(message)) = sync_cluster(&fp, cluster, &ctx.members, true).await
                    && state != PropagationState::Synced
                {
                    failed.push(format!("Pipeline {name}: {message}"));
                }
            }
            Ok(None) if on_member("Pipeline", name.clone()).await.is_some() => {}
            Ok(None) => missing.push(format!("pipelineRef {name}: no FederatedPipeline {name} in {ns} and no Pipeline {name} on {cluster}")),
            Err(e) => failed.push(format!("reading FederatedPipeline {name}: {e}")),
        }
    }
    let federated_tasks: Api<FederatedTask> = Api::namespaced(ctx.hub.clone(), &ns);
    for name in tasks {
        match federated_tasks.get_opt(&name).await {
            Ok(Some(ft)) => {
                if let (state, Some(message)) = sync_cluster(&ft, cluster, &ctx.members, true).await
                    && state != PropagationState::Synced
                {
                    failed.push(format!("Task {name}: {message}"));
                }
            }
            Ok(None) if on_member("Task", name.clone()).await.is_some() => {}
            Ok(None) => missing.push(format!(
                "taskRef {name}: no FederatedTask {name} in {ns} and no Task {name} on {cluster}"
            )),
            Err(e) => failed.push(format!("reading FederatedTask {name}: {e}")),
        }
    }
    if !missing.is_empty() {
        return Err(Error::DependencyMissing(missing.join("; ")));
    }
    if !failed.is_empty() {
        return Err(Error::Waiting {
            reason: "DependencyNotReady",
            kind: K::FEDERATED_KIND,
            namespace: ns,
            name: run.name_any(),
            message: format!("dependencies not on {cluster} yet: {}", failed.join("; ")),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_task_run_needs_its_task_ref() {
        assert_eq!(
            references(
                RunKind::TaskRun,
                &spec(json!({"taskRef": {"name": "build"}}))
            ),
            vec![("Task", "build".to_string())]
        );
        assert!(references(RunKind::TaskRun, &spec(json!({"taskSpec": {"steps": []}}))).is_empty());
        // Resolved remotely, or another kind: not tekfed's to place.
        assert!(
            references(
                RunKind::TaskRun,
                &spec(json!({"taskRef": {"resolver": "git", "params": []}}))
            )
            .is_empty()
        );
        assert!(
            references(
                RunKind::TaskRun,
                &spec(json!({"taskRef": {"name": "x", "kind": "ClusterTask"}}))
            )
            .is_empty()
        );
    }

    #[test]
    fn a_pipeline_run_needs_its_pipeline_and_the_tasks_of_an_inline_pipeline() {
        assert_eq!(
            references(
                RunKind::PipelineRun,
                &spec(json!({"pipelineRef": {"name": "build-and-deploy"}}))
            ),
            vec![("Pipeline", "build-and-deploy".to_string())]
        );
        let inline = spec(json!({"pipelineSpec": {
            "tasks": [{"name": "a", "taskRef": {"name": "build"}}, {"name": "b", "taskSpec": {"steps": []}}, {"name": "c", "taskRef": {"name": "build"}}],
            "finally": [{"name": "d", "taskRef": {"name": "notify"}}],
        }}));
        assert_eq!(
            references(RunKind::PipelineRun, &inline),
            vec![
                ("Task", "build".to_string()),
                ("Task", "notify".to_string())
            ]
        );
    }
}
