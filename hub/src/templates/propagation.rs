//! The `FederatedTask`, `FederatedPipeline` and `FederatedStepAction`
//! reconciler: the Tekton object each describes is applied, patched per
//! cluster, on exactly the members its placement selects, kept that way,
//! and removed from members that leave the placement or when the federated
//! object is deleted.
//!
//! Reconciling is event-driven: a change to the federated object, to any
//! member (joined, gone, relabelled, tainted, reachable again), or to a
//! member's copy (the member watches in [`crate::clusters::registry`])
//! re-queues it at once. A periodic resync (`--resync`, default 5 minutes)
//! is only a safety net. Writes are skipped when the member's copy already
//! holds what tekfed would apply ([`super::drift`]), so a resync of
//! unchanged objects sends no writes to members; the status is written
//! only when it changes.
//!
//! Clusters are handled concurrently, each under a timeout, so one slow
//! member delays no other member's copy by more than that timeout.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Predicate, WatchStreamExt, predicates, watcher};
use serde_json::{Value, json};
use tekfed_api::{ClusterPropagation, PropagationState, PropagationStatus};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{UnboundedReceiverStream, WatchStream};

use super::copies::{remove_copy, sync_cluster};
use super::{Error, FINALIZER, Federated, TemplateContext, status};
use crate::clusters::registry::Requeue;
use crate::errors::{log_outcome, one_line};
use crate::ownership::{FIELD_MANAGER, LABEL_RUN_DEPENDENCY, LABEL_UID};
use crate::placement::{self, Member, Selection};

/// Templates of one kind reconciled at once. A reconcile already works on
/// all of a template's clusters at once (each under the member timeout), so
/// sixteen keep a resync or a membership change (which wakes every
/// template) from opening hundreds of requests to each member at once,
/// while one member that does not answer delays other templates by at
/// most a member timeout per sixteen.
const CONCURRENCY: u16 = 16;

/// Run the controller for one federated kind until the hub stops.
pub async fn run<K: Federated>(
    ctx: Arc<TemplateContext>,
    requeue: mpsc::UnboundedReceiver<Requeue>,
) {
    let api: Api<K> = Api::all(ctx.hub.clone());
    let drift = UnboundedReceiverStream::new(requeue)
        .map(|(ns, name)| ObjectRef::<K>::new(&name).within(&ns));
    let membership = WatchStream::new(ctx.members.subscribe()).map(|_| ());
    // No reconcile for a status-only change (the hub's own status writes):
    // only when the generation (spec, deletion) or the finalizers change.
    // Finalizers too, or the event that adds tekfed's would be dropped and
    // a new template would wait for the resync.
    let (reader, writer) = reflector::store();
    let changes = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(
            predicates::generation.combine(predicates::finalizers),
            Default::default(),
        );
    Controller::for_stream(changes, reader)
        .with_config(controller::Config::default().concurrency(CONCURRENCY))
        .reconcile_on(drift)
        .reconcile_all_on(membership)
        .run(reconcile::<K>, error_policy::<K>, ctx)
        .for_each(|result| log_outcome(K::FEDERATED_KIND, "templates", result))
        .await;
}

fn error_policy<K: Federated>(
    obj: Arc<K>,
    error: &kube::runtime::finalizer::Error<Error>,
    ctx: Arc<TemplateContext>,
) -> Action {
    let wait = match error {
        // Not a failure: copies on unreachable members are waited for,
        // every two seconds, until the deletion timeout.
        kube::runtime::finalizer::Error::CleanupFailed(Error::CopiesLeft { .. }) => {
            Duration::from_secs(2)
        }
        _ => ctx
            .retries
            .failed(ObjectRef::from_obj(obj.as_ref()).erase()),
    };
    tracing::info!(kind = K::FEDERATED_KIND, ns = obj.namespace().unwrap_or_default(), name = %obj.name_any(), %error, retry_in = ?wait, "retrying");
    Action::requeue(wait)
}

#[tracing::instrument(skip(obj, ctx), fields(kind = K::FEDERATED_KIND, namespace = %obj.namespace().unwrap_or_default(), name = %obj.name_any()))]
async fn reconcile<K: Federated>(
    obj: Arc<K>,
    ctx: Arc<TemplateContext>,
) -> Result<Action, kube::runtime::finalizer::Error<Error>> {
    let ns = obj.namespace().unwrap_or_default();
    let api: Api<K> = Api::namespaced(ctx.hub.clone(), &ns);
    let key = ObjectRef::from_obj(obj.as_ref()).erase();
    let action = finalizer(&api, FINALIZER, obj, |event| async {
        match event {
            Finalizer::Apply(obj) => apply(obj.as_ref(), &ctx).await,
            Finalizer::Cleanup(obj) => cleanup(obj.as_ref(), &ctx).await,
        }
    })
    .await?;
    ctx.retries.succeeded(&key);
    Ok(action)
}

/// Member views for placement, from the `MemberCluster` store.
fn members(ctx: &TemplateContext) -> Vec<Member> {
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

/// Clusters that hold a copy of `obj` now: those in its status, and any
/// member whose watch store has an object with its uid. Copies put there
/// only because a run needs them (label `tekfed.io/run-dependency`) count
/// only when `with_run_dependencies`: placement does not remove them, but
/// deleting the federated object does.
fn holders<K: Federated>(
    obj: &K,
    ctx: &TemplateContext,
    with_run_dependencies: bool,
) -> BTreeSet<String> {
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

async fn apply<K: Federated>(obj: &K, ctx: &TemplateContext) -> Result<Action, Error> {
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
            tokio::time::timeout(ctx.member_timeout, remove_copy(obj, cluster, &ctx.members)).await;
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

/// The federated object is being deleted: remove its copies, waiting at
/// most the deletion timeout for members that cannot be reached.
async fn cleanup<K: Federated>(obj: &K, ctx: &TemplateContext) -> Result<Action, Error> {
    let holders = holders(obj, ctx, true);
    let results = futures::future::join_all(holders.iter().map(|cluster| async move {
        match tokio::time::timeout(ctx.member_timeout, remove_copy(obj, cluster, &ctx.members))
            .await
        {
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
        K::FEDERATED_KIND.to_owned(),
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
    tracing::warn!("{note}");
    let event = Event {
        type_: EventType::Warning,
        reason: "LeftoverOnMembers".into(),
        note: Some(note),
        action: "Delete".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
        tracing::warn!(error = %one_line(&e), "could not publish the leftover event");
    }
    Ok(Action::await_change())
}

async fn write_status<K: Federated>(
    obj: &K,
    ctx: &TemplateContext,
    new: PropagationStatus,
) -> Result<(), Error> {
    if obj.propagation() == Some(&new) {
        return Ok(());
    }
    let (kind, namespace, name) = (
        K::FEDERATED_KIND,
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
