//! Reconciles `FederatedTask`s and `FederatedPipeline`s: the Tekton object
//! each describes is applied, patched per cluster, on exactly the members
//! its placement selects, kept that way, and removed from members that
//! leave the placement or when the federated object is deleted.
//!
//! Reconciling is event-driven: a change to the federated object, to any
//! member (joined, gone, relabelled, tainted, reachable again), or to a
//! member's copy (the member watches in [`crate::members`]) re-queues it at
//! once. A periodic resync (`--resync`, default 5 minutes) is only a safety
//! net. Writes are skipped when the member's copy already holds what tekfed
//! would apply ([`crate::drift`]), so a resync of unchanged objects sends no
//! writes to members; the status is written only when it changes.
//!
//! Clusters are handled concurrently, each under a timeout, so one slow
//! member delays no other member's copy by more than that timeout.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, DynamicObject, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tekfed_api::{
    ClusterOverrides, ClusterPropagation, FederatedPipeline, FederatedTask, MemberCluster,
    Placement, PropagationState, PropagationStatus, Template,
};
use tekfed_runtime::connect::tekton_resource;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{UnboundedReceiverStream, WatchStream};

use crate::members::{Connection, Members, Requeue};
use crate::metrics::OutcomeLabel;
use crate::overrides::{Source, render};
use crate::ownership::{
    FIELD_MANAGER, LABEL_MANAGED_BY, LABEL_RUN_DEPENDENCY, LABEL_UID, MANAGED_BY, Owner,
};
use crate::placement::{self, Member, Selection};
use crate::{drift, status};

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
    /// The Tekton kind it puts on members.
    const TEKTON_KIND: &'static str;
    fn template(&self) -> &Template;
    fn placement(&self) -> &Placement;
    fn overrides(&self) -> &[ClusterOverrides];
    fn propagation(&self) -> Option<&PropagationStatus>;
}

macro_rules! federated {
    ($ty:ty, $tekton:literal) => {
        impl Federated for $ty {
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

/// What the propagation controllers need.
pub struct Context {
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
}

impl Context {
    pub fn new(
        hub: Client,
        members: Arc<Members>,
        clusters: Store<MemberCluster>,
        deletion_timeout: Duration,
        resync: Duration,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("HOSTNAME").ok(),
        };
        Self {
            recorder: Recorder::new(hub.clone(), reporter),
            hub,
            members,
            clusters,
            member_timeout: Duration::from_secs(15),
            deletion_timeout,
            resync,
        }
    }
}

/// Something went wrong that a retry may fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing the status of {kind} {namespace}/{name}: {source}")]
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

/// Run the controller for one federated kind until the hub stops.
pub async fn run<K: Federated>(ctx: Arc<Context>, requeue: mpsc::UnboundedReceiver<Requeue>) {
    let api: Api<K> = Api::all(ctx.hub.clone());
    let drift = UnboundedReceiverStream::new(requeue)
        .map(|(ns, name)| ObjectRef::<K>::new(&name).within(&ns));
    let membership = WatchStream::new(ctx.members.subscribe()).map(|_| ());
    Controller::new(api, watcher::Config::default())
        .reconcile_on(drift)
        .reconcile_all_on(membership)
        .run(reconcile::<K>, error_policy::<K>, ctx)
        .for_each(|result| {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile did not finish");
            }
            futures::future::ready(())
        })
        .await;
}

fn error_policy<K: Federated>(
    obj: Arc<K>,
    error: &kube::runtime::finalizer::Error<Error>,
    _: Arc<Context>,
) -> Action {
    tracing::info!(kind = %K::kind(&()), ns = obj.namespace().unwrap_or_default(), name = %obj.name_any(), %error, "retrying");
    Action::requeue(Duration::from_secs(2))
}

async fn reconcile<K: Federated>(
    obj: Arc<K>,
    ctx: Arc<Context>,
) -> Result<Action, kube::runtime::finalizer::Error<Error>> {
    let ns = obj.namespace().unwrap_or_default();
    let api: Api<K> = Api::namespaced(ctx.hub.clone(), &ns);
    finalizer(&api, FINALIZER, obj, |event| async {
        match event {
            Finalizer::Apply(obj) => apply(obj.as_ref(), &ctx).await,
            Finalizer::Cleanup(obj) => cleanup(obj.as_ref(), &ctx).await,
        }
    })
    .await
}

/// Member views for placement, from the `MemberCluster` store.
fn members(ctx: &Context) -> Vec<Member> {
    ctx.clusters
        .state()
        .iter()
        .map(|mc| Member {
            name: mc.name_any(),
            labels: mc.labels().clone(),
            taints: mc.spec.taints.clone(),
        })
        .collect()
}

fn owner<K: Federated>(obj: &K) -> Owner<'_> {
    Owner {
        kind: obj_kind::<K>(),
        namespace: obj.meta().namespace.as_deref().unwrap_or_default(),
        name: obj.meta().name.as_deref().unwrap_or_default(),
        uid: obj.meta().uid.as_deref().unwrap_or_default(),
    }
}

fn obj_kind<K: Federated>() -> &'static str {
    // `Resource::kind` returns a Cow of a static string for static types.
    match K::TEKTON_KIND {
        "Task" => "FederatedTask",
        _ => "FederatedPipeline",
    }
}

/// Clusters that hold a copy of `obj` now: those in its status, and any
/// member whose watch store has an object with its uid. Copies put there
/// only because a run needs them (label `tekfed.io/run-dependency`) count
/// only when `with_run_dependencies`: placement does not remove them, but
/// deleting the federated object does.
fn holders<K: Federated>(obj: &K, ctx: &Context, with_run_dependencies: bool) -> BTreeSet<String> {
    let uid = obj.meta().uid.clone().unwrap_or_default();
    let mut holders: BTreeSet<String> = obj
        .propagation()
        .map(|s| s.clusters.iter().map(|c| c.cluster.clone()).collect())
        .unwrap_or_default();
    for mc in ctx.clusters.state() {
        let name = mc.name_any();
        if let Ok(conn) = ctx.members.connection(&name)
            && let Some(store) = conn.stores.get(K::TEKTON_KIND)
            && store.state().iter().any(|o| {
                o.labels().get(LABEL_UID) == Some(&uid)
                    && (with_run_dependencies || !o.labels().contains_key(LABEL_RUN_DEPENDENCY))
            })
        {
            holders.insert(name);
        }
    }
    holders
}

async fn apply<K: Federated>(obj: &K, ctx: &Context) -> Result<Action, Error> {
    let fleet = members(ctx);
    let holders = holders(obj, ctx, false);
    let selection = Selection::from(obj.placement());
    let mut problem = None;
    let selected = match placement::resolve(selection, &fleet, &holders) {
        Ok(selected) => selected,
        Err(e) => {
            problem = Some(("InvalidPlacement", e.to_string()));
            BTreeSet::new()
        }
    };
    let unknown = placement::unknown_clusters(selection, &fleet);
    let generation = obj.meta().generation;

    let results = futures::future::join_all(selected.iter().map(|cluster| async move {
        let (state, message) = match tokio::time::timeout(
            ctx.member_timeout,
            sync_cluster(obj, cluster, &ctx.members, false),
        )
        .await
        {
            Ok(outcome) => outcome,
            Err(_) => (
                PropagationState::Failed,
                Some(format!(
                    "cluster {cluster} did not answer within {:?}",
                    ctx.member_timeout
                )),
            ),
        };
        ClusterPropagation {
            cluster: cluster.clone(),
            state,
            message,
            generation,
        }
    }))
    .await;

    // Copies on clusters that are no longer members cannot be reached (the
    // credentials went with the MemberCluster): they are forgotten, not
    // retried forever.
    let leaving: Vec<&String> = holders
        .difference(&selected)
        .filter(|c| fleet.iter().any(|m| &m.name == *c))
        .collect();
    let leftovers = futures::future::join_all(leaving.into_iter().map(|cluster| async move {
        let removed =
            tokio::time::timeout(ctx.member_timeout, remove_copy(obj, cluster, ctx)).await;
        match removed {
            Ok(Ok(())) => None,
            Ok(Err(message)) => Some((cluster.clone(), message)),
            Err(_) => Some((
                cluster.clone(),
                format!(
                    "cluster {cluster} did not answer within {:?}",
                    ctx.member_timeout
                ),
            )),
        }
    }))
    .await;
    let leaving: Vec<ClusterPropagation> = leftovers
        .into_iter()
        .flatten()
        .map(|(cluster, message)| ClusterPropagation {
            cluster,
            state: PropagationState::Pending,
            message: Some(format!("no longer selected; removing the copy: {message}")),
            generation,
        })
        .collect();

    if problem.is_none() && !unknown.is_empty() && results.is_empty() {
        problem = Some((
            "ClusterNotFound",
            format!(
                "spec.placement.clusters names clusters that are not members: {}",
                unknown.join(", ")
            ),
        ));
    }
    let all_synced =
        results.iter().all(|r| r.state == PropagationState::Synced) && leaving.is_empty();
    let new = status::fold(
        generation,
        results,
        leaving,
        problem,
        obj.propagation(),
        Time(k8s_openapi::jiff::Timestamp::now()),
    );
    write_status(obj, ctx, new).await?;
    Ok(Action::requeue(if all_synced {
        ctx.resync
    } else {
        Duration::from_secs(10)
    }))
}

/// Bring one member's copy in line: `(state, message)`. `run_dependency`
/// marks a copy put there because a run needs it.
pub(crate) async fn sync_cluster<K: Federated>(
    obj: &K,
    cluster: &str,
    members: &Members,
    run_dependency: bool,
) -> (PropagationState, Option<String>) {
    let (state, message, outcome) = check_and_apply(obj, cluster, members, run_dependency).await;
    members.syncs.get_or_create(&OutcomeLabel { outcome }).inc();
    (state, message)
}

async fn check_and_apply<K: Federated>(
    obj: &K,
    cluster: &str,
    members: &Members,
    run_dependency: bool,
) -> (PropagationState, Option<String>, &'static str) {
    let failed = |message: String| (PropagationState::Failed, Some(message), "failed");
    let conn = match members.connection(cluster) {
        Ok(conn) => conn,
        Err(why) => {
            return failed(format!(
                "cluster {cluster} is not reachable ({}): {}",
                why.reason, why.message
            ));
        }
    };
    let owner = owner(obj);
    let name = obj.name_any();
    let source = Source {
        kind: K::TEKTON_KIND,
        name: &name,
        owner: owner.clone(),
        template: obj.template(),
        overrides: obj.overrides(),
    };
    let mut desired = match render(&source, cluster) {
        Ok(desired) => desired,
        Err(e) => return failed(format!("{e}; fix spec.overrides")),
    };
    if run_dependency {
        desired["metadata"]["labels"][LABEL_RUN_DEPENDENCY] = json!("true");
    }
    let unchanged = (PropagationState::Synced, None, "unchanged");
    // The member watch's store answers without a request in the common
    // case: an unchanged copy that is ours.
    let cached = conn.stores.get(K::TEKTON_KIND).and_then(|s| {
        s.get(&ObjectRef::new_with(&name, tekton_resource(K::TEKTON_KIND)).within(owner.namespace))
    });
    if let Some(live) = cached
        && owner.owns(live.labels())
        && drift::in_sync(
            &serde_json::to_value(live.as_ref()).unwrap_or_default(),
            &desired,
        )
    {
        return unchanged;
    }
    if let Err(message) = ensure_namespace(&conn, owner.namespace).await {
        return failed(message);
    }
    let api: Api<DynamicObject> = Api::namespaced_with(
        conn.client.clone(),
        owner.namespace,
        &tekton_resource(K::TEKTON_KIND),
    );
    match api.get_opt(&name).await {
        Err(e) => {
            return failed(format!(
                "reading {} {}/{name} on {cluster}: {e}",
                K::TEKTON_KIND,
                owner.namespace
            ));
        }
        Ok(Some(live)) if !owner.owns(live.labels()) => {
            return (
                PropagationState::Conflict,
                Some(format!(
                    "a {} named {name} already exists in namespace {} on {cluster} and was not created by tekfed for this object; tekfed leaves it untouched: rename one of them or delete the member's copy",
                    K::TEKTON_KIND,
                    owner.namespace
                )),
                "conflict",
            );
        }
        Ok(Some(live))
            if drift::in_sync(&serde_json::to_value(&live).unwrap_or_default(), &desired) =>
        {
            return unchanged;
        }
        Ok(_) => {}
    }
    match api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&desired),
        )
        .await
    {
        Ok(_) => (PropagationState::Synced, None, "applied"),
        Err(kube::Error::Api(status)) if status.code == 404 => {
            // The namespace went away under us: look again next time.
            conn.namespaces.remove(owner.namespace);
            failed(format!(
                "namespace {} is missing on {cluster}; recreating it",
                owner.namespace
            ))
        }
        Err(e) => failed(format!(
            "applying {} {}/{name} on {cluster}: {e}",
            K::TEKTON_KIND,
            owner.namespace
        )),
    }
}

/// Create the namespace on the member if it does not exist, labelled as
/// tekfed's. A namespace that exists is left as it is.
async fn ensure_namespace(conn: &Connection, namespace: &str) -> Result<(), String> {
    if conn.namespaces.contains(namespace) {
        return Ok(());
    }
    let api: Api<Namespace> = Api::all(conn.client.clone());
    let exists = api
        .get_metadata_opt(namespace)
        .await
        .map_err(|e| format!("reading namespace {namespace}: {e}"))?
        .is_some();
    if !exists {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(namespace.to_owned()),
                labels: Some([(LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        match api
            .create(
                &PostParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..Default::default()
                },
                &ns,
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(format!("creating namespace {namespace}: {e}")),
        }
    }
    conn.namespaces.insert(namespace.to_owned());
    Ok(())
}

/// Delete `obj`'s copy on `cluster`, if there is one and it is ours.
async fn remove_copy<K: Federated>(obj: &K, cluster: &str, ctx: &Context) -> Result<(), String> {
    let conn = ctx.members.connection(cluster).map_err(|why| {
        format!(
            "cluster {cluster} is not reachable ({}): {}",
            why.reason, why.message
        )
    })?;
    let owner = owner(obj);
    let name = obj.name_any();
    let api: Api<DynamicObject> = Api::namespaced_with(
        conn.client.clone(),
        owner.namespace,
        &tekton_resource(K::TEKTON_KIND),
    );
    match api.get_metadata_opt(&name).await {
        Ok(Some(live)) if owner.owns(live.labels()) => {
            let uid = live.metadata.uid.clone();
            let params = DeleteParams {
                preconditions: uid.map(|uid| kube::api::Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(&name, &params).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
                Err(e) => Err(format!(
                    "deleting {} {}/{name} on {cluster}: {e}",
                    K::TEKTON_KIND,
                    owner.namespace
                )),
            }
        }
        // Nothing there, or not ours: nothing to remove.
        Ok(_) => Ok(()),
        Err(e) => Err(format!(
            "reading {} {}/{name} on {cluster}: {e}",
            K::TEKTON_KIND,
            owner.namespace
        )),
    }
}

/// The federated object is being deleted: remove its copies, waiting at
/// most the deletion timeout for members that cannot be reached.
async fn cleanup<K: Federated>(obj: &K, ctx: &Context) -> Result<Action, Error> {
    let holders = holders(obj, ctx, true);
    let results = futures::future::join_all(holders.iter().map(|cluster| async move {
        match tokio::time::timeout(ctx.member_timeout, remove_copy(obj, cluster, ctx)).await {
            Ok(Ok(())) => None,
            Ok(Err(message)) => Some(format!("{cluster} ({message})")),
            Err(_) => Some(format!(
                "{cluster} (no answer within {:?})",
                ctx.member_timeout
            )),
        }
    }))
    .await;
    let left: Vec<String> = results.into_iter().flatten().collect();
    if left.is_empty() {
        return Ok(Action::await_change());
    }
    let since = obj
        .meta()
        .deletion_timestamp
        .as_ref()
        .map(|t| {
            k8s_openapi::jiff::Timestamp::now()
                .duration_since(t.0)
                .unsigned_abs()
        })
        .unwrap_or_default();
    let (kind, namespace, name) = (
        obj_kind::<K>().to_owned(),
        obj.namespace().unwrap_or_default(),
        obj.name_any(),
    );
    if since < ctx.deletion_timeout {
        return Err(Error::CopiesLeft {
            kind,
            namespace,
            name,
            clusters: left.join(", "),
        });
    }
    let note = format!(
        "gave up after {:?} on removing copies from {}: delete them there by hand (label {LABEL_UID}={})",
        ctx.deletion_timeout,
        left.join(", "),
        obj.meta().uid.clone().unwrap_or_default()
    );
    tracing::warn!(%kind, ns = %namespace, %name, "{note}");
    let event = Event {
        type_: EventType::Warning,
        reason: "LeftoverOnMembers".into(),
        note: Some(note),
        action: "Delete".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
        tracing::warn!(error = %e, "could not publish the leftover event");
    }
    Ok(Action::await_change())
}

async fn write_status<K: Federated>(
    obj: &K,
    ctx: &Context,
    new: PropagationStatus,
) -> Result<(), Error> {
    if obj.propagation() == Some(&new) {
        return Ok(());
    }
    let (kind, namespace, name) = (
        obj_kind::<K>(),
        obj.namespace().unwrap_or_default(),
        obj.name_any(),
    );
    let api: Api<K> = Api::namespaced(ctx.hub.clone(), &namespace);
    let patch: Value = json!({"apiVersion": "tekfed.io/v1alpha1", "kind": kind, "status": new});
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(patch),
    )
    .await
    .map_err(|source| Error::Status {
        kind: kind.to_owned(),
        namespace,
        name,
        source,
    })?;
    Ok(())
}
